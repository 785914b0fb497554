"""Why sharpening is unstable: reward variance, gradient signal-to-noise, and the lp_old feedback loop.

Model for the first two results ("fixed-length per-token model"): responses have exactly T tokens (the
"fixed length" variant, EOS ignored), drawn i.i.d. per position from the policy pi over V tokens; the policy
has one logit per token shared by every position, pi = softmax(theta), so grad_theta log pi(y) =
sum_t (e_{y_t} - pi). The reference pi_ref is per-token too, lp_ref(y) = sum_t log pi_ref(y_t), and the task
reward is r(y) = 1 if the last token is the answer token c (p = pi(c)). Then R = shaped_reward(...) is a sum
of per-position terms f_t(y_t) (R is linear in r, lp_ref and lp_old), which gives closed forms in T.

The third result is about exact gradient ascent on a softmax over an enumerable Y (one logit per output).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sharpening.objective import Regime, shaped_reward
from sharpening.theory.fixed_points import fixed_point


def _check_probs(name: str, probs) -> np.ndarray:
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 1 or probs.size < 2 or (probs <= 0).any() or abs(probs.sum() - 1) > 1e-9:
        raise ValueError(f"{name}={probs.tolist()} must be a 1-D probability vector of >= 2 entries, each > 0")
    return probs


def _check_count(name: str, value, low: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name}={value!r} must be an integer >= {low}")
    return int(value)


# --- 1. reward variance ---------------------------------------------------------------------------------

def lp_ref_variance(token_probs, T: int) -> float:
    """Var_{y ~ pi_ref}[lp_ref(y)] = T * Var_{v ~ u}[log u_v] for T i.i.d. tokens from u = token_probs:
    the sharpening reward's variance grows linearly in the response length."""
    u = _check_probs("token_probs", token_probs)
    T = _check_count("T", T, 1)
    log_u = np.log(u)
    return T * float(u @ log_u**2 - (u @ log_u) ** 2)


def task_reward_variance(p) -> float:
    """Var[r] = p (1 - p) <= 1/4 for a 0/1 task reward with success probability p, whatever the length."""
    return p * (1 - p)


# --- 2. signal-to-noise ratio of the leave-one-out REINFORCE gradient -----------------------------------

@dataclass(frozen=True)
class GradientMoments:
    """Moments of the per-group gradient estimate g = (1/G) sum_i A_i grad log pi(y_i), A = rloo_advantages(R).

    signal: ||E g||**2 (E g = grad E_pi[R], the exact gradient); noise: E||g - E g||**2; snr = signal / noise.
    """

    signal: float
    noise: float

    @property
    def snr(self) -> float:
        return self.signal / self.noise if self.noise > 0 else math.inf


def token_rewards(regime: Regime, pi, pi_ref, T: int, answer: int = 0):
    """Per-position reward terms of the fixed-length per-token model: (f_inner [V], f_last [V]) with
    R(y) = sum_{t<T} f_inner(y_t) + f_last(y_T). Read off shaped_reward, which is linear in (r, lp_ref, lp_old)."""
    V = len(pi)
    lengths = np.full(V, float(T))
    f_inner = shaped_reward(regime, np.zeros(V), np.log(pi_ref), np.log(pi), lengths=lengths)
    f_last = shaped_reward(regime, np.eye(V)[answer], np.log(pi_ref), np.log(pi), lengths=lengths)
    return f_inner, f_last


def gradient_moments(regime: Regime, pi, pi_ref, T: int, G: int, answer: int = 0) -> GradientMoments:
    """Exact signal and noise of the leave-one-out REINFORCE gradient in the fixed-length per-token model.

    For i.i.d. (R_i, s_i) with s = grad log pi(y), E s = 0, the RLOO estimate has E g = h = E[(R - E R) s] and

        E||g - h||**2 = E[(R - E R)**2 ||s||**2] / G + Var(R) E||s||**2 / (G (G - 1)) - (G - 2) ||h||**2 / (G (G - 1)).

    Per position, with d = e_y - pi, F = f(y) - E f: v = E F**2, h_t = pi * F, q = E[F**2 ||d||**2],
    sigma = E||d||**2 = 1 - ||pi||**2; positions are independent, so
    E[(R - E R)**2 ||s||**2] = sum_t q_t + sum_{t != t'} v_t sigma + 2 sum_{t != t'} h_t . h_t'.
    """
    pi, pi_ref = _check_probs("pi", pi), _check_probs("pi_ref", pi_ref)
    if pi.shape != pi_ref.shape:
        raise ValueError(f"pi has {pi.size} tokens but pi_ref has {pi_ref.size}")
    T, G = _check_count("T", T, 1), _check_count("G", G, 2)
    if not 0 <= answer < pi.size:
        raise ValueError(f"answer={answer!r} must be a token index in [0, {pi.size})")
    sigma = 1 - pi @ pi
    d2 = 1 - 2 * pi + pi @ pi  # ||e_y - pi||**2 per token y  [V]
    terms = []  # (count, v, h, q) for the T - 1 inner positions and the last one
    for count, f in zip((T - 1, 1), token_rewards(regime, pi, pi_ref, T, answer)):
        F = f - pi @ f
        terms.append((count, pi @ F**2, pi * F, pi @ (F**2 * d2)))
    var_R = sum(c * v for c, v, _, _ in terms)
    h = sum(c * h_t for c, _, h_t, _ in terms)
    sum_h2 = sum(c * h_t @ h_t for c, _, h_t, _ in terms)
    second = sum(c * q for c, _, _, q in terms) + (T - 1) * sigma * var_R + 2 * (h @ h - sum_h2)
    noise = second / G + var_R * T * sigma / (G * (G - 1)) - (G - 2) * (h @ h) / (G * (G - 1))
    return GradientMoments(signal=float(h @ h), noise=float(noise))


# --- 3. the lp_ref - lp_old feedback loop: step-size limit of gradient ascent ---------------------------

def feedback_gain(regime: Regime) -> float:
    """kappa: the coefficient of -lp_old in R (1 for beta_inv = 0, 1/beta_inv otherwise; 0 outside sampling)."""
    return float(shaped_reward(regime, np.zeros(1), np.zeros(1), -np.ones(1), lengths=np.ones(1))[0]
                 - shaped_reward(regime, np.zeros(1), np.zeros(1), np.zeros(1), lengths=np.ones(1))[0])


def fixed_point_jacobian(regime: Regime, lp_ref, task_reward, lengths=None) -> np.ndarray:
    """Jacobian of exact gradient ascent on softmax logits at the sampling fixed point pi*.

    The exact gradient is h_k = pi_k (R_k - E_pi R) with R = shaped_reward(..., lp_old = log pi). In the
    sampling mode R_k = kappa (log pi*_k - log pi_k) + const, so at pi* (where R is constant)

        dh/dtheta = -kappa (diag(pi*) - pi* pi*^T),

    minus kappa times the Fisher matrix of the softmax: the self-referential term -kappa lp_old is what
    pulls back (and, with too large a step, overshoots).
    """
    pi = fixed_point(regime, lp_ref, task_reward, lengths)
    return -feedback_gain(regime) * (np.diag(pi) - np.outer(pi, pi))


def max_stable_lr(regime: Regime, lp_ref, task_reward, lengths=None) -> float:
    """Largest learning rate for which theta <- theta + lr * h(theta) is locally stable at pi*.

    Linearized, the error evolves by (I + lr J); the eigenvalues of J are -kappa lambda with lambda the
    eigenvalues of diag(pi*) - pi* pi*^T (0 along the logit shift 1, which does not move pi). Stable iff
    |1 - lr kappa lambda| < 1 for every lambda > 0:

        lr < 2 / (kappa lambda_max)    >= 2 / (kappa max_y pi*(y)),   kappa = 1 or 1/beta_inv.

    So the limit grows with beta_inv (the feedback is scaled by 1/beta_inv) and depends on alpha only
    through how peaked pi* = pi_ref**alpha e^{beta_inv r} / Z is. Outside the sampling mode R does not
    depend on pi, the optimum is a vertex and there is no interior fixed point: returns inf.
    """
    if regime.mode != "sampling":
        return math.inf
    lam_max = np.linalg.eigvalsh(-fixed_point_jacobian(regime, lp_ref, task_reward, lengths)).max()
    return 2.0 / lam_max if lam_max > 0 else math.inf  # a one-point support: nothing to overshoot
