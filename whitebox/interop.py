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

Arrays may be NumPy arrays, anything ``np.asarray`` accepts, or PyTorch tensors (read through
``.detach().cpu().numpy()`` without importing torch).
"""

from __future__ import annotations

import numpy as np

from .backend import get_array_module, to_numpy
from .models import ToSTLanguageModel
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
    raise TypeError(
        f"no official layout for {type(module).__name__} "
        "(supported: TSSA, CausalTSSA, SoftmaxAttention, ToSTLanguageModel)"
    )


def _export(arrays, module):
    return {
        off: np.array(to_numpy(arrays[ours]).T if t else to_numpy(arrays[ours]))
        for off, ours, t in _entries(module)
    }


def official_state(module):
    """The parameters of ``module`` as official name -> NumPy array (PyTorch layouts)."""
    return _export(module.parameters(), module)


def official_grads(module):
    """The gradients after ``backward``, in the names and layouts of :func:`official_state`."""
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
    entries = _entries(module)
    params = module.parameters()
    expected = {
        off: (params[ours].shape[::-1] if t else params[ours].shape) for off, ours, t in entries
    }
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
        v = arrays[off].T if t else arrays[off]
        p[...] = get_array_module(p).asarray(v, dtype=p.dtype)
    return module
