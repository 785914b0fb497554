"""LoRA vs full training on the CPU evidence task: held-out pass@1 per seed and the mean difference (docs/lora.md).

    python bench/cpu_lora_compare.py      # reads results/cpu/<regime>_seed<S> and results/cpu_lora/<regime>_lora_seed<S>

The difference LoRA - full is the mean pass@1 over each arm's finished seeds; its 95% interval is a hierarchical
bootstrap (seeds resampled within each arm, then the 32 held-out questions, shared by both arms: every run is
evaluated on the same questions with the same sampling seed). With one or two LoRA seeds it is a pilot.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REGIMES = ("task_reward", "sharpening")


def per_question(path: Path) -> np.ndarray:
    """pass@1 of each held-out question (correct / n) of one run's eval.json, in question order."""
    (data,) = json.loads(path.read_text())["datasets"].values()
    return np.array([p["correct"] / p["n"] for p in data["problems"]])


def runs(folder: Path, pattern: str) -> list[np.ndarray]:
    return [per_question(p / "eval.json") for p in sorted(folder.glob(pattern)) if (p / "eval.json").is_file()]


def bootstrap_difference(a: list, b: list, draws: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% interval of mean(b) - mean(a): seeds resampled within each arm, then questions (the same for all runs)."""
    rng = np.random.default_rng(seed)
    A, B = np.stack(a), np.stack(b)  # [seeds, questions]
    q = A.shape[1]
    out = np.empty(draws)
    for i in range(draws):
        questions = rng.integers(0, q, q)
        sa, sb = rng.integers(0, len(A), len(A)), rng.integers(0, len(B), len(B))
        out[i] = B[sb][:, questions].mean() - A[sa][:, questions].mean()
    return tuple(np.percentile(out, [2.5, 97.5]))


def main() -> int:
    for regime in REGIMES:
        full = runs(ROOT / "results/cpu", f"{regime}_seed*")
        lora = runs(ROOT / "results/cpu_lora", f"{regime}_lora_seed*")
        if not full or not lora:
            print(f"{regime}: {len(full)} full-training and {len(lora)} LoRA runs finished; nothing to compare")
            continue
        lo, hi = bootstrap_difference(full, lora)
        diff = np.mean([x.mean() for x in lora]) - np.mean([x.mean() for x in full])
        print(f"{regime}: pass@1 full {[round(x.mean(), 3) for x in full]}, LoRA {[round(x.mean(), 3) for x in lora]}; "
              f"LoRA - full {diff:+.3f} [{lo:+.3f}, {hi:+.3f}] ({len(lora)} LoRA seed(s), {len(lora[0])} questions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
