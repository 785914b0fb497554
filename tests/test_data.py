"""Problem loading (bundled JSONL, any JSONL, synthetic arithmetic) and the paper's prompt."""

import json
import re

import pytest

from sharpening.llm.data import (BENCHMARKS, PAPER_TEMPLATE, Problem, data_dir, format_prompt, load_problems,
                                 synthetic_problems)


def test_bundled_benchmarks_load_with_their_row_counts():
    counts = {"math500": 500, "minerva_math": 272, "aime24": 30, "aime25": 30, "hmmt25": 30, "amc23": 40,
              "gsm8k_test": 1319, "math_train": 7498}
    assert set(counts) == set(BENCHMARKS)
    for name, count in counts.items():
        assert len(load_problems(name)) == count, name


def test_rows_are_read_as_written():
    first = json.loads(open(data_dir() / "aime24.jsonl").readline())
    p = load_problems("aime24")[0]
    assert (p.id, p.problem, p.answer, p.source) == (first["id"], first["problem"], first["answer"], "aime24")
    assert "025" in [q.answer for q in load_problems("aime24")]  # zero padding kept: the grader handles it


def test_limit_and_seeded_shuffle():
    all_ids = [p.id for p in load_problems("amc23")]
    assert [p.id for p in load_problems("amc23", limit=3)] == all_ids[:3]
    a = [p.id for p in load_problems("amc23", seed=1)]
    assert a == [p.id for p in load_problems("amc23", seed=1)] and a != all_ids and sorted(a) == sorted(all_ids)
    assert [p.id for p in load_problems("amc23", limit=5, seed=1)] == a[:5]
    with pytest.raises(ValueError, match="limit=0"):
        load_problems("amc23", limit=0)


def test_jsonl_path_with_field_aliases(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [{"id": "a", "problem": "1+1?", "answer": " 2 "},
            {"question": "2+2?", "answer": "4"},  # question for problem, no id
            {"problem": "x?", "solution": "so \\boxed{\\frac{1}{2}} and \\boxed{3}"}]  # answer from the last box
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    problems = load_problems(str(path))
    assert problems == [Problem("a", "1+1?", "2", "mine"), Problem("mine/1", "2+2?", "4", "mine"),
                        Problem("mine/2", "x?", "3", "mine")]


def test_data_dir_from_the_environment(tmp_path, monkeypatch):
    (tmp_path / "aime25.jsonl").write_text(json.dumps({"id": "q", "problem": "p", "answer": "7"}) + "\n")
    monkeypatch.setenv("SHARPENING_DATA", str(tmp_path))
    assert load_problems("aime25") == [Problem("q", "p", "7", "aime25")]
    with pytest.raises(ValueError, match="math500.jsonl.*does not exist; SHARPENING_DATA=.* must be a folder"):
        load_problems("math500")


@pytest.mark.parametrize("line, message", [
    ('{"problem": "p"}', r"bad.jsonl:2: a problem needs the fields 'problem'.*this row has \['problem'\]"),
    ('{"answer": "3"}', r"bad.jsonl:2: a problem needs"),
    ('{"problem": "p", "answer": ""}', r"bad.jsonl:2: a problem needs"),
    ('{"problem": "p", "answer": ', r"bad.jsonl:2: not valid JSON"),
])
def test_bad_rows_name_the_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"problem": "ok", "answer": "1"}\n' + line + "\n")
    with pytest.raises(ValueError, match=message):
        load_problems(str(path))


def test_bad_sources_say_what_is_allowed(tmp_path):
    with pytest.raises(ValueError, match="unknown problem source 'math5000'.*math500.*synthetic:<task>"):
        load_problems("math5000")
    with pytest.raises(ValueError, match="does not exist"):
        load_problems(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="synthetic task 'div' is not one of"):
        load_problems("synthetic:div")


# --- synthetic arithmetic ---------------------------------------------------------------------------------

@pytest.mark.parametrize("task, digits", [("add", 1), ("sub", 2), ("mul", 1), ("add_sub", 3), ("mul", 4), ("add3", 1),
                                          ("add3", 2)])
def test_synthetic_answers_are_exact(task, digits):
    problems = synthetic_problems(50, task=task, digits=digits, seed=7)
    for p in problems:
        operands = [int(x) for x in re.findall(r"\d+", p.problem)]
        ops = re.findall(r" ([+\-*]) ", p.problem)
        assert p.problem.startswith("What is ") and p.problem.endswith("?")
        assert len(operands) == (3 if task in ("add_sub", "add3") else 2)
        lo = 0 if digits == 1 else 10 ** (digits - 1)
        assert all(lo <= x < 10**digits for x in operands)
        value = operands[0]
        for op, x in zip(ops, operands[1:]):  # left to right, by hand
            value = value + x if op == "+" else value - x if op == "-" else value * x
        assert p.answer == str(value)


def test_synthetic_seeds_are_reproducible_and_disjoint():
    a, b = synthetic_problems(200, seed=0), synthetic_problems(200, seed=1)
    assert a == synthetic_problems(200, seed=0)
    assert not {p.id for p in a} & {p.id for p in b}
    assert [p.problem for p in a] != [p.problem for p in b]
    assert synthetic_problems(5, seed=0) == a[:5]  # problem k depends on k, not on n
    sums = {p.problem for p in synthetic_problems(2000, seed=3)}
    assert len(sums) == 100  # single-digit addition has exactly 10 x 10 questions, and they all turn up


def test_synthetic_through_load_problems():
    problems = load_problems("synthetic:mul:2", limit=5, seed=3)
    assert problems == synthetic_problems(5, task="mul", digits=2, seed=3, split="test")  # the default split
    with pytest.raises(ValueError, match="digits=0"):
        synthetic_problems(3, digits=0)


# --- the prompt -------------------------------------------------------------------------------------------

def test_template_needs_a_placeholder():
    with pytest.raises(ValueError, match="no {problem} placeholder"):
        format_prompt(None, "What is 1 + 1?", template="Solve this.")


@pytest.mark.slow
@pytest.mark.llm
def test_format_prompt_with_smollm2_chat_template():
    from sharpening.llm.models import load_tokenizer

    text = format_prompt(load_tokenizer("smollm2"), "What is 2 + 3?", prefill="\\boxed{")
    expected = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                "<|im_start|>user\nThink step-by-step to solve the following problem. Output your answer inside "
                "of \\\\boxed{} tags.:\nWhat is 2 + 3?\n\nLet's think step-by-step<|im_end|>\n"
                "<|im_start|>assistant\n\\boxed{")
    assert text == expected
    assert PAPER_TEMPLATE.count("{problem}") == 1


def test_worked_sum_template_shows_two_worked_sums_then_the_question():
    class Plain:  # a chat template that shows the user turn as it is
        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return f"[user]{messages[0]['content']}[assistant]"

    text = format_prompt(Plain(), "What is 59 + 63?", template="worked_sum", prefill="\\boxed{")
    assert text == ("[user]What is 12 + 35?\n\\boxed{12 + 35 = 47}\n\nWhat is 26 + 51?\n\\boxed{26 + 51 = 77}\n\n"
                    "What is 59 + 63?[assistant]\\boxed{")
    assert 12 + 35 == 47 and 26 + 51 == 77  # the worked examples are right


def test_synthetic_train_and_test_splits_never_share_a_question():
    # 1-digit addition has exactly 100 distinct questions; the two splits must partition them
    train = {p.problem for p in synthetic_problems(2000, task="add", digits=1, seed=1, split="train")}
    test = {p.problem for p in synthetic_problems(2000, task="add", digits=1, seed=2, split="test")}
    everything = {f"What is {a} + {b}?" for a in range(10) for b in range(10)}
    assert train.isdisjoint(test)
    assert train | test == everything
    assert 15 <= len(test) <= 45  # about 30% held out


def test_synthetic_split_is_checked():
    with pytest.raises(ValueError, match="split='validation'"):
        synthetic_problems(3, split="validation")
