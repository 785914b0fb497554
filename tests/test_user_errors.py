"""Every user error is one line on stderr, `sharpening <command>: <what is wrong, the bad value, what is allowed>`,
and a non-zero exit; never a traceback. Run through `sharpening.cli.main` as the console script runs it (and once
through a real subprocess)."""

import dataclasses
import math
import os
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest

from sharpening.cli import main
from sharpening.llm.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
SMALL_RUN = ["prompts_per_step=1", "group_size=2", "max_new_tokens=4", "steps=1"]


def run_cli(capsys, *argv):
    """(exit status, stdout, stderr) of `sharpening *argv`, as the console script would give them."""
    try:
        status = main(list(argv))
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    if isinstance(status, str):  # sys.exit("message"): Python prints the message to stderr, status 1
        status, err = 1, err + status + "\n"
    return status, out, err


def one_error_line(capsys, command, *argv) -> str:
    status, _, err = run_cli(capsys, *argv)
    assert status not in (0, None), err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sharpening {command}"), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def no_weights(monkeypatch):
    """Fail the test if the trainer starts loading a model: user errors must be found before that."""
    from sharpening.llm import trainer

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the user's mistake was reported")

    monkeypatch.setattr(trainer, "load_model", refuse)
    monkeypatch.setattr(trainer, "load_tokenizer", refuse)


# --- sharpening theory / toy ------------------------------------------------------------------------------

def pi_star_column(stdout: str) -> np.ndarray:
    rows = [line.split() for line in stdout.splitlines()[2:] if line.split() and line.split()[0].isdigit()]
    return np.array([float(row[-1]) for row in rows])


def test_theory_pi_ref_is_normalized_and_says_so(capsys):
    """--pi-ref 5,3,2 means 0.5,0.3,0.2. Tempered alpha = 2 with N = mean: pi* ~ pi_ref * exp(log pi_ref / T) =
    pi_ref ** (1 + 1/T); with the unnormalized numbers (5 ** 2 : 3 ** 1.5 : 2 ** (4/3)) it would differ."""
    args = ["theory", "fixed-point", "--reward", "0,1,0", "--lengths", "1,2,3", "--regime", "tempered",
            "--alpha", "2", "--normalization", "mean"]
    status, out, err = run_cli(capsys, *args, "--pi-ref", "5,3,2")
    assert status == 0 and "--pi-ref sums to 10, not 1: normalized to 0.5,0.3,0.2" in err
    p, T = np.array([0.5, 0.3, 0.2]), np.array([1.0, 2.0, 3.0])
    expected = p ** (1 + 1 / T) / (p ** (1 + 1 / T)).sum()
    np.testing.assert_allclose(pi_star_column(out), expected, atol=1e-4)
    status, out_normalized, err = run_cli(capsys, *args, "--pi-ref", "0.5,0.3,0.2")
    assert status == 0 and err == "" and out_normalized == out


@pytest.mark.parametrize("pi_ref, why", [("0,0,0", "is all 0"), ("0.5,nan,0.5", "must be finite"),
                                         ("0.5,inf,0.5", "must be finite"), ("0.7,-0.1,0.4", "negative")])
def test_theory_rejects_what_is_not_a_distribution(capsys, pi_ref, why):
    line = one_error_line(capsys, "theory", "theory", "fixed-point", "--pi-ref", pi_ref, "--reward", "0,1,0",
                          "--regime", "task_reward")
    assert f"--pi-ref {pi_ref} " in line and why in line


@pytest.mark.parametrize("flags, bad", [(["--steps", "0"], "--steps=0"), (["--lr", "inf"], "lr=inf"),
                                        (["--lr", "nan"], "lr=nan")])
def test_toy_rejects_no_steps_and_non_finite_rates(capsys, flags, bad):
    line = one_error_line(capsys, "toy", "toy", "bandit", "--seeds", "2", "--steps", "3", *flags)
    assert bad in line


# --- sharpening llm train: the config -----------------------------------------------------------------------

def test_yaml_syntax_error_is_one_line(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: 3\nlr: [1e-6\nseed: 1\n")
    line = one_error_line(capsys, "llm train", "llm", "train", "--config", str(bad))
    assert str(bad) in line and "not valid YAML" in line and "line 3" in line


def test_bad_yaml_in_an_override_is_one_line(capsys):
    line = one_error_line(capsys, "llm train", "llm", "train", "--dry-run", "eval_datasets=[math500")
    assert "override 'eval_datasets=[math500'" in line and "not valid YAML" in line


def float_fields() -> list[str]:
    hints = typing.get_type_hints(TrainConfig)
    return [f.name for f in dataclasses.fields(TrainConfig) if hints[f.name] in (float, typing.Optional[float])]


def test_every_float_field_of_the_config_is_checked():
    assert {"lr", "temperature", "top_p", "weight_decay", "warmup_start", "max_grad_norm", "is_cap"} <= \
        set(float_fields())


@pytest.mark.parametrize("field", float_fields())
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_numbers_fail_the_config_and_the_dry_run(capsys, field, value):
    if (field, value) == ("max_grad_norm", ".inf"):
        pytest.skip("max_grad_norm=.inf is the documented way to turn clipping off (test_llm_config)")
    status, out, err = run_cli(capsys, "llm", "train", "--dry-run", "--gpus", "1", f"{field}={value}")
    assert status not in (0, None) and "ok" not in out
    [line] = err.strip().splitlines()
    shown = {".nan": "nan", ".inf": "inf", "-.inf": "-inf"}[value]
    assert line == f"sharpening llm train: {field}={shown} must be a finite number"


@pytest.mark.parametrize("field", ["alpha", "beta_inv"])
def test_non_finite_regime_parameters_fail(capsys, field):
    line = one_error_line(capsys, "llm train", "llm", "train", "--dry-run", "regime={mode: sampling}",
                          f"regime.{field}=.nan")
    assert f"{field}=nan" in line


def test_a_finite_config_still_passes_the_dry_run(capsys):
    status, out, _ = run_cli(capsys, "llm", "train", "--dry-run", "--gpus", "1", "lr=3e-6", "temperature=0.7")
    assert status == 0 and "ok" in out


# --- sharpening llm train: data, run folder, model (before any weights load) --------------------------------

@pytest.mark.parametrize("override", ["dataset={missing}", "eval_datasets=[synthetic:add, {missing}]",
                                      "dataset=no_such_benchmark"])
def test_missing_data_set_is_reported_before_loading_weights(capsys, tmp_path, no_weights, override):
    missing = tmp_path / "missing.jsonl"
    line = one_error_line(capsys, "llm train", "llm", "train", f"out_dir={tmp_path}", *SMALL_RUN,
                          override.format(missing=missing), "eval_seed=1")
    assert (str(missing) in line and "does not exist" in line) or "unknown problem source 'no_such_benchmark'" in line
    assert not (tmp_path / "run").exists()  # nothing was written


def test_a_folder_that_holds_a_run_is_refused_before_loading_weights(capsys, tmp_path, no_weights):
    run = tmp_path / "old"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    line = one_error_line(capsys, "llm train", "llm", "train", f"out_dir={tmp_path}", "run_name=old", *SMALL_RUN)
    assert str(run) in line and "already holds a run" in line and "resume=true" in line
    assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_a_model_folder_that_does_not_exist_is_one_line(capsys, tmp_path):
    line = one_error_line(capsys, "llm train", "llm", "train", f"out_dir={tmp_path}", *SMALL_RUN,
                          f"model={tmp_path / 'no_model'}")
    assert str(tmp_path / "no_model") in line


# --- sharpening llm eval ------------------------------------------------------------------------------------

def test_eval_of_a_checkpoint_that_does_not_exist_is_one_line(capsys):
    line = one_error_line(capsys, "llm eval", "llm", "eval", "--checkpoint", "/no/such/dir", "--datasets", "aime24",
                          "--limit", "1", "--n", "1")
    assert line == ("sharpening llm eval: --checkpoint '/no/such/dir' does not exist; give a checkpoint folder such "
                    "as runs/<run_name>/checkpoints/step_000010")


def test_eval_of_a_folder_without_a_model_is_one_line(capsys, tmp_path):
    line = one_error_line(capsys, "llm eval", "llm", "eval", "--checkpoint", str(tmp_path), "--datasets", "aime24")
    assert f"--checkpoint {str(tmp_path)!r} is not a model folder (no config.json)" in line


@pytest.mark.parametrize("argv, message", [
    (["--sampler", "power", "--alpha", "-1"], "sharpening llm eval: --alpha=-1.0 must be > 0"),
    (["--sampler", "temperature", "--alpha", "0"], "sharpening llm eval: --alpha=0.0 must be > 0"),
    (["--sampler", "power", "--mcmc-steps", "-1"], "sharpening llm eval: mcmc_steps=-1 must be an int >= 0"),
])
def test_eval_with_a_bad_sampler_setting_is_one_line(capsys, argv, message):
    line = one_error_line(capsys, "llm eval", "llm", "eval", "--datasets", "synthetic:add", *argv)
    assert line.startswith(message), line


def test_eval_with_an_unknown_sampler_names_the_choices(capsys):
    """An unknown --sampler is argparse's choice error (usage, then one line naming the value and the choices)."""
    status, _, err = run_cli(capsys, "llm", "eval", "--datasets", "synthetic:add", "--sampler", "gibbs")
    assert status == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("sharpening llm eval: error: argument --sampler: invalid choice: 'gibbs' "
                                            "(choose from 'ancestral', 'temperature', 'power')")


# --- the real command, in its own process -------------------------------------------------------------------

def test_the_console_command_prints_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("regime: sharpening\n  steps: 3\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, "-m", "sharpening.cli", "llm", "train", "--config", str(bad)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith(f"sharpening llm train: config file {str(bad)!r} is not valid YAML")
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_config_built_in_code_refuses_non_finite_numbers_too():
    """The config's own checks (lr >= 0, 0 < top_p <= 1, ...) are comparisons that NaN passes: the finite check
    must run for fields of every float type, Optional ones included."""
    with pytest.raises(ValueError, match="is_cap=nan must be a finite number"):
        TrainConfig(is_cap=math.nan)
    with pytest.raises(ValueError, match="warmup_start=inf must be a finite number"):
        TrainConfig(warmup_start=math.inf)
