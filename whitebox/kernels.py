r"""Fused GPU kernels for the TSSA layer (CuPy), and a NumPy reference of each kernel.

The plain layer (``nn.tssa_forward``) is a handful of array operations; on a GPU each is one
kernel launch and one trip through memory. Here the part of the layer *between* its two
projections makes three trips in each direction, each a fused kernel (``nn`` does the two
projections and hands the rest to :func:`tssa_core_forward` / :func:`tssa_core_backward`, so
this module depends on ``backend`` alone). Three and not one, because the layer needs two
sums over *all* tokens with a dependency between them, and a sum over all tokens is a barrier
across the whole GPU (a kernel boundary):

forward (w: (B, n, D) = x W_qkv, head h owns the features d = h p .. h p + p - 1):

1. ``tssa_bias_colsq`` (RawKernel), fused into the bias add of the qkv projection:
   w += b_qkv;  colsq_{bd} = sum_j w_{bjd}^2                        (sum over tokens)
2. ``tssa_stats`` (RawKernel), one warp per token:
   a_{bjh} = sum_{d in h} w_{bjd}^2 / denom_{bd}^2,  Pi_{bjh} = softmax_h(temp_h a_{bjh}),
   and, summed over the tokens, pisum_{bh} = sum_j Pi_{bjh},
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

Launch layout. The tokens of each batch element are cut into ``C`` chunks, one thread block
per (chunk, batch element) (and per 32 features in the column kernels); ``C`` is chosen so
that the grid covers at least :data:`BLOCKS_PER_SM` blocks per multiprocessor of the device
(a batch of 8 short sequences still fills an H100), and the grid is one-dimensional, so no
batch size or sequence length runs into the 65,535 limit of grid.y / grid.z.

Sums over tokens, deterministic by default (:data:`DETERMINISTIC`). Inside a block every
partial sum has one owner (a thread, or a lane of a warp) and the owners are added in a fixed
order; each block writes its partial sums to its own row of a (B, C, ...) buffer, and an
ordinary array reduction adds the C rows. No float atomics, so the same inputs give the same
bits on every run. ``DETERMINISTIC = False`` adds the block partials into one (B, ...) buffer
with ``atomicAdd`` instead (one launch and one buffer fewer; the order of the additions, and
so the last bits, vary between runs). The cost of the deterministic default has not been
measured on a GPU yet (``benchmarks/gpu_check.py`` measures both).

Every kernel also exists as a NumPy function (``_*_reference``) with the same inputs, outputs
and algebra, vectorized over the tokens instead of one warp per token. With
``REFERENCE_ON_CPU = True`` NumPy arrays take that path through ``nn.tssa_forward`` /
``nn.tssa_backward``, so the tests exercise the fused algebra (gradient checks included)
on a machine without a GPU; on a GPU the tests compare the kernels with the plain path.

Dispatch (:func:`fused_impl`): CuPy float32/float64 inputs whose weights share their dtype use
the kernels while ``FUSED`` is True (the default); ``FUSED = False`` selects the plain array
code, and so do the cases the kernels do not cover (no tokens, a D too large for shared
memory). Nothing here imports CuPy at import time: the kernels are compiled at their first use.
"""

from __future__ import annotations

import numpy as np

from .backend import _is_cupy_array, get_array_module, require_gpu

FUSED = True
"""Use the fused kernels for CuPy arrays; False selects the plain array path of ``nn``."""

REFERENCE_ON_CPU = False
"""Send NumPy arrays through the NumPy reference of the kernels (for tests; slower)."""

DETERMINISTIC = True
"""Sum over tokens in a fixed order (bitwise repeatable); False: atomics across blocks."""

TOKENS_PER_BLOCK = 256
"""Most tokens one thread block handles in the kernels that sum over tokens (fewer when the
batch is small: see :data:`BLOCKS_PER_SM`)."""

BLOCKS_PER_SM = 2
"""The token kernels' grid covers at least this many blocks per multiprocessor."""

THREADS = 256
"""Threads per block of the warp-per-token kernels (8 warps)."""

WARPS = THREADS // 32

MAX_SHARED_BYTES = 48 * 1024
"""Static shared-memory limit of a block; larger D falls back to the plain path."""

MAX_GRID_X = 2**31 - 1
"""CUDA's limit on grid.x (the kernels use a one-dimensional grid)."""

_FLOATS = ("float32", "float64")


def _shared_bytes(D, H, itemsize):
    """Dynamic shared memory of the larger of the two token kernels (``tssa_token_backward``:
    u, v (D each), per-warp q (WARPS D), per-warp dtemp and head scratch (2 WARPS H))."""
    return (2 * D + WARPS * D + 2 * WARPS * H) * itemsize


def fused_impl(x, num_heads, weights=()):
    """'gpu' (CuPy kernels), 'reference' (their NumPy reference) or None (plain path) for the
    TSSA layer on x: (B, n, D) with ``num_heads`` heads and parameter arrays ``weights``.

    The kernels run in x's dtype, so every weight must share it (else the plain path, which
    promotes); they need D % H == 0 (a ValueError otherwise, on either path)."""
    D = x.shape[-1]
    if num_heads < 1 or D % num_heads:
        raise ValueError(f"num_heads: the dim D={D} must be divisible by num_heads={num_heads}")
    if x.ndim != 3 or x.dtype.name not in _FLOATS:
        return None
    if any(w.dtype != x.dtype or _is_cupy_array(w) != _is_cupy_array(x) for w in weights):
        return None
    if x.size == 0:  # no tokens, or an empty batch: nothing to launch
        return None
    if _is_cupy_array(x):
        fits = _shared_bytes(D, num_heads, x.dtype.itemsize) <= MAX_SHARED_BYTES
        return "gpu" if FUSED and fits else None
    return "reference" if REFERENCE_ON_CPU else None


# --------------------------------------------------------------------------------------------
# CUDA sources (T is float or double)
# --------------------------------------------------------------------------------------------

# Shared by every RawKernel: block -> (b, chunk) of a one-dimensional grid, and where a block's
# partial sum of feature d goes (its own row of out (B, C, D), or atomically into out (B, D)).
_COMMON_SRC = r"""
__device__ __forceinline__ void put_partial(T* out, const T v, const int b, const int c,
                                            const int C, const int D, const int d,
                                            const int atomic) {
    if (atomic) atomicAdd(&out[(long long)b * D + d], v);
    else out[((long long)b * C + c) * D + d] = v;
}
"""

_COLSUM_SRC = r"""
// One block per (32 features, chunk c of C, batch b), blockDim (32, 8); block index
// bid = (b C + c) dtiles + tile. The 8 rows of a block sum strided tokens; row 0 adds the
// 8 row sums in a fixed order.
#define COL_ROWS 8

// w += bias; colsq[b, d] = sum_j w^2.
extern "C" __global__ void tssa_bias_colsq(T* w, const T* bias, T* colsq, const int n,
                                           const int D, const int chunk, const int C,
                                           const int atomic) {
    __shared__ T s_acc[COL_ROWS][32];
    const int dtiles = (D + 31) / 32;
    const long long bid = (long long)blockIdx.x;
    const int tile = (int)(bid % dtiles);
    const int c = (int)((bid / dtiles) % C);
    const int b = (int)(bid / ((long long)dtiles * C));
    const int d = tile * 32 + (int)threadIdx.x;
    T acc = 0;
    if (d < D) {
        const int j0 = c * chunk, j1 = min(j0 + chunk, n);
        const T bd = bias[d];
        for (int j = j0 + (int)threadIdx.y; j < j1; j += COL_ROWS) {
            const long long k = ((long long)b * n + j) * D + d;
            const T v = w[k] + bd;
            w[k] = v;
            acc += v * v;
        }
    }
    s_acc[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && d < D) {
        T sum = 0;
        for (int r = 0; r < COL_ROWS; ++r) sum += s_acc[r][threadIdx.x];
        put_partial(colsq, sum, b, c, C, D, d, atomic);
    }
}

// g[b, d] = sum_j Pi[b, j, h(d)] w dy.
extern "C" __global__ void tssa_pwdy_colsum(const T* w, const T* dy, const T* pi, T* g,
                                            const int n, const int D, const int H,
                                            const int chunk, const int C, const int atomic) {
    __shared__ T s_acc[COL_ROWS][32];
    const int dtiles = (D + 31) / 32;
    const long long bid = (long long)blockIdx.x;
    const int tile = (int)(bid % dtiles);
    const int c = (int)((bid / dtiles) % C);
    const int b = (int)(bid / ((long long)dtiles * C));
    const int d = tile * 32 + (int)threadIdx.x;
    T acc = 0;
    if (d < D) {
        const int h = d / (D / H);
        const int j0 = c * chunk, j1 = min(j0 + chunk, n);
        for (int j = j0 + (int)threadIdx.y; j < j1; j += COL_ROWS) {
            const long long row = (long long)b * n + j;
            const long long k = row * D + d;
            acc += pi[row * H + h] * w[k] * dy[k];
        }
    }
    s_acc[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && d < D) {
        T sum = 0;
        for (int r = 0; r < COL_ROWS; ++r) sum += s_acc[r][threadIdx.x];
        put_partial(g, sum, b, c, C, D, d, atomic);
    }
}
"""

_TOKEN_SRC = r"""
__device__ __forceinline__ T warp_sum(T x) {
    for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
    return x;
}

// One warp per token, one block per (chunk c of C, batch b): bid = b C + c.
// Lane l of a warp owns the features d = l (mod 32) and the heads h = l (mod 32) of the
// warp's partial sums (no two lanes add into one place); the warps' partials are added in
// warp order at the end.
// a, Pi: (B, n, H); pisum: (B, [C,] H); snum: (B, [C,] D).
extern "C" __global__ void tssa_stats(const T* w, const T* inv_d2, const T* temp, T* pi, T* a,
                                      T* pisum, T* snum, const int n, const int D, const int H,
                                      const int chunk, const int C, const int atomic) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const int nwarps = (int)blockDim.x >> 5;
    T* s_inv = (T*)smem_raw;            // D
    T* s_snum = s_inv + D;              // (warps, D)
    T* s_pisum = s_snum + nwarps * D;   // (warps, H)
    T* s_head = s_pisum + nwarps * H;   // (warps, H)
    const int b = (int)(blockIdx.x / C), c = (int)(blockIdx.x % C), p = D / H;
    const int lane = (int)threadIdx.x & 31, warp = (int)threadIdx.x >> 5;
    for (int d = (int)threadIdx.x; d < D; d += (int)blockDim.x)
        s_inv[d] = inv_d2[(long long)b * D + d];
    for (int k = (int)threadIdx.x; k < nwarps * D; k += (int)blockDim.x) s_snum[k] = 0;
    for (int k = (int)threadIdx.x; k < nwarps * H; k += (int)blockDim.x) s_pisum[k] = 0;
    __syncthreads();
    T* my = s_head + warp * H;
    T* my_snum = s_snum + warp * D;
    T* my_pisum = s_pisum + warp * H;
    const int j0 = c * chunk, j1 = min(j0 + chunk, n);
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
            my_pisum[h] += ph;
            my[h] = ph;
        }
        __syncwarp();
        for (int d = lane; d < D; d += 32) {
            const T v = wj[d];
            my_snum[d] += my[d / p] * v * v;
        }
        __syncwarp();
    }
    __syncthreads();
    for (int d = (int)threadIdx.x; d < D; d += (int)blockDim.x) {
        T sum = 0;
        for (int k = 0; k < nwarps; ++k) sum += s_snum[k * D + d];
        put_partial(snum, sum, b, c, C, D, d, atomic);
    }
    for (int h = (int)threadIdx.x; h < H; h += (int)blockDim.x) {
        T sum = 0;
        for (int k = 0; k < nwarps; ++k) sum += s_pisum[k * H + h];
        put_partial(pisum, sum, b, c, C, H, h, atomic);
    }
}

// One warp per token: dPi, the softmax backward, da (B, n, H); q (B, [C,] D) = sum_j da w^2;
// dtemp (B, [C,] H) = sum_j dz a (the caller adds the batch rows).
extern "C" __global__ void tssa_token_backward(const T* w, const T* dy, const T* pi,
                                               const T* a, const T* u, const T* v,
                                               const T* kappa, const T* temp, T* da, T* q,
                                               T* dtemp, const int n, const int D,
                                               const int H, const int chunk, const int C,
                                               const int atomic) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const int nwarps = (int)blockDim.x >> 5;
    T* s_u = (T*)smem_raw;               // D
    T* s_v = s_u + D;                    // D
    T* s_q = s_v + D;                    // (warps, D)
    T* s_dtemp = s_q + nwarps * D;       // (warps, H)
    T* s_head = s_dtemp + nwarps * H;    // (warps, H)
    const int b = (int)(blockIdx.x / C), c = (int)(blockIdx.x % C), p = D / H;
    const int lane = (int)threadIdx.x & 31, warp = (int)threadIdx.x >> 5;
    for (int d = (int)threadIdx.x; d < D; d += (int)blockDim.x) {
        s_u[d] = u[(long long)b * D + d];
        s_v[d] = v[(long long)b * D + d];
    }
    for (int k = (int)threadIdx.x; k < nwarps * D; k += (int)blockDim.x) s_q[k] = 0;
    for (int k = (int)threadIdx.x; k < nwarps * H; k += (int)blockDim.x) s_dtemp[k] = 0;
    __syncthreads();
    T* my = s_head + warp * H;
    T* my_q = s_q + warp * D;
    T* my_dtemp = s_dtemp + warp * H;
    const int j0 = c * chunk, j1 = min(j0 + chunk, n);
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
            my_dtemp[h] += dz * a[row * H + h];
            const T dah = dz * temp[h];
            da[row * H + h] = dah;
            my[h] = dah;
        }
        __syncwarp();
        for (int d = lane; d < D; d += 32) {
            const T x = wj[d];
            my_q[d] += my[d / p] * x * x;
        }
        __syncwarp();
    }
    __syncthreads();
    for (int d = (int)threadIdx.x; d < D; d += (int)blockDim.x) {
        T sum = 0;
        for (int k = 0; k < nwarps; ++k) sum += s_q[k * D + d];
        put_partial(q, sum, b, c, C, D, d, atomic);
    }
    for (int h = (int)threadIdx.x; h < H; h += (int)blockDim.x) {
        T sum = 0;
        for (int k = 0; k < nwarps; ++k) sum += s_dtemp[k * H + h];
        put_partial(dtemp, sum, b, c, C, H, h, atomic);
    }
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

RAW_KERNELS = {
    "tssa_bias_colsq": _COLSUM_SRC,
    "tssa_pwdy_colsum": _COLSUM_SRC,
    "tssa_stats": _TOKEN_SRC,
    "tssa_token_backward": _TOKEN_SRC,
}
"""RawKernel name -> its source (without the ``typedef ... T;`` and the common helpers)."""

ELEMENTWISE_KERNELS = {
    "tssa_output": ("raw T w, raw T pi, raw T c, int32 n, int32 D, int32 H", "T y", _OUTPUT_BODY),
    "tssa_dw": (
        "raw T w, raw T dy, raw T pi, raw T da, raw T r1, raw T r2, raw T r3, raw T u, "
        "int32 n, int32 D, int32 H",
        "T dw",
        _DW_BODY,
    ),
}
"""ElementwiseKernel name -> (in_params, out_params, body)."""


def raw_source(name, dtype):
    """The full CUDA source of RawKernel ``name`` for ``dtype`` (float32 or float64)."""
    ctype = "float" if np.dtype(dtype).name == "float32" else "double"
    return f"typedef {ctype} T;\n" + _COMMON_SRC + RAW_KERNELS[name]


_cache: dict = {}


def _raw(name, dtype):
    """The RawKernel ``name`` for ``dtype`` (compiled once per process)."""
    key = (name, np.dtype(dtype).name)
    if key not in _cache:
        cupy = require_gpu()
        _cache[key] = cupy.RawKernel(raw_source(name, dtype), name)
    return _cache[key]


def _elementwise(name):
    if name not in _cache:
        cupy = require_gpu()
        _cache[name] = cupy.ElementwiseKernel(*ELEMENTWISE_KERNELS[name], name)
    return _cache[name]


def _i32(*v):
    return tuple(np.int32(x) for x in v)


_sm_count: dict = {}


def multiprocessor_count(cupy):
    """Multiprocessors of the current CuPy device (cached per device)."""
    dev = cupy.cuda.Device()
    if dev.id not in _sm_count:
        _sm_count[dev.id] = int(dev.attributes["MultiProcessorCount"])
    return _sm_count[dev.id]


def token_chunks(B, n, sms):
    """(chunk, C): tokens per block and chunks per batch element. At most
    ``TOKENS_PER_BLOCK`` tokens a block, and enough chunks that B C >= BLOCKS_PER_SM * sms
    (but at least one token per warp)."""
    C = max(-(-n // TOKENS_PER_BLOCK), -(-BLOCKS_PER_SM * sms // B))
    chunk = max(min(n, WARPS), n // C)  # rounding down keeps at least C chunks
    return chunk, -(-n // chunk)


def _check_ptrs(dtype, **arrays):
    """Every pointer argument of a RawKernel: a C-contiguous array of the kernel's dtype."""
    for name, a in arrays.items():
        if a.dtype != dtype or not a.flags.c_contiguous:
            raise ValueError(
                f"{name}: the kernel needs a C-contiguous {dtype} array, got "
                f"{a.dtype} (c_contiguous={a.flags.c_contiguous})"
            )


def _launch_config(cupy, B, n, D=None):
    """(chunk, C, out_rows, atomic, blocks) for a kernel over (B, n[, D tiles])."""
    chunk, C = token_chunks(B, n, multiprocessor_count(cupy))
    blocks = B * C * (1 if D is None else (D + 31) // 32)
    if blocks > MAX_GRID_X:
        raise ValueError(f"x: {B} x {n} tokens need {blocks} thread blocks > {MAX_GRID_X}")
    atomic = not DETERMINISTIC
    return chunk, C, (1 if atomic else C), atomic, blocks


def _partials(cupy, rows, B, width, dtype, atomic):
    """The buffer the blocks write their partial sums to: (B, rows, width)."""
    return (cupy.zeros if atomic else cupy.empty)((B, rows, width), dtype=dtype)


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
    _check_ptrs(w.dtype, w=w, bias=bias)
    chunk, C, rows, atomic, blocks = _launch_config(cupy, B, n, D)
    colsq = _partials(cupy, rows, B, D, w.dtype, atomic)
    args = (w, bias, colsq, *_i32(n, D, chunk, C, atomic))
    _raw("tssa_bias_colsq", w.dtype)((blocks,), (32, 8), args)
    return colsq.sum(axis=1)


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
    _check_ptrs(w.dtype, w=w, inv_d2=inv_d2, temp=temp)
    chunk, C, rows, atomic, blocks = _launch_config(cupy, B, n)
    pi = cupy.empty((B, n, H), dtype=w.dtype)
    a = cupy.empty((B, n, H), dtype=w.dtype)
    pisum = _partials(cupy, rows, B, H, w.dtype, atomic)
    snum = _partials(cupy, rows, B, D, w.dtype, atomic)
    args = (w, inv_d2, temp, pi, a, pisum, snum, *_i32(n, D, H, chunk, C, atomic))
    shared = _shared_bytes(D, H, w.dtype.itemsize)
    _raw("tssa_stats", w.dtype)((blocks,), (THREADS,), args, shared_mem=shared)
    return pi, a, pisum.sum(axis=1), snum.sum(axis=1)


def _output_reference(w, pi, c):
    """y = -Pi w c: w (B, n, D), Pi (B, n, H), c (B, D)."""
    B, n, D = w.shape
    H = pi.shape[-1]
    y = -pi[..., None] * w.reshape(B, n, H, D // H) * c.reshape(B, 1, H, D // H)
    return y.reshape(B, n, D)


def _output_gpu(w, pi, c):
    cupy = get_array_module(w)
    B, n, D = w.shape
    _check_ptrs(w.dtype, w=w, pi=pi, c=c)
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
    _check_ptrs(w.dtype, w=w, dy=dy, pi=pi)
    chunk, C, rows, atomic, blocks = _launch_config(cupy, B, n, D)
    g = _partials(cupy, rows, B, D, w.dtype, atomic)
    args = (w, dy, pi, g, *_i32(n, D, pi.shape[-1], chunk, C, atomic))
    _raw("tssa_pwdy_colsum", w.dtype)((blocks,), (32, 8), args)
    return g.sum(axis=1)


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
    _check_ptrs(w.dtype, w=w, dy=dy, pi=pi, a=a, u=u, v=v, kappa=kappa, temp=temp)
    chunk, C, rows, atomic, blocks = _launch_config(cupy, B, n)
    da = cupy.empty((B, n, H), dtype=w.dtype)
    q = _partials(cupy, rows, B, D, w.dtype, atomic)
    dtemp = _partials(cupy, rows, B, H, w.dtype, atomic)
    args = (w, dy, pi, a, u, v, kappa, temp, da, q, dtemp, *_i32(n, D, H, chunk, C, atomic))
    shared = _shared_bytes(D, H, w.dtype.itemsize)
    _raw("tssa_token_backward", w.dtype)((blocks,), (THREADS,), args, shared_mem=shared)
    return da, q.sum(axis=1), dtemp.reshape(-1, H).sum(axis=0)


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
    _check_ptrs(w.dtype, w=w, dy=dy, pi=pi, da=da, r1=r1, r2=r2, r3=r3, u=u)
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
# The layer between its two projections (called by nn.tssa_forward / nn.tssa_backward)
# --------------------------------------------------------------------------------------------


def tssa_core_forward(w, bias, temp, impl, norm_floor, membership_eps):
    """The TSSA layer between its projections, through the fused steps ``impl``.

    w: (B, n, D) = x W_qkv *without* the bias, C-contiguous; the bias (D,) is added in place.
    temp: (H, 1). ``norm_floor`` and ``membership_eps`` are ``nn.TSSA_NORM_FLOOR`` and
    ``nn.MEMBERSHIP_EPS``. Returns y: (B, n, D) (= -Pi w c, heads merged) and the cache for
    :func:`tssa_core_backward`; ``cache['pi_tok']``/``['a_tok']`` are Pi and a (B, n, H)."""
    xp = get_array_module(w)
    step = _STEPS[impl]
    B, n, D = w.shape
    H = temp.shape[0]
    p = D // H
    dt = w.dtype
    temp = xp.ascontiguousarray(temp[:, 0], dtype=dt)  # (H,)
    col_sq = step["bias_colsq"](w, xp.ascontiguousarray(bias, dtype=dt))  # (B, D)
    col_norm = xp.sqrt(col_sq)
    denom = xp.maximum(col_norm, norm_floor)
    inv_denom_sq = 1.0 / (denom * denom)  # (B, D)
    pi, a, pisum, snum = step["stats"](w, inv_denom_sq, temp)  # (B, n, H) x2, (B, H), (B, D)
    pi_sum = pisum + membership_eps  # (B, H)
    s = snum / xp.repeat(pi_sum, p, axis=1)  # (B, D)
    c = 1.0 / (1.0 + s)
    y = step["output"](w, pi, c)  # (B, n, D)
    cache = dict(
        impl=impl, w=w, pi_tok=pi, a_tok=a, pi_sum=pi_sum, s=s, c=c, col_norm=col_norm,
        denom=denom, inv_denom_sq=inv_denom_sq, temp=temp, norm_floor=norm_floor,
    )  # fmt: skip
    return y, cache


def tssa_core_backward(dy, cache):
    """Backward of :func:`tssa_core_forward`. dy: (B, n, D) = dout W_out^T.
    Returns dw: (B, n, D) (the gradient of x W_qkv + b_qkv) and dtemp: (H, 1)."""
    xp = get_array_module(dy)
    step = _STEPS[cache["impl"]]
    w, pi, a, c, s = cache["w"], cache["pi_tok"], cache["a_tok"], cache["c"], cache["s"]
    B, n, D = w.shape
    H = pi.shape[-1]
    p = D // H
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
    dnorm = ddenom * (cache["col_norm"] >= cache["norm_floor"]) / denom
    dw = step["dw"](w, dy, pi, da, 2.0 * ds / pi_sum_d, 2.0 * inv_d2, dnorm, u)
    return dw, dtemp[:, None]
