"""The run folder (sharpening/llm/runs.py) without a model: strict JSON, the lock, a run's identity, the values
that cannot train, and the readers of figures that never die on one bad run. The faults on real SmolLM2 runs are
in test_run_folder_faults.py."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml

from sharpening.llm import runs
from sharpening.llm.config import load_config


# -- strict JSON -------------------------------------------------------------------------------------------


def test_non_finite_values_are_written_as_null_and_the_text_is_strict_json():
    text = runs.dumps({"a": float("nan"), "b": [float("inf"), -float("inf"), 1.5], "c": {"d": float("nan")}})
    assert text == '{"a": null, "b": [null, null, 1.5], "c": {"d": null}}'
    json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}"))  # what a strict reader accepts


def test_a_bare_nan_in_a_file_is_refused_naming_the_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": NaN}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: bare NaN is not JSON"):
        runs.read_metrics(path)
    (tmp_path / "eval.json").write_text('{"x": Infinity}')
    with pytest.raises(ValueError, match=r"eval.json: bare Infinity"):
        runs.read_json(tmp_path / "eval.json")


def test_the_metrics_reader_wants_objects_with_an_integer_step(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"m.jsonl:2: a metrics line is a JSON object"):
        runs.read_metrics(path)
    path.write_text('{"step": 1}\n{"step": "2"}\n')
    with pytest.raises(ValueError, match="metrics line 2 has no integer `step`"):
        runs.read_metrics(path)


def test_log_appends_strict_lines(tmp_path):
    run = runs.RunFolder(tmp_path / "r")
    run.path.mkdir()
    run.log(1, {"loss": float("nan"), "grad_norm": 2.0})
    run.log(2, {"loss": 0.25, "grad_norm": float("inf")})
    assert (run.path / "metrics.jsonl").read_text() == ('{"step": 1, "loss": null, "grad_norm": 2.0}\n'
                                                       '{"step": 2, "loss": 0.25, "grad_norm": null}\n')
    assert [runs.is_finite_row(r) for r in run.metrics()] == [False, False]


# -- data files --------------------------------------------------------------------------------------------


def test_empty_data_files_and_rows_that_are_not_objects_are_refused(tmp_path):
    from sharpening.llm.data import load_problems

    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match="holds no problems"):
        load_problems(str(tmp_path / "empty.jsonl"))
    (tmp_path / "list.jsonl").write_text('{"problem": "1+1", "answer": "2"}\n["1+1", "2"]\n')
    with pytest.raises(ValueError, match=r"list.jsonl:2: a problem is a JSON object"):
        load_problems(str(tmp_path / "list.jsonl"))
    (tmp_path / "str.jsonl").write_text('"What is 1+1?"\n')
    with pytest.raises(ValueError, match=r"str.jsonl:1: a problem is a JSON object"):
        load_problems(str(tmp_path / "str.jsonl"))


# -- values that cannot train ------------------------------------------------------------------------------


@pytest.mark.parametrize("override, message", [
    ("max_grad_norm=0", "max_grad_norm=0.0 must be > 0"),
    ("max_grad_norm=-1", "max_grad_norm=-1.0 must be > 0"),
    ("seed=-1", r"seed=-1 must be an integer in \[0, 2\*\*32\)"),
    (f"seed={2**32}", r"seed=4294967296 must be an integer"),
    ("eval_seed=-5", r"eval_seed=-5 must be an integer"),
    ("run_name=..", "run_name='..' must be a single folder name"),
    ("run_name=.", "run_name='.' must be a single folder name"),
    ("run_name=a/b", "run_name='a/b' must be a single folder name"),
    ("run_name=.hidden", "run_name='.hidden' must be a single folder name"),
    ("report_to=[tensorbord]", r"report_to=\['tensorbord'\]: \['tensorbord'\] not among"),
])
def test_values_that_cannot_train_are_refused_in_one_line(override, message):
    with pytest.raises(ValueError, match=message) as err:
        load_config(None, [override])
    assert "\n" not in str(err.value)


# -- the lock ----------------------------------------------------------------------------------------------

HOLD = """
import sys, time
from sharpening.llm.runs import RunFolder
run = RunFolder(sys.argv[1])
run.lock()  # held while `run` lives
print("locked", flush=True)
time.sleep(120)
"""


def hold_lock(folder):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    proc = hold_lock(tmp_path / "r")
    try:
        with pytest.raises(runs.RunFolderError) as err:
            runs.RunFolder(tmp_path / "r").lock()
        msg = str(err.value)
        assert f"in use by pid {proc.pid} on {socket.gethostname()} since 20" in msg and "\n" not in msg
    finally:
        proc.kill()
        proc.wait()


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path, caplog):
    proc = hold_lock(tmp_path / "r")
    os.kill(proc.pid, signal.SIGKILL)  # no clean-up: the lock file still names it
    proc.wait()
    assert json.loads((tmp_path / "r" / ".lock").read_text())["pid"] == proc.pid
    run = runs.RunFolder(tmp_path / "r")
    with caplog.at_level("INFO"):
        run.lock()
    assert json.loads((tmp_path / "r" / ".lock").read_text())["pid"] == os.getpid()
    assert f"took over the lock of pid {proc.pid}" in caplog.text
    with pytest.raises(runs.RunFolderError, match=f"in use by pid {os.getpid()}"):
        runs.RunFolder(tmp_path / "r").lock()  # another open of the file, in this process too: refused
    run.unlock()
    runs.RunFolder(tmp_path / "r").lock()  # released: free again


def test_an_unwritable_output_folder_is_refused_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(runs.RunFolderError, match="cannot write the run folder"):
        runs.RunFolder(blocker / "r").lock()
    with pytest.raises(ValueError, match="cannot be written"):
        runs.check_writable(blocker / "out")


def test_llm_eval_refuses_an_unwritable_out_before_loading_the_model(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    t = time.time()
    res = subprocess.run([sys.executable, "-m", "sharpening.cli", "llm", "eval", "--model", "smollm2", "--datasets",
                          "synthetic:add", "--limit", "1", "--n", "1", "--out", str(blocker / "out")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [f"sharpening llm eval: --out {str(blocker / 'out')!r} cannot be "
                                               "written: Not a directory"]
    print(f"refused after {time.time() - t:.1f} s")


# -- a run's identity --------------------------------------------------------------------------------------

ENV = {"torch_threads": 1, "interop_threads": 1, "packages": {"torch": "2.13.0"}}


def started(tmp_path):
    run = runs.RunFolder(tmp_path / "r")
    run.path.mkdir()
    cfg = load_config(None, ["steps=3", "lr=1e-5"]).to_dict()
    run.start(cfg, ENV)
    return run, cfg


def test_resume_refuses_a_changed_config_naming_the_fields(tmp_path):
    run, cfg = started(tmp_path)
    changed = load_config(None, ["steps=3", "lr=2e-5", "regime=sharpening", "resume=true"]).to_dict()
    with pytest.raises(runs.RunFolderError) as err:
        run.resume(changed, ENV, step=2)
    msg = str(err.value)
    assert "lr: 1e-05 -> 2e-05" in msg and "regime: {'mode': 'optimization'" in msg and "\n" not in msg
    assert "steps" in msg and "--accept-changes" in msg
    assert yaml.safe_load(run.config_path.read_text())["lr"] == 1e-5  # untouched


def test_resume_accepts_the_resumable_fields_and_records_every_change_with_its_step(tmp_path):
    run, cfg = started(tmp_path)
    longer = load_config(None, ["steps=5", "lr=1e-5", "eval_n=8", "resume=true"]).to_dict()
    assert run.resume(longer, ENV, step=4) == ["eval_n", "steps"]
    changes = run.read_identity()["changes"]
    assert [(c["step"], c["config"]) for c in changes] == [
        (4, {"eval_n": {"was": 4, "now": 8}, "steps": {"was": 3, "now": 5}})]
    assert yaml.safe_load(run.config_path.read_text())["steps"] == 5
    assert yaml.safe_load(run.config_path.read_text())["resume"] is False  # config.yaml starts the run afresh
    assert run.read_identity()["config"]["steps"] == 3  # the config it started with stays


def test_an_accepted_change_is_recorded_with_its_step(tmp_path):
    run, cfg = started(tmp_path)
    changed = load_config(None, ["steps=3", "lr=2e-5", "resume=true", "accept_changes=true"]).to_dict()
    run.resume(changed, ENV, step=2, accept_changes=True)
    (change,) = run.read_identity()["changes"]
    assert change["step"] == 2 and change["accepted"] == ["lr"] and change["config"]["lr"] == {"was": 1e-5,
                                                                                               "now": 2e-5}
    assert yaml.safe_load(run.config_path.read_text())["accept_changes"] is False  # never sticks


def test_resume_warns_in_one_line_when_the_environment_changed(tmp_path, caplog):
    run, cfg = started(tmp_path)
    other = {**ENV, "torch_threads": 2}
    with caplog.at_level("WARNING"):
        run.resume({**cfg, "resume": True}, other, step=2)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "environment changed since the run started (torch_threads 1 -> 2)" in warning and "\n" not in warning
    assert run.read_identity()["changes"][0]["environment"] == {"torch_threads": {"was": 1, "now": 2}}


def test_a_folder_holding_any_part_of_a_run_is_not_fresh(tmp_path):
    run = runs.RunFolder(tmp_path / "r")
    (run.checkpoints / "step_000001").mkdir(parents=True)
    assert run.parts_of_a_run() == ["checkpoints"]
    with pytest.raises(runs.RunFolderError, match="holds checkpoints but no config.yaml"):
        run.resume(load_config(None, ["resume=true"]).to_dict(), ENV, step=2)
    empty = runs.RunFolder(tmp_path / "e")
    (empty.checkpoints).mkdir(parents=True)
    (empty.path / ".lock").write_text("")
    assert empty.parts_of_a_run() == []  # an empty checkpoints folder and a lock are no run


def test_the_environment_records_versions_threads_and_the_cpu():
    import torch

    env = runs.environment("cpu", "float32")
    assert env["torch_threads"] == torch.get_num_threads() and env["packages"]["torch"] == torch.__version__
    assert env["packages"]["transformers"] and env["packages"]["math-verify"] and env["python"]
    assert env["cpu"]["model"] and env["cpu"]["flags"] and env["dtype"] == "float32" and env["device"] == "cpu"
    assert set(env["code"]) == {"version", "commit", "dirty"}


# -- figures read what they can and say what they skip -----------------------------------------------------


def write_run(folder, steps, rows, eval_pass=None):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"run_name": folder.name, "model": "smollm2", "steps": steps,
                                                        "regime": "task_reward", "seed": 1, "lr": 1e-5}))
    (folder / "metrics.jsonl").write_text("".join(runs.dumps({"step": i + 1, "entropy": 1.0, "reward/task": 0.3,
                                                              "reward/shaped_mean": 0.3, "reward/shaped_std": 1.0,
                                                              "skipped": 0, "length/mean": 5.0, **r}) + "\n"
                                                  for i, r in enumerate(rows)))


def test_figures_flag_non_finite_runs_skip_unfinished_and_damaged_ones(tmp_path, capsys):
    from sharpening.figures.llm_runs import load_results, stability

    write_run(tmp_path / "good", 3, [{}, {}, {}])
    write_run(tmp_path / "nan", 3, [{}, {"reward/shaped_mean": float("nan")}, {}])  # written as null
    write_run(tmp_path / "short", 3, [{}, {}])
    write_run(tmp_path / "bad", 2, [{}, {}])
    with open(tmp_path / "bad" / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": NaN}\n')
    results = load_results(tmp_path)
    assert sorted(r.name for r in results.runs) == ["good", "nan"]
    labels = {r.name: stability(r) for r in results.runs}
    assert labels == {"good": "stable", "nan": "diverged"}
    notes = capsys.readouterr().err.strip().splitlines()
    assert len(notes) == 2
    assert notes[0].startswith(f"note: skipped {tmp_path / 'bad'}: ") and "bare NaN" in notes[0]
    assert notes[1] == f"note: skipped {tmp_path / 'short'}: unfinished run (metrics up to step 2 of 3)"


def test_a_full_disk_is_one_line_whoever_raised_it(tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): {res.stderr.strip()[:120]}")
    try:
        run = runs.RunFolder(mount / "r")
        run.path.mkdir()
        run.log(1, {"loss": 1.0})
        with pytest.raises(runs.DiskFull) as err:
            run.log(2, {"blob": "x" * 200_000})  # more than the 64 KiB the folder's disk has
        assert str(err.value) == f"no space left on the device while writing {run.metrics_path}"
        with pytest.raises(runs.DiskFull):
            runs.write_json(run.eval_path, {"blob": "x" * 200_000})
        assert not run.eval_path.exists() and not [p for p in run.path.iterdir() if p.name.startswith(".")]
    finally:
        subprocess.run(["umount", str(mount)], check=False)
    # a library's own error that carries the OS's words (safetensors' Rust writer) counts too
    assert runs.is_disk_full(RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                                          "message: \"No space left on device\" })"))
    assert not runs.is_disk_full(RuntimeError("something else"))
