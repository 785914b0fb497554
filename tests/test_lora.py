"""LoRA training (sharpening/llm/lora.py) with the real peft on the real SmolLM2-135M-Instruct: pi_ref is the base
model with the adapter off (no copy), checkpoints hold the adapter alone and resume bit-identically, and a LoRA
checkpoint evaluates through the CLI. The config's `lora:` section is checked at the boundary."""

import json

import pytest
import torch

from sharpening.llm.config import LoraSettings, load_config, save_config

TINY = ["prompts_per_step=1", "group_size=3", "max_new_tokens=8", "prefill=\\boxed{", "warmup_steps=0",
        "warmup_start=1.0", "micro_batch_size=8", "save_every=1", "regime=sharpening", "lr=2e-3", "lora.r=4"]


# ---------------------------------------------------------------------------------------------------------
# The config's lora section (no model)
# ---------------------------------------------------------------------------------------------------------


def test_lora_is_off_by_default_and_an_override_turns_it_on_with_defaults():
    assert load_config(None, []).lora is None
    cfg = load_config(None, ["lora.r=8"])
    assert cfg.lora == LoraSettings(r=8, alpha=32, dropout=0.0, target_modules=["all-linear"])
    assert load_config(None, ["lora={}"]).lora == LoraSettings()
    assert load_config(None, ["lora={r: 4, target_modules: [q_proj, v_proj]}", "lora.dropout=0"]).lora == \
        LoraSettings(r=4, target_modules=["q_proj", "v_proj"])


def test_a_saved_lora_config_reads_back(tmp_path):
    cfg = load_config(None, ["lora={r: 8, alpha: 16, dropout: 0.05, target_modules: q_proj}"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again.lora == LoraSettings(r=8, alpha=16, dropout=0.05, target_modules=["q_proj"]) == cfg.lora


@pytest.mark.parametrize("override, message", [
    ("lora.r=0", "lora.r=0 must be an integer >= 1"),
    ("lora.r=2.5", "lora.r=2.5 must be of type int"),
    ("lora.alpha=0", "lora.alpha=0 must be an integer >= 1"),
    ("lora.dropout=1", "lora.dropout=1.0 must be a number in [0, 1)"),
    ("lora.dropout=-0.1", "lora.dropout=-0.1 must be a number in [0, 1)"),
    ("lora.target_modules=[]", "lora.target_modules=[] must be a non-empty list of module names"),
    ("lora.target_modules=[all-linear, q_proj]", "all-linear already names every linear layer"),
    ("lora.rank=8", "unknown lora key(s) ['rank']; valid keys: ['r', 'alpha', 'dropout', 'target_modules']"),
    ("lora=8", "lora=8 must be a mapping such as {r: 16, alpha: 32} or null (LoRA off)"),
    ("lora.dropout=high", "lora.dropout='high' must be a number"),
])
def test_bad_lora_settings_fail_in_one_line_naming_the_value(override, message):
    with pytest.raises(ValueError) as err:
        load_config(None, [override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_vllm_cannot_serve_a_rank_above_its_largest_max_lora_rank():
    from sharpening.llm.vllm_engine import vllm_lora_rank

    with pytest.raises(ValueError, match="lora.r=1024 exceeds vLLM's largest max_lora_rank 512"):
        load_config(None, ["engine=vllm", "lora.r=1024"])
    assert load_config(None, ["engine=hf", "lora.r=1024"]).lora.r == 1024  # the hf engine has no such limit
    # vLLM takes max_lora_rank in {1, 8, 16, 32, 64, 128, 256, 320, 512} (vllm/config/lora.py): the smallest that fits
    assert [vllm_lora_rank(r) for r in (1, 2, 8, 9, 16, 300, 512)] == [1, 8, 8, 16, 16, 320, 512]


# ---------------------------------------------------------------------------------------------------------
# The trainer with a LoRA adapter (real peft, real SmolLM2)
# ---------------------------------------------------------------------------------------------------------

def make_trainer(out, *overrides):
    from sharpening.llm.trainer import Trainer

    return Trainer(load_config(None, [f"out_dir={out}", *TINY, *overrides]))


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def base_model():
    """The base model, loaded on its own from disk: what pi_ref must be."""
    from sharpening.llm.models import load_model

    return load_model("smollm2").eval().requires_grad_(False)


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    """An uninterrupted 2-step LoRA sharpening run (lp_ref read every step), checkpointed after each step."""
    out = tmp_path_factory.mktemp("lora")
    tr = make_trainer(out, "steps=2", "run_name=a")
    before = tr.engine.generate([tr.prompts[0]], n=3, max_new_tokens=8, seed=11)  # a rollout of the initial policy
    lp_ref_before = tr.ref_logprobs(before)
    lp_on_before = tr.forward_logprobs(tr.policy, before)
    tr.train()
    return tr, out, before, lp_ref_before, lp_on_before


@pytest.mark.slow
@pytest.mark.llm
def test_lp_ref_is_the_base_model_exactly_before_and_after_training(run_a, base_model):
    """lp_ref (the policy with its adapter off) equals the separately loaded base model's log-probs bit for bit, at
    the start and after 2 steps that moved the adapter; with the adapter on the policy has left the base."""
    tr, _out, before, lp_ref_before, lp_on_before = run_a
    assert tr.ref is None  # no second copy of the model
    base_before = tr.forward_logprobs(base_model, before)
    assert torch.equal(lp_ref_before, base_before)
    assert torch.equal(lp_on_before, base_before)  # B = 0 at the start: the adapter changes nothing yet
    after = tr.last["roll"]  # step 2's rollout, sampled by the trained policy
    lp_ref_after, base_after = tr.ref_logprobs(after), tr.forward_logprobs(base_model, after)
    assert torch.equal(lp_ref_after, base_after) and torch.equal(tr.ref_logprobs(before), base_before)
    assert (tr.forward_logprobs(tr.policy, after) - base_after).abs().max() > 1e-2  # the adapter trained
    # the logged step-2 R (sharpening: R = lp_ref) is the base's sequence log-likelihood of step 2's responses
    torch.testing.assert_close(tr.last["R"], (base_after * after.mask).sum(-1), rtol=0, atol=1e-5)
    # and the base weights never moved: only the adapter's A and B are trained
    base = dict(base_model.state_dict())
    for name, p in tr.policy.named_parameters():
        if "lora_" not in name:
            key = name.removeprefix("base_model.model.").replace(".base_layer", "")
            assert not p.requires_grad and torch.equal(p, base[key]), name


@pytest.mark.slow
@pytest.mark.llm
def test_checkpoints_hold_the_adapter_only(run_a):
    from safetensors.torch import load_file

    tr, out, *_ = run_a
    folder = out / "a" / "checkpoints" / "step_000002"
    files = {p.name for p in folder.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "trainer_state.pt", "checksums.sha256"} <= files
    assert "model.safetensors" not in files and "config.json" not in files
    weights = load_file(folder / "adapter_model.safetensors")
    trained = {n: p for n, p in tr.policy.named_parameters() if p.requires_grad}
    assert len(weights) == len(trained) == 30 * 7 * 2  # 30 layers x 7 linear layers (all-linear) x (A, B)
    for name, tensor in weights.items():  # peft's names drop the adapter's name "default"
        key = name.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight")
        assert torch.equal(tensor, trained[key].detach()), name
    n_adapter = sum(t.numel() for t in weights.values())
    assert n_adapter == 30 * 4 * ((576 + 576) + 2 * (576 + 192) + (576 + 576) + 3 * (576 + 1536))  # r (in + out)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "smollm2" and config["r"] == 4 and config["lora_alpha"] == 32
    state = torch.load(folder / "trainer_state.pt", weights_only=False)
    assert len(state["optimizer"]["state"]) == len(trained)  # AdamW holds the adapter's moments alone


@pytest.mark.slow
@pytest.mark.llm
def test_resume_is_bit_identical_to_an_uninterrupted_run(run_a):
    """Run B: 1 step, then a new process-like trainer resumes from B's step-1 adapter checkpoint and runs step 2:
    metrics (all but timings) and the adapter equal run A's exactly."""
    a, out, *_ = run_a
    make_trainer(out, "steps=1", "run_name=b").train()
    b = make_trainer(out, "steps=2", "run_name=b", "resume=true")
    assert b.step == 1
    b.train()
    untimed = lambda m: {k: v for k, v in m.items() if not k.startswith(("time/", "throughput/"))}  # noqa: E731
    assert [untimed(m) for m in read_metrics(out / "b")] == [untimed(m) for m in read_metrics(out / "a")]
    for (name, p), (_, q) in zip(a.policy.named_parameters(), b.policy.named_parameters()):
        assert torch.equal(p, q), name


@pytest.mark.slow
@pytest.mark.llm
def test_a_damaged_adapter_falls_back_to_the_previous_checkpoint(run_a, tmp_path):
    import shutil

    _, out, *_ = run_a
    shutil.copytree(out / "a", tmp_path / "a")
    weights = tmp_path / "a" / "checkpoints" / "step_000002" / "adapter_model.safetensors"
    with open(weights, "r+b") as f:
        f.seek(weights.stat().st_size // 2)
        f.write(b"\xff" * 64)
    tr = make_trainer(tmp_path, "steps=2", "run_name=a", "resume=true")
    assert tr.step == 1  # step 2's adapter fails its checksum: resumed from step 1


@pytest.mark.slow
@pytest.mark.llm
def test_a_lora_run_evaluates_through_the_cli(run_a, tmp_path, capsys):
    """`sharpening llm eval --checkpoint <LoRA checkpoint>` loads the base named in adapter_config.json plus the
    adapter: the same samples (same seed) as sampling by hand from the trained policy."""
    from sharpening.cli import main
    from sharpening.llm.data import format_prompt, load_problems
    from sharpening.llm.grading import grade

    tr, out, *_ = run_a
    ckpt = out / "a" / "checkpoints" / "step_000002"
    assert main(["llm", "eval", "--checkpoint", str(ckpt), "--datasets", "synthetic:add", "--limit", "2", "--n", "2",
                 "--ks", "1", "--max-new-tokens", "8", "--prefill", "\\boxed{", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["run"] == "a" and result["step"] == 2 and result["regime"]["alpha"] == 1.0
    problems = load_problems("synthetic:add", limit=2)
    prompts = [format_prompt(tr.tokenizer, p.problem, "paper", "\\boxed{") for p in problems]
    roll = tr.engine.generate(prompts, n=2, max_new_tokens=8, temperature=1.0, top_p=1.0, seed=0)
    correct = [sum(grade("\\boxed{" + roll.texts[2 * i + j], p.answer) for j in range(2)) for i, p in enumerate(problems)]
    assert [q["correct"] for q in result["datasets"]["synthetic:add"]["problems"]] == correct


# ---------------------------------------------------------------------------------------------------------
# vLLM serves the adapter (a stand-in backend: vLLM runs on CUDA only), the memory plan, the one-GPU configs
# ---------------------------------------------------------------------------------------------------------


def test_the_vllm_engine_serves_the_current_adapter_after_every_step(tmp_path):
    """sync_weights writes the adapter as a peft folder (which peft's own loader turns back into the same policy)
    and the next generate serves that folder; a new folder per optimizer step, the base never resent."""
    from peft import PeftModel
    from test_gpu_plan import CharTokenizer, RecordingBackend, tiny_llama

    from sharpening.llm.lora import apply_lora
    from sharpening.llm.vllm_engine import VLLMEngine

    class Backend(RecordingBackend):
        def generate(self, prompt_ids, n, max_new_tokens, temperature, top_p, ignore_eos, seed, adapter=None):
            self.calls.append(("adapter", adapter))
            return super().generate(prompt_ids, n, max_new_tokens, temperature, top_p, ignore_eos, seed)

    policy = apply_lora(tiny_llama(), LoraSettings(r=2))
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    backend = Backend()
    with pytest.raises(ValueError, match="sleep_level=2 discards the base weights"):  # the base must survive a sleep
        VLLMEngine("unused", CharTokenizer(), backend=backend, lora_rank=2, sleep_level=2)
    engine = VLLMEngine("unused", CharTokenizer(), backend=backend, lora_rank=2, sleep_level=1)  # as vllm_settings
    engine.track(opt)
    engine.generate(["ab"], n=2, max_new_tokens=3)  # step 1 samples the base: B = 0, no adapter to serve yet
    served = []
    for step in (1, 2):
        ids = torch.tensor([[1, 2, 3, 4]])
        (-policy(input_ids=ids).logits.log_softmax(-1)[..., 1].mean()).backward()
        opt.step()
        opt.zero_grad()
        info = engine.sync_weights(policy)
        engine.generate(["ab"], n=2, max_new_tokens=3)
        served.append(backend.calls[-2][1])
        assert info["version"] == step and "load" not in backend.calls  # the base weights are never resent
        reloaded = PeftModel.from_pretrained(tiny_llama(), served[-1]).eval()
        with torch.no_grad():
            assert torch.equal(reloaded(input_ids=ids).logits, policy.eval()(input_ids=ids).logits)
        policy.train()
    assert [c for c in backend.calls if c[0] == "adapter"] == [("adapter", None), ("adapter", served[0]),
                                                                ("adapter", served[1])]
    assert served[0] != served[1]


def test_the_memory_plan_of_lora_by_hand():
    """Qwen2.5-3B on one GPU: LoRA r 16 on all linear layers holds the bf16 base (2 P), the adapter's fp32 weights,
    gradients and AdamW moments (16 P_A), no reference copy; its backward skips the base's weight gradients."""
    from sharpening.llm.gpu_plan import GiB, model_spec, plan

    spec = model_spec("Qwen/Qwen2.5-3B-Instruct")
    # per layer: q (2048 -> 2048), k and v (2048 -> 256), o (2048 -> 2048), gate and up (2048 -> 11008), down
    P_A = 36 * 16 * ((2048 + 2048) + 2 * (2048 + 256) + (2048 + 2048) + 3 * (2048 + 11008))
    assert spec.lora_params(16) == P_A and spec.lora_params(16, ["q_proj"]) == 36 * 16 * 4096
    base = ["model=Qwen/Qwen2.5-3B-Instruct", "prompts_per_step=32", "max_new_tokens=2048", "engine=vllm",
            "dtype=bfloat16", "micro_batch_size=4", "regime=sharpening"]
    full, lora = plan(load_config(None, base), 1), plan(load_config(None, base + ["lora.r=16"]), 1)
    P = spec.params
    assert lora.memory["policy_states"] == round((2 * P + 16 * P_A) / GiB, 2)
    assert lora.memory["reference"] == 0 and full.memory["reference"] == round(2 * P / GiB, 2)
    assert lora.memory["vllm_weights"] == round((2 * P + 2 * P_A) / GiB, 2)
    assert lora.memory["activations"] == full.memory["activations"]  # the backward still runs through every layer
    assert lora.seconds["train"] / full.seconds["train"] == pytest.approx((4 + 2 + 2) / (6 + 2 + 2), abs=0.01)


def test_one_gpu_lora_configs_are_what_the_generator_writes_and_fit():
    import importlib.util
    from pathlib import Path

    import yaml

    from sharpening.llm.gpu_plan import plan

    root = Path(__file__).resolve().parents[1] / "configs"
    spec = importlib.util.spec_from_file_location("make_paper_configs", root / "make_paper_configs.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    runs = generator.lora_runs()
    on_disk = {(p.parents[1].name, f"lora/{p.stem}") for p in (root / "paper").glob("*/lora/*.yaml")}
    assert on_disk == set(runs) and len(runs) == 2 * (3 + 3 + 2)  # Qwen3-4B at 4096 tokens fits 48 and 80 GB only
    gpus = generator.lora_gpus()
    for (model, name), (cfg, header) in runs.items():
        path = root / "paper" / model / f"{name}.yaml"
        assert yaml.safe_load(path.read_text()) == cfg
        loaded = load_config(path)
        assert loaded.lora == LoraSettings(r=16, alpha=32) and loaded.lr == 1e-5
        paper = load_config(root / "paper" / model / f"{name.split('/')[1].rsplit('_', 1)[0]}.yaml")
        same = {k for k in paper.to_dict() if k not in ("run_name", "lora", "lr", "micro_batch_size")}
        assert {k: loaded.to_dict()[k] for k in same} == {k: paper.to_dict()[k] for k in same}
        gpu = gpus[name.rsplit("_", 1)[1]]
        p = plan(loaded, 1, gpu.memory_gib, gpu=gpu)
        peak = max(p.memory["train_peak"], p.memory["rollout_peak"])
        assert p.fits and peak <= gpu.memory_gib and f"planned peak memory {peak:.1f} GiB" in header[2]


@pytest.mark.slow
@pytest.mark.llm
def test_lora_under_accelerate_launch_on_two_ranks_checkpoints_the_adapter_and_resumes(tmp_path):
    """`accelerate launch` with the FSDP launch config on 2 CPU processes (accelerate's DDP on CPU, see
    test_multirank): the shards hold the adapter and its AdamW state alone, and a resumed run trains on."""
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file
    from test_multirank import accelerate_launch

    run = ["run_name=acc", f"out_dir={tmp_path}", "prompts_per_step=2", "group_size=2", "max_new_tokens=4",
           "dtype=bfloat16", "regime={preset: tempered, alpha: 2}", "ignore_eos=true", "template=plain",
           "prefill=\\boxed{", "micro_batch_size=1", "warmup_steps=0", "warmup_start=1.0", "lr=1e-3",
           "save_every=1", "keep_checkpoints=3", "lora.r=4"]
    accelerate_launch(*run, "steps=2")
    ckpts = tmp_path / "acc" / "checkpoints"
    keys = dcp.FileSystemReader(str(ckpts / "step_000002" / "sharded")).read_metadata().state_dict_metadata
    weights = [k for k in keys if k.startswith("model.")]
    assert len(weights) == 30 * 7 * 2 and all("lora_" in k for k in weights)  # no base weight, no tied LM head
    accelerate_launch(*run, "steps=3", "resume=true")
    lines = [json.loads(line) for line in (tmp_path / "acc" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3] and all(m["skipped"] == 0 for m in lines)
    assert lines[0]["kl_ref"] == pytest.approx(0.0, abs=1e-2) and lines[2]["kl_ref"] > 0.1  # the adapter moved
    step2, step3 = (load_file(ckpts / s / "adapter_model.safetensors") for s in ("step_000002", "step_000003"))
    assert step2.keys() == step3.keys() and sum(not torch.equal(step3[k], v) for k, v in step2.items()) > 200
