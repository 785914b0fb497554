"""Figure 3: the length bias. Accuracy and expected length vs alpha, normal vs fixed length (EOS ignored).

Lines: the closed-form fixed point (sharpening.theory.fixed_point) over every response of the sequence toy
(sharpening.toy.sequence.paper_model, normal and fixed_length). Points: the end of sampled tempered
training of the same toy (median and 25-75% over seeds). Third panel: the per-step stop model of
sharpening.theory.length_bias, whose E[T] under pi_ref**alpha is in closed form, against exact enumeration.
"""

from __future__ import annotations

import numpy as np

from sharpening.figures import style
from sharpening.objective import TEMPERED_ALPHAS, Regime
from sharpening.theory import fixed_point
from sharpening.theory.length_bias import expected_length, stop_model_sequences
from sharpening.toy import sequence

ALPHA_SWEEP = np.unique(np.concatenate([TEMPERED_ALPHAS, np.geomspace(0.25, 16, 60)]))
ALPHA_TICKS = (0.25, 0.5, 1, 2, 4, 8, 16)
VARIANTS = (("normal", False, "-"), ("fixed length (EOS ignored)", True, "--"))  # (name, fixed_length, dashes)
STOP, TOKEN_PROBS, STOP_CAP = 0.3, (0.5, 0.3, 0.2), 6  # the stop model of panel 3: s, u, length cap


def fixed_point_curves(model, alphas):
    """Tempered fixed points over the model's responses: (accuracy [n], expected length [n]) for each alpha."""
    _, lp_ref, r, T = sequence.enumerate_sequences(model)
    pis = np.array([fixed_point(Regime.tempered(a), lp_ref, r, T) for a in alphas])  # [n_alphas, |Y|]
    return pis @ r, pis @ T


def panel_accuracy_and_length(ax_acc, ax_len, alphas=ALPHA_SWEEP, train_alphas=TEMPERED_ALPHAS, steps: int = 300,
                              seeds: int = 8, seed: int = 0, lr: float = 3.0, L: int = 5):
    """Accuracy and E[T] vs alpha on the sequence toy, for both variants: fixed point (line), training (points)."""
    alphas = np.asarray(alphas, dtype=float)
    for name, fixed_length, dashes in VARIANTS:
        model = sequence.paper_model(L=L, fixed_length=fixed_length)
        acc, length = fixed_point_curves(model, alphas)
        kw = style.line(Regime.tempered(1.0), omit=("alpha",), linestyle=dashes)
        ax_acc.plot(alphas, acc, **{**kw, "label": f"tempered fixed point, {name}"})
        ax_len.plot(alphas, length, **{**kw, "label": f"tempered fixed point, {name}"})
        mode = fixed_point(Regime.sharpening(), *sequence.enumerate_sequences(model)[1:])  # alpha-free
        kw = style.line(Regime.sharpening(), linestyle=dashes, linewidth=1.0, label=f"sharpening, {name}")
        ax_acc.plot(alphas[[0, -1]], [mode @ model.r.numpy()] * 2, **kw)
        ax_len.plot(alphas[[0, -1]], [mode @ model.lengths.numpy()] * 2, **kw)
        if train_alphas is not None and len(train_alphas):
            runs = [sequence.train(Regime.tempered(a), model, steps=steps, lr=lr, seeds=list(range(seed, seed + seeds)),
                                   log_every=steps) for a in train_alphas]
            marker = "o" if not fixed_length else "s"
            label = f"tempered, sampled training, {name}"
            style.points(ax_acc, np.asarray(train_alphas, float), [run.final("task_reward") for run in runs],
                         Regime.tempered(1.0), label=label, marker=marker, markerfacecolor="white")
            style.points(ax_len, np.asarray(train_alphas, float), [run.final("mean_length") for run in runs],
                         Regime.tempered(1.0), label=label, marker=marker, markerfacecolor="white")
    style.decorate(ax_acc, r"$\alpha$", "accuracy (mass on correct answers)", f"sequence toy (L = {L})",
                   xscale="log", legend=False, ylim=(-0.03, 1.03))
    style.decorate(ax_len, r"$\alpha$", "expected length E[T] (tokens)", f"sequence toy (L = {L})",
                   xscale="log", legend=False)
    for ax in (ax_acc, ax_len):
        style.log_ticks(ax, ALPHA_TICKS)
    return ax_acc, ax_len


def panel_stop_model(ax, alphas=ALPHA_SWEEP, stop: float = STOP, token_probs=TOKEN_PROBS, cap: int = STOP_CAP):
    """E[T] under pi_ref**alpha of the stop model: closed form (uncapped and capped) vs enumeration."""
    alphas = np.asarray(alphas, dtype=float)
    style.theory(ax, alphas, expected_length(alphas, stop, token_probs), label="closed form, no cap: 1 / (1 - ρ(α))")
    style.theory(ax, alphas, [expected_length(a, stop, token_probs, cap) for a in alphas], linestyle="--",
                 label=f"closed form, cap L = {cap}")
    lp_ref, T = stop_model_sequences(stop, token_probs, cap)
    marked = np.isclose(alphas[:, None], TEMPERED_ALPHAS).any(1)
    enumerated = [fixed_point(Regime.tempered(a), lp_ref, np.zeros_like(lp_ref), T) @ T for a in alphas[marked]]
    ax.plot(alphas[marked], enumerated, **style.line(Regime.tempered(1.0), label=f"fixed_point over all "
                                                     f"{len(T)} responses", linestyle="none", marker="o"))
    style.decorate(ax, r"$\alpha$", "expected length E[T] (tokens)",
                   f"stop model: s = {stop:g}, V = {len(token_probs)}", xscale="log", legend="upper right",
                   ylim=(0, 2.5 * cap))  # the uncapped E[T] is infinite for small alpha
    return style.log_ticks(ax, ALPHA_TICKS)


def fig_length_bias(axes=None, quick: bool = False, seed: int = 0):
    """Accuracy and length on the sequence toy (normal vs fixed length), and the stop model's E[T]."""
    if axes is None:
        axes = style.axes(1, 3)
    settings = dict(steps=100, seeds=4) if quick else dict(steps=300, seeds=8)
    panel_accuracy_and_length(axes[0], axes[1], seed=seed, **settings)
    panel_stop_model(axes[2])
    style.figure_legend(axes[:2], ncol=3)
    return axes
