"""Exact expectations of the label-free signals under the leave-one-out estimator, and their stable points.

What each signal does to a policy pi, by what the estimator's update is in expectation (DESIGN.md: G samples,
A_i = R_i - mean_{j != i} R_j, REINFORCE with R held fixed, no ratio clipping):

    majority_vote    r_i depends on the whole group, so E[A_1 | y_1 = y] is not r(y) - E r: it is a(c(y)),
                     a function of y's answer c and of the answer distribution q (computed exactly here by
                     enumerating the other G - 1 votes). a(c) grows with q_c: the update moves mass to the
                     likelier answers. Fixed points: every policy whose answers are all one answer (the group
                     agrees, A = 0), all stable; from pi_ref the answer-level mode wins (on an answer-level
                     softmax the ratio q_c / q_d grows whenever a(c) > a(d)). Which can be right where the
                     sequence-level mode, sharpening's fixed point, is wrong: many distinct correct paths.
    random_reward    r ~ Bernoulli(p) independently of y: E[A_1 | y_1 = y] = p - p = 0. The expected update is
                     zero at every policy; every policy is a fixed point and exact dynamics stay at pi_ref.
                     (Sampled runs random-walk; with PPO's ratio clipping the expectation would not be zero.)
    self_likelihood  R = lp_old = log pi(y): the update sum_y pi (log pi - E log pi) grad log pi is the gradient of
                     -H(pi) (entropy minimization). Fixed points: every deterministic policy (stable), and the
                     uniform distributions on subsets (unstable). On a softmax over Y the mode's logit grows
                     fastest (pi_k (log pi_k + H) is largest at the mode), so exact ascent ends on the mode of
                     its start: from pi_ref, the sequence-level mode, sharpening's fixed point.
    neg_entropy,     per-token scores of pi_old(. | prefix). When every output is one decision (a bandit, T = 1),
    self_certainty   every sample is scored on the same distribution: R is the same for the whole group, A = 0,
                     and the policy never moves; the signals can only rank outputs by the prefixes their paths
                     visit. So they say nothing about a choice whose paths share every scored prefix (e.g. the
                     last token of a response): on a token tree see the toy's exact dynamics.
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache

import numpy as np

from sharpening.objective import Regime, majority_vote_rewards


@lru_cache(maxsize=32)
def _vote_tables(m: int, G: int):
    """For every way the other G - 1 samples split over m answers + "no answer" (counts n [n_comp, m + 1]):
    W1[n, c] = r_1 when sample 1 answers c and Wo[n, c] = mean_{j != 1} r_j then (c = m: no answer), and the
    log multinomial coefficient of n [n_comp]."""
    comps = np.array([c for c in itertools.product(range(G), repeat=m + 1) if sum(c) == G - 1])  # [n_comp, m + 1]
    labels = np.r_[np.arange(m), -1]  # answer id of each bin (-1: no answer)
    W1, Wo = np.zeros((len(comps), m + 1)), np.zeros((len(comps), m + 1))
    for c in range(m + 1):  # the group as answer ids, sample 1 first, scored by the objective's own function
        r = majority_vote_rewards(np.stack([np.r_[labels[c], np.repeat(labels, row)] for row in comps]))
        W1[:, c], Wo[:, c] = r[:, 0], r[:, 1:].mean(1)
    log_coef = math.lgamma(G) - np.array([sum(math.lgamma(k + 1) for k in row) for row in comps])
    return comps, W1, Wo, log_coef


def majority_vote_moments(q, G: int):
    """Exact group expectations of the majority-vote reward for answer distributions q [..., m] (sum <= 1; the
    rest of the mass gives no answer), G samples per group. Returns three arrays [..., m + 1], index m = no answer:

        advantage[c] = E[A_1 | y_1 answers c]   (A = rloo_advantages(r); what the expected update weighs y by)
        mean[c]      = E[r_1 | y_1 answers c]
        var[c]       = Var[r_1 | y_1 answers c]

    by enumerating how the other G - 1 samples split over the answers (multinomial), each group scored by
    sharpening.objective.majority_vote_rewards.
    """
    q = np.asarray(q, dtype=float)
    if G < 2:
        raise ValueError(f"G={G} must be >= 2 (leave-one-out baseline)")
    if (q < 0).any() or (q.sum(-1) > 1 + 1e-9).any():
        raise ValueError(f"answer probabilities q={q} must be >= 0 and sum to <= 1")
    comps, W1, Wo, log_coef = _vote_tables(q.shape[-1], G)
    full = np.concatenate([q, np.clip(1 - q.sum(-1, keepdims=True), 0, None)], -1)  # [..., m + 1]
    with np.errstate(divide="ignore", invalid="ignore"):  # q = 0 with count 0 contributes 0 ** 0 = 1
        log_p = log_coef + np.where(comps > 0, comps * np.log(full)[..., None, :], 0.0).sum(-1)  # [..., n_comp]
    P = np.exp(log_p)
    mean = P @ W1
    return P @ (W1 - Wo), mean, P @ W1**2 - mean**2


def answer_masses(pi, answers, m: int | None = None):
    """q[..., c] = sum of pi(y) over outputs y whose answer is c, for answer ids 0..m-1 (-1: no answer)."""
    answers = np.asarray(answers)
    m = int(answers.max()) + 1 if m is None else m
    onehot = answers[:, None] == np.arange(m)[None, :]  # [|Y|, m]
    return np.asarray(pi, dtype=float) @ onehot


def expected_rewards(regime: Regime, pi, task_reward, answers=None, G: int = 8):
    """Per-output reward terms that give the exact expected update of the sampled estimator under pi [..., |Y|]:

        (r_update, r_mean, r_var), each [..., |Y|]:
        r_update  the r to put in R for exact dynamics: sum_y pi(y) (R(y) - E_pi R) grad log pi(y) with
                  R = shaped_reward(regime, r_update, ...) is the expected update (task: r; majority_vote:
                  a(c(y)) from majority_vote_moments; random: the constant p)
        r_mean    E[r | y], r_var  Var[r | y]  (0 for the task reward, which is a function of y)
    """
    r = np.broadcast_to(np.asarray(task_reward, dtype=float), np.shape(pi))
    if regime.reward == "task":
        return r, r, np.zeros_like(r)
    if regime.reward == "random":
        p = np.full_like(r, regime.p)
        return p, p, p * (1 - p)
    if answers is None:
        raise ValueError("the majority-vote reward needs the answer id of every output (answers)")
    answers = np.asarray(answers)
    q = answer_masses(pi, answers)
    adv, mean, var = majority_vote_moments(q, G)  # [..., m + 1]; index -1 (= m) is no answer
    return adv[..., answers], mean[..., answers], var[..., answers]


def answer_mode(lp_ref, answers) -> np.ndarray:
    """The answer-level mode(s) of pi_ref: the answer ids whose total probability is largest (ties: all)."""
    q = answer_masses(np.exp(np.asarray(lp_ref, dtype=float)), answers)
    return np.flatnonzero(q >= q.max() * (1 - 1e-12))
