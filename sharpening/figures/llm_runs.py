"""LLM run results as the LLM figures read them: runs found by their files, grouped by what their config says.

A run folder holds config.yaml (the resolved TrainConfig), metrics.jsonl (one line per step) and, when it was
evaluated, eval.json (`sharpening llm eval`'s format, sharpening/figures/pass_at_k.py). A base-model evaluation
is a folder with only eval.json, whose regime is null. `load_results(DIR)` reads every such folder under DIR,
at any depth: results/cpu/<run>/ from `make cpu-grid`, a GPU run's folder dropped next to them, or a user's
runs/ folder (checkpoints are never read). Runs are told apart by their metadata, never by folder names:
an experiment is (model, held-out task, response budget, prefill): results of different experiments never
share a table or a panel; within one, a condition is (regime, fixed length or not, learning rate), and its
runs are its seeds. Base-model evaluations drawn by another sampler than ancestral / token temperature (MCMC
power sampling) belong to the power-sampling figures, not to these tables.

Instability of a run (`stability`), on its first WINDOW steps, in this order:
    diverged     a step was skipped for a NaN/inf loss or gradient
    collapsed    over the last 3 steps of the window, entropy below COLLAPSE_ENTROPY nats per token while the
                 task reward is below 0.5: the policy emits (nearly) one response, and it is mostly wrong
                 (the definition of sharpening.toy.instability, with the per-token entropy of the samples)
    oscillating  the 3-step moving average of the mean shaped reward R falls, after its running maximum,
                 by more than half of its rise to that maximum and by more than 2 standard errors of a step's
                 mean (reward/shaped_std / sqrt(batch)): the run gave back what it had gained, beyond noise
    stable       none of these
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from sharpening.figures import style
from sharpening.figures.pass_at_k import EvalResult, metric_label, read_eval
from sharpening.llm import runs
from sharpening.objective import Regime

class NoData(ValueError):
    """The results hold nothing this figure draws (e.g. no training run yet): the figure is skipped, not failed."""


WINDOW = 10  # steps judged by `stability` (the learning-rate sweep's run length)
COLLAPSE_ENTROPY = 0.05  # nats per token, as toy.instability.COLLAPSE_ENTROPY
GIVE_BACK = 0.5  # an oscillation gives back more than this share of the rise
LABELS = ("stable", "oscillating", "collapsed", "diverged")
UNSTABLE = ("oscillating", "collapsed", "diverged")
# The paper's regimes, and the label-free signals (issue #16) drawn apart with the two they sit between.
PAPER_FAMILIES = ("task reward", "sharpening", "tempered", "tilted", "mixed")
SIGNAL_FAMILIES = ("task reward", "sharpening", "self likelihood", "neg entropy", "self certainty", "majority vote",
                   "random reward")


@dataclass
class Run:
    """One training run: its folder, resolved config, metrics per step and final evaluation (if any)."""

    path: Path
    config: dict
    metrics: list[dict]
    eval: EvalResult | None = None

    @property
    def name(self) -> str:
        return str(self.config.get("run_name", self.path.name))

    @property
    def regime(self) -> Regime:
        from sharpening.llm.config import parse_regime

        return parse_regime(self.config["regime"])

    @property
    def model(self) -> str:
        return str(self.config.get("model", "?"))

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    @property
    def lr(self) -> float:
        return float(self.config.get("lr", math.nan))

    @property
    def fixed_length(self) -> bool:
        return bool(self.config.get("ignore_eos", False))

    @property
    def clipped(self) -> bool:
        """Gradient clipping on (max_grad_norm finite; .inf turns it off)."""
        return math.isfinite(float(self.config.get("max_grad_norm", 1.0)))

    @property
    def condition(self) -> "Condition":
        return Condition(self.model, self.regime, self.fixed_length, self.lr, self.clipped)

    @property
    def experiment(self) -> "Experiment":
        datasets = (self.config.get("eval_datasets") or (list(self.eval.curves) if self.eval is not None else [])
                    or [self.config.get("dataset", "?")])
        return Experiment(self.model, str(datasets[0]), int(self.config.get("max_new_tokens", 0)),
                          str(self.config.get("prefill", "")))

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one metric; steps where it is missing or null are left out."""
        pairs = [(m["step"], m[key]) for m in self.metrics if m.get(key) is not None]
        steps, values = zip(*pairs) if pairs else ((), ())
        return np.array(steps, dtype=int), np.array(values, dtype=float)


@dataclass(frozen=True, order=True)
class Experiment:
    """What the results of one table share: the model, the held-out task, the response budget and the prefill."""

    model: str
    task: str
    budget: int
    prefill: str = ""

    @property
    def label(self) -> str:
        return f"{self.model} · {self.task} · {self.budget}-token budget"

    @staticmethod
    def of_eval(result: EvalResult) -> "Experiment":
        return Experiment(result.model, next(iter(result.curves), "?"), int(result.max_new_tokens or 0), result.prefill)


@dataclass(frozen=True)
class Condition:
    """What a run's seeds share: the model, the regime, EOS ignored or not, the learning rate."""

    model: str
    regime: Regime
    fixed_length: bool
    lr: float
    clipped: bool = True

    @property
    def label(self) -> str:
        return (style.label(self.regime) + (", fixed length" if self.fixed_length else "")
                + ("" if self.clipped else ", no clipping"))


@dataclass
class Results:
    """Everything found under a folder: training runs and base-model evaluations (regime null)."""

    root: Path
    runs: list[Run] = field(default_factory=list)
    base: list[EvalResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # one note per run folder not drawn, naming it
    skipped_dirs: list[str] = field(default_factory=list)

    def skip(self, note: str) -> None:
        """Record (and print, on one line) why a folder is not drawn."""
        self.skipped.append(note)
        folder = note.removeprefix("skipped ").split(":")[0]
        self.skipped_dirs.append(folder)
        print(f"note: {note}", file=sys.stderr)

    def experiments(self) -> list[Experiment]:
        """Every experiment with a run or a base evaluation, sorted."""
        return sorted({r.experiment for r in self.runs} | {Experiment.of_eval(b) for b in self.base})

    def models(self) -> list[str]:
        return sorted({e.model for e in self.experiments()})

    def main_lr(self, exp: Experiment) -> float:
        """The learning rate of most of an experiment's runs: its main grid (the others form a learning-rate sweep)."""
        lrs = [r.lr for r in self.runs if r.experiment == exp]
        if not lrs:
            return math.nan
        values, counts = np.unique(lrs, return_counts=True)
        return float(values[np.argmax(counts)])

    def conditions(self, exp: Experiment, lr: float | None = None, evaluated: bool = False,
                   families: tuple[str, ...] | None = None) -> dict[Condition, list[Run]]:
        """{condition: its runs sorted by seed} for one experiment, optionally at one lr / only runs with an eval /
        only regimes of some families (style.family names)."""
        groups: dict[Condition, list[Run]] = {}
        for run in self.runs:
            if (run.experiment == exp and (lr is None or run.lr == lr) and (not evaluated or run.eval is not None)
                    and (families is None or style.family(run.regime) in families)):
                groups.setdefault(run.condition, []).append(run)
        return {c: sorted(rs, key=lambda r: r.seed) for c, rs in sorted(groups.items(), key=lambda kv: _order(kv[0]))}

    def base_eval(self, exp: Experiment) -> EvalResult | None:
        """The base model's evaluation at temperature 1 (pure sampling from pi_ref) in this experiment."""
        matches = [b for b in self.base if Experiment.of_eval(b) == exp and b.temperature == 1.0]
        return matches[0] if matches else None

    def base_temperatures(self, exp: Experiment) -> list[EvalResult]:
        """The base model evaluated at token-level temperatures other than 1 in this experiment, coldest last."""
        return sorted((b for b in self.base if Experiment.of_eval(b) == exp and b.temperature != 1.0),
                      key=lambda b: -b.temperature)


def _order(c: Condition):
    """Conditions in the paper's order: task reward, sharpening, tempered, tilted, mixed, then the label-free
    signals; fixed length last."""
    rank = list(style.COLORS).index(style.family(c.regime))  # COLORS lists the families in that order
    return (c.fixed_length, not c.clipped, rank, c.regime.alpha, c.regime.beta_inv, c.lr)


read_metrics = runs.read_metrics  # the one metrics reader (strict JSON; a bad line names its file and line)


def read_run(folder: Path) -> Run:
    """One run folder read through sharpening.llm.runs. ValueError (naming the file) when it is damaged, and
    Unfinished when its metrics stop before the config's `steps`."""
    run = runs.RunFolder(folder)
    config = run.read_config()
    if "regime" not in config:
        raise ValueError(f"{run.config_path}: not a training config (no `regime`)")
    metrics = run.metrics()
    if isinstance(config.get("steps"), int) and (not metrics or metrics[-1]["step"] < config["steps"]):
        last = metrics[-1]["step"] if metrics else 0
        raise Unfinished(f"{folder}: unfinished run (metrics up to step {last} of {config['steps']})")
    evaluation = read_eval(run.eval_path) if run.eval_path.exists() else None
    return Run(folder, config, metrics, evaluation)


class Unfinished(ValueError):
    """A run folder whose run has not reached its last step (still running, or stopped): not drawn."""


def load_results(root) -> Results:
    """Every run folder (config.yaml) and base evaluation (eval.json with regime null) under root. An unfinished or
    damaged run is skipped with a one-line note naming its folder (Results.skipped, and on stderr): one bad run
    never stops the others from being drawn."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"results folder {str(root)!r} is not a directory")
    found = Results(root)
    for config in sorted(root.rglob(runs.CONFIG)):
        if runs.CHECKPOINTS not in config.parts:
            try:
                found.runs.append(read_run(config.parent))
            except (ValueError, OSError, yaml.YAMLError) as err:
                found.skip(f"skipped {err}" if isinstance(err, Unfinished) else
                           f"skipped {config.parent}: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
    run_dirs = {r.path for r in found.runs} | {Path(p) for p in found.skipped_dirs}
    for path in sorted(root.rglob(runs.EVAL)):
        if path.parent not in run_dirs and runs.CHECKPOINTS not in path.parts:
            try:
                result = read_eval(path)
            except ValueError as err:
                found.skip(f"skipped {path}: {str(err).splitlines()[0]}")
                continue
            if result.regime is None and result.sampler in ("ancestral", "temperature") and not result.ignore_eos:
                found.base.append(result)
    return found


# ---------------------------------------------------------------------------------------------------------
# Instability of a run
# ---------------------------------------------------------------------------------------------------------


def moving_average(x: np.ndarray, width: int = 3) -> np.ndarray:
    """Trailing mean over up to `width` points: y_t = mean(x_{t-width+1..t})."""
    c = np.cumsum(np.insert(np.asarray(x, float), 0, 0.0))
    n = np.arange(1, len(x) + 1)
    lo = np.maximum(n - width, 0)
    return (c[n] - c[lo]) / (n - lo)


def stability(run: Run, window: int = WINDOW) -> str:
    """One of LABELS for the run's first `window` steps (the module docstring gives the definitions)."""
    m = [row for row in run.metrics if row["step"] <= window]
    if not m:
        raise ValueError(f"run {run.name}: no metrics in its first {window} steps")
    if any(row.get("skipped") or not runs.is_finite_row(row) for row in m):
        return "diverged"  # a skipped step, or a non-finite value (written as null) in any metric
    last = m[-3:]
    entropy = np.mean([row["entropy"] for row in last])
    task = np.mean([row["reward/task"] for row in last])
    if entropy < COLLAPSE_ENTROPY and task < 0.5:
        return "collapsed"
    R = moving_average([row["reward/shaped_mean"] for row in m])
    batch = run.config.get("prompts_per_step", 1) * run.config.get("group_size", 1)
    noise = 2 * np.mean([row["reward/shaped_std"] for row in m]) / math.sqrt(batch)
    peak = np.maximum.accumulate(R)
    drawdown, rise = peak - R, peak - R[0]
    if np.any((drawdown > GIVE_BACK * rise) & (drawdown > noise) & (rise > 0)):
        return "oscillating"
    return "stable"


# ---------------------------------------------------------------------------------------------------------
# The results table
# ---------------------------------------------------------------------------------------------------------

TABLE_COLUMNS = ("condition", "seeds", "pass@1 [95% CI]", "pass@k [95% CI]", "maj@k", "length", "cap hit",
                 "train r (last 3)", "lp_ref (last 3)", "failed", "unstable")
FAILED_REWARD = 0.05  # docs/preregistration.md: mean training task reward over the last 3 steps below this
FAILED_DROP = 0.10  # ... or held-out pass@1 below the base model's minus this


def failed(run: Run, base_pass1: float | None = None) -> bool:
    """The pre-registered, regime-agnostic failure rule: a NaN/inf step, a final training task reward (mean of the
    last 3 steps) below FAILED_REWARD, or held-out pass@1 below the base model's minus FAILED_DROP."""
    if any(row.get("skipped") for row in run.metrics):
        return True
    _, r = run.series("reward/task")
    if len(r) == 0 or not np.isfinite(r[-3:]).all() or r[-3:].mean() < FAILED_REWARD:
        return True
    if run.eval is not None and base_pass1 is not None:
        return _eval_value(run.eval, "pass@k", 1) < base_pass1 - FAILED_DROP
    return False


def _mean_range(values, digits: int = 3) -> str:
    values = [v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return "–"
    text = f"{np.mean(values):.{digits}f}"
    return text if len(values) == 1 else f"{text} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def _last(run: Run, key: str, n: int = 3):
    _, values = run.series(key)
    return float(values[-n:].mean()) if len(values) else None


def _eval_value(result: EvalResult | None, metric: str, k: int):
    """metric@k on the result's first data set; at the largest k <= k it has (None when it has no eval)."""
    if result is None:
        return None
    ks, values = next(iter(result.curves.values()))[metric]
    return float(values[ks <= k][-1])


def pass_matrix(evals: list[EvalResult], k: int = 1, ids: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Per-question pass@k of each evaluation (a seed): ([len(evals), Q], the question ids), over the questions
    every evaluation holds (or `ids`), in the first one's order. The matrix `sharpening.stats` bootstraps."""
    from sharpening.llm.evaluation import pass_at_k

    counts = [next(iter(e.counts.values()), {}) for e in evals]
    if ids is None:
        ids = [i for i in counts[0] if all(i in c for c in counts[1:])] if counts else []
    rows = [[pass_at_k(c[i][1], c[i][0], min(k, c[i][1])) for i in ids] for c in counts]
    return np.array(rows, dtype=float).reshape(len(evals), len(ids)), ids


def _ci(evals: list[EvalResult], k: int = 1, ids=None) -> str:
    """'mean [lo, hi]' of pass@k over seeds x questions (hierarchical bootstrap), or '–'."""
    from sharpening.stats import mean_ci

    evals = [e for e in evals if e is not None and next(iter(e.counts.values()), None)]
    if not evals:
        return "–"
    y, ids = pass_matrix(evals, k, ids)
    return mean_ci(y).plain() if y.size else "–"


def table_columns(results: Results, exp: Experiment) -> tuple:
    """TABLE_COLUMNS, maj@k labelled with the rule of the experiment's numbers ("abstaining rule" for results
    written before the rule was named)."""
    evals = [results.base_eval(exp), *results.base_temperatures(exp)]
    evals += [r.eval for runs in results.conditions(exp, evaluated=True).values() for r in runs]
    return tuple(metric_label(c, evals) for c in TABLE_COLUMNS)


def table_rows(results: Results, exp: Experiment) -> list[list[str]]:
    """One row per evaluated condition of the experiment at its main lr, base model first: pass@1 and pass@k
    (k the largest every run has) as mean [95% CI] over seeds x questions; maj@k, length, cap hit as mean (range
    over seeds); failed runs by the pre-registered rule and unstable ones by `stability`."""
    rows = []
    base = results.base_eval(exp)
    base_pass1 = _eval_value(base, "pass@k", 1)
    k = _largest_k(results, exp)
    bases = [("base model π_ref", base)]
    bases += [(f"π_ref, token temperature {b.temperature:g}", b) for b in results.base_temperatures(exp)]
    for label, b in bases:
        if b is not None:
            rows.append([label, "–", _ci([b], 1), _ci([b], k), _mean_range([_eval_value(b, "maj@k", k)]),
                         _mean_range([b.mean_length], 1), _mean_range([next(iter(b.cap_frac.values()), None)], 2),
                         "–", "–", "–", "–"])
    for c, runs in results.conditions(exp, results.main_lr(exp), evaluated=True).items():
        labels = [stability(r) for r in runs]
        rows.append([c.label, str(len(runs)), _ci([r.eval for r in runs], 1), _ci([r.eval for r in runs], k),
                     _mean_range([_eval_value(r.eval, "maj@k", k) for r in runs]),
                     _mean_range([r.eval.mean_length for r in runs], 1),
                     _mean_range([next(iter(r.eval.cap_frac.values()), None) for r in runs], 2),
                     _mean_range([_last(r, "reward/task") for r in runs], 2),
                     _mean_range([_last(r, "lp_ref/mean") for r in runs], 1),
                     f"{sum(failed(r, base_pass1) for r in runs)}/{len(runs)}",
                     f"{sum(x in UNSTABLE for x in labels)}/{len(labels)}"])
    return rows


def _largest_k(results: Results, exp: Experiment) -> int:
    """The largest k of pass@k that every evaluation of the experiment reports."""
    evals = [r.eval for rs in results.conditions(exp, evaluated=True).values() for r in rs]
    evals += [b for b in results.base if Experiment.of_eval(b) == exp]
    ks = [set(int(k) for k in next(iter(e.curves.values()))["pass@k"][0]) for e in evals]
    return max(set.intersection(*ks)) if ks else 1


def read_modes(root) -> dict[str, dict[str, dict]]:
    """The frozen mode files (experiments/freeze_mode.py) under root: {data set: {question id: record}}."""
    modes = {}
    for path in sorted(Path(root).rglob("modes/*.json")):
        data = runs.read_json(path)
        modes.setdefault(data["dataset"], {}).update({q["id"]: q for q in data["questions"]})
    return modes


def mode_split_rows(results: Results, exp: Experiment, modes: dict[str, dict] | None = None):
    """Held-out pass@1 [95% CI] per condition (main lr) on the questions where pi_ref's sequence-level mode is
    wrong, and where it is right, the split read from the frozen mode file (never from the results themselves).
    (header, rows), or None when no mode file covers the experiment's questions."""
    modes = read_modes(results.root) if modes is None else modes
    frozen = modes.get(exp.task, {})
    base = results.base_eval(exp)
    held_out = list(next(iter(base.counts.values()), {})) if base is not None else []
    if not held_out:
        held_out = [i for rs in results.conditions(exp, evaluated=True).values() for r in rs[:1]
                    for i in next(iter(r.eval.counts.values()), {})]
    covered = [i for i in held_out if i in frozen]
    if not covered:
        return None
    wrong = [i for i in covered if not frozen[i]["mode_correct"]]
    right = [i for i in covered if frozen[i]["mode_correct"]]
    rows = []
    for label, b in [("base model π_ref", base)] + [(f"π_ref, token temperature {t.temperature:g}", t)
                                                    for t in results.base_temperatures(exp)]:
        if b is not None:
            rows.append([label, "–", _ci([b], 1, wrong) if wrong else "–", _ci([b], 1, right) if right else "–"])
    for c, runs in results.conditions(exp, results.main_lr(exp), evaluated=True).items():
        evals = [r.eval for r in runs]
        rows.append([c.label, str(len(runs)), _ci(evals, 1, wrong) if wrong else "–",
                     _ci(evals, 1, right) if right else "–"])
    header = ["condition", "seeds", f"pass@1 where the mode is wrong ({len(wrong)} questions)",
              f"pass@1 where the mode is right ({len(right)} questions)"]
    return header, rows


def _markdown_table(header, rows) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def experiment_note(results: Results, exp: Experiment) -> str:
    """What an experiment's folder says of it (experiment.json: {"label": ...}), e.g. that it is a pilot."""
    notes = set()
    for run in results.runs:
        if run.experiment == exp:
            for folder in (run.path.parent, run.path.parent.parent):
                if (folder / "experiment.json").is_file():
                    notes.add(runs.read_json(folder / "experiment.json").get("label", ""))
    return "; ".join(sorted(n for n in notes if n))


def results_markdown(results: Results) -> str:
    """The results tables as Markdown (figures/llm_results.md): one section per experiment, never mixed."""
    lines = ["# LLM results", "",
             f"Drawn from `{results.root}` by `sharpening figures --only llm_results`. One section per experiment "
             "(model, held-out task, response budget): results of different experiments never share a table. Per "
             "condition at the experiment's main learning rate: held-out pass@1 and pass@k as mean [95% CI] over "
             "seeds x questions (hierarchical bootstrap, sharpening/stats.py); maj@k, response length (tokens), the "
             "share of responses cut at the budget, the training task reward and lp_ref (nats per response) over "
             "the last 3 steps as mean (range over seeds); runs that failed by the pre-registered rule "
             "(docs/preregistration.md) and runs labelled unstable (oscillating, collapsed or diverged in their "
             f"first {WINDOW} steps; sharpening/figures/llm_runs.py). maj@k of evaluations without per-sample "
             "answers is under the abstaining rule (no-answer samples do not vote).", ""]
    for exp in results.experiments():
        lr = results.main_lr(exp)
        note = experiment_note(results, exp)
        lines += [f"## {exp.label}" + ("" if math.isnan(lr) else f" (lr {lr:g})") + (f": {note}" if note else ""), ""]
        lines += _markdown_table(table_columns(results, exp), table_rows(results, exp)) + [""]
        split = mode_split_rows(results, exp)
        if split is not None:
            lines += [f"### {exp.label}: where the base model's mode is wrong", "",
                      "Held-out pass@1 [95% CI] on the questions where π_ref's sequence-level mode answers wrongly "
                      "and where it answers rightly, the split read from the frozen mode file "
                      "(results/modes/, experiments/freeze_mode.py)." + (
                          " Exploratory for this experiment: the split was not pre-registered for it." if note else ""),
                      ""]
            lines += _markdown_table(*split) + [""]
        from sharpening.figures.claims import claims_markdown

        lines += claims_markdown(results, exp, exploratory=bool(note))
    return "\n".join(lines)
