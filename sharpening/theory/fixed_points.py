"""Exact optima of every regime over an enumerable output space Y.

    sampling:      pi*(y) proportional to pi_ref(y) * exp((alpha - 1) * N(y) + beta_inv * r(y))
                   (with N = sum: pi_ref(y)**alpha * exp(beta_inv * r(y)), the tilted power distribution)
    optimization:  all mass on argmax_y [beta_inv * r(y) + alpha * N(y)], uniform over ties
    none:          all mass on argmax_y r(y) (the correct set), uniform over it

The label-free signals (sharpening.theory.signals says why):

    majority_vote     all mass on the answer-level mode of pi_ref (outputs whose answer is the likeliest answer),
                      uniform over them; every single-answer policy is a stable fixed point, this is the one
                      pi_ref's basin leads to
    random_reward     r is replaced by its mean p, independent of y: alone, the expected update is zero and pi_ref
                      stays (every policy is a fixed point); mixed with N, the fixed point of the N part
    self_likelihood   (N = sum, alone) the mode of pi_ref: entropy minimization ends on a deterministic policy, the
                      mode of its start on a softmax over Y (other normalizations or mixes: no closed form)
    neg_entropy,      over outputs that are single decisions (lengths None or all 1) every sample has the same
    self_certainty    score: N is a constant, so the fixed point is that of beta_inv * r alone (pi_ref when
                      beta_inv = 0); over token sequences no closed form

Where there is none, `NoClosedForm` (a ValueError) says so.
The sampling optimum maximizes E_pi[R] for R = shaped_reward(...) with lp_old = log pi, i.e.
beta_inv * E_pi[r] + (alpha - 1) E_pi[N] + E_pi[lp_ref] + H(pi) up to the factor 1/beta_inv
(see sharpening.theory.derivation for the symbolic proof).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sharpening.objective import Regime, normalize
from sharpening.theory.signals import answer_mode

TIE_RTOL = 1e-12  # scores this close (relative) count as ties of the argmax


class NoClosedForm(ValueError):
    """The regime's fixed point over these outputs has no closed form here (see the module docstring)."""


def log_fixed_point(regime: Regime, lp_ref, task_reward, lengths=None, answers=None) -> np.ndarray:
    """log pi*(y) for every y (-inf off the support of a deterministic optimum)."""
    lp_ref, r = _check(lp_ref, task_reward, lengths)
    lengths = None if lengths is None else np.asarray(lengths, dtype=float)
    if regime.reward != "task" or regime.likelihood != "ref":
        return _log_signal_fixed_point(regime, lp_ref, r, lengths, answers)
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


def _log_signal_fixed_point(regime, lp_ref, r, lengths, answers):
    """The label-free signals' rows of the module docstring."""
    stays = lp_ref - _logsumexp(lp_ref)  # log pi_ref: where the policy stays when the expected update is zero
    if regime.reward == "majority_vote":
        if regime.uses_N:
            raise NoClosedForm(f"{regime.name}: the majority vote mixed with N has no closed-form fixed point")
        if answers is None or np.shape(answers) != lp_ref.shape:
            raise ValueError(f"majority_vote needs the answer id of every output (answers, shape {lp_ref.shape})")
        winners = np.isin(answers, answer_mode(lp_ref, answers)) & np.isfinite(lp_ref)
        return np.where(winners, -np.log(winners.sum()), -np.inf)
    if regime.reward == "random":  # r -> p, the same for every y
        if not regime.uses_N:
            return stays
        return log_fixed_point(dataclasses.replace(regime, reward="task", p=0.5), lp_ref, np.full_like(r, regime.p),
                               lengths)
    if regime.likelihood == "self":
        if regime.beta_inv > 0 or regime.normalization != "sum":
            raise NoClosedForm(f"{regime.name}: every deterministic policy is a fixed point; which one exact ascent "
                               "reaches has a closed form only for the pure self-likelihood with N = sum")
        return log_fixed_point(Regime.sharpening(), lp_ref, r)  # the mode of pi_ref
    if lengths is not None and (lengths != 1).any():  # neg_entropy, self_certainty
        raise NoClosedForm(f"{regime.name}: per-token certainty differs along token paths; no closed form over "
                           "sequences (the toy's exact dynamics follow it)")
    if regime.beta_inv == 0:
        return stays
    return log_fixed_point(Regime("none"), lp_ref, r)


def fixed_point_is_a_set(regime: Regime) -> bool:
    """Whether `fixed_point` stands for a set of optima (every distribution on its support: the deterministic
    modes, the majority vote, the self-likelihood), to be measured by the mass off that support; or is the one
    point exact dynamics reach (the sampling mode; random_reward, neg_entropy and self_certainty without a task
    reward term, which leave pi_ref where it is), to be measured by total variation."""
    if regime.mode == "sampling":
        return False
    if regime.reward == "random" and not regime.uses_N:
        return False
    return not (regime.likelihood in ("neg_entropy", "self_certainty") and regime.beta_inv == 0)


def fixed_point(regime: Regime, lp_ref, task_reward, lengths=None, answers=None) -> np.ndarray:
    """pi*(y) for every y of the enumerable output space: probabilities with the shape of lp_ref.

    lp_ref: log pi_ref(y) for each y, 1-D (-inf for impossible outputs, which get no mass; with the
    mean or weighted_mean normalization it must be the true, normalized log-likelihood); task_reward: r(y), same shape; lengths: T(y), needed for
    the mean and weighted_mean normalizations; answers: the answer id of each y (-1: none), needed by
    majority_vote. Stable for log-probs down to -1e4 and beyond. Raises NoClosedForm where there is none.
    """
    return np.exp(log_fixed_point(regime, lp_ref, task_reward, lengths, answers))


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
