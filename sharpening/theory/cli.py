"""`sharpening theory ...`: closed-form fixed points and analysis of small user-given examples.

    sharpening theory fixed-point --pi-ref 0.5,0.3,0.2 --reward 0,1,0 --regime tempered --alpha 2
    sharpening theory fixed-point --pi-ref 0.4,0.3,0.3 --reward 0,1,1 --answers 1,0,0 --regime majority_vote
    sharpening theory derive
    sharpening theory length-bias --p 0.7 --m 10 --stop 0.1
    sharpening theory snr --T 1,4,16,64 --G 8
    sharpening theory stability --pi-ref 0.5,0.2,0.15,0.1,0.05 --reward 0,1,0,1,0
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np

from sharpening.objective import LIKELIHOODS, MODES, NORMALIZATIONS, PRESETS, REWARDS, Regime

# Regime field -> the argparse dest of its flag (--reward-source sets the field reward: `theory fixed-point`
# already has --reward, the task reward of each output)
REGIME_FLAGS = {"mode": "mode", "alpha": "alpha", "beta_inv": "beta_inv", "normalization": "normalization",
                "weight": "weight", "reward": "reward_source", "likelihood": "likelihood", "p": "p"}


def add_parser(subparsers) -> None:
    theory = subparsers.add_parser("theory", help="closed-form fixed points and analysis of a small example",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = theory.add_subparsers(dest="theory_command", metavar="COMMAND", required=True)

    fp = sub.add_parser("fixed-point", help="exact optimum of a regime over a small output space Y")
    ref = fp.add_mutually_exclusive_group(required=True)
    ref.add_argument("--lp-ref", type=_floats,
                     help="log pi_ref(y) for each y, comma-separated; write --lp-ref=-1.2,-0.7 (a leading - needs =)")
    ref.add_argument("--pi-ref", type=_floats, help="pi_ref(y) for each y, comma-separated (instead of --lp-ref)")
    fp.add_argument("--reward", type=_floats, required=True, help="task reward r(y) for each y, comma-separated")
    fp.add_argument("--lengths", type=_floats, help="length T(y) for each y (needed by mean normalizations)")
    fp.add_argument("--answers", type=_ints, help="answer id of each y (-1: none), needed by --regime majority_vote")
    add_regime_arguments(fp, default="custom")
    fp.set_defaults(func=_guard(fixed_point_command))

    derive = sub.add_parser("derive", help="the sympy derivation of the fixed points, with LaTeX")
    derive.add_argument("--n", type=int, default=3, help="size of the output space in the derivation")
    derive.set_defaults(func=_guard(derive_command))

    lb = sub.add_parser("length-bias", help="mass on correct answers and expected length under pi_ref**alpha")
    lb.add_argument("--p", type=float, default=0.7, help="pass@1 of the many-paths model")
    lb.add_argument("--m", type=int, default=10, help="number of distinct correct sequences")
    lb.add_argument("--stop", type=float, default=0.1, help="per-step stop probability s of the length model")
    lb.add_argument("--token-probs", type=_floats, default=[0.5, 0.3, 0.2], help="content-token distribution u")
    lb.add_argument("--max-len", type=int, default=64, help="response cap in tokens for the capped column")
    lb.add_argument("--alphas", type=_floats, default=[0.0, 0.5, 1.0, 1.25, 2.0, 4.0, 8.0])
    lb.set_defaults(func=_guard(length_bias_command))

    snr = sub.add_parser("snr", help="signal-to-noise of the leave-one-out gradient against length T")
    snr.add_argument("--T", type=_ints, default=[1, 4, 16, 64, 256], help="response lengths, comma-separated")
    snr.add_argument("--G", type=int, default=8, help="samples per prompt")
    snr.add_argument("--token-probs", type=_floats, default=[0.5, 0.3, 0.2],
                     help="per-token policy = reference; token 0 is the answer (p = its probability)")
    snr.add_argument("--alpha", type=float, default=2.0, help="alpha of the tempered and tilted rows")
    snr.add_argument("--beta-inv", type=float, default=100.0, help="beta_inv of the tilted row")
    snr.set_defaults(func=_guard(snr_command))

    st = sub.add_parser("stability", help="largest stable learning rate of exact gradient ascent (sampling mode)")
    st.add_argument("--pi-ref", type=_floats, default=[0.5, 0.2, 0.15, 0.1, 0.05])
    st.add_argument("--reward", type=_floats, default=[0.0, 1.0, 0.0, 1.0, 0.0])
    st.add_argument("--alphas", type=_floats, default=[0.5, 1.0, 2.0, 4.0])
    st.add_argument("--beta-invs", type=_floats, default=[0.0, 1.0, 100.0])
    st.set_defaults(func=_guard(stability_command))


# --- parsing and errors --------------------------------------------------------------------------------

def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.replace(" ", ",").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(" ", ",").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def _guard(command):
    """Bad input is one line on stderr and exit code 2, never a traceback."""
    def run(args):
        try:
            return command(args)
        except ValueError as err:
            print(f"sharpening theory: error: {err}", file=sys.stderr)
            return 2
    return run


def add_regime_arguments(parser, default: str) -> None:
    """--regime PRESET|custom and the flags of its parameters (shared by `sharpening theory` and `sharpening toy`)."""
    parser.add_argument("--regime", choices=PRESETS + ("custom",), default=default,
                        help=f"a preset with the flags it takes (tempered: --alpha; tilted: --alpha --beta-inv; "
                             f"random_reward: --p), or custom with --mode and any field (default {default})")
    parser.add_argument("--mode", choices=MODES, help="custom only: none, optimization or sampling")
    parser.add_argument("--alpha", type=float, help="exponent on pi_ref (tempered, tilted, custom)")
    parser.add_argument("--beta-inv", type=float, help="weight of the reward r (tilted, custom)")
    parser.add_argument("--normalization", choices=NORMALIZATIONS, help="N: sum, mean, weighted_mean, none")
    parser.add_argument("--weight", type=float, help="w of weighted_mean: N = lp / T**w")
    parser.add_argument("--reward-source", choices=REWARDS,
                        help="custom only: the regime's reward field, what r is (task, majority_vote, random)")
    parser.add_argument("--likelihood", choices=LIKELIHOODS, help="custom only: what N normalizes")
    parser.add_argument("--p", type=float, help="success probability of the random reward (random_reward, custom)")


def regime_from_args(args) -> Regime:
    """Regime.from_spec of --regime and the flags given: strict, a flag the preset does not take is an error."""
    given = {k: getattr(args, dest) for k, dest in REGIME_FLAGS.items() if getattr(args, dest) is not None}
    if args.regime != "custom":
        return Regime.from_spec({"preset": args.regime, **given})
    if "mode" not in given:
        raise ValueError(f"--regime custom needs --mode, one of {MODES}")
    return Regime.from_spec(given)


def _distribution(values: list[float], flag: str) -> np.ndarray:
    """Probabilities from the user's numbers: finite, >= 0, not all 0; rescaled to sum to 1 (with a note on
    stderr) when they do not, since the fixed point under a mean normalization depends on the scale."""
    p, shown = np.array(values, dtype=float), ",".join(f"{v:g}" for v in values)
    if not np.isfinite(p).all():
        raise ValueError(f"{flag} {shown} must be finite probabilities (>= 0, not all 0)")
    if (p < 0).any():
        raise ValueError(f"{flag} {shown} has a negative probability; give probabilities >= 0, not all 0")
    if p.sum() == 0:
        raise ValueError(f"{flag} {shown} is all 0; give probabilities >= 0 with a positive sum")
    if not math.isclose(p.sum(), 1.0, rel_tol=1e-9):
        p = p / p.sum()
        print(f"sharpening theory: note: {flag} sums to {sum(values):g}, not 1: normalized to "
              f"{','.join(f'{v:.4g}' for v in p)}", file=sys.stderr)
    return p


def _table(header: list[str], rows: list[list]) -> str:
    cells = [header] + [[f"{x:.4g}" if isinstance(x, float) else str(x) for x in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells)


# --- commands ----------------------------------------------------------------------------------------

def fixed_point_command(args) -> int:
    from sharpening.theory import fixed_point

    if args.pi_ref is not None:
        with np.errstate(divide="ignore"):
            lp_ref = np.log(_distribution(args.pi_ref, "--pi-ref"))
    else:
        lp_ref = np.array(args.lp_ref)
        if np.isnan(lp_ref).any() or np.isposinf(lp_ref).any() or np.isneginf(lp_ref).all():
            raise ValueError(f"--lp-ref {args.lp_ref} must be log-probabilities: no nan or +inf, and not all -inf")
    r = np.array(args.reward)
    if r.shape != lp_ref.shape:
        raise ValueError(f"--reward has {r.size} values but the reference has {lp_ref.size}; give one per output")
    lengths = None if args.lengths is None else np.array(args.lengths)
    if lengths is not None and lengths.shape != lp_ref.shape:
        raise ValueError(f"--lengths has {lengths.size} values but the reference has {lp_ref.size}")
    if lengths is not None and (lengths < 1).any():
        raise ValueError(f"--lengths {args.lengths} must all be >= 1")
    answers = None if args.answers is None else np.array(args.answers)
    if answers is not None and answers.shape != lp_ref.shape:
        raise ValueError(f"--answers has {answers.size} values but the reference has {lp_ref.size}")
    regime = regime_from_args(args)
    pi_star = fixed_point(regime, lp_ref, r, lengths, answers)
    pi_ref = np.exp(lp_ref)
    header = ["y", "r"] + (["T"] if lengths is not None else []) + ["pi_ref", "pi*"]
    T = [] if lengths is None else [[float(t)] for t in lengths]
    rows = [[i, float(r[i]), *(T[i] if T else []), float(pi_ref[i]), float(pi_star[i])] for i in range(len(r))]
    print(f"fixed point of {regime.name}: {regime}")
    print(_table(header, rows))
    print(f"mass on correct (r = 1):  pi_ref {pi_ref @ (r == 1) / pi_ref.sum():.4g}   pi* {pi_star @ (r == 1):.4g}")
    if lengths is not None:
        print(f"expected length:          pi_ref {pi_ref @ lengths / pi_ref.sum():.4g}   pi* {pi_star @ lengths:.4g}")
    return 0


def derive_command(args) -> int:
    from sharpening.theory import derivation

    if args.n < 2:
        raise ValueError(f"--n={args.n} must be >= 2 outputs")
    stat, power = derivation.stationary_point(args.n), derivation.power_distribution(args.n)
    hess, opt = derivation.entropy_hessian(args.n), derivation.optimization_vertex(args.n)
    print("Sampling mode: stationary point of L = sum pi [beta_inv r + (alpha-1) N + lp_ref] + H(pi), sum pi = 1")
    print(f"  pi*_1 = {stat['expected'][0]}    (solved by sympy: equal = {stat['matches']})")
    print(f"  N = sum: pi*_1 = {power['expected'][0]}    (equal = {power['matches']})")
    print(f"  Hessian of L: diag{tuple(hess['hessian'][i, i] for i in range(args.n))}"
          f"  negative definite = {hess['negative_definite']}")
    print("Optimization mode: E_pi[s], s = beta_inv r + alpha N, is linear in pi")
    print(f"  Hessian = 0: {opt['hessian'].is_zero_matrix};  gradient along the simplex: {opt['simplex_gradient']}")
    print(f"  value at vertex k = s_k: {opt['vertex_values']};  s_max - E_pi[s] = sum pi (s_max - s) >= 0: "
          f"{opt['gap_identity']}")
    print("\nLaTeX:")
    print(derivation.latex(args.n))
    return 0


def length_bias_command(args) -> int:
    from sharpening.theory import length_bias as lb

    alphas = np.array(args.alphas)
    if (alphas < 0).any():
        raise ValueError(f"--alphas {args.alphas} must all be >= 0")
    # compute everything first: bad input fails before anything is printed
    mass = lb.correct_mass(alphas, args.p, args.m)
    a_star = lb.alpha_star(args.p, args.m) if args.m >= 2 else math.nan
    lengths = [[float(a), float(lb.expected_length(a, args.stop, args.token_probs)),
                lb.expected_length(a, args.stop, args.token_probs, args.max_len)] for a in alphas]
    modes = [lb.mode_length(args.stop, args.token_probs), lb.mode_length(args.stop, args.token_probs, args.max_len)]
    print(f"Many correct paths: pass@1 p = {args.p:g} over m = {args.m} sequences ({args.p / args.m:.3g} each), "
          f"one wrong sequence q = {1 - args.p:.3g}")
    print(_table(["alpha", "mass on correct under pi_ref^alpha"], [[float(a), float(c)] for a, c in zip(alphas, mass)]))
    print(f"limit alpha -> inf: {lb.correct_mass_limit(args.p, args.m):g}   alpha* (mass = 1/2): {a_star:.4g}")
    print(f"\nLength bias: stop probability s = {args.stop:g}, content tokens u = {args.token_probs}")
    print(_table(["alpha", "E[T] (no cap)", f"E[T] (cap {args.max_len})"], lengths))
    print(f"mode length (alpha -> inf): {modes[0]} (no cap), {modes[1]} (cap {args.max_len})")
    return 0


def snr_command(args) -> int:
    from sharpening.theory.instability import gradient_moments

    u = np.array(args.token_probs)
    regimes = [Regime.task_reward(), Regime.sharpening(), Regime.sharpening("mean"), Regime.tempered(args.alpha),
               Regime.tilted(args.alpha, args.beta_inv)]
    moments = [[gradient_moments(g, u, u, T, args.G) for T in args.T] for g in regimes]
    header = ["regime"] + [f"T={T}" for T in args.T]
    print(f"SNR = ||E g||^2 / E||g - E g||^2 of the leave-one-out gradient, G = {args.G}, fixed length T, "
          f"pi = pi_ref = {u.tolist()}, p = {u[0]:g}")
    print(_table(header, [[g.name] + [m.snr for m in row] for g, row in zip(regimes, moments)]))
    print("\n||E g|| (the gradient's scale)")
    print(_table(header, [[g.name] + [math.sqrt(m.signal) for m in row] for g, row in zip(regimes, moments)]))
    return 0


def stability_command(args) -> int:
    from sharpening.theory.instability import max_stable_lr

    pi_ref, r = _distribution(args.pi_ref, "--pi-ref"), np.array(args.reward)
    if r.shape != pi_ref.shape or (pi_ref <= 0).any():
        raise ValueError(f"--pi-ref {args.pi_ref} must be positive with one --reward per entry, got {args.reward}")
    rows = [[f"alpha={a:g}"] + [max_stable_lr(Regime("sampling", a, b), np.log(pi_ref), r) for b in args.beta_invs]
            for a in args.alphas]
    print(f"max stable learning rate of exact gradient ascent on softmax logits, pi_ref = {args.pi_ref}, "
          f"r = {args.reward}")
    print(_table(["", *[f"beta_inv={b:g}" for b in args.beta_invs]], rows))
    return 0
