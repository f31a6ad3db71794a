"""whitebox.interop: the public ToST code's names and layouts, round trips and validation."""

import numpy as np
import pytest

from whitebox import interop, models, nn

F64 = np.float64


def make(kind, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "tssa":
        return nn.TSSA(8, 2, dtype=F64, rng=rng)
    if kind == "causal_tssa":
        return nn.CausalTSSA(8, 2, block_size=5, dtype=F64, rng=rng)
    attention = "softmax" if kind == "gpt" else "tssa"
    return models.ToSTLanguageModel(9, 5, 2, 2, 8, attention=attention, dtype=F64, seed=seed)


def randomize(module, rng):
    for p in module.parameters().values():
        p += 0.3 * rng.standard_normal(p.shape)


def test_tssa_names_and_layouts():
    layer = make("tssa")
    state = interop.official_state(layer)
    assert list(state) == ["qkv.weight", "qkv.bias", "temp", "to_out.0.weight", "to_out.0.bias"]
    np.testing.assert_array_equal(state["qkv.weight"], layer.params["qkv.weight"].T)  # (out, in)
    np.testing.assert_array_equal(state["to_out.0.weight"], layer.params["proj.weight"].T)
    assert state["temp"].shape == (2, 1)


def test_causal_tssa_names_and_layouts():
    state = interop.official_state(make("causal_tssa"))
    assert set(state) == {"c_attn.weight", "c_attn.bias", "c_proj.weight", "c_proj.bias",
                          "temp", "denom_bias"}  # fmt: skip
    assert state["denom_bias"].shape == (2, 5, 1) and state["temp"].shape == (2, 1)


def test_language_model_names():
    names = set(interop.official_state(make("lm")))
    expected = {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight",
                "transformer.ln_f.bias"}  # fmt: skip
    for i in range(2):
        h = f"transformer.h.{i}."
        expected |= {h + k for k in (
            "ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.temp",
            "attn.denom_bias", "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight",
            "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight",
            "mlp.c_proj.bias", "gamma1", "gamma2",
        )}  # fmt: skip
    assert names == expected
    st = interop.official_state(make("lm"))
    assert st["transformer.h.0.mlp.c_fc.weight"].shape == (32, 8)  # (out, in)


@pytest.mark.parametrize("kind", ["tssa", "causal_tssa", "lm", "gpt"])
def test_round_trip_gives_identical_model(kind, tmp_path):
    rng = np.random.default_rng(1)
    src, dst = make(kind, 0), make(kind, 7)
    randomize(src, rng)
    np.savez(tmp_path / "w.npz", **interop.official_state(src))
    with np.load(tmp_path / "w.npz") as f:
        assert interop.load_official(dst, f) is dst
    for k, v in src.parameters().items():
        np.testing.assert_array_equal(dst.parameters()[k], v)
    if kind in ("lm", "gpt"):
        x = rng.integers(0, 9, (2, 5))
    else:
        x = rng.standard_normal((2, 4, 8))
    np.testing.assert_array_equal(dst.forward(x), src.forward(x))
    G = rng.standard_normal(src.forward(x).shape)
    src.backward(G)
    grads = interop.official_grads(src)
    assert list(grads) == list(interop.official_state(src))
    for k, g in grads.items():
        assert g.shape == interop.official_state(src)[k].shape


def test_load_official_validates():
    layer = make("causal_tssa")
    good = interop.official_state(layer)
    bad = dict(good, extra=np.zeros(1))
    with pytest.raises(ValueError, match="unknown key.*'extra'"):
        interop.load_official(layer, bad)
    bad = dict(good)
    del bad["denom_bias"]
    with pytest.raises(ValueError, match=r"missing key.*'denom_bias'.*\(2, 5, 1\)"):
        interop.load_official(layer, bad)
    bad = dict(good, **{"c_attn.weight": good["c_attn.weight"][:, :4]})
    with pytest.raises(ValueError, match=r"'c_attn.weight' expected shape \(8, 8\), got \(8, 4\)"):
        interop.load_official(layer, bad)
    bad = dict(good, temp=np.ones(2))
    with pytest.raises(ValueError, match=r"'temp' expected shape \(2, 1\)"):
        interop.load_official(layer, bad)
    with pytest.raises(TypeError, match="no official layout"):
        interop.official_state(nn.Linear(2, 2))


def test_tied_head_in_checkpoint():
    lm = make("lm")
    state = interop.official_state(lm)
    ok = dict(state, **{"lm_head.weight": state["transformer.wte.weight"]})
    interop.load_official(make("lm", 3), ok)
    untied = dict(state, **{"lm_head.weight": state["transformer.wte.weight"] + 1})
    with pytest.raises(ValueError, match="lm_head.weight"):
        interop.load_official(make("lm", 3), untied)


def test_tost_cab_names_layouts_and_buffers(tmp_path):
    m = models.tost_cab("tost_cab_tiny_12_p16", num_classes=7)
    st = interop.official_state(m)
    assert st["patch_embed.proj.0.0.weight"].shape == (24, 3, 3, 3)
    assert st["patch_embed.proj.6.0.weight"].shape == (192, 96, 3, 3)
    assert "patch_embed.proj.1.0.weight" not in st  # index 1 is a GELU
    for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        assert f"patch_embed.proj.4.1.{k}" in st
    assert st["patch_embed.proj.0.1.num_batches_tracked"].shape == ()
    assert st["pos_embeder.token_projection.weight"].shape == (192, 64, 1, 1)
    np.testing.assert_array_equal(
        st["pos_embeder.token_projection.weight"][:, :, 0, 0],
        m.pos_embeder.token_projection.params["weight"].T,
    )
    assert st["blocks.3.attn.qkv.weight"].shape == (192, 192)
    assert st["blocks.3.attn.to_out.0.weight"].shape == (192, 192)
    assert st["blocks.3.mlp.fc1.weight"].shape == (768, 192) and "blocks.3.norm1.bias" in st
    assert st["cls_attn_blocks.1.attn.qkv.weight"].shape == (576, 192)
    assert st["cls_attn_blocks.1.attn.qkv.bias"].shape == (576,)
    assert st["cls_token"].shape == (1, 1, 192) and st["head.weight"].shape == (7, 192)
    # round trip through an .npz with perturbed weights and buffers
    rng = np.random.default_rng(0)
    for k, v in st.items():
        st[k] = v + (rng.standard_normal(v.shape) if v.dtype.kind == "f" else 5)
        if k.endswith("running_var"):
            st[k] = np.abs(st[k])  # a variance: load_official refuses negative ones
    np.savez(tmp_path / "w.npz", **st)
    other = models.tost_cab("tost_cab_tiny_12_p16", num_classes=7, seed=1)
    with np.load(tmp_path / "w.npz") as f:
        interop.load_official(other, f)
    back = interop.official_state(other)
    for k, v in st.items():
        np.testing.assert_allclose(back[k], v, rtol=1e-6, err_msg=k)
    assert int(other.buffers()["patch_embed.proj.2.1.num_batches_tracked"]) == 5
    del st["patch_embed.proj.2.1.running_mean"]
    with pytest.raises(ValueError, match="running_mean"):
        interop.load_official(other, st)
    st["patch_embed.proj.2.1.running_mean"] = np.zeros(5)
    with pytest.raises(ValueError, match="expected shape"):
        interop.load_official(other, st)


# --------------------------------------------------------------------------------------------
# load_official is all or nothing: every array is checked before the first write
# --------------------------------------------------------------------------------------------


def small_cab(seed=0):
    return models.ToSTCAB(image_size=8, patch_size=4, in_chans=3, num_classes=4, dim=8, depth=1,
                          num_heads=2, seed=seed)  # fmt: skip


def snapshot(module):
    return {k: np.array(v, copy=True) for k, v in interop._arrays(module).items()}


def assert_unchanged(module, before):
    after = interop._arrays(module)
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert after[k].dtype == v.dtype and after[k].tobytes() == v.tobytes(), k  # bitwise


def refused(module, state, *fragments):
    """load_official raises a ValueError naming ``fragments`` and leaves ``module`` as it was."""
    before = snapshot(module)
    with pytest.raises(ValueError) as info:
        interop.load_official(module, state)
    assert_unchanged(module, before)
    for f in fragments:
        assert f in str(info.value), (f, str(info.value))


def test_complex_weights_are_refused():
    layer = make("tssa")
    st = interop.official_state(make("tssa", 3))
    refused(layer, dict(st, temp=st["temp"] + 1j), "'temp'", "complex")


def test_values_beyond_float32_are_refused():
    layer = nn.TSSA(8, 2, dtype=np.float32, rng=np.random.default_rng(0))
    st = interop.official_state(nn.TSSA(8, 2, dtype=F64, rng=np.random.default_rng(1)))
    big = st["qkv.bias"].copy()
    big[3] = 1e39  # finite in float64, inf in float32
    refused(layer, dict(st, **{"qkv.bias": big}), "'qkv.bias'", "float32", "1e+39")
    interop.load_official(layer, dict(st, **{"qkv.bias": big / 1e30}))  # in range: loads
    assert layer.params["qkv.bias"].dtype == np.float32
    np.testing.assert_array_equal(layer.params["qkv.bias"], (big / 1e30).astype(np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused(bad):
    layer = make("causal_tssa")
    st = interop.official_state(make("causal_tssa", 2))
    w = st["c_proj.weight"].copy()
    w[1, 2] = bad
    refused(layer, dict(st, **{"c_proj.weight": w}), "'c_proj.weight'", "finite")


@pytest.mark.parametrize(
    "value, fragment",
    [(np.array(-3), "-3"), (np.array(-3.7), "float64"), (np.array(2.0), "float64"),
     (np.array(True), "bool"), (np.array(2**64 - 1, dtype=np.uint64), "up to")],
)  # fmt: skip
def test_num_batches_tracked_must_be_a_non_negative_integer(value, fragment):
    cab = small_cab()
    st = interop.official_state(small_cab(1))
    name = "patch_embed.proj.0.1.num_batches_tracked"
    refused(cab, dict(st, **{name: value}), repr(name), "non-negative integer", fragment)
    interop.load_official(cab, dict(st, **{name: np.array(12, dtype=np.int32)}))
    assert int(cab.buffers()[name]) == 12


def test_negative_running_variance_is_refused():
    cab = small_cab()
    st = interop.official_state(small_cab(1))
    name = "patch_embed.proj.0.1.running_var"
    refused(cab, dict(st, **{name: -np.abs(st[name]) - 1}), repr(name), "variances >= 0")


def test_non_numeric_values_are_refused():
    layer = make("tssa")
    st = interop.official_state(make("tssa", 3))
    refused(layer, dict(st, temp=np.array([["a"], ["b"]])), "'temp'", "real numbers")
    refused(layer, dict(st, temp=np.ones((2, 1), bool)), "'temp'", "bool")
    refused(layer, dict(st, temp=[[1.0], [2.0, 3.0]]), "'temp'", "not an array of numbers")
    interop.load_official(layer, dict(st, temp=[[1], [2]]))  # integers into a float parameter
    np.testing.assert_array_equal(layer.params["temp"], [[1.0], [2.0]])


@pytest.mark.parametrize("what", ["nan", "text"])
@pytest.mark.parametrize("kind", ["lm", "cab"])
def test_a_late_bad_array_leaves_the_model_unchanged(kind, what):
    """A bad array at the end of the dict used to raise after every earlier parameter had been
    overwritten (a half-loaded model); text values raised only when their turn came."""
    model = make("lm") if kind == "lm" else small_cab()
    other = make("lm", 5) if kind == "lm" else small_cab(5)
    randomize(other, np.random.default_rng(2))
    st = interop.official_state(other)
    last = list(st)[-1]  # 'transformer.ln_f.bias' / 'head.bias': written last
    assert last in ("transformer.ln_f.bias", "head.bias")
    if what == "nan":
        bad, fragment = st[last].copy(), "finite"
        bad[0] = np.nan
    else:
        bad, fragment = np.full(st[last].shape, "x"), "real numbers"
    refused(model, dict(st, **{last: bad}), repr(last), fragment)
    # the test can fail: the good state does change the first parameters
    first = list(st)[0]
    assert not np.array_equal(interop.official_state(model)[first], st[first])
    interop.load_official(model, st)
    np.testing.assert_array_equal(interop.official_state(model)[first], st[first])


@pytest.mark.torch
def test_bfloat16_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    layer = nn.TSSA(8, 2, dtype=np.float32, rng=np.random.default_rng(0))
    st = interop.official_state(nn.TSSA(8, 2, dtype=F64, rng=np.random.default_rng(1)))
    st_bf16 = {k: torch.tensor(v).to(torch.bfloat16) for k, v in st.items()}
    st_bf16["temp"] = st_bf16["temp"].requires_grad_()  # a Parameter-like tensor
    assert interop.load_official(layer, st_bf16) is layer
    back = interop.official_state(layer)
    for k, v in st_bf16.items():
        np.testing.assert_array_equal(back[k], v.detach().float().numpy(), err_msg=k)
    bad = dict(st_bf16, temp=torch.full((2, 1), float("nan"), dtype=torch.bfloat16))
    refused(layer, bad, "'temp'", "finite")
    sparse = dict(st_bf16, temp=torch.ones(2, 1).to_sparse())
    refused(layer, sparse, "'temp'", "not an array of numbers")
