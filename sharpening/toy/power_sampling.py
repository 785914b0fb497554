"""Power sampling on the enumerable sequence model: the MCMC sampler, its exact law, and what it is compared with.

Three ways to reach pi_ref^alpha on the tree model of sharpening.toy.sequence, each against the closed form
pi_ref(y)**alpha / Z (sharpening.theory.fixed_point of the tempered regime):

    power_sampler_samples        the MCMC sampler of sharpening.mcmc run on the tree (test time, no training)
    power_sampler_distribution   the exact law of that sampler's output: the same block schedule with each
                                 block's Metropolis-Hastings kernel written out as a matrix over the responses
                                 of at most m_k tokens (so TV vs MCMC steps has no sampling noise)
    sharpening.toy.sequence.train(Regime.tempered(alpha), ...)   RL training toward it
and the baseline it is confused with, token temperature 1/alpha (token_temperature_distribution): every
next-token distribution raised to alpha and renormalized on its own, which is pi_ref^alpha only when
sum_future pi_ref(future | prefix)**alpha is the same whichever token is chosen.

Both the sampler and its matrix use sharpening.mcmc.log_acceptance: the Metropolis-Hastings ratio lives there.
"""

from __future__ import annotations

import numpy as np
import torch

from sharpening.mcmc import DTYPE, PowerSampling, Suffix, log_acceptance, power_sample
from sharpening.objective import Regime
from sharpening.theory import fixed_point
from sharpening.toy.bandit import inverse_cdf, one_thread
from sharpening.toy.sequence import TreePolicy


def power_distribution(model: TreePolicy, alpha: float) -> np.ndarray:
    """The closed form pi_ref(y)**alpha / Z over the model's responses Y: [|Y|]."""
    return fixed_point(Regime.tempered(alpha), model.lp_ref.numpy(), model.r.numpy())


def proposal_logp(model: TreePolicy, tau: float) -> torch.Tensor:
    """log q(token | prefix) of the model at temperature tau, forbidden tokens at -inf: [n_nodes, V + 1]."""
    return torch.log_softmax((model.ref_logp + model.bias) / tau, -1)


def token_temperature_distribution(model: TreePolicy, tau: float) -> np.ndarray:
    """The law of ancestral sampling at temperature tau, prod_t q(y_t | y_<t) for every y in Y: [|Y|]."""
    return model.log_probs(proposal_logp(model, tau)[None]).exp()[0].numpy()  # normalized logits: q itself


class TreeProposer:
    """Suffix proposals from the tree model at temperature tau (EOS = token V), for sharpening.mcmc.power_sample."""

    def __init__(self, model: TreePolicy, tau: float):
        self.model, self.eos = model, model.V
        self.lp_nodes = model.ref_logp  # [n_nodes, V + 1] the target's per-token log pi_ref
        self.lq_nodes = proposal_logp(model, tau)  # [n_nodes, V + 1]

    def extend(self, rows, tokens, keep, limit: int, generator=None) -> Suffix:
        model, r = self.model, len(rows)
        node = torch.zeros(r, dtype=torch.long)
        for t in range(int(keep.max())):  # walk each prefix x_<keep down the tree
            node = torch.where(t < keep, model.child[node, tokens[:, t].clamp(max=model.V - 1)], node)
        alive = keep < limit  # [r] still generating
        length = torch.zeros(r, dtype=torch.long)
        ended = torch.zeros(r, dtype=torch.bool)
        out_tok, out_lp, out_lq = [], [], []
        for s in range(int((limit - keep).max())):
            u = torch.rand(r, 1, generator=generator, dtype=DTYPE)
            tok = inverse_cdf(self.lq_nodes[node], u)[:, 0]  # [r]
            out_tok.append(torch.where(alive, tok, 0))
            out_lp.append(torch.where(alive, self.lp_nodes[node, tok], 0.0))
            out_lq.append(torch.where(alive, self.lq_nodes[node, tok], 0.0))
            length += alive.long()
            ended |= alive & (tok == self.eos)
            alive = alive & (tok != self.eos) & (keep + s + 1 < limit)
            node = torch.where(alive, model.child[node, tok.clamp(max=model.V - 1)], 0)
        return Suffix(torch.stack(out_tok, 1), torch.stack(out_lp, 1), torch.stack(out_lq, 1), length, ended)


def power_sampler_samples(model: TreePolicy, settings: PowerSampling, n: int, seed: int = 0):
    """n independent runs of the MCMC sampler on the tree: (indices into Y [n], the Chains with their counts)."""
    generator = torch.Generator().manual_seed(seed)
    with one_thread():
        chains = power_sample(TreeProposer(model, settings.tau), n, model.L, settings, generator)
    return response_index(model, chains.tokens, chains.length), chains


def response_index(model: TreePolicy, tokens, length) -> torch.Tensor:
    """The index in Y (model.sequences) of each complete response: tokens [n, L] (padded), length [n] -> [n]."""
    node = torch.zeros(len(tokens), dtype=torch.long)
    for t in range(model.L - 1):  # the node of the prefix before the last token
        node = torch.where(t < length - 1, model.child[node, tokens[:, t].clamp(max=model.V - 1)], node)
    last = tokens.gather(1, (length - 1)[:, None])[:, 0]
    index = model.end[node, last]
    if (index < 0).any():
        raise ValueError("a response is not complete (no EOS and shorter than L)")
    return index


# ---------------------------------------------------------------------------------------------------------
# The sampler's exact law: the block schedule with every Metropolis-Hastings kernel as a matrix
# ---------------------------------------------------------------------------------------------------------


class BlockStates:
    """The responses of at most m tokens: those that ended (EOS) by then, and the unfinished ones cut at m.

    tokens [S, m] (-1 past the length), length [S], ended [S], lp / lq [S, m] per-token log pi_ref and log q
    (0 past the length); suffix sums lp_from[s, i] = sum_{j >= i} lp[s, j] ([S, m + 1]), lq_from likewise.
    """

    def __init__(self, model: TreePolicy, m: int, lq_nodes: torch.Tensor):
        V, eos = model.V, model.V
        seqs = [tuple(eos if c == "$" else int(c) for c in s) for s in model.sequences]
        states = [s for s in seqs if len(s) <= m and s[-1] == eos]
        states += [s for s in seqs if len(s) == m and s[-1] != eos] if m == model.L else \
            [p for p in model.prefixes if len(p) == m]
        self.states, self.m = states, m
        self.index = {s: k for k, s in enumerate(states)}
        S = len(states)
        self.tokens = torch.full((S, m), -1, dtype=torch.long)
        self.lp = torch.zeros(S, m, dtype=DTYPE)
        self.lq = torch.zeros(S, m, dtype=DTYPE)
        for k, s in enumerate(states):
            node = 0
            for t, tok in enumerate(s):
                self.tokens[k, t] = tok
                self.lp[k, t], self.lq[k, t] = model.ref_logp[node, tok], lq_nodes[node, tok]
                if tok != eos and t + 1 < len(s):
                    node = int(model.child[node, tok])
        self.length = torch.tensor([len(s) for s in states])
        self.ended = torch.tensor([s[-1] == eos for s in states])
        self.lp_from = _suffix_sums(self.lp)
        self.lq_from = _suffix_sums(self.lq)

    def common_prefix(self) -> torch.Tensor:
        """[S, S] the number of leading tokens two responses share."""
        same = self.tokens[:, None, :] == self.tokens[None, :, :]  # [S, S, m]; -1 padding matches too ...
        same &= self.tokens[:, None, :] >= 0  # ... so count real tokens only
        return same.long().cumprod(-1).sum(-1)

    def kernel(self, alpha: float) -> torch.Tensor:
        """The Metropolis-Hastings transition matrix K[x, x'] of sharpening.mcmc.mh_step over these states.

        K[x, x'] = sum_{i <= common prefix} (1 / |x|) q(x'_{>=i} | x_<i) min(1, A_i(x, x')) for x' != x,
        and the rest of each row on the diagonal (rejections, and proposals of x itself).
        """
        S, m = len(self.states), self.m
        i = torch.arange(m)  # the resampled position
        cp = self.common_prefix()  # [S, S]
        valid = (i[None, None, :] <= cp[..., None]) & ~torch.eye(S, dtype=torch.bool)[..., None]  # [S, S, m]
        lp_cur, lq_cur = self.lp_from[:, None, :m], self.lq_from[:, None, :m]  # [S, 1, m] x's suffix from i
        lp_new, lq_new = self.lp_from[None, :, :m], self.lq_from[None, :, :m]  # [1, S, m] x''s suffix
        log_a = log_acceptance(alpha, lp_cur, lq_cur, lp_new, lq_new, self.length[:, None, None],
                               self.length[None, :, None])
        move = torch.exp(lq_new - torch.log(self.length.to(DTYPE))[:, None, None] + log_a.clamp(max=0.0))
        K = torch.where(valid, move, 0.0).sum(-1)  # [S, S]
        return K + torch.diag(1.0 - K.sum(-1))

    def extension(self, previous: "BlockStates") -> torch.Tensor:
        """E[x, x']: a state of the previous block to one of this block (an unfinished x grows by q to m)."""
        E = torch.zeros(len(previous.states), len(self.states), dtype=DTYPE)
        for k, s in enumerate(previous.states):
            if previous.ended[k]:
                E[k, self.index[s]] = 1.0
                continue
            n = len(s)
            for k2, s2 in enumerate(self.states):
                if s2[:n] == s:
                    E[k, k2] = torch.exp(self.lq_from[k2, n])
        return E


def _suffix_sums(x: torch.Tensor) -> torch.Tensor:
    """[S, m] -> [S, m + 1] with out[:, i] = sum_{j >= i} x[:, j]."""
    return torch.cat([x.flip(-1).cumsum(-1).flip(-1), x.new_zeros(len(x), 1)], 1)


def power_sampler_distribution(model: TreePolicy, settings: PowerSampling) -> np.ndarray:
    """The exact law over Y of one chain of sharpening.mcmc.power_sample on the tree with these settings: [|Y|].

    Block k: extend the unfinished responses by q up to m_k (matrix E), then apply the kernel K_k
    `mcmc_steps` times; with stop_at_eos, the responses that ended by the end of a block leave the chain.
    """
    return power_sampler_distributions(model, settings, [settings.mcmc_steps])[0]


def power_sampler_distributions(model: TreePolicy, settings: PowerSampling, mcmc_steps) -> np.ndarray:
    """power_sampler_distribution for each number of MCMC steps per block in `mcmc_steps` (the kernels are built
    once): [len(mcmc_steps), |Y|]."""
    lq_nodes = proposal_logp(model, settings.tau)
    blocks, previous = [], None
    for m in settings.limits(model.L):
        states = BlockStates(model, m, lq_nodes)
        E = None if previous is None else states.extension(previous)
        blocks.append((states, E, states.kernel(settings.alpha)))
        previous = states
    laws = []
    for n_steps in mcmc_steps:
        d, frozen, previous = None, np.zeros(len(model.sequences)), None
        for states, E, K in blocks:
            if previous is None:
                d = torch.exp(states.lq_from[:, 0])  # the first block: q over responses of <= m_1 tokens
            else:
                if settings.stop_at_eos:  # the responses that ended after the previous block are returned
                    frozen += _on_responses(model, previous, torch.where(previous.ended, d, 0.0))
                    d = torch.where(previous.ended, 0.0, d)
                d = d @ E
            for _ in range(n_steps):
                d = d @ K
            previous = states
        laws.append(frozen + _on_responses(model, previous, d))
    return np.stack(laws)


def _on_responses(model: TreePolicy, states: BlockStates, d) -> np.ndarray:
    """A distribution over a block's states, moved onto Y (only ended states, or the last block's, have mass)."""
    out = np.zeros(len(model.sequences))
    where = {s: k for k, s in enumerate(model.sequences)}
    for k, s in enumerate(states.states):
        if d[k] != 0:
            out[where["".join("$" if t == model.V else str(t) for t in s)]] += float(d[k])
    return out
