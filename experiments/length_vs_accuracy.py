"""Accuracy against response length for one evaluation: does a longer, worked answer score better?

Samples the model exactly as `sharpening llm eval` does (the same `evaluate`, the same per-call seeds, so
pass@1 matches the command's), keeps every response (text, token length, hit the cap or not, correct or not)
in samples.jsonl, and tabulates accuracy per length bin and for responses that write out a partial sum
against those that do not (docs/llm_evidence.md, "A task where length matters").

    python experiments/length_vs_accuracy.py --datasets synthetic:add4 --template worked_add4 \
        --limit 64 --n 8 --max-new-tokens 64 --out results/cpu/task2_length
    python experiments/length_vs_accuracy.py --samples results/cpu/task2_length/samples.jsonl   # table only

A response "shows a partial sum" when it writes two or more `=` between numbers (`3 + 5 = 8`, then
`8 + 7 = 15`, or the chain `3 + 5 + 7 = 8 + 7 = 15`): a value before the final one. A direct answer
(`\\boxed{3 + 5 + 7 = 15}` or `\\boxed{15}`) has at most one.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import defaultdict
from pathlib import Path

EQUATION = re.compile(r"\d\s*=\s*-?\d")  # an `=` between two numbers: one written step


def steps(text: str) -> int:
    """Number of `=` signs between numbers in a response: 1 for a direct answer, 2+ when it shows partial sums."""
    return len(EQUATION.findall(text.replace(" ", "")))


def shows_partial_sums(text: str) -> bool:
    return steps(text) >= 2


def accuracy_table(samples: list[dict], bin_width: int = 8) -> dict:
    """Accuracy per length bin [lo, lo + bin_width), and for worked (partial sums shown) vs direct responses.

    samples: dicts with id (the question), length (tokens), correct (0/1), truncated (hit the cap), text.
    Each group reports n responses, their accuracy and its standard error over questions (responses of one
    question are correlated, so the s.e. comes from per-question means: sqrt(var / questions)). within_question
    is the mean over questions that have both kinds of response of accuracy(worked) - accuracy(direct): the
    difference with question difficulty held fixed.
    """
    if not samples:
        raise ValueError("no samples to tabulate")
    bins = defaultdict(list)
    for s in samples:
        bins[int(s["length"]) // bin_width * bin_width].append(s)
    worked = [s for s in samples if shows_partial_sums(s["text"])]
    direct = [s for s in samples if not shows_partial_sums(s["text"])]
    by_question = defaultdict(lambda: ([], []))
    for s in samples:
        by_question[s["id"]][0 if shows_partial_sums(s["text"]) else 1].append(s["correct"])
    diffs = [_mean(w) - _mean(d) for w, d in by_question.values() if w and d]
    return {
        "responses": len(samples),
        "questions": len({s["id"] for s in samples}),
        "pass@1": _group(samples)["accuracy"],
        "mean_length": _mean([s["length"] for s in samples]),
        "cap_hit_fraction": _mean([float(s["truncated"]) for s in samples]),
        "bin_width": bin_width,
        "bins": [{"lo": lo, "hi": lo + bin_width, **_group(bins[lo])} for lo in sorted(bins)],
        "worked": _group(worked),
        "direct": _group(direct),
        "within_question": {"questions": len(diffs), "worked_minus_direct": _mean(diffs) if diffs else None,
                            "se": _se(diffs) if len(diffs) > 1 else None},
    }


def _group(samples: list[dict]) -> dict:
    """n, accuracy, its s.e. over questions, mean length and cap-hit fraction of a set of responses."""
    if not samples:
        return {"n": 0, "accuracy": None, "se": None, "mean_length": None, "cap_hit_fraction": None}
    per_question = defaultdict(list)
    for s in samples:
        per_question[s["id"]].append(s["correct"])
    means = [_mean(v) for v in per_question.values()]
    return {"n": len(samples), "accuracy": _mean([s["correct"] for s in samples]),
            "se": _se(means) if len(means) > 1 else None, "mean_length": _mean([s["length"] for s in samples]),
            "cap_hit_fraction": _mean([float(s["truncated"]) for s in samples])}


def _mean(xs) -> float:
    xs = list(xs)
    return float(sum(xs) / len(xs))


def _se(xs) -> float:
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs))


def format_table(table: dict) -> str:
    f = lambda x, p=3: "–" if x is None else f"{x:.{p}f}"  # noqa: E731
    lines = [f"{table['questions']} questions x {table['responses'] // max(table['questions'], 1)} responses: "
             f"pass@1 {f(table['pass@1'])}, mean length {f(table['mean_length'], 1)} tokens, "
             f"cap hits {f(table['cap_hit_fraction'])}",
             "", f"{'length (tokens)':<18}{'responses':>10}{'accuracy':>10}{'s.e.':>8}"]
    for b in table["bins"]:
        lines.append(f"{str(b['lo']) + '-' + str(b['hi'] - 1):<18}{b['n']:>10}{f(b['accuracy']):>10}{f(b['se']):>8}")
    lines += ["", f"{'responses':<18}{'n':>10}{'accuracy':>10}{'s.e.':>8}{'length':>8}"]
    for name in ("worked", "direct"):
        g = table[name]
        label = "partial sums" if name == "worked" else "no partial sum"
        lines.append(f"{label:<18}{g['n']:>10}{f(g['accuracy']):>10}{f(g['se']):>8}{f(g['mean_length'], 1):>8}")
    wq = table["within_question"]
    lines.append(f"within a question (both kinds present, {wq['questions']} questions): worked - direct = "
                 f"{f(wq['worked_minus_direct'])} (s.e. {f(wq['se'])})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Sampling: `sharpening llm eval`'s evaluate(), with every response kept
# ---------------------------------------------------------------------------------------------------------


class RecordingEngine:
    """Wraps an engine and keeps each response's text (prefill included, as graded), token length and cap hit,
    in evaluate()'s call order: problem-major, n responses per problem."""

    def __init__(self, engine, prefill: str = ""):
        self.engine, self.tokenizer, self.prefill, self.records = engine, engine.tokenizer, prefill, []

    def generate(self, prompts, n, **kwargs):
        roll = self.engine.generate(prompts, n=n, **kwargs)
        lp = roll.lp_old_tok.sum(-1).tolist()  # log pi(y | x) at the sampling temperature
        self.records += [{"text": self.prefill + t, "length": int(T), "truncated": bool(cut), "lp": float(l)}
                         for t, T, cut, l in zip(roll.texts, roll.lengths.tolist(), roll.truncated.tolist(), lp)]
        return roll


def sample(args) -> tuple[dict, list[dict]]:
    """evaluate() on one data set; returns the eval.json dict and the per-response records."""
    from sharpening.llm.data import load_problems
    from sharpening.llm.evaluation import evaluate
    from sharpening.llm.grading import final_answer, grade
    from sharpening.llm.models import load_model, load_tokenizer
    from sharpening.llm.rollout import HFEngine

    problems = load_problems(args.datasets, limit=args.limit)  # the held-out (test) split, as `llm eval`
    engine = RecordingEngine(HFEngine(load_model(args.model), load_tokenizer(args.model)), args.prefill)
    result = evaluate(engine, {args.datasets: problems}, n=args.n, ks=[1], max_new_tokens=args.max_new_tokens,
                      temperature=args.temperature, prefill=args.prefill, template=args.template, seed=args.seed,
                      info={"run": "base", "model": args.model, "template": args.template})
    samples = []
    for i, rec in enumerate(engine.records):
        p = problems[i // args.n]
        samples.append({"id": p.id, "question": p.problem, "gold": p.answer, **rec,
                        "answer": final_answer(rec["text"]), "correct": grade(rec["text"], p.answer)})
    return result, samples


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", default=None, help="tabulate this samples.jsonl instead of sampling")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--datasets", default="synthetic:add4", help="one synthetic data set (its test split)")
    parser.add_argument("--template", default="worked_add4")
    parser.add_argument("--prefill", default="")
    parser.add_argument("--limit", type=int, default=64)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bin-width", type=int, default=8)
    parser.add_argument("--out", default=None, help="folder for base_eval.json (evaluate's dict), samples.jsonl and length_accuracy.json")
    args = parser.parse_args(argv)
    if args.bin_width < 1:
        raise SystemExit(f"--bin-width={args.bin_width} must be a positive number of tokens")
    if args.samples is not None:
        samples = [json.loads(line) for line in open(args.samples, encoding="utf-8") if line.strip()]
        result = None
    else:
        result, samples = sample(args)
    table = accuracy_table(samples, args.bin_width)
    if args.samples is None:
        table["settings"] = {k: getattr(args, k) for k in ("model", "datasets", "template", "prefill", "limit", "n",
                                                           "max_new_tokens", "temperature", "seed")}
    print(format_table(table))
    out = Path(args.out) if args.out else (Path(args.samples).parent if args.samples else None)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if result is not None:
            # not eval.json: the figures collect every eval.json under results/ as a trained run's
            (out / "base_eval.json").write_text(json.dumps(result, indent=1))
            with open(out / "samples.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(s) + "\n" for s in samples)
        (out / "length_accuracy.json").write_text(json.dumps(table, indent=1))
        print(f"wrote {out}/length_accuracy.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
