"""The list of figures `make figures` draws, their settings (full and --quick), and the index README.

Each entry computes with the theory / toy code, draws with its `fig_*` function and is saved as
<out>/<name>.png and <out>/<name>.pdf; <out>/README.md shows every image with one line on what it shows
and the command that made it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Callable

from sharpening.figures import style


class Skipped(Exception):
    """A figure that cannot be drawn with the inputs given (e.g. pass@k without --runs); the message says why."""


@dataclass(frozen=True)
class Options:
    quick: bool = False  # small settings: seconds instead of minutes, noisier curves
    seed: int = 0  # every random draw derives from it: same seed, same figures
    runs: str | None = None  # folder of logged LLM runs (eval.json files) for the pass@k figure


@dataclass(frozen=True)
class Figure:
    name: str
    caption: str  # one line on what it shows
    draw: Callable[[Options], object]  # -> the Axes drawn (raises Skipped when it cannot be drawn)


def _fixed_points(opt: Options):  # closed forms only: no seed, and already fast
    from sharpening.figures.fixed_points import fig_fixed_points

    return fig_fixed_points()


def _training_curves(opt: Options):
    from sharpening.figures.training import fig_training_curves, train_all

    settings = dict(steps=60, seeds=4) if opt.quick else dict(steps=300, seeds=16)
    return fig_training_curves(train_all(seed=opt.seed, **settings))


def _length_bias(opt: Options):
    from sharpening.figures.length_bias import fig_length_bias

    return fig_length_bias(quick=opt.quick, seed=opt.seed)


def _instability(opt: Options):
    from sharpening.figures.instability import fig_instability

    return fig_instability(quick=opt.quick, seed=opt.seed)


def _theory_vs_simulation(opt: Options):
    from sharpening.figures.theory_vs_simulation import fig_theory_vs_simulation

    return fig_theory_vs_simulation(quick=opt.quick, seed=opt.seed)


def _signals(opt: Options):
    from sharpening.figures.signals import fig_signals, train_signals

    settings = dict(steps=60, seeds=4) if opt.quick else dict(steps=300, seeds=16)
    return fig_signals(train_signals(seed=opt.seed, **settings), seed=opt.seed)


def _pass_at_k(opt: Options):
    from sharpening.figures.pass_at_k import fig_pass_at_k, find_evals

    if opt.runs is None:
        raise Skipped("no --runs DIR given; after `sharpening llm eval ... --out runs/<name>` draw it with "
                      "`sharpening figures --only pass_at_k --runs runs`")
    evals = find_evals(opt.runs)
    if not evals:
        raise Skipped(f"no eval.json under --runs {opt.runs!r}; write one with `sharpening llm eval ... --out DIR`")
    return fig_pass_at_k(evals)


def _power_sampling(opt: Options):
    from sharpening.figures.power_sampling import fig_power_sampling

    return fig_power_sampling(quick=opt.quick, seed=opt.seed)


def _power_sampling_llm(opt: Options):  # drawn from the committed results of bench/power_sampling.py
    from sharpening.figures.power_sampling import LLM_RESULTS, fig_power_sampling_llm, load_llm_results

    if not LLM_RESULTS.is_file():
        raise Skipped(f"no {LLM_RESULTS}; write it with `python bench/power_sampling.py`")
    return fig_power_sampling_llm(load_llm_results(LLM_RESULTS))


FIGURES = (
    Figure("fixed_points", "Where each regime converges as α varies: mass on correct answers and expected length "
           "at the closed-form fixed point, on a base model whose mode is right and one whose mode is wrong.",
           _fixed_points),
    Figure("training_curves", "Training curves of task-reward RL, sharpening, tempered and tilted sampling on the "
           "toys: expected task reward, entropy and distance to the fixed point (median and 25-75% over seeds).",
           _training_curves),
    Figure("length_bias", "The length bias: accuracy and expected length vs α at the fixed point and after sampled "
           "training of the sequence toy, normal vs fixed length (EOS ignored); the stop model's E[T] in closed form.",
           _length_bias),
    Figure("instability", "Instability: reward variance and gradient norm vs maximum length (closed forms over "
           "measurements), and the fraction of unstable runs (oscillating, collapsed or diverged) vs lr and α.",
           _instability),
    Figure("theory_vs_simulation", "Closed-form predictions over measurements: mass on correct answers of π_ref^α "
           "vs sampled training, and the predicted step-size limit of gradient ascent vs where it diverges.",
           _theory_vs_simulation),
    Figure("signals", "Where the label-free signals end on the toys whose most likely output is wrong but whose most "
           "likely answer is right: mass on correct answers and on π_ref's mode after training, per seed, with the "
           "exact dynamics and the closed-form fixed point.", _signals),
    Figure("pass_at_k", "pass@k and maj@k (k = 1..n) of each evaluated LLM run, per data set.", _pass_at_k),
    Figure("power_sampling", "π_ref^α three ways on the sequence toy: TV to the closed form vs MCMC steps per block "
           "(exact law of the MCMC sampler, sampled chains, token temperature 1/α, tempered RL), and accuracy and "
           "length vs α.", _power_sampling),
    Figure("power_sampling_llm", "SmolLM2 on single-digit addition: pass@k of π_ref (temperature 1, token "
           "temperature 1/α, MCMC power sampling) and of the tempered- and task-reward-trained policies, and pass@1 "
           "against tokens generated per answer, on the problems every method holds (results/power_sampling/llm.json).",
           _power_sampling_llm),
)
NAMES = tuple(f.name for f in FIGURES)


def by_name(name: str) -> Figure:
    for figure in FIGURES:
        if figure.name == name:
            return figure
    raise ValueError(f"unknown figure {name!r}; choose from {', '.join(NAMES)}")


def make(figure: Figure, opt: Options, outdir: str) -> list[str]:
    """Draw one figure and write it as PNG and PDF; returns the paths (raises Skipped)."""
    return style.save(style.figure_of(figure.draw(opt)), figure.name, outdir)


def command(name: str, opt: Options) -> str:
    """The command that regenerates one figure with these options."""
    flags = [f"--only {name}"] + (["--quick"] if opt.quick else []) + ([f"--seed {opt.seed}"] if opt.seed else [])
    if name == "pass_at_k" and opt.runs:
        flags.append(f"--runs {opt.runs}")
    return "sharpening figures " + " ".join(flags)


def write_index(outdir: str, made: list[str], opt: Options) -> str:
    """(Re)write <outdir>/README.md over every figure present; commands of figures made earlier are kept."""
    os.makedirs(outdir, exist_ok=True)
    path = os.path.join(outdir, "README.md")
    old = open(path).read() if os.path.exists(path) else ""
    lines = ["# Figures", "", "Generated by `make figures` (`python -m sharpening.cli figures`); "
             "each image also exists as PDF. Regenerate one with the command under it.", ""]
    for figure in FIGURES:
        if not os.path.exists(os.path.join(outdir, f"{figure.name}.png")):
            continue
        previous = re.search(rf"`(sharpening figures --only {figure.name}\b[^`]*)`", old)
        cmd = command(figure.name, opt) if figure.name in made or not previous else previous[1]
        lines += [f"## {figure.name}", "", f"![{figure.name}]({figure.name}.png)", "",
                  f"{figure.caption} ([PDF]({figure.name}.pdf))", "", f"`{cmd}`", ""]
    write_text(path, "\n".join(lines))
    return path


def write_text(path: str, text: str) -> None:
    """Write a text file atomically (a temp file in the same folder, then os.replace)."""
    with style.atomic(path) as tmp, open(tmp, "w") as f:
        f.write(text)
