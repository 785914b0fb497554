"""The paper's grader: Math-Verify with the authors' settings (their NeMo-RL math environment), under our time guard.

    grade_paper(response, gold) -> (r, voting answer)
      gold   = parse("\\boxed{" + gold + "}", [LatexExtractionConfig()])
      preds  = parse(response, [ExprExtractionConfig(), LatexExtractionConfig()])    # not only boxed answers
      r      = 1.0 if verify(gold, preds) else 0.0
      answer = the first extracted prediction (as text) that verifies against the gold's, else the first one;
               None when nothing was extracted (the sample votes for "no answer" in maj@k)

This is Math-Verify's `math_metric` with the authors' extraction targets, called step by step so that Math-Verify's
own SIGALRM timeouts stay off (parsing_timeout=None, timeout_seconds=None): ours (guard.py) bounds the whole call,
and the two alarms would overwrite each other. What it rewards that the strict grader (grading.grade) does not is
in docs/llm_data_eval.md ("The paper's grader").
"""

from __future__ import annotations

from sharpening.llm.grading.guard import call_with_timeout

PAPER_TIMEOUT_S = 5.0  # Math-Verify's own default limit per parse and per verify, which the authors ran under


def grade_paper(response: str, gold: str, timeout: float = PAPER_TIMEOUT_S) -> tuple[float, str | None]:
    """(r, voting answer) of the paper's grader. Never raises, never hangs: an error or a call longer than `timeout`
    seconds gives (0.0, None), as the authors' environment does on an exception."""
    try:
        warm_up_paper()
        r, answer = call_with_timeout(__name__, "grade_paper_unguarded", [str(response), str(gold)], timeout,
                                      [0.0, None])
        return float(r), answer
    except Exception:  # a grader bug must not crash training: count it as wrong, without an answer
        return 0.0, None


def grade_paper_unguarded(response: str, gold: str) -> list:
    """grade_paper() without the time limit: only ever call it under one (guard.call_with_timeout). Returns a list
    (JSON, for the guard's helper process)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    golds = parse("\\boxed{" + gold + "}", [LatexExtractionConfig()], parsing_timeout=None)
    if not golds:  # math_metric raises here ("No gold targets found"); the authors' environment scores 0
        return [0.0, None]
    preds = parse(response, [ExprExtractionConfig(), LatexExtractionConfig()], parsing_timeout=None)
    r = 1.0 if preds and verify(golds, preds, timeout_seconds=None) else 0.0
    gold_texts, pred_texts = [str(g) for g in golds], [str(p) for p in preds]  # math_metric's extracted strings
    answer = next((p for p in pred_texts if any(verify(g, p, timeout_seconds=None) for g in gold_texts)),
                  pred_texts[0] if pred_texts else None)
    return [r, answer]


_warm = False


def warm_up_paper():
    """The strict grader's warm-up, then one paper grading (its extraction patterns are compiled on first use, ~1 s),
    once per process, outside any time limit: start-up must not count against a real answer's."""
    global _warm
    if not _warm:
        from sharpening.llm.grading import warm_up

        warm_up()
        grade_paper_unguarded("so $x = \\frac{1}{2}$, i.e. 0.5", "\\frac12")
        _warm = True
