"""Seconds per RL training step: our trainer against TRL's GRPOTrainer, same model, batch, lengths, machine.

    python bench/llm_step.py [--prompts 1] [--G 8] [--tokens 64] [--steps 3]

Both sides: SmolLM2-135M-Instruct in float32 on CPU, `prompts` x G sampled responses of exactly `tokens` new
tokens (EOS is ignored on our side and suppressed on TRL's, so both generate and train on the same number of
tokens), pure sampling (temperature 1, top_k 0, top_p 1), task reward from the same grader, no KL term (TRL
beta = 0; our task_reward regime needs no reference forward), token-mean loss (TRL loss_type "dapo"),
one update per batch, AdamW, clipping at 1.0. TRL scales advantages by the group mean only
(scale_rewards="none"), we use leave-one-out: the same cost. The first step of each is a warm-up and not timed.
Also timed: the generation floor (our engine generating the same tokens alone, the cost no trainer avoids),
and our sharpening step (task reward + a reference forward pass). Prints the ratio TRL / ours (goal >= 1.5).

Our trainer raises glibc's mmap/trim thresholds on CPU (sharpening/llm/allocator.py), a process-wide setting:
TRL runs first, as it ships, and once more at the end with that setting, so the printout separates the
allocator's share of the gain from the trainer's (shared prompt forward, fused log-probs, cheaper sampling).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch


def ours(args, regime: str, out_dir: str) -> list[float]:
    from sharpening.llm.config import load_config
    from sharpening.llm.trainer import Trainer

    cfg = load_config(None, [f"out_dir={out_dir}", f"run_name=ours_{regime}", f"regime={regime}",
                             f"prompts_per_step={args.prompts}", f"group_size={args.G}",
                             f"max_new_tokens={args.tokens}",
                             "ignore_eos=true", "prefill=\\boxed{", f"micro_batch_size={args.prompts * args.G}",
                             f"steps={args.steps + 1}", "save_every=0", "lr=1e-6", "warmup_steps=0", "warmup_start=1"])
    trainer = Trainer(cfg)
    trainer.save = lambda: None  # the bench times steps, not checkpoint writes
    return [m["time/step"] for m in trainer.train()[1:]]


def generation_floor(args) -> list[float]:
    from sharpening.llm.data import format_prompt, synthetic_problems
    from sharpening.llm.models import load_model, load_tokenizer
    from sharpening.llm.rollout import HFEngine

    tok = load_tokenizer("smollm2")
    engine = HFEngine(load_model("smollm2"), tok)
    prompts = [format_prompt(tok, p.problem, prefill="\\boxed{") for p in synthetic_problems(args.prompts, seed=1)]
    times = []
    for i in range(args.steps + 1):
        t = time.perf_counter()
        engine.generate(prompts, n=args.G, max_new_tokens=args.tokens, ignore_eos=True, seed=i)
        times.append(time.perf_counter() - t)
    return times[1:]


def trl_grpo(args, out_dir: str) -> list[float]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from sharpening.llm.data import format_prompt, synthetic_problems
    from sharpening.llm.grading import grade
    from sharpening.llm.models import load_model, load_tokenizer

    tok = load_tokenizer("smollm2")
    problems = synthetic_problems(args.prompts * (args.steps + 1), seed=42)
    data = Dataset.from_list([{"prompt": format_prompt(tok, p.problem, prefill="\\boxed{"), "answer": p.answer}
                              for p in problems])

    def task_reward(completions, answer, **_):
        return [grade("\\boxed{" + c, a) for c, a in zip(completions, answer)]

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_begin(self, *_, **__):
            self.t = time.perf_counter()

        def on_step_end(self, *_, **__):
            self.times.append(time.perf_counter() - self.t)

    config = GRPOConfig(output_dir=out_dir, per_device_train_batch_size=args.prompts * args.G,
                        num_generations=args.G, max_completion_length=args.tokens, temperature=1.0, top_k=0,
                        top_p=1.0, beta=0.0, loss_type="dapo", scale_rewards="none", num_iterations=1,
                        learning_rate=1e-6, weight_decay=0.01, max_grad_norm=1.0, lr_scheduler_type="constant",
                        max_steps=args.steps + 1, use_cpu=True, bf16=False, report_to="none", save_strategy="no",
                        logging_steps=1, seed=42, shuffle_dataset=False,
                        gradient_checkpointing=False,  # TRL enables it by default; ours does not recompute
                        generation_kwargs={"min_new_tokens": args.tokens})  # EOS suppressed: fixed length
    timer = StepTimer()
    trainer = GRPOTrainer(model=load_model("smollm2"), reward_funcs=task_reward, args=config, train_dataset=data,
                          processing_class=tok, callbacks=[timer])
    trainer.train()
    return timer.times[1:]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=1)
    parser.add_argument("--G", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    args = parser.parse_args()
    print(f"{args.prompts} prompt(s) x G={args.G} x {args.tokens} new tokens, float32, "
          f"{torch.get_num_threads()} torch threads")
    trl, trl_tuned = "TRL GRPOTrainer (beta 0)", "TRL, our allocator setting"
    with tempfile.TemporaryDirectory() as tmp:
        results = {trl: trl_grpo(args, tmp)}  # first: TRL as it ships, with glibc's default allocator settings
        results["ours, task reward"] = ours(args, "task_reward", tmp)  # our trainer sets them (llm/allocator.py)
        results["ours, sharpening (+ ref forward)"] = ours(args, "sharpening", tmp)
        results["generation floor (ours)"] = generation_floor(args)
        results[trl_tuned] = trl_grpo(args, tmp)  # the same process: TRL now runs with our setting too
    mean = {k: statistics.mean(v) for k, v in results.items()}
    print(f"\n{'':36}{'s/step':>8}   per step")
    for k, v in results.items():
        print(f"{k:36}{mean[k]:8.2f}   " + " ".join(f"{t:.2f}" for t in v))
    print(f"\nTRL / ours (task reward): {mean[trl] / mean['ours, task reward']:.2f}x  (goal >= 1.5x)")
    print(f"TRL with our allocator setting / ours: {mean[trl_tuned] / mean['ours, task reward']:.2f}x  "
          "(the part of the gain that is not the allocator)")
    print(f"ours / generation floor: {mean['ours, task reward'] / mean['generation floor (ours)']:.2f}x")


if __name__ == "__main__":
    main()
