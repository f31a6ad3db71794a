"""The one place that decides the array module: NumPy, or CuPy when the arrays live on a GPU.

Every other module calls :func:`get_array_module` on its inputs and writes ``xp.exp``,
``xp.einsum`` and so on, so the same code runs on both (DeZero's ``cuda.py`` and Chainer do
the same). Nothing here imports CuPy at import time: ``import cupy`` succeeds on a machine
without a GPU and fails only at the first array call, so availability is decided with
``cupy.is_available()`` and only when somebody asks for the GPU.
"""

from __future__ import annotations

import numpy as np

GPU_INSTALL_HINT = (
    'pip install -e ".[gpu]" with the CuPy for your driver: cupy-cuda12x for CUDA 12, '
    "cupy-cuda13x for CUDA 13 (`nvidia-smi` shows the driver's CUDA version)"
)


def _is_cupy_array(x) -> bool:
    """True for a CuPy ndarray, decided without importing CuPy."""
    return type(x).__module__.split(".")[0] == "cupy"


def get_array_module(*arrays):
    """Return ``cupy`` if any argument is a CuPy array, else ``numpy``."""
    for a in arrays:
        if _is_cupy_array(a):
            import cupy

            return cupy
    return np


def erf(x):
    """The error function elementwise: SciPy's on NumPy arrays, cupyx's on CuPy arrays
    (NumPy itself has none; the exact GELU needs it)."""
    if _is_cupy_array(x):
        from cupyx.scipy.special import erf as _erf
    else:
        from scipy.special import erf as _erf
    return _erf(x)


def gpu_available() -> bool:
    """True when CuPy imports and sees at least one working GPU."""
    try:
        import cupy
    except Exception:  # ImportError, or a broken CUDA install
        return False
    try:
        return bool(cupy.is_available())
    except Exception:
        return False


def require_gpu():
    """Return the ``cupy`` module, or raise a clear error saying how to get it."""
    try:
        import cupy
    except Exception as e:
        raise RuntimeError(
            f"--device gpu needs CuPy, which is not installed ({e}). "
            f"Install it with: {GPU_INSTALL_HINT}"
        ) from None
    if not gpu_available():
        raise RuntimeError(
            "CuPy is installed but sees no working GPU (cupy.is_available() is False). "
            "Run on a machine with an NVIDIA GPU and a CUDA 12 or CUDA 13 driver, with the "
            f"CuPy that matches it: {GPU_INSTALL_HINT}"
        )
    return cupy


def device_module(device: str):
    """The array module for ``device`` ('cpu' or 'gpu')."""
    if device == "cpu":
        return np
    if device == "gpu":
        return require_gpu()
    raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")


def to_device(x, device: str):
    """Move an array to 'cpu' (NumPy) or 'gpu' (CuPy); a no-op when it is already there."""
    if device == "cpu":
        return to_numpy(x)
    xp = device_module(device)
    return xp.asarray(x)


def to_numpy(x):
    """Return a NumPy array (copying from the GPU when needed)."""
    if _is_cupy_array(x):
        return x.get()
    return np.asarray(x)


def to_numpy_many(arrays):
    """NumPy copies of a list of arrays. Device arrays travel in one copy per dtype (packed
    into one flat device buffer first) instead of one copy, and one wait, per array."""
    out = [None] * len(arrays)
    groups: dict = {}
    for i, a in enumerate(arrays):
        if _is_cupy_array(a):
            groups.setdefault(a.dtype, []).append(i)
        else:
            out[i] = np.array(a)
    for idx in groups.values():
        xp = get_array_module(arrays[idx[0]])
        flat = xp.concatenate([arrays[i].reshape(-1) for i in idx]).get()
        offsets = np.cumsum([0] + [arrays[i].size for i in idx])
        for k, i in enumerate(idx):
            out[i] = flat[offsets[k] : offsets[k + 1]].reshape(arrays[i].shape)
    return out


def device_of(x) -> str:
    """'gpu' for a CuPy array, else 'cpu'."""
    return "gpu" if _is_cupy_array(x) else "cpu"
