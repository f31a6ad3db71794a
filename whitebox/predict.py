"""Use a digits model trained by ``python -m whitebox.train`` (the default task).

    python -m whitebox.predict runs/digits-tssa/model.npz                 # test accuracy
    python -m whitebox.predict runs/digits-tssa/model.npz --images x.npy  # your own digits

Without ``--images``: the accuracy and the confusion matrix (rows: true digit, columns:
predicted) on the fixed test split that training reports. With ``--images``: a ``.npy`` file of
raw 8 x 8 digits in the dataset's 0..16 scale, shaped (N, 8, 8), (N, 64) or (N, 1, 8, 8); one
line per image (index, predicted digit, its probability). The checkpoint carries the input
normalization: nothing else is needed. The last line of stdout is JSON.

The model is used in evaluation mode (BatchNorm on its running statistics): an image's
prediction never depends on the other images. Images whose pixels are all <= 1 (scaled to
0..1, or bool) are classified with a warning on stderr. When stdout's reader stops early
(``| head``), the command ends quietly with status 141, as a process killed by SIGPIPE.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

from .backend import to_numpy
from .checkpoint import CheckpointError
from .data import DIGITS_MAX, load_digits_split
from .models import load


def predict_proba(model, images, batch_size=256, progress=False):
    """Class probabilities (N, 10) of raw images (N, 1, 8, 8) in 0..16, batch by batch."""
    from tqdm.auto import tqdm

    out = []
    starts = range(0, len(images), batch_size)
    quiet = not progress or len(starts) < 8  # a bar only where it takes a while
    for s in tqdm(starts, disable=quiet, file=sys.stderr, leave=False):
        logits = to_numpy(model.forward(images[s : s + batch_size])).astype(np.float64)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        out.append(e / e.sum(axis=1, keepdims=True))
    return np.concatenate(out) if out else np.zeros((0, 10))


def _npy_header(path):
    """(shape, dtype, bytes of data in the file) of a .npy file, from its header alone; None
    when the file is not a .npy file (``np.load`` then says what it is)."""
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            return None
        f.seek(0)
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0}.get(version)  # fmt: skip
        if read is None:
            raise ValueError(f"unsupported .npy version {version}")
        shape, _, dtype = read(f)
        return shape, dtype, os.fstat(f.fileno()).st_size - f.tell()


#: the largest pixel value below which ``--images`` look scaled to 0..1 (or bool), not 0..16
SCALE_WARNING_MAX = 1.0


def read_images(path, warn=None) -> np.ndarray:
    """A .npy file of raw 8 x 8 digits (0..16) as float32 (N, 1, 8, 8); ValueError otherwise.

    The header is checked against the file's size before anything is read (a small file
    cannot declare gigabytes). ``warn(message)`` is called when the range makes the 0..16 scale
    implausible: every pixel <= 1 (images scaled to 0..1, or a bool array)."""
    try:
        head = _npy_header(path)
        if head is not None:
            shape, dtype, held = head
            if dtype.hasobject or dtype.kind not in "biuf":
                raise ValueError(f"expected a real numeric array, got dtype {dtype}")
            nbytes = math.prod(shape) * dtype.itemsize
            if nbytes != held:
                raise ValueError(
                    f"its header declares {nbytes} bytes of data, the file holds {held}"
                )
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"--images: cannot read {str(path)!r} as a .npy array ({e})") from None
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "biuf":
        raise ValueError(f"--images: expected a real numeric array, got {getattr(x, 'dtype', x)}")
    if x.ndim == 2 and x.shape[1] == 64:
        x = x.reshape(-1, 8, 8)
    if x.ndim == 3 and x.shape[1:] == (8, 8):
        x = x[:, None]
    if x.ndim != 4 or x.shape[1:] != (1, 8, 8):
        raise ValueError(
            f"--images: expected shape (N, 8, 8), (N, 64) or (N, 1, 8, 8), got {x.shape}"
        )
    if len(x) == 0:
        raise ValueError(f"--images: {str(path)!r} holds zero images (expected at least one)")
    is_bool = x.dtype == np.bool_
    x = x.astype(np.float64)
    if not np.isfinite(x).all() or x.min() < 0 or x.max() > DIGITS_MAX:
        raise ValueError("--images: expected raw digits in the dataset's 0..16 scale "
                         "(finite values in [0, 16])")  # fmt: skip
    if warn is not None and x.max() <= SCALE_WARNING_MAX:
        what = "a bool array (read as pixels 0 and 1)" if is_bool else "every pixel is <= 1"
        warn(f"warning: --images: {what}, but the model expects raw digits in the 0..16 scale "
             "(ink up to 16); if yours are scaled to 0..1, multiply them by 16")  # fmt: skip
    return x.astype(np.float32)


def confusion_matrix(y, pred, k=10) -> np.ndarray:
    """(k, k) counts: row = true class, column = predicted class."""
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (y, pred), 1)
    return m


def build_parser():
    ap = argparse.ArgumentParser(
        prog="python -m whitebox.predict", description=__doc__.split("\n")[0]
    )
    ap.add_argument("checkpoint", help="model.npz written by python -m whitebox.train (digits)")
    ap.add_argument(
        "--images", help=".npy file of raw 8 x 8 digits in 0..16 (default: the test split)"
    )
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="NumPy or CuPy")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return ap


def _check_digits_model(model, path):
    """A CheckpointError unless ``model`` is a digits classifier this command can show."""
    c = model.config
    kind = c["model"]
    if kind not in ("classifier", "tost_cab"):
        hint = " use python -m whitebox.sample" if kind == "language_model" else ""
        raise CheckpointError(f"{path!r} holds a {kind}, not a digits classifier;{hint}")
    want = {"image_size": 8, "in_chans": 1, "num_classes": 10}
    for key, value in want.items():
        if c.get(key) != value:
            raise CheckpointError(
                f"{path!r} is not a digits model: its {key} is {c.get(key)!r}, this command "
                f"shows {value} (8 x 8 one-channel images, digits 0-9)"
            )
    if c.get("input_norm") is None:
        raise CheckpointError(
            f"{path!r} stores no input normalization (written by an older "
            "whitebox); train it again with python -m whitebox.train"
        )


def _quiet_broken_pipe() -> int:
    """stdout's reader went away (``| head``): send the rest of the output (and the flush at
    exit) to /dev/null and end as a process killed by SIGPIPE would (128 + 13), quietly."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141


def main(argv=None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model = load(args.checkpoint, device=args.device)
        _check_digits_model(model, args.checkpoint)
        if args.images:
            x = read_images(args.images, warn=lambda m: print(m, file=sys.stderr))
        else:
            x = load_digits_split()[2]
        proba = predict_proba(model, x, progress=not args.no_progress)
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: --images: not enough memory for these images (try fewer at a time)",
              file=sys.stderr)  # fmt: skip
        return 2
    pred = proba.argmax(axis=1)
    try:
        if args.images:
            for i, (p, q) in enumerate(zip(pred, proba.max(axis=1))):
                print(f"{i}\t{p}\t{q:.4f}")
            print(json.dumps({"predictions": pred.tolist()}))
        else:
            _print_test_report(pred)
        sys.stdout.flush()
    except BrokenPipeError:
        return _quiet_broken_pipe()
    return 0


def _print_test_report(pred) -> None:
    yte = load_digits_split()[3]
    cm = confusion_matrix(yte, pred)
    acc = float((pred == yte).mean())
    print(f"test accuracy {acc:.4f} on {len(yte)} images")
    print("confusion matrix (rows: true digit, columns: predicted)")
    print("      " + " ".join(f"{c:4d}" for c in range(10)))
    for c in range(10):
        print(f"  {c:2d}  " + " ".join(f"{v:4d}" for v in cm[c]))
    print(json.dumps({"test_accuracy": round(acc, 4), "confusion_matrix": cm.tolist()}))


if __name__ == "__main__":
    sys.exit(main())
