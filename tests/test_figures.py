"""Every figure runs on small settings, and each plotted series equals numbers computed independently.

Plotted numbers are read back from the Axes (Line2D data via style.series) and compared with closed forms
written out here, or with independent calls of the toy code with the same seeds.
"""

import json

import numpy as np
import pytest
from scipy.special import logsumexp

from sharpening.cli import main
from sharpening.figures import style
from sharpening.figures.fixed_points import MODE_RIGHT, MODE_WRONG, fig_fixed_points
from sharpening.figures.pass_at_k import fig_pass_at_k, find_evals
from sharpening.figures.training import REGIMES, bandit_task, fig_training_curves, train_all
from sharpening.objective import Regime
from sharpening.toy import bandit


def power_tilt(model, alpha, beta_inv):
    """pi_ref^alpha exp(beta_inv r) / Z in the log domain (beta_inv = 1e4 would overflow exp)."""
    logits = alpha * model.lp_ref + beta_inv * model.r
    return np.exp(logits - logsumexp(logits))


def argmax_mass(model, score):
    """Mass on correct answers and expected length of the uniform distribution over argmax score."""
    ties = np.isclose(score, score.max(), rtol=1e-12, atol=0)
    return model.r[ties].mean(), model.lengths[ties].mean()


def test_base_models_tell_the_story():
    p = np.exp(MODE_WRONG.lp_ref)
    assert np.isclose(p.sum(), 1) and MODE_WRONG.r[np.argmax(p)] == 0 and p @ MODE_WRONG.r == pytest.approx(0.6)
    assert MODE_WRONG.lengths[np.argmax(p)] == MODE_WRONG.lengths.min()  # the wrong mode is also the shortest
    p = np.exp(MODE_RIGHT.lp_ref)
    assert np.isclose(p.sum(), 1) and MODE_RIGHT.r[np.argmax(p)] == 1 and p @ MODE_RIGHT.r == pytest.approx(0.5)


def test_fixed_points_figure_plots_the_closed_forms():
    alphas = np.array([0.5, 1.0, 2.0, 4.0, 300.0, 3e4])
    axes = fig_fixed_points(alphas=alphas)
    assert axes.shape == (2, 2)
    for model, (ax_mass, ax_len) in zip((MODE_RIGHT, MODE_WRONG), axes):
        mass, length = style.series(ax_mass), style.series(ax_len)
        expected = {
            "tempered": [power_tilt(model, a, 0.0) for a in alphas],
            "tilted β⁻¹=100": [power_tilt(model, a, 100.0) for a in alphas],
            "tilted β⁻¹=10000": [power_tilt(model, a, 1e4) for a in alphas],
        }
        for name, pis in expected.items():
            np.testing.assert_allclose(mass[name][1], [pi @ model.r for pi in pis], atol=1e-12)
            np.testing.assert_allclose(length[name][1], [pi @ model.lengths for pi in pis], rtol=1e-12)
            np.testing.assert_array_equal(mass[name][0], alphas)
        # optimization: a point mass on argmax [beta_inv r + alpha lp_ref]
        for name, beta_inv in (("optimization β⁻¹=0 (sharpening at α=1)", 0.0), ("optimization β⁻¹=1 (r + α·N)", 1.0)):
            want = np.array([argmax_mass(model, beta_inv * model.r + a * model.lp_ref) for a in alphas])
            np.testing.assert_allclose(mass[name][1], want[:, 0], rtol=1e-12)
            np.testing.assert_allclose(length[name][1], want[:, 1], rtol=1e-12)
        # task reward: uniform over the correct answers; the base model: pi_ref itself
        np.testing.assert_allclose(mass["task reward"][1], 1.0)
        np.testing.assert_allclose(length["task reward"][1], model.lengths[model.r == 1].mean())
        np.testing.assert_allclose(mass["base model π_ref"][1], np.exp(model.lp_ref) @ model.r)
    # the story: at alpha = 300, beta_inv = 100 has given way to the wrong mode, beta_inv = 1e4 has not
    wrong = style.series(axes[1, 0])
    assert wrong["tilted β⁻¹=100"][1][4] < 1e-6 and wrong["tilted β⁻¹=10000"][1][4] > 1 - 1e-6


def write_eval(path, run, regime, pass_k, maj_k, dataset="math500", step=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    table = lambda values: {str(k + 1): v for k, v in enumerate(values)}  # noqa: E731
    path.write_text(json.dumps({
        "run": run, "regime": regime, "model": "m", "n": len(pass_k), "temperature": 1.0, "step": step,
        "datasets": {dataset: {"num_problems": 10, "pass@k": table(pass_k), "maj@k": table(maj_k),
                               "mean_length": 100.0}}}))


def test_pass_at_k_reads_every_eval_json(tmp_path):
    sharpen = {"mode": "optimization", "alpha": 1.0, "beta_inv": 0.0, "normalization": "sum", "weight": 1.0}
    write_eval(tmp_path / "base" / "eval.json", "base", None, [0.3, 0.45, 0.55, 0.6], [0.3, 0.3, 0.35, 0.4])
    write_eval(tmp_path / "sharp" / "eval.json", "sharp", sharpen, [0.4, 0.42, 0.43, 0.44], [0.4, 0.4, 0.41, 0.41])
    write_eval(tmp_path / "sharp" / "eval" / "step_5.json", "sharp", sharpen, [0.1] * 4, [0.1] * 4, step=5)
    task = dict(sharpen, alpha=0.0, beta_inv=1.0)
    for step, v in ((10, 0.2), (20, 0.5), (3, 0.9)):  # a run with only intermediate evals: drawn at step 20
        write_eval(tmp_path / "nested" / "task" / "eval" / f"step_{step}.json", "task", task, [v] * 4, [v] * 4,
                   step=step)
    evals = find_evals(tmp_path)
    assert [(e.run, e.step) for e in evals] == [("base", None), ("sharp", None), ("task", 20)]
    axes = fig_pass_at_k(evals)
    assert axes.shape == (1, 2)
    pass_k, maj_k = style.series(axes[0, 0]), style.series(axes[0, 1])
    np.testing.assert_array_equal(pass_k["base: base model π_ref"][0], [1, 2, 3, 4])
    np.testing.assert_array_equal(pass_k["base: base model π_ref"][1], [0.3, 0.45, 0.55, 0.6])
    np.testing.assert_array_equal(maj_k["sharp: sharpening"][1], [0.4, 0.4, 0.41, 0.41])
    np.testing.assert_array_equal(pass_k["task: task reward @ step 20"][1], [0.5] * 4)


@pytest.mark.parametrize("content, complaint", [
    ("{not json", "not valid JSON"),
    ('{"run": "x", "regime": null}', "missing key 'datasets'"),
    ('{"run": "x", "regime": {"mode": "nope"}, "datasets": {"d": {}}}', "bad regime"),
    ('{"run": "x", "regime": null, "datasets": {"d": {"pass@k": {"one": 1}, "maj@k": {"1": 1}}}}', "pass@k"),
])
def test_pass_at_k_rejects_a_bad_eval_json(tmp_path, content, complaint):
    (tmp_path / "eval.json").write_text(content)
    with pytest.raises(ValueError, match=complaint) as err:
        find_evals(tmp_path)
    assert "eval.json" in str(err.value)


def test_training_curves_plot_the_median_over_seeds_of_train():
    runs = train_all(steps=6, seeds=3, seed=5, toys=[bandit_task()])
    axes = fig_training_curves(runs)
    assert axes.shape == (1, 3)
    lp_ref, r = bandit.wrong_mode_bandit()
    for regime in REGIMES:  # an independent run with the same seeds gives the same numbers
        alone = bandit.train(regime, lp_ref, r, steps=6, group_size=8, lr=1.0, seeds=[5, 6, 7])
        for ax, metric in zip(axes[0], ("task_reward", "entropy", "tv_to_fixed_point")):
            x, y = style.series(ax)[style.label(regime)]
            values = getattr(alone, metric)  # [n_logged, 3]
            np.testing.assert_array_equal(x, alone.steps)
            np.testing.assert_allclose(y, np.maximum([sorted(v)[1] for v in values], 1e-12), rtol=1e-12)
    assert style.series(axes[0, 0])["task reward"][1][0] == pytest.approx(0.5)  # pi_ref's mass on correct arms


def test_style_labels_and_colours_follow_the_regime_family():
    assert style.label(Regime.tilted(2.0, 100.0)) == "tilted α=2, β⁻¹=100"
    assert style.label(Regime.tempered(0.5), omit=("alpha",)) == "tempered"
    assert style.label(Regime("none")) == "task reward" and style.label(None) == "base model π_ref"
    assert style.line(Regime.sharpening())["color"] == style.COLORS["sharpening"]
    assert style.family(Regime("optimization", 2.0, 1.0)) == "mixed"


@pytest.mark.slow
def test_cli_writes_png_pdf_and_index_and_skips_pass_at_k(tmp_path, capsys):
    out = tmp_path / "figs"
    assert main(["figures", "--out", str(out), "--only", "fixed_points", "pass_at_k", "--quick"]) == 0
    text = capsys.readouterr().out
    assert "pass_at_k" in text and "skipped: no --runs DIR given" in text
    assert (out / "fixed_points.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "fixed_points.pdf").read_bytes()[:4] == b"%PDF"
    index = (out / "README.md").read_text()
    assert "![fixed_points](fixed_points.png)" in index
    assert "`sharpening figures --only fixed_points --quick`" in index
    assert "pass_at_k" not in index
    first = (out / "fixed_points.pdf").read_bytes()
    assert main(["figures", "--out", str(out), "--only", "fixed_points", "--quick"]) == 0
    assert (out / "fixed_points.pdf").read_bytes() == first  # deterministic, no timestamps
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "fixed_points.pdf", "fixed_points.png"]


def test_cli_rejects_bad_input(tmp_path, capsys):
    assert main(["figures", "--out", str(tmp_path), "--only", "nope"]) == 2
    assert "unknown figure 'nope'; choose from fixed_points" in capsys.readouterr().err
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "eval.json").write_text("{}")
    assert main(["figures", "--out", str(tmp_path), "--only", "pass_at_k", "--runs", str(tmp_path / "runs")]) == 2
    assert "FAILED" in capsys.readouterr().out


def test_length_bias_panels_plot_the_power_distribution_over_responses():
    from sharpening.figures.length_bias import panel_accuracy_and_length
    from sharpening.toy import sequence

    axes = style.axes(1, 2)
    alphas = np.array([0.5, 2.0, 8.0])
    panel_accuracy_and_length(axes[0], axes[1], alphas=alphas, train_alphas=[2.0], steps=4, seeds=2, seed=3, L=3)
    acc, length = style.series(axes[0]), style.series(axes[1])
    for name, fixed_length in (("normal", False), ("fixed length (EOS ignored)", True)):
        model = sequence.paper_model(L=3, fixed_length=fixed_length)
        _, lp_ref, r, T = sequence.enumerate_sequences(model)
        w = np.exp(np.outer(alphas, lp_ref))  # pi_ref^alpha, unnormalized  [3, |Y|]
        pi = w / w.sum(1, keepdims=True)
        np.testing.assert_allclose(acc[f"tempered fixed point, {name}"][1], pi @ r, rtol=1e-10)
        np.testing.assert_allclose(length[f"tempered fixed point, {name}"][1], pi @ T, rtol=1e-10)
        mode = np.argmax(lp_ref)  # sharpening: the single likeliest response
        np.testing.assert_array_equal(acc[f"sharpening, {name}"][1], [r[mode]] * 2)
        np.testing.assert_array_equal(length[f"sharpening, {name}"][1], [T[mode]] * 2)
        run = sequence.train(Regime.tempered(2.0), model, steps=4, lr=3.0, seeds=[3, 4], log_every=4)
        label = f"tempered, sampled training, {name}"
        np.testing.assert_allclose(acc[label][1], [np.median(run.final("task_reward"))], rtol=1e-12)
        np.testing.assert_allclose(length[label][1], [np.median(run.final("mean_length"))], rtol=1e-12)
    # the story: without EOS the likeliest response is short and wrong; with fixed length it is right
    assert acc["sharpening, normal"][1][0] == 0 and length["sharpening, normal"][1][0] == 2
    assert acc["sharpening, fixed length (EOS ignored)"][1][0] == 1
    assert length["tempered fixed point, fixed length (EOS ignored)"][1] == pytest.approx([3, 3, 3])


def test_stop_model_panel_matches_brute_force_enumeration():
    from itertools import product

    from sharpening.figures.length_bias import panel_stop_model

    s, u, cap, alphas = 0.3, (0.6, 0.4), 3, np.array([0.5, 1.0, 2.0])
    ax = panel_stop_model(style.axes(), alphas=alphas, stop=s, token_probs=u, cap=cap)
    drawn = style.series(ax)
    # every response: n content tokens then EOS (T = n + 1) for n < cap, or cap content tokens cut (T = cap)
    responses = [(s * np.prod(c) * (1 - s) ** n, n + 1) for n in range(cap) for c in product(u, repeat=n)]
    responses += [(np.prod(c) * (1 - s) ** cap, cap) for c in product(u, repeat=cap)]
    p, T = np.array(responses).T
    want = [(p**a @ T) / (p**a).sum() for a in alphas]
    np.testing.assert_allclose(drawn[f"closed form, cap L = {cap}"][1], want, rtol=1e-10)
    np.testing.assert_allclose(drawn[f"fixed_point over all {len(p)} responses"][1], want, rtol=1e-10)
    rho = (1 - s) ** alphas * (np.array(u)[:, None] ** alphas).sum(0)  # geometric ratio of the uncapped model
    uncapped = np.where(rho < 1, 1 / (1 - rho), np.inf)
    np.testing.assert_allclose(drawn["closed form, no cap: 1 / (1 - ρ(α))"][1], uncapped)


def test_theory_vs_simulation_panels():
    from sharpening.figures.theory_vs_simulation import panel_power_mass, panel_step_size

    ax = panel_power_mass(style.axes(), p=0.6, m=4, alphas=(1.0, 2.0), steps=4, seeds=2, seed=1)
    drawn = style.series(ax)
    a, y = drawn["closed form (theory.length_bias)"]
    np.testing.assert_allclose(y, 4 * 0.15**a / (4 * 0.15**a + 0.4**a), rtol=1e-12)  # m (p/m)^a / (... + q^a)
    lp_ref, r = np.log([0.15] * 4 + [0.4]), np.array([1.0] * 4 + [0.0])
    want = [np.median(bandit.train(Regime.tempered(a), lp_ref, r, steps=4, lr=1.0, seeds=[1, 2]).final("task_reward"))
            for a in (1.0, 2.0)]
    np.testing.assert_allclose(drawn["tempered, sampled training (4 steps, 2 seeds)"][1], want, rtol=1e-12)
    assert drawn["α* = 1.41 (mass 1/2)"][0][0] == pytest.approx(np.log(4) / np.log(4 * 0.4 / 0.6))

    ax = panel_step_size(style.axes(), alphas=(2.0,), ratios=[0.8, 1.2], steps=300)
    lp_ref, r = bandit.wrong_mode_bandit()
    pi = np.exp(2 * lp_ref) / np.exp(2 * lp_ref).sum()  # the tempered fixed point pi_ref^2 / Z
    lr_max = 2 / np.linalg.eigvalsh(np.diag(pi) - np.outer(pi, pi)).max()
    (label, (x, tv)), = [item for item in style.series(ax).items() if item[0].startswith("tempered")]
    assert label == f"tempered α=2 (lr_max = {lr_max:.2f})"
    assert tv[0] < 1e-9 and tv[1] > 1e-3  # converges just below the predicted limit, not just above


def test_instability_panels():
    from sharpening.figures import instability as fig
    from sharpening.toy import instability as toy

    axes = style.axes(1, 4)
    sweep = toy.sweep_max_length(list(fig.REGIMES), lengths=(1, 3), steps=3, seeds=[0, 1])
    fig.panel_max_length(axes[0], axes[1], sweep)
    u = np.array(toy.IID_TOKENS)
    var_log_u = u @ np.log(u) ** 2 - (u @ np.log(u)) ** 2
    drawn = style.series(axes[0])
    np.testing.assert_allclose(drawn["sharpening"][1], [var_log_u, 3 * var_log_u], rtol=1e-10)  # R = lp_ref
    np.testing.assert_allclose(drawn["closed form c² T Var[log u]"][1], [var_log_u, 3 * var_log_u], rtol=1e-10)
    np.testing.assert_allclose(drawn["task reward"][1], [0.24, 0.24], rtol=1e-10)  # p (1 - p), p = 0.6
    np.testing.assert_array_equal(style.series(axes[1])["task reward, at step 0"][1], sweep.grad_norm[2])

    lp_ref, r = bandit.wrong_mode_bandit()
    sweeps = [toy.sweep_lr(regime, lrs=(1.0, 8.0), steps=5, seeds=[0, 1, 2]) for regime in fig.REGIMES]
    fig.panel_lr(axes[2], sweeps)
    for regime in fig.REGIMES:
        labels = [toy.classify(bandit.train(regime, lp_ref, r, 5, 8, lr, [0, 1, 2], log_every=1)) for lr in (1.0, 8.0)]
        want = [np.isin(x, ["oscillating", "collapsed", "diverged"]).mean() for x in labels]
        np.testing.assert_allclose(style.series(axes[2])[style.label(regime)][1], want)

    fig.panel_alpha(axes[3], {"tempered, exact gradient": [toy.sweep_lr(Regime.tempered(a), lrs=(8.0,), steps=3,
                                                                        seeds=1, exact=True) for a in (0.5, 4.0)]}, 8.0)
    a, predicted = style.series(axes[3])["tempered: predicted unstable iff lr > lr_max(α)"]
    for alpha, y in zip(a[::10], predicted[::10]):
        pi = np.exp(alpha * lp_ref) / np.exp(alpha * lp_ref).sum()
        assert y == float(8.0 > 2 / np.linalg.eigvalsh(np.diag(pi) - np.outer(pi, pi)).max())
    assert predicted.min() == 0 and predicted.max() == 1


@pytest.mark.parametrize("module, name, n_panels", [
    ("length_bias", "fig_length_bias", 3),
    ("instability", "fig_instability", 4),
    ("theory_vs_simulation", "fig_theory_vs_simulation", 2),
])
def test_every_figure_runs_quick_with_labelled_axes(module, name, n_panels):
    import importlib

    import matplotlib.pyplot as plt

    axes = np.ravel(getattr(importlib.import_module(f"sharpening.figures.{module}"), name)(quick=True, seed=1))
    assert len(axes) == n_panels
    for ax in axes:
        assert ax.get_xlabel() and ax.get_ylabel() and style.series(ax)
        assert all(np.isfinite(y).any() for _, y in style.series(ax).values())
    assert style.figure_of(axes).legends  # one legend below the panels names regime and parameters
    plt.close(style.figure_of(axes))
