"""The hierarchical bootstrap against closed forms on simulated two-level data (seeds x questions)."""

import numpy as np
import pytest

from sharpening.stats import CONFIRMED, CONTRADICTED, UNRESOLVED, Estimate, bootstrap, difference_ci, mean_ci, verdict


def additive(a, b):
    """y[s, q] = a_s + b_q."""
    return np.asarray(a, float)[:, None] + np.asarray(b, float)[None, :]


def test_bootstrap_variance_of_an_additive_matrix_is_the_plug_in_formula():
    # For y = a_s + b_q, the mean over resampled seeds x questions is mean(a*) + mean(b*), two independent
    # resamplings: Var* = var(a)/S + var(b)/Q with divisors S and Q (computed here by hand, not by the code).
    a, b = np.array([0.1, 0.5, 0.2, 0.4]), np.array([0.0, 1.0, 0.3, 0.9, 0.6, 0.2, 0.8, 0.4])
    S, Q = len(a), len(b)
    var = np.sum((a - a.mean()) ** 2) / S / S + np.sum((b - b.mean()) ** 2) / Q / Q
    est = mean_ci(additive(a, b), n_boot=40_000, seed=1)
    assert est.value == pytest.approx(a.mean() + b.mean())
    assert est.se == pytest.approx(np.sqrt(var), rel=0.02)


def test_bootstrap_se_matches_the_true_sampling_se_of_two_level_data():
    # y = mu + a_s + b_q + e_sq with a ~ N(0, sa^2), b ~ N(0, sb^2), e ~ N(0, se^2): the grand mean over S seeds
    # and Q questions has variance sa^2/S + sb^2/Q + se^2/(S Q). Averaged over simulated data sets, the bootstrap
    # s.e. matches it (the plug-in's (S-1)/S shrink of the seed term is the known small-sample bias: included).
    sa, sb, se, S, Q = 0.10, 0.25, 0.05, 6, 128
    rng = np.random.default_rng(0)
    ses = []
    for _ in range(40):
        y = 0.5 + rng.normal(0, sa, (S, 1)) + rng.normal(0, sb, (1, Q)) + rng.normal(0, se, (S, Q))
        ses.append(mean_ci(y, n_boot=2000, seed=int(rng.integers(1 << 30))).se)
    expected = np.sqrt(sa**2 * (S - 1) / S / S + sb**2 * (Q - 1) / Q / Q + se**2 / (S * Q))
    assert np.sqrt(np.mean(np.square(ses))) == pytest.approx(expected, rel=0.08)


def test_a_paired_difference_cancels_the_shared_question_effect():
    # Two arms on the same questions, y_k = c_k + a_k,s + b_q: the difference's variance is var(a1)/S1 +
    # var(a2)/S2 only; b_q, however large, cancels when the questions are resampled jointly.
    rng = np.random.default_rng(3)
    b = rng.normal(0, 5.0, 64)  # a question effect 50x the seed effect
    a1, a2 = np.array([0.0, 0.2, -0.1, 0.1]), np.array([0.3, 0.1, 0.2])
    d = difference_ci(additive(a1 + 1.0, b), additive(a2, b), n_boot=40_000, seed=2)
    var = np.var(a1) / len(a1) + np.var(a2) / len(a2)
    assert d.value == pytest.approx(1.0 + a1.mean() - a2.mean())
    assert d.se == pytest.approx(np.sqrt(var), rel=0.03)


def test_ci_covers_the_truth_at_about_its_level():
    # 95% intervals on data whose question effect dominates: coverage over 200 data sets within 0.88..0.99.
    rng = np.random.default_rng(5)
    hits = 0
    for _ in range(200):
        y = rng.normal(0, 0.05, (6, 1)) + rng.normal(0, 0.3, (1, 128))
        est = mean_ci(y, n_boot=1000, seed=int(rng.integers(1 << 30)))
        hits += est.lo <= 0.0 <= est.hi
    assert 0.88 <= hits / 200 <= 0.99


def test_verdict_rule():
    assert verdict(Estimate(0.1, 0.02, 0.05, 0.15)) == CONFIRMED
    assert verdict(Estimate(-0.1, 0.02, -0.15, -0.05)) == CONTRADICTED
    assert verdict(Estimate(0.02, 0.03, -0.04, 0.08)) == UNRESOLVED
    assert verdict(Estimate(-0.1, 0.02, -0.15, -0.05), predicted_sign=-1) == CONFIRMED


def test_bad_inputs_say_what_is_wrong():
    with pytest.raises(ValueError, match="pair them first"):
        difference_ci(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="non-finite"):
        mean_ci(np.array([[0.1, np.nan]]))
    with pytest.raises(ValueError, match=r"\[seeds, questions\]"):
        mean_ci(np.zeros(5))
    with pytest.raises(ValueError, match="one weight per arm"):
        bootstrap([np.zeros((2, 2))], [1.0, -1.0])
