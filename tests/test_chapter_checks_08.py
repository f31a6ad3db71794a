"""Regression checks moved out of chapter 8 (causal TSSA).

The chapter keeps the checks that teach; the ones that pin the library to an independent
computation (a token-by-token implementation, a symbolic layer, finite differences, the
non-causal layer on each prefix) live here, where they can fail a build.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

from whitebox import nn
from whitebox.gradcheck import check_directional, numerical_grad, rel_error

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "notebooks"))
import helpers  # noqa: E402  (notebooks/helpers.py: the chapters' plotting and demo helpers)

#: the chapter's parameters (weights of order 1/sqrt(D), a nonzero position bias denom_bias)
_random_params = helpers.ch8_random_params


def _recurrent(x, params):
    """Causal TSSA token by token from the formulas of chapter 8, section 1: a loop over the
    tokens carrying the state E (p,), Psi (p,), S () per sequence and head; no cumsum."""
    B, T, D = x.shape
    H = params["temp"].shape[0]
    p = D // H
    w_all = (x @ params["qkv.weight"] + params["qkv.bias"]).reshape(B, T, H, p)
    E, Psi, S = np.zeros((B, H, p)), np.zeros((B, H, p)), np.zeros((B, H))
    out = np.empty_like(x)
    for t in range(T):
        w = w_all[:, t]  # (B, H, p)
        E = E + w**2
        score = params["temp"][:, 0] * (
            (w**2 / np.maximum(E, 1e-12)).sum(-1) + p * params["denom_bias"][:, t, 0]
        )  # (B, H)
        Pi = np.exp(score - score.max(axis=1, keepdims=True))
        Pi /= Pi.sum(axis=1, keepdims=True)  # softmax over the heads
        Psi = Psi + Pi[..., None] * w**2
        S = S + Pi
        v = -Pi[..., None] * w / (1 + Psi / (S[..., None] + 1e-8))
        out[:, t] = v.reshape(B, D) @ params["proj.weight"] + params["proj.bias"]
    return out


@pytest.mark.parametrize("B, T, D, H", [(2, 50, 12, 3), (1, 7, 8, 1), (3, 33, 16, 4)])
def test_ch8_token_by_token_state_is_the_library(B, T, D, H):
    rng = np.random.default_rng(T + D)
    x = rng.standard_normal((B, T, D))
    params = _random_params(D, H, block_size=T + 5, rng=rng)
    out, _ = nn.causal_tssa_forward(x, params)
    assert rel_error(_recurrent(x, params), out) < 1e-10  # rounding; a wrong formula: O(1)


def _sympy_layer(T, D, H, Wq, bq, Wo, bo):
    """The causal layer in SymPy with symbols for x, the temperatures and beta (branch r > 1e-12)."""
    p = D // H
    X = sp.Matrix(T, D, lambda t, k: sp.Symbol(f"x_{t}{k}", real=True))
    temps = sp.Matrix(sp.symbols(f"temp_0:{H}", real=True))
    beta = sp.Matrix(H, T, lambda h, t: sp.Symbol(f"beta_{h}{t}", real=True))
    w = X * Wq + sp.ones(T, 1) * bq
    heads = [w[:, h * p : (h + 1) * p] for h in range(H)]
    score = [
        [
            temps[h]
            * sum(
                wh[t, i] ** 2 / sum(wh[u, i] ** 2 for u in range(t + 1)) + beta[h, t]
                for i in range(p)
            )
            for t in range(T)
        ]
        for h, wh in enumerate(heads)
    ]
    e = [[sp.exp(score[h][t]) for t in range(T)] for h in range(H)]
    Pi = [[e[h][t] / sum(e[g][t] for g in range(H)) for t in range(T)] for h in range(H)]
    V = sp.zeros(T, D)
    for h, wh in enumerate(heads):
        for t in range(T):
            S_t = sum(Pi[h][: t + 1]) + sp.Rational(1, 10**8)
            for i in range(p):
                y = sum(Pi[h][u] * wh[u, i] ** 2 for u in range(t + 1)) / S_t
                V[t, h * p + i] = -Pi[h][t] * wh[t, i] / (1 + y)
    return V * Wo + sp.ones(T, 1) * bo, list(X), list(temps), list(beta)


def test_ch8_sympy_layer_is_the_library_forward_and_backward():
    T, D, H, block = 3, 2, 2, 5
    rng = np.random.default_rng(2)
    Wq_i, Wo_i = rng.integers(-8, 9, (D, D)), rng.integers(-8, 9, (D, D))
    bq_i, bo_i = rng.integers(-2, 3, (1, D)), rng.integers(-2, 3, (1, D))
    rat = lambda a: sp.Matrix(a.shape[0], a.shape[1], [sp.Rational(int(v), 8) for v in a.ravel()])  # noqa: E731
    out_sym, xs, ts, bs = _sympy_layer(T, D, H, rat(Wq_i), rat(bq_i), rat(Wo_i), rat(bo_i))
    syms = xs + ts + bs
    x0 = rng.standard_normal((1, T, D))
    temp0 = rng.uniform(0.5, 2.0, (H, 1))
    beta0 = 0.1 * rng.standard_normal((H, T))
    values = np.concatenate([x0.ravel(), temp0.ravel(), beta0.ravel()])
    point = {v: sp.Float(float(a), 30) for v, a in zip(syms, values)}
    J = np.array(out_sym.reshape(T * D, 1).jacobian(syms).xreplace(point).evalf(30), dtype=float)
    out_num = np.array(out_sym.xreplace(point).evalf(30), dtype=float)

    params = {"qkv.weight": Wq_i / 8, "qkv.bias": bq_i[0] / 8, "temp": temp0,
              "denom_bias": np.zeros((H, block, 1)), "proj.weight": Wo_i / 8,
              "proj.bias": bo_i[0] / 8}  # fmt: skip
    params["denom_bias"][:, :T, 0] = beta0  # block size 5 > T = 3
    out, cache = nn.causal_tssa_forward(x0, params)
    G = rng.standard_normal((1, T, D))
    dx, grads = nn.causal_tssa_backward(G, cache)
    g_sym = G.reshape(-1) @ J  # J^T vec(G)
    nx = T * D
    assert rel_error(out_num, out[0]) < 1e-12
    assert rel_error(g_sym[:nx], dx.ravel()) < 1e-10
    assert rel_error(g_sym[nx : nx + H], grads["temp"].ravel()) < 1e-10
    assert rel_error(g_sym[nx + H :], grads["denom_bias"][:, :T, 0].ravel()) < 1e-10
    assert not grads["denom_bias"][:, T:].any()  # positions beyond T get exactly zero


def test_ch8_reverse_cumsum_is_the_adjoint_of_cumsum():
    rng = np.random.default_rng(5)
    phi = rng.standard_normal((2, 3, 7, 4))  # (B, H, T, p), summed along the tokens
    Phi_bar = rng.standard_normal((2, 3, 7, 4))
    f = lambda: float((np.cumsum(phi, axis=2) * Phi_bar).sum())  # noqa: E731
    reverse = np.flip(np.cumsum(np.flip(Phi_bar, axis=2), axis=2), axis=2)
    assert rel_error(reverse, numerical_grad(f, phi)) < 1e-6


def _loss_and_grads(x, params, G):
    _, cache = nn.causal_tssa_forward(x, params)
    dx, grads = nn.causal_tssa_backward(G, cache)
    return (lambda: float((nn.causal_tssa_forward(x, params)[0] * G).sum())), {"x": dx, **grads}


def test_ch8_causal_backward_entry_by_entry():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 5, 6))
    params = _random_params(6, 3, block_size=8, rng=rng)
    f, analytic = _loss_and_grads(x, params, rng.standard_normal((2, 5, 6)))
    for name, arr in {"x": x, **params}.items():
        assert rel_error(analytic[name], numerical_grad(f, arr)) < 1e-5, name


def test_ch8_causal_backward_along_random_directions():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 64, 32))
    params = _random_params(32, 4, block_size=64, rng=rng)
    f, analytic = _loss_and_grads(x, params, rng.standard_normal((2, 64, 32)))
    for name, arr in {"x": x, **params}.items():
        errs = [check_directional(f, arr, analytic[name], seed=s) for s in range(3)]
        assert max(errs) < 1e-6, name


def test_ch8_last_token_shares_norms_membership_and_formula():
    rng = np.random.default_rng(7)
    T, D, H = 64, 12, 3
    p = D // H
    x = rng.standard_normal((1, T, D))
    params = _random_params(D, H, block_size=T, rng=rng, temp_range=(2.0, 8.0))
    params["denom_bias"][:, T - 1] = 0.0  # beta at the last position
    params["proj.weight"], params["proj.bias"] = np.eye(D), np.zeros(D)  # out = merge(v)
    params_nc = {k: v for k, v in params.items() if k != "denom_bias"}
    out_c, cc = nn.causal_tssa_forward(x, params)
    _, cn = nn.tssa_forward(x, params_nc)
    pi_c, pi_nc = cc["pi"][0], cn["pi"][0]  # (H, T)
    heads = lambda a: a.reshape(T, H, p).transpose(1, 0, 2)  # noqa: E731
    w = heads(x[0] @ params["qkv.weight"] + params["qkv.bias"])
    y_c = -pi_c[..., None] * w / heads(out_c[0]) - 1  # statistics read off the outputs
    q = pi_c / (pi_c.sum(-1, keepdims=True) + nn.MEMBERSHIP_EPS)
    y_formula = np.einsum("ht,htp->hp", q, w**2)  # the non-causal formula with causal Pi
    np.testing.assert_allclose(np.cumsum(w**2, axis=1)[:, -1], (w**2).sum(axis=1), rtol=1e-12)
    np.testing.assert_allclose(pi_c[:, -1], pi_nc[:, -1], rtol=1e-12, atol=0)
    np.testing.assert_allclose(y_c[:, -1], y_formula, rtol=1e-12, atol=0)
    assert np.abs(pi_c[:, :-1] - pi_nc[:, :-1]).max() > 1e-3  # earlier memberships differ


@pytest.mark.parametrize("T, D", [(20, 6), (9, 4)])
def test_ch8_one_head_is_the_noncausal_layer_on_each_prefix(T, D):
    rng = np.random.default_rng(8 + T)
    x = rng.standard_normal((2, T, D))
    params = _random_params(D, 1, block_size=T, rng=rng)
    params_nc = {k: v for k, v in params.items() if k != "denom_bias"}
    out, cache = nn.causal_tssa_forward(x, params)
    assert np.all(cache["pi"] == 1.0)
    prefix_runs = np.stack(
        [nn.tssa_forward(x[:, : t + 1], params_nc)[0][:, -1] for t in range(T)], axis=1
    )
    np.testing.assert_allclose(out, prefix_runs, rtol=1e-10, atol=1e-13)
