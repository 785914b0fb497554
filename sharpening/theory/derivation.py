"""Symbolic derivation (sympy) of the fixed points over a finite output space Y = {y_1..y_n}.

Sampling mode. Multiplying the expected shaped reward by beta_inv (and with lp_old = log pi, the policy
being optimized) gives, up to a constant, the entropy-regularized objective

    L(pi) = sum_i pi_i [beta_inv r_i + (alpha - 1) N_i + lp_ref_i] + H(pi),   H(pi) = -sum_i pi_i log pi_i,

maximized on the simplex sum_i pi_i = 1 (a Lagrange multiplier lam). Its stationary point is
pi_i = pi_ref_i exp((alpha - 1) N_i + beta_inv r_i) / Z, and with N = sum (N_i = lp_ref_i = log pi_ref_i)
pi_i = pi_ref_i**alpha exp(beta_inv r_i) / Z. The Hessian of L is that of H, diag(-1 / pi_i): negative
definite on the interior, so the stationary point is the unique maximum. (With beta_inv = 0 the same
algebra holds with the objective itself; the factor beta_inv only rescales it.)

Optimization mode. E_pi[R] times beta_inv is sum_i pi_i s_i with s_i = beta_inv r_i + alpha N_i: linear in
pi (zero Hessian), so on the simplex sum_i pi_i s_i = s_max - sum_i pi_i (s_max - s_i) <= s_max with equality
only on the argmax vertices: the optimum is a deterministic policy on argmax_i s_i.

n = 3 outputs make every statement concrete; nothing in the algebra depends on n (see `stationary_point(n)`).
"""

from __future__ import annotations

from functools import cache

import sympy as sp

alpha, beta_inv = sp.symbols("alpha beta_inv", nonnegative=True)
lam = sp.Symbol("lambda")


def _symbols(name: str, n: int, **assumptions):
    return sp.symbols(f"{name}_1:{n + 1}", **assumptions)


@cache  # sympy is slow and the results are immutable expressions
def stationary_point(n: int = 3) -> dict:
    """Solve dL/dpi_i = 0 and sum_i pi_i = 1 for the sampling-mode objective with a general N.

    Returns {"pi": [pi_i], "expected": [pi_ref_i exp((alpha-1) N_i + beta_inv r_i) / Z], "matches": bool}.
    """
    pi = _symbols("pi", n, positive=True)
    p_ref = _symbols("pi_ref", n, positive=True)  # lp_ref_i = log pi_ref_i
    r, N = _symbols("r", n, real=True), _symbols("N", n, real=True)
    L = sum(pi[i] * (beta_inv * r[i] + (alpha - 1) * N[i] + sp.log(p_ref[i])) - pi[i] * sp.log(pi[i])
            for i in range(n)) + lam * (sum(pi) - 1)
    # dL/dpi_i = 0 is log pi_i = c_i + lam - 1: solve for pi_i, then fix lam by normalization
    pi_lam = [sp.solve(sp.diff(L, pi[i]), pi[i])[0] for i in range(n)]
    lam_star = sp.solve(sum(pi_lam) - 1, lam)[0]
    pi_star = [p.subs(lam, lam_star) for p in pi_lam]
    weights = [p_ref[i] * sp.exp((alpha - 1) * N[i] + beta_inv * r[i]) for i in range(n)]
    expected = [w / sum(weights) for w in weights]
    matches = all(_equal(a, b) for a, b in zip(pi_star, expected))
    return {"pi": pi_star, "expected": expected, "matches": matches, "symbols": (pi, p_ref, r, N)}


def _equal(a, b) -> bool:
    """a == b as rational functions of the exponentials: split exp(u + v) = exp(u) exp(v) and write
    exp(k log y) = y**k (valid for the positive pi_ref), then cancel."""
    k, y = sp.Wild("k"), sp.Wild("y")

    def canonical(x):
        x = sp.expand(sp.expand_log(x, force=True), power_exp=True, mul=True, log=False)
        return x.replace(sp.exp(k * sp.log(y)), y**k)

    return sp.cancel(canonical(a) - canonical(b)) == 0


@cache  # sympy is slow and the results are immutable expressions
def power_distribution(n: int = 3) -> dict:
    """N = sum (N_i = log pi_ref_i): the stationary point is pi_ref_i**alpha exp(beta_inv r_i) / Z."""
    result = stationary_point(n)
    _, p_ref, r, N = result["symbols"]
    pi_sum = [p.subs(dict(zip(N, map(sp.log, p_ref)))) for p in result["pi"]]
    weights = [p_ref[i] ** alpha * sp.exp(beta_inv * r[i]) for i in range(n)]
    expected = [w / sum(weights) for w in weights]
    matches = all(_equal(a, b) for a, b in zip(pi_sum, expected))
    return {"pi": pi_sum, "expected": expected, "matches": matches}


@cache  # sympy is slow and the results are immutable expressions
def entropy_hessian(n: int = 3) -> dict:
    """The Hessian of L in pi is that of H(pi): diag(-1/pi_i), negative definite for pi_i > 0."""
    pi = _symbols("pi", n, positive=True)
    c = _symbols("c", n, real=True)  # the linear part beta_inv r + (alpha - 1) N + lp_ref does not matter
    L = sum(pi[i] * c[i] - pi[i] * sp.log(pi[i]) for i in range(n))
    hessian = sp.hessian(L, pi)
    eigenvalues = list(hessian.eigenvals())
    negative_definite = all(sp.ask(sp.Q.negative(e)) for e in eigenvalues)
    return {"hessian": hessian, "eigenvalues": eigenvalues, "negative_definite": negative_definite}


@cache  # sympy is slow and the results are immutable expressions
def optimization_vertex(n: int = 3) -> dict:
    """The optimization mode maximizes sum_i pi_i s_i, s_i = beta_inv r_i + alpha N_i: linear in pi.

    Returns the objective, its zero Hessian, its gradient along the simplex (pi_n = 1 - sum of the others):
    the constants s_i - s_n, never all zero unless every s_i is equal, so no interior maximum; its value
    at each vertex e_k (s_k); and the gap s_max - E_pi[s] = sum_i pi_i (s_max - s_i), a sum of non-negative
    terms on the simplex that is zero only on argmax vertices ("gap_identity": it holds on the simplex).
    """
    pi = _symbols("pi", n, nonnegative=True)
    r, N = _symbols("r", n, real=True), _symbols("N", n, real=True)
    s = [beta_inv * r[i] + alpha * N[i] for i in range(n)]
    objective = sum(pi[i] * s[i] for i in range(n))
    on_simplex = {pi[-1]: 1 - sum(pi[:-1])}
    simplex_gradient = [sp.expand(sp.diff(objective.subs(on_simplex), p)) for p in pi[:-1]]
    vertex_values = [objective.subs({p: int(i == k) for i, p in enumerate(pi)}) for k in range(n)]
    s_max = sp.Symbol("s_max", real=True)
    gap = sum(pi[i] * (s_max - s[i]) for i in range(n))
    gap_identity = sp.expand((s_max - objective - gap).subs(on_simplex)) == 0
    return {"objective": objective, "score": s, "hessian": sp.hessian(objective, pi),
            "simplex_gradient": simplex_gradient, "vertex_values": vertex_values,
            "gap": gap, "gap_identity": gap_identity}


def latex(n: int = 3) -> str:
    """Every result as LaTeX, one per line."""
    stat, power = stationary_point(n), power_distribution(n)
    hess, opt = entropy_hessian(n), optimization_vertex(n)
    lines = [
        r"\text{sampling, general } N:\quad \pi^*_1 = " + sp.latex(stat["expected"][0]),
        r"\text{sampling, } N = \mathrm{sum}:\quad \pi^*_1 = " + sp.latex(power["expected"][0]),
        r"\nabla^2_\pi L = " + sp.latex(hess["hessian"]) + r" \prec 0",
        r"\text{optimization:}\quad \mathbb{E}_\pi[s] = " + sp.latex(opt["objective"])
        + r",\quad \nabla^2_\pi = " + sp.latex(opt["hessian"]),
        r"s_{\max} - \mathbb{E}_\pi[s] = " + sp.latex(opt["gap"]) + r" \ge 0",
    ]
    return "\n".join(lines)
