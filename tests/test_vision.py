"""Layers of whitebox.vision and models.ToSTCAB: float64 gradient checks with random upstream
gradients, hand-worked oracles (convolution by loops, Fourier features by their formula,
BatchNorm's running statistics), the public configurations' sizes, buffers and modes."""

import math

import numpy as np
import pytest

from whitebox import interop, models, vision
from whitebox.gradcheck import check_directional, numerical_grad, rel_error

F64 = np.float64
GRAD_TOL = 1e-6
H_FD = 1e-5


def grad_err(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return rel_error(a, b, floor=1e-3 * max(1e-8, float((np.abs(a) + np.abs(b)).max())))


def randomize(module, rng, scale=0.3):
    for p in module.parameters().values():
        p += scale * rng.standard_normal(p.shape)


def check_module(module, x, rng, elementwise=True):
    """Errors of d sum(module(x) * G) / d(x, every parameter), G random."""
    y = module.forward(x)
    G = rng.standard_normal(y.shape)
    G_copy = G.copy()
    dx = module.backward(G)
    np.testing.assert_array_equal(G, G_copy, err_msg="backward modified its upstream gradient")
    grads = {k: v.copy() for k, v in module.gradients().items()}
    f = lambda: float((module.forward(x) * G).sum())
    errs = {}
    for name, arr, g in [("x", x, dx)] + [(k, p, grads[k]) for k, p in module.parameters().items()]:
        if elementwise:
            errs[name] = grad_err(g, numerical_grad(f, arr, H_FD))
        else:
            errs[name] = check_directional(f, arr, g, seed=len(errs), h=H_FD)
    return errs


def assert_small(errs, tol=GRAD_TOL):
    bad = {k: f"{v:.2e}" for k, v in errs.items() if not v < tol}
    assert not bad, f"gradient check failed (rel. error > {tol}) for {bad}"


# --------------------------------------------------------------------------------------------
# Convolution
# --------------------------------------------------------------------------------------------


def conv_by_loops(x, W, stride, pad):
    """The textbook definition, one output entry at a time."""
    B, C, H, Wd = x.shape
    F, _, k, _ = W.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    Ho, Wo = (H + 2 * pad - k) // stride + 1, (Wd + 2 * pad - k) // stride + 1
    y = np.zeros((B, F, Ho, Wo))
    for b in range(B):
        for f in range(F):
            for i in range(Ho):
                for j in range(Wo):
                    patch = xp[b, :, i * stride : i * stride + k, j * stride : j * stride + k]
                    y[b, f, i, j] = (patch * W[f]).sum()
    return y


@pytest.mark.parametrize("k,stride,pad,H,W", [(3, 2, 1, 8, 8), (3, 2, 1, 5, 7), (3, 1, 1, 4, 4),
                                              (1, 1, 0, 3, 2), (2, 2, 0, 4, 6)])  # fmt: skip
def test_conv2d_matches_loops_and_gradients(k, stride, pad, H, W):
    rng = np.random.default_rng(k + 10 * H)
    conv = vision.Conv2d(3, 4, k, stride, pad, dtype=F64, rng=rng)
    x = rng.standard_normal((2, 3, H, W))
    y = conv.forward(x)
    np.testing.assert_allclose(y, conv_by_loops(x, conv.params["weight"], stride, pad),
                               rtol=1e-12, atol=1e-12)  # fmt: skip
    assert_small(check_module(conv, x, rng))


def test_conv_stem_shapes_and_channels():
    stem = vision.ConvStem(3, 64, 4, dtype=F64)
    chans = [layer[0].params["weight"].shape[:2] for layer in stem.proj if hasattr(layer, "_items")]
    assert chans == [(8, 3), (16, 8), (32, 16), (64, 32)]  # 3 -> D/8 -> D/4 -> D/2 -> D
    z, grid = stem.forward(np.zeros((1, 3, 48, 32)))
    assert grid == (3, 2) and z.shape == (1, 6, 64)


def test_conv_stem_gradients_directional():
    rng = np.random.default_rng(0)
    stem = vision.ConvStem(2, 8, 2, dtype=F64, rng=rng)
    randomize(stem, rng)
    x = rng.standard_normal((3, 2, 8, 8))

    class Tokens:  # the stem returns (tokens, grid): check the tokens
        def __init__(self, m):
            self.m = m

        def forward(self, x):
            return self.m.forward(x)[0]

        def backward(self, d):
            return self.m.backward(d)

        def parameters(self):
            return self.m.parameters()

        def gradients(self):
            return self.m.gradients()

    assert_small(check_module(Tokens(stem), x, rng, elementwise=False))


# --------------------------------------------------------------------------------------------
# BatchNorm
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_gradients(training):
    rng = np.random.default_rng(int(training))
    bn = vision.BatchNorm2d(3, dtype=F64)
    randomize(bn, rng)
    bn.buffers["running_mean"][...] = rng.standard_normal(3)
    bn.buffers["running_var"][...] = rng.uniform(0.5, 2.0, 3)
    bn.training = training
    assert_small(check_module(bn, rng.standard_normal((2, 3, 3, 2)) * 2 + 1, rng))


def test_batchnorm_statistics_and_running_buffers():
    rng = np.random.default_rng(3)
    bn = vision.BatchNorm2d(2, dtype=F64, momentum=0.25)
    x = rng.standard_normal((4, 2, 3, 3)) * np.array([2.0, 0.5])[None, :, None, None] + 3.0
    y = bn.forward(x)
    m = 4 * 3 * 3
    for c in range(2):
        v = x[:, c].ravel()
        mu, var = v.sum() / m, ((v - v.sum() / m) ** 2).sum() / m
        np.testing.assert_allclose(y[:, c], (x[:, c] - mu) / math.sqrt(var + 1e-5), atol=1e-12)
        np.testing.assert_allclose(bn.buffers["running_mean"][c], 0.25 * mu, rtol=1e-12)
        np.testing.assert_allclose(
            bn.buffers["running_var"][c], 0.75 + 0.25 * var * m / (m - 1), rtol=1e-12
        )
    assert int(bn.buffers["num_batches_tracked"]) == 1
    bn.training = False  # eval: the buffers, and nothing changes
    before = {k: v.copy() for k, v in bn.buffers.items()}
    y = bn.forward(x)
    rm, rv = before["running_mean"], before["running_var"]
    np.testing.assert_allclose(
        y, (x - rm[None, :, None, None]) / np.sqrt(rv + 1e-5)[None, :, None, None]
    )
    for k in before:
        np.testing.assert_array_equal(bn.buffers[k], before[k])


# --------------------------------------------------------------------------------------------
# Fourier positional encoding
# --------------------------------------------------------------------------------------------


def test_fourier_features_by_formula():
    Hp, Wp = 3, 5
    f = vision.fourier_features(Hp, Wp)
    assert f.shape == (Hp * Wp, 64)
    for i in range(Hp):
        for j in range(Wp):
            t = i * Wp + j  # row-major token index
            for k in range(32):
                fk = 10000.0 ** (2 * (k // 2) / 32)
                yy = (i + 1) / (Hp + 1e-6) * 2 * math.pi / fk
                xx = (j + 1) / (Wp + 1e-6) * 2 * math.pi / fk
                trig = math.sin if k % 2 == 0 else math.cos
                assert f[t, k] == pytest.approx(trig(yy), abs=1e-15)
                assert f[t, 32 + k] == pytest.approx(trig(xx), abs=1e-15)


def test_fourier_encoding_any_size_and_gradient():
    rng = np.random.default_rng(0)
    pe = vision.FourierPositionalEncoding(6, dtype=F64, rng=rng)
    for Hp, Wp in [(1, 1), (2, 7), (14, 14)]:
        assert pe.forward(Hp, Wp).shape == (Hp * Wp, 6)
    G = rng.standard_normal((4, 6))
    pe.forward(2, 2)
    pe.backward(G)
    feats = vision.fourier_features(2, 2)
    np.testing.assert_allclose(pe.gradients()["token_projection.weight"], feats.T @ G)
    np.testing.assert_allclose(pe.gradients()["token_projection.bias"], G.sum(0))


# --------------------------------------------------------------------------------------------
# Class attention
# --------------------------------------------------------------------------------------------


def reference_class_attention(u, P, H):
    """One batch element, one head at a time, with explicit loops over the tokens."""
    B, N, D = u.shape
    p = D // H
    out = u.copy()
    for b in range(B):
        qkv = u[b] @ P["qkv.weight"] + P["qkv.bias"]  # (N, 3D)
        heads = []
        for h in range(H):
            q0 = qkv[0, h * p : (h + 1) * p]
            k = qkv[:, D + h * p : D + (h + 1) * p]
            v = qkv[:, 2 * D + h * p : 2 * D + (h + 1) * p]
            s = np.array([q0 @ k[j] for j in range(N)]) / math.sqrt(p)
            a = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
            heads.append(a @ v)
        out[b, 0] = np.concatenate(heads) @ P["proj.weight"] + P["proj.bias"]
    return out


@pytest.mark.parametrize("num_heads", [1, 2])
def test_class_attention_reference_and_gradients(num_heads):
    rng = np.random.default_rng(num_heads)
    ca = vision.ClassAttention(4, num_heads, dtype=F64, rng=rng)
    randomize(ca, rng, 0.5)
    u = rng.standard_normal((2, 5, 4))
    np.testing.assert_allclose(ca.forward(u), reference_class_attention(u, ca.params, num_heads),
                               rtol=1e-12, atol=1e-12)  # fmt: skip
    assert_small(check_module(ca, u, rng))


def test_class_attention_block_gradients_and_patch_tokens():
    rng = np.random.default_rng(5)
    blk = vision.ClassAttentionBlock(4, 2, mlp_ratio=2, dtype=F64, rng=rng)
    randomize(blk, rng)
    x = rng.standard_normal((2, 4, 4))
    assert_small(check_module(blk, x, rng))
    # the patch tokens leave as 2 LN_2(x + gamma1 LN_1(x)) (the public tokens_norm=True path)
    from whitebox.nn import layernorm_forward

    y = blk.forward(x)
    u = layernorm_forward(x, blk.norm1.params, 1e-6)[0]
    v = layernorm_forward(x + blk.params["gamma1"] * u, blk.norm2.params, 1e-6)[0]
    np.testing.assert_allclose(y[:, 1:], 2 * v[:, 1:], rtol=1e-12)


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


def test_tost_cab_tiny_sizes_and_names():
    m = models.tost_cab("tost_cab_tiny_12_p16")
    state = m.state_dict()
    assert m.num_parameters() == 5_769_328
    assert sum(v.size for v in m.buffers().values()) == 724
    assert len(interop.official_state(m)) == 239 and len(state) == 239
    assert m.blocks[0].ln_1.eps == 1e-6 and m.norm.eps == 1e-6
    assert float(m.blocks[0].params["gamma1"][0]) == 1.0
    deep = models.tost_cab("tost_cab_small_24_p8", num_classes=10)
    assert deep.blocks[0].params["gamma1"][0] == np.float32(1e-5)
    assert len(deep.blocks) == 24 and deep.dim == 384 and deep.blocks[0].attn.num_heads == 8
    convs = [lay for lay in deep.patch_embed.proj if hasattr(lay, "_items")]
    assert len(convs) == 3  # p8: three stages
    with pytest.raises(ValueError, match="name"):
        models.tost_cab("tost_cab_medium_12_p16")  # not a public configuration


def small_cab(**kw):
    cfg = dict(image_size=8, patch_size=4, in_chans=2, num_classes=3, dim=8, depth=2,
               num_heads=2, mlp_ratio=2, dtype="float64", seed=1)  # fmt: skip
    cfg.update(kw)
    return models.ToSTCAB(**cfg)


@pytest.mark.parametrize("training", [True, False])
def test_tost_cab_gradients_directional(training):
    rng = np.random.default_rng(2)
    m = small_cab()
    randomize(m, rng)
    for b in m.buffers().values():
        if b.dtype.kind == "f":
            b += 0.2 * np.abs(rng.standard_normal(b.shape))
    m.train(training)
    assert_small(check_module(m, rng.standard_normal((3, 2, 8, 8)), rng, elementwise=False))


def test_tost_cab_modes_buffers_and_state_roundtrip():
    rng = np.random.default_rng(0)
    m = small_cab()
    x = rng.standard_normal((4, 2, 8, 8))
    m.eval()
    y0 = m.forward(x)
    assert all(int(v) == 0 for k, v in m.buffers().items() if k.endswith("tracked"))
    m.train()
    m.forward(x)
    assert all(int(v) == 1 for k, v in m.buffers().items() if k.endswith("tracked"))
    m.eval()
    y1 = m.forward(x)
    assert not np.allclose(y0, y1)  # the running statistics moved and eval uses them
    m2 = models.build(m.config).load_state_dict(m.state_dict()).eval()
    np.testing.assert_array_equal(m2.forward(x), y1)
    # any image size the stem accepts; the class token comes after the TSSA blocks
    _, inter = m.forward(rng.standard_normal((1, 2, 16, 12)), return_intermediates=True)
    assert inter["tokens"][-1].shape == (1, 12, 8) and inter["pi"][0].shape == (1, 2, 12)
    assert inter["cls_attn"][0].shape == (1, 2, 13)
    bad = m.state_dict()
    del bad["patch_embed.proj.0.1.running_var"]
    with pytest.raises(ValueError, match="running_var"):
        m.load_state_dict(bad)


def test_tost_cab_bad_inputs():
    m = small_cab()
    with pytest.raises(ValueError, match="x: expected shape"):
        m.forward(np.zeros((1, 3, 8, 8)))
    with pytest.raises(ValueError, match="patch_size"):
        small_cab(patch_size=3)
    with pytest.raises(ValueError, match="x: contains NaN"):
        m.forward(np.full((1, 2, 8, 8), np.nan))


# --------------------------------------------------------------------------------------------
# Public-code options in whitebox.nn / models: biases off, ignore_index, greedy decoding
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: __import__("whitebox").nn.Linear(5, 4, dtype=F64, bias=False),
        lambda: __import__("whitebox").nn.LayerNorm(5, dtype=F64, bias=False),
        lambda: __import__("whitebox").nn.Block(4, 2, "tssa", True, 5, dtype=F64, bias=False),
        lambda: __import__("whitebox").nn.TSSA(4, 2, dtype=F64, qkv_bias=False),
    ],
)
def test_layers_without_bias_gradients(make):
    rng = np.random.default_rng(0)
    layer = make()
    assert not any(k.endswith("qkv.bias") for k in layer.parameters())
    randomize(layer, rng)
    dim = next(iter(layer.parameters().values())).shape[0]
    assert_small(check_module(layer, rng.standard_normal((2, 3, dim)), rng))


def test_language_model_without_bias_loads_bias_free_state():
    lm = models.ToSTLanguageModel(9, 5, 2, 2, 8, dtype="float64", bias=False)
    names = interop.official_state(lm)
    assert not any(k.endswith("bias") and not k.endswith("denom_bias") for k in names)
    assert len(names) == 2 + 2 * 10 + 1  # wte, wpe; per block 10 weights; ln_f.weight
    other = models.build(lm.config)
    interop.load_official(other, names)
    with pytest.raises(ValueError, match="unknown key"):
        interop.load_official(other, {**names, "transformer.ln_f.bias": np.zeros(8)})


def test_cross_entropy_ignore_index():
    from whitebox import nn

    rng = np.random.default_rng(0)
    z = rng.standard_normal((2, 3, 5))
    t = np.array([[1, -1, 4], [-1, 0, 2]])
    loss, dz = nn.cross_entropy(z, t, ignore_index=-1)
    keep = t != -1
    ref, dref = nn.cross_entropy(z[keep], t[keep])
    assert loss == ref
    np.testing.assert_array_equal(dz[keep], dref)
    assert not dz[~keep].any()
    assert nn.cross_entropy(z, np.full((2, 3), -1), ignore_index=-1)[0] == 0.0


def test_greedy_generation_is_argmax():
    lm = models.ToSTLanguageModel(7, 6, 1, 2, 8, seed=3)
    prompt = np.array([[1, 2], [3, 4]])
    out = lm.generate(prompt, 4, temperature=0)
    idx = prompt.copy()
    for _ in range(4):  # the argmax by hand
        nxt = lm.forward(idx[:, -6:])[:, -1].argmax(-1)
        idx = np.concatenate([idx, nxt[:, None]], axis=1)
    np.testing.assert_array_equal(out, idx)
    with pytest.raises(ValueError, match="temperature"):
        lm.generate(prompt, 1, temperature=-1.0)


def test_tost_cab_weight_decay_groups():
    """whitebox never decays temp (the public vision optimizer does: timm's factory reads only
    the model's own no_weight_decay() and temp is 2-D); matrices and convolutions are decayed."""
    m = small_cab()
    decayed = {k for k in m.parameters() if not m.no_weight_decay(k)}
    assert "blocks.0.attn.temp" not in decayed and "cls_token" not in decayed
    assert "patch_embed.proj.0.0.weight" in decayed and "head.weight" in decayed
    assert "pos_embeder.token_projection.weight" in decayed
    assert "cls_attn_blocks.1.attn.qkv.weight" in decayed
    assert not any(k.endswith(("bias", "gamma1", "gamma2")) for k in decayed)
    assert not any(".1.weight" in k and "patch_embed" in k for k in decayed)  # BatchNorm


# --------------------------------------------------------------------------------------------
# Dropout, DropPath, attention dropout on TSSA's factor 1 / (1 + s)
# --------------------------------------------------------------------------------------------


def test_tssa_attention_dropout_gradients_with_a_fixed_mask():
    from whitebox import nn

    rng = np.random.default_rng(0)
    layer = nn.TSSA(6, 2, dtype=F64, rng=rng)
    randomize(layer, rng)
    mask = nn.dropout_mask(rng, (2, 2, 3), 0.4)
    assert (mask == 0).any() and (mask > 1).any()
    x = rng.standard_normal((2, 4, 6))
    out, cache = nn.tssa_forward(x, layer.params, mask)
    G = rng.standard_normal(out.shape)
    dx, grads = nn.tssa_backward(G, cache)
    f = lambda: float((nn.tssa_forward(x, layer.params, mask)[0] * G).sum())
    errs = {"x": grad_err(dx, numerical_grad(f, x, H_FD))}
    errs.update(
        {k: grad_err(grads[k], numerical_grad(f, p, H_FD)) for k, p in layer.params.items()}
    )
    assert_small(errs)
    # the mask scales exactly the factor c: with an all-ones mask nothing changes
    np.testing.assert_array_equal(nn.tssa_forward(x, layer.params, np.ones((2, 2, 3)))[0],
                                  nn.tssa_forward(x, layer.params)[0])  # fmt: skip


def test_dropout_and_droppath_modules():
    from whitebox import nn

    x = np.random.default_rng(0).standard_normal((400, 3, 5))
    d = nn.Dropout(0.25, seed=1)
    y = d.forward(x)
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.02
    np.testing.assert_allclose(y[kept], x[kept] / 0.75)
    G = np.random.default_rng(1).standard_normal(x.shape)
    np.testing.assert_allclose(d.backward(G), G * kept / 0.75, rtol=1e-15)
    np.testing.assert_array_equal(nn.Dropout(0.25, seed=1).forward(x), y)  # seeded
    d.training = False
    assert d.forward(x) is x and d.backward(G) is G
    dp = nn.Dropout(0.5, seed=2, per_sample=True)
    z = dp.forward(x)
    per_sample = (z != 0).reshape(400, -1)
    assert (per_sample.all(axis=1) | ~per_sample.any(axis=1)).all()  # whole samples dropped
    assert 0.4 < per_sample.all(axis=1).mean() < 0.6
    with pytest.raises(ValueError, match="p: expected"):
        nn.Dropout(1.0)
    layer = nn.TSSA(4, 2).set_attn_drop(0.5, seed=3)
    a = layer.forward(x[:2, :, :4].astype(np.float32))
    layer.training = False
    b = layer.forward(x[:2, :, :4].astype(np.float32))
    np.testing.assert_array_equal(
        b, nn.tssa_forward(x[:2, :, :4].astype(np.float32), layer.params)[0]
    )
    assert not np.allclose(a, b)
