"""A damaged run resumes from its last good state, or says in one line why it cannot. On a real SmolLM2 run folder
(2 steps, a checkpoint after each), damaged the ways a kill or a bad disk damages it."""

import hashlib
import json
import logging
import os
import shutil

import pytest
import torch
from test_llm_trainer import make_trainer, read_metrics

from sharpening.llm.checkpoint import CheckpointError, truncate_metrics

pytestmark = [pytest.mark.slow, pytest.mark.llm]

RUN = ["steps=2", "save_every=1", "lr=1e-4", "run_name=r"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """out/r: metrics of steps 1 and 2, checkpoints/step_000001 and step_000002 (keep_checkpoints=2)."""
    out = tmp_path_factory.mktemp("pristine")
    make_trainer(out, *RUN).train()
    return out


@pytest.fixture
def run(pristine, tmp_path):
    """A copy of the pristine run for one test to damage (hard links: no 1.6 GB of copying; a file to damage
    becomes a copy of its own first, see `own_copy`)."""
    shutil.copytree(pristine, tmp_path / "out", copy_function=os.link)
    return tmp_path / "out"


def own_copy(path):
    """Replace a hard link to the pristine file by a copy of it, which the test may damage."""
    tmp = path.with_name(path.name + ".copy")
    shutil.copyfile(path, tmp)
    os.replace(tmp, path)
    return path


def truncate(path, size: int):
    os.truncate(own_copy(path), size)


def overwrite(path, offset: int, data: bytes):
    with open(own_copy(path), "r+b") as f:
        f.seek(offset)
        f.write(data)


def ckpt(out, step):
    return out / "r" / "checkpoints" / f"step_{step:06d}"


def weights_of(folder):
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def resume(out, *extra):
    return make_trainer(out, *RUN, "resume=true", *extra)


def assert_resumed_from_step_1(tr, out):
    assert tr.step == 1
    state = tr.policy.state_dict()
    for name, tensor in weights_of(ckpt(out, 1)).items():
        assert torch.equal(state[name], tensor), name
    assert [m["step"] for m in read_metrics(out / "r")] == [1]


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_each_checkpoint_carries_the_sha256_of_every_file(pristine):
    folder = ckpt(pristine, 2)
    listed = {}
    for line in (folder / "checksums.sha256").read_text().splitlines():
        digest, name = line.split("  ")
        listed[name] = digest
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {"checksums.sha256"}
    assert set(listed) == files and {"model.safetensors", "trainer_state.pt", "config.json"} <= files
    for name, digest in listed.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name


def test_truncated_weights_fall_back_to_the_previous_checkpoint(run, caplog):
    weights = ckpt(run, 2) / "model.safetensors"
    truncate(weights, weights.stat().st_size // 2)  # cut short (a full disk, a copy interrupted)
    with caplog.at_level(logging.WARNING):
        tr = resume(run)
    assert_resumed_from_step_1(tr, run)
    [warning] = warnings_of(caplog)
    assert "step_000002 is damaged (model.safetensors does not match its checksum" in warning
    assert "\n" not in warning


def test_truncated_trainer_state_falls_back_to_the_previous_checkpoint(run, caplog):
    truncate(ckpt(run, 2) / "trainer_state.pt", 1000)
    with caplog.at_level(logging.WARNING):
        tr = resume(run)
    assert_resumed_from_step_1(tr, run)
    assert any("step_000002 is damaged (trainer_state.pt" in w for w in warnings_of(caplog))


def test_overwritten_bytes_inside_the_weights_are_caught_by_the_checksum(run, caplog):
    """4 KiB of 0xFF (NaN as float32) in the middle of model.safetensors: same size, a valid file that loads."""
    weights = ckpt(run, 2) / "model.safetensors"
    overwrite(weights, weights.stat().st_size // 2, b"\xff" * 4096)
    with caplog.at_level(logging.WARNING):
        tr = resume(run)
    assert_resumed_from_step_1(tr, run)
    assert all(torch.isfinite(p).all() for p in tr.policy.parameters())
    assert any("model.safetensors does not match its checksum" in w for w in warnings_of(caplog))


def test_no_intact_checkpoint_says_why_in_one_line(run, capsys):
    from test_llm_trainer import TINY
    from test_user_errors import run_cli

    truncate(ckpt(run, 2) / "model.safetensors", 100)
    overwrite(ckpt(run, 1) / "trainer_state.pt", 5000, b"\0" * 64)
    with pytest.raises(CheckpointError) as err:
        resume(run)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"cannot resume {str(run / 'r')!r}: no checkpoint is intact")
    assert "step_000002: model.safetensors does not match its checksum" in message
    assert "step_000001: trainer_state.pt does not match its checksum" in message
    status, _, stderr = run_cli(capsys, "llm", "train", f"out_dir={run}", *TINY, *RUN, "resume=true")
    last = stderr.strip().splitlines()[-1]  # after the model's loading bar (carriage returns)
    assert status == 1 and "Traceback" not in stderr and last == f"sharpening llm train: {message}"


def test_staging_folders_of_killed_saves_are_removed_on_the_next_start(run, caplog):
    root = run / "r" / "checkpoints"
    stale = [root / ".tmp-step_000003-k3x9a1", root / ".tmp-step_000004-ranks"]
    for folder in stale:
        (folder / "sharded").mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"\0" * 4096)
    with caplog.at_level(logging.WARNING):
        tr = resume(run)
    assert tr.step == 2 and not any(f.exists() for f in stale)
    assert sorted(p.name for p in root.iterdir()) == ["step_000001", "step_000002"]
    assert sum("left by a checkpoint save that was killed" in w for w in warnings_of(caplog)) == 2


def test_a_torn_last_metrics_line_is_dropped_with_a_warning(run, caplog):
    metrics = run / "r" / "metrics.jsonl"
    overwrite(metrics, metrics.stat().st_size, b'{"step": 3, "reward/task": 0.2')  # killed mid-write: no newline
    with caplog.at_level(logging.WARNING):
        tr = resume(run, "steps=3")
    assert tr.step == 2 and [m["step"] for m in read_metrics(run / "r")] == [1, 2]
    assert any("dropped its last line" in w for w in warnings_of(caplog))


def test_a_damaged_line_before_the_last_is_an_error_naming_it(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "re\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2 is not a metrics line"):
        truncate_metrics(path, 3)
    assert json.loads(path.read_text().splitlines()[0]) == {"step": 1}  # left as it was
