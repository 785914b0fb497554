"""Power sampling wall time per answer: today's HFProposer (prefix reuse) against the one at a baseline commit
(which re-reads every kept token of each proposal), in one process, same seeds.

    OMP_NUM_THREADS=2 python bench/power_sampling_speed.py [--prompts 1] [--n 8] [--mcmc-steps 10] [--repeats 2]

bench/power_sampling.py's settings: SmolLM2 on synthetic:add, template plain, prefill "\\boxed{", alpha 4, 32 new
tokens in blocks of 2, `mcmc_steps` Metropolis-Hastings steps per block, proposal temperature 1/alpha, seed 0;
here on the first `prompts` problems x n chains (one engine call). The two sides alternate `repeats` times; the
printout gives each side's median wall time per answer, the tokens each side ran through the model per answer
(kept tokens re-read + proposed tokens), and whether both sides drew the same answers (they draw the same
uniforms; only float rounding of the cache path differs).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from baseline import BASELINE, at_commit  # bench/ is on the path when this script runs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=1)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--mcmc-steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--baseline", default=BASELINE)
    args = parser.parse_args()
    from sharpening.llm import power_sampling
    from sharpening.llm.data import format_prompt, load_problems
    from sharpening.llm.models import load_model, load_tokenizer
    from sharpening.llm.rollout import HFEngine
    from sharpening.mcmc import PowerSampling

    old = at_commit("sharpening/llm/power_sampling.py", args.baseline)
    model, tok = load_model("smollm2").eval(), load_tokenizer("smollm2")
    prompts = [format_prompt(tok, p.problem, "plain", "\\boxed{")
               for p in load_problems("synthetic:add", limit=args.prompts)]
    settings = PowerSampling(alpha=4.0, mcmc_steps=args.mcmc_steps)
    fed = {"baseline": 0, "ours": 0}
    running = [None]

    def count(module, args, kwargs):  # the token positions each side runs through the model (prompts included)
        ids, attn = kwargs["input_ids"], kwargs.get("attention_mask")
        fed[running[0]] += int(ids.numel() if attn is None else attn[:, -ids.shape[1]:].sum())

    model.register_forward_pre_hook(count, with_kwargs=True)
    sides = {"baseline": old, "ours": power_sampling}
    times, texts = {k: [] for k in sides}, {}
    answers = args.prompts * args.n
    print(f"{args.prompts} prompt(s) x {args.n} chains, alpha 4, {args.max_new_tokens} tokens, block "
          f"{settings.block(args.max_new_tokens)}, {args.mcmc_steps} MCMC steps; {torch.get_num_threads()} threads; "
          f"baseline = {args.baseline}")
    for rep in range(args.repeats):
        for name, module in sides.items():
            engine = module.PowerSamplingEngine(HFEngine(model, tok), settings)
            fed[name], running[0] = 0, name
            t = time.perf_counter()
            roll = engine.generate(prompts, n=args.n, max_new_tokens=args.max_new_tokens, seed=0)
            times[name].append(time.perf_counter() - t)
            texts[name] = roll.texts
            print(f"  {name:9} run {rep}: {times[name][-1]:.1f} s, {fed[name] / answers:.0f} tokens run per answer, "
                  f"{float(roll.generated_tokens.double().mean()):.0f} generated per answer", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k in sides:
        print(f"{k:9} {med[k] / answers:7.2f} s per answer")
    print(f"speed-up (baseline / ours wall time): {med['baseline'] / med['ours']:.2f}x")
    print(f"same answers: {sum(a == b for a, b in zip(texts['baseline'], texts['ours']))} of {answers}")


if __name__ == "__main__":
    main()
