"""The label-free signals: each reward against a hand computation, the theory against brute-force enumeration of
the sampled estimator, and where the toys end (issue 16)."""

import itertools
import math

import numpy as np
import pytest
import torch

from sharpening.objective import (Regime, majority_vote_rewards, random_rewards, rloo_advantages, shaped_reward,
                                  token_certainty)
from sharpening.theory import NoClosedForm, expected_rewards, fixed_point, majority_vote_moments
from sharpening.toy import bandit, sequence

SELF, NEG_ENTROPY, SELF_CERTAINTY = (Regime.preset(n) for n in ("self_likelihood", "neg_entropy", "self_certainty"))
MAJORITY, RANDOM = Regime.preset("majority_vote"), Regime.preset("random_reward")
LP_BANDIT, R_BANDIT = bandit.wrong_mode_bandit()  # pi_ref = [0.4, 0.2, 0.2, 0.1, 0.1], r = [0, 1, 1, 0, 1]


# --- each reward by hand -------------------------------------------------------------------------------------

def test_token_certainty_by_hand():
    logits = np.log([[0.5, 0.25, 0.25], [1.0, 1.0, 1.0]]) + 3.0  # any shift: softmax gives back the probabilities
    h = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    np.testing.assert_allclose(token_certainty(NEG_ENTROPY, logits), [-h, -math.log(3)], rtol=1e-12)
    kl = -math.log(3) - (math.log(0.5) + 2 * math.log(0.25)) / 3  # KL(U || pi) = sum_v (1/3) log((1/3) / pi_v)
    np.testing.assert_allclose(token_certainty(SELF_CERTAINTY, logits), [kl, 0.0], atol=1e-12)
    # -inf: a token outside the support; V counts the two others (uniform over them: KL = 0, H = log 2)
    masked = torch.tensor([[0.0, 0.0, -math.inf]], dtype=torch.float64)
    assert token_certainty(NEG_ENTROPY, masked).item() == pytest.approx(-math.log(2))
    assert token_certainty(SELF_CERTAINTY, masked).item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="neg_entropy or self_certainty"):
        token_certainty(SELF, logits)


def test_certainty_rewards_are_the_token_mean_by_hand():
    certainty = np.array([[-1.0, -2.0, 99.0], [-0.5, -0.5, -2.0]])  # a pad holds garbage
    mask = np.array([[1, 1, 0], [1, 1, 1]])
    for regime in (NEG_ENTROPY, SELF_CERTAINTY):  # normalization mean by default: the mean over the response
        np.testing.assert_allclose(shaped_reward(regime, np.zeros(2), mask=mask, certainty=certainty), [-1.5, -1.0])
    summed = Regime.preset("neg_entropy", normalization="sum")
    np.testing.assert_allclose(shaped_reward(summed, np.zeros(2), mask=mask, certainty=certainty), [-3.0, -3.0])
    with pytest.raises(ValueError, match="needs certainty"):
        shaped_reward(NEG_ENTROPY, np.zeros(2), mask=mask)


def test_self_likelihood_is_the_policys_own_log_likelihood_by_hand():
    lp_old_tok = torch.tensor([[-1.0, -3.0, 0.0], [-0.5, -0.5, -2.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    lp_ref_tok = torch.full((2, 3), -100.0)  # not used
    torch.testing.assert_close(shaped_reward(SELF, torch.zeros(2), lp_ref_tok, lp_old_tok, mask=mask),
                               torch.tensor([-4.0, -3.0]))
    mean = Regime.preset("self_likelihood", normalization="mean")
    torch.testing.assert_close(shaped_reward(mean, torch.zeros(2), None, lp_old_tok, mask=mask),
                               torch.tensor([-2.0, -1.0]))


@pytest.mark.parametrize("answers, expected", [
    ([3, 3, 5, 3], [1, 1, 0, 1]),  # a unique majority
    ([3, 3, 5, 5], [0.5, 0.5, 0.5, 0.5]),  # two answers tie: 1/2 each (expected reward of a random tie-break)
    ([1, 2, 4, 7], [0.25] * 4),  # all different: four-way tie
    ([2, -1, -1, -1], [1, 0, 0, 0]),  # no answer never votes: one vote is a majority
    ([-1, -1, 6, 6], [0, 0, 1, 1]),  # ... and never earns
    ([-1, -1, -1, -1], [0, 0, 0, 0]),  # nobody answers: nobody earns
])
def test_majority_vote_rewards_by_hand(answers, expected):
    np.testing.assert_allclose(majority_vote_rewards(np.array(answers)), expected)


def test_majority_vote_groups_by_the_last_axis_and_keeps_torch():
    answers = torch.tensor([[0, 0, 1], [2, 1, 1]])
    r = majority_vote_rewards(answers)
    assert isinstance(r, torch.Tensor)
    np.testing.assert_allclose(r.numpy(), [[1, 1, 0], [0, 1, 1]])
    # composes with the estimator: A_i = r_i - mean of the other two
    np.testing.assert_allclose(rloo_advantages(r).numpy(), [[0.5, 0.5, -1.0], [-1.0, 0.5, 0.5]])


def test_random_reward_is_bernoulli_of_the_given_uniforms():
    u = torch.tensor([0.1, 0.29, 0.3, 0.9])
    torch.testing.assert_close(random_rewards(u, 0.3), torch.tensor([1.0, 1.0, 0.0, 0.0]))
    draws = random_rewards(np.random.default_rng(0).random(100_000), 0.3)
    assert abs(draws.mean() - 0.3) < 0.005


# --- theory against brute force ------------------------------------------------------------------------------

def group_expectations_by_brute_force(q_full, labels, G):
    """E[A_1 | c_1], E[r_1 | c_1], E[r_1^2 | c_1] by enumerating every G-tuple of answer classes."""
    acc = np.zeros((3, len(q_full)))
    for t in itertools.product(range(len(q_full)), repeat=G):
        p = np.prod(q_full[list(t)])
        r = majority_vote_rewards(labels[list(t)])
        A = r[0] - r[1:].mean()
        acc[:, t[0]] += p * np.array([A, r[0], r[0] ** 2])
    return acc / q_full


@pytest.mark.parametrize("G", [2, 3, 5])
def test_majority_vote_moments_match_enumerating_every_group(G):
    q = np.array([0.45, 0.3, 0.15])  # 0.1 gives no answer
    adv, mean, var = majority_vote_moments(q, G)
    A, r, r2 = group_expectations_by_brute_force(np.r_[q, 0.1], np.array([0, 1, 2, -1]), G)
    np.testing.assert_allclose(adv, A, atol=1e-12)
    np.testing.assert_allclose(mean, r, atol=1e-12)
    np.testing.assert_allclose(var, r2 - r**2, atol=1e-12)
    assert np.r_[q, 0.1] @ adv == pytest.approx(0.0, abs=1e-12)  # advantages average to zero
    if G == 2:  # two votes either agree (A = 0) or tie (A = 0): only answering at all is rewarded
        np.testing.assert_allclose(adv[:3], 0.1)
        assert adv[3] < 0
    else:
        assert adv[0] > adv[1] > adv[2] > adv[3]  # likelier answers are pushed up; no answer is pushed down most


def expected_update_by_brute_force(regime, theta, answers, G):
    """E[(1/G) sum_i A_i grad log pi(y_i)] for the softmax bandit: every y-tuple (and r-tuple for the random
    reward) weighed by its probability; grad log pi(k) = onehot(k) - pi."""
    pi = np.exp(theta) / np.exp(theta).sum()
    K, g = len(pi), np.zeros(len(pi))
    for ys in itertools.product(range(K), repeat=G):
        p_y = np.prod(pi[list(ys)])
        if regime.reward == "majority_vote":
            outcomes = [(1.0, majority_vote_rewards(answers[list(ys)]))]
        else:  # random: every 0/1 tuple with its Bernoulli(p) probability, whatever y is
            outcomes = [(np.prod([regime.p if x else 1 - regime.p for x in rs]), np.array(rs, float))
                        for rs in itertools.product((0, 1), repeat=G)]
        for p_r, r in outcomes:
            A = rloo_advantages(r[None])[0]
            g += p_y * p_r * sum(A[i] * (np.eye(K)[ys[i]] - pi) for i in range(G)) / G
    return g


@pytest.mark.parametrize("regime", [MAJORITY, Regime.preset("random_reward", p=0.3)], ids=lambda g: g.name)
def test_exact_dynamics_follow_the_sampled_estimators_expectation(regime):
    answers = np.array([0, 1, 0, 2])  # arms 0 and 2 give the same answer
    toy = bandit.SoftmaxBandit(np.log([0.3, 0.35, 0.2, 0.15]), np.array([1.0, 0.0, 1.0, 0.0]), answers)
    theta0 = np.array([0.2, 0.5, -0.1, -0.4])
    for G in (2, 3):
        theta = torch.tensor(theta0[None], requires_grad=True)
        bandit.exact_loss(toy, regime, theta, group_size=G).backward()
        expected = expected_update_by_brute_force(regime, theta0, answers, G)
        np.testing.assert_allclose(-theta.grad[0].numpy(), expected, atol=1e-12)
    if regime.reward == "random":
        np.testing.assert_allclose(expected, 0.0, atol=1e-15)  # no ratio clipping: zero expected update


def test_fixed_points_of_the_signals_on_the_canonical_bandit():
    answers = bandit.default_answers(R_BANDIT)
    np.testing.assert_array_equal(answers, [1, 0, 0, 2, 0])  # the correct arms are one answer
    pi_ref = np.exp(LP_BANDIT)
    # the majority vote: the answer-level mode (0.5 on the correct answer) although the arm-level mode is wrong
    np.testing.assert_allclose(fixed_point(MAJORITY, LP_BANDIT, R_BANDIT, answers=answers), [0, 1 / 3, 1 / 3, 0, 1 / 3])
    # entropy minimization: the mode of pi_ref, like sharpening
    np.testing.assert_allclose(fixed_point(SELF, LP_BANDIT, R_BANDIT), [1, 0, 0, 0, 0])
    # no expected update: pi_ref stays
    for regime in (RANDOM, NEG_ENTROPY, SELF_CERTAINTY):
        np.testing.assert_allclose(fixed_point(regime, LP_BANDIT, R_BANDIT, np.ones(5)), pi_ref, rtol=1e-12)
    # random reward mixed with N: r -> p is a constant, so it is the N part's fixed point
    tilted = Regime("sampling", 2.0, 3.0, reward="random", p=0.7)
    np.testing.assert_allclose(fixed_point(tilted, LP_BANDIT, R_BANDIT), pi_ref**2 / (pi_ref**2).sum(), rtol=1e-12)
    with pytest.raises(ValueError, match="answers"):
        fixed_point(MAJORITY, LP_BANDIT, R_BANDIT)
    with pytest.raises(NoClosedForm):
        fixed_point(NEG_ENTROPY, LP_BANDIT, R_BANDIT, lengths=np.array([1, 2, 3, 1, 1]))
    with pytest.raises(NoClosedForm):
        fixed_point(Regime.preset("self_likelihood", normalization="mean"), LP_BANDIT, R_BANDIT, np.ones(5))


def entropy_minimization_by_numpy(theta, lr=0.5, steps=4000):
    """Exact gradient ascent on softmax logits with R = log pi (held fixed): theta += lr pi (log pi - E log pi)."""
    for _ in range(steps):
        pi = np.exp(theta - theta.max())
        pi /= pi.sum()
        logp = np.log(pi)
        theta = theta + lr * pi * (logp - pi @ logp)
    return pi


def test_self_likelihood_update_is_the_gradient_of_minus_the_entropy_and_ends_on_the_start_mode():
    theta = np.random.default_rng(3).normal(size=5)
    t = torch.tensor(theta[None], requires_grad=True)
    bandit.exact_loss(bandit.SoftmaxBandit(LP_BANDIT, R_BANDIT), SELF, t).backward()

    def neg_entropy(th):
        pi = np.exp(th) / np.exp(th).sum()
        return pi @ np.log(pi)
    eps = 1e-6
    fd = [(neg_entropy(theta + eps * e) - neg_entropy(theta - eps * e)) / (2 * eps) for e in np.eye(5)]
    np.testing.assert_allclose(-t.grad[0].numpy(), fd, atol=1e-8)
    # every start ends on the deterministic policy at its own mode (the basin is decided by the mode)
    for seed in range(10):
        start = np.random.default_rng(seed).normal(size=6)
        pi = entropy_minimization_by_numpy(start)
        assert pi.max() > 0.999 and pi.argmax() == start.argmax()


def test_bandit_dynamics_of_each_signal():
    pi_ref = np.exp(LP_BANDIT)
    for exact in (True, False):
        run = lambda g, **kw: bandit.train(g, LP_BANDIT, R_BANDIT, steps=300, seeds=4, exact=exact, **kw)  # noqa
        # entropy minimization ends on the wrong arm-level mode, with sharpening
        assert (run(SELF).probs[:, 0] > 0.99).all()
        for regime in (NEG_ENTROPY, SELF_CERTAINTY):  # one decision, one distribution: A = 0, nothing moves
            res = run(regime)
            np.testing.assert_allclose(res.probs, np.repeat(pi_ref[None], 4, 0), rtol=1e-12)
            assert (res.grad_norm < 1e-12).all() and (res.tv_to_fixed_point < 1e-12).all()
    # the majority vote, exactly: the correct answer; sampled, a seed can fall into the wrong answer's basin
    # (0.5 against 0.4 with G = 8 samples per step): where each seed ends is an answer-level vertex either way
    exact = bandit.train(MAJORITY, LP_BANDIT, R_BANDIT, steps=300, seeds=1, exact=True)
    assert exact.final("task_reward")[0] > 0.99 and exact.final("tv_to_fixed_point")[0] < 0.01
    sampled = bandit.train(MAJORITY, LP_BANDIT, R_BANDIT, steps=400, seeds=8, lr=0.5)
    q = [bandit_answer_mass(p) for p in sampled.probs]
    assert all(max(x) > 0.98 for x in q) and np.mean([x[0] > 0.98 for x in q]) >= 0.5
    # random reward, exactly: nothing moves; sampled: a random walk away from pi_ref
    np.testing.assert_allclose(bandit.train(RANDOM, LP_BANDIT, R_BANDIT, 50, seeds=1, exact=True).probs[0], pi_ref)
    walk = bandit.train(RANDOM, LP_BANDIT, R_BANDIT, steps=300, seeds=8)
    assert np.ptp(walk.final("task_reward")) > 0.3  # seeds end far apart


def bandit_answer_mass(p):
    answers = bandit.default_answers(R_BANDIT)
    return [p[answers == c].sum() for c in range(answers.max() + 1)]


def test_random_reward_uses_its_own_seeded_uniforms():
    a = bandit.train(RANDOM, LP_BANDIT, R_BANDIT, steps=20, seeds=[3, 4])
    b = bandit.train(RANDOM, LP_BANDIT, R_BANDIT, steps=20, seeds=[4])
    np.testing.assert_array_equal(a.probs[1], b.probs[0])  # seed 4 runs the same alone and with seed 3
    assert not np.allclose(a.probs[0], a.probs[1])


def test_sampled_majority_vote_loss_by_hand():
    answers = np.array([0, 1, 0, 2])
    toy = bandit.SoftmaxBandit(np.log([0.25] * 4), np.array([1.0, 0.0, 1.0, 0.0]), answers)
    theta0 = torch.zeros(1, 4, dtype=torch.float64)
    u = torch.tensor([[0.1, 0.3, 0.6, 0.9]], dtype=torch.float64)[..., None]  # arms 0, 1, 2, 3
    theta = theta0.clone().requires_grad_(True)
    bandit.sampled_loss(toy, MAJORITY, theta, u).backward()
    # answers 0, 1, 0, 2: answer 0 has 2 votes -> r = [1, 0, 1, 0]; A = r_i - mean of the other three
    A = np.array([1 - 1 / 3, -2 / 3, 1 - 1 / 3, -2 / 3])
    g = sum(A[i] * (np.eye(4)[i] - 0.25) for i in range(4)) / 4
    np.testing.assert_allclose(-theta.grad[0].numpy(), g, atol=1e-12)


# --- the sequence model: a wrong sequence-level mode, a right majority answer ----------------------------------

MODEL = sequence.paper_model(5)


def test_the_paper_model_has_a_wrong_sequence_mode_and_a_right_answer_mode():
    pi_ref = np.exp(MODEL.lp_ref.numpy())
    assert MODEL.sequences[int(pi_ref.argmax())] == "2$" and MODEL.r[int(pi_ref.argmax())] == 0
    q = [pi_ref[MODEL.answers.numpy() == c].sum() for c in range(3)]
    assert q[0] == max(q) and q[0] > 0.55  # answer 0 (correct) over many distinct paths
    mv = fixed_point(MAJORITY, MODEL.lp_ref.numpy(), MODEL.r.numpy(), MODEL.lengths.numpy(), MODEL.answers.numpy())
    np.testing.assert_allclose(mv, MODEL.r.numpy() / MODEL.r.numpy().sum())
    with pytest.raises(NoClosedForm, match="token paths"):
        fixed_point(NEG_ENTROPY, MODEL.lp_ref.numpy(), MODEL.r.numpy(), MODEL.lengths.numpy())


def test_tree_certainty_is_the_sum_over_the_prefixes_of_the_path():
    theta = MODEL.init_logits(1)
    logp = MODEL.token_log_probs(theta)[0]  # [n_nodes, V + 1], -inf where forbidden
    got = MODEL.certainty(SELF_CERTAINTY, theta)[0].numpy()
    for y in (MODEL.sequences.index("2$"), MODEL.sequences.index("10$"), MODEL.sequences.index("21012")):
        total = 0.0
        for node in MODEL.path_node[y, : int(MODEL.lengths[y])].tolist():
            p = logp[node].exp().numpy()
            support = p > 0
            total += -math.log(support.sum()) - np.log(p[support]).mean()  # KL(U || pi) on the node's support
        assert got[y] == pytest.approx(total, rel=1e-12)


@pytest.mark.slow
def test_sequence_model_dynamics_of_each_signal():
    r = MODEL.r.numpy()
    mode = MODEL.sequences.index("2$")
    for exact in (True, False):
        run = lambda g: sequence.train(g, MODEL, steps=300, lr=2.0, seeds=4, exact=exact)  # noqa: E731
        assert (run(MAJORITY).probs @ r > 0.97).all()  # the right answer-level mode
        assert (run(SELF).probs[:, mode] > 0.97).all()  # entropy minimization: the wrong sequence-level mode
    # the exact dynamics of the per-token signals differ by path: they do move, unlike on the bandit
    for regime in (NEG_ENTROPY, SELF_CERTAINTY):
        res = sequence.train(regime, MODEL, steps=300, lr=2.0, seeds=1, exact=True)
        assert res.final("entropy")[0] < res.entropy[0, 0] - 1.0 and np.isnan(res.tv_to_fixed_point).all()
    still = sequence.train(RANDOM, MODEL, steps=100, lr=2.0, seeds=1, exact=True)
    np.testing.assert_allclose(still.probs[0], np.exp(MODEL.lp_ref.numpy()), atol=1e-12)


def test_expected_rewards_of_the_task_reward_are_the_reward_itself():
    r = np.array([0.0, 1.0, 1.0])
    upd, mean, var = expected_rewards(Regime.task_reward(), np.full(3, 1 / 3), r)
    np.testing.assert_array_equal(upd, r)
    np.testing.assert_array_equal(var, 0.0)
