"""`sharpening figures [--out figures] [--runs DIR] [--only NAME ...] [--quick] [--seed N]`."""

from __future__ import annotations

import sys
import time

from sharpening.figures import gallery


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "figures", help="regenerate every figure into figures/",
        description="Draw every paper-style figure as PNG and PDF, and write an index README.md beside them.")
    p.add_argument("--out", default="figures", help="output folder (default: figures)")
    p.add_argument("--runs", default=None, metavar="DIR",
                   help="folder of LLM run results (run folders with config.yaml, metrics.jsonl, eval.json; base "
                        "evaluations' eval.json) drawn by the llm_* figures (default: the committed results/)")
    p.add_argument("--only", nargs="+", default=None, metavar="NAME",
                   help=f"draw only these figures, of: {', '.join(gallery.NAMES)}")
    p.add_argument("--quick", action="store_true", help="small settings (seconds): fewer seeds and steps")
    p.add_argument("--seed", type=int, default=0, help="base seed of every random draw (default: 0)")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch
    from tqdm import tqdm

    try:
        figures = [gallery.by_name(name) for name in args.only] if args.only else list(gallery.FIGURES)
    except ValueError as err:
        print(f"sharpening figures: {err}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)  # the toys' tensors are tiny: threads only add overhead on a shared CPU
    opt = gallery.Options(quick=args.quick, seed=args.seed, runs=args.runs)
    made, report, failed = [], [], False
    start = time.perf_counter()
    for figure in (bar := tqdm(figures, desc="figures", unit="fig")):
        bar.set_postfix_str(figure.name)
        t = time.perf_counter()
        try:
            paths = gallery.make(figure, opt, args.out)
        except gallery.Skipped as why:
            report.append(f"  {figure.name:<22} skipped: {why}")
            continue
        except ValueError as err:  # bad input found at the boundary (e.g. a malformed eval.json)
            report.append(f"  {figure.name:<22} FAILED: {err}")
            failed = True
            continue
        made.append(figure.name)
        report.append(f"  {figure.name:<22} {time.perf_counter() - t:6.1f} s  {', '.join(paths)}")
    index = gallery.write_index(args.out, made, opt)
    print("\n".join(report))
    print(f"{len(made)} figure(s) in {time.perf_counter() - start:.1f} s; index: {index}")
    return 2 if failed else 0
