"""Per-sample records of every evaluation (issue 21 item 2): lp_ref against a plain forward pass written here, the
finish reason against the lengths, strict JSON, the trainer passing its grader and reference through, and the
rescoring of records under both graders and both maj@k rules."""

import json
import math

import pytest
import torch

from sharpening.llm.data import Problem, synthetic_problems
from sharpening.llm.evaluation import evaluate, format_table, grader_table, maj_at_k, rescore_result
from sharpening.llm.runs import finite_or_null as strict_json


def plain_sequence_logprob(model, roll, i):
    """sum_t log p(y_t | x, y_<t) of response i: the sequence alone, unpadded, one forward pass, no cache."""
    prompt = roll.prompt_ids[i][roll.prompt_mask[i] > 0]
    T = int(roll.mask[i].sum())
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.cat([prompt, roll.tokens[i, :T]])[None]).logits[0].double(), -1)
    return float(logp[len(prompt) - 1:len(prompt) + T - 1].gather(-1, roll.tokens[i, :T, None]).sum())


class Recording:
    """An engine wrapper that keeps every rollout it returns."""

    def __init__(self, engine):
        self.engine, self.tokenizer, self.rolls = engine, engine.tokenizer, []

    def generate(self, *args, **kwargs):
        self.rolls.append(self.engine.generate(*args, **kwargs))
        return self.rolls[-1]


@pytest.mark.slow
@pytest.mark.llm
def test_records_of_a_real_evaluation():
    from sharpening.llm.evaluation import reference_logprobs
    from sharpening.llm.models import load_model, load_tokenizer
    from sharpening.llm.rollout import HFEngine

    model = load_model("smollm2").eval()
    problems = synthetic_problems(2, task="add", seed=11)
    common = dict(n=3, ks=(1, 3), max_new_tokens=6, prefill="\\boxed{", seed=0, prompts_per_call=2)
    for lp_ref in ("engine", reference_logprobs("smollm2")):
        engine = Recording(HFEngine(model, load_tokenizer("smollm2")))
        result = evaluate(engine, {"add": problems}, lp_ref=lp_ref, graders=("strict", "paper"), **common)
        samples = [s for p in result["datasets"]["add"]["problems"] for s in p["samples"]]
        (roll,) = engine.rolls
        assert [s["lp_ref"] for s in samples] == pytest.approx(
            [plain_sequence_logprob(model, roll, i) for i in range(6)], abs=2e-3)
        assert [s["text"] for s in samples] == ["\\boxed{" + t for t in roll.texts]
        for s in samples:  # a response shorter than the budget ended on EOS; "cap" only at the budget
            assert s["finish"] in ("eos", "cap") and (s["finish"] == "eos" or s["length"] == 6)
            assert set(s) == {"text", "answer", "correct", "answer_paper", "correct_paper", "length", "finish",
                              "lp_ref"}
        d = result["datasets"]["add"]
        assert d["cap_frac"] == pytest.approx(sum(s["finish"] == "cap" for s in samples) / 6)
        assert result["graders"] == ["strict", "paper"] and set(d["by_grader"]) == {"strict", "paper"}
    json.dumps(result, allow_nan=False)  # strict JSON


def test_strict_json_and_the_table():
    assert strict_json({"a": [1.0, math.nan, {"b": -math.inf}], "c": "x"}) == {"a": [1.0, None, {"b": None}], "c": "x"}


class Texts:
    """A stand-in engine: fixed responses, a truncated flag and a NaN acceptance rate (a power sampler's chain with
    no proposal)."""

    def __init__(self, texts, truncated):
        self.texts, self.truncated = texts, truncated

    def generate(self, prompts, n, max_new_tokens, temperature, top_p, ignore_eos=False, seed=None):
        out = type("Out", (), {})()
        out.texts, out.lengths = list(self.texts), [4.0] * len(self.texts)
        out.truncated = torch.tensor(self.truncated)
        out.acceptance = torch.tensor([math.nan] * len(self.texts))
        return out


class ChatML:
    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return messages[0]["content"]


def test_evaluate_writes_strict_json_with_the_cap_fraction_and_both_rules(tmp_path):
    # 3 right (a box of 7), 5 without a box: the no-answer bloc wins maj@8 under the paper's rule only
    texts = ["7}"] * 3 + ["seven"] * 5
    engine = Texts(texts, [False, False, False, True, True, False, True, False])
    out = tmp_path / "eval.json"
    result = evaluate(engine, [Problem("p", "3 + 4?", "7")], n=8, ks=(1, 8), prefill="\\boxed{", tokenizer=ChatML(),
                      out=out)
    text = out.read_text()
    assert "NaN" not in text and json.loads(text) == result
    d = result["datasets"]["problems"]
    assert d["acceptance"] is None  # NaN -> null
    assert d["cap_frac"] == 3 / 8
    assert d["maj@k"]["8"] == 0.0 and d["by_grader"]["strict"]["maj@k"]["abstains"]["8"] == 1.0
    table = format_table(result)
    assert "maj@k: paper's rule: no answer votes" in table and table.splitlines()[0].split()[-1] == "cap"
    assert table.splitlines()[1].split()[-1] == "0.375"
    abstaining = evaluate(engine, [Problem("p", "3 + 4?", "7")], n=8, ks=(1, 8), prefill="\\boxed{",
                          tokenizer=ChatML(), maj_rule="abstains")
    assert abstaining["maj_rule"] == "abstains" and abstaining["datasets"]["problems"]["maj@k"]["8"] == 1.0
    assert "maj@k: abstaining rule" in format_table(abstaining)
    with pytest.raises(ValueError, match="maj_rule='x' is not one of"):
        evaluate(engine, [Problem("p", "3 + 4?", "7")], n=8, ks=(1,), tokenizer=ChatML(), maj_rule="x")
    with pytest.raises(ValueError, match="must be names among \\['strict', 'paper'\\]"):
        evaluate(engine, [Problem("p", "3 + 4?", "7")], n=8, ks=(1,), tokenizer=ChatML(), graders=("lenient",))


def test_rescore_from_records_under_both_graders_and_rules():
    """Records of one problem (gold 12), graded here by hand: strict needs the box; the paper's grader reads the
    last number anywhere."""
    samples = [{"text": t} for t in ["\\boxed{12}", "The answer is 12", "The answer is 12", "so 13", "no idea",
                                     "no idea", "no idea", "\\boxed{13}"]]
    result = {"datasets": {"d": {"pass@k": {"1": 0, "8": 0}, "problems": [{"id": "p", "gold": "12",
                                                                            "samples": samples}]}}}
    got = rescore_result(result)["d"]
    # strict: answers [12, -, -, -, -, -, -, 13]: 1 right of 8; 6 without an answer
    assert got["strict"]["pass@k"]["1"] == pytest.approx(1 / 8) and got["strict"]["no_answer"] == 6 / 8
    assert got["strict"]["maj@k"]["votes"]["8"] == 0.0  # the bloc of 6 wins
    assert got["strict"]["maj@k"]["abstains"]["8"] == pytest.approx(1 / 2)  # 12 and 13 tie
    # paper: answers [12, 12, 12, 13, -, -, -, 13]: 3 right; 3 without an answer
    assert got["paper"]["pass@k"]["1"] == pytest.approx(3 / 8) and got["paper"]["no_answer"] == 3 / 8
    assert got["paper"]["maj@k"]["votes"]["8"] == pytest.approx(1 / 2)  # 12 and the bloc tie at 3; 13 has 2
    assert got["paper"]["maj@k"]["abstains"]["8"] == 1.0
    assert got["paper"]["maj@k"]["votes"]["1"] == pytest.approx(3 / 8)
    table = grader_table(rescore_result(result))
    assert "| d | paper | 0.375 | paper's rule: no answer votes | 0.375 | 1.000 | 0.375 | 0.500 |" in table
    with pytest.raises(ValueError, match="no per-sample records"):
        rescore_result({"datasets": {"d": {"pass@k": {"1": 0}, "problems": [{"id": "p", "correct": 1, "n": 2}]}}})


def test_task_reward_takes_the_grader():
    from sharpening.llm.trainer import task_rewards

    assert task_rewards(["The answer is 12.", "\\boxed{12}"], ["12"], G=2).tolist() == [0.0, 1.0]
    assert task_rewards(["The answer is 12.", "\\boxed{12}"], ["12"], G=2, grader="paper").tolist() == [1.0, 1.0]


def test_config_grader_choice():
    from sharpening.llm.config import load_config

    assert load_config(None, []).grader == "strict"
    assert load_config(None, ["grader=paper"]).grader == "paper"
    with pytest.raises(ValueError, match="grader"):
        load_config(None, ["grader=lenient"])


@pytest.mark.slow
@pytest.mark.llm
def test_trainer_passes_grader_and_reference_to_its_evaluations(tmp_path):
    from sharpening.llm.config import load_config
    from sharpening.llm.trainer import Trainer

    cfg = load_config(None, [f"out_dir={tmp_path}", "prompts_per_step=1", "group_size=2", "max_new_tokens=6",
                             "prefill=\\boxed{", "warmup_steps=0", "micro_batch_size=8", "save_every=0", "steps=1",
                             "regime=sharpening", "grader=paper", "eval_datasets=[synthetic:add]", "eval_limit=1",
                             "eval_n=2", "eval_at_start=true", "eval_seed=5"])
    Trainer(cfg).train()
    for step in (0, 1):  # step 0: the engine's own log-probs (the policy is pi_ref); step 1: the frozen reference
        res = json.loads((cfg.run_dir / "eval" / f"step_{step:06d}.json").read_text())
        assert res["graders"] == ["paper", "strict"] and res["grader"] == "paper" and res["maj_rule"] == "votes"
        samples = res["datasets"]["synthetic:add"]["problems"][0]["samples"]
        assert len(samples) == 2 and all(isinstance(s["lp_ref"], float) and s["lp_ref"] < 0 for s in samples)
        assert all("correct_paper" in s and s["finish"] in ("eos", "cap") for s in samples)


# --- labels: every maj@k says its rule; files without one are the abstaining rule's ---------------------------

def write_eval(path, maj_rule=None, regime=None):
    path.mkdir(parents=True)
    data = {"run": path.name, "regime": regime, "model": "smollm2", "n": 4, "step": None, "temperature": 1.0,
            "datasets": {"d": {"num_problems": 1, "pass@k": {"1": 0.5, "16": 1.0}, "maj@k": {"1": 0.5, "16": 0.25},
                               "mean_length": 9.0, "problems": [{"id": "a", "correct": 2, "n": 4}]}}}
    if maj_rule is not None:
        data["maj_rule"] = maj_rule
    (path / "eval.json").write_text(json.dumps(data))
    return path / "eval.json"


def test_committed_maj_at_k_without_a_rule_is_labelled_abstaining(tmp_path):
    from sharpening.figures.llm_runs import load_results, results_markdown
    from sharpening.figures.pass_at_k import metric_label, read_eval

    legacy, new = read_eval(write_eval(tmp_path / "old" / "base")), read_eval(write_eval(tmp_path / "new", "votes"))
    assert (legacy.maj_rule, new.maj_rule) == ("abstains", "votes")
    assert metric_label("maj@16", [legacy]) == "maj@16 (abstaining rule)"
    assert metric_label("maj@16", [new]) == "maj@16 (paper's rule: no answer votes)"
    assert metric_label("pass@16", [legacy]) == "pass@16"
    header = [line for line in results_markdown(load_results(tmp_path / "old")).splitlines()
              if line.startswith("| condition")]
    assert header and all("| maj@k (abstaining rule) |" in line for line in header)



@pytest.mark.llm
def test_an_eos_ignored_evaluation_runs_every_response_to_the_budget_and_stays_out_of_the_base_rows(tmp_path):
    from sharpening.figures.llm_runs import load_results
    from sharpening.llm.models import load_model, load_tokenizer
    from sharpening.llm.rollout import HFEngine

    engine = HFEngine(load_model("smollm2").eval(), load_tokenizer("smollm2"))
    problems = {"add": synthetic_problems(2, task="add", seed=11)}
    out = tmp_path / "fixed" / "eval.json"
    info = {"run": "base:smollm2", "regime": None, "model": "smollm2"}
    result = evaluate(engine, problems, n=2, ks=(1,), max_new_tokens=5, prefill="\\boxed{", seed=0,
                      ignore_eos=True, out=out, info=info)
    samples = [s for p in result["datasets"]["add"]["problems"] for s in p["samples"]]
    assert result["ignore_eos"] is True and len(samples) == 4
    assert all(s["length"] == 5 and s["finish"] == "cap" for s in samples)  # no response stops at EOS
    assert result["datasets"]["add"]["cap_frac"] == 1.0
    honoured = evaluate(engine, problems, n=2, ks=(1,), max_new_tokens=5, prefill="\\boxed{", seed=0,
                        out=tmp_path / "base" / "eval.json", info=info)
    assert honoured["ignore_eos"] is False
    base = load_results(tmp_path).base  # the sensitivity evaluation is not the base model's row
    assert [b.path for b in base] == [str(tmp_path / "base" / "eval.json")]
