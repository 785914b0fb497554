"""The LLM figures: training curves, pass@k / maj@k before and after, the length bias, instability, a results table.

All of them draw `llm_runs.load_results(DIR)`: results/ by default (the committed runs of `make cpu-grid`), or
the folder given to `sharpening figures --runs DIR`. Seeds of one condition (model, regime, fixed length, lr)
are drawn as their median (line) and full range (band): with 2-3 seeds a percentile band would hide them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sharpening.figures import style
from sharpening.figures.llm_runs import (LABELS, PAPER_FAMILIES, SIGNAL_FAMILIES, TABLE_COLUMNS, UNSTABLE, WINDOW, NoData,
                                         Results, stability, table_columns, table_rows)
from sharpening.figures.pass_at_k import metric_label
from sharpening.objective import Regime

SEED_RANGE = (0, 50, 100)  # median and min-max over seeds
CURVES = (  # (metrics.jsonl key, axis label)
    ("reward/task", "task reward r (training batch)"),
    ("reward/shaped_mean", "shaped reward R (mean)"),
    ("length/mean", "response length (tokens)"),
    ("lp_ref/mean", "lp_ref (nats per response)"),
    ("kl_ref", "KL(π ‖ π_ref) (nats, Monte Carlo)"),
)
LR_DASHES = ("-", "--", ":", "-.")


def _line(condition, **overrides) -> dict:
    """style.line for a condition: tempered / tilted alphas told apart by their marker, fixed length by a thin line."""
    kw = style.line(condition.regime, label=condition.label, **overrides)
    if style.family(condition.regime) in ("tempered", "tilted"):
        kw.setdefault("marker", style.ALPHA_MARKERS.get(condition.regime.alpha, "o"))
        kw.setdefault("markersize", 3.5)
    if condition.fixed_length:
        kw["linewidth"] = 0.9
    return kw


def _stack(runs, key: str):
    """(steps, values [n_steps, n_seeds]) over the steps every run logged `key` at."""
    series = [r.series(key) for r in runs]
    steps = sorted(set.intersection(*(set(s.tolist()) for s, _ in series))) if series else []
    values = np.array([[v[list(s).index(t)] for s, v in series] for t in steps])
    return np.array(steps), values


def _no_data(ax, text: str):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=7, wrap=True)
    return ax


# ---------------------------------------------------------------------------------------------------------
# Training curves
# ---------------------------------------------------------------------------------------------------------


def _model_rows(axes, models: list[str], tall: bool = False) -> np.ndarray:
    """The [n_models, 3] grid of a per-model figure: the given axes, or new ones (taller rows for dense panels)."""
    if axes is None:
        size = {"figsize": (11, 3.4 * len(models))} if tall else {}
        axes = style.axes(len(models), 3, squeeze=False, **size)
    return np.reshape(axes, (len(models), 3))


def _step0_panel(ax, step0: dict, model: str, panel) -> None:
    """Draw a step-0 panel of the model, or say which command writes its step0.json."""
    if model in step0:
        panel(ax, step0[model])
    else:
        _no_data(ax, "no step0.json: python bench/llm_step0.py --config CONFIG --out DIR")


def fig_llm_training_curves(results: Results, axes=None, fixed_length: bool = False):
    """Rows: models; columns: CURVES vs step, one band per condition at the model's main lr (EOS kept unless
    fixed_length). Returns the axes [n_models, len(CURVES)]."""
    models = [m for m in results.models() if any(r.model == m for r in results.runs)]
    if not models:
        raise NoData(f"no training runs under {results.root}")
    if axes is None:
        axes = style.axes(len(models), len(CURVES), squeeze=False)
    axes = np.reshape(axes, (len(models), len(CURVES)))
    for row, model in zip(axes, models):
        conditions = results.conditions(model, results.main_lr(model), families=PAPER_FAMILIES)
        for ax, (key, ylabel) in zip(row, CURVES):
            for c, runs in conditions.items():
                if c.fixed_length != fixed_length:
                    continue
                steps, values = _stack(runs, key)
                if len(steps):
                    style.band(ax, steps, values, quantiles=SEED_RANGE, **_line(c, markevery=max(1, len(steps) // 5)))
            style.decorate(ax, "training step", ylabel, f"{model}, lr {results.main_lr(model):g}", legend=False)
    return style.figure_legend(axes, ncol=4)


# ---------------------------------------------------------------------------------------------------------
# pass@k and maj@k, before (base model) and after training
# ---------------------------------------------------------------------------------------------------------


def fig_llm_pass_at_k(results: Results, axes=None):
    """Rows: (model, data set); columns: pass@k, maj@k vs k. The base model, then per evaluated condition at the
    main lr the mean over seeds (line) and range (band). Returns the axes."""
    panels = []
    for model in results.models():
        base = results.base_eval(model)
        names = set(base.curves) if base else set()
        for runs in results.conditions(model, evaluated=True, families=PAPER_FAMILIES).values():
            names |= {n for r in runs for n in r.eval.curves}
        panels += [(model, name) for name in sorted(names)]
    if not panels:
        raise NoData(f"no eval.json under {results.root}")
    if axes is None:
        axes = style.axes(len(panels), 2, squeeze=False)
    axes = np.reshape(axes, (len(panels), 2))
    for row, (model, name) in zip(axes, panels):
        base = results.base_eval(model)
        conditions = results.conditions(model, results.main_lr(model), evaluated=True, families=PAPER_FAMILIES)
        for ax, metric in zip(row, ("pass@k", "maj@k")):
            if base is not None and name in base.curves:
                k, value = base.curves[name][metric]
                ax.plot(k, value, **style.line(None, marker="o", markersize=3, linewidth=2.2))
            for cold, dash in zip(results.base_temperatures(model), (":", "-.", (0, (1, 3)))):
                if name in cold.curves:
                    k, value = cold.curves[name][metric]
                    ax.plot(k, value, **style.line(None, label=temperature_label(cold.temperature), linestyle=dash,
                                                   marker="x", markersize=3))
            for c, runs in conditions.items():
                curves = [r.eval.curves[name][metric] for r in runs if name in r.eval.curves]
                if curves:
                    k = curves[0][0]
                    values = np.array([v for _, v in curves]).T  # [n_k, n_seeds]
                    drawn = ax.plot(k, values.mean(1), **_line(c))[0]
                    ax.fill_between(k, values.min(1), values.max(1), color=drawn.get_color(), alpha=0.12, linewidth=0)
            evals = [base, *results.base_temperatures(model), *(r.eval for rs in conditions.values() for r in rs)]
            style.decorate(ax, "k (samples per problem)", f"{metric_label(metric, evals)} (held out)",
                           f"{model}: {name}", legend=False, ylim=(-0.02, 1.02))
            ax.set_xscale("log", base=2)
            style.log_ticks(ax, [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= ax.get_xlim()[1] * 1.01])
    return style.figure_legend(axes, ncol=4)


# ---------------------------------------------------------------------------------------------------------
# The length bias at the LLM level
# ---------------------------------------------------------------------------------------------------------


def read_step0(root) -> list[dict]:
    """Every step0.json (bench/llm_step0.py) under root."""
    return [json.loads(p.read_text()) for p in sorted(Path(root).rglob("step0.json"))]


def panel_step0_scatter(ax, step0: dict):
    """lp_ref against length of the base model's responses (stopped at EOS), correct and wrong apart."""
    T = np.array([t for p in step0["prompts"] for t in p["length"]])
    lp = np.array([x for p in step0["prompts"] for x in p["lp_ref"]])
    r = np.array([x for p in step0["prompts"] for x in p["r"]])
    for correct, colour, name in ((0, style.COLORS["sharpening"], "wrong"), (1, style.COLORS["task reward"], "correct")):
        sel = r == correct
        ax.plot(T[sel], lp[sel], linestyle="none", marker="o", markersize=2.5, alpha=0.5, color=colour,
                label=f"π_ref sample, {name} ({sel.sum()})")
    return style.decorate(ax, "response length T (tokens)", "lp_ref (nats)",
                          f"{step0['model']}: base samples at step 0", legend=False)


def panel_by_condition(ax, results: Results, model: str, value, ylabel: str, base_value=None, title: str = "",
                       families: tuple[str, ...] = PAPER_FAMILIES, fixed_length: bool = True):
    """One column per evaluated condition at the main lr (the fixed-length variants too unless fixed_length is
    False): each seed a dot, the mean a bar; the base model a line."""
    conditions = {c: runs for c, runs in
                  results.conditions(model, results.main_lr(model), evaluated=True, families=families).items()
                  if fixed_length or not c.fixed_length}
    for i, (c, runs) in enumerate(conditions.items()):
        ys = [value(r.eval) for r in runs]
        kw = _line(c)
        ax.bar(i, np.mean(ys), color=kw["color"], alpha=0.35, width=0.7, hatch="//" if c.fixed_length else None)
        ax.plot([i] * len(ys), ys, linestyle="none", marker=kw.get("marker", "o"), markersize=3.5,
                color=kw["color"], label=c.label)
    base = results.base_eval(model)
    if base is not None and base_value is not None:
        ax.axhline(base_value(base), **style.line(None, linewidth=1.2, linestyle="--"))
    ax.set_xticks(range(len(conditions)), [c.label for c in conditions], rotation=60, ha="right", fontsize=6.5)
    return style.decorate(ax, "", ylabel, title, legend=False)


def fig_llm_length_bias(results: Results, axes=None):
    """Per model: base samples' lp_ref vs length; held-out response length and pass@1 per condition, with the
    fixed-length (EOS ignored) variants beside the normal ones. Returns the axes [n_models, 3]."""
    models = [m for m in results.models() if results.conditions(m, evaluated=True, families=PAPER_FAMILIES)]
    if not models:
        raise NoData(f"no evaluated training runs under {results.root}")
    axes = _model_rows(axes, models, tall=True)
    step0 = {s["model"]: s for s in read_step0(results.root)}
    for row, model in zip(axes, models):
        _step0_panel(row[0], step0, model, panel_step0_scatter)
        panel_by_condition(row[1], results, model, lambda e: e.mean_length, "held-out response length (tokens)",
                           lambda e: e.mean_length, "after training (dashed: π_ref)")
        panel_by_condition(row[2], results, model, lambda e: _first(e, "pass@k", 1), "held-out pass@1",
                           lambda e: _first(e, "pass@k", 1), "after training (dashed: π_ref)")
    return style.figure_legend(axes, ncol=4)


# ---------------------------------------------------------------------------------------------------------
# The label-free signals next to the task reward and sharpening
# ---------------------------------------------------------------------------------------------------------


def fig_llm_signals(results: Results, axes=None):
    """Per model: the task reward of the training batches (graded and logged, trained on only by task reward)
    against the step; held-out pass@1 and maj@16 per condition. Label-free signals next to task reward and
    sharpening, at the main lr, EOS kept. Returns the axes [n_models, 3]."""
    def has_signal(model):
        return any(style.family(c.regime) not in PAPER_FAMILIES for c in results.conditions(model, evaluated=True))

    models = [m for m in results.models() if has_signal(m)]
    if not models:
        raise NoData(f"no evaluated label-free signal runs (majority_vote, self_certainty, ...) under {results.root}")
    axes = _model_rows(axes, models, tall=True)
    for row, model in zip(axes, models):
        lr = results.main_lr(model)
        for c, runs in results.conditions(model, lr, families=SIGNAL_FAMILIES).items():
            steps, values = _stack(runs, "reward/task")
            if len(steps) and not c.fixed_length:
                style.band(row[0], steps, values, quantiles=SEED_RANGE, **_line(c))
        style.decorate(row[0], "training step", "task reward r (training batch, graded)", f"{model}, lr {lr:g}",
                       legend=False)
        maj = max(_ks(results, model, "maj@k"))
        panel_by_condition(row[1], results, model, lambda e: _first(e, "pass@k", 1), "held-out pass@1",
                           lambda e: _first(e, "pass@k", 1), "after training (dashed: π_ref)", SIGNAL_FAMILIES,
                           fixed_length=False)
        evals = [r.eval for rs in results.conditions(model, evaluated=True).values() for r in rs]
        panel_by_condition(row[2], results, model, lambda e: _first(e, "maj@k", maj),
                           f"held-out {metric_label(f'maj@{maj}', evals)}",
                           lambda e: _first(e, "maj@k", maj), "after training (dashed: π_ref)", SIGNAL_FAMILIES,
                           fixed_length=False)
    return style.figure_legend(axes, ncol=4)


def _ks(results: Results, model: str, metric: str) -> list[int]:
    """The k of `metric` every evaluated run of the model reports."""
    runs = [r for rs in results.conditions(model, evaluated=True).values() for r in rs]
    return sorted(set.intersection(*(set(int(k) for k in next(iter(r.eval.curves.values()))[metric][0])
                                     for r in runs)))


def temperature_label(t: float) -> str:
    """The base model sampled at token-level temperature t = 1/alpha."""
    return f"π_ref at token temperature {t:g} (= 1/α, α = {1 / t:g})"


def _first(result, metric: str, k: int) -> float:
    ks, values = next(iter(result.curves.values()))[metric]
    return float(values[list(ks).index(k)])


# ---------------------------------------------------------------------------------------------------------
# Instability at the LLM level
# ---------------------------------------------------------------------------------------------------------


def step0_variances(step0: dict) -> dict:
    """The reward variances at step 0, each across one prompt's samples (population variance) and averaged over
    prompts, i.e. the spread the leave-one-out baseline works against:

    L [n]: response lengths 1..max_length (EOS ignored; the first L log-probs of a sample are an L-token sample)
    lp_ref [n]: Var[lp_ref] of L-token responses: the sharpening reward's variance
    independent [n]: sum over t <= L of Var[log pi_ref(y_t | ...)]: what Var[lp_ref] would be if the tokens'
        log-probs were uncorrelated (the theory's i.i.d.-token model: linear in L for identical tokens)
    eos_length, eos_lp_ref: mean length and Var[lp_ref] of the responses that stop at EOS
    task: mean over prompts of p (1 - p), the task reward's variance (p: the prompt's share of correct samples)
    """
    tok = [np.array(p["fixed_length_lp_ref_tok"]) for p in step0["prompts"]]  # each [G, max_length]
    p = np.array([np.mean(q["r"]) for q in step0["prompts"]])
    return {"L": np.arange(1, step0["max_length"] + 1),
            "lp_ref": np.mean([np.var(np.cumsum(t, axis=1), axis=0) for t in tok], axis=0),
            "independent": np.mean([np.cumsum(np.var(t, axis=0)) for t in tok], axis=0),
            "eos_length": float(np.mean([np.mean(q["length"]) for q in step0["prompts"]])),
            "eos_lp_ref": float(np.mean([np.var(q["lp_ref"]) for q in step0["prompts"]])),
            "task": float(np.mean(p * (1 - p)))}


def panel_step0_variance(ax, step0: dict):
    """Var[R] at step 0 against the response length: sharpening (R = lp_ref; tempered alpha = 2 has the same R at
    step 0), the uncorrelated-tokens sum, and the task reward's p(1 - p)."""
    v = step0_variances(step0)
    ax.plot(v["L"], v["lp_ref"], **style.line(Regime.sharpening(), label="sharpening R = lp_ref, EOS ignored",
                                              marker="o", markersize=2))
    style.theory(ax, v["L"], v["independent"], label="Σ_t Var[log π_ref(y_t)] (tokens uncorrelated)", linestyle="--")
    style.theory(ax, v["L"], v["lp_ref"][0] * v["L"], label="linear in T through T = 1", linestyle=":")
    ax.plot([v["eos_length"]], [v["eos_lp_ref"]], **style.line(Regime.sharpening(), label="sharpening, stopped at EOS "
                                                                "(mean length)", marker="*", markersize=9, linestyle="none"))
    ax.plot(v["L"], np.full(len(v["L"]), v["task"]), **style.line(Regime.task_reward(),
                                                                   label=f"task reward p(1-p) = {v['task']:.3f}"))
    style.decorate(ax, "response length T (tokens)", "Var[R] across a prompt's samples",
                   f"{step0['model']}: reward variance at step 0", xscale="log", yscale="log", legend=False)
    return style.log_ticks(ax, [t for t in (1, 2, 4, 8, 16, 32, 64, 128, 256) if t <= v["L"][-1]])


def panel_lr_sweep(ax, results: Results, model: str):
    """Fraction of runs labelled unstable (llm_runs.stability, first WINDOW steps) against the learning rate,
    per regime (EOS kept). Returns ax."""
    by_regime: dict[Regime, dict[float, list[str]]] = {}
    for run in results.runs:
        if run.model == model and not run.fixed_length:
            by_regime.setdefault(run.regime, {}).setdefault(run.lr, []).append(stability(run))
    for regime, by_lr in sorted(by_regime.items(), key=lambda kv: (style.family(kv[0]), kv[0].alpha)):
        if len(by_lr) < 2:  # no sweep for this regime
            continue
        lrs = sorted(by_lr)
        frac = [np.mean([x in UNSTABLE for x in by_lr[lr]]) for lr in lrs]
        counts = [len(by_lr[lr]) for lr in lrs]
        ax.plot(lrs, frac, **style.line(regime, marker="o", markersize=4,
                                        label=f"{style.label(regime)} ({'/'.join(map(str, counts))} runs)"))
    return style.decorate(ax, "learning rate (AdamW)", "fraction oscillating, collapsed or diverged",
                          f"{model}: first {WINDOW} steps", xscale="log", ylim=(-0.03, 1.03), legend=False)


def panel_lr_curves(ax, results: Results, model: str, key: str = "lp_ref/mean"):
    """`key` against step for every sharpening / tempered run of the learning-rate sweep: a line per run,
    dashes by learning rate."""
    runs = [r for r in results.runs if r.model == model and not r.fixed_length
            and style.family(r.regime) in ("sharpening", "tempered")]
    swept = {r.regime for r in runs if len({q.lr for q in runs if q.regime == r.regime}) > 1}
    lrs = sorted({r.lr for r in runs if r.regime in swept})
    for run in sorted((r for r in runs if r.regime in swept), key=lambda r: (r.lr, style.family(r.regime))):
        steps, values = run.series(key)
        keep = steps <= WINDOW
        dash = LR_DASHES[lrs.index(run.lr) % len(LR_DASHES)]
        ax.plot(steps[keep], values[keep], **style.line(run.regime, linestyle=dash, linewidth=1.0, alpha=0.8,
                                                        label=f"{style.label(run.regime)}, lr {run.lr:g}"))
    return style.decorate(ax, "training step", "lp_ref (nats per response)", "learning-rate sweep, every run",
                          legend=False)


def fig_llm_instability(results: Results, axes=None):
    """Per model: Var[R] vs length at step 0; unstable fraction vs lr; the sweep's lp_ref curves. [n_models, 3]."""
    models = results.models()
    if not models:
        raise NoData(f"no LLM results under {results.root}")
    axes = _model_rows(axes, models)
    step0 = {s["model"]: s for s in read_step0(results.root)}
    for row, model in zip(axes, models):
        _step0_panel(row[0], step0, model, panel_step0_variance)
        panel_lr_sweep(row[1], results, model)
        panel_lr_curves(row[2], results, model)
    return style.figure_legend(axes, ncol=3)


# ---------------------------------------------------------------------------------------------------------
# The results table (PNG; the Markdown twin is llm_runs.results_markdown)
# ---------------------------------------------------------------------------------------------------------


def fig_llm_results_table(results: Results, ax=None):
    """The results table of every model as an image (one table per model, stacked). Returns the axes."""
    models = results.models()
    if not models:
        raise NoData(f"no LLM results under {results.root}")
    tables = [(m, table_rows(results, m)) for m in models]
    height = sum(0.25 * (len(rows) + 2) + 0.3 for _, rows in tables)
    axes = np.ravel(ax) if ax is not None else np.ravel(style.axes(len(tables), 1, squeeze=False,
                                                                   figsize=(12, height), layout=None))
    for a, (model, rows) in zip(axes, tables):
        a.axis("off")
        if not rows:
            _no_data(a, f"{model}: no evaluated runs")
            continue
        table = a.table(cellText=rows, colLabels=table_columns(results, model), loc="center", cellLoc="center")
        table.auto_set_font_size(False)
        table.set_fontsize(7)
        table.auto_set_column_width(list(range(len(TABLE_COLUMNS))))
        for (i, _), cell in table.get_celld().items():
            if i == 0:
                cell.set_text_props(weight="bold")
        a.set_title(f"{model}: held-out results after training (mean, range over seeds); unstable = "
                    f"{'/'.join(UNSTABLE)} in {WINDOW} steps", fontsize=8)
    return axes


__all__ = ["fig_llm_training_curves", "fig_llm_pass_at_k", "fig_llm_length_bias", "fig_llm_instability", "fig_llm_signals",
           "fig_llm_results_table", "step0_variances", "LABELS"]
