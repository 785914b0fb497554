"""The LLM figures: training curves, pass@k / maj@k before and after, the length bias, instability, a results table.

All of them draw `llm_runs.load_results(DIR)`: results/ by default (the committed runs of `make cpu-grid`), or
the folder given to `sharpening figures --runs DIR`. One row of panels per experiment (model, held-out task,
response budget): experiments are never mixed in a panel. Held-out scores are drawn with their 95% CI over
seeds x questions (hierarchical bootstrap, sharpening/stats.py); training curves with the seeds' full range
(a band over 2-6 seeds is their range, said in the caption). Every condition has its own colour.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sharpening.figures import style
from sharpening.figures.llm_runs import (LABELS, PAPER_FAMILIES, SIGNAL_FAMILIES, TABLE_COLUMNS, UNSTABLE, WINDOW,
                                         Experiment, NoData, Results, failed, pass_matrix, stability, table_rows)
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


# Within a family, each condition gets its own shade: tempered / tilted by alpha and beta_inv, fixed length lighter.
ALPHA_SHADES = {0.5: 0.55, 1.25: 0.3, 2.0: 0.0, 4.0: -0.3, 8.0: -0.55}
BETA_SHADES = {100.0: 0.0, 1e4: -0.4}


def _line(condition, **overrides) -> dict:
    """style.line for a condition, in its own colour: tempered / tilted alphas also told apart by their marker,
    fixed length by a lighter shade and a thin line."""
    kw = style.line(condition.regime, label=condition.label, **overrides)
    family = style.family(condition.regime)
    amount = 0.0
    if family in ("tempered", "tilted"):
        kw.setdefault("marker", style.ALPHA_MARKERS.get(condition.regime.alpha, "o"))
        kw.setdefault("markersize", 3.5)
        amount = ALPHA_SHADES.get(condition.regime.alpha, 0.0) if family == "tempered" else \
            BETA_SHADES.get(condition.regime.beta_inv, 0.2)
    if condition.fixed_length:
        kw["linewidth"] = 0.9
        amount = min(amount + 0.45, 0.75)
    if "color" not in overrides:
        kw["color"] = style.shade(kw["color"], amount)
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


def _rows(axes, exps: list[Experiment], tall: bool = False, ncols: int = 3) -> np.ndarray:
    """The [n_experiments, ncols] grid of a per-experiment figure: the given axes, or new ones."""
    if axes is None:
        size = {"figsize": (11, 3.4 * len(exps))} if tall else {}
        axes = style.axes(len(exps), ncols, squeeze=False, **size)
    return np.reshape(axes, (len(exps), ncols))


def _step0_panel(ax, step0: dict, exp: Experiment, panel) -> None:
    """Draw the experiment's step-0 panel, or say which command writes its step0.json."""
    if _step0_key(exp) in step0:
        panel(ax, step0[_step0_key(exp)])
    else:
        _no_data(ax, "no step0.json for this experiment: python bench/llm_step0.py --config CONFIG --out DIR")


def _step0_key(exp_or_step0) -> tuple:
    """step0.json files belong to the experiment of the same model, task and budget."""
    if isinstance(exp_or_step0, Experiment):
        return (exp_or_step0.model, exp_or_step0.task, exp_or_step0.budget)
    s = exp_or_step0
    return (s["model"], s.get("dataset", "?"), int(s.get("max_new_tokens", 0)))


def fig_llm_training_curves(results: Results, axes=None, fixed_length: bool = False):
    """Rows: experiments; columns: CURVES vs step, one band (median, full range over seeds) per condition at the
    experiment's main lr (EOS kept unless fixed_length). The shaped reward R is drawn on a symlog axis: the task
    reward's 0/1 and the likelihood rewards' hundreds of nats share the panel without hiding either.
    Returns the axes [n_experiments, len(CURVES)]."""
    exps = [e for e in results.experiments() if any(r.experiment == e for r in results.runs)]
    if not exps:
        raise NoData(f"no training runs under {results.root}")
    if axes is None:
        axes = style.axes(len(exps), len(CURVES), squeeze=False)
    axes = np.reshape(axes, (len(exps), len(CURVES)))
    for row, exp in zip(axes, exps):
        conditions = results.conditions(exp, results.main_lr(exp), families=PAPER_FAMILIES)
        for ax, (key, ylabel) in zip(row, CURVES):
            for c, runs in conditions.items():
                if c.fixed_length != fixed_length:
                    continue
                steps, values = _stack(runs, key)
                if len(steps):
                    style.band(ax, steps, values, quantiles=SEED_RANGE, **_line(c, markevery=max(1, len(steps) // 5)))
            style.decorate(ax, "training step", ylabel, f"{exp.label}, lr {results.main_lr(exp):g}", legend=False)
            if key == "reward/shaped_mean":
                ax.set_yscale("symlog", linthresh=1.0)
    return style.figure_legend(axes, ncol=4)


# ---------------------------------------------------------------------------------------------------------
# pass@k and maj@k, before (base model) and after training
# ---------------------------------------------------------------------------------------------------------


def _pass_at_k_ci(evals, k_values) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, lo, hi) of pass@k at each k over seeds x questions (hierarchical bootstrap 95% CI)."""
    from sharpening.stats import mean_ci

    est = [mean_ci(pass_matrix(evals, int(k))[0], n_boot=2000) for k in k_values]
    return tuple(np.array([getattr(e, f) for e in est]) for f in ("value", "lo", "hi"))


def fig_llm_pass_at_k(results: Results, axes=None):
    """Rows: experiments; columns: pass@k, maj@k vs k. The base model, then per evaluated condition at the main lr
    the mean over seeds (line) with, for pass@k, its 95% CI over seeds x questions (band). maj@k has no band:
    the committed evaluations hold no per-question maj@k. Returns the axes."""
    panels = []
    for exp in results.experiments():
        if results.base_eval(exp) is not None or results.conditions(exp, evaluated=True, families=PAPER_FAMILIES):
            panels.append(exp)
    if not panels:
        raise NoData(f"no eval.json under {results.root}")
    axes = _rows(axes, panels, ncols=2)
    for row, exp in zip(axes, panels):
        name = exp.task
        base = results.base_eval(exp)
        conditions = results.conditions(exp, results.main_lr(exp), evaluated=True, families=PAPER_FAMILIES)
        for ax, metric in zip(row, ("pass@k", "maj@k")):
            if base is not None and name in base.curves:
                k, value = base.curves[name][metric]
                ax.plot(k, value, **style.line(None, marker="o", markersize=3, linewidth=2.2))
            for cold, dash in zip(results.base_temperatures(exp), (":", "-.", (0, (1, 3)))):
                if name in cold.curves:
                    k, value = cold.curves[name][metric]
                    ax.plot(k, value, **style.line(None, label=temperature_label(cold.temperature), linestyle=dash,
                                                   marker="x", markersize=3))
            for c, runs in conditions.items():
                evals = [r.eval for r in runs if name in r.eval.curves]
                if not evals:
                    continue
                k = evals[0].curves[name][metric][0]
                if metric == "pass@k" and all(e.counts.get(name) for e in evals):
                    mean, lo, hi = _pass_at_k_ci(evals, k)
                    drawn = ax.plot(k, mean, **_line(c))[0]
                    ax.fill_between(k, lo, hi, color=drawn.get_color(), alpha=0.12, linewidth=0)
                else:
                    ax.plot(k, np.mean([e.curves[name][metric][1] for e in evals], axis=0), **_line(c))
            style.decorate(ax, "k (samples per problem)", f"{metric} (held out)", exp.label, legend=False,
                           ylim=(-0.02, 1.02))
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


def panel_by_condition(ax, results: Results, exp: Experiment, value, ylabel: str, base_value=None, title: str = "",
                       families: tuple[str, ...] = PAPER_FAMILIES, fixed_length: bool = True, pass_k: int | None = None):
    """One column per evaluated condition at the main lr (the fixed-length variants too unless fixed_length is
    False): each seed a dot, the mean a bar, and for pass@k (pass_k given) the 95% CI over seeds x questions as
    an error bar; the base model a dashed line."""
    from sharpening.stats import mean_ci

    conditions = {c: runs for c, runs in
                  results.conditions(exp, results.main_lr(exp), evaluated=True, families=families).items()
                  if fixed_length or not c.fixed_length}
    for i, (c, runs) in enumerate(conditions.items()):
        ys = [value(r.eval) for r in runs]
        kw = _line(c)
        ax.bar(i, np.mean(ys), color=kw["color"], alpha=0.35, width=0.7, hatch="//" if c.fixed_length else None)
        ax.plot([i] * len(ys), ys, linestyle="none", marker=kw.get("marker", "o"), markersize=3.5,
                color=kw["color"], label=c.label)
        if pass_k is not None and all(next(iter(r.eval.counts.values()), None) for r in runs):
            est = mean_ci(pass_matrix([r.eval for r in runs], pass_k)[0], n_boot=2000)
            ax.errorbar(i, est.value, yerr=[[est.value - est.lo], [est.hi - est.value]], color="black",
                        capsize=2.5, linewidth=0.9)
    base = results.base_eval(exp)
    if base is not None and base_value is not None:
        ax.axhline(base_value(base), **style.line(None, linewidth=1.2, linestyle="--"))
    ax.set_xticks(range(len(conditions)), [c.label for c in conditions], rotation=60, ha="right", fontsize=6.5)
    return style.decorate(ax, "", ylabel, title, legend=False)


def fig_llm_length_bias(results: Results, axes=None):
    """Per experiment: base samples' lp_ref vs length; held-out response length and pass@1 (95% CI) per
    condition, with the fixed-length (EOS ignored) variants beside the normal ones. Returns the axes [n, 3]."""
    exps = [e for e in results.experiments() if results.conditions(e, evaluated=True, families=PAPER_FAMILIES)]
    if not exps:
        raise NoData(f"no evaluated training runs under {results.root}")
    axes = _rows(axes, exps, tall=True)
    step0 = {_step0_key(s): s for s in read_step0(results.root)}
    for row, exp in zip(axes, exps):
        _step0_panel(row[0], step0, exp, panel_step0_scatter)
        panel_by_condition(row[1], results, exp, lambda e: e.mean_length, "held-out response length (tokens)",
                           lambda e: e.mean_length, "after training (dashed: π_ref)")
        panel_by_condition(row[2], results, exp, lambda e: _first(e, "pass@k", 1), "held-out pass@1",
                           lambda e: _first(e, "pass@k", 1), "after training (dashed: π_ref; bars: 95% CI)",
                           pass_k=1)
    return style.figure_legend(axes, ncol=4)


# ---------------------------------------------------------------------------------------------------------
# The label-free signals next to the task reward and sharpening
# ---------------------------------------------------------------------------------------------------------


def fig_llm_signals(results: Results, axes=None):
    """Per experiment: the task reward of the training batches (graded and logged, trained on only by task
    reward) against the step; held-out pass@1 (95% CI) and maj@k per condition. Label-free signals next to task
    reward and sharpening, at the main lr, EOS kept. Returns the axes [n_experiments, 3]."""
    def has_signal(exp):
        return any(style.family(c.regime) not in PAPER_FAMILIES for c in results.conditions(exp, evaluated=True))

    exps = [e for e in results.experiments() if has_signal(e)]
    if not exps:
        raise NoData(f"no evaluated label-free signal runs (majority_vote, self_certainty, ...) under {results.root}")
    axes = _rows(axes, exps, tall=True)
    for row, exp in zip(axes, exps):
        lr = results.main_lr(exp)
        for c, runs in results.conditions(exp, lr, families=SIGNAL_FAMILIES).items():
            steps, values = _stack(runs, "reward/task")
            if len(steps) and not c.fixed_length:
                style.band(row[0], steps, values, quantiles=SEED_RANGE, **_line(c))
        style.decorate(row[0], "training step", "task reward r (training batch, graded)", f"{exp.label}, lr {lr:g}",
                       legend=False)
        maj = max(_ks(results, exp, "maj@k"))
        panel_by_condition(row[1], results, exp, lambda e: _first(e, "pass@k", 1), "held-out pass@1",
                           lambda e: _first(e, "pass@k", 1), "after training (dashed: π_ref; bars: 95% CI)",
                           SIGNAL_FAMILIES, fixed_length=False, pass_k=1)
        panel_by_condition(row[2], results, exp, lambda e: _first(e, "maj@k", maj), f"held-out maj@{maj}",
                           lambda e: _first(e, "maj@k", maj), "after training (dashed: π_ref)", SIGNAL_FAMILIES,
                           fixed_length=False)
    return style.figure_legend(axes, ncol=4)


def _ks(results: Results, exp: Experiment, metric: str) -> list[int]:
    """The k of `metric` every evaluated run of the experiment reports."""
    runs = [r for rs in results.conditions(exp, evaluated=True).values() for r in rs]
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
    answer, after, cov (when step0.json records fixed_length_answer_end): Var[lp_ref] of the max_length-token
        responses split as Var[answer tokens' sum] + Var[after-answer tokens' sum] + 2 Cov[the two]
    """
    tok = [np.array(p["fixed_length_lp_ref_tok"]) for p in step0["prompts"]]  # each [G, max_length]
    p = np.array([np.mean(q["r"]) for q in step0["prompts"]])
    return {"L": np.arange(1, step0["max_length"] + 1),
            "lp_ref": np.mean([np.var(np.cumsum(t, axis=1), axis=0) for t in tok], axis=0),
            "independent": np.mean([np.cumsum(np.var(t, axis=0)) for t in tok], axis=0),
            "eos_length": float(np.mean([np.mean(q["length"]) for q in step0["prompts"]])),
            "eos_lp_ref": float(np.mean([np.var(q["lp_ref"]) for q in step0["prompts"]])),
            "task": float(np.mean(p * (1 - p))), **_answer_split(step0)}


def _answer_split(step0: dict) -> dict:
    """Var[lp_ref] at the full fixed length split into the answer's tokens and the tokens after the answer."""
    if not all("fixed_length_answer_end" in q for q in step0["prompts"]):
        return {}
    parts = {"answer": [], "after": [], "cov": []}
    for q in step0["prompts"]:
        tok, end = np.array(q["fixed_length_lp_ref_tok"]), np.array(q["fixed_length_answer_end"])
        before = (np.arange(tok.shape[1])[None, :] < end[:, None])  # [G, L]: the answer's tokens
        a, b = (tok * before).sum(1), (tok * ~before).sum(1)
        parts["answer"].append(np.var(a))
        parts["after"].append(np.var(b))
        parts["cov"].append(np.mean((a - a.mean()) * (b - b.mean())))
    return {k: float(np.mean(v)) for k, v in parts.items()}


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
    if "answer" in v:  # the full-length variance split into the answer's tokens and the tokens after it
        ax.plot([v["L"][-1]] * 2, [v["answer"], v["after"]], linestyle="none", marker="_", markersize=10,
                color=style.COLORS["theory"], label=f"at T = {v['L'][-1]}: answer tokens {v['answer']:.0f}, "
                                                   f"after the answer {v['after']:.0f} nats²")
    ax.plot(v["L"], np.full(len(v["L"]), v["task"]), **style.line(Regime.task_reward(),
                                                                   label=f"task reward p(1-p) = {v['task']:.3f}"))
    style.decorate(ax, "response length T (tokens)", "Var[R] across a prompt's samples",
                   f"{step0['model']}: reward variance at step 0", xscale="log", yscale="log", legend=False)
    return style.log_ticks(ax, [t for t in (1, 2, 4, 8, 16, 32, 64, 128, 256) if t <= v["L"][-1]])


def panel_lr_sweep(ax, results: Results, exp: Experiment):
    """Each seed's outcome at each learning rate it ran, per regime (EOS kept): a filled marker when the run
    failed by the pre-registered rule (llm_runs.failed: NaN/inf, final training task reward < 0.05, or held-out
    pass@1 below base - 0.1), hollow when not. No line joins the learning rates: only the points that ran are
    drawn. Each regime's row is labelled with its failures per lr. Returns ax."""
    base = results.base_eval(exp)
    base_pass1 = _first(base, "pass@k", 1) if base is not None else None
    by_regime: dict[Regime, dict[float, list[bool]]] = {}
    for run in results.runs:
        if run.experiment == exp and not run.fixed_length:
            by_regime.setdefault(run.regime, {}).setdefault(run.lr, []).append(failed(run, base_pass1))
    swept = sorted(((r, v) for r, v in by_regime.items() if len(v) >= 2),
                   key=lambda kv: (list(style.COLORS).index(style.family(kv[0])), kv[0].alpha, kv[0].beta_inv))
    for y, (regime, by_lr) in enumerate(swept):
        kw = style.line(regime)
        for lr, outcomes in sorted(by_lr.items()):
            offsets = (np.arange(len(outcomes)) - (len(outcomes) - 1) / 2) * 0.06  # seeds side by side (log x)
            for dx, bad in zip(offsets, outcomes):
                ax.plot(lr * 10**dx, y, linestyle="none", marker="o", markersize=4, color=kw["color"],
                        markerfacecolor=kw["color"] if bad else "none")
        counts = ", ".join(f"{sum(v)}/{len(v)}" for _, v in sorted(by_lr.items()))
        ax.plot([], [], linestyle="none", marker="o", color=kw["color"], label=f"{kw['label']}: failed {counts}")
    ax.set_yticks(range(len(swept)), [style.label(r) for r, _ in swept], fontsize=6.5)
    ax.set_ylim(-0.6, len(swept) - 0.4)
    return style.decorate(ax, "learning rate (AdamW); filled = failed run", "", f"{exp.label}: each seed",
                          xscale="log", legend=False)


def panel_lr_curves(ax, results: Results, exp: Experiment, key: str = "lp_ref/mean"):
    """`key` against step for every sharpening / tempered run of the learning-rate sweep: a line per run,
    dashes by learning rate."""
    runs = [r for r in results.runs if r.experiment == exp and not r.fixed_length
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
    """Per experiment with a learning-rate sweep: Var[R] vs length at step 0; each seed's failure at each lr;
    the sweep's lp_ref curves. [n_experiments, 3]."""
    exps = [e for e in results.experiments()
            if len({r.lr for r in results.runs if r.experiment == e}) > 1 or any(
                _step0_key(s) == _step0_key(e) for s in read_step0(results.root))]
    if not exps:
        raise NoData(f"no learning-rate sweep or step-0 measurement under {results.root}")
    axes = _rows(axes, exps)
    step0 = {_step0_key(s): s for s in read_step0(results.root)}
    for row, exp in zip(axes, exps):
        _step0_panel(row[0], step0, exp, panel_step0_variance)
        panel_lr_sweep(row[1], results, exp)
        panel_lr_curves(row[2], results, exp)
    return style.figure_legend(axes, ncol=3)


# ---------------------------------------------------------------------------------------------------------
# The results table (PNG; the Markdown twin is llm_runs.results_markdown)
# ---------------------------------------------------------------------------------------------------------


def fig_llm_results_table(results: Results, ax=None):
    """The results table of every experiment as an image (one table per experiment, stacked). Returns the axes."""
    exps = results.experiments()
    if not exps:
        raise NoData(f"no LLM results under {results.root}")
    tables = [(e, table_rows(results, e)) for e in exps]
    height = sum(0.25 * (len(rows) + 2) + 0.3 for _, rows in tables)
    axes = np.ravel(ax) if ax is not None else np.ravel(style.axes(len(tables), 1, squeeze=False,
                                                                   figsize=(14, height), layout=None))
    for a, (exp, rows) in zip(axes, tables):
        a.axis("off")
        if not rows:
            _no_data(a, f"{exp.label}: no evaluated runs")
            continue
        table = a.table(cellText=rows, colLabels=TABLE_COLUMNS, loc="center", cellLoc="center")
        table.auto_set_font_size(False)
        table.set_fontsize(6.5)
        table.auto_set_column_width(list(range(len(TABLE_COLUMNS))))
        for (i, _), cell in table.get_celld().items():
            if i == 0:
                cell.set_text_props(weight="bold")
        a.set_title(f"{exp.label}: held-out results after training (pass@k: mean [95% CI] over seeds x questions; "
                    f"others: mean (range over seeds))", fontsize=8)
    return axes


__all__ = ["fig_llm_training_curves", "fig_llm_pass_at_k", "fig_llm_length_bias", "fig_llm_instability", "fig_llm_signals",
           "fig_llm_results_table", "step0_variances", "LABELS"]
