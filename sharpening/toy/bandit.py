"""A K-armed softmax bandit trained with the objective's own rewards, advantages and loss.

The policy is pi_theta(k) = softmax(theta)_k with theta initialized to log pi_ref; arm k has task reward
r_k (1 correct, 0 wrong) and reference log-likelihood lp_ref_k. Two dynamics, vectorized over seeds:

    exact:    theta <- theta + lr * pi_k (R_k - E_pi R)        R = shaped_reward(regime, r, lp_ref, log pi)
    sampled:  draw G arms y_1..y_G ~ pi_old per seed, R_i = shaped_reward(...), A = rloo_advantages(R),
              theta <- theta - lr * grad pg_loss(log pi_theta(y), A)    (the LLM trainer's REINFORCE loss)

The label-free signals run through the same two dynamics: the sampled one draws r from the regime's reward
(`majority_vote_rewards` over each seed's G answers, or `random_rewards` from one more uniform per sample) and
scores per-token certainty on the policy's logits (`token_certainty`); the exact one follows the sampled
estimator's expected update (sharpening.theory.signals.expected_rewards: a group-level expectation for the
majority vote, the constant p for the random reward). R is held fixed in both, as in the LLM trainer: for
neg_entropy and self_certainty, whose R depends on theta beyond lp_old, the exact dynamics are the expected
update of that estimator, not the gradient of E_pi[R].

The training loop (`train_policy`) only needs the policy to enumerate its outputs Y and to sample from
them, so the small autoregressive model of `sharpening.toy.sequence` reuses it unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from sharpening.objective import (Regime, majority_vote_rewards, pg_loss, random_rewards, rloo_advantages,
                                  shaped_reward, token_certainty)
from sharpening.theory.fixed_points import NoClosedForm, fixed_point, fixed_point_is_a_set
from sharpening.theory.signals import expected_rewards

DTYPE = torch.float64
OPTIMIZERS = ("sgd", "adam")
RNG_CHUNK = 128  # steps of uniforms drawn per seed at once (per-seed streams, see SeedStreams)


@dataclass
class TrainResult:
    """What `train` returns: the final policies and a history logged at `steps`, as numpy arrays.

    probs:             [n_seeds, |Y|] final pi_theta(y) per seed (|Y| = K for the bandit).
    steps:             [n_logged] step numbers of the history rows (0 = initial policy, last = `steps`).
    task_reward:       [n_logged, n_seeds] E_pi[r], the mass on correct outputs.
    entropy:           [n_logged, n_seeds] H(pi) in nats (sequence-level for the sequence model).
    tv_to_fixed_point: [n_logged, n_seeds] total-variation distance to the regime's fixed point: for the
                       sampling mode (and the signals that leave pi_ref where it is) 0.5 * sum_y |pi(y) - pi*(y)|;
                       for optimization / none, whose optimum is the set of distributions on argmax_y of the
                       score (majority vote: on the answer-level mode), the distance to that set = mass off it
                       (equal to the TV to pi* when the argmax is unique). NaN where the theory has no closed
                       form (sharpening.theory.fixed_points.NoClosedForm).
    grad_norm:         [n_logged, n_seeds] L2 norm of the update direction before clipping (the exact
                       gradient, or the sampled gradient of pg_loss).
    reward_var:        [n_logged, n_seeds] Var[R] of one sample computed exactly by enumeration, with
                       lp_old = log pi: the variance the REINFORCE estimator has to average out (for a reward
                       that is random given y, Var_y E[R | y] + E_y Var[r | y]).
    mean_length:       [n_logged, n_seeds] E_pi[T] (1 for the bandit).
    max_logit:         [n_logged, n_seeds] max_k |theta_k| (blow-up detector; NaN once diverged).
    fixed_point:       [|Y|] pi* = sharpening.theory.fixed_point(regime, lp_ref, r, lengths, answers) (NaN: none).
    lp_ref, r, lengths, answers: [|Y|] the enumerated outputs' reference log-likelihood, task reward, length T
                       and answer id.
    seeds:             [n_seeds] the seeds (seed s gives the same run whichever other seeds run beside it).
    regime, exact, lr: the settings of the run.
    """

    probs: np.ndarray
    steps: np.ndarray
    task_reward: np.ndarray
    entropy: np.ndarray
    tv_to_fixed_point: np.ndarray
    grad_norm: np.ndarray
    reward_var: np.ndarray
    mean_length: np.ndarray
    max_logit: np.ndarray
    fixed_point: np.ndarray
    lp_ref: np.ndarray
    r: np.ndarray
    lengths: np.ndarray
    answers: np.ndarray
    seeds: np.ndarray
    regime: Regime
    exact: bool
    lr: float

    HISTORY = ("task_reward", "entropy", "tv_to_fixed_point", "grad_norm", "reward_var", "mean_length", "max_logit")

    def final(self, name: str) -> np.ndarray:
        """The last logged row of a history metric: [n_seeds]."""
        return getattr(self, name)[-1]


def wrong_mode_bandit(K: int = 5):
    """A bandit whose most likely arm is wrong: returns (lp_ref, r), both [K].

    K = 5 (the canonical one): pi_ref = [0.4, 0.2, 0.2, 0.1, 0.1], r = [0, 1, 1, 0, 1]: the mode (arm 0,
    0.4) is wrong while the correct arms hold 0.5 of the mass, so sharpening (R = lp_ref) converges to arm 0
    and task-reward RL to the correct set {1, 2, 4}. The correct arms are three ways to write the one correct
    answer (`default_answers`): the answer-level mode (0.5) is right, so the majority vote is too. Other K >= 3: pi_ref = [0.4, 0.6 / (K - 1), ...] and
    r_k = 1 unless k is a multiple of 3 (arm 0 wrong).
    """
    if K == 5:
        return np.log([0.4, 0.2, 0.2, 0.1, 0.1]), np.array([0.0, 1.0, 1.0, 0.0, 1.0])
    if not isinstance(K, (int, np.integer)) or K < 3:
        raise ValueError(f"K={K!r} must be an int >= 3 (with K = 2 the mode could not be the only wrong arm)")
    pi_ref = np.array([0.4] + [0.6 / (K - 1)] * (K - 1))
    return np.log(pi_ref), (np.arange(K) % 3 != 0).astype(float)


def default_answers(r) -> np.ndarray:
    """Answer ids of outputs known only by their task reward: every correct output gives the one correct answer
    (id 0); each wrong output its own wrong answer (ids 1, 2, ...)."""
    r = np.asarray(r, dtype=float)
    return np.where(r > 0, 0, np.cumsum(r <= 0))


class SoftmaxBandit:
    """pi_theta = softmax(theta) over K arms; every output is one token (T = 1). theta: [S, K].

    answers: the answer id of each arm (equal ids: the same answer, as the majority vote sees it); default
    `default_answers(r)`."""

    n_uniforms = 1  # uniforms needed to draw one sample

    def __init__(self, lp_ref, r, answers=None):
        self.lp_ref = torch.as_tensor(np.asarray(lp_ref, dtype=float), dtype=DTYPE)  # [K]
        self.r = torch.as_tensor(np.asarray(r, dtype=float), dtype=DTYPE)  # [K]
        if self.lp_ref.ndim != 1 or self.lp_ref.shape != self.r.shape or len(self.r) < 2:
            raise ValueError(f"lp_ref and r must be 1-D of the same length K >= 2, got shapes "
                             f"{tuple(self.lp_ref.shape)} and {tuple(self.r.shape)}")
        if not torch.isfinite(self.lp_ref).all():
            raise ValueError("lp_ref must be finite on every arm (pi_ref(k) > 0)")
        self.lengths = torch.ones_like(self.r)  # [K]
        answers = default_answers(r) if answers is None else np.asarray(answers)
        if answers.shape != tuple(self.r.shape) or answers.dtype.kind not in "iu" or (answers < -1).any():
            raise ValueError(f"answers={answers!r} must be one integer id >= -1 per arm (-1: no answer)")
        self.answers = torch.as_tensor(answers, dtype=torch.long)  # [K]

    def init_logits(self, n_seeds: int) -> torch.Tensor:
        return torch.log_softmax(self.lp_ref, -1).repeat(n_seeds, 1)  # [S, K]

    def log_probs(self, theta):
        """log pi_theta(y) for every y: [S, K]."""
        return torch.log_softmax(theta, -1)

    def sample(self, theta, u):
        """Inverse-CDF draws from u [S, G, 1] -> (y [S, G], log pi_theta(y_t) [S, G, 1], mask [S, G, 1])."""
        logp = torch.log_softmax(theta, -1)  # [S, K]
        y = inverse_cdf(logp, u[..., 0])  # [S, G]
        return y, logp.gather(-1, y)[..., None], torch.ones_like(u)

    def certainty(self, regime: Regime, theta):
        """Sum over the tokens of each output of token_certainty: one token, scored on the one distribution
        softmax(theta) whichever arm is drawn. [S, K]"""
        return token_certainty(regime, theta)[:, None].expand(-1, len(self.r))


def inverse_cdf(logp, u):
    """Draw indices from the categoricals exp(logp) [..., K] with uniforms u [..., n]: [..., n].

    u is scaled by the total mass, so rounding never reaches past the last index, and an index of zero
    probability is never drawn (searchsorted returns the first index whose cdf reaches u).
    """
    cdf = logp.detach().exp().cumsum(-1)
    return torch.searchsorted(cdf, u * cdf[..., -1:]).clamp(max=logp.shape[-1] - 1)


class SeedStreams:
    """One torch.Generator per seed, drawn in chunks: a seed's run does not depend on its neighbours."""

    def __init__(self, seeds, shape):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.shape, self.buffer, self.used = tuple(shape), None, RNG_CHUNK

    def next(self) -> torch.Tensor:
        """Uniforms [S, *shape] for one step."""
        if self.used == RNG_CHUNK:
            self.buffer = torch.stack([torch.rand(RNG_CHUNK, *self.shape, generator=g, dtype=DTYPE)
                                       for g in self.generators], 1)  # [chunk, S, *shape]
            self.used = 0
        self.used += 1
        return self.buffer[self.used - 1]


def as_seeds(seeds) -> np.ndarray:
    """seeds: a count n (-> 0..n-1) or an explicit list of ints -> int array [n_seeds]."""
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ValueError(f"seeds={seeds} must be a count >= 1 or a list of ints")
        return np.arange(seeds)
    seeds = np.asarray(list(seeds))
    if seeds.ndim != 1 or seeds.size == 0 or seeds.dtype.kind not in "iu":
        raise ValueError(f"seeds={seeds!r} must be a count >= 1 or a non-empty list of ints")
    return seeds


def train(regime: Regime, lp_ref, task_reward, steps: int, group_size: int = 8, lr: float = 1.0, seeds=4,
          exact: bool = False, answers=None, **options) -> TrainResult:
    """Train the softmax bandit pi = softmax(theta), theta_0 = log pi_ref, for `steps` updates.

    regime: a sharpening.objective.Regime; lp_ref: log pi_ref(k) [K]; task_reward: r_k [K] (0/1);
    answers: answer id per arm for the majority vote (default: `default_answers(task_reward)`);
    group_size: G samples per seed and step (sampled dynamics); lr: step size; seeds: a count or a list of
    ints; exact: follow the expected gradient pi_k (R_k - E_pi R) instead of sampling.
    options: optimizer ("sgd" plain gradient ascent, or "adam"), max_grad_norm (per-seed clipping, None =
    off), log_every (history stride, default steps // 100), progress (a tqdm bar).
    Returns a TrainResult (see its docstring for every array and its shape).
    """
    return train_policy(SoftmaxBandit(lp_ref, task_reward, answers), regime, steps, group_size, lr, seeds, exact,
                        **options)


def train_policy(policy, regime: Regime, steps: int, group_size: int = 8, lr: float = 1.0, seeds=4,
                 exact: bool = False, optimizer: str = "sgd", max_grad_norm: float | None = None,
                 log_every: int | None = None, progress: bool = False) -> TrainResult:
    """The training loop shared by the bandit and the sequence model (same arguments as `train`).

    policy must provide lp_ref, r, lengths, answers ([|Y|] tensors over its enumerated outputs), init_logits(S),
    log_probs(theta) -> [S, |Y|], n_uniforms, sample(theta, u [S, G, n_uniforms]) ->
    (y [S, G] indices into Y, log pi_theta of each token [S, G, T], mask [S, G, T]) and
    certainty(regime, theta) -> [S, |Y|] (token_certainty summed along each output).
    """
    _check_settings(regime, steps, group_size, lr, optimizer, max_grad_norm)
    with one_thread():
        return _train_policy(policy, regime, steps, group_size, lr, as_seeds(seeds), exact, optimizer,
                             max_grad_norm, log_every, progress)


@contextmanager
def one_thread():
    """Run torch on one thread: these tensors are tiny, and threads on shared cores cost 30x (measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train_policy(policy, regime, steps, group_size, lr, seeds, exact, optimizer, max_grad_norm, log_every,
                  progress):
    log_every = log_every or max(1, steps // 100)
    logged = sorted(set(range(0, steps + 1, log_every)) | {steps})
    try:
        pi_star = fixed_point(regime, policy.lp_ref.numpy(), policy.r.numpy(), policy.lengths.numpy(),
                              policy.answers.numpy())
    except NoClosedForm:
        pi_star = np.full(len(policy.r), np.nan)
    distance = "nan" if np.isnan(pi_star).any() else "mass_off" if fixed_point_is_a_set(regime) else "tv"

    theta = policy.init_logits(len(seeds)).requires_grad_(True)  # [S, ...]
    opt = (torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam)([theta], lr=lr)
    extra = 1 if regime.reward == "random" else 0  # the random reward's own uniform per sample
    streams = None if exact else SeedStreams(seeds, (group_size, policy.n_uniforms + extra))
    history = {name: [] for name in TrainResult.HISTORY}
    bar = range(steps + 1)
    if progress:
        from tqdm import tqdm
        bar = tqdm(bar, desc=regime.name, leave=False)
    for step in bar:
        theta.grad = None
        if exact:
            loss = exact_loss(policy, regime, theta, group_size)
        else:
            loss = sampled_loss(policy, regime, theta, streams.next())
        loss.backward()  # theta.grad = -(ascent direction), one row per seed
        grad_norm = theta.grad.flatten(1).norm(dim=1)  # [S]
        if step in logged:
            metrics = policy_metrics(policy, regime, theta.detach(), pi_star, distance, group_size)
            for name, value in {**metrics, "grad_norm": grad_norm}.items():
                history[name].append(value.numpy().copy())
        if step == steps:
            break
        if max_grad_norm is not None:  # clip each seed's gradient on its own
            scale = (max_grad_norm / grad_norm.clamp(min=1e-12)).clamp(max=1.0)
            theta.grad.mul_(scale.view(-1, *[1] * (theta.ndim - 1)))
        opt.step()

    probs = policy.log_probs(theta.detach()).exp().numpy()
    return TrainResult(
        probs=probs, steps=np.array(logged), **{k: np.stack(v) for k, v in history.items()},
        fixed_point=pi_star, lp_ref=policy.lp_ref.numpy(), r=policy.r.numpy(), lengths=policy.lengths.numpy(),
        answers=policy.answers.numpy(), seeds=seeds, regime=regime, exact=exact, lr=lr,
    )


def _check_settings(regime, steps, group_size, lr, optimizer, max_grad_norm):
    if not isinstance(regime, Regime):
        raise ValueError(f"regime must be a sharpening.objective.Regime, got {regime!r}")
    if not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps={steps!r} must be an int >= 0")
    if not isinstance(group_size, (int, np.integer)) or group_size < 2:
        raise ValueError(f"group_size={group_size!r} must be an int >= 2 (leave-one-out baseline)")
    if not 0 < lr < float("inf"):  # also refuses nan
        raise ValueError(f"lr={lr!r} must be a finite number > 0")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer={optimizer!r} is not one of {OPTIMIZERS}")
    if max_grad_norm is not None and not max_grad_norm > 0:
        raise ValueError(f"max_grad_norm={max_grad_norm!r} must be > 0 or None")


def enumerated_rewards(policy, regime: Regime, theta, logp, group_size: int = 8):
    """R(y) for every y under the current policy (lp_old = log pi), all [S, |Y|]: (R_update, R_mean, r_var).

    R_update: with r replaced by the expected-update reward of sharpening.theory.signals.expected_rewards (the
    task reward itself, the majority vote's group expectation, or p); R_mean: with E[r | y]; r_var: Var[r | y].
    """
    pi = logp.detach().exp()
    S = pi.shape[0]
    expand = lambda x: x.expand(S, -1)  # noqa: E731  [|Y|] -> [S, |Y|]
    terms = expected_rewards(regime, pi.numpy(), policy.r.numpy(), policy.answers.numpy(), group_size)
    r_update, r_mean, r_var = (torch.tensor(np.broadcast_to(t, pi.shape), dtype=DTYPE) for t in terms)
    certainty = policy.certainty(regime, theta.detach()) if regime.needs_certainty else None

    def R(r):
        return shaped_reward(regime, r, expand(policy.lp_ref), logp.detach(), expand(policy.lengths),
                             certainty=certainty)
    return R(r_update), R(r_mean), r_var


def exact_loss(policy, regime: Regime, theta, group_size: int = 8):
    """-sum_y pi(y) (R(y) - E_pi R) log pi_theta(y), pi and R held fixed: its gradient is minus the expected update.

    For the bandit and a reward that is a function of y, grad_theta_k E_pi[R] = pi_k (R_k - E_pi R).
    group_size: G, which the majority vote's expectation depends on.
    """
    logp = policy.log_probs(theta)  # [S, |Y|]
    pi = logp.detach().exp()
    R = enumerated_rewards(policy, regime, theta, logp, group_size)[0]
    R = torch.where(pi > 0, R, 0.0)  # outputs the policy cannot produce carry no weight (avoid inf * 0)
    baseline = (pi * R).sum(-1, keepdim=True)
    return -(pi * (R - baseline) * torch.where(pi > 0, logp, 0.0)).sum()


def sampled_rewards(policy, regime: Regime, y, u):
    """r of G sampled outputs per seed, y [S, G] (u [S, G, n]: the random reward reads the last uniform)."""
    if regime.reward == "majority_vote":
        return majority_vote_rewards(policy.answers[y])  # each seed's G answers are one group
    if regime.reward == "random":
        return random_rewards(u[..., -1], regime.p)
    return policy.r[y]


def sampled_loss(policy, regime: Regime, theta, u):
    """pg_loss on G samples per seed with leave-one-out advantages; each seed is its own token-mean.

    pg_loss divides by the tokens of the whole batch; the advantages are scaled by n_tokens(batch) /
    n_tokens(seed) so that each seed's gradient is its own token-mean over its G rollouts, as if it ran alone.
    """
    y, logp_tok, mask = policy.sample(theta, u[..., :policy.n_uniforms])  # [S, G], [S, G, T], [S, G, T]
    S, G, T = logp_tok.shape
    lp_old = (logp_tok.detach() * mask).sum(-1)  # [S, G]
    certainty = policy.certainty(regime, theta.detach()).gather(1, y) if regime.needs_certainty else None
    R = shaped_reward(regime, sampled_rewards(policy, regime, y, u), policy.lp_ref[y], lp_old, policy.lengths[y],
                      certainty=certainty)  # [S, G]
    A = rloo_advantages(R)  # [S, G]
    tokens = mask.sum((1, 2))  # [S]
    A = A * (tokens.sum() / tokens)[:, None]
    return pg_loss(logp_tok.reshape(S * G, T), A.reshape(S * G), mask.reshape(S * G, T))


def policy_metrics(policy, regime: Regime, theta, pi_star, distance: str, group_size: int = 8) -> dict:
    """Exact metrics of the current policies by enumeration: each [S]. distance: how tv_to_fixed_point is measured
    ("tv" to the point pi*, "mass_off" its support, "nan")."""
    logp = policy.log_probs(theta)  # [S, |Y|]
    pi = logp.exp()
    _, R, r_var = enumerated_rewards(policy, regime, theta, logp, group_size)
    R, r_var = torch.where(pi > 0, R, 0.0), torch.where(pi > 0, r_var, 0.0)
    mean_R = (pi * R).sum(-1)
    if distance == "tv":
        tv = 0.5 * (pi - torch.as_tensor(pi_star)).abs().sum(-1)
    elif distance == "mass_off":
        tv = 1 - (pi * torch.as_tensor(pi_star > 0)).sum(-1)
    else:
        tv = torch.full_like(mean_R, torch.nan)
    return {
        "task_reward": pi @ policy.r,
        "entropy": -torch.special.xlogy(pi, pi).sum(-1),
        "tv_to_fixed_point": tv,
        "reward_var": (pi * (R - mean_R[:, None]) ** 2).sum(-1) + (pi * r_var).sum(-1),
        "mean_length": pi @ policy.lengths,
        "max_logit": theta.flatten(1).abs().max(1).values,
    }
