"""Convert a PyTorch checkpoint of the public ToST code to an ``.npz`` for ``whitebox.interop``.

    python scripts/convert_pt.py ckpt.pt weights.npz [--key model] [--force] [--unsafe-pickle]

Accepts a bare ``state_dict`` or a training checkpoint holding one under ``--key`` (nanoGPT
saves ``{"model": state_dict, "model_args": {...}, ...}``, the public vision training (DeiT's
``main.py``) ``{"model": state_dict, "optimizer": ..., "epoch": ..., "args": ...}``; when
``--key`` is not given, "model" and "state_dict" are tried; pass ``--key model_ema`` for the
EMA weights). The ``_orig_mod.`` prefix that ``torch.compile`` adds and the ``module.`` prefix
of a ``DistributedDataParallel`` wrapper are removed from the front of every name, repeatedly
and in any order (``module._orig_mod.x`` and ``_orig_mod.module.x`` both become ``x``); two
entries that become the same name are refused. Buffers (BatchNorm ``running_mean``,
``running_var``, ``num_batches_tracked``) are kept: ``load_official`` reads them. Names and
layouts are kept as they are (``load_official`` does the transposes). Needs torch, which is
never a dependency of the library.

Safety. A ``.pt`` file is a pickle, and unpickling can run any code the file names. The file is
therefore read with ``torch.load(..., weights_only=True)``: only tensors, plain containers and
numbers, and the one class the public training checkpoints add, ``argparse.Namespace`` (the
vision run's ``args``), are allowed. Anything else is refused before it is built, with the
offending type named. ``--unsafe-pickle`` lifts this for a file you trust: it runs code in the
file.

What is refused (exit 2, one line, nothing written): a missing or unreadable file, a file that
is not a PyTorch checkpoint, a ``--key`` that is absent (the keys that exist are listed), an
entry that is not a state dict, a name that is not a string, an entry that is not a tensor,
sparse, quantized, nested and meta tensors, dtypes NumPy cannot hold, a state dict without
tensors, and a destination that does not end in ``.npz``, is a folder, a symbolic link or an
existing file (``--force`` replaces an existing regular file; a symbolic link is never written
through), or whose folder does not exist. bfloat16 and float8 tensors are upcast to float32
(exactly; NumPy has no such types), which is said on stderr.

A checkpoint's ``model_args`` (nanoGPT) are written next to the output as ``<dst>.json``, under
the same rules as the ``.npz`` (never overwritten without ``--force``). Values JSON cannot hold
(a ``torch.dtype``, a non-finite float, ...) are written as strings, which is said on stderr.
Both files are written only after every check passed, each to a temporary file in the
destination folder that is then renamed over the name, so a failure leaves nothing behind. New
files get the mode the umask gives; a replaced file keeps its mode.

Load the result with ``whitebox.interop.load_official(model, np.load("weights.npz"))``, e.g.
``model = whitebox.models.tost_cab("tost_cab_tiny_12_p16")`` for a public vision checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import re
import secrets
import stat
import sys
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

PROG = "convert_pt"
COMPILE_PREFIX = "_orig_mod."
DDP_PREFIX = "module."
PREFIXES = (COMPILE_PREFIX, DDP_PREFIX)
DEFAULT_KEYS = ("model", "state_dict")
MAX_JSON_DEPTH = 32


class ConvertError(Exception):
    """Bad input: the one-line message is printed as ``convert_pt: error: ...`` (exit 2)."""


def _note(msg):
    print(f"{PROG}: note: {msg}", file=sys.stderr)


def _type_name(v):
    t = type(v)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _keys(d, limit=20):
    keys = [repr(k) for k in list(d)[:limit]]
    more = f", ... ({len(d)} in all)" if len(d) > limit else ""
    return "[" + ", ".join(keys) + more + "]"


def _import_torch():
    try:
        import torch
    except ImportError:
        raise ConvertError(
            "needs PyTorch (pip install torch); it is never a dependency of whitebox"
        ) from None
    return torch


def strip_prefixes(name):
    """Remove the ``torch.compile`` and DDP prefixes from the front of ``name``, repeatedly."""
    while name.startswith(PREFIXES):
        for p in PREFIXES:
            name = name.removeprefix(p)
    return name


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def safe_globals():
    """What a weights-only load allows beyond torch's default list: the classes the public
    ToST training checkpoints hold (DeiT-style vision runs pickle their ``args`` Namespace)."""
    return [argparse.Namespace]


def _refusal(e, src):
    """A one-line message for torch's UnpicklingError under ``weights_only=True``."""
    text = str(e)
    m = re.search(r"GLOBAL ([\w.]+)", text)
    if m:
        return (
            f"{str(src)!r} refers to {m.group(1)}, which a weights-only load does not allow "
            "(unpickling it could run code); only tensors, plain containers, numbers and "
            "argparse.Namespace are read. If you trust the file, pass --unsafe-pickle (it runs "
            "code in the file)"
        )
    m = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    reason = m.group(1).strip() if m else (text.strip().splitlines() or ["unreadable"])[0]
    return f"{str(src)!r} is not a PyTorch checkpoint a weights-only load can read ({reason})"


def load_checkpoint(src, unsafe_pickle=False):
    """``torch.load`` of ``src`` on the CPU, weights-only unless ``unsafe_pickle``."""
    torch = _import_torch()
    src = Path(src)
    if not src.exists():
        raise ConvertError(f"src {str(src)!r} does not exist")
    if src.is_dir():
        raise ConvertError(f"src {str(src)!r} is a folder, not a checkpoint file")
    if src.stat().st_size == 0:
        raise ConvertError(f"src {str(src)!r} is empty, not a PyTorch checkpoint")
    try:
        ckpt = _torch_load(torch, src, unsafe_pickle)
    except pickle.UnpicklingError as e:
        if unsafe_pickle:
            raise ConvertError(
                f"{str(src)!r} is not a PyTorch checkpoint ({_first_line(e)})"
            ) from None
        raise ConvertError(_refusal(e, src)) from None
    except OSError as e:
        raise ConvertError(f"cannot read src {str(src)!r}: {e.strerror or e}") from None
    except MemoryError:
        raise ConvertError(f"src {str(src)!r} does not fit in memory") from None
    except Exception as e:  # torch raises RuntimeError, KeyError, EOFError, ... on bad files
        raise ConvertError(
            f"{str(src)!r} is not a PyTorch checkpoint ({type(e).__name__}: {_first_line(e)})"
        ) from None
    return ckpt


def _torch_load(torch, src, unsafe_pickle):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation notes would break the one line
        if unsafe_pickle:
            return torch.load(src, map_location="cpu", weights_only=False)
        allowed = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
        if allowed is None:
            if hasattr(torch.serialization, "add_safe_globals"):  # torch 2.4
                torch.serialization.add_safe_globals(safe_globals())
            return torch.load(src, map_location="cpu", weights_only=True)
        with allowed(safe_globals()):
            return torch.load(src, map_location="cpu", weights_only=True)


def _first_line(e):
    """The first sentence of an exception's message, short enough for one line."""
    lines = str(e).strip().splitlines()
    if not lines:
        return "no detail"
    line = lines[0]
    if len(line) > 120 and ". " in line:
        line = line[: line.index(". ") + 1]
    return line[:200]


# --------------------------------------------------------------------------------------------
# The state dict and its tensors
# --------------------------------------------------------------------------------------------


def select_state(ckpt, key=None):
    """The state dict inside ``ckpt`` and a phrase saying where it was found."""
    torch = _import_torch()
    if key is not None:
        if not isinstance(ckpt, Mapping):
            raise ConvertError(
                f"--key {key!r}: the checkpoint is a {_type_name(ckpt)}, not a dict of entries"
            )
        if key not in ckpt:
            raise ConvertError(
                f"--key {key!r} is not in the checkpoint; its keys are {_keys(ckpt)}"
            )
        return ckpt[key], f"entry {key!r}"
    if isinstance(ckpt, Mapping):
        for k in DEFAULT_KEYS:
            if isinstance(ckpt.get(k), Mapping) or isinstance(ckpt.get(k), torch.nn.Module):
                return ckpt[k], f"entry {k!r}"
    return ckpt, "the checkpoint"


def to_arrays(state, where, note=_note):
    """Name (prefixes stripped) -> NumPy array for every tensor of ``state``; refuses anything
    that is not a dense tensor NumPy can hold, and names that collide."""
    torch = _import_torch()
    hint = " (pass --key naming the entry that holds the state dict)"
    if isinstance(state, torch.nn.Module):
        raise ConvertError(
            f"{where} is a whole {_type_name(state)} module, not a state dict; save "
            "model.state_dict() in PyTorch instead"
        )
    if not isinstance(state, Mapping):
        raise ConvertError(
            f"{where} is a {_type_name(state)}, not a state dict (a dict of name -> tensor)" + hint
        )
    if not state:
        raise ConvertError(f"{where} is empty: no tensors to convert" + hint)
    arrays, origin, upcast = {}, {}, []
    for name, value in state.items():
        if not isinstance(name, str):
            raise ConvertError(
                f"{where} has a key {name!r} ({_type_name(name)}), not a parameter name" + hint
            )
        if not torch.is_tensor(value):
            raise ConvertError(
                f"{where}: {name!r} is a {_type_name(value)}, not a tensor"
                + (hint if where == "the checkpoint" else "")
            )
        array = _tensor_to_numpy(torch, value, name, upcast)
        short = strip_prefixes(name)
        if not short:
            raise ConvertError(f"{where}: {name!r} has no name left after removing its prefixes")
        if short in arrays:
            raise ConvertError(
                f"{where}: {origin[short]!r} and {name!r} both become {short!r} after removing "
                "the torch.compile ('_orig_mod.') and DDP ('module.') prefixes; keep one of them"
            )
        arrays[short], origin[short] = array, name
    if upcast:
        note(
            f"{len(upcast)} tensor(s) in {', '.join(sorted(set(upcast)))} upcast to float32 "
            "(exactly; NumPy has no such type)"
        )
    return arrays


def _tensor_to_numpy(torch, value, name, upcast):
    if value.is_nested:
        raise ConvertError(f"{name!r} is a nested tensor; only dense tensors convert")
    if value.layout != torch.strided:
        raise ConvertError(
            f"{name!r} is a sparse tensor ({value.layout}); only dense tensors convert "
            "(call .to_dense() in PyTorch first)"
        )
    if value.is_quantized:
        raise ConvertError(
            f"{name!r} is a quantized tensor ({value.dtype}); dequantize it in PyTorch first"
        )
    if value.is_meta or value.device.type == "meta":
        raise ConvertError(
            f"{name!r} is a meta tensor: it has a shape but no data (saved from a model on "
            "the meta device)"
        )
    value = value.detach()
    if value.dtype.is_floating_point and value.dtype not in (
        torch.float16,
        torch.float32,
        torch.float64,
    ):
        upcast.append(str(value.dtype).removeprefix("torch."))
        value = value.float()
    try:
        return np.array(value.cpu().resolve_conj().resolve_neg().numpy(), copy=True)
    except (TypeError, RuntimeError) as e:
        raise ConvertError(
            f"{name!r} has dtype {value.dtype}, which NumPy cannot hold ({_first_line(e)})"
        ) from None


def model_args_json(ckpt, note=_note):
    """The checkpoint's ``model_args`` as JSON text, or None. Values JSON cannot hold are
    written as strings (named on stderr)."""
    if not isinstance(ckpt, Mapping) or "model_args" not in ckpt:
        return None
    args = ckpt["model_args"]
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    if not isinstance(args, Mapping):
        note(f"model_args is a {_type_name(args)}, not a dict; no .json written")
        return None
    as_strings = []

    def plain(v, path, depth):
        if depth > MAX_JSON_DEPTH:
            raise ConvertError(f"model_args{path} is nested deeper than {MAX_JSON_DEPTH} levels")
        if v is None or isinstance(v, bool | int | str):
            return v
        if isinstance(v, float):
            if math.isfinite(v):
                return v
        elif isinstance(v, list | tuple):
            return [plain(x, f"{path}[{i}]", depth + 1) for i, x in enumerate(v)]
        elif isinstance(v, Mapping):
            out = {}
            for k, x in v.items():
                if not isinstance(k, str):
                    as_strings.append(f"{path}[{k!r}] (key)")
                out[str(k)] = plain(x, f"{path}[{k!r}]", depth + 1)
            return out
        as_strings.append(path)
        return str(v)

    data = plain(args, "", 0)
    if as_strings:
        note("written as strings (not JSON values): model_args" + ", model_args".join(as_strings))
    return json.dumps(data, indent=2, allow_nan=False) + "\n"


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def check_destination(path, force, what="dst"):
    """Refuse a destination that is a folder, a symbolic link, an existing file (unless
    ``force`` and a regular file) or in a missing folder. Returns the mode to keep or None."""
    path = Path(path)
    if path.is_symlink():
        raise ConvertError(
            f"{what} {str(path)!r} is a symbolic link; refusing to write through it (remove "
            "it or choose another name)"
        )
    if path.is_dir():
        raise ConvertError(f"{what} {str(path)!r} is a folder; give a file name ending in .npz")
    folder = path.parent
    if not folder.is_dir():
        raise ConvertError(f"the folder {str(folder)!r} of {what} {str(path)!r} does not exist")
    if path.exists():
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise ConvertError(f"{what} {str(path)!r} exists and is not a regular file")
        if not force:
            raise ConvertError(f"{what} {str(path)!r} exists; pass --force to replace it")
        return stat.S_IMODE(st.st_mode)
    return None


def _write_temp(path, write, mode):
    """A fresh temporary file beside ``path`` (created exclusively, never through a link; mode
    0o666 less the umask, or ``mode``) filled by ``write(f)`` and synced. Returns its path."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:
            continue
    else:
        raise ConvertError(f"cannot create a temporary file in {str(path.parent)!r}")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _write_npz(f, arrays):
    """``np.savez`` without its keyword arguments (a parameter called ``file`` or
    ``allow_pickle`` is just a name here) and without pickles."""
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, a in arrays.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as g:
                np.lib.format.write_array(g, a, allow_pickle=False)


def write_outputs(outputs):
    """``outputs``: list of (path, write, mode). Every file goes to a temporary file first;
    the temporaries are renamed over the names only when all were written."""
    done, replaced = [], []
    path = outputs[0][0]
    try:
        for path, write, mode in outputs:
            done.append((_write_temp(path, write, mode), path))
        for tmp, path in done:
            os.replace(tmp, path)  # replaces a name, never the target of a link
            replaced.append(str(path))
    except OSError as e:
        kept = f"only {replaced} was written" if replaced else "nothing was written"
        raise ConvertError(f"could not write {str(path)!r} ({e.strerror or e}); {kept}") from None
    finally:
        for tmp, _ in done:
            tmp.unlink(missing_ok=True)


def convert(src, dst, key=None, *, force=False, unsafe_pickle=False, note=_note):
    """Write the tensors of the checkpoint ``src`` to ``dst`` (.npz) and its ``model_args`` to
    ``<dst>.json``; returns the names. Raises ConvertError (nothing written) on bad input."""
    dst = Path(dst)
    if dst.suffix != ".npz":
        raise ConvertError(f"dst {str(dst)!r} must end in .npz")
    twin = dst.with_suffix(".json")
    mode = check_destination(dst, force)
    ckpt = load_checkpoint(src, unsafe_pickle)
    notes = []  # said on stderr once everything is written
    state, where = select_state(ckpt, key)
    arrays = to_arrays(state, where, notes.append)
    text = model_args_json(ckpt, notes.append)
    mode = check_destination(dst, force)  # again: the load may have taken a while
    outputs = [(dst, lambda f: _write_npz(f, arrays), mode)]
    if text is not None:
        twin_mode = check_destination(twin, force, "the model_args file")
        outputs.append((twin, lambda f: f.write(text.encode()), twin_mode))
    write_outputs(outputs)
    for msg in notes:
        note(msg)
    return sorted(arrays)


def build_parser():
    ap = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("src", help="PyTorch checkpoint (.pt, .pth)")
    ap.add_argument("dst", help="output file, ending in .npz (model_args go to <dst>.json)")
    ap.add_argument(
        "--key",
        default=None,
        help="entry of the checkpoint holding the state_dict (default: 'model', then "
        "'state_dict', then the checkpoint itself; e.g. model_ema)",
    )
    ap.add_argument(
        "--force",
        action="store_true",
        help="replace an existing dst (and <dst>.json); a symbolic link is never written through",
    )
    ap.add_argument(
        "--unsafe-pickle",
        action="store_true",
        help="load with weights_only=False. Only for a file you trust: it runs code in the file",
    )
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        names = convert(
            args.src, args.dst, args.key, force=args.force, unsafe_pickle=args.unsafe_pickle
        )
    except ConvertError as e:
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing was written", file=sys.stderr)
        return 130
    print(f"wrote {len(names)} arrays to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
