"""LoRA vs full training on the CPU evidence task: held-out pass@1 per seed and the mean difference (docs/lora.md).

    python bench/cpu_lora_compare.py      # reads results/cpu/<regime>_seed<S> and results/cpu_lora/<regime>_lora_seed<S>

The difference LoRA - full and each arm's mean come with 95% intervals from sharpening.stats (the hierarchical bootstrap
every evidence table uses: seeds resampled within each arm, the 32 held-out questions shared by both arms, since every
run is evaluated on the same questions with the same sampling seed). A pilot: 32 questions, few LoRA seeds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the package of this checkout, also when run as a plain script

from sharpening.stats import difference_ci, mean_ci  # noqa: E402
REGIMES = ("task_reward", "sharpening")


def per_question(path: Path) -> np.ndarray:
    """pass@1 of each held-out question (correct / n) of one run's eval.json, in question order."""
    (data,) = json.loads(path.read_text())["datasets"].values()
    return np.array([p["correct"] / p["n"] for p in data["problems"]])


def runs(folder: Path, pattern: str) -> list[np.ndarray]:
    return [per_question(p / "eval.json") for p in sorted(folder.glob(pattern)) if (p / "eval.json").is_file()]


def main() -> int:
    for regime in REGIMES:
        full = runs(ROOT / "results/cpu", f"{regime}_seed*")
        lora = runs(ROOT / "results/cpu_lora", f"{regime}_lora_seed*")
        if not full or not lora:
            print(f"{regime}: {len(full)} full-training and {len(lora)} LoRA runs finished; nothing to compare")
            continue
        full, lora = np.stack(full), np.stack(lora)  # [seeds, questions]
        print(f"{regime}: pass@1 per seed: full {[round(x.mean(), 3) for x in full]}, LoRA "
              f"{[round(x.mean(), 3) for x in lora]}; mean full {mean_ci(full).plain()}, LoRA {mean_ci(lora).plain()}; "
              f"LoRA - full {difference_ci(lora, full)} ({len(lora)} LoRA seed(s), {lora.shape[1]} questions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
