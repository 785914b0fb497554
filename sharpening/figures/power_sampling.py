"""pi_ref^alpha reached three ways, against the closed form: MCMC at test time, RL training, token temperature.

fig_power_sampling (the sequence toy, sharpening.toy.power_sampling; every line is exact, points are sampled):
  tv_vs_steps   TV to pi_ref^alpha vs MCMC steps per block: the sampler's exact law (the published algorithm as
                sharpening.mcmc runs it, and with the reference implementation's early exit at EOS), n sampled
                chains, token temperature 1/alpha (= 0 steps), the base model, and sampled tempered RL training.
  accuracy      mass on correct answers vs alpha: closed form, token temperature 1/alpha, MCMC, RL training.
  length        expected length E[T] vs alpha, the same series.

fig_power_sampling_llm (SmolLM2 on single-digit addition, from the JSON that bench/power_sampling.py writes):
  pass@k vs k of each sampler / trained policy, and pass@1 against the tokens generated per answer (on the
  problems every method holds, when power sampling ran on part of them).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sharpening.figures import style
from sharpening.mcmc import PowerSampling
from sharpening.objective import TEMPERED_ALPHAS, Regime
from sharpening.toy import sequence
from sharpening.toy.power_sampling import (power_distribution, power_sampler_distributions, power_sampler_samples,
                                           token_temperature_distribution)

MCMC_COLOR = "#56B4E9"  # Okabe-Ito sky blue: test-time sampling (no training)
STEPS = (0, 1, 2, 3, 5, 10, 20)
LLM_RESULTS = Path(__file__).resolve().parents[2] / "results" / "power_sampling" / "llm.json"


def tv(p, q) -> float:
    return 0.5 * float(np.abs(np.asarray(p) - np.asarray(q)).sum())


def trained(model, alphas, steps: int, seeds: int, seed: int, lr: float = 2.0):
    """Sampled tempered RL training of the tree toy at each alpha (G = 8): the TrainResult of each."""
    return [sequence.train(Regime.tempered(a), model, steps=steps, lr=lr, seeds=list(range(seed, seed + seeds)),
                           log_every=steps) for a in alphas]


def panel_tv_vs_steps(ax, model, alpha: float = 4.0, steps=STEPS, n: int = 4000, seed: int = 0, run=None):
    """TV(., pi_ref^alpha) against MCMC steps per block (blocks of one token), exact and sampled."""
    target = power_distribution(model, alpha)
    steps = np.asarray(steps)
    for stop, dashes, name in ((False, "-", "MCMC power sampling (exact law)"),
                               (True, "--", "MCMC, early exit at EOS as the reference code (exact law)")):
        laws = power_sampler_distributions(model, PowerSampling(alpha=alpha, block_size=1, stop_at_eos=stop), steps)
        ax.plot(steps, [max(tv(law, target), 1e-12) for law in laws], color=MCMC_COLOR, linestyle=dashes,
                marker="o", markersize=3, label=name)
    sampled = []
    for k in steps:
        settings = PowerSampling(alpha=alpha, block_size=1, mcmc_steps=int(k))
        y, _ = power_sampler_samples(model, settings, n, seed + int(k))
        sampled.append(tv(np.bincount(y.numpy(), minlength=len(target)) / n, target))
    ax.plot(steps, sampled, color=MCMC_COLOR, linestyle="none", marker="x", label=f"MCMC, {n} sampled chains")
    noise = 0.5 * np.sqrt(2 / np.pi) * np.sqrt(target * (1 - target) / n).sum()  # E TV of n exact draws, roughly
    ax.axhline(noise, color=style.COLORS["base"], linestyle=":", linewidth=0.8, label=f"sampling noise of {n} draws")
    temp = tv(token_temperature_distribution(model, 1 / alpha), target)
    ax.axhline(temp, color=style.COLORS["base"], linestyle="-.", linewidth=1.0, label="token temperature 1/α")
    ax.axhline(tv(np.exp(model.lp_ref.numpy()), target), color=style.COLORS["base"], linewidth=1.0,
               label="base model π_ref")
    if run is not None:
        final = run.final("tv_to_fixed_point")
        lo, med, hi = np.percentile(final, [25, 50, 75])
        ax.axhline(med, **style.line(Regime.tempered(alpha), label=f"tempered RL, {run.steps[-1]} steps (median)"))
        ax.axhspan(lo, hi, color=style.COLORS["tempered"], alpha=0.2, linewidth=0)
    return style.decorate(ax, "MCMC steps per block", r"TV to $\pi_{\rm ref}^{\alpha}$",
                          f"sequence toy, α = {alpha:g}, blocks of 1 token", yscale="log", legend=False)


def panel_accuracy_and_length(ax_acc, ax_len, model, alphas=TEMPERED_ALPHAS, mcmc_steps: int = 10, runs=None):
    """Mass on correct answers and E[T] vs alpha: closed form (line) and the three ways to get there."""
    grid = np.geomspace(min(alphas) / 1.5, max(alphas) * 1.5, 60)
    r, T = model.r.numpy(), model.lengths.numpy()
    closed = np.array([power_distribution(model, a) for a in grid])
    temp = np.array([token_temperature_distribution(model, 1 / a) for a in grid])
    alphas = np.asarray(alphas, dtype=float)
    mcmc = {stop: np.array([power_sampler_distributions(model, PowerSampling(alpha=a, block_size=1, stop_at_eos=stop),
                                                        [mcmc_steps])[0] for a in alphas]) for stop in (False, True)}
    for ax, values in ((ax_acc, r), (ax_len, T)):
        style.theory(ax, grid, closed @ values, label=r"closed form $\pi_{\rm ref}^{\alpha} / Z$")
        ax.plot(grid, temp @ values, color=style.COLORS["base"], linestyle="-.", label="token temperature 1/α")
        ax.plot(alphas, mcmc[False] @ values, color=MCMC_COLOR, linestyle="none", marker="o",
                label=f"MCMC power sampling, {mcmc_steps} steps per block (exact law)")
        ax.plot(alphas, mcmc[True] @ values, color=MCMC_COLOR, linestyle="none", marker="o", markerfacecolor="white",
                label="MCMC, early exit at EOS (exact law)")
        if runs is not None:
            metric = "task_reward" if values is r else "mean_length"
            style.points(ax, alphas, [run.final(metric) for run in runs], Regime.tempered(1.0), omit=("alpha",),
                         marker="s", label=f"tempered RL, sampled training ({runs[0].steps[-1]} steps)")
    style.decorate(ax_acc, r"$\alpha$", "accuracy (mass on correct answers)", "sequence toy", xscale="log",
                   legend=False)
    style.decorate(ax_len, r"$\alpha$", "expected length E[T] (tokens)", "sequence toy", xscale="log", legend=False)
    for ax in (ax_acc, ax_len):
        style.log_ticks(ax, [a for a in alphas if a != 1.25])
    return ax_acc, ax_len


def fig_power_sampling(axes=None, quick: bool = False, seed: int = 0):
    """The three panels on the canonical sequence toy (L = 5). quick: fewer chains and training steps."""
    if axes is None:
        axes = style.axes(1, 3)
    model = sequence.paper_model()
    steps, seeds, n = (200, 2, 1000) if quick else (1000, 4, 4000)
    runs = trained(model, TEMPERED_ALPHAS, steps, seeds, seed)
    panel_tv_vs_steps(axes[0], model, n=n, seed=seed, run=runs[list(TEMPERED_ALPHAS).index(4.0)])
    panel_accuracy_and_length(axes[1], axes[2], model, runs=runs)
    style.figure_legend(axes, ncol=3)
    return axes


# ---------------------------------------------------------------------------------------------------------
# SmolLM2: the committed results of bench/power_sampling.py
# ---------------------------------------------------------------------------------------------------------

LLM_LABELS = {"base": "(a) π_ref, temperature 1", "temperature": "(b) π_ref, token temperature 1/α",
              "power": "(c) π_ref, MCMC power sampling", "tempered": "(d) tempered RL (→ π_ref^α)",
              "task_reward": "(e) task-reward RL", "power_stop_at_eos": "(c') MCMC, early exit at EOS (reference)"}
LLM_STYLE = {"base": dict(color=style.COLORS["base"], marker="o"),
             "temperature": dict(color=style.COLORS["base"], linestyle="-.", marker="o", markerfacecolor="white"),
             "power": dict(color=MCMC_COLOR, marker="D"),
             "power_stop_at_eos": dict(color=MCMC_COLOR, linestyle="--", marker="D", markerfacecolor="white"),
             "tempered": dict(color=style.COLORS["tempered"], marker="s"),
             "task_reward": dict(color=style.COLORS["task reward"], marker="^")}
COST_TICKS = (5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


def load_llm_results(path=LLM_RESULTS) -> dict:
    """The summary JSON of bench/power_sampling.py: {"methods": {name: {"pass@k", "tokens_per_answer", ...}},
    optionally "paired": {"problems": [...], "methods": {name: {"pass@k", "pass@1_se"}}}}."""
    data = json.loads(Path(path).read_text())
    methods = data.get("methods") if isinstance(data, dict) else None
    if not methods or not all("pass@k" in m and "tokens_per_answer" in m for m in methods.values()):
        raise ValueError(f"{path}: expected {{'methods': {{name: {{'pass@k': ..., 'tokens_per_answer': ...}}}}}}")
    paired = data.get("paired")
    if paired is not None and not (set(paired.get("methods", {})) == set(methods) and paired.get("problems")):
        raise ValueError(f"{path}: 'paired' must score every method on a list of 'problems'")
    return data


def fig_power_sampling_llm(summary: dict, axes=None):
    """pass@k vs k, and pass@1 (± its standard error over problems, when known) vs tokens generated per answer
    (log scale), one series per method. With a "paired" entry (power sampling ran on part of the problems),
    both panels score every method on the problems they all hold; the cost is each method's own mean."""
    if axes is None:
        axes = style.axes(1, 2)
    methods, paired = summary["methods"], summary.get("paired")
    scores = paired["methods"] if paired else methods
    order = list(LLM_LABELS)  # (a) to (e) whatever order the runs were recorded in
    for name, m in sorted(methods.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order)):
        kw = {"marker": "o", **LLM_STYLE.get(name, {}), "label": LLM_LABELS.get(name, name)}
        pass_k = scores[name]["pass@k"]
        ks = sorted(int(k) for k in pass_k)
        axes[0].plot(ks, [pass_k[str(k)] for k in ks], markersize=4, **kw)
        axes[1].plot([m["tokens_per_answer"]], [pass_k["1"]], **{**kw, "linestyle": "none"})
        if "pass@1_se" in scores[name]:
            axes[1].errorbar([m["tokens_per_answer"]], [pass_k["1"]], yerr=[scores[name]["pass@1_se"]],
                             color=kw.get("color"), linestyle="none", capsize=2)
    first = next(iter(methods.values()))
    problems = f"{len(paired['problems'])} shared problems" if paired else f"{first.get('num_problems', '?')} problems"
    title = f"SmolLM2, {problems} × {first.get('n', '?')} samples"
    style.decorate(axes[0], "k", "pass@k", title, xscale="log", legend=False, ylim=(0, 1.02))
    style.log_ticks(axes[0], sorted(int(k) for k in first["pass@k"]))
    style.decorate(axes[1], "tokens generated per answer", "pass@1" + (" ± s.e." if paired else ""), title,
                   xscale="log", legend=False, ylim=(0, 1.02))
    cost = [m["tokens_per_answer"] for m in methods.values()]
    axes[1].set_xlim(min(cost) / 1.5, max(cost) * 1.5)
    style.log_ticks(axes[1], [t for t in COST_TICKS if min(cost) / 1.5 <= t <= max(cost) * 1.5])
    style.figure_legend(axes, ncol=3)
    return axes
