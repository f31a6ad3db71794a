"""Convert a PyTorch checkpoint of the public ToST code to an ``.npz`` for ``whitebox.interop``.

    python scripts/convert_pt.py ckpt.pt weights.npz [--key model]

Accepts a bare ``state_dict`` or a training checkpoint holding one under ``--key`` (nanoGPT
saves ``{"model": state_dict, "model_args": {...}, ...}``, the public vision training (DeiT's
``main.py``) ``{"model": state_dict, "optimizer": ..., "epoch": ..., "args": ...}``; when
``--key`` is not given, "model" and "state_dict" are tried; pass ``--key model_ema`` for the
EMA weights). The ``_orig_mod.`` prefix that ``torch.compile`` adds and the ``module.`` prefix
of a ``DistributedDataParallel`` wrapper are removed. Buffers (BatchNorm ``running_mean``,
``running_var``, ``num_batches_tracked``) are kept: ``load_official`` reads them. A checkpoint's ``model_args`` are written next to the output as JSON. Names and
layouts are kept as they are (``load_official`` does the transposes). Needs torch, which is
never a dependency of the library.

Load the result with ``whitebox.interop.load_official(model, np.load("weights.npz"))``, e.g.
``model = whitebox.models.tost_cab("tost_cab_tiny_12_p16")`` for a public vision checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

COMPILE_PREFIX = "_orig_mod."
DDP_PREFIX = "module."


def convert(src, dst, key=None):
    """Write the tensors of the checkpoint ``src`` to ``dst`` (.npz); returns the names."""
    try:
        import torch
    except ImportError:
        sys.exit("convert_pt.py needs PyTorch: pip install torch")
    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    state = ckpt
    if key is not None:
        state = ckpt[key]
    elif isinstance(ckpt, dict):
        for k in ("model", "state_dict"):
            if isinstance(ckpt.get(k), dict):
                state = ckpt[k]
                break
    arrays = {}
    for name, value in state.items():
        if not torch.is_tensor(value):
            continue
        name = name.removeprefix(COMPILE_PREFIX).removeprefix(DDP_PREFIX)
        if value.dtype == torch.bfloat16:  # NumPy has no bfloat16
            value = value.float()
        arrays[name] = value.detach().cpu().numpy()
    np.savez(dst, **arrays)
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model_args"), dict):
        Path(dst).with_suffix(".json").write_text(json.dumps(ckpt["model_args"], indent=2))
    return sorted(arrays)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", help="PyTorch checkpoint (.pt)")
    ap.add_argument("dst", help="output .npz")
    ap.add_argument("--key", default=None, help="entry of the checkpoint holding the state_dict")
    args = ap.parse_args(argv)
    names = convert(args.src, args.dst, args.key)
    print(f"wrote {len(names)} arrays to {args.dst}")


if __name__ == "__main__":
    main()
