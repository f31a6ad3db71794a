"""Whole models: gradient checks of every parameter, causality of the LM, generation, configs."""

import json

import numpy as np
import pytest

from whitebox import models, nn
from whitebox.backend import to_numpy
from whitebox.gradcheck import check_directional, numerical_grad, rel_error

GRAD_TOL = 1e-6
H_FD = 1e-5
F64 = np.float64


def randomize(module, rng, scale=0.3):
    for p in module.parameters().values():
        p += scale * rng.standard_normal(p.shape)


def directional_errors(model, inp, rng, with_input):
    """Directional derivative of sum(model(inp) * G), G random, for every parameter (and x)."""
    y = model.forward(inp)
    G = rng.standard_normal(y.shape)
    dx = model.backward(G)
    grads = {k: v.copy() for k, v in model.gradients().items()}
    f = lambda: float((model.forward(inp) * G).sum())
    errs = {k: check_directional(f, p, grads[k], seed=i, h=H_FD) for i, (k, p) in
            enumerate(model.parameters().items())}  # fmt: skip
    if with_input:
        errs["x"] = check_directional(f, inp, dx, seed=99, h=H_FD)
    return errs


def assert_small(errs, tol=GRAD_TOL):
    bad = {k: f"{v:.2e}" for k, v in errs.items() if not v < tol}
    assert not bad, f"gradient check failed (rel. error > {tol}) for {bad}"


def tiny_classifier(dtype=F64, **kw):
    cfg = dict(image_size=4, patch_size=2, in_chans=1, num_classes=3, dim=8, depth=2,
               num_heads=2, dtype=dtype)  # fmt: skip
    cfg.update(kw)
    return models.ToSTClassifier(**cfg)


def tiny_lm(dtype=F64, **kw):
    cfg = dict(vocab_size=7, block_size=6, n_layer=2, n_head=2, n_embd=8, dtype=dtype)
    cfg.update(kw)
    return models.ToSTLanguageModel(**cfg)


@pytest.mark.parametrize("attention", ["tssa", "softmax"])
@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_classifier_gradients(attention, pool):
    rng = np.random.default_rng(0)
    model = tiny_classifier(attention=attention, pool=pool, in_chans=2)
    randomize(model, rng)
    x = rng.standard_normal((2, 2, 4, 4))
    assert_small(directional_errors(model, x, rng, with_input=True))


@pytest.mark.parametrize("attention", ["tssa", "softmax"])
def test_token_classifier_gradients_and_equivariance(attention):
    rng = np.random.default_rng(8)
    model = models.ToSTTokenClassifier(5, 3, dim=8, depth=2, num_heads=2, attention=attention,
                                       dtype=F64)  # fmt: skip
    randomize(model, rng)
    x = rng.standard_normal((2, 6, 5))
    assert_small(directional_errors(model, x, rng, with_input=True))
    perm = rng.permutation(6)  # no positions: permuting tokens permutes the logits
    np.testing.assert_allclose(model.forward(x[:, perm]), model.forward(x)[:, perm], rtol=1e-10)


def test_classifier_gradient_elementwise_on_input():
    """(B, S, S) input: the image gradient entry by entry."""
    rng = np.random.default_rng(1)
    model = tiny_classifier()
    randomize(model, rng)
    x = rng.standard_normal((2, 4, 4))
    y = model.forward(x)
    G = rng.standard_normal(y.shape)
    dx = model.backward(G)
    assert dx.shape == x.shape
    num = numerical_grad(lambda: float((model.forward(x) * G).sum()), x, H_FD)
    assert rel_error(dx, num, floor=1e-3 * np.abs(num).max()) < GRAD_TOL


@pytest.mark.parametrize("attention", ["tssa", "softmax"])
@pytest.mark.parametrize("T", [3, 6])
def test_language_model_gradients(attention, T):
    """Every parameter, including the tied embedding (lookup + head) and denom_bias."""
    rng = np.random.default_rng(T)
    model = tiny_lm(attention=attention)
    randomize(model, rng)
    idx = rng.integers(0, 7, size=(2, T))
    errs = directional_errors(model, idx, rng, with_input=False)
    assert "wte.weight" in errs and len(errs) == len(model.parameters())
    assert_small(errs)


def test_language_model_tied_head_gets_both_contributions():
    rng = np.random.default_rng(2)
    model = tiny_lm()
    randomize(model, rng)
    idx = np.array([[0, 1, 1]])
    G = rng.standard_normal((1, 3, 7))
    model.forward(idx)
    model.backward(G)
    W = model.wte.params["weight"]
    f = lambda: float((model.forward(idx) * G).sum())
    num = numerical_grad(f, W, H_FD)
    g = model.gradients()["wte.weight"]
    assert rel_error(g, num, floor=1e-3 * np.abs(num).max()) < GRAD_TOL
    # rows of tokens never fed in still get the head's gradient
    assert np.abs(g[5]).max() > 0


@pytest.mark.parametrize("attention", ["tssa", "softmax"])
def test_language_model_is_causal(attention):
    rng = np.random.default_rng(3)
    model = tiny_lm(attention=attention)
    randomize(model, rng)
    idx = rng.integers(0, 7, size=(2, 6))
    logits = model.forward(idx).copy()
    for t in (0, 2, 4):
        idx2 = idx.copy()
        idx2[:, t + 1 :] = (idx2[:, t + 1 :] + 3) % 7
        out = model.forward(idx2)
        np.testing.assert_allclose(out[:, : t + 1], logits[:, : t + 1], rtol=1e-12, atol=1e-14)
        assert not np.allclose(out[:, t + 1 :], logits[:, t + 1 :])


@pytest.mark.parametrize(
    "make, inp",
    [
        (lambda dt: tiny_classifier(dt, dim=16, num_heads=4), "image"),
        (lambda dt: tiny_lm(dt, n_embd=16, n_head=4), "ids"),
    ],
)
def test_models_float32_agrees_with_float64(make, inp):
    rng = np.random.default_rng(4)
    m64, m32 = make(F64), make(np.float32)
    randomize(m64, rng, 0.1)
    m32.load_state_dict(m64.state_dict())
    x = rng.standard_normal((2, 4, 4)) if inp == "image" else rng.integers(0, 7, (2, 6))
    y64, y32 = m64.forward(x), m32.forward(x.astype(np.float32) if inp == "image" else x)
    G = rng.standard_normal(y64.shape)
    m64.backward(G)
    m32.backward(G.astype(np.float32))
    rel = lambda a, b: np.linalg.norm(a.astype(F64) - b) / np.linalg.norm(b)
    assert y32.dtype == np.float32 and rel(y32, y64) < 1e-5
    g64 = m64.gradients()
    for k, g in m32.gradients().items():
        assert g.dtype == np.float32 and rel(g, g64[k]) < 1e-5, k


def test_classifier_intermediates():
    model = tiny_classifier(np.float32, depth=3)
    x = np.random.default_rng(5).standard_normal((2, 1, 4, 4))
    logits, inter = model.forward(x, return_intermediates=True)
    assert logits.shape == (2, 3)
    assert len(inter["tokens"]) == 4 and all(z.shape == (2, 4, 8) for z in inter["tokens"])
    assert len(inter["pi"]) == 3 and all(p.shape == (2, 2, 4) for p in inter["pi"])
    np.testing.assert_allclose(inter["pi"][0].sum(axis=1), 1.0, rtol=1e-6)
    soft = tiny_classifier(np.float32, attention="softmax", pool="cls")
    _, inter = soft.forward(x, return_intermediates=True)
    assert inter["pi"] == [None, None] and inter["attn"][0].shape == (2, 2, 5, 5)


def test_classifier_names_and_decay():
    model = tiny_classifier(pool="cls")
    names = list(model.parameters())
    assert names[:2] == ["pos_embed", "cls_token"]
    assert "blocks.1.attn.qkv.weight" in names and names[-1] == "head.bias"
    assert model.no_weight_decay("pos_embed") and model.no_weight_decay("blocks.0.attn.temp")
    assert model.no_weight_decay("norm.weight") and model.no_weight_decay("blocks.0.gamma1")
    assert not model.no_weight_decay("patch_embed.weight")
    assert not model.no_weight_decay("blocks.0.mlp.c_fc.weight")


def test_language_model_names():
    names = list(tiny_lm(n_layer=1).parameters())
    assert names[:2] == ["wte.weight", "wpe.weight"]
    assert "blocks.0.attn.denom_bias" in names and names[-1] == "ln_f.bias"
    assert not any("head" in k for k in names)  # tied to wte


def tiny_token_classifier(dtype=F64, **kw):
    return models.ToSTTokenClassifier(4, 3, dim=8, depth=1, num_heads=2, dtype=dtype, **kw)


@pytest.mark.parametrize("make", [tiny_classifier, tiny_lm, tiny_token_classifier])
def test_build_from_json_config(make):
    model = make(np.float32, seed=3)
    config = json.loads(json.dumps(model.config))
    assert (
        config["model"] in ("classifier", "language_model", "token_classifier")
        and config["dtype"] == "float32"
    )
    rebuilt = models.build(config)
    assert type(rebuilt) is type(model)
    for k, v in model.parameters().items():
        np.testing.assert_array_equal(rebuilt.parameters()[k], v)
    with pytest.raises(ValueError, match="model"):
        models.build({"model": "rnn"})


def test_generate_is_deterministic_and_crops_context():
    model = tiny_lm(np.float32)
    randomize(model, np.random.default_rng(6), 1.0)
    prompt = np.array([[1, 2, 3, 4, 5, 6, 0, 1]])  # longer than block_size = 6: cropped
    a = model.generate(prompt, 5, temperature=0.8, top_k=3, seed=1)
    b = model.generate(prompt, 5, temperature=0.8, top_k=3, rng=np.random.default_rng(1))
    assert a.shape == (1, 13) and (a[:, :8] == prompt).all() and (a == b).all()
    assert a.min() >= 0 and a.max() < 7
    greedy = model.generate(prompt, 1, top_k=1, seed=0)
    expected = model.forward(prompt[:, -6:])[0, -1].argmax()
    assert greedy[0, -1] == expected


def test_language_model_on_the_array_backend(xp):
    """Embeddings (scatter-add), tied head, loss and sampling on NumPy or CuPy."""
    device = "cpu" if xp is np else "gpu"
    ref, dev = tiny_lm(), tiny_lm()
    randomize(ref, np.random.default_rng(0))
    dev.load_state_dict(ref.state_dict())
    dev.to(device)
    idx = np.array([[1, 2, 2, 6], [0, 5, 3, 3]])
    targets = np.array([[2, 2, 6, 0], [5, 3, 3, 1]])
    loss_ref, d_ref = nn.cross_entropy(ref.forward(idx), targets)
    ref.backward(d_ref)
    loss, d = nn.cross_entropy(dev.forward(xp.asarray(idx)), xp.asarray(targets))
    dev.backward(d)
    assert loss == pytest.approx(loss_ref, rel=1e-12)
    for k, g in ref.gradients().items():
        np.testing.assert_allclose(to_numpy(dev.gradients()[k]), g, rtol=1e-10, atol=1e-12)
    out = dev.generate(idx[:, :2], 3, seed=0)
    np.testing.assert_array_equal(out, ref.generate(idx[:, :2], 3, seed=0))


def test_language_model_learns_a_sequence():
    """A few AdamW steps on one repeated batch lower the loss (training wiring end to end)."""
    model = tiny_lm(np.float32, n_embd=16, n_head=2, block_size=8, vocab_size=7)
    opt = nn.AdamW(model, lr=1e-2, weight_decay=0.0)
    idx = np.array([[0, 1, 2, 3, 4, 5, 6, 0, 1]])
    losses = []
    for _ in range(30):
        logits = model.forward(idx[:, :-1])
        loss, d = nn.cross_entropy(logits, idx[:, 1:])
        model.backward(d)
        nn.clip_grad_norm(model, 1.0)
        opt.step()
        losses.append(loss)
    assert losses[-1] < 0.5 * losses[0]


def test_model_bad_inputs():
    lm = tiny_lm(np.float32)
    with pytest.raises(ValueError, match="idx: sequence length 7 exceeds block_size 6"):
        lm.forward(np.zeros((1, 7), dtype=np.int64))
    with pytest.raises(ValueError, match=r"idx: token ids must lie in \[0, 7\)"):
        lm.forward(np.array([[1, 7]]))
    with pytest.raises(ValueError, match=r"idx: expected shape \(B, T\)"):
        lm.forward(np.array([1, 2]))
    with pytest.raises(ValueError, match="divisible by num_heads"):
        tiny_lm(n_head=3)
    clf = tiny_classifier(np.float32)
    with pytest.raises(ValueError, match=r"x: expected shape \(B, 1, 4, 4\)"):
        clf.forward(np.zeros((2, 1, 5, 5)))
    img = np.zeros((2, 4, 4))
    img[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        clf.forward(img)
    with pytest.raises(ValueError, match="patch_size"):
        tiny_classifier(image_size=5)
