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


ERF32_COEFFS = (
    1.418559207877479e-07, -5.668533958669286e-06, 8.763763617025688e-05,
    -0.0006197853363119066, -0.0001918302004924044, 0.10276905447244644, 1.128379225730896,
)  # fmt: skip
"""g(t) ~ artanh(erf(sqrt t)) / sqrt t, highest power first (``scripts/fit_erf32.py``)."""


def erf32(x):
    """The error function of a float32 array in a few NumPy passes, accurate to a few float32
    ulps (the test measures the largest error against SciPy over the float32 range):

        erf(x) = tanh(x g(x^2)),  g a degree-6 polynomial fitted on |x| <= 3.95

    (from |x| = 3.92 on, erf(x) is +-1 in float32; there g grows, x g(x^2) passes 10, where
    NumPy's float32 tanh returns exactly +-1, and overflows to +-inf for huge x, so no clamp
    is needed; NaN stays NaN). A large NumPy array goes through in blocks of
    :data:`ERF32_BLOCK` elements, so the fifteen passes over a block stay in the cache (the
    result is the same, element for element); a CuPy array in whole-array passes."""
    xp = get_array_module(x)
    with np.errstate(over="ignore", invalid="ignore"):  # huge |x|: inf on purpose
        if xp is not np or x.size <= ERF32_BLOCK:
            return _erf32_into(xp, x, xp.empty_like(x), x * x)
        x = np.ascontiguousarray(x)
        out = np.empty(x.shape, np.float32)  # C order: its flat view writes into it
        flat_x, flat_out = x.reshape(-1), out.reshape(-1)
        t = np.empty(ERF32_BLOCK, np.float32)
        for s in range(0, x.size, ERF32_BLOCK):
            xs = flat_x[s : s + ERF32_BLOCK]
            _erf32_into(
                np, xs, flat_out[s : s + ERF32_BLOCK], np.multiply(xs, xs, out=t[: xs.size])
            )
    return out


ERF32_BLOCK = 1 << 14
"""Elements per block of :func:`erf32` on the CPU (64 KiB of float32: a block, its square and
its result fit in a core's L2 cache)."""


def _erf32_into(xp, x, out, t):
    """tanh(x g(t)) with t = x^2, written into ``out`` (Horner in place)."""
    xp.multiply(t, np.float32(ERF32_COEFFS[0]), out=out)
    out += np.float32(ERF32_COEFFS[1])
    for c in ERF32_COEFFS[2:]:
        out *= t
        out += np.float32(c)
    out *= x
    return xp.tanh(out, out=out)


def erf(x):
    """The error function elementwise, in the dtype of x: :func:`erf32` on float32 NumPy
    arrays, SciPy's exact one on other NumPy arrays (float64), cupyx's on CuPy arrays (NumPy
    itself has none; the exact GELU needs it)."""
    if _is_cupy_array(x):
        from cupyx.scipy.special import erf as _erf
    elif getattr(x, "dtype", None) == np.float32:
        return erf32(x)
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
