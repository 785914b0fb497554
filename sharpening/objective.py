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

The label-free signals of the literature are the same table with another reward or another likelihood:

    reward      what r is: "task" (verified against the label), "majority_vote" (1 if the response's answer is its
                group's most frequent one: `majority_vote_rewards`) or "random" (r ~ Bernoulli(p): `random_rewards`)
    likelihood  what N normalizes in the optimization mode, as per-token scores summed over the response:
                "ref" log pi_ref(y_t) (the paper), "self" log pi_old(y_t) (the policy's own log-likelihood),
                "neg_entropy" sum_v pi log pi (minus the entropy of pi_old(. | prefix)), "self_certainty"
                KL(U || pi_old(. | prefix)) (`token_certainty` computes the last two from the logits)

The estimator: G samples per prompt, leave-one-out baseline A_i = R_i - mean_{j != i} R_j, and the
REINFORCE surrogate -A_i * log pi_theta(y_i) averaged over every response token of the batch, with an
optional truncated importance weight min(pi_theta / pi_engine, cap) per token.

Everything here works on numpy arrays and torch tensors alike (same type out as in), and holds no model
code: the toy simulations and the LLM trainer both import it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

import numpy as np

MODES = ("none", "optimization", "sampling")
NORMALIZATIONS = ("sum", "mean", "weighted_mean", "none")
REWARDS = ("task", "majority_vote", "random")
LIKELIHOODS = ("ref", "self", "neg_entropy", "self_certainty")
TEMPERED_ALPHAS = (0.5, 1.0, 1.25, 2.0, 4.0)
TILTED_BETA_INVS = (100.0, 1e4)
REQUIRED = object()  # a preset parameter without a default

# Every preset: (the fields it fixes, the parameters it takes with their defaults). The one list of presets.
_PRESETS = {
    "task_reward": (dict(mode="optimization", alpha=0.0, beta_inv=1.0), {}),
    "sharpening": (dict(mode="optimization", alpha=1.0, beta_inv=0.0), dict(normalization="sum", weight=1.0)),
    "tempered": (dict(mode="sampling", beta_inv=0.0), dict(alpha=REQUIRED, normalization="sum", weight=1.0)),
    "tilted": (dict(mode="sampling"), dict(alpha=REQUIRED, beta_inv=REQUIRED, normalization="sum", weight=1.0)),
    # the label-free signals
    "self_likelihood": (dict(mode="optimization", alpha=1.0, beta_inv=0.0, likelihood="self"),
                        dict(normalization="sum", weight=1.0)),
    "neg_entropy": (dict(mode="optimization", alpha=1.0, beta_inv=0.0, likelihood="neg_entropy"),
                    dict(normalization="mean", weight=1.0)),
    "self_certainty": (dict(mode="optimization", alpha=1.0, beta_inv=0.0, likelihood="self_certainty"),
                       dict(normalization="mean", weight=1.0)),
    "majority_vote": (dict(mode="optimization", alpha=0.0, beta_inv=1.0, reward="majority_vote"), {}),
    "random_reward": (dict(mode="optimization", alpha=0.0, beta_inv=1.0, reward="random"), dict(p=0.5)),
}
PRESETS = tuple(_PRESETS)
SIGNAL_PRESETS = PRESETS[4:]  # the label-free ones
# The short name of each parameter in Regime.name (and, typeset, in the figures' legends).
_SHORT = {"alpha": "a", "beta_inv": "b", "normalization": "N", "weight": "w", "p": "p", "reward": "r",
          "likelihood": "L"}


def _is_real(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _takes(name: str) -> str:
    params = _PRESETS[name][1]
    listed = [k + (" (required)" if v is REQUIRED else f" (default {v!r})") for k, v in params.items()]
    return f"it takes {', '.join(listed)}" if listed else "it takes no parameters"


@dataclass(frozen=True)
class Regime:
    """One point of the objective family: (mode, alpha, beta_inv, normalization, weight, reward, likelihood, p).

    mode:          "none" (task reward only), "optimization" (maximize the reward) or "sampling"
                   (maximize reward + entropy, whose optimum is a distribution).
    alpha:         exponent on the reference likelihood, alpha >= 0 (1 = sharpening, 0 = task reward only).
    beta_inv:      1/beta, weight of the task reward against the likelihood terms, beta_inv >= 0.
    normalization: how lp_ref enters: "sum", "mean" (/T), "weighted_mean" (/T**weight) or "none" (0).
    weight:        w of the weighted mean, w >= 0 (only used by "weighted_mean").
    reward:        what r is: "task" (the verified answer), "majority_vote" or "random" (see the module docstring).
    likelihood:    what N normalizes: "ref" (lp_ref), "self" (lp_old), "neg_entropy" or "self_certainty"
                   (per-token scores of pi_old); other than "ref" only in the optimization mode.
    p:             success probability of the random reward, 0 <= p <= 1 (only with reward="random").

    Build one from user input with `Regime.from_spec`; `Regime.name` is its short name everywhere.
    """

    mode: str
    alpha: float = 1.0
    beta_inv: float = 0.0
    normalization: str = "sum"
    weight: float = 1.0
    reward: str = "task"
    likelihood: str = "ref"
    p: float = 0.5

    def __post_init__(self):
        for name, allowed in (("mode", MODES), ("normalization", NORMALIZATIONS), ("reward", REWARDS),
                              ("likelihood", LIKELIHOODS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"Regime.{name}={getattr(self, name)!r} is not one of {allowed}")
        for name in ("alpha", "beta_inv", "weight", "p"):
            value = getattr(self, name)
            if not _is_real(value) or not math.isfinite(value) or value < 0:
                raise ValueError(f"Regime.{name}={value!r} must be a finite real number >= 0")
            object.__setattr__(self, name, float(value))
        if self.p > 1:
            raise ValueError(f"Regime.p={self.p!r} is a probability: it must be in [0, 1]")
        if self.mode == "optimization" and self.beta_inv == 0 and (self.alpha == 0 or self.normalization == "none"):
            raise ValueError(
                f"Regime(mode='optimization', alpha={self.alpha:g}, beta_inv=0, normalization={self.normalization!r}) "
                "has reward R = 0 for every response; use alpha > 0 with a normalization other than 'none' "
                "(sharpening) or beta_inv > 0 (task reward)"
            )
        # a field that would be silently ignored is an error
        if self.reward != "task" and not self.uses_r:
            raise ValueError(f"Regime.reward={self.reward!r} needs r in R: mode 'none', or beta_inv > 0 "
                             f"(got mode={self.mode!r}, beta_inv={self.beta_inv:g})")
        if self.likelihood != "ref" and not (self.mode == "optimization" and self.uses_N):
            raise ValueError(f"Regime.likelihood={self.likelihood!r} needs mode 'optimization' with alpha > 0 and "
                             f"a normalization other than 'none' (got mode={self.mode!r}, alpha={self.alpha:g}, "
                             f"normalization={self.normalization!r})")
        if self.p != 0.5 and self.reward != "random":
            raise ValueError(f"Regime.p={self.p:g} is only used by reward='random' (got reward={self.reward!r})")

    # --- building one ------------------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **params) -> "Regime":
        """A named preset (PRESETS) with its parameters; one it does not take, or a missing required one, is an error.

        task_reward, sharpening(normalization, weight), tempered(alpha, ...), tilted(alpha, beta_inv > 0, ...),
        self_likelihood(normalization, weight), neg_entropy(normalization = mean, weight),
        self_certainty(normalization = mean, weight), majority_vote, random_reward(p = 0.5).
        """
        if name not in _PRESETS:
            raise ValueError(f"unknown regime preset {name!r}; choose one of {list(PRESETS)}")
        fixed, takes = _PRESETS[name]
        extra = sorted(set(params) - set(takes))
        if extra:
            raise ValueError(f"regime preset {name!r} does not take {', '.join(extra)}; {_takes(name)}")
        values = {**takes, **params}
        missing = [k for k, v in values.items() if v is REQUIRED]
        if missing:
            raise ValueError(f"regime preset {name!r} needs {', '.join(missing)}; {_takes(name)}")
        if name == "tilted" and not (_is_real(values["beta_inv"]) and values["beta_inv"] > 0):
            raise ValueError(f"regime preset 'tilted' needs beta_inv > 0, got beta_inv={values['beta_inv']!r} "
                             "(beta_inv = 0 is 'tempered')")
        return cls(**fixed, **values)

    @classmethod
    def from_spec(cls, spec) -> "Regime":
        """The one way to read a regime from user input (CLIs, YAML configs, saved runs):

            a Regime                       itself
            "tempered"                     a preset name (PRESETS), with its default parameters
            {preset: tempered, alpha: 2}   a preset and its parameters (strict: see `Regime.preset`)
            {mode: sampling, alpha: 2, ...} the fields themselves (`Regime.to_dict()` round-trips)
        """
        if isinstance(spec, cls):
            return spec
        if isinstance(spec, str):
            return cls.preset(spec)
        if not isinstance(spec, Mapping):
            raise ValueError(f"regime={spec!r} must be a preset name, {{preset: name, ...}} or {{mode: ..., ...}}")
        spec = dict(spec)
        if "preset" in spec:
            return cls.preset(spec.pop("preset"), **spec)
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(spec) - set(names))
        if unknown or "mode" not in spec:
            problem = f"unknown key(s) {unknown}" if unknown else "no `preset` and no `mode`"
            raise ValueError(f"regime {spec!r}: {problem}; give `preset` (one of {list(PRESETS)}) with its "
                             f"parameters, or `mode` with any of {names}")
        return cls(**spec)

    # The paper's presets by name (Regime.preset("self_likelihood") etc. for the others).
    @classmethod
    def task_reward(cls) -> "Regime":
        """Task-reward RL: R = r."""
        return cls.preset("task_reward")

    @classmethod
    def sharpening(cls, normalization: str = "sum", weight: float = 1.0) -> "Regime":
        """Distribution sharpening: R = N(lp_ref), the base model's own log-likelihood."""
        return cls.preset("sharpening", normalization=normalization, weight=weight)

    @classmethod
    def tempered(cls, alpha: float, normalization: str = "sum", weight: float = 1.0) -> "Regime":
        """Power-distribution sampling: pi* proportional to pi_ref**alpha."""
        return cls.preset("tempered", alpha=alpha, normalization=normalization, weight=weight)

    @classmethod
    def tilted(cls, alpha: float, beta_inv: float, normalization: str = "sum", weight: float = 1.0) -> "Regime":
        """Power distribution tilted by the task reward: pi* proportional to pi_ref**alpha * exp(beta_inv * r)."""
        return cls.preset("tilted", alpha=alpha, beta_inv=beta_inv, normalization=normalization, weight=weight)

    # --- what R contains -------------------------------------------------------------------------------
    @property
    def uses_r(self) -> bool:
        """Whether r enters R (mode none, or beta_inv > 0)."""
        return self.mode == "none" or self.beta_inv > 0

    @property
    def uses_N(self) -> bool:
        """Whether the N term enters R (optimization with alpha > 0 and a normalization other than none; sampling)."""
        if self.mode == "sampling":
            return True
        return self.mode == "optimization" and self.alpha > 0 and self.normalization != "none"

    @property
    def needs_lp_ref(self) -> bool:
        """Whether R depends on lp_ref (the trainer can skip the reference forward pass otherwise)."""
        return self.mode == "sampling" or (self.uses_N and self.likelihood == "ref")

    @property
    def needs_lp_old(self) -> bool:
        """Whether R depends on lp_old (the sampling mode's entropy term, or the self-likelihood)."""
        return self.mode == "sampling" or (self.uses_N and self.likelihood == "self")

    @property
    def needs_certainty(self) -> bool:
        """Whether R depends on the per-token certainty of pi_old (`token_certainty`): neg_entropy, self_certainty."""
        return self.uses_N and self.likelihood in ("neg_entropy", "self_certainty")

    # --- its name --------------------------------------------------------------------------------------
    @property
    def family(self) -> str:
        """The preset this regime is a variant of (PRESETS), or "mixed" (optimization with both r and N terms).

        Decided by what R is, not by how the regime was written: Regime("none") and
        Regime("optimization", 0, 3) have R = r and are both task_reward.
        """
        if not self.uses_N:  # R = r
            return {"task": "task_reward", "majority_vote": "majority_vote", "random": "random_reward"}[self.reward]
        if self.mode == "sampling":
            return "tempered" if self.beta_inv == 0 else "tilted"
        if self.beta_inv > 0:
            return "mixed"
        return {"ref": "sharpening", "self": "self_likelihood"}.get(self.likelihood, self.likelihood)

    @property
    def name(self) -> str:
        """The short name used by the CLIs, the logs and the figures' legends: the family, then every parameter
        that differs from that preset's defaults, e.g. 'task_reward', 'tempered a=2', 'tilted a=2 b=100',
        'sharpening N=mean', 'random_reward p=0.3', 'mixed a=0.5 b=1 L=self_certainty'."""
        family = self.family
        if family in _PRESETS:  # the preset's parameters that are required or not at their default
            takes = _PRESETS[family][1]
            shown = [k for k, v in takes.items() if v is REQUIRED or getattr(self, k) != v]
            if self.mode == "optimization" and self.beta_inv == 0 and self.alpha != 1:
                shown.insert(0, "alpha")  # R = alpha * N: the scale of the preset's R
            if self.reward != "task" and family in ("tempered", "tilted"):  # tilted by another reward
                shown += ["reward"] + (["p"] if self.p != 0.5 else [])
        else:  # mixed: alpha and beta_inv always, the other fields when not the default
            default = asdict(Regime("optimization", 1.0, 1.0))
            shown = ["alpha", "beta_inv"] + [k for k in ("normalization", "weight", "reward", "likelihood", "p")
                                             if getattr(self, k) != default[k]]
        if self.normalization != "weighted_mean" and "weight" in shown:
            shown.remove("weight")  # w only matters under weighted_mean
        return " ".join([family] + [f"{_SHORT[k]}={_fmt(getattr(self, k))}" for k in shown])

    def to_dict(self) -> dict:
        return asdict(self)


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def normalize(regime: Regime, lp, lengths=None):
    """N(lp): sum -> lp, mean -> lp / T, weighted_mean -> lp / T**w, none -> 0 (lp: per-sequence sums)."""
    if regime.normalization == "sum":
        return lp
    if regime.normalization == "none":
        return _zeros_like(lp)  # not lp * 0: a -inf log-prob would give NaN
    if lengths is None:
        raise ValueError(f"normalization={regime.normalization!r} needs the response lengths T")
    if (lengths <= 0).any():
        raise ValueError("normalization by length needs every response length T >= 1")
    exponent = 1.0 if regime.normalization == "mean" else regime.weight
    return lp / lengths**exponent


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


def shaped_reward(regime: Regime, task_reward, lp_ref=None, lp_old=None, lengths=None, mask=None, certainty=None):
    """Per-sequence reward R of the regime (the table in this module's docstring).

    task_reward: r, shape [...]: the reward the regime names (regime.reward: the verified task reward, or
    `majority_vote_rewards` / `random_rewards`). lp_ref, lp_old, certainty: either per-sequence sums with the
    shape of r, or per-token values [..., T] with an optional 0/1 mask [..., T] (then the sums and T come from
    the mask). certainty: `token_certainty(regime, logits)` of pi_old at each response token, for the
    likelihoods neg_entropy and self_certainty. lengths: T per sequence, needed for mean / weighted_mean
    normalization of per-sequence sums. numpy in -> numpy out, torch in -> torch out.
    """
    r = task_reward
    if not regime.uses_N:  # mode none, or optimization whose N term vanishes: R = r
        return r * 1.0
    if regime.mode == "optimization":
        source = {"ref": (lp_ref, "lp_ref"), "self": (lp_old, "lp_old")}.get(regime.likelihood, (certainty, "certainty"))
        L, lengths = _as_sequence(*source, r, lengths, mask)
        N = normalize(regime, L, lengths)
        if regime.beta_inv == 0:
            return regime.alpha * N
        return r + (regime.alpha / regime.beta_inv) * N
    lp_ref, lengths = _as_sequence(lp_ref, "lp_ref", r, lengths, mask)
    lp_old, _ = _as_sequence(lp_old, "lp_old", r, lengths, mask)
    N = normalize(regime, lp_ref, lengths)
    if regime.beta_inv == 0:
        return (regime.alpha - 1) * N + lp_ref - lp_old
    return r + ((regime.alpha - 1) / regime.beta_inv) * N + (lp_ref - lp_old) / regime.beta_inv


def _as_sequence(lp, name, r, lengths, mask):
    """Reduce per-token values to per-sequence sums; pass per-sequence sums through."""
    if lp is None:
        raise ValueError(f"this regime needs {name}")
    if lp.ndim == r.ndim + 1:
        lp, token_lengths = sequence_sums(lp, mask)
        lengths = token_lengths if lengths is None else lengths
    elif lp.shape != r.shape:
        raise ValueError(f"{name} has shape {tuple(lp.shape)}; expected {tuple(r.shape)} (sums) "
                         f"or {tuple(r.shape)} + (T,) (per token)")
    return lp, lengths


# --- the label-free signals: per-token certainty, and the rewards that replace r -----------------------------

def token_certainty(regime: Regime, logits):
    """The per-token score of the likelihoods neg_entropy and self_certainty, from next-token logits [..., V] -> [...].

        neg_entropy:     sum_v pi(v) log pi(v)                  = -H(pi(. | prefix))   (<= 0)
        self_certainty:  KL(U || pi) = -log V - (1/V) sum_v log pi(v)                   (>= 0)

    pi = softmax(logits); both are 0 at the uniform distribution. A logit of -inf marks a token the policy can
    never emit (the toy's forbidden tokens): it is outside the support and V counts the finite logits only; an
    LLM's logits are all finite, so V is its vocabulary size.
    """
    if regime.likelihood not in ("neg_entropy", "self_certainty"):
        raise ValueError(f"token_certainty is for likelihood neg_entropy or self_certainty, not {regime.likelihood!r}")
    if not _is_torch(logits):
        import torch

        return token_certainty(regime, torch.as_tensor(np.asarray(logits, dtype=float))).numpy()
    allowed = logits > -math.inf
    logp = logits.log_softmax(-1).masked_fill(~allowed, 0.0)  # 0 off the support: no -inf * 0
    if regime.likelihood == "neg_entropy":
        return (logp.exp() * logp * allowed).sum(-1)
    V = allowed.sum(-1).to(logp.dtype)  # tokens in the support
    return -logp.sum(-1) / V - V.log()


def majority_vote_rewards(answers):
    """Majority-vote reward within each group: answers [..., G] integer answer ids (-1 = no answer) -> r [..., G].

    r_i = 1 when response i's answer is the group's most frequent one; when k answers tie for the most votes,
    each of their responses earns 1/k (the expected reward of a uniform random tie-break, as maj@k counts it);
    a response without an extractable answer (-1) never votes and never earns (r = 0); a group where nobody
    answers earns 0 everywhere. Ids only need to be equal for equal answers (see llm.signals for how the
    trainer maps the texts' answers to ids). Returns float64, numpy or torch like answers.
    """
    if _is_torch(answers):  # integer ids carry no gradient: count in numpy, return on the same device
        import torch

        return torch.as_tensor(majority_vote_rewards(answers.cpu().numpy()), device=answers.device)
    answers = np.asarray(answers)
    answered = answers >= 0
    votes = (answers[..., :, None] == answers[..., None, :]).sum(-1) * answered  # for i's answer  [..., G]
    top = votes.max(-1, keepdims=True)  # [..., 1]
    winner = (votes == top) & answered  # [..., G]
    n_tied = winner.sum(-1, keepdims=True) / np.maximum(top, 1)  # distinct answers tied at the top  [..., 1]
    return np.where(winner, 1.0 / np.maximum(n_tied, 1), 0.0)


def random_rewards(u, p: float):
    """The random reward r = 1[u < p] ~ Bernoulli(p) from uniforms u in [0, 1) drawn by the caller's seeded
    generator, independent of the response (the "spurious reward" control). Same shape and type as u."""
    return (u < p) * 1.0


# --- the estimator ----------------------------------------------------------------------------------------

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
