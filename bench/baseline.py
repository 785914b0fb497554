"""A module of this package as it was at a git commit, importable beside today's: the baseline of a side-by-side
benchmark (bench/eval_throughput.py, bench/power_sampling_speed.py) runs the old code in the same process.

    old = at_commit("sharpening/llm/rollout.py", "e84c7ed")   # a module object; old.HFEngine ...

The old file is executed as a fresh module; its imports of other `sharpening` modules resolve to today's (the
benchmarks load every module whose code they compare, so the old code paths are the old ones where it matters).
"""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "e84c7ed"  # main before issue #22's changes


def at_commit(path: str, commit: str = BASELINE, replace: dict | None = None) -> types.ModuleType:
    """The module in `path` at `commit`. replace: {old text: new text} applied to the source first (to point
    the old module at another old module)."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:{path}"], capture_output=True, text=True,
                            check=True).stdout
    for old, new in (replace or {}).items():
        if old not in source:
            raise ValueError(f"{old!r} is not in {path} at {commit}")
        source = source.replace(old, new)
    name = f"baseline_{commit}_" + path.replace("/", "_").removesuffix(".py")
    module = types.ModuleType(name)
    module.__file__ = f"{commit}:{path}"
    sys.modules[name] = module  # dataclasses look their module up by name
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module
