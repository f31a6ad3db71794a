"""Use a digits model trained by ``python -m whitebox.train`` (the default task).

    python -m whitebox.predict runs/digits-tssa/model.npz                 # test accuracy
    python -m whitebox.predict runs/digits-tssa/model.npz --images x.npy  # your own digits

Without ``--images``: the accuracy and the confusion matrix (rows: true digit, columns:
predicted) on the fixed test split that training reports. With ``--images``: a ``.npy`` file of
raw 8 x 8 digits in the dataset's 0..16 scale, shaped (N, 8, 8), (N, 64) or (N, 1, 8, 8); one
line per image (index, predicted digit, its probability). The checkpoint carries the input
normalization: nothing else is needed. The last line of stdout is JSON.
"""

from __future__ import annotations

import argparse
import json
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


def read_images(path) -> np.ndarray:
    """A .npy file of raw 8 x 8 digits (0..16) as float32 (N, 1, 8, 8); ValueError otherwise."""
    try:
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
    x = x.astype(np.float64)
    if not np.isfinite(x).all() or x.min() < 0 or x.max() > DIGITS_MAX:
        raise ValueError("--images: expected raw digits in the dataset's 0..16 scale "
                         "(finite values in [0, 16])")  # fmt: skip
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


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model = load(args.checkpoint, device=args.device)
        kind = model.config["model"]
        if kind not in ("classifier", "tost_cab") or model.config.get("image_size") != 8:
            hint = " use python -m whitebox.sample" if kind == "language_model" else ""
            raise CheckpointError(
                f"{args.checkpoint!r} holds a {kind}, not a digits classifier;{hint}"
            )
        if model.config.get("input_norm") is None:
            raise CheckpointError(
                f"{args.checkpoint!r} stores no input normalization (written by an older "
                "whitebox); train it again with python -m whitebox.train"
            )
        x = read_images(args.images) if args.images else load_digits_split()[2]
        proba = predict_proba(model, x, progress=not args.no_progress)
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    pred = proba.argmax(axis=1)
    if args.images:
        for i, (p, q) in enumerate(zip(pred, proba.max(axis=1))):
            print(f"{i}\t{p}\t{q:.4f}")
        print(json.dumps({"predictions": pred.tolist()}))
        return 0
    yte = load_digits_split()[3]
    cm = confusion_matrix(yte, pred)
    acc = float((pred == yte).mean())
    print(f"test accuracy {acc:.4f} on {len(yte)} images")
    print("confusion matrix (rows: true digit, columns: predicted)")
    print("      " + " ".join(f"{c:4d}" for c in range(10)))
    for c in range(10):
        print(f"  {c:2d}  " + " ".join(f"{v:4d}" for v in cm[c]))
    print(json.dumps({"test_accuracy": round(acc, 4), "confusion_matrix": cm.tolist()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
