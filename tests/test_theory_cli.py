"""`sharpening theory ...` through sharpening.cli.main, output checked against hand-computed numbers."""

import subprocess
import sys

import pytest

from sharpening.cli import main


def run(capsys, *argv):
    code = main(["theory", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def rows(out):
    """The numeric rows of the printed table(s), as lists of floats."""
    parsed = []
    for line in filter(str.strip, out.splitlines()):
        try:
            parsed.append([float(x) for x in line.split()])
        except ValueError:
            continue
    return parsed


def labelled_row(out, label):
    """The numbers after `label` on the table line that starts with it."""
    line = next(line for line in out.splitlines() if line.strip().startswith(label))
    return [float(x) for x in line.strip()[len(label):].split()]


def test_fixed_point_tempered_table(capsys):
    code, out, _ = run(capsys, "fixed-point", "--pi-ref", "0.5,0.3,0.2", "--reward", "0,1,0",
                       "--regime", "tempered", "--alpha", "2")
    assert code == 0
    # pi_ref^2 = (0.25, 0.09, 0.04) / 0.38
    table = rows(out)
    assert [row[-1] for row in table] == pytest.approx([0.6579, 0.2368, 0.1053], abs=1e-4)
    assert [row[-2] for row in table] == pytest.approx([0.5, 0.3, 0.2])
    assert "mass on correct (r = 1):  pi_ref 0.3   pi* 0.2368" in out


def test_fixed_point_sharpening_with_lengths(capsys):
    code, out, _ = run(capsys, "fixed-point", "--lp-ref=-1.2,-0.5,-2", "--reward", "1,0,1", "--lengths", "1,1,3",
                       "--regime", "sharpening", "--normalization", "mean")
    assert code == 0
    # N = lp_ref / T = (-1.2, -0.5, -0.667): the mode is y1, a wrong answer of length 1
    assert [row[-1] for row in rows(out)] == [0.0, 1.0, 0.0]
    assert "pi* 0" in out and "expected length:" in out


def test_fixed_point_custom_and_presets(capsys):
    code, out, _ = run(capsys, "fixed-point", "--pi-ref", "0.6,0.4", "--reward", "0,1", "--regime", "custom",
                       "--mode", "sampling", "--alpha", "1", "--beta-inv", "1")
    assert code == 0
    # pi_ref e^r / Z = (0.6, 0.4 e) / (0.6 + 0.4 e) = (0.3556, 0.6444)
    assert [row[-1] for row in rows(out)] == pytest.approx([0.3556, 0.6444], abs=1e-4)
    code, out, _ = run(capsys, "fixed-point", "--pi-ref", "0.6,0.4", "--reward", "0,1", "--regime", "task_reward")
    assert code == 0 and [row[-1] for row in rows(out)] == [0.0, 1.0]


def test_fixed_point_of_the_signals(capsys):
    # answers: y0 is answer 1 (0.4), y1 and y2 are answer 0 (0.3 + 0.3): the majority answer is not the mode y0
    base = ["fixed-point", "--pi-ref", "0.4,0.3,0.3", "--reward", "0,1,1", "--answers", "1,0,0"]
    code, out, _ = run(capsys, *base, "--regime", "majority_vote")
    assert code == 0 and [row[-1] for row in rows(out)] == [0.0, 0.5, 0.5]
    code, out, _ = run(capsys, *base, "--regime", "self_likelihood")  # entropy minimization: the mode y0
    assert code == 0 and [row[-1] for row in rows(out)] == [1.0, 0.0, 0.0]
    code, out, _ = run(capsys, *base, "--regime", "random_reward", "--p", "0.3")  # zero expected update: pi_ref
    assert code == 0 and [row[-1] for row in rows(out)] == pytest.approx([0.4, 0.3, 0.3])
    assert "fixed point of random_reward p=0.3" in out


@pytest.mark.parametrize("argv,message", [
    (["--pi-ref", "0.5,0.5", "--reward", "0,1,1"], "--reward has 3 values but the reference has 2"),
    (["--pi-ref", "0.5,0.5", "--reward", "0,1", "--regime", "tempered", "--alpha", "-1"], "Regime.alpha=-1.0"),
    (["--pi-ref", "0.5,0.5", "--reward", "0,1", "--lengths", "1,2,3", "--regime", "sharpening"],
     "--lengths has 3 values"),
    (["--pi-ref", "0.5,0.5", "--reward", "0,1", "--regime", "tempered"], "preset 'tempered' needs alpha"),
    (["--pi-ref", "0.5,0.5", "--reward", "0,1", "--regime", "tempered", "--alpha", "2", "--beta-inv", "1"],
     "preset 'tempered' does not take beta_inv; it takes alpha (required), normalization"),
    (["--pi-ref", "0.5,0.5", "--reward", "0,1", "--regime", "tilted", "--alpha", "2"], "preset 'tilted' needs beta_inv"),
    (["--pi-ref", "0.5,0.5", "--reward", "0,1", "--regime", "tilted", "--alpha", "2", "--beta-inv", "0"],
     "needs beta_inv > 0"),
    (["--pi-ref", "0.5,0.5", "--reward", "0,1", "--regime", "sharpening", "--mode", "sampling"],
     "preset 'sharpening' does not take mode"),
    (["--pi-ref", "0.5,0.5", "--reward", "0,1", "--regime", "majority_vote"], "needs the answer id of every output"),
    (["--pi-ref", "0.5,0.5", "--reward", "0,1", "--lengths", "1,2", "--regime", "neg_entropy"], "no closed form"),
    (["--pi-ref", "0.5,0.5", "--reward", "0,1"], "--regime custom needs --mode"),
    (["--pi-ref", "0.5,-0.5", "--reward", "0,1", "--regime", "sharpening"], "negative probability"),
])
def test_fixed_point_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    code, out, err = run(capsys, "fixed-point", *argv)
    assert code == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1


def test_unparsable_numbers_exit_2(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["theory", "fixed-point", "--pi-ref", "0.5,x", "--reward", "0,1"])
    assert stop.value.code == 2
    assert "'0.5,x' is not a comma-separated list of numbers" in capsys.readouterr().err


def test_error_has_no_traceback_in_a_real_process():
    proc = subprocess.run([sys.executable, "-m", "sharpening.cli", "theory", "length-bias", "--p", "1.5"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "sharpening theory: error: p=1.5 must be a probability strictly between 0 and 1"


def test_length_bias_tables(capsys):
    code, out, _ = run(capsys, "length-bias", "--p", "0.7", "--m", "10", "--stop", "0.2", "--token-probs",
                       "0.5,0.3,0.2", "--max-len", "30", "--alphas", "1,2")
    assert code == 0
    mass, lengths = rows(out)[:2], rows(out)[2:]
    # alpha = 1: p; alpha = 2: 1 / (1 + (10 * 0.3 / 0.7)**2 / 10)
    assert mass[0] == pytest.approx([1, 0.7])
    assert mass[1] == pytest.approx([2, 1 / (1 + (3 / 0.7) ** 2 / 10)], abs=1e-4)
    # E[T] = 1/s at alpha = 1; alpha = 2: 1 / (1 - 0.64 * 0.38)
    assert lengths[0][:2] == pytest.approx([1, 5.0]) and lengths[1][1] == pytest.approx(1 / (1 - 0.2432), abs=1e-3)
    assert "alpha* (mass = 1/2): 1.582" in out


def test_snr_table(capsys):
    code, out, _ = run(capsys, "snr", "--T", "1,2", "--G", "2", "--token-probs", "0.5,0.5")
    assert code == 0
    # task reward, T = 1, G = 2, p = 1/2: g = (A_1 / 2)(s_1 - s_2) is (1/2, -1/2) when the two answers differ
    # (probability 1/2), else 0: ||E g||^2 = 1/8 = E||g||^2 - ||E g||^2, so SNR = 1
    assert labelled_row(out, "task_reward")[0] == pytest.approx(1.0)
    code, out, err = run(capsys, "snr", "--G", "1")
    assert code == 2 and out == "" and "G=1 must be an integer >= 2" in err


def test_stability_table(capsys):
    code, out, _ = run(capsys, "stability", "--pi-ref", "0.5,0.5", "--reward", "0,0", "--alphas", "1",
                       "--beta-invs", "0,10")
    assert code == 0
    # F = diag(pi) - pi pi^T = [[1/4, -1/4], [-1/4, 1/4]]: lambda_max = 1/2, lr < 2 / (kappa / 2), kappa = 1, 1/10
    assert labelled_row(out, "alpha=1") == [4.0, 40.0]


def test_derive_prints_results_and_latex(capsys):
    code, out, _ = run(capsys, "derive")
    assert code == 0
    assert "pi_ref_1**alpha*exp(beta_inv*r_1)/" in out and "negative definite = True" in out
    assert r"\pi_{ref 1}^{\alpha}" in out
