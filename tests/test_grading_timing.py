"""Hang-freedom: every adversarial answer is graded within LIMIT_S in the main thread (where the trainer grades:
grade_batch with workers=1), in a worker thread, and in a spawned process pool of 2 (grade_batch(workers=2);
the machine has 2 cores); and the guard itself stops work that overruns, in each of those places.

The guard fires at TIMEOUT_S = 1.5 s of wall-clock time; LIMIT_S = 2 s leaves 0.5 s for a busy machine. Most
adversarial answers never reach the guard: digits, exponents and nesting are capped before any arithmetic.
"""

import multiprocessing
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest

from sharpening.llm.grading import TIMEOUT_S, grade, grade_batch
from sharpening.llm.grading.guard import call_with_timeout
from test_grading_hacks import ALL  # issue #12's lists and the reward-hacking set

LIMIT_S = 2.0
RESTART_LIMIT_S = 10.0  # a fresh helper process importing the grader, on a loaded machine
ADVERSARIAL = [(response, gold, verdict) for cases in ALL.values() for response, gold, verdict, _ in cases]


def warm_up() -> None:
    assert grade("\\boxed{\\frac12}", "0.5") == 1.0


def timed_grade(response: str, gold: str) -> tuple[float, float]:
    t0 = time.monotonic()
    r = grade(response, gold)
    return r, time.monotonic() - t0


def test_the_guard_is_tighter_than_the_limit():
    assert TIMEOUT_S + 0.5 <= LIMIT_S


def test_adversarial_answers_in_the_main_thread():
    grade("\\boxed{1}", "1")  # math-verify imported (once per process, ~1 s) before the clock starts
    for response, gold, verdict in ADVERSARIAL:
        r, seconds = timed_grade(response, gold)
        assert (r, seconds < LIMIT_S) == (verdict, True), (response[:40], seconds)


@pytest.mark.slow
def test_adversarial_answers_in_a_thread():
    with ThreadPoolExecutor(1) as threads:
        assert threads.submit(grade, "\\boxed{\\frac12}", "0.5").result() == 1.0  # starts the helper process
        for response, gold, verdict in ADVERSARIAL:
            r, seconds = threads.submit(timed_grade, response, gold).result()
            assert (r, seconds < LIMIT_S) == (verdict, True), (response[:40], seconds)


@pytest.mark.slow
def test_adversarial_answers_in_a_process_pool():
    # each worker grades once as it starts (the initializer), so no timed call pays for math-verify's import,
    # whichever worker it lands on
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"), initializer=warm_up) as pool:
        for response, gold, verdict in ADVERSARIAL:
            r, seconds = pool.submit(timed_grade, response, gold).result()
            assert (r, seconds < LIMIT_S) == (verdict, True), (response[:40], seconds)
    responses, golds, verdicts = zip(*ADVERSARIAL)
    assert grade_batch(list(responses), list(golds), workers=2) == list(verdicts)


# --- the guard itself: work that would run for 30 s is stopped ---------------------------------------------

def test_guard_stops_slow_work_in_the_main_thread():
    t0 = time.monotonic()
    assert call_with_timeout("time", "sleep", [30], 0.5, "stopped") == "stopped"
    assert time.monotonic() - t0 < 1.5


@pytest.mark.slow
def test_guard_stops_slow_work_in_a_thread_and_kills_a_stuck_helper():
    results = {}

    def work():
        t0 = time.monotonic()
        results["warm"] = call_with_timeout("math", "sqrt", [16.0], 0.5, "stopped")  # starts the helper
        t1 = time.monotonic()
        results["python"] = call_with_timeout("time", "sleep", [30], 0.5, "stopped")  # the helper's own alarm
        t2 = time.monotonic()
        # one C call that checks no signal (sum over a range, ~hours): the helper is killed, a new one started
        results["c"] = call_with_timeout("builtins", "eval", ["sum(range(10**13))"], 0.5, "stopped")
        t3 = time.monotonic()
        results["after"] = call_with_timeout("math", "sqrt", [16.0], 0.5, "stopped")  # the new helper works
        t4 = time.monotonic()
        results["seconds"] = (t1 - t0, t2 - t1, t3 - t2, t4 - t3)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(120)
    assert not thread.is_alive()
    assert (results["warm"], results["python"], results["c"], results["after"]) == (4.0, "stopped", "stopped", 4.0)
    assert results["seconds"][1] < 1.5 and results["seconds"][2] < 1.5, results["seconds"]
    # the call after a kill waits for the successor to import sympy and math-verify (its start was measured at
    # 1.1 s on the shared 2 cores): bounded by that start, not by the helper's 60 s start-up allowance
    assert results["seconds"][3] < RESTART_LIMIT_S, results["seconds"]


@pytest.mark.slow
def test_guard_stops_slow_work_in_a_pool_worker():
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(time.sleep, 0).result()  # the worker started
        t0 = time.monotonic()
        assert pool.submit(call_with_timeout, "time", "sleep", [30], 0.5, "stopped").result() == "stopped"
        assert time.monotonic() - t0 < 1.5
