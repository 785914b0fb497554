"""experiments/length_vs_accuracy.py: accuracy per length bin and for worked vs direct answers, against counts by
hand."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "length_vs_accuracy.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("length_vs_accuracy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


WORKED = "3 + 9 = 12\n12 + 8 = 20\n\\boxed{20}"
CHAIN = "\\boxed{3 + 9 + 8 = 12 + 8 = 20}"
DIRECT = "\\boxed{3 + 9 + 8 = 20}"


@pytest.mark.parametrize("text, steps", [(WORKED, 2), (CHAIN, 2), (DIRECT, 1), ("\\boxed{20}", 0),
                                         ("1 + 1 = 2\n2 + 1 = 3\n3 + 4 = 7\n\\boxed{7}", 3),
                                         ("x = 5 and y=-3, so 5-3 =2", 1)])
def test_steps_count_equals_between_numbers(script, text, steps):
    assert script.steps(text) == steps
    assert script.shows_partial_sums(text) == (steps >= 2)


def test_table_by_hand(script):
    # question q1: two worked responses (1 right), one direct (right); q2: one worked (right), one direct (wrong)
    samples = [
        {"id": "q1", "text": WORKED, "length": 15, "correct": 1.0, "truncated": False},
        {"id": "q1", "text": CHAIN, "length": 17, "correct": 0.0, "truncated": False},
        {"id": "q1", "text": DIRECT, "length": 9, "correct": 1.0, "truncated": False},
        {"id": "q2", "text": WORKED, "length": 16, "correct": 1.0, "truncated": True},
        {"id": "q2", "text": "\\boxed{20}", "length": 4, "correct": 0.0, "truncated": False},
    ]
    table = script.accuracy_table(samples, bin_width=8)
    assert table["responses"] == 5 and table["questions"] == 2
    assert table["pass@1"] == pytest.approx(3 / 5)
    assert table["mean_length"] == pytest.approx((15 + 17 + 9 + 16 + 4) / 5)
    assert table["cap_hit_fraction"] == pytest.approx(1 / 5)
    # bins [0, 8): the 4-token one; [8, 16): 9, 15; [16, 24): 17, 16
    assert [(b["lo"], b["hi"], b["n"]) for b in table["bins"]] == [(0, 8, 1), (8, 16, 2), (16, 24, 2)]
    assert [b["accuracy"] for b in table["bins"]] == pytest.approx([0.0, 1.0, 0.5])
    worked, direct = table["worked"], table["direct"]
    assert (worked["n"], direct["n"]) == (3, 2)
    assert worked["accuracy"] == pytest.approx(2 / 3) and direct["accuracy"] == pytest.approx(1 / 2)
    # s.e. over question means: worked q1 0.5, q2 1.0 -> sd 0.3536, / sqrt 2 = 0.25; direct q1 1, q2 0 -> 0.5
    assert worked["se"] == pytest.approx(0.25) and direct["se"] == pytest.approx(0.5)
    # within a question: q1 0.5 - 1 = -0.5, q2 1 - 0 = 1 -> mean 0.25; sd of (-0.5, 1) = 1.0607, / sqrt 2 = 0.75
    assert table["within_question"]["questions"] == 2
    assert table["within_question"]["worked_minus_direct"] == pytest.approx(0.25)
    assert table["within_question"]["se"] == pytest.approx(0.75)


def test_the_command_tabulates_a_samples_file(script, tmp_path, capsys):
    samples = [{"id": "q", "text": WORKED, "length": 15, "correct": 1.0, "truncated": False},
               {"id": "q", "text": DIRECT, "length": 9, "correct": 0.0, "truncated": False}]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    assert script.main(["--samples", str(path), "--bin-width", "10"]) == 0
    table = json.loads((tmp_path / "length_accuracy.json").read_text())
    assert [(b["lo"], b["n"], b["accuracy"]) for b in table["bins"]] == [(0, 1, 0.0), (10, 1, 1.0)]
    out = capsys.readouterr().out
    assert "partial sums" in out and "0-9" in out and "10-19" in out
    with pytest.raises(SystemExit, match="--bin-width=0"):
        script.main(["--samples", str(path), "--bin-width", "0"])
