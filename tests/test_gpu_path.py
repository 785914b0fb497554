"""The GPU path's numerics and phases on the real SmolLM2-135M-Instruct (issue #11): fp32 master weights under a
bf16 config, the prompt + response budget and lockstep decoding of the hf engine, and the trainer's vLLM phases
(sleep for training, awake through an evaluation, weights synced after each step) with a stand-in vLLM backend."""

import json

import pytest
import torch

from sharpening.llm.config import load_config
from test_gpu_plan import RecordingBackend

pytestmark = [pytest.mark.slow, pytest.mark.llm]

TINY = ["prompts_per_step=1", "group_size=2", "max_new_tokens=3", "prefill=\\boxed{", "template=plain",
        "warmup_steps=0", "warmup_start=1.0", "save_every=0"]


def make_trainer(tmp_path, *overrides):
    from sharpening.llm.trainer import Trainer

    return Trainer(load_config(None, [f"out_dir={tmp_path}", *TINY, *overrides]))


def test_a_bf16_config_trains_fp32_master_weights(tmp_path):
    """dtype=bfloat16 is the compute dtype: the optimizer's parameters stay float32 and one step at lr 1e-6 moves
    most weights (a bf16 weight rounds such a step away: 0.4% of SmolLM2's moved). The reference is bf16."""
    tr = make_trainer(tmp_path, "dtype=bfloat16", "lr=1e-6", "regime=sharpening", "activation_checkpointing=true",
                      "group_size=4", "ignore_eos=true")  # 4 samples of 3 tokens: not all alike, so A != 0
    assert all(p.dtype == torch.float32 for g in tr.opt.param_groups for p in g["params"])
    assert all(p.dtype == torch.bfloat16 for p in tr.ref.parameters())
    with torch.enable_grad():
        from sharpening.llm.models import uses_activation_checkpointing

        assert uses_activation_checkpointing(tr.policy)
    before = [p.detach().clone() for p in tr.policy.parameters()]
    m = tr.train_step(1)
    assert m["skipped"] == 0 and m["grad_norm"] > 0
    moved = sum(int((p.detach() != q).sum()) for p, q in zip(tr.policy.parameters(), before))
    total = sum(q.numel() for q in before)
    assert moved > 0.5 * total, f"{moved / total:.1%} of the weights moved"
    assert m["logprob_gap/mean_abs"] > 0  # the bf16 sampling pass and the bf16 training pass differ in rounding


def test_prompt_plus_response_budget_and_lockstep_decoding():
    from sharpening.llm.data import format_prompt
    from sharpening.llm.models import load_model, load_tokenizer
    from sharpening.llm.rollout import HFEngine

    tok, model = load_tokenizer("smollm2"), load_model("smollm2")
    prompts = [format_prompt(tok, q, "{problem}") for q in ("What is 3 + 5?", "What is 12 + 7 - 4? Show your work.")]
    P = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    assert P[0] < P[1]
    budget = HFEngine(model, tok, max_total_tokens=P[1] + 2)  # the longer prompt leaves room for 2 tokens
    roll = budget.generate(prompts, n=2, max_new_tokens=6, ignore_eos=True, seed=0)
    assert roll.lengths.tolist() == [min(6, P[1] + 2 - P[0])] * 2 + [2.0] * 2 and roll.truncated.all()
    # lockstep: every chunk decodes max_new_tokens steps (FSDP ranks stay in step); the samples are the same
    free = HFEngine(model, tok).generate(prompts, n=2, max_new_tokens=12, seed=1)
    lock = HFEngine(model, tok, lockstep=True).generate(prompts, n=2, max_new_tokens=12, seed=1)
    assert torch.equal(lock.mask[:, :free.mask.shape[1]], free.mask) and not lock.mask[:, free.mask.shape[1]:].any()
    assert torch.equal(lock.tokens[:, :free.tokens.shape[1]] * free.mask.long(), free.tokens * free.mask.long())
    assert lock.texts == free.texts


def test_trainer_sleeps_vllm_for_training_and_keeps_it_awake_through_evaluations(tmp_path):
    """With a colocated engine (vLLM's bookkeeping, a stand-in backend): evaluate at step 0, one step, evaluate at
    the end. The engine sleeps once per phase change and never between the calls of an evaluation; the weights are
    synced after the step; lp_old of a sampling regime is the trainer's forward pass, not the engine's."""
    from sharpening.llm.vllm_engine import VLLMEngine

    tr = make_trainer(tmp_path, "regime={preset: tempered, alpha: 2}", "steps=1", "run_name=v", "eval_at_start=true",
                      "keep_best=true", "eval_datasets=[synthetic:add, synthetic:sub]", "eval_limit=2", "eval_n=2",
                      "eval_seed=1")
    backend = RecordingBackend()
    tr.engine = VLLMEngine("unused", tr.tokenizer, backend=backend)
    tr.engine.track(tr.opt)
    tr.train()
    calls = [c for i, c in enumerate(backend.calls) if c != "load" or backend.calls[i - 1] != "load"]  # loads: once
    # sleep level 2 discards the weights: the evaluation's sleep is followed by a reload of the same weights
    assert calls == ["generate", "generate", "sleep",  # evaluation at step 0: one call per dataset, then sleep
                     "wake:weights", "load", "reset",  # the discarded weights reloaded (no step since)
                     "wake:kv_cache", "generate", "sleep",  # the step's rollout, then training
                     "wake:weights", "load", "reset",  # the update's weights
                     "wake:kv_cache", "generate", "generate", "sleep"]  # the final evaluation
    roll = tr.last["roll"]
    assert not torch.allclose(tr.last["lp_old_tok"], roll.lp_old_tok)  # the stand-in's log-probs are made up
    tr.cfg.lp_old_source = "engine"
    assert torch.equal(tr.lp_old(roll), roll.lp_old_tok)
    lines = [json.loads(line) for line in (tmp_path / "v" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [0, 1] and "eval/synthetic:add/pass@1" in lines[0]
    best = json.loads((tmp_path / "v" / "checkpoints" / "best" / "best.json").read_text())
    assert best["step"] == 1 and (tmp_path / "v" / "checkpoints" / "best" / "model.safetensors").exists()
