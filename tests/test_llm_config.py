"""Training configs: YAML + key=value overrides, errors that list what is allowed, every shipped config resolves."""

import json
from pathlib import Path

import pytest

from sharpening.llm.checkpoint import truncate_metrics
from sharpening.llm.config import TrainConfig, load_config, parse_regime
from sharpening.llm.trainer import eval_ks, warmup_factor
from sharpening.objective import SIGNAL_PRESETS, Regime

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_and_overrides():
    cfg = load_config(None, ["lr=3e-6", "regime={mode: optimization, alpha: 0, beta_inv: 1}", "regime.alpha=2",
                             "regime.mode=sampling", "eval_datasets=[math500]", "is_cap=20", "limit=null",
                             "ignore_eos=true"])
    assert cfg.lr == 3e-6 and cfg.is_cap == 20.0 and cfg.limit is None and cfg.ignore_eos is True
    assert cfg.eval_datasets == ["math500"]
    # the full form (optimization, 0, 1) with alpha and mode changed: sampling, alpha 2, beta_inv 1
    assert cfg.regime == Regime("sampling", alpha=2.0, beta_inv=1.0)


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-6\nsteps: 7\nregime: {preset: tempered, alpha: 2}\n")
    cfg = load_config(path, ["steps=9", "regime.alpha=4"])
    assert (cfg.lr, cfg.steps) == (1e-6, 9)  # YAML reads 1e-6 as a string: it must still be a float
    assert cfg.regime == Regime("sampling", alpha=4.0, beta_inv=0.0)


@pytest.mark.parametrize("spec, expected", [
    ("sharpening", Regime("optimization", alpha=1.0, beta_inv=0.0)),
    ("task_reward", Regime("optimization", alpha=0.0, beta_inv=1.0)),
    ({"preset": "tilted", "alpha": 2, "beta_inv": 100}, Regime("sampling", 2.0, 100.0)),
    ({"mode": "optimization", "alpha": 1, "normalization": "mean"}, Regime("optimization", 1.0, 0.0, "mean")),
])
def test_regime_forms(spec, expected):
    assert parse_regime(spec) == expected


@pytest.mark.parametrize("overrides, message", [
    (["lrr=1"], "valid keys: ["),
    (["lr=fast"], "lr='fast' must be a number"),
    (["steps=1.5"], "steps=1.5 must be of type int"),
    (["engine=tpu"], "engine='tpu' is not one of ('hf', 'vllm')"),
    (["dtype=int8"], "is not one of ('float32', 'bfloat16', 'float16')"),
    (["group_size=1"], "group_size=1 must be >= 2"),
    (["top_p=0"], "top_p=0.0 must be in (0, 1]"),
    (["regime.gamma=1"], "unknown regime parameter 'gamma'; valid: ['preset', 'mode', 'alpha'"),
    (["regime=greedy"], "unknown regime preset 'greedy'; choose one of"),
    (["regime.preset=tempered", "regime.alpha=-1"], "Regime.alpha=-1 must be a finite real number >= 0"),
    (["template=no placeholder"], "must be one of ['direct_sums', 'paper', 'paper_tex', 'partial_sums', 'plain', 'worked_sum'] or a string"),
    (["eval_datasets=[synthetic:add]", "eval_seed=42"], "eval_seed=42 equals seed"),
    (["lr"], "must look like key=value"),
])
def test_bad_values_name_the_fix(overrides, message):
    with pytest.raises(ValueError) as err:
        load_config(None, overrides)
    assert message in str(err.value)


def test_bare_presets_and_their_parameters(tmp_path):
    """Issue 13: a bare preset that needs a parameter, set from the command line, works (it used to crash with a
    TypeError), and one that is missing it says so in one line."""
    assert load_config(None, ["regime=tempered", "regime.alpha=2"]).regime == Regime.tempered(2.0)
    path = tmp_path / "c.yaml"
    path.write_text("regime: tempered\n")
    with pytest.raises(ValueError, match="preset 'tempered' needs alpha; it takes alpha"):
        load_config(path)
    assert load_config(path, ["regime.alpha=0.5"]).regime == Regime.tempered(0.5)


@pytest.mark.parametrize("overrides, message", [
    # the spec used to be expanded into its fields, so these silently became other regimes
    (["regime={preset: tilted, alpha: 2, beta_inv: 100}", "regime.beta_inv=0"], "preset 'tilted' needs beta_inv > 0"),
    (["regime.alpha=2"], "preset 'task_reward' does not take alpha; it takes no parameters"),
    (["regime=sharpening", "regime.mode=sampling"], "preset 'sharpening' does not take mode"),
    (["regime={preset: majority_vote, p: 0.3}"], "preset 'majority_vote' does not take p"),
])
def test_a_parameter_the_preset_does_not_take_is_an_error(overrides, message):
    with pytest.raises(ValueError) as err:
        load_config(None, overrides)
    assert message in str(err.value)


@pytest.mark.parametrize("spec, expected", [
    ("self_likelihood", Regime("optimization", 1.0, 0.0, likelihood="self")),
    ("{preset: self_likelihood, normalization: mean}", Regime("optimization", 1.0, 0.0, "mean", likelihood="self")),
    ("neg_entropy", Regime("optimization", 1.0, 0.0, "mean", likelihood="neg_entropy")),
    ("self_certainty", Regime("optimization", 1.0, 0.0, "mean", likelihood="self_certainty")),
    ("majority_vote", Regime("optimization", 0.0, 1.0, reward="majority_vote")),
    ("{preset: random_reward, p: 0.2}", Regime("optimization", 0.0, 1.0, reward="random", p=0.2)),
])
def test_every_paper_config_accepts_the_label_free_signals(spec, expected):
    for path in sorted((CONFIGS / "paper").glob("*/task_reward.yaml")):
        assert load_config(path, [f"regime={spec}"]).regime == expected


def test_unknown_key_in_yaml_lists_valid_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 1e-6\n")
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['learning_rate'\]; valid keys: .*'lr'"):
        load_config(path)


def test_every_shipped_config_resolves():
    paths = sorted((CONFIGS / "cpu").glob("*.yaml")) + sorted((CONFIGS / "paper").glob("*/*.yaml"))
    # cpu: 4 regimes + demo pair + 5 label-free signals; paper: 2 x 17 runs (2 + 5 tempered + 10 tilted) with EOS
    # and fixed length for the 3B models, 12 for Qwen3-4B (2 + 5 tempered + 5 tilted with beta_inv 1e4)
    assert len(paths) == 11 + 2 * 2 * 17 + 12
    cfgs = {p.relative_to(CONFIGS).as_posix(): load_config(p) for p in paths}
    for signal in SIGNAL_PRESETS:  # the demo's task with the regime changed, nothing else
        demo = {**cfgs["cpu/demo_task_reward.yaml"].to_dict(), "run_name": signal, "regime": Regime.preset(signal)}
        assert cfgs[f"cpu/{signal}.yaml"] == TrainConfig(**demo)
    qwen3 = cfgs["paper/qwen3-4b/tilted_a4_b10000.yaml"]
    assert (qwen3.prompts_per_step, qwen3.group_size, qwen3.steps, qwen3.max_new_tokens) == (64, 8, 1000, 4096)
    assert qwen3.regime == Regime("sampling", 4.0, 1e4)
    llama = cfgs["paper/llama3.2-3b/sharpening.yaml"]
    assert (llama.model, llama.dataset, llama.prompts_per_step, llama.steps, llama.max_new_tokens) == (
        "meta-llama/Llama-3.2-3B-Instruct", "math_train", 32, 500, 2048)
    assert (llama.lr, llama.weight_decay, llama.warmup_start, llama.warmup_steps, llama.max_grad_norm,
            llama.temperature, llama.eval_every, llama.seed) == (1e-6, 0.01, 0.1, 50, 1.0, 1.0, 20, 42)
    assert cfgs["cpu/demo_sharpening.yaml"].regime == Regime.sharpening()
    assert cfgs["cpu/demo_sharpening.yaml"].prefill == "\\boxed{"


def test_warmup_is_linear_from_start_to_one():
    # the paper: factor 0.1 -> 1 over 50 steps
    assert [warmup_factor(s, 0.1, 50) for s in (0, 25, 50, 80)] == pytest.approx([0.1, 0.55, 1.0, 1.0])
    assert warmup_factor(0, 0.1, 0) == 1.0


def test_eval_ks_are_powers_of_two_up_to_n():
    assert eval_ks(16) == (1, 2, 4, 8, 16) and eval_ks(6) == (1, 2, 4, 6) and eval_ks(1) == (1,)


def test_truncate_metrics_keeps_steps_up_to_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "x": s * 1.5}) + "\n" for s in (1, 2, 3, 4)))
    assert truncate_metrics(path, 2) == 2
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]


def test_clipping_off_is_inf_and_zero_is_refused():
    # max_grad_norm=0 would scale every gradient to 0: weights never move while the norms look normal
    assert load_config(None, ["max_grad_norm=.inf"]).max_grad_norm == float("inf")
    for bad in ("0", "-1", ".nan"):
        with pytest.raises(ValueError, match="max_grad_norm"):
            load_config(None, [f"max_grad_norm={bad}"])


def test_clipping_at_inf_leaves_the_gradient_unchanged():
    import torch

    from sharpening.llm.distributed import Ranks

    model = torch.nn.Linear(3, 2)
    model(torch.ones(1, 3)).sum().mul(1e3).backward()
    before = [p.grad.clone() for p in model.parameters()]
    norm = Ranks().clip_grad_norm(model, float("inf"))
    assert norm == pytest.approx(float(torch.sqrt(sum((g**2).sum() for g in before))))
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), before))


def test_the_second_tasks_base_config_differs_from_grid_v2s_in_the_task_only():
    grid, task2 = (load_config(CONFIGS / "cpu" / p) for p in ("evidence/base.yaml", "evidence/task_b.yaml"))
    changed = {k for k, v in task2.to_dict().items() if grid.to_dict()[k] != v}
    assert changed == {"out_dir", "dataset", "template", "prefill", "eval_datasets"}
    assert (task2.dataset, task2.template, task2.prefill) == ("synthetic:add3", "partial_sums", "")
    assert (task2.eval_datasets, task2.eval_limit, task2.eval_n) == (["synthetic:add3"], 128, 8)
