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
