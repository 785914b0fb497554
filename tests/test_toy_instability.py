"""Instability measurements: the run classifier, the step-size limit and reward variance against length."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sharpening.objective import Regime
from sharpening.toy.instability import classify, iid_model, shared_iid_model, sweep_lr, sweep_max_length


def _history(tv, entropy=1.0, task_reward=1.0, max_logit=1.0):
    tv = np.asarray(tv, dtype=float)[:, None]
    full = lambda v: np.broadcast_to(np.asarray(v, dtype=float).reshape(-1, 1), tv.shape)  # noqa: E731
    return SimpleNamespace(tv_to_fixed_point=tv, entropy=full(entropy), task_reward=full(task_reward),
                           grad_norm=full(1.0), max_logit=full(max_logit))


@pytest.mark.parametrize("history, label", [
    (_history([0.5, 0.1, 0.001]), "converged"),
    (_history([0.5, 0.3, 0.2, 0.1, 0.05]), "slow"),
    (_history([0.5, 0.3, 0.2, 0.199, 0.198, 0.197]), "slow"),  # creeping, never bouncing
    (_history([0.5, 0.3, 0.4, 0.3, 0.4, 0.3]), "oscillating"),
    (_history([0.5, 0.3, 0.9], entropy=[1.0, 0.5, 0.01], task_reward=[0.5, 0.2, 0.0]), "collapsed"),
    (_history([0.5, np.nan, np.nan]), "diverged"),
    (_history([0.5, 0.4, 0.3], max_logit=[1.0, 10.0, 2e3]), "diverged"),
    (_history([np.nan, np.nan, np.nan]), "unknown"),  # no closed-form fixed point: no distance to measure
    (_history([np.nan, np.nan, np.nan], max_logit=[1.0, 1.0, np.inf]), "diverged"),
])
def test_classify_by_hand(history, label):
    assert classify(history, tol=1e-2)[0] == label


def test_step_size_limit_of_exact_tempered_dynamics():
    # A bandit with no two arms alike, so that no symmetry hides a direction of the linearization.
    lp_ref, r = np.log([0.4, 0.25, 0.2, 0.1, 0.05]), np.array([0.0, 1.0, 1.0, 0.0, 1.0])
    p = np.exp(2 * lp_ref) / np.exp(2 * lp_ref).sum()  # pi* of tempered alpha = 2
    lr_max = 2 / np.linalg.eigvalsh(np.diag(p) - np.outer(p, p)).max()  # linearization, kappa = 1
    sweep = sweep_lr(Regime.tempered(2.0), lp_ref, r, lrs=(0.8 * lr_max, 1.5 * lr_max), steps=300, seeds=1,
                     exact=True)
    assert sweep.predicted_max_lr == pytest.approx(lr_max)
    assert sweep.fractions["converged"].tolist() == [1.0, 0.0]
    assert sweep.fractions["oscillating"][1] == 1.0 and sweep.tv_final[1, 0] > 0.05


def test_reward_variance_at_the_start_grows_linearly_in_length():
    u = np.array([0.6, 0.3, 0.1])
    var_log_u = u @ np.log(u) ** 2 - (u @ np.log(u)) ** 2
    sweep = sweep_max_length([Regime.sharpening(), Regime.tempered(3.0), Regime.task_reward()],
                             lengths=(1, 2, 4), steps=1, seeds=2)
    T = np.array([1, 2, 4])
    np.testing.assert_allclose(sweep.reward_var[0], T * var_log_u)  # R = lp_ref
    np.testing.assert_allclose(sweep.reward_var[1], 4 * T * var_log_u)  # R = (alpha - 1) lp_ref
    np.testing.assert_allclose(sweep.reward_var[2], [0.6 * 0.4] * 3)  # 0/1 reward on the last token
    np.testing.assert_allclose(sweep.predicted_reward_var[:2], sweep.reward_var[:2])


def test_iid_model_has_fixed_length_and_iid_tokens():
    model = iid_model(3)
    p = dict(zip(model.sequences, np.exp(model.lp_ref.numpy())))
    assert len(p) == 27 and p["012"] == pytest.approx(0.6 * 0.3 * 0.1)


def test_gradient_norm_with_shared_logits_matches_the_closed_form_moments():
    # E||g||^2 = signal + noise (theory.gradient_moments, per-response sum); pg_loss's token mean is g / T.
    sweep = sweep_max_length([Regime.sharpening(), Regime.task_reward()], lengths=(1, 3), steps=0, seeds=3000,
                             model=shared_iid_model)
    np.testing.assert_allclose(sweep.grad_norm_rms, sweep.predicted_grad_norm_rms, rtol=0.05)
    assert sweep.grad_norm_rms[1, 1] < 0.6 * sweep.grad_norm_rms[1, 0]  # the task-reward token mean thins out


def test_shared_token_policy_shares_one_distribution_across_prefixes():
    model = shared_iid_model(2)
    theta = torch.tensor([[0.0, 1.0, 2.0, 0.0]], dtype=torch.float64)  # EOS logit masked
    p = dict(zip(model.sequences, model.log_probs(theta)[0].exp().numpy()))
    q = np.exp([0.0, 1.0, 2.0]) / np.exp([0.0, 1.0, 2.0]).sum()
    assert p["21"] == pytest.approx(q[2] * q[1]) and sum(p.values()) == pytest.approx(1.0)
