"""Power sampling: Metropolis-Hastings over token sequences toward pi^alpha, for any model that proposes suffixes.

The target is the sequence-level power distribution pi_alpha(x) proportional to pi(x)**alpha, the optimum of the
tempered regime (sharpening.theory.fixed_point(Regime.tempered(alpha), ...)), sampled at test time with no
training. It is NOT token-level temperature 1/alpha, which renormalizes each next-token distribution on its own.

The algorithm follows Karan & Du, "Reasoning with Sampling: Your Base Model is Smarter Than You Think"
(arXiv 2510.14901, Algorithm 1) and their implementation (github.com/aakaran/reasoning-with-sampling,
llm_experiments/power_samp_utils.py, `mcmc_power_samp`): responses are built block by block; block k raises the
length limit to m_k = min(k * B, M) (M = max_new_tokens, B = block_size), extends every unfinished chain with
proposal tokens up to m_k, then runs `mcmc_steps` Metropolis-Hastings steps whose target is pi(x)**alpha over the
responses of at most m_k tokens (a response cut at m_k weighs its prefix probability). One step:

    i  ~ Uniform{0, ..., |x| - 1}                       a position of the current response x
    x' = x_<i + s,  s ~ q( . | x_<i)                     s runs until EOS or until |x'| = m_k
    log A = alpha * (lp(x') - lp(x)) + lq(x | x') - lq(x' | x) + log |x| - log |x'|
    accept x' with probability min(1, exp(log A))

lp: sum of log pi(token | prefix) over the resampled suffix (the prefix x_<i is shared and cancels); lq: the
same under the proposal q, the model at temperature `proposal_temperature` (default 1/alpha), so lq(x' | x) is the
probability of proposing the new suffix and lq(x | x') that of proposing the old one back. The last term is the
probability 1/|x| of picking position i, which differs between x and x' when their lengths differ.

Where this departs from the reference implementation, and why (each keeps pi^alpha the exact stationary law):
  - the new suffix runs to the block's limit m_k, not only to the current length |x|, so a chain can lengthen
    as well as shorten; both suffixes enter the ratio whole (the reference sums the current one only up to the
    proposal's length), and the 1/|x| position probability is in the ratio;
  - `stop_at_eos=False` (default) keeps moving a chain after it has emitted EOS, so the last block targets
    pi^alpha over every response of at most M tokens; `stop_at_eos=True` is the reference's early exit: a chain
    whose response has ended after a block's MCMC steps is returned as is (cheaper, but not exact).

This module holds the algorithm only. A proposer supplies the model: `extend(rows, tokens, keep, limit,
generator) -> Suffix` (sharpening.toy.power_sampling for the enumerable toy, sharpening.llm.power_sampling for
Hugging Face models). Everything is batched over independent chains and seeded by one torch.Generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

DEFAULT_BLOCKS = 16  # the paper's M / B
DTYPE = torch.float64  # sums of log-probs and the acceptance test


@dataclass(frozen=True)
class PowerSampling:
    """The sampler's knobs (defaults as published: alpha 4, 16 blocks, 10 MCMC steps per block, proposal 1/alpha).

    alpha:                exponent of the target pi**alpha, > 0.
    block_size:           B, tokens added per block; None: max_new_tokens // 16 (at least 1).
    mcmc_steps:           Metropolis-Hastings steps after each block, >= 0.
    proposal_temperature: temperature of the proposal q = pi at that temperature; None: 1 / alpha.
    stop_at_eos:          return a chain once its response has ended after a block (the reference's early exit).
    """

    alpha: float = 4.0
    block_size: int | None = None
    mcmc_steps: int = 10
    proposal_temperature: float | None = None
    stop_at_eos: bool = False

    def __post_init__(self):
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"alpha={self.alpha!r} must be a finite number > 0")
        if self.block_size is not None and not (isinstance(self.block_size, int) and self.block_size >= 1):
            raise ValueError(f"block_size={self.block_size!r} must be an int >= 1 or None (max_new_tokens // 16)")
        if not (isinstance(self.mcmc_steps, int) and self.mcmc_steps >= 0):
            raise ValueError(f"mcmc_steps={self.mcmc_steps!r} must be an int >= 0")
        tau = self.proposal_temperature
        if tau is not None and not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
            raise ValueError(f"proposal_temperature={tau!r} must be a finite number > 0 or None (1 / alpha)")

    @property
    def tau(self) -> float:
        """The proposal's temperature."""
        return 1.0 / self.alpha if self.proposal_temperature is None else float(self.proposal_temperature)

    def block(self, max_new_tokens: int) -> int:
        """B: block_size, or max_new_tokens // 16 (at least 1)."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens!r} must be >= 1")
        return self.block_size or max(1, max_new_tokens // DEFAULT_BLOCKS)

    def limits(self, max_new_tokens: int) -> list[int]:
        """The length limit m_k of each block: B, 2B, ..., max_new_tokens."""
        B = self.block(max_new_tokens)
        return list(range(B, max_new_tokens, B)) + [max_new_tokens]

    def to_dict(self) -> dict:
        return {"alpha": self.alpha, "block_size": self.block_size, "mcmc_steps": self.mcmc_steps,
                "proposal_temperature": self.tau, "stop_at_eos": self.stop_at_eos}


def log_acceptance(alpha, lp_cur, lq_cur, lp_prop, lq_prop, len_cur, len_prop):
    """log A = alpha (lp(x') - lp(x)) + lq(x | x') - lq(x' | x) + log|x| - log|x'| (the MH ratio for pi^alpha).

    lp_cur, lq_cur: sums of log pi and log q over the current response's suffix from the resampled position;
    lp_prop, lq_prop: the same over the proposed suffix; len_cur, len_prop: |x| and |x'| (tokens, EOS included).
    Tensors (any shape, broadcast) or floats.
    """
    return alpha * (lp_prop - lp_cur) + lq_cur - lq_prop + _log(len_cur) - _log(len_prop)


def _log(x):
    return torch.log(x.to(DTYPE)) if isinstance(x, torch.Tensor) else math.log(x)


@dataclass
class Suffix:
    """What a proposer returns for r chains: new tokens from position keep on (right-padded)."""

    tokens: torch.Tensor  # [r, S] long
    lp: torch.Tensor  # [r, S] log pi(token | prefix) of the model at temperature 1, 0 past the end
    lq: torch.Tensor  # [r, S] log q(token | prefix) of the proposal, 0 past the end
    length: torch.Tensor  # [r] tokens generated (>= 1 where keep < limit)
    ended: torch.Tensor  # [r] bool: the suffix ends with EOS


@dataclass
class Chains:
    """C independent chains: their current responses and what they cost. M = max_new_tokens."""

    tokens: torch.Tensor  # [C, M] long, pad_id past the length
    lp: torch.Tensor  # [C, M] float64 log pi of each response token (0 past the length)
    lq: torch.Tensor  # [C, M] float64 log q of each token under the proposal that generated it
    length: torch.Tensor  # [C] long, |x|
    ended: torch.Tensor  # [C] bool, the response ends with EOS
    proposed: torch.Tensor  # [C] long, MH proposals made
    accepted: torch.Tensor  # [C] long, MH proposals accepted
    generated: torch.Tensor  # [C] long, tokens generated in all (block extensions and proposals)
    pad_id: int = 0

    @classmethod
    def empty(cls, C: int, M: int, pad_id: int = 0) -> "Chains":
        zeros = lambda dtype: torch.zeros(C, dtype=dtype)  # noqa: E731
        return cls(torch.full((C, M), pad_id, dtype=torch.long), torch.zeros(C, M, dtype=DTYPE),
                   torch.zeros(C, M, dtype=DTYPE), zeros(torch.long), zeros(torch.bool), zeros(torch.long),
                   zeros(torch.long), zeros(torch.long), pad_id)

    @property
    def acceptance(self) -> torch.Tensor:
        """Accepted / proposed per chain, [C] (NaN where nothing was proposed)."""
        return self.accepted / self.proposed

    def mask(self) -> torch.Tensor:
        return torch.arange(self.tokens.shape[1]) < self.length[:, None]  # [C, M]

    def suffix_sums(self, rows, keep):
        """sum lp and sum lq over positions >= keep of the chains `rows`: ([r], [r])."""
        j = torch.arange(self.tokens.shape[1])
        tail = (j >= keep[:, None]) & (j < self.length[rows, None])  # [r, M]
        return (torch.where(tail, self.lp[rows], 0.0).sum(-1), torch.where(tail, self.lq[rows], 0.0).sum(-1))

    def splice(self, rows, keep, suffix: Suffix, take) -> None:
        """x <- x_<keep + suffix for the chains rows[take] (take: [r] bool); the rest of each row is padding."""
        rows, keep = rows[take], keep[take]
        if rows.numel() == 0:
            return
        j = torch.arange(self.tokens.shape[1])  # [M]
        old = j < keep[:, None]  # [r, M]
        new = ~old & (j < (keep + suffix.length[take])[:, None])
        source = (j - keep[:, None]).clamp(0, suffix.tokens.shape[1] - 1)  # position in the suffix
        for cur, add, pad in ((self.tokens, suffix.tokens, self.pad_id), (self.lp, suffix.lp, 0.0),
                              (self.lq, suffix.lq, 0.0)):
            spliced = torch.where(new, add[take].to(cur.dtype).gather(1, source), pad)
            cur[rows] = torch.where(old, cur[rows], spliced)
        self.length[rows] = keep + suffix.length[take]
        self.ended[rows] = suffix.ended[take]


def power_sample(proposer, n_chains: int, max_new_tokens: int, settings: PowerSampling,
                 generator: torch.Generator | None = None, pad_id: int = 0) -> Chains:
    """Run `n_chains` independent chains of block-wise Metropolis-Hastings toward pi^alpha (module docstring).

    proposer.extend(rows, tokens, keep, limit, generator) -> Suffix: for the chains `rows` ([r] long), whose
    current tokens are `tokens` [r, M], sample a suffix from position keep [r] on with the proposal q, until EOS
    or until the response has `limit` tokens. Returns the final Chains (responses, log-probs, counts).
    """
    chains = Chains.empty(n_chains, max_new_tokens, pad_id)
    frozen = torch.zeros(n_chains, dtype=torch.bool)  # stop_at_eos: chains already returned
    for limit in settings.limits(max_new_tokens):
        if settings.stop_at_eos:
            frozen = chains.ended.clone()
        grow = torch.nonzero(~chains.ended & (chains.length < limit))[:, 0]
        if grow.numel():  # the new block: proposal tokens, always kept
            keep = chains.length[grow]
            suffix = proposer.extend(grow, chains.tokens[grow], keep, limit, generator)
            chains.splice(grow, keep, suffix, torch.ones(len(grow), dtype=torch.bool))
            chains.generated[grow] += suffix.length
        rows = torch.nonzero(~frozen)[:, 0]
        if rows.numel() == 0:
            break
        for _ in range(settings.mcmc_steps):
            mh_step(proposer, chains, rows, limit, settings.alpha, generator)
    return chains


def mh_step(proposer, chains: Chains, rows, limit: int, alpha: float, generator=None) -> torch.Tensor:
    """One Metropolis-Hastings step of the chains `rows` toward pi^alpha over responses of <= limit tokens.

    Returns the acceptance decisions [r] (bool). Draws, in order: the positions, the proposal, the uniforms.
    """
    length = chains.length[rows]
    u_pos = torch.rand(len(rows), generator=generator, dtype=DTYPE)
    keep = torch.minimum((u_pos * length).long(), length - 1)  # i ~ Uniform{0, ..., |x| - 1}
    suffix = proposer.extend(rows, chains.tokens[rows], keep, limit, generator)
    lp_cur, lq_cur = chains.suffix_sums(rows, keep)
    lp_prop = suffix.lp.to(DTYPE).sum(-1)  # zeros past each suffix's end
    lq_prop = suffix.lq.to(DTYPE).sum(-1)
    log_a = log_acceptance(alpha, lp_cur, lq_cur, lp_prop, lq_prop, length, keep + suffix.length)
    u = torch.rand(len(rows), generator=generator, dtype=DTYPE)
    accept = torch.log(u) < log_a  # u = 0 (log -inf) always accepts a finite ratio
    chains.splice(rows, keep, suffix, accept)
    chains.proposed[rows] += 1
    chains.accepted[rows] += accept.long()
    chains.generated[rows] += suffix.length
    return accept
