"""The run folder: the one owner of its layout, its lock, its identity, its environment record and its metrics.

    out_dir/run_name/
        config.yaml           the resolved TrainConfig the run uses now (the start one, plus recorded changes)
        run.json              identity: the config it started with, the code version, every change on resume
        environment.json      what the trajectory depends on besides the config (versions, threads, CPU/GPU)
        metrics.jsonl         one strict-JSON object per step ({"step": N, ...}), appended through `RunFolder.log`
        eval.json             the final evaluation (`sharpening llm eval`'s format)
        eval/step_000020.json every evaluation, by step
        checkpoints/step_000020/, checkpoints/best/   (sharpening.llm.checkpoint writes them)
        tensorboard/, wandb/  the opt-in sinks (report_to), when asked for
        .lock                 held (flock) by the one process writing the folder, with its pid, host and start

Every reader and writer of these files goes through this module (trainer, evaluation, figures, experiment
drivers). JSON here is strict: a non-finite float is written as null (JSON has no NaN), and a bare NaN or
Infinity in a file is refused with the file and line. docs/run_folder.md states the guarantees.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import math
import os
import platform
import secrets
import signal
import socket
import subprocess
from pathlib import Path

import yaml

from sharpening.atomic import write_atomic

CONFIG = "config.yaml"
IDENTITY = "run.json"
ENVIRONMENT = "environment.json"
METRICS = "metrics.jsonl"
EVAL = "eval.json"
EVAL_DIR = "eval"
CHECKPOINTS = "checkpoints"
BEST_DIR = "best"
BEST_FILE = "best.json"
LOCK = ".lock"
# Fields that may change when a run resumes: they do not change the trajectory of the steps already run (how long
# it runs, where it lives, what is evaluated and kept, where metrics also go). Any other change is refused unless
# the user accepts it explicitly (accept_changes=true), and it is then recorded in run.json with its step.
RESUMABLE = ("resume", "accept_changes", "steps", "out_dir", "run_name", "save_every", "keep_checkpoints",
             "max_bad_steps", "eval_datasets", "eval_split", "eval_limit", "eval_seed", "eval_every", "eval_n",
             "eval_at_start", "keep_best", "report_to")
# The packages whose versions a run records (distribution names).
PACKAGES = ("sharpening", "torch", "transformers", "accelerate", "vllm", "math-verify", "numpy")

log = logging.getLogger(__name__)


class RunFolderError(ValueError):
    """The run folder cannot be used as asked (in use, another run's, a changed config): one line says why."""


class DiskFull(OSError):
    """A write ran out of space; the files written before it (the previous checkpoint) are intact."""

    def __str__(self):
        return self.strerror  # one line, without OSError's "[Errno 28]" prefix


# ---------------------------------------------------------------------------------------------------------
# Strict JSON
# ---------------------------------------------------------------------------------------------------------


def finite_or_null(value):
    """value with every non-finite float (NaN, +-inf) replaced by None, recursively: how runs write them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def dumps(value, **kwargs) -> str:
    """Strict JSON text: non-finite floats become null (never a bare NaN)."""
    return json.dumps(finite_or_null(value), allow_nan=False, **kwargs)


def loads(text: str, where: str = "JSON"):
    """Parse strict JSON: a bare NaN / Infinity (not JSON) is a ValueError naming `where`."""
    def refuse(name):
        raise ValueError(f"{where}: bare {name} is not JSON (a non-finite value is written as null)")

    try:
        return json.loads(text, parse_constant=refuse)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: not valid JSON ({err.msg}, column {err.colno})") from None


def read_json(path):
    """A strict JSON file (ValueError naming the file when it is not)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ValueError(f"{path}: cannot read ({err.strerror})") from None
    return loads(text, str(path))


def write_json(path, value) -> None:
    """Strict JSON, written atomically (a reader sees the old file or the new one)."""
    with disk_full_is_one_line(path):
        write_atomic(path, dumps(value, indent=1))


def read_jsonl(path, what: str = "row") -> list[dict]:
    """Every non-blank line of a JSONL file as a dict. A line that is not a strict JSON object is a ValueError
    naming path:line (`what` says what a line should be)."""
    path = Path(path)
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = loads(line, f"{path}:{line_no}")
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{line_no}: a {what} is a JSON object {{...}}, got {type(row).__name__}")
            rows.append(row)
    return rows


def read_metrics(path) -> list[dict]:
    """metrics.jsonl: one JSON object per line with an integer `step`; a bad line is a ValueError naming it."""
    rows = read_jsonl(path, "metrics line")
    for i, row in enumerate(rows, 1):
        if not isinstance(row.get("step"), int) or isinstance(row.get("step"), bool):
            raise ValueError(f"{path}: metrics line {i} has no integer `step`")
    return rows


def is_finite_row(row: dict) -> bool:
    """False when a metrics line holds a non-finite value (written as null) in any number-valued key."""
    return all(v is not None and (not isinstance(v, float) or math.isfinite(v)) for v in row.values())


def is_disk_full(err: BaseException) -> bool:
    """Whether an error, or one it was raised from, is a full disk or quota: an OSError with ENOSPC / EDQUOT, or
    a library's own error that carries the OS message (safetensors' Rust writer: "... (os error 28)")."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(err)
        if "No space left on device" in text or "Disk quota exceeded" in text or "os error 28" in text:
            return True
        err = err.__cause__ or err.__context__
    return False


@contextlib.contextmanager
def disk_full_is_one_line(path):
    """Turn a full disk while writing `path` into DiskFull, one line that says so."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as err:  # noqa: BLE001  (only a full disk is translated; anything else goes on as it was)
        if is_disk_full(err):
            raise DiskFull(errno.ENOSPC, f"no space left on the device while writing {path}") from None
        raise


# ---------------------------------------------------------------------------------------------------------
# The folder
# ---------------------------------------------------------------------------------------------------------


def check_writable(folder) -> None:
    """A folder this process can write files into (created if missing); ValueError in one line when not."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"{str(folder)!r} cannot be written: {err.strerror or err}") from None


def check_run_name(name: str) -> None:
    """run_name is one path component: no separator, not '.' or '..', not empty, not hidden."""
    if (not isinstance(name, str) or not name or name in (".", "..") or name.startswith(".")
            or "/" in name or os.sep in name or (os.altsep and os.altsep in name) or "\0" in name):
        raise ValueError(f"run_name={name!r} must be a single folder name (no '/', not '.', '..' or hidden)")


class RunFolder:
    """Paths of one run folder and every read and write of its files. `log` is the one writer of metrics."""

    def __init__(self, path, sinks=()):
        self.path = Path(path)
        self.sinks = list(sinks)
        self._lock_file = None
        self._started = False  # whether this object wrote a fresh run's config (undo_start may remove it)

    # -- paths ------------------------------------------------------------------------------------------
    config_path = property(lambda self: self.path / CONFIG)
    identity_path = property(lambda self: self.path / IDENTITY)
    environment_path = property(lambda self: self.path / ENVIRONMENT)
    metrics_path = property(lambda self: self.path / METRICS)
    eval_path = property(lambda self: self.path / EVAL)
    checkpoints = property(lambda self: self.path / CHECKPOINTS)
    best_dir = property(lambda self: self.path / CHECKPOINTS / BEST_DIR)
    lock_path = property(lambda self: self.path / LOCK)

    def eval_step_path(self, step: int) -> Path:
        return self.path / EVAL_DIR / f"step_{step:06d}.json"

    def parts_of_a_run(self) -> list[str]:
        """The files and folders here that belong to a run (config, identity, metrics, evaluations, checkpoints):
        a folder holding any of them is never taken for a fresh one."""
        names = [CONFIG, IDENTITY, METRICS, EVAL, EVAL_DIR, CHECKPOINTS]
        return [n for n in names if (self.path / n).exists() and not _empty_dir(self.path / n)]

    # -- the lock ---------------------------------------------------------------------------------------
    def lock(self) -> None:
        """Take the folder for this process (flock on .lock, held until `unlock` or the process ends, so a killed
        holder's lock is released by the kernel and taken over here). Another live holder: RunFolderError naming
        its pid, host and start. Creating the folder and the lock file also proves the output path writable."""
        import fcntl

        if self._lock_file is not None:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            f = open(self.lock_path, "a+")
        except OSError as err:
            raise RunFolderError(f"cannot write the run folder {str(self.path)!r}: {err.strerror}") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = _parse_holder(f.read())
            f.close()
            raise RunFolderError(f"run folder {str(self.path)!r} is in use by pid {holder.get('pid', '?')} on "
                                 f"{holder.get('host', '?')} since {holder.get('started', '?')}: one process writes "
                                 "a run; wait for it, or choose another run_name") from None
        f.seek(0)
        previous = _parse_holder(f.read())
        if previous:  # the lock was free: its last holder ended (or was killed) without releasing it
            log.info("run folder %s: took over the lock of pid %s on %s (started %s), which no longer holds it",
                     self.path, previous.get("pid"), previous.get("host"), previous.get("started"))
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": _now()}))
        f.flush()
        self._lock_file = f

    def unlock(self) -> None:
        """Release the lock (the file stays: removing it would let two processes lock two different files)."""
        if self._lock_file is not None:
            import fcntl

            self._lock_file.seek(0)
            self._lock_file.truncate()
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []
        self.unlock()

    # -- config and identity ----------------------------------------------------------------------------
    def read_config(self) -> dict:
        values = yaml.safe_load(self.config_path.read_text())
        if not isinstance(values, dict):
            raise ValueError(f"{self.config_path}: not a mapping of config keys")
        return values

    def save_config(self, config: dict) -> None:
        with disk_full_is_one_line(self.config_path):
            write_atomic(self.config_path, yaml.safe_dump(config, sort_keys=False))

    def read_identity(self) -> dict | None:
        return read_json(self.identity_path) if self.identity_path.exists() else None

    def start(self, config: dict, environment: dict) -> None:
        """A fresh run: record the config it starts with, the code version and the environment."""
        config = recordable(config)
        self._started = True
        self.save_config(config)
        write_json(self.environment_path, environment)
        write_json(self.identity_path, {"started": _now(), "code": code_version(), "config": config, "changes": []})

    def undo_start(self) -> None:
        """Remove what `start` wrote, if this process started the run and nothing was trained (no metrics, no
        checkpoint): a start that failed (a bad model name, a prompt too long) must not block the next one."""
        if self._started and not (set(self.parts_of_a_run()) - {CONFIG, IDENTITY}):
            for path in (self.config_path, self.identity_path, self.environment_path):
                path.unlink(missing_ok=True)
        self._started = False

    def resume(self, config: dict, environment: dict, step: int, accept_changes: bool = False) -> list[str]:
        """A resumed run: compare `config` with the one the run uses (config.yaml). Fields outside RESUMABLE that
        differ are refused in one line unless accept_changes; every change is recorded in run.json with `step`,
        the first step it applies to. An environment that differs from the recorded one is warned about in one
        line and recorded too. Returns the names of the changed fields."""
        if not self.config_path.exists():
            if self.parts_of_a_run():
                raise RunFolderError(f"{self.path} holds {', '.join(self.parts_of_a_run())} but no {CONFIG}: it "
                                     "cannot be told which run they belong to; choose another run_name")
            self.start(config, environment)  # resume of a run that never started: a fresh start
            return []
        before, config = self.read_config(), recordable(config)
        changed = {k: (before.get(k), config.get(k)) for k in sorted(set(before) | set(config))
                   if before.get(k) != config.get(k) and k in config}
        refused = {k: v for k, v in changed.items() if k not in RESUMABLE}
        if refused and not accept_changes:
            what = "; ".join(f"{k}: {was!r} -> {now!r}" for k, (was, now) in refused.items())
            raise RunFolderError(f"--resume with a changed config ({what}); only {', '.join(RESUMABLE[2:])} may "
                                 "change on resume: restore the values, choose another run_name, or pass "
                                 "--accept-changes to record the change from this step on")
        identity = self.read_identity() or {"started": None, "code": None, "config": before, "changes": []}
        record = {"step": step, "at": _now(), "code": code_version()}
        if changed:
            record["config"] = {k: {"was": was, "now": now} for k, (was, now) in changed.items()}
            if refused:
                record["accepted"] = sorted(refused)
        env_diff = environment_changes(self.read_environment(), environment)
        if env_diff:
            log.warning("run folder %s: the environment changed since the run started (%s); the steps from %d on "
                        "may not match an uninterrupted run bit for bit", self.path, describe_changes(env_diff), step)
            record["environment"] = {k: {"was": was, "now": now} for k, (was, now) in env_diff.items()}
        if changed or env_diff:
            identity["changes"].append(record)
            write_json(self.identity_path, identity)
        self.save_config(config)
        return sorted(changed)

    def read_environment(self) -> dict | None:
        return read_json(self.environment_path) if self.environment_path.exists() else None

    # -- metrics ----------------------------------------------------------------------------------------
    def log(self, step: int, metrics: dict) -> dict:
        """Append one metrics line {"step": step, **metrics} (strict JSON, non-finite as null) and hand it to every
        sink; returns the line as written."""
        row = finite_or_null({"step": step, **{k: v for k, v in metrics.items() if k != "step"}})
        with disk_full_is_one_line(self.metrics_path), open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, allow_nan=False) + "\n")
            f.flush()
        for sink in self.sinks:
            sink.log(step, row)
        return row

    def metrics(self) -> list[dict]:
        return read_metrics(self.metrics_path) if self.metrics_path.exists() else []

    def truncate_metrics(self, step: int) -> int:
        from sharpening.llm.checkpoint import truncate_metrics

        return truncate_metrics(self.metrics_path, step)

    # -- evaluations ------------------------------------------------------------------------------------
    def write_eval(self, result: dict, step: int, final: bool = False) -> None:
        """eval/step_<N>.json, and eval.json too for the final evaluation."""
        write_json(self.eval_step_path(step), result)
        if final:
            write_json(self.eval_path, result)

    def read_eval(self) -> dict | None:
        return read_json(self.eval_path) if self.eval_path.exists() else None

    # -- the best checkpoint ----------------------------------------------------------------------------
    def read_best(self) -> dict | None:
        """The step and score of the weights in checkpoints/best, or None (no best kept yet)."""
        path = self.best_dir / BEST_FILE
        return read_json(path) if path.is_file() else None


def recordable(config: dict) -> dict:
    """The config as a run folder keeps it: resume and accept_changes are how one invocation starts, not part of
    the run (config.yaml stays a config that starts this run afresh, and never accepts changes by itself)."""
    return {**config, "resume": False, "accept_changes": False} if "resume" in config else dict(config)


def _empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _parse_holder(text: str) -> dict:
    try:
        holder = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------------------
# Code version and environment
# ---------------------------------------------------------------------------------------------------------


def code_version() -> dict:
    """The package version and, in a git checkout, its commit and whether the code (sharpening/, pyproject.toml)
    differs from it."""
    import sharpening

    root = Path(sharpening.__file__).resolve().parent.parent
    out = {"version": _version("sharpening"), "commit": None, "dirty": None}
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=20)
        if commit.returncode == 0:
            status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "sharpening",
                                     "pyproject.toml"], capture_output=True, text=True, timeout=20)
            out.update(commit=commit.stdout.strip(), dirty=bool(status.stdout.strip()))
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment(device: str = "cpu", dtype: str = "float32", engine: str = "hf") -> dict:
    """What a trajectory depends on besides its config: versions, threads, device and dtype, the CPU or GPU."""
    import torch

    env = {"code": code_version(), "python": platform.python_version(),
           "packages": {p: _version(p) for p in PACKAGES if p != "vllm" or engine == "vllm"},
           "torch_threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "device": str(device), "dtype": dtype,
           "cpu": cpu_info()}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = {"name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
                      "cuda": torch.version.cuda, "driver": _gpu_driver()}
    return env


def cpu_info() -> dict:
    """The CPU model and its feature flags (the kernels torch picks depend on them), from /proc/cpuinfo."""
    info = {"model": platform.processor() or platform.machine(), "flags": None, "cores": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and info["flags"] is None:
                info["model"] = value.strip()
            elif key.strip() in ("flags", "Features"):
                info["flags"] = " ".join(sorted(value.split()))
                break
    except OSError:
        pass
    return info


def _gpu_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def environment_changes(before: dict | None, now: dict) -> dict:
    """{key: (before, now)} of the environment entries that differ (flattened: packages.torch, cpu.model, ...)."""
    if before is None:
        return {}
    a, b = _flatten(before), _flatten(now)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def describe_changes(diff: dict) -> str:
    """One line: `torch_threads 1 -> 2, packages.torch 2.13.0 -> 2.14.0` (long values shortened)."""
    def short(v):
        text = str(v)
        return text if len(text) <= 40 else text[:37] + "..."

    return ", ".join(f"{k} {short(was)} -> {short(now)}" for k, (was, now) in diff.items())


# ---------------------------------------------------------------------------------------------------------
# Interrupts
# ---------------------------------------------------------------------------------------------------------


class Interrupted(Exception):
    """The run stopped on SIGINT/SIGTERM after saving its work; the message says how to resume."""


class StopRequests:
    """While active (a context manager, main thread only): the first SIGINT or SIGTERM sets `requested` (the step,
    save or evaluation under way finishes, then the trainer saves and stops); a second one raises
    KeyboardInterrupt at once (the work under way is abandoned: the checkpoint on disk is the previous one)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested: str | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}")
        self.requested = signal.Signals(signum).name

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        return False


# ---------------------------------------------------------------------------------------------------------
# Metrics sinks (report_to)
# ---------------------------------------------------------------------------------------------------------

SINKS = ("tensorboard", "trackio", "wandb")


class TensorBoardSink:
    """Scalars to run_dir/tensorboard (torch's SummaryWriter; needs the `tensorboard` package)."""

    def __init__(self, run: RunFolder, name: str, config: dict):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError("report_to: tensorboard needs `pip install sharpening[tensorboard]`") from None
        self.writer = SummaryWriter(log_dir=str(run.path / "tensorboard"))

    def log(self, step: int, row: dict) -> None:
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """Weights & Biases: online or offline as WANDB_MODE says, files under run_dir/wandb, resumed by a run id kept
    in run_dir/wandb_id (a resumed run continues the same W&B run)."""

    def __init__(self, run: RunFolder, name: str, config: dict):
        try:
            import wandb
        except ImportError:
            raise ValueError("report_to: wandb needs `pip install sharpening[wandb]`") from None
        id_file = run.path / "wandb_id"
        run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(6)
        write_atomic(id_file, run_id)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "sharpening"), name=name, id=run_id,
                              resume="allow", dir=str(run.path), config=config)

    def log(self, step: int, row: dict) -> None:
        self.run.log({k: v for k, v in row.items() if k != "step"}, step=step)

    def close(self) -> None:
        self.run.finish()


class TrackioSink:
    """trackio (local by default: its database under TRACKIO_DIR or ~/.cache/huggingface/trackio)."""

    def __init__(self, run: RunFolder, name: str, config: dict):
        try:
            import trackio
        except ImportError:
            raise ValueError("report_to: trackio needs `pip install sharpening[trackio]`") from None
        self.trackio = trackio
        self.run = trackio.init(project=os.environ.get("TRACKIO_PROJECT", "sharpening"), name=name, config=config,
                                resume="allow", auto_log_cpu=False, auto_log_gpu=False)  # the run's metrics only

    def log(self, step: int, row: dict) -> None:
        self.trackio.log({k: v for k, v in row.items() if k != "step"}, step=step)

    def close(self) -> None:
        self.trackio.finish()


SINK_CLASSES = {"tensorboard": TensorBoardSink, "trackio": TrackioSink, "wandb": WandbSink}


def open_sinks(run: RunFolder, report_to, name: str, config: dict) -> list:
    """The sinks named in report_to (JSONL is always written and is not one of them)."""
    return [SINK_CLASSES[kind](run, name, config) for kind in report_to]
