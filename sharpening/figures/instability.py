"""Figure 4: instability. Reward variance and gradient norm vs maximum length; unstable runs vs lr and alpha.

Measured with sharpening.toy.instability (sweep_max_length on the fixed-length i.i.d.-token model, sweep_lr
on the wrong-mode bandit, sampled leave-one-out REINFORCE); closed forms from sharpening.theory.instability
(Var[lp_ref] = T Var[log u], Var[r] = p (1 - p), the step-size limit lr < 2 / (kappa lambda_max)).
A run is unstable when toy.instability.classify labels it oscillating, collapsed (entropy ~ 0 on a wrong
answer) or diverged.
"""

from __future__ import annotations

import numpy as np

from sharpening.figures import style
from sharpening.objective import TEMPERED_ALPHAS, Regime
from sharpening.theory.instability import max_stable_lr, task_reward_variance
from sharpening.toy import bandit
from sharpening.toy import instability as toy

UNSTABLE = ("oscillating", "collapsed", "diverged")
UNSTABLE_LABEL = "fraction oscillating, collapsed or diverged"
REGIMES = (Regime.sharpening(), Regime.tempered(2.0), Regime.task_reward())
LRS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


def unstable_fraction(fractions: dict) -> np.ndarray:
    """Fraction of runs labelled oscillating, collapsed or diverged (fractions: {label: array})."""
    return sum(fractions[name] for name in UNSTABLE)


def panel_max_length(ax_var, ax_grad, sweep: toy.LengthSweep, regimes=REGIMES):
    """Var_{pi_ref}[R] and the gradient norm against the maximum length L, per regime."""
    L = sweep.lengths
    for i, regime in enumerate(regimes):  # sharpening and tempered(2) share R at step 0: big hollow vs small marks
        marker = dict(marker="o", markersize=8, markerfacecolor="none") if i == 0 else dict(marker="^", markersize=4)
        ax_var.plot(L, sweep.reward_var[i], **style.line(regime, linestyle="none", **marker))
        ax_grad.plot(L, sweep.grad_norm_max[i], **style.line(regime, marker="o", markersize=3))
        ax_grad.plot(L, sweep.grad_norm[i], **style.line(regime, label=f"{style.label(regime)}, at step 0",
                                                         linestyle=":", marker="o", markersize=3))
        if np.isfinite(sweep.predicted_reward_var[i]).all():
            style.theory(ax_var, L, sweep.predicted_reward_var[i], label="closed form c² T Var[log u]")
    p = toy.IID_TOKENS[0]  # r = 1 when the last token is the answer token 0
    style.theory(ax_var, L, np.full(len(L), task_reward_variance(p)), linestyle="--",
                 label=f"closed form p(1-p), p = {p:g}")
    style.decorate(ax_var, "maximum length L (tokens)", "reward variance Var[R] under π_ref",
                   "fixed-length i.i.d.-token model", legend=False)
    style.decorate(ax_grad, "maximum length L (tokens)", "gradient norm (mean over seeds)",
                   "solid: max over the run; dotted: step 0", legend=False)
    return ax_var, ax_grad


def panel_lr(ax, sweeps: list[toy.LrSweep]):
    """Fraction of unstable runs against the learning rate, per regime; predicted limit where finite."""
    for sweep in sweeps:
        kw = style.line(sweep.regime, marker="o", markersize=3)
        (drawn,) = ax.plot(sweep.lrs, unstable_fraction(sweep.fractions), **kw)
        if np.isfinite(sweep.predicted_max_lr):
            ax.axvline(sweep.predicted_max_lr, color=drawn.get_color(), linewidth=0.8, linestyle=":",
                       label=f"predicted limit, {style.label(sweep.regime)}")
    return style.decorate(ax, "learning rate (SGD)", UNSTABLE_LABEL, "sampled REINFORCE, bandit (mode wrong)",
                          xscale="log", ylim=(-0.03, 1.03), legend=False)


def panel_alpha(ax, sweeps: dict[str, list[toy.LrSweep]], lr: float):
    """Fraction of unstable runs against alpha at one learning rate; theory: unstable iff lr > lr_max(alpha).

    sweeps: {curve name: one single-lr sweep per alpha}; curves of exact-gradient runs are drawn dotted.
    """
    lp_ref, r = bandit.wrong_mode_bandit()
    for name, family in sweeps.items():
        alphas = np.array([s.regime.alpha for s in family])
        exact = "exact" in name
        kw = {"linestyle": ":", "marker": "x"} if exact else {"marker": "o", "markersize": 3}
        ax.plot(alphas, [unstable_fraction(s.fractions)[0] for s in family],
                **style.line(family[0].regime, label=name, **kw))
    grid = np.geomspace(min(TEMPERED_ALPHAS) / 2, max(TEMPERED_ALPHAS) * 2, 100)
    predicted = [float(lr > max_stable_lr(Regime.tempered(a), lp_ref, r)) for a in grid]
    style.theory(ax, grid, predicted, label="tempered: predicted unstable iff lr > lr_max(α)", linestyle="--")
    style.decorate(ax, r"$\alpha$", UNSTABLE_LABEL, f"bandit (mode wrong), SGD lr = {lr:g}",
                   xscale="log", ylim=(-0.03, 1.03), legend=False)
    return style.log_ticks(ax, [0.25, 0.5, 1, 2, 4, 8])


def fig_instability(axes=None, quick: bool = False, seed: int = 0):
    """2 x 2: reward variance, gradient norm vs L; unstable fraction vs lr and vs alpha."""
    if axes is None:
        axes = style.axes(2, 2)
    axes = np.reshape(axes, (2, 2))
    seeds = list(range(seed, seed + (8 if quick else 32)))
    steps = 60 if quick else 200
    lengths = (1, 2, 3, 4) if quick else (1, 2, 3, 4, 5, 6)
    panel_max_length(axes[0, 0], axes[0, 1], toy.sweep_max_length(list(REGIMES), lengths, steps=steps, seeds=seeds))
    lrs = LRS[::2] if quick else LRS
    panel_lr(axes[1, 0], [toy.sweep_lr(regime, lrs=lrs, steps=steps, seeds=seeds) for regime in REGIMES])
    lr = 8.0
    tempered = [Regime.tempered(a) for a in TEMPERED_ALPHAS]
    optimization = [Regime("optimization", a, 0.0) for a in TEMPERED_ALPHAS]
    curves = {  # name: (regimes, exact, seeds); the exact gradient is deterministic: one seed is enough
        "tempered, sampled": (tempered, False, seeds),
        "tempered, exact gradient": (tempered, True, seeds[:1]),
        "optimization α·N (β⁻¹=0), sampled": (optimization, False, seeds),
    }
    sweeps = {name: [toy.sweep_lr(regime, lrs=(lr,), steps=steps, seeds=run_seeds, exact=exact) for regime in regimes]
              for name, (regimes, exact, run_seeds) in curves.items()}
    panel_alpha(axes[1, 1], sweeps, lr)
    style.figure_legend(axes, ncol=3)
    return axes
