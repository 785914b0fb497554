"""Closed forms of sharpening.theory.length_bias against brute-force enumeration of every sequence."""

import itertools
import math

import numpy as np
import pytest

from sharpening.objective import Regime
from sharpening.theory import fixed_point
from sharpening.theory.length_bias import (
    alpha_star,
    correct_mass,
    correct_mass_limit,
    expected_length,
    length_distribution,
    many_paths_model,
    mode_length,
    stop_model_sequences,
)

STOP, U = 0.2, np.array([0.5, 0.3, 0.2])


def enumerate_stop_model(stop, u, max_len):
    """Every response with its probability and length, by generating it token by token (a plain loop)."""
    out = []
    for n_content in range(max_len + 1):
        for tokens in itertools.product(range(len(u)), repeat=n_content):
            prob = 1.0
            for v in tokens:
                prob *= (1 - stop) * u[v]
            if n_content < max_len:  # the response stopped with EOS
                out.append((prob * stop, n_content + 1))
            else:  # cut at the cap: no EOS, max_len tokens
                out.append((prob, max_len))
    return np.array([p for p, _ in out]), np.array([t for _, t in out], dtype=float)


def power_mean_length(alpha, probs, lengths):
    w = probs**alpha
    return (w @ lengths) / w.sum()


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 4.0])
@pytest.mark.parametrize("max_len", [1, 3, 6])
def test_capped_expected_length_matches_enumeration(alpha, max_len):
    probs, lengths = enumerate_stop_model(STOP, U, max_len)
    assert probs.sum() == pytest.approx(1.0)
    assert expected_length(alpha, STOP, U, max_len) == pytest.approx(power_mean_length(alpha, probs, lengths),
                                                                    rel=1e-12)
    # and the exact fixed point of tempered sampling over the enumerated Y agrees
    p = fixed_point(Regime.tempered(alpha), np.log(probs), np.zeros_like(probs))
    assert p @ lengths == pytest.approx(expected_length(alpha, STOP, U, max_len), rel=1e-10)


def test_length_distribution_matches_enumeration():
    probs, lengths = enumerate_stop_model(STOP, U, 5)
    w = probs**2.0
    by_length = [w[lengths == t].sum() / w.sum() for t in range(1, 6)]
    np.testing.assert_allclose(length_distribution(2.0, STOP, U, 5), by_length, rtol=1e-12)


def test_stop_model_sequences_matches_enumeration():
    probs, lengths = enumerate_stop_model(STOP, U, 4)
    lp, T = stop_model_sequences(STOP, U, 4)
    np.testing.assert_allclose(np.exp(lp), probs, rtol=1e-12)
    np.testing.assert_array_equal(T, lengths)


@pytest.mark.parametrize("alpha", [1.0, 2.0, 4.0])
def test_uncapped_expected_length_is_the_limit_of_the_capped(alpha):
    # rho = (1 - s)^alpha sum u^alpha < 1: the capped mean converges geometrically to 1 / (1 - rho)
    rho = (1 - STOP) ** alpha * (U**alpha).sum()
    assert expected_length(alpha, STOP, U) == pytest.approx(1 / (1 - rho), rel=1e-12)
    assert expected_length(alpha, STOP, U, 400) == pytest.approx(1 / (1 - rho), rel=1e-9)


def test_expected_length_by_hand():
    assert expected_length(1.0, STOP, U) == pytest.approx(1 / STOP)  # geometric: E[T] = 1/s
    # alpha = 2: rho = 0.64 * (0.25 + 0.09 + 0.04) = 0.2432
    assert expected_length(2.0, STOP, U) == pytest.approx(1 / (1 - 0.2432))
    # alpha = 0.5: rho = sqrt(0.8) * (sqrt(.5) + sqrt(.3) + sqrt(.2)) = 1.4893 >= 1: not normalizable
    assert expected_length(0.5, STOP, U) == math.inf
    assert np.all(np.diff(expected_length(np.array([1.0, 2.0, 4.0, 8.0, 64.0]), STOP, U)) < 0)
    assert expected_length(200.0, STOP, U) == pytest.approx(1.0)  # the mode: EOS alone


def test_mode_length():
    probs, lengths = enumerate_stop_model(STOP, U, 5)
    assert mode_length(STOP, U, 5) == lengths[probs.argmax()] == 1
    probs, lengths = enumerate_stop_model(0.01, np.array([0.9, 0.1]), 4)  # 0.99*0.9 per token: cut beats EOS
    assert mode_length(0.01, [0.9, 0.1], 4) == lengths[probs.argmax()] == 4
    assert mode_length(0.01, [0.9, 0.1]) == 1


def test_many_paths_correct_mass_matches_enumeration():
    p, m = 0.7, 10  # each correct path 0.07 < q = 0.3
    lp_ref, r = many_paths_model(p, m)
    assert np.exp(lp_ref).sum() == pytest.approx(1.0)
    for alpha in (0.0, 0.5, 1.0, 2.0, 5.0):
        w = np.exp(alpha * lp_ref)
        assert correct_mass(alpha, p, m) == pytest.approx((w @ r) / w.sum(), rel=1e-12)
    assert correct_mass(1.0, p, m) == pytest.approx(p)  # alpha = 1: pass@1
    assert correct_mass(0.0, p, m) == pytest.approx(m / (m + 1))
    # sharpening ends on the wrong answer although pass@1 = 0.7
    np.testing.assert_array_equal(fixed_point(Regime.sharpening(), lp_ref, r), [0] * m + [1])


def test_many_paths_limit_and_threshold():
    p, m = 0.7, 10
    a = alpha_star(p, m)
    assert a == pytest.approx(math.log(10) / math.log(10 * 0.3 / 0.7))  # 1.582
    assert correct_mass(a, p, m) == pytest.approx(0.5)
    assert correct_mass(a - 0.01, p, m) > 0.5 > correct_mass(a + 0.01, p, m)
    assert correct_mass_limit(p, m) == 0.0 and correct_mass(60.0, p, m) < 1e-30
    # q < p/m (p = 0.95, m = 10: 0.05 < 0.095): the mass goes to 1 and never falls to 1/2
    assert correct_mass_limit(0.95, 10) == 1.0 and alpha_star(0.95, 10) == math.inf
    assert correct_mass(60.0, 0.95, 10) == pytest.approx(1.0)
    assert correct_mass_limit(0.5, 1) == 0.5  # q = p/m: tie
    assert alpha_star(0.3, 2) < 1  # p < q: below 1/2 already at alpha = 1


@pytest.mark.parametrize("call,match", [
    (lambda: correct_mass(1.0, 1.5, 3), "p=1.5"),
    (lambda: correct_mass(1.0, 0.5, 0), "m=0"),
    (lambda: alpha_star(0.5, 1), "m >= 2"),
    (lambda: expected_length(1.0, 0.0, U), "stop=0.0"),
    (lambda: expected_length(1.0, 0.2, [0.5, 0.6]), "token_probs"),
    (lambda: expected_length(1.0, 0.2, U, 0), "max_len=0"),
])
def test_bad_inputs_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()
