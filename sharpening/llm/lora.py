"""LoRA training (peft): the policy is the base model plus an adapter, and pi_ref is the same model with its
adapter switched off.

    pi_theta:  W x + (alpha / r) B A x   on every target module (A: [r, in], B: [out, r], B = 0 at the start)
    pi_ref:    W x                       the base weights W never change: no second copy of the model is needed

The base weights are frozen and stored in the compute dtype (bfloat16 on a GPU: 2 bytes a parameter, not 16); the
adapter's weights and AdamW's states are float32 (peft's autocast_adapter_dtype), as full training's master weights.
With the adapter off, peft's LoRA layers run `base_layer(x)` alone, so lp_ref is the base model's forward pass
itself (tests/test_lora.py checks it equals the base's log-probs exactly).

Checkpoints and the vLLM engine hold the adapter only (adapter_model.safetensors + adapter_config.json, peft's
format, which vLLM's LoRA loader reads). This module is the only one that imports peft.
"""

from __future__ import annotations

import contextlib
import functools
import json
from pathlib import Path

import torch

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def import_peft():
    try:
        import peft
    except ImportError as err:
        raise ImportError("lora: needs the peft library: pip install -e '.[llm]' (or pip install peft)") from err
    return peft


def apply_lora(model, settings, base_dtype: torch.dtype = torch.float32, base_name: str | None = None):
    """Wrap `model` in a peft LoRA adapter: the base cast to `base_dtype` and frozen, the adapter float32 and
    trainable (A random, B zero: the wrapped model starts as the base exactly). base_name is recorded in
    adapter_config.json as the base model to load with the adapter (cfg.model, e.g. `smollm2`, not a cache path)."""
    peft = import_peft()
    target = settings.target_modules
    config = peft.LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                             target_modules=target[0] if target == ["all-linear"] else list(target),
                             bias="none", task_type="CAUSAL_LM")
    try:
        wrapped = peft.get_peft_model(model.to(base_dtype), config, autocast_adapter_dtype=True)
    except ValueError as err:  # peft: "Target modules {...} not found in the base model"
        raise ValueError(f"lora.target_modules={list(target)!r}: {str(err).splitlines()[0]}") from None
    for p in wrapped.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # the adapter trains in float32 whatever the base's dtype
    if base_name is not None:
        wrapped.peft_config["default"].base_model_name_or_path = base_name
    # the vocabulary is never resized here, so the full embeddings are never saved with the adapter; "auto" would ask
    # the HF hub whether base_name's vocabulary changed (a network call on every checkpoint)
    wrapped.save_pretrained = functools.partial(wrapped.save_pretrained, save_embedding_layers=False)
    return wrapped


def is_lora(model) -> bool:
    """Whether `model` (or the model inside a DDP/FSDP wrapper) is a peft model."""
    return hasattr(getattr(model, "module", model), "peft_config")


@contextlib.contextmanager
def adapter_off(model):
    """The model with its adapter switched off: pi_ref. (FSDP2 shards in place: the peft model is the model.)"""
    with getattr(model, "module", model).disable_adapter():
        yield model


def trainable_parameters(model) -> list:
    """What AdamW updates: the adapter's weights under LoRA, every weight otherwise."""
    return [p for p in model.parameters() if p.requires_grad]


def load_adapter_weights(model, folder) -> None:
    """Load a checkpoint's adapter_model.safetensors into a peft model built with the same settings (resume).
    A weight missing from the file, or one the model does not have, is an error: a silent partial load would
    resume from a different policy."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    device = str(next(model.parameters()).device)
    path = Path(folder) / ADAPTER_WEIGHTS
    if not path.is_file():
        raise ValueError(f"checkpoint {str(folder)!r} has no {ADAPTER_WEIGHTS}: it is not a LoRA checkpoint "
                         "(was the run trained without lora?)")
    weights = load_file(path, device=device)
    result = set_peft_model_state_dict(getattr(model, "module", model), weights)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        raise ValueError(f"checkpoint {str(folder)!r}: adapter weights do not match this lora config (missing "
                         f"{missing[:3]}, unexpected {list(result.unexpected_keys)[:3]})")


def is_adapter_folder(folder) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def adapter_rank(folder) -> int:
    """The rank r of a saved adapter (vLLM's max_lora_rank must be at least this)."""
    return int(json.loads((Path(folder) / ADAPTER_CONFIG).read_text())["r"])


def load_base_and_adapter(folder, base: str | None = None):
    """A saved adapter on its base model, for evaluation: the base named in adapter_config.json (or `base`), float32,
    with the adapter applied unmerged (the same forward pass as in training)."""
    from sharpening.llm.models import load_model

    peft = import_peft()
    name = base or json.loads((Path(folder) / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not name:
        raise ValueError(f"{str(folder)!r}: adapter_config.json names no base model; pass --model")
    return peft.PeftModel.from_pretrained(load_model(name), str(folder)).eval()


def base_model_name(folder) -> str | None:
    return json.loads((Path(folder) / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")


def write_adapter(model, folder) -> int:
    """Write the adapter of a (possibly FSDP2-sharded) peft model as peft's adapter folder, for vLLM's LoRA loader;
    every rank calls it (gathering a DTensor shard is a collective) and writes its own folder. Returns bytes."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    from sharpening.llm.vllm_engine import hf_name

    peft_model = getattr(model, "module", model)
    state = {}
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if "lora_" not in name:
                continue
            if hasattr(tensor, "full_tensor"):
                tensor = tensor.full_tensor()
            state[hf_name(name)] = tensor.detach().to("cpu").contiguous()
    adapter = get_peft_model_state_dict(peft_model, state_dict=state)  # peft's names: the adapter name dropped
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(adapter, folder / ADAPTER_WEIGHTS)
    peft_model.peft_config["default"].save_pretrained(str(folder))
    return sum(t.numel() * t.element_size() for t in adapter.values())
