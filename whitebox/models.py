r"""Networks built from ``whitebox.nn``: a ToST image classifier and a ToST language model.

Both take ``attention="tssa"`` (the Token Statistics Transformer) or ``attention="softmax"``
(the ViT / GPT baseline from the same code). Each model keeps ``self.config``, a JSON-able dict
of its constructor arguments plus ``"model"``, and :func:`build` rebuilds it from that dict:

    model = build(json.loads(json.dumps(other.config)))
"""

from __future__ import annotations

import numpy as np

from .backend import get_array_module, to_numpy
from .nn import (
    INIT_STD,
    Block,
    Embedding,
    LayerNorm,
    Linear,
    Module,
    ModuleList,
    _check_finite,
    _check_tokens,
    _normal,
)
from .vision import ClassAttentionBlock, ConvStem, FourierPositionalEncoding
from .vision import buffers as _buffers
from .vision import buffers_to as _buffers_to
from .vision import set_training as _set_training


def _run_blocks(blocks, z):
    """Apply the blocks in order; return the output and the white-box intermediates:
    {"tokens": [Z_0, ..., Z_L], "pi": [Pi of each TSSA block or None], "attn": [softmax
    attention maps or None]}."""
    tokens, pis, attns = [z], [], []
    for blk in blocks:
        z = blk.forward(z)
        tokens.append(z)
        pis.append(getattr(blk.attn, "last_pi", None))
        attns.append(getattr(blk.attn, "last_attn", None))
    return z, {"tokens": tokens, "pi": pis, "attn": attns}


class ToSTClassifier(Module):
    r"""Vision ToST (or ViT with ``attention="softmax"``) for small images such as 8 x 8 digits.

    Z_0 = patchify(x) W_patch + b_patch + E_pos       (B, N, D), N = (image_size / patch_size)^2
    Z_l = Block_l(Z_{l-1})                              l = 1..L (see ``nn.Block``)
    logits = LN(pool(Z_L)) W_head + b_head              (B, num_classes)

    ``pool="mean"`` averages the N tokens; ``pool="cls"`` prepends a learned class token and
    reads it out (N + 1 tokens then).

    Children: 'patch_embed' (Linear C p^2 -> D), 'blocks.{l}', 'norm' (LayerNorm), 'head';
    params: 'pos_embed' (1, N[+1], D), and 'cls_token' (1, 1, D) with ``pool="cls"``.

    White-box access: ``forward(x, return_intermediates=True)`` returns ``(logits, inter)`` with
    ``inter["tokens"]`` = [Z_0, ..., Z_L] (each (B, N, D), NumPy/CuPy as the input) and
    ``inter["pi"]`` = [Pi of block l (B, H, N)] for TSSA (``None`` entries for softmax
    attention, whose maps are in ``inter["attn"]``, each (B, H, N, N)). The same lists stay in
    ``self.intermediates`` after every forward."""

    def __init__(
        self, image_size=8, patch_size=2, in_chans=1, num_classes=10, dim=32, depth=2,
        num_heads=4, mlp_ratio=4, attention="tssa", pool="mean", layer_scale_init=1.0,
        dtype="float32", seed=0,
    ):  # fmt: skip
        super().__init__()
        if image_size % patch_size:
            raise ValueError(
                f"patch_size: image_size={image_size} must be divisible by patch_size={patch_size}"
            )
        if pool not in ("mean", "cls"):
            raise ValueError(f"pool: expected 'mean' or 'cls', got {pool!r}")
        dtype = np.dtype(dtype)
        self.config = dict(
            model="classifier", image_size=image_size, patch_size=patch_size,
            in_chans=in_chans, num_classes=num_classes, dim=dim, depth=depth,
            num_heads=num_heads, mlp_ratio=mlp_ratio, attention=attention, pool=pool,
            layer_scale_init=layer_scale_init, dtype=dtype.name, seed=seed,
        )  # fmt: skip
        rng = np.random.default_rng(seed)
        self.image_size, self.patch_size, self.in_chans = image_size, patch_size, in_chans
        self.dim, self.pool = dim, pool
        self.num_patches = (image_size // patch_size) ** 2
        n_tokens = self.num_patches + (pool == "cls")
        self.patch_embed = Linear(in_chans * patch_size**2, dim, dtype=dtype, rng=rng)
        self.blocks = ModuleList(
            Block(dim, num_heads, attention, False, None, mlp_ratio, layer_scale_init, dtype, rng)
            for _ in range(depth)
        )
        self.norm = LayerNorm(dim, dtype=dtype)
        self.head = Linear(dim, num_classes, dtype=dtype, rng=rng)
        self.params = {"pos_embed": _normal(rng, (1, n_tokens, dim), INIT_STD, dtype)}
        if pool == "cls":
            self.params["cls_token"] = _normal(rng, (1, 1, dim), INIT_STD, dtype)
        self.intermediates = None

    def _patchify(self, x):
        """(B, C, S, S) -> (B, N, C P^2), patches in row-major order (a stride-P convolution)."""
        B, C, S, _ = x.shape
        P, G = self.patch_size, self.image_size // self.patch_size
        x = x.reshape(B, C, G, P, G, P).transpose(0, 2, 4, 1, 3, 5)  # (B, G, G, C, P, P)
        return x.reshape(B, G * G, C * P * P)  # (B, N, C P^2)

    def _unpatchify(self, d):
        B = d.shape[0]
        C, P, G = self.in_chans, self.patch_size, self.image_size // self.patch_size
        d = d.reshape(B, G, G, C, P, P).transpose(0, 3, 1, 4, 2, 5)  # (B, C, G, P, G, P)
        return d.reshape(B, C, G * P, G * P)

    def forward(self, x, return_intermediates=False):
        """x: (B, C, S, S) or (B, S, S) when C = 1. Returns logits (B, num_classes)."""
        S, C = self.image_size, self.in_chans
        shape = getattr(x, "shape", None)
        if shape is not None and len(shape) == 3 and C == 1:
            x = x[:, None]
        if getattr(x, "ndim", None) != 4 or x.shape[1:] != (C, S, S):
            raise ValueError(f"x: expected shape (B, {C}, {S}, {S}) or (B, {S}, {S}), got {shape}")
        _check_finite(x)
        xp = get_array_module(self.params["pos_embed"])
        self._in_shape = shape
        x = xp.asarray(x, dtype=self.dtype)
        z = self.patch_embed.forward(self._patchify(x))  # (B, N, D)
        if self.pool == "cls":
            cls = xp.broadcast_to(self.params["cls_token"], (z.shape[0], 1, self.dim))
            z = xp.concatenate([cls, z], axis=1)  # (B, N + 1, D)
        z = z + self.params["pos_embed"]
        z, self.intermediates = _run_blocks(self.blocks, z)
        pooled = z[:, 0] if self.pool == "cls" else z.mean(axis=1)  # (B, D)
        logits = self.head.forward(self.norm.forward(pooled))
        self._n_tokens = z.shape[1]
        return (logits, self.intermediates) if return_intermediates else logits

    def backward(self, dlogits):
        """dlogits: (B, num_classes). Fills every gradient; returns dx in the input's shape."""
        xp = get_array_module(dlogits)
        dpooled = self.norm.backward(self.head.backward(dlogits))  # (B, D)
        B, n = dpooled.shape[0], self._n_tokens
        if self.pool == "cls":
            dz = xp.zeros((B, n, self.dim), dtype=dpooled.dtype)
            dz[:, 0] = dpooled
        else:
            dz = xp.broadcast_to(dpooled[:, None, :] / n, (B, n, self.dim))  # (B, N, D)
        for blk in reversed(self.blocks._items):
            dz = blk.backward(dz)
        grads = {"pos_embed": dz.sum(axis=0, keepdims=True)}
        if self.pool == "cls":
            grads["cls_token"] = dz[:, :1].sum(axis=0, keepdims=True)
            dz = dz[:, 1:]
        self.grads = grads
        dx = self._unpatchify(self.patch_embed.backward(dz))
        return dx.reshape(self._in_shape)


class ToSTTokenClassifier(Module):
    r"""Per-token classifier on sets of tokens (no positions: permutation-equivariant).

    x: (B, n, in_dim) real tokens.
    Z_0 = x W_in + b_in;  Z_l = Block_l(Z_{l-1});  logits = LN(Z_L) W_head + b_head  (B, n, K)

    Used for the subspace-clustering task, where Pi of the TSSA blocks can be compared with the
    true groups. Children: 'embed' (Linear in_dim -> D), 'blocks.{l}', 'norm', 'head'.
    ``forward(x, return_intermediates=True)`` and ``self.intermediates`` as in
    :class:`ToSTClassifier` ("tokens", "pi" (B, H, n) per block, "attn")."""

    def __init__(
        self, in_dim, num_classes, dim=32, depth=2, num_heads=4, mlp_ratio=4, attention="tssa",
        layer_scale_init=1.0, dtype="float32", seed=0,
    ):  # fmt: skip
        super().__init__()
        dtype = np.dtype(dtype)
        self.config = dict(
            model="token_classifier", in_dim=in_dim, num_classes=num_classes, dim=dim,
            depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, attention=attention,
            layer_scale_init=layer_scale_init, dtype=dtype.name, seed=seed,
        )  # fmt: skip
        rng = np.random.default_rng(seed)
        self.in_dim, self.dim = in_dim, dim
        self.embed = Linear(in_dim, dim, dtype=dtype, rng=rng)
        self.blocks = ModuleList(
            Block(dim, num_heads, attention, False, None, mlp_ratio, layer_scale_init, dtype, rng)
            for _ in range(depth)
        )
        self.norm = LayerNorm(dim, dtype=dtype)
        self.head = Linear(dim, num_classes, dtype=dtype, rng=rng)
        self.intermediates = None

    def forward(self, x, return_intermediates=False):
        """x: (B, n, in_dim). Returns logits (B, n, num_classes)."""
        _check_tokens(x, self.in_dim)
        z = self.embed.forward(x)  # (B, n, D)
        z, self.intermediates = _run_blocks(self.blocks, z)
        logits = self.head.forward(self.norm.forward(z))
        return (logits, self.intermediates) if return_intermediates else logits

    def backward(self, dlogits):
        """dlogits: (B, n, num_classes). Fills every gradient; returns dx (B, n, in_dim)."""
        dz = self.norm.backward(self.head.backward(dlogits))
        for blk in reversed(self.blocks._items):
            dz = blk.backward(dz)
        return self.embed.backward(dz)


class ToSTLanguageModel(Module):
    r"""Causal ToST language model in nanoGPT's layout (GPT with ``attention="softmax"``).

    idx: (B, T) integer token ids, T <= block_size.
    Z_0 = wte[idx] + wpe[0..T-1];  Z_l = Block_l(Z_{l-1});  logits = LN_f(Z_L) wte^T (B, T, V)

    The output head is tied to the token embedding, so ``backward`` adds the head's gradient
    (dlogits^T LN_f(Z_L)) to the embedding's scatter-add gradient in ``wte.weight``.
    Children: 'wte', 'wpe' (Embedding), 'blocks.{l}' (``nn.Block`` with CausalTSSA), 'ln_f'.
    Init as nanoGPT: N(0, 0.02), output projections N(0, 0.02 / sqrt(2 n_layer)).

    ``bias=False`` (the public training script's default, ``bias = False``) removes every bias
    of the Linears and LayerNorms, so such checkpoints load. ``layer_scale_init``: the public
    language model initialises gamma1 = gamma2 = 1e-5 (``eta = 1e-5`` in its ``Block``); whitebox
    keeps 1.0 by default because its models are 2-layer and trained for a few thousand steps,
    where a 1e-5 start leaves the blocks switched off for most of the run (the residual stream
    is then almost the embedding); pass 1e-5 to train as the public code does. LayerNorm
    epsilon 1e-5 as the public language model. ``forward`` returns the logits of every
    position (the public model returns only the last one when it gets no targets)."""

    def __init__(
        self, vocab_size, block_size, n_layer=2, n_head=2, n_embd=32, attention="tssa",
        mlp_ratio=4, layer_scale_init=1.0, dtype="float32", seed=0, bias=True,
    ):  # fmt: skip
        super().__init__()
        dtype = np.dtype(dtype)
        self.config = dict(
            model="language_model", vocab_size=vocab_size, block_size=block_size,
            n_layer=n_layer, n_head=n_head, n_embd=n_embd, attention=attention,
            mlp_ratio=mlp_ratio, layer_scale_init=layer_scale_init, dtype=dtype.name, seed=seed,
        )  # fmt: skip
        if not bias:  # only then, so configs of older checkpoints stay as they were
            self.config["bias"] = False
        rng = np.random.default_rng(seed)
        self.vocab_size, self.block_size, self.n_embd = vocab_size, block_size, n_embd
        proj_std = INIT_STD / np.sqrt(2 * n_layer)
        self.wte = Embedding(vocab_size, n_embd, dtype=dtype, rng=rng)
        self.wpe = Embedding(block_size, n_embd, dtype=dtype, rng=rng)
        self.blocks = ModuleList(
            Block(
                n_embd,
                n_head,
                attention,
                True,
                block_size,
                mlp_ratio,
                layer_scale_init,
                dtype,
                rng,
                proj_std,
                bias=bias,
            )  # fmt: skip
            for _ in range(n_layer)
        )
        self.ln_f = LayerNorm(n_embd, dtype=dtype, bias=bias)

    def forward(self, idx):
        """idx: (B, T) integer array, T <= block_size. Returns logits (B, T, vocab_size)."""
        xp = get_array_module(self.wte.params["weight"])
        idx = xp.asarray(idx)
        if idx.ndim != 2:
            raise ValueError(f"idx: expected shape (B, T), got {idx.shape}")
        T = idx.shape[1]
        if T > self.block_size:
            raise ValueError(f"idx: sequence length {T} exceeds block_size {self.block_size}")
        z = self.wte.forward(idx) + self.wpe.forward(xp.arange(T))  # (B, T, D)
        for blk in self.blocks:
            z = blk.forward(z)
        h = self.ln_f.forward(z)  # (B, T, D)
        self._h = h
        return h @ self.wte.params["weight"].T  # (B, T, V), tied head

    def backward(self, dlogits):
        """dlogits: (B, T, vocab_size). Fills every gradient (no input gradient: ids)."""
        W = self.wte.params["weight"]  # (V, D)
        V, D = W.shape
        dW_head = dlogits.reshape(-1, V).T @ self._h.reshape(-1, D)  # (V, D)
        dz = self.ln_f.backward(dlogits @ W)  # (B, T, D)
        for blk in reversed(self.blocks._items):
            dz = blk.backward(dz)
        self.wpe.backward(dz.sum(axis=0))  # positions are shared across the batch
        self.wte.backward(dz)
        self.wte.grads["weight"] = self.wte.grads["weight"] + dW_head
        return None

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, rng=None, seed=None):
        """Sample ``max_new_tokens`` tokens after ``idx`` (B, T0); returns (B, T0 + new) NumPy ids.

        Each step feeds the last ``block_size`` tokens, divides the last logits by
        ``temperature``, keeps the ``top_k`` largest (if given) and samples from the softmax
        with ``rng`` (a ``np.random.Generator``) or ``np.random.default_rng(seed)``.
        ``temperature=0`` is greedy decoding: the argmax of the last logits (the first of
        equal maxima, as ``torch.argmax``), the public code's ``temperature == 0`` path; no
        random numbers are drawn then."""
        if temperature < 0:
            raise ValueError(f"temperature: expected >= 0 (0: greedy), got {temperature}")
        rng = rng if rng is not None else np.random.default_rng(seed)
        idx = np.array(to_numpy(idx))
        if idx.ndim != 2:
            raise ValueError(f"idx: expected shape (B, T), got {idx.shape}")
        for _ in range(max_new_tokens):
            logits = to_numpy(self.forward(idx[:, -self.block_size :])[:, -1, :])
            if temperature == 0:
                nxt = logits.argmax(axis=-1)  # (B,)
                idx = np.concatenate([idx, nxt[:, None].astype(idx.dtype)], axis=1)
                continue
            logits = logits.astype(np.float64) / temperature  # (B, V)
            if top_k is not None:
                k = min(top_k, logits.shape[-1])
                kth = np.sort(logits, axis=-1)[:, -k][:, None]
                logits = np.where(logits < kth, -np.inf, logits)
            probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
            cdf = np.cumsum(probs, axis=-1)
            u = rng.random((idx.shape[0], 1)) * cdf[:, -1:]
            nxt = np.minimum((cdf < u).sum(axis=-1), logits.shape[-1] - 1)  # inverse CDF
            idx = np.concatenate([idx, nxt[:, None].astype(idx.dtype)], axis=1)
        return idx


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

    White-box access as :class:`ToSTClassifier`: ``forward(x, return_intermediates=True)``
    returns ``(logits, inter)`` with ``inter["tokens"]`` = [Z_0, ..., Z_depth] (patch tokens
    only), ``inter["pi"]`` = Pi of each TSSA block (B, H, N), and ``inter["cls_attn"]`` = the
    class token's attention over [cls; patches] in each class-attention block (B, H, 1 + N)."""

    def __init__(
        self, image_size=224, patch_size=16, in_chans=3, num_classes=1000, dim=192, depth=12,
        num_heads=4, mlp_ratio=4, eta=1.0, cls_attn_layers=2, ln_eps=1e-6, dtype="float32",
        seed=0,
    ):  # fmt: skip
        super().__init__()
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
        _set_training(self, mode)
        return self

    def eval(self):
        """Evaluation mode (BatchNorm uses its running statistics). Returns self."""
        return self.train(False)

    def buffers(self):
        """Ordered dict: dotted name -> live buffer (``patch_embed.proj.0.1.running_mean``...)."""
        return _buffers(self)

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
        _buffers_to(self, device)
        return self

    # ---- forward / backward -----------------------------------------------------------------

    def forward(self, x, return_intermediates=False):
        """x: (B, C, H, W) (or (B, H, W) when C = 1). Returns logits (B, num_classes)."""
        shape = getattr(x, "shape", None)
        if shape is not None and len(shape) == 3 and self.in_chans == 1:
            x = x[:, None]
        if getattr(x, "ndim", None) != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"x: expected shape (B, {self.in_chans}, H, W), got {shape}")
        _check_finite(x)
        xp = get_array_module(self.params["cls_token"])
        self._in_shape = shape
        x = xp.asarray(x, dtype=self.dtype)
        z, (Hp, Wp) = self.patch_embed.forward(x)  # (B, N, D)
        z = z + self.pos_embeder.forward(Hp, Wp)
        z, self.intermediates = _run_blocks(self.blocks, z)
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


MODELS = {
    "classifier": ToSTClassifier,
    "token_classifier": ToSTTokenClassifier,
    "language_model": ToSTLanguageModel,
    "tost_cab": ToSTCAB,
}


def build(config):
    """Rebuild a model from its ``config`` (``config["model"]`` is 'classifier',
    'token_classifier' or 'language_model'; the rest are constructor arguments)."""
    config = dict(config)
    kind = config.pop("model", None)
    if kind not in MODELS:
        raise ValueError(f"config['model']: expected one of {sorted(MODELS)}, got {kind!r}")
    return MODELS[kind](**config)


def load(path, device="cpu"):
    """The trained model stored in the checkpoint ``path`` (written by ``whitebox.train``),
    ready for notebooks: ``model = whitebox.models.load("runs/digits-tssa/model.npz")``.

    Raises ``ValueError`` for a missing, truncated or foreign file."""
    from .checkpoint import load_model

    return load_model(path, device)
