"""Figure 5: pass@k and maj@k (k = 1..n) per regime, read from the eval.json files of logged LLM runs.

`sharpening llm eval ... --out DIR` writes DIR/eval.json:
    {"run": str, "regime": {"mode", "alpha", "beta_inv", "normalization", "weight"} | null (base model),
     "model": str, "n": int, "temperature": float, "step": int | null,
     "datasets": {name: {"num_problems": int, "pass@k": {"1": float, ...}, "maj@k": {"1": float, ...},
                         "mean_length": float}},
     "maj_rule": "votes" | "abstains"}    (absent in files written before the rule was named: "abstains")
A training run directory keeps eval.json for its final evaluation, or eval/step_<N>.json for intermediate
ones. Every eval.json under the given folder is drawn; a run directory with only eval/step_<N>.json files
is drawn at its latest step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sharpening.figures import style
from sharpening.llm import runs
from sharpening.objective import Regime

METRICS = ("pass@k", "maj@k")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")


@dataclass
class EvalResult:
    """One eval.json: its run, regime (None = base model), step, and per data set {metric: (k, value)}."""

    path: str
    run: str
    regime: Regime | None
    step: int | None
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    model: str = ""
    lengths: dict[str, float] = field(default_factory=dict)  # mean response length (tokens) per data set
    temperature: float = 1.0  # the sampling temperature of the evaluation
    problems: dict[str, dict[str, float]] = field(default_factory=dict)  # per data set {problem id: share correct}
    counts: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)  # per data set {id: (correct, n)}
    question_lengths: dict[str, dict[str, float]] = field(default_factory=dict)  # {id: mean tokens}, from records
    max_new_tokens: int | None = None  # the response budget of the evaluation
    prefill: str = ""
    sampler: str = "ancestral"  # how the responses were drawn (`llm eval --sampler`)
    cap_frac: dict[str, float] = field(default_factory=dict)  # per data set: share of responses cut at the budget
    ignore_eos: bool = False  # every response ran to the budget (the fixed-length sensitivity evaluation)
    maj_rule: str = "abstains"  # maj@k's rule for samples without an answer (evaluation.MAJ_RULES); absent: abstains

    @property
    def mean_length(self) -> float:
        """Mean response length on the first data set (nan when the file has none)."""
        return next(iter(self.lengths.values()), float("nan"))

    @property
    def label(self) -> str:
        step = "" if self.step is None else f" @ step {self.step}"
        return f"{self.run}: {style.label(self.regime)}{step}"


def read_eval(path) -> EvalResult:
    """Parse and check one eval.json; a bad file raises ValueError naming the file and the bad entry."""
    data = runs.read_json(path)  # strict JSON: a bare NaN is refused, naming the file
    if not isinstance(data, dict):
        raise ValueError(f"{path}: an eval.json holds a JSON object, got {type(data).__name__}")
    for key in ("run", "regime", "datasets"):
        if key not in data:
            raise ValueError(f"{path}: missing key {key!r}; an eval.json has run, regime, model, n, step, datasets")
    try:
        regime = None if data["regime"] is None else Regime.from_spec(data["regime"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: bad regime {data['regime']!r}: {err}") from err
    sampler = data.get("sampler") or {}
    result = EvalResult(str(path), str(data["run"]), regime, data.get("step"), model=str(data.get("model", "")),
                        temperature=float(data.get("temperature") or 1.0), max_new_tokens=data.get("max_new_tokens"),
                        prefill=str(data.get("prefill") or ""),
                        sampler=str(sampler.get("name", "ancestral")) if isinstance(sampler, dict) else str(sampler),
                        maj_rule=str(data.get("maj_rule") or "abstains"), ignore_eos=bool(data.get("ignore_eos", False)))
    if not isinstance(data["datasets"], dict) or not data["datasets"]:
        raise ValueError(f"{path}: 'datasets' must be a non-empty {{name: results}} object")
    for name, scores in data["datasets"].items():
        result.curves[name] = {}
        for metric in METRICS:
            table = scores.get(metric) if isinstance(scores, dict) else None
            if not isinstance(table, dict) or not table:
                raise ValueError(f"{path}: datasets.{name} has no {metric!r} table like {{\"1\": 0.4, \"2\": 0.5}}")
            try:
                k = np.array(sorted(int(key) for key in table))
                value = np.array([float(table[str(i)]) for i in k])
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{path}: datasets.{name}.{metric} must map k = \"1\", \"2\", ... "
                                 f"to numbers, got {table!r}") from err
            result.curves[name][metric] = (k, value)
        if isinstance(scores.get("mean_length"), (int, float)):
            result.lengths[name] = float(scores["mean_length"])
        for key in ("cap_frac", "cap_hit_frac"):  # the share of responses cut at the budget, when recorded
            if isinstance(scores.get(key), (int, float)):
                result.cap_frac[name] = float(scores[key])
        try:
            result.counts[name] = {str(p["id"]): (int(p["correct"]), int(p["n"])) for p in scores.get("problems", [])}
            result.problems[name] = {str(p["id"]): p["correct"] / p["n"] for p in scores.get("problems", [])}
            result.question_lengths[name] = {str(p["id"]): float(np.mean([x["length"] for x in p["samples"]]))
                                             for p in scores.get("problems", []) if p.get("samples")}
        except (KeyError, TypeError, ZeroDivisionError) as err:
            raise ValueError(f"{path}: datasets.{name}.problems must be a list of {{id, correct, n > 0}}, "
                             f"got {str(scores.get('problems'))[:200]}") from err
    return result


def metric_label(metric: str, evals) -> str:
    """The metric's name; maj@k's with the rule of the evaluations' numbers: "maj@16 (abstaining rule)"."""
    if not metric.startswith("maj@"):
        return metric
    from sharpening.llm.evaluation import maj_label

    rules = sorted({e.maj_rule for e in evals if e is not None})
    return f"{metric} ({'; '.join(maj_label(r) for r in rules)})" if rules else metric


def find_evals(runs_dir) -> list[EvalResult]:
    """Every eval.json under runs_dir (recursively), plus the latest eval/step_<N>.json of a run without one."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise ValueError(f"--runs {str(runs_dir)!r} is not a directory")
    paths = sorted(runs_dir.rglob("eval.json"))
    finals = {p.parent for p in paths}
    latest = {}  # run directory -> (step, path)
    for p in runs_dir.rglob("eval/step_*.json"):
        match = re.fullmatch(r"step_(\d+)\.json", p.name)
        if match and p.parent.parent not in finals:
            latest[p.parent.parent] = max(latest.get(p.parent.parent, (-1, None)), (int(match[1]), p))
    paths += sorted(p for _, p in latest.values())
    return [read_eval(p) for p in paths]


def fig_pass_at_k(evals: list[EvalResult], axes=None, datasets=None):
    """Rows: data sets; columns: pass@k and maj@k against k, one curve per evaluated model. Returns axes."""
    if not evals:
        raise ValueError("no eval results to draw: pass at least one eval.json (see `sharpening llm eval`)")
    datasets = datasets or sorted({name for e in evals for name in e.curves})
    if axes is None:
        axes = style.axes(len(datasets), len(METRICS), squeeze=False)
    axes = np.reshape(axes, (len(datasets), len(METRICS)))
    markers, seen = {}, {}
    for e in evals:  # runs of the same family share a colour and are told apart by the marker
        n = seen[style.family(e.regime)] = seen.get(style.family(e.regime), -1) + 1
        markers[e.path] = MARKERS[n % len(MARKERS)]
    for row, name in zip(axes, datasets):
        for ax, metric in zip(row, METRICS):
            for e in evals:
                if name in e.curves:
                    k, value = e.curves[name][metric]
                    ax.plot(k, value, **style.line(e.regime, label=e.label, marker=markers[e.path], markersize=3.5))
            style.decorate(ax, "k (samples per problem)", f"{metric_label(metric, evals)} on {name}", legend=False,
                           ylim=(-0.02, 1.02))
            ax.set_xscale("log", base=2)
            k_max = max(e.curves[name][metric][0].max() for e in evals if name in e.curves)
            style.log_ticks(ax, 2 ** np.arange(int(np.log2(k_max)) + 1))  # 1, 2, 4, ...
    return style.figure_legend(axes, ncol=2)
