"""Evaluation: n samples per problem, pass@k by the unbiased estimator, maj@k by majority vote over k-subsets.

    pass@k = E_problems[ 1 - C(n - c, k) / C(n, k) ]      c = correct samples out of n (Chen et al., 2021)
    maj@k  = E_problems[ E_{S subset of the n samples, |S| = k}[ 1 if the most common answer in S is correct ] ]

maj@k's answers are the last \\boxed{} of each sample, clustered by the grader's equivalence (so "0.5" and
"\\frac12" vote together); samples without a box abstain. A tie between m most common answers that includes
the correct one scores 1/m (the expectation of breaking the tie uniformly at random). The subsets are all
C(n, k) of them when there are at most `subsets`, else `subsets` random ones (seeded).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sharpening.atomic import write_atomic
from sharpening.llm.data import BENCHMARKS, PAPER_TEMPLATE, TEMPLATES, Problem, format_prompt, load_problems
from sharpening.llm.grading import final_answer, grade

DEFAULT_KS = (1, 2, 4, 8, 16)
SAMPLERS = ("ancestral", "temperature", "power")
EVAL_DATASETS = ("math500", "minerva_math", "aime24", "aime25", "hmmt25")


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


def maj_at_k(clusters, correct: int, k: int, subsets: int = 1000, seed: int = 0) -> float:
    """Chance that the majority answer of k samples (drawn without replacement from the n) is correct.

    clusters: the answer cluster of each of the n samples (ints, -1 = no answer, abstains); correct: the
    correct cluster's id. Ties score 1/(number of tied clusters) when the correct one is among them; a subset
    where nobody answers scores 0. Exact over all C(n, k) subsets when there are <= `subsets` of them.
    """
    clusters = np.asarray(clusters, dtype=int)
    n = len(clusters)
    if not 1 <= k <= n:
        raise ValueError(f"maj_at_k needs 1 <= k <= n, got k={k}, n={n}")
    if correct < 0 or not (clusters == correct).any():
        return 0.0
    if math.comb(n, k) <= subsets:
        from itertools import combinations

        picks = np.array(list(combinations(range(n), k)))  # [S, k]: every subset
    else:
        rng = np.random.default_rng(seed)
        picks = rng.random((subsets, n)).argsort(1)[:, :k]  # [S, k]: uniform random k-subsets
    onehot = clusters[:, None] == np.arange(clusters.max() + 1)[None, :]  # [n, m]; no answer: all False
    votes = onehot[picks].sum(1)  # [S, m]
    top = votes.max(1, keepdims=True)  # [S, 1]
    tied = (votes == top) & (top > 0)  # [S, m]
    credit = np.where(tied.any(1), tied[:, correct] / np.maximum(tied.sum(1), 1), 0.0)  # [S]
    return float(credit.mean())


def evaluate(engine, problems, n: int = 16, ks=DEFAULT_KS, max_new_tokens: int = 1024, temperature: float = 1.0,
             top_p: float = 1.0, prefill: str = "", template: str = PAPER_TEMPLATE, tokenizer=None,
             seed: int | None = 0, subsets: int = 1000, prompts_per_call: int | None = None, out=None,
             info: dict | None = None, ranks=None) -> dict:
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
    """
    tokenizer = tokenizer if tokenizer is not None else engine.tokenizer
    datasets = problems if isinstance(problems, dict) else {"problems": problems}
    ks = [k for k in ks if 1 <= k <= n]
    if not ks:
        raise ValueError(f"no k in ks={tuple(ks)} is between 1 and n={n}")
    per_call = prompts_per_call or max(1, 64 // n)  # ~64 sequences per engine call: one batch of HFEngine
    result = {**(info or {}), "n": n, "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens,
              "prefill": prefill, "seed": seed, "datasets": {}}
    rank, world_size = (ranks.rank, ranks.world_size) if ranks is not None else (0, 1)

    def score_call(chunk, roll):  # one engine call's problems -> their rows
        texts = [prefill + t for t in roll.texts]  # [len(chunk) * n], prompt-major
        lengths = _lengths(roll, texts, tokenizer)
        costs = _costs(roll, lengths)
        return [{**score_problem(p, texts[i * n:(i + 1) * n], lengths[i * n:(i + 1) * n], ks, subsets, seed),
                 **{k: _mean(v[i * n:(i + 1) * n]) for k, v in costs.items()}} for i, p in enumerate(chunk)]

    # grading overlaps sampling: a call's answers are graded in a thread (the guarded grader then runs them in its
    # helper process, on the other core) while the engine samples the next call's
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
                                       top_p=top_p, ignore_eos=False, seed=call_seed)
                pending.append((start, grader.submit(score_call, chunk, roll)))
                while len(pending) > 1:  # at most one call waits for its grades
                    collect(*pending.pop(0))
            for call in pending:
                collect(*call)
            bar.close()
            if world_size > 1:
                every = {k: v for part in ranks.all_gather(mine) for k, v in part.items()}
                rows = [row for start in starts for row in every[start]]
            result["datasets"][name] = summarize(rows, ks)
    if out is not None and rank == 0:
        write_atomic(out, json.dumps(result, indent=1))
    return result


def score_problem(problem: Problem, texts: list[str], lengths: list[float], ks, subsets: int = 1000,
                  seed: int | None = 0) -> dict:
    """One problem's n responses -> its correct count c, pass@k and maj@k for each k, and mean length."""
    r = [grade(t, problem.answer) for t in texts]
    c = int(sum(r))
    clusters, correct = answer_clusters([final_answer(t) for t in texts], problem.answer)
    n = len(texts)
    return {"id": problem.id, "correct": c, "n": n, "mean_length": float(np.mean(lengths)) if lengths else 0.0,
            "pass@k": {str(k): pass_at_k(n, c, k) for k in ks},
            "maj@k": {str(k): maj_at_k(clusters, correct, k, subsets, seed or 0) for k in ks}}


def summarize(rows: list[dict], ks) -> dict:
    """Average the per-problem scores of one data set (each problem weighs the same)."""
    costs = {k: float(np.mean([r[k] for r in rows])) for k in COSTS if rows and all(k in r for r in rows)}
    return {"num_problems": len(rows),
            "pass@k": {str(k): float(np.mean([r["pass@k"][str(k)] for r in rows])) for k in ks},
            "maj@k": {str(k): float(np.mean([r["maj@k"][str(k)] for r in rows])) for k in ks},
            "mean_length": float(np.mean([r["mean_length"] for r in rows])) if rows else 0.0, **costs,
            "problems": [{"id": r["id"], "correct": r["correct"], "n": r["n"]} for r in rows]}


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
    parser.add_argument("--engine", choices=("hf", "vllm"), default="hf", help="hf (CPU/GPU) or vllm (GPU)")
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
    model_path = args.checkpoint or args.model
    if args.checkpoint is not None and not (Path(args.checkpoint) / "config.json").is_file():
        what = "does not exist" if not Path(args.checkpoint).exists() else "is not a model folder (no config.json)"
        raise SystemExit(f"sharpening llm eval: --checkpoint {args.checkpoint!r} {what}; give a checkpoint folder "
                         "such as runs/<run_name>/checkpoints/step_000010")
    try:
        engine = _build_engine(args.engine, model_path, args.seed, args.max_new_tokens, args.max_total_tokens)
    except OSError as err:  # Hugging Face's not-found errors are OSErrors of several lines
        from sharpening.cli import first_line

        raise SystemExit(f"sharpening llm eval: cannot load the model {model_path!r}: {first_line(err)}") from None
    if settings is not None:
        from sharpening.llm.power_sampling import PowerSamplingEngine

        engine = PowerSamplingEngine(engine, settings)
    info = {"run": _run_name(args.checkpoint, args.model), "regime": _run_regime(args.checkpoint),
            "model": model_path, "step": _checkpoint_step(args.checkpoint),
            "sampler": {"name": args.sampler, **({"alpha": args.alpha} if args.sampler == "temperature" else {}),
                        **(settings.to_dict() if settings is not None else {})}}
    out = Path(args.out) / "eval.json" if args.out else None
    t0 = time.time()
    result = evaluate(engine, datasets, n=args.n, ks=ks, max_new_tokens=args.max_new_tokens,
                      temperature=temperature, top_p=args.top_p, prefill=args.prefill, template=args.template,
                      seed=args.seed, out=out, info=info)
    print(format_table(result))
    print(f"{time.time() - t0:.0f} s" + (f"; wrote {out}" if out else ""))
    return 0


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
    """A plain-text table: one row per data set, pass@k and maj@k columns."""
    ks = list(next(iter(result["datasets"].values()))["pass@k"]) if result["datasets"] else []
    head = f"{'dataset':<16}{'problems':>9}" + "".join(f"{'pass@' + k:>9}" for k in ks) + \
        "".join(f"{'maj@' + k:>8}" for k in ks) + f"{'length':>8}{'tokens/answer':>15}"
    lines = [head]
    for name, d in result["datasets"].items():
        lines.append(f"{name:<16}{d['num_problems']:>9}" + "".join(f"{d['pass@k'][k]:>9.3f}" for k in ks)
                     + "".join(f"{d['maj@k'][k]:>8.3f}" for k in ks) + f"{d['mean_length']:>8.1f}"
                     + f"{d.get('tokens_per_answer', float('nan')):>15.1f}")
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
    from sharpening.llm.models import load_model, load_tokenizer, resolve

    tokenizer = load_tokenizer(model_path)
    if kind == "vllm":
        from sharpening.llm.gpu_plan import eval_vllm_settings
        from sharpening.llm.vllm_engine import VLLMEngine

        return VLLMEngine(resolve(model_path), tokenizer, sleep_level=0, seed=seed,
                          **eval_vllm_settings(max_new_tokens, max_total_tokens))
    import torch

    from sharpening.llm.allocator import retain_freed_memory
    from sharpening.llm.rollout import HFEngine

    if not torch.cuda.is_available():
        retain_freed_memory()  # no page faults on the same tensors every step (sharpening/llm/allocator.py)
    model = load_model(model_path).to("cuda" if torch.cuda.is_available() else "cpu")
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
    return path.parent.parent if path.parent.name == "checkpoints" else None


def _run_name(checkpoint, model: str) -> str:
    run_dir = _run_dir(checkpoint)
    return run_dir.name if run_dir else f"base:{model}"


def _run_regime(checkpoint) -> dict | None:
    """The regime of the run a checkpoint belongs to, from its config.yaml; None for the base model."""
    run_dir = _run_dir(checkpoint)
    config = run_dir / "config.yaml" if run_dir else None
    if config is None or not config.is_file():
        return None
    import yaml

    from sharpening.llm.config import parse_regime

    spec = (yaml.safe_load(config.read_text()) or {}).get("regime")
    return None if spec is None else parse_regime(spec).to_dict()
