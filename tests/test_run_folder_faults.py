"""Faults on real SmolLM2 run folders (issue 24): two writers, a changed config on resume, SIGINT during a step,
a save and the final evaluation (each resumed to the uninterrupted run's metrics, weights and evaluation bit for
bit), a full disk during a save, and contexts the model cannot hold. Tiny runs: 1 prompt x 2 samples x 8 tokens,
2 steps, one evaluation problem."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from test_llm_trainer import TINY, make_trainer

from sharpening.llm import runs
from sharpening.llm.checkpoint import verify_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.llm]

RUN = [*TINY, "steps=2", "lr=1e-4", "regime=sharpening", "eval_datasets=[synthetic:add]", "eval_limit=1",
       "eval_n=2", "eval_seed=7"]
UNTIMED = ("time/", "throughput/")


def untimed(rows):
    return [{k: v for k, v in row.items() if not k.startswith(UNTIMED)} for row in rows]


def weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.policy.state_dict().items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: its metrics lines, final weights and eval.json."""
    out = tmp_path_factory.mktemp("faults")
    tr = make_trainer(out, *RUN, "run_name=ref")
    tr.train()
    return out, runs.RunFolder(out / "ref").metrics(), weights(tr), runs.RunFolder(out / "ref").read_eval()


def assert_same_as_reference(reference, trainer, run_dir):
    _, lines, final, evaluation = reference
    run = runs.RunFolder(run_dir)
    assert [m["step"] for m in run.metrics()] == [1, 2]
    assert untimed(run.metrics()) == untimed(lines)
    now = weights(trainer)
    assert all(torch.equal(now[k], final[k]) for k in final)
    named = lambda e: {k: v for k, v in e.items() if k != "run"}  # noqa: E731  (the run's name differs)
    assert named(run.read_eval()) == named(evaluation)


def send(*signals):
    for sig in signals:
        os.kill(os.getpid(), sig)


def test_sigint_during_a_step_saves_it_and_the_resume_matches_the_uninterrupted_run(reference):
    out = reference[0]
    tr = make_trainer(out, *RUN, "run_name=step")
    generate = tr.engine.generate
    calls = []

    def generate_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            send(signal.SIGINT)  # arrives while step 1 is under way
        return generate(*args, **kwargs)

    tr.engine.generate = generate_then_interrupt
    with pytest.raises(runs.Interrupted) as err:
        tr.train()
    assert str(err.value).startswith("stopped by SIGINT after step 1 (checkpoint step_000001 saved); continue with: "
                                     f"sharpening llm train --config {out / 'step' / 'config.yaml'} --resume")
    assert (out / "step" / "checkpoints" / "step_000001").is_dir()  # save_every=0: saved for the interrupt
    assert runs.RunFolder(out / "step").metrics() == []  # its line waits for the resume
    resumed = make_trainer(out, *RUN, "run_name=step", "resume=true")
    assert resumed.step == 1
    resumed.train()
    assert_same_as_reference(reference, resumed, out / "step")


def test_two_sigints_during_a_save_abandon_it_and_keep_the_previous_state(reference):
    out = reference[0]
    tr = make_trainer(out, *RUN, "run_name=save", "save_every=1")
    save_pretrained = tr.policy.save_pretrained

    def save_then_interrupt(*args, **kwargs):
        save_pretrained(*args, **kwargs)  # the weights are written; the rest of the checkpoint is not
        send(signal.SIGINT, signal.SIGINT)

    tr.policy.save_pretrained = save_then_interrupt
    with pytest.raises(KeyboardInterrupt):
        tr.train()
    assert list((out / "save" / "checkpoints").iterdir()) == []  # no half checkpoint, no temp folder
    assert runs.RunFolder(out / "save").metrics() == []
    resumed = make_trainer(out, *RUN, "run_name=save", "save_every=1", "resume=true")
    assert resumed.step == 0
    resumed.train()
    assert_same_as_reference(reference, resumed, out / "save")


def test_sigints_during_the_final_evaluation_leave_a_final_checkpoint_and_the_resume_evaluates(reference):
    out = reference[0]
    tr = make_trainer(out, *RUN, "run_name=final")
    evaluate = tr.evaluate

    def interrupt_evaluation(step):
        send(signal.SIGINT, signal.SIGINT)  # the second one abandons the evaluation
        return evaluate(step)

    tr.evaluate = interrupt_evaluation
    with pytest.raises(KeyboardInterrupt):
        tr.train()
    assert (out / "final" / "checkpoints" / "step_000002").is_dir()  # saved before the final evaluation
    assert [m["step"] for m in runs.RunFolder(out / "final").metrics()] == [1]
    assert not (out / "final" / "eval.json").exists()
    resumed = make_trainer(out, *RUN, "run_name=final", "resume=true")
    assert resumed.step == 2
    resumed.train()  # no step to train: the pending evaluation and the step-2 line
    assert_same_as_reference(reference, resumed, out / "final")


def cli(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "sharpening.cli", "llm", "train", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_ctrl_c_on_the_command_line_is_one_line_that_says_how_to_resume(reference, tmp_path):
    proc = cli(f"out_dir={tmp_path}", "run_name=cli", *RUN, "steps=4")
    metrics = tmp_path / "cli" / "metrics.jsonl"
    deadline = time.time() + 600
    while not (metrics.exists() and metrics.read_text().strip()) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=600)
    lines = [line for line in err.splitlines() if line.startswith("sharpening")]
    assert proc.returncode == 130 and "Traceback" not in err
    assert lines[-1].startswith("sharpening llm train: stopped by SIGINT after step ")
    assert lines[-1].endswith(f"continue with: sharpening llm train --config {tmp_path / 'cli' / 'config.yaml'} "
                              "--resume")


def test_a_second_start_on_a_folder_in_use_is_refused_naming_the_holder(reference):
    out = reference[0]
    first = make_trainer(out, *RUN, "run_name=busy")  # holds the folder from before its model loaded
    second = cli(f"out_dir={out}", "run_name=busy", *RUN)
    _, err = second.communicate(timeout=300)
    assert second.returncode == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"sharpening llm train: run folder {str(out / 'busy')!r} is in use by pid {os.getpid()} "
                          f"on {socket.gethostname()} since 20")
    assert "one process writes a run" in err
    first.train()  # the first run is untouched by the refused one
    assert [m["step"] for m in runs.RunFolder(out / "busy").metrics()] == [1, 2]


def test_resume_with_a_changed_config_is_refused_in_one_line(reference):
    out = reference[0]
    proc = cli("--config", str(out / "ref" / "config.yaml"), "--resume", "lr=2e-4", "group_size=3")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and len(err.strip().splitlines()) == 1
    assert "group_size: 2 -> 3; lr: 0.0001 -> 0.0002" in err and "--accept-changes" in err


def test_a_fresh_start_on_a_folder_holding_a_run_is_refused(reference):
    out = reference[0]
    with pytest.raises(runs.RunFolderError, match="already holds a run .*pass --resume"):
        make_trainer(out, *RUN, "run_name=ref")


def mount_tmpfs(path, size="1m"):
    path.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        path.rmdir()
        pytest.skip(f"cannot mount a tmpfs here to fill a disk (needs root with CAP_SYS_ADMIN): "
                    f"{res.stderr.strip()[:120]}")


def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_previous_checkpoint(reference, tmp_path):
    out = reference[0]
    run_dir = tmp_path / "full"
    shutil.copytree(out / "ref", run_dir, copy_function=os.link, ignore=shutil.ignore_patterns(".lock"))
    real = tmp_path / "real_checkpoints"
    (run_dir / "checkpoints").rename(real)
    mount_tmpfs(run_dir / "checkpoints")  # 1 MiB: the step-3 checkpoint (~1.6 GB) cannot fit
    try:
        (run_dir / "checkpoints" / "step_000002").symlink_to(real / "step_000002")
        tr = make_trainer(tmp_path, *RUN, "run_name=full", "steps=3", "resume=true")
        assert tr.step == 2
        with pytest.raises(runs.DiskFull) as err:
            tr.train()
        msg = str(err.value)
        assert "\n" not in msg and "no space left on the device while writing" in msg and "step_000003" in msg
        assert f"the previous checkpoint {run_dir / 'checkpoints' / 'step_000002'} is kept" in msg
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_000002"]  # no temp folder left
        assert verify_checkpoint(run_dir / "checkpoints" / "step_000002") is None
    finally:
        subprocess.run(["umount", str(run_dir / "checkpoints")], check=False)


def test_contexts_the_model_cannot_hold_are_refused_before_the_weights_load(tmp_path):
    with pytest.raises(ValueError, match="max_new_tokens=100000 leaves no room for a prompt in the model's "
                                         "context of 8192 tokens"):
        make_trainer(tmp_path, "max_new_tokens=100000", "run_name=a")
    long = tmp_path / "long.jsonl"
    long.write_text(runs.dumps({"id": "huge", "problem": "1 + " * 9000 + "1", "answer": "9001"}) + "\n")
    with pytest.raises(ValueError, match=r"problem 'huge' has a \d+-token prompt: with max_new_tokens=8 it does not "
                                         "fit the model's context of 8192 tokens"):
        make_trainer(tmp_path, f"dataset={long}", "run_name=b")
