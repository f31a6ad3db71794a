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
``.detach().cpu().numpy()`` without importing torch; bfloat16 and float8 tensors, which NumPy
cannot hold, are read through float32, exactly). :func:`load_official` is all or nothing: every
array is converted and checked before the first parameter is written.
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


def _to_numpy(v, name):
    """``v`` (NumPy, CuPy, PyTorch tensor, nested lists) as a NumPy array; ValueError naming
    ``name`` when it is none of these."""
    try:
        if hasattr(v, "detach") and hasattr(v, "numpy"):  # a torch tensor
            v = v.detach().cpu()
            if v.is_floating_point() and str(v.dtype) not in _NUMPY_FLOATS:
                v = v.float()  # bfloat16, float8: NumPy has no such type; float32 holds them
            v = v.numpy()
        return np.asarray(to_numpy(v))
    except (TypeError, ValueError, RuntimeError, NotImplementedError) as e:
        raise ValueError(
            f"load_official: {name!r} is not an array of numbers ({type(e).__name__}: {e})"
        ) from None


_NUMPY_FLOATS = ("torch.float16", "torch.float32", "torch.float64")


def _checked(name, a, dtype):
    """``a`` converted to ``dtype`` (a parameter's or buffer's), or ValueError naming ``name``:
    real numbers only, finite, inside the range of ``dtype``; integer buffers (BatchNorm's
    ``num_batches_tracked``) take non-negative integers and running variances are >= 0."""
    dtype = np.dtype(dtype)
    if a.dtype.kind == "c":
        raise ValueError(f"load_official: {name!r} expected real numbers, got complex {a.dtype}")
    if dtype.kind in "iu":
        if a.dtype.kind not in "iu":
            raise ValueError(
                f"load_official: {name!r} expected a non-negative integer count ({dtype}), "
                f"got {a.dtype}"
            )
        info = np.iinfo(dtype)
        if a.size and (int(a.min()) < 0 or int(a.max()) > info.max):
            raise ValueError(
                f"load_official: {name!r} expected a non-negative integer count up to "
                f"{info.max}, got {int(a.min()) if int(a.min()) < 0 else int(a.max())}"
            )
        return a.astype(dtype)
    if a.dtype.kind not in "fiu":
        raise ValueError(f"load_official: {name!r} expected real numbers, got dtype {a.dtype}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ValueError(f"load_official: {name!r} expected finite numbers, got NaN or inf")
    with np.errstate(over="ignore"):
        out = a.astype(dtype)
    if not np.isfinite(out).all():
        big = float(np.max(np.abs(a.astype(np.float64))))
        raise ValueError(
            f"load_official: {name!r} has values beyond the range of {dtype} "
            f"(largest |x| = {big:.3g}, {dtype} holds up to {float(np.finfo(dtype).max):.3g})"
        )
    if name.endswith("running_var") and a.size and out.min() < 0:
        raise ValueError(f"load_official: {name!r} expected variances >= 0, got {out.min():.3g}")
    return out


def load_official(module, state):
    """Copy ``state`` (official name -> array, e.g. a PyTorch ``state_dict`` or an ``.npz``)
    into ``module``'s parameters (and BatchNorm buffers) in place, all or nothing.

    Every array is converted and checked before the first write. Raises ValueError naming the
    key, and leaves ``module`` unchanged, for: unknown names, missing names, shapes that differ
    from the official shape (which is printed), complex or non-numeric values, NaN or inf,
    values beyond the range of the parameter's dtype (1e39 into float32), integer buffers
    (``num_batches_tracked``) that are not non-negative integers, negative running variances,
    and a tied head that differs from the token embedding. Returns ``module``."""
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
    arrays = {k: _to_numpy(v, k) for k, v in state.items()}
    for k, shape in expected.items():
        if arrays[k].shape != shape:
            raise ValueError(f"load_official: {k!r} expected shape {shape}, got {arrays[k].shape}")
    if tied is not None and not np.array_equal(
        _to_numpy(tied, TIED_HEAD), arrays["transformer.wte.weight"]
    ):
        raise ValueError(
            f"load_official: {TIED_HEAD!r} differs from 'transformer.wte.weight'; whitebox ties "
            "the head to the token embedding"
        )
    ready = [
        (params[ours], _from_official(_checked(off, arrays[off], params[ours].dtype), t))
        for off, ours, t in entries
    ]  # everything converted and checked: only now is the module written
    for p, a in ready:
        p[...] = get_array_module(p).asarray(a)
    return module
