"""Layers of whitebox.nn: gradient checks (float64, random upstream gradients), independent
reference forwards, causality, float32 vs float64, the optimizer and input validation."""

import math

import numpy as np
import pytest

from whitebox import nn
from whitebox.backend import to_numpy
from whitebox.gradcheck import check_directional, numerical_grad, rel_error

GRAD_TOL = 1e-6
H_FD = 1e-5  # central-difference step: truncation ~h^2, round-off ~1e-16 |f| / h


def grad_err(analytic, numeric):
    """Entry-wise relative error, with a floor at 1e-3 of the tensor's largest entry: central
    differences carry an absolute round-off (~1e-11 |f|), so an entry that is exactly zero
    in theory (e.g. the key bias of softmax attention) cannot be checked relatively."""
    a, b = np.asarray(analytic), np.asarray(numeric)
    floor = 1e-3 * max(1e-8, float((np.abs(a) + np.abs(b)).max()))
    return rel_error(a, b, floor=floor)


def randomize(module, rng, scale=0.3):
    """Move every parameter away from its (often symmetric) initialization."""
    for p in module.parameters().values():
        p += scale * rng.standard_normal(p.shape)


def check_module(module, x, rng, elementwise=True, skip_x=False):
    """Gradient of sum(module(x) * G), G random, w.r.t. x and every parameter; returns errors."""
    y = module.forward(x)
    G = rng.standard_normal(y.shape)
    G_copy = G.copy()
    dx = module.backward(G)
    np.testing.assert_array_equal(G, G_copy, err_msg="backward modified its upstream gradient")
    grads = {k: v.copy() for k, v in module.gradients().items()}
    f = lambda: float((module.forward(x) * G).sum())
    targets = ([] if skip_x else [("x", x, dx)]) + [
        (k, p, grads[k]) for k, p in module.parameters().items()
    ]
    errs = {}
    for name, arr, g in targets:
        if elementwise:
            errs[name] = grad_err(g, numerical_grad(f, arr, H_FD))
        else:
            errs[name] = check_directional(f, arr, g, seed=len(errs), h=H_FD)
    return errs


def assert_small(errs, tol=GRAD_TOL):
    bad = {k: f"{v:.2e}" for k, v in errs.items() if not v < tol}
    assert not bad, f"gradient check failed (rel. error > {tol}) for {bad}"


F64 = np.float64


# --------------------------------------------------------------------------------------------
# Gradient checks
# --------------------------------------------------------------------------------------------

SIMPLE_LAYERS = {
    "linear": lambda: nn.Linear(6, 5, dtype=F64),
    "layernorm": lambda: nn.LayerNorm(6, dtype=F64),
    "gelu": lambda: nn.GELU(),
    "mlp": lambda: nn.MLP(6, dtype=F64),
}


@pytest.mark.parametrize("name", list(SIMPLE_LAYERS))
def test_simple_layer_gradients(name):
    rng = np.random.default_rng(0)
    layer = SIMPLE_LAYERS[name]()
    randomize(layer, rng)
    assert_small(check_module(layer, rng.standard_normal((2, 3, 6)) * 2, rng))


@pytest.mark.parametrize("num_heads", [1, 2, 3])
@pytest.mark.parametrize("n", [1, 4])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 20.0])
def test_tssa_gradients(num_heads, n, scale):
    rng = np.random.default_rng(num_heads * 10 + n)
    layer = nn.TSSA(6, num_heads, dtype=F64, rng=rng)
    randomize(layer, rng)
    x = scale * rng.standard_normal((2, n, 6))
    assert_small(check_module(layer, x, rng))


@pytest.mark.parametrize("num_heads", [1, 3])
@pytest.mark.parametrize("T", [1, 2, 5, 7])
def test_causal_tssa_gradients(num_heads, T):
    rng = np.random.default_rng(num_heads * 10 + T)
    layer = nn.CausalTSSA(6, num_heads, block_size=7, dtype=F64, rng=rng)
    randomize(layer, rng)  # includes temp and denom_bias
    assert_small(check_module(layer, rng.standard_normal((2, T, 6)), rng))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("num_heads", [1, 2])
def test_softmax_attention_gradients(causal, num_heads):
    rng = np.random.default_rng(num_heads + 2 * causal)
    layer = nn.SoftmaxAttention(4, num_heads, causal=causal, dtype=F64, rng=rng)
    randomize(layer, rng)
    assert_small(check_module(layer, rng.standard_normal((2, 4, 4)), rng))


BLOCKS = {
    "tssa": dict(attention="tssa"),
    "causal_tssa": dict(attention="tssa", causal=True, block_size=5),
    "softmax": dict(attention="softmax"),
    "causal_softmax": dict(attention="softmax", causal=True, block_size=5),
}


@pytest.mark.parametrize("kind", list(BLOCKS))
def test_block_gradients(kind):
    rng = np.random.default_rng(3)
    block = nn.Block(4, 2, dtype=F64, rng=rng, layer_scale_init=0.5, **BLOCKS[kind])
    randomize(block, rng)
    assert_small(check_module(block, rng.standard_normal((2, 4, 4)), rng))


@pytest.mark.parametrize("causal", [False, True])
def test_tssa_directional_larger(causal):
    """A larger layer (n = 24, D = 16, H = 4): derivative along a random direction."""
    rng = np.random.default_rng(7)
    if causal:
        layer = nn.CausalTSSA(16, 4, block_size=32, dtype=F64, rng=rng)
    else:
        layer = nn.TSSA(16, 4, dtype=F64, rng=rng)
    randomize(layer, rng)
    assert_small(check_module(layer, rng.standard_normal((3, 24, 16)), rng, elementwise=False))


def test_embedding_gradient_with_repeated_ids():
    rng = np.random.default_rng(0)
    emb = nn.Embedding(5, 3, dtype=F64, rng=rng)
    idx = np.array([[0, 2, 2], [4, 2, 0]])
    y = emb.forward(idx)
    G = rng.standard_normal(y.shape)
    emb.backward(G)
    f = lambda: float((emb.forward(idx) * G).sum())
    assert grad_err(emb.grads["weight"], numerical_grad(f, emb.params["weight"], H_FD)) < 1e-8
    np.testing.assert_allclose(emb.grads["weight"][2], G[0, 1] + G[0, 2] + G[1, 1])
    np.testing.assert_array_equal(emb.grads["weight"][[1, 3]], 0.0)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_cross_entropy_value_and_gradient(label_smoothing):
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((2, 3, 5)) * 3
    targets = rng.integers(0, 5, size=(2, 3))
    loss, dlogits = nn.cross_entropy(logits, targets, label_smoothing)
    # independent: -sum_c q_c log softmax_c, averaged over the 6 positions
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    q = np.full(logits.shape, label_smoothing / 5)
    np.put_along_axis(q, targets[..., None], 1 - label_smoothing + label_smoothing / 5, axis=-1)
    assert loss == pytest.approx(float(-(q * logp).sum(-1).mean()), rel=1e-12)
    f = lambda: nn.cross_entropy(logits, targets, label_smoothing)[0]
    assert grad_err(dlogits, numerical_grad(f, logits, H_FD)) < GRAD_TOL


def test_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1e4, 0.0, -1e4]], dtype=np.float32)
    loss, d = nn.cross_entropy(logits, np.array([1]))
    assert loss == pytest.approx(1e4, rel=1e-6) and np.isfinite(d).all()
    assert d.dtype == np.float32


# --------------------------------------------------------------------------------------------
# Second oracle: the formulas of the issue written literally (loops over batch and heads)
# --------------------------------------------------------------------------------------------


def reference_tssa(x, P):
    """AttentionTSSA of the public code, one (batch, head) at a time."""
    B, n, D = x.shape
    H = P["temp"].shape[0]
    p = D // H
    w_all = x @ P["qkv.weight"] + P["qkv.bias"]
    y = np.zeros((B, n, D))
    pi = np.zeros((B, H, n))
    for b in range(B):
        score = np.zeros((H, n))
        for h in range(H):
            w = w_all[b, :, h * p : (h + 1) * p]  # (n, p)
            w_hat = w / np.maximum(np.linalg.norm(w, axis=0), 1e-12)
            score[h] = P["temp"][h, 0] * (w_hat**2).sum(1)
        pi[b] = np.exp(score) / np.exp(score).sum(0)
        for h in range(H):
            w = w_all[b, :, h * p : (h + 1) * p]
            s = (pi[b, h] / (pi[b, h].sum() + 1e-8)) @ (w**2)  # (p,)
            y[b, :, h * p : (h + 1) * p] = -pi[b, h][:, None] * w / (1 + s)
    return y @ P["proj.weight"] + P["proj.bias"], pi


def reference_causal_tssa(x, P):
    """nanoGPT CausalSelfAttention of the public code with explicit sums over u <= t."""
    B, T, D = x.shape
    H = P["temp"].shape[0]
    p = D // H
    w_all = (x @ P["qkv.weight"] + P["qkv.bias"]).reshape(B, T, H, p)
    y = np.zeros((B, T, H, p))
    for b in range(B):
        for t in range(T):
            score = np.zeros(H)
            for h in range(H):
                r = np.maximum((w_all[b, : t + 1, h] ** 2).sum(0), 1e-12)
                beta = P["denom_bias"][h, t, 0]
                score[h] = P["temp"][h, 0] * (w_all[b, t, h] ** 2 / r + beta).sum()
            pi_t = np.exp(score - score.max()) / np.exp(score - score.max()).sum()
            for h in range(H):
                # Pi at earlier tokens u <= t (recomputed: no cumsum anywhere)
                pis = []
                for u in range(t + 1):
                    sc = np.array(
                        [
                            P["temp"][g, 0]
                            * (
                                w_all[b, u, g] ** 2
                                / np.maximum((w_all[b, : u + 1, g] ** 2).sum(0), 1e-12)
                                + P["denom_bias"][g, u, 0]
                            ).sum()
                            for g in range(H)
                        ]
                    )
                    pis.append(np.exp(sc - sc.max())[h] / np.exp(sc - sc.max()).sum())
                pis = np.array(pis)
                s = (pis[:, None] * w_all[b, : t + 1, h] ** 2).sum(0) / (pis.sum() + 1e-8)
                y[b, t, h] = -pi_t[h] * w_all[b, t, h] / (1 + s)
    return y.reshape(B, T, D) @ P["proj.weight"] + P["proj.bias"]


def test_tssa_matches_literal_reference():
    rng = np.random.default_rng(11)
    layer = nn.TSSA(6, 3, dtype=F64, rng=rng)
    randomize(layer, rng)
    x = rng.standard_normal((2, 5, 6))
    ref, ref_pi = reference_tssa(x, layer.params)
    np.testing.assert_allclose(layer.forward(x), ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(layer.last_pi, ref_pi, rtol=1e-12)
    np.testing.assert_allclose(layer.last_pi.sum(axis=1), 1.0, rtol=1e-12)


def test_causal_tssa_matches_literal_reference():
    rng = np.random.default_rng(12)
    layer = nn.CausalTSSA(6, 2, block_size=6, dtype=F64, rng=rng)
    randomize(layer, rng)
    x = rng.standard_normal((2, 4, 6))
    np.testing.assert_allclose(layer.forward(x), reference_causal_tssa(x, layer.params), rtol=1e-11)


def test_softmax_attention_matches_reference():
    rng = np.random.default_rng(13)
    layer = nn.SoftmaxAttention(4, 2, causal=True, dtype=F64, rng=rng)
    randomize(layer, rng)
    x = rng.standard_normal((1, 3, 4))
    q, k, v = np.split(x[0] @ layer.params["qkv.weight"] + layer.params["qkv.bias"], 3, axis=1)
    out = np.zeros((3, 4))
    for h in range(2):
        sl = slice(2 * h, 2 * h + 2)
        s = q[:, sl] @ k[:, sl].T / math.sqrt(2) + np.triu(np.full((3, 3), -np.inf), 1)
        a = np.exp(s) / np.exp(s).sum(1, keepdims=True)
        out[:, sl] = a @ v[:, sl]
    ref = out @ layer.params["proj.weight"] + layer.params["proj.bias"]
    np.testing.assert_allclose(layer.forward(x)[0], ref, rtol=1e-12)


def test_gelu_is_the_exact_erf_form():
    x = np.linspace(-6, 6, 25)
    ref = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])
    np.testing.assert_allclose(nn.GELU().forward(x), ref, rtol=1e-14, atol=1e-300)
    # the tanh approximation differs by ~1e-3 near |x| = 2: this test can tell them apart
    tanh = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    assert np.abs(tanh - ref).max() > 1e-4


def test_named_constants():
    assert nn.TSSA_NORM_FLOOR == 1e-12
    assert nn.MEMBERSHIP_EPS == 1e-8
    assert nn.LAYERNORM_EPS == 1e-5


def test_layernorm_uses_its_eps_on_constant_rows():
    """A constant row has var = 0: the output is the bias, and eps sets the input gradient."""
    ln = nn.LayerNorm(4, dtype=F64)
    ln.params["bias"][:] = [1.0, 2.0, 3.0, 4.0]
    x = np.full((1, 1, 4), 7.0)
    np.testing.assert_array_equal(ln.forward(x)[0, 0], [1.0, 2.0, 3.0, 4.0])
    dy = np.array([[[1.0, 0.0, 0.0, 0.0]]])
    # dx = rstd (dy - mean dy) with rstd = 1 / sqrt(eps) when xhat = 0
    np.testing.assert_allclose(
        ln.backward(dy)[0, 0], (dy[0, 0] - 0.25) / math.sqrt(nn.LAYERNORM_EPS), rtol=1e-12
    )


def test_tssa_zero_column_is_clamped_not_nan():
    """A head coordinate that is zero on every token hits the 1e-12 floor: finite everywhere,
    and the clamped side contributes no gradient (as torch.clamp_min in F.normalize)."""
    rng = np.random.default_rng(5)
    layer = nn.TSSA(4, 2, dtype=F64, rng=rng)
    randomize(layer, rng)
    layer.params["qkv.weight"][:, 1] = 0.0
    layer.params["qkv.bias"][1] = 0.0
    x = rng.standard_normal((2, 3, 4))
    y = layer.forward(x)
    G = rng.standard_normal(y.shape)
    dx = layer.backward(G)
    assert np.isfinite(y).all() and np.isfinite(dx).all()
    assert all(np.isfinite(g).all() for g in layer.gradients().values())
    # the column stays identically zero when x moves, so the input gradient is smooth there
    f = lambda: float((layer.forward(x) * G).sum())
    assert grad_err(dx, numerical_grad(f, x, H_FD)) < GRAD_TOL


# --------------------------------------------------------------------------------------------
# Causality, equivariance, precision
# --------------------------------------------------------------------------------------------

CAUSAL_LAYERS = {
    "causal_tssa": lambda rng: nn.CausalTSSA(8, 2, block_size=9, dtype=F64, rng=rng),
    "causal_softmax": lambda rng: nn.SoftmaxAttention(8, 2, causal=True, dtype=F64, rng=rng),
}


@pytest.mark.parametrize("name", list(CAUSAL_LAYERS))
@pytest.mark.parametrize("t", [0, 3, 7])
def test_causality(name, t):
    rng = np.random.default_rng(t)
    layer = CAUSAL_LAYERS[name](rng)
    randomize(layer, rng)
    x = rng.standard_normal((2, 9, 8))
    y = layer.forward(x).copy()
    x2 = x.copy()
    x2[:, t + 1 :] = 100 * rng.standard_normal(x2[:, t + 1 :].shape)
    y2 = layer.forward(x2)
    np.testing.assert_allclose(y2[:, : t + 1], y[:, : t + 1], rtol=1e-13, atol=0)
    if t + 1 < 9:
        assert not np.allclose(y2[:, t + 1 :], y[:, t + 1 :])


def test_tssa_is_permutation_equivariant():
    """No positions inside TSSA: permuting the tokens permutes the output and Pi."""
    rng = np.random.default_rng(4)
    layer = nn.TSSA(8, 4, dtype=F64, rng=rng)
    randomize(layer, rng)
    x = rng.standard_normal((2, 6, 8))
    perm = rng.permutation(6)
    y, pi = layer.forward(x), layer.last_pi.copy()
    np.testing.assert_allclose(layer.forward(x[:, perm]), y[:, perm], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(layer.last_pi, pi[:, :, perm], rtol=1e-12)


PRECISION_LAYERS = {
    "tssa": lambda dt: nn.TSSA(16, 4, dtype=dt),
    "causal_tssa": lambda dt: nn.CausalTSSA(16, 4, block_size=12, dtype=dt),
    "softmax": lambda dt: nn.SoftmaxAttention(16, 4, causal=True, dtype=dt),
    "block": lambda dt: nn.Block(16, 4, attention="tssa", causal=True, block_size=12, dtype=dt),
}


def _norm_rel(a, b):
    return float(np.linalg.norm(np.asarray(a, F64) - b) / max(1e-30, np.linalg.norm(b)))


@pytest.mark.parametrize("name", list(PRECISION_LAYERS))
def test_float32_agrees_with_float64(name):
    rng = np.random.default_rng(9)
    l64, l32 = PRECISION_LAYERS[name](F64), PRECISION_LAYERS[name](np.float32)
    randomize(l64, rng)
    l32.load_state_dict(l64.state_dict())
    x = rng.standard_normal((2, 12, 16))
    G = rng.standard_normal((2, 12, 16))
    y64, y32 = l64.forward(x), l32.forward(x.astype(np.float32))
    dx64, dx32 = l64.backward(G), l32.backward(G.astype(np.float32))
    assert y32.dtype == np.float32 and dx32.dtype == np.float32
    assert _norm_rel(y32, y64) < 1e-5 and _norm_rel(dx32, dx64) < 1e-5
    g64 = l64.gradients()
    for k, g in l32.gradients().items():
        assert g.dtype == np.float32, k
        assert _norm_rel(g, g64[k]) < 1e-5, k


@pytest.mark.parametrize("name", list(PRECISION_LAYERS))
def test_layers_on_the_array_backend(xp, name):
    """The same layer moved with ``to(device)`` (CuPy on a GPU machine) matches NumPy."""
    device = "cpu" if xp is np else "gpu"
    rng = np.random.default_rng(10)
    ref, dev = PRECISION_LAYERS[name](F64), PRECISION_LAYERS[name](F64)
    randomize(ref, rng)
    dev.load_state_dict(ref.state_dict())
    dev.to(device)
    x, G = rng.standard_normal((2, 12, 16)), rng.standard_normal((2, 12, 16))
    y = dev.forward(xp.asarray(x))
    dx = dev.backward(xp.asarray(G))
    assert isinstance(y, xp.ndarray) and isinstance(dx, xp.ndarray)
    np.testing.assert_allclose(to_numpy(y), ref.forward(x), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(to_numpy(dx), ref.backward(G), rtol=1e-10, atol=1e-12)
    for k, g in ref.gradients().items():
        np.testing.assert_allclose(to_numpy(dev.gradients()[k]), g, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Module API
# --------------------------------------------------------------------------------------------


def test_block_parameter_names_and_decay():
    block = nn.Block(8, 2, attention="tssa", causal=True, block_size=4)
    names = list(block.parameters())
    assert names == [
        "gamma1", "gamma2", "ln_1.weight", "ln_1.bias", "attn.qkv.weight", "attn.qkv.bias",
        "attn.temp", "attn.denom_bias", "attn.proj.weight", "attn.proj.bias", "ln_2.weight",
        "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias",
    ]  # fmt: skip
    decayed = [k for k in names if not block.no_weight_decay(k)]
    assert decayed == [
        "attn.qkv.weight", "attn.proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight",
    ]  # fmt: skip
    assert block.num_parameters() == sum(v.size for v in block.parameters().values())
    assert block.attn.params["temp"].shape == (2, 1)
    assert block.attn.params["denom_bias"].shape == (2, 4, 1)
    np.testing.assert_array_equal(block.attn.params["temp"], 1.0)
    np.testing.assert_array_equal(block.attn.params["denom_bias"], 0.0)


def test_state_dict_roundtrip_and_validation():
    a, b = (
        nn.Block(8, 2, rng=np.random.default_rng(0)),
        nn.Block(8, 2, rng=np.random.default_rng(1)),
    )
    ids = {k: id(v) for k, v in b.parameters().items()}
    b.load_state_dict(a.state_dict())
    assert {k: id(v) for k, v in b.parameters().items()} == ids  # loaded in place
    for k, v in a.parameters().items():
        np.testing.assert_array_equal(b.parameters()[k], v)
    bad = a.state_dict()
    bad["attn.temp"] = np.ones((3, 1))
    with pytest.raises(ValueError, match=r"attn\.temp.*\(2, 1\)"):
        b.load_state_dict(bad)
    del bad["attn.temp"]
    with pytest.raises(ValueError, match="attn.temp"):
        b.load_state_dict(bad)
    assert b.to("cpu") is b and b.dtype == np.float32


def test_zero_grad_and_gradients_keys():
    layer = nn.TSSA(4, 2)
    assert list(layer.gradients()) == list(layer.parameters())
    layer.forward(np.ones((1, 2, 4), np.float32))
    layer.backward(np.ones((1, 2, 4), np.float32))
    layer.zero_grad()
    assert all(not g.any() for g in layer.gradients().values())


# --------------------------------------------------------------------------------------------
# Optimizer
# --------------------------------------------------------------------------------------------


def test_adamw_matches_hand_computation_and_keeps_identity():
    rng = np.random.default_rng(0)
    lin = nn.Linear(3, 2, dtype=F64, rng=rng)
    lin.params["bias"][:] = rng.standard_normal(2)
    W0, b0 = lin.params["weight"].copy(), lin.params["bias"].copy()
    ids = {k: id(v) for k, v in lin.parameters().items()}
    opt = nn.AdamW(lin, lr=0.1, betas=(0.8, 0.9), eps=1e-8, weight_decay=0.5)
    gW, gb = rng.standard_normal((3, 2)), rng.standard_normal(2)
    ref = {"weight": [W0, 0, 0], "bias": [b0, 0, 0]}
    for t in (1, 2):
        lin.grads = {"weight": gW * t, "bias": gb * t}
        opt.step()
        for k, decay in (("weight", 0.5), ("bias", 0.0)):  # no decay on biases
            p, m, v = ref[k]
            g = lin.grads[k]
            p = p * (1 - 0.1 * decay)
            m = 0.8 * m + 0.2 * g
            v = 0.9 * v + 0.1 * g * g
            p = p - 0.1 * (m / (1 - 0.8**t)) / (np.sqrt(v / (1 - 0.9**t)) + 1e-8)
            ref[k] = [p, m, v]
            np.testing.assert_allclose(lin.params[k], p, rtol=1e-13)
    assert {k: id(v) for k, v in lin.parameters().items()} == ids


def test_adamw_state_dict_resume():
    rng = np.random.default_rng(1)
    grads = [rng.standard_normal((3, 2)) for _ in range(4)]

    def run(resume_at=None):
        lin = nn.Linear(3, 2, dtype=F64, rng=np.random.default_rng(0))
        opt = nn.AdamW(lin, lr=0.05)
        for i, g in enumerate(grads):
            if i == resume_at:
                state, params = opt.state_dict(), lin.state_dict()
                lin = nn.Linear(3, 2, dtype=F64, rng=np.random.default_rng(5))
                lin.load_state_dict(params)
                opt = nn.AdamW(lin, lr=0.05)
                opt.load_state_dict(state)
            lin.grads = {"weight": g, "bias": g[0]}
            opt.step()
        return lin.params["weight"]

    np.testing.assert_array_equal(run(), run(resume_at=2))
    opt = nn.AdamW(nn.Linear(3, 2), lr=0.1)
    with pytest.raises(ValueError, match="exp_avg.weight"):
        opt.load_state_dict({"step": np.array(1)})


def test_cosine_lr_schedule():
    lr = lambda s: nn.cosine_lr(s, total_steps=110, warmup_steps=10, lr_max=1.0, lr_min=0.1)
    assert lr(0) == pytest.approx(0.1) and lr(9) == pytest.approx(1.0)
    assert lr(10) == pytest.approx(1.0)
    assert lr(60) == pytest.approx(0.55)  # half-way through the cosine
    assert lr(110) == pytest.approx(0.1) and lr(500) == pytest.approx(0.1)
    assert all(lr(s) >= lr(s + 1) for s in range(10, 110))


def test_clip_grad_norm_scales_in_place():
    lin = nn.Linear(2, 2, dtype=F64)
    lin.grads = {"weight": np.full((2, 2), 3.0), "bias": np.full(2, 4.0)}  # norm sqrt(68)
    g = lin.grads["weight"]
    total = nn.clip_grad_norm(lin, 1.0)
    assert total == pytest.approx(math.sqrt(68.0))
    assert lin.grads["weight"] is g
    new = math.sqrt(sum(float((v**2).sum()) for v in lin.gradients().values()))
    assert new == pytest.approx(1.0, rel=1e-5)
    assert nn.clip_grad_norm(lin, 10.0) == pytest.approx(new)  # below the limit: unchanged
    assert math.sqrt(float((lin.grads["weight"] ** 2).sum() + (lin.grads["bias"] ** 2).sum())) == (
        pytest.approx(new)
    )


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def test_bad_inputs_raise_value_error_naming_the_problem():
    x = np.zeros((1, 3, 8), np.float32)
    with pytest.raises(ValueError, match=r"x: expected shape \(B, n, 8\)"):
        nn.TSSA(8, 2).forward(np.zeros((1, 3, 6), np.float32))
    with pytest.raises(ValueError, match=r"x: expected shape \(B, n, 8\)"):
        nn.TSSA(8, 2).forward(np.zeros((3, 8), np.float32))
    with pytest.raises(ValueError, match="divisible by num_heads=3"):
        nn.TSSA(8, 3)
    with pytest.raises(ValueError, match="divisible by num_heads=3"):
        nn.CausalTSSA(8, 3, block_size=4)
    with pytest.raises(ValueError, match="divisible by num_heads=3"):
        nn.SoftmaxAttention(8, 3)
    with pytest.raises(ValueError, match="sequence length 3 exceeds block_size 2"):
        nn.CausalTSSA(8, 2, block_size=2).forward(x)
    bad = x.copy()
    bad[0, 1, 2] = np.nan
    for layer in (nn.TSSA(8, 2), nn.CausalTSSA(8, 2, 4), nn.Block(8, 2), nn.SoftmaxAttention(8, 2)):
        with pytest.raises(ValueError, match="NaN or Inf"):
            layer.forward(bad)
    bad[0, 1, 2] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        nn.TSSA(8, 2).forward(bad)
    with pytest.raises(ValueError, match=r"idx: token ids must lie in \[0, 5\)"):
        nn.Embedding(5, 4).forward(np.array([[0, 5]]))
    with pytest.raises(ValueError, match=r"idx: token ids must lie in \[0, 5\)"):
        nn.Embedding(5, 4).forward(np.array([[-1, 2]]))
    with pytest.raises(ValueError, match="targets"):
        nn.cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="last dimension 8"):
        nn.Linear(8, 2).forward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="attention"):
        nn.Block(8, 2, attention="linear")
