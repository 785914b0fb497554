"""report_to: a real 2-step SmolLM2 run logs every metrics line to TensorBoard, W&B (offline) and trackio (local),
read back with each library's own reader (or, for W&B, from the run file it writes). No library is mocked."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from test_llm_trainer import TINY

from sharpening.llm import runs

pytestmark = [pytest.mark.slow, pytest.mark.llm]

for module in ("tensorboard", "wandb", "trackio"):
    pytest.importorskip(module, reason=f"report_to needs the {module} extra: pip install -e '.[{module}]'")

NEW_METRICS = ("grad_norm/clipped", "frac_reward_zero_std", "throughput/tokens_per_sec",
               "throughput/gen_tokens_per_sec")


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A 2-step run with report_to every sink, in a subprocess whose trackio and W&B write under tmp."""
    tmp = tmp_path_factory.mktemp("sinks")
    env = {**os.environ, "TRACKIO_DIR": str(tmp / "trackio"), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    res = subprocess.run([sys.executable, "-m", "sharpening.cli", "llm", "train", *TINY, f"out_dir={tmp}",
                          "run_name=r", "steps=2", "regime=sharpening", "is_cap=2",
                          "report_to=[tensorboard, wandb, trackio]"], env=env, cwd=tmp, capture_output=True,
                         text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    return tmp, runs.RunFolder(tmp / "r").metrics(), env


def test_the_jsonl_lines_hold_the_new_metrics(logged):
    _, rows, _ = logged
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert set(NEW_METRICS) | {"is_weight/clip_frac"} <= set(r)
        assert r["grad_norm/clipped"] == int(r["grad_norm"] > 1.0)  # max_grad_norm 1.0, grad_norm before clipping
        assert r["frac_reward_zero_std"] in (0.0, 1.0)  # one group of 2 per step
        tokens = r["length/mean"] * 2  # 1 prompt x G = 2 responses
        assert r["throughput/tokens_per_sec"] == pytest.approx(tokens / r["time/step"])


def test_tensorboard_event_files_read_back_with_tensorboards_reader(logged):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tmp, rows, _ = logged
    acc = EventAccumulator(str(tmp / "r" / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss", "grad_norm", *NEW_METRICS} <= tags
    for key in ("loss", "grad_norm", "frac_reward_zero_std", "reward/task"):
        events = acc.Scalars(key)
        assert [e.step for e in events] == [1, 2]
        assert np.array_equal(np.float32([e.value for e in events]), np.float32([r[key] for r in rows]))  # fp32


def test_wandb_offline_writes_its_run_file_with_every_metric(logged):
    tmp, rows, _ = logged
    (run_file,) = glob.glob(str(tmp / "r" / "wandb" / "offline-run-*" / "run-*.wandb"))
    data = open(run_file, "rb").read()
    for key in ("loss", "grad_norm", *NEW_METRICS):
        assert key.encode() in data
    assert json.dumps(rows[-1]["loss"]).encode() in data  # the value, as W&B encodes it (JSON)
    assert (tmp / "r" / "wandb_id").read_text() in os.path.basename(run_file)  # a resume continues this run


def test_trackio_stores_every_line_locally(logged):
    tmp, rows, env = logged
    script = ("import json; from trackio.sqlite_storage import SQLiteStorage; "
              "print(json.dumps(SQLiteStorage.get_logs('sharpening', 'r')))")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    logs = json.loads(out.stdout.strip().splitlines()[-1])
    assert [entry["step"] for entry in logs] == [1, 2]
    for entry, row in zip(logs, rows):
        for key in ("loss", "grad_norm", *NEW_METRICS):
            assert entry[key] == row[key]
