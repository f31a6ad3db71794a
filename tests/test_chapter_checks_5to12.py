"""Regression checks moved out of chapters 5, 6, 7 and 12.

The chapters keep the checks that teach; the ones that only pin the library to a formula or to
another part of the library ("library == formula: True") live here, where they can fail a build.
"""

from __future__ import annotations

import numpy as np
import pytest

import whitebox as wb
from whitebox.demo import run_demo

# ---------------------------------------------------------------- chapter 5: linear cost


def _streamed_attention(q, k, v, block):
    """Exact softmax attention over key blocks with a running max and sum (FlashAttention-style):
    q, k, v (n, p); never more than an (n, block) slice of the scores. Returns (out, widest)."""
    n, p = q.shape
    m = np.full(n, -np.inf)  # running max of the scores of each query
    s = np.zeros(n)  # running sum of exp(score - m)
    acc = np.zeros((n, p))  # running sum of exp(score - m) v
    widest = 0
    for start in range(0, n, block):
        scores = q @ k[start : start + block].T / np.sqrt(p)  # (n, <= block)
        widest = max(widest, scores.shape[1])
        m_new = np.maximum(m, scores.max(axis=1))
        rescale = np.exp(m - m_new)
        e = np.exp(scores - m_new[:, None])
        s = s * rescale + e.sum(axis=1)
        acc = acc * rescale[:, None] + e @ v[start : start + block]
        m = m_new
    return acc / s[:, None], widest


@pytest.mark.parametrize("n, block", [(7, 1), (33, 4), (64, 64), (50, 16)])
def test_ch5_streamed_softmax_attention_is_exact(n, block):
    # chapter 5's memory note: exact softmax attention without the n x n matrix
    rng = np.random.default_rng(n)
    D, H = 12, 3
    p = D // H
    layer = wb.nn.SoftmaxAttention(D, H, dtype=np.float64, rng=rng)
    x = 2.0 * rng.standard_normal((1, n, D))
    out, _ = wb.nn.softmax_attention_forward(x, layer.params, H)
    qkv = (x[0] @ layer.params["qkv.weight"] + layer.params["qkv.bias"]).reshape(n, 3, H, p)
    heads = [_streamed_attention(*(qkv[:, i, h] for i in range(3)), block) for h in range(H)]
    assert all(widest <= block for _, widest in heads)
    merged = np.concatenate([o for o, _ in heads], axis=1)  # (n, D)
    streamed = merged @ layer.params["proj.weight"] + layer.params["proj.bias"]
    np.testing.assert_allclose(streamed, out[0], rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- chapter 6: unrolled subspaces


def _unrolled_rc_var(steps, seed, eps=0.5, eta=0.05, d=16, p=2, K=4):
    """The loop of chapter 6, section 2: re-estimate Pi, then one tssa_step with the true bases."""
    mix = wb.data.subspace_mixture(n_per_group=64, d=d, p=p, K=K, noise=0.2, seed=seed)
    Z, tau = mix.Z, mix.Z.shape[1] * eps**2 / d
    out = []
    for step in range(steps + 1):
        Pi = wb.estimate_membership(Z, mix.U, eta)
        out.append(float(wb.variational_compression_rate(Z, Pi, mix.U, eps)))
        if step < steps:
            Z = wb.tssa_step(Z, Pi, mix.U, eps, tau)
    return np.array(out)


@pytest.mark.parametrize("seed", [0, 1])
def test_ch6_unrolled_loop_is_the_demo(seed):
    demo = run_demo(steps=10, seed=seed, verbose=False)
    expected = np.array([h["Rc_var"] for h in demo["history"]])
    np.testing.assert_allclose(_unrolled_rc_var(10, seed), expected, rtol=1e-12)


@pytest.mark.parametrize("seed", [3, 4, 5])
@pytest.mark.parametrize("p", [1, 2, 3])
def test_ch6_one_hard_step_follows_the_recursion(seed, p):
    # one group, hard membership, tau = n/c: every coordinate is scaled by c y / (1 + c y)
    eps, d = 0.5, 16
    one = wb.data.subspace_mixture(n_per_group=64, d=d, p=p, K=1, noise=0.2, seed=seed)
    c = d / eps**2
    y0 = wb.token_statistics(one.Z, one.Pi, one.U)
    Z1 = wb.tssa_step(one.Z, one.Pi, one.U, eps, tau=one.Z.shape[1] / c)
    y1 = wb.token_statistics(Z1, one.Pi, one.U)
    np.testing.assert_allclose(y1, y0 * (c * y0 / (1 + c * y0)) ** 2, rtol=1e-10)
    # and the step never flips a coordinate along the basis (the no-overshoot step)
    w0 = np.einsum("dp,dn->pn", one.U[0], one.Z)
    w1 = np.einsum("dp,dn->pn", one.U[0], Z1)
    assert np.all(w0 * w1 >= 0) and np.all(np.abs(w1) <= np.abs(w0) + 1e-12)


# ---------------------------------------------------------------- chapter 7: manual backprop


def _random_params(D, H, rng):
    return {
        "qkv.weight": rng.standard_normal((D, D)) / np.sqrt(D),
        "qkv.bias": 0.1 * rng.standard_normal(D),
        "temp": rng.uniform(0.5, 2.0, size=(H, 1)),
        "proj.weight": rng.standard_normal((D, D)) / np.sqrt(D),
        "proj.bias": 0.1 * rng.standard_normal(D),
    }


@pytest.mark.parametrize("n, D, H", [(3, 4, 2), (5, 6, 3)])
def test_ch7_batched_backward_is_the_full_jacobian(n, D, H):
    # chapter 7's picture: repeat the sequence n D times, send one unit cotangent to each copy;
    # the dx of copy (j, d) is row (j, d) of d out / d x. Checked against central differences.
    rng = np.random.default_rng(n)
    params = _random_params(D, H, rng)
    x = rng.standard_normal((1, n, D))
    _, cache = wb.nn.tssa_forward(np.repeat(x, n * D, axis=0), params)
    dx, _ = wb.nn.tssa_backward(np.eye(n * D).reshape(n * D, n, D), cache)
    J = dx.reshape(n * D, n * D)  # (out entries, x entries)
    h, J_fd = 1e-6, np.empty((n * D, n * D))
    for k in range(n * D):
        e = np.zeros(n * D)
        e[k] = h
        up = wb.nn.tssa_forward(x + e.reshape(1, n, D), params)[0].ravel()
        down = wb.nn.tssa_forward(x - e.reshape(1, n, D), params)[0].ravel()
        J_fd[:, k] = (up - down) / (2 * h)
    np.testing.assert_allclose(J, J_fd, rtol=1e-5, atol=1e-8)
