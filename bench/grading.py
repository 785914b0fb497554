"""Grading one RL step: grade_batch on 256 responses (32 prompts x G = 8) of typical answers, against baselines.

    python bench/grading.py [--repeats 5]   (~1 min on 2 cores)

Two workloads: the CPU demo's "What is a + b?" with SmolLM2-like answers ("7 + 9 = 16}", "16}", "7 + 9}", a
cut-off box; the prefill "\\boxed{" in front), and 32 MATH-500 problems (needs the bundled data) with 8
responses each: ~1.5k characters of reasoning and a final box holding the gold, an equivalent form, a
near miss, another problem's answer, a list hedge, or no box. Each runs in this process through:

- ours:        sharpening.llm.grading.grade_batch (the task reward the trainer uses; workers=1, in-process)
- math-verify: plain verify(parse("\\boxed{gold}"), parse(response)) with its defaults (what TRL's and verl's
               math-verify rewards call)
- old grader:  sharpening/llm/grading.py as of commit OLD_GRADER (before issue #12), if git can show it

The first step (seed 0) of each grader is timed apart (imports, first parses); then `--repeats` more steps, each
with other problems and answers (seeds 1, 2, ...), so that no cache holds a step's answers before it is graded.
Goal: a step's 256 responses graded in under GOAL_S seconds by ours, after the first step.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sharpening.llm.data import load_problems, synthetic_problems
from sharpening.llm.grading import grade_batch

GOAL_S = 1.0
OLD_GRADER = "62f7e66"  # the last commit with the grader of before issue #12
FILLER = ("Let me think step by step. First I write the quantity as a sum of simpler terms, then I simplify "
          "each one and check the arithmetic twice. ") * 12  # ~1.5k characters of reasoning


def addition_step(seed: int = 0) -> tuple[list[str], list[str]]:
    """32 prompts x 8 responses as the CPU demo's policy writes them after the prefill "\\boxed{"."""
    rng = random.Random(seed)
    responses, golds = [], []
    for problem in synthetic_problems(32, "add", 1, seed=seed):
        a, b = map(int, problem.problem.rstrip("?").split("What is ")[1].split(" + "))
        forms = [f"{a} + {b} = {a + b}}}", f"{a + b}}}", f"{a} + {b}}}", f"{a + b + 1}}}", f"{a} + {b} = {a + b}}}.",
                 f"{a + b}}} is the answer.", f"{a} + {b} = {a + b - 1}}}", f"{a + b}"]  # the last never closes
        for k in range(8):
            responses.append("\\boxed{" + rng.choice(forms) if k else "\\boxed{" + forms[0])
            golds.append(problem.answer)
    return responses, golds


def math500_step(seed: int = 0) -> tuple[list[str], list[str]] | None:
    """32 MATH-500 problems x 8 responses: reasoning, then a box with one of the typical answers."""
    try:
        problems = load_problems("math500", limit=32, seed=seed)
    except ValueError:
        return None  # the bundled data is not next to this clone
    rng = random.Random(seed)
    responses, golds = [], []
    for i, problem in enumerate(problems):
        other = problems[(i + 1) % len(problems)].answer
        finals = [problem.answer, f"x = {problem.answer}", other, f"{problem.answer}, {other}",
                  problem.answer + "1", problem.answer]
        for k in range(8):
            if k == 7:
                responses.append(FILLER + "I could not finish.")  # no box
            else:
                responses.append(FILLER + f"Therefore the answer is $\\boxed{{{rng.choice(finals)}}}$.")
            golds.append(problem.answer)
    return responses, golds


def math_verify_batch(responses: list[str], golds: list[str]) -> list[float]:
    from math_verify import parse, verify

    return [float(verify(parse("\\boxed{" + g + "}"), parse(y))) for y, g in zip(responses, golds)]


def old_grader():
    """The grader module as of OLD_GRADER, loaded from git under another name (None without git history)."""
    root = Path(__file__).resolve().parents[1]
    try:
        source = subprocess.run(["git", "show", f"{OLD_GRADER}:sharpening/llm/grading.py"], cwd=root,
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    with tempfile.TemporaryDirectory() as folder:  # loaded into memory, then the file is gone
        path = Path(folder) / "old_grading.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location("old_grading", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def timed(fn, steps):
    """(rewards of all steps, seconds of the first step, mean seconds of the others)."""
    rewards, seconds = [], []
    for responses, golds in steps:
        t = time.perf_counter()
        rewards += fn(responses, golds)
        seconds.append(time.perf_counter() - t)
    return rewards, seconds[0], sum(seconds[1:]) / len(seconds[1:])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="steps timed after the first")
    args = p.parse_args(argv)
    graders = {"ours": grade_batch, "math-verify": math_verify_batch}
    if (old := old_grader()) is not None:
        graders["old grader"] = old.grade_batch
    seeds = range(args.repeats + 1)
    workloads = {"a + b (CPU demo)": [addition_step(seed) for seed in seeds]}
    if math500_step() is not None:
        workloads["MATH-500"] = [math500_step(seed) for seed in seeds]
    met = True
    for name, steps in workloads.items():
        responses = [y for step in steps for y in step[0]]
        print(f"\n{name}: {len(steps)} steps of {len(steps[0][0])} responses, "
              f"{sum(map(len, responses)) / len(responses):,.0f} characters on average")
        print(f"{'grader':12} {'first step':>11} {'per step':>9} {'per response':>13} {'rewarded':>9} {'ratio':>7}")
        ours_s = None
        for grader, fn in graders.items():
            rewards, first_s, step_s = timed(fn, steps)
            ours_s = ours_s or step_s
            print(f"{grader:12} {first_s:10.3f}s {step_s:8.3f}s {1000 * step_s / len(steps[0][0]):10.2f} ms "
                  f"{int(sum(rewards)):>9} {step_s / ours_s:6.2f}x")
        met = met and ours_s < GOAL_S
        print(f"ours: {ours_s:.3f} s per step (goal < {GOAL_S:.1f} s: {'met' if ours_s < GOAL_S else 'NOT met'}); "
              f"ratio = that grader's time / ours")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
