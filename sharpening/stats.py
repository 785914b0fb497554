"""Confidence intervals for the evidence: a hierarchical bootstrap over seeds and questions.

An LLM arm's result is a matrix y[s, q]: a per-question score (e.g. pass@1 from the question's n samples) of
seed s on held-out question q. Its point estimate is the grand mean. Two sources of chance move it: which
seeds ran (training is chaotic: one seed's pass@1 differs from another's by ~0.1) and which questions were
drawn. The bootstrap resamples both, with replacement:

    seeds:     s*_1..s*_S  drawn from the arm's own S seeds      (arms never share seeds)
    questions: q*_1..q*_Q  drawn once per replicate, shared by every arm  (arms share questions: paired)
    stat*    = sum_a w_a * mean_{s in s*_a, q in q*} y_a[s, q]

so a difference between two arms evaluated on the same questions is paired by question: a hard question
drawn twice counts twice in both arms. For an additive y[s, q] = a_s + b_q the bootstrap variance of one
arm's mean is exactly var(a)/S + var(b)/Q (variances with divisor S and Q), the plug-in estimate of the
sampling variance sigma_a^2/S + sigma_b^2/Q (tests/test_stats.py checks both).

One function, `bootstrap`, computes any linear contrast; `mean_ci` and `difference_ci` name the two contrasts
every table and figure uses, and `verdict` turns a difference's CI into the pre-registered verdict
(docs/preregistration.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_BOOT = 10_000
LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap standard error and percentile CI at `level`."""

    value: float
    se: float
    lo: float
    hi: float
    level: float = LEVEL

    def __str__(self) -> str:
        return f"{self.value:+.3f} [{self.lo:+.3f}, {self.hi:+.3f}]"

    def plain(self, digits: int = 3) -> str:
        """'0.521 [0.470, 0.569]' (no sign: for means)."""
        return f"{self.value:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"

    def to_dict(self) -> dict:
        return {"value": self.value, "se": self.se, "lo": self.lo, "hi": self.hi, "level": self.level}


def _matrix(y, name: str) -> np.ndarray:
    y = np.asarray(y, dtype=float)
    if y.ndim != 2 or min(y.shape) < 1:
        raise ValueError(f"{name}: a [seeds, questions] matrix is needed, got shape {y.shape}")
    if not np.isfinite(y).all():
        raise ValueError(f"{name}: holds non-finite scores; drop or impute them before bootstrapping")
    return y


def bootstrap(arms, weights, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> Estimate:
    """sum_a weights[a] * mean(arms[a]) with its hierarchical-bootstrap s.e. and percentile CI.

    arms: matrices y_a[s, q], every one over the same Q questions in the same order (its own number of seeds).
    Each replicate draws the questions once for all arms and each arm's seeds on their own (module docstring).
    """
    arms = [_matrix(y, f"arm {i}") for i, y in enumerate(arms)]
    weights = np.asarray(weights, dtype=float)
    if len(arms) != len(weights) or not arms:
        raise ValueError(f"{len(arms)} arms but {len(weights)} weights: give one weight per arm")
    Q = arms[0].shape[1]
    if any(y.shape[1] != Q for y in arms):
        raise ValueError(f"arms cover different numbers of questions {[y.shape[1] for y in arms]}: pair them first")
    rng = np.random.default_rng(seed)
    cq = rng.multinomial(Q, np.full(Q, 1.0 / Q), size=n_boot) / Q  # [B, Q]: weight of each question
    stat = np.zeros(n_boot)
    for w, y in zip(weights, arms):
        S = y.shape[0]
        cs = rng.multinomial(S, np.full(S, 1.0 / S), size=n_boot) / S  # [B, S]: weight of each seed
        stat += w * np.einsum("bs,sq,bq->b", cs, y, cq)  # mean over the resampled seeds x questions
    value = float(sum(w * y.mean() for w, y in zip(weights, arms)))
    tail = (1.0 - level) / 2
    lo, hi = np.quantile(stat, [tail, 1.0 - tail])
    return Estimate(value, float(stat.std(ddof=1)), float(lo), float(hi), level)


def mean_ci(y, **kw) -> Estimate:
    """One arm's grand mean over seeds and questions, with its CI."""
    return bootstrap([y], [1.0], **kw)


def difference_ci(a, b, **kw) -> Estimate:
    """mean(a) - mean(b) for two arms on the same questions (paired by question, seeds independent)."""
    return bootstrap([a, b], [1.0, -1.0], **kw)


CONFIRMED, CONTRADICTED, UNRESOLVED = "confirmed", "contradicted", "not resolved"


def verdict(diff: Estimate, predicted_sign: int = +1) -> str:
    """The pre-registered rule: confirmed when the whole CI lies on the predicted side of 0, contradicted when it
    lies wholly on the other side, otherwise not resolved."""
    if predicted_sign not in (+1, -1):
        raise ValueError(f"predicted_sign={predicted_sign!r} must be +1 or -1")
    lo, hi = predicted_sign * diff.lo, predicted_sign * diff.hi
    lo, hi = min(lo, hi), max(lo, hi)
    if lo > 0:
        return CONFIRMED
    if hi < 0:
        return CONTRADICTED
    return UNRESOLVED
