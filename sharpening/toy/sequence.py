"""A small autoregressive model whose every sequence can be enumerated: exact fixed points and gradients.

Vocabulary: V content tokens 0..V-1 and EOS (= V, printed "$"); a response y = (y_1..y_T) ends at EOS or
at the maximum length L (T <= L; the first token is never EOS). The answer is the last content token and
the task reward r(y) = 1 if it is the correct token. The policy is a tabular softmax per prefix (a tree):
theta[prefix] holds V + 1 logits, so pi(y) = prod_t softmax(theta[y_<t])[y_t] is exact and cheap.

"Fixed length" (DESIGN.md): EOS is ignored, so every rollout runs to length L. The policy then samples
with EOS masked out, while lp_ref stays the reference model's own log-likelihood of the tokens (EOS mass
not renormalized), as an LLM trainer would compute it with the unchanged reference model.

Training reuses sharpening.toy.bandit.train_policy: exact = gradient of E_pi[R] by enumeration; sampled =
G rollouts per seed, shaped_reward, rloo_advantages and the token-mean pg_loss.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from sharpening.objective import Regime, token_certainty
from sharpening.theory.signals import answer_masses
from sharpening.toy.bandit import DTYPE, TrainResult, inverse_cdf, train_policy

EOS_CHAR = "$"

# The reference model of `paper_model`: a Markov table pi_ref(next | last content token), columns
# (token 0, 1, 2, EOS); token 0 is the correct answer. The single likeliest response is "2$" (0.45 * 0.6 =
# 0.27: short and wrong), while most of the mass sits on longer responses that end in 0.
PAPER_START = (0.25, 0.30, 0.45, 0.0)  # first token (EOS not allowed)
PAPER_NEXT = (
    (0.15, 0.10, 0.05, 0.70),  # after 0: usually stop (a correct answer)
    (0.60, 0.15, 0.05, 0.20),  # after 1: usually go on to 0
    (0.25, 0.10, 0.05, 0.60),  # after 2: usually stop (a wrong answer)
)


class TreePolicy:
    """Tabular softmax per prefix over V content tokens + EOS, max length L; theta: [S, n_nodes, V + 1].

    ref_logp: [n_nodes, V + 1] log pi_ref(token | prefix) of the reference model (-inf: a token pi_ref
    never emits there, which the policy never emits either; EOS is never allowed at the root).
    correct: the answer token that earns r = 1. fixed_length: forbid EOS (every response has T = L).
    Enumerated outputs Y (attributes, tensors [|Y|]): lp_ref, r, lengths, answers (the last content token);
    `sequences` names them.
    """

    def __init__(self, V: int, L: int, ref_logp, correct: int = 0, fixed_length: bool = False):
        if V < 2 or L < 1:
            raise ValueError(f"need V >= 2 content tokens and max length L >= 1, got V={V}, L={L}")
        if not 0 <= correct < V:
            raise ValueError(f"correct={correct} must be a content token in 0..{V - 1}")
        self.V, self.L, self.correct, self.fixed_length = V, L, correct, fixed_length
        self.prefixes = [p for m in range(L) for p in itertools.product(range(V), repeat=m)]  # the nodes
        node_of = {p: i for i, p in enumerate(self.prefixes)}
        self.ref_logp = torch.as_tensor(np.asarray(ref_logp, dtype=float), dtype=DTYPE)  # [n_nodes, V + 1]
        if self.ref_logp.shape != (len(self.prefixes), V + 1):
            raise ValueError(f"ref_logp has shape {tuple(self.ref_logp.shape)}; expected "
                             f"({len(self.prefixes)}, {V + 1}) = (prefixes of length < L, V + 1)")
        allowed = torch.isfinite(self.ref_logp)  # tokens pi_ref never emits stay impossible
        allowed[0, V] = False  # never an empty response
        if fixed_length:
            allowed[:, V] = False
        self.bias = torch.where(allowed, 0.0, -torch.inf).to(DTYPE)  # added to theta: masks forbidden tokens

        # child[node, token]: the next node, or -1 where the response ends; end[node, token]: its index in Y.
        self.child = torch.full((len(self.prefixes), V + 1), -1)
        self.end = torch.full((len(self.prefixes), V + 1), -1)
        paths, self.sequences = [], []
        for i, p in enumerate(self.prefixes):
            for tok in range(V + 1):
                if not allowed[i, tok]:
                    continue
                if tok < V and len(p) < L - 1:
                    self.child[i, tok] = node_of[p + (tok,)]
                    continue
                self.end[i, tok] = len(paths)
                tokens = p + (tok,)
                paths.append([(node_of[tokens[:t]], tokens[t]) for t in range(len(tokens))])
                self.sequences.append("".join(EOS_CHAR if t == V else str(t) for t in tokens))
        # Y as padded paths: node [|Y|, L], token [|Y|, L], mask [|Y|, L] (padding points at (0, 0)).
        self.path_node = torch.zeros(len(paths), L, dtype=torch.long)
        self.path_token = torch.zeros(len(paths), L, dtype=torch.long)
        self.path_mask = torch.zeros(len(paths), L, dtype=DTYPE)
        for y, path in enumerate(paths):
            for t, (node, tok) in enumerate(path):
                self.path_node[y, t], self.path_token[y, t], self.path_mask[y, t] = node, tok, 1.0
        self.lengths = self.path_mask.sum(-1)  # T(y) [|Y|]
        self.lp_ref = self._sequence_logp(self.ref_logp[None])[0]  # [|Y|], EOS mass not renormalized
        self.answers = torch.tensor([int(s.rstrip(EOS_CHAR)[-1]) for s in self.sequences])  # [|Y|]
        self.r = (self.answers == correct).to(DTYPE)  # [|Y|]

    n_uniforms = property(lambda self: self.L)  # one uniform per generated token

    def init_logits(self, n_seeds: int) -> torch.Tensor:
        """theta_0 = log pi_ref per prefix (renormalized over the allowed tokens): [S, n_nodes, V + 1]."""
        theta = torch.log_softmax(self.ref_logp + self.bias, -1)
        return torch.where(torch.isfinite(theta), theta, 0.0).repeat(n_seeds, 1, 1)

    def token_log_probs(self, theta):
        """log pi_theta(token | prefix) with forbidden tokens at -inf: [S, n_nodes, V + 1]."""
        return torch.log_softmax(theta + self.bias, -1)

    def _sequence_logp(self, logp_nodes):
        """sum_t log pi(y_t | y_<t) for every y in Y, from [S, n_nodes, V + 1] log-probs: [S, |Y|]."""
        flat = logp_nodes.flatten(1)  # [S, n_nodes * (V + 1)]
        index = (self.path_node * (self.V + 1) + self.path_token).flatten()  # [|Y| * L]
        logp_tok = flat[:, index].view(-1, *self.path_node.shape)  # [S, |Y|, L]
        return (torch.where(self.path_mask > 0, logp_tok, 0.0)).sum(-1)

    def log_probs(self, theta):
        """log pi_theta(y) for every y in Y: [S, |Y|]."""
        return self._sequence_logp(self.token_log_probs(theta))

    def certainty(self, regime: Regime, theta):
        """token_certainty of pi_theta(. | prefix) summed over the prefixes each y visits: [S, |Y|] (the tokens
        the tree forbids at a prefix are outside its support)."""
        per_node = token_certainty(regime, self.token_log_probs(theta))  # [S, n_nodes]
        return torch.where(self.path_mask > 0, per_node[:, self.path_node], 0.0).sum(-1)

    def sample(self, theta, u):
        """Roll out G responses per seed with uniforms u [S, G, L].

        Returns (y [S, G] indices into Y, log pi_theta(y_t | y_<t) [S, G, L], mask [S, G, L]).
        """
        logp = self.token_log_probs(theta)  # [S, n_nodes, V + 1]
        S, G, _ = u.shape
        node = torch.zeros(S, G, dtype=torch.long)
        y = torch.zeros(S, G, dtype=torch.long)
        alive = torch.ones(S, G, dtype=torch.bool)
        logp_tok, mask = [], []
        for t in range(self.L):
            logp_next = logp.gather(1, node[..., None].expand(-1, -1, self.V + 1))  # [S, G, V + 1]
            tok = inverse_cdf(logp_next, u[..., t:t + 1])  # [S, G, 1]
            logp_tok.append(torch.where(alive, logp_next.gather(-1, tok)[..., 0], 0.0))
            mask.append(alive.to(DTYPE))
            end, child = self.end[node, tok[..., 0]], self.child[node, tok[..., 0]]
            y = torch.where(alive & (end >= 0), end, y)
            alive = alive & (end < 0)
            node = torch.where(alive, child, 0)
        return y, torch.stack(logp_tok, -1), torch.stack(mask, -1)


class SharedTokenPolicy(TreePolicy):
    """The same tree of responses, but one logit vector shared by every prefix: theta [S, V + 1].

    pi(y) = prod_t softmax(theta + mask)[y_t]: a position-independent token policy, the model of
    sharpening.theory.instability.gradient_moments. theta_0 = the root row of ref_logp (use it with a
    reference that is the same at every prefix, e.g. sharpening.toy.instability.iid_model's).
    """

    def init_logits(self, n_seeds: int) -> torch.Tensor:
        return super().init_logits(n_seeds)[:, 0]  # [S, V + 1]

    def token_log_probs(self, theta):
        return torch.log_softmax(theta[:, None, :] + self.bias, -1)  # [S, n_nodes, V + 1]


def markov_ref_logp(V: int, L: int, start, next_table, jitter: float = 0.0, seed: int = 0) -> np.ndarray:
    """Reference log-probs per prefix from a Markov table: root row `start`, else next_table[last token].

    start: [V + 1] probabilities of the first token (EOS entry ignored); next_table: [V, V + 1].
    jitter: standard deviation of a fixed Gaussian (numpy seed `seed`) added to the logits of prefixes of
    length >= 2 before renormalizing: it breaks the ties that a pure Markov chain makes between
    reorderings of the same tokens, and leaves the probabilities of responses with T <= 2 unchanged.
    Returns [n_nodes, V + 1] in the node order of TreePolicy (prefixes by length, then lexicographic).
    """
    start, next_table = np.asarray(start, dtype=float), np.asarray(next_table, dtype=float)
    prefixes = [p for m in range(1, L) for p in itertools.product(range(V), repeat=m)]
    with np.errstate(divide="ignore"):
        logits = np.log(np.array([start] + [next_table[p[-1]] for p in prefixes]))  # [n_nodes, V + 1]
    noise = np.random.default_rng(seed).normal(0.0, jitter, logits.shape)
    noise[: 1 + V] = 0.0  # the root and the prefixes of length 1 keep the table's exact values
    logits = logits + noise
    return logits - np.logaddexp.reduce(logits, -1, keepdims=True)


def paper_model(L: int = 5, fixed_length: bool = False) -> TreePolicy:
    """The canonical sequence model: V = 3, answer 0 correct, reference = the PAPER_* Markov table.

    The table's logits get a fixed jitter (0.3, seed 0) on prefixes of length >= 2, so no two responses
    tie. With L = 5 (363 responses; 243 with fixed_length): the likeliest response "2$" (p = 0.27, T = 2)
    is wrong, while pi_ref puts 0.56 of its mass on correct responses (E[T | correct] = 3.07, E[T] = 2.79).
    """
    ref_logp = markov_ref_logp(3, L, PAPER_START, PAPER_NEXT, jitter=0.3, seed=0)
    return TreePolicy(3, L, ref_logp, correct=0, fixed_length=fixed_length)


def enumerate_sequences(model: TreePolicy):
    """Every response of the model: (sequences [|Y|] as strings like "10$", lp_ref, r, lengths) as numpy.

    Feed lp_ref, r and lengths to sharpening.theory.fixed_point for the closed-form optimum over responses.
    """
    return list(model.sequences), model.lp_ref.numpy(), model.r.numpy(), model.lengths.numpy()


def describe(model: TreePolicy, probs) -> dict:
    """Sequence-level summary of a distribution over Y (probs [|Y|] or [S, |Y|], averaged over seeds, normalized).

    Returns mass on correct answers, expected length E[T], the likeliest response with its probability,
    length and correctness, and the likeliest answer (the majority vote's target) with its mass.
    """
    p = np.atleast_2d(np.asarray(probs)).mean(0)
    p = p / p.sum()  # pi_ref of the fixed-length model is a sub-probability (EOS mass not renormalized)
    mode = int(np.argmax(p))
    q = answer_masses(p, model.answers.numpy(), model.V)
    return {
        "correct_mass": float(p @ model.r.numpy()),
        "mean_length": float(p @ model.lengths.numpy()),
        "mode": model.sequences[mode],
        "mode_prob": float(p[mode]),
        "mode_length": int(model.lengths[mode]),
        "mode_correct": bool(model.r[mode] > 0),
        "answer_mode": int(np.argmax(q)),
        "answer_mode_mass": float(q.max()),
    }


def train(regime: Regime, model: TreePolicy | None = None, steps: int = 1000, group_size: int = 8,
          lr: float = 1.0, seeds=4, exact: bool = False, **options) -> TrainResult:
    """Train the tree policy (theta_0 = log pi_ref) under `regime`; model defaults to paper_model().

    Same arguments, options and result as sharpening.toy.bandit.train, with Y = every response:
    result.probs is [n_seeds, |Y|] in the order of enumerate_sequences(model). The exact dynamics follow
    grad E_pi[R]; the sampled ones the token-mean pg_loss, whose expectation is that gradient divided by
    the mean number of tokens (so a sampled run needs a larger lr for the same speed).
    """
    return train_policy(model or paper_model(), regime, steps, group_size, lr, seeds, exact, **options)
