"""Whether an answer equals the gold: lists as sets, relations as relations, chains checked, values compared as
plain numbers when both are, by math-verify otherwise. No time guard here: grade() runs all of this under one.

    answers_equal(pred, gold)
      1. split both into items (answers.items): a comma / ";" / "or" / "and" list, a \\pm written out as two
      2. read each item (read_item): a relation ("x \\le 2"); a value, possibly named and computed
         ("x = 7 + 9 = 16": every number side must be equal, a side after \\approx must round it, the value is
         the last number; "y = 2x + 3": a name and one expression); or an equation ("a + 3z = 0"). An item whose
         number sides differ ("x = 5 = 7") states two values: the answer grades 0.
      3. the sets of items are equal: every answer item equals a gold item and every gold item an answer item
         (order and repeats do not matter; names like "a_3 =" must agree when the gold is a list)
      4. kinds must match (a relation or an equation is not a value); two values: plain numbers exactly for an
         integer gold and within RTOL otherwise, a restated computation ("0 + 6", "2 3") never equals a plain
         number, anything else (and relations, equations) as math-verify decides
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

from sharpening.llm.grading.answers import chain, has_variable, is_relation, items, latex_relations
from sharpening.llm.grading.numbers import (approximates, evaluate, is_integer_literal, numbers_equal,
                                            parse_number, strip_decoration)

MAX_ITEMS = 16  # items in one list answer (golds have at most 8)


@dataclass(frozen=True)
class Item:
    text: str  # as written (relations in LaTeX form)
    kind: str  # "value", "relation" or "equation" (compared whole: "a + 3z = 0", "y = 2x + 3 = z")
    values: tuple[str, ...] = ()  # the ways the item writes its value: "16" in "7 + 9 = 16"; "1/3", "0.333"
    label: str = ""  # "a_3" in "a_3 = 2"


def answers_equal(pred: str, gold: str) -> bool:
    pred_items, gold_items = items(pred), items(gold)
    if not pred_items or not gold_items or len(pred_items) > MAX_ITEMS or len(gold_items) > MAX_ITEMS:
        return False
    preds = [read_item(p) for p in pred_items]
    if any(p is None for p in preds):  # a chain that states two values
        return False
    golds = [read_item(g, every_side=True) or Item(g, "equation") for g in gold_items]
    labelled = len(golds) > 1
    equal = lru_cache(maxsize=None)(lambda i, j: items_equal(preds[i], golds[j], labelled))
    return (all(any(equal(i, j) for j in range(len(golds))) for i in range(len(preds)))
            and all(any(equal(i, j) for i in range(len(preds))) for j in range(len(golds))))


@lru_cache(maxsize=4096)
def read_item(item: str, every_side: bool = False) -> Item | None:
    """What one item says; None when its sides disagree ("x = 5 = 7", "\\frac13 \\approx 0.5").

    The sides of a chain "x = 7 + 9 = 16" are names (x, a_3, f(2)), numbers (7 + 9, 16, \\sqrt{2}) or
    symbolic expressions (2x + 3). Names label the value. All numbers must be equal, and one written after
    \\approx must round them; the value is the last number (every number, for a gold: every_side). A chain with
    one symbolic side and names only has that side as its value ("y = 2x + 3"); any other chain with a symbolic
    side is an equation, compared whole.
    """
    if is_relation(item):
        return Item(latex_relations(item), "relation")
    sides = [(op, side) for op, side in chain(item) if side]
    if len(sides) == 1 and not sides[0][0]:
        return Item(item, "value", (item,))
    names, symbolic, exact, rounded = [], [], [], []
    for op, side in sides:
        if not has_variable(side):
            (rounded if rounded or op == "~" else exact).append(side)
        else:
            (names if is_name(side) else symbolic).append(side)
    label = re.sub(r"[\s{}]", "", names[0]) if len(names) == 1 else ""
    if symbolic:
        return Item(item, "value", (symbolic[0],), label) if len(symbolic) == 1 and not exact + rounded \
            else Item(item, "equation")
    if not exact + rounded:
        return Item(item, "equation")  # names only: "MR = SRMC"
    numbers = exact or rounded
    if not all(_same_number(side, numbers[-1]) for side in numbers[:-1]):
        return None
    if exact and rounded and not all(approximates(r, _numeric(exact[-1])) for r in rounded):
        return None
    if every_side:
        return Item(item, "value", tuple(exact + rounded), label)
    return Item(item, "value", tuple(exact[-1:] + rounded[-1:]), label)


def is_name(side: str) -> bool:
    """x, AB, a_3, a_{37}, f(2), P(A), \\theta, \\overline{AB}, x': what labels a value in "x = 5"."""
    s = re.sub(r"\s+", "", side)
    return re.fullmatch(r"(?:\\[a-zA-Z]+)?\{?[A-Za-z]*\}?(?:_\{?[\w,\\]+\}?|')*(?:\([^()]*\))?", s) is not None


def items_equal(pred: Item, gold: Item, labelled: bool) -> bool:
    if pred.kind != gold.kind and (pred.kind == "relation" or gold.kind == "value"):
        return False  # "n >= 3" is not the value 3; "x + 1 = 5" is not the value 5
    if pred.kind != "value" or gold.kind != "value":
        return math_verify_equal(pred.text, gold.text)  # relations, equations; a value for a gold relation
    if labelled and pred.label and gold.label and pred.label != gold.label:
        return False  # "a_3 = 19, a_{37} = 2" against "a_3 = 2, a_{37} = 19"
    return any(values_equal(p, g) for p in pred.values for g in gold.values)


def _same_number(a: str, b: str) -> bool:
    """Two number sides of one chain are equal: exactly when both are plain arithmetic (50\\% is 0.5 here),
    else by math-verify."""
    x, y = _exact(a), _exact(b)
    if x is not None and y is not None:
        return x == y
    return math_verify_equal(a, b)


def _exact(side: str) -> Fraction | None:
    value = parse_number(side)
    value = evaluate(side) if value is None else value
    if value is not None and re.search(r"%\s*$", side):
        value /= 100
    return value


def values_equal(pred: str, gold: str) -> bool:
    """Two values: plain numbers exactly for an integer gold, within RTOL otherwise; a restated computation
    ("0 + 6", "2 3") never equals a plain number; anything else as math-verify decides."""
    gold_number = parse_number(gold)
    if gold_number is not None:
        pred_number = parse_number(pred)
        if pred_number is not None:
            return numbers_equal(pred_number, gold_number, is_integer_literal(gold))
        if is_expression(pred):
            return False
    return math_verify_equal(pred, gold)


# A binary operator: + or - after an operand (digit, letter, closing bracket, !), or any of * \times \cdot \div.
_BINARY_OP = re.compile(r"(?<=[\w)}\].!])\s*[+\-]|\*|\\times|\\cdot|\\div|×|÷")
# Two numbers side by side with nothing between them but space or brackets: "2 3", "2(3)", "(2)(3)"
_JUXTAPOSED = re.compile(r"\d\s+\.?\d|\d\s*\(|\)\s*\(?\d|\)\s*\(")


def is_expression(s: str) -> bool:
    """Whether s combines numbers with an operator or by juxtaposition ("0 + 6", "2 \\cdot 3", "2 3", "2(3)"),
    so that it restates a computation instead of giving its value (not "-5", "\\frac{1}{2}", "2\\sqrt{3}")."""
    s = strip_decoration(s)
    return _BINARY_OP.search(s) is not None or _JUXTAPOSED.search(s) is not None


# ---------------------------------------------------------------------------------------------------------
# math-verify, with its own signal timeouts off (grade() guards everything)
# ---------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _parse(answer: str) -> tuple:
    from math_verify import parse

    return tuple(parse("\\boxed{" + answer + "}", parsing_timeout=None))


def math_verify_equal(pred: str, gold: str) -> bool:
    from math_verify import verify

    if pred == gold:  # the same text (the usual right answer): no parse needed
        return True
    gold_parsed, pred_parsed = _parse(gold), _parse(pred)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(list(gold_parsed), list(pred_parsed), timeout_seconds=None))


def _numeric(value: str) -> Fraction | float:
    """The number a value side stands for (exact for plain arithmetic, else sympy's float); nan if none."""
    exact = _exact(value)
    if exact is not None:
        return exact
    for expr in _parse(value):
        if getattr(expr, "is_number", False):
            z = complex(expr.evalf(30))
            return z.real if z.imag == 0 else float("nan")
    return float("nan")
