"""sharpening.theory.instability against exact enumeration, Monte Carlo and brute-force gradient ascent."""

import itertools
import math

import numpy as np
import pytest

from sharpening.objective import Regime, rloo_advantages, shaped_reward
from sharpening.theory import fixed_point
from sharpening.theory.instability import (
    feedback_gain,
    fixed_point_jacobian,
    gradient_moments,
    lp_ref_variance,
    max_stable_lr,
    task_reward_variance,
)

PI = np.array([0.5, 0.3, 0.2])  # current per-token policy
U = np.array([0.6, 0.25, 0.15])  # per-token reference
REGIMES = [Regime.task_reward(), Regime.sharpening(), Regime.sharpening("mean"), Regime.tempered(2.0),
           Regime.tilted(0.5, 3.0), Regime("sampling", 2.0, 1.0, "weighted_mean", weight=0.5)]


def sequences(T):
    """All V**T fixed-length responses: probability under PI, R's ingredients, and grad log pi."""
    seqs = [list(s) for s in itertools.product(range(3), repeat=T)]
    prob = np.array([np.prod(PI[s]) for s in seqs])
    lp_ref = np.array([np.log(U[s]).sum() for s in seqs])
    lp_old = np.array([np.log(PI[s]).sum() for s in seqs])
    r = np.array([float(s[-1] == 0) for s in seqs])  # the last token is the answer; token 0 is correct
    score = np.array([np.bincount(s, minlength=3) - T * PI for s in seqs])  # grad_theta log pi(y)
    return prob, lp_ref, lp_old, r, score


@pytest.mark.parametrize("regime", REGIMES, ids=str)
@pytest.mark.parametrize("T,G", [(1, 4), (2, 2), (2, 3), (3, 2)])
def test_gradient_moments_match_exact_enumeration_of_every_group(regime, T, G):
    prob, lp_ref, lp_old, r, score = sequences(T)
    R = shaped_reward(regime, r, lp_ref, lp_old, lengths=np.full(len(r), float(T)))
    mean, second = np.zeros(3), 0.0
    for group in itertools.product(range(len(r)), repeat=G):  # every group of G responses, a plain loop
        group = list(group)
        A = rloo_advantages(R[group][None])[0]
        g = (A[:, None] * score[group]).mean(0)
        mean += np.prod(prob[group]) * g
        second += np.prod(prob[group]) * g @ g
    m = gradient_moments(regime, PI, U, T, G)
    assert m.signal == pytest.approx(mean @ mean, rel=1e-10)
    assert m.noise == pytest.approx(second - mean @ mean, rel=1e-10)


@pytest.mark.parametrize("regime", REGIMES[:4], ids=str)
def test_gradient_moments_match_monte_carlo(regime):
    T, G, M = 6, 4, 20000
    rng = np.random.default_rng(0)
    y = rng.choice(3, size=(M * G, T), p=PI)  # [M*G, T]
    R = shaped_reward(regime, (y[:, -1] == 0).astype(float), np.log(U)[y], np.log(PI)[y])  # sums, T from the shape
    A = rloo_advantages(R.reshape(M, G))  # [M, G]
    score = np.stack([(y == v).sum(1) for v in range(3)], -1).reshape(M, G, 3) - T * PI  # [M, G, V]
    g = (A[..., None] * score).mean(1)  # [M, V]
    m = gradient_moments(regime, PI, U, T, G)
    h = np.sqrt(m.signal)  # compare E g itself: its norm, then the noise
    g_bar = g.mean(0)
    assert abs(np.linalg.norm(g_bar) - h) < 5 * np.sqrt(m.noise / M)
    dev2 = ((g - g_bar) ** 2).sum(1)
    assert abs(dev2.mean() - m.noise) < 5 * dev2.std() / np.sqrt(M)


def test_reward_variance_grows_linearly_in_T():
    for T in (1, 2, 4):
        seqs = list(itertools.product(range(3), repeat=T))
        lp = np.array([np.log(U[list(s)]).sum() for s in seqs])
        p = np.array([np.prod(U[list(s)]) for s in seqs])
        assert lp_ref_variance(U, T) == pytest.approx(p @ lp**2 - (p @ lp) ** 2, rel=1e-10)
    assert lp_ref_variance(U, 100) == pytest.approx(100 * lp_ref_variance(U, 1))
    assert task_reward_variance(0.5) == 0.25 and task_reward_variance(0.9) == pytest.approx(0.09)


def test_task_reward_snr_falls_with_T_and_rises_with_G():
    snr = [gradient_moments(Regime.task_reward(), PI, U, T, 8).snr for T in (1, 4, 16, 64)]
    assert all(a > b for a, b in zip(snr, snr[1:]))
    snr_G = [gradient_moments(Regime.task_reward(), PI, U, 8, G).snr for G in (2, 4, 16)]
    assert all(a < b for a, b in zip(snr_G, snr_G[1:]))


def test_tempered_at_alpha_one_is_already_at_its_fixed_point():
    # pi = pi_ref and alpha = 1: R = lp_ref - lp_old = 0, no signal and no noise
    m = gradient_moments(Regime.tempered(1.0), U, U, 4, 4)
    assert m.signal == 0 and m.noise == 0 and m.snr == math.inf


# --- the lp_ref - lp_old feedback loop --------------------------------------------------------------------

LP_REF = np.log([0.5, 0.2, 0.15, 0.1, 0.05])
R_TASK = np.array([0.0, 1.0, 0.0, 1.0, 0.0])
SAMPLING = [Regime.tempered(2.0), Regime.tempered(0.5), Regime.tilted(2.0, 3.0), Regime.tilted(4.0, 100.0)]


def softmax(theta):
    z = np.exp(theta - theta.max())
    return z / z.sum()


def gradient(regime, theta):
    """Exact gradient of E_pi[R] on softmax logits, with lp_old = log pi."""
    pi = softmax(theta)
    R = shaped_reward(regime, R_TASK, LP_REF, np.log(pi))
    return pi * (R - pi @ R)


def test_feedback_gain():
    assert feedback_gain(Regime.tempered(2.0)) == 1.0
    assert feedback_gain(Regime.tilted(2.0, 4.0)) == 0.25
    assert feedback_gain(Regime.task_reward()) == 0.0 and feedback_gain(Regime.sharpening()) == 0.0


@pytest.mark.parametrize("regime", SAMPLING, ids=str)
def test_jacobian_matches_finite_differences(regime):
    theta = np.log(fixed_point(regime, LP_REF, R_TASK))
    eps = 1e-6
    fd = np.stack([(gradient(regime, theta + eps * e) - gradient(regime, theta - eps * e)) / (2 * eps)
                   for e in np.eye(5)], 1)
    np.testing.assert_allclose(fixed_point_jacobian(regime, LP_REF, R_TASK), fd, atol=1e-8)


@pytest.mark.parametrize("regime", SAMPLING, ids=str)
def test_ascent_converges_just_below_the_limit_and_not_above(regime):
    lr_max = max_stable_lr(regime, LP_REF, R_TASK)
    star = fixed_point(regime, LP_REF, R_TASK)
    # start off the fixed point along the least stable direction
    J = fixed_point_jacobian(regime, LP_REF, R_TASK)
    direction = np.linalg.eigh(-J)[1][:, -1]
    for factor, converges in ((0.95, True), (1.05, False)):
        theta = np.log(star) + 1e-3 * direction
        for _ in range(3000):
            theta = theta + factor * lr_max * gradient(regime, theta)
        error = np.abs(softmax(theta) - star).max()
        assert (error < 1e-10) if converges else (error > 1e-3), (factor, error)


def test_step_size_limit_by_hand():
    # two outputs, tempered alpha = 1 on pi_ref = (0.5, 0.5): F = [[.25, -.25], [-.25, .25]], lambda_max = 0.5
    lp = np.log([0.5, 0.5])
    assert max_stable_lr(Regime.tempered(1.0), lp, np.zeros(2)) == pytest.approx(4.0)
    assert max_stable_lr(Regime.tilted(1.0, 10.0), lp, np.zeros(2)) == pytest.approx(40.0)
    assert max_stable_lr(Regime.sharpening(), lp, np.zeros(2)) == math.inf


@pytest.mark.parametrize("call,match", [
    (lambda: gradient_moments(Regime.sharpening(), PI, U, 0, 4), "T=0"),
    (lambda: gradient_moments(Regime.sharpening(), PI, U, 4, 1), "G=1"),
    (lambda: gradient_moments(Regime.sharpening(), PI, U[:2] / U[:2].sum(), 4, 4), "pi has 3 tokens"),
    (lambda: gradient_moments(Regime.sharpening(), [0.5, 0.6], [0.5, 0.5], 4, 4), "pi="),
    (lambda: lp_ref_variance(U, 2.5), "T=2.5"),
])
def test_bad_inputs_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()
