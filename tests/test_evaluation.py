"""pass@k and maj@k against brute force over subsets, and the evaluate() bookkeeping."""

import argparse
import json
import math
from collections import Counter
from fractions import Fraction
from itertools import combinations

import pytest

from sharpening.llm.data import Problem, synthetic_problems
from sharpening.llm.evaluation import (add_eval_arguments, answer_clusters, evaluate, maj_at_k, pass_at_k,
                                       run_eval, text_clusters)


# --- pass@k -----------------------------------------------------------------------------------------------

def brute_pass_at_k(n, c, k):
    """Fraction of all k-subsets of n samples (the first c correct) that hold a correct sample."""
    subsets = list(combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_equals_brute_force(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_for_large_n():
    for n, c, k in [(200, 1, 1), (200, 3, 100), (1000, 5, 16), (1000, 999, 1)]:
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)


@pytest.mark.parametrize("n, c, k", [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError, match="0 <= c <= n and 1 <= k <= n"):
        pass_at_k(n, c, k)


# --- maj@k ------------------------------------------------------------------------------------------------

def brute_maj_at_k(clusters, correct, k, no_answer="abstains"):
    """Over every k-subset, a plain vote count: the no-answer samples (-1) are left out ("abstains") or counted as
    one more answer, "none", that is never right ("votes"); a tie of m answers scores (right ones among them) / m;
    nobody voting scores 0."""
    right = {correct} if isinstance(correct, int) else set(correct)
    total = Fraction(0)
    subsets = list(combinations(range(len(clusters)), k))
    for s in subsets:
        votes = Counter("none" if clusters[i] == -1 else clusters[i] for i in s
                        if clusters[i] != -1 or no_answer == "votes")
        if votes:
            top = max(votes.values())
            tied = [a for a, v in votes.items() if v == top]
            total += Fraction(sum(a in right for a in tied), len(tied))
    return float(total / len(subsets))


def test_maj_at_k_by_hand():
    # abstains. subsets of 2 from [0, 0, 1, none]: {0,0} 1, {0,1} 1/2 x2, {0,-} 1 x2, {1,-} 0 -> 4/6
    assert maj_at_k([0, 0, 1, -1], correct=0, k=2, no_answer="abstains") == pytest.approx(2 / 3)
    # votes: the {0,-} pairs tie with the no-answer bloc: 1/2 each -> (1 + 1/2 + 1/2 + 1/2 + 1/2 + 0) / 6
    assert maj_at_k([0, 0, 1, -1], correct=0, k=2, no_answer="votes") == pytest.approx(3 / 6)
    assert maj_at_k([0, 0, 1, -1], correct=0, k=2) == pytest.approx(3 / 6)  # votes: the default
    for rule in ("votes", "abstains"):
        assert maj_at_k([0, 0, 1, -1], correct=0, k=1, no_answer=rule) == pytest.approx(2 / 4)  # maj@1 = pass@1
        assert maj_at_k([0, 0, 1, -1], correct=0, k=4, no_answer=rule) == 1.0  # 0 has 2 votes, 1 and none 1
        assert maj_at_k([1, 1, 2, -1], correct=-1, k=2, no_answer=rule) == 0.0  # nobody correct


def test_maj_at_k_no_answer_bloc_that_wins():
    """Issue 27: 3 correct + 5 without an answer, k = 8 (one subset): the bloc of 5 wins under the paper's rule."""
    clusters = [0, 0, 0, -1, -1, -1, -1, -1]
    assert maj_at_k(clusters, correct=0, k=8, no_answer="votes") == 0.0
    assert maj_at_k(clusters, correct=0, k=8, no_answer="abstains") == 1.0


def test_maj_at_k_one_right_one_wrong_six_without_answer():
    """Issue 27: 1 correct, 1 wrong, 6 without an answer, k = 3; C(8, 3) = 56 subsets, by hand:
    votes: {right, wrong, none} (6 subsets) is a three-way tie, 1/3 each; {right, none, none} (15) the bloc wins:
    2 / 56 = 0.0357. abstains: {right, wrong, none} ties right and wrong, 1/2 each; {right, none, none} right wins:
    (3 + 15) / 56 = 0.321."""
    clusters = [0, 1, -1, -1, -1, -1, -1, -1]
    assert maj_at_k(clusters, correct=0, k=3, no_answer="votes") == pytest.approx(2 / 56)
    assert maj_at_k(clusters, correct=0, k=3, no_answer="abstains") == pytest.approx(18 / 56)
    assert brute_maj_at_k(clusters, 0, 3, "votes") == pytest.approx(2 / 56)  # the brute force agrees with the hand


def test_maj_at_k_ties_with_the_bloc_and_k_equal_n():
    assert maj_at_k([0, 0, -1, -1], correct=0, k=4, no_answer="votes") == pytest.approx(1 / 2)  # 2 - 2 tie
    assert maj_at_k([0, 0, -1, -1], correct=0, k=4, no_answer="abstains") == 1.0
    assert maj_at_k([0, 0, 1, 1, -1, -1], correct=0, k=6, no_answer="votes") == pytest.approx(1 / 3)  # 3-way tie
    assert maj_at_k([0, 0, 1, 1, -1, -1], correct=0, k=6, no_answer="abstains") == pytest.approx(1 / 2)
    # k = n: one subset; 4 without an answer beat 3 right under votes
    clusters = [0, 0, 0, 1, 1, -1, -1, -1, -1]
    assert maj_at_k(clusters, correct=0, k=9, no_answer="votes") == 0.0
    assert maj_at_k(clusters, correct=0, k=9, no_answer="abstains") == 1.0


def test_maj_at_k_with_several_right_clusters():
    """The paper's grader clusters by answer text: "1/2" and "0.5" are two clusters, both right. [a, b, c, c] with
    a, b right, k = 2: {a,b} a tie of two right ones 1; {a,c}, {b,c} x2 each a tie 1/2; {c,c} 0 -> 3 / 6."""
    assert maj_at_k([0, 1, 2, 2], correct=[0, 1], k=2) == pytest.approx(3 / 6)
    assert maj_at_k([0, 1, 2, 2], correct=[0, 1], k=4) == 0.0  # c has 2 votes: the majority, though 2 are right
    assert maj_at_k([0, 1, 2, 2], correct=[], k=2) == 0.0


def test_maj_at_k_rejects_an_unknown_rule():
    with pytest.raises(ValueError, match="no_answer='none' is not one of \\['votes', 'abstains'\\]"):
        maj_at_k([0, 1], correct=0, k=1, no_answer="none")


@pytest.mark.parametrize("rule", ["votes", "abstains"])
@pytest.mark.parametrize("clusters, correct, k", [([0, 1, 1, 2, 0, -1], 0, 3), ([1, 2, 0, 0, 1, 2, -1, 3], 0, 4),
                                                  ([0, 1, 2, 3, 4, 5, 6], 0, 2), ([-1, -1, 0, 1, -1, 2, 0], 0, 3),
                                                  ([0, 1, -1, -1, 2, 2, 1], [0, 1], 4)])
def test_maj_at_k_exact_enumeration_equals_brute_force(clusters, correct, k, rule):
    assert maj_at_k(clusters, correct=correct, k=k, no_answer=rule) == \
        pytest.approx(brute_maj_at_k(clusters, correct, k, rule), abs=1e-12)


@pytest.mark.parametrize("rule", ["votes", "abstains"])
def test_maj_at_k_random_subsets_estimate_brute_force(rule):
    clusters = [0, 0, 0, 1, 1, 1, 1, 2, 2, -1, 0, 3]  # C(12, 6) = 924 subsets > 900: sampled
    exact = brute_maj_at_k(clusters, 0, 6, rule)
    estimate = maj_at_k(clusters, correct=0, k=6, subsets=900, seed=3, no_answer=rule)
    assert estimate == maj_at_k(clusters, correct=0, k=6, subsets=900, seed=3, no_answer=rule)  # seeded
    assert abs(estimate - exact) < 0.06  # 3.5 standard errors of a mean of 900 draws in [0, 1]


def test_maj_at_k_is_exact_for_every_k_of_16():
    """C(16, 8) = 12870 subsets: enumerated by default (the authors sample 1000)."""
    clusters = [0, 0, 0, 1, 1, 1, 1, 2, -1, -1, -1, -1, -1, 3, 0, 4]
    for k in (2, 8, 15):
        assert maj_at_k(clusters, correct=0, k=k) == pytest.approx(brute_maj_at_k(clusters, 0, k, "votes"), abs=1e-12)


def test_text_clusters_as_the_authors_count():
    ids, right = text_clusters(["1/2", "0.5", None, "3", "1/2", "3"], [1, 1, 0, 0, 1, 0])
    assert (ids, right) == ([0, 1, -1, 2, 0, 2], [0, 1])


def test_answer_clusters_use_the_graders_equivalence():
    answers = ["0.5", "\\frac{1}{2}", "\\frac{1}{3}", None, "\\dfrac{1}{3}", "7", "0 + 0.5"]
    ids, correct = answer_clusters(answers, "\\frac12")
    assert (ids, correct) == ([0, 0, 1, -1, 1, 2, 3], 0)
    assert answer_clusters(["7", None], "3") == ([1, -1], -1)


def test_maj_at_k_never_credits_what_pass_at_k_grades_wrong():
    """A hedge in side-by-side boxes grades 0; its last box alone is the gold. Majority voting must cluster the
    graded answer ("5, 7"), not the last box ("7"), or maj@k rewards a hedge that pass@k rejects."""
    from sharpening.llm.data import Problem
    from sharpening.llm.evaluation import score_problem

    texts = ["\\boxed{5}, \\boxed{7}"] * 3 + ["\\boxed{7}"]
    row = score_problem(Problem(id="p", problem="?", answer="7", source="t"), texts, [4.0] * 4, ks=(1, 4))
    assert row["correct"] == 1
    assert row["maj@k"]["4"] == 0.0  # the hedge is the majority (3 of 4) and it is wrong
    assert row["maj@k"]["1"] == pytest.approx(0.25)  # one sample: right exactly when it is the plain 7


# --- evaluate() bookkeeping with a stand-in engine (no model: fixed texts) --------------------------------

class ChatML:
    """A tokenizer stand-in with just a chat template."""

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return f"<user>{messages[0]['content']}</user><assistant>"


class FixedEngine:
    """Returns fixed responses per problem (keyed by the problem text in the prompt), with lengths."""

    def __init__(self, responses):
        self.responses, self.calls = responses, []

    def generate(self, prompts, n, max_new_tokens, temperature, top_p, ignore_eos=False, seed=None):
        self.calls.append((list(prompts), n, max_new_tokens, temperature, top_p, seed))
        texts = []
        for prompt in prompts:
            question = next(q for q in self.responses if q in prompt)
            texts += self.responses[question][:n]

        class Out:
            pass

        out = Out()
        out.texts, out.lengths = texts, [float(len(t)) for t in texts]
        return out


def test_evaluate_bookkeeping(tmp_path):
    problems = [Problem("a", "What is 1 + 2?", "3"), Problem("b", "What is 2 + 2?", "4"),
                Problem("c", "What is 5 + 5?", "10")]
    responses = {  # after the prefill "\boxed{": the grader sees "\boxed{" + text
        "1 + 2": ["3}", "3} yes", "4}", "no box"],  # c = 2; answers 3, 3, 4, none
        "2 + 2": ["5}", "5}", "4}", "6}"],  # c = 1; the majority is wrong
        "5 + 5": ["1 + 9}", "1 + 9}", "2}", "0 + 10}"],  # c = 0: restated sums are not answers
    }
    engine = FixedEngine(responses)
    out = tmp_path / "run" / "eval.json"
    result = evaluate(engine, {"tiny": problems}, n=4, ks=(1, 2, 4, 8), max_new_tokens=16, prefill="\\boxed{",
                      tokenizer=ChatML(), seed=5, prompts_per_call=2, out=out, info={"run": "r", "step": None})
    d = result["datasets"]["tiny"]
    assert [(p["id"], p["correct"]) for p in d["problems"]] == [("a", 2), ("b", 1), ("c", 0)]
    # pass@k by hand: a: 1/2, 1 - 1/6, 1; b: 1/4, 1 - 3/6, 1; c: 0
    assert d["pass@k"] == pytest.approx({"1": (1 / 2 + 1 / 4) / 3, "2": (5 / 6 + 1 / 2) / 3, "4": 2 / 3})
    # maj@k by hand. a: clusters [3, 3, 4, none]; k=2: {33} 1, {34} 1/2 x2, {3-} 1 x2 (abstains) or a tie with
    # the no-answer bloc 1/2 x2 (votes), {4-} 0 -> 4/6 (abstains), 3/6 (votes); k=4: 1.
    # b: [5, 5, 4, 6], correct 4; k=2: {55} 0, {54} 1/2 x2, {56} 0 x2, {46} 1/2 -> 1.5/6; k=4: 0. c: 0.
    assert d["maj@k"] == pytest.approx({"1": (1 / 2 + 1 / 4) / 3, "2": (3 / 6 + 1.5 / 6) / 3, "4": 1 / 3})
    assert result["maj_rule"] == "votes" and result["grader"] == "strict" and result["graders"] == ["strict"]
    assert d["by_grader"]["strict"]["maj@k"]["votes"] == d["maj@k"]
    assert d["by_grader"]["strict"]["maj@k"]["abstains"] == \
        pytest.approx({"1": (1 / 2 + 1 / 4) / 3, "2": (4 / 6 + 1.5 / 6) / 3, "4": 1 / 3})
    # the per-sample records: the graded text (prefill + response), the answer, correct, length; the stand-in
    # engine says nothing of EOS or lp_ref
    a = d["problems"][0]
    assert a["gold"] == "3" and a["correct_by_grader"] == {"strict": 2}
    assert a["samples"] == [
        {"text": "\\boxed{3}", "answer": "3", "correct": 1, "length": 2.0, "finish": None, "lp_ref": None},
        {"text": "\\boxed{3} yes", "answer": "3", "correct": 1, "length": 6.0, "finish": None, "lp_ref": None},
        {"text": "\\boxed{4}", "answer": "4", "correct": 0, "length": 2.0, "finish": None, "lp_ref": None},
        {"text": "\\boxed{no box", "answer": None, "correct": 0, "length": 6.0, "finish": None, "lp_ref": None}]
    assert d["cap_frac"] is None
    assert d["num_problems"] == 3
    assert d["mean_length"] == pytest.approx(sum(len(t) for r in responses.values() for t in r) / 12)
    # prompt-major calls of at most 2 prompts, the template through the chat template, the prefill at the end
    assert [len(c[0]) for c in engine.calls] == [2, 1]
    assert engine.calls[0][0][0].startswith("<user>Think step-by-step") and "What is 1 + 2?" in engine.calls[0][0][0]
    assert engine.calls[0][0][0].endswith("<assistant>\\boxed{")
    assert [c[1:] for c in engine.calls] == [(4, 16, 1.0, 1.0, 5), (4, 16, 1.0, 1.0, 7)]
    assert json.loads(out.read_text()) == result
    assert result["run"] == "r" and result["n"] == 4 and result["temperature"] == 1.0
    assert [p.name for p in out.parent.iterdir()] == ["eval.json"]  # no temp file left behind


def test_evaluate_on_a_list_and_bad_ks():
    engine = FixedEngine({"What is": ["3}"] * 2})
    problems = synthetic_problems(1, seed=0)
    result = evaluate(engine, problems, n=2, ks=(1, 2), max_new_tokens=4, prefill="\\boxed{", tokenizer=ChatML())
    assert list(result["datasets"]) == ["problems"]
    with pytest.raises(ValueError, match="no k in ks"):
        evaluate(engine, problems, n=2, ks=(4,), tokenizer=ChatML())


# --- the CLI core -----------------------------------------------------------------------------------------

def parse(argv):
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    return parser.parse_args(argv)


def test_eval_defaults():
    args = parse([])
    assert (args.n, args.ks, args.temperature, args.top_p, args.engine, args.limit) == \
        (16, "1,2,4,8,16", 1.0, 1.0, "hf", None)
    assert args.datasets == "math500,minerva_math,aime24,aime25,hmmt25"


@pytest.mark.parametrize("argv, message", [
    (["--ks", "1,x"], "--ks='1,x' must be comma-separated positive integers"),
    (["--ks", "0,1"], "--ks='0,1' must be"),
    (["--n", "0"], "--n=0 is out of range"),
    (["--top-p", "1.5"], "--top-p=1.5 is out of range"),
    (["--template", "no placeholder"], r"--template='no placeholder' is not one of \['direct_sums', 'paper', 'paper_tex', 'partial_sums', 'plain', 'worked_sum'\]"),
    (["--datasets", "nope"], "unknown problem source 'nope'"),
])
def test_eval_rejects_bad_flags_before_loading_a_model(argv, message):
    with pytest.raises(SystemExit, match=message):
        run_eval(parse(argv))


# --- end to end with the real model -----------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.llm
def test_evaluate_smollm2_end_to_end():
    from sharpening.llm.models import load_model, load_tokenizer
    from sharpening.llm.rollout import HFEngine

    tokenizer = load_tokenizer("smollm2")
    engine = HFEngine(load_model("smollm2"), tokenizer)
    problems = synthetic_problems(2, task="add", seed=11)
    result = evaluate(engine, {"add": problems}, n=4, ks=(1, 2, 4), max_new_tokens=16, prefill="\\boxed{", seed=0)
    d = result["datasets"]["add"]
    assert d["num_problems"] == 2 and 1 <= d["mean_length"] <= 16
    for k in (1, 2, 4):  # pass@k recomputed by hand from the per-problem counts
        by_hand = sum(1 - math.comb(4 - p["correct"], k) / math.comb(4, k) for p in d["problems"]) / 2
        assert d["pass@k"][str(k)] == pytest.approx(by_hand)
        assert 0.0 <= d["maj@k"][str(k)] <= 1.0
