"""Power sampling on the enumerable toy: the Metropolis-Hastings ratio by hand, the sampler against its exact law
and against the closed form pi_ref^alpha, and token temperature 1/alpha as the different distribution it is.

Sampling tolerances: n independent chains give an empirical law f of a law d; E[TV(f, d)] <= 1/2 sum_y
sqrt(d_y (1 - d_y) / n) (Jensen), and TV(f, d) exceeds its mean by eps with probability <= exp(-2 n eps^2)
(McDiarmid: one chain moves TV by at most 1/n). With eps for a 1e-9 chance, no test here can flake.
"""

import math

import numpy as np
import pytest
import torch

from sharpening.mcmc import Chains, PowerSampling, log_acceptance, mh_step
from sharpening.toy.power_sampling import (BlockStates, TreeProposer, power_distribution, power_sampler_distribution,
                                           power_sampler_distributions, power_sampler_samples, proposal_logp,
                                           token_temperature_distribution)
from sharpening.toy.sequence import TreePolicy, paper_model

MODEL = paper_model(5)
FAIL_CHANCE = 1e-9


def tv(p, q) -> float:
    return 0.5 * float(np.abs(np.asarray(p) - np.asarray(q)).sum())


def sampling_tolerance(d, n: int) -> float:
    """A bound that TV(empirical law of n draws from d, d) exceeds with probability < FAIL_CHANCE."""
    return 0.5 * float(np.sqrt(d * (1 - d) / n).sum()) + math.sqrt(math.log(1 / FAIL_CHANCE) / (2 * n))


def empirical(y, size) -> np.ndarray:
    return np.bincount(np.asarray(y), minlength=size) / len(y)


# Two tokens a = 0, b = 1, responses of exactly 2 tokens (no EOS): pi(a) = 0.6, pi(b | a) = 0.1, pi(. | b) = 1/2.
NO_EOS = -np.inf
TWO = TreePolicy(2, 2, np.array([np.log([0.6, 0.4]).tolist() + [NO_EOS], np.log([0.9, 0.1]).tolist() + [NO_EOS],
                                  np.log([0.5, 0.5]).tolist() + [NO_EOS]]))
PI_TWO = {"00": 0.54, "01": 0.06, "10": 0.2, "11": 0.2}


def test_acceptance_ratio_by_hand_on_two_tokens():
    """alpha = 2, proposal at temperature 1/2: q(a) = .36 / .52 = 9/13, q(b | a) = .01 / .82 = 1/82, q(. | b) = 1/2.

    From x = ab, resampling from position 0 to x' = ba: A = pi(ba)^2 q(ab) / (pi(ab)^2 q(ba)), the |x| terms
    cancel (both have 2 tokens)."""
    q_ab, q_ba = 9 / 13 * 1 / 82, 4 / 13 * 1 / 2
    A = 0.2**2 * q_ab / (0.06**2 * q_ba)
    assert A == pytest.approx(0.6097560975609756)
    log_a = log_acceptance(2.0, math.log(0.6 * 0.1), math.log(q_ab), math.log(0.4 * 0.5), math.log(q_ba), 2, 2)
    assert log_a == pytest.approx(math.log(A), abs=1e-12)
    # the model's own proposal gives the same q
    lq = proposal_logp(TWO, 0.5).exp()
    np.testing.assert_allclose(lq[:, :2].numpy(), [[9 / 13, 4 / 13], [81 / 82, 1 / 82], [0.5, 0.5]], atol=1e-15)


def test_acceptance_ratio_by_hand_when_lengths_differ():
    """x of 2 tokens, x' of 3, both resampled from position 1:
    A = pi(x')^a q(x_1: | x_0) (1/3) / (pi(x)^a q(x'_1: | x_0) (1/2)), 1/|x| being the chance of picking position 1."""
    alpha, p_x, p_new, q_x, q_new = 4.0, 0.3 * 0.5, 0.3 * 0.2 * 0.7, 0.45, 0.1 * 0.8
    A = (p_new**alpha * q_x / 3) / (p_x**alpha * q_new / 2)
    log_a = log_acceptance(alpha, math.log(0.5), math.log(q_x), math.log(0.2 * 0.7), math.log(q_new), 2, 3)
    assert log_a == pytest.approx(math.log(A), abs=1e-12)


def test_one_mh_step_moves_with_the_hand_computed_probabilities():
    """200,000 chains at x = ab take one step (alpha 2, tau 1/2). By hand:
    to aa: from position 1 (1/2 * q(a | a) = 81/82, A = (.54/.06)^2 / 81 = 1) or position 0 (1/2 * q(aa), A = 1);
    to ba and to bb: from position 0 only, 1/2 * (4/13 * 1/2) * min(1, 0.6098); else x stays."""
    n = 200_000
    chains = Chains.empty(n, 2)
    chains.tokens[:] = torch.tensor([0, 1])
    chains.length[:] = 2
    lq = proposal_logp(TWO, 0.5)
    chains.lp[:] = torch.log(torch.tensor([0.6, 0.1], dtype=torch.float64))
    chains.lq[:] = torch.stack([lq[0, 0], lq[1, 1]])
    mh_step(TreeProposer(TWO, 0.5), chains, torch.arange(n), 2, 2.0, torch.Generator().manual_seed(0))
    A_b = 0.2**2 * (9 / 13 / 82) / (0.06**2 * (4 / 13 / 2))
    expected = {"00": 0.5 * 81 / 82 + 0.5 * 9 / 13 * 81 / 82, "10": 0.5 * 2 / 13 * A_b, "11": 0.5 * 2 / 13 * A_b}
    expected["01"] = 1 - sum(expected.values())
    got = {k: float(((chains.tokens[:, 0] == int(k[0])) & (chains.tokens[:, 1] == int(k[1]))).double().mean())
           for k in expected}
    for k, p in expected.items():
        assert abs(got[k] - p) < 5 * math.sqrt(p * (1 - p) / n), (k, got[k], p)
    moved = (chains.tokens != torch.tensor([0, 1])).any(1)
    assert (chains.proposed == 1).all() and (chains.accepted >= moved.long()).all()  # a move is an acceptance


def test_token_temperature_is_not_the_power_distribution_by_hand():
    """On the two-token model, pi^2 / Z puts 0.54^2 / (0.54^2 + 0.06^2 + 2 * 0.2^2) = 0.777 on aa, while token
    temperature 1/2 gives q(aa) = 9/13 * 81/82 = 0.684: b is likelier at the root (0.4) than any b-path is."""
    seqs = TWO.sequences
    p2 = np.array([PI_TWO[s] ** 2 for s in seqs])
    np.testing.assert_allclose(power_distribution(TWO, 2.0), p2 / p2.sum(), atol=1e-15)
    q = {"00": 9 / 13 * 81 / 82, "01": 9 / 13 / 82, "10": 4 / 13 / 2, "11": 4 / 13 / 2}
    np.testing.assert_allclose(token_temperature_distribution(TWO, 0.5), [q[s] for s in seqs], atol=1e-15)
    assert tv(power_distribution(TWO, 2.0), token_temperature_distribution(TWO, 0.5)) > 0.09


def test_kernel_leaves_the_closed_form_power_distribution_invariant():
    """Each block's kernel, written out over every response of the paper toy: rows sum to 1, and pi_ref^alpha (over
    the final block's responses) satisfies detailed balance, hence is stationary."""
    for alpha, tau in ((4.0, 0.25), (2.0, 1.0), (0.5, 2.0)):
        states = BlockStates(MODEL, MODEL.L, proposal_logp(MODEL, tau))
        K = states.kernel(alpha).numpy()
        assert K.min() >= 0 and np.allclose(K.sum(1), 1.0, atol=1e-12)
        order = [MODEL.sequences.index("".join("$" if t == MODEL.V else str(t) for t in s)) for s in states.states]
        pi = power_distribution(MODEL, alpha)[order]
        flow = pi[:, None] * K
        np.testing.assert_allclose(flow, flow.T, atol=1e-15)


@pytest.mark.parametrize("settings", [PowerSampling(alpha=4.0, block_size=1, mcmc_steps=2),
                                      PowerSampling(alpha=2.0, block_size=2, mcmc_steps=1, proposal_temperature=1.0),
                                      PowerSampling(alpha=4.0, block_size=1, mcmc_steps=3, stop_at_eos=True)])
def test_sampler_draws_from_its_exact_law(settings):
    """20,000 chains on the paper toy (363 responses) against the law computed with the kernels as matrices."""
    n = 20_000
    y, chains = power_sampler_samples(MODEL, settings, n, seed=1)
    law = power_sampler_distribution(MODEL, settings)
    assert law.sum() == pytest.approx(1.0, abs=1e-12)
    assert tv(empirical(y, len(law)), law) < sampling_tolerance(law, n)
    assert ((chains.accepted <= chains.proposed) & (chains.generated >= chains.length)).all()


def test_sampler_reaches_the_closed_form_power_distribution():
    """alpha 4, blocks of one token, 10 MCMC steps per block: the sampler's exact law is within 1e-4 of pi_ref^4,
    and 20,000 chains are within the sampling tolerance of it, which token temperature 1/4 (the same sampler with no
    MCMC step) misses by far."""
    n, settings = 20_000, PowerSampling(alpha=4.0, block_size=1, mcmc_steps=10)
    target = power_distribution(MODEL, 4.0)
    bias = tv(power_sampler_distribution(MODEL, settings), target)
    assert bias < 1e-4
    y, _ = power_sampler_samples(MODEL, settings, n, seed=2)
    bound = bias + sampling_tolerance(target, n)
    assert tv(empirical(y, len(target)), target) < bound
    y0, _ = power_sampler_samples(MODEL, PowerSampling(alpha=4.0, block_size=1, mcmc_steps=0), n, seed=2)
    assert tv(empirical(y0, len(target)), target) > 3 * bound


def test_no_mcmc_step_is_token_temperature_and_more_steps_converge():
    """The exact law: 0 steps is ancestral sampling at temperature 1/alpha; the TV to pi_ref^alpha then falls
    with every step. The reference's early exit at EOS converges elsewhere (0.035 from pi_ref^4 here)."""
    settings = PowerSampling(alpha=4.0, block_size=1)
    steps = [0, 1, 2, 5, 10, 20]
    laws = power_sampler_distributions(MODEL, settings, steps)
    np.testing.assert_allclose(laws[0], token_temperature_distribution(MODEL, 0.25), atol=1e-14)
    dist = [tv(law, power_distribution(MODEL, 4.0)) for law in laws]
    assert all(a > b for a, b in zip(dist, dist[1:])) and dist[-1] < 1e-7
    early = power_sampler_distribution(MODEL, PowerSampling(alpha=4.0, block_size=1, mcmc_steps=20, stop_at_eos=True))
    assert tv(early, power_distribution(MODEL, 4.0)) > 0.02


def test_same_seed_same_samples():
    settings = PowerSampling(alpha=4.0, block_size=2, mcmc_steps=3)
    a, ca = power_sampler_samples(MODEL, settings, 500, seed=7)
    b, cb = power_sampler_samples(MODEL, settings, 500, seed=7)
    c, _ = power_sampler_samples(MODEL, settings, 500, seed=8)
    assert torch.equal(a, b) and torch.equal(ca.accepted, cb.accepted) and not torch.equal(a, c)


def test_settings_are_checked_and_blocks_cover_the_length():
    assert PowerSampling().limits(32) == list(range(2, 33, 2))  # the published 16 blocks
    assert PowerSampling(block_size=2).limits(5) == [2, 4, 5]
    assert PowerSampling().limits(8) == list(range(1, 9))
    assert PowerSampling(alpha=4.0).tau == 0.25 and PowerSampling(alpha=4.0, proposal_temperature=0.5).tau == 0.5
    for bad in ({"alpha": 0.0}, {"alpha": float("nan")}, {"block_size": 0}, {"mcmc_steps": -1},
                {"proposal_temperature": 0.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            PowerSampling(**bad)


# --- the figures ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_power_sampling_figure_draws_the_closed_forms_and_the_exact_laws():
    import matplotlib.pyplot as plt

    from sharpening.figures import style
    from sharpening.figures.power_sampling import fig_power_sampling

    axes = fig_power_sampling(quick=True, seed=1)
    tv_panel, acc, length = (style.series(ax) for ax in axes)
    x, y = tv_panel["MCMC power sampling (exact law)"]
    p4 = np.exp(4 * MODEL.lp_ref.numpy())
    p4 /= p4.sum()  # pi_ref^4 / Z by hand
    assert x[0] == 0 and y[0] == pytest.approx(tv(token_temperature_distribution(MODEL, 0.25), p4), rel=1e-9)
    assert y[-1] < 1e-6 and (np.diff(y) < 0).all()
    a, closed = acc[r"closed form $\pi_{\rm ref}^{\alpha} / Z$"]
    for alpha, value in zip(a[::15], closed[::15]):
        p = np.exp(alpha * MODEL.lp_ref.numpy())
        assert value == pytest.approx(p @ MODEL.r.numpy() / p.sum(), rel=1e-9)
    a, mcmc = length["MCMC power sampling, 10 steps per block (exact law)"]
    for alpha, value in zip(a, mcmc):  # 10 steps per block: on the closed form
        p = np.exp(alpha * MODEL.lp_ref.numpy())
        assert value == pytest.approx(p @ MODEL.lengths.numpy() / p.sum(), abs=1e-3)
    plt.close(style.figure_of(axes))


def test_llm_figure_plots_the_summary_and_rejects_a_bad_one(tmp_path):
    import json

    import matplotlib.pyplot as plt

    from sharpening.figures import style
    from sharpening.figures.power_sampling import fig_power_sampling_llm, load_llm_results

    summary = {"methods": {"base": {"pass@k": {"1": 0.1, "2": 0.2}, "tokens_per_answer": 20.0, "n": 2},
                           "temperature": {"pass@k": {"1": 0.2, "2": 0.3}, "tokens_per_answer": 18.0, "n": 2},
                           "power": {"pass@k": {"1": 0.3, "2": 0.4}, "tokens_per_answer": 900.0, "n": 2}}}
    (tmp_path / "llm.json").write_text(json.dumps(summary))
    axes = fig_power_sampling_llm(load_llm_results(tmp_path / "llm.json"))
    curves, cost = style.series(axes[0]), style.series(axes[1])
    np.testing.assert_array_equal(curves["(c) π_ref, MCMC power sampling"][1], [0.3, 0.4])
    assert [float(v[0]) for v in cost["(a) π_ref, temperature 1"]] == [20.0, 0.1]
    plt.close(style.figure_of(axes))
    # power sampling on part of the problems: both panels show the paired scores, the costs stay each method's own
    summary["paired"] = {"problems": ["p0", "p1"],
                         "methods": {name: {"pass@k": {"1": 0.5 + i / 10, "2": 0.6 + i / 10}, "pass@1_se": 0.05}
                                     for i, name in enumerate(summary["methods"])}}
    (tmp_path / "llm.json").write_text(json.dumps(summary))
    axes = fig_power_sampling_llm(load_llm_results(tmp_path / "llm.json"))
    curves, cost = style.series(axes[0]), style.series(axes[1])
    np.testing.assert_allclose(curves["(c) π_ref, MCMC power sampling"][1], [0.7, 0.8])
    assert [float(v[0]) for v in cost["(b) π_ref, token temperature 1/α"]] == [18.0, 0.6]
    assert "2 shared problems" in axes[0].get_title()
    plt.close(style.figure_of(axes))
    (tmp_path / "bad.json").write_text(json.dumps({"methods": {"base": {"pass@k": {}}}}))
    with pytest.raises(ValueError, match="expected"):
        load_llm_results(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text(json.dumps({**summary, "paired": {"problems": ["p0"], "methods": {}}}))
    with pytest.raises(ValueError, match="'paired' must score every method"):
        load_llm_results(tmp_path / "bad.json")


def test_bench_pairs_the_methods_on_the_problems_they_all_hold(tmp_path):
    """bench/power_sampling.py with power sampling stopped part way: pass@k of every method on the shared problems,
    from the correct counts, against C(n, k) arithmetic by hand."""
    import importlib.util
    import json
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "bench"
    sys.path.insert(0, str(bench))  # the script imports its neighbour cpu_demo
    try:
        spec = importlib.util.spec_from_file_location("bench_power_sampling", bench / "power_sampling.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(bench))

    def method(counts):
        return {"pass@k": {"1": 0.0, "2": 0.0}, "tokens_per_answer": 1.0,
                "problems": [{"id": f"p{i}", "correct": c, "n": 4} for i, c in counts.items()]}

    path = tmp_path / "llm.json"
    path.write_text(json.dumps({"methods": {"base": method({0: 1, 1: 2, 2: 4, 3: 0}), "power": method({1: 4, 3: 2})}}))
    module.pair_up(path)
    paired = json.loads(path.read_text())["paired"]
    assert paired["problems"] == ["p1", "p3"]
    # n = 4: pass@1 = c / 4; pass@2 = 1 - C(4 - c, 2) / C(4, 2): c = 2 -> 1 - 1/6, c = 0 -> 0, c = 4 -> 1
    base, power = paired["methods"]["base"], paired["methods"]["power"]
    assert base["pass@k"] == pytest.approx({"1": (2 / 4 + 0) / 2, "2": (5 / 6 + 0) / 2})
    assert power["pass@k"] == pytest.approx({"1": (1 + 2 / 4) / 2, "2": (1 + 5 / 6) / 2})
    assert base["pass@1_se"] == pytest.approx(0.25) and base["correct"] == [2, 0]  # std(0.5, 0) = 0.354 / sqrt 2
    path.write_text(json.dumps({"methods": {"base": method({0: 1}), "power": method({0: 3})}}))
    module.pair_up(path)  # the same problems: nothing to pair
    assert "paired" not in json.loads(path.read_text())
