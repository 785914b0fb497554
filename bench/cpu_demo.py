"""The CPU demo: SmolLM2-135M-Instruct trained with task-reward RL and with sharpening, then evaluated.

    python bench/cpu_demo.py                         # the full demo (~30 min on 2 cores)
    python bench/cpu_demo.py --steps 2 --eval-limit 8 --out runs/cpu_demo_smoke   # a 2-step check
    python bench/cpu_demo.py --seeds 1,2,3 --out runs/cpu_demo_seeds   # both regimes once per training seed

1. `sharpening llm eval` of the base model on the held-out problems (100 single-digit additions x 4 samples).
2. `sharpening llm train` with configs/cpu/demo_task_reward.yaml and demo_sharpening.yaml; each run ends with
   the same evaluation (its eval.json).
3. A results table (results.md) and the training curves (curves.png) in the output folder.

--seeds: train each regime once per seed (runs <regime>_seed<N>); the table then ends with each regime's
mean and range over the seeds. The evaluation draws stay the same (eval_seed 0) so seeds differ by training only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ("demo_task_reward", "demo_sharpening")


def sh(cmd: list[str]) -> float:
    print("$", " ".join(cmd), flush=True)
    t = time.time()
    subprocess.run(cmd, check=True)
    return time.time() - t


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/cpu_demo", help="output folder (default runs/cpu_demo)")
    parser.add_argument("--steps", type=int, default=None, help="override the configs' training steps")
    parser.add_argument("--eval-limit", type=int, default=100, help="held-out problems (default 100)")
    parser.add_argument("--seeds", default=None, help="comma-separated training seeds (default: the configs' 42)")
    args = parser.parse_args()
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [None]
    out = Path(args.out)
    cli = [sys.executable, "-m", "sharpening.cli", "llm"]
    seconds = {}
    seconds["base"] = sh(cli + ["eval", "--model", "smollm2", "--datasets", "synthetic:add", "--limit",
                                str(args.eval_limit), "--n", "4", "--ks", "1,2,4", "--max-new-tokens", "32",
                                "--prefill", "\\boxed{", "--template", "plain", "--seed", "0", "--out", str(out / "base")])
    runs = []
    for seed in seeds:
        for config in RUNS:
            run = config if seed is None else f"{config}_seed{seed}"
            overrides = [f"out_dir={out}", f"run_name={run}", f"eval_limit={args.eval_limit}"]
            overrides += [f"steps={args.steps}"] if args.steps else []
            overrides += [f"seed={seed}"] if seed is not None else []
            if (out / run / "metrics.jsonl").exists():
                overrides.append("resume=true")  # a re-run continues (and re-evaluates) instead of failing
            seconds[run] = sh(cli + ["train", "--config", str(ROOT / "configs" / "cpu" / f"{config}.yaml"), *overrides])
            runs.append(run)
    table = results_table(out, seconds, runs)
    (out / "results.md").write_text(table)
    print(table)
    plot_curves(out, out / "curves.png", runs)
    print(f"wrote {out / 'results.md'} and {out / 'curves.png'}")


def results_table(out: Path, seconds: dict, runs: list[str]) -> str:
    rows = ["| model | pass@1 | pass@4 | maj@4 | mean length (tokens) | train reward, first -> last 5 steps "
            "| wall time |",
            "|---|---|---|---|---|---|---|"]
    pass1 = {}
    for name in ["base"] + runs:
        res = json.loads((out / name / "eval.json").read_text())
        d = res["datasets"]["synthetic:add"]
        trend = ""
        if name != "base":
            r = [m["reward/task"] for m in map(json.loads, (out / name / "metrics.jsonl").read_text().splitlines())]
            trend = f"{sum(r[:5]) / len(r[:5]):.2f} -> {sum(r[-5:]) / len(r[-5:]):.2f}"
        rows.append(f"| {name} | {d['pass@k']['1']:.3f} | {d['pass@k']['4']:.3f} | {d['maj@k']['4']:.3f} | "
                    f"{d['mean_length']:.1f} | {trend} | {seconds[name] / 60:.1f} min |")
        pass1.setdefault(name.split("_seed")[0], []).append(d["pass@k"]["1"])
    for regime, values in pass1.items():
        if len(values) > 1:
            rows.append(f"| **{regime}, {len(values)} seeds** | mean {sum(values) / len(values):.3f}, "
                        f"range {min(values):.3f}-{max(values):.3f} | | | | | |")
    return "\n".join(rows) + "\n"


def plot_curves(out: Path, path: Path, runs: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    colors = {config: f"C{i}" for i, config in enumerate(RUNS)}
    for run in runs:
        lines = [json.loads(line) for line in (out / run / "metrics.jsonl").read_text().splitlines()]
        steps = [m["step"] for m in lines]
        config = run.split("_seed")[0]
        for ax, key in zip(axes, ("reward/task", "length/mean", "lp_old/mean")):
            ax.plot(steps, [m[key] for m in lines], marker=".", color=colors[config], alpha=0.8,
                    label=run.removeprefix("demo_"))
            ax.set_xlabel("step")
            ax.set_title(key)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
