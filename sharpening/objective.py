"""The unified KL-regularized RL objective: the single source of truth for every regime.

For a prompt x and a response y = (y_1..y_T):

    r(x, y)   task reward, 1 if the final answer is verified correct, else 0
    lp_ref(y) = sum_t log pi_ref(y_t | x, y_<t)      frozen initial model
    lp_old(y) = sum_t log pi_old(y_t | x, y_<t)      policy at sampling time, no gradient
    N(lp_ref) = lp_ref | lp_ref / T | lp_ref / T**w | 0     (sum | mean | weighted_mean | none)

A regime is (mode, alpha, beta_inv, normalization); its per-sequence reward R is

    mode          beta_inv = 0                        beta_inv > 0
    none          r                                   r
    optimization  alpha * N                           r + (alpha / beta_inv) * N
    sampling      (alpha - 1) * N + lp_ref - lp_old   r + ((alpha - 1) / beta_inv) * N + (lp_ref - lp_old) / beta_inv

The estimator: G samples per prompt, leave-one-out baseline A_i = R_i - mean_{j != i} R_j, and the
REINFORCE surrogate -A_i * log pi_theta(y_i) averaged over every response token of the batch, with an
optional truncated importance weight min(pi_theta / pi_engine, cap) per token.

Everything here works on numpy arrays and torch tensors alike (same type out as in), and holds no model
code: the toy simulations and the LLM trainer both import it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

MODES = ("none", "optimization", "sampling")
NORMALIZATIONS = ("sum", "mean", "weighted_mean", "none")
TEMPERED_ALPHAS = (0.5, 1.0, 1.25, 2.0, 4.0)
TILTED_BETA_INVS = (100.0, 1e4)


def _is_real(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


@dataclass(frozen=True)
class Regime:
    """One point of the objective family: (mode, alpha, beta_inv, normalization, weight).

    mode:          "none" (task reward only), "optimization" (maximize the reward) or "sampling"
                   (maximize reward + entropy, whose optimum is a distribution).
    alpha:         exponent on the reference likelihood, alpha >= 0 (1 = sharpening, 0 = task reward only).
    beta_inv:      1/beta, weight of the task reward against the likelihood terms, beta_inv >= 0.
    normalization: how lp_ref enters: "sum", "mean" (/T), "weighted_mean" (/T**weight) or "none" (0).
    weight:        w of the weighted mean, w >= 0 (only used by "weighted_mean").
    """

    mode: str
    alpha: float = 1.0
    beta_inv: float = 0.0
    normalization: str = "sum"
    weight: float = 1.0

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"Regime.mode={self.mode!r} is not one of {MODES}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"Regime.normalization={self.normalization!r} is not one of {NORMALIZATIONS}")
        for name in ("alpha", "beta_inv", "weight"):
            value = getattr(self, name)
            if not _is_real(value) or not math.isfinite(value) or value < 0:
                raise ValueError(f"Regime.{name}={value!r} must be a finite real number >= 0")
            object.__setattr__(self, name, float(value))
        if self.mode == "optimization" and self.beta_inv == 0 and (self.alpha == 0 or self.normalization == "none"):
            raise ValueError(
                f"Regime(mode='optimization', alpha={self.alpha:g}, beta_inv=0, normalization={self.normalization!r}) "
                "has reward R = 0 for every response; use alpha > 0 with a normalization other than 'none' "
                "(sharpening) or beta_inv > 0 (task reward)"
            )

    # The paper's named presets.
    @classmethod
    def task_reward(cls) -> "Regime":
        """Task-reward RL: R = r."""
        return cls("optimization", alpha=0.0, beta_inv=1.0)

    @classmethod
    def sharpening(cls, normalization: str = "sum") -> "Regime":
        """Distribution sharpening: R = N(lp_ref), the base model's own log-likelihood."""
        return cls("optimization", alpha=1.0, beta_inv=0.0, normalization=normalization)

    @classmethod
    def tempered(cls, alpha: float) -> "Regime":
        """Power-distribution sampling: pi* proportional to pi_ref**alpha."""
        return cls("sampling", alpha=alpha, beta_inv=0.0)

    @classmethod
    def tilted(cls, alpha: float, beta_inv: float) -> "Regime":
        """Power distribution tilted by the task reward: pi* proportional to pi_ref**alpha * exp(beta_inv * r)."""
        if beta_inv <= 0:
            raise ValueError(f"Regime.tilted needs beta_inv > 0, got beta_inv={beta_inv!r}")
        return cls("sampling", alpha=alpha, beta_inv=beta_inv)

    @classmethod
    def preset(cls, name: str, **params) -> "Regime":
        """Build a preset by name: task_reward, sharpening, tempered(alpha), tilted(alpha, beta_inv)."""
        builders = {"task_reward": cls.task_reward, "sharpening": cls.sharpening,
                    "tempered": cls.tempered, "tilted": cls.tilted}
        if name not in builders:
            raise ValueError(f"unknown regime preset {name!r}; choose one of {sorted(builders)}")
        return builders[name](**params)

    @property
    def needs_lp_ref(self) -> bool:
        """Whether R depends on lp_ref (the trainer can skip the reference forward pass otherwise)."""
        if self.mode == "sampling":
            return True
        return self.mode == "optimization" and self.alpha > 0 and self.normalization != "none"

    @property
    def needs_lp_old(self) -> bool:
        """Whether R depends on lp_old (the self-referential entropy term of the sampling mode)."""
        return self.mode == "sampling"

    @property
    def name(self) -> str:
        """A short label, e.g. 'sampling a=2 b=100 sum'."""
        if self == Regime.task_reward():
            return "task reward"
        if self == Regime.sharpening():
            return "sharpening"
        return f"{self.mode} a={self.alpha:g} b={self.beta_inv:g} {self.normalization}"

    def to_dict(self) -> dict:
        return asdict(self)


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def normalize(regime: Regime, lp_ref, lengths=None):
    """N(lp_ref): sum -> lp_ref, mean -> lp_ref / T, weighted_mean -> lp_ref / T**w, none -> 0."""
    if regime.normalization == "sum":
        return lp_ref
    if regime.normalization == "none":
        return _zeros_like(lp_ref)  # not lp_ref * 0: a -inf log-prob would give NaN
    if lengths is None:
        raise ValueError(f"normalization={regime.normalization!r} needs the response lengths T")
    if (lengths <= 0).any():
        raise ValueError("normalization by length needs every response length T >= 1")
    exponent = 1.0 if regime.normalization == "mean" else regime.weight
    return lp_ref / lengths**exponent


def _zeros_like(x):
    return x.new_zeros(x.shape) if _is_torch(x) else np.zeros_like(np.asarray(x, dtype=float))


def sequence_sums(logp_tok, mask=None):
    """Per-token log-probs [..., T] (and a 0/1 mask) -> per-sequence sums [...] and lengths T [...]."""
    if _is_torch(logp_tok):
        import torch

        mask = torch.ones_like(logp_tok) if mask is None else mask.to(logp_tok.dtype)
        return logp_tok.masked_fill(mask == 0, 0.0).sum(-1), mask.sum(-1)
    logp_tok = np.asarray(logp_tok, dtype=float)
    mask = np.ones_like(logp_tok) if mask is None else np.asarray(mask, dtype=float)
    # where, not multiply: a padded position may hold -inf, and -inf * 0 is NaN
    return np.where(mask > 0, logp_tok, 0.0).sum(-1), mask.sum(-1)


def shaped_reward(regime: Regime, task_reward, lp_ref=None, lp_old=None, lengths=None, mask=None):
    """Per-sequence reward R of the regime (the table in this module's docstring).

    task_reward: r, shape [...]. lp_ref, lp_old: either per-sequence sums with the shape of r, or per-token
    log-probs [..., T] with an optional 0/1 mask [..., T] (then the sums and T come from the mask).
    lengths: T per sequence, needed for mean / weighted_mean normalization of per-sequence sums.
    numpy in -> numpy out, torch in -> torch out.
    """
    r = task_reward
    if not regime.needs_lp_ref:  # mode none, or optimization whose N term vanishes: R = r
        return r * 1.0
    lp_ref, lengths = _as_sequence(lp_ref, r, lengths, mask, "lp_ref")
    if regime.mode == "optimization":
        N = normalize(regime, lp_ref, lengths)
        if regime.beta_inv == 0:
            return regime.alpha * N
        return r + (regime.alpha / regime.beta_inv) * N
    lp_old, _ = _as_sequence(lp_old, r, lengths, mask, "lp_old")
    N = normalize(regime, lp_ref, lengths)
    if regime.beta_inv == 0:
        return (regime.alpha - 1) * N + lp_ref - lp_old
    return r + ((regime.alpha - 1) / regime.beta_inv) * N + (lp_ref - lp_old) / regime.beta_inv


def _as_sequence(lp, r, lengths, mask, name):
    """Reduce per-token log-probs to per-sequence sums; pass per-sequence sums through."""
    if lp is None:
        raise ValueError(f"this regime needs {name}")
    if lp.ndim == r.ndim + 1:
        lp, token_lengths = sequence_sums(lp, mask)
        lengths = token_lengths if lengths is None else lengths
    elif lp.shape != r.shape:
        raise ValueError(f"{name} has shape {tuple(lp.shape)}; expected {tuple(r.shape)} (sums) "
                         f"or {tuple(r.shape)} + (T,) (per token)")
    return lp, lengths


def rloo_advantages(rewards):
    """A_i = R_i - mean_{j != i} R_j within each prompt. rewards: [n_prompts, G] -> same shape."""
    G = rewards.shape[-1]
    if G < 2:
        raise ValueError(f"leave-one-out advantages need G >= 2 samples per prompt, got G={G}")
    total = rewards.sum(-1)[..., None]
    return rewards - (total - rewards) / (G - 1)


def truncated_is_weight(logp_train, logp_engine, cap: float = 20.0):
    """Per-token min(pi_theta / pi_engine, cap), no gradient: corrects sampling by another engine."""
    import torch

    with torch.no_grad():
        return torch.exp(logp_train - logp_engine).clamp(max=cap)


def pg_loss(logp_tok, advantages, mask, logp_engine=None, is_cap: float = 20.0):
    """Token-mean REINFORCE surrogate: -sum_{i,t} w_it * A_i * log pi_theta(y_it) / (number of tokens).

    logp_tok: log pi_theta of the sampled tokens [B, T] (with grad); advantages: A [B] (no grad);
    mask: 1 on response tokens [B, T]; logp_engine: the rollout engine's log-probs [B, T] for the
    truncated importance weight w = min(pi_theta / pi_engine, is_cap) (w = 1 when None).
    """
    mask = mask.to(logp_tok.dtype)
    A = advantages.detach().to(logp_tok.dtype)[:, None]  # [B, 1]
    w = 1.0 if logp_engine is None else truncated_is_weight(logp_tok.detach(), logp_engine, is_cap)
    return -(w * A * logp_tok * mask).sum() / mask.sum().clamp(min=1)
