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
