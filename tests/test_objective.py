"""sharpening.objective against numbers computed by hand from the DESIGN table, and against plain loops."""

import math

import numpy as np
import pytest
import torch

from sharpening.objective import (
    MODES,
    NORMALIZATIONS,
    PRESETS,
    Regime,
    pg_loss,
    rloo_advantages,
    shaped_reward,
    truncated_is_weight,
)

# Three responses. Per-sequence sums and the same data as per-token log-probs with a mask (pads are garbage).
r = np.array([1.0, 0.0, 1.0])
LP_REF = np.array([-2.0, -6.0, -3.0])
LP_OLD = np.array([-2.5, -5.0, -3.0])
T = np.array([2.0, 4.0, 3.0])
MASK = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]])
LP_REF_TOK = np.array([[-1.5, -0.5, -9.0, 7.0], [-1.0, -2.0, -1.0, -2.0], [-1.0, -1.0, -1.0, -9.0]])
LP_OLD_TOK = np.array([[-2.0, -0.5, 3.0, -9.0], [-1.0, -1.0, -1.0, -2.0], [-1.0, -0.5, -1.5, 5.0]])

# N by hand: sum = lp_ref, mean = lp_ref / T, weighted_mean (w = 0.5) = lp_ref / sqrt(T), none = 0.
S2, S3 = math.sqrt(2.0), math.sqrt(3.0)
ALPHA, BETA_INV, W = 2.0, 4.0, 0.5
# R by hand for alpha = 2, every cell of the DESIGN table; lp_ref - lp_old = [0.5, -1, 0].
EXPECTED = {
    # none: R = r whatever beta_inv and N
    **{("none", b, n): [1.0, 0.0, 1.0] for b in (0.0, BETA_INV) for n in NORMALIZATIONS},
    # optimization, beta_inv = 0: R = alpha * N
    ("optimization", 0.0, "sum"): [-4.0, -12.0, -6.0],
    ("optimization", 0.0, "mean"): [-2.0, -3.0, -2.0],
    ("optimization", 0.0, "weighted_mean"): [-2 * S2, -6.0, -2 * S3],
    # optimization, beta_inv = 4: R = r + (2/4) N
    ("optimization", BETA_INV, "sum"): [0.0, -3.0, -0.5],
    ("optimization", BETA_INV, "mean"): [0.5, -0.75, 0.5],
    ("optimization", BETA_INV, "weighted_mean"): [1 - S2 / 2, -1.5, 1 - S3 / 2],
    ("optimization", BETA_INV, "none"): [1.0, 0.0, 1.0],
    # sampling, beta_inv = 0: R = (2 - 1) N + lp_ref - lp_old
    ("sampling", 0.0, "sum"): [-1.5, -7.0, -3.0],
    ("sampling", 0.0, "mean"): [-0.5, -2.5, -1.0],
    ("sampling", 0.0, "weighted_mean"): [0.5 - S2, -4.0, -S3],
    ("sampling", 0.0, "none"): [0.5, -1.0, 0.0],
    # sampling, beta_inv = 4: R = r + (1/4) N + (1/4)(lp_ref - lp_old)
    ("sampling", BETA_INV, "sum"): [0.625, -1.75, 0.25],
    ("sampling", BETA_INV, "mean"): [0.875, -0.625, 0.75],
    ("sampling", BETA_INV, "weighted_mean"): [1.125 - S2 / 4, -1.0, 1 - S3 / 4],
    ("sampling", BETA_INV, "none"): [1.125, -0.25, 1.0],
}
CELLS = sorted(EXPECTED)


def test_every_cell_is_covered():
    degenerate = {("optimization", 0.0, "none")}  # R = 0 for every response: rejected by Regime
    every_cell = {(m, b, n) for m in MODES for b in (0.0, BETA_INV) for n in NORMALIZATIONS}
    assert set(EXPECTED) | degenerate == every_cell


@pytest.mark.parametrize("mode,beta_inv,norm", CELLS)
def test_shaped_reward_on_sequence_sums(mode, beta_inv, norm):
    regime = Regime(mode, ALPHA, beta_inv, norm, weight=W)
    R = shaped_reward(regime, r, LP_REF, LP_OLD, lengths=T)
    assert isinstance(R, np.ndarray)
    np.testing.assert_allclose(R, EXPECTED[mode, beta_inv, norm], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode,beta_inv,norm", CELLS)
def test_shaped_reward_on_masked_tokens(mode, beta_inv, norm):
    regime = Regime(mode, ALPHA, beta_inv, norm, weight=W)
    R = shaped_reward(regime, r, LP_REF_TOK, LP_OLD_TOK, mask=MASK)  # sums and T from the mask
    np.testing.assert_allclose(R, EXPECTED[mode, beta_inv, norm], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode,beta_inv,norm", CELLS)
def test_shaped_reward_torch_in_torch_out(mode, beta_inv, norm):
    regime = Regime(mode, ALPHA, beta_inv, norm, weight=W)
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    R_seq = shaped_reward(regime, t(r), t(LP_REF), t(LP_OLD), lengths=t(T))
    R_tok = shaped_reward(regime, t(r), t(LP_REF_TOK), t(LP_OLD_TOK), mask=torch.tensor(MASK))
    for R in (R_seq, R_tok):
        assert isinstance(R, torch.Tensor) and R.dtype == torch.float64
        np.testing.assert_allclose(R.numpy(), EXPECTED[mode, beta_inv, norm], rtol=1e-12, atol=1e-12)


def test_tokens_without_mask_count_every_position():
    tok = np.array([[-1.0, -3.0], [-2.0, -2.0]])  # T = 2 each: mean N = [-2, -2]
    R = shaped_reward(Regime.sharpening("mean"), np.zeros(2), tok, tok)
    np.testing.assert_allclose(R, [-2.0, -2.0])


def test_length_normalization_needs_lengths():
    with pytest.raises(ValueError, match="lengths"):
        shaped_reward(Regime.sharpening("mean"), r, LP_REF, LP_OLD)
    with pytest.raises(ValueError, match="T >= 1"):
        shaped_reward(Regime.sharpening("mean"), r, LP_REF, LP_OLD, lengths=np.array([1.0, 0.0, 2.0]))


def test_shape_mismatch_names_the_argument():
    with pytest.raises(ValueError, match="lp_ref"):
        shaped_reward(Regime.sharpening(), r, LP_REF[:2])


def test_rloo_matches_a_python_loop():
    R = np.random.default_rng(0).normal(size=(3, 5))
    A = rloo_advantages(R)
    for p in range(3):
        for i in range(5):
            others = [R[p, j] for j in range(5) if j != i]
            assert A[p, i] == pytest.approx(R[p, i] - sum(others) / len(others), abs=1e-12)
    A_t = rloo_advantages(torch.tensor(R))
    assert isinstance(A_t, torch.Tensor)
    np.testing.assert_allclose(A_t.numpy(), A, atol=1e-12)


def test_rloo_by_hand_and_needs_two_samples():
    np.testing.assert_allclose(rloo_advantages(np.array([[1.0, 0.0, 0.0]])), [[1.0, -0.5, -0.5]])
    with pytest.raises(ValueError, match="G=1"):
        rloo_advantages(np.array([[1.0], [0.0]]))


def test_pg_loss_by_hand():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.25, -4.0]], requires_grad=True)
    A = torch.tensor([2.0, -1.0])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    # -(2 * (-1 - 2) + (-1) * (-0.5 - 0.25 - 4)) / 5 tokens = -(-6 + 4.75) / 5 = 0.25
    loss = pg_loss(logp, A, mask)
    assert loss.item() == pytest.approx(0.25)
    loss.backward()
    np.testing.assert_allclose(logp.grad.numpy(), [[-0.4, -0.4, 0.0], [0.2, 0.2, 0.2]])


def test_pg_loss_gradient_is_reinforce_on_a_tiny_softmax():
    """Per-token policy softmax(theta) over 3 tokens; the REINFORCE gradient by hand is
    -(1/n_tokens) sum_{i,t} mask_it * A_i * (onehot(y_it) - pi)."""
    theta = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[0, 2, 1], [1, 1, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    A = torch.tensor([0.7, -1.3], dtype=torch.float64)
    logp_tok = torch.log_softmax(theta, -1)[y]  # [B, T]
    pg_loss(logp_tok, A, mask).backward()

    th = np.array([0.3, -0.2, 0.5])
    pi = np.exp(th) / np.exp(th).sum()
    grad = np.zeros(3)
    for i, (tokens, row) in enumerate(zip([[0, 2, 1], [1, 1, 0]], [[1, 1, 1], [1, 1, 0]])):
        for tok, m in zip(tokens, row):
            grad -= m * [0.7, -1.3][i] * (np.eye(3)[tok] - pi)
    np.testing.assert_allclose(theta.grad.numpy(), grad / 5, rtol=1e-12)


def test_truncated_importance_weight_by_hand():
    logp_train = torch.tensor([[math.log(0.2), math.log(0.5), math.log(0.1)]], dtype=torch.float64)
    logp_engine = torch.tensor([[math.log(0.1), math.log(0.01), math.log(0.4)]], dtype=torch.float64)
    w = truncated_is_weight(logp_train, logp_engine)  # ratios 2, 50 -> capped at 20, 0.25
    np.testing.assert_allclose(w.numpy(), [[2.0, 20.0, 0.25]], rtol=1e-12)
    assert not w.requires_grad
    np.testing.assert_allclose(truncated_is_weight(logp_train, logp_engine, cap=1.5).numpy(), [[1.5, 1.5, 0.25]])


def test_pg_loss_with_importance_weights_by_hand():
    theta = torch.tensor([0.1, 0.4], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[0, 1, 1]])
    logp_tok = torch.log_softmax(theta, -1)[y]
    ratio = torch.tensor([[2.0, 50.0, 0.25]], dtype=torch.float64)  # pi_theta / pi_engine per token
    logp_engine = logp_tok.detach() - ratio.log()
    A, mask = torch.tensor([1.5], dtype=torch.float64), torch.ones(1, 3)
    loss = pg_loss(logp_tok, A, mask, logp_engine=logp_engine)
    loss.backward()
    pi = np.exp([0.1, 0.4]) / np.exp([0.1, 0.4]).sum()
    w = [2.0, 20.0, 0.25]  # weights are constants: no gradient flows through them
    assert loss.item() == pytest.approx(-1.5 * (w[0] * np.log(pi[0]) + (w[1] + w[2]) * np.log(pi[1])) / 3)
    grad = -1.5 * (w[0] * (np.eye(2)[0] - pi) + (w[1] + w[2]) * (np.eye(2)[1] - pi)) / 3
    np.testing.assert_allclose(theta.grad.numpy(), grad, rtol=1e-12)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(mode="optimization", alpha=-1.0, beta_inv=1.0), "alpha"),
        (dict(mode="sampling", alpha=float("nan")), "alpha"),
        (dict(mode="sampling", alpha=2.0, beta_inv=float("inf")), "beta_inv"),
        (dict(mode="sampling", alpha=True), "alpha"),
        (dict(mode="sampling", alpha="2"), "alpha"),
        (dict(mode="sampling", alpha=2.0, normalization="weighted_mean", weight=-0.5), "weight"),
    ],
)
def test_bad_numbers_name_the_field_and_the_allowed_values(kwargs, field):
    with pytest.raises(ValueError, match=rf"Regime\.{field}=.*finite real number >= 0"):
        Regime(**kwargs)


def test_bad_mode_and_normalization_list_the_choices():
    with pytest.raises(ValueError, match=r"Regime\.mode='greedy'.*'none', 'optimization', 'sampling'"):
        Regime("greedy")
    with pytest.raises(ValueError, match=r"Regime\.normalization='max'.*'sum', 'mean', 'weighted_mean', 'none'"):
        Regime("sampling", 2.0, 0.0, "max")
    with pytest.raises(ValueError, match="R = 0 for every response"):
        Regime("optimization", alpha=0.0, beta_inv=0.0)
    with pytest.raises(ValueError, match="beta_inv > 0"):
        Regime.tilted(2.0, 0.0)
    with pytest.raises(ValueError, match="unknown regime preset 'ppo'.*sharpening"):
        Regime.preset("ppo")


# --- one way to read a regime (issue 13, section 3) ----------------------------------------------------------

def test_every_preset_round_trips_through_its_dict_and_its_spec():
    for name in PRESETS:
        params = {"tempered": {"alpha": 2}, "tilted": {"alpha": 2, "beta_inv": 100}}.get(name, {})
        regime = Regime.from_spec({"preset": name, **params})
        assert Regime.from_spec(regime.to_dict()) == regime and Regime.from_spec(regime) is regime
        if not params:
            assert Regime.from_spec(name) == regime == Regime.preset(name)


@pytest.mark.parametrize("spec, message", [
    # formerly: the toy CLI replaced the field, and `tilted` with beta_inv 0 silently became `tempered`
    ({"preset": "tilted", "alpha": 2, "beta_inv": 0}, "preset 'tilted' needs beta_inv > 0, got beta_inv=0"),
    # formerly: Regime.preset passed the parameter on and Regime.task_reward() raised a TypeError
    ({"preset": "task_reward", "alpha": 2}, "preset 'task_reward' does not take alpha; it takes no parameters"),
    ({"preset": "tempered", "alpha": 2, "beta_inv": 1},
     "does not take beta_inv; it takes alpha (required), normalization (default 'sum'), weight (default 1.0)"),
    # formerly: a bare `regime: tempered` raised a TypeError from Regime.tempered()
    ("tempered", "preset 'tempered' needs alpha; it takes alpha (required)"),
    ({"preset": "tilted", "alpha": 2}, "preset 'tilted' needs beta_inv"),
    ({"preset": "random_reward", "alpha": 1}, "does not take alpha; it takes p (default 0.5)"),
    ({"alpha": 2}, "no `preset` and no `mode`"),
    ({"mode": "sampling", "gamma": 1}, "unknown key(s) ['gamma']"),
    (["tempered"], "must be a preset name"),
    ("greedy", "unknown regime preset 'greedy'; choose one of ['task_reward', 'sharpening', 'tempered', 'tilted', "
               "'self_likelihood', 'neg_entropy', 'self_certainty', 'majority_vote', 'random_reward']"),
])
def test_from_spec_is_strict_and_names_what_the_preset_takes(spec, message):
    with pytest.raises(ValueError) as err:
        Regime.from_spec(spec)
    assert message in str(err.value)


def test_presets_take_normalization_and_weight():
    assert Regime.from_spec({"preset": "tempered", "alpha": 2, "normalization": "weighted_mean", "weight": 0.5}) == \
        Regime("sampling", 2.0, 0.0, "weighted_mean", 0.5)
    assert Regime.tilted(2, 100, "mean") == Regime("sampling", 2.0, 100.0, "mean")
    assert Regime.sharpening("weighted_mean", 0.25) == Regime("optimization", 1.0, 0.0, "weighted_mean", 0.25)


@pytest.mark.parametrize("regime, name", [
    (Regime.task_reward(), "task_reward"),
    (Regime("none"), "task_reward"),  # R = r: the same regime, the same name
    (Regime("optimization", 0.0, 3.0), "task_reward"),
    (Regime.sharpening(), "sharpening"),
    (Regime.sharpening("mean"), "sharpening N=mean"),
    (Regime.sharpening("weighted_mean", 0.5), "sharpening N=weighted_mean w=0.5"),
    (Regime("optimization", 2.0, 0.0), "sharpening a=2"),
    (Regime.tempered(2), "tempered a=2"),
    (Regime.tilted(0.5, 1e4), "tilted a=0.5 b=10000"),
    (Regime("optimization", 0.5, 1.0), "mixed a=0.5 b=1"),
    (Regime.preset("self_likelihood"), "self_likelihood"),
    (Regime.preset("self_likelihood", normalization="mean"), "self_likelihood N=mean"),
    (Regime.preset("neg_entropy"), "neg_entropy"),
    (Regime.preset("self_certainty", normalization="sum"), "self_certainty N=sum"),
    (Regime.preset("majority_vote"), "majority_vote"),
    (Regime.preset("random_reward", p=0.3), "random_reward p=0.3"),
    (Regime("sampling", 2.0, 100.0, reward="majority_vote"), "tilted a=2 b=100 r=majority_vote"),
    (Regime("optimization", 0.1, 1.0, "mean", likelihood="self_certainty"), "mixed a=0.1 b=1 N=mean L=self_certainty"),
])
def test_one_short_name_per_regime(regime, name):
    assert regime.name == name


@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="optimization", alpha=1.0, beta_inv=0.0, reward="majority_vote"), "needs r in R"),
    (dict(mode="sampling", alpha=2.0, likelihood="self"), "needs mode 'optimization' with alpha > 0"),
    (dict(mode="optimization", alpha=0.0, beta_inv=1.0, likelihood="neg_entropy"), "needs mode 'optimization'"),
    (dict(mode="optimization", alpha=0.0, beta_inv=1.0, p=0.2), "only used by reward='random'"),
    (dict(mode="optimization", alpha=0.0, beta_inv=1.0, reward="random", p=1.5), "must be in [0, 1]"),
    (dict(mode="optimization", alpha=0.0, beta_inv=1.0, reward="vote"), "Regime.reward='vote' is not one of"),
    (dict(mode="optimization", alpha=1.0, likelihood="entropy"), "Regime.likelihood='entropy' is not one of"),
])
def test_a_field_that_would_be_ignored_is_an_error(kwargs, message):
    with pytest.raises(ValueError) as err:
        Regime(**kwargs)
    assert message in str(err.value)


def test_presets_are_the_designs_tuples():
    fields = lambda g: (g.mode, g.alpha, g.beta_inv, g.normalization)  # noqa: E731
    assert fields(Regime.task_reward()) == ("optimization", 0.0, 1.0, "sum")
    assert fields(Regime.sharpening()) == ("optimization", 1.0, 0.0, "sum")
    for a in (0.5, 1, 1.25, 2, 4):
        assert fields(Regime.tempered(a)) == ("sampling", a, 0.0, "sum")
        for b in (100, 1e4):
            assert fields(Regime.tilted(a, b)) == ("sampling", a, b, "sum")
    assert Regime.preset("tilted", alpha=2, beta_inv=100) == Regime("sampling", 2.0, 100.0)
    assert Regime.task_reward().name == "task_reward" and Regime.sharpening().name == "sharpening"


def test_numbers_are_stored_as_floats():
    g = Regime("sampling", alpha=np.int64(2), beta_inv=3)
    assert type(g.alpha) is float and type(g.beta_inv) is float and g.alpha == 2.0


def test_what_each_regime_needs():
    assert not Regime.task_reward().needs_lp_ref and not Regime.task_reward().needs_lp_old
    assert Regime.sharpening().needs_lp_ref and not Regime.sharpening().needs_lp_old
    assert Regime.tempered(2).needs_lp_ref and Regime.tempered(2).needs_lp_old
    needs = lambda g: (g.needs_lp_ref, g.needs_lp_old, g.needs_certainty)  # noqa: E731
    assert needs(Regime.preset("self_likelihood")) == (False, True, False)
    assert needs(Regime.preset("neg_entropy")) == needs(Regime.preset("self_certainty")) == (False, False, True)
    assert needs(Regime.preset("majority_vote")) == needs(Regime.preset("random_reward")) == (False, False, False)
    # R = r needs neither, so None is accepted
    np.testing.assert_allclose(shaped_reward(Regime("none"), r), r)


def test_masked_pads_may_be_minus_inf():
    tok = np.array([[-1.0, -np.inf], [-1.0, -2.0]])  # a pad holding log 0
    R = shaped_reward(Regime.sharpening(), np.zeros(2), tok, tok, mask=np.array([[1, 0], [1, 1]]))
    np.testing.assert_allclose(R, [-1.0, -3.0])
