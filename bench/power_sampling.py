"""pi_ref^alpha on SmolLM2 two ways: sampled at test time (MCMC power sampling) or trained toward (tempered RL).

    python bench/power_sampling.py                      # trains 2 runs, evaluates 5 samplers (hours on 2 busy cores)
    python bench/power_sampling.py --limit 4 --n 2 --steps 2 --out runs/power_smoke   # a few-minute check
    python bench/power_sampling.py --chunks-so-far      # no new power chunk: the table on the problems it has

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

Power sampling costs minutes of CPU per problem, so it runs in chunks of problems; `--chunks-so-far` reports the
chunks already written instead of running the rest, and whenever the methods hold different problems, llm.json's
"paired" entry (and the table) scores every method on the problems they all have, from the per-problem correct
counts: pass@k only (maj@k needs the answers, which eval.json does not keep).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
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
    parser.add_argument("--chunks-so-far", action="store_true",
                        help="power methods: run no new chunk, report the problems their chunks hold so far")
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
        model, seconds, eval_path, res = ["--model", "smollm2"], {}, results / method / "eval.json", None
        if method in TRAINED and not eval_path.exists():
            run_name = f"demo_{method}" + (f"_a{args.alpha:g}" if method == "tempered" else "")
            model = ["--checkpoint", str(trained(cli, out, run_name, TRAINED[method].replace("%g", f"{args.alpha:g}"),
                                                 args.steps, seconds))]
        elif method in TRAINED:  # evaluated already: the checkpoint it names
            model = ["--checkpoint", json.loads(eval_path.read_text())["model"]]
        sampler = {"temperature": ["--sampler", "temperature", "--alpha", f"{args.alpha:g}"],
                   "power": ["--sampler", "power", "--alpha", f"{args.alpha:g}"],
                   "power_stop_at_eos": ["--sampler", "power", "--alpha", f"{args.alpha:g}", "--stop-at-eos"],
                   }.get(method, [])
        cmd = cli + ["eval"] + model + common + sampler + ["--out", str(results / method)]
        if not eval_path.exists():
            t = time.time()
            if method.startswith("power"):  # hours: in resumable chunks, the numbers of the one command above
                # the arguments after `python -m sharpening.cli llm eval`
                res = chunked_eval(cmd[5:], results / method, args.reverse, run=not args.chunks_so_far)
            else:
                sh(cmd)
            if not (method.startswith("power") and args.chunks_so_far):  # a merge of chunks is no eval time
                seconds["eval"] = time.time() - t
        if eval_path.exists():
            res = json.loads(eval_path.read_text())
        if res is not None:
            record(summary_path, method, res, cmd, seconds, out)
    pair_up(summary_path)
    print(table(json.loads(summary_path.read_text())))


def chunked_eval(argv: list[str], out: Path, reverse: bool = False, run: bool = True) -> dict | None:
    """`sharpening llm eval ARGV` run in-process one engine call at a time (n * (64 // n) chains), each call's
    result kept in out/chunks/, so a killed run resumes; the merged eval.json holds the numbers the single command
    gives (same seeds: the call on problems [start, start + 64 // n) uses seed + start; every score is a mean over
    problems, so chunks merge by their problem counts). run=False runs no chunk and returns the merge of those
    written so far (None if none), without writing eval.json; run=True writes and returns the merge of all."""
    from sharpening.atomic import write_atomic
    from sharpening.llm import evaluation
    from sharpening.llm.data import load_problems
    from sharpening.llm.power_sampling import PowerSamplingEngine

    parser = argparse.ArgumentParser()
    evaluation.add_eval_arguments(parser)
    a = parser.parse_args(argv)
    temperature, settings = evaluation._sampler(a)
    problems = load_problems(a.datasets, limit=a.limit)
    per_call = max(1, 64 // a.n)
    starts = range(0, len(problems), per_call)
    if not run:
        parts = [json.loads(path.read_text()) for path in sorted((out / "chunks").glob("*.json"))]
        return merged_chunks(parts, a) if parts else None
    engine = PowerSamplingEngine(evaluation._build_engine(a.engine, a.checkpoint or a.model, a.seed, a.max_new_tokens,
                                                          a.max_total_tokens), settings)
    info = {"run": f"base:{a.model}", "regime": None, "model": a.checkpoint or a.model, "step": None,
            "sampler": {"name": a.sampler, **settings.to_dict()}}
    for start in reversed(starts) if reverse else starts:
        path = out / "chunks" / f"{start:05d}.json"
        if not path.exists():
            print(f"{out.name}: problems {start}..{start + per_call - 1}", flush=True)
            res = evaluate_chunk(evaluation, engine, problems[start:start + per_call], a, temperature, start, info)
            write_atomic(path, json.dumps(res))
    merged = merged_chunks([json.loads((out / "chunks" / f"{start:05d}.json").read_text()) for start in starts], a)
    write_atomic(out / "eval.json", json.dumps(merged, indent=1))
    print(evaluation.format_table(merged))
    return merged


def merged_chunks(parts: list[dict], a) -> dict:
    """The eval.json of the chunks' problems (their first chunk's header, the command's seed)."""
    return {**parts[0], "seed": a.seed, "datasets": {a.datasets: merge([p["datasets"][a.datasets] for p in parts])}}


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


def record(summary_path: Path, method: str, res: dict, cmd: list[str], seconds: dict, out: Path) -> None:
    """Copy one method's scores, costs, per-problem correct counts, command and wall time (eval.json: res) into the
    summary file (read just before it is rewritten, atomically: two invocations with different --only may share
    it)."""
    from sharpening.atomic import write_atomic

    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {"methods": {}}
    d = res["datasets"]["synthetic:add"]
    entry = summary["methods"].get(method, {})
    entry.update({"sampler": res.get("sampler"), "run": res.get("run"), "regime": res.get("regime"),
                  "pass@k": d["pass@k"], "maj@k": d["maj@k"], "mean_length": d["mean_length"],
                  "tokens_per_answer": d.get("tokens_per_answer"), "acceptance": d.get("acceptance"),
                  "num_problems": d["num_problems"], "n": res["n"], "problems": d["problems"],
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


def pair_up(summary_path: Path) -> None:
    """When the methods hold different problems (power sampling stopped part way), add summary["paired"]: every
    method's pass@k (unbiased, from its per-problem correct counts) and the standard error of pass@1 over the
    problems they all hold; drop it when they hold the same ones."""
    from sharpening.atomic import write_atomic
    from sharpening.llm.evaluation import pass_at_k

    summary = json.loads(summary_path.read_text())
    held = {name: {r["id"]: r for r in m["problems"]} for name, m in summary["methods"].items() if "problems" in m}
    fewest = min(held.values(), key=len, default={})
    common = [i for i in fewest if all(i in h for h in held.values())]
    summary.pop("paired", None)
    if len({frozenset(h) for h in held.values()}) > 1:
        paired = {}
        for name, rows in held.items():
            rows = [rows[i] for i in common]
            scores = {k: [pass_at_k(r["n"], r["correct"], int(k)) for r in rows]
                      for k in summary["methods"][name]["pass@k"]}
            paired[name] = {"pass@k": {k: float(np.mean(v)) for k, v in scores.items()},
                            "pass@1_se": float(np.std(scores["1"], ddof=1) / np.sqrt(len(rows))),
                            "correct": [r["correct"] for r in rows]}
        summary["paired"] = {"problems": common, "methods": paired}
    write_atomic(summary_path, json.dumps(summary, indent=1) + "\n")


def table(summary: dict) -> str:
    """The README table: one row per method. With a "paired" entry, pass@k on the problems every method holds
    (pass@1 with its standard error over problems), then pass@1 and pass@max-k on each method's own problems."""
    methods, paired = summary["methods"], summary.get("paired")
    ks = list(next(iter(methods.values()))["pass@k"]) if methods else []
    if paired:
        m = len(paired["problems"])
        head = (f"| method | pass@{ks[0]} ± s.e. ({m} shared) | " + " | ".join(f"pass@{k} ({m})" for k in ks[1:])
                + f" | own problems | pass@{ks[0]} (own) | pass@{ks[-1]} (own) |")
    else:
        head = "| method | " + " | ".join(f"pass@{k}" for k in ks) + " |"
    rows = [head + " length | tokens / answer | acceptance |", "|" + "---|" * (head.count("|") + 2)]
    for name in METHODS:
        if name not in methods:
            continue
        m = methods[name]
        acc = "" if m.get("acceptance") is None else f"{m['acceptance']:.2f}"
        cells = [f"{m['pass@k'][k]:.3f}" for k in ks]
        if paired:
            p = paired["methods"][name]
            cells = ([f"{p['pass@k'][ks[0]]:.2f} ± {p['pass@1_se']:.2f}"] + [f"{p['pass@k'][k]:.2f}" for k in ks[1:]]
                     + [str(m["num_problems"]), f"{m['pass@k'][ks[0]]:.3f}", f"{m['pass@k'][ks[-1]]:.3f}"])
        rows.append(f"| {LABELS[name]} | " + " | ".join(cells)
                    + f" | {m['mean_length']:.1f} | {m['tokens_per_answer']:.1f} | {acc} |")
    return "\n".join(rows)


LABELS = {"base": "(a) π_ref, temperature 1", "temperature": "(b) π_ref, token temperature 1/α",
          "power": "(c) π_ref, MCMC power sampling", "tempered": "(d) RL-trained, tempered α",
          "task_reward": "(e) RL-trained, task reward",
          "power_stop_at_eos": "(c') π_ref, MCMC with the reference's early exit at EOS"}


if __name__ == "__main__":
    main()
