"""The rate-reduction mathematics against independent oracles: hand-worked cases, loops,
SymPy, finite differences, and the spectral bound."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import sympy as sp

import whitebox as wb
from whitebox.backend import to_numpy
from whitebox.gradcheck import check_directional, numerical_grad, rel_error


def random_problem(rng, d, n, p, K, dtype=np.float64):
    Z = rng.standard_normal((d, n))
    logits = rng.standard_normal((n, K))
    Pi = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    U = np.linalg.qr(rng.standard_normal((K, d, d)))[0][:, :, :p]
    return Z.astype(dtype), Pi.astype(dtype), U.astype(dtype)


# ----------------------------------------------------------------- coding rates, worked by hand


def test_coding_rate_2x2_by_hand():
    # d = n = 2, eps = 1: scale d/(n eps^2) = 1, Z Z^T = [[2, 1], [1, 1]],
    # I + Z Z^T = [[3, 1], [1, 2]], det = 6 - 1 = 5  ->  R = log(5) / 2.
    Z = np.array([[1.0, 1.0], [0.0, 1.0]])
    assert wb.coding_rate(Z, 1.0) == pytest.approx(0.5 * np.log(5.0), rel=1e-14)


def test_coding_rate_scale_is_d_over_n_eps_squared():
    # Pins the convention: eps is epsilon (squared inside), not epsilon^2.
    # d = n = 2, eps = 0.5: scale 2 / (2 * 0.25) = 4; Z Z^T = diag(1, 4)
    # I + 4 diag(1, 4) = diag(5, 17)  ->  R = log(85) / 2.
    Z = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert wb.coding_rate(Z, 0.5) == pytest.approx(0.5 * np.log(85.0), rel=1e-14)


def test_compression_rate_with_one_group_is_the_coding_rate(rng):
    Z = rng.standard_normal((5, 9))
    assert wb.compression_rate(Z, np.ones((9, 1)), 0.3) == pytest.approx(
        wb.coding_rate(Z, 0.3), rel=1e-13
    )


def test_compression_rate_with_hard_groups_is_a_weighted_sum_of_coding_rates(rng):
    d, n, eps = 4, 12, 0.7
    Z = rng.standard_normal((d, n))
    labels = np.array([0] * 5 + [1] * 7)
    Pi = np.eye(2)[labels]
    expected = sum(
        (np.sum(labels == k) / n) * wb.coding_rate(Z[:, labels == k], eps) for k in range(2)
    )
    assert wb.compression_rate(Z, Pi, eps) == pytest.approx(expected, rel=1e-13)
    assert wb.rate_reduction(Z, Pi, eps) == pytest.approx(
        wb.coding_rate(Z, eps) - expected, rel=1e-12
    )


def test_empty_group_contributes_nothing(rng):
    Z = rng.standard_normal((3, 6))
    Pi = np.zeros((6, 3))
    Pi[:, 0] = 1.0  # groups 1 and 2 are empty
    assert wb.compression_rate(Z, Pi, 0.5) == pytest.approx(wb.coding_rate(Z, 0.5), rel=1e-13)
    U = np.stack([np.eye(3)] * 3)
    assert np.isfinite(wb.variational_compression_rate(Z, Pi, U, 0.5))
    assert np.all(np.isfinite(wb.variational_compression_grad(Z, Pi, U, 0.5)))


# ----------------------------------------------------------------- the variational term


def loop_variational(Z, Pi, U, eps):
    """R_c^var written with plain loops, straight from the formula."""
    d, n = Z.shape
    total = 0.0
    for k in range(Pi.shape[1]):
        n_k = Pi[:, k].sum()
        for i in range(U.shape[2]):
            u = U[k][:, i]
            y = sum(Pi[j, k] * (u @ Z[:, j]) ** 2 for j in range(n)) / n_k
            total += n_k / (2 * n) * np.log(1 + d / eps**2 * y)
    return total


@pytest.mark.parametrize("d,n,p,K", [(3, 5, 3, 1), (4, 7, 2, 3), (6, 4, 1, 2)])
def test_variational_rate_matches_loops(rng, d, n, p, K):
    Z, Pi, U = random_problem(rng, d, n, p, K)
    assert wb.variational_compression_rate(Z, Pi, U, 0.4) == pytest.approx(
        loop_variational(Z, Pi, U, 0.4), rel=1e-12
    )


@pytest.mark.parametrize("K", [1, 3])
def test_variational_bound_holds_for_random_orthogonal_bases(rng, K):
    d, n, eps = 5, 20, 0.5
    Z, Pi, _ = random_problem(rng, d, n, d, K)
    exact = wb.compression_rate(Z, Pi, eps)
    for _ in range(20):
        U = np.linalg.qr(rng.standard_normal((K, d, d)))[0]
        assert wb.variational_compression_rate(Z, Pi, U, eps) >= exact - 1e-12


@pytest.mark.parametrize("K", [1, 3])
def test_variational_bound_is_tight_at_the_eigenbases(rng, K):
    d, n, eps = 5, 20, 0.5
    Z, Pi, _ = random_problem(rng, d, n, d, K)
    covs = np.einsum("in,nk,jn->kij", Z, Pi, Z)
    U = np.linalg.eigh(covs)[1]  # (K, d, d): columns diagonalize Z diag(pi_k) Z^T
    assert (
        abs(wb.variational_compression_rate(Z, Pi, U, eps) - wb.compression_rate(Z, Pi, eps))
        < 1e-10
    )


def test_token_statistics_are_weighted_second_moments(rng):
    Z, Pi, U = random_problem(rng, 4, 6, 2, 2)
    y = wb.token_statistics(Z, Pi, U)
    for k in range(2):
        proj = U[k].T @ Z  # (p, n)
        expected = (proj**2 * Pi[:, k]).sum(axis=1) / Pi[:, k].sum()
        np.testing.assert_allclose(y[k], expected, rtol=1e-13)


# ----------------------------------------------------------------- the gradient


@pytest.mark.parametrize(
    "d,n,p,K", [(4, 6, 4, 1), (4, 6, 2, 1), (5, 8, 5, 3), (6, 10, 2, 4), (3, 2, 1, 2)]
)
def test_gradient_matches_finite_differences_elementwise(rng, d, n, p, K):
    Z, Pi, U = random_problem(rng, d, n, p, K)
    eps = 0.6
    grad = wb.variational_compression_grad(Z, Pi, U, eps)
    numeric = numerical_grad(lambda: wb.variational_compression_rate(Z, Pi, U, eps), Z, h=1e-5)
    # norm-wise: tiny entries carry the finite difference's rounding error (~1e-11 absolute)
    err = np.linalg.norm(grad - numeric) / (np.linalg.norm(grad) + np.linalg.norm(numeric))
    assert err < 1e-7


@pytest.mark.parametrize("d,n,p,K", [(16, 200, 16, 1), (16, 200, 4, 1), (32, 300, 8, 4)])
@pytest.mark.parametrize("seed", [0, 1])
def test_gradient_directional_derivative(d, n, p, K, seed):
    rng = np.random.default_rng(seed)
    Z, Pi, U = random_problem(rng, d, n, p, K)
    eps = 0.5
    grad = wb.variational_compression_grad(Z, Pi, U, eps)
    err = check_directional(
        lambda: wb.variational_compression_rate(Z, Pi, U, eps), Z, grad, seed=seed, h=1e-5
    )
    assert err < 1e-7


def test_gradient_matches_sympy_closed_form():
    # R_c^var differentiated symbolically on a 2 x 3 problem with K = 2, p = 1.
    d, n, K, p = 2, 3, 2, 1
    eps = sp.Rational(1, 2)
    z = sp.Matrix(d, n, lambda i, j: sp.Symbol(f"z{i}{j}"))
    rng = np.random.default_rng(7)
    Zv, Piv, Uv = random_problem(rng, d, n, p, K)
    Pi = sp.Matrix(Piv.round(3))
    Pi = sp.Matrix(n, K, lambda j, k: Pi[j, k] / sum(Pi[j, :]))  # exact rows on the simplex
    U = [sp.Matrix(Uv[k].round(3)) for k in range(K)]
    R = 0
    for k in range(K):
        n_k = sum(Pi[:, k])
        proj = U[k].T * z  # (p, n)
        for i in range(p):
            y = sum(Pi[j, k] * proj[i, j] ** 2 for j in range(n)) / n_k
            R += n_k / (2 * n) * sp.log(1 + d / eps**2 * y)
    grad_sym = sp.Matrix(d, n, lambda i, j: sp.diff(R, z[i, j]))
    subs = {z[i, j]: sp.Float(Zv[i, j], 30) for i in range(d) for j in range(n)}
    expected = np.array(grad_sym.subs(subs).evalf(20), dtype=np.float64)
    Pi_num = np.array(Pi.evalf(30), dtype=np.float64)
    U_num = np.stack([np.array(u, dtype=np.float64) for u in U])
    grad = wb.variational_compression_grad(Zv, Pi_num, U_num, 0.5)
    assert rel_error(grad, expected) < 1e-12


def test_small_step_decreases_the_variational_rate(rng):
    Z, Pi, U = random_problem(rng, 8, 40, 3, 3)
    eps = 0.5
    before = wb.variational_compression_rate(Z, Pi, U, eps)
    g = wb.variational_compression_grad(Z, Pi, U, eps)
    tau = 1e-3
    after = wb.variational_compression_rate(wb.tssa_step(Z, Pi, U, eps, tau), Pi, U, eps)
    assert after < before
    # first-order prediction: the decrease is tau * ||grad||^2
    assert (before - after) == pytest.approx(tau * np.sum(g * g), rel=1e-2)


def test_tssa_step_is_z_minus_tau_grad(rng):
    Z, Pi, U = random_problem(rng, 5, 9, 2, 2)
    np.testing.assert_allclose(
        wb.tssa_step(Z, Pi, U, 0.5, 0.3),
        Z - 0.3 * wb.variational_compression_grad(Z, Pi, U, 0.5),
        rtol=1e-15,
    )


def test_gradient_allocates_linear_memory_in_n():
    """No n x n array: the peak allocation grows like n, not n^2."""

    def peak(n):
        rng = np.random.default_rng(0)
        Z, Pi, U = random_problem(rng, 8, n, 2, 4)
        tracemalloc.start()
        tracemalloc.reset_peak()
        wb.variational_compression_grad(Z, Pi, U, 0.5)
        wb.variational_compression_rate(Z, Pi, U, 0.5)
        wb.estimate_membership(Z, U, 0.1)
        p = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return p

    small, large = peak(2_000), peak(8_000)
    assert large / small < 6  # 4x the tokens: about 4x the memory (n^2 would be 16x)
    assert large < 0.05 * 8 * 8_000**2  # far below one float64 n x n array (512 MB)


# ----------------------------------------------------------------- membership


def test_estimate_membership_is_a_softmax_over_groups(rng):
    d, n, K, eta = 5, 7, 3, 0.3
    Z = rng.standard_normal((d, n))
    U = np.linalg.qr(rng.standard_normal((K, d, d)))[0][:, :, :2]
    Pi = wb.estimate_membership(Z, U, eta)
    for j in range(n):
        s = np.array([np.sum((U[k].T @ Z[:, j]) ** 2) / (2 * eta) for k in range(K)])
        np.testing.assert_allclose(Pi[j], np.exp(s) / np.exp(s).sum(), rtol=1e-12)


def test_estimate_membership_is_stable_for_tiny_eta(rng):
    Z = 1e3 * rng.standard_normal((4, 10))
    U = np.linalg.qr(rng.standard_normal((2, 4, 4)))[0][:, :, :2]
    Pi = wb.estimate_membership(Z, U, 1e-6)
    assert np.all(np.isfinite(Pi))
    np.testing.assert_allclose(Pi.sum(axis=1), 1.0)


def test_membership_recovers_the_true_groups():
    mix = wb.data.subspace_mixture(n_per_group=50, d=12, p=2, K=3, noise=0.05, seed=3)
    Pi = wb.estimate_membership(mix.Z, mix.U, 0.05)
    assert np.mean(Pi.argmax(axis=1) == mix.labels) > 0.97


# ----------------------------------------------------------------- dtypes and backends


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_functions_compute_in_the_input_dtype(xp, rng, dtype):
    Z, Pi, U = (xp.asarray(a) for a in random_problem(rng, 6, 12, 3, 2, dtype))
    for value in (
        wb.coding_rate(Z, 0.5),
        wb.compression_rate(Z, Pi, 0.5),
        wb.rate_reduction(Z, Pi, 0.5),
        wb.variational_compression_rate(Z, Pi, U, 0.5),
    ):
        assert value.dtype == dtype
    assert wb.variational_compression_grad(Z, Pi, U, 0.5).dtype == dtype
    assert wb.tssa_step(Z, Pi, U, 0.5, 0.1).dtype == dtype
    assert wb.estimate_membership(Z, U, 0.5).dtype == dtype


def test_float32_agrees_with_float64(xp, rng):
    Z, Pi, U = random_problem(rng, 6, 30, 3, 2)
    g64 = wb.variational_compression_grad(Z, Pi, U, 0.5)
    g32 = wb.variational_compression_grad(
        *(xp.asarray(a.astype(np.float32)) for a in (Z, Pi, U)), 0.5
    )
    assert rel_error(to_numpy(g32), g64, floor=1e-3) < 1e-4


def test_same_results_on_every_backend(xp, rng):
    Z, Pi, U = random_problem(rng, 6, 30, 3, 2)
    got = to_numpy(
        wb.variational_compression_grad(xp.asarray(Z), xp.asarray(Pi), xp.asarray(U), 0.5)
    )
    np.testing.assert_allclose(got, wb.variational_compression_grad(Z, Pi, U, 0.5), rtol=1e-10)


# ----------------------------------------------------------------- bad input


def _good(rng):
    return random_problem(rng, 4, 6, 2, 3)


BAD_CASES = [
    ("Z 1-D", lambda Z, Pi, U: (Z[0], Pi, U), r"Z must have shape \(d, n\)"),
    ("Z nan", lambda Z, Pi, U: (np.where(Z > 0, np.nan, Z), Pi, U), "Z contains non-finite"),
    ("Z inf", lambda Z, Pi, U: (Z * np.inf, Pi, U), "Z contains non-finite"),
    ("Pi wrong n", lambda Z, Pi, U: (Z, Pi[:-1], U), r"Pi must have shape \(n, K\) = \(6, K\)"),
    ("Pi off simplex", lambda Z, Pi, U: (Z, 2 * Pi, U), "Pi must have rows on the simplex"),
    ("Pi negative", lambda Z, Pi, U: (Z, Pi - Pi.mean(), U), "Pi must have rows on the simplex"),
    ("U wrong d", lambda Z, Pi, U: (Z, Pi, U[:, :-1]), r"U must have shape \(K, d, p\)"),
    ("U wrong K", lambda Z, Pi, U: (Z, Pi, U[:-1]), r"U must have shape \(K, d, p\)"),
    ("U 2-D", lambda Z, Pi, U: (Z, Pi, U[0]), r"U must have shape \(K, d, p\)"),
    ("U nan", lambda Z, Pi, U: (Z, Pi, U * np.nan), "U contains non-finite"),
]


@pytest.mark.parametrize("name,mutate,message", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_input_raises_value_error(rng, name, mutate, message):
    Z, Pi, U = mutate(*_good(rng))
    for fn in (wb.variational_compression_rate, wb.variational_compression_grad):
        with pytest.raises(ValueError, match=message):
            fn(Z, Pi, U, 0.5)
    with pytest.raises(ValueError, match=message):
        wb.tssa_step(Z, Pi, U, 0.5, 0.1)


@pytest.mark.parametrize("eps", [0.0, -1.0, np.nan, np.inf, "a"])
def test_bad_eps(rng, eps):
    Z, Pi, U = _good(rng)
    for call in (
        lambda: wb.coding_rate(Z, eps),
        lambda: wb.compression_rate(Z, Pi, eps),
        lambda: wb.rate_reduction(Z, Pi, eps),
        lambda: wb.variational_compression_rate(Z, Pi, U, eps),
        lambda: wb.variational_compression_grad(Z, Pi, U, eps),
    ):
        with pytest.raises(ValueError, match="eps must be a positive"):
            call()


def test_bad_tau_eta_and_membership_inputs(rng):
    Z, Pi, U = _good(rng)
    for tau in (np.nan, -0.1, None):
        with pytest.raises(ValueError, match="tau must be"):
            wb.tssa_step(Z, Pi, U, 0.5, tau)
    with pytest.raises(ValueError, match="eta must be a positive"):
        wb.estimate_membership(Z, U, 0.0)
    with pytest.raises(ValueError, match=r"U must have shape \(K, d, p\) with d = 4"):
        wb.estimate_membership(Z, U[:, :3], 0.1)
    with pytest.raises(ValueError, match="Z must have shape"):
        wb.coding_rate(np.zeros((3, 0)), 0.5)
    with pytest.raises(ValueError, match="Pi must have shape"):
        wb.compression_rate(Z, Pi.T, 0.5)


# ----------------------------------------------------------------- exact rates over the hard range
# Oracle: mpmath at 60 digits on the exact binary values of Z (and Pi), log det of the smaller
# Gram matrix (Sylvester), never the code under test. Covers n < d, n > d, rank-deficient Z,
# eps from 1e-8 to 1e3 and |Z| from 1e-6 to 1e6; before the SVD-based rewrite many of these
# raised LinAlgError (Cholesky) or drifted by percents.

mpmath = pytest.importorskip("mpmath")


def _mp_logdet_gram(Z, w, alpha):
    """log det(I + alpha Z diag(w) Z^T) at 60 digits; Z (d, n) and w (n,) as exact binary values."""
    d, n = Z.shape
    Zm = [[mpmath.mpf(float(Z[i, j])) for j in range(n)] for i in range(d)]
    wm = [mpmath.mpf(float(x)) for x in w]
    if n < d:  # Sylvester: det(I_d + a Z W Z^T) = det(I_n + a W^{1/2} Z^T Z W^{1/2})
        G = mpmath.matrix(n, n)
        for a in range(n):
            for b in range(n):
                dot = mpmath.fsum(Zm[i][a] * Zm[i][b] for i in range(d))
                G[a, b] = (a == b) + alpha * mpmath.sqrt(wm[a] * wm[b]) * dot
    else:
        G = mpmath.matrix(d, d)
        for a in range(d):
            for b in range(d):
                G[a, b] = (a == b) + alpha * mpmath.fsum(
                    wm[j] * Zm[a][j] * Zm[b][j] for j in range(n)
                )
    return mpmath.log(mpmath.det(G))


def _hard_Z(shape, scale, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if shape == "rank2":  # 6 x 6 of rank 2: zero rows and columns (exact zero singular values)
        Z = np.zeros((6, 6))
        Z[np.ix_([0, 3], [1, 2, 5])] = rng.standard_normal((2, 3))
    else:
        Z = rng.standard_normal(shape)
    return (scale * Z).astype(dtype)


HARD_SHAPES = [(8, 3), (3, 8), "rank2"]
HARD_EPS = [1e-8, 1e-4, 1.0, 1e3]
HARD_SCALES = [1e-6, 1.0, 1e6]
REL_TOL = {np.float64: 1e-12, np.float32: 1e-6}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("scale", HARD_SCALES)
@pytest.mark.parametrize("eps", HARD_EPS)
@pytest.mark.parametrize("shape", HARD_SHAPES, ids=str)
def test_exact_rates_match_high_precision_oracle(shape, eps, scale, dtype):
    mpmath.mp.dps = 60
    Z = _hard_Z(shape, scale, dtype)
    d, n = Z.shape
    Pi = np.zeros((n, 2), dtype)
    Pi[: n // 2, 0] = 1  # a group with fewer tokens than dimensions: the normal MCR^2 case
    Pi[n // 2 :, 1] = 0.75
    Pi[n // 2 :, 0] = 0.25
    eps_m = mpmath.mpf(eps)
    R = _mp_logdet_gram(Z, np.ones(n), d / (n * eps_m**2)) / 2
    Rc = mpmath.mpf(0)
    for k in range(2):
        n_k = mpmath.fsum(mpmath.mpf(float(x)) for x in Pi[:, k])
        Rc += n_k / (2 * n) * _mp_logdet_gram(Z, Pi[:, k], d / (n_k * eps_m**2))
    tol = REL_TOL[dtype]
    got_R, got_Rc, got_dR = (
        wb.coding_rate(Z, eps),
        wb.compression_rate(Z, Pi, eps),
        wb.rate_reduction(Z, Pi, eps),
    )
    for got in (got_R, got_Rc, got_dR):
        assert got.dtype == dtype
    assert float(got_R) == pytest.approx(float(R), rel=tol, abs=1e-300)
    assert float(got_Rc) == pytest.approx(float(Rc), rel=tol, abs=1e-300)
    # DeltaR may cancel: its error is bounded by the error of its two terms
    assert abs(float(got_dR) - float(R - Rc)) <= 2 * tol * float(R + Rc) + 1e-300


@pytest.mark.parametrize(
    "Z, eps, exact",
    [
        # d = 2, n = 1, alpha = 2 / eps^2: I + alpha [[1, 1], [1, 1]] has det 1 + 2 alpha
        (np.ones((2, 1)), 1e-8, sp.log(1 + 2 * 2 / sp.Float("1e-8", 50) ** 2) / 2),  # ~19.1 nats
        (np.ones((2, 1), np.float32), 1e-4, sp.log(1 + 2 * 2 / sp.Float("1e-4", 50) ** 2) / 2),
    ],
    ids=["float64-eps1e-8", "float32-eps1e-4"],
)
def test_coding_rate_cases_that_raised_linalgerror(Z, eps, exact):
    # Both raised "Matrix is not positive definite" with the Cholesky version.
    got = wb.coding_rate(Z, eps)
    assert got.dtype == Z.dtype
    assert float(got) == pytest.approx(float(exact), rel=REL_TOL[Z.dtype.type])


# ----------------------------------------------------------------- extreme parameters
# Each case below returned inf/NaN/0 or raised ZeroDivisionError/OverflowError before: now the
# exact rates are computed correctly (alpha is never formed) and the variational form refuses
# by name outside the range where d/eps^2 is a normal number.


@pytest.mark.parametrize("eps", [1e-200, 1e-170, 1e-158, 1e155, 1e160, 1e200])
def test_exact_rates_at_extreme_eps_match_mpmath(eps):
    mpmath.mp.dps = 60
    Z = np.array([[1.0, 2.0, -1.0], [0.5, 0.0, 3.0]])  # d = 2, n = 3
    Pi = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    e = mpmath.mpf(eps)
    R = _mp_logdet_gram(Z, np.ones(3), 2 / (3 * e**2)) / 2
    Rc = sum(
        mpmath.mpf(1.5) / 6 * _mp_logdet_gram(Z, Pi[:, k], 2 / (mpmath.mpf(1.5) * e**2))
        for k in range(2)
    )
    # at eps >= 1e155 the true rates (~1e-310) underflow: abs=1e-300 accepts the rounding
    assert float(wb.coding_rate(Z, eps)) == pytest.approx(float(R), rel=1e-12, abs=1e-300)
    assert float(wb.compression_rate(Z, Pi, eps)) == pytest.approx(float(Rc), rel=1e-12, abs=1e-300)
    got_dR = float(wb.rate_reduction(Z, Pi, eps))
    assert abs(got_dR - float(R - Rc)) <= 1e-12 * float(R + Rc) + 1e-300


@pytest.mark.parametrize("scale", [1e154, 1e200, 1e300])
def test_exact_rates_for_huge_z_match_mpmath(scale):
    mpmath.mp.dps = 60
    Z = scale * np.array([[1.0, 2.0, -1.0], [0.5, 0.0, 3.0]])
    R = _mp_logdet_gram(Z, np.ones(3), mpmath.mpf(2) / 3) / 2
    assert float(wb.coding_rate(Z, 1.0)) == pytest.approx(float(R), rel=1e-12)


def test_huge_float32_z_gives_correct_exact_rate():
    Z = np.array([[3e19, -1e20], [2e19, 5e19]], np.float32)  # squares overflow float32
    mpmath.mp.dps = 60
    R = _mp_logdet_gram(Z, np.ones(2), mpmath.mpf(1)) / 2
    got = wb.coding_rate(Z, 1.0)
    assert got.dtype == np.float32 and float(got) == pytest.approx(float(R), rel=1e-6)


@pytest.mark.parametrize("eps", [1e-170, 1e-158, 1e155, 1e170])
@pytest.mark.parametrize(
    "fn",
    [
        lambda Z, Pi, U, eps: wb.variational_compression_rate(Z, Pi, U, eps),
        lambda Z, Pi, U, eps: wb.variational_compression_grad(Z, Pi, U, eps),
        lambda Z, Pi, U, eps: wb.tssa_step(Z, Pi, U, eps, 0.1),
    ],
    ids=["rate", "grad", "tssa_step"],
)
def test_variational_form_refuses_eps_outside_its_range(rng, fn, eps):
    Z, Pi, U = random_problem(rng, 4, 5, 2, 2)
    with pytest.raises(ValueError, match=r"eps must lie in \[.*\] for d = 4 in float64"):
        fn(Z, Pi, U, eps)


def test_variational_form_float32_range_is_its_own(rng):
    Z, Pi, U = random_problem(rng, 4, 5, 2, 2, np.float32)
    wb.variational_compression_grad(Z.astype(np.float64), Pi, U, 1e-25)  # fine in float64
    with pytest.raises(ValueError, match="eps must lie in .* float32"):
        wb.variational_compression_grad(Z, Pi, U, 1e-25)  # d/eps^2 = 4e50 is not a float32


@pytest.mark.parametrize("dtype, scale", [(np.float64, 1e155), (np.float32, 1e20)])
def test_variational_form_refuses_z_whose_squares_overflow(rng, dtype, scale):
    Z, Pi, U = random_problem(rng, 4, 5, 2, 2, dtype)
    Z = Z * dtype(scale)
    for fn in (wb.variational_compression_rate, wb.variational_compression_grad):
        with pytest.raises(ValueError, match="Z .* too large"):
            fn(Z, Pi, U, 1.0)
    with pytest.raises(ValueError, match="Z .* too large"):
        wb.token_statistics(Z, Pi, U)
    with pytest.raises(ValueError, match="Z .* too large"):
        wb.estimate_membership(Z, U, 1.0)


def _loop_statistics(Z, Pi, U):
    K, d, p = U.shape
    y = np.zeros((K, p))
    for k in range(K):
        for i in range(p):
            y[k, i] = sum(Pi[j, k] * (U[k, :, i] @ Z[:, j]) ** 2 for j in range(Z.shape[1]))
            y[k, i] /= Pi[:, k].sum()
    return y


def test_gradient_is_not_a_silent_zero_when_c_times_y_overflows(rng):
    # eps = 1e-150: c = d/eps^2 = 4e300 and y ~ 1e10, so c*y overflows; the old
    # c / (1 + c y) returned exactly 0. The true D_k = 1/(1/c + y) = 1/y to ~1e-310.
    Z, Pi, U = random_problem(rng, 4, 5, 2, 2)
    Z = 1e5 * Z
    y = _loop_statistics(Z, Pi, U)
    ref = np.zeros_like(Z)
    for k in range(2):
        ref += U[k] @ np.diag(1 / y[k]) @ U[k].T @ Z @ np.diag(Pi[:, k])
    ref /= Z.shape[1]
    got = wb.variational_compression_grad(Z, Pi, U, 1e-150)
    assert np.all(np.isfinite(got)) and np.any(got != 0)
    assert rel_error(got, ref) < 1e-12


def test_variational_rate_is_finite_when_c_times_y_overflows(rng):
    mpmath.mp.dps = 40
    Z, Pi, U = random_problem(rng, 4, 5, 2, 2)
    Z = 1e5 * Z
    y = _loop_statistics(Z, Pi, U)
    c = mpmath.mpf(4) / mpmath.mpf(1e-150) ** 2
    n = Z.shape[1]
    ref = mpmath.fsum(
        mpmath.mpf(float(Pi[:, k].sum())) / (2 * n) * mpmath.log(1 + c * mpmath.mpf(y[k, i]))
        for k in range(2)
        for i in range(2)
    )
    got = wb.variational_compression_rate(Z, Pi, U, 1e-150)
    assert float(got) == pytest.approx(float(ref), rel=1e-12)


@pytest.mark.parametrize("eta", [1e-308, 1e-320, 5e-324])
def test_membership_with_subnormal_eta_is_the_hard_assignment(rng, eta):
    Z, _, U = random_problem(rng, 4, 6, 2, 3)
    energy = np.array(
        [[np.sum((U[k].T @ Z[:, j]) ** 2) for k in range(3)] for j in range(6)]
    )  # (n, K) by loops
    Pi = wb.estimate_membership(Z, U, eta)
    assert np.all(np.isfinite(Pi))
    np.testing.assert_array_equal(Pi, np.eye(3)[energy.argmax(axis=1)])


def test_tssa_step_refuses_a_tau_that_overflows(rng):
    Z, Pi, U = random_problem(rng, 4, 5, 2, 2)
    Z = 1e-10 * Z  # eps = 1e-100: D_k ~ 1/y_k ~ 1e20, the gradient ~ 1e10
    assert np.all(np.isfinite(wb.tssa_step(Z, Pi, U, 1e-100, 1.0)))
    with pytest.raises(ValueError, match="tau .* too large"):
        wb.tssa_step(Z, Pi, U, 1e-100, 1e300)
