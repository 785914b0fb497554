"""The `sharpening` command: a thin dispatcher; each area owns its sub-commands in `<area>/cli.py`.

    sharpening theory ...                       closed-form fixed points of a small example
    sharpening toy bandit|sequence ...          toy simulations
    sharpening llm train|eval ...               the LLM trainer and evaluator
    sharpening figures [--runs DIR]             every paper-style figure
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module with add_parser(subparsers) that sets args.func, one-line help)
COMMANDS = {
    "theory": ("sharpening.theory.cli", "closed-form fixed points and analysis of a small example"),
    "toy": ("sharpening.toy.cli", "bandit and small-sequence simulations"),
    "llm": ("sharpening.llm.cli", "train and evaluate language models"),
    "figures": ("sharpening.figures.cli", "regenerate every figure into figures/"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sharpening",
        description="Does RL teach new skills, or only sharpen the base model's distribution?",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        try:
            importlib.import_module(module).add_parser(sub)
        except ImportError as err:  # an area whose optional extra is missing still lists itself
            p = sub.add_parser(name, help=f"{help_text} (unavailable: {err})")
            p.set_defaults(func=lambda args, err=err: sys.exit(f"sharpening: {err}"))
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
