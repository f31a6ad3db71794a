"""Regression checks moved out of chapter 10 (notebooks/10_white_box_inside.ipynb).

The chapter keeps the checks that teach (a membership that does not choose gives Delta R = 0;
the SymPy case p = 2 of the bound; which bases are orthonormal); the ones that only pin the
library to a formula or to another part of the library live here, where they can fail a build.
Each compares with an independent computation: numpy's slogdet, the closed form of a 2 x 2
correlation, and a fresh forward pass of the layer.
"""

from __future__ import annotations

import numpy as np
import pytest

import whitebox as wb
from whitebox import analysis
from whitebox.models import ToSTClassifier


@pytest.fixture(scope="module")
def net():
    model = ToSTClassifier(dim=16, depth=2, num_heads=2, dtype="float64", seed=3)
    for blk in model.blocks:  # memberships that choose, as in a trained network
        blk.attn.params["qkv.weight"][...] *= 20.0
    X = np.random.default_rng(4).uniform(0, 16, size=(5, 1, 8, 8))
    _, inter = model.forward(X, return_intermediates=True)
    return model, X, inter


def test_ch10_pi_of_a_fresh_attention_forward_is_the_reported_one(net):
    model, _, inter = net
    for l, blk in enumerate(model.blocks):
        blk.attn.forward(blk.ln_1.forward(inter["tokens"][l]))
        np.testing.assert_array_equal(blk.attn.last_pi, inter["pi"][l])
        P = analysis.memberships(inter["pi"][l])  # (B, N, H), rows on the simplex
        np.testing.assert_allclose(P.sum(axis=-1), 1.0, rtol=1e-12)
        assert P.std() > 1e-3  # not the uniform membership


@pytest.mark.parametrize("a, b, beta, c", [(1.5, 0.7, -0.4, 4.0), (2.0, 3.0, 1.9, 0.5)])
def test_ch10_gap_of_the_bound_is_minus_half_log_one_minus_r_squared(a, b, beta, c):
    # one 2 x 2 covariance, one group holding every token (n_k = n: the weight is 1/2)
    C = np.array([[[[a, beta], [beta, b]]]])  # (B, K, p, p)
    d, n = 5, 5
    eps = np.sqrt(d / c)
    rv, rp = analysis.rates_from_covariances(C, np.array([[float(n)]]), n, d, eps)
    A = np.eye(2) + c * C[0, 0]
    r2 = A[0, 1] ** 2 / (A[0, 0] * A[1, 1])  # squared correlation of I + cC
    np.testing.assert_allclose(rv[0], 0.5 * (np.log(A[0, 0]) + np.log(A[1, 1])), rtol=1e-13)
    np.testing.assert_allclose(rp[0], 0.5 * np.linalg.slogdet(A)[1], rtol=1e-13)
    np.testing.assert_allclose(rv[0] - rp[0], 0.5 * -np.log1p(-r2), rtol=1e-10)
    assert analysis.offdiag_share(C[0, 0]) == pytest.approx(
        2 * beta**2 / (a**2 + b**2 + 2 * beta**2)
    )


@pytest.mark.parametrize("kind", analysis.BASIS_KINDS)
def test_ch10_rc_var_from_covariances_is_the_librarys_per_image(net, kind):
    model, X, inter = net
    blk = model.blocks[0]
    X0 = np.asarray(blk.ln_1.forward(inter["tokens"][0]), np.float64)
    blk.attn.forward(X0)
    P = analysis.memberships(blk.attn.last_pi)
    U = analysis.head_bases(blk, kind)
    eps = analysis.EPS_PROFILE
    N, D = X0.shape[1:]
    orthonormal = np.allclose(np.einsum("hdp,hdq->hpq", U, U), np.eye(U.shape[2]))
    assert orthonormal == (kind != "raw")  # the learned projections are not orthonormal
    C, n_k = analysis.projected_covariances(X0, P, U)
    rv, rp = analysis.rates_from_covariances(C, n_k, N, D, eps)
    lib = [wb.variational_compression_rate(x.T, p, U, eps) for x, p in zip(X0, P)]
    np.testing.assert_allclose(rv, lib, rtol=1e-10)
    assert np.all(rv >= rp - 1e-12)  # the bound, per image
    if kind == "polar":
        prof = analysis.layer_profile(model, X, eps)
        np.testing.assert_allclose(prof[0]["in"]["rc_var_polar"], rv.mean(), rtol=1e-10)
