"""The softmax bandit: gradients against closed forms and loops, and where each regime ends."""

import numpy as np
import pytest
import torch

from sharpening.objective import Regime
from sharpening.toy.bandit import SoftmaxBandit, exact_loss, sampled_loss, train, wrong_mode_bandit

LP_REF, R_TASK = wrong_mode_bandit()  # pi_ref = [0.4, 0.2, 0.2, 0.1, 0.1], r = [0, 1, 1, 0, 1]


def test_wrong_mode_bandit_is_the_stated_one():
    np.testing.assert_allclose(np.exp(LP_REF), [0.4, 0.2, 0.2, 0.1, 0.1])
    assert np.argmax(LP_REF) == 0 and R_TASK[0] == 0 and np.exp(LP_REF) @ R_TASK == pytest.approx(0.5)


@pytest.mark.parametrize("regime", [Regime.sharpening(), Regime.tempered(2.0), Regime.tilted(0.5, 3.0)])
def test_exact_gradient_is_pi_times_centred_reward_and_matches_finite_differences(regime):
    bandit = SoftmaxBandit(LP_REF, R_TASK)
    theta0 = torch.tensor([[0.3, -0.2, 0.5, 0.1, -0.7]], dtype=torch.float64)
    theta = theta0.clone().requires_grad_(True)
    exact_loss(bandit, regime, theta).backward()
    pi = torch.softmax(theta0, -1)[0].numpy()
    # R by hand from the DESIGN table, lp_old = log pi.
    if regime.mode == "optimization":
        R = LP_REF
    elif regime.beta_inv == 0:
        R = (regime.alpha - 1) * LP_REF + LP_REF - np.log(pi)
    else:
        b = regime.beta_inv
        R = R_TASK + (regime.alpha - 1) / b * LP_REF + (LP_REF - np.log(pi)) / b
    np.testing.assert_allclose(-theta.grad[0].numpy(), pi * (R - pi @ R), atol=1e-12)
    # finite differences of E_pi[R] with R held at its value at theta0 (lp_old is sampled without gradient)
    eps, fd = 1e-6, []
    for k in range(5):
        up, down = theta0[0].numpy().copy(), theta0[0].numpy().copy()
        up[k] += eps
        down[k] -= eps
        softmax = lambda x: np.exp(x) / np.exp(x).sum()  # noqa: E731
        fd.append((softmax(up) @ R - softmax(down) @ R) / (2 * eps))
    np.testing.assert_allclose(-theta.grad[0].numpy(), fd, atol=1e-8)


def test_sampled_gradient_is_the_leave_one_out_reinforce_sum_per_seed():
    bandit = SoftmaxBandit(LP_REF, R_TASK)
    regime = Regime.tempered(2.0)
    theta0 = torch.tensor([[0.3, -0.2, 0.5, 0.1, -0.7], [0.0, 1.0, -1.0, 0.2, 0.4]], dtype=torch.float64)
    u = torch.tensor([[0.05, 0.5, 0.97, 0.3], [0.9, 0.1, 0.45, 0.62]], dtype=torch.float64)[..., None]
    theta = theta0.clone().requires_grad_(True)
    sampled_loss(bandit, regime, theta, u).backward()
    for s in range(2):
        pi = np.exp(theta0[s].numpy()) / np.exp(theta0[s].numpy()).sum()
        cdf = np.cumsum(pi)
        y = [int(np.searchsorted(cdf, x * cdf[-1])) for x in u[s, :, 0].numpy()]  # inverse-CDF draws
        R = [2 * LP_REF[k] - np.log(pi[k]) for k in y]  # (alpha - 1) lp_ref + lp_ref - lp_old
        G, g = len(y), np.zeros(5)
        for i in range(G):
            A = R[i] - sum(R[j] for j in range(G) if j != i) / (G - 1)
            g += A * (np.eye(5)[y[i]] - pi) / G  # token-mean over this seed's G one-token responses
        np.testing.assert_allclose(-theta.grad[s].numpy(), g, atol=1e-12)


def test_sharpening_picks_the_wrong_mode_and_task_reward_the_correct_arms():
    for exact in (True, False):
        sharp = train(Regime.sharpening(), LP_REF, R_TASK, steps=400, seeds=6, exact=exact)
        task = train(Regime.task_reward(), LP_REF, R_TASK, steps=400, seeds=6, exact=exact)
        assert (sharp.probs[:, 0] > 0.99).all()  # the README: > 0.99 on the wrong arm, every seed
        assert (task.probs @ R_TASK > 0.99).all()  # and > 0.99 on correct arms
        np.testing.assert_allclose(task.task_reward[-1], task.probs @ R_TASK)


TEMPERED = [Regime.tempered(a) for a in (0.5, 1.0, 1.25, 2.0, 4.0)]


@pytest.mark.parametrize("regime, lr", [(r, 1.0) for r in TEMPERED] + [(Regime.tilted(2.0, 10.0), 10.0)])
def test_exact_sampling_dynamics_reach_the_closed_form_fixed_point(regime, lr):
    res = train(regime, LP_REF, R_TASK, steps=1000, lr=lr, seeds=1, exact=True)
    q = np.exp(regime.alpha * LP_REF + regime.beta_inv * R_TASK)  # pi_ref^alpha * exp(beta_inv * r)
    assert 0.5 * np.abs(res.probs[0] - q / q.sum()).sum() < 1e-3


def test_sampled_tempered_dynamics_reach_the_fixed_point():
    # At the sampling fixed point R = alpha lp_ref - log pi* is the same for every arm, so the
    # leave-one-out advantages and with them the sampling noise vanish: the runs settle exactly.
    res = train(Regime.tempered(2.0), LP_REF, R_TASK, steps=600, seeds=8)
    q = np.exp(2 * LP_REF)
    assert (0.5 * np.abs(res.probs - q / q.sum()).sum(1) < 1e-3).all()
    assert res.tv_to_fixed_point[0].min() > 0.2  # it did have to move


def test_a_seed_runs_the_same_alone_and_among_others():
    together = train(Regime.task_reward(), LP_REF, R_TASK, steps=30, seeds=[4, 7, 11])
    alone = train(Regime.task_reward(), LP_REF, R_TASK, steps=30, seeds=[7])
    np.testing.assert_allclose(together.probs[1], alone.probs[0], atol=1e-12)
    assert not np.allclose(together.probs[0], together.probs[1])


def test_history_shapes_and_logged_steps():
    res = train(Regime.sharpening(), LP_REF, R_TASK, steps=25, seeds=3, log_every=10)
    np.testing.assert_array_equal(res.steps, [0, 10, 20, 25])
    for name in res.HISTORY:
        assert getattr(res, name).shape == (4, 3), name
    np.testing.assert_allclose(res.entropy[0], -(np.exp(LP_REF) * LP_REF).sum())
    np.testing.assert_allclose(res.reward_var[0], np.exp(LP_REF) @ LP_REF**2 - (np.exp(LP_REF) @ LP_REF) ** 2)


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": -1}, "steps"), ({"group_size": 1}, "group_size"), ({"lr": 0.0}, "lr"),
    ({"seeds": 0}, "seeds"), ({"seeds": [1.5]}, "seeds"), ({"optimizer": "lion"}, "optimizer"),
])
def test_bad_settings_name_the_value(kwargs, match):
    args = {"steps": 5, **kwargs}
    with pytest.raises(ValueError, match=match):
        train(Regime.sharpening(), LP_REF, R_TASK, **args)


def test_bad_bandit_is_rejected():
    with pytest.raises(ValueError, match="same length"):
        train(Regime.sharpening(), LP_REF, R_TASK[:3], steps=1)


def _toy_cli(argv):
    import argparse

    from sharpening.toy.cli import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_bandit_writes_summary_plot_and_metrics(tmp_path, capsys):
    import json

    plot, metrics = tmp_path / "h.png", tmp_path / "m.jsonl"
    assert _toy_cli(["toy", "bandit", "--regime", "tempered", "--alpha", "2", "--steps", "4", "--seeds", "2",
                     "--plot", str(plot), "--metrics", str(metrics)]) == 0
    out = capsys.readouterr().out
    assert "tempered a=2  (sampled" in out and "tv_to_fixed_point" in out
    assert plot.stat().st_size > 0
    lines = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [x["step"] for x in lines] == [0, 1, 2, 3, 4]
    assert lines[0]["task_reward"] == pytest.approx(0.5)  # E_pi_ref[r] = 0.2 + 0.2 + 0.1


@pytest.mark.parametrize("argv, message", [
    (["--regime", "custom"], "needs --mode"),
    (["--regime", "tempered", "--alpha", "-1"], "alpha=-1"),
    (["--K", "2"], "K=2"),
    # formerly a flag replaced the preset's field: tilted with --beta-inv 0 silently ran tempered
    (["--regime", "tilted", "--alpha", "2", "--beta-inv", "0"], "preset 'tilted' needs beta_inv > 0"),
    (["--regime", "tempered"], "preset 'tempered' needs alpha"),  # formerly a hidden default alpha = 2
    (["--regime", "task_reward", "--alpha", "1"], "preset 'task_reward' does not take alpha"),
    (["--regime", "sharpening", "--mode", "sampling"], "preset 'sharpening' does not take mode"),
    (["--regime", "majority_vote", "--p", "0.3"], "preset 'majority_vote' does not take p"),
])
def test_cli_bad_input_names_the_value(argv, message):
    with pytest.raises(SystemExit, match=message):
        _toy_cli(["toy", "bandit", "--steps", "1", *argv])


@pytest.mark.parametrize("toy", ["bandit", "sequence"])
@pytest.mark.parametrize("preset", ["self_likelihood", "neg_entropy", "self_certainty", "majority_vote",
                                    "random_reward"])
def test_cli_runs_every_label_free_preset(capsys, toy, preset):
    size = ["--L", "3"] if toy == "sequence" else []
    assert _toy_cli(["toy", toy, "--regime", preset, "--steps", "3", "--seeds", "2", *size]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{preset}  (sampled") and "tv_to_fixed_point" in out
