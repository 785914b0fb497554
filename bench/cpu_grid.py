"""The CPU evidence grid: every regime trained on SmolLM2-135M, resumably, with one command (`make cpu-grid`).

    python bench/cpu_grid.py                   # the whole grid of configs/cpu/grid/grid.yaml
    python bench/cpu_grid.py --list            # every run and its state (done / partial / todo); nothing runs
    python bench/cpu_grid.py --only sharpening tempered_a2     # the runs of some families
    python bench/cpu_grid.py --steps 2 --eval-limit 2 --runs /tmp/g --results /tmp/r   # a smoke run

Stages, each skipped when its results exist (so a re-run continues where a killed one stopped):
1. step 0: base-model samples for the reward-variance-vs-length measurement (bench/llm_step0.py) -> step0/;
2. base: `sharpening llm eval` of pi_ref on the held-out questions, with the runs' evaluation settings -> base/;
3. every run of the grid: `sharpening llm train --config base.yaml <family keys> seed=S [lr=X]`, in seed-major
   order. A run killed mid-way resumes from its last checkpoint (resume=true). A finished run's config.yaml,
   metrics.jsonl and eval.json are copied to RESULTS/<run>/ and its checkpoints deleted (no weights kept);
4. after the first seed of every family: pi_ref evaluated at each of the grid's base_temperatures
   -> base_temperature<T>/.
Progress and the wall time of each stage are printed; RESULTS/grid_summary.json holds every run's wall time
and state, and is rewritten after each run.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the package of this checkout, also when run as a plain script

from sharpening.atomic import write_atomic  # noqa: E402
from sharpening.llm.config import load_config  # noqa: E402

RESULT_FILES = ("metrics.jsonl", "eval.json", "config.yaml")  # config.yaml last: its presence marks "done"
DIVERGED = "steps in a row had a NaN/inf loss or gradient"  # the trainer's TrainingDiverged message


@dataclass
class Run:
    name: str
    family: str
    overrides: list[str] = field(default_factory=list)  # key=value, after base.yaml
    round: int = 0  # index of its seed in the family's list: runs go round by round


def _override(key: str, value) -> str:
    """key=value with the value in YAML flow style, as `sharpening llm train` parses it."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return f"{key}={text.removesuffix('...').strip()}"


def load_grid(path) -> tuple[Path, list[Run], list[float]]:
    """(base config path, runs in seed-major order, base-model temperatures) from a grid file; every run's config
    is resolved here, so a typo in any family fails before anything trains."""
    path = Path(path)
    spec = yaml.safe_load(path.read_text())
    if not isinstance(spec, dict) or "base" not in spec or not isinstance(spec.get("families"), dict):
        raise ValueError(f"{path}: a grid file holds `base: <config>` and `families: {{name: {{seeds: [...], ...}}}}`")
    temperatures = spec.get("base_temperatures", [])
    if not isinstance(temperatures, list) or not all(isinstance(t, (int, float)) and t > 0 for t in temperatures):
        raise ValueError(f"{path}: base_temperatures={temperatures!r} must be a list of positive numbers")
    base = path.parent / spec["base"]
    runs: dict[int, list[Run]] = {}
    for family, keys in spec["families"].items():
        keys = dict(keys or {})
        seeds, lrs = keys.pop("seeds", None), keys.pop("lrs", [None])
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
            raise ValueError(f"{path}: family {family!r} needs `seeds: [1, 2, ...]` (a list of integers)")
        for i, seed in enumerate(seeds):
            for lr in lrs:
                name = f"{family}" + ("" if lr is None else f"_lr{lr:g}".replace("e-0", "e-")) + f"_seed{seed}"
                overrides = [_override(k, v) for k, v in keys.items()] + [f"seed={seed}"]
                overrides += ([] if lr is None else [f"lr={lr}"]) + [f"run_name={name}"]
                try:
                    load_config(base, overrides)
                except (ValueError, FileNotFoundError) as err:
                    raise ValueError(f"{path}: family {family!r}: {err}") from None
                runs.setdefault(i, []).append(Run(name, family, overrides, i))
    return base, [run for i in sorted(runs) for run in runs[i]], [float(t) for t in temperatures]


def state(run: Run, runs_dir: Path, results: Path) -> str:
    if (results / run.name / "config.yaml").exists():
        return "done"
    return "partial" if (runs_dir / run.name / "metrics.jsonl").exists() else "todo"


def sh(cmd: list[str], log: Path) -> float:
    """Run cmd with its output appended to `log`; returns the seconds it took; raises on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print("$", " ".join(cmd), f">> {log}", flush=True)
    t = time.time()
    with open(log, "a") as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    if code != 0:
        raise RuntimeError(f"exit status {code}: {' '.join(cmd)} (log: {log})")
    return time.time() - t


def collect(run_dir: Path, dest: Path) -> None:
    """Copy a finished run's results (never weights) to dest, config.yaml last; then delete its checkpoints."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in RESULT_FILES:
        if (run_dir / name).exists():
            shutil.copyfile(run_dir / name, dest / f".{name}.tmp")
            (dest / f".{name}.tmp").replace(dest / name)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)


@contextlib.contextmanager
def claim(path: Path):
    """An exclusive lock on path (flock: released when its holder exits, even killed); yields False when another
    runner holds it. So several runners can share one grid, each taking the runs no other one has."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default=str(ROOT / "configs/cpu/grid/grid.yaml"), help="grid file")
    parser.add_argument("--runs", default=None, help="training folders (default: the base config's out_dir)")
    parser.add_argument("--results", default=str(ROOT / "results/cpu"), help="results folder (default results/cpu)")
    parser.add_argument("--only", nargs="+", default=None, metavar="FAMILY", help="run only these families")
    parser.add_argument("--list", action="store_true", help="print the runs and their state, run nothing")
    parser.add_argument("--steps", type=int, default=None, help="override every run's steps (smoke runs)")
    parser.add_argument("--eval-limit", type=int, default=None, help="override the held-out problem count")
    parser.add_argument("--new-commit", action="store_true",
                        help="continue a grid begun at another code commit (its runs then record two commits)")
    args = parser.parse_args(argv)

    base, runs, temperatures = load_grid(args.grid)
    families = {r.family for r in runs}
    if args.only and set(args.only) - families:
        parser.error(f"--only {sorted(set(args.only) - families)}: not in the grid; families: {sorted(families)}")
    runs = [r for r in runs if not args.only or r.family in args.only]
    extra = ([f"steps={args.steps}"] if args.steps else []) + ([f"eval_limit={args.eval_limit}"] if args.eval_limit else [])
    cfg = load_config(base, extra)
    runs_dir, results = Path(args.runs or ROOT / cfg.out_dir), Path(args.results)
    states = {r.name: state(r, runs_dir, results) for r in runs}
    if args.list:
        for r in runs:
            print(f"{states[r.name]:<8} {r.name:<40} {' '.join(r.overrides[:-1])}")
        print(f"{sum(s == 'done' for s in states.values())} of {len(runs)} runs done")
        return 0

    summary_path = results / "grid_summary.json"
    py, start = [sys.executable], time.time()
    code = code_commit()
    begun = json.loads(summary_path.read_text()).get("commit") if summary_path.exists() else None
    if begun is not None and begun != code and not args.new_commit:
        raise SystemExit(f"cpu_grid: {results} was begun at commit {begun}, this checkout is at {code}; run the grid "
                         f"from a worktree at {begun.removesuffix('-dirty')} (git worktree add ../grid {begun[:12]}), "
                         "or pass --new-commit to mix commits knowingly")

    def record(name, seconds, status):
        while True:  # read, update, write under the lock: another runner may have recorded in between
            with claim(runs_dir / "summary.lock") as mine:
                if mine:
                    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {"runs": {}}
                    summary["runs"].setdefault(name, {"seconds": 0.0})
                    summary["runs"][name]["seconds"] += seconds  # a resumed run adds up its sessions
                    summary["runs"][name]["status"] = status
                    summary.setdefault("commit", code)  # the commit the grid began at (one commit per grid)
                    summary["runs"][name]["commit"] = code
                    summary["last_session"] = {"seconds": round(time.time() - start, 1),
                                               "ended": time.strftime("%Y-%m-%d %H:%M")}
                    write_atomic(summary_path, json.dumps(summary, indent=1, sort_keys=True))
                    return
            time.sleep(0.1)

    if not (results / "step0" / "step0.json").exists():
        seconds = sh(py + [str(ROOT / "bench/llm_step0.py"), "--config", str(base), "--out", str(results / "step0")]
                     + (["--prompts", "4", "--group-size", "4"] if args.steps else []), runs_dir / "step0.log")
        record("step0", seconds, "done")
    def evaluate_base(t: float):  # pi_ref itself (t = 1) or at token-level temperature t = 1/alpha
        name = "base" if t == 1.0 else f"base_temperature{t:g}"
        if (results / name / "eval.json").exists() or not cfg.eval_datasets or (args.only and t != 1.0):
            return
        with claim(runs_dir / f"{name}.lock") as mine:
            if mine and not (results / name / "eval.json").exists():
                evaluate_base_now(t, name)

    def evaluate_base_now(t: float, name: str):
        seconds = sh(py + ["-m", "sharpening.cli", "llm", "eval", "--model", cfg.model,
                           "--datasets", ",".join(cfg.eval_datasets), "--limit", str(cfg.eval_limit),
                           "--n", str(cfg.eval_n), "--ks", ",".join(map(str, eval_ks(cfg.eval_n))),
                           "--max-new-tokens", str(cfg.max_new_tokens), "--prefill", cfg.prefill,
                           "--template", cfg.template, "--seed", str(cfg.eval_seed), "--temperature", f"{t:g}",
                           "--out", str(results / name)], runs_dir / f"{name}.log")
        record(name, seconds, "done")

    def train(run: Run, label: str):
        resume = ["resume=true"] if state(run, runs_dir, results) == "partial" else []
        cmd = py + ["-m", "sharpening.cli", "llm", "train", "--config", str(base), *run.overrides, *extra,
                    f"out_dir={_relative(runs_dir)}", *resume]
        print(f"{label} {run.name}{' (resumed)' if resume else ''}; {(time.time() - start) / 60:.0f} min so far",
              flush=True)
        t, log = time.time(), runs_dir / f"{run.name}.log"
        try:
            sh(cmd, log)
            status = "done"
        except RuntimeError as err:
            # a run stopped by max_bad_steps NaN/inf steps is a result (it diverged); any other failure is
            # recorded, left for the next session, and the grid goes on
            status = "diverged" if DIVERGED in log.read_text() else "failed"
            print(f"  {status.upper()}: {err}", flush=True)
        if status != "failed":
            collect(runs_dir / run.name, results / run.name)
        record(run.name, time.time() - t, status)
        print(f"  {status} in {(time.time() - t) / 60:.1f} min", flush=True)

    evaluate_base(1.0)
    todo = [r for r in runs if states[r.name] != "done"]
    print(f"{len(runs) - len(todo)} of {len(runs)} runs done; {len(todo)} to go", flush=True)
    for i, run in enumerate(todo, 1):
        if run.round >= 1:  # after the first seed of every family: the base model at the other temperatures
            for t in temperatures:
                evaluate_base(t)
        with claim(runs_dir / f"{run.name}.lock") as mine:  # another runner may hold it, or have finished it
            if mine and state(run, runs_dir, results) != "done":
                train(run, f"[{i}/{len(todo)}]")
            else:
                print(f"[{i}/{len(todo)}] {run.name}: {'done' if mine else 'taken by another runner'}", flush=True)
    for t in temperatures:
        evaluate_base(t)
    print(f"grid session: {(time.time() - start) / 60:.1f} min; summary: {summary_path}")
    return 0


def code_commit() -> str:
    """The checkout's commit, with -dirty when tracked files differ from it: every result records the code it ran."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    sha = git("rev-parse", "HEAD") or "unknown"
    return sha + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def _relative(path: Path) -> str:
    """path relative to the checkout when inside it (the saved config.yaml then names no local folder)."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def eval_ks(n: int) -> list[int]:
    from sharpening.llm.trainer import eval_ks as ks

    return list(ks(n))


if __name__ == "__main__":
    sys.exit(main())
