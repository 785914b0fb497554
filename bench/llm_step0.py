"""Step 0 of LLM training: samples of the base model for the reward-variance-vs-length measurement (claim 3).

    python bench/llm_step0.py --config configs/cpu/grid/base.yaml --out results/cpu/step0

For each of --prompts training prompts (the config's dataset, template, prefill and seed), --group-size responses
of pi_ref, sampled twice:
  fixed length (EOS ignored, --max-length tokens): the per-token log-probs, and how many tokens close the answer
      box (the answer's tokens; the rest come after the answer). The fixed-length-L variant's response
      is the first L tokens of such a sample (sampling ignores EOS, so a prefix of a longer draw is a draw of
      length L), hence one draw gives the sharpening reward lp_ref at every L <= --max-length;
  normal (stops at EOS, the config's max_new_tokens): lp_ref, the length T and the task reward r of each.
At step 0 pi = pi_ref, so lp_old = lp_ref: the sharpening reward is R = lp_ref and tempered's is (alpha - 1) lp_ref;
the log-probs are those of the sampling forward pass. Writes OUT/step0.json (read by sharpening.figures.llm);
the variances are computed by the figure, from these raw numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="training config (dataset, template, prefill, seed)")
    parser.add_argument("--out", required=True, help="output folder for step0.json")
    parser.add_argument("--prompts", type=int, default=16, help="training prompts (default 16)")
    parser.add_argument("--group-size", type=int, default=16, help="responses per prompt (default 16)")
    parser.add_argument("--max-length", type=int, default=64, help="fixed-length responses' tokens (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    args = parser.parse_args(argv)
    for flag in ("prompts", "group_size", "max_length"):
        if getattr(args, flag) < 1 or (flag == "group_size" and args.group_size < 2):
            parser.error(f"--{flag.replace('_', '-')}={getattr(args, flag)} must be >= 1 (group size >= 2)")

    from sharpening.llm import data
    from sharpening.llm.allocator import retain_freed_memory
    from sharpening.llm.config import load_config
    from sharpening.llm.models import load_model, load_tokenizer
    from sharpening.llm.rollout import HFEngine
    from sharpening.llm.trainer import task_rewards

    retain_freed_memory()
    cfg = load_config(args.config)
    tokenizer = load_tokenizer(cfg.model)
    engine = HFEngine(load_model(cfg.model, dtype=cfg.dtype).eval(), tokenizer, batch_size=cfg.gen_batch_size)
    problems = data.load_problems(cfg.dataset, split=cfg.split, limit=args.prompts, seed=cfg.seed)
    prompts = [data.format_prompt(tokenizer, p.problem, cfg.template, cfg.prefill) for p in problems]
    G, t0 = args.group_size, time.time()

    fixed = engine.generate(prompts, n=G, max_new_tokens=args.max_length, ignore_eos=True, seed=args.seed)
    normal = engine.generate(prompts, n=G, max_new_tokens=cfg.max_new_tokens, seed=args.seed + 1)
    r = task_rewards(normal.texts, [p.answer for p in problems], G, cfg.prefill)
    lp_ref_normal = normal.lp_old_tok.sum(-1)  # [B]: lp_old = lp_ref at step 0
    answer_end = [_answer_end(tokenizer, fixed.tokens[j].tolist()) for j in range(len(fixed))]
    rows = []
    for i, p in enumerate(problems):
        group = range(i * G, (i + 1) * G)
        rows.append({"id": p.id, "answer": p.answer,
                     "fixed_length_lp_ref_tok": [[round(float(x), 5) for x in fixed.lp_old_tok[j]] for j in group],
                     "fixed_length_answer_end": [answer_end[j] for j in group],
                     "lp_ref": [round(float(lp_ref_normal[j]), 5) for j in group],
                     "length": [int(normal.lengths[j]) for j in group],
                     "r": [float(r[j]) for j in group],
                     "texts": [normal.texts[j] for j in group]})
    result = {"model": cfg.model, "dataset": cfg.dataset, "template": cfg.template, "prefill": cfg.prefill,
              "group_size": G, "max_length": args.max_length, "max_new_tokens": cfg.max_new_tokens,
              "seed": args.seed, "seconds": round(time.time() - t0, 1), "prompts": rows}
    out = Path(args.out) / "step0.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    from sharpening.atomic import write_atomic

    write_atomic(out, json.dumps(result))
    print(f"wrote {out} ({len(rows)} prompts x {G} responses, {result['seconds']:.0f} s)")
    return 0


def _answer_end(tokenizer, tokens: list[int]) -> int:
    """How many of a response's tokens it takes to close the prefilled answer box (its first "}"): the answer's
    tokens are those, the rest come after the answer. len(tokens) when the box never closes."""
    for t in range(1, len(tokens) + 1):
        if "}" in tokenizer.decode(tokens[:t], skip_special_tokens=True):
            return t
    return len(tokens)


if __name__ == "__main__":
    sys.exit(main())
