"""The signals figure: the plotted numbers equal independent toy runs with the same seeds and the closed forms."""

import numpy as np
import pytest

from sharpening.figures import style
from sharpening.figures.signals import REGIMES, ROWS, fig_signals, train_signals
from sharpening.objective import Regime
from sharpening.toy import bandit, sequence

pytestmark = pytest.mark.slow  # 14 toy runs of 20 steps: ~8 s on 2 shared cores


@pytest.fixture(scope="module")
def drawn():
    runs = train_signals(steps=20, seeds=3, seed=5)
    axes = fig_signals(runs)
    yield runs, axes
    import matplotlib.pyplot as plt

    plt.close(style.figure_of(axes))


def test_layout_and_labels(drawn):
    runs, axes = drawn
    assert axes.shape == (len(ROWS), 2)
    for ax in axes.ravel():
        assert ax.get_ylabel() and [t.get_text() for t in ax.get_xticklabels()][5] == "majority\nvote"
    assert len(style.figure_of(axes).legends) == 1  # the marks' legend below the panels


def test_medians_are_independent_runs_with_the_same_seeds(drawn):
    _, axes = drawn
    lp_ref, r = bandit.wrong_mode_bandit()
    model = sequence.paper_model()
    for regime in (Regime.preset("majority_vote"), Regime.preset("random_reward")):
        sampled = bandit.train(regime, lp_ref, r, steps=20, lr=1.0, seeds=[5, 6, 7])  # the training figure's lr
        x, y = style.series(axes[0, 0])[style.label(regime)]
        np.testing.assert_allclose(y, np.median(sampled.probs @ r), rtol=1e-12)
        exact = sequence.train(regime, model, steps=20, lr=3.0, seeds=1, exact=True)
        _, y = style.series(axes[1, 1])[f"exact: {style.label(regime)}"]
        np.testing.assert_allclose(y, exact.probs[:, int(np.argmax(model.lp_ref.numpy()))], rtol=1e-12)


def test_closed_forms_by_hand(drawn):
    _, axes = drawn
    lines = style.series(axes[0, 0])  # bandit, mass on correct answers
    assert lines["closed form: majority vote"][1][0] == pytest.approx(1.0)  # the answer-level mode is right
    assert lines["closed form: self likelihood"][1][0] == pytest.approx(0.0)  # the arm-level mode is wrong
    assert lines["closed form: random reward"][1][0] == pytest.approx(0.5)  # pi_ref stays: 0.2 + 0.2 + 0.1
    assert lines["closed form: neg entropy"][1][0] == pytest.approx(0.5)
    seq = style.series(axes[0, 1])
    assert "closed form: neg entropy" not in seq and "closed form: self certainty" not in seq  # none on a tree
    assert len([k for k in seq if k in {style.label(g) for g in REGIMES}]) == len(REGIMES)
