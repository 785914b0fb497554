"""Problem loading (bundled JSONL, any JSONL, synthetic arithmetic) and the paper's prompt."""

import json
import re

import pytest

from sharpening.llm.data import (BENCHMARKS, PAPER_TEMPLATE, TEMPLATES, TURN, Problem, data_dir, format_prompt,
                                 load_problems, synthetic_problems)
from sharpening.llm.grading import grade


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
                                          ("add3", 2), ("add4", 1), ("add4", 2)])
def test_synthetic_answers_are_exact(task, digits):
    problems = synthetic_problems(50, task=task, digits=digits, seed=7)
    for p in problems:
        operands = [int(x) for x in re.findall(r"\d+", p.problem)]
        ops = re.findall(r" ([+\-*]) ", p.problem)
        assert p.problem.startswith("What is ") and p.problem.endswith("?")
        assert len(operands) == {"add_sub": 3, "add3": 3, "add4": 4}.get(task, 2)
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


def test_add3_splits_partition_its_thousand_questions():
    # the second task (synthetic:add3, one digit): 10 x 10 x 10 distinct questions, split by hash, never shared
    train = {p.problem for p in synthetic_problems(6000, task="add3", seed=1, split="train")}
    test = {p.problem for p in synthetic_problems(3000, task="add3", seed=2, split="test")}
    everything = {f"What is {a} + {b} + {c}?" for a in range(10) for b in range(10) for c in range(10)}
    assert train.isdisjoint(test)
    assert train | test == everything
    assert 250 <= len(test) <= 350  # about 30% held out
    held_out = load_problems("synthetic:add3", limit=64)  # what `sharpening llm eval` and the grid evaluate
    assert {p.problem for p in held_out} <= test


def test_add4_keeps_the_three_term_tasks_problems():
    # add4 draws its fourth operand after the others: add3's (and add's) problem k of a seed did not change
    for add3, add4 in zip(synthetic_problems(20, task="add3", seed=5), synthetic_problems(20, task="add4", seed=5)):
        assert add4.problem.startswith(add3.problem.removesuffix("?") + " + ")


class Dialogue:  # a chat template that shows each turn as [role]content
    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return "".join(f"[{m['role']}]{m['content']}" for m in messages) + "[assistant]"


def test_partial_sums_template_is_a_dialogue_of_right_worked_examples():
    text = format_prompt(Dialogue(), "What is 2 + 9 + 4?", template="partial_sums")
    turns = re.findall(r"\[(user|assistant)\]([^[]*)", text)
    assert [role for role, _ in turns] == ["user", "assistant"] * 4 + ["user", "assistant"]
    assert turns[-2] == ("user", "What is 2 + 9 + 4?") and turns[-1] == ("assistant", "")
    for (_, question), (_, answer) in zip(turns[0:8:2], turns[1:8:2]):
        a, b, c = (int(x) for x in re.findall(r"\d+", question))
        # the worked answer, line by line, checked by hand: a + b, then that plus c, then the boxed total
        assert answer == f"{a} + {b} = {a + b}\n{a + b} + {c} = {a + b + c}\n\\boxed{{{a + b + c}}}"
        assert grade(answer, str(a + b + c)) == 1.0
    direct = re.findall(r"\[assistant\]([^[]*)", format_prompt(Dialogue(), "What is 1 + 1 + 1?", "direct_sums"))
    assert direct[:2] == ["\\boxed{3 + 5 + 7 = 15}", "\\boxed{6 + 2 + 9 = 17}"]


def test_a_template_with_turns_needs_an_odd_count_ending_on_the_question():
    with pytest.raises(ValueError, match="an odd number of turns"):
        format_prompt(Dialogue(), "What is 1 + 1?", template=f"Q{TURN}A{TURN}B{TURN}{{problem}}")
    with pytest.raises(ValueError, match="the last one holding {problem}"):
        format_prompt(Dialogue(), "What is 1 + 1?", template=f"{{problem}}{TURN}A{TURN}Q")
    one_turn = "Solve:\n{problem}\n"  # no markers: the template is the user turn as written, newlines kept
    assert format_prompt(Dialogue(), "1 + 1", template=one_turn) == "[user]Solve:\n1 + 1\n[assistant]"


@pytest.mark.parametrize("response, gold, reward", [
    ("2 + 9 = 11\n11 + 4 = 15\n\\boxed{15}", "15", 1.0),    # the worked answer, as the examples show it
    ("\\boxed{2 + 9 + 4 = 11 + 4 = 15}", "15", 1.0),           # the partial sum as a chain in the box
    ("\\boxed{2 + 9 + 4 = 15}", "15", 1.0),                     # a direct answer
    ("2 + 9 = 11\n11 + 4 = 16\n\\boxed{16}", "15", 0.0),    # worked, wrong total
    ("2 + 9 = 11\n11 + 4 = 15", "15", 0.0),                    # no box
    ("\\boxed{2 + 9 + 4}", "15", 0.0),                          # the question copied
    ("What is 2 + 9 + 4?\n\\boxed{2 + 9 + 4}", "15", 0.0),    # the question copied, twice
    ("\\boxed{2 + 9 = 11, 11 + 4 = 15}", "15", 0.0),            # two answers in one box
])
def test_the_strict_grader_on_worked_sums(response, gold, reward):
    assert grade(response, gold) == reward


@pytest.mark.slow
@pytest.mark.llm
def test_partial_sums_with_smollm2_chat_template():
    from sharpening.llm.models import load_tokenizer

    text = format_prompt(load_tokenizer("smollm2"), "What is 2 + 9 + 4?", template=TEMPLATES["partial_sums"])
    # each worked example is an assistant turn closed by <|im_end|>, as the model's own answers end
    assert text.count("<|im_start|>assistant\n") == 5 and text.count("<|im_end|>") == 10
    assert "<|im_start|>assistant\n3 + 5 = 8\n8 + 7 = 15\n\\boxed{15}<|im_end|>\n" in text
    assert text.endswith("<|im_start|>user\nWhat is 2 + 9 + 4?<|im_end|>\n<|im_start|>assistant\n")
