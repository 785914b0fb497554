"""Figure 1: where each regime converges, as alpha varies, on a base model whose mode is right or wrong.

Everything drawn is `sharpening.theory.fixed_point` over a small enumerable output space Y: the mass
sum_y pi*(y) r(y) on correct answers and the expected length sum_y pi*(y) T(y) at the fixed point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sharpening.figures import style
from sharpening.objective import TEMPERED_ALPHAS, TILTED_BETA_INVS, Regime
from sharpening.theory import fixed_point

# The paper's alphas, marked on a fine log-spaced sweep wide enough to show where beta_inv = 1e4 gives way.
ALPHA_SWEEP = np.unique(np.concatenate([TEMPERED_ALPHAS, np.geomspace(0.1, 1e5, 121)]))


@dataclass(frozen=True)
class BaseModel:
    """A reference model over an enumerable Y: log pi_ref(y), task reward r(y), length T(y) in tokens."""

    name: str
    lp_ref: np.ndarray  # [|Y|], normalized: logsumexp = 0
    r: np.ndarray  # [|Y|], 0/1
    lengths: np.ndarray  # [|Y|], tokens


def _base_model(name, responses) -> BaseModel:
    """responses: (probability, correct, length) triples."""
    p, r, T = (np.array(col, dtype=float) for col in zip(*responses))
    return BaseModel(name, np.log(p / p.sum()), r, T)


# Mode wrong (the paper's story): one short wrong answer is the single most likely response (0.30) while
# most of the mass (0.60) is spread over eight longer correct derivations (0.075 each).
MODE_WRONG = _base_model("mode wrong", [(0.30, 0, 3)] + [(0.075, 1, T) for T in range(6, 14)]
                         + [(0.10 / 3, 0, T) for T in (8, 10, 12)])
# Mode right: the single most likely response is a short correct one; correct mass is 0.50 in all.
MODE_RIGHT = _base_model("mode right", [(0.30, 1, 4)] + [(0.05, 1, T) for T in range(6, 10)]
                         + [(0.50 / 6, 0, T) for T in range(3, 9)])
BASE_MODELS = (MODE_RIGHT, MODE_WRONG)
ALPHA_LABEL = r"$\alpha$ (weight of log $\pi_{ref}$)"


def swept_regimes():
    """(label, regime builder alpha -> Regime) for each curve that varies with alpha."""
    curves = [(style.label(Regime.tempered(1.0), omit=("alpha",)), Regime.tempered)]
    for bi in TILTED_BETA_INVS:
        curves.append((style.label(Regime.tilted(1.0, bi), omit=("alpha",)), lambda a, bi=bi: Regime.tilted(a, bi)))
    curves.append(("optimization β⁻¹=0 (sharpening at α=1)", lambda a: Regime("optimization", a, 0.0)))
    curves.append(("optimization β⁻¹=1 (r + α·N)", lambda a: Regime("optimization", a, 1.0)))
    return curves


def fixed_point_stats(regime: Regime, model: BaseModel) -> tuple[float, float]:
    """(mass on correct answers, expected length in tokens) at the regime's fixed point."""
    pi = fixed_point(regime, model.lp_ref, model.r, model.lengths)
    return float(pi @ model.r), float(pi @ model.lengths)


def fig_fixed_points(axes=None, alphas=ALPHA_SWEEP, models=BASE_MODELS):
    """Rows: base models; columns: mass on correct answers and expected length vs alpha. Returns axes."""
    axes = style.axes(len(models), 2, squeeze=False) if axes is None else np.reshape(axes, (len(models), 2))
    alphas = np.asarray(alphas, dtype=float)
    marked = [i for i, a in enumerate(alphas) if np.isclose(a, TEMPERED_ALPHAS).any()]
    for model, (ax_mass, ax_len) in zip(models, axes):
        for name, make in swept_regimes():
            mass, length = np.array([fixed_point_stats(make(a), model) for a in alphas]).T
            kw = style.line(make(1.0), label=name, marker="o", markersize=3, markevery=marked)
            ax_mass.plot(alphas, mass, **kw)
            ax_len.plot(alphas, length, **kw)
        for regime in (Regime.task_reward(), None):  # alpha-free references: task-reward RL and pi_ref itself
            pi = fixed_point(regime, model.lp_ref, model.r) if regime else np.exp(model.lp_ref)
            kw = style.line(regime, linestyle=(0, (1, 1)) if regime else (0, (4, 2)), linewidth=1.2)
            ax_mass.plot(alphas[[0, -1]], [pi @ model.r] * 2, **kw)
            ax_len.plot(alphas[[0, -1]], [pi @ model.lengths] * 2, **kw)
        title = f"base model: {model.name}"
        style.decorate(ax_mass, ALPHA_LABEL, "mass on correct answers", title, "log", ylim=(-0.03, 1.03), legend=False)
        style.decorate(ax_len, ALPHA_LABEL, "expected length (tokens)", title, "log", legend=False)
    return style.figure_legend(axes, ncol=4)
