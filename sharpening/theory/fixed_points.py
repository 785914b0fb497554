"""Exact optima of every regime over an enumerable output space Y.

    sampling:      pi*(y) proportional to pi_ref(y) * exp((alpha - 1) * N(y) + beta_inv * r(y))
                   (with N = sum: pi_ref(y)**alpha * exp(beta_inv * r(y)), the tilted power distribution)
    optimization:  all mass on argmax_y [beta_inv * r(y) + alpha * N(y)], uniform over ties
    none:          all mass on argmax_y r(y) (the correct set), uniform over it

The sampling optimum maximizes E_pi[R] for R = shaped_reward(...) with lp_old = log pi, i.e.
beta_inv * E_pi[r] + (alpha - 1) E_pi[N] + E_pi[lp_ref] + H(pi) up to the factor 1/beta_inv
(see sharpening.theory.derivation for the symbolic proof).
"""

from __future__ import annotations

import numpy as np

from sharpening.objective import Regime, normalize

TIE_RTOL = 1e-12  # scores this close (relative) count as ties of the argmax


def log_fixed_point(regime: Regime, lp_ref, task_reward, lengths=None) -> np.ndarray:
    """log pi*(y) for every y (-inf off the support of a deterministic optimum)."""
    lp_ref, r = _check(lp_ref, task_reward, lengths)
    lengths = None if lengths is None else np.asarray(lengths, dtype=float)
    if regime.mode == "sampling":
        with np.errstate(invalid="ignore"):  # -inf * (alpha - 1 <= 0) is NaN: such y keep no mass
            logits = lp_ref + (regime.alpha - 1) * normalize(regime, lp_ref, lengths) + regime.beta_inv * r
        logits = np.where(np.isneginf(lp_ref), -np.inf, logits)
        logits = logits - logits.max()  # O(1) numbers before normalizing: exact to 1e-16 at lp_ref = -1e4
        return logits - _logsumexp(logits)
    if regime.mode == "none":
        score = r
    else:
        N = normalize(regime, lp_ref, lengths) if regime.alpha > 0 else 0.0
        score = regime.beta_inv * r + regime.alpha * N
    best = score.max()
    ties = score >= best - TIE_RTOL * max(1.0, abs(best))
    return np.where(ties, -np.log(ties.sum()), -np.inf)


def fixed_point(regime: Regime, lp_ref, task_reward, lengths=None) -> np.ndarray:
    """pi*(y) for every y of the enumerable output space: probabilities with the shape of lp_ref.

    lp_ref: log pi_ref(y) for each y, 1-D (-inf for impossible outputs, which get no mass; with the
    mean or weighted_mean normalization it must be the true, normalized log-likelihood); task_reward: r(y), same shape; lengths: T(y), needed for
    the mean and weighted_mean normalizations. Stable for log-probs down to -1e4 and beyond.
    """
    return np.exp(log_fixed_point(regime, lp_ref, task_reward, lengths))


def _logsumexp(x: np.ndarray) -> float:
    m = x.max()
    return m + np.log(np.exp(x - m).sum())


def _check(lp_ref, task_reward, lengths):
    lp_ref = np.asarray(lp_ref, dtype=float)
    r = np.asarray(task_reward, dtype=float)
    if lp_ref.ndim != 1 or lp_ref.size == 0:
        raise ValueError(f"lp_ref must be a non-empty 1-D array over Y, got shape {lp_ref.shape}")
    if r.shape != lp_ref.shape:
        raise ValueError(f"task_reward has shape {r.shape}; expected {lp_ref.shape} like lp_ref")
    if np.isnan(lp_ref).any() or np.isposinf(lp_ref).any() or not np.isfinite(r).all():
        raise ValueError("lp_ref must be finite or -inf, and task_reward finite")
    if lengths is not None and np.shape(lengths) != lp_ref.shape:
        raise ValueError(f"lengths has shape {np.shape(lengths)}; expected {lp_ref.shape} like lp_ref")
    return lp_ref, r
