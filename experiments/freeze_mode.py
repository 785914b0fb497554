"""Freeze the base model's sequence-level mode on every held-out question, before any trained model is evaluated.

    python experiments/freeze_mode.py                       # the evidence grid's held-out set -> results/modes/
    python experiments/freeze_mode.py --dataset synthetic:add:2 --limit 128 --samples 64 --max-new-tokens 32

For each question: `samples` responses of pi_ref at temperature 1 plus its greedy response (temperature 1e-6,
i.e. argmax at every token), each with lp_ref(y) = sum_t log pi_ref(y_t | x, y_<t), EOS included. The mode's
answer is the answer of the response with the highest lp_ref among them (the sequence-level mode of pi_ref,
estimated from its samples); the answer-level majority is the most frequent graded answer cluster among the
temperature-1 samples (ties: the first cluster seen; no-answer samples do not vote).

Why a short budget is enough: a response cut at the budget has lp_ref(prefix) >= lp_ref(any completion), since
every further token adds a log-prob <= 0. So when the best complete response beats every cut prefix, it is the
highest-lp_ref response among the samples whatever the cut ones would have become: the file records this
(`mode_certified`) per question.

Resumable: each finished question is appended to <out>.partial.jsonl; a re-run continues there. The final file
holds the settings, the code commit, one record per question and a summary; docs/preregistration.md cites its
SHA-256, and the mode-right / mode-wrong split of every later table comes from it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GREEDY_TEMPERATURE = 1e-6  # logits / 1e-6: every token is the argmax unless two logits tie exactly


def commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except OSError:
        return "unknown"


def question_record(problem, texts, lp_ref, lengths, truncated, prefill: str) -> dict:
    """One question's record from its samples (the last one greedy). lp_ref, lengths: floats; truncated: bools."""
    from sharpening.llm.evaluation import answer_clusters
    from sharpening.llm.grading import final_answer, grade

    full = [prefill + t for t in texts]
    answers = [final_answer(t) for t in full]
    correct = [int(grade(t, problem.answer)) for t in full]
    complete = [i for i in range(len(texts)) if not truncated[i]]
    best = max(complete or range(len(texts)), key=lambda i: lp_ref[i])
    cut = [lp_ref[i] for i in range(len(texts)) if truncated[i]]
    sampled = range(len(texts) - 1)  # the temperature-1 samples (the last response is the greedy one)
    clusters, _ = answer_clusters([answers[i] for i in sampled], problem.answer)
    votes = {}
    for c in clusters:
        if c >= 0:
            votes[c] = votes.get(c, 0) + 1
    top = max(votes, key=lambda c: (votes[c], -clusters.index(c))) if votes else None
    majority = None if top is None else clusters.index(top)
    n = len(sampled)
    return {
        "id": problem.id, "question": problem.problem, "gold": problem.answer,
        "mode_answer": answers[best], "mode_correct": correct[best], "mode_lp_ref": lp_ref[best],
        "mode_text": texts[best], "mode_is_greedy": best == len(texts) - 1,
        "mode_certified": bool(complete) and all(lp_ref[best] > c for c in cut),
        "greedy_answer": answers[-1], "greedy_correct": correct[-1], "greedy_lp_ref": lp_ref[-1],
        "majority_answer": None if majority is None else answers[majority],
        "majority_correct": None if majority is None else correct[majority],
        "majority_share": 0.0 if top is None else votes[top] / n,
        "pass_rate": sum(correct[i] for i in sampled) / n, "samples": n,
        "cap_frac": sum(bool(truncated[i]) for i in sampled) / n,
        "mean_length": sum(lengths[i] for i in sampled) / n,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="synthetic:add:2")
    p.add_argument("--template", default="worked_sum")
    p.add_argument("--prefill", default="\\boxed{")
    p.add_argument("--limit", type=int, default=128, help="held-out questions (the grid's eval_limit)")
    p.add_argument("--samples", type=int, default=64, help="temperature-1 samples per question")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=12345, help="sampling seed (not the grid's eval seed)")
    p.add_argument("--out", default=None, help="output JSON (default results/modes/<dataset>.json)")
    args = p.parse_args(argv)

    import torch

    from sharpening.llm.data import format_prompt, load_problems
    from sharpening.llm.models import load_model, load_tokenizer
    from sharpening.llm.rollout import HFEngine

    out = Path(args.out or ROOT / "results" / "modes" / f"{args.dataset.replace(':', '_')}.json")
    partial = out.with_suffix(".partial.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {json.loads(line)["id"]: json.loads(line) for line in partial.open()} if partial.exists() else {}
    problems = load_problems(args.dataset, limit=args.limit)
    tokenizer = load_tokenizer("smollm2")
    engine = HFEngine(load_model("smollm2").eval(), tokenizer, batch_size=args.samples)
    t0 = time.time()
    with partial.open("a") as f:
        for k, problem in enumerate(problems):
            if problem.id in done:
                continue
            prompt = format_prompt(tokenizer, problem.problem, args.template, args.prefill)
            rolls = [engine.generate([prompt], n=args.samples, max_new_tokens=args.max_new_tokens, temperature=1.0,
                                     seed=args.seed + k),
                     engine.generate([prompt], n=1, max_new_tokens=args.max_new_tokens,
                                     temperature=GREEDY_TEMPERATURE, seed=0)]
            # lp_old_tok is log pi(y_t | ...) of the raw logits (temperature does not enter): with the base model
            # in float32 it is lp_ref per token
            texts = [t for r in rolls for t in r.texts]
            lp_ref = [float(x) for r in rolls for x in r.lp_old_tok.sum(-1)]
            lengths = [float(x) for r in rolls for x in r.lengths]
            truncated = [bool(x) for r in rolls for x in r.truncated]
            rec = question_record(problem, texts, lp_ref, lengths, truncated, args.prefill)
            f.write(json.dumps(rec) + "\n")
            f.flush()
            done[problem.id] = rec
            print(f"[{len(done)}/{len(problems)}] {problem.problem} mode {rec['mode_answer']!r} "
                  f"({'right' if rec['mode_correct'] else 'wrong'}), majority {rec['majority_answer']!r}, "
                  f"pass {rec['pass_rate']:.2f}, {time.time() - t0:.0f} s", flush=True)
    records = [done[p.id] for p in problems]
    summary = {k: sum(r[k] or 0 for r in records) / len(records)
               for k in ("mode_correct", "greedy_correct", "majority_correct", "mode_certified", "pass_rate",
                         "cap_frac", "mean_length", "mode_is_greedy")}
    body = {"what": "pi_ref's sequence-level mode and answer-level majority per held-out question "
                    "(experiments/freeze_mode.py)",
            "model": "smollm2", "dataset": args.dataset, "template": args.template, "prefill": args.prefill,
            "limit": args.limit, "samples": args.samples, "greedy_temperature": GREEDY_TEMPERATURE,
            "max_new_tokens": args.max_new_tokens, "seed": args.seed, "commit": commit(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "summary": summary, "questions": records}
    text = json.dumps(body, indent=1)
    out.write_text(text)
    print(json.dumps(summary, indent=1))
    print(f"wrote {out} (sha256 {hashlib.sha256(text.encode()).hexdigest()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
