r"""Fused GPU kernels for the TSSA layer (CuPy), and a NumPy reference of each kernel.

The plain layer (``nn.tssa_forward``) is a handful of array operations; on a GPU each is one
kernel launch and one trip through memory. Here the part of the layer between its two
projections makes three trips in each direction, each a fused kernel. Three and not one,
because the layer needs two sums over *all* tokens with a dependency between them, and a sum
over all tokens is a barrier across the whole GPU (a kernel boundary):

forward (w: (B, n, D), head h owns the features d = h p .. h p + p - 1):

1. ``tssa_bias_colsq`` (RawKernel), fused into the bias add of the qkv projection:
   w += b_qkv;  colsq_{bd} = sum_j w_{bjd}^2                        (sum over tokens)
2. ``tssa_stats`` (RawKernel), one warp per token:
   a_{bjh} = sum_{d in h} w_{bjd}^2 / denom_{bd}^2,  Pi_{bjh} = softmax_h(temp_h a_{bjh}),
   and, summed over the tokens with atomics, pisum_{bh} = sum_j Pi_{bjh},
   snum_{bd} = sum_j Pi_{bjh(d)} w_{bjd}^2                           (the token statistics)
3. ``tssa_output`` (ElementwiseKernel):  y_{bjd} = -Pi_{bjh(d)} w_{bjd} c_{bd},
   c = 1 / (1 + snum / (pisum + 1e-8))

backward (dy = dout W_out^T):

1. ``tssa_pwdy_colsum`` (RawKernel):  g_{bd} = sum_j Pi_{bjh(d)} w_{bjd} dy_{bjd}   (= -dc)
2. ``tssa_token_backward`` (RawKernel), one warp per token: with u = -c, ds = c^2 g,
   v = ds / pisum', kappa_{bh} = sum_{d in h} ds_{bd} s_{bd} / pisum'_{bh}:
   dPi_{bjh} = sum_{d in h} (u_d w dy + v_d w^2) - kappa_{bh}   (the statistics' path folded
   in: sum_j dpi_bar_j Pi_j = sum_d ds_d snum_d), dz = softmax backward, da = temp dz;
   summed over the tokens: q_{bd} = sum_j da_{bjh(d)} w_{bjd}^2, dtemp_h = sum dz a
3. ``tssa_dw`` (ElementwiseKernel):
   dw = w (Pi r1 + da r2 + r3) + Pi u dy,  r1 = 2 ds / pisum', r2 = 2 / denom^2,
   r3 = d||w||/dw coefficient (``dnorm``)

The (B, D) and (B, H) vectors between the kernels are computed with ordinary array code; the
(B, n, D) arrays are read three times per direction (``bench.py`` compares that with the
bandwidth floor of reading w (and dy) once and writing y (dw) once).

Every kernel also exists as a NumPy function (``_*_reference``) with the same inputs, outputs
and algebra, vectorized over the tokens instead of one warp per token. With
``REFERENCE_ON_CPU = True`` NumPy arrays take that path through ``nn.tssa_forward`` /
``nn.tssa_backward``, so the tests exercise the fused algebra (gradient checks included)
on a machine without a GPU; on a GPU the tests compare the kernels with the plain path.

Dispatch (:func:`fused_impl`): CuPy float32/float64 inputs use the kernels while ``FUSED`` is
True (the default); ``FUSED = False`` selects the plain array code. Nothing here imports CuPy
at import time: the kernels are compiled at their first use.
"""

from __future__ import annotations

import numpy as np

from .backend import _is_cupy_array, get_array_module, require_gpu

FUSED = True
"""Use the fused kernels for CuPy arrays; False selects the plain array path of ``nn``."""

REFERENCE_ON_CPU = False
"""Send NumPy arrays through the NumPy reference of the kernels (for tests; slower)."""

TOKENS_PER_BLOCK = 256
"""Tokens handled by one thread block in the kernels that sum over tokens."""

THREADS = 256
"""Threads per block of the warp-per-token kernels (8 warps)."""

MAX_SHARED_BYTES = 48 * 1024
"""Static shared-memory limit of a block; larger D falls back to the plain path."""

_FLOATS = ("float32", "float64")


def _shared_bytes(D, H, itemsize):
    return (3 * D + H + (THREADS // 32) * H) * itemsize


def fused_impl(x, num_heads):
    """'gpu' (CuPy kernels), 'reference' (their NumPy reference) or None (plain path) for the
    TSSA layer on x: (B, n, D) with ``num_heads`` heads."""
    if x.dtype.name not in _FLOATS:
        return None
    if _is_cupy_array(x):
        fits = _shared_bytes(x.shape[-1], num_heads, x.dtype.itemsize) <= MAX_SHARED_BYTES
        return "gpu" if FUSED and fits else None
    return "reference" if REFERENCE_ON_CPU else None


# --------------------------------------------------------------------------------------------
# CUDA sources (T is float or double)
# --------------------------------------------------------------------------------------------

_COLSUM_SRC = r"""
// w += bias; colsq[b, d] += sum over this block's tokens of w^2.  grid (ceil(D/32), chunks, B)
extern "C" __global__ void tssa_bias_colsq(T* w, const T* bias, T* colsq,
                                           const int n, const int D, const int chunk) {
    const int d = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    const int b = (int)blockIdx.z;
    if (d >= D) return;
    const int j0 = (int)blockIdx.y * chunk, j1 = min(j0 + chunk, n);
    const T bd = bias[d];
    T acc = 0;
    for (int j = j0 + (int)threadIdx.y; j < j1; j += (int)blockDim.y) {
        const long long k = ((long long)b * n + j) * D + d;
        const T v = w[k] + bd;
        w[k] = v;
        acc += v * v;
    }
    atomicAdd(&colsq[(long long)b * D + d], acc);
}

// g[b, d] += sum over this block's tokens of Pi[b, j, h(d)] w dy.
extern "C" __global__ void tssa_pwdy_colsum(const T* w, const T* dy, const T* pi, T* g,
                                            const int n, const int D, const int H,
                                            const int chunk) {
    const int d = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    const int b = (int)blockIdx.z;
    if (d >= D) return;
    const int h = d / (D / H);
    const int j0 = (int)blockIdx.y * chunk, j1 = min(j0 + chunk, n);
    T acc = 0;
    for (int j = j0 + (int)threadIdx.y; j < j1; j += (int)blockDim.y) {
        const long long row = (long long)b * n + j;
        const long long k = row * D + d;
        acc += pi[row * H + h] * w[k] * dy[k];
    }
    atomicAdd(&g[(long long)b * D + d], acc);
}
"""

_TOKEN_SRC = r"""
__device__ __forceinline__ T warp_sum(T x) {
    for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
    return x;
}

// One warp per token. a, Pi: (B, n, H); pisum: (B, H); snum: (B, D). grid (chunks, B).
extern "C" __global__ void tssa_stats(const T* w, const T* inv_d2, const T* temp, T* pi, T* a,
                                      T* pisum, T* snum, const int n, const int D, const int H,
                                      const int chunk) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* s_inv = (T*)smem_raw;       // D
    T* s_snum = s_inv + D;         // D
    T* s_pisum = s_snum + D;       // H
    T* s_head = s_pisum + H;       // (warps, H)
    const int b = (int)blockIdx.y, p = D / H;
    const int lane = (int)threadIdx.x & 31, warp = (int)threadIdx.x >> 5;
    const int nwarps = (int)blockDim.x >> 5;
    for (int d = (int)threadIdx.x; d < D; d += (int)blockDim.x) {
        s_inv[d] = inv_d2[(long long)b * D + d];
        s_snum[d] = 0;
    }
    for (int h = (int)threadIdx.x; h < H; h += (int)blockDim.x) s_pisum[h] = 0;
    __syncthreads();
    T* my = s_head + warp * H;
    const int j0 = (int)blockIdx.x * chunk, j1 = min(j0 + chunk, n);
    for (int j = j0 + warp; j < j1; j += nwarps) {
        const long long row = (long long)b * n + j;
        const T* wj = w + row * D;
        for (int h = 0; h < H; ++h) {  // a_h = sum over the head of w^2 / denom^2
            T part = 0;
            for (int i = lane; i < p; i += 32) {
                const T v = wj[h * p + i];
                part += v * v * s_inv[h * p + i];
            }
            part = warp_sum(part);
            if (lane == 0) my[h] = part;
        }
        __syncwarp();
        T m = temp[0] * my[0];  // softmax over the heads, every lane (H is small)
        for (int h = 1; h < H; ++h) m = fmax(m, temp[h] * my[h]);
        T z = 0;
        for (int h = 0; h < H; ++h) z += exp(temp[h] * my[h] - m);
        __syncwarp();
        for (int h = lane; h < H; h += 32) {
            const T ah = my[h];
            const T ph = exp(temp[h] * ah - m) / z;
            a[row * H + h] = ah;
            pi[row * H + h] = ph;
            atomicAdd(&s_pisum[h], ph);
            my[h] = ph;
        }
        __syncwarp();
        for (int d = lane; d < D; d += 32) {
            const T v = wj[d];
            atomicAdd(&s_snum[d], my[d / p] * v * v);
        }
        __syncwarp();
    }
    __syncthreads();
    for (int d = (int)threadIdx.x; d < D; d += (int)blockDim.x)
        atomicAdd(&snum[(long long)b * D + d], s_snum[d]);
    for (int h = (int)threadIdx.x; h < H; h += (int)blockDim.x)
        atomicAdd(&pisum[(long long)b * H + h], s_pisum[h]);
}

// One warp per token: dPi, the softmax backward, da (B, n, H); q (B, D) += sum_j da w^2;
// dtemp (H,) += sum dz a.
extern "C" __global__ void tssa_token_backward(const T* w, const T* dy, const T* pi,
                                               const T* a, const T* u, const T* v,
                                               const T* kappa, const T* temp, T* da, T* q,
                                               T* dtemp, const int n, const int D,
                                               const int H, const int chunk) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* s_u = (T*)smem_raw;      // D
    T* s_v = s_u + D;           // D
    T* s_q = s_v + D;           // D
    T* s_dtemp = s_q + D;       // H
    T* s_head = s_dtemp + H;    // (warps, H)
    const int b = (int)blockIdx.y, p = D / H;
    const int lane = (int)threadIdx.x & 31, warp = (int)threadIdx.x >> 5;
    const int nwarps = (int)blockDim.x >> 5;
    for (int d = (int)threadIdx.x; d < D; d += (int)blockDim.x) {
        s_u[d] = u[(long long)b * D + d];
        s_v[d] = v[(long long)b * D + d];
        s_q[d] = 0;
    }
    for (int h = (int)threadIdx.x; h < H; h += (int)blockDim.x) s_dtemp[h] = 0;
    __syncthreads();
    T* my = s_head + warp * H;
    const int j0 = (int)blockIdx.x * chunk, j1 = min(j0 + chunk, n);
    for (int j = j0 + warp; j < j1; j += nwarps) {
        const long long row = (long long)b * n + j;
        const T* wj = w + row * D;
        const T* gj = dy + row * D;
        for (int h = 0; h < H; ++h) {  // dPi_h
            T part = 0;
            for (int i = lane; i < p; i += 32) {
                const int d = h * p + i;
                const T x = wj[d];
                part += x * (s_u[d] * gj[d] + s_v[d] * x);
            }
            part = warp_sum(part);
            if (lane == 0) my[h] = part - kappa[(long long)b * H + h];
        }
        __syncwarp();
        T dot = 0;  // sum_h Pi_h dPi_h
        for (int h = 0; h < H; ++h) dot += pi[row * H + h] * my[h];
        __syncwarp();
        for (int h = lane; h < H; h += 32) {
            const T dz = pi[row * H + h] * (my[h] - dot);
            atomicAdd(&s_dtemp[h], dz * a[row * H + h]);
            const T dah = dz * temp[h];
            da[row * H + h] = dah;
            my[h] = dah;
        }
        __syncwarp();
        for (int d = lane; d < D; d += 32) {
            const T x = wj[d];
            atomicAdd(&s_q[d], my[d / p] * x * x);
        }
        __syncwarp();
    }
    __syncthreads();
    for (int d = (int)threadIdx.x; d < D; d += (int)blockDim.x)
        atomicAdd(&q[(long long)b * D + d], s_q[d]);
    for (int h = (int)threadIdx.x; h < H; h += (int)blockDim.x) atomicAdd(&dtemp[h], s_dtemp[h]);
}
"""

_OUTPUT_BODY = """
const ptrdiff_t row = i / D;  // b n + j
const ptrdiff_t k = (row / n) * D + i % D;  // (b, d)
y = -pi[row * H + (i % D) / (D / H)] * w[i] * c[k];
"""

_DW_BODY = """
const ptrdiff_t row = i / D;
const ptrdiff_t k = (row / n) * D + i % D;
const ptrdiff_t rh = row * H + (i % D) / (D / H);
const T ph = pi[rh];
dw = w[i] * (ph * r1[k] + da[rh] * r2[k] + r3[k]) + ph * u[k] * dy[i];
"""

_cache: dict = {}


def _raw(name, dtype):
    """The RawKernel ``name`` for ``dtype`` (compiled once per process)."""
    key = (name, np.dtype(dtype).name)
    if key not in _cache:
        cupy = require_gpu()
        ctype = "float" if key[1] == "float32" else "double"
        src = _COLSUM_SRC if name in ("tssa_bias_colsq", "tssa_pwdy_colsum") else _TOKEN_SRC
        _cache[key] = cupy.RawKernel(f"typedef {ctype} T;\n" + src, name)
    return _cache[key]


def _elementwise(name):
    if name not in _cache:
        cupy = require_gpu()
        if name == "tssa_output":
            _cache[name] = cupy.ElementwiseKernel(
                "raw T w, raw T pi, raw T c, int32 n, int32 D, int32 H", "T y", _OUTPUT_BODY, name
            )
        else:
            _cache[name] = cupy.ElementwiseKernel(
                "raw T w, raw T dy, raw T pi, raw T da, raw T r1, raw T r2, raw T r3, raw T u, "
                "int32 n, int32 D, int32 H",
                "T dw",
                _DW_BODY,
                name,
            )
    return _cache[name]


def _i32(*v):
    return tuple(np.int32(x) for x in v)


def _column_grid(B, n, D):
    return ((D + 31) // 32, (n + TOKENS_PER_BLOCK - 1) // TOKENS_PER_BLOCK, B), (32, 8, 1)


def _token_grid(B, n):
    return ((n + TOKENS_PER_BLOCK - 1) // TOKENS_PER_BLOCK, B), (THREADS,)


# --------------------------------------------------------------------------------------------
# The kernels' steps: GPU version and NumPy reference side by side
# --------------------------------------------------------------------------------------------


def _bias_colsq_reference(w, bias):
    """w += bias (in place); returns colsq (B, D) = sum over tokens of w^2."""
    w += bias
    return (w * w).sum(axis=1)


def _bias_colsq_gpu(w, bias):
    cupy = get_array_module(w)
    B, n, D = w.shape
    colsq = cupy.zeros((B, D), dtype=w.dtype)
    grid, block = _column_grid(B, n, D)
    _raw("tssa_bias_colsq", w.dtype)(grid, block, (w, bias, colsq, *_i32(n, D, TOKENS_PER_BLOCK)))
    return colsq


def _stats_reference(w, inv_d2, temp):
    """w (B, n, D), inv_d2 (B, D), temp (H,) -> Pi, a (B, n, H), pisum (B, H), snum (B, D)."""
    xp = get_array_module(w)
    B, n, D = w.shape
    H = temp.shape[0]
    w_sq = (w * w).reshape(B, n, H, D // H)  # (B, n, H, p)
    a = xp.einsum("bnhp,bhp->bnh", w_sq, inv_d2.reshape(B, H, D // H))
    z = temp * a
    e = xp.exp(z - z.max(axis=-1, keepdims=True))
    pi = e / e.sum(axis=-1, keepdims=True)  # (B, n, H)
    snum = xp.einsum("bnh,bnhp->bhp", pi, w_sq).reshape(B, D)
    return pi, a, pi.sum(axis=1), snum


def _stats_gpu(w, inv_d2, temp):
    cupy = get_array_module(w)
    B, n, D = w.shape
    H = temp.shape[0]
    pi = cupy.empty((B, n, H), dtype=w.dtype)
    a = cupy.empty((B, n, H), dtype=w.dtype)
    pisum = cupy.zeros((B, H), dtype=w.dtype)
    snum = cupy.zeros((B, D), dtype=w.dtype)
    grid, block = _token_grid(B, n)
    args = (w, inv_d2, temp, pi, a, pisum, snum, *_i32(n, D, H, TOKENS_PER_BLOCK))
    shared = _shared_bytes(D, H, w.dtype.itemsize)
    _raw("tssa_stats", w.dtype)(grid, block, args, shared_mem=shared)
    return pi, a, pisum, snum


def _output_reference(w, pi, c):
    """y = -Pi w c: w (B, n, D), Pi (B, n, H), c (B, D)."""
    B, n, D = w.shape
    H = pi.shape[-1]
    y = -pi[..., None] * w.reshape(B, n, H, D // H) * c.reshape(B, 1, H, D // H)
    return y.reshape(B, n, D)


def _output_gpu(w, pi, c):
    cupy = get_array_module(w)
    B, n, D = w.shape
    y = cupy.empty_like(w)
    _elementwise("tssa_output")(w, pi, c, n, D, pi.shape[-1], y)
    return y


def _pwdy_colsum_reference(w, dy, pi):
    """g (B, D) = sum_j Pi_{h(d)} w dy."""
    xp = get_array_module(w)
    B, n, D = w.shape
    H = pi.shape[-1]
    w4, dy4 = w.reshape(B, n, H, D // H), dy.reshape(B, n, H, D // H)
    return xp.einsum("bnh,bnhp,bnhp->bhp", pi, w4, dy4).reshape(B, D)


def _pwdy_colsum_gpu(w, dy, pi):
    cupy = get_array_module(w)
    B, n, D = w.shape
    g = cupy.zeros((B, D), dtype=w.dtype)
    grid, block = _column_grid(B, n, D)
    _raw("tssa_pwdy_colsum", w.dtype)(
        grid, block, (w, dy, pi, g, *_i32(n, D, pi.shape[-1], TOKENS_PER_BLOCK))
    )
    return g


def _token_backward_reference(w, dy, pi, a, u, v, kappa, temp):
    """-> da (B, n, H), q (B, D) = sum_j da w^2, dtemp (H,) = sum dz a (see the module doc)."""
    xp = get_array_module(w)
    B, n, D = w.shape
    H = pi.shape[-1]
    p = D // H
    w4, dy4 = w.reshape(B, n, H, p), dy.reshape(B, n, H, p)
    w_sq = w4 * w4
    dpi = xp.einsum("bnhp,bhp->bnh", w4 * dy4, u.reshape(B, H, p))
    dpi += xp.einsum("bnhp,bhp->bnh", w_sq, v.reshape(B, H, p))
    dpi -= kappa[:, None, :]
    dz = pi * (dpi - (pi * dpi).sum(axis=-1, keepdims=True))
    da = dz * temp
    q = xp.einsum("bnh,bnhp->bhp", da, w_sq).reshape(B, D)
    return da, q, (dz * a).sum(axis=(0, 1))


def _token_backward_gpu(w, dy, pi, a, u, v, kappa, temp):
    cupy = get_array_module(w)
    B, n, D = w.shape
    H = pi.shape[-1]
    da = cupy.empty((B, n, H), dtype=w.dtype)
    q = cupy.zeros((B, D), dtype=w.dtype)
    dtemp = cupy.zeros((H,), dtype=w.dtype)
    grid, block = _token_grid(B, n)
    args = (w, dy, pi, a, u, v, kappa, temp, da, q, dtemp, *_i32(n, D, H, TOKENS_PER_BLOCK))
    shared = _shared_bytes(D, H, w.dtype.itemsize)
    _raw("tssa_token_backward", w.dtype)(grid, block, args, shared_mem=shared)
    return da, q, dtemp


def _dw_reference(w, dy, pi, da, r1, r2, r3, u):
    """dw = w (Pi r1 + da r2 + r3) + Pi u dy; Pi, da (B, n, H); r1, r2, r3, u (B, D)."""
    B, n, D = w.shape
    H = pi.shape[-1]
    p = D // H
    w4, dy4 = w.reshape(B, n, H, p), dy.reshape(B, n, H, p)
    r1, r2, r3, u = (r.reshape(B, 1, H, p) for r in (r1, r2, r3, u))
    dw = w4 * (pi[..., None] * r1 + da[..., None] * r2 + r3) + pi[..., None] * u * dy4
    return dw.reshape(B, n, D)


def _dw_gpu(w, dy, pi, da, r1, r2, r3, u):
    cupy = get_array_module(w)
    B, n, D = w.shape
    dw = cupy.empty_like(w)
    _elementwise("tssa_dw")(w, dy, pi, da, r1, r2, r3, u, n, D, pi.shape[-1], dw)
    return dw


_STEPS = {
    "reference": dict(
        bias_colsq=_bias_colsq_reference, stats=_stats_reference, output=_output_reference,
        pwdy_colsum=_pwdy_colsum_reference, token_backward=_token_backward_reference,
        dw=_dw_reference,
    ),
    "gpu": dict(
        bias_colsq=_bias_colsq_gpu, stats=_stats_gpu, output=_output_gpu,
        pwdy_colsum=_pwdy_colsum_gpu, token_backward=_token_backward_gpu, dw=_dw_gpu,
    ),
}  # fmt: skip


# --------------------------------------------------------------------------------------------
# The layer on the fused steps (called by nn.tssa_forward / nn.tssa_backward)
# --------------------------------------------------------------------------------------------


def _contiguous(xp, a, dtype):
    return xp.ascontiguousarray(a, dtype=dtype)


def tssa_forward_fused(x, params, impl):
    """``nn.tssa_forward`` through the fused steps ``impl`` ('gpu' or 'reference').
    Same outputs; the cache carries ``'fused'`` so that ``nn.tssa_backward`` follows."""
    from . import nn

    xp = get_array_module(x)
    step = _STEPS[impl]
    B, n, D = x.shape
    H = params["temp"].shape[0]
    p = D // H
    W = params["qkv.weight"]
    w = (x.reshape(-1, D) @ W).reshape(B, n, D)  # (B, n, D); the bias is added by step 1
    dt = w.dtype
    temp = _contiguous(xp, params["temp"][:, 0], dt)  # (H,)
    col_sq = step["bias_colsq"](w, _contiguous(xp, params["qkv.bias"], dt))  # (B, D)
    col_norm = xp.sqrt(col_sq)
    denom = xp.maximum(col_norm, nn.TSSA_NORM_FLOOR)
    inv_denom_sq = 1.0 / (denom * denom)  # (B, D)
    pi, a, pisum, snum = step["stats"](w, inv_denom_sq, temp)  # (B, n, H) x2, (B, H), (B, D)
    pi_sum = pisum + nn.MEMBERSHIP_EPS  # (B, H)
    s = snum / xp.repeat(pi_sum, p, axis=1)  # (B, D)
    c = 1.0 / (1.0 + s)
    y = step["output"](w, pi, c)  # (B, n, D)
    out, proj_cache = nn.linear_forward(y, nn._sub(params, "proj"))
    cache = dict(
        fused=impl, qkv=(x, W), proj=proj_cache, w=w, pi=pi.transpose(0, 2, 1),
        a=a.transpose(0, 2, 1), pi_sum=pi_sum, s=s, c=c, col_norm=col_norm, denom=denom,
        inv_denom_sq=inv_denom_sq, temp=temp, pi_tok=pi, a_tok=a,
    )  # fmt: skip
    return out, cache


def tssa_backward_fused(dout, cache):
    """``nn.tssa_backward`` for a cache made by :func:`tssa_forward_fused`."""
    from . import nn

    xp = get_array_module(dout)
    step = _STEPS[cache["fused"]]
    w, pi, a, c, s = cache["w"], cache["pi_tok"], cache["a_tok"], cache["c"], cache["s"]
    B, n, D = w.shape
    H = pi.shape[-1]
    p = D // H
    dy, g_proj = nn.linear_backward(dout, cache["proj"])  # (B, n, D)
    dy = xp.ascontiguousarray(dy, dtype=w.dtype)
    g = step["pwdy_colsum"](w, dy, pi)  # (B, D): -dc
    ds = c * c * g  # ds = -c^2 dc
    pi_sum_d = xp.repeat(cache["pi_sum"], p, axis=1)  # (B, D)
    u = -c
    v = ds / pi_sum_d
    kappa = (ds * s).reshape(B, H, p).sum(axis=-1) / cache["pi_sum"]  # (B, H)
    da, q, dtemp = step["token_backward"](w, dy, pi, a, u, v, kappa, cache["temp"])
    inv_d2, denom = cache["inv_denom_sq"], cache["denom"]
    ddenom = -2.0 * q * inv_d2 / denom
    dnorm = ddenom * (cache["col_norm"] >= nn.TSSA_NORM_FLOOR) / denom
    dw = step["dw"](w, dy, pi, da, 2.0 * ds / pi_sum_d, 2.0 * inv_d2, dnorm, u)
    dx, g_qkv = nn.linear_backward(dw, cache["qkv"])
    grads = {**nn._prefixed(g_qkv, "qkv"), "temp": dtemp[:, None], **nn._prefixed(g_proj, "proj")}
    return dx, grads
