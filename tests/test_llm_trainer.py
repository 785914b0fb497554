"""The trainer on the real SmolLM2-135M-Instruct: rollouts, shaped rewards, micro-batching, checkpoints, resume.

Tiny batches (1 prompt x G = 2..4, 8 new tokens) keep each step to seconds on 2 CPU cores. Log-probs are
checked against a plain forward pass written here: one unpadded sequence at a time, no KV cache, no
position ids, none of the package's log-prob code.
"""

import json

import pytest
import torch

from sharpening.llm.config import load_config
from sharpening.objective import Regime, shaped_reward

pytestmark = [pytest.mark.slow, pytest.mark.llm]

TINY = ["prompts_per_step=1", "group_size=2", "max_new_tokens=8", "prefill=\\boxed{", "warmup_steps=0",
        "warmup_start=1.0", "micro_batch_size=8", "save_every=0"]


@pytest.fixture(scope="module")
def initial_model():
    from sharpening.llm.models import load_model

    return load_model("smollm2").eval()


def plain_row(model, roll, i):
    """log p(y_it | x_i, y_i<t) of response i [T] (float64, 0 past its length; with grad if enabled): the
    sequence alone, unpadded, one full forward pass without cache or position ids."""
    prompt = roll.prompt_ids[i][roll.prompt_mask[i] > 0]
    T = int(roll.mask[i].sum())
    logp = torch.log_softmax(model(input_ids=torch.cat([prompt, roll.tokens[i, :T]])[None]).logits[0].double(), -1)
    out = torch.zeros(roll.tokens.shape[1], dtype=torch.float64)
    out[:T] = logp[len(prompt) - 1:len(prompt) + T - 1].gather(-1, roll.tokens[i, :T, None]).squeeze(-1)
    return out


def plain_logprobs(model, roll):
    """log p(y_t | x, y_<t) per response token [B, T]: each sequence alone, by plain_row."""
    with torch.no_grad():
        return torch.stack([plain_row(model, roll, i) for i in range(len(roll))]).to(roll.lp_old_tok.dtype)


def make_trainer(tmp_path, *overrides):
    from sharpening.llm.trainer import Trainer

    return Trainer(load_config(None, [f"out_dir={tmp_path}", *TINY, *overrides]))


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_rollout_logprobs_mask_and_fixed_length(initial_model):
    from sharpening.llm.data import format_prompt
    from sharpening.llm.models import load_tokenizer
    from sharpening.llm.rollout import HFEngine

    tok = load_tokenizer("smollm2")
    engine = HFEngine(initial_model, tok)
    prompts = [format_prompt(tok, q, prefill="\\boxed{") for q in ("What is 3 + 5?", "What is 12 + 7 - 4?")]
    roll = engine.generate(prompts, n=2, max_new_tokens=10, seed=0)  # [4, <=10]
    assert roll.tokens.shape[0] == 4 and roll.group.tolist() == [0, 0, 1, 1]
    torch.testing.assert_close(roll.lp_old_tok, plain_logprobs(initial_model, roll), atol=1e-4, rtol=0)
    for i in range(4):  # mask: a prefix; the response stops at its EOS or at 10 tokens
        T = int(roll.lengths[i])
        assert roll.mask[i, :T].all() and not roll.mask[i, T:].any()
        ends_with_eos = roll.tokens[i, T - 1].item() == tok.eos_token_id
        assert ends_with_eos != bool(roll.truncated[i]) and (T == 10 or ends_with_eos)
        assert roll.texts[i] == tok.decode(roll.tokens[i, :T], skip_special_tokens=True)
    again = engine.generate(prompts, n=2, max_new_tokens=10, seed=0)
    assert torch.equal(again.tokens, roll.tokens)  # seeded
    fixed = engine.generate(prompts, n=2, max_new_tokens=10, seed=1, ignore_eos=True)
    assert fixed.lengths.tolist() == [10.0] * 4 and fixed.truncated.all()


REGIME_A = ["regime={mode: sampling, alpha: 2, normalization: mean}", "lr=1e-4", "save_every=1"]


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    """An uninterrupted 2-step run of a regime that uses lp_ref, lp_old and lengths, checkpointed every step."""
    out = tmp_path_factory.mktemp("runs")
    tr = make_trainer(out, *REGIME_A, "steps=2", "run_name=a", "group_size=3")
    tr.train()
    return tr, out


def test_shaped_reward_equals_objective_on_independent_logprobs(run_a, initial_model):
    """Step 2 (the policy has moved): R == shaped_reward(regime, r, lp_ref, lp_old) with lp_ref from the initial
    model and lp_old from the step-1 checkpoint's weights, both recomputed by plain_logprobs."""
    from sharpening.llm.models import load_model

    tr, out = run_a
    roll, r, R = tr.last["roll"], tr.last["r"], tr.last["R"]
    lp_ref_tok = plain_logprobs(initial_model, roll)
    lp_old_tok = plain_logprobs(load_model(str(out / "a" / "checkpoints" / "step_000001")), roll)
    assert (lp_ref_tok - lp_old_tok).abs().sum() > 0.1  # the policy moved: lp_old is not lp_ref
    regime = Regime("sampling", alpha=2.0, beta_inv=0.0, normalization="mean")
    expected = shaped_reward(regime, r, lp_ref_tok, lp_old_tok, mask=roll.mask)
    torch.testing.assert_close(R, expected, atol=1e-4, rtol=0)
    # and by hand: (alpha - 1) * lp_ref / T + lp_ref - lp_old
    lp_ref, lp_old, T = (lp_ref_tok * roll.mask).sum(-1), (lp_old_tok * roll.mask).sum(-1), roll.mask.sum(-1)
    torch.testing.assert_close(R, lp_ref / T + lp_ref - lp_old, atol=1e-4, rtol=0)


def test_micro_batches_keep_the_token_mean_exact(tmp_path):
    """The gradient with micro-batches of 1 sequence equals the full-batch token-mean REINFORCE gradient."""
    from sharpening.llm.rollout import response_logprobs

    tr = make_trainer(tmp_path, "lr=0", "weight_decay=0", "max_grad_norm=1e9", "group_size=3")
    roll = tr.engine.generate([tr.prompts[0]], n=3, max_new_tokens=8, seed=3)
    A = torch.tensor([1.0, -2.0, 0.5])
    params = [p for p in tr.policy.parameters()]
    tr.policy.zero_grad()
    logp_tok = response_logprobs(tr.policy, roll)
    (-(A[:, None] * logp_tok * roll.mask).sum() / roll.mask.sum()).backward()  # the loss by hand
    full = [p.grad.clone() for p in params]
    tr.cfg.micro_batch_size = 1
    tr.update(roll, A, step=1)
    for g, p in zip(full, params):  # float32 rounding of the shared-prompt backward: ~1e-4 of a tensor's norm
        assert (p.grad - g).norm() <= 2e-3 * g.norm() + 1e-8


@pytest.mark.parametrize("regime", ["task_reward", "sharpening", "{preset: tempered, alpha: 2}",
                                    "{preset: tilted, alpha: 2, beta_inv: 100}"])
def test_two_steps_of_each_regime(tmp_path, regime):
    from sharpening.llm.checkpoint import latest_checkpoint

    tr = make_trainer(tmp_path, f"regime={regime}", "steps=2", "run_name=r", "lr=1e-5")
    tr.train()
    run = tmp_path / "r"
    lines = read_metrics(run)
    assert [m["step"] for m in lines] == [1, 2]
    needs_ref = tr.cfg.regime.needs_lp_ref
    for m in lines:
        assert 0 <= m["reward/task"] <= 1 and 1 <= m["length/mean"] <= 8 and 0 <= m["length/clipped_frac"] <= 1
        assert abs(m["adv/mean"]) < 1e-5  # leave-one-out advantages of a group sum to zero
        assert m["entropy"] > 0 and m["lp_old/mean"] < 0 and m["skipped"] == 0 and m["grad_norm"] >= 0
        assert m["lr"] == pytest.approx(1e-5) and m["time/step"] >= m["time/generate"] > 0
        assert ("lp_ref/mean" in m) == ("kl_ref" in m) == needs_ref
        if regime == "sharpening":  # R = lp_ref
            assert m["reward/shaped_mean"] == pytest.approx(m["lp_ref/mean"], abs=1e-4)
    assert lines[0].get("kl_ref", 0.0) == pytest.approx(0.0, abs=1e-3)  # step 1 samples from pi_ref itself
    ckpt = latest_checkpoint(run)
    assert ckpt.name == "step_000002" and (ckpt / "model.safetensors").exists()
    # the checkpoint resumes: a trainer with resume=true starts after step 2 with the trained weights
    resumed = make_trainer(tmp_path, f"regime={regime}", "steps=2", "run_name=r", "lr=1e-5", "resume=true")
    assert resumed.step == 2 and resumed.train() == []
    for p, q in zip(tr.policy.parameters(), resumed.policy.parameters()):
        assert torch.equal(p, q)


def test_resume_after_a_kill_matches_an_uninterrupted_run(run_a):
    """Run A: 2 steps. Run B: 1 step, a step-2 metrics line written before a kill (no step-2 checkpoint), then
    resume. B's metrics are steps 1, 2 once each and equal A's (all but timings); final weights are equal."""
    a, out = run_a
    make_trainer(out, *REGIME_A, "steps=1", "run_name=b", "group_size=3").train()
    with open(out / "b" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 2, "reward/task": 0.5}) + "\n")  # logged, then killed before saving
    b = make_trainer(out, *REGIME_A, "steps=2", "run_name=b", "group_size=3", "resume=true")
    assert b.step == 1
    b.train()
    lines_a, lines_b = read_metrics(out / "a"), read_metrics(out / "b")
    assert [m["step"] for m in lines_b] == [1, 2]
    untimed = lambda m: {k: v for k, v in m.items() if not k.startswith(("time/", "throughput/"))}  # noqa: E731
    assert [untimed(m) for m in lines_b] == [untimed(m) for m in lines_a]
    for p, q in zip(a.policy.parameters(), b.policy.parameters()):
        assert torch.equal(p, q)


def test_nonfinite_gradients_skip_the_update_and_stop_the_run(tmp_path):
    from sharpening.llm.trainer import TrainingDiverged

    tr = make_trainer(tmp_path, "regime=sharpening", "steps=5", "max_bad_steps=2", "run_name=nan")
    before = [p.detach().clone() for p in tr.policy.parameters()]
    tr.policy.get_input_embeddings().weight.register_hook(lambda g: g * float("nan"))  # a fault in backward
    with pytest.raises(TrainingDiverged, match="2 steps in a row"):
        tr.train()
    lines = read_metrics(tmp_path / "nan")
    assert [(m["step"], m["skipped"], m["grad_norm"]) for m in lines] == [(1, 1, None), (2, 1, None)]
    assert all(torch.equal(p, q) for p, q in zip(before, tr.policy.parameters()))  # no update was applied
