"""Two ranks on CPU (torchrun, gloo) with the real SmolLM2: what multi-GPU runs rely on beyond the arithmetic.

- A sharded checkpoint (FSDP2 weights + AdamW state, torch.distributed.checkpoint) resumes bit-exactly: a
  fresh pair of processes that loads it and takes step 2 ends with the weights of the uninterrupted run.
  Replacing the loaded optimizer by a fresh one does not: the optimizer state was restored, not rebuilt.
- Under FSDP2, the shared-prompt forward (two calls of the sharded model before one backward) gives the
  gradient of the full forward pass.
- The evaluation split over the ranks returns, on every rank, the result of one process doing it all, and
  only rank 0 writes it.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.llm]

HERE = Path(__file__).parent
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
    assert shared.keys() == full.keys() and len(full) > 100
    for name in full:
        assert full[name].norm() > 0, name
        assert (shared[name] - full[name]).norm() <= 2e-3 * full[name].norm(), name
