"""`sharpening llm reproduce RUN_DIR [--steps N]`: re-run a run from what its folder records, compare bit for bit.

The run's config (config.yaml; the config it started with when a change was accepted on resume) is trained again
in a temporary folder with the recorded torch thread counts, and every metric of every step (timings aside) and
the final evaluation are compared exactly. The report says `bit-identical`, or the first step and metric that
differ with both values, and what differs between the recorded environment and this one (environment.json:
threads, versions, CPU, ...). Why a re-run can differ at all: docs/run_folder.md ("Reproducing a run").
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

from sharpening.llm import runs

# Metrics that measure the machine, not the trajectory: never compared.
UNTIMED_PREFIXES = ("time/", "throughput/", "memory/")


@dataclass
class Report:
    identical: bool
    text: str
    difference: tuple | None = None  # (step, metric, recorded, now) of the first difference
    environment: dict | None = None  # {key: (recorded, now)} of what differs in the environment


def compared(key: str) -> bool:
    return not key.startswith(UNTIMED_PREFIXES)


def first_difference(recorded: list[dict], now: list[dict], with_eval: bool = True) -> tuple | None:
    """(step, metric, recorded value, new value) of the first metric that differs, steps in order and metrics
    in the recorded line's order; None when every compared value is equal (null equals null: both non-finite)."""
    by_step = {row["step"]: row for row in now}
    for row in recorded:
        other = by_step.get(row["step"])
        if other is None:
            return row["step"], "(the whole line)", "present", "missing"
        for key, value in row.items():
            if compared(key) and (with_eval or not key.startswith("eval/")) and other.get(key, "missing") != value:
                return row["step"], key, value, other.get(key, "missing")
    return None


def eval_difference(recorded, now, path: str = "eval.json") -> tuple | None:
    """(where, recorded, new) of the first differing entry of two evaluations (recursively), or None."""
    if isinstance(recorded, dict) and isinstance(now, dict):
        for key in recorded:
            if "time" in key or "seconds" in key:
                continue
            found = eval_difference(recorded[key], now.get(key, "missing"), f"{path}.{key}")
            if found is not None:
                return found
        return None
    if isinstance(recorded, list) and isinstance(now, list) and len(recorded) == len(now):
        for i, (a, b) in enumerate(zip(recorded, now)):
            found = eval_difference(a, b, f"{path}[{i}]")
            if found is not None:
                return found
        return None
    return None if recorded == now else (path, recorded, now)


def reproduce(run_dir, steps: int | None = None, threads: int | None = None) -> Report:
    """Train RUN_DIR's config again for `steps` steps (all by default) in a temp folder and compare (module doc).
    threads: torch threads for the re-run (default: the recorded ones)."""
    import torch

    from sharpening.llm.config import build_config
    from sharpening.llm.trainer import Trainer

    run = runs.RunFolder(run_dir)
    if not run.config_path.is_file():
        raise ValueError(f"{str(run.path)!r} is not a run folder (it has no {runs.CONFIG})")
    recorded = [row for row in run.metrics() if row["step"] > 0]
    if not recorded:
        raise ValueError(f"{run.path} has no metrics to compare with ({runs.METRICS} is missing or empty)")
    config, identity, env = run.read_config(), run.read_identity(), run.read_environment()
    accepted = [c for c in (identity or {}).get("changes", []) if c.get("accepted")]
    last = recorded[-1]["step"]
    n = last if steps is None else steps
    if not 1 <= n <= last:
        raise ValueError(f"--steps {n}: the run has metrics of steps 1..{last}")
    if accepted:  # the trajectory's config changed at that step: only the steps before it have one config
        if n >= accepted[0]["step"]:
            raise ValueError(f"the run's config changed at step {accepted[0]['step']} (accepted on resume: "
                             f"{', '.join(accepted[0]['accepted'])}); reproduce checks --steps "
                             f"{accepted[0]['step'] - 1} or fewer")
        config = identity["config"]
    full = n == config["steps"] and run.eval_path.is_file()
    threads = threads or (env or {}).get("torch_threads") or torch.get_num_threads()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if env and env.get("interop_threads"):
            torch.set_num_interop_threads(env["interop_threads"])
    except RuntimeError:  # settable once, before any inter-op work: the recorded count then only shows in the diff
        pass
    try:
        with tempfile.TemporaryDirectory(prefix="sharpening-reproduce-") as tmp:
            values = {**config, "out_dir": tmp, "resume": False, "accept_changes": False, "report_to": [],
                      "steps": n, "save_every": 0, "keep_checkpoints": 1}
            if not full:  # a prefix: the training metrics; the evaluation is checked by a full reproduce
                values.update(eval_datasets=[], keep_best=False, eval_at_start=False)
            trainer = Trainer(build_config(values))
            now_env = runs.environment(trainer.device, trainer.cfg.dtype, trainer.cfg.engine)
            now = trainer.train()
            new_eval = trainer.run.read_eval() if full else None
    finally:
        torch.set_num_threads(before)
    env_diff = runs.environment_changes(env, now_env) if env else {}
    env_text = (f"environment differs: {runs.describe_changes(env_diff)}" if env_diff else
                "environment: as recorded" if env else "environment: not recorded by this run")
    diff = first_difference([r for r in recorded if r["step"] <= n], now, with_eval=full)
    if diff is None and full:
        found = eval_difference(run.read_eval(), new_eval)
        if found is not None:
            diff = (n, *found)
    scope = f"{n} steps" + (" and the final evaluation" if full else " (training metrics)")
    if diff is None:
        return Report(True, f"bit-identical: {scope} of {run.path}; {env_text}", None, env_diff)
    step, key, was, got = diff
    return Report(False, f"differs at step {step}: {key} recorded {was!r}, now {got!r} (compared {scope}); "
                         f"{env_text}", diff, env_diff)
