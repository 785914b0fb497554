"""The multi-process runtime: this process's ranks, the exact global token-mean, and the wrapped model's needs.

The plan (what fits, how long it takes, the dry run) is in sharpening.llm.gpu_plan; this module is what runs.

One optimizer step consumes prompts_per_step x G sequences; each of W data-parallel ranks takes
prompts_per_step / W whole prompt groups (RLOO stays local) and splits its sequences into micro-batches.
The loss stays the token-mean over the GLOBAL batch however it is split: every micro-batch's `pg_loss` (a
mean over its own n_mb tokens) is rescaled by n_mb * W / n_global, where n_global is the all-reduced token
count of the whole step, because gradients are summed over micro-batches and averaged over ranks (DDP and
FSDP divide by W).

`Ranks.from_env()` builds accelerate's `Accelerator` whenever the process was started by `accelerate launch`
(on any number of GPUs, 1 included: the FSDP2 configs then shard over one rank) or by torchrun with several
ranks; a plain `python -m sharpening.cli ...` runs without it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# Every accelerate launcher (simple, multi-GPU, FSDP) exports this one; torchrun alone does not.
ACCELERATE_LAUNCH_VAR = "ACCELERATE_MIXED_PRECISION"


# ---------------------------------------------------------------------------------------------------
# The exact global token-mean across ranks and micro-batches.
# ---------------------------------------------------------------------------------------------------


def rank_slice(n_prompts: int, rank: int, world_size: int) -> slice:
    """The prompts a rank samples: a contiguous block, so each prompt's G samples stay together."""
    if n_prompts % world_size:
        raise ValueError(f"{n_prompts} prompts cannot be split evenly over world_size={world_size}")
    k = n_prompts // world_size
    return slice(rank * k, (rank + 1) * k)


def micro_batches(n_sequences: int, micro_batch_size: int) -> list[slice]:
    """Consecutive slices of at most micro_batch_size sequences covering 0..n_sequences."""
    return [slice(i, min(i + micro_batch_size, n_sequences)) for i in range(0, n_sequences, micro_batch_size)]


def global_token_count(mask):
    """Response tokens of the whole step: this rank's mask.sum(), summed over ranks when distributed."""
    import torch
    import torch.distributed as dist

    n = mask.sum().detach().to(torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(n, op=dist.ReduceOp.SUM)
    return n


def token_mean_scale(mask_mb, n_global, world_size: int):
    """Factor turning a micro-batch's token-mean `pg_loss` into its share of the global token-mean.

    pg_loss(mb) = -sum_mb(w A logp) / n_mb. Gradients are summed over micro-batches and averaged over
    the W ranks, so scaling each by n_mb * W / n_global makes the step's gradient exactly that of
    -sum_all(w A logp) / n_global, the token-mean over the global batch.
    """
    n_mb = max(float(mask_mb.sum()), 1.0)  # pg_loss divides by at least 1 token
    return n_mb * world_size / float(n_global)


# ---------------------------------------------------------------------------------------------------
# This process's place in the run (the launch command sets the ranks).
# ---------------------------------------------------------------------------------------------------


def launched_by_accelerate() -> bool:
    return ACCELERATE_LAUNCH_VAR in os.environ


def fsdp2_plugin_from_env():
    """accelerate's FSDP plugin as the launch config sets it, with one change: gradients are reduce-scattered in
    float32. accelerate's default for `mixed_precision: bf16` reduces in bf16 too; the sharded gradients are
    accumulated in float32 either way, so float32 reduction only doubles the gradient traffic (small next to the
    rollouts at 3-4B) and keeps the cross-rank sum as exact as the single-GPU one. None when not FSDP2."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true" or os.environ.get("FSDP_VERSION") != "2":
        return None
    import torch
    from accelerate.utils import FullyShardedDataParallelPlugin

    compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(os.environ.get(ACCELERATE_LAUNCH_VAR, "no"))
    if compute is None:
        return FullyShardedDataParallelPlugin()
    return FullyShardedDataParallelPlugin(mixed_precision_policy={"param_dtype": compute, "reduce_dtype": torch.float32,
                                                                  "output_dtype": compute})


def check_cpu_ram_efficient_loading() -> None:
    """fsdp_cpu_ram_efficient_loading makes transformers load the weights on meta tensors on every rank but 0; the
    frozen reference (copied from the policy before sharding) and the rollout engine need the real weights on
    every rank."""
    if os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING", "false").lower() == "true":
        raise ValueError("fsdp_cpu_ram_efficient_loading=true is not supported: ranks other than 0 would load the "
                         "model as empty (meta) tensors, but the frozen reference model needs the full weights on "
                         "every rank; set fsdp_cpu_ram_efficient_loading: false in the accelerate config")


@dataclass
class Ranks:
    """This process's place in a data-parallel run; rank 0 of 1 (and no-ops) without a launcher.

    Launch: accelerate launch --config_file configs/accelerate/fsdp_4gpu.yaml -m sharpening.cli llm train ...
    sets WORLD_SIZE and the FSDP/bf16 settings that `accelerate.Accelerator()` reads from the environment.
    """

    rank: int = 0
    world_size: int = 1
    accelerator: object = None

    @classmethod
    def from_env(cls) -> "Ranks":
        """The Accelerator under `accelerate launch` (any number of processes) or torchrun with several ranks;
        rank 0 of 1 otherwise. Without CUDA, accelerate's CPU mode (gloo, DDP: accelerate runs no FSDP on CPU)."""
        if int(os.environ.get("WORLD_SIZE", "1")) == 1 and not launched_by_accelerate():
            return cls()
        import torch
        from accelerate import Accelerator

        check_cpu_ram_efficient_loading()
        cpu = os.environ.get("ACCELERATE_USE_CPU", "false").lower() == "true" or not torch.cuda.is_available()
        accelerator = Accelerator(cpu=cpu, fsdp_plugin=fsdp2_plugin_from_env())
        return cls(accelerator.process_index, accelerator.num_processes, accelerator)

    @property
    def is_main(self) -> bool:
        """Rank 0 writes metrics, checkpoints and progress bars."""
        return self.rank == 0

    @property
    def shards_checkpointed_layers(self) -> bool:
        """Whether accelerate wraps each decoder layer in activation checkpointing itself (FSDP configs)."""
        plugin = getattr(getattr(self.accelerator, "state", None), "fsdp_plugin", None)
        return bool(getattr(plugin, "activation_checkpointing", False))

    def my_prompts(self, indices: list) -> list:
        """This rank's share of the step's prompts (whole groups: RLOO stays local)."""
        return indices[rank_slice(len(indices), self.rank, self.world_size)]

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def all_gather(self, obj) -> list:
        """[obj of rank 0, obj of rank 1, ...] on every rank (any picklable object)."""
        if self.world_size == 1:
            return [obj]
        import torch.distributed as dist

        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def all_mean(self, value: float) -> float:
        """The mean over ranks of a per-rank number (step metrics such as the task reward)."""
        if self.world_size == 1:
            return float(value)
        import torch
        import torch.distributed as dist

        device = getattr(self.accelerator, "device", "cpu")  # NCCL reduces CUDA tensors only
        t = torch.tensor(float(value), dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t) / self.world_size

    def prepare(self, policy, optimizer):
        """Wrap the policy with its optimizer as the launch config says (FSDP2 on GPUs; DDP on CPU processes);
        the optimizer becomes accelerate's AcceleratedOptimizer. The reference stays a plain replica."""
        if self.accelerator is None:
            return policy, optimizer
        return self.accelerator.prepare(policy, optimizer)

    def clip_grad_norm(self, model, max_norm: float) -> float:
        """Clip the gradients' global norm to max_norm; returns the norm before clipping as a float (a sharded
        model's norm is a DTensor: gathered here)."""
        import torch

        params = list(model.parameters())
        if self.accelerator is not None:
            norm = self.accelerator.clip_grad_norm_(params, max_norm)
        else:
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        return float(norm)


def inner_optimizer(optimizer):
    """The torch optimizer inside accelerate's AcceleratedOptimizer (which never runs Optimizer.__init__: no step
    hooks of its own, and its step() calls the inner one's)."""
    while hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


def unwrap_ddp(model):
    """The module inside DistributedDataParallel (generation needs its attributes and no gradient-sync hooks);
    any other model as it is (an FSDP2 model must be called as it is: its forward gathers the shards)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def enable_activation_checkpointing(model) -> None:
    """Recompute each decoder layer in the backward pass instead of storing its activations.

    For runs outside the FSDP launch configs (which make accelerate wrap every decoder layer itself).
    """
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x renamed it
        model.activation_checkpointing_enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False  # the KV cache is useless (and wasteful) in a training forward

