"""The rollout engine's speed-ups keep the numbers: the shared-prompt forward, inverse-CDF sampling, fused
log-probs, and the allocator setting. References: softmax by hand, one unpadded sequence at a time through
the plain model (test_llm_trainer.plain_row), page-fault counts from the kernel."""

import math
import os
import subprocess
import sys

import pytest
import torch

from sharpening.llm.rollout import sample_next
from test_llm_trainer import plain_row  # the independent reference: one unpadded sequence, full forward


def test_sample_next_draws_from_the_softmax():
    """200,000 draws per row: frequencies within 5 standard errors of softmax(logits / T); p = 0 never drawn."""
    logits = torch.tensor([[2.0, 0.0, -1.0, -math.inf, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    for temperature in (1.0, 0.5):
        B = 200_000
        y = sample_next(logits.repeat_interleave(B, 0), temperature, generator=torch.Generator().manual_seed(0))
        for row in range(2):
            z = logits[row].double() / temperature
            p = torch.exp(z - z.max()) / torch.exp(z - z.max()).sum()  # by hand
            freq = torch.bincount(y[row * B:(row + 1) * B], minlength=5).double() / B
            se = torch.sqrt(p * (1 - p) / B)
            assert ((freq - p).abs() <= 5 * se + 1e-12).all(), (row, temperature, freq, p)
            assert freq[p == 0].sum() == 0


def test_sample_next_top_p_keeps_the_nucleus():
    """p = (0.5, 0.3, 0.15, 0.05): top_p 0.7 keeps the two most likely (0.5 + 0.3 >= 0.7), renormalized."""
    p = torch.tensor([0.15, 0.5, 0.05, 0.3])
    B = 100_000
    y = sample_next(p.log().repeat(B, 1), top_p=0.7, generator=torch.Generator().manual_seed(1))
    freq = torch.bincount(y, minlength=4).double() / B
    assert freq[0] == 0 and freq[2] == 0
    assert abs(freq[1] - 0.5 / 0.8) < 5 * math.sqrt(0.625 * 0.375 / B)


def test_token_logprobs_is_the_log_softmax_at_the_targets():
    from sharpening.llm.models import token_logprobs

    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(3, 4, 50, generator=g) * 5, torch.randint(50, (3, 4), generator=g)
    expected = torch.log_softmax(logits.double(), -1).gather(-1, targets[..., None]).squeeze(-1)
    torch.testing.assert_close(token_logprobs(logits, targets).double(), expected, atol=1e-5, rtol=0)


FAULTS_PER_STEP = """
import resource, sys, torch
from sharpening.llm.allocator import retain_freed_memory
if sys.argv[1] == "retain" and not retain_freed_memory():
    print("unsupported"); sys.exit()
lin = torch.nn.Linear(4096, 4096)  # a 64 MiB weight, so a 64 MiB gradient every step
x = torch.randn(256, 4096)
faults = []
for _ in range(12):  # steps; the heap grows over the first few (measured: steady from step 6 on)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    lin(x).square().sum().backward()
    lin.weight.grad = None  # freed, as zero_grad(set_to_none=True) does
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[-4:]))  # over the last 4 steps: the heap's steady state
"""


def test_retain_freed_memory_stops_page_faults_on_reallocation():
    """In a fresh process, as in a training run: with the allocator's defaults each step's 64 MiB gradient is a
    fresh mmap that faults in again (glibc here: 16,385 pages every one of the last 4 of 12 steps); after the
    setting the freed memory is reused. Judged as a ratio against the default measured here, in the same test,
    so the bound holds whatever the machine's page size or allocator thresholds: at most 1/10 of the faults
    (measured here: 0 against 66,000-70,000)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    faults = {mode: subprocess.run([sys.executable, "-c", FAULTS_PER_STEP, mode], capture_output=True, text=True,
                                   check=True, env=env).stdout.split()[-1] for mode in ("default", "retain")}
    if faults["retain"] == "unsupported":
        pytest.skip("not glibc, or LD_PRELOAD set")
    if int(faults["default"]) == 0:
        pytest.skip(f"the default allocator already reuses freed memory here: nothing to improve ({faults})")
    assert int(faults["retain"]) <= 0.1 * int(faults["default"]), faults


# -- on the real SmolLM2 -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_and_rollout():
    from sharpening.llm.data import format_prompt
    from sharpening.llm.models import load_model, load_tokenizer
    from sharpening.llm.rollout import HFEngine

    tok = load_tokenizer("smollm2")
    model = load_model("smollm2")
    prompts = [format_prompt(tok, q, prefill="\\boxed{") for q in ("What is 3 + 5?", "What is 12 + 7 - 4? Show work.")]
    roll = HFEngine(model, tok).generate(prompts, n=3, max_new_tokens=9, seed=5)  # prompts of unequal length
    assert roll.prompt_mask.min() == 0  # the shorter prompt is left-padded
    return model.train(), roll


@pytest.mark.slow
@pytest.mark.llm
def test_shared_prompt_forward_gives_the_log_probs_and_gradient_of_full_forwards(model_and_rollout):
    from sharpening.llm.rollout import response_logprobs

    model, roll = model_and_rollout
    A = torch.tensor([1.0, -0.5, 2.0, -1.0, 0.3, 0.7], dtype=torch.float64)
    params = [p for p in model.parameters() if p.requires_grad]
    plain_loss = sum(A[i] * plain_row(model, roll, i).sum() for i in range(len(roll)))  # sum_i A_i sum_t log p
    expected = torch.autograd.grad(plain_loss, params)
    logp = response_logprobs(model, roll)  # shared prompt (the default)
    assert logp.shape == roll.tokens.shape and (logp[roll.mask == 0] == 0).all()
    got = torch.autograd.grad((A[:, None] * logp.double()).sum(), params)
    for g, e in zip(got, expected):
        assert (g.double() - e).norm() <= 1e-3 * e.norm() + 1e-6
    with torch.no_grad():  # rows that cut through a group, the groups out of order
        for rows in (slice(1, 4), torch.tensor([5, 0, 3])):
            ref = torch.stack([plain_row(model, roll, int(i)) for i in torch.arange(len(roll))[rows]])
            torch.testing.assert_close(response_logprobs(model, roll, rows).double(), ref, atol=1e-4, rtol=0)


@pytest.mark.slow
@pytest.mark.llm
def test_activation_checkpointing_falls_back_to_the_full_forward(model_and_rollout):
    """Under gradient checkpointing a layer's recomputation would replay the cache writes: the full pass runs,
    with the same log-probs and a working backward."""
    from sharpening.llm.models import uses_activation_checkpointing
    from sharpening.llm.rollout import response_logprobs

    model, roll = model_and_rollout
    assert not uses_activation_checkpointing(model)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        assert uses_activation_checkpointing(model)
        with torch.no_grad():
            assert not uses_activation_checkpointing(model)  # nothing is recomputed without gradients
        logp = response_logprobs(model, roll)
        ref = torch.stack([plain_row(model, roll, i) for i in range(len(roll))]).detach()
        torch.testing.assert_close(logp.detach().double(), ref, atol=1e-4, rtol=0)
        logp.sum().backward()
        assert model.model.embed_tokens.weight.grad.abs().sum() > 0
    finally:
        model.gradient_checkpointing_disable()
        model.zero_grad(set_to_none=True)
