"""Checkpoints: one ``.npz`` file with weights, optimizer state, progress, configuration and
random state, written atomically (temporary file, then rename) so an interrupted run never
leaves a broken checkpoint behind.

Layout of the archive (all NumPy arrays, no pickles):

* ``model/<name>``      the model's parameters (``model.state_dict()``);
* ``optim/<name>``      the optimizer state (``AdamW.state_dict()``);
* ``meta``              a JSON string: format tag, version, model config, training config,
                        progress (epoch, step), metrics so far and the data RNG's state.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

FORMAT = "whitebox-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a (complete) whitebox checkpoint."""


def save_checkpoint(path, model, optimizer=None, meta=None) -> Path:
    """Write ``model`` (and ``optimizer``) to ``path`` atomically; returns the path.

    ``meta`` is a JSON-able dict (training config, progress, RNG state, metrics)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    if optimizer is not None:
        arrays.update({f"optim/{k}": v for k, v in optimizer.state_dict().items()})
    header = {"format": FORMAT, "version": VERSION, "model_config": model.config}
    header.update(meta or {})
    arrays["meta"] = np.array(json.dumps(header))
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path) -> dict:
    """Read a checkpoint: returns {'meta': dict, 'model': {name: array}, 'optim': {name: array}}.

    Raises :class:`CheckpointError` (a ValueError) for a missing, truncated or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            files = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as e:
        raise CheckpointError(
            f"{str(path)!r} is not a readable whitebox checkpoint (truncated or foreign file: {e})"
        ) from None
    if "meta" not in files:
        raise CheckpointError(f"{str(path)!r} is not a whitebox checkpoint (no 'meta' entry)")
    try:
        meta = json.loads(str(files.pop("meta")))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{str(path)!r}: unreadable metadata ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a whitebox checkpoint (format tag missing)")
    if meta.get("version") != VERSION:
        raise CheckpointError(
            f"{str(path)!r}: checkpoint version {meta.get('version')}, this code reads {VERSION}"
        )
    model = {k[6:]: v for k, v in files.items() if k.startswith("model/")}
    optim = {k[6:]: v for k, v in files.items() if k.startswith("optim/")}
    return {"meta": meta, "model": model, "optim": optim}


def load_model(path, device: str = "cpu"):
    """Rebuild the trained model stored in the checkpoint ``path`` (on ``device``)."""
    from .models import build

    ckpt = load_checkpoint(path)
    model = build(ckpt["meta"]["model_config"])
    try:
        model.load_state_dict(ckpt["model"])
    except ValueError as e:
        raise CheckpointError(
            f"{str(path)!r}: weights do not fit the stored config ({e})"
        ) from None
    return model.to(device) if device != "cpu" else model
