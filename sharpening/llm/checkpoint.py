"""Checkpoints of a training run, written atomically, and resuming without losing or repeating a step.

    run_dir/checkpoints/step_000020/   model.safetensors + config.json + tokenizer (a loadable HF folder);
                                       a LoRA run: adapter_model.safetensors + adapter_config.json instead (peft's
                                       adapter folder: the adapter only, the base is cfg.model)
                                       trainer_state.pt: step, optimizer, RNG states, bad-step count
                                       sharded/ (multi-GPU runs): every rank's shard of the weights and
                                       of the optimizer state (torch.distributed.checkpoint); the
                                       optimizer in trainer_state.pt is then None
                                       checksums.sha256: the sha256 of every other file (`sha256sum -c`)

A checkpoint is written into a temp folder next to its final place and renamed when complete, so a run
killed mid-save leaves either the previous checkpoints or the new one, never half of one (the temp folder
it leaves is removed on the next start). Resuming loads the newest checkpoint that is intact (every file
matches its checksum and loads), warning about each newer damaged one, and cuts metrics.jsonl back to the
lines of steps <= its step: the steps after it are run (and logged) again, exactly once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from sharpening.messages import first_line
from sharpening.llm.config import write_atomic
from sharpening.llm.runs import CHECKPOINTS

STEP_DIR = re.compile(r"^step_(\d+)$")
STATE_FILE = "trainer_state.pt"
SHARDED_DIR = "sharded"
MANIFEST = "checksums.sha256"
STAGING_PREFIX = ".tmp-step_"  # the temp folders a save writes into before the rename

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A run cannot resume: it has checkpoints, and none of them is intact."""


def checkpoint_dirs(run_dir) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := STEP_DIR.match(p.name)) and (p / STATE_FILE).exists()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir) -> Path | None:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def rng_states() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(run_dir, step: int, model, tokenizer, optimizer, extra=None, keep: int = 2,
                    state_dict=None, staging=None) -> Path:
    """Write checkpoints/step_<step> atomically and delete all but the `keep` newest checkpoints.

    state_dict: the full weights when `model` alone does not hold them (FSDP shards, gathered by the caller);
    optimizer None: its state is not in trainer_state.pt (in staging/sharded, or not saved at all).
    staging: the temp folder to complete and rename (`staging_dir`, where the ranks wrote their shards).

    The learning-rate schedule is a function of the step (trainer.warmup_factor), so the step is its state."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"step_{step:06d}"
    tmp = Path(staging if staging is not None else tempfile.mkdtemp(dir=root, prefix=f"{STAGING_PREFIX}{step:06d}-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        state = {"step": step, "optimizer": None if optimizer is None else optimizer.state_dict(),
                 "rng": rng_states(), **(extra or {})}
        torch.save(state, tmp / STATE_FILE)
        write_manifest(tmp)  # inside the folder before the rename: a checkpoint in place always has its checksums
        if target.exists():  # a re-run of the same step after a resume: the new one replaces it
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in checkpoint_dirs(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(path, model, optimizer) -> dict:
    """Load weights, optimizer and RNG states from a checkpoint folder; returns its state dict. A multi-GPU
    checkpoint (with sharded/) is loaded shard by shard by every rank (a collective)."""
    path = Path(path)
    state = torch.load(path / STATE_FILE, weights_only=False)
    if (path / SHARDED_DIR).is_dir():
        load_sharded(path, model, optimizer)
    elif state["optimizer"] is None:
        raise ValueError(f"checkpoint {str(path)!r} holds no optimizer state: it can be evaluated but not resumed")
    else:
        load_weights(model, path)
        optimizer.load_state_dict(state["optimizer"])
    set_rng_states(state["rng"])
    return state


def load_latest_intact(run_dir, model, optimizer) -> dict | None:
    """Load the newest intact checkpoint of a run (load_checkpoint); its state dict, with "path" added, or None
    if the run has no checkpoint. A damaged checkpoint (a file that fails its checksum or does not load) is
    skipped with a one-line warning; CheckpointError if every checkpoint is damaged, saying why each is."""
    damaged = []
    for path in reversed(checkpoint_dirs(run_dir)):
        reason = verify_checkpoint(path)
        if reason is None:
            try:
                return {**load_checkpoint(path, model, optimizer), "path": path}
            except Exception as err:  # noqa: BLE001  (a truncated file fails in safetensors, zipfile, pickle...)
                reason = f"{type(err).__name__}: {first_line(err)}"
        damaged.append(f"{path.name}: {reason}")
        log.warning("checkpoint %s is damaged (%s); trying the one before it", path, reason)
    if damaged:
        raise CheckpointError(f"cannot resume {str(run_dir)!r}: no checkpoint is intact ({'; '.join(damaged)}); "
                              "delete its checkpoints folder to restart the run from step 0, or choose another "
                              "run_name")
    return None


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _hash_files(folder: Path, names: list[str]) -> list[str]:
    """sha256 of each file, in threads (hashlib releases the GIL: the shards of a sharded checkpoint in parallel)."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1, max(len(names), 1))) as pool:
        return list(pool.map(lambda name: file_sha256(folder / name), names))


def write_manifest(folder) -> None:
    """folder/checksums.sha256: one `<sha256>  <relative path>` line per file (the format `sha256sum -c` reads)."""
    folder = Path(folder)
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    lines = [f"{digest}  {name}\n" for digest, name in zip(_hash_files(folder, names), names)]
    write_atomic(folder / MANIFEST, "".join(lines))


def verify_checkpoint(folder) -> str | None:
    """Why a checkpoint folder is damaged (a listed file missing, or its bytes changed since the save), or None
    if every file matches its checksum. A checkpoint written before the manifest existed is not checked."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        return None
    expected = {}
    for line in (folder / MANIFEST).read_text().splitlines():
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name:
            return f"{MANIFEST} is damaged (a line reads {line[:80]!r})"
        expected[name] = digest
    missing = [name for name in expected if not (folder / name).is_file()]
    if missing:
        return f"{missing[0]} is missing"
    names = sorted(expected)
    bad = [name for name, digest in zip(names, _hash_files(folder, names)) if digest != expected[name]]
    return f"{bad[0]} does not match its checksum (changed or cut short after the save)" if bad else None


def remove_stale_staging(run_dir) -> list[Path]:
    """Delete the temp folders that saves killed mid-write left in run_dir/checkpoints; returns them. Only while
    nothing saves into this run (at its start)."""
    root = Path(run_dir) / CHECKPOINTS
    stale = sorted(p for p in root.glob(f"{STAGING_PREFIX}*") if p.is_dir()) if root.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def staging_dir(run_dir, step: int) -> Path:
    """The temp folder of a multi-rank checkpoint: the same path on every rank, so each can write its shard."""
    return Path(run_dir) / CHECKPOINTS / f"{STAGING_PREFIX}{step:06d}-ranks"


def save_sharded(folder, model, optimizer) -> None:
    """Every rank writes its shard of the weights and of the optimizer state to folder/sharded (a collective).

    torch.distributed.checkpoint: no rank ever holds the whole optimizer state (2 x fp32 per parameter)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer, options=_sharded_options(model))
    model_state = _adapter_only(model, model_state)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=Path(folder) / SHARDED_DIR)


def load_sharded(folder, model, optimizer) -> None:
    """The inverse of save_sharded, into a model and optimizer sharded (or not) the same way (a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    options = _sharded_options(model)
    model_state, optim_state = get_state_dict(model, optimizer, options=options)  # the layout to load into
    state = {"model": _adapter_only(model, model_state), "optimizer": optim_state}
    dcp.load(state, checkpoint_id=Path(folder) / SHARDED_DIR)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=options)


def _adapter_only(model, state: dict) -> dict:
    """A LoRA model's state without its base (ignore_frozen_params misses a tied LM head: it is no parameter of its
    own); any other model's state as it is."""
    from sharpening.llm.lora import is_lora

    return {k: v for k, v in state.items() if "lora_" in k} if is_lora(model) else state


def _sharded_options(model):
    """A LoRA model's shards hold the adapter alone (its frozen base is cfg.model: never saved, never loaded; strict
    off so that load_state_dict accepts the base's absence; dcp.load still fails on a missing adapter shard)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    from sharpening.llm.lora import is_lora

    return StateDictOptions(ignore_frozen_params=True, strict=False) if is_lora(model) else None


def load_weights(model, folder) -> None:
    """Load every *.safetensors shard of `folder` into `model`; only tied copies (lm_head = embeddings) may be
    absent."""
    from safetensors.torch import load_file

    from sharpening.llm.lora import is_lora, load_adapter_weights

    if is_lora(model):  # the checkpoint holds the adapter alone (peft's save_pretrained): the base is unchanged
        return load_adapter_weights(model, folder)
    device = str(next(model.parameters()).device)
    weights = {}
    for shard in sorted(Path(folder).glob("*.safetensors")):
        weights.update(load_file(shard, device=device))
    missing = model.load_state_dict(weights, strict=False).missing_keys
    params = model.state_dict()
    loaded_ptrs = {params[k].data_ptr() for k in params if k not in missing}
    untied = [k for k in missing if params[k].data_ptr() not in loaded_ptrs]
    if untied:
        raise ValueError(f"checkpoint {str(folder)!r} lacks weights {untied[:5]}{'...' if len(untied) > 5 else ''}")


def truncate_metrics(path, step: int) -> int:
    """Keep the metrics lines of steps <= step (atomically); returns how many lines were dropped. A last line cut
    short by a kill mid-write is dropped with a warning; a damaged line before it is an error naming it."""
    path = Path(path)
    if not path.exists():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    total, steps = len(lines), []
    for i, line in enumerate(lines):
        try:
            steps.append(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            if i < len(lines) - 1:
                raise ValueError(f"{path}:{i + 1} is not a metrics line ({type(err).__name__}: {err}); only the last "
                                 "line may be cut short by a kill") from None
            log.warning("%s: dropped its last line, cut short by a kill mid-write: %r", path, line[:80])
            lines = lines[:-1]
    keep = [line for line, s in zip(lines, steps) if s <= step]
    write_atomic(path, "".join(line + "\n" for line in keep))
    return total - len(keep)
