"""The enumerable sequence model: enumeration, sampling, gradients, and the paper's sequence-level results."""

import numpy as np
import pytest
import torch

from sharpening.objective import Regime
from sharpening.theory import fixed_point
from sharpening.toy.bandit import exact_loss
from sharpening.toy.sequence import (PAPER_NEXT, PAPER_START, TreePolicy, describe, enumerate_sequences,
                                     markov_ref_logp, paper_model, train)

MODEL = paper_model(5)
SEQS, LP_REF, R_TASK, LENGTHS = enumerate_sequences(MODEL)


def test_enumeration_counts_and_short_probabilities_by_hand():
    assert len(SEQS) == 3 + 9 + 27 + 81 + 243  # m content tokens + EOS (m < 5), or 5 content tokens
    assert len(set(SEQS)) == len(SEQS)
    np.testing.assert_allclose(np.exp(LP_REF).sum(), 1.0)
    by_name = dict(zip(SEQS, np.exp(LP_REF)))
    assert by_name["2$"] == pytest.approx(0.45 * 0.60)
    assert by_name["0$"] == pytest.approx(0.25 * 0.70)
    assert by_name["1$"] == pytest.approx(0.30 * 0.20)
    assert np.exp(LP_REF).max() == pytest.approx(0.27)  # "2$" is the mode ...
    for s, r, T in zip(SEQS, R_TASK, LENGTHS):  # ... answer = last content token, T counts EOS
        assert r == (s.rstrip("$")[-1] == "0") and T == len(s)


def test_unjittered_markov_model_is_a_product_of_table_entries():
    model = TreePolicy(3, 3, markov_ref_logp(3, 3, PAPER_START, PAPER_NEXT))
    seqs, lp_ref, _, _ = enumerate_sequences(model)
    p = dict(zip(seqs, np.exp(lp_ref)))
    assert p["120"] == pytest.approx(0.30 * 0.05 * 0.25)
    assert p["01$"] == pytest.approx(0.25 * 0.10 * 0.20)


def test_sampled_frequencies_match_enumerated_probabilities():
    theta = MODEL.init_logits(1)
    g = torch.Generator().manual_seed(0)
    u = torch.rand(1, 40000, MODEL.L, generator=g, dtype=torch.float64)
    y, logp_tok, mask = MODEL.sample(theta, u)
    freq = np.bincount(y[0].numpy(), minlength=len(SEQS)) / y.shape[1]
    assert 0.5 * np.abs(freq - np.exp(LP_REF)).sum() < 0.04  # TV of 40000 draws over 363 outputs
    np.testing.assert_allclose((logp_tok * mask).sum(-1)[0].numpy(), LP_REF[y[0].numpy()], atol=1e-12)
    np.testing.assert_array_equal(mask.sum(-1)[0].numpy(), LENGTHS[y[0].numpy()])


def test_exact_tree_gradient_matches_finite_differences():
    model = paper_model(3)
    regime = Regime.tempered(2.0)
    noise = torch.randn(1, len(model.prefixes), 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    theta0 = model.init_logits(1) + 0.3 * noise
    theta = theta0.clone().requires_grad_(True)
    exact_loss(model, regime, theta).backward()
    lp_old = model.log_probs(theta0)[0].numpy()
    _, lp_ref, r, _ = enumerate_sequences(model)
    R = 2 * lp_ref - lp_old  # held fixed

    def expected_R(th):
        return float(np.exp(model.log_probs(th)[0].numpy()) @ R)

    for node, tok in [(0, 0), (0, 2), (1, 3), (5, 1), (12, 3)]:
        up, down = theta0.clone(), theta0.clone()
        up[0, node, tok] += 1e-6
        down[0, node, tok] -= 1e-6
        fd = (expected_R(up) - expected_R(down)) / 2e-6
        assert -theta.grad[0, node, tok].item() == pytest.approx(fd, abs=1e-7)


def test_sharpening_converges_to_the_short_wrong_mode():
    assert describe(MODEL, np.exp(LP_REF))["correct_mass"] > 0.55  # pi_ref is mostly right
    for exact in (True, False):
        res = train(Regime.sharpening(), MODEL, steps=500, lr=2.0, seeds=4, exact=exact)
        mode = SEQS.index("2$")
        assert (res.probs[:, mode] > 0.99).all(), exact  # docs/toy.md: mode_prob 0.998
        assert (res.mean_length[-1] < 2.1).all() and res.mean_length[0, 0] == pytest.approx(np.exp(LP_REF) @ LENGTHS)


def test_task_reward_in_the_objective_fixes_the_answer():
    for regime in (Regime("optimization", alpha=1.0, beta_inv=1.0), Regime.tilted(1.0, 100.0)):
        res = train(regime, MODEL, steps=300, lr=2.0, seeds=4)
        assert (res.probs @ R_TASK > 0.99).all(), regime.name  # the README: > 0.99 correct


@pytest.mark.slow
def test_tempered_sampling_converges_to_the_power_distribution():
    model = paper_model(4)
    _, lp_ref, r, lengths = enumerate_sequences(model)
    q = np.exp(2 * lp_ref)
    exact = train(Regime.tempered(2.0), model, steps=3000, lr=3.0, seeds=1, exact=True, log_every=1000)
    assert 0.5 * np.abs(exact.probs[0] - q / q.sum()).sum() < 1e-3
    sampled = train(Regime.tempered(2.0), model, steps=1000, lr=2.0, seeds=4, log_every=500)
    tv = 0.5 * np.abs(sampled.probs - q / q.sum()).sum(1)
    assert (tv < 0.02).all() and (sampled.tv_to_fixed_point[0] > 0.3).all()


def test_fixed_length_removes_the_length_bias():
    fixed = paper_model(5, fixed_length=True)
    seqs, lp_ref, r, lengths = enumerate_sequences(fixed)
    assert len(seqs) == 3**5 and (lengths == 5).all()
    best = seqs[int(np.argmax(lp_ref))]  # the sharpening optimum by brute force
    assert best[-1] == "0"
    one_hot = np.eye(len(seqs))[seqs.index(best)]
    np.testing.assert_allclose(fixed_point(Regime.sharpening(), lp_ref, r, lengths), one_hot)
    res = train(Regime.sharpening(), fixed, steps=400, lr=2.0, seeds=4)
    assert (res.probs @ r > 0.9).all()
    np.testing.assert_allclose(res.mean_length[-1], 5.0)


def test_bad_model_settings_name_the_value():
    with pytest.raises(ValueError, match="L=0"):
        TreePolicy(3, 0, np.zeros((1, 4)))
    with pytest.raises(ValueError, match="correct=5"):
        TreePolicy(3, 2, np.zeros((4, 4)), correct=5)
    with pytest.raises(ValueError, match="expected"):
        TreePolicy(3, 2, np.zeros((3, 4)))
