"""A wall-clock limit on a piece of work, the same in the main thread, in other threads and in pool workers.

    call_with_timeout(module, function, args, timeout, default) -> module.function(*args), or default if it
    raised or ran longer than `timeout` seconds

- In a main thread (a script, the trainer, each worker of a multiprocessing pool): a SIGALRM interval timer
  raises Timeout inside the work. The caller's own SIGALRM handler and timer (e.g. pytest-timeout's) are
  restored afterwards, with the time spent taken off the timer.
- In any other thread, signals cannot be delivered there, so the whole call runs in a persistent helper
  process (`python -c ...`, which daemonic pool workers may start too) under that process's own alarm. If the
  helper does not answer within timeout + MARGIN_S (work stuck inside one C call), it is killed and a new
  one is started at once for the next call.

An alarm interrupts Python code between two bytecodes, and C code only where it checks for signals (big
integer powers and regular expressions do; `sum(range(10**13))` does not). So in a main thread the work must
keep its C calls short (the grader caps digits and exponents before any arithmetic, numbers.py); the helper
process is killed from outside and needs no such care.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

PACKAGE_ROOT = str(Path(__file__).resolve().parents[3])  # the folder holding `sharpening`, for the helper


class Timeout(BaseException):  # not an Exception: sympy and math-verify catch and swallow those
    pass


def call_with_timeout(module: str, function: str, args: list, timeout: float, default):
    """module.function(*args) (args JSON-serializable), or default if it raised or ran over `timeout` seconds."""
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        return with_alarm(getattr(importlib.import_module(module), function), args, timeout, default)
    return _HELPER.call(module, function, args, timeout, default)


def with_alarm(fn, args, timeout: float, default):
    """fn(*args) under a SIGALRM interval timer; only for the main thread."""

    def on_alarm(signum, frame):
        raise Timeout

    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    # fires again every 0.1 s until cancelled, in case some library code swallows the first Timeout
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, timeout, 0.1)
    t0 = time.monotonic()
    try:
        return fn(*args)
    except (Exception, Timeout):
        return default
    finally:
        while True:  # a late alarm may interrupt the clean-up itself: repeat it until it is done
            try:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, old_handler)
                break
            except Timeout:
                continue
        if old_delay > 0:  # the caller's timer keeps running: re-arm what is left of it
            signal.setitimer(signal.ITIMER_REAL, max(old_delay - (time.monotonic() - t0), 1e-3), old_interval)


class _Helper:
    """The persistent helper process for threads other than the main one: one JSON request per line in, one
    JSON result per line out, one request at a time (a lock)."""

    STARTUP_S = 60.0  # importing sympy and math-verify on a busy machine (~1.5 s when idle): the first call waits
    MARGIN_S = 0.5  # the helper times itself out first; it is killed only if that fails

    def __init__(self):
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.ready = False

    def call(self, module: str, function: str, args: list, timeout: float, default):
        with self.lock:
            try:
                if self.proc is None or self.proc.poll() is not None:
                    self._start()
                if not self.ready:
                    self.ready = self._read_line(self.STARTUP_S) == "ready"
                    if not self.ready:
                        raise Timeout
                self.proc.stdin.write(json.dumps([module, function, args, timeout]) + "\n")
                self.proc.stdin.flush()
                answer = json.loads(self._read_line(timeout + self.MARGIN_S))
                return default if answer is None else answer[0]
            except (Timeout, OSError, ValueError):
                self._restart()
                return default

    def _start(self):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [PACKAGE_ROOT, os.environ.get("PYTHONPATH")])))
        code = "from sharpening.llm.grading.guard import serve; serve()"
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, bufsize=1, env=env)
        self.ready = False

    def _read_line(self, timeout: float) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise Timeout
        return self.proc.stdout.readline().strip()

    def _restart(self):
        """Kill the helper and start its successor now, so that it has imported everything by the next call."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        try:
            self._start()
        except OSError:  # no process to spare now: the next call tries again
            self.proc = None


_HELPER = _Helper()


def serve():
    """The helper's loop. Imports the grader (and math-verify) before saying ready, so that a timeout measures
    the work only."""
    from sharpening.llm.grading.paper import warm_up_paper

    warm_up_paper()  # the strict grader's warm-up and the paper grader's
    print("ready", flush=True)
    for line in sys.stdin:
        module, function, args, timeout = json.loads(line)
        fn = getattr(importlib.import_module(module), function)
        missing = object()
        result = with_alarm(fn, args, timeout, missing)
        print(json.dumps(None if result is missing else [result]), flush=True)
