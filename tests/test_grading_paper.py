"""The paper's grader (grading.grade_paper) against Math-Verify called directly with the authors' settings (their
NeMo-RL math environment: math_metric with gold LatexExtractionConfig on \\boxed{gold}, predictions
ExprExtractionConfig + LatexExtractionConfig; the voting answer is the first extracted prediction that verifies,
else the first one), on Math-Verify's own 269 cases and on this package's committed per-sample records."""

import json
import threading
import time
from pathlib import Path

import pytest

from sharpening.llm.grading import grade, grade_batch, grade_paper

DATA = Path(__file__).parent / "data"
CASES = [json.loads(line) for line in open(DATA / "mathverify_cases.jsonl")]
RECORDS = Path(__file__).parents[1] / "results" / "grader_gap" / "base" / "eval.json"


def authors(response: str, gold: str):
    """Math-Verify as the authors' environment calls it, with its own timeouts, no guard of ours."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, math_metric, verify

    metric = math_metric(gold_extraction_target=(LatexExtractionConfig(),),
                         pred_extraction_target=(ExprExtractionConfig(), LatexExtractionConfig()))
    try:
        score, extracted = metric(["\\boxed{" + gold + "}"], [response])
    except Exception:  # no gold extracted: math_metric raises, the environment scores 0
        return 0.0, None
    golds, preds = extracted
    answer = next((p for p in preds if any(verify(g, p) for g in golds)), preds[0] if preds else None)
    return float(score), answer


@pytest.mark.slow
def test_agrees_with_math_verify_on_its_own_cases():
    # a generous limit: the verdicts are compared here, not the time limits (ours bounds the whole call, Math-Verify
    # each parse and verify; a loaded machine can take seconds on test_yujianll.py::test_string_extraction[4])
    ours = {c["id"]: grade_paper(c["pred"], c["gold"], timeout=60) for c in CASES}
    theirs = {c["id"]: authors(c["pred"], c["gold"]) for c in CASES}
    assert ours == theirs
    assert sum(r for r, _ in ours.values()) > 150  # not a vacuous match of zeros (recorded: see docs)


@pytest.mark.slow
def test_agrees_with_math_verify_on_the_packages_records():
    """The first 8 problems x 16 samples of the base model's records (SmolLM2 on 2-digit sums, results/)."""
    problems = json.loads(RECORDS.read_text())["datasets"]["synthetic:add:2"]["problems"][:8]
    pairs = [(s["text"], p["gold"]) for p in problems for s in p["samples"]]
    assert len(pairs) == 128
    assert [grade_paper(t, g, timeout=60) for t, g in pairs] == [authors(t, g) for t, g in pairs]


def test_what_it_rewards_that_the_strict_grader_does_not():
    assert grade_paper("The answer is 12.", "12") == (1.0, "12")  # no box needed
    assert grade("The answer is 12.", "12") == 0.0
    assert grade_paper("so 0.5", "\\frac{1}{2}")[0] == 1.0  # a bare decimal in prose
    assert grade_paper("no number here", "3") == (0.0, None)  # nothing extracted: no answer (votes as "none")
    assert grade_paper("I got 3 then 4", "3") == (0.0, "4")  # the last number, wrong: voted as "4"


def test_it_is_guarded_in_the_main_thread_and_in_others():
    grade_paper("\\boxed{1}", "1")  # warm-up outside the timing
    slow = "\\boxed{" + "x^{" * 200 + "}" * 200 + "}"  # Math-Verify's parse runs for seconds on this
    t0 = time.monotonic()
    assert grade_paper(slow, "2", timeout=0.3) == (0.0, None)
    assert time.monotonic() - t0 < 2.0
    out = {}
    worker = threading.Thread(target=lambda: out.update(r=grade_paper("\\boxed{7}", "7"), s=grade_paper(slow, "2", 0.3)))
    worker.start()
    worker.join(90)
    assert out == {"r": (1.0, "7"), "s": (0.0, None)}


def test_grade_batch_takes_the_grader():
    responses, golds = ["The answer is 12.", "\\boxed{12}", "13"], ["12", "12", "12"]
    assert grade_batch(responses, golds) == [0.0, 1.0, 0.0]
    assert grade_batch(responses, golds, grader="paper") == [1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="grader='lenient' is not one of \\['strict', 'paper'\\]"):
        grade_batch(responses, golds, grader="lenient")
