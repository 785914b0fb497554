"""fixed_point against closed forms written in the test and against brute-force exact gradient ascent.

The brute force: a softmax policy pi = softmax(theta) over a small Y, R = shaped_reward(regime, r, lp_ref,
lp_old=log pi), and exact expected-gradient ascent theta += lr * pi * (R - E_pi[R]) run to convergence.
That gradient is checked against finite differences of J(theta) = E_pi[R] (R depending on theta through
lp_old), so the ascent finds the true optimum of the objective independently of fixed_point.
"""

import itertools

import numpy as np
import pytest

from sharpening.objective import NORMALIZATIONS, Regime, shaped_reward
from sharpening.theory import fixed_point, log_fixed_point

# Y: 6 outputs of different lengths, two of them correct.
LENGTHS = np.array([1.0, 2.0, 2.0, 3.0, 4.0, 5.0])
PI_REF = np.array([0.30, 0.10, 0.25, 0.15, 0.12, 0.08])
LP_REF = np.log(PI_REF)
R_TASK = np.array([0.0, 1.0, 0.0, 1.0, 0.0, 0.0])


def softmax(theta):
    z = np.exp(theta - theta.max())
    return z / z.sum()


def objective(regime, theta):
    """J(theta) = E_pi[R] with lp_old = log pi(theta): the quantity the ascent maximizes."""
    pi = softmax(theta)
    return pi @ shaped_reward(regime, R_TASK, LP_REF, np.log(pi), lengths=LENGTHS)


def gradient(regime, theta):
    """d J / d theta_k = pi_k (R_k - sum_j pi_j R_j) for softmax logits."""
    pi = softmax(theta)
    R = shaped_reward(regime, R_TASK, LP_REF, np.log(pi), lengths=LENGTHS)
    return pi * (R - pi @ R)


def ascend(regime, lr, steps, theta=None):
    theta = np.zeros(len(LP_REF)) if theta is None else theta
    for _ in range(steps):
        theta = theta + lr * gradient(regime, theta)
    return softmax(theta)


SAMPLING = [Regime("sampling", a, b, n, weight=0.5) for a in (0.5, 2.0) for b in (0.0, 3.0) for n in NORMALIZATIONS]


@pytest.mark.parametrize("regime", SAMPLING + [Regime.sharpening("mean"), Regime.task_reward()], ids=str)
def test_gradient_matches_finite_differences(regime):
    theta = np.random.default_rng(1).normal(size=6)
    eps = 1e-6
    fd = [(objective(regime, theta + eps * e) - objective(regime, theta - eps * e)) / (2 * eps) for e in np.eye(6)]
    np.testing.assert_allclose(gradient(regime, theta), fd, atol=1e-8)


@pytest.mark.parametrize("regime", SAMPLING, ids=str)
def test_sampling_fixed_point_is_where_exact_ascent_converges(regime):
    # the sampling objective is strictly concave in pi: ascent converges linearly; beta_inv > 0 scales R by 1/beta_inv
    lr = 4.0 * max(1.0, regime.beta_inv)
    pi = ascend(regime, lr, steps=3000)
    np.testing.assert_allclose(pi, fixed_point(regime, LP_REF, R_TASK, LENGTHS), atol=1e-7)


@pytest.mark.parametrize(
    "regime",
    [Regime("optimization", a, b, n, weight=0.5) for a in (1.0, 3.0) for b in (0.0, 2.0) for n in NORMALIZATIONS
     if not (b == 0 and n == "none")] + [Regime("none")],
    ids=str,
)
def test_deterministic_fixed_point_is_where_exact_ascent_goes(regime):
    """The optimization and none modes are linear in pi: ascent drifts to the best vertex (slowly, like 1/t)."""
    pi = ascend(regime, lr=50.0, steps=4000)
    star = fixed_point(regime, LP_REF, R_TASK, LENGTHS)
    assert pi[star > 0].sum() > 0.98
    assert set(np.flatnonzero(star)) == set(np.flatnonzero(pi > 0.2))


def test_sampling_closed_forms():
    for a, b in itertools.product((0.5, 1.0, 2.0, 4.0), (0.0, 1.0, 100.0)):
        q = PI_REF**a * np.exp(b * R_TASK)  # pi_ref^alpha e^{beta_inv r} / Z
        np.testing.assert_allclose(fixed_point(Regime("sampling", a, b), LP_REF, R_TASK), q / q.sum(), rtol=1e-10)
        # general N: pi_ref exp((alpha - 1) N + beta_inv r) / Z, here N = lp_ref / T
        q = PI_REF * np.exp((a - 1) * LP_REF / LENGTHS + b * R_TASK)
        got = fixed_point(Regime("sampling", a, b, "mean"), LP_REF, R_TASK, LENGTHS)
        np.testing.assert_allclose(got, q / q.sum(), rtol=1e-10)
    # normalization none: N = 0, so alpha does not matter
    q = PI_REF * np.exp(2.0 * R_TASK)
    np.testing.assert_allclose(fixed_point(Regime("sampling", 7.0, 2.0, "none"), LP_REF, R_TASK), q / q.sum())


def test_deterministic_closed_forms_by_hand():
    # sharpening: the sequence-level mode of pi_ref is y0 (0.30), a wrong answer
    np.testing.assert_array_equal(fixed_point(Regime.sharpening(), LP_REF, R_TASK), [1, 0, 0, 0, 0, 0])
    # task reward: uniform over the correct set
    np.testing.assert_allclose(fixed_point(Regime.task_reward(), LP_REF, R_TASK), [0, 0.5, 0, 0.5, 0, 0])
    np.testing.assert_allclose(fixed_point(Regime("none"), LP_REF, R_TASK), [0, 0.5, 0, 0.5, 0, 0])
    # mean normalization favours the longest: log(0.08)/5 = -0.505 beats log(0.12)/4 = -0.530, log(0.15)/3 = -0.632
    np.testing.assert_array_equal(fixed_point(Regime.sharpening("mean"), LP_REF, R_TASK, LENGTHS), [0, 0, 0, 0, 0, 1])
    # beta_inv r + alpha N with beta_inv = 2, alpha = 1: 2 + log 0.15 = 0.103 beats 2 + log 0.10 and log 0.30
    np.testing.assert_array_equal(fixed_point(Regime("optimization", 1.0, 2.0), LP_REF, R_TASK), [0, 0, 0, 1, 0, 0])
    # a tie: two outputs with the same score share the mass equally
    lp = np.log([0.4, 0.4, 0.2])
    np.testing.assert_allclose(fixed_point(Regime.sharpening(), lp, np.zeros(3)), [0.5, 0.5, 0.0])


def test_log_fixed_point_is_the_log():
    lp = log_fixed_point(Regime.tempered(2.0), LP_REF, R_TASK)
    np.testing.assert_allclose(np.exp(lp), fixed_point(Regime.tempered(2.0), LP_REF, R_TASK))
    assert np.isneginf(log_fixed_point(Regime.sharpening(), LP_REF, R_TASK)[1:]).all()


@pytest.mark.parametrize("regime", SAMPLING + [Regime.sharpening("mean"), Regime.sharpening(), Regime.task_reward()],
                         ids=str)
def test_log_probs_of_minus_1e4_are_stable(regime):
    lp = np.array([-1e4, -1e4 - 1.0, -2e4, -1.5e4, -1e4 - 0.5, -3e4])
    p = fixed_point(regime, lp, R_TASK, LENGTHS)
    assert np.isfinite(p).all() and p.sum() == pytest.approx(1.0, abs=1e-10) and (p >= 0).all()
    if regime.mode == "sampling" and regime.normalization == "sum":
        q = np.exp(regime.alpha * (lp - lp.max()) + regime.beta_inv * R_TASK)  # shift-invariant closed form
        np.testing.assert_allclose(p, q / q.sum(), rtol=1e-9, atol=1e-300)


def test_impossible_outputs_get_no_mass():
    lp = np.array([np.log(0.5), -np.inf, np.log(0.5)])  # one output of pi_ref probability 0
    np.testing.assert_allclose(fixed_point(Regime.tempered(1.0), lp, np.zeros(3)), [0.5, 0.0, 0.5])


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="task_reward has shape"):
        fixed_point(Regime.tempered(2.0), LP_REF, R_TASK[:3])
    with pytest.raises(ValueError, match="lengths has shape"):
        fixed_point(Regime.tempered(2.0), LP_REF, R_TASK, LENGTHS[:2])
    with pytest.raises(ValueError, match="1-D"):
        fixed_point(Regime.tempered(2.0), LP_REF[None], R_TASK[None])
    with pytest.raises(ValueError, match="lengths T"):
        fixed_point(Regime("sampling", 2.0, 0.0, "mean"), LP_REF, R_TASK)
