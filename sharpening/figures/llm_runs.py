"""LLM run results as the LLM figures read them: runs found by their files, grouped by what their config says.

A run folder holds config.yaml (the resolved TrainConfig), metrics.jsonl (one line per step) and, when it was
evaluated, eval.json (`sharpening llm eval`'s format, sharpening/figures/pass_at_k.py). A base-model evaluation
is a folder with only eval.json, whose regime is null. `load_results(DIR)` reads every such folder under DIR,
at any depth: results/cpu/<run>/ from `make cpu-grid`, a GPU run's folder dropped next to them, or a user's
runs/ folder (checkpoints are never read). Runs are told apart by their metadata, never by folder names:
a condition is (model, regime, fixed length or not, learning rate), and its runs are its seeds.

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
from sharpening.figures.pass_at_k import EvalResult, read_eval
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
    def condition(self) -> "Condition":
        return Condition(self.model, self.regime, self.fixed_length, self.lr)

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one metric; steps where it is missing or null are left out."""
        pairs = [(m["step"], m[key]) for m in self.metrics if m.get(key) is not None]
        steps, values = zip(*pairs) if pairs else ((), ())
        return np.array(steps, dtype=int), np.array(values, dtype=float)


@dataclass(frozen=True)
class Condition:
    """What a run's seeds share: the model, the regime, EOS ignored or not, the learning rate."""

    model: str
    regime: Regime
    fixed_length: bool
    lr: float

    @property
    def label(self) -> str:
        return style.label(self.regime) + (", fixed length" if self.fixed_length else "")


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

    def models(self) -> list[str]:
        return sorted({r.model for r in self.runs} | {b.model for b in self.base})

    def main_lr(self, model: str) -> float:
        """The learning rate of most of a model's runs: its main grid (the others form a learning-rate sweep)."""
        lrs = [r.lr for r in self.runs if r.model == model]
        if not lrs:
            return math.nan
        values, counts = np.unique(lrs, return_counts=True)
        return float(values[np.argmax(counts)])

    def conditions(self, model: str, lr: float | None = None, evaluated: bool = False,
                   families: tuple[str, ...] | None = None) -> dict[Condition, list[Run]]:
        """{condition: its runs sorted by seed} for one model, optionally at one lr / only runs with an eval / only
        regimes of some families (style.family names)."""
        groups: dict[Condition, list[Run]] = {}
        for run in self.runs:
            if (run.model == model and (lr is None or run.lr == lr) and (not evaluated or run.eval is not None)
                    and (families is None or style.family(run.regime) in families)):
                groups.setdefault(run.condition, []).append(run)
        return {c: sorted(rs, key=lambda r: r.seed) for c, rs in sorted(groups.items(), key=lambda kv: _order(kv[0]))}

    def base_eval(self, model: str) -> EvalResult | None:
        """The base model's evaluation at temperature 1 (pure sampling from pi_ref)."""
        matches = [b for b in self.base if b.model == model and b.temperature == 1.0]
        return matches[0] if matches else None

    def base_temperatures(self, model: str) -> list[EvalResult]:
        """The base model evaluated at token-level temperatures other than 1, coldest last."""
        return sorted((b for b in self.base if b.model == model and b.temperature != 1.0),
                      key=lambda b: -b.temperature)


def _order(c: Condition):
    """Conditions in the paper's order: task reward, sharpening, tempered, tilted, mixed, then the label-free
    signals; fixed length last."""
    rank = list(style.COLORS).index(style.family(c.regime))  # COLORS lists the families in that order
    return (c.fixed_length, rank, c.regime.alpha, c.regime.beta_inv, c.lr)


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
            if result.regime is None:
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

TABLE_COLUMNS = ("condition", "seeds", "pass@1", "pass@16", "maj@16", "length", "train r (last 3)", "lp_ref (last 3)",
                 "unstable")


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


def table_rows(results: Results, model: str) -> list[list[str]]:
    """One row per evaluated condition of the model at its main lr (mean and range over seeds), base model first."""
    rows = []
    bases = [("base model π_ref", results.base_eval(model))]
    bases += [(f"π_ref, token temperature {b.temperature:g}", b) for b in results.base_temperatures(model)]
    for label, base in bases:
        if base is not None:
            rows.append([label, "–", _mean_range([_eval_value(base, "pass@k", 1)]),
                         _mean_range([_eval_value(base, "pass@k", 16)]), _mean_range([_eval_value(base, "maj@k", 16)]),
                         _mean_range([base.mean_length], 1), "–", "–", "–"])
    for c, runs in results.conditions(model, results.main_lr(model), evaluated=True).items():
        labels = [stability(r) for r in runs]
        rows.append([c.label, str(len(runs)),
                     _mean_range([_eval_value(r.eval, "pass@k", 1) for r in runs]),
                     _mean_range([_eval_value(r.eval, "pass@k", 16) for r in runs]),
                     _mean_range([_eval_value(r.eval, "maj@k", 16) for r in runs]),
                     _mean_range([r.eval.mean_length for r in runs], 1),
                     _mean_range([_last(r, "reward/task") for r in runs], 2),
                     _mean_range([_last(r, "lp_ref/mean") for r in runs], 1),
                     f"{sum(x in UNSTABLE for x in labels)}/{len(labels)}"])
    return rows


def mode_split_rows(results: Results, model: str) -> tuple[list[str], list[list[str]]] | None:
    """Held-out pass@1 per condition (main lr) on the problems where the base model's mode is wrong, and where
    it is right. The mode's answer is read from pi_ref at its coldest token temperature: a problem's mode is
    right when at least half of those samples are correct. Every row uses the same split, so the rows compare
    fairly (the split is noisy; the base row at temperature 1 shows how noisy). (header, rows); None without a
    cold evaluation."""
    colds = results.base_temperatures(model)
    if not colds or not colds[-1].problems:
        return None
    cold = next(iter(colds[-1].problems.values()))
    wrong = {i for i, share in cold.items() if share < 0.5}
    right = set(cold) - wrong

    def split(result: EvalResult | None):
        shares = next(iter(result.problems.values()), {}) if result is not None else {}
        if not set(cold) <= set(shares):
            return None, None
        return (float(np.mean([shares[i] for i in wrong])) if wrong else None,
                float(np.mean([shares[i] for i in right])) if right else None)

    colds_label = f"π_ref, token temperature {colds[-1].temperature:g} (defines the split)"
    rows = []
    for label, base in [("base model π_ref", results.base_eval(model)), (colds_label, colds[-1])]:
        w, r = split(base)
        rows.append([label, "–", _mean_range([w]), _mean_range([r])])
    for c, runs in results.conditions(model, results.main_lr(model), evaluated=True).items():
        pairs = [split(run.eval) for run in runs]
        rows.append([c.label, str(len(runs)), _mean_range([w for w, _ in pairs]), _mean_range([r for _, r in pairs])])
    header = ["condition", "seeds", f"pass@1 where the mode is wrong ({len(wrong)} problems)",
              f"pass@1 where the mode is right ({len(right)} problems)"]
    return header, rows


def _markdown_table(header, rows) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def results_markdown(results: Results) -> str:
    """The results table of every model as Markdown (figures/llm_results.md)."""
    lines = ["# LLM results", "",
             f"Drawn from `{results.root}` by `sharpening figures --only llm_results`. Per condition: mean over seeds "
             "(range in brackets) of the held-out pass@1, pass@16, maj@16 and response length (tokens) after "
             "training, the training task reward and lp_ref (nats per response) over the last 3 steps, and the "
             f"runs labelled unstable (oscillating, collapsed or diverged in their first {WINDOW} steps; "
             "sharpening/figures/llm_runs.py). Conditions at each model's main learning rate.", ""]
    for model in results.models():
        lr = results.main_lr(model) if any(r.model == model for r in results.runs) else math.nan
        lines += [f"## {model}" + ("" if math.isnan(lr) else f" (lr {lr:g})"), ""]
        lines += _markdown_table(TABLE_COLUMNS, table_rows(results, model)) + [""]
        split = mode_split_rows(results, model)
        if split is not None:
            lines += [f"### {model}: where the base model's mode is wrong", "",
                      "Held-out pass@1 on the problems where π_ref's mode answers wrongly and where it answers "
                      "rightly (`llm_runs.mode_split_rows`).", ""]
            lines += _markdown_table(*split) + [""]
    return "\n".join(lines)
