"""The pre-registered comparisons of docs/preregistration.md, computed from the results with their 95% CIs.

Each claim has one primary comparison: a difference between two arms (conditions at the experiment's main
learning rate, or the base model), on a metric (pass@k per question, response length, failure rate), on a set
of questions (all, or those where pi_ref's frozen mode is wrong), with the sign the claim predicts. The
difference's CI comes from `sharpening.stats` (seeds x questions, paired by question); the verdict from
`stats.verdict`. A comparison whose arms an experiment lacks is reported as "not run", never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sharpening.figures.llm_runs import Experiment, Results, failed, pass_matrix, read_modes
from sharpening.objective import SIGNAL_PRESETS, Regime
from sharpening.stats import bootstrap, verdict

BASE = None  # the base model as an arm


@dataclass(frozen=True)
class Arm:
    regime: Regime | None  # None: the base model
    fixed_length: bool = False

    @property
    def label(self) -> str:
        from sharpening.figures import style

        return style.label(self.regime) + (", fixed length" if self.fixed_length else "")


@dataclass(frozen=True)
class Comparison:
    claim: str
    a: Arm
    b: Arm
    metric: str = "pass@1"  # pass@<k>, length, or failed (the instability sweep)
    subset: str = "all"  # all, or mode_wrong: the questions where pi_ref's frozen mode answers wrongly
    sign: int = +1  # the sign of a - b the claim predicts
    level: float = 0.95
    primary: bool = True

    @property
    def text(self) -> str:
        where = "" if self.subset == "all" else ", mode-wrong questions"
        return f"{self.a.label} − {self.b.label}: {self.metric}{where} ({'>' if self.sign > 0 else '<'} 0)"


TASK, SHARP = Arm(Regime.task_reward()), Arm(Regime.sharpening())
COMPARISONS = [
    Comparison("1", TASK, SHARP, subset="mode_wrong", sign=+1),
    Comparison("2a", SHARP, TASK, metric="length", sign=-1),
    Comparison("2b", SHARP, TASK, sign=-1),  # pre-registered on task B
    Comparison("2b", SHARP, Arm(Regime.sharpening(), fixed_length=True), sign=-1, primary=False),
    Comparison("3", SHARP, TASK, metric="failed", sign=+1),
    Comparison("4", Arm(Regime.tempered(8.0)), Arm(Regime.tempered(1.25)), subset="mode_wrong", sign=-1),
    Comparison("5", Arm(Regime.tilted(2.0, 100.0)), Arm(Regime.tempered(2.0)), sign=+1),
    Comparison("6", SHARP, Arm(BASE), metric="pass@8", sign=-1),
    Comparison("6", TASK, Arm(BASE), metric="pass@8", sign=-1, primary=False),
] + [Comparison("7", Arm(Regime.preset(name)), Arm(BASE), sign=+1, level=0.99) for name in SIGNAL_PRESETS]


def _evals(results: Results, exp: Experiment, arm: Arm):
    if arm.regime is None:
        base = results.base_eval(exp)
        return [base] if base is not None else []
    return [r.eval for c, runs in results.conditions(exp, results.main_lr(exp), evaluated=True).items()
            if c.regime == arm.regime and c.fixed_length == arm.fixed_length and c.clipped for r in runs]


def _failure_matrix(results: Results, exp: Experiment, arm: Arm) -> np.ndarray | None:
    """[seeds, 1]: each seed's share of failed runs over the learning rates it ran (None without a sweep)."""
    base = results.base_eval(exp)
    base_pass1 = None if base is None else float(next(iter(base.curves.values()))["pass@k"][1][0])
    by_seed: dict[int, list[bool]] = {}
    for run in results.runs:
        if run.experiment == exp and run.regime == arm.regime and not run.fixed_length and run.clipped:
            by_seed.setdefault(run.seed, []).append(failed(run, base_pass1))
    lrs = {run.lr for run in results.runs if run.experiment == exp and run.regime == arm.regime}
    if len(lrs) < 2 or not by_seed:
        return None
    return np.array([[np.mean(v)] for _, v in sorted(by_seed.items())])


def compare(results: Results, exp: Experiment, c: Comparison, modes=None) -> dict:
    """{difference Estimate or None, verdict, seeds of a and b, questions, note} of one comparison."""
    if c.metric == "failed":
        ya, yb = _failure_matrix(results, exp, c.a), _failure_matrix(results, exp, c.b)
        if ya is None or yb is None:
            return {"estimate": None, "note": "not run (no learning-rate sweep of both arms)"}
        est = bootstrap([ya, yb], [1.0, -1.0], level=c.level)
        return {"estimate": est, "verdict": verdict(est, c.sign), "seeds": (len(ya), len(yb)), "questions": "–"}
    ea, eb = _evals(results, exp, c.a), _evals(results, exp, c.b)
    if not ea or not eb:
        return {"estimate": None, "note": "not run"}
    if c.metric == "length":
        lengths = [next(iter(e.question_lengths.values()), {}) for e in ea + eb]
        ids = [i for i in lengths[0] if all(i in q for q in lengths[1:])]
        if ids:  # per-question mean lengths from the per-sample records: seeds x questions, paired
            ya, yb = (np.array([[q[i] for i in ids] for q in part]) for part in (lengths[:len(ea)], lengths[len(ea):]))
            questions = len(ids)
        else:  # evaluations without records: each seed's mean length, seeds only
            ya, yb = (np.array([[e.mean_length] for e in es]) for es in (ea, eb))
            questions = "seed means"
        est = bootstrap([ya, yb], [1.0, -1.0], level=c.level)
        return {"estimate": est, "verdict": verdict(est, c.sign), "seeds": (len(ea), len(eb)), "questions": questions}
    k = int(c.metric.removeprefix("pass@"))
    _, ids = pass_matrix(ea + eb, k)
    if c.subset == "mode_wrong":
        frozen = (read_modes(results.root) if modes is None else modes).get(exp.task, {})
        ids = [i for i in ids if i in frozen and not frozen[i]["mode_correct"]]
        if not ids:
            return {"estimate": None, "note": "no frozen mode file for these questions"}
    if any(k > min(n for _, n in next(iter(e.counts.values())).values()) for e in ea + eb):
        return {"estimate": None, "note": f"fewer than {k} samples per question"}
    ya, yb = pass_matrix(ea, k, ids)[0], pass_matrix(eb, k, ids)[0]
    est = bootstrap([ya, yb], [1.0, -1.0], level=c.level)
    return {"estimate": est, "verdict": verdict(est, c.sign), "seeds": (len(ea), len(eb)), "questions": len(ids)}


def claims_markdown(results: Results, exp: Experiment, exploratory: bool = False) -> list[str]:
    """The pre-registered comparisons for one experiment as Markdown lines (empty if none can be computed)."""
    rows = []
    for c in COMPARISONS:
        out = compare(results, exp, c)
        est = out["estimate"]
        if est is None:
            rows.append([c.claim, c.text, "–", out["note"], "–", "–"])
            continue
        v = out["verdict"] + (" (exploratory)" if exploratory or not c.primary else "")
        rows.append([c.claim + ("" if c.primary else " (secondary)"), c.text,
                     f"{est.value:+.3f} [{est.lo:+.3f}, {est.hi:+.3f}]" + ("" if c.level == 0.95 else " (99%)"),
                     v, "/".join(map(str, out["seeds"])), str(out["questions"])])
    if all(r[2] == "–" for r in rows):
        return []
    head = ["claim", "comparison (predicted sign)", "difference [95% CI]", "verdict", "seeds", "questions"]
    intro = ("The pre-registered comparisons (docs/preregistration.md), each difference with its CI over seeds x "
             "questions (paired by question; sharpening/stats.py) and the verdict by the rule: confirmed when the CI "
             "lies on the predicted side of 0, contradicted when on the other, else not resolved.")
    if exploratory:
        intro += " This experiment was not pre-registered: every verdict here is exploratory."
    return [f"### {exp.label}: pre-registered comparisons", "", intro, "",
            "| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows] + [""]
