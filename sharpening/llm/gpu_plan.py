"""The multi-GPU plan: who holds which sequences, how big a micro-batch is, and what fits in memory.

One optimizer step of the paper consumes a global batch of prompts_per_step x G sequences
(32 x 8 = 256 for the 3B models, 64 x 8 = 512 for Qwen3-4B). With W data-parallel ranks:

    prompts per rank     = prompts_per_step / W          (a prompt's G samples stay on one rank: RLOO is local)
    sequences per rank   = prompts per rank x G
    accumulation steps   = ceil(sequences per rank / micro_batch_size)

Training runs under FSDP2 (torch's, driven by `accelerate launch`, configs/accelerate/fsdp_*gpu.yaml) with
fp32 master weights, bf16 compute and activation checkpointing; rollouts are data-parallel, one colocated
vLLM engine per rank (sharpening.llm.vllm_engine). Memory is counted in GiB (2**30 bytes), the unit torch and
nvidia-smi report: an "80 GB" H100 holds 79.2 GiB. Nothing here imports vLLM or needs a GPU; the plan
arithmetic and the memory and time estimates are pure Python so that `--dry-run` works without weights.
The runtime side (ranks, the global token-mean) is sharpening.llm.distributed.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

GiB = 2**30  # bytes; every memory figure here is in GiB

# ---------------------------------------------------------------------------------------------------
# Model shapes. Dense Llama/Qwen decoders, from each model's config.json on the Hugging Face hub
# (copied here so that the dry run needs no download).
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """The shapes of a dense decoder-only transformer (Llama / Qwen2 / Qwen3 family)."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied_embeddings: bool = True
    qkv_bias: bool = False  # Qwen2 has biases on q, k, v
    qk_norm: bool = False  # Qwen3 normalizes q and k per head

    @property
    def params_per_layer(self) -> int:
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        attention = h * q + 2 * h * kv + q * h + (q + 2 * kv if self.qkv_bias else 0)
        mlp = 3 * h * self.intermediate  # gate, up, down
        norms = 2 * h + (2 * self.head_dim if self.qk_norm else 0)
        return attention + mlp + norms

    @property
    def params(self) -> int:
        """P: every weight, embeddings counted once when tied to the LM head."""
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return embeddings + self.layers * self.params_per_layer + self.hidden  # + final norm

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of every layer for one token, bf16."""
        return 2 * self.layers * self.kv_heads * self.head_dim * 2


MODEL_SPECS = {
    "meta-llama/Llama-3.2-3B-Instruct": ModelSpec(128256, 3072, 28, 24, 8, 128, 8192),
    "Qwen/Qwen2.5-3B-Instruct": ModelSpec(151936, 2048, 36, 16, 2, 128, 11008, qkv_bias=True),
    "Qwen/Qwen3-4B-Instruct-2507": ModelSpec(151936, 2560, 36, 32, 8, 128, 9728, qk_norm=True),
    "HuggingFaceTB/SmolLM2-135M-Instruct": ModelSpec(49152, 576, 30, 9, 3, 64, 1536),
}
MODEL_ALIASES = {"smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct",
                 "smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def model_spec(name: str) -> ModelSpec:
    """The shapes of a known model, or of any model whose config.json is already in the local HF cache."""
    name = MODEL_ALIASES.get(name.lower(), name)
    if name in MODEL_SPECS:
        return MODEL_SPECS[name]
    try:
        from transformers import AutoConfig

        c = AutoConfig.from_pretrained(name, local_files_only=True)
    except Exception as err:  # no weights, no network in a dry run: say what is known
        raise ValueError(f"model={name!r}: no shapes known and no local config.json ({err.__class__.__name__}); "
                         f"known models: {sorted(MODEL_SPECS)} and {sorted(MODEL_ALIASES)}") from None
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return ModelSpec(c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads,
                     getattr(c, "num_key_value_heads", c.num_attention_heads), head_dim, c.intermediate_size,
                     bool(getattr(c, "tie_word_embeddings", False)))


# ---------------------------------------------------------------------------------------------------
# Hardware and the assumptions behind the estimates.
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GPU:
    name: str = "H100 80GB SXM"
    memory_gib: float = 79.2  # what torch.cuda.get_device_properties reports for an "80 GB" H100 (85.0e9 bytes)
    bf16_flops: float = 989e12  # dense tensor-core peak
    hbm_bytes_per_s: float = 3.35e12


H100 = GPU()
MFU = 0.35  # fraction of peak FLOPs a bf16 FSDP forward/backward reaches at these sizes (assumed)
DECODE_BANDWIDTH_EFFICIENCY = 0.5  # fraction of HBM bandwidth a vLLM decode step reaches (assumed)
PROMPT_TOKENS = 512  # assumed prompt length (chat template + MATH problem) when the config sets none
CUDA_OVERHEAD_GIB = 3.0  # CUDA context, NCCL buffers, allocator fragmentation per GPU (assumed)
VLLM_BUFFERS_GIB = 4.0  # vLLM's forward activations, sampler and CUDA graphs besides weights and KV (assumed)
MAX_PROMPT_TOKENS = 2048  # without max_total_tokens, the engine's max_model_len leaves this much room for a prompt
EVAL_GPU_MEMORY_UTILIZATION = 0.85  # `sharpening llm eval` has the GPU to itself: vLLM may take most of it


# ---------------------------------------------------------------------------------------------------
# The plan.
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How one optimizer step is spread over world_size GPUs, with memory (GiB) and time (s) estimates."""

    model: str
    world_size: int
    prompts_per_step: int
    group_size: int
    global_sequences: int
    prompts_per_rank: int
    sequences_per_rank: int
    micro_batch_size: int
    accumulation_steps: int
    steps: int
    max_new_tokens: int
    prompt_tokens: int
    params: int
    memory: dict  # GiB per GPU, by component; 'train_peak' and 'rollout_peak' are the sums that matter
    vllm_gpu_memory_utilization: float
    kv_concurrency: float  # fraction of this rank's sequences whose KV cache fits at once (1 = all)
    seconds: dict  # estimated rollout / train / step seconds on `gpu`
    gpu: str
    fits: bool

    def to_dict(self) -> dict:
        return asdict(self)


def plan(config, world_size: int, gpu_memory_gib: float = H100.memory_gib, micro_batch_size: int | None = None,
         gpu: GPU = H100) -> Plan:
    """Split the config's global batch over world_size GPUs and estimate memory and time per step.

    config: the trainer's TrainConfig (or a dict) with model, prompts_per_step, group_size,
    max_new_tokens, steps, and optionally micro_batch_size, regime, max_prompt_tokens, max_total_tokens.
    gpu_memory_gib: memory per GPU as torch reports it (GiB).
    micro_batch_size: sequences per forward/backward; default the config's, else the largest power
    of two dividing the per-rank sequences whose training peak fits in gpu_memory_gib.
    """
    get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
    model, G, prompts = get("model"), _positive(get, "group_size"), _positive(get, "prompts_per_step")
    if not isinstance(model, str) or not model:
        raise ValueError(f"model={model!r} must be a model name or folder")
    if world_size < 1:
        raise ValueError(f"world_size={world_size!r} must be >= 1")
    if prompts % world_size:
        raise ValueError(f"prompts_per_step={prompts} is not divisible by world_size={world_size}: each rank "
                         f"samples whole groups of G={G}; choose a world_size among {_divisors(prompts)}")
    spec = model_spec(model)
    regime = get("regime")
    needs_ref = getattr(regime, "needs_lp_ref", True)  # a string or missing regime: assume the worst
    T_prompt, T_new = sequence_lengths(get)
    per_rank = prompts // world_size * G
    gpu = GPU(gpu.name, gpu_memory_gib, gpu.bf16_flops, gpu.hbm_bytes_per_s)

    mb = micro_batch_size or get("micro_batch_size") or _auto_micro_batch(spec, per_rank, T_prompt, T_new,
                                                                         world_size, needs_ref, gpu)
    if mb < 1:
        raise ValueError(f"micro_batch_size={mb!r} must be >= 1")
    mb = min(mb, per_rank)
    memory, utilization, concurrency = memory_estimate(spec, per_rank, mb, T_prompt, T_new, world_size,
                                                       needs_ref, gpu)
    seconds = time_estimate(spec, per_rank, T_prompt, T_new, concurrency, needs_ref, gpu)
    return Plan(model=model, world_size=world_size, prompts_per_step=prompts, group_size=G,
                global_sequences=prompts * G, prompts_per_rank=prompts // world_size, sequences_per_rank=per_rank,
                micro_batch_size=mb, accumulation_steps=math.ceil(per_rank / mb), steps=_positive(get, "steps"),
                max_new_tokens=T_new, prompt_tokens=T_prompt, params=spec.params, memory=memory,
                vllm_gpu_memory_utilization=utilization, kv_concurrency=concurrency, seconds=seconds,
                gpu=gpu.name, fits=max(memory["train_peak"], memory["rollout_peak"]) <= gpu_memory_gib
                and math.isfinite(seconds["step"]))


def sequence_lengths(get) -> tuple[int, int]:
    """(prompt tokens, response tokens) the estimates assume: the config's max_prompt_tokens (else PROMPT_TOKENS, at
    most half of max_total_tokens)
    and max_new_tokens, the response cut so that prompt + response <= max_total_tokens when that is set (the
    authors' max_total_sequence_length counts both)."""
    T_prompt, T_new = get("max_prompt_tokens"), _positive(get, "max_new_tokens")
    total = get("max_total_tokens")
    if T_prompt is None:  # assumed, not configured: a small max_total_tokens (a test run) bounds it to half
        T_prompt = PROMPT_TOKENS if total is None else min(PROMPT_TOKENS, total // 2)
    if total is not None:
        if total <= T_prompt:
            raise ValueError(f"max_total_tokens={total} leaves no room for a response after a {T_prompt}-token "
                             "prompt")
        T_new = min(T_new, total - T_prompt)
    return T_prompt, T_new


def memory_estimate(spec: ModelSpec, sequences: int, micro_batch: int, prompt_tokens: int, new_tokens: int,
                    world_size: int, needs_ref: bool = True, gpu: GPU = H100):
    """GiB per GPU by component, the vLLM gpu_memory_utilization to ask for, and the KV concurrency.

    Assumptions (bytes; P parameters, W ranks, S = prompt + new tokens, B = micro-batch):
      policy states  16 P / W   fp32 master weights + fp32 grads + AdamW m and v, FULL_SHARD over W
      reference       2 P       frozen bf16 replica on every rank: no gradients, so no need to shard it
                                (absent when the regime needs no lp_ref)
      gathered        2 x 2 P_layer   FSDP all-gathers one bf16 decoder layer, prefetches the next
      activations    with checkpointing: the bf16 input of every layer, L B S h x 2, plus one layer
                     recomputed with its backward, B S (4 h + 2 (n_q + 2 n_kv) d + 3 I) x 2 x 2
      logits          B T_new V x 10   bf16 logits, fp32 log-softmax and its gradient
      vllm weights    2 P       one bf16 copy per rank (tensor parallel 1: data-parallel rollouts)
      vllm buffers    VLLM_BUFFERS_GIB  its forward activations, sampler, CUDA graphs
      kv cache        sequences x S x kv_bytes_per_token for all of this rank's rollouts at once;
                      vLLM gets what is left and schedules in waves when that is less
    With vLLM sleep mode (level 2) the engine's weights and KV cache are discarded during training (the
    weight sync reloads them), so the peaks are max(train, rollout), not their sum.
    """
    P, S, B, h = spec.params, prompt_tokens + new_tokens, micro_batch, spec.hidden
    d, L = spec.head_dim, spec.layers
    q_kv = (spec.heads + 2 * spec.kv_heads) * d
    gb = {
        "policy_states": 16 * P / world_size / GiB,
        "reference": (2 * P if needs_ref else 0) / GiB,
        "gathered_layers": 2 * 2 * spec.params_per_layer / GiB,
        "activations": (L * B * S * h * 2 + B * S * (4 * h + 2 * q_kv + 3 * spec.intermediate) * 2 * 2) / GiB,
        "logits": B * new_tokens * spec.vocab * 10 / GiB,
        "vllm_weights": 2 * P / GiB,
        "kv_cache_all_sequences": sequences * S * spec.kv_bytes_per_token / GiB,
        "cuda_overhead": CUDA_OVERHEAD_GIB,
    }
    resident = gb["policy_states"] + gb["reference"] + gb["cuda_overhead"]
    gb["train_peak"] = resident + gb["gathered_layers"] + gb["activations"] + gb["logits"]
    gb["vllm_buffers"] = VLLM_BUFFERS_GIB
    engine = gb["vllm_weights"] + gb["vllm_buffers"]
    kv_room = max(0.0, 0.95 * gpu.memory_gib - resident - engine)  # vLLM refuses to plan past the GPU
    kv = min(gb["kv_cache_all_sequences"], kv_room)
    gb["kv_cache"] = kv
    gb["rollout_peak"] = resident + engine + kv
    utilization = (engine + kv) / gpu.memory_gib
    concurrency = kv / gb["kv_cache_all_sequences"] if gb["kv_cache_all_sequences"] else 1.0
    return {k: round(v, 2) for k, v in gb.items()}, round(utilization, 3), round(concurrency, 3)


def time_estimate(spec: ModelSpec, sequences: int, prompt_tokens: int, new_tokens: int, kv_concurrency: float,
                  needs_ref: bool = True, gpu: GPU = H100) -> dict:
    """Seconds per step on one rank (ranks run in parallel), an upper bound: every response at max length.

    rollout: a decode step reads the bf16 weights once and the KV cache of the running sequences,
             at DECODE_BANDWIDTH_EFFICIENCY of HBM bandwidth; new_tokens steps per wave, 1/concurrency
             waves when the KV cache cannot hold every sequence at once.
    train:   FLOPs = (6 P policy forward+backward + 2 P recompute (checkpointing) + 2 P reference
             forward) x tokens, at MFU of the bf16 peak.
    Sleep mode costs no copy: level 2 discards the engine's weights and the weight sync, a GPU-to-GPU copy of
    2 P bytes (negligible), reloads them. (Level 1 would copy 2 P bytes to pinned CPU RAM and back over PCIe
    each step: 16 GB for Qwen3-4B.)
    """
    P, S = spec.params, prompt_tokens + new_tokens
    if kv_concurrency * sequences < 1:  # not even one sequence's KV cache fits: vLLM cannot run
        return {"rollout": math.inf, "train": math.inf, "step": math.inf}
    waves = 1 / kv_concurrency
    running = sequences / waves
    mean_kv = running * (prompt_tokens + new_tokens / 2) * spec.kv_bytes_per_token
    bandwidth = gpu.hbm_bytes_per_s * DECODE_BANDWIDTH_EFFICIENCY
    rollout = waves * new_tokens * (2 * P + mean_kv) / bandwidth
    train = (6 + 2 + (2 if needs_ref else 0)) * P * sequences * S / (gpu.bf16_flops * MFU)
    return {"rollout": round(rollout, 1), "train": round(train, 1), "step": round(rollout + train, 1)}


def vllm_settings(config, world_size: int = 1) -> dict:
    """VLLMEngine keyword arguments for this rank, from the plan: its memory share and max_model_len.

    max_model_len must be set: vLLM otherwise reserves room for the model's full context (262k tokens
    for Qwen3-4B-Instruct-2507), which no KV budget beside the trainer holds.
    """
    import torch

    memory = torch.cuda.get_device_properties(0).total_memory / GiB if torch.cuda.is_available() else H100.memory_gib
    p = plan(config, world_size, memory)
    get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
    return {"gpu_memory_utilization": p.vllm_gpu_memory_utilization,
            "max_model_len": max_model_len(get("max_new_tokens"), get("max_total_tokens"))}


def max_model_len(max_new_tokens: int, max_total_tokens: int | None = None) -> int:
    """vLLM's context length for a run: prompt + response <= max_total_tokens when set (vLLM then stops each
    response there, finish_reason "length"), else room for a MAX_PROMPT_TOKENS prompt plus max_new_tokens."""
    return max_total_tokens if max_total_tokens is not None else MAX_PROMPT_TOKENS + max_new_tokens


def eval_vllm_settings(max_new_tokens: int, max_total_tokens: int | None = None) -> dict:
    """VLLMEngine keyword arguments for `sharpening llm eval`: alone on the GPU, a bounded context."""
    return {"gpu_memory_utilization": EVAL_GPU_MEMORY_UTILIZATION,
            "max_model_len": max_model_len(max_new_tokens, max_total_tokens)}


def _auto_micro_batch(spec, per_rank, T_prompt, T_new, world_size, needs_ref, gpu) -> int:
    """The largest power of two dividing per_rank whose training peak fits in memory (at least 1)."""
    mb = 1
    while per_rank % (mb * 2) == 0:
        memory, _, _ = memory_estimate(spec, per_rank, mb * 2, T_prompt, T_new, world_size, needs_ref, gpu)
        if memory["train_peak"] > 0.9 * gpu.memory_gib:
            break
        mb *= 2
    return mb


def _positive(get, key) -> int:
    value = get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{key}={value!r} must be a positive integer")
    return value


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# ---------------------------------------------------------------------------------------------------
# The dry run: everything that can be checked without weights or GPUs.
# ---------------------------------------------------------------------------------------------------


def dry_run(config, world_size: int = 4, gpu_memory_gib: float = H100.memory_gib) -> str:
    """The resolved config, the per-GPU batch, memory and time estimates and the checks, as text.

    config: a resolved TrainConfig (sharpening.llm.config.load_config). Raises ValueError on what
    cannot run (an unknown model, a batch that does not split over world_size); warns in the text
    about what would run badly.
    """
    import yaml

    p = plan(config, world_size, gpu_memory_gib)
    m, s = p.memory, p.seconds
    regime = getattr(config.regime, "name", config.regime)
    lines = [f"dry run of {config.run_name}: {p.model} ({p.params / 1e9:.2f}B parameters), regime {regime}, "
             f"engine {config.engine}", "", "resolved config:"]
    lines += ["  " + line for line in yaml.safe_dump(config.to_dict(), sort_keys=False).splitlines()]
    lines += [
        "", f"plan on {world_size} x {p.gpu} ({gpu_memory_gib:g} GiB each):",
        f"  global batch    {p.prompts_per_step} prompts x G={p.group_size} = {p.global_sequences} sequences per step",
        f"  per GPU         {p.prompts_per_rank} prompts = {p.sequences_per_rank} sequences; micro-batch "
        f"{p.micro_batch_size} -> {p.accumulation_steps} accumulation steps",
        f"  steps           {p.steps} ({p.steps * p.global_sequences:,} sampled sequences in all)",
        f"  lengths         prompt <= {p.prompt_tokens} (assumed) + response <= {p.max_new_tokens} tokens"
        + (f" (prompt + response <= max_total_tokens={total})" if (total := getattr(config, "max_total_tokens", None))
           else ""),
        "  memory per GPU, GiB (estimated):",
        f"    training      policy states {m['policy_states']} + reference {m['reference']} + activations "
        f"{m['activations']} + logits {m['logits']} + gathered layers {m['gathered_layers']} + CUDA "
        f"{m['cuda_overhead']} = {m['train_peak']}",
        f"    rollout       resident {m['policy_states'] + m['reference'] + m['cuda_overhead']:.2f} + vLLM weights "
        f"{m['vllm_weights']} + vLLM buffers {m['vllm_buffers']} + KV cache {m['kv_cache']} (all sequences at once "
        f"need {m['kv_cache_all_sequences']}) = {m['rollout_peak']}",
        f"    vLLM          gpu_memory_utilization {p.vllm_gpu_memory_utilization}; "
        f"{p.kv_concurrency:.0%} of the rank's sequences decode at once",
        f"  time per step, s (estimated upper bound, every response at max length): rollout {s['rollout']} + "
        f"train {s['train']} = {s['step']}; {p.steps} steps ~ "
        f"{s['step'] * p.steps / 3600:.1f} h",
        "", "checks:",
    ]
    lines += [f"  {'ok  ' if ok else 'WARN'} {text}" for ok, text in _checks(config, p)]
    return "\n".join(lines)


def _checks(config, p: Plan) -> list:
    """(ok, message) for what the dry run can check without weights or GPUs."""
    peak = max(p.memory["train_peak"], p.memory["rollout_peak"])
    checks = [(True, f"model shapes known for {p.model}"),
              (True, f"{p.prompts_per_step} prompts split evenly over {p.world_size} GPUs"),
              (p.fits, f"estimated peak {peak:.1f} GiB fits in {p.gpu}" if p.fits else
               f"estimated peak {peak:.1f} GiB, or the KV cache, does not fit in {p.gpu}: lower micro_batch_size "
               "or use more GPUs")]
    if config.engine != "vllm":
        checks.append((False, f"engine={config.engine!r}: on GPUs use engine=vllm (paged attention, fast decoding)"))
    elif config.is_cap is None:
        checks.append((False, "engine=vllm with is_cap=null: the engine/trainer log-prob mismatch goes "
                              "uncorrected; the paper uses is_cap=20"))
    if config.dtype != "bfloat16":
        checks.append((False, f"dtype={config.dtype!r}: the compute dtype of every forward pass, the reference and "
                              "vLLM; bfloat16 halves their memory (the trained weights stay float32 either way)"))
    dataset = str(config.dataset)
    if dataset.endswith(".jsonl"):
        checks.append((os.path.isfile(dataset), f"dataset file {dataset} exists"))
    return checks
