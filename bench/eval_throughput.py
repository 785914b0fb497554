"""Evaluation samples per second: today's evaluate() + HFEngine against the code at a baseline commit, same process.

    OMP_NUM_THREADS=2 python bench/eval_throughput.py [--limit 16] [--n 8] [--repeats 2] [--baseline e84c7ed]

The evidence grid's evaluation settings (configs/cpu/grid/base.yaml: synthetic:add:2, template worked_sum, prefill
"\\boxed{", up to 32 new tokens, seed 0) on `limit` problems x n samples. The two sides run alternately `repeats`
times each; the printout gives each side's median wall time, samples/s and the ratio, and checks that both return
the same per-problem correct counts (the seed -> sample map is kept; see docs/performance.md).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from baseline import BASELINE, at_commit  # bench/ is on the path when this script runs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=16, help="problems (default 16)")
    parser.add_argument("--n", type=int, default=8, help="samples per problem (default 8)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side, interleaved (default 2)")
    parser.add_argument("--baseline", default=BASELINE, help=f"the commit to compare with (default {BASELINE})")
    args = parser.parse_args()
    from sharpening.llm import evaluation
    from sharpening.llm.data import load_problems
    from sharpening.llm.models import load_model, load_tokenizer
    from sharpening.llm.rollout import HFEngine

    old_rollout = at_commit("sharpening/llm/rollout.py", args.baseline)
    old_evaluation = at_commit("sharpening/llm/evaluation.py", args.baseline)
    model, tok = load_model("smollm2").eval(), load_tokenizer("smollm2")
    problems = load_problems("synthetic:add:2", limit=args.limit)
    sides = {"baseline": (old_evaluation.evaluate, old_rollout.HFEngine(model, tok)),
             "ours": (evaluation.evaluate, HFEngine(model, tok))}
    kwargs = dict(n=args.n, ks=(1,), max_new_tokens=args.max_new_tokens, prefill="\\boxed{", template="worked_sum",
                  seed=0)
    from sharpening.llm.grading import warm_up
    warm_up()
    times, results = {k: [] for k in sides}, {}
    print(f"{args.limit} problems x {args.n} samples, <= {args.max_new_tokens} tokens, "
          f"{torch.get_num_threads()} torch threads; baseline = {args.baseline}")
    for rep in range(args.repeats):
        for name, (evaluate, engine) in sides.items():
            t = time.perf_counter()
            results[name] = evaluate(engine, problems, **kwargs)["datasets"]["problems"]
            times[name].append(time.perf_counter() - t)
            print(f"  {name:9} run {rep}: {times[name][-1]:.1f} s", flush=True)
    samples = args.limit * args.n
    med = {k: statistics.median(v) for k, v in times.items()}
    for k in sides:
        print(f"{k:9} {med[k]:8.1f} s  {samples / med[k]:6.2f} samples/s   pass@1 {results[k]['pass@k']['1']:.3f}")
    print(f"speed-up (baseline / ours wall time): {med['baseline'] / med['ours']:.2f}x")
    same = [a["correct"] for a in results["baseline"]["problems"]] == [b["correct"] for b in results["ours"]["problems"]]
    print(f"same correct count on every problem: {same}")


if __name__ == "__main__":
    main()
