"""Where the label-free signals end, against sharpening and the task reward, on the toys whose sequence-level
mode is wrong while their answer-level mode is right.

Columns: the canonical bandit (the three correct arms are one answer: 0.5 against the wrong mode's 0.4) and the
sequence toy (the likeliest response "2$" is wrong; answer 0 holds 0.56 over many paths). Rows: at the end of
training, the mass on correct answers, and the mass on pi_ref's likeliest output (sharpening's fixed point).
Per regime: every sampled seed (dots), their median (a bar), the exact dynamics (a hollow diamond: the
sampled estimator's expected update, sharpening.toy.bandit.exact_loss) and the closed-form fixed point where
sharpening.theory has one (a black dash).
"""

from __future__ import annotations

import numpy as np

from sharpening.figures import style
from sharpening.figures.training import bandit_task, sequence_task
from sharpening.objective import Regime
from sharpening.theory import NoClosedForm, fixed_point

REGIMES = (Regime.task_reward(), Regime.sharpening(), *(Regime.preset(name) for name in (
    "self_likelihood", "neg_entropy", "self_certainty", "majority_vote", "random_reward")))
ROWS = (("correct", "mass on correct answers"), ("ref_mode", "mass on π_ref's likeliest output"))
JITTER = 0.18  # horizontal spread of the seeds' dots


def train_signals(steps: int = 300, seeds: int = 16, seed: int = 0, group_size: int = 8) -> dict:
    """{toy title: {regime: (sampled TrainResult, exact TrainResult)}} on the bandit and the sequence toy."""
    titles = ("bandit: arm mode wrong, answer mode right", "sequence toy: sequence mode wrong, answer mode right")
    runs = {}
    for title, (_, train, lr) in zip(titles, (bandit_task(), sequence_task())):
        settings = dict(steps=steps, group_size=group_size, lr=lr, log_every=steps)
        runs[title] = {g: (train(g, seeds=list(range(seed, seed + seeds)), **settings),
                           train(g, seeds=1, exact=True, **settings)) for g in REGIMES}
    return runs


def masses(probs, result) -> dict:
    """{row: [n]} for distributions probs [n, |Y|] over the run's outputs: mass on correct outputs and on
    pi_ref's likeliest output."""
    return {"correct": probs @ result.r, "ref_mode": probs[:, int(np.argmax(result.lp_ref))]}


def closed_form(result) -> dict:
    """{row: [1]} at the theory's fixed point of the run's regime (empty where there is no closed form)."""
    try:
        pi = fixed_point(result.regime, result.lp_ref, result.r, result.lengths, result.answers)
    except NoClosedForm:
        return {}
    return masses(pi[None], result)


def fig_signals(runs: dict, axes=None, seed: int = 0):
    """Rows: ROWS; columns: toys; x: regimes. Seeds as dots, median as a bar, exact dynamics, closed form."""
    if axes is None:
        axes = style.axes(len(ROWS), len(runs), squeeze=False, figsize=(5.2 * len(runs), 2.9 * len(ROWS)))
    axes = np.reshape(axes, (len(ROWS), len(runs)))
    rng = np.random.default_rng(seed)  # the dots' jitter only
    for col, (title, results) in enumerate(runs.items()):
        for row, (key, ylabel) in enumerate(ROWS):
            ax = axes[row, col]
            for x, (regime, (sampled, exact)) in enumerate(results.items()):
                values = masses(sampled.probs, sampled)[key]
                color = style.COLORS[style.family(regime)]
                ax.scatter(x + rng.uniform(-JITTER, JITTER, len(values)), values, s=9, color=color, alpha=0.45,
                           linewidths=0)
                ax.plot([x - 0.3, x + 0.3], [np.median(values)] * 2, color=color, linewidth=2.2,
                        label=style.label(regime))
                ax.plot([x], masses(exact.probs, exact)[key], linestyle="none", marker="D", markersize=6,
                        markerfacecolor="white", markeredgecolor=color, label=f"exact: {style.label(regime)}")
                if key in (theory := closed_form(sampled)):
                    ax.plot([x - 0.38, x + 0.38], [theory[key][0]] * 2, color=style.COLORS["theory"],
                            linewidth=0.9, linestyle="--", label=f"closed form: {style.label(regime)}")
            ax.set_xticks(range(len(results)), [style.label(g).replace(" ", "\n", 1) for g in results], fontsize=7)
            style.decorate(ax, "regime" if row == len(ROWS) - 1 else "", ylabel, title if row == 0 else "",
                           legend=False, ylim=(-0.05, 1.05))
    _marker_legend(axes)
    return axes


def _marker_legend(axes):
    """What the marks mean (the colours are named by the x ticks)."""
    from matplotlib.lines import Line2D

    grey = style.COLORS["base"]
    handles = [Line2D([], [], linestyle="none", marker="o", markersize=4, color=grey, alpha=0.45),
               Line2D([], [], color=grey, linewidth=2.2),
               Line2D([], [], linestyle="none", marker="D", markerfacecolor="white", markeredgecolor=grey),
               Line2D([], [], color=style.COLORS["theory"], linewidth=0.9, linestyle="--")]
    names = ["sampled training, one dot per seed", "median over seeds", "exact dynamics (expected update)",
             "closed-form fixed point"]
    style.figure_of(axes).legend(handles, names, loc="outside lower center", ncol=4, frameon=False)
