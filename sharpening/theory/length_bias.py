"""Why the optimum of sharpening is unfavourable: closed forms on two small models.

1. Many correct paths, one likely wrong path. The model answers correctly with probability p, spread evenly
   over m distinct correct sequences (different derivations of the same answer: p/m each), and wrongly with
   probability q = 1 - p, all on one sequence (a short, confident wrong answer). pass@1 = p can be high, yet
   when q > p/m the single most likely sequence is the wrong one, so sharpening (sequence-level mode,
   alpha -> inf of pi_ref**alpha) ends on it.

2. Length bias. Each step stops (emits EOS) with probability s, otherwise emits one of V content tokens
   drawn i.i.d. from u (u_v > 0, sum u = 1). A response of T tokens (T - 1 content tokens, then EOS) has
   pi_ref(y) = s * prod_{t<T} (1 - s) u(y_t), so every extra token multiplies the likelihood by
   (1 - s) u(y_t) < 1 and the sequence-level mode is the shortest response, just EOS.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy.special import expit, logsumexp


# --- 1. many correct paths, one likely wrong path -------------------------------------------------------

def _check_paths(p: float, m: int):
    if not 0 < p < 1:
        raise ValueError(f"p={p!r} must be a probability strictly between 0 and 1")
    if not isinstance(m, (int, np.integer)) or m < 1:
        raise ValueError(f"m={m!r} must be an integer >= 1 (the number of correct sequences)")


def many_paths_model(p: float, m: int):
    """(lp_ref, r) over Y = m correct sequences of probability p/m, then one wrong sequence of probability 1-p."""
    _check_paths(p, m)
    lp_ref = np.array([math.log(p / m)] * m + [math.log1p(-p)])
    r = np.array([1.0] * m + [0.0])
    return lp_ref, r


def correct_mass(alpha, p: float, m: int):
    """Mass on correct answers under pi_ref**alpha / Z:

        m (p/m)**alpha / (m (p/m)**alpha + q**alpha) = 1 / (1 + (m q / p)**alpha / m),   q = 1 - p.

    alpha = 0: m / (m + 1) (uniform over Y); alpha = 1: p. As alpha -> inf it goes to 0 iff q > p/m (to 1 iff
    q < p/m, and stays m / (m + 1) when q = p/m). Vectorized over alpha.
    """
    _check_paths(p, m)
    alpha = np.asarray(alpha, dtype=float)
    return expit(math.log(m) - alpha * math.log(m * (1 - p) / p))


def correct_mass_limit(p: float, m: int) -> float:
    """lim_{alpha -> inf} correct_mass: 0 if q > p/m, 1 if q < p/m, m / (m + 1) on the tie."""
    _check_paths(p, m)
    ratio = m * (1 - p) / p
    return 0.0 if ratio > 1 else 1.0 if ratio < 1 else m / (m + 1)


def alpha_star(p: float, m: int) -> float:
    """The alpha at which the mass on correct answers falls to 1/2: (mq/p)**alpha = m, i.e.

        alpha* = log m / log(m q / p)        (q = 1 - p; inf when q <= p/m: the mass never falls below 1/2)

    Assumes m >= 2 (with m = 1 the mass starts at 1/2 at alpha = 0). Above alpha*, most of pi_ref**alpha is
    on the wrong answer; alpha* < 1 iff p < q, so for an accurate model (p > 1/2) alpha* > 1.
    """
    _check_paths(p, m)
    if m < 2:
        raise ValueError(f"alpha_star needs m >= 2 correct sequences, got m={m}")
    ratio = m * (1 - p) / p
    return math.log(m) / math.log(ratio) if ratio > 1 else math.inf


# --- 2. length bias of the per-step stop model -------------------------------------------------------

def _check_stop(stop: float, token_probs, max_len):
    u = np.asarray(token_probs, dtype=float)
    if not 0 < stop < 1:
        raise ValueError(f"stop={stop!r} must be a probability strictly between 0 and 1")
    if u.ndim != 1 or u.size == 0 or (u <= 0).any() or abs(u.sum() - 1) > 1e-9:
        raise ValueError(f"token_probs={u.tolist()} must be a 1-D probability vector with every entry > 0")
    if max_len is not None and (not isinstance(max_len, (int, np.integer)) or max_len < 1):
        raise ValueError(f"max_len={max_len!r} must be an integer >= 1 or None (no cap)")
    return u


def log_rho(alpha, stop: float, token_probs):
    """log rho(alpha), rho = (1 - s)**alpha * sum_v u_v**alpha: the pi_ref**alpha weight of one more token,
    summed over the V tokens. rho(1) = 1 - s."""
    u = _check_stop(stop, token_probs, None)
    alpha = np.asarray(alpha, dtype=float)
    return alpha * math.log1p(-stop) + logsumexp(np.multiply.outer(alpha, np.log(u)), axis=-1)


def length_distribution(alpha: float, stop: float, token_probs, max_len: int) -> np.ndarray:
    """P(T = t) for t = 1..max_len under pi_ref**alpha / Z, responses capped at max_len tokens.

    Summed over the V**(t-1) responses of t tokens, pi_ref**alpha weighs s**alpha * rho**(t-1) for a
    response ending in EOS; a response cut at the cap (max_len content tokens, no EOS) weighs rho**max_len
    and also has T = max_len. Exact for any alpha >= 0 (the cap keeps Z finite even when rho >= 1).
    """
    _check_stop(stop, token_probs, max_len)
    t = np.arange(1, max_len + 1)
    log_w = alpha * math.log(stop) + (t - 1) * log_rho(alpha, stop, token_probs)  # [max_len]
    log_w[-1] = np.logaddexp(log_w[-1], max_len * log_rho(alpha, stop, token_probs))
    return np.exp(log_w - logsumexp(log_w))


def expected_length(alpha, stop: float, token_probs, max_len: int | None = None):
    """E[T] under pi_ref**alpha / Z, T = tokens of the response counting EOS.

    No cap: T - 1 is geometric with ratio rho, so E[T] = 1 / (1 - rho(alpha)) when rho < 1, and inf when
    rho >= 1 (then pi_ref**alpha is not normalizable: with alpha < 1 and many tokens the power
    distribution of an uncapped model does not exist). E[T] = 1/s at alpha = 1; it decreases to 1 (EOS
    alone) as alpha -> inf, since rho -> 0. With a cap: the mean of `length_distribution`.
    Vectorized over alpha when max_len is None.
    """
    if max_len is not None:
        return float(np.arange(1, max_len + 1) @ length_distribution(alpha, stop, token_probs, max_len))
    rho = np.exp(log_rho(alpha, stop, token_probs))
    with np.errstate(divide="ignore"):
        return np.where(rho < 1, 1 / (1 - rho), np.inf)[()]


def mode_length(stop: float, token_probs, max_len: int | None = None) -> int:
    """Length of the single most likely response (the alpha -> inf limit of pi_ref**alpha, which is where
    sharpening with N = sum ends). No cap: 1 (EOS alone, probability s). With a cap, the best cut response
    ((1 - s) max u)**max_len can beat s when s is tiny; then it is max_len."""
    u = _check_stop(stop, token_probs, max_len)
    if max_len is None or math.log(stop) >= max_len * math.log((1 - stop) * u.max()):
        return 1
    return max_len


def stop_model_sequences(stop: float, token_probs, max_len: int):
    """Every response of the stop model up to max_len tokens: (lp_ref [n], lengths [n]).

    n = sum_{t <= max_len} V**(t-1) responses ending in EOS plus V**max_len cut at the cap.

    For exact fixed points of any regime (e.g. mean normalization) with `fixed_point(regime, lp_ref, r, lengths)`.
    """
    u = _check_stop(stop, token_probs, max_len)
    lp, lengths = [], []
    for n_content in range(max_len + 1):
        for tokens in itertools.product(np.log(u), repeat=n_content):
            ends_with_eos = n_content < max_len
            lp.append(sum(tokens) + n_content * math.log1p(-stop) + (math.log(stop) if ends_with_eos else 0.0))
            lengths.append(n_content + 1 if ends_with_eos else max_len)
    return np.array(lp), np.array(lengths, dtype=float)
