"""The list of figures `make figures` draws, their settings (full and --quick), and the index README.

Each entry computes with the theory / toy code, draws with its `fig_*` function and is saved as
<out>/<name>.png and <out>/<name>.pdf; <out>/README.md shows every image with one line on what it shows
and the command that made it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sharpening.figures import style


class Skipped(Exception):
    """A figure that cannot be drawn with the inputs given (e.g. pass@k without --runs); the message says why."""


@dataclass(frozen=True)
class Options:
    quick: bool = False  # small settings: seconds instead of minutes, noisier curves
    seed: int = 0  # every random draw derives from it: same seed, same figures
    runs: str | None = None  # folder of LLM run results for the llm_* figures (default: the committed results/)


@dataclass(frozen=True)
class Figure:
    name: str
    caption: str  # one line on what it shows
    draw: Callable[[Options], object]  # -> the Axes drawn (raises Skipped when it cannot be drawn)
    claim: str = ""  # the claim(s) of the README's claims table it bears on
    markdown: Callable[[Options], str] | None = None  # a Markdown twin written as <name>.md, if any


def default_results() -> str | None:
    """The committed LLM results: ./results when it exists (a checkout's root), else the results/ folder next to
    the installed package (an editable install), else None."""
    for candidate in (Path("results"), Path(__file__).resolve().parents[2] / "results"):
        if candidate.is_dir():
            return str(candidate)
    return None


def llm_results(opt: Options):
    """The LLM results the llm_* figures draw: --runs DIR, else the committed results/ (Skipped if none)."""
    from sharpening.figures.llm_runs import load_results

    root = opt.runs or default_results()
    if root is None:
        raise Skipped("no results/ folder here and no --runs DIR given (`make cpu-grid` writes results/cpu)")
    results = load_results(root)
    if not results.runs and not results.base:
        raise Skipped(f"no LLM runs (config.yaml) or base evaluations (eval.json) under {root}")
    return results


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
        raise Skipped("no --runs DIR given (it draws each eval.json of a folder one by one; llm_pass_at_k draws the "
                      "committed results by regime): `sharpening figures --only pass_at_k --runs runs`")
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


def _llm(name: str):
    """The draw function of one llm_* figure: fig_<name>(results)."""
    def draw(opt: Options):
        from sharpening.figures import llm

        try:
            return getattr(llm, f"fig_{name}")(llm_results(opt))
        except llm.NoData as why:
            raise Skipped(str(why)) from None
    return draw


def _llm_results_markdown(opt: Options) -> str:
    from sharpening.figures.llm_runs import results_markdown

    return results_markdown(llm_results(opt))


FIGURES = (
    Figure("fixed_points", "Where each regime converges as α varies: mass on correct answers and expected length "
           "at the closed-form fixed point, on a base model whose mode is right and one whose mode is wrong. The "
           "task reward's tilt keeps the correct answers only while α ≪ β⁻¹ (β⁻¹ = 100 loses them near α ≈ 75).",
           _fixed_points, claim="1, 2, 4, 5"),
    Figure("training_curves", "Training curves of task-reward RL, sharpening, tempered and tilted sampling on the "
           "toys: expected task reward, entropy and distance to the fixed point (median and 25-75% over seeds).",
           _training_curves, claim="1, 5"),
    Figure("length_bias", "The length bias: accuracy and expected length vs α at the fixed point and after sampled "
           "training of the sequence toy, normal vs fixed length (EOS ignored); the stop model's E[T] in closed form.",
           _length_bias, claim="2"),
    Figure("instability", "Instability: reward variance and gradient norm vs maximum length (closed forms over "
           "measurements), and the fraction of unstable runs (oscillating, collapsed or diverged) vs lr and α.",
           _instability, claim="3"),
    Figure("theory_vs_simulation", "Closed-form predictions over measurements: mass on correct answers of π_ref^α "
           "vs sampled training, and the predicted step-size limit of gradient ascent vs where it diverges.",
           _theory_vs_simulation, claim="3, 4"),
    Figure("llm_training_curves", "LLM training curves per regime (median and range over seeds): task reward, "
           "shaped reward, response length, lp_ref and Monte Carlo KL to π_ref per step.", _llm("llm_training_curves"),
           claim="1, 2, 3, 5"),
    Figure("llm_pass_at_k", "Held-out pass@k and maj@k (k = 1..16) of the base model and after training, per "
           "regime (mean and range over seeds).", _llm("llm_pass_at_k"), claim="4, 6"),
    Figure("llm_length_bias", "The length bias on the LLM: lp_ref against length of base-model samples (correct "
           "vs wrong), and held-out response length and pass@1 per regime, fixed-length variants beside normal.",
           _llm("llm_length_bias"), claim="1, 2"),
    Figure("llm_instability", "LLM instability: the reward's variance across samples vs response length at step 0 "
           "(sharpening vs the task reward's p(1-p)), the fraction of unstable runs vs learning rate, and the "
           "learning-rate sweep's lp_ref curves.", _llm("llm_instability"), claim="3, 5"),
    Figure("llm_signals", "The label-free signals on the LLM (no label used in training): the training batches' "
           "graded task reward per step, held-out pass@1 and maj@16, next to task reward and sharpening.",
           _llm("llm_signals"), claim="7"),
    Figure("llm_results", "The LLM results table (also llm_results.md): held-out pass@1, pass@16, maj@16, length, "
           "final training reward and lp_ref, unstable runs, per regime.", _llm("llm_results_table"),
           claim="1-6", markdown=_llm_results_markdown),
    Figure("signals", "Where the label-free signals end on the toys whose most likely output is wrong but whose most "
           "likely answer is right: mass on correct answers and on π_ref's mode after training, per seed, with the "
           "exact dynamics and the closed-form fixed point.", _signals, claim="7"),
    Figure("pass_at_k", "pass@k and maj@k (k = 1..n) of each evaluated LLM run of a --runs DIR, one curve per "
           "eval.json.", _pass_at_k, claim="6"),
    Figure("power_sampling", "π_ref^α three ways on the sequence toy: TV to the closed form vs MCMC steps per block "
           "(exact law of the MCMC sampler, sampled chains, token temperature 1/α, tempered RL), and accuracy and "
           "length vs α.", _power_sampling, claim="8"),
    Figure("power_sampling_llm", "SmolLM2 on single-digit addition: pass@k of π_ref (temperature 1, token "
           "temperature 1/α, MCMC power sampling) and of the tempered- and task-reward-trained policies, and pass@1 "
           "against tokens generated per answer, on the problems every method holds (results/power_sampling/llm.json).",
           _power_sampling_llm, claim="8"),
)
NAMES = tuple(f.name for f in FIGURES)


def by_name(name: str) -> Figure:
    for figure in FIGURES:
        if figure.name == name:
            return figure
    raise ValueError(f"unknown figure {name!r}; choose from {', '.join(NAMES)}")


def make(figure: Figure, opt: Options, outdir: str) -> list[str]:
    """Draw one figure and write it as PNG and PDF (and its Markdown twin); returns the paths (raises Skipped)."""
    paths = style.save(style.figure_of(figure.draw(opt)), figure.name, outdir)
    if figure.markdown is not None:
        paths.append(os.path.join(outdir, f"{figure.name}.md"))
        write_text(paths[-1], figure.markdown(opt))
    return paths


def command(name: str, opt: Options) -> str:
    """The command that regenerates one figure with these options."""
    flags = [f"--only {name}"] + (["--quick"] if opt.quick else []) + ([f"--seed {opt.seed}"] if opt.seed else [])
    if (name == "pass_at_k" or name.startswith("llm_")) and opt.runs:
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
        links = f"[PDF]({figure.name}.pdf)" + (f", [Markdown]({figure.name}.md)" if figure.markdown else "")
        plural = "s" if any(c in figure.claim for c in ",-") else ""
        claim = f" Claim{plural} {figure.claim} of the README's claims table." if figure.claim else ""
        lines += [f"## {figure.name}", "", f"![{figure.name}]({figure.name}.png)", "",
                  f"{figure.caption}{claim} ({links})", "", f"`{cmd}`", ""]
    write_text(path, "\n".join(lines))
    return path


def write_text(path: str, text: str) -> None:
    """Write a text file atomically (a temp file in the same folder, then os.replace)."""
    with style.atomic(path) as tmp, open(tmp, "w") as f:
        f.write(text)
