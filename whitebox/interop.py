"""Weights in the public ToST code's names and layouts (PyTorch), without importing PyTorch.

The public code stores ``nn.Linear.weight`` as (out, in); ``whitebox`` stores (in, out), so
Linear weights are transposed on the way in and out. Names:

* ``nn.TSSA``: ``qkv.weight``, ``qkv.bias``, ``temp`` (H, 1), ``to_out.0.weight``,
  ``to_out.0.bias`` (``AttentionTSSA``);
* ``nn.CausalTSSA``: ``c_attn.weight``, ``c_attn.bias``, ``c_proj.weight``, ``c_proj.bias``,
  ``temp`` (H, 1), ``denom_bias`` (H, block_size, 1) (nanoGPT ``CausalSelfAttention``);
  ``nn.SoftmaxAttention`` uses the same ``c_attn`` / ``c_proj`` names (nanoGPT's GPT);
* ``models.ToSTLanguageModel``: ``transformer.wte.weight``, ``transformer.wpe.weight``,
  ``transformer.h.{i}.ln_1.{weight,bias}``, ``transformer.h.{i}.attn.<attention names>``,
  ``transformer.h.{i}.ln_2.{weight,bias}``, ``transformer.h.{i}.mlp.c_fc.{weight,bias}``,
  ``transformer.h.{i}.mlp.c_proj.{weight,bias}``, ``transformer.h.{i}.gamma1``,
  ``transformer.h.{i}.gamma2``, ``transformer.ln_f.{weight,bias}``. The head is tied to
  ``wte``; a checkpoint may also carry ``lm_head.weight``, which must then equal ``wte``.
* ``models.ToSTCAB`` (``VisionTransformer`` of ``tost_vision/tost.py``):
  ``patch_embed.proj.{2s}.0.weight`` (C_out, C_in, 3, 3) as is,
  ``patch_embed.proj.{2s}.1.{weight,bias,running_mean,running_var,num_batches_tracked}``
  (BatchNorm, buffers included), ``pos_embeder.token_projection.weight`` (D, 64, 1, 1) <->
  whitebox (64, D), ``pos_embeder.token_projection.bias``, ``cls_token``,
  ``blocks.{i}.norm1`` <-> ``blocks.{i}.ln_1``, ``blocks.{i}.attn.{qkv.*,temp}``,
  ``blocks.{i}.attn.to_out.0.*`` <-> ``blocks.{i}.attn.proj.*``, ``blocks.{i}.norm2`` <->
  ``ln_2``, ``blocks.{i}.mlp.fc1`` / ``fc2`` <-> ``mlp.c_fc`` / ``mlp.c_proj``,
  ``blocks.{i}.gamma{1,2}``, ``cls_attn_blocks.{c}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,
  mlp.fc2,gamma1,gamma2}`` (the same names in whitebox, fc1/fc2 as c_fc/c_proj),
  ``norm.*``, ``head.*``. A ``state_dict`` of the public model loads with every name.

A layout is one of: as is, transposed (a Linear weight), or ``"conv1x1"`` (a 1 x 1
convolution's (out, in, 1, 1) weight <-> a whitebox Linear's (in, out)).

Arrays may be NumPy arrays, anything ``np.asarray`` accepts, or PyTorch tensors (read through
``.detach().cpu().numpy()`` without importing torch).
"""

from __future__ import annotations

import numpy as np

from .backend import get_array_module, to_numpy
from .models import ToSTCAB, ToSTLanguageModel
from .nn import TSSA, CausalTSSA, SoftmaxAttention

TIED_HEAD = "lm_head.weight"


def _entries(module):
    """List of (official name, whitebox dotted name, transpose?) for ``module``."""
    if isinstance(module, TSSA):
        return [
            ("qkv.weight", "qkv.weight", True),
            ("qkv.bias", "qkv.bias", False),
            ("temp", "temp", False),
            ("to_out.0.weight", "proj.weight", True),
            ("to_out.0.bias", "proj.bias", False),
        ]
    if isinstance(module, CausalTSSA | SoftmaxAttention):
        out = [("c_attn.weight", "qkv.weight", True), ("c_attn.bias", "qkv.bias", False)]
        if isinstance(module, CausalTSSA):
            out += [("temp", "temp", False), ("denom_bias", "denom_bias", False)]
        return out + [("c_proj.weight", "proj.weight", True), ("c_proj.bias", "proj.bias", False)]
    if isinstance(module, ToSTLanguageModel):
        out = [
            ("transformer.wte.weight", "wte.weight", False),
            ("transformer.wpe.weight", "wpe.weight", False),
        ]
        for i, blk in enumerate(module.blocks):
            o, w = f"transformer.h.{i}.", f"blocks.{i}."
            out += [(o + f"ln_1.{k}", w + f"ln_1.{k}", False) for k in ("weight", "bias")]
            out += [(o + "attn." + a, w + "attn." + b, t) for a, b, t in _entries(blk.attn)]
            out += [(o + f"ln_2.{k}", w + f"ln_2.{k}", False) for k in ("weight", "bias")]
            for lin in ("c_fc", "c_proj"):
                out += [
                    (o + f"mlp.{lin}.weight", w + f"mlp.{lin}.weight", True),
                    (o + f"mlp.{lin}.bias", w + f"mlp.{lin}.bias", False),
                ]
            out += [(o + "gamma1", w + "gamma1", False), (o + "gamma2", w + "gamma2", False)]
        out += [(f"transformer.ln_f.{k}", f"ln_f.{k}", False) for k in ("weight", "bias")]
        return out
    if isinstance(module, ToSTCAB):
        return _cab_entries(module)
    raise TypeError(
        f"no official layout for {type(module).__name__} "
        "(supported: TSSA, CausalTSSA, SoftmaxAttention, ToSTLanguageModel, ToSTCAB)"
    )


_LN = ("weight", "bias")
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _lin(off, ours, bias=True):
    return [(off + ".weight", ours + ".weight", True)] + (
        [(off + ".bias", ours + ".bias", False)] if bias else []
    )


def _cab_entries(model):
    out = []
    for i, layer in enumerate(model.patch_embed.proj):
        if len(getattr(layer, "_items", ())) == 2:  # (conv, batchnorm); GELUs have no params
            p = f"patch_embed.proj.{i}."
            out += [(p + "0.weight", p + "0.weight", False)]
            out += [(p + "1." + k, p + "1." + k, False) for k in _BN]
    out += [
        ("pos_embeder.token_projection.weight", "pos_embeder.token_projection.weight", "conv1x1"),
        ("pos_embeder.token_projection.bias", "pos_embeder.token_projection.bias", False),
        ("cls_token", "cls_token", False),
    ]
    for i in range(len(model.blocks)):
        p = f"blocks.{i}."
        out += [(p + "norm1." + k, p + "ln_1." + k, False) for k in _LN]
        out += _lin(p + "attn.qkv", p + "attn.qkv") + [(p + "attn.temp", p + "attn.temp", False)]
        out += _lin(p + "attn.to_out.0", p + "attn.proj")
        out += [(p + "norm2." + k, p + "ln_2." + k, False) for k in _LN]
        out += _lin(p + "mlp.fc1", p + "mlp.c_fc") + _lin(p + "mlp.fc2", p + "mlp.c_proj")
        out += [(p + "gamma1", p + "gamma1", False), (p + "gamma2", p + "gamma2", False)]
    for c, blk in enumerate(model.cls_attn_blocks):
        p = f"cls_attn_blocks.{c}."
        out += [(p + "norm1." + k, p + "norm1." + k, False) for k in _LN]
        out += _lin(p + "attn.qkv", p + "attn.qkv", "qkv.bias" in blk.attn.params)
        out += _lin(p + "attn.proj", p + "attn.proj")
        out += [(p + "norm2." + k, p + "norm2." + k, False) for k in _LN]
        out += _lin(p + "mlp.fc1", p + "mlp.c_fc") + _lin(p + "mlp.fc2", p + "mlp.c_proj")
        out += [(p + "gamma1", p + "gamma1", False), (p + "gamma2", p + "gamma2", False)]
    return out + [(f"norm.{k}", f"norm.{k}", False) for k in _LN] + _lin("head", "head")


def _to_official(a, layout):
    """whitebox layout -> official layout (NumPy)."""
    a = to_numpy(a)
    if layout == "conv1x1":
        return a.T[:, :, None, None]  # (in, out) -> (out, in, 1, 1)
    return a.T if layout else a


def _from_official(a, layout):
    if layout == "conv1x1":
        return a[:, :, 0, 0].T
    return a.T if layout else a


def _official_shape(shape, layout):
    if layout == "conv1x1":
        return (shape[1], shape[0], 1, 1)
    return shape[::-1] if layout else shape


def _arrays(module):
    """Parameters and, for models with running statistics, buffers: name -> live array."""
    out = dict(module.parameters())
    if isinstance(module, ToSTCAB):
        out.update(module.buffers())
    return out


def _export(arrays, module):
    return {
        off: np.array(_to_official(arrays[ours], t))
        for off, ours, t in _entries(module)
        if ours in arrays
    }


def official_state(module):
    """The parameters (and BatchNorm buffers) of ``module`` as official name -> NumPy array
    (PyTorch layouts): what the public model's ``state_dict()`` holds."""
    return _export(_arrays(module), module)


def official_grads(module):
    """The gradients after ``backward``, in the names and layouts of :func:`official_state`
    (parameters only: buffers have no gradient)."""
    return _export(module.gradients(), module)


def _to_numpy(v):
    if hasattr(v, "detach"):  # a torch tensor
        v = v.detach().cpu().numpy()
    return np.asarray(to_numpy(v))


def load_official(module, state):
    """Copy ``state`` (official name -> array, e.g. a PyTorch ``state_dict`` or an ``.npz``)
    into ``module``'s parameters in place.

    Raises ValueError naming the key: unknown names, missing names, and shapes that differ from
    the official shape (which is printed). Returns ``module``."""
    params = _arrays(module)
    entries = [e for e in _entries(module) if e[1] in params]  # biases may be switched off
    expected = {off: _official_shape(params[ours].shape, t) for off, ours, t in entries}
    state = dict(state.items())
    tied = state.pop(TIED_HEAD, None) if isinstance(module, ToSTLanguageModel) else None
    unknown = sorted(k for k in state if k not in expected)
    if unknown:
        raise ValueError(f"load_official: unknown key(s) {unknown} for {type(module).__name__}")
    missing = [k for k in expected if k not in state]
    if missing:
        raise ValueError(
            f"load_official: missing key(s) {missing}; e.g. {missing[0]!r} with shape "
            f"{expected[missing[0]]}"
        )
    arrays = {k: _to_numpy(v) for k, v in state.items()}
    for k, shape in expected.items():
        if arrays[k].shape != shape:
            raise ValueError(f"load_official: {k!r} expected shape {shape}, got {arrays[k].shape}")
    if tied is not None and not np.array_equal(_to_numpy(tied), arrays["transformer.wte.weight"]):
        raise ValueError(
            f"load_official: {TIED_HEAD!r} differs from 'transformer.wte.weight'; whitebox ties "
            "the head to the token embedding"
        )
    for off, ours, t in entries:
        p = params[ours]
        p[...] = get_array_module(p).asarray(_from_official(arrays[off], t), dtype=p.dtype)
    return module
