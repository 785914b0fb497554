"""CPU runs: keep freed memory in the process for the next step instead of handing it back to the OS.

A training step allocates and frees the same large tensors every time (logits, activations, gradients, the
growing KV cache). glibc's malloc serves blocks above its mmap threshold (128 KiB, rising to at most 32 MiB)
with fresh mmap()s and returns a freed heap top to the OS, so every step page-faults the same memory in
again: with SmolLM2-135M, 8 x 64 tokens, ~260,000 page faults and ~1.4 s of system time per step, 10% of it.
Raising both thresholds keeps that memory in the heap; the process's resident size then stays at a step's
peak. It is what MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ in the environment would do, or the
jemalloc / tcmalloc preload that PyTorch's CPU performance guide recommends; it is skipped when the user
set those variables, and off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt() parameters, <malloc.h>
MMAP_THRESHOLD = 1 << 30  # allocations below 1 GiB come from the heap
TRIM_THRESHOLD = (1 << 31) - 1  # the largest int: a freed heap top is kept


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process. True if they were set."""
    if any(v in os.environ for v in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD")):
        return False  # the user chose an allocator setting: keep it
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl without mallopt, Windows)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
