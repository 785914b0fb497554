"""`sharpening toy bandit|sequence`: train under a regime preset, print a summary table, optionally plot.

    sharpening toy bandit --regime sharpening --steps 1000 --seeds 16
    sharpening toy sequence --regime tempered --alpha 2 --L 5 --exact --plot runs/tempered.png
    sharpening toy sequence --regime majority_vote --steps 300

The regime is read by sharpening.theory.cli.regime_from_args (Regime.from_spec: strict, as everywhere).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from sharpening.theory.cli import add_regime_arguments, regime_from_args
from sharpening.toy import bandit, instability, sequence


def add_parser(subparsers):
    toy = subparsers.add_parser("toy", help="bandit and small-sequence simulations")
    sub = toy.add_subparsers(dest="toy_command", metavar="{bandit,sequence}", required=True)
    b = sub.add_parser("bandit", help="K-armed softmax bandit whose most likely arm is wrong")
    b.add_argument("--K", type=int, default=5, help="number of arms, >= 3 (default 5: the canonical bandit)")
    _add_common(b, lr=1.0)
    b.set_defaults(func=run_bandit)
    s = sub.add_parser("sequence", help="small autoregressive model with EOS, enumerated exactly")
    s.add_argument("--L", type=int, default=5, help="maximum length, 1..7 (default 5)")
    s.add_argument("--fixed-length", action="store_true", help="ignore EOS: every rollout has length L")
    _add_common(s, lr=2.0)
    s.set_defaults(func=run_sequence)


def _add_common(p, lr):
    add_regime_arguments(p, default="sharpening")
    p.add_argument("--G", type=int, default=8, help="group size: samples per seed and step (>= 2)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--seeds", type=int, default=8, help="number of independent runs")
    p.add_argument("--lr", type=float, default=lr, help=f"learning rate (default {lr})")
    p.add_argument("--optimizer", choices=bandit.OPTIMIZERS, default="sgd")
    p.add_argument("--max-grad-norm", type=float, help="clip each seed's gradient to this norm")
    p.add_argument("--exact", action="store_true", help="expected-gradient dynamics instead of sampling")
    p.add_argument("--plot", metavar="FILE", help="save the history (reward, distance, entropy) to FILE")
    p.add_argument("--metrics", metavar="FILE", help="append the history to FILE as JSONL, one line per logged step")


def run_bandit(args):
    return _run(args, lambda: bandit.SoftmaxBandit(*bandit.wrong_mode_bandit(args.K)), label=None)


def run_sequence(args):
    if not 1 <= args.L <= 7:
        raise_usage(f"--L={args.L} must be in 1..7 (3**L responses are enumerated)")
    return _run(args, lambda: sequence.paper_model(args.L, args.fixed_length), label=sequence.describe)


def raise_usage(message):
    sys.exit(f"sharpening toy: {message}")


def _run(args, make_policy, label):
    if args.steps < 1:  # the library takes 0 (the initial policy, for sweeps); a run from the command line trains
        raise_usage(f"--steps={args.steps} must be >= 1")
    try:
        regime = regime_from_args(args)
        policy = make_policy()
        result = bandit.train_policy(policy, regime, args.steps, args.G, args.lr, args.seeds, args.exact,
                                     optimizer=args.optimizer, max_grad_norm=args.max_grad_norm, progress=True)
    except ValueError as err:
        raise_usage(err)
    print(summary_table(result, instability.classify(result)))
    if label is not None:
        for name, probs in (("pi_ref", np.exp(policy.lp_ref.numpy())), ("fixed point", result.fixed_point),
                            ("trained", result.probs)):
            if np.isnan(probs).any():
                continue  # no closed form
            print(f"{name:>12}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in label(policy, probs).items()))
    if args.plot:
        plot_history(result, args.plot)
        print(f"wrote {args.plot}")
    if args.metrics:
        append_metrics(result, args.metrics)
        print(f"appended {len(result.steps)} lines to {args.metrics}")
    return 0


def append_metrics(result: bandit.TrainResult, path: str):
    """One flat JSON line per logged step: step, regime, exact, and each history metric's mean over seeds."""
    with open(path, "a") as log:
        for row, step in enumerate(result.steps):
            line = {"step": int(step), "regime": result.regime.name, "exact": result.exact}
            line.update({name: float(getattr(result, name)[row].mean()) for name in bandit.TrainResult.HISTORY})
            log.write(json.dumps(line) + "\n")
            log.flush()


def _fmt(v):
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def summary_table(result: bandit.TrainResult, labels) -> str:
    """Final metrics over seeds (mean, min, max) and the label counts, as aligned text."""
    lines = [f"{result.regime.name}  ({'exact' if result.exact else 'sampled'}, lr={result.lr:g}, "
             f"{len(result.seeds)} seeds, {result.steps[-1]} steps)",
             f"{'metric':<20}{'start':>10}{'mean':>10}{'min':>10}{'max':>10}"]
    for name in bandit.TrainResult.HISTORY:
        h = getattr(result, name)
        last = h[-1]
        lines.append(f"{name:<20}{h[0].mean():>10.4g}{last.mean():>10.4g}{last.min():>10.4g}{last.max():>10.4g}")
    fixed = result.fixed_point
    lines.append("fixed point: no closed form (sharpening.theory.fixed_points)" if np.isnan(fixed).any() else
                 f"fixed point: E[r]={fixed @ result.r:.4g}, E[T]={fixed @ result.lengths:.4g}")
    lines.append("runs: " + ", ".join(f"{k} {v:.0%}" for k, v in instability.fractions(labels).items() if v))
    return "\n".join(lines)


def plot_history(result: bandit.TrainResult, path: str):
    """Task reward, distance to the fixed point and entropy against step, one thin line per seed; atomic write."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2), constrained_layout=True)
    for ax, name, log in zip(axes, ("task_reward", "tv_to_fixed_point", "entropy"), (False, True, False)):
        ax.plot(result.steps, getattr(result, name), lw=0.6, alpha=0.5, color="C0")
        ax.plot(result.steps, getattr(result, name).mean(1), lw=2, color="C1", label="mean over seeds")
        ax.set(xlabel="step", ylabel=name, yscale="log" if log else "linear")
    axes[0].legend()
    fig.suptitle(f"{result.regime.name} ({'exact' if result.exact else 'sampled'})")
    folder, base = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{base}.tmp{os.path.splitext(base)[1]}")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)

