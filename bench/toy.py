"""Throughput of the sampled bandit: 1024 seeds at once against a plain one-seed-at-a-time loop.

    python bench/toy.py [--seeds 1024] [--steps 200] [--loop-seeds 16]

Both run sharpening.toy.bandit.train (sampled, G = 8, tempered alpha = 2) in this process; the loop runs
`--loop-seeds` seeds one by one and is extrapolated per seed-step. Goal: at least 50x. The vectorized
run's seeds equal the loop's seed for seed (each seed has its own random stream), which is checked.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from sharpening.objective import Regime
from sharpening.toy.bandit import train, wrong_mode_bandit

GOAL = 50.0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=1024)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--loop-seeds", type=int, default=16)
    args = p.parse_args(argv)
    lp_ref, r = wrong_mode_bandit()

    def run(seeds):
        return train(Regime.tempered(2.0), lp_ref, r, args.steps, 8, 1.0, seeds, log_every=args.steps)

    run(4)  # warm up

    t = time.perf_counter()
    together = run(args.seeds)
    vectorized = args.seeds * args.steps / (time.perf_counter() - t)

    t = time.perf_counter()
    alone = [run([s]).probs[0] for s in range(args.loop_seeds)]
    loop = args.loop_seeds * args.steps / (time.perf_counter() - t)

    np.testing.assert_allclose(together.probs[: args.loop_seeds], np.stack(alone), atol=1e-9)
    ratio = vectorized / loop
    print(f"vectorized: {args.seeds} seeds x {args.steps} steps: {vectorized:,.0f} seed-steps/s")
    print(f"loop:       {args.loop_seeds} seeds one at a time:   {loop:,.0f} seed-steps/s")
    print(f"ratio:      {ratio:.0f}x (goal >= {GOAL:.0f}x: {'met' if ratio >= GOAL else 'NOT met'})")
    return 0 if ratio >= GOAL else 1


if __name__ == "__main__":
    raise SystemExit(main())
