"""pi_ref^alpha on SmolLM2 two ways: sampled at test time (MCMC power sampling) or trained toward (tempered RL).

    python bench/power_sampling.py                      # trains 2 runs, evaluates 5 samplers (hours on 2 busy cores)
    python bench/power_sampling.py --limit 4 --n 2 --steps 2 --out runs/power_smoke   # a few-minute check

The CPU demo's task (configs/cpu/demo_task_reward.yaml: single-digit addition "What is a + b?", plain template,
`\\boxed{` prefill, 32 new tokens), evaluated on `--limit` held-out draws x `--n` samples (seed 0):

    (a) base         pi_ref, ancestral sampling at temperature 1
    (b) temperature  pi_ref, token-level temperature 1/alpha
    (c) power        pi_ref, MCMC power sampling toward pi_ref^alpha (sharpening.llm.power_sampling, defaults)
    (d) tempered     the policy RL-trained with Regime.tempered(alpha) (optimum pi_ref^alpha), ancestral
    (e) task_reward  the policy RL-trained with task reward, ancestral

(d) and (e) are trained with the demo config (20 steps; `--steps` overrides), `eval_datasets=[]` (the evaluation
here replaces the trainer's). Every step is skipped when its output exists, so a killed run resumes. The results
(one eval.json per method, and llm.json gathering them with the commands and wall times) go to --results;
`sharpening figures --only power_sampling_llm` draws them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cpu_demo import sh  # bench/ is on the path when this script runs

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "cpu" / "demo_task_reward.yaml"
TRAINED = {"tempered": "regime={preset: tempered, alpha: %g}", "task_reward": "regime=task_reward"}
METHODS = ("base", "temperature", "power", "tempered", "task_reward", "power_stop_at_eos")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/power_sampling", help="training runs (default runs/power_sampling)")
    parser.add_argument("--results", default="results/power_sampling", help="eval.json files and llm.json")
    parser.add_argument("--alpha", type=float, default=4.0, help="alpha of (b), (c) and (d) (default 4)")
    parser.add_argument("--limit", type=int, default=50, help="held-out problems (default 50)")
    parser.add_argument("--n", type=int, default=8, help="samples per problem (default 8)")
    parser.add_argument("--steps", type=int, default=None, help="override the training steps (default: the config's)")
    parser.add_argument("--reverse", action="store_true",
                        help="power methods: take the chunks last first (a second process splits the work)")
    parser.add_argument("--only", nargs="+", choices=METHODS, default=list(METHODS[:5]),
                        help=f"methods to run (default: the first five of {', '.join(METHODS)})")
    args = parser.parse_args()
    out, results = Path(args.out), Path(args.results)
    cli = [sys.executable, "-m", "sharpening.cli", "llm"]
    summary_path = results / "llm.json"
    ks = ",".join(str(k) for k in (1, 2, 4, 8, 16) if k <= args.n)
    common = ["--datasets", "synthetic:add", "--limit", str(args.limit), "--n", str(args.n), "--ks", ks,
              "--max-new-tokens", "32", "--prefill", "\\boxed{", "--template", "plain", "--seed", "0"]
    for method in args.only:
        model, seconds = ["--model", "smollm2"], {}
        if method in TRAINED:
            run_name = f"demo_{method}" + (f"_a{args.alpha:g}" if method == "tempered" else "")
            model = ["--checkpoint", str(trained(cli, out, run_name, TRAINED[method].replace("%g", f"{args.alpha:g}"),
                                                 args.steps, seconds))]
        sampler = {"temperature": ["--sampler", "temperature", "--alpha", f"{args.alpha:g}"],
                   "power": ["--sampler", "power", "--alpha", f"{args.alpha:g}"],
                   "power_stop_at_eos": ["--sampler", "power", "--alpha", f"{args.alpha:g}", "--stop-at-eos"],
                   }.get(method, [])
        cmd = cli + ["eval"] + model + common + sampler + ["--out", str(results / method)]
        if not (results / method / "eval.json").exists():
            t = time.time()
            if method.startswith("power"):  # hours: in resumable chunks, the numbers of the one command above
                chunked_eval(cmd[5:], results / method, args.reverse)  # the arguments after `python -m sharpening.cli llm eval`
            else:
                sh(cmd)
            seconds["eval"] = time.time() - t
        record(summary_path, method, results / method / "eval.json", cmd, seconds, out)
    print(table(json.loads(summary_path.read_text())))


def chunked_eval(argv: list[str], out: Path, reverse: bool = False) -> None:
    """`sharpening llm eval ARGV` run in-process one engine call at a time (n * (64 // n) chains), each call's
    result kept in out/chunks/, so a killed run resumes; the merged eval.json holds the numbers the single command
    gives (same seeds: the call on problems [start, start + 64 // n) uses seed + start; every score is a mean over
    problems, so chunks merge by their problem counts)."""
    from sharpening.atomic import write_atomic
    from sharpening.llm import evaluation
    from sharpening.llm.data import load_problems
    from sharpening.llm.power_sampling import PowerSamplingEngine

    parser = argparse.ArgumentParser()
    evaluation.add_eval_arguments(parser)
    a = parser.parse_args(argv)
    temperature, settings = evaluation._sampler(a)
    problems = load_problems(a.datasets, limit=a.limit)
    engine = PowerSamplingEngine(evaluation._build_engine(a.engine, a.checkpoint or a.model, a.seed), settings)
    info = {"run": f"base:{a.model}", "regime": None, "model": a.checkpoint or a.model, "step": None,
            "sampler": {"name": a.sampler, **settings.to_dict()}}
    per_call = max(1, 64 // a.n)
    starts = range(0, len(problems), per_call)
    for start in reversed(starts) if reverse else starts:
        path = out / "chunks" / f"{start:05d}.json"
        if not path.exists():
            print(f"{out.name}: problems {start}..{start + per_call - 1}", flush=True)
            res = evaluate_chunk(evaluation, engine, problems[start:start + per_call], a, temperature, start, info)
            write_atomic(path, json.dumps(res))
    parts = [json.loads((out / "chunks" / f"{start:05d}.json").read_text()) for start in starts]
    merged = {**parts[0], "seed": a.seed, "datasets": {a.datasets: merge([p["datasets"][a.datasets] for p in parts])}}
    write_atomic(out / "eval.json", json.dumps(merged, indent=1))
    print(evaluation.format_table(merged))


def evaluate_chunk(evaluation, engine, problems, a, temperature, start, info):
    ks = [int(k) for k in a.ks.split(",")]
    return evaluation.evaluate(engine, {a.datasets: problems}, n=a.n, ks=ks, max_new_tokens=a.max_new_tokens,
                               temperature=temperature, top_p=a.top_p, prefill=a.prefill, template=a.template,
                               seed=a.seed + start, info=info)


def merge(parts: list[dict]) -> dict:
    """Data-set summaries of consecutive problem chunks -> the summary of all (means weighted by problem counts)."""
    counts = [p["num_problems"] for p in parts]
    mean = lambda get: sum(c * get(p) for c, p in zip(counts, parts)) / sum(counts)  # noqa: E731
    out = {"num_problems": sum(counts)}
    for key in ("pass@k", "maj@k"):
        out[key] = {k: mean(lambda p: p[key][k]) for k in parts[0][key]}
    for key in ("mean_length", "tokens_per_answer", "acceptance"):
        if all(key in p for p in parts):
            out[key] = mean(lambda p: p[key])
    out["problems"] = [row for p in parts for row in p["problems"]]
    return out


def trained(cli, out: Path, run_name: str, regime: str, steps, seconds: dict) -> Path:
    """Train (or resume) one run with the demo config; returns its final checkpoint."""
    run_dir = out / run_name
    if not (run_dir / "done").exists():
        overrides = [regime, f"run_name={run_name}", f"out_dir={out}", "eval_datasets=[]", "save_every=5",
                     "keep_checkpoints=1"] + ([f"steps={steps}"] if steps else [])
        overrides += ["resume=true"] if (run_dir / "metrics.jsonl").exists() else []
        seconds["train"] = sh(cli + ["train", "--config", str(CONFIG)] + overrides)
        (run_dir / "done").touch()
    return max((run_dir / "checkpoints").glob("step_*"), key=lambda p: int(p.name.removeprefix("step_")))


def record(summary_path: Path, method: str, eval_path: Path, cmd: list[str], seconds: dict, out: Path) -> None:
    """Copy one method's scores, costs, command and wall time into the summary file (read just before it is
    rewritten, atomically: two invocations with different --only may share it)."""
    from sharpening.atomic import write_atomic

    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {"methods": {}}
    res = json.loads(eval_path.read_text())
    d = res["datasets"]["synthetic:add"]
    entry = summary["methods"].get(method, {})
    entry.update({"sampler": res.get("sampler"), "run": res.get("run"), "regime": res.get("regime"),
                  "pass@k": d["pass@k"], "maj@k": d["maj@k"], "mean_length": d["mean_length"],
                  "tokens_per_answer": d.get("tokens_per_answer"), "acceptance": d.get("acceptance"),
                  "num_problems": d["num_problems"], "n": res["n"],
                  "command": " ".join(c if c.isprintable() and " " not in c and "{" not in c else repr(c)
                                      for c in ["sharpening"] + cmd[3:])})
    for key, value in seconds.items():
        entry[f"seconds_{key}"] = round(value, 1)
    metrics = out / (res.get("run") or "") / "metrics.jsonl"
    if method in TRAINED and metrics.is_file():
        r = [json.loads(line)["reward/task"] for line in metrics.read_text().splitlines()]
        entry["train_reward_first_last5"] = [sum(r[:5]) / len(r[:5]), sum(r[-5:]) / len(r[-5:])]
    summary["methods"][method] = entry
    write_atomic(summary_path, json.dumps(summary, indent=1) + "\n")


def table(summary: dict) -> str:
    """The README table: one row per method."""
    methods = summary["methods"]
    ks = list(next(iter(methods.values()))["pass@k"]) if methods else []
    head = "| method | " + " | ".join(f"pass@{k}" for k in ks) + " | length | tokens / answer | acceptance |"
    rows = [head, "|" + "---|" * (len(ks) + 4)]
    for name in METHODS:
        if name not in methods:
            continue
        m = methods[name]
        acc = "" if m.get("acceptance") is None else f"{m['acceptance']:.2f}"
        rows.append(f"| {LABELS[name]} | " + " | ".join(f"{m['pass@k'][k]:.3f}" for k in ks)
                    + f" | {m['mean_length']:.1f} | {m['tokens_per_answer']:.1f} | {acc} |")
    return "\n".join(rows)


LABELS = {"base": "(a) π_ref, temperature 1", "temperature": "(b) π_ref, token temperature 1/α",
          "power": "(c) π_ref, MCMC power sampling", "tempered": "(d) RL-trained, tempered α",
          "task_reward": "(e) RL-trained, task reward",
          "power_stop_at_eos": "(c') π_ref, MCMC with the reference's early exit at EOS"}


if __name__ == "__main__":
    main()
