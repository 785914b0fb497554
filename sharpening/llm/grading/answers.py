"""The shape of an answer: a list of items, each a relation, a chain of equal values ("x = 7 + 9 = 16"), or
one value. Everything here is string work, linear in the (capped) answer length.

    items("1, -2")                    -> ["1", "-2"]              a comma list (also ";" "or" "and")
    items("10,000")                   -> ["10,000"]               a thousands separator: exactly 3 digits, no space
    items("x = 5 \\text{ or } x = 7") -> ["x = 5", "x = 7"]        a hedge, when the gold is one value
    items("1 \\pm \\sqrt{19}")        -> ["1 + \\sqrt{19}", "1 - \\sqrt{19}"]
    is_relation("x <= 2")             -> True                     <= >= != < > \\le \\ge \\ne \\lt \\gt ...
    chain("x = 7 + 9 = 16")           -> [("", "x"), ("=", "7 + 9"), ("=", "16")]
"""

from __future__ import annotations

import re
from functools import lru_cache

_TEXT_WITH_CONNECTIVE = re.compile(
    r"\\(?:text|textrm|textnormal|mbox|mathrm)\s*\{([^{}]*(?<![a-zA-Z])(?:or|and)(?![a-zA-Z])[^{}]*)\}")
_THOUSANDS = re.compile(r"(?<![\d.,])\d{1,3}(?:,\d{3})+(?!\d|,\d)")
# A top-level separator of list items: , ; or the words "or" / "and"
_SEPARATOR = re.compile(r"[,;]|(?<![a-zA-Z\\])(?:or|and)(?![a-zA-Z])")
_PLUS_MINUS = re.compile(r"\\pm(?![a-zA-Z])|\\mp(?![a-zA-Z])|±|∓")
_RELATION = re.compile(r"<=|>=|!=|<|>|≤|≥|≠|\\(?:le|leq|leqslant|ge|geq|geqslant|ne|neq|lt|gt|not=|nless|ngtr)"
                       r"(?![a-zA-Z])")
_ASCII_RELATIONS = {"<=": "\\le ", ">=": "\\ge ", "!=": "\\ne ", "≤": "\\le ", "≥": "\\ge ", "≠": "\\ne "}
_CHAIN_OP = re.compile(r"\\approx(?![a-zA-Z])|≈|=+")


@lru_cache(maxsize=4096)
def normalize(answer: str) -> str:
    """Spacing and sizing that never change the meaning: \\left \\right \\displaystyle \\quad, runs of spaces,
    the thousands forms "10,\\!080" and "14{,}916", "np." (minerva_math/5: "np.arcsin(10/13)"), a final full stop."""
    s = answer.strip().replace("np.", "\\")
    s = re.sub(r"\\(?:left|right|displaystyle|big|Big|bigg|Bigg)(?![a-zA-Z])\s*", "", s)
    s = re.sub(r"\\q?quad(?![a-zA-Z])", " ", s)
    s = re.sub(r"(?<=\d)(?:,\\!\s*|\{,\}\s*)(?=\d{3}(?!\d))", ",", s)  # thousands: "10,\\!080" "14{,}916"
    s = re.sub(r"(?<=\d)\\,(?=\d{3}(?!\d))", "", s)  # a thin space between groups of digits: "1\\,000"
    s = re.sub(r"(?<!\\)\\[,;:! ]", " ", s)  # other spacing (not the line break "\\\\ ")
    s = re.sub(r"(?:\\\.|\.|\\!|\\,|\s)+$", "", s) if not re.search(r"\d\.$", s) else s
    return re.sub(r"\s+", " ", s).strip()  # LaTeX reads any run of spaces as one


_OPENERS, _CLOSERS = ("\\{", "(", "[", "{"), ("\\}", ")", "]", "}")


@lru_cache(maxsize=None)
def _scanner(pattern: str, braces: bool) -> re.Pattern:
    """Brackets ( [ \\{ and their closers, LaTeX argument braces { } too if `braces`, a line break \\\\ (to skip
    it), or pattern."""
    brackets = r"\\[{}]|\\\\|[(){}\[\]]" if braces else r"\\[{}]|\\\\|[()\[\]]"
    return re.compile(brackets + "|" + pattern)


def _top_level(s: str, pattern: re.Pattern, braces: bool = True) -> list[tuple[int, int]]:
    """Spans of the matches of `pattern` outside every bracket of s (and every brace, if `braces`); one pass.
    Brackets of any kind nest alike, so that an interval "[2, 5)" closes."""
    depth, spans = 0, []
    for m in _scanner(pattern.pattern, braces).finditer(s):
        token = m.group()
        if token in _OPENERS:
            depth += 1
        elif token in _CLOSERS:
            depth = max(depth - 1, 0)
        elif depth == 0 and token != "\\\\":
            spans.append(m.span())
    return spans


def _split(s: str, spans: list[tuple[int, int]]) -> list[str]:
    parts, start = [], 0
    for a, b in spans:
        parts.append(s[start:a])
        start = b
    return [p.strip() for p in parts + [s[start:]]]


@lru_cache(maxsize=4096)
def items(answer: str) -> tuple[str, ...]:
    """The items of a list answer (one item for a single value), with a top-level \\pm written out as two. A
    whole answer in braces, "\\{1, 2\\}" or "{1, 2}", is the list of its elements."""
    s = _TEXT_WITH_CONNECTIVE.sub(lambda m: " " + m.group(1) + " ", answer).strip()
    s = _unbraced(s)
    thousands = {m.start() + i for m in _THOUSANDS.finditer(s) for i, ch in enumerate(m.group()) if ch == ","}
    spans = [(a, b) for a, b in _top_level(s, _SEPARATOR) if a not in thousands]
    return tuple(value for item in _split(s, spans) if item for value in plus_minus(item))


def _unbraced(s: str) -> str:
    """The inside of "\\{...\\}" or "{...}" when that pair of braces encloses all of s; else s."""
    for opener, closer in (("\\{", "\\}"), ("{", "}")):
        inner = s[len(opener):-len(closer)]
        if s.startswith(opener) and s.endswith(closer) and _balanced(inner):
            return inner.strip()
    return s


def _balanced(s: str) -> bool:
    """Whether every bracket and brace of s closes inside s."""
    depth = 0
    for m in _scanner("(?!)", True).finditer(s):
        depth += (m.group() in _OPENERS) - (m.group() in _CLOSERS)
        if depth < 0:
            return False
    return depth == 0


_MATH_SPAN = re.compile(r"\$\$.+?\$\$|(?<!\\)\$.+?(?<!\\)\$|\\\(.+?\\\)|\\\[.+?\\\]", re.S)


def is_prose(answer: str) -> bool:
    """Whether a box holds a sentence with math set inside it ("Answer \\( 9 \\)", "then $x = 5$ works") rather
    than an answer: a $...$, \\(...\\) or \\[...\\] span with a word outside it."""
    spans = list(_MATH_SPAN.finditer(answer))
    if not spans:
        return False
    outside = _MATH_SPAN.sub(" ", answer)
    return re.search(r"[a-zA-Z]{2,}", re.sub(r"\\[a-zA-Z]+", " ", outside)) is not None


def plus_minus(item: str) -> list[str]:
    """"1 \\pm \\sqrt{19}" -> the two values (every \\pm with the same sign, \\mp with the other); else [item].
    A \\pm inside a set or tuple is that set's business; inside LaTeX braces it is not (\\frac{-1 \\pm 3}{2})."""
    if not _top_level(item, _PLUS_MINUS, braces=False):
        return [item]
    plus = _PLUS_MINUS.sub(lambda m: "+" if m.group() in ("\\pm", "±") else "-", item)
    minus = _PLUS_MINUS.sub(lambda m: "-" if m.group() in ("\\pm", "±") else "+", item)
    return [plus, minus]


def is_relation(item: str) -> bool:
    """Whether the item states an order or an inequality (<, <=, \\le, \\neq, ...) outside brackets."""
    return bool(_top_level(item, _RELATION))


def latex_relations(item: str) -> str:
    """ASCII and Unicode relations as the LaTeX commands they are ("x <= 2" -> "x \\le 2"): math-verify reads
    those the same in gold and answer."""
    return re.sub(r"<=|>=|!=|≤|≥|≠", lambda m: _ASCII_RELATIONS[m.group()], item)


def chain(item: str) -> list[tuple[str, str]]:
    """"x = 7 + 9 = 16" -> [("", "x"), ("=", "7 + 9"), ("=", "16")]: the sides of top-level "=" and \\approx,
    each with the sign before it ("=" or "~")."""
    spans = _top_level(item, _CHAIN_OP)
    ops = [""] + ["=" if item[a] == "=" else "~" for a, _ in spans]
    return list(zip(ops, _split(item, spans)))


_COMMAND_OR_TEXT = re.compile(r"\\(?:text|textrm|textnormal|mbox|mathrm|operatorname)\s*\{[^{}]*\}|\\[a-zA-Z]+")
_E_NOTATION = re.compile(r"\d\.?\d*[eE][+-]?\d+")
_GREEK_VARIABLE = re.compile(r"\\(?:var)?(?:alpha|beta|gamma|delta|epsilon|zeta|eta|theta|iota|kappa|lambda|mu|nu|xi|"
                             r"rho|sigma|tau|upsilon|phi|chi|psi|omega|Gamma|Delta|Theta|Lambda|Xi|Sigma|Upsilon|"
                             r"Phi|Psi|Omega)(?![a-zA-Z])")


def has_variable(side: str) -> bool:
    """Whether a side names something (x, AB, f(2), 2x + 3, \\theta) rather than being a number (16, 7 + 9,
    \\sqrt{2}, 2\\pi, 4.5e33, 5 \\text{ cm}): a letter outside LaTeX commands, \\text{} units and e-notation, or a
    Greek letter other than \\pi."""
    if _GREEK_VARIABLE.search(side):
        return True
    return re.search(r"[a-zA-Z]", _COMMAND_OR_TEXT.sub(" ", _E_NOTATION.sub("0", side))) is not None
