"""The LLM figures and the results table draw what the run files say.

Plotted series are read back from the Axes (style.series) and compared with numbers computed here straight from
the JSON / JSONL / YAML files with plain loops (json, yaml, statistics), never through the loader under test.
The committed results (results/cpu, written by `make cpu-grid`) are the data; a few hand-made runs cover the
instability labels and a GPU run dropped in beside them.
"""

import json
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
import yaml

from sharpening.figures import llm, style
from sharpening.figures.llm_runs import load_results, moving_average, results_markdown, stability
from sharpening.objective import Regime

RESULTS = Path(__file__).resolve().parents[1] / "results" / "cpu"


def run_folders(root=RESULTS):
    """{run folder: (config, metrics rows, eval dict or None)} read with json and yaml only."""
    found = {}
    for config in sorted(Path(root).rglob("config.yaml")):
        metrics = [json.loads(line) for line in (config.parent / "metrics.jsonl").read_text().splitlines() if line]
        ev = config.parent / "eval.json"
        found[config.parent] = (yaml.safe_load(config.read_text()), metrics, json.loads(ev.read_text()) if ev.exists() else None)
    return found


# The regime fields a config written before the label-free signals existed leaves out, at their defaults.
REGIME_DEFAULTS = {"reward": "task", "likelihood": "ref", "p": 0.5}


def condition_key(cfg):
    regime = {**REGIME_DEFAULTS, **cfg["regime"]} if isinstance(cfg["regime"], dict) else cfg["regime"]
    return (json.dumps(regime, sort_keys=True), bool(cfg.get("ignore_eos")), float(cfg["lr"]))


def is_paper_regime(cfg):
    """The paper's regimes (task reward, sharpening, tempered, tilted) as the config records them: the task reward
    and pi_ref's likelihood, not a label-free signal."""
    regime = cfg["regime"] if isinstance(cfg["regime"], dict) else {}
    return regime.get("reward", "task") == "task" and regime.get("likelihood", "ref") == "ref"


def main_lr(folders):
    """The learning rate most runs use (None without runs)."""
    lrs = [float(cfg["lr"]) for cfg, _, _ in folders.values()]
    return statistics.mode(lrs) if lrs else None


needs_results = pytest.mark.skipif(not (RESULTS / "base" / "eval.json").exists(), reason="no committed results/cpu")


# --- instability labels on hand-made runs -------------------------------------------------------------------


def write_run(folder, regime, steps, seed=1, lr=2e-5, model="smollm2", ignore_eos=False, eval_pass=None,
              problems=None):
    """A run folder: config.yaml and metrics.jsonl from per-step dicts (missing keys get harmless values); with
    eval_pass an eval.json, holding `problems` ({id: correct of 4}) when given."""
    folder.mkdir(parents=True)
    cfg = {"run_name": folder.name, "model": model, "regime": regime, "seed": seed, "lr": lr, "ignore_eos": ignore_eos,
           "prompts_per_step": 4, "group_size": 8}
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = [{"step": i + 1, "entropy": 1.0, "reward/task": 0.3, "reward/shaped_std": 1.0, "skipped": 0,
             "length/mean": 20.0, **m} for i, m in enumerate(steps)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if eval_pass is not None:
        (folder / "eval.json").write_text(json.dumps({
            "run": folder.name, "regime": Regime.preset(regime).to_dict() if isinstance(regime, str) else regime,
            "model": model, "n": 4, "step": len(steps), "datasets": {"d": {
                "num_problems": 2, "pass@k": {"1": eval_pass, "4": min(1, 2 * eval_pass)},
                "maj@k": {"1": eval_pass, "4": eval_pass}, "mean_length": 10.0,
                "problems": [{"id": i, "correct": c, "n": 4} for i, c in (problems or {}).items()]}}}))
    return folder


def write_base(folder, temperature, problems, model="smollm2"):
    """A base-model eval.json (regime null) at a token temperature, with {id: correct of 4}."""
    folder.mkdir(parents=True)
    share = sum(problems.values()) / (4 * len(problems))
    (folder / "eval.json").write_text(json.dumps({
        "run": folder.name, "regime": None, "model": model, "n": 4, "step": None, "temperature": temperature,
        "datasets": {"d": {"pass@k": {"1": share}, "maj@k": {"1": share}, "mean_length": 10.0,
                           "problems": [{"id": i, "correct": c, "n": 4} for i, c in problems.items()]}}}))


def test_moving_average_is_the_trailing_mean():
    x = [3.0, 1.0, 4.0, 1.0, 5.0]
    assert moving_average(x).tolist() == pytest.approx([3.0, 2.0, 8 / 3, 2.0, 10 / 3])


@pytest.mark.parametrize("R, extra, label", [
    ([-40, -30, -20, -12, -8, -6, -5, -5, -4, -4], {}, "stable"),  # climbs and stays
    ([-40, -30, -20, -12, -8, -20, -35, -38, -39, -40], {}, "oscillating"),  # climbs, gives it all back
    ([-40, -39.9, -40, -39.9, -40, -39.9, -40, -39.9, -40, -39.9], {}, "stable"),  # drops within the noise
    ([-40, -30, -20, -12, -8, -6, -5, -5, -4, -4], {"entropy": 0.01}, "collapsed"),  # one wrong response
    ([-40, -30, -20, -12, -8, -6, -5, -5, -4, -4], {"entropy": 0.01, "reward/task": 0.9}, "stable"),  # one right one
    ([-40, -30, -20, -12, -8, -6, -5, -5, -4, -4], {"skipped": 1}, "diverged"),
])
def test_stability_labels(tmp_path, R, extra, label):
    steps = [{"reward/shaped_mean": v, **(extra if i >= 7 or "skipped" not in extra else {})} for i, v in enumerate(R)]
    run = load_results(write_run(tmp_path / "r", "sharpening", steps).parent).runs[0]
    assert stability(run) == label


def test_stability_judges_only_the_first_ten_steps(tmp_path):
    R = [-40, -30, -20, -12, -8, -6, -5, -5, -4, -4] + [-40] * 10  # falls back after step 10
    run = load_results(write_run(tmp_path / "r", "sharpening", [{"reward/shaped_mean": v} for v in R]).parent).runs[0]
    assert stability(run) == "stable" and stability(run, window=20) == "oscillating"


def test_a_gpu_run_dropped_in_is_drawn_next_to_the_cpu_runs(tmp_path):
    for seed in (1, 2):
        write_run(tmp_path / "cpu" / f"s{seed}", "sharpening", [{"reward/shaped_mean": -9.0 + seed}] * 3, seed=seed,
                  eval_pass=0.2 * seed)
    write_run(tmp_path / "gpu" / "anything", "task_reward", [{"reward/shaped_mean": 0.5}] * 4, model="qwen", lr=1e-6,
              eval_pass=0.7)
    results = load_results(tmp_path)
    assert results.models() == ["qwen", "smollm2"]
    axes = llm.fig_llm_training_curves(results)
    assert axes.shape == (2, len(llm.CURVES))
    drawn = style.series(axes[1, 1])["sharpening"]  # smollm2's shaped reward: the median of -8 and -7
    np.testing.assert_allclose(drawn[1], [-7.5] * 3)
    np.testing.assert_allclose(style.series(axes[0, 0])["task reward"][1], [0.3] * 4)
    pass_k = llm.fig_llm_pass_at_k(results)
    assert pass_k.shape == (2, 2)
    np.testing.assert_allclose(style.series(pass_k[1, 0])["sharpening"][1], [0.3, 0.6])  # means over seeds, k=1, 4


def test_signals_figure_draws_the_signals_beside_task_reward_and_sharpening_and_nothing_else(tmp_path):
    rows = [{"reward/shaped_mean": 0.0, "reward/task": r} for r in (0.1, 0.3, 0.5)]
    write_run(tmp_path / "tr", "task_reward", rows, eval_pass=0.6)
    for seed, p in ((1, 0.2), (2, 0.4)):
        write_run(tmp_path / f"mv{seed}", "majority_vote", [{**r, "reward/task": r["reward/task"] * seed} for r in rows],
                  seed=seed, eval_pass=p)
    write_run(tmp_path / "tempered", {"preset": "tempered", "alpha": 4}, rows, eval_pass=0.9)  # not a signal
    write_run(tmp_path / "tr_fixed", "task_reward", rows, ignore_eos=True, eval_pass=0.8)  # EOS ignored: not drawn
    axes = llm.fig_llm_signals(load_results(tmp_path))
    curves = style.series(axes[0, 0])
    assert set(curves) == {"task reward", "majority vote"}
    np.testing.assert_allclose(curves["majority vote"][1], [0.15, 0.45, 0.75])  # median of seeds 1 and 2
    bars = [p.get_height() for p in axes[0, 1].patches]
    assert bars == pytest.approx([0.6, 0.3])  # pass@1: task reward, then the mean of majority vote's two seeds
    assert [p.get_height() for p in axes[0, 2].patches] == pytest.approx([0.6, 0.3])  # maj@4 = eval_pass here
    with pytest.raises(llm.NoData):
        llm.fig_llm_signals(load_results(tmp_path / "tr"))


# --- the committed results ----------------------------------------------------------------------------------


@needs_results
def test_step0_variance_panel_plots_the_variances_of_the_committed_samples():
    step0 = json.loads((RESULTS / "step0" / "step0.json").read_text())
    ax = llm.panel_step0_variance(style.axes(), step0)
    drawn = style.series(ax)
    L, var = drawn["sharpening R = lp_ref, EOS ignored"]
    assert L.tolist() == list(range(1, step0["max_length"] + 1))
    for T in (1, 2, 8, 32, step0["max_length"]):  # per prompt: population variance of the first T log-probs' sums
        per_prompt = [statistics.pvariance([sum(tokens[:T]) for tokens in p["fixed_length_lp_ref_tok"]])
                      for p in step0["prompts"]]
        assert var[T - 1] == pytest.approx(statistics.fmean(per_prompt), rel=1e-9)
        indep = [sum(statistics.pvariance([tokens[t] for tokens in p["fixed_length_lp_ref_tok"]]) for t in range(T))
                 for p in step0["prompts"]]
        assert drawn["Σ_t Var[log π_ref(y_t)] (tokens uncorrelated)"][1][T - 1] == pytest.approx(statistics.fmean(indep))
    p = [statistics.fmean(q["r"]) for q in step0["prompts"]]
    task = statistics.fmean(x * (1 - x) for x in p)
    assert drawn[f"task reward p(1-p) = {task:.3f}"][1] == pytest.approx([task] * len(L))
    (_, eos), = [v for k, v in drawn.items() if k.startswith("sharpening, stopped at EOS")]
    assert eos[0] == pytest.approx(statistics.fmean(statistics.pvariance(q["lp_ref"]) for q in step0["prompts"]))
    assert var[-1] > 100 * task  # the claim: the sharpening reward is far noisier than the task reward


@needs_results
def test_pass_at_k_figure_plots_the_base_model_and_the_mean_over_seeds():
    folders = run_folders()
    base = json.loads((RESULTS / "base" / "eval.json").read_text())
    axes = llm.fig_llm_pass_at_k(load_results(RESULTS))
    (name, scores), = base["datasets"].items()
    for ax, metric in zip(axes[0], ("pass@k", "maj@k")):
        drawn = style.series(ax)
        assert drawn["base model π_ref"][0].tolist() == [int(k) for k in scores[metric]]
        assert drawn["base model π_ref"][1].tolist() == list(scores[metric].values())
        lr = main_lr(folders)
        groups = {}
        for cfg, _, ev in folders.values():
            if ev is not None and float(cfg["lr"]) == lr and is_paper_regime(cfg):
                groups.setdefault(condition_key(cfg), []).append(ev["datasets"][name][metric])
        assert len(drawn) == 1 + len(list(RESULTS.glob("base_temperature*"))) + len(groups)
        for tables in groups.values():  # some plotted line is the mean over this condition's seeds
            mean = [statistics.fmean(t[k] for t in tables) for k in tables[0]]
            assert any(np.allclose(y, mean, rtol=1e-12) for _, y in drawn.values())


@needs_results
def test_training_curves_plot_the_median_and_range_over_seeds_of_the_committed_runs():
    folders = run_folders()
    lr = main_lr(folders)
    axes = llm.fig_llm_training_curves(load_results(RESULTS))
    groups = {}
    for cfg, metrics, _ in folders.values():
        if float(cfg["lr"]) == lr and not cfg.get("ignore_eos") and is_paper_regime(cfg):
            groups.setdefault(condition_key(cfg), []).append(metrics)
    for ax, (key, _) in zip(axes[0], llm.CURVES):
        lines = [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]
        bands = ax.collections  # one fill_between per line, in the same order
        drawn = [(np.asarray(ln.get_xdata()), np.asarray(ln.get_ydata()), band) for ln, band in zip(lines, bands)]
        want = []
        for runs in groups.values():
            steps = sorted(set.intersection(*({m["step"] for m in rows if m.get(key) is not None} for rows in runs)))
            if steps:
                values = [[next(m[key] for m in rows if m["step"] == s) for rows in runs] for s in steps]
                want.append((steps, [statistics.median(v) for v in values], [min(v) for v in values],
                             [max(v) for v in values]))
        assert len(drawn) == len(want)
        for steps, median, lo, hi in want:
            matches = [(x, y, band) for x, y, band in drawn if x.tolist() == steps and np.allclose(y, median)]
            assert matches, key
            path = matches[0][2].get_paths()[0].vertices  # the band's outline: the low edge, then the high edge
            assert path[:, 1].min() == pytest.approx(min(lo)) and path[:, 1].max() == pytest.approx(max(hi))


def write_modes(root, wrong, right, dataset="d"):
    """A frozen mode file (experiments/freeze_mode.py's format, the fields the split reads)."""
    (root / "modes").mkdir(parents=True)
    questions = [{"id": i, "mode_correct": 0} for i in wrong] + [{"id": i, "mode_correct": 1} for i in right]
    (root / "modes" / f"{dataset}.json").write_text(json.dumps({"dataset": dataset, "questions": questions}))


def test_mode_split_reads_the_frozen_mode_file_not_the_results(tmp_path):
    # The frozen file says the mode is wrong on c and d, right on a and b. A cold base evaluation that would say
    # otherwise (the pilot's post hoc stand-in) does not move the split.
    write_modes(tmp_path, wrong=["c", "d"], right=["a", "b"])
    write_base(tmp_path / "base", 1.0, {"a": 2, "b": 1, "c": 1, "d": 0})
    write_base(tmp_path / "base_t0.25", 0.25, {"a": 0, "b": 0, "c": 4, "d": 4})
    for seed, problems in [(1, {"a": 4, "b": 4, "c": 0, "d": 1}), (2, {"a": 2, "b": 4, "c": 2, "d": 3})]:
        write_run(tmp_path / f"s{seed}", "sharpening", [{"reward/shaped_mean": -5}], seed=seed, eval_pass=0.5,
                  problems=problems)
    text = results_markdown(load_results(tmp_path))
    assert "| condition | seeds | pass@1 where the mode is wrong (2 questions) | pass@1 where the mode is right (2 questions) |" in text
    assert "| base model π_ref | – | 0.125 [" in text  # wrong: (1 + 0) / 8
    assert "| π_ref, token temperature 0.25 | – | 1.000 [1.000, 1.000] | 0.000 [0.000, 0.000] |" in text
    # seed 1: wrong (0 + 1) / 8 = 0.125, right 1.0; seed 2: wrong 5 / 8 = 0.625, right 6 / 8 = 0.75: means 0.375, 0.875
    row = next(line for line in text.splitlines() if line.startswith("| sharpening | 2 | 0.375 ["))
    lo, hi = (float(x) for x in row.split("|")[3].split("[")[1].rstrip("] ").split(","))
    assert 0.0 <= lo < 0.375 < hi <= 0.75  # a CI around the mean, inside what resampling seeds x questions can give


def test_a_table_never_mixes_experiments(tmp_path):
    # A base evaluation of another task (or budget) is not the base row of this task's table.
    write_base(tmp_path / "base", 1.0, {"a": 2, "b": 1})
    write_run(tmp_path / "s1", "sharpening", [{"reward/shaped_mean": -5}], eval_pass=0.5, problems={"a": 4, "b": 0})
    other = tmp_path / "other"
    write_base(other, 0.25, {"x": 4})
    data = json.loads((other / "eval.json").read_text())
    data["datasets"] = {"synthetic:add": data["datasets"]["d"]}
    (other / "eval.json").write_text(json.dumps(data))
    text = results_markdown(load_results(tmp_path))
    sections = text.split("\n## ")[1:]
    assert len(sections) == 2
    mine = next(s for s in sections if s.startswith("smollm2 · d "))
    assert "token temperature 0.25" not in mine and "| base model π_ref | – | 0.375 [" in mine
    assert "| sharpening | 1 |" not in next(s for s in sections if s.startswith("smollm2 · synthetic:add "))


@needs_results
def test_results_markdown_holds_the_mean_over_seeds_of_every_evaluated_condition():
    folders = run_folders()
    text = results_markdown(load_results(RESULTS))
    base = json.loads((RESULTS / "base" / "eval.json").read_text())
    scores = next(iter(base["datasets"].values()))
    assert f"| base model π_ref | – | {scores['pass@k']['1']:.3f} [" in text
    lr = main_lr(folders)
    groups = {}
    for cfg, _, ev in folders.values():
        if ev is not None and float(cfg["lr"]) == lr:
            groups.setdefault(condition_key(cfg), []).append(next(iter(ev["datasets"].values()))["pass@k"]["1"])
    table = text.split("### ")[0]  # the main table; the mode split follows
    rows = [line for line in table.splitlines() if line.startswith("| ") and "seeds" not in line]
    assert len(rows) == len(groups) + 1 + len(list(RESULTS.glob("base_temperature*")))
    for values in groups.values():
        # every seed holds the same questions: the grand mean over seeds x questions is the mean of the seeds' pass@1
        assert any(f"| {len(values)} | {statistics.fmean(values):.3f} [" in row for row in rows)


@needs_results
@pytest.mark.slow
def test_make_figures_draws_theory_toy_and_llm_figures_from_the_committed_results(tmp_path, monkeypatch, capsys):
    from sharpening.cli import main

    monkeypatch.chdir(RESULTS.parents[1])  # a fresh clone's root: results/ is found there, no --runs given
    assert main(["figures", "--out", str(tmp_path), "--quick"]) == 0
    pngs = sorted(p.stem for p in tmp_path.glob("*.png"))
    assert len(pngs) >= 8, capsys.readouterr().out
    assert {"fixed_points", "training_curves", "llm_training_curves", "llm_pass_at_k", "llm_instability",
            "llm_results"} <= set(pngs)
    table = (tmp_path / "llm_results.md").read_text()
    assert "| base model π_ref |" in table
    index = (tmp_path / "README.md").read_text()
    assert "![llm_pass_at_k](llm_pass_at_k.png)" in index and "Claims 4, 6 of the README's claims table" in index


def test_step0_variance_splits_into_answer_and_after_answer_tokens():
    # Two prompts x 3 responses of 4 tokens; the box closes after 2, 1, 3 tokens (prompt 1) and 4, 4, 4 (prompt 2).
    tok1 = [[-1.0, -2.0, -3.0, -4.0], [-0.5, -0.5, -1.0, -1.0], [-2.0, -1.0, -1.0, -0.5]]
    tok2 = [[-1.0, -1.0, -1.0, -1.0], [-2.0, -2.0, -2.0, -2.0], [-3.0, -3.0, -3.0, -3.0]]
    step0 = {"max_length": 4, "prompts": [
        {"fixed_length_lp_ref_tok": tok1, "fixed_length_answer_end": [2, 1, 3], "r": [0, 1, 0], "length": [3, 3, 3],
         "lp_ref": [-3.0, -1.0, -4.0]},
        {"fixed_length_lp_ref_tok": tok2, "fixed_length_answer_end": [4, 4, 4], "r": [1, 1, 1], "length": [4, 4, 4],
         "lp_ref": [-4.0, -8.0, -12.0]}]}
    # prompt 1: answer sums -3, -0.5, -4 and after sums -7, -2.5, -0.5; prompt 2: answer -4, -8, -12, after 0, 0, 0
    def var(x):
        m = sum(x) / len(x)
        return sum((v - m) ** 2 for v in x) / len(x)

    def cov(x, y):
        mx, my = sum(x) / len(x), sum(y) / len(y)
        return sum((a - mx) * (b - my) for a, b in zip(x, y)) / len(x)

    v = llm.step0_variances(step0)
    assert v["answer"] == pytest.approx((var([-3, -0.5, -4]) + var([-4, -8, -12])) / 2)
    assert v["after"] == pytest.approx((var([-7, -2.5, -0.5]) + 0.0) / 2)
    assert v["cov"] == pytest.approx((cov([-3, -0.5, -4], [-7, -2.5, -0.5]) + 0.0) / 2)
    assert v["answer"] + v["after"] + 2 * v["cov"] == pytest.approx(v["lp_ref"][-1])  # the parts add up


def test_claim_1_is_scored_on_the_frozen_mode_wrong_questions_with_its_verdict(tmp_path):
    from sharpening.figures.claims import COMPARISONS, compare
    from sharpening.figures.llm_runs import Experiment

    write_modes(tmp_path, wrong=["c", "d"], right=["a", "b"])
    write_base(tmp_path / "base", 1.0, {"a": 2, "b": 1, "c": 1, "d": 0})
    for seed in (1, 2):  # task reward: right everywhere; sharpening: right only where the mode is right
        write_run(tmp_path / f"t{seed}", "task_reward", [{}], seed=seed, eval_pass=1.0,
                  problems={"a": 4, "b": 4, "c": 4, "d": 4})
        write_run(tmp_path / f"s{seed}", "sharpening", [{}], seed=seed, eval_pass=0.5,
                  problems={"a": 4, "b": 4, "c": 0, "d": 0})
    results = load_results(tmp_path)
    claim1 = next(c for c in COMPARISONS if c.claim == "1")
    out = compare(results, Experiment("smollm2", "d", 0), claim1)
    # on c and d every seed scores 1.0 (task reward) vs 0.0 (sharpening): the difference is 1 in every resample
    assert (out["estimate"].value, out["estimate"].lo, out["estimate"].hi) == (1.0, 1.0, 1.0)
    assert out["verdict"] == "confirmed" and out["questions"] == 2
    claim5 = next(c for c in COMPARISONS if c.claim == "5")  # no tilted or tempered runs: reported, not dropped
    assert compare(results, Experiment("smollm2", "d", 0), claim5)["note"] == "not run"


def test_claim_2a_compares_per_question_lengths_from_the_records(tmp_path):
    from sharpening.figures.claims import COMPARISONS, compare
    from sharpening.figures.llm_runs import Experiment

    def add_records(folder, lengths):  # per-sample records: 4 samples per question, all of one length
        path = folder / "eval.json"
        data = json.loads(path.read_text())
        for p in data["datasets"]["d"]["problems"]:
            p["samples"] = [{"length": lengths[p["id"]], "correct": 0} for _ in range(4)]
        path.write_text(json.dumps(data))

    for seed in (1, 2):
        add_records(write_run(tmp_path / f"t{seed}", "task_reward", [{}], seed=seed, eval_pass=0.5,
                              problems={"a": 2, "b": 2}), {"a": 30, "b": 20})
        add_records(write_run(tmp_path / f"s{seed}", "sharpening", [{}], seed=seed, eval_pass=0.5,
                              problems={"a": 2, "b": 2}), {"a": 10, "b": 12})
    claim = next(c for c in COMPARISONS if c.claim == "2a")
    out = compare(load_results(tmp_path), Experiment("smollm2", "d", 0), claim)
    # per-question differences -20 (a) and -8 (b), the same in every seed: the mean is -14 and a resample of the
    # two questions can only give -20, -14 or -8
    assert out["estimate"].value == pytest.approx(-14.0) and out["questions"] == 2
    assert -20.0 <= out["estimate"].lo <= out["estimate"].hi <= -8.0 and out["verdict"] == "confirmed"
