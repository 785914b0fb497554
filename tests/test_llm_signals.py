"""The label-free signals in the trainer, on the real SmolLM2-135M-Instruct: after one step, the trainer's R equals
the signal recomputed here from the texts and from a separate plain forward pass (one unpadded sequence at a
time, no KV cache, none of the package's log-prob or certainty code)."""

import math

import numpy as np
import pytest
import torch

from sharpening.llm.grading import extract_boxed, grade
from test_llm_trainer import make_trainer, plain_logprobs

pytestmark = [pytest.mark.slow, pytest.mark.llm]

# 2 prompts x 4 samples, 6 new tokens: the prefill opens the box, so most responses carry an answer
SMALL = ["prompts_per_step=2", "group_size=4", "max_new_tokens=6", "steps=1", "lr=1e-5", "run_name=s"]


@pytest.fixture(scope="module")
def initial_model():
    from sharpening.llm.models import load_model

    return load_model("smollm2").eval()


def plain_distributions(model, roll, i):
    """log softmax of the next-token logits at each response token of response i: [T_i, V] float64."""
    prompt = roll.prompt_ids[i][roll.prompt_mask[i] > 0]
    T = int(roll.mask[i].sum())
    with torch.no_grad():
        logits = model(input_ids=torch.cat([prompt, roll.tokens[i, :T]])[None]).logits[0].double()
    return torch.log_softmax(logits[len(prompt) - 1:len(prompt) + T - 1], -1)


def one_step(tmp_path, regime):
    """Step 1 of a run (train_step: the step without the checkpoint train() writes after it) -> trainer, the
    rollout, R and the step's metrics (the line train() appends to metrics.jsonl)."""
    tr = make_trainer(tmp_path, f"regime={regime}", *SMALL)
    m = tr.train_step(1)
    return tr, tr.last["roll"], tr.last["R"], m


def test_self_likelihood_is_the_sampling_policys_log_likelihood(tmp_path, initial_model):
    tr, roll, R, _ = one_step(tmp_path, "{preset: self_likelihood, normalization: mean}")
    lp = (plain_logprobs(initial_model, roll) * roll.mask).sum(-1)  # step 1 samples from the initial weights
    torch.testing.assert_close(R, lp / roll.mask.sum(-1), atol=1e-4, rtol=0)


@pytest.mark.parametrize("preset", ["neg_entropy", "self_certainty"])
def test_certainty_rewards_are_the_token_mean_of_the_policys_distributions(tmp_path, initial_model, preset):
    tr, roll, R, m = one_step(tmp_path, preset)
    per_token = []
    for i in range(len(roll)):
        logp = plain_distributions(initial_model, roll, i)  # [T_i, V]
        if preset == "neg_entropy":
            per_token.append((logp.exp() * logp).sum(-1))  # -H
        else:
            per_token.append(-math.log(logp.shape[-1]) - logp.mean(-1))  # KL(U || pi)
    torch.testing.assert_close(R.double(), torch.stack([c.mean() for c in per_token]), atol=1e-4, rtol=0)
    assert m["certainty/token_mean"] == pytest.approx(float(torch.cat(per_token).mean()), abs=1e-4)


def test_majority_vote_and_its_metrics_are_recomputed_from_the_texts(tmp_path):
    tr, roll, R, m = one_step(tmp_path, "majority_vote")
    G, prefill, r_task = tr.cfg.group_size, tr.cfg.prefill, tr.last["r"]
    answers = [extract_boxed(prefill + t) for t in roll.texts]
    assert sum(a is not None for a in answers) >= 4  # the test exercises real votes
    expected, label_acc, tops = [], [], []
    for g in range(len(answers) // G):
        group = answers[g * G:(g + 1) * G]
        # by hand: an answer's votes are the responses whose answer equals it or grades equal to it
        votes = [0 if a is None else sum(b is not None and (a == b or grade("\\boxed{" + b + "}", a) == 1.0)
                                         for b in group) for a in group]
        top = max(votes)
        tops.append(top)
        winners = {a for a, v in zip(group, votes) if v == top and a is not None}
        expected += [1.0 / len(winners) if a in winners else 0.0 for a in group]
        correct = [a for a, r in zip(group, r_task[g * G:(g + 1) * G].tolist()) if r == 1.0]
        label_acc.append(len(winners & set(correct)) / len(winners) if winners else 0.0)
    torch.testing.assert_close(R, torch.tensor(expected), atol=1e-6, rtol=0)
    # the metrics docs/llm_trainer.md documents
    assert m["reward/signal"] == pytest.approx(float(np.mean(expected)))
    assert m["reward/task"] == pytest.approx(float(r_task.mean()))  # the real accuracy, logged all the same
    assert m["vote/answered_frac"] == pytest.approx(np.mean([a is not None for a in answers]))
    assert m["vote/top_share"] == pytest.approx(np.mean(tops) / G)  # votes of the majority answer
    assert m["vote/label_acc"] == pytest.approx(np.mean(label_acc))


def test_random_reward_is_the_seeded_bernoulli_of_each_prompt(tmp_path):
    tr, roll, R, _ = one_step(tmp_path, "{preset: random_reward, p: 0.5}")
    prompts = tr.batch(1)  # step 1's prompt indices; one rank
    u = np.concatenate([np.random.default_rng([tr.cfg.seed, 1, i]).random(tr.cfg.group_size) for i in prompts])
    torch.testing.assert_close(R, torch.tensor((u < 0.5).astype(np.float32)))
