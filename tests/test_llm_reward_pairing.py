"""The task reward reaches the right sample: in a trainer step with several prompts, response i is graded as
prefill + response against the gold answer of the prompt it was sampled from. On the real SmolLM2, with single-digit
additions (each prompt its own answer) and the prefill `\\boxed{`, where the model answers right now and then."""

import re

import pytest
import torch
from test_llm_trainer import make_trainer

from sharpening.llm.grading import grade

pytestmark = [pytest.mark.slow, pytest.mark.llm]

PREFILL = "\\boxed{"  # TINY's prefill, which make_trainer passes


def test_each_sample_is_graded_with_its_own_prompt_and_the_prefill(tmp_path):
    tr = make_trainer(tmp_path, "regime=task_reward", "dataset=synthetic:add", "template=plain",
                      "prompts_per_step=4", "group_size=6", "seed=1")
    tr.train_step(1)
    roll, r = tr.last["roll"], tr.last["r"]
    assert roll.tokens.shape[0] == 24
    golds, expected = [], []
    for i in range(24):  # which prompt each sample came from, read from its own prompt tokens; the gold by hand
        prompt = tr.tokenizer.decode(roll.prompt_ids[i][roll.prompt_mask[i] > 0])
        assert prompt.endswith(PREFILL)
        a, b = map(int, re.findall(r"What is (\d) \+ (\d)\?", prompt)[-1])
        golds.append(str(a + b))
        response = tr.tokenizer.decode(roll.tokens[i, :int(roll.mask[i].sum())], skip_special_tokens=True)
        expected.append(grade(PREFILL + response, str(a + b)))
    assert r.tolist() == expected
    assert len(set(golds)) == 4 and all(golds[i] == golds[i - i % 6] for i in range(24))  # groups of G = 6
    # the check has teeth: some responses are right, and those would earn 0 against another prompt's answer or
    # without the prefill
    right = [i for i in range(24) if expected[i] == 1.0]
    assert right, "no response was right: the pairing went unchecked (change the seed)"
    for i in right:
        text = roll.texts[i]
        assert grade(text, golds[i]) == 0.0
        assert all(grade(PREFILL + text, g) == 0.0 for g in set(golds) - {golds[i]})
    assert torch.equal(tr.last["R"], r)  # task-reward RL: R = r
