"""The sympy derivation, checked by evaluating its expressions at numbers and comparing with numpy."""

import numpy as np
import pytest
import sympy as sp

from sharpening.theory import derivation

PI_REF = [0.5, 0.3, 0.2]
R = [1.0, 0.0, 1.0]
N = [-0.7, -1.2, 0.4]
A, B = 2.5, 1.5


@pytest.fixture(scope="module")
def stationary():
    return derivation.stationary_point(3)


def _values(result, N_values):
    _, p_ref, r, N_sym = result["symbols"]
    return {derivation.alpha: A, derivation.beta_inv: B, **dict(zip(p_ref, PI_REF)), **dict(zip(r, R)),
            **dict(zip(N_sym, N_values))}


def test_general_stationary_point_at_numbers(stationary):
    pi = np.array([float(p.subs(_values(stationary, N))) for p in stationary["pi"]])
    q = np.array(PI_REF) * np.exp((A - 1) * np.array(N) + B * np.array(R))
    np.testing.assert_allclose(pi, q / q.sum(), rtol=1e-12)
    assert stationary["matches"]


def test_stationary_point_satisfies_the_lagrange_condition(stationary):
    """dL/dpi_i = beta_inv r_i + (alpha-1) N_i + log pi_ref_i - log pi_i - 1 is the same for every i."""
    pi = np.array([float(p.subs(_values(stationary, N))) for p in stationary["pi"]])
    grad = B * np.array(R) + (A - 1) * np.array(N) + np.log(PI_REF) - np.log(pi) - 1
    np.testing.assert_allclose(grad, grad[0], atol=1e-12)
    # and it beats random points of the simplex on L
    L = lambda p: p @ (B * np.array(R) + (A - 1) * np.array(N) + np.log(PI_REF)) - p @ np.log(p)  # noqa: E731
    for p in np.random.default_rng(0).dirichlet(np.ones(3), size=200):
        assert L(p) < L(pi)


def test_power_distribution_at_numbers():
    result = derivation.power_distribution(3)
    assert result["matches"]
    p_ref, r = sp.symbols("pi_ref_1:4", positive=True), sp.symbols("r_1:4", real=True)
    values = {derivation.alpha: A, derivation.beta_inv: B, **dict(zip(p_ref, PI_REF)), **dict(zip(r, R))}
    pi = np.array([float(p.subs(values)) for p in result["pi"]])
    q = np.array(PI_REF) ** A * np.exp(B * np.array(R))
    np.testing.assert_allclose(pi, q / q.sum(), rtol=1e-12)


def test_entropy_hessian_is_negative_definite():
    result = derivation.entropy_hessian(3)
    assert result["negative_definite"]
    pi = sp.symbols("pi_1:4", positive=True)
    H = np.array(result["hessian"].subs(dict(zip(pi, [0.2, 0.5, 0.3]))), dtype=float)
    np.testing.assert_allclose(H, np.diag([-5.0, -2.0, -1 / 0.3]))


def test_optimization_objective_is_linear_with_its_maximum_at_a_vertex():
    result = derivation.optimization_vertex(3)
    assert result["hessian"].is_zero_matrix and result["gap_identity"]
    r, N_sym = sp.symbols("r_1:4", real=True), sp.symbols("N_1:4", real=True)
    values = {derivation.alpha: A, derivation.beta_inv: B, **dict(zip(r, R)), **dict(zip(N_sym, N))}
    s = B * np.array(R) + A * np.array(N)  # [-0.25, -3.0, 2.5]: vertex 3 is best
    np.testing.assert_allclose([float(v.subs(values)) for v in result["vertex_values"]], s)
    np.testing.assert_allclose([float(g.subs(values)) for g in result["simplex_gradient"]], s[:2] - s[2])
    pi = sp.symbols("pi_1:4", nonnegative=True)
    for p in np.random.default_rng(1).dirichlet(np.ones(3), size=50):
        assert float(result["objective"].subs({**values, **dict(zip(pi, p))})) <= s.max()


def test_latex_has_every_result():
    text = derivation.latex(3)
    assert len(text.splitlines()) == 5
    assert r"\pi_{ref 1}^{\alpha} e^{\beta_{inv} r_{1}}" in text and r"\prec 0" in text
