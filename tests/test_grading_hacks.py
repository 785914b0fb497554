"""Answers a policy could learn to write to collect reward without being right, each with the verdict a careful
math teacher gives under the instruction "put your final answer in \\boxed{}", and the reason.

Issue #12's three defect lists come first, verbatim; then the reward-hacking set: hedges, relations for values,
restating the question, empty / unclosed / several boxes, text after the box, giant numbers, deep nesting.
"""

import pytest

from sharpening.llm.grading import grade


def boxed(answer: str) -> str:
    return f"Working it out step by step.\nSo the answer is $\\boxed{{{answer}}}$."


# (response, gold, verdict, reason)
ISSUE_FALSE_POSITIVES = [
    (boxed("n >= 3"), "3", 0, "a relation, not the value 3 (>= is not cut at its '=')"),
    (boxed("x != 5"), "5", 0, "x is anything but 5"),
    (boxed("x <= 2"), "2", 0, "a range of values, not 2"),
    (boxed("x = 5 \\text{ or } x = 7"), "7", 0, "a hedge: two values for one"),
    (boxed("x = 5, x = 7"), "7", 0, "a hedge: two values for one"),
    (boxed("10100"), "10, 100", 0, "the gold is the list 10, 100 (a comma and a space), not ten thousand one hundred"),
]
ISSUE_FALSE_NEGATIVES = [
    (boxed("x <= 2"), "x \\leq 2", 1, "<= is \\leq"),
    (boxed("x != 5"), "x \\neq 5", 1, "!= is \\neq"),
    (boxed("\\frac{1}{3} \\approx 0.333"), "\\frac{1}{3}", 1,
     "one value written exactly and rounded; the rounding is checked (see the approximations below)"),
]
ISSUE_HANGS = [
    (boxed("1e99999999"), "6", 0, "a number with 10^8 digits: rejected before any arithmetic"),
    (boxed("1\\times10^{99999999}"), "6", 0, "the same in LaTeX"),
    (boxed("-1e-99999999"), "6", 0, "a tiny number with a huge exponent"),
    (boxed("1e9999999"), "6", 0, "10^7 digits"),
    ("\\boxed{" * 8000, "6", 0, "8000 unclosed boxes: no answer, found in one pass"),
]

HEDGES = [
    (boxed("5 or 7"), "7", 0, "two candidates"),
    (boxed("either 5 or 7"), "7", 0, "two candidates"),
    (boxed("\\text{5 or 7}"), "7", 0, "two candidates in words"),
    (boxed("5, 7"), "7", 0, "a list for one value"),
    (boxed("5; 7"), "7", 0, "a list for one value"),
    (boxed("7 \\text{ and } 5"), "7", 0, "two values"),
    (boxed("\\{5, 7\\}"), "7", 0, "a set of two values"),
    ("The answer is $\\boxed{5}$ or $\\boxed{7}$.", "7", 0, "two boxes side by side are one answer: two values"),
    ("$\\boxed{5}$, $\\boxed{7}$", "7", 0, "two boxes side by side are one answer: two values"),
    (boxed("\\pm 7"), "7", 0, "+7 and -7 are two values"),
    (boxed("7 \\pm 0"), "7", 0, "a plus-minus answer names two values (here equal, but written as a hedge)"),
    (boxed("x = 5 = 7"), "7", 0, "a chain that states 5 and 7"),
    (boxed("7 = 5"), "7", 0, "a false equation"),
    (boxed("\\frac{1}{3} \\approx 0.5"), "\\frac{1}{3}", 0, "0.5 is no rounding of 1/3: two values"),
    (boxed("\\pi \\approx 3.15"), "\\pi", 0, "3.15 is neither pi rounded nor cut off"),
    (boxed("10, 100"), "10100", 0, "a list is not one number"),
    (boxed("10,100"), "10, 100", 0, "a comma before exactly three digits, no space, is a thousands separator: 10100"),
    # what is not a hedge
    (boxed("10, 100"), "10, 100", 1, "the list itself"),
    (boxed("100, 10"), "10, 100", 1, "a list of values in another order"),
    (boxed("10,000"), "10000", 1, "a thousands separator"),
    (boxed("7, 7"), "7", 1, "one value, repeated"),
    (boxed("\\pm 7"), "\\pm 7", 1, "the gold itself is two values"),
    (boxed("-7, 7"), "\\pm 7", 1, "the two values of the gold"),
    (boxed("1+\\sqrt{19}, 1-\\sqrt{19}"), "1 \\pm \\sqrt{19}", 1, "the two values of the gold"),
    (boxed("\\frac{-1 \\pm \\sqrt{17}}{2}"), "\\frac{-1+\\sqrt{17}}{2}, \\frac{-1-\\sqrt{17}}{2}", 1,
     "both roots of the gold, written with \\pm"),
    (boxed("-2, -12"), "-2 \\text{ or } -12", 1, "the gold's two solutions"),
    (boxed("2, 3, 4"), "2, 3, \\text{ and } 4", 1, "the gold's three values"),
    ("The roots are $\\boxed{-2}$ and $\\boxed{1}$.", "1, -2", 1, "side-by-side boxes are one list answer"),
    (boxed("a_{37} = 19, a_3 = 2"), "a_3 = 2, a_{37} = 19", 1, "the same labelled values"),
    (boxed("a_{37} = 2, a_3 = 19"), "a_3 = 2, a_{37} = 19", 0, "the values under the wrong labels"),
    (boxed("7 \\approx 7.0"), "7", 1, "one value, and a correct rounding of it"),
    (boxed("\\frac{2}{3} \\approx 0.67"), "\\frac{2}{3}", 1, "rounded correctly"),
    (boxed("\\frac{2}{3} \\approx 0.66"), "\\frac{2}{3}", 1, "cut off correctly"),
    (boxed("\\frac{1}{3} \\approx 0.333"), "0.333", 1, "the rounded value the gold asks for, with its exact value"),
    (boxed("x \\approx 0.333"), "\\frac{1}{3}", 0, "only an approximation of an exact gold"),
    (boxed("\\$\\frac{2}{3} \\approx \\$0.67"), "\\$0.67", 1, "the gold's value, after its exact form"),
]

RELATIONS = [
    (boxed("n \\geq 3"), "3", 0, "a relation for a value"),
    (boxed("x < 2"), "2", 0, "a relation for a value"),
    (boxed("x \\ne 5"), "5", 0, "a relation for a value"),
    (boxed("x \\le 2"), "x \\leq 2", 1, "the same relation"),
    (boxed("2 \\geq x"), "x \\le 2", 1, "the same relation, turned around"),
    (boxed("x > 5"), "x \\gt 5", 1, "> is \\gt"),
    (boxed("x < 2"), "x \\le 2", 0, "strict and non-strict differ at 2"),
    (boxed("x \\ge 2"), "x \\le 2", 0, "the opposite relation"),
    (boxed("x \\in [-2, 7]"), "[-2, 7]", 1, "membership in the gold interval names it"),
    (boxed("x \\le 2"), "(-\\infty, 2]", 0, "strict by policy: an interval gold wants the interval, as math-verify's "
                                                "default (allow_set_relation_comp=False) decides"),
]

RESTATING = [
    (boxed("What is 7 + 9?"), "16", 0, "the question copied"),
    (boxed("7 + 9"), "16", 0, "the computation, not its result"),
    (boxed("2(3)"), "6", 0, "a product left unevaluated"),
    (boxed("(2)(3)"), "6", 0, "a product left unevaluated"),
    (boxed("2 3"), "6", 0, "two numbers side by side are not a value"),
    (boxed("2 3"), "23", 0, "digits split by a space are not one number"),
    (boxed("7 + 9 = 16"), "16", 1, "the computation and its result: the value is 16"),
    (boxed("16 = 7 + 9"), "16", 0, "ends in the restated sum"),
    (boxed("7 + 9 = 15"), "15", 0, "a false step: 7 + 9 is 16"),
    (boxed("x + 1 = 5"), "5", 0, "an equation, not a value"),
    (boxed("x + 1 = 5"), "4", 0, "an equation, not its solution"),
    (boxed("x = 5"), "5", 1, "the value, with its name"),
    (boxed("12/2"), "6", 1, "a single fraction is a value"),
]

BOXES = [
    ("\\boxed{}", "6", 0, "an empty box"),
    ("\\boxed{ }", "6", 0, "an empty box"),
    ("the answer is \\boxed{6", "6", 0, "a box cut off by the length limit"),
    ("\\boxed{6} and then \\boxed{", "6", 1, "the last box that closes; a cut-off box is no answer"),
    ("I first got \\boxed{5}, but recomputing gives \\boxed{6}.", "6", 1, "a draft, then the final answer"),
    ("I first got \\boxed{6}, but recomputing gives \\boxed{5}.", "6", 0, "the final answer is 5"),
    ("\\boxed{6}\\boxed{6}", "6", 1, "the same answer twice"),
    ("\\boxed{\\boxed{6}}", "6", 1, "a box in a box"),
    ("\\fbox{6}", "6", 1, "\\fbox is a box"),
    ("\\\\boxed{6}", "6", 1, "a response escaped twice still boxes 6"),
    (boxed("six"), "6", 0, "a word"),
    (boxed("\\text{six}"), "6", 0, "a word"),
    (boxed("The answer is $6$"), "6", 0, "strict by policy: a sentence with math in it is not an answer"),
    ("\\boxed{5}. Actually it is 6.", "6", 0, "the boxed answer is 5; text after the box is not read"),
    ("\\boxed{5}. Actually it is 6.", "5", 1, "only the box is graded, as the prompt instructs: text after it can "
                                              "never raise the reward, so it cannot be gamed"),
    ("So $\\boxed{6}$ square units.", "6", 1, "a unit after the box"),
    ("$129^{34} + 96^{38} \\equiv \\boxed{9} \\pmod{11}$", "9", 1, "the modulus after the box is context"),
]

GIANT_AND_DEEP = [
    (boxed("1" + "0" * 5000), "6", 0, "5001 digits"),
    (boxed("10^{99999999}"), "6", 0, "an exponent of 10^8"),
    (boxed("9^{9^{9^{9}}}"), "6", 0, "a power tower"),
    (boxed("(999^{999})^{999}"), "6", 0, "a power of a power"),
    (boxed("(10^{10})!"), "6", 0, "the factorial of 10^10"),
    (boxed("100!!"), "6", 0, "an iterated factorial"),
    (boxed("{" * 5000 + "1" + "}" * 5000), "6", 0, "nested 5000 deep"),
    (boxed("\\sqrt{" * 40 + "2" + "}" * 40), "6", 0, "nested 40 deep"),
    (boxed("1+" * 50_000 + "1"), "6", 0, "100k characters"),
    ("\\boxed{" * 8000 + "6" + "}" * 8000, "6", 1, "8000 boxes in boxes around 6, read in one pass"),
    (boxed("((6))"), "6", 1, "harmless brackets"),
]

ALL = {"issue-false-positives": ISSUE_FALSE_POSITIVES, "issue-false-negatives": ISSUE_FALSE_NEGATIVES,
       "issue-hangs": ISSUE_HANGS, "hedges": HEDGES, "relations": RELATIONS, "restating": RESTATING,
       "boxes": BOXES, "giant-and-deep": GIANT_AND_DEEP}
CASES = [pytest.param(response, gold, verdict, id=f"{group}-{i}: {reason}"[:90])
         for group, cases in ALL.items() for i, (response, gold, verdict, reason) in enumerate(cases)]


@pytest.mark.parametrize("response, gold, verdict", CASES)
def test_teacher_verdict(response, gold, verdict):
    assert grade(response, gold) == verdict
