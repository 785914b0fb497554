"""The task reward r(x, y): 1.0 if the last \\boxed{} answer of a response equals the gold answer, else 0.0.

    grade(response, gold)
      1. pred = content of the last \\boxed{...} (nested braces); no box, an unclosed box -> 0
      2. pred longer than MAX_ANSWER_CHARS (or 2 x the gold), or nested deeper than MAX_DEPTH -> 0
      3. "lhs = value" -> value (the final value after the last '=' or \\approx), unless the gold is an equation
      4. both plain numbers (integer, decimal, e-notation, \\frac{a}{b}) -> compare numbers: exact if the gold is
         written as an integer, else relative tolerance RTOL
      5. gold a plain number, pred an unevaluated expression (a binary + - * \\times \\cdot \\div) -> 0
      6. otherwise math-verify's parse + verify, under a wall-clock limit of `timeout` seconds -> 0 on timeout

Rule 5 is the strict part: `\\boxed{0 + 6}` restates the question "What is 0 + 6?" and is not an answer, although
math-verify evaluates it to 6 and would credit it. A final value after '=' is an answer: `\\boxed{7 + 9 = 16}` is
credited for 16 (rule 3).

math-verify's own timeout uses signal.alarm, which works only in the main thread. Here math-verify runs with its
timeouts off, inside our guard: in the main thread a SIGALRM interval timer (the caller's own timer and handler
are restored); in any other thread a persistent child process that is killed and restarted when it overruns.
So grade() never raises and never hangs, in threads and in multiprocessing workers alike.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import re
import select
import signal
import subprocess
import sys
import threading
import time
from fractions import Fraction
from functools import lru_cache

TIMEOUT_S = 1.5  # wall-clock limit of one math-verify comparison (a legit answer takes < 0.3 s)
RTOL = 1e-4  # relative tolerance for non-integer gold numbers (Qwen2.5-Math's math_equal uses 1e-4 too)
MAX_ANSWER_CHARS = 256  # longest boxed answer looked at; golds run to 210 characters (minerva_math)
MAX_DEPTH = 32  # deepest brace / parenthesis nesting looked at; golds nest at most ~6 deep

logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # it logs every junk answer it cannot parse
logging.getLogger("latex2sympy2_extended").setLevel(logging.CRITICAL)


# ---------------------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------------------

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")


def extract_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}) in text, braces matched; None if there is none or it is unclosed."""
    starts = [m.end() for m in _BOX.finditer(text)]
    for start in reversed(starts):  # the last box that closes
        depth = 1
        for i in range(start, len(text)):
            if text[i] == "{" and text[i - 1] != "\\":
                depth += 1
            elif text[i] == "}" and text[i - 1] != "\\":
                depth -= 1
                if depth == 0:
                    return text[start:i].strip()
    return None


# ---------------------------------------------------------------------------------------------------------
# Plain numbers: "025", "2,125", "10,\!080", "-1./3", "\frac{3}{4}", "4.5e33", "4.5 \times 10^{33}", "\$5", "30^\circ"
# ---------------------------------------------------------------------------------------------------------

_UNIT = re.compile(r"\\(?:text|textbf|mbox|mathrm)\s*\{[^{}]*\}(?:\^\{?\d\}?)?")
_DECORATION = re.compile(r"\\[!,;: ]|\\\$|\$|~|\\%|%|\^\s*\{?\\circ\}?|\\circ|\\left|\\right|\\displaystyle")
_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_SCIENTIFIC = re.compile(rf"^({_NUMBER})(?:\\times|\\cdot|\*|x)10\^\{{?([+-]?\d+)\}}?$")
_RATIO = re.compile(rf"^({_NUMBER})/({_NUMBER})$")
# \frac{3}{4}, -\dfrac{1}{2}, \frac12: a fraction of integers is a number too (so "0 + 0.5" is not its answer)
_FRAC = re.compile(r"^([+-]?)\\[dt]?frac(?:\{(\d+)\}|(\d))(?:\{(\d+)\}|(\d))$")
_THOUSANDS = re.compile(r"^([+-]?)(\d{1,3}(?:,\d{3})+)(\.\d+)?$")


def strip_decoration(s: str) -> str:
    """Drop units in \\text{}, \\$, \\%, ^\\circ, \\! and other spacing: what never changes the value."""
    return _DECORATION.sub("", _UNIT.sub("", s)).strip()


def parse_number(s: str) -> Fraction | None:
    """The exact value of a plain number (an integer, decimal, e-notation, or a fraction of integers), or None if s
    is anything else (an expression, a list, words)."""
    s = strip_decoration(s).replace(" ", "").replace("{,}", ",")
    if s.startswith("{") and s.endswith("}"):
        s = s[1:-1]
    if m := _THOUSANDS.match(s):  # "2,125", "1,450,000.5": a comma elsewhere means a list
        s = m.group(1) + m.group(2).replace(",", "") + (m.group(3) or "")
    try:
        if re.fullmatch(_NUMBER, s):
            return Fraction(s)
        if m := _SCIENTIFIC.match(s):
            return Fraction(m.group(1)) * Fraction(10) ** int(m.group(2))
        if (m := _RATIO.match(s)) and Fraction(m.group(2)) != 0:  # "-1./3" (minerva_math/38)
            return Fraction(m.group(1)) / Fraction(m.group(2))
        if (m := _FRAC.match(s)) and int(m.group(4) or m.group(5)) != 0:
            sign = -1 if m.group(1) == "-" else 1
            return sign * Fraction(int(m.group(2) or m.group(3)), int(m.group(4) or m.group(5)))
    except (ValueError, OverflowError, ZeroDivisionError):
        pass
    return None


def is_integer_literal(s: str) -> bool:
    """Whether a number is written as an integer ("025", "2,125"), so that only an exact match counts."""
    return re.fullmatch(r"[+-]?[\d,]+", strip_decoration(s).replace(" ", "").replace("{,}", ",")) is not None


def numbers_equal(pred: Fraction, gold: Fraction, gold_is_integer: bool) -> bool:
    if gold_is_integer:
        return pred == gold
    return abs(pred - gold) <= RTOL * max(abs(pred), abs(gold))


# ---------------------------------------------------------------------------------------------------------
# Strictness: an unevaluated expression is not an answer to a numeric question
# ---------------------------------------------------------------------------------------------------------

# A binary operator: + or - after an operand (digit, letter, closing bracket, !), or any of * \times \cdot \div.
_BINARY_OP = re.compile(r"(?<=[\w)}\].!])\s*[+\-]|\*|\\times|\\cdot|\\div|×|÷")


def is_expression(s: str) -> bool:
    """Whether s combines terms with a binary arithmetic operator ("0 + 6", "2 \\cdot 3"; not "-5" or "\\frac{1}{2}")."""
    return _BINARY_OP.search(strip_decoration(s)) is not None


def final_value(pred: str, gold: str) -> str:
    """"x = 5" -> "5" and "7 + 9 = 16" -> "16": the value after the last '=' (or \\approx), unless gold is an equation."""
    if "=" in gold or "\\approx" in gold:
        return pred
    return re.split(r"=|\\approx", pred)[-1].strip()


def _nesting_depth(s: str) -> int:
    depth = deepest = 0
    for ch in s:
        if ch in "{([":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "})]":
            depth -= 1
    return deepest


# ---------------------------------------------------------------------------------------------------------
# grade
# ---------------------------------------------------------------------------------------------------------


def grade(response: str, gold: str, timeout: float = TIMEOUT_S) -> float:
    """r = 1.0 if the last \\boxed{} answer of response equals gold, else 0.0 (the rules in the module docstring).

    Never raises, never hangs: any error or a comparison slower than `timeout` seconds grades 0.0.
    """
    try:
        pred = extract_boxed(response)
        if not pred:
            return 0.0
        pred, gold = _normalize(pred), _normalize(str(gold))
        if len(pred) > max(MAX_ANSWER_CHARS, 2 * len(gold)) or _nesting_depth(pred) > MAX_DEPTH:
            return 0.0
        pred = final_value(pred, gold)
        pred_num, gold_num = parse_number(pred), parse_number(gold)
        if gold_num is not None:
            if pred_num is not None:
                return float(numbers_equal(pred_num, gold_num, is_integer_literal(gold)))
            if is_expression(pred):
                return 0.0
        return float(_verify_guarded(pred, gold, timeout))
    except (Exception, _Timeout):  # a grader bug or a late alarm must not crash training: count it as wrong
        return 0.0


def grade_batch(responses: list[str], golds: list[str], workers: int = 1, timeout: float = TIMEOUT_S) -> list[float]:
    """[grade(response_i, gold_i)]; workers > 1 grades in that many spawned processes (~2 s start-up each)."""
    if len(responses) != len(golds):
        raise ValueError(f"grade_batch got {len(responses)} responses but {len(golds)} gold answers")
    if workers <= 1 or len(responses) < 2:
        return [grade(y, g, timeout) for y, g in zip(responses, golds)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:  # spawn: no fork of a torch process
        return pool.starmap(grade, [(y, g, timeout) for y, g in zip(responses, golds)],
                            chunksize=max(1, len(responses) // (4 * workers)))


def _normalize(answer: str) -> str:
    return answer.strip().replace("np.", "\\")  # minerva_math/5: "np.arcsin(10/13)" is \\arcsin(10/13)


# ---------------------------------------------------------------------------------------------------------
# math-verify under a wall-clock guard
# ---------------------------------------------------------------------------------------------------------


class _Timeout(BaseException):  # not Exception: sympy and math-verify swallow those
    pass


@lru_cache(maxsize=4096)
def _parse_gold(gold: str):
    from math_verify import parse

    return parse("\\boxed{" + gold + "}", parsing_timeout=None)


def _verify(pred: str, gold: str) -> bool:
    """math-verify with its signal timeouts off (we guard it ourselves)."""
    from math_verify import parse, verify

    gold_parsed = _parse_gold(gold)
    pred_parsed = parse("\\boxed{" + pred + "}", parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def _verify_guarded(pred: str, gold: str, timeout: float) -> bool:
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        return _verify_with_alarm(pred, gold, timeout)
    return _CHILD.verify(pred, gold, timeout)


def _verify_with_alarm(pred: str, gold: str, timeout: float) -> bool:
    """Run _verify under a SIGALRM interval timer; restore the caller's handler and timer (e.g. pytest-timeout's)."""

    def on_alarm(signum, frame):
        raise _Timeout

    import math_verify  # noqa: F401  (the first import takes ~1 s: not part of the comparison's time)

    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    # fires again every 0.1 s until cancelled, in case some library code swallows the first _Timeout
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, timeout, 0.1)
    t0 = time.monotonic()
    try:
        return _verify(pred, gold)
    except _Timeout:
        return False
    finally:
        while True:  # a late alarm may interrupt the clean-up itself: repeat it until it is done
            try:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, old_handler)
                break
            except _Timeout:
                continue
        if old_delay > 0:  # the caller's timer keeps running: re-arm what is left of it
            signal.setitimer(signal.ITIMER_REAL, max(old_delay - (time.monotonic() - t0), 1e-3), old_interval)


class _Child:
    """A persistent `python -c _serve()` process that runs _verify for threads other than the main one.

    One request at a time (a lock); on a timeout the process is killed and the next call starts a new one.
    subprocess (not multiprocessing) so that daemonic pool workers may use it too.
    """

    STARTUP_S = 60.0  # importing math-verify and sympy, on a busy machine
    MARGIN_S = 0.5  # the child times itself out first; we kill it only if that fails (a C-level hang)

    def __init__(self):
        self.lock = threading.Lock()
        self.proc = None

    def verify(self, pred: str, gold: str, timeout: float) -> bool:
        with self.lock:
            try:
                if self.proc is None or self.proc.poll() is not None:
                    self._start()
                self.proc.stdin.write(json.dumps([pred, gold, timeout]) + "\n")
                self.proc.stdin.flush()
                return self._read_line(timeout + self.MARGIN_S) == "1"
            except (_Timeout, OSError, ValueError):
                self._kill()
                return False

    def _start(self):
        code = "from sharpening.llm.grading import _serve; _serve()"
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, bufsize=1)
        if self._read_line(self.STARTUP_S) != "ready":
            raise _Timeout

    def _read_line(self, timeout: float) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise _Timeout
        return self.proc.stdout.readline().strip()

    def _kill(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


_CHILD = _Child()


def _serve():
    """The child's loop: one JSON [pred, gold, timeout] per line in, "1" or "0" per line out."""
    import math_verify  # noqa: F401  (import before saying ready, so that timeouts measure the comparison only)

    print("ready", flush=True)
    for line in sys.stdin:
        pred, gold, timeout = json.loads(line)
        print("1" if _verify_with_alarm(pred, gold, timeout) else "0", flush=True)

