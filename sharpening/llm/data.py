"""Math problems: the bundled benchmarks (JSONL), Hugging Face datasets, a synthetic arithmetic task, and the
paper's prompt.

    load_problems("math500")                 a bundled benchmark: package data (sharpening/data), or $SHARPENING_DATA
    load_problems("path/to/file.jsonl")      any JSONL with the fields id, problem, answer
    load_problems("synthetic:add", seed=1)   arithmetic with exact answers (synthetic:<task>[:<digits>])
    load_problems("HuggingFaceH4/MATH-500")  a Hugging Face dataset (needs `datasets` and its local cache)
    format_prompt(tokenizer, problem)        the paper's template through the model's chat template
"""

from __future__ import annotations

import os
import random
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

# The authors' prompt exactly as their model sees it: examples/prompts/cot.txt of sarthmit/dist_sharpening holds
# `\\boxed{{}}` (two backslashes) and goes through str.format, which undoubles the braces, not the backslashes.
PAPER_TEMPLATE = (
    "Think step-by-step to solve the following problem. Output your answer inside of \\\\boxed{} tags.:\n"
    "{problem}\n\nLet's think step-by-step"
)
# The same words with the LaTeX command as LaTeX writes it (one backslash; two read as a line break `\\` then
# "boxed{}"): for new work, where matching the authors' exact prompt is not the point.
PAPER_TEX_TEMPLATE = PAPER_TEMPLATE.replace("\\\\boxed", "\\boxed")
# Two worked two-digit additions, each answered by the sum restated with its value in the box. With it (and the
# prefill \boxed{) SmolLM2-135M writes `\boxed{59 + 63 = 122}`: held-out pass@1 ~0.25 on synthetic:add:2, where
# "plain" gets ~0.02 (measured; docs/llm_evidence.md). A correct answer this way takes 12 tokens or more.
WORKED_SUM_TEMPLATE = ("What is 12 + 35?\n\\boxed{12 + 35 = 47}\n\nWhat is 26 + 51?\n\\boxed{26 + 51 = 77}\n\n"
                       "{problem}")
# Splits a template into the turns of a few-shot dialogue (format_prompt); newlines around it are dropped.
TURN = "<turn>"


def few_shot_dialogue(examples, answer) -> str:
    """A template of TURN-separated turns: "What is a + b + c?", answer(a, b, c) for each example, then {problem}."""
    turns = [t for a, b, c in examples for t in (f"What is {a} + {b} + {c}?", answer(a, b, c))]
    return f"\n{TURN}\n".join(turns + ["{problem}"])


# The second CPU task (synthetic:add3, a + b + c of one digit; docs/llm_evidence.md, "A task where length
# matters"): four worked examples as a dialogue, each answered by its partial sums, one a line, then the boxed
# total. SmolLM2-135M answers in kind without a prefill and ends its turn there; writing the partial sums out,
# it scores more often than answering in one step (direct_sums: the same examples with the total only).
SUM3_EXAMPLES = ((3, 5, 7), (6, 2, 9), (4, 8, 1), (9, 7, 5))
PARTIAL_SUMS_TEMPLATE = few_shot_dialogue(
    SUM3_EXAMPLES, lambda a, b, c: f"{a} + {b} = {a + b}\n{a + b} + {c} = {a + b + c}\n\\boxed{{{a + b + c}}}")
DIRECT_SUMS_TEMPLATE = few_shot_dialogue(SUM3_EXAMPLES, lambda a, b, c: f"\\boxed{{{a} + {b} + {c} = {a + b + c}}}")
# Named templates; any other string with a {problem} placeholder is a template of its own. "plain" (the bare
# question) is what SmolLM2-135M can partly solve: with the paper's prompt it scores 0% on a + b (measured).
TEMPLATES = {"paper": PAPER_TEMPLATE, "paper_tex": PAPER_TEX_TEMPLATE, "plain": "{problem}",
             "worked_sum": WORKED_SUM_TEMPLATE, "partial_sums": PARTIAL_SUMS_TEMPLATE,
             "direct_sums": DIRECT_SUMS_TEMPLATE}

BENCHMARKS = ("math500", "minerva_math", "aime24", "aime25", "hmmt25", "amc23", "gsm8k_test", "math_train")
SYNTHETIC_TASKS = ("add", "sub", "mul", "add_sub", "add3", "add4")
_SEED_STRIDE = 1_000_003  # synthetic seeds far apart so that splits drawn with different seeds rarely collide


@dataclass
class Problem:
    id: str
    problem: str
    answer: str
    source: str = ""


def data_dir() -> Path:
    """Where the bundled benchmarks live: $SHARPENING_DATA if set, else the package's own sharpening/data (package
    data: there in a clone and in an installed wheel alike; sources, licences and checksums in its README.md)."""
    if "SHARPENING_DATA" in os.environ:
        return Path(os.environ["SHARPENING_DATA"])
    return Path(str(resources.files("sharpening") / "data"))


def load_problems(source: str, split: str = "test", limit: int | None = None, seed: int | None = None) -> list[Problem]:
    """Problems from a benchmark name, a JSONL path, "synthetic:<task>[:<digits>]" or a Hugging Face dataset.

    split: the Hugging Face split (ignored for files); for synthetic tasks "train" or "test" (disjoint questions). limit: keep the first `limit` problems, after a
    shuffle by `seed` if one is given (for synthetic tasks, seed picks the problems: different seeds give
    disjoint ids). A bad source, a missing file or a row without problem/answer is a ValueError that says
    what is allowed.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit={limit!r} must be a positive number of problems (or None for all)")
    if source.startswith("synthetic:"):
        task, _, digits = source.removeprefix("synthetic:").partition(":")
        if not (digits or "1").isdigit():
            raise ValueError(f"{source!r}: the digits after the task must be an integer, as in synthetic:add:2")
        n = limit if limit is not None else 1000
        return synthetic_problems(n, task=task, digits=int(digits or 1), seed=seed or 0,
                                  split=split if split in SYNTHETIC_SPLITS else None)
    if source in BENCHMARKS:
        problems = _read_jsonl(data_dir() / f"{source}.jsonl", source)
    elif source.endswith(".jsonl") or Path(source).is_file():
        problems = _read_jsonl(Path(source), Path(source).stem)
    elif "/" in source:
        problems = _load_hf(source, split)
    else:
        raise ValueError(f"unknown problem source {source!r}; use one of {', '.join(BENCHMARKS)}, a .jsonl path, "
                         f"synthetic:<task>[:<digits>] with task in {SYNTHETIC_TASKS}, or a Hugging Face "
                         "dataset name such as HuggingFaceH4/MATH-500")
    if seed is not None:
        random.Random(seed).shuffle(problems)
    return problems[:limit]


def _read_jsonl(path: Path, source: str) -> list[Problem]:
    """The problems of a JSONL file (sharpening.llm.runs.read_jsonl: strict JSON, one object per line); a file
    without any is an error."""
    from sharpening.llm.runs import read_jsonl

    if not path.is_file():
        raise ValueError(f"problem file {str(path)!r} does not exist{_missing_hint(path, source)}")
    rows = read_jsonl(path, "problem")
    if not rows:
        raise ValueError(f"problem file {str(path)!r} holds no problems (one JSON object per line)")
    return [_problem_from_row(row, f"{path}:{i + 1}", default_id=f"{source}/{i}", source=source)
            for i, row in enumerate(rows)]


def _missing_hint(path: Path, source: str) -> str:
    """How to get a missing file: a bundled benchmark ships with the package, unless $SHARPENING_DATA points away."""
    if source not in BENCHMARKS:
        return ""
    if "SHARPENING_DATA" in os.environ:
        return (f"; SHARPENING_DATA={os.environ['SHARPENING_DATA']!r} must be a folder holding {path.name} "
                "(unset it to use the copy shipped in sharpening/data)")
    return (f"; it ships in the package's sharpening/data folder: reinstall the package (pip install -e . from a "
            f"clone), or set SHARPENING_DATA to a folder holding {path.name}")


def _problem_from_row(row: dict, where: str, default_id: str, source: str) -> Problem:
    """A row with problem (or question) and answer (or a solution whose last \\boxed{} is the answer)."""
    from sharpening.llm.grading import extract_boxed

    problem = row.get("problem", row.get("question"))
    answer = row.get("answer")
    if answer is None and row.get("solution") is not None:
        answer = extract_boxed(str(row["solution"]))
    if problem is None or answer is None or str(answer).strip() == "":
        raise ValueError(f"{where}: a problem needs the fields 'problem' (or 'question') and 'answer' (or a "
                         f"'solution' with a \\boxed{{}} answer); this row has {sorted(row)}")
    return Problem(id=str(row.get("id", row.get("unique_id", default_id))), problem=str(problem),
                   answer=str(answer).strip(), source=str(row.get("source", source)))


def _load_hf(name: str, split: str) -> list[Problem]:
    try:
        import datasets
    except ImportError:
        raise ValueError(f"loading the Hugging Face dataset {name!r} needs `pip install datasets`; or pass a "
                         f"JSONL file or one of {', '.join(BENCHMARKS)}") from None
    rows = datasets.load_dataset(name, split=split)
    return [_problem_from_row(dict(row), f"{name}[{split}][{i}]", default_id=f"{name}/{i}", source=name)
            for i, row in enumerate(rows)]


# ---------------------------------------------------------------------------------------------------------
# Synthetic arithmetic: a task that a 135M model can partly solve
# ---------------------------------------------------------------------------------------------------------


SYNTHETIC_SPLITS = ("train", "test")
HELD_OUT_BUCKETS = 3  # of 10: the share of distinct questions reserved for the test split


def synthetic_split(question: str) -> str:
    """Which split a question belongs to, by a hash of its text: train and test never share a question."""
    return "test" if zlib.crc32(question.encode()) % 10 < HELD_OUT_BUCKETS else "train"


def synthetic_problems(n: int, task: str = "add", digits: int = 1, seed: int = 0,
                       split: str | None = None) -> list[Problem]:
    """n arithmetic problems "What is a + b?" with exact integer answers; operands have `digits` digits.

    task: add (a + b), sub (a - b, may be negative), mul (a * b), add_sub (a + b - c) or add3 (a + b + c: the
    sum of three numbers, the CPU evidence grid's task, docs/llm_evidence.md). Problem k of a seed
    is a fixed function of (task, digits, seed, k), with id "synthetic:<task>:<digits>/<seed>/<k>": ids of
    different seeds never coincide. split="train" or "test" keeps only the questions of that split
    (synthetic_split: about 70% / 30% of the distinct questions, by a hash), so training and held-out
    problems never share a question, even for 1-digit addition with its 100 distinct questions.
    """
    if split is not None and split not in SYNTHETIC_SPLITS:
        raise ValueError(f"synthetic split={split!r} is not one of {SYNTHETIC_SPLITS} (or None for both)")
    if task not in SYNTHETIC_TASKS:
        raise ValueError(f"synthetic task {task!r} is not one of {SYNTHETIC_TASKS}")
    if not 1 <= digits <= 18:
        raise ValueError(f"digits={digits!r} must be between 1 and 18")
    if n < 0:
        raise ValueError(f"n={n!r} must be >= 0")
    lo, hi = (0 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1
    problems, k = [], -1
    while len(problems) < n:
        k += 1
        rng = random.Random(seed * _SEED_STRIDE + k)
        a, b, c, d = rng.randint(lo, hi), rng.randint(lo, hi), rng.randint(lo, hi), rng.randint(lo, hi)
        question, answer = {
            "add": (f"{a} + {b}", a + b),
            "sub": (f"{a} - {b}", a - b),
            "mul": (f"{a} * {b}", a * b),
            "add_sub": (f"{a} + {b} - {c}", a + b - c),
            "add3": (f"{a} + {b} + {c}", a + b + c),
            "add4": (f"{a} + {b} + {c} + {d}", a + b + c + d),
        }[task]
        if split is not None and synthetic_split(f"What is {question}?") != split:
            continue
        problems.append(Problem(id=f"synthetic:{task}:{digits}/{seed}/{k}", problem=f"What is {question}?",
                                answer=str(answer), source=f"synthetic:{task}"))
    return problems


# ---------------------------------------------------------------------------------------------------------
# Prompt
# ---------------------------------------------------------------------------------------------------------


def format_prompt(tokenizer, problem: str, template: str = PAPER_TEMPLATE, prefill: str = "") -> str:
    """The text to tokenize: template (with {problem} filled in) as the user turn of the model's chat template,
    the assistant turn opened (add_generation_prompt=True), then `prefill` (e.g. "\\\\boxed{") appended.

    A template holding TURN markers is a few-shot dialogue: the parts are user, assistant, user, ... turns (the
    last, with {problem}, a user turn), so the model sees each worked example answered by the assistant and ended
    by its end-of-turn token."""
    template = TEMPLATES.get(template, template)
    if "{problem}" not in template:
        raise ValueError(f"template {template[:60]!r}... is not one of {sorted(TEMPLATES)} and has no "
                         "{problem} placeholder")
    turns = template.split(TURN)
    turns = [t.strip("\n") for t in turns] if len(turns) > 1 else turns
    if len(turns) % 2 == 0 or "{problem}" not in turns[-1]:
        raise ValueError(f"template {template[:60]!r}...: its {TURN} markers must separate user, assistant, ..., "
                         "user turns (an odd number of turns), the last one holding {problem}")
    turns[-1] = turns[-1].replace("{problem}", problem)  # not str.format: templates hold literal \boxed{} braces
    messages = [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text + prefill
