"""Regression checks moved out of chapters 1-4: the library against the chapters' formulas.

Each test recomputes a formula the chapter derives (by SymPy or by hand) and compares it with
the `whitebox` function the chapter uses, so a change in either one fails here rather than in a
printed "True" in the middle of the argument.
"""

import numpy as np
import pytest
import sympy as sp

import whitebox as wb
from whitebox.data import random_orthonormal_bases
from whitebox.gradcheck import numerical_grad, rel_error

EPS = 0.5


# ---------------------------------------------------------------- chapter 1: coding rate


def _cloud_2d(sig1, sig2, n_tokens=300, seed=0):
    G = np.random.default_rng(seed).standard_normal((2, n_tokens))
    w, V = np.linalg.eigh(G @ G.T / n_tokens)
    return np.diag([sig1, sig2]) @ V @ np.diag(w**-0.5) @ V.T @ G


def test_ch1_coding_rate_is_the_eigenvalue_form():
    Z = np.random.default_rng(0).standard_normal((5, 40))
    lam = np.linalg.eigvalsh(Z @ Z.T / 40)
    assert wb.coding_rate(Z, EPS) == pytest.approx(0.5 * np.sum(np.log1p(5 / EPS**2 * lam)), 1e-12)


@pytest.mark.parametrize("sig", [(1.0, 1.0), (3.0, 1.0), (3.0, 0.05)])
def test_ch1_coding_rate_of_a_whitened_cloud_is_the_sympy_diagonal_formula(sig):
    s1, s2, e = sp.symbols("s1 s2 e", positive=True)
    R_diag = sp.lambdify((s1, s2, e), sum(sp.log(1 + 2 * v**2 / e**2) / 2 for v in (s1, s2)))
    assert wb.coding_rate(_cloud_2d(*sig), EPS) == pytest.approx(R_diag(*sig, EPS), rel=1e-12)


def test_ch1_compression_rate_with_hard_groups_and_soft_gaps():
    mix = wb.data.subspace_mixture(n_per_group=50, d=6, p=2, K=3, noise=0.1, seed=0)
    n = mix.Z.shape[1]
    by_groups = sum(
        (mix.labels == k).sum() / n * wb.coding_rate(mix.Z[:, mix.labels == k], EPS)
        for k in range(3)
    )
    assert wb.compression_rate(mix.Z, mix.Pi, EPS) == pytest.approx(by_groups, rel=1e-12)
    rng = np.random.default_rng(0)
    gaps = [wb.rate_reduction(mix.Z, rng.dirichlet(np.ones(3), size=n), EPS) for _ in range(50)]
    assert min(gaps) >= 0 and max(gaps) < wb.rate_reduction(mix.Z, mix.Pi, EPS)


@pytest.mark.parametrize("deg", [0, 15, 45, 90, 150])
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_ch1_two_lines_rate_reduction_is_the_closed_form(deg, sigma):
    g = np.random.default_rng(0)
    theta = np.deg2rad(deg)
    cols = []
    for u in ([1.0, 0, 0], [np.cos(theta), np.sin(theta), 0]):
        rho = g.standard_normal(100)
        cols.append(np.outer(u, rho * sigma / np.sqrt(np.mean(rho**2))))
    Z, Pi = np.hstack(cols), np.repeat(np.eye(2), 100, axis=0)
    a = 3 * sigma**2 / (2 * EPS**2)
    closed = 0.5 * np.log1p(a**2 * np.sin(theta) ** 2 / (1 + 2 * a))
    assert wb.rate_reduction(Z, Pi, EPS) == pytest.approx(closed, rel=1e-9, abs=1e-12)


# ---------------------------------------------------------------- chapter 4: step to attention


def test_ch4_per_token_gradient_from_sympy_matches_the_library():
    d, n, K = 2, 3, 2
    c = sp.Symbol("c", positive=True)
    Z = sp.Matrix(d, n, lambda i, j: sp.Symbol(f"z{i}{j}", real=True))
    P = sp.Matrix(n, K, lambda j, k: sp.Symbol(f"p{j}{k}", positive=True))
    u = [sp.Matrix(d, 1, lambda i, _, k=k: sp.Symbol(f"u{k}{i}", real=True)) for k in range(K)]
    nk = [sum(P[:, k]) for k in range(K)]
    proj = [[(u[k].T * Z[:, j])[0] for j in range(n)] for k in range(K)]
    y = [sum(P[j, k] * proj[k][j] ** 2 for j in range(n)) / nk[k] for k in range(K)]
    R = sum(nk[k] / (2 * n) * sp.log(1 + c * y[k]) for k in range(K))
    grad = sp.Matrix(d, n, lambda i, j: sp.diff(R, Z[i, j]))
    rng = np.random.default_rng(0)
    eps = 0.7
    Z0, Pi0, U0 = (
        rng.standard_normal((d, n)),
        rng.dirichlet(np.ones(K), size=n),
        rng.standard_normal((K, d, 1)),
    )
    vals = {c: d / eps**2}
    vals.update({Z[i, j]: Z0[i, j] for i in range(d) for j in range(n)})
    vals.update({P[j, k]: Pi0[j, k] for j in range(n) for k in range(K)})
    vals.update({u[k][i]: U0[k, i, 0] for k in range(K) for i in range(d)})
    g_sym = np.array(grad.subs(vals).evalf(), dtype=float)
    assert rel_error(wb.variational_compression_grad(Z0, Pi0, U0, eps), g_sym) < 1e-10


@pytest.mark.parametrize("eta", [0.01, 0.1, 1.0])
def test_ch4_membership_is_the_gaussian_mixture_posterior_at_eta_one_plus_eta(eta):
    from scipy.stats import multivariate_normal

    mix = wb.data.subspace_mixture(n_per_group=32, d=8, p=2, K=3, noise=0.2, seed=0)
    logp = np.stack(
        [
            multivariate_normal(np.zeros(8), Uk @ Uk.T + eta * np.eye(8)).logpdf(mix.Z.T)
            for Uk in mix.U
        ],
        axis=1,
    )
    post = np.exp(logp - logp.max(1, keepdims=True))
    post /= post.sum(1, keepdims=True)
    exact = wb.estimate_membership(mix.Z, mix.U, eta * (1 + eta))
    np.testing.assert_allclose(exact, post, atol=1e-12)
    # at eta itself the temperature is off by 1 + eta: a real difference, not round-off
    assert np.abs(wb.estimate_membership(mix.Z, mix.U, eta) - post).max() > 1e-4


def test_ch4_softmax_formula_is_estimate_membership():
    mix = wb.data.subspace_mixture(n_per_group=64, d=16, p=2, K=4, noise=0.2, seed=0)
    logits = (np.einsum("kdp,dn->knp", mix.U, mix.Z) ** 2).sum(-1).T / (2 * 0.05)
    by_hand = np.exp(logits - logits.max(1, keepdims=True))
    by_hand /= by_hand.sum(1, keepdims=True)
    np.testing.assert_allclose(wb.estimate_membership(mix.Z, mix.U, 0.05), by_hand, atol=1e-12)


def _layer_formula(X, W_qkv, temp, W_out, K, p):
    # chapter 4's steps 1, 3-6 for one sequence X (n, D), without the normalization of step 2
    w = (X @ W_qkv).reshape(len(X), K, p).transpose(1, 0, 2)  # (K, n, p)
    logits = temp * (w**2).sum(-1)  # (K, n)
    Pi = np.exp(logits - logits.max(0))
    Pi /= Pi.sum(0)
    y = np.einsum("kn,knp->kp", Pi / Pi.sum(1, keepdims=True), w**2)  # (K, p)
    v = -Pi[:, :, None] * w / (1 + y[:, None, :])
    return v.transpose(1, 0, 2).reshape(len(X), K * p) @ W_out, Pi.T


def test_ch4_layer_with_sqrt_c_weights_is_the_gradient_step():
    d, K, p = 6, 3, 2
    small = wb.data.subspace_mixture(n_per_group=4, d=d, p=p, K=K, noise=0.1, seed=1)
    Z, U = small.Z, small.U
    n, eps, eta, tau = Z.shape[1], 0.5, 0.5, 0.3
    c = d / eps**2
    U_flat = U.transpose(1, 0, 2).reshape(d, K * p)
    out, Pi_layer = _layer_formula(
        Z.T, np.sqrt(c) * U_flat, 1 / (2 * eta * c), tau * np.sqrt(c) / n * U_flat.T, K, p
    )
    Pi = wb.estimate_membership(Z, U, eta)
    np.testing.assert_allclose(Pi_layer, Pi, rtol=1e-12, atol=1e-14)
    grad = wb.variational_compression_grad(Z, Pi, U, eps)
    np.testing.assert_allclose(out.T, -tau * grad, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(Z + out.T, wb.tssa_step(Z, Pi, U, eps, tau), rtol=1e-12)
    # c dropped: the gradient at eps = sqrt(d)
    out1, Pi1 = _layer_formula(Z.T, U_flat, 1 / (2 * eta), tau / n * U_flat.T, K, p)
    g1 = wb.variational_compression_grad(Z, Pi1, U, np.sqrt(d))
    np.testing.assert_allclose(out1.T, -tau * g1, rtol=1e-10, atol=1e-14)
    # the real layer: the same for its own Pi, up to the 1e-8 guard of an empty head
    params = {
        "qkv.weight": np.sqrt(c) * U_flat,
        "qkv.bias": np.zeros(d),
        "temp": np.full((K, 1), 3.0),
        "proj.weight": tau * np.sqrt(c) / n * U_flat.T,
        "proj.bias": np.zeros(d),
    }
    out_nn, cache = wb.nn.tssa_forward(Z.T[None], params)
    step = -tau * wb.variational_compression_grad(Z, cache["pi"][0].T, U, eps)
    assert np.abs(out_nn[0].T - step).max() / np.abs(step).max() < 1e-7
    _, cache10 = wb.nn.tssa_forward(10.0 * Z.T[None], params)
    np.testing.assert_allclose(cache10["pi"], cache["pi"], rtol=1e-10)


# ---------------------------------------------------------------- chapter 3: gradient


def _rel_change(Z, Pi, U, eps, tau):
    before = wb.variational_compression_rate(Z, Pi, U, eps)
    after = wb.variational_compression_rate(wb.tssa_step(Z, Pi, U, eps, tau), Pi, U, eps)
    return (after - before) / before


def test_ch3_finite_differences_pass_the_library_and_catch_the_slips():
    rng = np.random.default_rng(0)
    Z, U = rng.standard_normal((4, 6)), rng.standard_normal((2, 4, 2))
    Pi = rng.dirichlet(np.ones(2), size=6)
    g_num = numerical_grad(lambda: wb.variational_compression_rate(Z, Pi, U, EPS), Z)
    g = wb.variational_compression_grad(Z, Pi, U, EPS)
    assert rel_error(g, g_num) < 1e-7
    D = (4 / EPS**2) / (1 + (4 / EPS**2) * wb.token_statistics(Z, Pi, U))
    T = [U[k] @ np.diag(D[k]) @ U[k].T @ Z for k in range(2)]
    assert rel_error(sum(T[k] * Pi[:, k] for k in range(2)) / 6, g) < 1e-12  # the closed form
    slips = [
        2 * g,
        sum(T[k] * Pi[:, k] / Pi[:, k].sum() for k in range(2)),
        sum(T[k] * Pi[:, k] ** 2 for k in range(2)) / 6,
    ]
    assert all(rel_error(s, g_num) > 0.1 for s in slips)


def test_ch3_one_step_scales_each_axis_by_cy_over_one_plus_cy():
    G = np.random.default_rng(2).standard_normal((2, 200))
    w, V = np.linalg.eigh(G @ G.T / 200)
    Z = np.diag([2.0, 0.3]) @ V @ np.diag(w**-0.5) @ V.T @ G
    Pi, U = np.ones((200, 1)), np.eye(2)[None]
    c = 2 / EPS**2
    Z_next = wb.tssa_step(Z, Pi, U, EPS, 200 / c)
    y = np.array([4.0, 0.09])
    np.testing.assert_allclose(Z_next, (c * y / (1 + c * y))[:, None] * Z, rtol=1e-10, atol=1e-14)


def test_ch3_edge_step_decreases_on_random_instances():
    rng = np.random.default_rng(3)
    d = 16
    c = d / EPS**2
    for _ in range(100):
        n, K, p = (int(v) for v in rng.integers((20, 1, 1), (200, 6, 9)))
        Z = 10 ** rng.uniform(-3, 1) * rng.standard_normal((d, n))
        Pi = rng.dirichlet(np.full(K, rng.uniform(0.05, 2)), size=n)
        U = wb.data.random_orthonormal_bases(K, d, p, rng)
        assert _rel_change(Z, Pi, U, EPS, 2 * n / c) < 0


@pytest.mark.parametrize("scale", [1e-3, 1.0, 5.0])
def test_ch3_actual_change_never_exceeds_the_majorizer_guarantee(scale):
    mix = wb.data.subspace_mixture(n_per_group=32, d=8, p=2, K=3, noise=0.2, seed=0)
    Z, Pi, U = scale * mix.Z, wb.estimate_membership(mix.Z, mix.U, 0.3), mix.U
    n, c = Z.shape[1], 8 / EPS**2
    R = wb.variational_compression_rate(Z, Pi, U, EPS)
    G2 = np.sum(wb.variational_compression_grad(Z, Pi, U, EPS) ** 2)
    for m in np.linspace(0, 3, 31):
        tau = m * 2 * n / c
        after = wb.variational_compression_rate(wb.tssa_step(Z, Pi, U, EPS, tau), Pi, U, EPS)
        assert after <= R - tau * (1 - tau * c / (2 * n)) * G2 + 1e-12 * R


def test_ch3_small_tokens_make_the_edge_nearly_tight_and_doubled_bases_break_it():
    mix = wb.data.subspace_mixture(n_per_group=64, d=16, p=2, K=4, noise=0.2, seed=0)
    Z, n, c = 1e-3 * mix.Z, mix.Z.shape[1], 16 / EPS**2
    assert -1e-2 < _rel_change(Z, mix.Pi, mix.U, EPS, 2 * n / c) < 0
    assert _rel_change(Z, mix.Pi, mix.U, EPS, 1.5 * 2 * n / c) > 0
    assert _rel_change(Z, mix.Pi, 2 * mix.U, EPS, 2 * n / c) > 0


# ---------------------------------------------------------------- chapter 2: variational form


def test_ch2_statistics_are_the_diagonal_of_the_rotated_covariance_sympy():
    Z = sp.Matrix(2, 3, sp.symbols("z_11:14 z_21:24", real=True))
    U = sp.Matrix(2, 2, sp.symbols("u_11 u_12 u_21 u_22", real=True))
    pis = sp.Matrix(sp.symbols("pi_1:4", positive=True))
    nk = sum(pis)
    M = Z * sp.diag(*pis) * Z.T / nk
    diag = sp.Matrix([(U.T * M * U)[i, i] for i in range(2)])
    y = (U.T * Z).applyfunc(lambda x: x**2) * pis / nk
    assert sp.simplify(diag - y) == sp.zeros(2, 1)


def test_ch2_the_matrix_of_the_proof_is_doubly_stochastic_and_the_bound_holds():
    rng = np.random.default_rng(0)
    mix = wb.data.subspace_mixture(n_per_group=40, d=8, p=2, K=3, noise=0.2, seed=0)
    Z, Pi = mix.Z, wb.estimate_membership(mix.Z, mix.U, eta=0.1)
    Rc = wb.compression_rate(Z, Pi, EPS)
    U_eig = np.linalg.eigh(np.einsum("in,nk,jn->kij", Z, Pi, Z))[1]
    assert wb.variational_compression_rate(Z, Pi, U_eig, EPS) == pytest.approx(Rc, abs=1e-10)
    for _ in range(50):
        U = random_orthonormal_bases(3, 8, 8, rng)
        assert wb.variational_compression_rate(Z, Pi, U, EPS) > Rc
        P = (U[0].T @ U_eig[0]) ** 2
        np.testing.assert_allclose(P.sum(0), 1, atol=1e-12)
        np.testing.assert_allclose(P.sum(1), 1, atol=1e-12)


def test_ch2_scaling_the_basis_is_changing_the_precision():
    rng = np.random.default_rng(1)
    mix = wb.data.subspace_mixture(n_per_group=20, d=8, p=2, K=3, noise=0.2, seed=1)
    U = random_orthonormal_bases(3, 8, 8, rng)
    for a in [0.01, 0.5, 3.0, 100.0]:
        lhs = wb.variational_compression_rate(mix.Z, mix.Pi, a * U, EPS)
        rhs = wb.variational_compression_rate(mix.Z, mix.Pi, U, EPS / a)
        assert lhs == pytest.approx(rhs, rel=1e-12)


def test_ch2_variational_form_bounds_the_rate_of_the_heads_features_with_biases():
    rng = np.random.default_rng(0)
    mix = wb.data.subspace_mixture(n_per_group=40, d=8, p=2, K=3, noise=0.2, seed=0)
    Z, Pi = mix.Z, wb.estimate_membership(mix.Z, mix.U, eta=0.1)
    (d, n), K, n_k = Z.shape, 3, Pi.sum(axis=0)
    c = d / EPS**2
    Z_aug = np.vstack([Z, np.ones(n)])
    eps_aug = EPS * np.sqrt((d + 1) / d)
    for _ in range(100):
        p = int(rng.integers(1, 9))
        W = rng.standard_normal((K, d, p)) * 10 ** rng.uniform(-1, 1)
        U_aug = np.concatenate([W, rng.standard_normal((K, 1, p))], axis=1)
        feats = np.einsum("kdp,dn->kpn", U_aug, Z_aug)
        M = np.einsum("kpn,nk,kqn->kpq", feats, Pi, feats) / n_k[:, None, None]
        rate = sum(n_k[k] / (2 * n) * np.linalg.slogdet(np.eye(p) + c * M[k])[1] for k in range(K))
        assert wb.variational_compression_rate(Z_aug, Pi, U_aug, eps_aug) >= rate - 1e-12


def test_ch2_p_below_d_bounds_the_projected_rate_and_can_fall_below_or_rise_above_rc():
    mix = wb.data.subspace_mixture(n_per_group=64, d=16, p=2, K=4, noise=0.2, seed=0)
    Z, U, labels, Pi = mix.Z, mix.U, mix.labels, mix.Pi
    K, d, p = U.shape
    groups = [Z[:, labels == k] for k in range(K)]
    proj = sum(
        G.shape[1] / Z.shape[1] * wb.coding_rate(U[k].T @ G, EPS * np.sqrt(p / d))
        for k, G in enumerate(groups)
    )
    Rc, Rc_var = wb.compression_rate(Z, Pi, EPS), wb.variational_compression_rate(Z, Pi, U, EPS)
    assert proj - 1e-12 <= Rc_var < Rc
    U_rot = np.stack(
        [U[k] @ np.linalg.eigh(U[k].T @ G @ G.T @ U[k])[1] for k, G in enumerate(groups)]
    )
    assert wb.variational_compression_rate(Z, Pi, U_rot, EPS) == pytest.approx(proj, abs=1e-10)
    Z3 = np.zeros((3, 4))
    Z3[0] = np.sqrt(2.0)
    U3 = np.array([[[1, 1], [1, -1], [0, 0]]]) / np.sqrt(2)
    Pi3 = np.ones((4, 1))
    above = wb.variational_compression_rate(Z3, Pi3, U3, EPS)
    assert above > wb.compression_rate(Z3, Pi3, EPS) + 0.5
