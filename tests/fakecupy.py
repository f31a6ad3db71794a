"""A NumPy-backed stand-in for CuPy, so the whole GPU code path runs (and is tested) on a CPU.

What it models:

* ``fakecupy.ndarray`` wraps a NumPy array and refuses what CuPy refuses: ``np.asarray`` of a
  device array (``__array__`` raises TypeError), NumPy functions and ufuncs on it, and any
  arithmetic or CuPy function that mixes a device array with a host ``numpy.ndarray``.
  Reductions return 0-d device arrays, as CuPy's do, so reading a value on the host is explicit.
* Every device-to-host transfer (``float()``, ``int()``, ``bool()``, ``.item()``, ``.get()``,
  ``.tolist()``, ``cupy.asnumpy``) is counted in :data:`SYNCS`: on a real GPU each one waits for
  the device to finish its queue.
* ``RawKernel(source, name)`` and ``ElementwiseKernel(..., name)`` run a NumPy twin of the CUDA
  kernel with the kernel's own launch contract: the twin receives the grid, the block, the
  dynamic shared memory and the raw argument tuple, checks the launch the way the CUDA driver
  does (no zero-size grid, grid.y/z <= 65,535, at most 1,024 threads and 48 KiB of shared
  memory a block) and what the kernel assumes (device arrays, C-contiguous, of the ``T`` of
  the source; the grid and shared memory the kernel's indexing needs), then computes what the
  kernel computes, writing into the output arrays in place.

Install it with :func:`install` (or the ``fake_cupy`` fixture); ``whitebox.backend`` then sees a
GPU. Nothing here is exact about performance or rounding order.
"""

from __future__ import annotations

import re
import sys
import types

import numpy as np

SYNCS = [0]
"""Device-to-host transfers since the last :func:`reset_syncs` (a one-element list)."""

MULTIPROCESSORS = 132  # an H100 SXM
MAX_SHARED = 48 * 1024
__version__ = "0.0.0+fake"


def reset_syncs():
    SYNCS[0] = 0


def _sync():
    SYNCS[0] += 1


class ndarray:  # noqa: N801 (CuPy's name)
    """A device array: a NumPy array that only device code may touch."""

    __array_ufunc__ = None  # NumPy ufuncs on a device array: TypeError
    __array_priority__ = 1000

    def __init__(self, a):
        assert isinstance(a, np.ndarray)
        self._a = a

    # -- what CuPy refuses
    def __array__(self, *args, **kwargs):
        raise TypeError(
            "Implicit conversion to a NumPy array is not allowed. "
            "Please use `.get()` to construct a NumPy array explicitly."
        )

    def __array_function__(self, func, types_, args, kwargs):
        return NotImplemented  # np.einsum(device array): TypeError

    # -- host transfers (counted)
    def get(self):
        _sync()
        return self._a.copy()

    def item(self):
        _sync()
        return self._a.item()

    def tolist(self):
        _sync()
        return self._a.tolist()

    def __float__(self):
        _sync()
        return float(self._a)

    def __int__(self):
        _sync()
        return int(self._a)

    def __bool__(self):
        _sync()
        return bool(self._a)

    def __index__(self):
        _sync()
        return self._a.__index__()

    # -- attributes and methods: NumPy's, on the device
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: ndarray(self._a.T))

    def __getattr__(self, name):
        if name.startswith("__"):  # __array_interface__ and friends: not for NumPy's eyes
            raise AttributeError(name)
        attr = getattr(self._a, name)
        if not callable(attr):
            return _wrap(attr)
        return lambda *a, **k: _wrap(attr(*_unwrap(a), **_unwrap(k)))

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (ndarray(np.asarray(r)) for r in self._a)

    def __repr__(self):
        return "fakecupy." + repr(self._a)

    def __getitem__(self, key):
        return _wrap(self._a[_unwrap(key, index=True)])

    def __setitem__(self, key, value):
        self._a[_unwrap(key, index=True)] = _operand(value)

    def __neg__(self):
        return ndarray(-self._a)

    def __pos__(self):
        return self

    def __abs__(self):
        return ndarray(np.abs(self._a))

    def __invert__(self):
        return ndarray(~self._a)


def _operand(x):
    """A device array's buffer, or a Python/NumPy scalar; a host ndarray is refused."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray):
        raise TypeError(f"Unsupported type {type(x)} (a host array mixed with a device array)")
    return x


def _binop(name):
    def op(self, other):
        return _wrap(getattr(self._a, name)(_operand(other)))

    return op


def _inplace(ufunc):
    def op(self, other):
        ufunc(self._a, _operand(other), out=self._a)
        return self

    return op


for _n in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or",
           "xor", "lshift", "rshift"):  # fmt: skip
    setattr(ndarray, f"__{_n}__", _binop(f"__{_n}__"))
    setattr(ndarray, f"__r{_n}__", _binop(f"__r{_n}__"))
for _n in ("lt", "le", "gt", "ge", "eq", "ne"):
    setattr(ndarray, f"__{_n}__", _binop(f"__{_n}__"))
for _n, _u in (("add", np.add), ("sub", np.subtract), ("mul", np.multiply),
               ("truediv", np.true_divide), ("pow", np.power), ("and", np.bitwise_and),
               ("or", np.bitwise_or)):  # fmt: skip
    setattr(ndarray, f"__i{_n}__", _inplace(_u))
ndarray.__hash__ = None
ndarray.__module__ = "cupy"  # what whitebox.backend looks at


def _wrap(r):
    """Results of NumPy calls as device arrays (scalars as 0-d arrays, like CuPy)."""
    if isinstance(r, np.ndarray):
        return ndarray(r)
    if isinstance(r, np.generic):
        return ndarray(np.asarray(r))
    if isinstance(r, tuple):
        return tuple(_wrap(x) for x in r)
    if isinstance(r, list):
        return [_wrap(x) for x in r]
    return r


def _unwrap(x, index=False):
    """Device arrays -> their buffers, recursively; host arrays refused (except as indices)."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray) and not index:
        raise TypeError(f"Unsupported type {type(x)} (a host array mixed with a device array)")
    if isinstance(x, tuple):
        return tuple(_unwrap(v, index) for v in x)
    if isinstance(x, list):
        return [_unwrap(v, index) for v in x]
    if isinstance(x, dict):
        return {k: _unwrap(v, index) for k, v in x.items()}
    return x


class _Ufunc:
    def __init__(self, u):
        self._u = u

    def __call__(self, *args, **kwargs):
        out = kwargs.get("out")
        r = self._u(*_unwrap(args), **_unwrap(kwargs))
        return out if isinstance(out, ndarray) else _wrap(r)

    def at(self, a, indices, b=None):
        args = (_unwrap(indices),) + (() if b is None else (_unwrap(b),))
        self._u.at(_unwrap(a), *args)

    def __getattr__(self, name):
        f = getattr(self._u, name)
        return lambda *a, **k: _wrap(f(*_unwrap(a), **_unwrap(k)))


class _Namespace(types.ModuleType):
    """numpy (or numpy.linalg, ...) as device functions."""

    def __init__(self, name, np_module):
        super().__init__(name)
        self._np = np_module

    def __getattr__(self, name):
        attr = getattr(self._np, name)
        if isinstance(attr, np.ufunc):
            return _Ufunc(attr)
        if isinstance(attr, types.ModuleType):
            return _Namespace(f"{self.__name__}.{name}", attr)
        if isinstance(attr, type) or not callable(attr):
            return attr
        return lambda *a, **k: _wrap(attr(*_unwrap(a), **_unwrap(k)))


# ---------------------------------------------------------------- host <-> device, creation


def asarray(a, dtype=None, order=None):
    if isinstance(a, ndarray):
        return a if dtype is None or a.dtype == dtype else ndarray(a._a.astype(dtype))
    return ndarray(np.array(a, dtype=dtype, order=order or "K", copy=True))  # a host->device copy


def array(a, dtype=None, copy=True, order="K"):
    if isinstance(a, ndarray):
        return ndarray(np.array(a._a, dtype=dtype, copy=True, order=order))
    return ndarray(np.array(a, dtype=dtype, copy=True, order=order))


def asnumpy(a):
    if isinstance(a, ndarray):
        return a.get()
    return np.asarray(a)


def ascontiguousarray(a, dtype=None):
    return ndarray(np.ascontiguousarray(_unwrap(a), dtype=dtype))


def is_available():
    return True


def get_array_module(*args):
    return sys.modules[__name__] if any(isinstance(a, ndarray) for a in args) else np


# ---------------------------------------------------------------- a little of cupy.cuda


class _Device:
    def __init__(self, device=0):
        self.id = int(device)
        self.attributes = {"MultiProcessorCount": MULTIPROCESSORS}
        self.compute_capability = "90"

    def synchronize(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _Event:
    def __init__(self, *a, **k):
        import time

        self._time = time.perf_counter
        self.t = None

    def record(self, stream=None):
        self.t = self._time()

    def synchronize(self):
        pass


def _elapsed(start, end):
    return (end.t - start.t) * 1e3


class _Runtime:
    @staticmethod
    def getDeviceCount():  # noqa: N802 (CUDA's name)
        return 1

    @staticmethod
    def driverGetVersion():  # noqa: N802
        return 13000

    @staticmethod
    def runtimeGetVersion():  # noqa: N802
        return 13000

    @staticmethod
    def getDeviceProperties(i):  # noqa: N802
        return {"name": b"fakecupy (NumPy on the CPU)", "totalGlobalMem": 1 << 34,
                "multiProcessorCount": MULTIPROCESSORS, "major": 9, "minor": 0}  # fmt: skip


class _MemoryPool:
    def free_all_blocks(self):
        pass

    def used_bytes(self):
        return 0


cuda = types.SimpleNamespace(
    Device=_Device, Event=_Event, get_elapsed_time=_elapsed, runtime=_Runtime(),
    Stream=types.SimpleNamespace(null=None),
)  # fmt: skip
_pool = _MemoryPool()


def get_default_memory_pool():
    return _pool


# ---------------------------------------------------------------- kernels and their twins

GRID_LIMITS = (2**31 - 1, 65535, 65535)


def _check_launch(name, grid, block, shared_mem):
    grid = tuple(grid) + (1,) * (3 - len(grid))
    block = tuple(block) + (1,) * (3 - len(block))
    if min(grid) < 1 or min(block) < 1:
        raise RuntimeError(f"{name}: CUDA_ERROR_INVALID_VALUE (zero-size launch {grid} {block})")
    if any(g > lim for g, lim in zip(grid, GRID_LIMITS)):
        raise RuntimeError(f"{name}: CUDA_ERROR_INVALID_VALUE (grid {grid} over the limits)")
    if np.prod(block) > 1024:
        raise RuntimeError(f"{name}: CUDA_ERROR_INVALID_VALUE (block {block} > 1024 threads)")
    if shared_mem > MAX_SHARED:
        raise RuntimeError(f"{name}: CUDA_ERROR_INVALID_VALUE (shared memory {shared_mem} B)")
    return grid, block


def _device_args(name, args, T):
    """The raw argument tuple: device arrays must be C-contiguous and of the kernel's T."""
    out = []
    for k, a in enumerate(args):
        if isinstance(a, np.ndarray):
            raise TypeError(f"{name}: argument {k} is a host numpy.ndarray (Unsupported type)")
        if isinstance(a, ndarray):
            if a.dtype != T:
                raise TypeError(f"{name}: argument {k} is {a.dtype}, the kernel reads {T}")
            if not a.flags.c_contiguous:
                raise TypeError(f"{name}: argument {k} is not C-contiguous")
            out.append(a._a.reshape(-1))  # the pointer: a flat view of the buffer
        else:
            out.append(int(a))
    return out


def _chunked(x, n, chunk, C):
    """(B, n, ...) -> (B, C, chunk, ...) zero-padded: the tokens of each block."""
    B = x.shape[0]
    pad = np.zeros((B, C * chunk - n) + x.shape[2:], x.dtype)
    return np.concatenate([x, pad], axis=1).reshape((B, C, chunk) + x.shape[2:])


def _put(out, partial, B, C, atomic):
    """partial: (B, C, width) -> out (B, C, width), or added into out (B, 1, width)."""
    width = partial.shape[-1]
    if atomic:
        out.reshape(B, width)[...] += partial.sum(axis=1)
    else:
        out.reshape(B, C, width)[...] = partial


def _cols_common(name, grid, block, n, D, chunk, C, total):
    B = total // (n * D)
    dtiles = -(-D // 32)
    if block != (32, 8, 1):
        raise AssertionError(f"{name}: the kernel indexes a (32, 8) block, got {block}")
    if grid != (B * C * dtiles, 1, 1):
        raise AssertionError(f"{name}: grid {grid} != ({B} C={C} x {dtiles} tiles,)")
    if C * chunk < n or (C - 1) * chunk >= n:
        raise AssertionError(f"{name}: {C} chunks of {chunk} do not tile {n} tokens")
    return B


def _twin_bias_colsq(grid, block, shared, args):
    w, bias, colsq, n, D, chunk, C, atomic = args
    B = _cols_common("tssa_bias_colsq", grid, block, n, D, chunk, C, w.size)
    w3 = w.reshape(B, n, D)
    w3 += bias
    _put(colsq, (_chunked(w3, n, chunk, C) ** 2).sum(axis=2), B, C, atomic)


def _twin_pwdy_colsum(grid, block, shared, args):
    w, dy, pi, g, n, D, H, chunk, C, atomic = args
    B = _cols_common("tssa_pwdy_colsum", grid, block, n, D, chunk, C, w.size)
    prod = pi.reshape(B, n, H).repeat(D // H, axis=2) * w.reshape(B, n, D) * dy.reshape(B, n, D)
    _put(g, _chunked(prod, n, chunk, C).sum(axis=2), B, C, atomic)


def _tokens_common(name, grid, block, shared, n, D, H, chunk, C, total, itemsize, vectors):
    B = total // (n * D)
    warps = block[0] // 32
    if block[0] % 32 or block[1:] != (1, 1):
        raise AssertionError(f"{name}: the kernel needs a 1-D block of whole warps, got {block}")
    if grid != (B * C, 1, 1):
        raise AssertionError(f"{name}: grid {grid} != ({B} x {C} chunks,)")
    if C * chunk < n or (C - 1) * chunk >= n:
        raise AssertionError(f"{name}: {C} chunks of {chunk} do not tile {n} tokens")
    need = (vectors * D + warps * D + 2 * warps * H) * itemsize
    if shared < need:
        raise AssertionError(f"{name}: {shared} B of shared memory, the kernel uses {need}")
    return B


def _twin_stats(grid, block, shared, args):
    w, inv_d2, temp, pi, a, pisum, snum, n, D, H, chunk, C, atomic = args
    B = _tokens_common("tssa_stats", grid, block, shared, n, D, H, chunk, C, w.size,
                       w.itemsize, 1)  # fmt: skip
    p = D // H
    w_sq = (w.reshape(B, n, D) ** 2).reshape(B, n, H, p)
    aa = np.einsum("bnhp,bhp->bnh", w_sq, inv_d2.reshape(B, H, p))
    z = temp * aa
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    pp = e / e.sum(axis=-1, keepdims=True)
    a[...], pi[...] = aa.reshape(-1), pp.reshape(-1)
    _put(pisum, _chunked(pp, n, chunk, C).sum(axis=2), B, C, atomic)
    sn = (pp[..., None] * w_sq).reshape(B, n, D)
    _put(snum, _chunked(sn, n, chunk, C).sum(axis=2), B, C, atomic)


def _twin_token_backward(grid, block, shared, args):
    w, dy, pi, a, u, v, kappa, temp, da, q, dtemp, n, D, H, chunk, C, atomic = args
    B = _tokens_common("tssa_token_backward", grid, block, shared, n, D, H, chunk, C, w.size,
                       w.itemsize, 2)  # fmt: skip
    p = D // H
    w4, dy4 = w.reshape(B, n, H, p), dy.reshape(B, n, H, p)
    pi3, a3 = pi.reshape(B, n, H), a.reshape(B, n, H)
    dpi = np.einsum("bnhp,bhp->bnh", w4 * dy4, u.reshape(B, H, p))
    dpi += np.einsum("bnhp,bhp->bnh", w4 * w4, v.reshape(B, H, p))
    dpi -= kappa.reshape(B, 1, H)
    dz = pi3 * (dpi - (pi3 * dpi).sum(axis=-1, keepdims=True))
    dah = dz * temp
    da[...] = dah.reshape(-1)
    qq = (dah[..., None] * w4 * w4).reshape(B, n, D)
    _put(q, _chunked(qq, n, chunk, C).sum(axis=2), B, C, atomic)
    _put(dtemp, _chunked(dz * a3, n, chunk, C).sum(axis=2), B, C, atomic)


_RAW_TWINS = {
    "tssa_bias_colsq": _twin_bias_colsq,
    "tssa_pwdy_colsum": _twin_pwdy_colsum,
    "tssa_stats": _twin_stats,
    "tssa_token_backward": _twin_token_backward,
}


class RawKernel:
    def __init__(self, code, name, options=(), backend="nvrtc"):
        if name not in _RAW_TWINS:
            raise ValueError(f"fakecupy: no NumPy twin for kernel {name!r}")
        if f"void {name}(" not in code:
            raise ValueError(f"fakecupy: {name!r} is not defined in the source")
        m = re.search(r"typedef\s+(float|double)\s+T\s*;", code)
        self.T = np.dtype(np.float32 if m is None or m.group(1) == "float" else np.float64)
        self.code, self.name = code, name

    def __call__(self, grid, block, args, shared_mem=0, **kwargs):
        grid, block = _check_launch(self.name, grid, block, shared_mem)
        _RAW_TWINS[self.name](grid, block, shared_mem, _device_args(self.name, args, self.T))


def _twin_output(w, pi, c, n, D, H, y):
    """The body, index arithmetic and all, over every i at once."""
    i = np.arange(y.size)
    row = i // D
    k = (row // n) * D + i % D
    y[...] = -pi[row * H + (i % D) // (D // H)] * w[i] * c[k]


def _twin_dw(w, dy, pi, da, r1, r2, r3, u, n, D, H, dw):
    i = np.arange(dw.size)
    row = i // D
    k = (row // n) * D + i % D
    rh = row * H + (i % D) // (D // H)
    ph = pi[rh]
    dw[...] = w[i] * (ph * r1[k] + da[rh] * r2[k] + r3[k]) + ph * u[k] * dy[i]


_ELEMENTWISE_TWINS = {"tssa_output": _twin_output, "tssa_dw": _twin_dw}


class ElementwiseKernel:
    def __init__(self, in_params, out_params, operation, name="kernel", **kwargs):
        if name not in _ELEMENTWISE_TWINS:
            raise ValueError(f"fakecupy: no NumPy twin for kernel {name!r}")
        self.n_in = len(in_params.split(","))
        self.name = name

    def __call__(self, *args):
        if len(args) != self.n_in + 1:
            raise TypeError(f"{self.name}: expected {self.n_in} inputs and the output")
        arrays = [a for a in args if isinstance(a, (ndarray, np.ndarray))]
        T = arrays[0].dtype
        flat = _device_args(self.name, args, T)
        out = args[-1]
        if out.size == 0:
            return out
        _ELEMENTWISE_TWINS[self.name](*flat)
        return out


# ---------------------------------------------------------------- installing it


def _erf(x):
    from scipy.special import erf

    return ndarray(erf(_unwrap(x)))


def modules():
    """sys.modules entries that make ``import cupy`` (and cupyx's erf) this stand-in."""
    me = sys.modules[__name__]
    special = types.ModuleType("cupyx.scipy.special")
    special.erf = _erf
    scipy_ = types.ModuleType("cupyx.scipy")
    scipy_.special = special
    cupyx = types.ModuleType("cupyx")
    cupyx.scipy = scipy_
    return {"cupy": me, "cupyx": cupyx, "cupyx.scipy": scipy_, "cupyx.scipy.special": special}


def install(monkeypatch=None):
    """Make ``import cupy`` this module (with pytest's ``monkeypatch``: undone after the test)."""
    from whitebox import kernels

    for k, m in modules().items():
        if monkeypatch is None:
            sys.modules[k] = m
        else:
            monkeypatch.setitem(sys.modules, k, m)
    if monkeypatch is None:
        kernels._cache.clear()
        kernels._sm_count.clear()
    else:
        monkeypatch.setattr(kernels, "_cache", {})
        monkeypatch.setattr(kernels, "_sm_count", {})
    reset_syncs()


_np_namespace = _Namespace(__name__, np)


def __getattr__(name):  # everything else: NumPy's function, on device arrays
    return getattr(_np_namespace, name)
