"""whitebox.complexity: the counted operators compute the real operators, and count what they do."""

import numpy as np
import pytest

from whitebox import nn
from whitebox.complexity import OPERATORS, counted_attention, counted_linear

SIZES = [(1, 1, 1), (2, 3, 1), (4, 2, 3), (5, 1, 2), (3, 4, 2)]  # (n, p, H)


def _inputs(op, n, p, H, seed=0):
    rng = np.random.default_rng(seed)
    shape = (3, H, n, p) if op in ("softmax", "xcit") else (H, n, p)
    return rng.standard_normal(shape), rng.uniform(0.5, 2.0, H)


def _softmax(z, axis):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _xcit_numpy(qkv, temp):
    """XCiT's cross-covariance attention, vectorized: an oracle written independently."""
    q, k, v = qkv  # (H, n, p) each
    q_hat = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    k_hat = k / np.maximum(np.linalg.norm(k, axis=1, keepdims=True), 1e-12)
    A = _softmax(np.einsum("hna,hnb->hab", q_hat, k_hat) * temp[:, None, None], axis=-1)
    return np.einsum("hab,hnb->hna", A, v)


@pytest.mark.parametrize("n, p, H", SIZES)
def test_counted_tssa_is_the_library_layer(n, p, H):
    rng = np.random.default_rng(n + 10 * p + 100 * H)
    D = H * p
    x = rng.standard_normal((1, n, D))
    params = {
        "qkv.weight": rng.standard_normal((D, D)),
        "qkv.bias": rng.standard_normal(D),
        "temp": rng.uniform(0.5, 2.0, (H, 1)),
        "proj.weight": np.eye(D),
        "proj.bias": np.zeros(D),
    }
    w = (x[0] @ params["qkv.weight"] + params["qkv.bias"]).reshape(n, H, p).transpose(1, 0, 2)
    out, _, coupling = counted_attention("tssa", w, params["temp"][:, 0])
    lib = nn.tssa_forward(x, params)[0][0].reshape(n, H, p).transpose(1, 0, 2)
    np.testing.assert_allclose(out, lib, rtol=1e-12, atol=1e-14)
    assert coupling == p


@pytest.mark.parametrize("n, p, H", SIZES)
def test_counted_softmax_and_mssa_are_the_library_layer(n, p, H):
    rng = np.random.default_rng(n + 10 * p + 100 * H)
    D = H * p
    x = rng.standard_normal((1, n, D))
    params = {
        "qkv.weight": rng.standard_normal((D, 3 * D)),
        "qkv.bias": rng.standard_normal(3 * D),
        "proj.weight": np.eye(D),
        "proj.bias": np.zeros(D),
    }
    qkv = (x[0] @ params["qkv.weight"] + params["qkv.bias"]).reshape(n, 3, H, p)
    qkv = qkv.transpose(1, 2, 0, 3)  # (3, H, n, p)
    out, ops, coupling = counted_attention("softmax", qkv)
    lib = nn.softmax_attention_forward(x, params, H)[0][0].reshape(n, H, p).transpose(1, 0, 2)
    np.testing.assert_allclose(out, lib, rtol=1e-12, atol=1e-14)
    assert coupling == n * n
    # MSSA is softmax attention with q = k = v = w
    w = qkv[2]
    out_m, ops_m, _ = counted_attention("mssa", w)
    out_s, ops_s, _ = counted_attention("softmax", np.stack([w, w, w]))
    np.testing.assert_allclose(out_m, out_s, rtol=0, atol=0)
    assert ops_m == ops_s == ops


@pytest.mark.parametrize("n, p, H", SIZES)
def test_counted_xcit_matches_a_vectorized_oracle(n, p, H):
    qkv, temp = _inputs("xcit", n, p, H, seed=1)
    out, _, coupling = counted_attention("xcit", qkv, temp)
    np.testing.assert_allclose(out, _xcit_numpy(qkv, temp), rtol=1e-12, atol=1e-14)
    assert coupling == p * p


def _golden(op, n, p, H):
    """Closed forms of the counts (chapter 5 derives them step by step)."""
    if op in ("softmax", "mssa"):
        return H * n * (4 * n * p + 5 * n - p - 2)
    if op == "xcit":
        return H * p * (4 * n * p + 5 * n + 5 * p)
    return 8 * H * n * p + 7 * H * n + 5 * H * p - 2 * n


@pytest.mark.parametrize("op", OPERATORS)
@pytest.mark.parametrize("n, p, H", SIZES + [(7, 3, 4)])
def test_counts_match_the_closed_forms(op, n, p, H):
    w, temp = _inputs(op, n, p, H)
    _, ops, _ = counted_attention(op, w, temp)
    assert ops == _golden(op, n, p, H)


def test_counts_do_not_depend_on_the_values():
    a = counted_attention("tssa", *_inputs("tssa", 4, 3, 2, seed=0))[1]
    b = counted_attention("tssa", np.zeros((2, 4, 3)))[1]  # zero tokens: the norm floor acts
    assert a == b


def test_counted_tssa_handles_zero_tokens_like_the_library():
    out, _, _ = counted_attention("tssa", np.zeros((2, 3, 2)))
    assert np.all(np.isfinite(out)) and np.all(out == 0)


@pytest.mark.parametrize("d_in, d_out", [(1, 1), (3, 5), (4, 12)])
def test_counted_linear(d_in, d_out):
    rng = np.random.default_rng(d_in * d_out)
    x, W, b = (
        rng.standard_normal((6, d_in)),
        rng.standard_normal((d_in, d_out)),
        rng.standard_normal(d_out),
    )
    out, ops = counted_linear(x, W, b)
    np.testing.assert_allclose(out, x @ W + b, rtol=1e-12, atol=1e-14)
    assert ops == 2 * 6 * d_in * d_out


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="operator"):
        counted_attention("performer", np.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match=r"w: expected .*\(3, H, n, p\)"):
        counted_attention("softmax", np.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match=r"w: expected .*\(H, n, p\)"):
        counted_attention("tssa", np.zeros((3, 1, 2, 2)))
    with pytest.raises(ValueError, match="w: expected a non-empty"):
        counted_attention("mssa", np.zeros((1, 0, 2)))
    with pytest.raises(ValueError, match="temp: expected 2 temperatures"):
        counted_attention("tssa", np.zeros((2, 3, 2)), temp=[1.0])
    with pytest.raises(ValueError, match="x, W, b"):
        counted_linear(np.zeros((2, 3)), np.zeros((4, 5)), np.zeros(5))
