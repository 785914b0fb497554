"""Evaluation: n samples per problem, pass@k by the unbiased estimator, maj@k by majority vote over k-subsets.

    pass@k = E_problems[ 1 - C(n - c, k) / C(n, k) ]      c = correct samples out of n (Chen et al., 2021)
    maj@k  = E_problems[ E_{S subset of the n samples, |S| = k}[ credit of the most common answer in S ] ]

maj@k's answers, per grader: strict (grading.grade): the final \\boxed{} answer of each sample (grading.final_answer),
clustered by the grader's equivalence (so "0.5" and "\\frac12" vote together); paper (grading.grade_paper): the
authors' voting answer, clustered by its text as they do. Samples without an answer follow a named rule (MAJ_RULES):
"votes" (the paper's, the default) counts them as one bloc that scores 0 when it wins; "abstains" leaves them out.
A tie between m most common answers scores (correct ones among them) / m, the expectation of breaking the tie
uniformly at random. The subsets are all C(n, k) of them when there are at most `subsets`, else `subsets` random
ones (seeded).

Every evaluation keeps per-sample records (docs/llm_data_eval.md): the text graded, the extracted answer, correct
(0/1) under each grader, length, finish reason ("eos" or "cap") and lp_ref when a reference is available.
"""

from __future__ import annotations

import dataclasses
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sharpening.llm.data import BENCHMARKS, PAPER_TEMPLATE, TEMPLATES, Problem, format_prompt, load_problems
from sharpening.llm.grading import GRADERS, final_answer, grade, grade_paper
from sharpening.llm.runs import RunFolder, check_writable, finite_or_null, read_json, write_json

DEFAULT_KS = (1, 2, 4, 8, 16)
SAMPLERS = ("ancestral", "temperature", "power")
EVAL_DATASETS = ("math500", "minerva_math", "aime24", "aime25", "hmmt25")
SUBSETS = 20_000  # maj@k: exact over all C(n, k) subsets up to this many (every k of n = 16), else this many random
# maj@k's rules for samples without an answer, with the label every table and figure prints beside a maj@k
MAJ_RULES = {"votes": "paper's rule: no answer votes", "abstains": "abstaining rule"}
LEGACY_MAJ_RULE = "abstains"  # an eval.json without "maj_rule" was written before the rule was named


def maj_label(rule: str | None) -> str:
    """The label of a maj@k rule for tables and figures; None (an eval.json without "maj_rule"): the abstaining
    rule, the only one before the rules were named."""
    return MAJ_RULES[rule or LEGACY_MAJ_RULE]


def pass_at_k(n: int, c: int, k: int) -> float:
    """1 - C(n - c, k) / C(n, k), the chance that k of the n samples (drawn without replacement) hold a correct
    one; as the product 1 - prod_{i = n - c + 1}^{n} (1 - k / i), which neither overflows nor cancels."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def answer_clusters(answers: list[str | None], gold: str) -> tuple[list[int], int]:
    """Cluster the extracted answers by the grader's equivalence: (cluster id per sample, -1 for no answer;
    the id of the correct cluster, -1 if no sample is correct). A correct answer joins the gold's cluster; a
    wrong one joins the first earlier cluster whose representative it grades equal to."""
    CORRECT = 0
    representatives: list[str] = [gold]  # cluster 0 is the gold answer's
    ids, by_text = [], {}
    for a in answers:
        if a is None:
            ids.append(-1)
            continue
        if a not in by_text:  # identical strings are one answer: grade each distinct string once
            by_text[a] = next((j for j, rep in enumerate(representatives) if grade("\\boxed{" + a + "}", rep)),
                              None)
            if by_text[a] is None:
                representatives.append(a)
                by_text[a] = len(representatives) - 1
        ids.append(by_text[a])
    return ids, (CORRECT if CORRECT in ids else -1)


def text_clusters(answers: list[str | None], correct: list[int]) -> tuple[list[int], list[int]]:
    """Cluster answers by their exact text, as the authors' eval_cons_k counts them: (cluster id per sample, -1 for
    no answer; the ids of the correct clusters: those holding a sample graded correct). Two texts of one value
    ("1/2", "0.5") are two clusters, both correct."""
    ids_of: dict[str, int] = {}
    ids = [-1 if a is None else ids_of.setdefault(a, len(ids_of)) for a in answers]
    return ids, sorted({i for i, c in zip(ids, correct) if c and i >= 0})


def maj_at_k(clusters, correct, k: int, subsets: int = SUBSETS, seed: int = 0, no_answer: str = "votes") -> float:
    """Chance that the majority answer of k samples (drawn without replacement from the n) is correct.

    clusters: the answer cluster of each of the n samples (ints, -1 = no answer); correct: the correct cluster's
    id, or a collection of ids (several texts of the right value under the paper's grader); -1 or empty: none.
    no_answer: "votes" (the paper's rule): the samples without an answer vote as one bloc, which scores 0 when it
    wins; "abstains": they do not vote, and a subset where nobody answers scores 0. A tie of m clusters scores
    (correct clusters among them) / m: breaking it uniformly at random, in expectation. Exact over all C(n, k)
    subsets when there are <= `subsets` of them, else the mean over `subsets` random ones (seeded).
    """
    if no_answer not in MAJ_RULES:
        raise ValueError(f"no_answer={no_answer!r} is not one of {list(MAJ_RULES)}")
    clusters = np.asarray(clusters, dtype=int)
    n = len(clusters)
    if not 1 <= k <= n:
        raise ValueError(f"maj_at_k needs 1 <= k <= n, got k={k}, n={n}")
    right = np.array([c for c in np.atleast_1d(correct) if c >= 0], dtype=int)
    if not np.isin(right, clusters).any():
        return 0.0
    if math.comb(n, k) <= subsets:
        from itertools import combinations

        picks = np.array(list(combinations(range(n), k)))  # [S, k]: every subset
    else:
        rng = np.random.default_rng(seed)
        picks = rng.random((subsets, n)).argsort(1)[:, :k]  # [S, k]: uniform random k-subsets
    bloc = clusters.max() + 1  # the no-answer bloc's column: it votes under "votes", never under "abstains"
    onehot = np.where(clusters < 0, bloc if no_answer == "votes" else -1, clusters)[:, None] == np.arange(bloc + 1)
    votes = onehot[picks].sum(1)  # [S, m + 1]
    top = votes.max(1, keepdims=True)  # [S, 1]
    tied = (votes == top) & (top > 0)  # [S, m + 1]
    is_right = np.isin(np.arange(bloc + 1), right)  # [m + 1]; the bloc is never right
    credit = (tied & is_right).sum(1) / np.maximum(tied.sum(1), 1)  # [S]
    return float(credit.mean())


def evaluate(engine, problems, n: int = 16, ks=DEFAULT_KS, max_new_tokens: int = 1024, temperature: float = 1.0,
             top_p: float = 1.0, prefill: str = "", template: str = PAPER_TEMPLATE, tokenizer=None,
             seed: int | None = 0, subsets: int = SUBSETS, prompts_per_call: int | None = None, out=None,
             info: dict | None = None, ranks=None, graders=("strict",), maj_rule: str = "votes", lp_ref=None,
             ignore_eos: bool = False) -> dict:
    """Sample n responses per problem and score them: the eval.json dict (see docs/llm_data_eval.md).

    engine: anything with generate(prompts, n, max_new_tokens, temperature, top_p, ignore_eos, seed) returning
    .texts (prompt-major) and optionally .lengths (tokens per response), .generated_tokens (tokens generated
    to produce each response; default its length) and .acceptance (a power sampler's MH acceptance rate).
    problems: a list of Problem or a dict {dataset name: list of Problem}. prefill is appended to each prompt
    and prepended to each response before grading. ks larger than n are dropped. out: a path to write the dict
    to (atomically). info: extra top-level keys (run, regime, model, step).

    ranks: a `distributed.Ranks` to split the work over data-parallel ranks: engine calls go round-robin to the
    ranks, every rank returns the whole result and rank 0 alone writes `out`. Each call's seed depends only on
    its position, so the result is the one a single process would get.

    graders: which graders score the samples (GRADERS), the first one's numbers at the top of each data set;
    every grader's under "by_grader". maj_rule: the rule of the top maj@k (MAJ_RULES; both are under "by_grader").
    lp_ref: None (no lp_ref in the records), "engine" (the evaluated model is pi_ref: the engine's own log-probs
    of the raw logits, rollout.lp_old_tok, are log pi_ref) or a function rollout -> [B] lp_ref per response.
    ignore_eos: every response runs to max_new_tokens (the fixed-length sensitivity evaluation); recorded as
    "ignore_eos" in the result, which the tables keep apart from the evaluations that honour EOS.
    """
    if not graders or any(g not in GRADERS for g in graders):
        raise ValueError(f"graders={tuple(graders)!r} must be names among {list(GRADERS)}")
    if maj_rule not in MAJ_RULES:
        raise ValueError(f"maj_rule={maj_rule!r} is not one of {list(MAJ_RULES)}")
    tokenizer = tokenizer if tokenizer is not None else engine.tokenizer
    datasets = problems if isinstance(problems, dict) else {"problems": problems}
    ks = [k for k in ks if 1 <= k <= n]
    if not ks:
        raise ValueError(f"no k in ks={tuple(ks)} is between 1 and n={n}")
    per_call = prompts_per_call or max(1, 64 // n)  # ~64 sequences per engine call: one batch of HFEngine
    result = {**(info or {}), "n": n, "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens,
              "prefill": prefill, "seed": seed, "ignore_eos": ignore_eos, "grader": graders[0], "graders": list(graders),
              "maj_rule": maj_rule,
              "maj_label": maj_label(maj_rule), "lp_ref": None if lp_ref is None else "engine" if lp_ref == "engine"
              else "reference model", "datasets": {}}
    rank, world_size = (ranks.rank, ranks.world_size) if ranks is not None else (0, 1)
    def score_call(chunk, roll, lp):  # one engine call's problems -> their rows
        texts = [prefill + t for t in roll.texts]  # [len(chunk) * n], prompt-major
        lengths = _lengths(roll, texts, tokenizer)
        costs = _costs(roll, lengths)
        finish = _finish(roll)
        return [{**score_problem(p, texts[i * n:(i + 1) * n], lengths[i * n:(i + 1) * n], ks, subsets, seed, graders,
                                 finish[i * n:(i + 1) * n], lp[i * n:(i + 1) * n], maj_rule),
                 **{k: _mean(v[i * n:(i + 1) * n]) for k, v in costs.items()}} for i, p in enumerate(chunk)]

    # grading overlaps sampling: a call's answers are graded in a thread (the guarded grader then runs them in its
    # helper process, on the other core) while the engine samples the next call's. Model calls (the engine, the
    # reference's lp_ref) stay in this thread.
    with ThreadPoolExecutor(1, thread_name_prefix="grade") as grader:
        for name, items in datasets.items():
            starts = range(0, len(items), per_call)
            rows, mine, pending = [], {}, []  # mine: this rank's rows, by the start of their call
            bar = tqdm(total=len(items), desc=f"eval {name}", unit="problem", disable=rank != 0)

            def collect(start, graded):
                mine[start] = graded.result()
                rows.extend(mine[start])
                bar.update(len(mine[start]) * world_size)  # the other ranks work on as many
                bar.set_postfix({"pass@1": f"{np.mean([r['pass@k']['1'] for r in rows]):.3f}"})

            for start in starts[rank::world_size]:
                chunk = items[start:start + per_call]
                prompts = [format_prompt(tokenizer, p.problem, template, prefill) for p in chunk]
                call_seed = None if seed is None else seed + start
                roll = engine.generate(prompts, n=n, max_new_tokens=max_new_tokens, temperature=temperature,
                                       top_p=top_p, ignore_eos=ignore_eos, seed=call_seed)
                pending.append((start, grader.submit(score_call, chunk, roll, _lp_ref(roll, lp_ref))))
                while len(pending) > 1:  # at most one call waits for its grades
                    collect(*pending.pop(0))
            for call in pending:
                collect(*call)
            bar.close()
            if world_size > 1:
                every = {k: v for part in ranks.all_gather(mine) for k, v in part.items()}
                rows = [row for start in starts for row in every[start]]
            result["datasets"][name] = summarize(rows, ks)
    result = finite_or_null(result)  # strict JSON: a non-finite score is null, never a bare NaN
    if out is not None and rank == 0:
        write_json(out, result)  # strict JSON: a non-finite score is null, never a bare NaN
    return result


def _finish(roll) -> list[str | None]:
    """Per response: "cap" when it hit the token budget (rollout.truncated), else "eos"; None if the engine does not
    say."""
    truncated = getattr(roll, "truncated", None)
    if truncated is None:
        return [None] * len(roll.texts)
    return ["cap" if bool(t) else "eos" for t in (truncated.tolist() if hasattr(truncated, "tolist") else truncated)]


def _lp_ref(roll, lp_ref) -> list[float | None]:
    """Per response: log pi_ref of its tokens (evaluate()'s lp_ref argument), or None."""
    if lp_ref is None:
        return [None] * len(roll.texts)
    values = (roll.lp_old_tok * roll.mask).sum(-1) if lp_ref == "engine" else lp_ref(roll)  # [B]
    return [float(v) for v in (values.tolist() if hasattr(values, "tolist") else values)]


def score_problem(problem: Problem, texts: list[str], lengths: list[float], ks, subsets: int = SUBSETS,
                  seed: int | None = 0, graders=("strict",), finish=None, lp_ref=None, maj_rule: str = "votes") -> dict:
    """One problem's n responses -> its per-sample records and, per grader, the correct count c, pass@k and maj@k
    (both rules) for each k; the first grader's numbers (and maj@k under maj_rule) also at the top, as before.

    finish: per response "eos", "cap" (hit the token budget) or None (unknown); lp_ref: per response log pi_ref of
    its tokens, or None."""
    n = len(texts)
    finish, lp_ref = finish or [None] * n, lp_ref or [None] * n
    samples = []
    for text, length, end, lp in zip(texts, lengths, finish, lp_ref):
        sample = {"text": text, "answer": final_answer(text) or None,  # an empty box answers nothing
                  "correct": int(grade(text, problem.answer))}
        if "paper" in graders:
            r, answer = grade_paper(text, problem.answer)
            sample.update(answer_paper=answer, correct_paper=int(r))
        samples.append({**sample, "length": float(length), "finish": end, "lp_ref": lp})
    row = rescore(samples, problem.answer, ks, graders, subsets, seed)
    first = row[graders[0]]
    return {"id": problem.id, "gold": problem.answer, "correct": first["correct"], "n": n,
            "mean_length": float(np.mean(lengths)) if lengths else 0.0, "pass@k": first["pass@k"],
            "maj@k": first["maj@k"][maj_rule], "scores": row, "samples": samples}


def rescore(samples: list[dict], gold: str, ks, graders=GRADERS, subsets: int = SUBSETS, seed: int | None = 0) -> dict:
    """{grader: {"correct": c, "pass@k": {k: .}, "maj@k": {rule: {k: .}}}} from one problem's per-sample records
    (eval.json's "samples"). A grader whose fields a record lacks (e.g. "correct_paper") is graded from its text."""
    out = {}
    for g in graders:
        if g == "strict":
            correct = [s["correct"] if "correct" in s else int(grade(s["text"], gold)) for s in samples]
            answers = [s["answer"] if "answer" in s else final_answer(s["text"]) or None for s in samples]
            clusters, right = answer_clusters(answers, gold)
        elif g == "paper":
            graded = [(s["correct_paper"], s["answer_paper"]) if "correct_paper" in s else
                      grade_paper(s["text"], gold) for s in samples]
            correct = [int(r) for r, _ in graded]
            clusters, right = text_clusters([a for _, a in graded], correct)
        else:
            raise ValueError(f"grader={g!r} is not one of {list(GRADERS)}")
        n, c = len(samples), int(sum(correct))
        out[g] = {"correct": c, "no_answer": float(np.mean([i < 0 for i in clusters])), "pass@k": {str(k): pass_at_k(n, c, k) for k in ks},
                  "maj@k": {rule: {str(k): maj_at_k(clusters, right, k, subsets, seed or 0, rule) for k in ks}
                            for rule in MAJ_RULES}}
    return out


def summarize(rows: list[dict], ks) -> dict:
    """Average the per-problem scores of one data set (each problem weighs the same); the cap-hit fraction over all
    its responses (None when the engine does not say)."""
    costs = {k: float(np.mean([r[k] for r in rows])) for k in COSTS if rows and all(k in r for r in rows)}
    graders = list(rows[0].get("scores", {})) if rows else []
    mean = lambda get: float(np.mean([get(r) for r in rows]))  # noqa: E731
    ends = [s["finish"] for r in rows for s in r.get("samples", []) if s.get("finish") is not None]
    return {"num_problems": len(rows),
            "pass@k": {str(k): mean(lambda r: r["pass@k"][str(k)]) for k in ks},
            "maj@k": {str(k): mean(lambda r: r["maj@k"][str(k)]) for k in ks},
            "mean_length": mean(lambda r: r["mean_length"]) if rows else 0.0, **costs,
            "cap_frac": float(np.mean([e == "cap" for e in ends])) if ends else None,
            "by_grader": {g: {"pass@k": {str(k): mean(lambda r: r["scores"][g]["pass@k"][str(k)]) for k in ks},
                              "maj@k": {rule: {str(k): mean(lambda r: r["scores"][g]["maj@k"][rule][str(k)])
                                               for k in ks} for rule in MAJ_RULES}} for g in graders},
            "problems": [{"id": r["id"], "correct": r["correct"], "n": r["n"],
                          **({"gold": r["gold"], "correct_by_grader": {g: s["correct"] for g, s in r["scores"].items()},
                              "samples": r["samples"]} if "samples" in r else {})} for r in rows]}


def rescore_result(result: dict, graders=GRADERS, subsets: int = SUBSETS, seed: int = 0) -> dict:
    """From an eval.json's per-sample records: {data set: {grader: {"no_answer": share of samples without an
    answer, "pass@k": {k: .}, "maj@k": {rule: {k: .}}}}}, means over problems, every grader and every rule."""
    out = {}
    for name, d in result["datasets"].items():
        problems, ks = d.get("problems", []), [int(k) for k in d["pass@k"]]
        if not problems or any("samples" not in p or "gold" not in p for p in problems):
            raise ValueError(f"datasets.{name} has no per-sample records (written before they were kept): "
                             "re-run the evaluation")
        rows = [rescore(p["samples"], p["gold"], ks, graders, subsets, seed) for p in problems]
        mean = lambda get: float(np.mean([get(r) for r in rows]))  # noqa: E731
        out[name] = {g: {"no_answer": mean(lambda r: r[g]["no_answer"]),
                         "pass@k": {str(k): mean(lambda r: r[g]["pass@k"][str(k)]) for k in ks},
                         "maj@k": {rule: {str(k): mean(lambda r: r[g]["maj@k"][rule][str(k)]) for k in ks}
                                   for rule in MAJ_RULES}}
                     for g in graders}
    return out


def grader_table(rescored: dict) -> str:
    """rescore_result's numbers as a Markdown table: one row per data set, grader and maj@k rule."""
    lines = []
    for name, by in rescored.items():
        ks = list(next(iter(by.values()))["pass@k"])
        top = ks[-1]
        head = ["data set", "grader", "no answer", "maj@k rule", "pass@1", f"pass@{top}"] + [f"maj@{k}" for k in ks]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for g, d in by.items():
            for rule in MAJ_RULES:
                cells = [name, g, f"{d['no_answer']:.3f}", maj_label(rule), f"{d['pass@k'][ks[0]]:.3f}",
                         f"{d['pass@k'][top]:.3f}"] + [f"{d['maj@k'][rule][k]:.3f}" for k in ks]
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


COSTS = ("tokens_per_answer", "acceptance")  # per-answer costs, averaged per problem then over problems


def _costs(roll, lengths) -> dict:
    """Per response: tokens generated to produce it (the engine's count, e.g. a power sampler's every proposal;
    else its length) and, for a power sampler, its Metropolis-Hastings acceptance rate."""
    generated = getattr(roll, "generated_tokens", None)
    costs = {"tokens_per_answer": lengths if generated is None else [float(x) for x in generated.tolist()]}
    if getattr(roll, "acceptance", None) is not None:
        costs["acceptance"] = [float(x) for x in roll.acceptance.tolist()]
    return costs


def _mean(values) -> float:
    values = [v for v in values if not math.isnan(v)]  # a chain with no proposal has no acceptance rate
    return float(np.mean(values)) if values else float("nan")


def _lengths(roll, texts, tokenizer) -> list[float]:
    """Tokens per response: the engine's count when it has one, else the tokenizer's count of the text."""
    lengths = getattr(roll, "lengths", None)
    if lengths is not None:
        return [float(x) for x in (lengths.tolist() if hasattr(lengths, "tolist") else lengths)]
    return [float(len(tokenizer(t, add_special_tokens=False)["input_ids"])) for t in texts]


# ---------------------------------------------------------------------------------------------------------
# The `sharpening llm eval` command's core (the sub-command itself is defined in sharpening/llm/cli.py)
# ---------------------------------------------------------------------------------------------------------


def add_eval_arguments(parser) -> None:
    """The flags of `sharpening llm eval`."""
    parser.add_argument("--model", default="smollm2", help="model name or HF folder (default: smollm2)")
    parser.add_argument("--checkpoint", default=None,
                        help="a checkpoint folder (runs/<name>/checkpoints/step_N) to evaluate instead of --model")
    parser.add_argument("--datasets", default=",".join(EVAL_DATASETS),
                        help=f"comma-separated: names among {', '.join(BENCHMARKS)}, .jsonl paths, "
                             f"synthetic:<task>[:<digits>] (default: {','.join(EVAL_DATASETS)})")
    parser.add_argument("--n", type=int, default=16, help="samples per problem (default 16)")
    parser.add_argument("--ks", default=",".join(map(str, DEFAULT_KS)), help="comma-separated k of pass@k, maj@k")
    parser.add_argument("--limit", type=int, default=None, help="first N problems of each data set (quick runs)")
    parser.add_argument("--max-new-tokens", type=int, default=1024, help="response length limit (default 1024)")
    parser.add_argument("--max-total-tokens", type=int, default=None,
                        help="also stop a response when prompt + response reach this many tokens (the authors' "
                             "max_total_sequence_length; default: no such cap)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0: pure sampling)")
    parser.add_argument("--prefill", default="", help="text that opens the assistant turn, e.g. '\\boxed{'")
    parser.add_argument("--template", default="paper",
                        help="user-turn template: paper (default: the paper's step-by-step prompt), plain (the bare "
                             "problem), or a string with a {problem} placeholder")
    parser.add_argument("--out", default=None, help="folder for eval.json (default: print only)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--ignore-eos", action="store_true",
                        help="every response runs to --max-new-tokens (the fixed-length sensitivity evaluation)")
    parser.add_argument("--engine", choices=("hf", "vllm"), default="hf", help="hf (CPU/GPU) or vllm (GPU)")
    scoring = parser.add_argument_group("scoring", "graders, the maj@k rule, lp_ref (docs/llm_data_eval.md)")
    scoring.add_argument("--grader", choices=GRADERS, default="strict",
                         help="strict: ours (default); paper: the authors' Math-Verify grading, reported beside strict's")
    scoring.add_argument("--maj-rule", choices=tuple(MAJ_RULES), default="votes",
                         help="samples without an answer in maj@k: votes (the paper's rule, default: they vote as "
                              "one bloc that scores 0) or abstains (they do not vote); eval.json keeps both")
    scoring.add_argument("--ref-model", default=None,
                         help="reference model pi_ref for each sample's lp_ref (a forward pass); default: the "
                              "evaluated --model itself when no --checkpoint is given, else no lp_ref")
    scoring.add_argument("--rescore", default=None, metavar="EVAL_JSON",
                         help="load no model: recompute pass@k and maj@k of an eval.json from its per-sample records "
                              "under both graders and both maj@k rules, and print them as a Markdown table")
    sampler = parser.add_argument_group("sampler", "how each response is drawn (docs/power_sampling.md)")
    sampler.add_argument("--sampler", choices=SAMPLERS, default="ancestral",
                         help="ancestral: the model at --temperature (default); temperature: token-level temperature "
                              "1/alpha; power: MCMC toward pi**alpha over whole responses (hf engine)")
    sampler.add_argument("--alpha", type=float, default=4.0, help="exponent alpha of temperature and power (default 4)")
    sampler.add_argument("--block-size", type=int, default=None,
                         help="power: tokens per block (default max-new-tokens // 16)")
    sampler.add_argument("--mcmc-steps", type=int, default=10, help="power: MCMC steps after each block (default 10)")
    sampler.add_argument("--proposal-temperature", type=float, default=None,
                         help="power: temperature of the proposal (default 1/alpha)")
    sampler.add_argument("--stop-at-eos", action="store_true",
                         help="power: return a response once it has ended after a block, as the reference "
                              "implementation does (cheaper, not exactly pi**alpha)")


def run_eval(args) -> int:
    """`sharpening llm eval`: load the model, evaluate every data set, print a table, write DIR/eval.json."""
    if args.rescore is not None:
        return _rescore(args.rescore)
    ks = _parse_ints(args.ks, "--ks")
    for flag, value, ok in (("--n", args.n, args.n >= 1), ("--limit", args.limit, args.limit is None or args.limit >= 1),
                            ("--max-new-tokens", args.max_new_tokens, args.max_new_tokens >= 1),
                            ("--max-total-tokens", args.max_total_tokens,
                             args.max_total_tokens is None or args.max_total_tokens >= 2),
                            ("--temperature", args.temperature, args.temperature > 0),
                            ("--top-p", args.top_p, 0 < args.top_p <= 1)):
        if not ok:
            raise SystemExit(f"sharpening llm eval: {flag}={value!r} is out of range (n, limit, max-new-tokens >= 1; "
                             "max-total-tokens >= 2; temperature > 0; 0 < top-p <= 1)")
    if args.template not in TEMPLATES and "{problem}" not in args.template:
        raise SystemExit(f"sharpening llm eval: --template={args.template!r} is not one of {sorted(TEMPLATES)} and "
                         "has no {problem} placeholder")
    temperature, settings = _sampler(args)
    names = [s.strip() for s in args.datasets.split(",") if s.strip()]
    try:
        datasets = {Path(s).stem if s.endswith(".jsonl") else s: load_problems(s, limit=args.limit) for s in names}
    except ValueError as err:
        raise SystemExit(f"sharpening llm eval: {err}") from None
    if args.out:  # before minutes of evaluation: an output folder that cannot be written fails now, in one line
        try:
            check_writable(args.out)
        except ValueError as err:
            raise SystemExit(f"sharpening llm eval: --out {err}") from None
    model_path = args.checkpoint or args.model
    if args.checkpoint is not None and not any((Path(args.checkpoint) / f).is_file()
                                               for f in ("config.json", "adapter_config.json")):
        what = ("does not exist" if not Path(args.checkpoint).exists() else
                "is not a model folder (no config.json) nor a LoRA adapter folder (no adapter_config.json)")
        raise SystemExit(f"sharpening llm eval: --checkpoint {args.checkpoint!r} {what}; give a checkpoint folder "
                         "such as runs/<run_name>/checkpoints/step_000010")
    try:
        engine = _build_engine(args.engine, model_path, args.seed, args.max_new_tokens, args.max_total_tokens)
    except OSError as err:  # Hugging Face's not-found errors are OSErrors of several lines
        from sharpening.messages import first_line

        raise SystemExit(f"sharpening llm eval: cannot load the model {model_path!r}: {first_line(err)}") from None
    if settings is not None:
        from sharpening.llm.power_sampling import PowerSamplingEngine

        engine = PowerSamplingEngine(engine, settings)
    info = {"run": _run_name(args.checkpoint, args.model), "regime": _run_regime(args.checkpoint),
            "model": model_path, "step": _checkpoint_step(args.checkpoint),
            "sampler": {"name": args.sampler, **({"alpha": args.alpha} if args.sampler == "temperature" else {}),
                        **(settings.to_dict() if settings is not None else {})}}
    out = RunFolder(args.out).eval_path if args.out else None
    t0 = time.time()
    result = evaluate(engine, datasets, n=args.n, ks=ks, max_new_tokens=args.max_new_tokens,
                      temperature=temperature, top_p=args.top_p, prefill=args.prefill, template=args.template,
                      seed=args.seed, out=out, info=info, graders=("paper", "strict") if args.grader == "paper"
                      else ("strict",), maj_rule=args.maj_rule, lp_ref=_reference(args), ignore_eos=args.ignore_eos)
    print(format_table(result))
    print(f"{time.time() - t0:.0f} s" + (f"; wrote {out}" if out else ""))
    return 0


def _rescore(path) -> int:
    """`sharpening llm eval --rescore EVAL_JSON`: both graders and both maj@k rules from the per-sample records."""
    try:
        result = read_json(path)
        print(grader_table(rescore_result(result)))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SystemExit(f"sharpening llm eval: --rescore {path!r}: {err}") from None
    return 0


def _reference(args):
    """evaluate()'s lp_ref: the evaluated model's own log-probs when it is pi_ref (no --checkpoint, and --ref-model
    unset or the same model), a forward pass of --ref-model otherwise, None without a reference."""
    if args.ref_model is None or (args.checkpoint is None and args.ref_model == args.model):
        return "engine" if args.checkpoint is None else None
    return reference_logprobs(args.ref_model)


def reference_logprobs(model_path: str, micro_batch_size: int = 16):
    """A function rollout -> [B] lp_ref = sum_t log pi_ref(y_t | x, y_<t) of each response under the model at
    model_path (loaded once, frozen; a no-grad forward pass in micro-batches on the rollout's device)."""
    import torch

    from sharpening.llm.models import load_model
    from sharpening.llm.rollout import response_logprobs

    try:
        ref = load_model(model_path).eval().requires_grad_(False)
    except OSError as err:
        from sharpening.messages import first_line

        raise SystemExit(f"sharpening llm eval: cannot load --ref-model {model_path!r}: {first_line(err)}") from None

    @torch.no_grad()
    def lp_ref(roll):
        ref.to(roll.tokens.device)
        return torch.cat([(response_logprobs(ref, roll, slice(i, i + micro_batch_size)).float()
                           * roll.mask[i:i + micro_batch_size]).sum(-1)
                          for i in range(0, len(roll), micro_batch_size)])  # [B]

    return lp_ref


def _sampler(args):
    """(temperature, PowerSampling or None) of the --sampler flags; a bad combination exits with the fix."""
    if args.sampler == "ancestral":
        return args.temperature, None
    if not args.alpha > 0:
        raise SystemExit(f"sharpening llm eval: --alpha={args.alpha!r} must be > 0")
    if args.temperature != 1.0 or args.top_p != 1.0:
        raise SystemExit(f"sharpening llm eval: --sampler {args.sampler} sets the sampling distribution from --alpha; "
                         f"drop --temperature={args.temperature} and --top-p={args.top_p}")
    if args.sampler == "temperature":
        return 1.0 / args.alpha, None
    if args.engine != "hf":
        raise SystemExit("sharpening llm eval: --sampler power runs on --engine hf (it needs every token's log-prob "
                         "at temperature 1 and under the proposal; vLLM returns one of them)")
    if args.max_total_tokens is not None:
        raise SystemExit(f"sharpening llm eval: --sampler power bounds responses by --max-new-tokens only; drop "
                         f"--max-total-tokens={args.max_total_tokens}")
    from sharpening.mcmc import PowerSampling

    try:
        settings = PowerSampling(alpha=args.alpha, block_size=args.block_size, mcmc_steps=args.mcmc_steps,
                                 proposal_temperature=args.proposal_temperature, stop_at_eos=args.stop_at_eos)
        return 1.0, dataclasses.replace(settings, block_size=settings.block(args.max_new_tokens))
    except ValueError as err:
        raise SystemExit(f"sharpening llm eval: {err}") from None


def format_table(result: dict) -> str:
    """A plain-text table: one row per data set and grader, pass@k and maj@k columns, mean length, tokens per answer
    and the fraction of responses that hit the token budget (cap); a last line names the maj@k rule."""
    ks = list(next(iter(result["datasets"].values()))["pass@k"]) if result["datasets"] else []
    rule = result.get("maj_rule")
    head = f"{'dataset':<16}{'grader':>7}{'problems':>9}" + "".join(f"{'pass@' + k:>9}" for k in ks) + \
        "".join(f"{'maj@' + k:>8}" for k in ks) + f"{'length':>8}{'tokens/answer':>15}{'cap':>7}"
    lines = [head]
    num = lambda v, width, digits: f"{'–':>{width}}" if v is None else f"{v:>{width}.{digits}f}"  # noqa: E731
    for name, d in result["datasets"].items():
        by = d.get("by_grader") or {result.get("grader", "strict"): None}
        for grader, scores in by.items():
            pass_k = scores["pass@k"] if scores else d["pass@k"]
            maj_k = scores["maj@k"][rule] if scores and rule else d["maj@k"]
            lines.append(f"{name:<16}{grader:>7}{d['num_problems']:>9}" + "".join(f"{pass_k[k]:>9.3f}" for k in ks)
                         + "".join(f"{maj_k[k]:>8.3f}" for k in ks) + num(d['mean_length'], 8, 1)
                         + num(d.get('tokens_per_answer'), 15, 1) + num(d.get('cap_frac'), 7, 3))
    lines.append(f"maj@k: {maj_label(rule)}" + (" (both rules per grader in eval.json's by_grader)" if rule else ""))
    return "\n".join(lines)


def _parse_ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"sharpening llm eval: {flag}={text!r} must be comma-separated positive integers") from None
    if not values or min(values) < 1:
        raise SystemExit(f"sharpening llm eval: {flag}={text!r} must be comma-separated positive integers")
    return values


def _build_engine(kind: str, model_path: str, seed: int, max_new_tokens: int = 1024,
                  max_total_tokens: int | None = None):
    """The engine of `sharpening llm eval`: vLLM with a context bounded by the run's lengths (else it plans for
    the model's whole context: 262k tokens for Qwen3-4B-Instruct-2507, which no KV cache holds), or hf."""
    from sharpening.llm import lora
    from sharpening.llm.models import load_model, load_tokenizer, resolve

    tokenizer = load_tokenizer(model_path)
    adapter = model_path if lora.is_adapter_folder(model_path) else None  # a LoRA checkpoint: base + adapter
    if kind == "vllm":
        from sharpening.llm.gpu_plan import eval_vllm_settings
        from sharpening.llm.vllm_engine import VLLMEngine

        lora_args = {} if adapter is None else {"lora_rank": lora.adapter_rank(adapter), "adapter": adapter}
        return VLLMEngine(resolve(lora.base_model_name(adapter) if adapter else model_path), tokenizer, sleep_level=0,
                          seed=seed, **lora_args, **eval_vllm_settings(max_new_tokens, max_total_tokens))
    import torch

    from sharpening.llm.allocator import retain_freed_memory
    from sharpening.llm.rollout import HFEngine

    if not torch.cuda.is_available():
        retain_freed_memory()  # no page faults on the same tensors every step (sharpening/llm/allocator.py)
    model = lora.load_base_and_adapter(adapter) if adapter else load_model(model_path)
    model = model.to("cuda" if torch.cuda.is_available() else "cpu")
    return HFEngine(model, tokenizer, max_total_tokens=max_total_tokens)


def _checkpoint_step(checkpoint) -> int | None:
    if checkpoint is None:
        return None
    name = Path(checkpoint).name
    return int(name.removeprefix("step_")) if name.startswith("step_") and name[5:].isdigit() else None


def _run_dir(checkpoint) -> Path | None:
    """runs/<name>/checkpoints/step_N -> runs/<name>."""
    if checkpoint is None:
        return None
    path = Path(checkpoint).resolve()
    from sharpening.llm.runs import CHECKPOINTS

    return path.parent.parent if path.parent.name == CHECKPOINTS else None


def _run_name(checkpoint, model: str) -> str:
    run_dir = _run_dir(checkpoint)
    return run_dir.name if run_dir else f"base:{model}"


def _run_regime(checkpoint) -> dict | None:
    """The regime of the run a checkpoint belongs to, from its config.yaml; None for the base model."""
    run_dir = _run_dir(checkpoint)
    from sharpening.llm.runs import RunFolder

    config = RunFolder(run_dir).config_path if run_dir else None
    if config is None or not config.is_file():
        return None
    import yaml

    from sharpening.llm.config import parse_regime

    spec = (yaml.safe_load(config.read_text()) or {}).get("regime")
    return None if spec is None else parse_regime(spec).to_dict()
