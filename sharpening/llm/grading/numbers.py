"""Plain numbers and plain arithmetic, exactly (Fractions), with every size capped before any arithmetic.

A plain number: "025", "2,125", "10,\\!080", "-1./3", "\\frac{3}{4}", "4.5e33", "4.5 \\times 10^{33}", "\\$5",
"30^\\circ", "50\\%". Plain arithmetic: plain numbers combined with + - * / \\times \\cdot \\div and brackets
("7 + 9", "\\frac{1}{2} \\cdot 4"). Fraction("1e99999999") computes 10**99999999 (minutes); the old grader did
it before arming any time limit. Here digits and exponents are checked before any arithmetic (`too_big`,
`parse_number`), so such answers grade 0 at once instead of running into the time limit.
"""

from __future__ import annotations

import re
from fractions import Fraction
from functools import lru_cache

RTOL = 1e-4  # relative tolerance for non-integer gold numbers (Qwen2.5-Math's math_equal uses 1e-4 too)
MAX_DIGITS = 200  # longest run of digits read as a number (golds have at most 30)
MAX_EXPONENT = 1000  # largest power of ten or other exponent literal (golds: e-notation up to e33)
MAX_FACTORIAL = 1000  # largest n in a literal n!

_UNIT = re.compile(r"\\(?:text|textbf|textrm|textnormal|mbox|mathrm)\s*\{[^{}]*\}(?:\^\{?\d\}?)?")
_DECORATION = re.compile(r"(?<!\\)\\[!,;: ]|\\\$|\$|~|\\%|%|\^\s*\{?\\circ\}?|\\circ|°|\\left|\\right|\\displaystyle")
_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_SCIENTIFIC = re.compile(rf"^({_NUMBER})(?:\\times|\\cdot|\*|x)10\^\{{?([+-]?\d+)\}}?$")
_RATIO = re.compile(rf"^({_NUMBER})/({_NUMBER})$")
# \frac{3}{4}, -\dfrac{1}{2}, \frac12, \frac{-33}{2}: a fraction of integers is a number too
_FRAC = re.compile(r"^([+-]?)\\[dtc]?frac(?:\{([+-]?\d+)\}|(\d))(?:\{([+-]?\d+)\}|(\d))$")
_THOUSANDS = re.compile(r"^([+-]?)(\d{1,3}(?:,\d{3})+)(\.\d+)?$")
_DIGITS = re.compile(r"\d+")
_EXPONENTS = re.compile(r"(?<=\d)[eE]([+-]?\d+)|\^\s*\{?\s*[+-]?(\d+)|(\d+)\s*!")


def too_big(answer: str, gold: str) -> bool:
    """Whether an answer holds a number no gold needs and no arithmetic should touch: more digits in a row than
    MAX_DIGITS, an exponent above MAX_EXPONENT or a factorial above MAX_FACTORIAL (or above what the gold has),
    or, with no variable in it, a power of a power or a factorial of a factorial or of a bracket
    ("9^{9^{9}}", "(999^{999})^{999}", "100!!", "(10^{10})!") unless the gold has one too."""
    limit_digits, limit_exp, limit_fact, gold_towers = _limits(gold)
    if _longest_digit_run(answer) > limit_digits:
        return True
    for m in _EXPONENTS.finditer(answer):
        if int(m.group(1) or m.group(2) or 0) > limit_exp or int(m.group(3) or 0) > limit_fact:
            return True
    return _towering(answer) and not gold_towers


@lru_cache(maxsize=4096)
def _limits(gold: str) -> tuple[int, int, int, bool]:
    """The caps for answers to this gold: the defaults, raised to what the gold itself holds."""
    return (max(MAX_DIGITS, _longest_digit_run(gold)), max(MAX_EXPONENT, _largest(gold, (1, 2))),
            max(MAX_FACTORIAL, _largest(gold, (3,))), _towering(gold))


def _towering(s: str) -> bool:
    """A power of a power or an iterated factorial among numbers only (no letter outside LaTeX commands)."""
    if re.search(r"[a-zA-Z]", re.sub(r"\\[a-zA-Z]+", "", s)):
        return False
    if re.search(r"[!)}\]]\s*!", s):
        return True
    for i, ch in enumerate(s):
        if ch == "^" and ("^" in _group_after(s, i + 1) or "^" in _group_before(s, i)):
            return True
    return False


def _group_after(s: str, i: int) -> str:
    """The exponent that starts at s[i]: a {...} group, or one character."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i < len(s) and s[i] == "{":
        depth = 0
        for j in range(i, len(s)):
            depth += {"{": 1, "}": -1}.get(s[j], 0)
            if depth == 0:
                return s[i:j + 1]
        return s[i:]
    return s[i:i + 1]


def _group_before(s: str, i: int) -> str:
    """The base that ends just before s[i]: a bracketed group, or the characters back to an operator."""
    j = i - 1
    while j >= 0 and s[j] == " ":
        j -= 1
    if j >= 0 and s[j] in ")}]":
        depth = 0
        for k in range(j, -1, -1):
            depth += {")": 1, "}": 1, "]": 1, "(": -1, "{": -1, "[": -1}.get(s[k], 0)
            if depth == 0:
                return s[k:j + 1]
        return s[:j + 1]
    return ""


def _longest_digit_run(s: str) -> int:
    return max((len(m.group()) for m in _DIGITS.finditer(s)), default=0)


def _largest(s: str, groups: tuple[int, ...]) -> int:
    """The largest exponent (groups 1, 2) or factorial (group 3) literal in s; s is short and its digits capped."""
    if _longest_digit_run(s) > MAX_DIGITS:
        return 0
    return max((abs(int(m.group(g))) for m in _EXPONENTS.finditer(s) for g in groups if m.group(g)), default=0)


def strip_decoration(s: str) -> str:
    """Drop units in \\text{}, \\$, \\%, ^\\circ, \\! and other spacing: what never changes the value."""
    return _DECORATION.sub("", _UNIT.sub("", s)).strip()


def _compact(s: str) -> str | None:
    """s without decoration and spaces, or None if a space separates two digits ("5 7" is not 57)."""
    s = strip_decoration(s).replace("{,}", ",")
    if re.search(r"\d\s+\.?\d", s):
        return None
    s = re.sub(r"\s+", "", s)
    return s[1:-1] if s.startswith("{") and s.endswith("}") else s


def parse_number(s: str) -> Fraction | None:
    """The exact value of a plain number (an integer, decimal, e-notation, or a fraction of integers), or None if s
    is anything else (an expression, a list, words) or has more than MAX_DIGITS digits or a larger exponent."""
    s = _compact(s)
    if s is None or _longest_digit_run(s) > MAX_DIGITS:
        return None
    if m := _THOUSANDS.match(s):  # "2,125", "1,450,000.5": a comma elsewhere means a list
        s = m.group(1) + m.group(2).replace(",", "") + (m.group(3) or "")
    try:
        if re.fullmatch(_NUMBER, s):
            return _fraction(s)
        if m := _SCIENTIFIC.match(s):
            mantissa, exponent = _fraction(m.group(1)), int(m.group(2))
            return mantissa * Fraction(10) ** exponent if mantissa is not None and abs(exponent) <= MAX_EXPONENT \
                else None
        if (m := _RATIO.match(s)) and (den := _fraction(m.group(2))):  # "-1./3" (minerva_math/38)
            num = _fraction(m.group(1))
            return num / den if num is not None else None
        if (m := _FRAC.match(s)) and int(m.group(4) or m.group(5)) != 0:
            sign = -1 if m.group(1) == "-" else 1
            return sign * Fraction(int(m.group(2) or m.group(3)), int(m.group(4) or m.group(5)))
    except (ValueError, OverflowError, ZeroDivisionError):
        pass
    return None


def _fraction(literal: str) -> Fraction | None:
    """Fraction(literal) for a decimal literal whose exponent is at most MAX_EXPONENT (checked before building it)."""
    _, _, exponent = literal.lower().partition("e")
    if exponent and abs(int(exponent)) > MAX_EXPONENT:
        return None
    return Fraction(literal)


def is_integer_literal(s: str) -> bool:
    """Whether a number is written as an integer ("025", "2,125"), so that only an exact match counts."""
    return re.fullmatch(r"[+-]?[\d,]+", strip_decoration(s).replace(" ", "").replace("{,}", ",")) is not None


def numbers_equal(pred: Fraction, gold: Fraction, gold_is_integer: bool) -> bool:
    if gold_is_integer:
        return pred == gold
    return abs(pred - gold) <= RTOL * max(abs(pred), abs(gold))


def approximates(approximation: str, value) -> bool:
    """Whether a decimal is value rounded, or cut off, to the digits it shows: 0.333 and 0.33 for 1/3, 0.67 and
    0.66 for 2/3, 3.14 for pi; not 0.5 for 1/3 or 3.15 for pi. value: a Fraction or a float. False if the
    approximation is not a plain number."""
    a = parse_number(approximation)
    if a is None:
        return False
    written = _compact(approximation) or ""
    if m := _SCIENTIFIC.match(written):  # "6.0 \\times 10^{23}"
        mantissa, exponent = m.group(1), m.group(2)
    else:
        mantissa, _, exponent = written.lower().partition("e")
    unit = Fraction(10) ** (int(exponent or 0) - len(mantissa.lower().partition("e")[0].partition(".")[2]))
    try:
        v = Fraction(value)
    except (ValueError, OverflowError, TypeError):  # value is inf or nan: nothing approximates it
        return False
    rounded = abs(a - v) <= unit / 2
    cut_off = (a >= 0) == (v >= 0) and abs(a) <= abs(v) < abs(a) + unit
    return rounded or cut_off


# ---------------------------------------------------------------------------------------------------------
# Plain arithmetic: "7 + 9", "2 \cdot (3 - 1)", "\frac{1}{2} + 0.5" -> an exact Fraction, or None
# ---------------------------------------------------------------------------------------------------------

_ARITH_TOKEN = re.compile(r"\s*(?:(\d+\.?\d*|\.\d+)|(\\[dtc]?frac)|(\\times|\\cdot|\\div|[-+*/×÷()\[\]{}]))")


def evaluate(s: str) -> Fraction | None:
    """The exact value of plain arithmetic over plain numbers, or None if s is anything else (a variable, a
    power, a root, a list). Numbers are capped at MAX_DIGITS digits, so no step is slow."""
    s = strip_decoration(s)
    if _longest_digit_run(s) > MAX_DIGITS:
        return None
    tokens, pos = [], 0
    while pos < len(s):
        m = _ARITH_TOKEN.match(s, pos)
        if m is None:
            if s[pos:].strip():
                return None
            break
        number, frac, op = m.groups()
        tokens.append(("num", number) if number else ("frac",) if frac else ("op", op))
        pos = m.end()
    return _parse(tokens)


def _parse(tokens: list[tuple]) -> Fraction | None:
    try:
        value, rest = _sum(tokens, 0)
        return value if rest == len(tokens) else None
    except (IndexError, ValueError, ZeroDivisionError, RecursionError, _NotArithmetic):
        return None


class _NotArithmetic(Exception):
    pass


def _sum(t, i):
    value, i = _product(t, i)
    while i < len(t) and t[i] in (("op", "+"), ("op", "-")):
        rhs, j = _product(t, i + 1)
        value, i = (value + rhs if t[i][1] == "+" else value - rhs), j
    return value, i


_TIMES, _DIVIDE = {"*", "\\times", "\\cdot", "×"}, {"/", "\\div", "÷"}


def _product(t, i):
    value, i = _unary(t, i)
    while i < len(t) and t[i][0] == "op" and t[i][1] in _TIMES | _DIVIDE:
        rhs, j = _unary(t, i + 1)
        value, i = (value * rhs if t[i][1] in _TIMES else value / rhs), j
    return value, i


def _unary(t, i):
    if t[i] in (("op", "-"), ("op", "+")):
        value, j = _unary(t, i + 1)
        return (-value if t[i][1] == "-" else value), j
    return _atom(t, i)


_CLOSE = {"(": ")", "[": "]", "{": "}"}


def _atom(t, i):
    kind = t[i][0]
    if kind == "num":
        return Fraction(t[i][1]), i + 1
    if kind == "frac":  # \frac{a}{b}
        num, j = _group(t, i + 1, "{")
        den, k = _group(t, j, "{")
        return num / den, k
    if t[i][1] in _CLOSE:
        return _group(t, i, t[i][1])
    raise _NotArithmetic


def _group(t, i, opener):
    if t[i] != ("op", opener):
        raise _NotArithmetic
    value, j = _sum(t, i + 1)
    if t[j] != ("op", _CLOSE[opener]):
        raise _NotArithmetic
    return value, j + 1
