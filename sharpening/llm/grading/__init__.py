"""The task reward r(x, y): 1.0 if the final boxed answer of a response equals the gold answer, else 0.0.

    grade(response, gold)
      1. the answer: the content of the last closed \\boxed{} (a run of boxes side by side is one list answer;
         extract.final_answer). No box, an empty or unclosed one, a sentence with math in it -> 0
      2. caps: a response over MAX_RESPONSE_CHARS, an answer over MAX_ANSWER_CHARS (or 2 x the gold), nested
         deeper than MAX_DEPTH, or holding a number too big to touch (numbers.too_big) -> 0
      3. compare answer and gold (compare.py): lists as sets; a hedge (two values for one, "x = 5 = 7", \\pm)
         and a relation for a value -> 0; relations as relations; plain numbers exactly; a restated
         computation ("0 + 6") for a number -> 0; the rest by math-verify

All three steps run under one wall-clock limit of `timeout` seconds (guard.py: a SIGALRM timer in a main
thread, a killable helper process from other threads), so grade() never raises and never hangs. The grading
policy, with the reason for each rule, is in docs/llm_data_eval.md.
"""

from __future__ import annotations

import multiprocessing

from sharpening.llm.grading.answers import is_prose, normalize
from sharpening.llm.grading.compare import answers_equal, is_expression
from sharpening.llm.grading.extract import extract_boxed, final_answer
from sharpening.llm.grading.guard import call_with_timeout
from sharpening.llm.grading.numbers import RTOL, parse_number, too_big
from sharpening.llm.grading.paper import grade_paper

__all__ = ["grade", "grade_batch", "grade_paper", "grader_reward", "extract_boxed", "final_answer", "parse_number",
           "is_expression", "TIMEOUT_S", "RTOL", "GRADERS"]

GRADERS = ("strict", "paper")  # strict: grade() (ours, the default); paper: grade_paper() (the authors' Math-Verify)

TIMEOUT_S = 1.5  # wall-clock limit of one grade() call (a right answer: < 0.3 s; 1.0 s for the longest Minerva one)
MAX_RESPONSE_CHARS = 1_000_000  # a longer response is a runaway (4096 tokens are ~16k characters)
MAX_ANSWER_CHARS = 256  # longest answer looked at; golds run to 210 characters (minerva_math)
MAX_DEPTH = 32  # deepest brace / bracket nesting looked at; golds nest at most ~6 deep


def grade(response: str, gold: str, timeout: float = TIMEOUT_S) -> float:
    """r = 1.0 if the final boxed answer of response equals gold, else 0.0 (the rules in the module docstring).

    Never raises, never hangs: an error, or grading that takes longer than `timeout` seconds, grades 0.0.
    """
    try:
        warm_up()
        return float(call_with_timeout(__name__, "grade_unguarded", [str(response), str(gold)], timeout, 0.0))
    except Exception:  # a grader bug must not crash training: count it as wrong
        return 0.0


def grade_unguarded(response: str, gold: str) -> float:
    """grade() without the time limit: only ever call it under one (guard.call_with_timeout)."""
    if len(response) > MAX_RESPONSE_CHARS:
        return 0.0
    pred = final_answer(response)
    if not pred:
        return 0.0
    pred, gold = normalize(pred), normalize(gold)
    if (not pred or len(pred) > max(MAX_ANSWER_CHARS, 2 * len(gold)) or nesting_depth(pred) > MAX_DEPTH
            or too_big(pred, gold) or is_prose(pred)):
        return 0.0
    return float(answers_equal(pred, gold))


def nesting_depth(s: str) -> int:
    depth = deepest = 0
    for ch in s:
        if ch in "{([":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "})]":
            depth -= 1
    return deepest


def grader_reward(response: str, gold: str, grader: str = "strict", timeout: float | None = None) -> float:
    """r under the named grader (GRADERS): grade() for "strict", the r of grade_paper() for "paper"."""
    if grader == "strict":
        return grade(response, gold, TIMEOUT_S if timeout is None else timeout)
    if grader == "paper":
        return grade_paper(response, gold, *(() if timeout is None else (timeout,)))[0]
    raise ValueError(f"grader={grader!r} is not one of {list(GRADERS)}")


def grade_batch(responses: list[str], golds: list[str], workers: int = 1, timeout: float | None = None,
                grader: str = "strict") -> list[float]:
    """[r(response_i, gold_i)] under `grader` (GRADERS; default strict = grade()); workers > 1 grades in that
    many spawned processes (~2 s start-up each). timeout: per call (default: the grader's own)."""
    if grader not in GRADERS:
        raise ValueError(f"grader={grader!r} is not one of {list(GRADERS)}")
    if len(responses) != len(golds):
        raise ValueError(f"grade_batch got {len(responses)} responses but {len(golds)} gold answers")
    if workers <= 1 or len(responses) < 2:
        return [grader_reward(y, g, grader, timeout) for y, g in zip(responses, golds)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:  # spawn: no fork of a torch process
        return pool.starmap(grader_reward, [(y, g, grader, timeout) for y, g in zip(responses, golds)],
                            chunksize=max(1, len(responses) // (4 * workers)))


_warm = False
# One comparison of each common kind: the first parse in a process costs ~1 s (sympy and the LaTeX parser warm
# their caches), which must not count against the time limit of a real answer.
_WARM_UP = [("\\frac{\\sqrt{17}-1}{2}", "\\frac{-1+\\sqrt{17}}{2}"), ("2 \\ge x", "x \\le 2"),
            ("(-\\infty, 3]", "(-\\infty,3)"), ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 3 \\end{pmatrix}"),
            ("\\text{Evelyn}", "\\text{Bob}"), ("2\\pi r", "\\pi r^2")]


def warm_up():
    """Import math-verify and sympy and run a few comparisons (~2 s, once per process) before any time limit."""
    global _warm
    if not _warm:
        import logging

        from sharpening.llm.grading.compare import math_verify_equal

        logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # it logs every junk answer it cannot parse
        logging.getLogger("latex2sympy2_extended").setLevel(logging.CRITICAL)
        for pred, gold in _WARM_UP:
            math_verify_equal(pred, gold)
        _warm = True
