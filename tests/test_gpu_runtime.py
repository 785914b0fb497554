"""The GPU path's runtime wiring against the real libraries on CPU: accelerate's wrappers and launch environment, the
FSDP2 precision policy, vLLM's sleep schedule around an evaluation, the eval CLI's bounded vLLM context, and the paper
configs against the authors' settings (issue #11). No model weights: tiny models and stand-in vLLM backends."""

from pathlib import Path

import pytest
import torch
import yaml

from test_gpu_plan import CharTokenizer, RecordingBackend, tiny_llama

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps its state in process-wide singletons: reset them around a test that builds an Accelerator."""
    from accelerate.state import AcceleratorState, GradientState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


# ------------------------------------------------------------------------------- defect 1: the step hook

def test_weight_sync_counts_the_steps_of_an_accelerated_optimizer(fresh_accelerate_state):
    """accelerate.prepare wraps the optimizer in an AcceleratedOptimizer, which never runs Optimizer.__init__: a
    step hook registered on it raised AttributeError. The engine must count the inner optimizer's steps."""
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer

    from sharpening.llm.vllm_engine import VLLMEngine

    model = tiny_llama()
    model, optimizer = Accelerator(cpu=True).prepare(model, torch.optim.AdamW(model.parameters(), lr=1e-2))
    assert isinstance(optimizer, AcceleratedOptimizer)
    engine = VLLMEngine("unused", CharTokenizer(), backend=RecordingBackend())
    engine.track(optimizer)
    for step in (1, 2):
        model(input_ids=torch.tensor([[1, 2, 3]])).logits.sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        assert engine.sync.policy_version == step
        with pytest.raises(RuntimeError, match=f"weights of optimizer step {step - 1}"):
            engine.generate(["ab"], n=2, max_new_tokens=2)
        engine.sync_weights(model)
        engine.generate(["ab"], n=2, max_new_tokens=2)  # fresh again


# --------------------------------------------------------------------- the launch environment, FSDP2

def test_one_process_accelerate_launch_uses_the_accelerator(monkeypatch, fresh_accelerate_state):
    """`accelerate launch` on one GPU sets WORLD_SIZE=1: the launch (and its FSDP2 config) must still be honoured."""
    from sharpening.llm.distributed import Ranks

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert Ranks.from_env().accelerator is None  # plain python: no accelerate
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # set by every accelerate launcher
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    ranks = Ranks.from_env()
    assert ranks.accelerator is not None and (ranks.rank, ranks.world_size) == (0, 1)


def test_fsdp2_reduces_gradients_in_float32(monkeypatch):
    """The plugin Ranks hands to accelerate: bf16 compute, float32 gradient reduction, after accelerate applies the
    launch's mixed precision to it (AcceleratorState calls set_mixed_precision with override=False)."""
    from sharpening.llm.distributed import fsdp2_plugin_from_env

    launch = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "ACCELERATE_MIXED_PRECISION": "bf16"}
    for key, value in launch.items():
        monkeypatch.setenv(key, value)
    plugin = fsdp2_plugin_from_env()
    plugin.set_mixed_precision("bf16")
    policy = plugin.mixed_precision_policy
    assert (policy.param_dtype, policy.reduce_dtype, policy.output_dtype) == (torch.bfloat16, torch.float32,
                                                                              torch.bfloat16)
    monkeypatch.setenv("FSDP_VERSION", "1")
    assert fsdp2_plugin_from_env() is None  # anything else: accelerate's own defaults


@pytest.mark.parametrize("gpus", [4, 8])
def test_launch_configs_load_full_weights_on_every_rank(gpus, monkeypatch):
    """fsdp_cpu_ram_efficient_loading would give ranks > 0 empty (meta) weights: the reference model needs them."""
    from sharpening.llm.distributed import check_cpu_ram_efficient_loading

    config = yaml.safe_load((ROOT / f"configs/accelerate/fsdp_{gpus}gpu.yaml").read_text())
    assert config["fsdp_config"]["fsdp_cpu_ram_efficient_loading"] is False
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")
    with pytest.raises(ValueError, match="fsdp_cpu_ram_efficient_loading: false"):
        check_cpu_ram_efficient_loading()


def test_activation_checkpointing_is_on_where_the_plan_assumes_it():
    from sharpening.llm.trainer import wants_activation_checkpointing

    assert wants_activation_checkpointing(None, torch.device("cuda"))  # the plan's memory estimate assumes it
    assert not wants_activation_checkpointing(None, torch.device("cpu"))
    assert wants_activation_checkpointing(True, torch.device("cpu"))
    assert not wants_activation_checkpointing(False, torch.device("cuda"))


# ------------------------------------------------------------------------- defect 4: vLLM in evaluation

class ChatCharTokenizer(CharTokenizer):
    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "".join(m["content"] for m in messages)


def test_evaluation_keeps_the_engine_awake_between_calls():
    """Every call of an evaluation runs with the engine awake: no sleep (weights to CPU RAM) and wake per call."""
    from sharpening.llm.data import Problem
    from sharpening.llm.evaluation import evaluate
    from sharpening.llm.vllm_engine import VLLMEngine

    backend = RecordingBackend()
    # level 1 (weights kept): a level-2 sleep would need a weight sync before the second evaluation (tested in
    # test_gpu_plan.py and, with the trainer, test_gpu_path.py)
    engine = VLLMEngine("unused", ChatCharTokenizer(), sleep_level=1, backend=backend)
    problems = [Problem(str(i), "abc", "1") for i in range(3)]
    evaluate(engine, problems, n=2, ks=(1,), max_new_tokens=3, template="{problem}", prompts_per_call=1)
    assert backend.calls == ["generate"] * 3  # started awake, stayed awake
    engine.sleep()
    evaluate(engine, problems, n=2, ks=(1,), max_new_tokens=3, template="{problem}", prompts_per_call=1)
    assert backend.calls[3:] == ["sleep", "wake:weights", "wake:kv_cache"] + ["generate"] * 3


class RecordingLLM:
    """Stands in for vLLM's LLM in `_VLLMBackend`: records how it was built."""

    built = {}

    def __init__(self, **kwargs):
        RecordingLLM.built = kwargs


def test_eval_cli_bounds_the_vllm_context(monkeypatch):
    """`sharpening llm eval --engine vllm` passed no max_model_len: vLLM then plans for the model's whole context
    (262,144 tokens for Qwen3-4B-Instruct-2507) and refuses to start."""
    import types

    from sharpening.llm import evaluation, models, vllm_engine

    monkeypatch.setattr(models, "load_tokenizer", lambda name: ChatCharTokenizer())
    monkeypatch.setattr(vllm_engine, "import_vllm", lambda: types.SimpleNamespace(LLM=RecordingLLM))
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "29511"}.items():  # what the backend would set for itself: undone afterwards
        monkeypatch.setenv(key, value)
    evaluation._build_engine("vllm", "some/model", seed=3, max_new_tokens=1024)
    built = RecordingLLM.built
    assert built["model"] == "some/model" and built["max_model_len"] == 2048 + 1024
    assert 0 < built["gpu_memory_utilization"] <= 0.9 and built["enable_sleep_mode"] is False  # eval never sleeps
    evaluation._build_engine("vllm", "some/model", seed=3, max_new_tokens=2048, max_total_tokens=2048)
    assert RecordingLLM.built["max_model_len"] == 2048  # the authors' prompt + response budget


# ------------------------------------------------------------------ defect 5: the authors' settings

# examples/prompts/cot.txt of github.com/sarthmit/dist_sharpening @ 1bf5837, byte for byte (two backslashes)
AUTHORS_COT_TXT = ("Think step-by-step to solve the following problem. Output your answer inside of \\\\boxed{{}} "
                   "tags.:\n{}\n\nLet's think step-by-step")
# their settings, copied from examples/configs/dist_sharpening/*.yaml and run_all.sh (not from our generator)
AUTHORS = {
    "qwen2.5-3b": {"model": "Qwen/Qwen2.5-3B-Instruct", "prompts": 32, "total": 2048, "micro": 4, "steps": 500,
                   "validation": ["DigitalLearningGmbH/MATH-lighteval"], "val_limit": 5000, "fixed": True,
                   "beta_invs": {0.0, 100.0, 10000.0}, "eval_n": 1},
    "llama3.2-3b": {"model": "meta-llama/Llama-3.2-3B-Instruct", "prompts": 32, "total": 2048, "micro": 4,
                    "steps": 500, "validation": ["DigitalLearningGmbH/MATH-lighteval"], "val_limit": 5000,
                    "fixed": True, "beta_invs": {0.0, 100.0, 10000.0}, "eval_n": 1},
    "qwen3-4b": {"model": "Qwen/Qwen3-4B-Instruct-2507", "prompts": 64, "total": 4096, "micro": 2, "steps": 1000,
                 "validation": ["aime24"], "val_limit": None, "fixed": False, "beta_invs": {0.0, 10000.0},
                 # NeMo-RL's AIME2024Dataset(repeat=16): each of the 30 problems 16 times per validation
                 "eval_n": 16},
}
PAPER = ROOT / "configs" / "paper"


def test_the_paper_template_is_the_authors_prompt_as_their_model_sees_it():
    from sharpening.llm.data import TEMPLATES

    problem = "What is $\\frac{1}{2} + x$?"
    assert TEMPLATES["paper"].replace("{problem}", problem) == AUTHORS_COT_TXT.format(problem)
    assert "\\\\boxed{}" in TEMPLATES["paper"] and "\\\\boxed" not in TEMPLATES["paper_tex"]  # ours: one backslash


@pytest.mark.parametrize("model", sorted(AUTHORS))
def test_paper_configs_follow_the_authors(model):
    from sharpening.llm.config import load_config

    want = AUTHORS[model]
    files = sorted((PAPER / model).glob("*.yaml"))
    fixed = [f for f in files if f.stem.endswith("_fixed")]
    assert len(fixed) == (len(files) // 2 if want["fixed"] else 0)  # every 3B run also in its fixed-length variant
    sampling_beta_invs = set()
    for f in files:
        cfg = load_config(f)
        assert (cfg.model, cfg.prompts_per_step, cfg.group_size, cfg.steps) == (want["model"], want["prompts"], 8,
                                                                                want["steps"])
        assert cfg.max_total_tokens == cfg.max_new_tokens == want["total"]  # prompt + response <= total
        assert cfg.ignore_eos == f.stem.endswith("_fixed") and cfg.micro_batch_size == want["micro"]
        assert (cfg.lr, cfg.weight_decay, cfg.warmup_start, cfg.warmup_steps, cfg.max_grad_norm) == (1e-6, 0.01, 0.1,
                                                                                                      50, 1.0)
        assert (cfg.is_cap, cfg.lp_old_source, cfg.template, cfg.temperature, cfg.top_p) == (20.0, "trainer", "paper",
                                                                                           1.0, 1.0)
        assert (cfg.eval_at_start, cfg.eval_every, cfg.eval_n, cfg.keep_best, cfg.save_every) == (
            True, 20, want["eval_n"], True, 20)
        assert (cfg.eval_datasets, cfg.eval_split, cfg.eval_limit) == (want["validation"], "test", want["val_limit"])
        if cfg.regime.mode == "sampling":
            sampling_beta_invs.add(cfg.regime.beta_inv)
        addition = "ADDITION" in f.read_text().split("\nrun_name")[0]
        assert addition == (model == "qwen3-4b" and f.stem == "task_reward")  # their Qwen3-4B one is commented out
    assert sampling_beta_invs == want["beta_invs"]


def test_paper_configs_are_what_the_generator_writes():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_paper_configs", ROOT / "configs" / "make_paper_configs.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    runs = generator.runs()
    assert {(p.parent.name, p.stem) for p in PAPER.glob("*/*.yaml")} == set(runs)
    for (model, name), (cfg, _) in runs.items():
        assert yaml.safe_load((PAPER / model / f"{name}.yaml").read_text()) == cfg
