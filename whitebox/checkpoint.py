"""Checkpoints: one ``.npz`` file with weights, optimizer state, progress, configuration and
random state, written atomically so an interrupted run never leaves a broken checkpoint behind.
This module knows the file format only, nothing of the models (``whitebox.models.load`` builds
a model from what :func:`load_checkpoint` returns).

Layout of the archive (all NumPy arrays, no pickles):

* ``model/<name>``      the model's parameters (``model.state_dict()``);
* ``optim/<name>``      the optimizer state (``AdamW.state_dict()``);
* ``meta``              a JSON string: format tag, version, model config, training config,
                        progress (epoch, step), metrics so far and the data RNG's state.

Writing (:func:`atomic_write`): a fresh temporary name created exclusively in the target
folder, written, flushed to disk, then renamed over the target (a planted symlink is replaced,
never followed); temporary files a killed save left behind are removed by the next save; a
failed write (a full disk) raises :class:`CheckpointWriteError` and keeps the previous file.

Reading (:func:`load_checkpoint`) trusts nothing: before anything is decompressed, every
member's name, compression method, flags and declared size are checked against what a
checkpoint holds; every array header against its member's size; the metadata against its
schema. Any malformed file raises :class:`CheckpointError`.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
import zipfile
from pathlib import Path

import numpy as np

FORMAT = "whitebox-checkpoint"
VERSION = 1
#: refuse archives whose members declare more than this many bytes in all (ours are ~1 MB)
MAX_BYTES = 1 << 30
_MEMBER = re.compile(r"^(meta|(model|optim)/[A-Za-z0-9_.]{1,200})\.npy$")


class CheckpointError(ValueError):
    """A file that is not a (complete, well-formed) whitebox checkpoint."""


class CheckpointWriteError(RuntimeError):
    """A file could not be written (e.g. no space left); the previous version is kept."""


def _remove_stale_temporaries(folder: Path, name: str) -> None:
    """Remove ``name.*.tmp`` left in ``folder`` by a save that was killed."""
    for p in folder.glob(f"{glob_escape(name)}.*.tmp"):
        try:
            if p.is_symlink() or p.is_file():
                p.unlink()
        except OSError:
            pass


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode_for(path: Path) -> int:
    """The permission bits a written ``path`` gets: those of the regular file it replaces
    (a rewrite keeps what the user set, e.g. ``chmod 644``), else 0666 & ~umask, as ``open``
    gives a new file."""
    try:
        st = path.lstat()
        if stat.S_ISREG(st.st_mode):
            return stat.S_IMODE(st.st_mode)
    except OSError:
        pass
    return 0o666 & ~_umask()


def atomic_write(path, write) -> Path:
    """Write ``path`` atomically: ``write(f)`` fills a binary file object that is a fresh
    temporary file created exclusively (never through a symlink) beside ``path``; it is then
    flushed to disk and renamed over ``path``. Returns the path. The file gets the mode of
    the file it replaces, or 0666 & ~umask when it is new (not mkstemp's 0600)."""
    path = Path(path)
    folder = path.parent
    _remove_stale_temporaries(folder, path.name)
    try:
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=folder)
    except OSError as e:
        raise CheckpointWriteError(f"cannot write in {str(folder)!r}: {e.strerror}") from None
    try:
        os.chmod(tmp, _mode_for(path))  # mkstemp makes 0600: give the file its proper mode
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows; replaces a symlink, not its target
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise CheckpointWriteError(
            f"could not write {str(path)!r} ({e.strerror or e}); the previous version is kept"
        ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """One ``.npy`` member, its header checked against the member's declared size first."""
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
        if dtype.hasobject or dtype.kind not in "biufcU":
            raise ValueError(f"unexpected dtype {dtype}")
        nbytes = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
        if nbytes != info.file_size - f.tell():
            raise ValueError(f"array header declares {nbytes} bytes, the member holds fewer")
        data = f.read(nbytes)
    a = np.frombuffer(data, dtype=dtype)
    a = a.reshape(shape[::-1]).T if fortran else a.reshape(shape)
    return a.copy()


def load_checkpoint(path) -> dict:
    """Read a checkpoint: returns {'meta': dict, 'model': {name: array}, 'optim': {name: array}}.

    Raises :class:`CheckpointError` (a ValueError) for a missing, truncated, foreign or
    malformed file (see the module's docstring for what is checked)."""
    path = Path(path)
    where = repr(str(path))
    if not path.is_file():
        raise CheckpointError(f"checkpoint {where} does not exist")
    files = {}
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            names = [i.filename for i in infos]
            bad = [n for n in names if not _MEMBER.match(n)]
            if bad or len(set(names)) != len(names):
                raise CheckpointError(
                    f"{where} is not a whitebox checkpoint (unexpected members {bad[:5]})"
                )
            for i in infos:
                if i.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise ValueError(f"member {i.filename!r}: unsupported compression")
                if i.flag_bits & 0x1:
                    raise ValueError(f"member {i.filename!r} is encrypted")
            total = sum(i.file_size for i in infos)
            if total > MAX_BYTES:
                raise CheckpointError(
                    f"{where} declares {total} bytes of arrays (at most {MAX_BYTES} are read)"
                )
            for i in infos:
                files[i.filename[: -len(".npy")]] = _read_member(zf, i)
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError,
            KeyError, NotImplementedError, RuntimeError, MemoryError, OverflowError) as e:  # fmt: skip
        raise CheckpointError(
            f"{where} is not a readable whitebox checkpoint (truncated or foreign file: {e})"
        ) from None
    if "meta" not in files:
        raise CheckpointError(f"{where} is not a whitebox checkpoint (no 'meta' entry)")
    meta_arr = files.pop("meta")
    if meta_arr.dtype.kind != "U" or meta_arr.ndim != 0:
        raise CheckpointError(f"{where}: the metadata is not a JSON string")
    try:
        meta = json.loads(str(meta_arr))
    except (json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{where}: unreadable metadata ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{where} is not a whitebox checkpoint (format tag missing)")
    if meta.get("version") != VERSION:
        raise CheckpointError(
            f"{where}: checkpoint version {meta.get('version')!r}, this code reads {VERSION}"
        )
    if not isinstance(meta.get("model_config"), dict):
        raise CheckpointError(f"{where}: the metadata holds no model_config")
    model = {k[6:]: v for k, v in files.items() if k.startswith("model/")}
    optim = {k[6:]: v for k, v in files.items() if k.startswith("optim/")}
    return {"meta": meta, "model": model, "optim": optim}
