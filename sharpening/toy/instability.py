"""Instability, measured: many seeds per setting, each run classified, compared with sharpening.theory.instability.

Labels of a run (`classify`), checked in this order:
    diverged     a NaN / inf anywhere in its history, or a logit beyond BLOWUP in absolute value
    collapsed    entropy below COLLAPSE_ENTROPY nats on a wrong answer (E_pi[r] < 0.5) at the end
    converged    distance to the regime's fixed point below `tol` over the last tenth of the history (an
                 orbit that only passes close at the last step does not count)
    oscillating  not converged, no longer getting closer and bouncing: over the second half of the history,
                 the mean distance of its last half is at least PROGRESS times that of its first half, and
                 the distance rose between a quarter or more of consecutive logged steps (a cycle, a
                 chaotic orbit, or sampling noise that keeps it away; log every step to see period 2)
    slow         not converged yet: still getting closer, or creeping without ever bouncing
    unknown      no closed-form fixed point to measure a distance to (tv_to_fixed_point is NaN: the label-free
                 signals on a token tree), and neither diverged nor collapsed
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sharpening.objective import Regime
from sharpening.theory.instability import gradient_moments, lp_ref_variance, max_stable_lr
from sharpening.toy import bandit, sequence

LABELS = ("converged", "slow", "oscillating", "collapsed", "diverged", "unknown")
BLOWUP = 1e3  # |logit| beyond this counts as blown up
COLLAPSE_ENTROPY = 0.05  # nats
PROGRESS = 0.9  # a run whose distance shrinks by less than 10% across the last quarter has stalled


def classify(result: bandit.TrainResult, tol: float = 1e-2) -> np.ndarray:
    """One label of LABELS per seed: [n_seeds] strings (see the module docstring)."""
    tv, H, r = result.tv_to_fixed_point, result.entropy, result.task_reward  # [n_logged, S]
    unknown = bool(np.isnan(tv[0]).all())  # NaN at the start: no fixed point (by design, not by divergence)
    finite = (unknown or np.isfinite(tv).all(0)) & np.isfinite(result.grad_norm).all(0) & \
        np.isfinite(result.max_logit).all(0)
    diverged = ~finite | (np.nan_to_num(result.max_logit, nan=np.inf) > BLOWUP).any(0)
    collapsed = (H[-1] < COLLAPSE_ENTROPY) & (r[-1] < 0.5)
    converged = tv[-max(1, len(tv) // 10):].max(0) < tol
    tail = tv[len(tv) // 2:]  # [n_tail, S]
    half = max(1, len(tail) // 2)
    if len(tail) > 1:
        stalled = tail[half:].mean(0) >= PROGRESS * tail[:half].mean(0)
        bouncing = (np.diff(tail, axis=0) > 0).mean(0) >= 0.25
    else:
        stalled = bouncing = np.zeros(tv.shape[1], bool)
    return np.select([diverged, collapsed, np.full(tv.shape[1], unknown), converged, stalled & bouncing],
                     ["diverged", "collapsed", "unknown", "converged", "oscillating"], default="slow")


def fractions(labels) -> dict:
    """{label: fraction of runs with it} over LABELS."""
    labels = np.asarray(labels)
    return {name: float((labels == name).mean()) for name in LABELS}


@dataclass
class LrSweep:
    """sweep_lr's result. lrs: [n_lr]; fractions: {label: [n_lr]}; tv_final: [n_lr, n_seeds];
    predicted_max_lr: sharpening.theory.max_stable_lr (inf outside the sampling mode)."""

    regime: Regime
    lrs: np.ndarray
    fractions: dict
    tv_final: np.ndarray
    predicted_max_lr: float


def sweep_lr(regime: Regime, lp_ref=None, task_reward=None, lrs=(0.5, 1.0, 2.0, 4.0, 8.0), steps: int = 300,
             seeds=32, exact: bool = False, group_size: int = 8, tol: float = 1e-2) -> LrSweep:
    """Bandit runs at each learning rate (plain SGD, logged every step); lp_ref, r default to wrong_mode_bandit().

    Theory (exact gradient, sampling mode): locally stable iff lr < max_stable_lr = 2 / (kappa lambda_max).
    """
    if lp_ref is None:
        lp_ref, task_reward = bandit.wrong_mode_bandit()
    labels, tv = [], []
    for lr in lrs:
        result = bandit.train(regime, lp_ref, task_reward, steps, group_size, lr, seeds, exact, log_every=1)
        labels.append(classify(result, tol))
        tv.append(result.final("tv_to_fixed_point"))
    by_label = {k: np.array([fractions(x)[k] for x in labels]) for k in LABELS}
    return LrSweep(regime, np.asarray(lrs, dtype=float), by_label, np.stack(tv),
                   max_stable_lr(regime, lp_ref, task_reward))


IID_TOKENS = (0.6, 0.3, 0.1)  # pi_ref per token of `iid_model`; the answer token 0 is the likeliest


def iid_model(L: int, token_probs=IID_TOKENS, shared: bool = False) -> sequence.TreePolicy:
    """Tree policy whose reference draws every token i.i.d. from token_probs and never stops before L.

    Every response has T = L, and lp_ref is a sum of L i.i.d. terms: the model of
    sharpening.theory.instability, whose Var[lp_ref] = T * Var[log u] it lets us check by enumeration.
    shared: one logit vector for every prefix (SharedTokenPolicy, the theory's parametrization) instead
    of one per prefix (TreePolicy).
    """
    row = tuple(token_probs) + (0.0,)
    V = len(token_probs)
    policy = sequence.SharedTokenPolicy if shared else sequence.TreePolicy
    return policy(V, L, sequence.markov_ref_logp(V, L, row, [row] * V))


def shared_iid_model(L: int) -> sequence.SharedTokenPolicy:
    """iid_model(L, shared=True): the parametrization whose gradient moments the theory gives in closed form."""
    return iid_model(L, shared=True)


@dataclass
class LengthSweep:
    """sweep_max_length's result, one row per regime, one column per max length L.

    lengths: [n_L]; regimes: [n_regimes] names; reward_var: [n_regimes, n_L] exact Var_{pi_ref}[R] at the
    start; predicted_reward_var: the same from theory (lp_ref_variance; R = c * lp_ref at the start, so
    c**2 * T Var[log u]; NaN where R is not of that form); grad_norm: [n_regimes, n_L] mean over seeds of the
    sampled gradient norm at the start; grad_norm_max: mean over seeds of its maximum over the run;
    fractions: {label: [n_regimes, n_L]}; grad_norm_rms: [n_regimes, n_L] root-mean-square over seeds of the
    gradient norm at the start, and predicted_grad_norm_rms its closed form for shared_iid_model
    (sqrt(signal + noise) / T from gradient_moments: pg_loss's token mean divides the theory's
    per-response sum by T; NaN for other models).
    """

    lengths: np.ndarray
    regimes: list
    reward_var: np.ndarray
    predicted_reward_var: np.ndarray
    grad_norm: np.ndarray
    grad_norm_max: np.ndarray
    fractions: dict
    grad_norm_rms: np.ndarray = None
    predicted_grad_norm_rms: np.ndarray = None


def lp_ref_coefficient(regime: Regime) -> float:
    """c with R = c * lp_ref at initialization (lp_old = lp_ref), for the sum normalization; NaN otherwise."""
    if regime.normalization != "sum" or regime.mode == "none" or regime.beta_inv > 0:
        return np.nan
    return regime.alpha - 1 if regime.mode == "sampling" else regime.alpha


def sweep_max_length(regimes=None, lengths=(1, 2, 3, 4, 5, 6), steps: int = 200, lr: float = 1.0, seeds=32,
                     group_size: int = 8, model=iid_model, tol: float = 1e-2) -> LengthSweep:
    """Sampled training on model(L) for each regime and max length L; measures variance, gradient and labels.

    regimes default to sharpening, tempered(2) and task reward; model(L) -> TreePolicy (iid_model by default:
    fixed length L; shared_iid_model for the theory's shared logits; sequence.paper_model for the EOS model).
    """
    regimes = regimes or [Regime.sharpening(), Regime.tempered(2.0), Regime.task_reward()]
    shape = (len(regimes), len(lengths))
    var, pred, g0, gmax, g_rms, pred_g_rms = (np.full(shape, np.nan) for _ in range(6))
    frac = {k: np.zeros(shape) for k in LABELS}
    for j, L in enumerate(lengths):
        policy = model(L)
        for i, regime in enumerate(regimes):
            result = sequence.train(regime, policy, steps, group_size, lr, seeds, log_every=max(1, steps // 50))
            var[i, j], g0[i, j] = result.reward_var[0].mean(), result.grad_norm[0].mean()
            gmax[i, j] = result.grad_norm.max(0).mean()
            g_rms[i, j] = np.sqrt((result.grad_norm[0] ** 2).mean())
            c = lp_ref_coefficient(regime)
            if model in (iid_model, shared_iid_model) and np.isfinite(c):
                pred[i, j] = c**2 * lp_ref_variance(IID_TOKENS, L)
            if model is shared_iid_model:
                moments = gradient_moments(regime, IID_TOKENS, IID_TOKENS, L, group_size)
                pred_g_rms[i, j] = np.sqrt(moments.signal + moments.noise) / L
            for k, f in fractions(classify(result, tol)).items():
                frac[k][i, j] = f
    return LengthSweep(np.asarray(lengths), [r.name for r in regimes], var, pred, g0, gmax, frac, g_rms, pred_g_rms)
