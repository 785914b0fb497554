"""Figure 2: training curves of the paper's four named regimes on the bandit and on the sequence toy.

Each panel shows, over training steps, the median across seeds (line) and the 25-75% range (band) of
one history metric of `sharpening.toy.bandit.train` / `sharpening.toy.sequence.train`: expected task
reward E_pi[r], entropy H(pi) and total-variation distance to the regime's closed-form fixed point.
"""

from __future__ import annotations

import numpy as np

from sharpening.figures import style
from sharpening.objective import Regime
from sharpening.toy import bandit, sequence

# The four named regimes (DESIGN.md), one alpha / beta_inv each for the tempered and tilted families.
REGIMES = (Regime.task_reward(), Regime.sharpening(), Regime.tempered(2.0), Regime.tilted(2.0, 100.0))
METRICS = (  # (TrainResult field, axis label with units, y scale)
    ("task_reward", "expected task reward E[r]", "linear"),
    ("entropy", "entropy H(π) (nats)", "linear"),
    ("tv_to_fixed_point", "TV distance to fixed point", "log"),
)
TV_FLOOR = 1e-12  # exact zeros (converged to float precision) drawn at the floor of the log axis


def bandit_task():
    """(name, train(regime, **settings) -> TrainResult, lr) on the canonical wrong-mode bandit."""
    lp_ref, r = bandit.wrong_mode_bandit()
    return "bandit (mode wrong)", lambda regime, **kw: bandit.train(regime, lp_ref, r, **kw), 1.0


def sequence_task():
    """The same on the canonical sequence toy. lr = 3: pg_loss is a token mean (about 3 tokens a response),
    so the sampled sequence gradient is about a third of the bandit's at the same lr."""
    model = sequence.paper_model()
    return "sequence toy (mode wrong)", lambda regime, **kw: sequence.train(regime, model, **kw), 3.0


def train_all(steps: int = 300, seeds: int = 16, group_size: int = 8, seed: int = 0, exact: bool = False,
              toys=None) -> dict[str, dict[Regime, bandit.TrainResult]]:
    """{toy name: {regime: TrainResult}} for every toy and regime, seeds seed .. seed + seeds - 1.

    toys: (name, train, lr) triples; default: the bandit and the sequence toy.
    """
    settings = dict(steps=steps, group_size=group_size, seeds=list(range(seed, seed + seeds)), exact=exact)
    toys = toys or (bandit_task(), sequence_task())
    return {name: {regime: train(regime, lr=lr, **settings) for regime in REGIMES} for name, train, lr in toys}


def fig_training_curves(runs: dict[str, dict[Regime, bandit.TrainResult]], axes=None):
    """Rows: toys; columns: task reward, entropy, TV to fixed point vs step (median, 25-75% band)."""
    if axes is None:
        axes = style.axes(len(runs), len(METRICS), squeeze=False)
    axes = np.reshape(axes, (len(runs), len(METRICS)))
    for row, (toy, results) in zip(axes, runs.items()):
        for ax, (metric, ylabel, yscale) in zip(row, METRICS):
            for regime, result in results.items():
                values = getattr(result, metric)  # [n_logged, n_seeds]
                if metric == "tv_to_fixed_point":
                    values = np.maximum(values, TV_FLOOR)
                style.band(ax, result.steps, values, regime)
            style.decorate(ax, "training step", ylabel, toy, yscale=yscale, legend=False)
    return style.figure_legend(axes, ncol=4)
