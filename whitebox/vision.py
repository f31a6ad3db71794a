r"""Layers of the public vision ToST (``tost_cab_*``) with hand-written backward passes.

The public vision models (XCiT's layout with TSSA in place of cross-covariance attention) use
four layers that the simplified :class:`whitebox.models.ToSTClassifier` does not:

* a **convolutional patch embedding**: 3 x 3 convolutions, stride 2, padding 1, no bias, each
  followed by BatchNorm, with GELU between the stages (:func:`conv2d_forward`,
  :func:`batchnorm2d_forward`, :class:`ConvStem`);
* a **Fourier positional encoding** (XCiT, after DETR): fixed sin/cos features of the patch grid
  through a learned 1 x 1 projection (:func:`fourier_features`, :class:`FourierPositionalEncoding`);
* **class attention** (CaiT): after the TSSA blocks a class token is put in front of the patch
  tokens and only it attends (:func:`class_attention_forward`, :class:`ClassAttentionBlock`).

:class:`ToSTCAB` assembles them into the public model (also reachable as ``models.ToSTCAB``
and ``models.tost_cab``; ``models.build`` rebuilds it from its config).

Layouts are PyTorch's: images (B, C, H, W), tokens (B, N, D), convolution weights
(C_out, C_in, k, k) (also the layout of CS231n's ``conv_forward``). The contract is the one of
``whitebox.nn``: ``y, cache = xxx_forward(x, params)``, ``dx, grads = xxx_backward(dy, cache)``.

Modules with running statistics (:class:`BatchNorm2d`) keep them in ``module.buffers`` (not in
``params``: the optimizer never sees them) and have a ``training`` flag; :func:`buffers`
collects them under dotted names and :func:`set_training` switches a whole model.
"""

from __future__ import annotations

import math

import numpy as np

from .backend import get_array_module, to_device, to_numpy
from .data import check_input_norm, normalize_images
from .module import Module, ModuleList, _refuse_overflow
from .nn import (
    GELU,
    INIT_STD,
    MLP,
    Block,
    LayerNorm,
    Linear,
    _as_dtype,
    _check_heads,
    _normal,
    _prefixed,
    _rng,
    _softmax,
    _softmax_backward,
    _sub,
    linear_backward,
    linear_forward,
)

BATCHNORM_EPS = 1e-5
"""BatchNorm epsilon (PyTorch's default, as in the public stem's ``nn.SyncBatchNorm``)."""

BATCHNORM_MOMENTUM = 0.1
"""Running statistics: r <- (1 - 0.1) r + 0.1 batch statistic (PyTorch's default)."""

FOURIER_DIM = 32
"""Fourier features per image axis (``hidden_dim`` of XCiT's ``PositionalEncodingFourier``)."""

FOURIER_TEMPERATURE = 10000.0
"""Base of the geometric frequency ladder: frequency_k = temperature^(-2 floor(k/2) / 32)."""

FOURIER_SCALE = 2.0 * math.pi
"""Normalized grid coordinates run over (0, 2 pi]."""

FOURIER_EPS = 1e-6
"""Added to the grid size before normalizing the coordinates: (i + 1) / (H + 1e-6) 2 pi."""


# --------------------------------------------------------------------------------------------
# Convolution (3 x 3, stride 2, padding 1 in the stem; any k, stride, padding here)
# --------------------------------------------------------------------------------------------


def conv2d_forward(x, params, stride=1, padding=0):
    r"""2-D cross-correlation without bias, as ``torch.nn.functional.conv2d``.

    x: (B, C, H, W); params: 'weight' (F, C, k, k). Output (B, F, H', W') with
    H' = floor((H + 2 padding - k) / stride) + 1 (W' likewise):

        y[b, f, i, j] = sum_{c, u, v} W[f, c, u, v] x_pad[b, c, stride i + u, stride j + v]

    Computed as k^2 matrix products, one per kernel offset (u, v): the strided view of the
    padded input at that offset times W[:, :, u, v] (no k^2-fold im2col copy)."""
    xp = get_array_module(x)
    W = params["weight"]
    B, C, H, Wd = x.shape
    F, C_w, k, k2 = W.shape
    if C_w != C or k != k2:
        raise ValueError(f"x: expected {C_w} channels for weight {W.shape}, got shape {x.shape}")
    Ho = (H + 2 * padding - k) // stride + 1
    Wo = (Wd + 2 * padding - k) // stride + 1
    if Ho < 1 or Wo < 1:
        raise ValueError(f"x: image {H} x {Wd} is too small for a {k} x {k} kernel")
    xpad = xp.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    y = xp.zeros((B, Ho, Wo, F), dtype=x.dtype)  # channels last while accumulating
    for u in range(k):
        for v in range(k):
            xs = xpad[:, :, u : u + stride * Ho : stride, v : v + stride * Wo : stride]
            y += xp.einsum("bchw,fc->bhwf", xs, W[:, :, u, v])  # (B, H', W', F)
    cache = dict(xpad_shape=xpad.shape, xpad=xpad, W=W, stride=stride, padding=padding)
    return y.transpose(0, 3, 1, 2), cache  # (B, F, H', W')


def conv2d_backward(dy, cache):
    """dW[f, c, u, v] = sum dy[b, f, i, j] x_pad[b, c, s i + u, s j + v]; dx scatters
    dy W[:, :, u, v] back to the same strided positions (the adjoint), then drops the padding."""
    xp = get_array_module(dy)
    xpad, W, s, pad = cache["xpad"], cache["W"], cache["stride"], cache["padding"]
    F, C, k, _ = W.shape
    B, _, Ho, Wo = dy.shape
    dW = xp.zeros_like(W)
    dxpad = xp.zeros(cache["xpad_shape"], dtype=dy.dtype)
    for u in range(k):
        for v in range(k):
            sl = (slice(None), slice(None), slice(u, u + s * Ho, s), slice(v, v + s * Wo, s))
            dW[:, :, u, v] = xp.einsum("bfhw,bchw->fc", dy, xpad[sl])
            dxpad[sl] += xp.einsum("bfhw,fc->bchw", dy, W[:, :, u, v])
    H, Wd = dxpad.shape[2] - 2 * pad, dxpad.shape[3] - 2 * pad
    return dxpad[:, :, pad : pad + H, pad : pad + Wd], {"weight": dW}


# --------------------------------------------------------------------------------------------
# BatchNorm over (B, H, W) per channel
# --------------------------------------------------------------------------------------------


def batchnorm2d_forward(x, params, buffers, training, momentum=BATCHNORM_MOMENTUM,
                        eps=BATCHNORM_EPS):  # fmt: skip
    r"""BatchNorm2d, as ``torch.nn.BatchNorm2d`` (and ``SyncBatchNorm`` on one device).

    x: (B, C, H, W); params: 'weight' (C,), 'bias' (C,); buffers: 'running_mean' (C,),
    'running_var' (C,), 'num_batches_tracked' () (read only here).

    training:  mu, var = mean and biased variance of x over (B, H, W)  (m = B H W values)
               y = (x - mu) / sqrt(var + eps) * weight + bias
               new running_mean = (1 - momentum) running_mean + momentum mu
               new running_var  = (1 - momentum) running_var + momentum var m / (m - 1)
    eval:      y = (x - running_mean) / sqrt(running_var + eps) * weight + bias

    Returns (y, cache); in training ``cache['buffers']`` holds the updated buffers (the caller
    stores them: the function itself changes nothing)."""
    xp = get_array_module(x)
    C = x.shape[1]
    if training:
        m = x.shape[0] * x.shape[2] * x.shape[3]
        if m < 2:
            raise ValueError(
                f"x: BatchNorm in training mode needs > 1 value per channel, got {x.shape}"
            )
        mu = x.mean(axis=(0, 2, 3))  # (C,)
        xc = x - mu.reshape(1, C, 1, 1)
        var = (xc * xc).mean(axis=(0, 2, 3))  # (C,) biased
        new = {
            "running_mean": (1 - momentum) * buffers["running_mean"] + momentum * mu,
            "running_var": (1 - momentum) * buffers["running_var"] + momentum * var * (m / (m - 1)),
            "num_batches_tracked": buffers["num_batches_tracked"] + 1,
        }
    else:
        xc = x - buffers["running_mean"].reshape(1, C, 1, 1)
        var, new = buffers["running_var"], None
    rstd = (1.0 / xp.sqrt(var + eps)).astype(x.dtype, copy=False).reshape(1, C, 1, 1)
    xhat = xc * rstd
    y = xhat * params["weight"].reshape(1, C, 1, 1) + params["bias"].reshape(1, C, 1, 1)
    return y, dict(xhat=xhat, rstd=rstd, weight=params["weight"], training=training, buffers=new)


def batchnorm2d_backward(dy, cache):
    """training: dx = rstd (g - mean(g) - xhat mean(g xhat)), g = dy weight, means over (B, H, W)
    (the batch statistics depend on x); eval: dx = rstd g. dweight = sum dy xhat, dbias = sum dy."""
    xhat, rstd, weight = cache["xhat"], cache["rstd"], cache["weight"]
    C = xhat.shape[1]
    g = dy * weight.reshape(1, C, 1, 1)
    if cache["training"]:
        dx = rstd * (
            g - g.mean(axis=(0, 2, 3), keepdims=True)
            - xhat * (g * xhat).mean(axis=(0, 2, 3), keepdims=True)
        )  # fmt: skip
    else:
        dx = rstd * g
    return dx, {"weight": (dy * xhat).sum(axis=(0, 2, 3)), "bias": dy.sum(axis=(0, 2, 3))}


# --------------------------------------------------------------------------------------------
# Fourier positional encoding
# --------------------------------------------------------------------------------------------


def fourier_features(Hp, Wp, hidden_dim=FOURIER_DIM, temperature=FOURIER_TEMPERATURE,
                     dtype=np.float64):  # fmt: skip
    r"""The fixed sin/cos features of an Hp x Wp patch grid (XCiT ``PositionalEncodingFourier``).

    For the patch in row i, column j (0-based) and k = 0..hidden_dim-1:

        y_i = (i + 1) / (Hp + 1e-6) 2 pi,     x_j = (j + 1) / (Wp + 1e-6) 2 pi
        f_k = temperature^(2 floor(k / 2) / hidden_dim)
        pos_y[k] = sin(y_i / f_k) for even k, cos(y_i / f_k) for odd k   (pos_x likewise)
        feature = [pos_y, pos_x]                                        (2 hidden_dim,)

    Returns (Hp Wp, 2 hidden_dim), tokens in row-major order (as ``flatten(2)`` of the stem's
    output). Computed in float64 then cast to ``dtype`` (the public code computes it in
    float32 whatever the model's dtype)."""
    if Hp < 1 or Wp < 1:
        raise ValueError(f"Hp, Wp: expected a grid of at least 1 x 1, got {Hp} x {Wp}")
    k = np.arange(hidden_dim)
    freq = float(temperature) ** (2 * (k // 2) / hidden_dim)  # (hidden_dim,)
    y = (np.arange(1, Hp + 1) / (Hp + FOURIER_EPS) * FOURIER_SCALE)[:, None] / freq  # (Hp, hd)
    x = (np.arange(1, Wp + 1) / (Wp + FOURIER_EPS) * FOURIER_SCALE)[:, None] / freq  # (Wp, hd)
    even = k % 2 == 0
    y = np.where(even, np.sin(y), np.cos(y))
    x = np.where(even, np.sin(x), np.cos(x))
    feats = np.concatenate(
        [
            np.broadcast_to(y[:, None], (Hp, Wp, hidden_dim)),
            np.broadcast_to(x[None, :], (Hp, Wp, hidden_dim)),
        ],
        axis=-1,
    )  # fmt: skip  (Hp, Wp, 2 hidden_dim)
    return feats.reshape(Hp * Wp, 2 * hidden_dim).astype(dtype)


# --------------------------------------------------------------------------------------------
# Class attention (CaiT; ``ClassAttention`` of the public code)
# --------------------------------------------------------------------------------------------


def class_attention_forward(u, params, num_heads):
    r"""Class attention: only token 0 (the class token) queries; the others pass unchanged.

    u: (B, N, D), token 0 the class token. params: 'qkv.weight' (D, 3D), 'qkv.bias' (3D,),
    'proj.weight' (D, D), 'proj.bias' (D,). With q, k, v = split(u W_qkv + b_qkv) (B, H, N, p):

        a_{h j}  = softmax_j( q_{h 0} . k_{h j} / sqrt(p) )                  (B, H, N)
        out_0    = merge_h( sum_j a_{h j} v_{h j} ) W_proj + b_proj          (B, D)
        out_j    = u_j  for j >= 1     (the public code returns its input's patch tokens)

    Returns (out (B, N, D), cache); ``cache['attn']`` is a (B, H, N)."""
    xp = get_array_module(u)
    B, N, D = u.shape
    H = num_heads
    p = D // H
    qkv, qkv_cache = linear_forward(u, _sub(params, "qkv"))  # (B, N, 3D)
    qkv = qkv.reshape(B, N, 3, H, p).transpose(2, 0, 3, 1, 4)  # (3, B, H, N, p)
    q0, k, v = qkv[0][:, :, 0], qkv[1], qkv[2]  # (B, H, p), (B, H, N, p), (B, H, N, p)
    scale = p**-0.5
    attn = _softmax(xp.einsum("bhp,bhnp->bhn", q0, k) * scale, axis=-1)  # (B, H, N)
    o = xp.einsum("bhn,bhnp->bhp", attn, v).reshape(B, D)  # (B, D), heads merged
    cls, proj_cache = linear_forward(o, _sub(params, "proj"))  # (B, D)
    out = xp.concatenate([cls[:, None], u[:, 1:]], axis=1)  # (B, N, D)
    cache = dict(qkv=qkv_cache, proj=proj_cache, q0=q0, k=k, v=v, attn=attn, scale=scale)
    return out, cache


def class_attention_backward(dout, cache):
    """Backward of :func:`class_attention_forward`. dout: (B, N, D). Returns (du, grads)."""
    xp = get_array_module(dout)
    q0, k, v, attn, scale = cache["q0"], cache["k"], cache["v"], cache["attn"], cache["scale"]
    B, H, N, p = k.shape
    do, g_proj = linear_backward(dout[:, 0], cache["proj"])  # (B, D)
    do = do.reshape(B, H, p)
    dattn = xp.einsum("bhp,bhnp->bhn", do, v)  # (B, H, N)
    dv = attn[..., None] * do[:, :, None]  # (B, H, N, p)
    dscore = _softmax_backward(dattn, attn, axis=-1) * scale  # (B, H, N)
    dk = dscore[..., None] * q0[:, :, None]  # (B, H, N, p)
    dq = xp.zeros_like(k)
    dq[:, :, 0] = xp.einsum("bhn,bhnp->bhp", dscore, k)
    dqkv = xp.stack([dq, dk, dv]).transpose(1, 3, 0, 2, 4).reshape(B, N, 3 * H * p)  # (B, N, 3D)
    du, g_qkv = linear_backward(dqkv, cache["qkv"])
    du[:, 1:] += dout[:, 1:]
    return du, {**_prefixed(g_qkv, "qkv"), **_prefixed(g_proj, "proj")}


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


def _uniform(rng, shape, bound, dtype):
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


class Conv2d(Module):
    """k x k convolution without bias. Params: 'weight' (C_out, C_in, k, k), initialised
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's default; the public code keeps it)."""

    decay = ("weight",)

    def __init__(self, c_in, c_out, kernel_size=3, stride=2, padding=1, dtype=np.float32,
                 rng=None):  # fmt: skip
        super().__init__()
        self.stride, self.padding = stride, padding
        bound = 1.0 / math.sqrt(c_in * kernel_size**2)
        shape = (c_out, c_in, kernel_size, kernel_size)
        self.params = {"weight": _uniform(_rng(rng), shape, bound, np.dtype(dtype))}

    def forward(self, x):
        C = self.params["weight"].shape[1]
        if getattr(x, "ndim", None) != 4 or x.shape[1] != C:
            raise ValueError(f"x: expected shape (B, {C}, H, W), got {getattr(x, 'shape', None)}")
        y, self._cache = conv2d_forward(_as_dtype(x, self.dtype), self.params, self.stride,
                                        self.padding)  # fmt: skip
        return y

    def backward(self, dy):
        dx, self.grads = conv2d_backward(dy, self._cache)
        return dx


class BatchNorm2d(Module):
    """BatchNorm over (B, H, W) per channel (see :func:`batchnorm2d_forward`).

    Params: 'weight' (C,) = 1, 'bias' (C,) = 0. Buffers: 'running_mean' (C,) = 0,
    'running_var' (C,) = 1, 'num_batches_tracked' () int64 = 0. ``training`` (default True, as
    PyTorch) selects batch statistics (and updates the buffers in ``forward``) or the buffers."""

    def __init__(self, channels, dtype=np.float32, eps=BATCHNORM_EPS,
                 momentum=BATCHNORM_MOMENTUM):  # fmt: skip
        super().__init__()
        dtype = np.dtype(dtype)
        self.eps, self.momentum, self.training = eps, momentum, True
        self.params = {"weight": np.ones(channels, dtype), "bias": np.zeros(channels, dtype)}
        self.buffers = {
            "running_mean": np.zeros(channels, dtype),
            "running_var": np.ones(channels, dtype),
            "num_batches_tracked": np.zeros((), np.int64),
        }

    def forward(self, x):
        C = self.params["weight"].shape[0]
        if getattr(x, "ndim", None) != 4 or x.shape[1] != C:
            raise ValueError(f"x: expected shape (B, {C}, H, W), got {getattr(x, 'shape', None)}")
        y, self._cache = batchnorm2d_forward(
            _as_dtype(x, self.dtype),
            self.params,
            self.buffers,
            self.training,
            self.momentum,
            self.eps,
        )
        _refuse_overflow(self, self._cache["rstd"] > 0)  # before the buffers take the statistics
        if self.training:
            for k, v in self._cache["buffers"].items():
                self.buffers[k][...] = v
        return y

    def backward(self, dy):
        dx, self.grads = batchnorm2d_backward(dy, self._cache)
        return dx


class ConvStem(Module):
    r"""Convolutional patch embedding (``ConvPatchEmbed``): ``stages`` times
    conv 3 x 3 / stride 2 / padding 1 (no bias) -> BatchNorm, GELU between the stages.

    Channels in_chans -> D / 2^(stages-1) -> ... -> D / 2 -> D, so the patch size is 2^stages
    (p16: 4 stages, p8: 3). x: (B, C, H, W) -> tokens (B, Hp Wp, D) with Hp = ceil(H / 2^stages)
    for even sizes. Children 'proj.{2s}.0' (Conv2d), 'proj.{2s}.1' (BatchNorm2d),
    'proj.{2s+1}' (GELU), numbered as the public ``nn.Sequential``."""

    def __init__(self, in_chans, dim, stages, dtype=np.float32, rng=None):
        super().__init__()
        if stages < 1 or dim % 2 ** (stages - 1):
            raise ValueError(
                f"stages: dim={dim} must be divisible by 2^(stages-1), stages={stages}"
            )
        rng = _rng(rng)
        chans = [in_chans] + [dim // 2 ** (stages - 1 - s) for s in range(stages)]
        layers = []
        for s in range(stages):
            stage = ModuleList([Conv2d(chans[s], chans[s + 1], 3, 2, 1, dtype, rng),
                                BatchNorm2d(chans[s + 1], dtype)])  # fmt: skip
            layers += [stage] + ([GELU()] if s < stages - 1 else [])
        self.proj = ModuleList(layers)
        self.in_chans, self.dim = in_chans, dim

    def forward(self, x):
        """x: (B, C, H, W). Returns (tokens (B, Hp Wp, D), (Hp, Wp))."""
        for layer in self.proj:
            if isinstance(layer, ModuleList):
                x = layer[1].forward(layer[0].forward(x))
            else:
                x = layer.forward(x)
        B, D, Hp, Wp = x.shape
        self._grid = (Hp, Wp)
        return x.reshape(B, D, Hp * Wp).transpose(0, 2, 1), (Hp, Wp)  # (B, N, D)

    def backward(self, dz):
        """dz: (B, Hp Wp, D). Returns dx (B, C, H, W)."""
        B, N, D = dz.shape
        d = dz.transpose(0, 2, 1).reshape(B, D, *self._grid)  # (B, D, Hp, Wp)
        for layer in reversed(self.proj._items):
            if isinstance(layer, ModuleList):
                d = layer[0].backward(layer[1].backward(d))
            else:
                d = layer.backward(d)
        return d


class FourierPositionalEncoding(Module):
    r"""E = fourier_features(Hp, Wp) W + b: (Hp Wp, D), added to every image's tokens.

    Child 'token_projection' (Linear 2 hidden_dim -> D; the public code's 1 x 1 convolution,
    weight (D, 2 hidden_dim, 1, 1) there), initialised as PyTorch initialises that convolution:
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias."""

    input_kind = None  # forward(Hp, Wp) takes the grid size

    def __init__(self, dim, hidden_dim=FOURIER_DIM, temperature=FOURIER_TEMPERATURE,
                 dtype=np.float32, rng=None):  # fmt: skip
        super().__init__()
        rng, dtype = _rng(rng), np.dtype(dtype)
        self.hidden_dim, self.temperature = hidden_dim, temperature
        self.token_projection = Linear(2 * hidden_dim, dim, dtype=dtype)
        bound = 1.0 / math.sqrt(2 * hidden_dim)
        self.token_projection.params = {
            "weight": _uniform(rng, (2 * hidden_dim, dim), bound, dtype),
            "bias": _uniform(rng, (dim,), bound, dtype),
        }

    def forward(self, Hp, Wp):
        """Returns the encoding (Hp Wp, D) of an Hp x Wp grid."""
        xp = get_array_module(self.token_projection.params["weight"])
        feats = xp.asarray(fourier_features(Hp, Wp, self.hidden_dim, self.temperature, self.dtype))
        return self.token_projection.forward(feats)

    def backward(self, dpos):
        """dpos: (Hp Wp, D). Fills the projection's gradients (the features are fixed)."""
        self.token_projection.backward(dpos)


class ClassAttention(Module):
    """Class attention (see :func:`class_attention_forward`). Params: 'qkv.weight' (D, 3D),
    'qkv.bias' (3D,) (absent with ``qkv_bias=False``), 'proj.weight' (D, D), 'proj.bias' (D,).
    After ``forward``, ``last_attn`` is the class token's attention a (B, H, N)."""

    decay = ("qkv.weight", "proj.weight")

    def __init__(self, dim, num_heads, qkv_bias=True, dtype=np.float32, rng=None,
                 init_std=0.02):  # fmt: skip
        super().__init__()
        _check_heads(dim, num_heads)
        rng, dtype = _rng(rng), np.dtype(dtype)
        self.dim, self.num_heads = dim, num_heads
        self.params = {"qkv.weight": (rng.standard_normal((dim, 3 * dim)) * init_std).astype(dtype)}
        if qkv_bias:
            self.params["qkv.bias"] = np.zeros(3 * dim, dtype)
        self.params["proj.weight"] = (rng.standard_normal((dim, dim)) * init_std).astype(dtype)
        self.params["proj.bias"] = np.zeros(dim, dtype)
        self.last_attn = None

    def forward(self, u):
        out, self._cache = class_attention_forward(
            _as_dtype(u, self.dtype), self.params, self.num_heads
        )
        self.last_attn = self._cache["attn"]
        return out

    def backward(self, dout):
        du, self.grads = class_attention_backward(dout, self._cache)
        return du


class ClassAttentionBlock(Module):
    r"""CaiT class-attention block with the public code's ``tokens_norm=True``:

        x1  = x + gamma1 * CA(LN_1(x))            CA changes token 0 only; tokens j >= 1 of
                                                   CA(u) are u_j, so x1_j = x_j + gamma1 LN_1(x)_j
        v   = LN_2(x1)                             all tokens
        out_0 = v_0 + gamma2 * MLP(v_0),   out_j = 2 v_j  (j >= 1)

    (the public block adds ``x_res = v`` to ``cat([gamma2 MLP(v_0), v_{1:}])``, so the patch
    tokens come out doubled; only the class token is read out, and the next block normalizes
    them again.) x: (B, N, D), token 0 the class token. Children 'norm1', 'attn', 'norm2',
    'mlp' (``nn.MLP``); params 'gamma1', 'gamma2' (D,) = ``eta``."""

    def __init__(self, dim, num_heads, mlp_ratio=4, eta=1.0, qkv_bias=True, ln_eps=1e-6,
                 dtype=np.float32, rng=None):  # fmt: skip
        super().__init__()
        rng, dtype = _rng(rng), np.dtype(dtype)
        self.dim = dim
        self.norm1 = LayerNorm(dim, dtype=dtype, eps=ln_eps)
        self.attn = ClassAttention(dim, num_heads, qkv_bias, dtype, rng)
        self.norm2 = LayerNorm(dim, dtype=dtype, eps=ln_eps)
        self.mlp = MLP(dim, mlp_ratio, dtype=dtype, rng=rng)
        self.params = {"gamma1": np.full(dim, eta, dtype), "gamma2": np.full(dim, eta, dtype)}

    def forward(self, x):
        xp = get_array_module(x)
        if getattr(x, "ndim", None) != 3 or x.shape[-1] != self.dim or x.shape[1] < 1:
            raise ValueError(
                f"x: expected shape (B, N, {self.dim}), got {getattr(x, 'shape', None)}"
            )
        g1, g2 = self.params["gamma1"], self.params["gamma2"]
        a = self.attn.forward(self.norm1.forward(x))  # (B, N, D)
        x1 = x + g1 * a
        v = self.norm2.forward(x1)  # (B, N, D)
        m = self.mlp.forward(v[:, :1])  # (B, 1, D)
        self._cache = (a, m)
        return xp.concatenate([v[:, :1] + g2 * m, 2.0 * v[:, 1:]], axis=1)

    def backward(self, dy):
        a, m = self._cache
        g1, g2 = self.params["gamma1"], self.params["gamma2"]
        D = self.dim
        dv = 2.0 * dy
        dv[:, :1] = dy[:, :1] + self.mlp.backward(dy[:, :1] * g2)
        dgamma2 = (dy[:, :1] * m).reshape(-1, D).sum(axis=0)
        dx1 = self.norm2.backward(dv)
        dgamma1 = (dx1 * a).reshape(-1, D).sum(axis=0)
        dx = dx1 + self.norm1.backward(self.attn.backward(dx1 * g1))
        self.grads = {"gamma1": dgamma1, "gamma2": dgamma2}
        return dx


# --------------------------------------------------------------------------------------------
# Buffers and modes of a whole model
# --------------------------------------------------------------------------------------------


def buffers(module):
    """Ordered dict: dotted name -> live buffer array of every descendant with ``buffers``."""
    out = {}
    for p, m in module.named_modules():
        b = getattr(m, "buffers", None)
        if isinstance(b, dict):  # a model may have a ``buffers()`` method instead
            out.update({p + k: v for k, v in b.items()})
    return out


def set_training(module, mode):
    """Set ``training = mode`` on every descendant that has a ``training`` flag."""
    for _, m in module.named_modules():
        if hasattr(m, "training") and m is not module:
            m.training = bool(mode)


def buffers_to(module, device):
    """Move every buffer to 'cpu' or 'gpu' (replacing the dict entries)."""
    for _, m in module.named_modules():
        if hasattr(m, "buffers") and isinstance(m.buffers, dict):
            m.buffers = {k: to_device(v, device) for k, v in m.buffers.items()}


# --------------------------------------------------------------------------------------------
# The public vision model
# --------------------------------------------------------------------------------------------

#: The public ``tost_cab_*`` models: size -> (embed_dim D, heads H).
CAB_SIZES = {"tiny": (192, 4), "small": (384, 8), "medium": (512, 8), "large": (768, 16)}
#: The names the public code registers (``tost_vision/tost.py``), for patch 16 and 8.
CAB_NAMES = tuple(
    f"tost_cab_{size}_{depth}_p{p}"
    for p in (16, 8)
    for size, depth in (("tiny", 12), ("small", 12), ("tiny", 24), ("small", 24),
                        ("medium", 24), ("large", 24))
)  # fmt: skip


class ToSTCAB(Module):
    r"""The public vision ToST (``VisionTransformer`` of ``tost_vision/tost.py``, XCiT's layout).

    x: (B, C, H, W), any H, W the stem accepts (2^stages divides them for an exact grid).

        Z_0 = ConvStem(x) + fourier_features(Hp, Wp) W_pos + b_pos         (B, N, D)
        Z_l = Block_l(Z_{l-1})        l = 1..depth  (TSSA, LayerNorm eps 1e-6, LayerScale eta)
        X_0 = [cls_token; Z_depth]                                          (B, 1 + N, D)
        X_c = ClassAttentionBlock_c(X_{c-1})   c = 1..cls_attn_layers (the class token only
                                               attends; TSSA never sees it)
        logits = LN(X)[:, 0] W_head + b_head                                (B, num_classes)

    ``patch_size`` 16 gives the public four-stage stem (3 -> D/8 -> D/4 -> D/2 -> D), 8 the
    three-stage one; 2 and 4 (one and two stages) are small members for 8 x 8 images.
    ``eta`` is LayerScale's init (public: 1.0 with 12 blocks, 1e-5 with 24). Build a public
    configuration with :func:`tost_cab` (``tost_cab("tost_cab_tiny_12_p16")``).

    Children (named as the public code where whitebox has the same layer): 'patch_embed'
    (``vision.ConvStem``), 'pos_embeder' (``vision.FourierPositionalEncoding``), 'blocks.{l}'
    (``nn.Block``), 'cls_attn_blocks.{c}' (``vision.ClassAttentionBlock``), 'norm', 'head';
    param 'cls_token' (1, 1, D). BatchNorm running statistics are buffers: they are in
    ``state_dict()`` (and checkpoints) but not in ``parameters()``. ``train()`` / ``eval()``
    switch BatchNorm between batch and running statistics (default: training, as PyTorch).

    White-box access as ``models.ToSTClassifier``: ``forward(x, return_intermediates=True)``
    returns ``(logits, inter)`` with ``inter["tokens"]`` = [Z_0, ..., Z_depth] (patch tokens
    only), ``inter["pi"]`` = Pi of each TSSA block (B, H, N), and ``inter["cls_attn"]`` = the
    class token's attention over [cls; patches] in each class-attention block (B, H, 1 + N)."""

    host_input = True  # images may come from the host; forward moves them

    def __init__(
        self, image_size=224, patch_size=16, in_chans=3, num_classes=1000, dim=192, depth=12,
        num_heads=4, mlp_ratio=4, eta=1.0, cls_attn_layers=2, ln_eps=1e-6, dtype="float32",
        seed=0, input_norm=None,
    ):  # fmt: skip
        super().__init__()
        check_input_norm(input_norm)
        self.input_norm = input_norm  # applied first: raw pixels -> (x / scale - mean) / std
        stages = {2: 1, 4: 2, 8: 3, 16: 4}.get(patch_size)
        if stages is None:
            raise ValueError(f"patch_size: expected 2, 4, 8 or 16, got {patch_size}")
        dtype = np.dtype(dtype)
        self.config = dict(
            model="tost_cab", image_size=image_size, patch_size=patch_size, in_chans=in_chans,
            num_classes=num_classes, dim=dim, depth=depth, num_heads=num_heads,
            mlp_ratio=mlp_ratio, eta=eta, cls_attn_layers=cls_attn_layers, ln_eps=ln_eps,
            dtype=dtype.name, seed=seed,
        )  # fmt: skip
        if input_norm is not None:  # only then, so the public configurations stay as they are
            self.config["input_norm"] = input_norm
        rng = np.random.default_rng(seed)
        self.image_size, self.patch_size, self.in_chans, self.dim = (
            image_size, patch_size, in_chans, dim)  # fmt: skip
        self.patch_embed = ConvStem(in_chans, dim, stages, dtype, rng)
        self.pos_embeder = FourierPositionalEncoding(dim, dtype=dtype, rng=rng)
        self.blocks = ModuleList(
            Block(
                dim, num_heads, "tssa", False, None, mlp_ratio, eta, dtype, rng, INIT_STD, ln_eps
            )  # fmt: skip
            for _ in range(depth)
        )
        self.cls_attn_blocks = ModuleList(
            ClassAttentionBlock(dim, num_heads, mlp_ratio, eta, True, ln_eps, dtype, rng)
            for _ in range(cls_attn_layers)
        )
        self.norm = LayerNorm(dim, dtype=dtype, eps=ln_eps)
        self.head = Linear(dim, num_classes, dtype=dtype, rng=rng)
        self.params = {"cls_token": _normal(rng, (1, 1, dim), INIT_STD, dtype)}
        self.intermediates = None
        self.training = True

    # ---- modes and buffers (BatchNorm running statistics) ----------------------------------

    def train(self, mode=True):
        """Training mode (BatchNorm uses and updates batch statistics). Returns self."""
        self.training = bool(mode)
        set_training(self, mode)
        return self

    def eval(self):
        """Evaluation mode (BatchNorm uses its running statistics). Returns self."""
        return self.train(False)

    def buffers(self):
        """Ordered dict: dotted name -> live buffer (``patch_embed.proj.0.1.running_mean``...)."""
        return buffers(self)

    def state_dict(self):
        """Parameters and buffers: dotted name -> NumPy copy."""
        out = super().state_dict()
        out.update({k: np.array(to_numpy(v)) for k, v in self.buffers().items()})
        return out

    def load_state_dict(self, state):
        """Copy parameters and buffers from ``state`` (ValueError on missing, unexpected or
        misshapen entries)."""
        bufs = self.buffers()
        missing = [k for k in bufs if k not in state]
        if missing:
            raise ValueError(f"load_state_dict: missing keys {missing}, unexpected []")
        for k, b in bufs.items():
            v = np.asarray(to_numpy(state[k]))
            if v.shape != b.shape:
                raise ValueError(f"load_state_dict: {k} expected shape {b.shape}, got {v.shape}")
        super().load_state_dict({k: v for k, v in state.items() if k not in bufs})
        for k, b in bufs.items():
            b[...] = get_array_module(b).asarray(to_numpy(state[k]), dtype=b.dtype)
        return self

    def to(self, device):
        super().to(device)
        buffers_to(self, device)
        return self

    # ---- forward / backward -----------------------------------------------------------------

    def forward(self, x, return_intermediates=False):
        """x: (B, C, H, W) (or (B, H, W) when C = 1). Returns logits (B, num_classes)."""
        shape = getattr(x, "shape", None)
        if shape is not None and len(shape) == 3 and self.in_chans == 1:
            x = x[:, None]
        if getattr(x, "ndim", None) != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"x: expected shape (B, {self.in_chans}, H, W), got {shape}")
        xp = get_array_module(self.params["cls_token"])
        self._in_shape = shape
        x = xp.asarray(x, dtype=self.dtype)
        if self.input_norm is not None:  # a trained model takes raw images (e.g. digits 0..16)
            x = normalize_images(x, self.input_norm)
        z, (Hp, Wp) = self.patch_embed.forward(x)  # (B, N, D)
        z = z + self.pos_embeder.forward(Hp, Wp)
        tokens, pis = [z], []
        for blk in self.blocks:
            z = blk.forward(z)
            tokens.append(z)
            pis.append(blk.attn.last_pi)
        self.intermediates = {"tokens": tokens, "pi": pis}
        B = z.shape[0]
        cls = xp.broadcast_to(self.params["cls_token"], (B, 1, self.dim))
        z = xp.concatenate([cls, z], axis=1)  # (B, 1 + N, D): the class token joins now
        cls_attn = []
        for blk in self.cls_attn_blocks:
            z = blk.forward(z)
            cls_attn.append(blk.attn.last_attn)
        self.intermediates["cls_attn"] = cls_attn
        self._n_tokens = z.shape[1]
        logits = self.head.forward(self.norm.forward(z[:, 0]))  # LN is per token
        return (logits, self.intermediates) if return_intermediates else logits

    def backward(self, dlogits):
        """dlogits: (B, num_classes). Fills every gradient; returns dx in the input's shape."""
        xp = get_array_module(dlogits)
        d0 = self.norm.backward(self.head.backward(dlogits))  # (B, D)
        B = d0.shape[0]
        dz = xp.zeros((B, self._n_tokens, self.dim), dtype=d0.dtype)
        dz[:, 0] = d0
        for blk in reversed(self.cls_attn_blocks._items):
            dz = blk.backward(dz)
        self.grads = {"cls_token": dz[:, :1].sum(axis=0, keepdims=True)}
        dz = dz[:, 1:]
        for blk in reversed(self.blocks._items):
            dz = blk.backward(dz)
        self.pos_embeder.backward(dz.sum(axis=0))  # the encoding is shared by the batch
        dx = self.patch_embed.backward(dz)
        if self.input_norm is not None:
            dx = dx / dx.dtype.type(self.input_norm["scale"] * self.input_norm["std"])
        return dx.reshape(self._in_shape)


def tost_cab(name, **overrides):
    """A public vision configuration by name, e.g. ``tost_cab("tost_cab_tiny_12_p16")``
    (one of :data:`CAB_NAMES`); ``overrides`` go to :class:`ToSTCAB` (num_classes, dtype...)."""
    if name not in CAB_NAMES:
        raise ValueError(f"name: expected one of {list(CAB_NAMES)}, got {name!r}")
    _, size, depth, p = name.split("_")[1:]
    dim, heads = CAB_SIZES[size]
    depth = int(depth)
    kw = dict(patch_size=int(p[1:]), dim=dim, depth=depth, num_heads=heads,
              eta=1.0 if depth == 12 else 1e-5)  # fmt: skip
    kw.update(overrides)
    return ToSTCAB(**kw)


__all__ = [
    "BATCHNORM_EPS", "BATCHNORM_MOMENTUM", "FOURIER_DIM", "FOURIER_EPS", "FOURIER_SCALE",
    "FOURIER_TEMPERATURE", "CAB_NAMES", "CAB_SIZES", "ToSTCAB", "tost_cab", "BatchNorm2d", "ClassAttention", "ClassAttentionBlock", "Conv2d",
    "ConvStem", "FourierPositionalEncoding", "batchnorm2d_backward", "batchnorm2d_forward",
    "buffers", "buffers_to", "class_attention_backward", "class_attention_forward",
    "conv2d_backward", "conv2d_forward", "fourier_features", "set_training",
]  # fmt: skip
