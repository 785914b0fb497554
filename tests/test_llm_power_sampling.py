"""Power sampling on the real SmolLM2-135M-Instruct: proposals carry the model's own log-probs (checked against
forward passes written here), answers are valid and reproducible, and `sharpening llm eval --sampler` records them.

Tiny runs (2 prompts x 2 chains, 8 new tokens, blocks of 2-4 tokens, 1-2 MCMC steps) keep each test to seconds."""

import argparse
import json
import math

import pytest
import torch

from sharpening.llm.data import format_prompt, synthetic_problems
from sharpening.llm.evaluation import add_eval_arguments, evaluate, run_eval
from sharpening.mcmc import PowerSampling

QUESTIONS = ["What is 3 + 4?", "What is 8 + 9?"]


def parse(argv):
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize("argv, message", [
    (["--sampler", "temperature", "--temperature", "0.5"], "drop --temperature=0.5"),
    (["--sampler", "power", "--top-p", "0.9"], "drop --temperature=1.0 and --top-p=0.9"),
    (["--sampler", "power", "--engine", "vllm"], "--sampler power runs on --engine hf"),
    (["--sampler", "power", "--max-total-tokens", "64"], "drop --max-total-tokens=64"),
    (["--sampler", "temperature", "--alpha", "0"], "--alpha=0.0 must be > 0"),
    (["--sampler", "power", "--mcmc-steps", "-1"], "mcmc_steps=-1 must be an int >= 0"),
    (["--sampler", "power", "--block-size", "0"], "block_size=0 must be an int >= 1"),
    (["--sampler", "gibbs"], None),
])
def test_eval_rejects_bad_sampler_flags_before_loading_a_model(argv, message):
    with pytest.raises(SystemExit, match=message):
        run_eval(parse(["--datasets", "synthetic:add", *argv]))


# --- with the real model ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_and_tokenizer():
    from sharpening.llm.models import load_model, load_tokenizer

    return load_model("smollm2").eval(), load_tokenizer("smollm2")


def prompts(tokenizer):
    return [format_prompt(tokenizer, q, "plain", "\\boxed{") for q in QUESTIONS]


def plain_logits(model, ids):
    """Next-token logits [len(ids), V] of one unpadded sequence, by a full forward pass (no cache, no positions)."""
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids)[None]).logits[0].double()


@pytest.mark.slow
@pytest.mark.llm
@pytest.mark.parametrize("reuse", [False, True])
def test_proposals_carry_the_models_log_probs_at_both_temperatures(model_and_tokenizer, reuse):
    """Suffixes proposed after kept prefixes of different lengths (0, 2, 5, 3 tokens): each token's lp is
    log softmax(logits) and lq is log softmax(logits / tau) of a plain forward pass of prompt + kept + suffix.
    reuse: the proposer keeps the first proposals' keys and values and feeds the model only the last kept token
    of each row (counted), instead of re-reading every kept token."""
    from sharpening.llm.power_sampling import HFProposer
    from sharpening.llm.rollout import HFEngine

    model, tokenizer = model_and_tokenizer
    engine = HFEngine(model, tokenizer)
    enc = tokenizer(prompts(tokenizer), return_tensors="pt", padding=True, padding_side="left",
                    add_special_tokens=False)
    tau, g = 0.25, torch.Generator().manual_seed(0)
    chain_prompt = torch.tensor([0, 0, 1, 1])
    with torch.no_grad():
        proposer = HFProposer(model, enc.input_ids, enc.attention_mask, chain_prompt, engine.eos_ids, tau,
                              max_new_tokens=8 if reuse else None)
        rows = torch.arange(4)
        first = proposer.extend(rows, torch.zeros(4, 8, dtype=torch.long), torch.zeros(4, dtype=torch.long), 6, g)
        tokens = torch.zeros(4, 8, dtype=torch.long)
        tokens[:, :first.tokens.shape[1]] = first.tokens
        keep = torch.minimum(torch.tensor([0, 2, 5, 3]), first.length - 1)
        before = proposer.fed_tokens
        suffix = proposer.extend(rows, tokens, keep, 8, g)
        # the model ran the kept tokens (all, or the last of each row with reuse), then every new token but the last
        kept_run = int((keep > 0).sum()) if reuse else int(keep.sum())
        assert proposer.fed_tokens - before == kept_run + int((suffix.length - 1).sum())
    for c in range(4):
        prompt = enc.input_ids[chain_prompt[c]][enc.attention_mask[chain_prompt[c]] > 0].tolist()
        n = int(suffix.length[c])
        assert 1 <= n <= 8 - keep[c]
        new = suffix.tokens[c, :n].tolist()
        logits = plain_logits(model, prompt + tokens[c, :keep[c]].tolist() + new)
        at = logits[len(prompt) + int(keep[c]) - 1:-1]  # [n, V] the logits that predicted each new token
        lp = torch.log_softmax(at, -1)[torch.arange(n), new]
        lq = torch.log_softmax(at / tau, -1)[torch.arange(n), new]
        torch.testing.assert_close(suffix.lp[c, :n].double(), lp, atol=2e-4, rtol=0)
        torch.testing.assert_close(suffix.lq[c, :n].double(), lq, atol=1e-3, rtol=0)
        ends = new[-1] in engine.eos_ids.tolist()
        assert bool(suffix.ended[c]) == ends and (ends or n == 8 - keep[c])  # stops at EOS or at the limit


@pytest.mark.slow
@pytest.mark.llm
def test_power_sampling_returns_valid_reproducible_answers_with_forward_pass_log_probs(model_and_tokenizer):
    from sharpening.llm.grading import grade
    from sharpening.llm.models import sequence_logprobs
    from sharpening.llm.power_sampling import PowerSamplingEngine
    from sharpening.llm.rollout import HFEngine

    model, tokenizer = model_and_tokenizer
    engine = PowerSamplingEngine(HFEngine(model, tokenizer), PowerSampling(alpha=4.0, block_size=4, mcmc_steps=2))
    roll = engine.generate(prompts(tokenizer), n=2, max_new_tokens=8, seed=3)
    assert len(roll.texts) == 4 and roll.tokens.shape[1] <= 8
    eos = engine.engine.eos_ids
    for i in range(4):
        T = int(roll.lengths[i])
        ends = bool(torch.isin(roll.tokens[i, T - 1], eos))
        assert ends or T == 8 and bool(roll.truncated[i])
        assert grade("\\boxed{" + roll.texts[i], "7" if i < 2 else "17") in (0.0, 1.0)
    # 2 blocks of 4 tokens, 2 MCMC steps each: every proposal generates >= 1 token that the final response
    # does not hold (rejected, or replacing >= 1 earlier token), so generated >= length + 4
    assert (roll.acceptance >= 0).all() and (roll.acceptance <= 1).all()
    assert (roll.generated_tokens >= roll.lengths.long() + 4).all()
    P = roll.prompt_ids.shape[1]
    response = torch.zeros_like(roll.attention_mask())
    response[:, P:] = roll.attention_mask()[:, P:]
    with torch.no_grad():
        forward = sequence_logprobs(model, roll.input_ids(), roll.attention_mask(), response)[:, P:]
    torch.testing.assert_close(roll.lp_old_tok, forward, atol=2e-4, rtol=0)
    again = engine.generate(prompts(tokenizer), n=2, max_new_tokens=8, seed=3)
    assert again.texts == roll.texts and torch.equal(again.tokens, roll.tokens)
    assert torch.equal(again.acceptance, roll.acceptance)


@pytest.mark.slow
@pytest.mark.llm
def test_evaluate_reports_each_answers_cost(model_and_tokenizer):
    """tokens_per_answer and acceptance in eval.json: the means of what the engine reported per answer (averaged
    per problem, then over problems), recomputed from a second, identically seeded generate call."""
    from sharpening.llm.power_sampling import PowerSamplingEngine
    from sharpening.llm.rollout import HFEngine

    model, tokenizer = model_and_tokenizer
    engine = PowerSamplingEngine(HFEngine(model, tokenizer), PowerSampling(alpha=4.0, block_size=4, mcmc_steps=1))
    problems = synthetic_problems(2, task="add", seed=5)
    d = evaluate(engine, problems, n=2, ks=(1, 2), max_new_tokens=8, prefill="\\boxed{", template="plain",
                 seed=0)["datasets"]["problems"]
    roll = engine.generate([format_prompt(tokenizer, p.problem, "plain", "\\boxed{") for p in problems], n=2,
                           max_new_tokens=8, seed=0)
    per_problem = roll.generated_tokens.double().view(2, 2).mean(1)
    assert d["tokens_per_answer"] == pytest.approx(float(per_problem.mean()))
    assert d["acceptance"] == pytest.approx(float(roll.acceptance.double().view(2, 2).mean(1).mean()))
    assert d["tokens_per_answer"] > d["mean_length"]


@pytest.mark.slow
@pytest.mark.llm
def test_eval_cli_power_and_temperature_samplers_are_seeded(tmp_path):
    """`sharpening llm eval --sampler power`: same seed, same answers (the whole eval.json); --sampler temperature
    samples at 1/alpha; both record the sampler."""
    common = ["--datasets", "synthetic:add", "--limit", "2", "--n", "2", "--ks", "1,2", "--max-new-tokens", "6",
              "--prefill", "\\boxed{", "--template", "plain"]
    power = common + ["--sampler", "power", "--alpha", "4", "--mcmc-steps", "1"]
    results = []
    for name in ("a", "b"):
        assert run_eval(parse(power + ["--out", str(tmp_path / name)])) == 0
        results.append(json.loads((tmp_path / name / "eval.json").read_text()))
    assert results[0] == results[1]
    assert results[0]["sampler"] == {"name": "power", "alpha": 4.0, "block_size": 1, "mcmc_steps": 1,
                                     "proposal_temperature": 0.25, "stop_at_eos": False}
    d = results[0]["datasets"]["synthetic:add"]
    assert 0 <= d["acceptance"] <= 1 and d["tokens_per_answer"] > d["mean_length"]
    assert run_eval(parse(common + ["--sampler", "temperature", "--alpha", "4", "--out", str(tmp_path / "t")])) == 0
    t = json.loads((tmp_path / "t" / "eval.json").read_text())
    assert t["temperature"] == 0.25 and t["sampler"] == {"name": "temperature", "alpha": 4.0}
    assert t["datasets"]["synthetic:add"]["tokens_per_answer"] == pytest.approx(t["datasets"]["synthetic:add"]
                                                                                ["mean_length"])
    assert not math.isnan(d["tokens_per_answer"])
