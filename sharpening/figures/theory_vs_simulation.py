"""Figure 6: the closed-form predictions of `sharpening.theory` drawn over values measured with `sharpening.toy`.

Panels (each a function of an Axes, so it can be drawn and tested alone):
  power_mass   mass on correct answers of pi_ref**alpha on the "many correct paths, one likely wrong path"
               bandit: theory.length_bias.correct_mass (line) vs the end of sampled tempered training (points).
  step_size    exact gradient ascent of tempered sampling converges iff lr < theory.instability.max_stable_lr:
               final distance to the fixed point against lr / lr_max (the prediction is the line at 1).
"""

from __future__ import annotations

import numpy as np

from sharpening.figures import style
from sharpening.objective import TEMPERED_ALPHAS, Regime
from sharpening.theory.instability import max_stable_lr
from sharpening.theory.length_bias import alpha_star, correct_mass, many_paths_model
from sharpening.toy import bandit

TV_FLOOR = 1e-16  # exact convergence drawn at the bottom of the log axis


def panel_power_mass(ax, p: float = 0.6, m: int = 4, alphas=TEMPERED_ALPHAS, steps: int = 300, seeds: int = 8,
                     seed: int = 0, lr: float = 1.0):
    """Mass on correct answers vs alpha: closed form m (p/m)^a / (m (p/m)^a + q^a) vs sampled training."""
    lp_ref, r = many_paths_model(p, m)
    grid = np.geomspace(min(alphas) / 2, max(alphas) * 2, 200)
    style.theory(ax, grid, correct_mass(grid, p, m), label="closed form (theory.length_bias)")
    final = [bandit.train(Regime.tempered(a), lp_ref, r, steps=steps, lr=lr, seeds=list(range(seed, seed + seeds)),
                          log_every=steps).final("task_reward") for a in alphas]  # [n_alphas][n_seeds]
    style.points(ax, np.asarray(alphas, float), final, Regime.tempered(1.0), omit=("alpha",),
                 label=f"tempered, sampled training ({steps} steps, {seeds} seeds)")
    ax.axvline(alpha_star(p, m), color=style.COLORS["theory"], linestyle=":", linewidth=0.8,
               label=f"α* = {alpha_star(p, m):.2f} (mass 1/2)")
    style.decorate(ax, r"$\alpha$", "mass on correct answers",
                          f"π_ref: {m} correct paths ({p:g}), 1 wrong ({1 - p:g})", xscale="log",
                          legend=False)
    return style.log_ticks(ax, [a for a in alphas if a != 1.25])  # 1.25 sits too close to 1 for a label


def panel_step_size(ax, alphas=(0.5, 2.0, 4.0), ratios=np.linspace(0.6, 1.6, 11), steps: int = 400):
    """Final TV to pi* of exact gradient ascent (tempered, wrong-mode bandit) vs lr / max_stable_lr."""
    lp_ref, r = bandit.wrong_mode_bandit()
    ratios = np.asarray(ratios, dtype=float)
    for alpha in alphas:
        regime = Regime.tempered(alpha)
        lr_max = max_stable_lr(regime, lp_ref, r)
        tv = [bandit.train(regime, lp_ref, r, steps=steps, lr=k * lr_max, seeds=1, exact=True,
                           log_every=steps).final("tv_to_fixed_point")[0] for k in ratios]
        label = f"{style.label(regime)} (lr_max = {lr_max:.2f})"
        marker = style.ALPHA_MARKERS.get(alpha, "o")
        ax.plot(ratios, np.maximum(tv, TV_FLOOR), **style.line(regime, label=label, marker=marker, markersize=4))
    ax.axvline(1.0, color=style.COLORS["theory"], linewidth=1.0, label="predicted limit lr = 2 / λ_max")
    return style.decorate(ax, "learning rate / predicted limit lr_max", "TV to fixed point",
                          f"exact gradient ascent, {steps} steps, bandit", yscale="log", legend=False)


def fig_theory_vs_simulation(axes=None, quick: bool = False, seed: int = 0):
    """Every panel side by side. quick: fewer seeds, steps and learning rates."""
    if axes is None:
        axes = style.axes(1, 2)
    if quick:
        panel_power_mass(axes[0], steps=100, seeds=4, seed=seed)
        panel_step_size(axes[1], ratios=np.linspace(0.6, 1.6, 6), steps=200)
    else:
        panel_power_mass(axes[0], seed=seed)
        panel_step_size(axes[1])
    return style.figure_legend(axes, ncol=3)
