"""The label-free signals in the LLM trainer: the inputs of sharpening.objective's formulas, from texts and a model.

    majority_vote    r = majority_vote_rewards(answer ids of each group): the answer of a response is
                     grading.extract_boxed(prefill + response); within a group, two answers are the same answer
                     when their strings are equal or the grader credits one against the other
                     (grade("\\boxed{a}", b) = 1: "0.5" and "\\frac{1}{2}" vote together); no box, or an
                     unclosed one, is no answer (never votes, never earns)
    random_reward    r = random_rewards(u, p), u ~ U[0, 1) from numpy's generator seeded by (seed, step, prompt
                     index): reproducible on resume, the same whatever the number of ranks, independent of y
    neg_entropy,     the per-token certainty of pi_old at each response position, token_certainty of the
    self_certainty   policy's full next-token logits from a no-grad forward pass of the policy before the update
                     (= pi_old: one update per step). One path for every engine: vLLM returns only the sampled
                     tokens' log-probs, not the distributions. It costs one forward pass, as lp_ref does.
    self_likelihood  lp_old, which every rollout already carries (lp_old_tok)

Relies on grading's public `grade(response, gold)` and `extract_boxed(text)` only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sharpening.llm.distributed import micro_batches
from sharpening.llm.models import position_ids
from sharpening.objective import Regime, majority_vote_rewards, random_rewards, token_certainty

CERTAINTY_CHUNK = 256  # response positions whose float32 log-softmax over the vocabulary is held at once


@dataclass
class SignalInputs:
    """What R needs besides r_task, lp_ref and lp_old: r (the signal's reward, None: R uses the task reward) [B]
    and certainty (per token [B, T], None unless the regime needs it); metrics to log."""

    r: torch.Tensor | None
    certainty: torch.Tensor | None
    metrics: dict


def answer_ids(texts, G: int, prefill: str = "") -> torch.Tensor:
    """Answer id of each response [B] (-1: no answer), equal within a group for the same answer (module docstring)."""
    from sharpening.llm.grading import extract_boxed, grade

    ids = []
    for start in range(0, len(texts), G):
        representatives: list[str] = []  # the first string of each answer of this group
        for text in texts[start:start + G]:
            answer = extract_boxed(prefill + text)
            if not answer:
                ids.append(-1)
                continue
            same = next((k for k, rep in enumerate(representatives)
                         if answer == rep or grade("\\boxed{" + answer + "}", rep) == 1.0), None)
            if same is None:
                representatives.append(answer)
                same = len(representatives) - 1
            ids.append(same)
    return torch.tensor(ids, dtype=torch.long)


def random_uniforms(seed: int, step: int, prompt_indices, G: int) -> torch.Tensor:
    """u [B]: G uniforms per prompt from numpy's generator seeded by (seed, step, prompt index)."""
    return torch.from_numpy(np.concatenate([np.random.default_rng([seed, step, int(i)]).random(G)
                                            for i in prompt_indices]))


@torch.no_grad()
def certainty_tokens(model, roll, regime: Regime, micro_batch_size: int) -> torch.Tensor:
    """token_certainty of the model's next-token distribution at each response token: [B, T] float32, 0 off the mask."""
    T = roll.tokens.shape[1]
    out = []
    for mb in micro_batches(len(roll), micro_batch_size):
        ids, attn = roll.input_ids()[mb], roll.attention_mask()[mb]
        logits = model(input_ids=ids, attention_mask=attn, position_ids=position_ids(attn),
                       logits_to_keep=T + 1).logits[:, :-1]  # [b, T, V]: the last prompt position predicts y_0
        out.append(torch.cat([token_certainty(regime, logits[:, s:s + CERTAINTY_CHUNK].float())
                              for s in range(0, T, CERTAINTY_CHUNK)], 1))
    return torch.cat(out).masked_fill(roll.mask == 0, 0.0)


def signal_inputs(regime: Regime, roll, r_task, G: int, *, policy=None, prefill: str = "", seed: int = 0,
                  step: int = 0, prompt_indices=(), micro_batch_size: int = 8) -> SignalInputs:
    """The signal's r and certainty for a rollout of len(prompt_indices) groups of G, with their metrics
    (documented in docs/llm_trainer.md). r_task [B]: the graded task reward, for the pseudo-label's accuracy."""
    r, certainty, m = None, None, {}
    device = roll.mask.device
    if regime.reward == "majority_vote":
        ids = answer_ids(roll.texts, G, prefill).view(-1, G)  # [n_groups, G]
        r = majority_vote_rewards(ids).view(-1).to(device=device, dtype=torch.float32)
        top = r.view(-1, G).sum(-1)  # votes of the majority answer (with ties: 1/k per tied response)
        label_acc = (r * r_task).view(-1, G).sum(-1) / top.clamp(min=1e-9)  # its chance of being the right one
        m = {"vote/answered_frac": (ids >= 0).float().mean(), "vote/top_share": top.mean() / G,
             "vote/label_acc": label_acc.mean()}
    elif regime.reward == "random":
        r = random_rewards(random_uniforms(seed, step, prompt_indices, G), regime.p).to(device, torch.float32)
    if r is not None:
        m["reward/signal"] = r.mean()
    if regime.needs_certainty:
        certainty = certainty_tokens(policy, roll, regime, micro_batch_size)
        m["certainty/token_mean"] = certainty.sum() / roll.mask.sum().clamp(min=1)
    return SignalInputs(r, certainty, {k: float(v) for k, v in m.items()})
