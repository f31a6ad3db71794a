r"""Layers with hand-written backward passes: the Token Statistics Transformer and its baseline.

Layout: arrays are (B, n, D) = (batch, tokens, dim), as in PyTorch; multi-head arrays are
(B, H, n, p) with p = D / H. (The objective functions in ``whitebox.mcr2`` use the paper's
(d, n) layout instead.)

The contract (CS231n ``layers.py``): every layer is a pair of pure functions

    y, cache = xxx_forward(x, params)          params: dict name -> array
    dx, grads = xxx_backward(dy, cache)        grads: same keys as params

with the backward right below its forward. A backward never modifies the ``dy`` it receives.
Thin stateful modules wrap the pairs: ``forward(x)`` keeps the cache, ``backward(dy)`` returns
dx and stores the parameter gradients in ``module.grads``. Their base class, with the one
validation policy every module follows, is :class:`whitebox.module.Module`; the optimizer, the
schedule and gradient clipping are in ``whitebox.optim``. Both are re-exported here
(``nn.Module``, ``nn.AdamW``, ``nn.CHECK_INPUTS``, ...) for code written before the split.

The learned TSSA layer follows the public ToST code (``AttentionTSSA`` and the nanoGPT
``CausalSelfAttention``) operation for operation, including its two small constants
:data:`TSSA_NORM_FLOOR` and :data:`MEMBERSHIP_EPS`.

Weight decay: each module lists its decayed local names in ``decay`` (the weights of
:class:`Linear` and :class:`Embedding`; see ``whitebox.optim``).
"""

from __future__ import annotations

import math
import sys

import numpy as np

from . import kernels
from . import module as _policy
from .backend import erf, get_array_module
from .module import (  # noqa: F401  (BackwardBeforeForwardError: re-exported)
    BackwardBeforeForwardError,
    Module,
    ModuleList,
    _refuse_overflow,
)
from .optim import AdamW, clip_grad_norm, cosine_lr  # noqa: F401  (re-exported)

LAYERNORM_EPS = 1e-5
"""Default LayerNorm epsilon: PyTorch's default, as in the public ToST *language* model
(``LayerNorm(..., eps=1e-5)``). The public vision models use 1e-6 (``ToSTCAB``, ``ln_eps``)."""

TSSA_NORM_FLOOR = 1e-12
"""Floor on each head column's norm over the tokens: w / max(||w_{.,i}||, 1e-12)
(``F.normalize``'s eps); also the clamp on the causal prefix sums of w^2."""

MEMBERSHIP_EPS = 1e-8
"""Added to sum_j Pi_hj before normalizing the membership weights (and to cumsum_t Pi)."""

INIT_STD = 0.02
"""Standard deviation of the normal initialization of weights and embeddings (nanoGPT, ViT)."""


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _erf(x):
    """The error function, elementwise, in the dtype of ``x`` (see ``backend.erf``; SciPy's
    answers a float16 input in float64)."""
    return erf(x).astype(x.dtype, copy=False)


def _softmax(z, axis):
    """Numerically stable softmax along ``axis``."""
    xp = get_array_module(z)
    e = xp.exp(z - z.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


def _softmax_backward(dy, y, axis):
    """Gradient through y = softmax(z) along ``axis``: y * (dy - sum(dy * y))."""
    return y * (dy - (dy * y).sum(axis=axis, keepdims=True))


def _reverse_cumsum(a, axis):
    """sum_{s >= t} a_s along ``axis`` (the adjoint of ``cumsum``)."""
    xp = get_array_module(a)
    return xp.flip(xp.cumsum(xp.flip(a, axis=axis), axis=axis), axis=axis)


def _sub(params, prefix):
    """The entries ``prefix.weight``/``prefix.bias`` of a flat dict as {'weight', 'bias'}
    (bias None when the layer has none)."""
    return {"weight": params[prefix + ".weight"], "bias": params.get(prefix + ".bias")}


def _prefixed(grads, prefix):
    """{'weight': a, 'bias': b} -> {'prefix.weight': a, 'prefix.bias': b}."""
    return {f"{prefix}.{k}": v for k, v in grads.items()}


def _check_tokens(x, dim, name="x"):
    """Validate the shape (B, n, dim) (ValueError naming the problem). The values are checked
    once, where the outermost module is called (see :class:`Module`)."""
    if getattr(x, "ndim", None) != 3 or x.shape[-1] != dim:
        raise ValueError(
            f"{name}: expected shape (B, n, {dim}), got {getattr(x, 'shape', type(x).__name__)}"
        )


def _as_dtype(x, dtype):
    """``x`` in ``dtype`` (no copy when it already is)."""
    return x if x.dtype == dtype else x.astype(dtype)


# --------------------------------------------------------------------------------------------
# Pure forward/backward pairs
# --------------------------------------------------------------------------------------------


def linear_forward(x, params):
    """y = x W + b.

    x: (..., d_in); params: 'weight' (d_in, d_out) (CS231n layout, the transpose of PyTorch's
    ``nn.Linear.weight``), 'bias' (d_out,) or absent / None (no bias, y = x W). Returns
    y: (..., d_out). The cache is (x, W), or (x, W, False) without a bias."""
    W, b = params["weight"], params.get("bias")
    d_in, d_out = W.shape
    y = x.reshape(-1, d_in) @ W  # (N, d_out): one large matrix product
    if b is None:
        return y.reshape(*x.shape[:-1], d_out), (x, W, False)
    y += b
    return y.reshape(*x.shape[:-1], d_out), (x, W)


def linear_backward(dy, cache):
    """dx = dy W^T, dW = x^T dy, db = sum dy (over all leading axes; only with a bias)."""
    x, W, *no_bias = cache
    d_in, d_out = W.shape
    x2 = x.reshape(-1, d_in)  # (N, d_in)
    dy2 = dy.reshape(-1, d_out)  # (N, d_out)
    grads = {"weight": x2.T @ dy2}
    if not no_bias:
        grads["bias"] = dy2.sum(axis=0)
    return (dy2 @ W.T).reshape(x.shape), grads


def layernorm_forward(x, params, eps=LAYERNORM_EPS):
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the last axis (biased variance).

    x: (..., D); params: 'weight' (D,), 'bias' (D,) or absent / None (no bias, as nanoGPT's
    ``LayerNorm(ndim, bias=False)``)."""
    xp = get_array_module(x)
    mu = x.mean(axis=-1, keepdims=True)  # (..., 1)
    xc = x - mu
    var = (xc * xc).mean(axis=-1, keepdims=True)
    rstd = 1.0 / xp.sqrt(var + eps)  # (..., 1)
    xhat = xc * rstd
    y = xhat * params["weight"]
    b = params.get("bias")
    if b is not None:
        y += b
    return y, (xhat, rstd, params["weight"], b is not None)


def layernorm_backward(dy, cache):
    """dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * weight."""
    xhat, rstd, weight, has_bias = cache
    D = xhat.shape[-1]
    g = dy * weight
    dx = rstd * (
        g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True)
    )
    grads = {"weight": (dy * xhat).reshape(-1, D).sum(axis=0)}
    if has_bias:
        grads["bias"] = dy.reshape(-1, D).sum(axis=0)
    return dx, grads


def gelu_forward(x, params=None):
    """Exact GELU (PyTorch's default): y = x Phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2."""
    cdf = _erf(x * (1.0 / math.sqrt(2.0)))  # a fresh array: finished in place
    cdf += 1.0
    cdf *= 0.5
    return x * cdf, (x, cdf)


def gelu_backward(dy, cache):
    """dy/dx = Phi(x) + x phi(x), phi the standard normal density. No parameters."""
    xp = get_array_module(dy)
    x, cdf = cache
    g = x * x  # one fresh array, finished in place: dy (cdf + x pdf), rounded as written
    g *= -0.5
    xp.exp(g, out=g)
    g *= 1.0 / math.sqrt(2.0 * math.pi)  # pdf
    g *= x
    g += cdf
    g *= dy
    return g, {}


def dropout_mask(rng, shape, rate, dtype=np.float64):
    """Inverted-dropout keep mask: 1 / (1 - rate) with probability 1 - rate, else 0
    (``nn.Dropout``; DropPath uses shape (B, 1, 1): one draw per sample). ``rng``: a NumPy
    Generator (seeded, so runs stay reproducible)."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"rate: expected a value in [0, 1), got {rate}")
    return ((rng.random(shape) >= rate) / (1.0 - rate)).astype(dtype)


def dropout_forward(x, mask):
    """y = x * mask (mask from :func:`dropout_mask`, broadcastable to x)."""
    return x * mask, mask


def dropout_backward(dy, cache):
    """dx = dy * mask. No parameters."""
    return dy * cache, {}


def embedding_forward(idx, params):
    """y = W[idx]. idx: integer (...); params: 'weight' (num_embeddings, D). Returns (..., D)."""
    W = params["weight"]
    return W[idx], (idx, W.shape)


def embedding_backward(dy, cache):
    """dW[v] = sum of dy over the positions where idx == v. No input gradient.

    NumPy adds in position order (``add.at``). CuPy's scatter-add uses float atomics, whose
    order (and so last bits) changes from run to run; on the GPU dW = onehot(idx)^T dy is a
    matrix product instead, in chunks of at most 2^26 one-hot entries: the same bits every run."""
    idx, shape = cache
    xp = get_array_module(dy)
    V, D = shape
    ids, rows = idx.reshape(-1), dy.reshape(-1, D)
    if xp is np:
        dW = np.zeros(shape, dtype=dy.dtype)
        np.add.at(dW, ids, rows)
        return None, {"weight": dW}
    dW, step, vocab = None, max(1, 2**26 // V), xp.arange(V)
    for start in range(0, ids.size, step):
        onehot = (ids[start : start + step, None] == vocab[None, :]).astype(dy.dtype)
        part = onehot.T @ rows[start : start + step]
        dW = part if dW is None else dW + part
    return None, {"weight": dW if dW is not None else xp.zeros(shape, dtype=dy.dtype)}


def cross_entropy(logits, targets, label_smoothing=0.0, ignore_index=None, as_array=False):
    r"""Mean cross-entropy over all positions and its gradient.

    logits: (..., C); targets: integer (...) in [0, C). With smoothing eps the target
    distribution is q = (1 - eps) onehot + eps / C (PyTorch's ``label_smoothing``):
    loss = mean_positions( logsumexp(z) - sum_c q_c z_c ),  dlogits = (softmax(z) - q) / N.
    ``ignore_index`` (e.g. -1, as nanoGPT's loss): positions with that target count neither in
    the mean nor in N and get zero gradient (``F.cross_entropy(..., ignore_index=-1)``; all
    positions ignored gives NaN there, here loss 0 and zero gradient).
    Returns (loss: float, dlogits: (..., C) in the dtype of ``logits``); with ``as_array`` the
    loss is a 0-d array on the device of ``logits`` (no wait for the GPU)."""
    if ignore_index is not None:
        keep = targets != ignore_index
        if not bool(keep.all()):
            xp = get_array_module(logits)
            if targets.shape != logits.shape[:-1]:
                raise ValueError(
                    f"targets: expected shape {logits.shape[:-1]}, got {targets.shape}"
                )
            dz = xp.zeros(logits.shape, dtype=logits.dtype)
            if not bool(keep.any()):
                return (xp.zeros((), dtype=logits.dtype) if as_array else 0.0), dz
            loss, dkept = cross_entropy(
                logits[keep], targets[keep], label_smoothing, as_array=as_array
            )
            dz[keep] = dkept
            return loss, dz
    xp = get_array_module(logits)
    C = logits.shape[-1]
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"targets: expected shape {logits.shape[:-1]}, got {targets.shape}")
    if targets.dtype.kind not in "iu":
        raise ValueError(f"targets: expected an integer array, got dtype {targets.dtype}")
    if (
        _policy.CHECK_INPUTS
        and targets.size
        and (int(targets.min()) < 0 or int(targets.max()) >= C)
    ):
        raise ValueError(
            f"targets: class ids must lie in [0, {C}), got range "
            f"[{int(targets.min())}, {int(targets.max())}]"
        )
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing: expected a value in [0, 1], got {label_smoothing}")
    z = logits.reshape(-1, C)  # (N, C)
    t = targets.reshape(-1)  # (N,)
    N = z.shape[0]
    shifted = z - z.max(axis=1, keepdims=True)
    lse = xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))  # (N, 1)
    logp = shifted - lse  # (N, C)
    rows = xp.arange(N)
    nll = -logp[rows, t]
    loss = (1.0 - label_smoothing) * nll.mean()
    if label_smoothing:
        loss = loss + label_smoothing * (-logp.mean(axis=1)).mean()
    dz = xp.exp(logp)
    if label_smoothing:
        dz -= label_smoothing / C
    dz[rows, t] -= 1.0 - label_smoothing
    dz *= 1.0 / N
    return (loss if as_array else float(loss)), dz.reshape(logits.shape)


# ---- TSSA (the paper's TSSA operator; ``AttentionTSSA`` of the public code) -------------------


def tssa_forward(x, params, g_mask=None):
    r"""Token Statistics Self-Attention, as the public ToST code computes it.

    x: (B, n, D). params: 'qkv.weight' (D, D), 'qkv.bias' (D,), 'temp' (H, 1),
    'proj.weight' (D, D), 'proj.bias' (D,). H = temp.shape[0] heads of size p = D / H.

        w       = x W_qkv + b_qkv, split into heads                       (B, H, n, p)
        w_hat   = w / max(||w_{.,i}||_2 over tokens, 1e-12)                 (column-normalized)
        Pi_{hj} = softmax_h( temp_h sum_i w_hat_{hji}^2 )    (B, H, n)  (the code's "Eq. 10")
        y_{hi}  = sum_j Pi_{hj} / (sum_j' Pi_{hj'} + 1e-8) w_{hji}^2      the token statistics
        g_{hi}  = 1 / (1 + y_{hi})                                          the gains
        v_{hji} = -Pi_{hj} g_{hi} w_{hji}                                   the head outputs
        out     = merge_heads(v) W_out + b_out                               (B, n, D)

    (Notation of ``notebooks/README.md``: the public code calls y ``dots`` and g ``attn``.)

    Layout, for speed (issue 7): w stays as the projection writes it, (B, n, D) viewed as
    (B, n, H, p), so splitting and merging the heads copies nothing; per-token quantities
    (scores, Pi) are (B, n, H). Every sum over tokens or over a head's features is one
    single-pass ``einsum`` (no temporary array); element-wise products write into reused
    buffers. On CuPy arrays with ``whitebox.kernels.FUSED`` the part between the two
    projections runs as fused GPU kernels (``whitebox.kernels``) instead.

    ``g_mask`` (B, H, p), optional: attention dropout as the public code applies it, on the
    factor g = 1 / (1 + y) (``attn_drop(attn)``): g is replaced by g * g_mask, with g_mask the
    dropout's keep mask divided by (1 - rate) (see :func:`dropout_mask`).

    Returns (out, cache); ``cache['pi']`` is Pi (B, H, n) and ``cache['a']`` the scores
    sum_i w_hat^2 (B, H, n) (transposed views of the (B, n, H) arrays)."""
    xp = get_array_module(x)
    B, n, D = x.shape
    H = params["temp"].shape[0]
    p = D // H
    # the fused kernels between the two projections (they add the qkv bias: with one only)
    fusable = "qkv.bias" in params and g_mask is None  # no dropout mask in the kernels
    impl = kernels.fused_impl(x, H, tuple(params.values())) if fusable else None
    if impl is not None:
        W = params["qkv.weight"]
        w = (x.reshape(-1, D) @ W).reshape(B, n, D)  # (B, n, D); the kernels add the bias
        v, core = kernels.tssa_core_forward(
            w, params["qkv.bias"], params["temp"], impl, TSSA_NORM_FLOOR, MEMBERSHIP_EPS
        )
        out, proj_cache = linear_forward(v, _sub(params, "proj"))
        pi, a = core["pi_tok"].transpose(0, 2, 1), core["a_tok"].transpose(0, 2, 1)
        return out, dict(fused=impl, core=core, qkv=(x, W), proj=proj_cache, pi=pi, a=a)
    w, qkv_cache = linear_forward(x, _sub(params, "qkv"))  # (B, n, D)
    w_sq = w * w
    w4, w_sq4 = w.reshape(B, n, H, p), w_sq.reshape(B, n, H, p)  # (B, n, H, p) views
    col_norm = xp.sqrt(w_sq4.sum(axis=1))  # (B, H, p): ||w_{.,i}|| over the tokens
    denom = xp.maximum(col_norm, TSSA_NORM_FLOOR)
    inv_denom_sq = 1.0 / (denom * denom)  # (B, H, p)
    a = xp.einsum("bnhp,bhp->bnh", w_sq4, inv_denom_sq)  # (B, n, H): sum_i w_hat^2
    pi = _softmax(a * params["temp"][:, 0], axis=2)  # (B, n, H), softmax over heads
    pi_sum = pi.sum(axis=1, keepdims=True) + MEMBERSHIP_EPS  # (B, 1, H)
    pi_bar = pi / pi_sum  # (B, n, H)
    y = xp.einsum("bnh,bnhp->bhp", pi_bar, w_sq4)  # (B, H, p): the token statistics
    g = 1.0 / (1.0 + y)  # (B, H, p)
    g_raw = g
    if g_mask is not None:
        g = g * g_mask  # attention dropout on the factor
    neg_pi_g = pi[..., None] * -g[:, None]  # (B, n, H, p): -Pi_{hj} g_{hi}
    v = neg_pi_g * w4  # (B, n, H, p), heads already merged in memory
    out, proj_cache = linear_forward(v.reshape(B, n, D), _sub(params, "proj"))
    cache = dict(
        qkv=qkv_cache, proj=proj_cache, w=w4, w_sq=w_sq4, col_norm=col_norm, denom=denom,
        inv_denom_sq=inv_denom_sq, a=a.transpose(0, 2, 1), temp=params["temp"],
        pi=pi.transpose(0, 2, 1), pi_sum=pi_sum, pi_bar=pi_bar, y=y, g=g, neg_pi_g=neg_pi_g,
        g_raw=g_raw, g_mask=g_mask, v=v,
    )  # fmt: skip
    return out, cache


def tssa_backward(dout, cache):
    """Backward of :func:`tssa_forward`. dout: (B, n, D). Returns (dx, grads)."""
    if "fused" in cache:
        dv, g_proj = linear_backward(dout, cache["proj"])  # (B, n, D)
        dw, dtemp = kernels.tssa_core_backward(dv, cache["core"])
        dx, g_qkv = linear_backward(dw, cache["qkv"])
        return dx, {**_prefixed(g_qkv, "qkv"), "temp": dtemp, **_prefixed(g_proj, "proj")}
    xp = get_array_module(dout)
    w, w_sq, g = cache["w"], cache["w_sq"], cache["g"]
    pi = cache["pi"].transpose(0, 2, 1)  # (B, n, H)
    B, n, H, p = w.shape
    dv_flat, g_proj = linear_backward(dout, cache["proj"])  # (B, n, D), a fresh array
    dv = dv_flat.reshape(B, n, H, p)
    # First the gradients of the small factors (per token and head, per coordinate), then dw.
    # v = -Pi w g
    tmp = w * dv  # (B, n, H, p); reused below as scratch
    dpi = -xp.einsum("bnhp,bhp->bnh", tmp, g)  # (B, n, H)
    dg = -xp.einsum("bnh,bnhp->bhp", pi, tmp)  # (B, H, p)
    v = cache["v"]  # -Pi g w, the head outputs
    if cache.get("g_mask") is not None:  # g = g_raw * mask
        dg = dg * cache["g_mask"]
        g = cache["g_raw"]
        v = (pi[..., None] * -g[:, None]) * w  # -Pi g_raw w (the path through y sees g_raw)
    # g = 1 / (1 + y), so dy = -g^2 dg. For large tokens g^2 ~ 1/|w|^4 underflows float32 from
    # |w| ~ 1e10 on (dy itself ~ 1/|w|^3), so dy is never formed: e = g dg and the
    # per-head-and-image scale kappa = max_i (1 + s_i) keep every factor in range.
    e = g * dg  # (B, H, p), ~ n dv / |w|
    kappa = (1.0 + cache["y"]).max(axis=2, keepdims=True)  # (B, H, 1)
    dy_kappa = -(kappa * g) * e  # kappa dy; kappa g >= 1
    # y = sum_j pi_bar_j w_j^2:  dpi_bar_j = sum_i w_ji^2 dy_i
    dpi_bar = xp.einsum("bnhp,bhp->bnh", w_sq, dy_kappa) / kappa[:, None, :, 0]  # (B, n, H)
    # pi_bar = Pi / (sum_j Pi + eps)
    pi_sum = cache["pi_sum"]  # (B, 1, H)
    dpi += dpi_bar / pi_sum - (dpi_bar * pi).sum(axis=1, keepdims=True) / (pi_sum * pi_sum)
    # Pi = softmax over heads of temp * a
    dz = _softmax_backward(dpi, pi, axis=2)  # (B, n, H)
    dtemp = (dz * cache["a"].transpose(0, 2, 1)).sum(axis=(0, 1))[:, None]  # (H, 1)
    da = dz * cache["temp"][:, 0]  # (B, n, H)
    # a_j = sum_i w_ji^2 / denom_i^2, denom_i = max(||w_{.,i}||, floor)
    inv_d2, denom = cache["inv_denom_sq"], cache["denom"]
    inv_denom = 1.0 / denom
    ddenom = -2.0 * xp.einsum("bnh,bnhp->bhp", da, w_sq) * inv_d2 * inv_denom  # (B, H, p)
    # the clamp passes the gradient only where norm >= floor (torch.clamp_min); there norm > 0
    ddenom *= cache["col_norm"] >= TSSA_NORM_FLOOR  # d||w_i|| / dw = w / ||w_i||
    # dw: the direct path -Pi g dY, the path through y, and the paths through a and through the
    # column norm, w times a sum of outer products (token x coordinate):
    #   dw = -Pi g dY + 2 Pi_bar dy w + (w / denom) (2 da / denom + ddenom),
    # with 2 Pi_bar_j dy_i w_ji = 2 v_ji e_i / sum_j Pi (v = -Pi g w, the head outputs). Each
    # product is taken in an order whose partial results stay inside float32's range.
    xp.multiply(da[..., None], (2.0 * inv_denom)[:, None], out=tmp)
    tmp += ddenom[:, None]
    dw = tmp * w  # (B, n, H, p)
    dw *= inv_denom[:, None]
    xp.multiply(v, (2.0 * e)[:, None] / pi_sum[..., None], out=tmp)
    dw += tmp
    xp.multiply(cache["neg_pi_g"], dv, out=tmp)
    dw += tmp
    dx, g_qkv = linear_backward(dw.reshape(B, n, H * p), cache["qkv"])
    grads = {**_prefixed(g_qkv, "qkv"), "temp": dtemp, **_prefixed(g_proj, "proj")}
    return dx, grads


# ---- Causal TSSA (nanoGPT ``CausalSelfAttention`` of the public code) -------------------------


def causal_tssa_forward(x, params):
    r"""Causal TSSA: the statistics at token t see tokens 1..t only (prefix sums, no T x T array).

    x: (B, T, D), T <= block_size. params: 'qkv.weight' (D, D), 'qkv.bias' (D,), 'temp' (H, 1),
    'denom_bias' (H, block_size, 1), 'proj.weight' (D, D), 'proj.bias' (D,).

        w          = x W_qkv + b_qkv, split into heads                     (B, H, T, p)
        r_{hti}    = max(sum_{u<=t} w_{hui}^2, 1e-12)
        score_{ht} = temp_h sum_i (w_{hti}^2 / r_{hti} + beta_{ht})        beta = denom_bias[:, :T]
        Pi_{ht}    = softmax_h(score_{ht})                                  (B, H, T)
        y_{hti}    = sum_{u<=t} Pi_{hu} w_{hui}^2 / (sum_{u<=t} Pi_{hu} + 1e-8)   statistics
        g_{hti}    = 1 / (1 + y_{hti});  v_{hti} = -Pi_{ht} g_{hti} w_{hti}
        out        = merge(v) W_out + b_out

    Returns (out, cache); ``cache['pi']`` is Pi (B, H, T)."""
    xp = get_array_module(x)
    B, T, D = x.shape
    H = params["temp"].shape[0]
    p = D // H
    w_flat, qkv_cache = linear_forward(x, _sub(params, "qkv"))  # (B, T, D)
    w = w_flat.reshape(B, T, H, p).transpose(0, 2, 1, 3)  # (B, H, T, p)
    w_sq = w * w
    r_raw = xp.cumsum(w_sq, axis=2)  # (B, H, T, p)
    r = xp.maximum(r_raw, TSSA_NORM_FLOOR)
    q = w_sq / r  # (B, H, T, p)
    beta = params["denom_bias"][:, :T, 0]  # (H, T)
    a = q.sum(axis=-1) + p * beta  # (B, H, T): beta enters once per coordinate i
    pi = _softmax(params["temp"] * a, axis=1)  # (B, H, T)
    num = xp.cumsum(pi[..., None] * w_sq, axis=2)  # (B, H, T, p)
    den = xp.cumsum(pi, axis=2) + MEMBERSHIP_EPS  # (B, H, T)
    y = num / den[..., None]
    g = 1.0 / (1.0 + y)
    pi_w = pi[..., None] * w
    v = -(pi_w * g)
    v_flat = v.transpose(0, 2, 1, 3).reshape(B, T, D)  # (B, T, D)
    out, proj_cache = linear_forward(v_flat, _sub(params, "proj"))
    cache = dict(
        qkv=qkv_cache, proj=proj_cache, w=w, w_sq=w_sq, r_raw=r_raw, r=r, q=q, a=a,
        temp=params["temp"], block_size=params["denom_bias"].shape[1], pi=pi, den=den, y=y,
        g=g, pi_w=pi_w,
    )  # fmt: skip
    return out, cache


def causal_tssa_backward(dout, cache):
    """Backward of :func:`causal_tssa_forward`. dout: (B, T, D). Returns (dx, grads)."""
    xp = get_array_module(dout)
    w, w_sq, g, pi, pi_w = cache["w"], cache["w_sq"], cache["g"], cache["pi"], cache["pi_w"]
    B, H, T, p = w.shape
    dv_flat, g_proj = linear_backward(dout, cache["proj"])  # (B, T, D)
    dv = dv_flat.reshape(B, T, H, p).transpose(0, 2, 1, 3)  # (B, H, T, p)
    # For large tokens, dy = -g^2 dg and da / r are ~ 1/|w|^3 and underflow float32 from
    # |w| ~ 1e10 on. So they are carried times kappa = max_{t,i} (1 + s_ti) per head and image
    # (~ |w|^2), and the 1/kappa is applied after the product with w, when it is in range.
    kappa = (1.0 + cache["y"]).max(axis=(2, 3), keepdims=True)  # (B, H, 1, 1)
    inv_kappa = 1.0 / kappa
    # v = -Pi w g
    dv_g = dv * g
    dw = -(pi[..., None] * dv_g)
    dpi = -(w * dv_g).sum(axis=-1)  # (B, H, T)
    dy_k = (pi_w * dv) * g  # kappa dy, with dg = -Pi w dv and dy = -g^2 dg
    dy_k *= kappa * g
    # y = num / den
    den = cache["den"]
    dnum_k = dy_k / den[..., None]
    dden = -(dnum_k * cache["y"]).sum(axis=-1) * inv_kappa[..., 0]  # (B, H, T)
    # num = cumsum(Pi w^2), den = cumsum(Pi) + eps
    g_num_k = _reverse_cumsum(dnum_k, axis=2)  # (B, H, T, p), kappa d num-prefix
    dpi += (g_num_k * w_sq).sum(axis=-1) * inv_kappa[..., 0] + _reverse_cumsum(dden, axis=2)
    dw += 2.0 * (g_num_k * pi_w) * inv_kappa  # the w^2 in num: 2 Pi w g_num
    # Pi = softmax over heads of temp * a
    dz = _softmax_backward(dpi, pi, axis=1)  # (B, H, T)
    dtemp = (dz * cache["a"]).sum(axis=(0, 2))[:, None]  # (H, 1)
    da = dz * cache["temp"]  # (B, H, T)
    ddenom_bias = xp.zeros((H, cache["block_size"], 1), dtype=dout.dtype)
    ddenom_bias[:, :T, 0] = p * da.sum(axis=0)
    # a = sum_i w^2 / r,  r = max(cumsum(w^2), floor)
    da_e = da[..., None]  # (B, H, T, 1)
    k_over_r = kappa / cache["r"]
    dw_sq_k = da_e * k_over_r  # kappa da / r
    dr_k = -(da_e * cache["q"]) * k_over_r  # kappa dr
    dr_k *= cache["r_raw"] >= TSSA_NORM_FLOOR  # the clamp's gradient (torch.clamp_min)
    dw_sq_k += _reverse_cumsum(dr_k, axis=2)
    dw += 2.0 * (dw_sq_k * w) * inv_kappa
    dw_flat = dw.transpose(0, 2, 1, 3).reshape(B, T, H * p)  # (B, T, D)
    dx, g_qkv = linear_backward(dw_flat, cache["qkv"])
    grads = {
        **_prefixed(g_qkv, "qkv"),
        "temp": dtemp,
        "denom_bias": ddenom_bias,
        **_prefixed(g_proj, "proj"),
    }
    return dx, grads


# ---- Multi-head softmax self-attention (the baseline ToST replaces) ---------------------------


def softmax_attention_forward(x, params, num_heads, causal=False):
    r"""Standard multi-head self-attention (ViT / GPT).

    x: (B, n, D). params: 'qkv.weight' (D, 3D), 'qkv.bias' (3D,), 'proj.weight' (D, D),
    'proj.bias' (D,).  q, k, v = split(x W_qkv + b_qkv), each (B, H, n, p);
    A = softmax(q k^T / sqrt(p)) over keys (keys after the query masked when ``causal``);
    out = merge(A v) W_out + b_out. Returns (out, cache); ``cache['attn']`` is A (B, H, n, n)."""
    xp = get_array_module(x)
    B, n, D = x.shape
    H = num_heads
    p = D // H
    qkv, qkv_cache = linear_forward(x, _sub(params, "qkv"))  # (B, n, 3D)
    qkv = qkv.reshape(B, n, 3, H, p).transpose(2, 0, 3, 1, 4)  # (3, B, H, n, p)
    q, k, v = qkv[0], qkv[1], qkv[2]
    scale = 1.0 / math.sqrt(p)
    scores = (q @ k.transpose(0, 1, 3, 2)) * scale  # (B, H, n, n)
    if causal:
        future = xp.arange(n)[None, :] > xp.arange(n)[:, None]  # (n, n): key after query
        scores = xp.where(future, -xp.inf, scores)
    attn = _softmax(scores, axis=-1)
    o = attn @ v  # (B, H, n, p)
    o_flat = o.transpose(0, 2, 1, 3).reshape(B, n, D)  # (B, n, D)
    out, proj_cache = linear_forward(o_flat, _sub(params, "proj"))
    return out, dict(qkv=qkv_cache, proj=proj_cache, q=q, k=k, v=v, attn=attn, scale=scale)


def softmax_attention_backward(dout, cache):
    """Backward of :func:`softmax_attention_forward`. dout: (B, n, D). Returns (dx, grads)."""
    xp = get_array_module(dout)
    q, k, v, attn, scale = cache["q"], cache["k"], cache["v"], cache["attn"], cache["scale"]
    B, H, n, p = q.shape
    do_flat, g_proj = linear_backward(dout, cache["proj"])
    do = do_flat.reshape(B, n, H, p).transpose(0, 2, 1, 3)  # (B, H, n, p)
    dattn = do @ v.transpose(0, 1, 3, 2)  # (B, H, n, n)
    dv = attn.transpose(0, 1, 3, 2) @ do
    dscores = _softmax_backward(dattn, attn, axis=-1) * scale  # masked entries: attn = 0
    dq = dscores @ k
    dk = dscores.transpose(0, 1, 3, 2) @ q
    dqkv = xp.stack([dq, dk, dv])  # (3, B, H, n, p)
    dqkv = dqkv.transpose(1, 3, 0, 2, 4).reshape(B, n, 3 * H * p)  # (B, n, 3D)
    dx, g_qkv = linear_backward(dqkv, cache["qkv"])
    return dx, {**_prefixed(g_qkv, "qkv"), **_prefixed(g_proj, "proj")}


# --------------------------------------------------------------------------------------------
# Stateful modules
# --------------------------------------------------------------------------------------------


def _normal(rng, shape, std, dtype):
    return (rng.standard_normal(shape) * std).astype(dtype)


def _rng(rng):
    return rng if rng is not None else np.random.default_rng(0)


class Linear(Module):
    """y = x W + b. Params: 'weight' (d_in, d_out), 'bias' (d_out,) (none with bias=False)."""

    decay = ("weight",)

    def __init__(self, d_in, d_out, dtype=np.float32, rng=None, init_std=INIT_STD, bias=True):
        super().__init__()
        dtype = np.dtype(dtype)
        self.params = {"weight": _normal(_rng(rng), (d_in, d_out), init_std, dtype)}
        if bias:
            self.params["bias"] = np.zeros(d_out, dtype=dtype)

    def forward(self, x):
        d_in = self.params["weight"].shape[0]
        if x.shape[-1] != d_in:
            raise ValueError(f"x: expected last dimension {d_in}, got shape {x.shape}")
        y, self._cache = linear_forward(_as_dtype(x, self.dtype), self.params)
        return y

    def backward(self, dy):
        dx, self.grads = linear_backward(dy, self._cache)
        return dx


class LayerNorm(Module):
    """LayerNorm over the last axis with epsilon ``eps`` (default LAYERNORM_EPS).
    Params: 'weight' (D,), 'bias' (D,) (none with bias=False)."""

    def __init__(self, dim, dtype=np.float32, eps=LAYERNORM_EPS, bias=True):
        super().__init__()
        dtype = np.dtype(dtype)
        self.eps = eps
        self.params = {"weight": np.ones(dim, dtype=dtype)}
        if bias:
            self.params["bias"] = np.zeros(dim, dtype=dtype)

    def forward(self, x):
        D = self.params["weight"].shape[0]
        if x.shape[-1] != D:
            raise ValueError(f"x: expected last dimension {D}, got shape {x.shape}")
        y, self._cache = layernorm_forward(_as_dtype(x, self.dtype), self.params, self.eps)
        _refuse_overflow(self, self._cache[1] > 0)  # rstd = 0 where the variance overflowed
        return y

    def backward(self, dy):
        dx, self.grads = layernorm_backward(dy, self._cache)
        return dx


class GELU(Module):
    """Exact (erf) GELU. No parameters."""

    def forward(self, x):
        y, self._cache = gelu_forward(x)
        return y

    def backward(self, dy):
        return gelu_backward(dy, self._cache)[0]


class Dropout(Module):
    """Inverted dropout with rate ``p``, active only while ``training`` (default True, as
    PyTorch); ``per_sample=True`` is DropPath / stochastic depth (one draw per sample of a
    (B, ...) input). The mask comes from ``np.random.default_rng(seed)``, so a run with the
    same seed draws the same masks. No parameters."""

    def __init__(self, p=0.0, seed=0, per_sample=False):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"p: expected a value in [0, 1), got {p}")
        self.p, self.per_sample, self.training = p, per_sample, True
        self.rng = np.random.default_rng(seed)

    def forward(self, x):
        if not self.training or self.p == 0.0:
            self._mask = None
            return x
        shape = (x.shape[0],) + (1,) * (x.ndim - 1) if self.per_sample else x.shape
        xp = get_array_module(x)
        self._mask = xp.asarray(dropout_mask(self.rng, shape, self.p, x.dtype))
        return dropout_forward(x, self._mask)[0]

    def backward(self, dy):
        return dy if self._mask is None else dropout_backward(dy, self._mask)[0]


class MLP(Module):
    """dim -> hidden_ratio * dim -> dim with GELU (nanoGPT names ``c_fc``, ``c_proj``)."""

    def __init__(self, dim, hidden_ratio=4, dtype=np.float32, rng=None, proj_std=INIT_STD,
                 bias=True):  # fmt: skip
        super().__init__()
        rng = _rng(rng)
        self.c_fc = Linear(dim, hidden_ratio * dim, dtype=dtype, rng=rng, bias=bias)
        self.act = GELU()
        self.c_proj = Linear(hidden_ratio * dim, dim, dtype, rng, init_std=proj_std, bias=bias)

    def forward(self, x):
        return self.c_proj.forward(self.act.forward(self.c_fc.forward(x)))

    def backward(self, dy):
        return self.c_fc.backward(self.act.backward(self.c_proj.backward(dy)))


class Embedding(Module):
    """Lookup table. Params: 'weight' (num_embeddings, dim). forward(idx) -> (..., dim)."""

    decay = ("weight",)
    input_kind = "index"

    def __init__(self, num_embeddings, dim, dtype=np.float32, rng=None, init_std=INIT_STD):
        super().__init__()
        self.params = {
            "weight": _normal(_rng(rng), (num_embeddings, dim), init_std, np.dtype(dtype))
        }

    def forward(self, idx):
        V = self.params["weight"].shape[0]
        xp = get_array_module(self.params["weight"])
        idx = xp.asarray(idx)
        if idx.dtype.kind not in "iu":
            raise ValueError(f"idx: expected integer token ids, got dtype {idx.dtype}")
        if _policy.CHECK_INPUTS and idx.size and (int(idx.min()) < 0 or int(idx.max()) >= V):
            raise ValueError(
                f"idx: token ids must lie in [0, {V}), got range [{int(idx.min())}, {int(idx.max())}]"
            )
        y, self._cache = embedding_forward(idx, self.params)
        return y

    def backward(self, dy):
        _, self.grads = embedding_backward(dy, self._cache)
        return None


def _drop_biases(params, bias, qkv_bias):
    """Remove 'qkv.bias' (when qkv_bias, default ``bias``, is False) and 'proj.bias' (when
    ``bias`` is False) from an attention layer's params."""
    if not (bias if qkv_bias is None else qkv_bias):
        del params["qkv.bias"]
    if not bias:
        del params["proj.bias"]


def _check_heads(dim, num_heads):
    if num_heads < 1 or dim % num_heads:
        raise ValueError(f"num_heads: dim={dim} must be divisible by num_heads={num_heads}")


class TSSA(Module):
    """Token Statistics Self-Attention (see :func:`tssa_forward`).

    Params: 'qkv.weight' (D, D), 'qkv.bias' (D,), 'temp' (H, 1) initialised to 1,
    'proj.weight' (D, D), 'proj.bias' (D,). After ``forward``, ``last_pi`` is Pi (B, H, n).
    ``qkv_bias=False`` drops 'qkv.bias' (the public ``AttentionTSSA`` default; its ``tost_cab``
    models pass True), ``bias=False`` drops both biases (nanoGPT's ``bias=False``)."""

    decay = ("qkv.weight", "proj.weight")

    def __init__(self, dim, num_heads, dtype=np.float32, rng=None, proj_std=INIT_STD, bias=True,
                 qkv_bias=None):  # fmt: skip
        super().__init__()
        _check_heads(dim, num_heads)
        rng, dtype = _rng(rng), np.dtype(dtype)
        self.dim, self.num_heads = dim, num_heads
        self.params = {
            "qkv.weight": _normal(rng, (dim, dim), INIT_STD, dtype),
            "qkv.bias": np.zeros(dim, dtype=dtype),
            "temp": np.ones((num_heads, 1), dtype=dtype),
            "proj.weight": _normal(rng, (dim, dim), proj_std, dtype),
            "proj.bias": np.zeros(dim, dtype=dtype),
        }
        _drop_biases(self.params, bias, qkv_bias)
        self.last_pi = None
        self.attn_drop, self.training, self._drop_rng = 0.0, True, np.random.default_rng(0)

    def set_attn_drop(self, rate, seed=0):
        """Attention dropout on the gains g = 1 / (1 + y) (the public ``attn_drop``), active only
        while ``training``; masks (B, H, p) from ``np.random.default_rng(seed)``."""
        dropout_mask(self._drop_rng, (), rate)  # validates rate
        self.attn_drop, self._drop_rng = rate, np.random.default_rng(seed)
        return self

    def forward(self, x):
        _check_tokens(x, self.dim)
        mask = None
        if self.attn_drop and self.training:
            B, H = x.shape[0], self.num_heads
            shape = (B, H, self.dim // H)
            mask = get_array_module(x).asarray(
                dropout_mask(self._drop_rng, shape, self.attn_drop, self.dtype)
            )
        out, self._cache = tssa_forward(_as_dtype(x, self.dtype), self.params, mask)
        if "col_norm" in self._cache:  # an overflowed norm would make the output 0
            _refuse_overflow(self, get_array_module(x).isfinite(self._cache["col_norm"]))
        self.last_pi = self._cache["pi"]
        return out

    def backward(self, dy):
        dx, self.grads = tssa_backward(dy, self._cache)
        return dx


class CausalTSSA(Module):
    """Causal TSSA for language models (see :func:`causal_tssa_forward`).

    Params: 'qkv.weight' (D, D), 'qkv.bias' (D,), 'temp' (H, 1) = 1,
    'denom_bias' (H, block_size, 1) = 0, 'proj.weight' (D, D), 'proj.bias' (D,).
    After ``forward``, ``last_pi`` is Pi (B, H, T). ``bias`` / ``qkv_bias`` as :class:`TSSA`."""

    decay = ("qkv.weight", "proj.weight")

    def __init__(self, dim, num_heads, block_size, dtype=np.float32, rng=None, proj_std=INIT_STD,
                 bias=True, qkv_bias=None):  # fmt: skip
        super().__init__()
        _check_heads(dim, num_heads)
        rng, dtype = _rng(rng), np.dtype(dtype)
        self.dim, self.num_heads, self.block_size = dim, num_heads, block_size
        self.params = {
            "qkv.weight": _normal(rng, (dim, dim), INIT_STD, dtype),
            "qkv.bias": np.zeros(dim, dtype=dtype),
            "temp": np.ones((num_heads, 1), dtype=dtype),
            "denom_bias": np.zeros((num_heads, block_size, 1), dtype=dtype),
            "proj.weight": _normal(rng, (dim, dim), proj_std, dtype),
            "proj.bias": np.zeros(dim, dtype=dtype),
        }
        _drop_biases(self.params, bias, qkv_bias)
        self.last_pi = None

    def forward(self, x):
        _check_tokens(x, self.dim)
        if x.shape[1] > self.block_size:
            raise ValueError(
                f"x: sequence length {x.shape[1]} exceeds block_size {self.block_size}"
            )
        out, self._cache = causal_tssa_forward(_as_dtype(x, self.dtype), self.params)
        _refuse_overflow(self, get_array_module(x).isfinite(self._cache["r_raw"][:, :, -1]))
        self.last_pi = self._cache["pi"]
        return out

    def backward(self, dy):
        dx, self.grads = causal_tssa_backward(dy, self._cache)
        return dx


class SoftmaxAttention(Module):
    """Multi-head softmax self-attention (see :func:`softmax_attention_forward`).

    Params: 'qkv.weight' (D, 3D), 'qkv.bias' (3D,), 'proj.weight' (D, D), 'proj.bias' (D,).
    After ``forward``, ``last_attn`` is A (B, H, n, n)."""

    decay = ("qkv.weight", "proj.weight")

    def __init__(
        self, dim, num_heads, causal=False, block_size=None, dtype=np.float32, rng=None,
        proj_std=INIT_STD, bias=True, qkv_bias=None,
    ):  # fmt: skip
        super().__init__()
        _check_heads(dim, num_heads)
        rng, dtype = _rng(rng), np.dtype(dtype)
        self.dim, self.num_heads, self.causal, self.block_size = dim, num_heads, causal, block_size
        self.params = {
            "qkv.weight": _normal(rng, (dim, 3 * dim), INIT_STD, dtype),
            "qkv.bias": np.zeros(3 * dim, dtype=dtype),
            "proj.weight": _normal(rng, (dim, dim), proj_std, dtype),
            "proj.bias": np.zeros(dim, dtype=dtype),
        }
        _drop_biases(self.params, bias, qkv_bias)
        self.last_attn = None

    def forward(self, x):
        _check_tokens(x, self.dim)
        if self.block_size is not None and x.shape[1] > self.block_size:
            raise ValueError(
                f"x: sequence length {x.shape[1]} exceeds block_size {self.block_size}"
            )
        out, self._cache = softmax_attention_forward(
            _as_dtype(x, self.dtype), self.params, self.num_heads, self.causal
        )
        self.last_attn = self._cache["attn"]
        return out

    def backward(self, dy):
        dx, self.grads = softmax_attention_backward(dy, self._cache)
        return dx


ATTENTIONS = ("tssa", "softmax")


class Block(Module):
    r"""Pre-norm residual block with layer scales:

        x <- x + gamma1 * attn(LN_1(x)),   x <- x + gamma2 * MLP(LN_2(x)).

    Children: 'ln_1', 'attn' (TSSA / CausalTSSA / SoftmaxAttention), 'ln_2', 'mlp';
    params: 'gamma1', 'gamma2' (D,) initialised to ``layer_scale_init``; both LayerNorms use
    ``ln_eps`` (1e-5 in the public language model, 1e-6 in the public vision models).
    ``bias=False`` removes every bias (LayerNorms, attention, MLP), as nanoGPT's ``bias=False``;
    ``qkv_bias`` overrides it for the attention's input projection only.
    ``attention`` is 'tssa' or 'softmax'; ``causal=True`` needs ``block_size``.

    Regularization as the public code, all 0 by default and active only while ``training``
    (``module.train()`` / ``module.eval()``), each seeded from ``drop_seed`` so that a run is
    reproducible: ``drop`` is dropout on each branch's output (the public ``proj_drop`` and the
    MLP's dropout), ``drop_path`` is stochastic depth on each residual branch (timm's DropPath:
    x <- x + DropPath(gamma * branch)), ``attn_drop`` is TSSA's dropout on the
    gains g = 1 / (1 + y) (``TSSA.set_attn_drop``; TSSA only)."""

    def __init__(
        self, dim, num_heads, attention="tssa", causal=False, block_size=None, mlp_ratio=4,
        layer_scale_init=1.0, dtype=np.float32, rng=None, proj_std=INIT_STD,
        ln_eps=LAYERNORM_EPS, bias=True, qkv_bias=None, drop=0.0, drop_path=0.0, attn_drop=0.0,
        drop_seed=0,
    ):  # fmt: skip
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"attention: expected one of {ATTENTIONS}, got {attention!r}")
        if causal and block_size is None:
            raise ValueError("block_size: required when causal=True")
        rng, dtype = _rng(rng), np.dtype(dtype)
        self.dim = dim
        self.ln_1 = LayerNorm(dim, dtype=dtype, eps=ln_eps, bias=bias)
        b = dict(bias=bias, qkv_bias=qkv_bias)
        if attention == "tssa" and causal:
            self.attn = CausalTSSA(dim, num_heads, block_size, dtype, rng, proj_std, **b)
        elif attention == "tssa":
            self.attn = TSSA(dim, num_heads, dtype, rng, proj_std, **b)
        else:
            self.attn = SoftmaxAttention(
                dim, num_heads, causal, block_size, dtype, rng, proj_std, **b
            )
        self.ln_2 = LayerNorm(dim, dtype=dtype, eps=ln_eps, bias=bias)
        self.mlp = MLP(dim, mlp_ratio, dtype=dtype, rng=rng, proj_std=proj_std, bias=bias)
        self.params = {
            "gamma1": np.full(dim, layer_scale_init, dtype=dtype),
            "gamma2": np.full(dim, layer_scale_init, dtype=dtype),
        }
        if attn_drop:
            if not isinstance(self.attn, TSSA):
                raise ValueError("attn_drop: only for TSSA (non-causal) attention")
            self.attn.set_attn_drop(attn_drop, seed=drop_seed)
        # parameter-free children: the state dict is the same with or without them
        self.drop_1 = Dropout(drop, seed=drop_seed + 1)
        self.drop_2 = Dropout(drop, seed=drop_seed + 2)
        self.path_1 = Dropout(drop_path, seed=drop_seed + 3, per_sample=True)
        self.path_2 = Dropout(drop_path, seed=drop_seed + 4, per_sample=True)

    def forward(self, x):
        _check_tokens(x, self.dim)
        g1, g2 = self.params["gamma1"], self.params["gamma2"]
        a = self.drop_1.forward(self.attn.forward(self.ln_1.forward(x)))  # (B, n, D)
        x1 = x + self.path_1.forward(g1 * a)
        m = self.drop_2.forward(self.mlp.forward(self.ln_2.forward(x1)))
        self._cache = (a, m)
        return x1 + self.path_2.forward(g2 * m)

    def backward(self, dy):
        a, m = self._cache
        g1, g2 = self.params["gamma1"], self.params["gamma2"]
        D = self.dim
        db2 = self.path_2.backward(dy)  # gradient of the branch gamma2 * m
        dgamma2 = (db2 * m).reshape(-1, D).sum(axis=0)
        dx1 = dy + self.ln_2.backward(self.mlp.backward(self.drop_2.backward(db2 * g2)))
        db1 = self.path_1.backward(dx1)
        dgamma1 = (db1 * a).reshape(-1, D).sum(axis=0)
        dx = dx1 + self.ln_1.backward(self.attn.backward(self.drop_1.backward(db1 * g1)))
        self.grads = {"gamma1": dgamma1, "gamma2": dgamma2}
        return dx


# ``nn.CHECK_INPUTS`` reads and sets the policy's one flag (see ``whitebox.module._SharesTheFlag``).
sys.modules[__name__].__class__ = _policy._SharesTheFlag
