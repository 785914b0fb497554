"""A vLLM rollout engine colocated with the trainer: same `generate(...) -> Rollout` as HFEngine.

Each data-parallel rank owns one vLLM engine on its own GPU (tensor parallel 1, vLLM's
"external_launcher" executor, as TRL's colocate mode does), so rollouts are data-parallel like the
training. One step:

    engine.generate(...)        wake the KV cache, sample, return the engine's per-token log-probs
    engine.sleep()              level 2: weights and KV cache discarded, so that training has the GPU
    ... train: pg_loss(logp_tok, A, mask, logp_engine=roll.lp_old_tok, is_cap) ...
    optimizer.step()            the tracked optimizer bumps policy_version
    engine.sync_weights(model)  wake the weights only, load the new ones, engine_version = policy_version

Level 2 (as TRL's colocate mode sleeps) discards the weights instead of copying 2P bytes to pinned CPU RAM and
back over PCIe at every step: the sync overwrites them anyway. So after a sleep the engine holds no weights until
the next `sync_weights` (`needs_sync`); `generate` refuses to sample before it, and the trainer syncs when an
evaluation's sleep or a skipped step left the engine without weights.

The caller decides when the engine sleeps: an evaluation calls `generate` many times with the engine awake
throughout and sleeps it once at the end. `generate` refuses to sample from stale or discarded weights: a missed
sync is an error, not a silent off-policy run.

lp_old_tok of a vLLM rollout holds the ENGINE's log-probs of the sampled tokens (raw logits, before
temperature / top-p, as HFEngine defines lp_old_tok). They differ from the trainer's (bf16 kernels,
another attention implementation), hence `is_correction = True`: the trainer passes them as
`logp_engine` to `objective.pg_loss`, whose truncated weight min(pi_theta / pi_engine, is_cap) corrects
the mismatch.

Parameter names: vLLM's `model.load_weights` takes Hugging Face names and fuses q/k/v into qkv_proj and
gate/up into gate_up_proj itself, so only wrapper prefixes (FSDP, activation checkpointing, DDP,
torch.compile) are stripped here; `vllm_param_name` says where each HF tensor lands, to check that a
sync is complete. `import vllm` happens only when an engine is built.
"""

from __future__ import annotations

import os
import socket

import torch

from sharpening.llm.rollout import Rollout

WRAPPERS = {"_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod", "module"}  # FSDP1, ckpt, compile, DDP
FUSED = {  # HF projection -> (vLLM fused parameter, shard id), as vLLM's Llama/Qwen load_weights stacks them
    ".q_proj.": (".qkv_proj.", "q"), ".k_proj.": (".qkv_proj.", "k"), ".v_proj.": (".qkv_proj.", "v"),
    ".gate_proj.": (".gate_up_proj.", 0), ".up_proj.": (".gate_up_proj.", 1),
}
SHARDS = {".qkv_proj.": {"q", "k", "v"}, ".gate_up_proj.": {0, 1}}


# ---------------------------------------------------------------------------------------------------
# Bookkeeping (pure Python / torch, tested on CPU).
# ---------------------------------------------------------------------------------------------------


class WeightSync:
    """Version counters proving the engine samples from the policy's current weights.

    policy_version counts optimizer steps (a post-step hook on the tracked optimizer), engine_version
    the policy version last loaded into the engine; they must agree whenever the engine samples.
    """

    def __init__(self):
        self.policy_version = 0
        self.engine_version = 0
        self.syncs = 0

    def track(self, optimizer) -> None:
        """Count the steps of `optimizer`; accelerate's AcceleratedOptimizer is looked through (it has no hooks of
        its own, and its step() runs the inner optimizer's, whose hooks fire)."""
        from sharpening.llm.distributed import inner_optimizer

        inner_optimizer(optimizer).register_step_post_hook(lambda *_: self._stepped())

    def _stepped(self) -> None:
        self.policy_version += 1

    def synced(self) -> None:
        self.engine_version = self.policy_version
        self.syncs += 1

    def check_fresh(self) -> None:
        if self.engine_version != self.policy_version:
            raise RuntimeError(
                f"the rollout engine holds the weights of optimizer step {self.engine_version} but the policy is "
                f"at step {self.policy_version}: call engine.sync_weights(model) after every optimizer step")


def hf_name(name: str) -> str:
    """A parameter name of a wrapped model (FSDP, checkpointing, DDP, compile) -> its plain HF name."""
    return ".".join(part for part in name.split(".") if part not in WRAPPERS)


def vllm_param_name(name: str):
    """(vLLM parameter, shard id or None) that an HF tensor is loaded into."""
    for hf, (fused, shard) in FUSED.items():
        if hf in name:
            return name.replace(hf, fused), shard
    return name, None


def check_complete(names) -> None:
    """Raise if a fused vLLM parameter would receive only some of its shards (a partial sync)."""
    got = {}
    for name in names:
        target, shard = vllm_param_name(name)
        if shard is not None:
            got.setdefault(target, set()).add(shard)
    for target, shards in got.items():
        expected = next(v for k, v in SHARDS.items() if k in target)
        if shards != expected:
            raise RuntimeError(f"weight sync would load {sorted(map(str, shards))} of {target}, "
                               f"which needs {sorted(map(str, expected))}")


def hf_weights(model):
    """(HF name, full tensor) for every weight the engine needs, one tensor gathered at a time.

    FSDP2 shards are DTensors: `full_tensor()` all-gathers one (every rank must iterate together).
    A tied LM head is skipped: vLLM ties it to the embeddings itself.
    """
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            name = hf_name(name)
            if tied and name == "lm_head.weight":
                continue
            if hasattr(tensor, "full_tensor"):
                tensor = tensor.full_tensor()
            yield name, tensor.detach()


def rollout_from_samples(prompt_ids, samples, pad_id: int, tokenizer=None, device="cpu") -> Rollout:
    """Pack an engine's samples into a Rollout, prompt-major.

    prompt_ids: one token list per prompt. samples: per prompt, its n samples, each
    (token_ids, logprobs, truncated) with logprobs[t] = log pi_engine(token_ids[t] | ...).
    Prompts are left-padded, responses right-padded with pad_id; tokenizer decodes texts (else "").
    """
    rows = [(p, g, *sample) for g, (p, group) in enumerate(zip(prompt_ids, samples)) for sample in group]
    if not rows:
        raise ValueError("no samples to pack into a rollout")
    P = max(len(r[0]) for r in rows)
    T = max(1, max(len(r[2]) for r in rows))
    B = len(rows)
    prompt = torch.full((B, P), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros(B, P, dtype=torch.long)
    tokens = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros(B, T)
    lp = torch.zeros(B, T)
    for i, (p, _, y, logprobs, _) in enumerate(rows):
        if len(logprobs) != len(y):
            raise ValueError(f"sample {i} has {len(y)} tokens but {len(logprobs)} log-probs")
        if p:
            prompt[i, P - len(p):] = torch.tensor(p)
            prompt_mask[i, P - len(p):] = 1
        tokens[i, :len(y)] = torch.tensor(y, dtype=torch.long)
        mask[i, :len(y)] = 1.0
        lp[i, :len(y)] = torch.tensor(logprobs, dtype=torch.float32)
    texts = tokenizer.batch_decode([r[2] for r in rows], skip_special_tokens=True) if tokenizer else [""] * B
    truncated = torch.tensor([bool(r[4]) for r in rows])
    group = torch.tensor([r[1] for r in rows])
    to = lambda x: x.to(device)  # noqa: E731
    return Rollout(to(prompt), to(prompt_mask), to(tokens), to(mask), to(lp), to(mask.sum(-1)), to(truncated),
                   texts, to(group))


# ---------------------------------------------------------------------------------------------------
# The engine.
# ---------------------------------------------------------------------------------------------------


class VLLMEngine:
    """Colocated vLLM sampling with weight sync and sleep mode; `generate` returns a Rollout like HFEngine."""

    is_correction = True  # lp_old_tok comes from another engine: pass it to pg_loss as logp_engine

    def __init__(self, model_path: str, tokenizer, *, gpu_memory_utilization: float = 0.3,
                 max_model_len: int | None = None, dtype: str = "bfloat16", sleep_level: int = 2,
                 seed: int = 0, backend=None):
        """model_path: the policy's initial weights, a local HF folder or a model in the HF cache (no download).
        sleep_level: 0 keeps the engine resident, 1 parks its weights in CPU RAM during training, 2 discards them
        (the next sync_weights reloads them).
        backend: what runs the samples (default: vLLM in this process); tests pass a stand-in."""
        if sleep_level not in (0, 1, 2):
            raise ValueError(f"sleep_level={sleep_level!r} must be 0 (stay resident), 1 (weights to CPU RAM) or 2 "
                             "(weights discarded, reloaded by the next sync)")
        self.tokenizer, self.sleep_level = tokenizer, sleep_level
        self.backend = backend or _VLLMBackend(model_path, gpu_memory_utilization, max_model_len, dtype,
                                               sleep_level > 0, seed)
        self.sync = WeightSync()
        self.awake = {"weights": True, "kv_cache": True}
        self.needs_sync = False  # True after a level-2 sleep discarded the weights, until sync_weights
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def track(self, optimizer) -> None:
        """Count the optimizer's steps, so that sampling from weights older than the policy is an error."""
        self.sync.track(optimizer)

    def sync_weights(self, model) -> dict:
        """Load the policy's current weights into the engine (gathering FSDP shards): call after every step."""
        self._wake("weights")  # loading into parked weights writes to freed memory (trl#5142)
        names, n_bytes = [], 0
        for name, tensor in hf_weights(model):
            self.backend.load_weights([(name, tensor)])
            names.append(name)
            n_bytes += tensor.numel() * tensor.element_size()
        check_complete(names)
        self.backend.reset_prefix_cache()  # cached prefixes hold the old weights' keys and values
        self.sync.synced()
        self.needs_sync = False
        return {"tensors": len(names), "bytes": n_bytes, "version": self.sync.engine_version}

    @torch.no_grad()
    def generate(self, prompts, n: int, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                 ignore_eos: bool = False, seed=None) -> Rollout:
        """n responses to each prompt (prompt-major) with the engine's log-probs; the engine stays awake (the
        caller calls `sleep` before training)."""
        self.sync.check_fresh()
        if self.needs_sync:
            raise RuntimeError("the rollout engine's weights were discarded by its level-2 sleep: call "
                               "engine.sync_weights(model) before generating")
        self.wake_up()  # vLLM schedules again only once weights and KV cache are both back
        enc = self.tokenizer(list(prompts), add_special_tokens=False)
        samples = self.backend.generate(enc["input_ids"], n=n, max_new_tokens=max_new_tokens,
                                        temperature=temperature, top_p=top_p, ignore_eos=ignore_eos, seed=seed)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return rollout_from_samples(enc["input_ids"], samples, self.pad_id, self.tokenizer, device)

    def sleep(self) -> None:
        """Free the GPU for training: KV cache dropped, weights to CPU RAM (level 1) or discarded (level 2);
        no-op with sleep_level 0."""
        if self.sleep_level and any(self.awake.values()):
            self.backend.sleep(self.sleep_level)
            self.awake = {"weights": False, "kv_cache": False}
            self.needs_sync = self.sleep_level == 2

    def wake_up(self) -> None:
        self._wake("weights")
        self._wake("kv_cache")

    def _wake(self, tag: str) -> None:
        if not self.awake[tag]:
            self.backend.wake_up([tag])  # weights alone first: waking the KV cache too can OOM (vllm#15254)
            self.awake[tag] = True


# ---------------------------------------------------------------------------------------------------
# The only code that touches vLLM. Every name it uses is checked against vLLM 0.33.0's source by
# tests/test_vllm_contract.py; it has not run on a GPU yet.
# ---------------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port no process listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launcher_env() -> None:
    """The torchrun variables vLLM's external_launcher reads (v1/executor/uniproc_executor.py: RANK, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT). Under torchrun or accelerate they are set already; a plain single-process run gets
    rank 0 of 1 and a free port, so that two such runs on one node (a grid spread one run per GPU) do not both
    bind one fixed port. One process keeps the port it got: its second engine joins the same process group."""
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_port())


def import_vllm():
    try:
        import vllm
    except ImportError as err:
        raise ImportError("engine='vllm' needs vLLM, which runs on CUDA GPUs: pip install -e '.[gpu,llm]'; "
                          "on CPU use engine='hf'") from err
    return vllm


class _VLLMBackend:
    """vLLM's LLM in this process (external_launcher: one engine per torchrun/accelerate rank)."""

    def __init__(self, model_path, gpu_memory_utilization, max_model_len, dtype, enable_sleep_mode, seed):
        vllm = import_vllm()
        launcher_env()
        self.rank = rank = int(os.environ["RANK"])
        self.vllm = vllm
        self.llm = vllm.LLM(model=model_path, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                            max_model_len=max_model_len, enable_sleep_mode=enable_sleep_mode,
                            distributed_executor_backend="external_launcher", seed=seed + rank)

    def load_weights(self, pairs):
        """vLLM's own load_weights (HF names in, fused in place), run on the in-process worker's model by
        LLM.apply_model (external_launcher keeps the engine in this process: the function is not serialized)."""
        def load(model):
            model.load_weights(pairs)  # returns the names it loaded: nothing needs to come back

        self.llm.apply_model(load)

    def reset_prefix_cache(self):
        self.llm.reset_prefix_cache()

    def sleep(self, level):
        self.llm.sleep(level=level)

    def wake_up(self, tags):
        torch.cuda.empty_cache()  # hand the trainer's cached blocks back before vLLM maps its own
        self.llm.wake_up(tags=tags)

    def generate(self, prompt_ids, n, max_new_tokens, temperature, top_p, ignore_eos, seed):
        # one seed per (step seed, rank, prompt): seed + i would reuse streams across consecutive steps
        seeds = [None if seed is None else hash((seed, self.rank, i)) % 2**31 for i in range(len(prompt_ids))]
        params = [self.vllm.SamplingParams(n=n, max_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                           ignore_eos=ignore_eos, logprobs=0, seed=s, detokenize=False)
                  for s in seeds]  # detokenize=False: the texts are decoded once, by rollout_from_samples
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompt_ids], params, use_tqdm=False)
        return [[(list(c.token_ids), [lp[t].logprob for lp, t in zip(c.logprobs, c.token_ids)],
                  c.finish_reason == "length")
                 for c in out.outputs] for out in outputs]
