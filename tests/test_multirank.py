"""Two ranks on CPU (torchrun, gloo) with the real SmolLM2: what multi-GPU runs rely on beyond the arithmetic.

- A sharded checkpoint (FSDP2 weights + AdamW state, torch.distributed.checkpoint) resumes bit-exactly: a
  fresh pair of processes that loads it and takes step 2 ends with the weights of the uninterrupted run.
  Replacing the loaded optimizer by a fresh one does not: the optimizer state was restored, not rebuilt.
- Under FSDP2, the shared-prompt forward (two calls of the sharded model before one backward) gives the
  gradient of the full forward pass.
- The evaluation split over the ranks returns, on every rank, the result of one process doing it all, and
  only rank 0 writes it.
- The trainer as `accelerate launch` runs it with the repository's FSDP config: Accelerator.prepare,
  AcceleratedOptimizer, gradient clipping, sharded checkpoints and resume, 2 CPU processes (accelerate runs no
  FSDP on CPU: there the same code path runs with DDP, unsharded).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.llm, pytest.mark.timeout(2400)]  # several 2-process launches

HERE = Path(__file__).parent
ROOT = HERE.parent
EVAL_ARGS = {"n": 2, "ks": (1, 2), "max_new_tokens": 6, "prefill": "\\boxed{", "template": "{problem}", "seed": 7,
             "prompts_per_call": 1}


def eval_inputs():
    """The engine and problems both sides evaluate: 5 synthetic problems, so 5 calls split 3 / 2."""
    from sharpening.llm.data import synthetic_problems
    from sharpening.llm.models import load_model, load_tokenizer
    from sharpening.llm.rollout import HFEngine

    return HFEngine(load_model("smollm2"), load_tokenizer("smollm2")), {"add": synthetic_problems(5, seed=3)}


def torchrun(job: str, out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "multirank_worker.py"), job, str(out)]  # torchrun: 1 thread per rank
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_sharded_checkpoint_resumes_exactly(tmp_path):
    for job in ("run", "resume", "fresh_optimizer"):
        torchrun(job, tmp_path)
    run, resumed, fresh = (torch.load(tmp_path / f"{job}.pt") for job in ("run", "resume", "fresh_optimizer"))
    assert run.keys() == resumed.keys() and len(run) > 100
    assert all(torch.equal(run[k], resumed[k]) for k in run)
    moved = sum(not torch.equal(run[k], fresh[k]) for k in run)
    assert moved > len(run) // 2  # AdamW's first step from zero moments differs from its second


def test_evaluation_split_over_ranks_equals_one_process(tmp_path):
    from sharpening.llm.evaluation import evaluate

    engine, problems = eval_inputs()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank: the same kernels, the same rounding, the same samples
    try:
        single = evaluate(engine, problems, **EVAL_ARGS)
    finally:
        torch.set_num_threads(threads)
    torchrun("evaluate", tmp_path)
    for rank in (0, 1):
        assert json.loads((tmp_path / f"eval_rank{rank}.json").read_text()) == json.loads(json.dumps(single))
    assert json.loads((tmp_path / "eval.json").read_text()) == json.loads(json.dumps(single))
    assert [p["id"] for p in single["datasets"]["add"]["problems"]] == [p.id for p in problems["add"]]


def test_shared_prompt_gradient_under_fsdp(tmp_path):
    torchrun("shared_prompt_gradient", tmp_path)
    grads = torch.load(tmp_path / "grads.pt")
    shared, full = grads[True], grads[False]
    ours, expected = grads["norm"]  # Ranks.clip_grad_norm of the sharded gradients: their global norm, a float
    assert isinstance(ours, float) and ours == pytest.approx(expected, rel=1e-4)  # float32 sums, other order
    assert shared.keys() == full.keys() and len(full) > 100
    for name in full:
        assert full[name].norm() > 0, name
        assert (shared[name] - full[name]).norm() <= 2e-3 * full[name].norm(), name


def test_accelerates_fsdp2_wrapping_samples_and_trains(tmp_path):
    """The wrapping of configs/accelerate/fsdp_*gpu.yaml (activation checkpointing, then FSDP2), rebuilt with torch:
    lockstep sampling through it, log-probs equal to the plain model's, a backward and a clipped norm."""
    torchrun("checkpointed_fsdp", tmp_path)
    ranks = [json.loads((tmp_path / f"checkpointed_rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        assert r["checkpointed"] and r["grads"] and r["tokens"] == 8  # lockstep: every step decoded
        assert r["no_grad_gap"] < 1e-3 and r["grad_gap"] < 1e-3
    assert ranks[0]["norm"] == ranks[1]["norm"] > 0  # the global norm, gathered on each rank


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_launch(*overrides) -> str:
    """`accelerate launch --config_file configs/accelerate/fsdp_4gpu.yaml --num_processes 2 -m sharpening.cli llm train`
    on CPU (ACCELERATE_USE_CPU: what `accelerate launch --cpu` exports); returns its output."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "configs/accelerate/fsdp_4gpu.yaml"), "--num_processes", "2", "--main_process_port",
           str(free_port()), "-m", "sharpening.cli", "llm", "train", *overrides]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done.stdout + done.stderr


RUN = ["prompts_per_step=2", "group_size=2", "max_new_tokens=4", "dtype=bfloat16",
       "regime={preset: tempered, alpha: 2}", "ignore_eos=true", "template=plain", "prefill=\\boxed{",
       "micro_batch_size=1", "warmup_steps=0", "warmup_start=1.0", "lr=1e-5", "save_every=1", "keep_checkpoints=3"]


def test_accelerate_launch_trains_checkpoints_and_resumes(tmp_path):
    """2 steps, then a resume to step 3, against 3 steps in one go: the same weights bit for bit (the sampling
    seeds are per step, AdamW's state and the schedule come back from the sharded checkpoint)."""
    from safetensors.torch import load_file

    accelerate_launch("run_name=straight", f"out_dir={tmp_path}", *RUN, "steps=3")
    straight = load_file(tmp_path / "straight" / "checkpoints" / "step_000003" / "model.safetensors")
    run = ["run_name=acc", f"out_dir={tmp_path}", *RUN]
    accelerate_launch(*run, "steps=2")
    ckpts = tmp_path / "acc" / "checkpoints"
    step2 = load_file(ckpts / "step_000002" / "model.safetensors")
    accelerate_launch(*run, "steps=3", "resume=true")
    lines = [json.loads(line) for line in (tmp_path / "acc" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3]
    assert all(m["skipped"] == 0 and m["grad_norm"] > 0 and m["length/mean"] == 4 for m in lines)
    shards = sorted(p.name for p in (ckpts / "step_000003" / "sharded").glob("*.distcp"))
    assert len(shards) == 2  # both ranks wrote their part of the weights and AdamW state
    assert load_file(ckpts / "step_000002" / "model.safetensors").keys() == step2.keys()
    assert all(torch.equal(v, load_file(ckpts / "step_000002" / "model.safetensors")[k]) for k, v in step2.items())
    step3 = load_file(ckpts / "step_000003" / "model.safetensors")
    moved = sum(not torch.equal(step3[k], v) for k, v in step2.items())
    assert moved > len(step2) // 2  # the resumed step trained the loaded weights
    assert all(v.dtype == torch.float32 for v in step3.values())  # fp32 master weights under bf16 compute
    assert step3.keys() == straight.keys()
    assert all(torch.equal(step3[k], straight[k]) for k in straight)  # resumed = uninterrupted
    straight_lines = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [m["loss"] for m in straight_lines] == [m["loss"] for m in lines]
