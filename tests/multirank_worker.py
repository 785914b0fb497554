"""Run by tests/test_multirank.py under torchrun: 2 CPU processes, gloo, the real SmolLM2. Not a test itself.

    python -m torch.distributed.run --nproc_per_node 2 tests/multirank_worker.py JOB OUT_DIR
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def fsdp_model():
    """SmolLM2 sharded as the accelerate configs shard it: one FSDP2 unit per decoder layer, then the root."""
    from torch.distributed.fsdp import fully_shard

    from sharpening.llm.models import load_model

    model = load_model("smollm2")
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def train_step(model, opt, rank: int, step: int) -> None:
    """A language-model loss on a batch fixed by (rank, step): the same data in every run."""
    ids = torch.randint(1000, (2, 12), generator=torch.Generator().manual_seed(1000 * step + rank))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def save_full_weights(model, path: Path, rank: int) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        torch.save(full, path)


def resume(job: str, out: Path, rank: int) -> None:
    """run: step 1, sharded checkpoint, step 2. resume: a fresh process loads it and does step 2.
    fresh_optimizer: loads it, then replaces the optimizer (its state lost) and does step 2."""
    from sharpening.llm.checkpoint import load_sharded, save_sharded

    model = fsdp_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    if job == "run":
        train_step(model, opt, rank, step=1)
        save_sharded(out / "ckpt", model, opt)
    else:
        load_sharded(out / "ckpt", model, opt)
        if job == "fresh_optimizer":
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    train_step(model, opt, rank, step=2)
    save_full_weights(model, out / f"{job}.pt", rank)


def shared_prompt_gradient(out: Path, rank: int) -> None:
    """Under FSDP2 the shared-prompt forward calls the sharded model twice before one backward: its gradient
    must still be the full pass's. Each rank samples its own question (fixed length: the ranks decode in
    lockstep, as FSDP's collectives need); rank 0 saves both full gradients."""
    from sharpening.llm.data import format_prompt
    from sharpening.llm.models import load_tokenizer
    from sharpening.llm.rollout import HFEngine, response_logprobs

    model, tok = fsdp_model(), load_tokenizer("smollm2")
    question = ["What is 3 + 5?", "What is 12 + 7 - 4? Show your work."][rank]
    roll = HFEngine(model, tok).generate([format_prompt(tok, question, "{problem}", "\\boxed{")], n=3,
                                         max_new_tokens=6, ignore_eos=True, seed=rank)
    A = torch.tensor([1.0, -0.5, 2.0])
    grads = {}
    for share in (True, False):
        model.zero_grad(set_to_none=True)
        (A[:, None] * response_logprobs(model, roll, share_prompt=share)).sum().backward()
        grads[share] = {name: p.grad.full_tensor() for name, p in model.named_parameters()}
    # the trainer's clipping on sharded gradients (DTensors): the global norm, as a float on every rank
    from sharpening.llm.distributed import Ranks

    expected = float(torch.stack([g.norm() for g in grads[False].values()]).norm())
    grads["norm"] = (Ranks(rank, dist.get_world_size()).clip_grad_norm(model, max_norm=1e9), expected)
    if rank == 0:
        torch.save(grads, out / "grads.pt")


def checkpointed_fsdp(out: Path, rank: int) -> None:
    """SmolLM2 wrapped as accelerate's FSDP2 config wraps it (fsdp2_apply_ac: checkpoint_wrapper(layer,
    preserve_rng_state=False) per decoder layer, then one FSDP2 unit per layer and the root): the hf engine decodes
    through the wrappers in lockstep (each rank's responses end at their own EOS), the no-grad and the training
    log-probs equal the plain model's, the backward runs and the clipped norm is one float on every rank."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
    from torch.distributed.fsdp import fully_shard

    from sharpening.llm.data import format_prompt
    from sharpening.llm.distributed import Ranks
    from sharpening.llm.models import load_model, load_tokenizer, uses_activation_checkpointing
    from sharpening.llm.rollout import HFEngine, response_logprobs

    plain, model, tok = load_model("smollm2"), load_model("smollm2"), load_tokenizer("smollm2")
    for i, layer in enumerate(model.model.layers):
        model.model.layers[i] = checkpoint_wrapper(layer, preserve_rng_state=False)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    question = ["What is 3 + 5?", "What is 12 + 7 - 4? Show your work."][rank]
    roll = HFEngine(model, tok, lockstep=True).generate([format_prompt(tok, question, "{problem}", "\\boxed{")],
                                                        n=3, max_new_tokens=8, seed=rank)
    with torch.no_grad():
        expected = response_logprobs(plain, roll, share_prompt=False)
        no_grad = response_logprobs(model, roll)  # the shared-prompt path with a KV cache, through the wrappers
    with torch.enable_grad():
        checkpointed = uses_activation_checkpointing(model)
        logp = response_logprobs(model, roll)  # the full pass, recomputed layer by layer in the backward
        (-(logp * roll.mask).sum() / roll.mask.sum()).backward()
    norm = Ranks(rank, dist.get_world_size()).clip_grad_norm(model, max_norm=1.0)
    result = {"checkpointed": checkpointed, "tokens": roll.tokens.shape[1], "lengths": roll.lengths.tolist(),
              "no_grad_gap": float((no_grad - expected).abs().max()),
              "grad_gap": float((logp.detach() - expected).abs().max()),
              "norm": norm, "grads": all(p.grad is not None for p in model.parameters())}
    (out / f"checkpointed_rank{rank}.json").write_text(json.dumps(result))


def evaluate(out: Path, rank: int, world_size: int) -> None:
    """The shared evaluation split over the ranks; each rank dumps what it returned."""
    from sharpening.llm.distributed import Ranks
    from sharpening.llm.evaluation import evaluate as run_evaluation

    from test_multirank import EVAL_ARGS, eval_inputs  # the test's own arguments

    engine, problems = eval_inputs()
    result = run_evaluation(engine, problems, **EVAL_ARGS, out=out / "eval.json", ranks=Ranks(rank, world_size))
    (out / f"eval_rank{rank}.json").write_text(json.dumps(result))


def main() -> None:
    job, out = sys.argv[1], Path(sys.argv[2])
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if job == "evaluate":
        evaluate(out, rank, world_size)
    elif job == "shared_prompt_gradient":
        shared_prompt_gradient(out, rank)
    elif job == "checkpointed_fsdp":
        checkpointed_fsdp(out, rank)
    else:
        resume(job, out, rank)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
