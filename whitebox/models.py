r"""Networks built from ``whitebox.nn``: a ToST image classifier and a ToST language model.

Both take ``attention="tssa"`` (the Token Statistics Transformer) or ``attention="softmax"``
(the ViT / GPT baseline from the same code). Each model keeps ``self.config``, a JSON-able dict
of its constructor arguments plus ``"model"``, and :func:`build` rebuilds it from that dict:

    model = build(json.loads(json.dumps(other.config)))
"""

from __future__ import annotations

import math

import numpy as np

from .backend import get_array_module, to_numpy
from .checkpoint import CheckpointError, load_checkpoint
from .data import CharCodec, check_input_norm, normalize_images
from .module import Module, ModuleList
from .nn import (
    INIT_STD,
    Block,
    Dropout,
    Embedding,
    LayerNorm,
    Linear,
    _check_tokens,
    _normal,
)
from .vision import CAB_NAMES, CAB_SIZES, ToSTCAB, tost_cab  # noqa: F401  (the public vision ToST)


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

    ``input_norm={"scale", "mean", "std"}`` (``whitebox.data.digits_normalization``; stored in
    the config, hence in every checkpoint) makes the model take raw images and apply
    x -> (x / scale - mean) / std first; ``None`` (the default) feeds x as it is.

    White-box access: ``forward(x, return_intermediates=True)`` returns ``(logits, inter)`` with
    ``inter["tokens"]`` = [Z_0, ..., Z_L] (each (B, N, D), NumPy/CuPy as the input) and
    ``inter["pi"]`` = [Pi of block l (B, H, N)] for TSSA (``None`` entries for softmax
    attention, whose maps are in ``inter["attn"]``, each (B, H, N, N)). The same lists stay in
    ``self.intermediates`` after every forward."""

    host_input = True  # images may come from the host; forward moves them

    def __init__(
        self, image_size=8, patch_size=2, in_chans=1, num_classes=10, dim=32, depth=2,
        num_heads=4, mlp_ratio=4, attention="tssa", pool="mean", layer_scale_init=1.0,
        dtype="float32", seed=0, input_norm=None,
    ):  # fmt: skip
        super().__init__()
        check_input_norm(input_norm)
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
            layer_scale_init=layer_scale_init, dtype=dtype.name, seed=seed, input_norm=input_norm,
        )  # fmt: skip
        rng = np.random.default_rng(seed)
        self.input_norm = input_norm  # applied first: raw pixels -> (x / scale - mean) / std
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
        xp = get_array_module(self.params["pos_embed"])
        self._in_shape = shape
        x = xp.asarray(x, dtype=self.dtype)
        if self.input_norm is not None:  # a trained model takes raw images (e.g. digits 0..16)
            x = normalize_images(x, self.input_norm)
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
        if self.input_norm is not None:
            dx = dx / dx.dtype.type(self.input_norm["scale"] * self.input_norm["std"])
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
    position (the public model returns only the last one when it gets no targets).
    ``vocab`` (a string of ``vocab_size`` distinct characters, stored in the config and so in
    every checkpoint) gives ``encode(text) -> ids`` and ``decode(ids) -> text``."""

    input_kind = "index"

    def encode(self, text):
        """text -> (T,) int64 ids through the stored vocabulary."""
        if self.codec is None:
            raise ValueError("this model stores no vocabulary (built without vocab=)")
        return self.codec.encode(text)

    def decode(self, ids):
        """ids -> text through the stored vocabulary."""
        if self.codec is None:
            raise ValueError("this model stores no vocabulary (built without vocab=)")
        return self.codec.decode(ids)

    def __init__(
        self, vocab_size, block_size, n_layer=2, n_head=2, n_embd=32, attention="tssa",
        mlp_ratio=4, layer_scale_init=1.0, dtype="float32", seed=0, vocab=None, bias=True,
        dropout=0.0,
    ):  # fmt: skip
        super().__init__()
        self.codec = None if vocab is None else CharCodec(vocab)
        if vocab is not None and len(vocab) != vocab_size:
            raise ValueError(f"vocab: {len(vocab)} characters for vocab_size={vocab_size}")
        dtype = np.dtype(dtype)
        self.config = dict(
            model="language_model", vocab_size=vocab_size, block_size=block_size,
            n_layer=n_layer, n_head=n_head, n_embd=n_embd, attention=attention,
            mlp_ratio=mlp_ratio, layer_scale_init=layer_scale_init, dtype=dtype.name, seed=seed,
            vocab=vocab,
        )  # fmt: skip
        if not bias:  # only then, so configs of older checkpoints stay as they were
            self.config["bias"] = False
        if dropout:
            self.config["dropout"] = dropout
        rng = np.random.default_rng(seed)
        self.vocab_size, self.block_size, self.n_embd = vocab_size, block_size, n_embd
        self.drop = Dropout(dropout, seed=seed + 1000)  # nanoGPT's dropout of the embeddings
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
                drop=dropout,
                drop_seed=seed + 1000 + 10 * (l + 1),
            )  # fmt: skip
            for l in range(n_layer)
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
        z = self.drop.forward(self.wte.forward(idx) + self.wpe.forward(xp.arange(T)))  # (B, T, D)
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
        dz = self.drop.backward(dz)
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
        random numbers are drawn then. Temperatures below :data:`MIN_TEMPERATURE` (too small
        to divide by: 1e-310 turns the logits into infinities) are greedy too, and so is any
        row whose scaled logits are not finite."""
        if not temperature >= 0:
            raise ValueError(f"temperature: expected >= 0 (0: greedy), got {temperature}")
        rng = rng if rng is not None else np.random.default_rng(seed)
        idx = np.array(to_numpy(idx))
        if idx.ndim != 2:
            raise ValueError(f"idx: expected shape (B, T), got {idx.shape}")
        for _ in range(max_new_tokens):
            logits = to_numpy(self.forward(idx[:, -self.block_size :])[:, -1, :])
            greedy = logits.argmax(axis=-1)  # (B,)
            if temperature < MIN_TEMPERATURE:
                idx = np.concatenate([idx, greedy[:, None].astype(idx.dtype)], axis=1)
                continue
            scaled = logits.astype(np.float64) / temperature  # (B, V)
            finite = np.isfinite(scaled).all(axis=-1)  # (B,)
            logits = np.where(finite[:, None], scaled, 0.0)
            if top_k is not None:
                k = min(top_k, logits.shape[-1])
                kth = np.sort(logits, axis=-1)[:, -k][:, None]
                logits = np.where(logits < kth, -np.inf, logits)
            probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
            cdf = np.cumsum(probs, axis=-1)
            u = rng.random((idx.shape[0], 1)) * cdf[:, -1:]
            nxt = np.minimum((cdf < u).sum(axis=-1), logits.shape[-1] - 1)  # inverse CDF
            nxt = np.where(finite, nxt, greedy)
            idx = np.concatenate([idx, nxt[:, None].astype(idx.dtype)], axis=1)
        return idx


#: sampling temperatures below this are greedy decoding (argmax): dividing logits by a smaller
#: (e.g. denormal) number overflows, and at 1e-6 a logit gap of 1e-4 already gives the runner-up
#: a probability of e^-100
MIN_TEMPERATURE = 1e-6


MODELS = {
    "classifier": ToSTClassifier,
    "token_classifier": ToSTTokenClassifier,
    "language_model": ToSTLanguageModel,
    "tost_cab": ToSTCAB,
}


def build(config):
    """Rebuild a model from its ``config`` (``config["model"]`` is 'classifier',
    'token_classifier', 'language_model' or 'tost_cab'; the rest are constructor arguments)."""
    config = dict(config)
    kind = config.pop("model", None)
    if kind not in MODELS:
        raise ValueError(f"config['model']: expected one of {sorted(MODELS)}, got {kind!r}")
    return MODELS[kind](**config)


#: floating-point settings of the model configs: (lowest, lowest allowed?, highest)
FLOAT_RANGES = {
    "layer_scale_init": (0.0, True, 100.0),  # LayerScale's init (public: 1.0 or 1e-5)
    "eta": (0.0, True, 100.0),  # the same for ToST-CAB
    "ln_eps": (0.0, False, 1.0),  # LayerNorm epsilon (public: 1e-5, 1e-6)
    "dropout": (0.0, True, 1.0),  # a probability below 1
}
#: keys whose default is None: the types they take
OPTIONAL_TYPES = {"input_norm": dict, "vocab": str}
#: activations of one example a config may imply (elements), beyond what its weights bound
MAX_ACTIVATIONS = 1 << 28


def _block_size(D, H, attention="tssa", causal=False, T=None, r=4, bias=True):
    """Parameters of one ``nn.Block`` (LayerNorms, attention, MLP, layer scales)."""
    b = int(bool(bias))
    n = 2 * (D + b * D) + 2 * D + (D * r * D + b * r * D) + (r * D * D + b * D)
    if attention == "softmax":
        return n + 3 * D * D + b * 3 * D + D * D + b * D
    return n + 2 * D * D + 2 * b * D + H + (H * T if causal else 0)


def expected_weights(config) -> int:
    """The number of values (parameters and buffers) a model of ``config`` stores, computed
    from the config alone (nothing is built): Python integers, so no size overflows."""
    c, kind = config, config["model"]
    if kind == "classifier":
        D, K, p = c.get("dim", 32), c.get("num_classes", 10), c.get("patch_size", 2)
        n_tok = (c.get("image_size", 8) // p) ** 2 + (c.get("pool", "mean") == "cls")
        blk = _block_size(
            D, c.get("num_heads", 4), c.get("attention", "tssa"), r=c.get("mlp_ratio", 4)
        )
        return (c.get("in_chans", 1) * p * p * D + D + c.get("depth", 2) * blk + 2 * D
                + D * K + K + n_tok * D + D * (c.get("pool", "mean") == "cls"))  # fmt: skip
    if kind == "token_classifier":
        D, K = c.get("dim", 32), c["num_classes"]
        blk = _block_size(
            D, c.get("num_heads", 4), c.get("attention", "tssa"), r=c.get("mlp_ratio", 4)
        )
        return c["in_dim"] * D + D + c.get("depth", 2) * blk + 2 * D + D * K + K
    if kind == "language_model":
        D, V, T, b = c.get("n_embd", 32), c["vocab_size"], c["block_size"], c.get("bias", True)
        blk = _block_size(D, c.get("n_head", 2), c.get("attention", "tssa"), True, T,
                          c.get("mlp_ratio", 4), b)  # fmt: skip
        return V * D + T * D + c.get("n_layer", 2) * blk + D + int(bool(b)) * D
    # tost_cab
    from .vision import FOURIER_DIM

    D, K, r = c.get("dim", 192), c.get("num_classes", 1000), c.get("mlp_ratio", 4)
    stages = {2: 1, 4: 2, 8: 3, 16: 4}.get(c.get("patch_size", 16), 1)
    chans = [c.get("in_chans", 3)] + [D // 2 ** (stages - 1 - s) for s in range(stages)]
    stem = sum(chans[s] * chans[s + 1] * 9 + 4 * chans[s + 1] + 1 for s in range(stages))
    cab = 4 * D + (3 * D * D + 3 * D + D * D + D) + 2 * r * D * D + r * D + D + 2 * D
    blk = _block_size(D, c.get("num_heads", 4), r=r)
    return (stem + 2 * FOURIER_DIM * D + D + c.get("depth", 12) * blk
            + c.get("cls_attn_layers", 2) * cab + 2 * D + D * K + K + D)  # fmt: skip


def _activations(config) -> int:
    """A rough count of the activations one example needs (elements), from the config."""
    c, kind = config, config["model"]
    if kind == "classifier":
        S, D = c.get("image_size", 8), c.get("dim", 32)
        return S * S * c.get("in_chans", 1) + (S // c.get("patch_size", 2)) ** 2 * D * 16
    if kind == "tost_cab":
        S, D = c.get("image_size", 224), c.get("dim", 192)
        n_tok = (S // c.get("patch_size", 16)) ** 2
        return S * S * (c.get("in_chans", 3) + D) + n_tok * D * c.get("depth", 12) * 16
    if kind == "language_model":
        T, D = c["block_size"], c.get("n_embd", 32)
        return T * (D * c.get("n_layer", 2) * 16 + c["vocab_size"])
    return 0  # token classifier: the tokens are the caller's


def check_config(config, where="model_config", budget=None) -> None:
    """A CheckpointError (a ValueError) naming the key unless ``config`` is a model config this
    code can build safely: a known ``model``; every key a constructor argument of the type its
    default has; ``dtype`` float32 or float64; every float finite and in :data:`FLOAT_RANGES`;
    every size a positive integer. With ``budget`` (the number of stored values) the config
    must imply exactly that many weights and a bounded amount of activations, checked before
    anything is allocated."""
    import inspect

    if not isinstance(config, dict) or config.get("model") not in MODELS:
        raise CheckpointError(f"{where} names no known model (expected one of {sorted(MODELS)})")
    sig = inspect.signature(MODELS[config["model"]]).parameters
    unknown = set(config) - {"model"} - set(sig)
    if unknown:
        raise CheckpointError(f"{where} has unknown keys {sorted(unknown)}")
    for k, v in config.items():
        if k == "model":
            continue
        default = sig[k].default
        if default is None:
            want = OPTIONAL_TYPES.get(k, object)
            ok = v is None or isinstance(v, want)
        elif default is inspect.Parameter.empty or type(default) is int:
            want, ok = int, type(v) is int
        elif type(default) is float:
            want, ok = float, type(v) in (int, float)
        else:
            want, ok = type(default), type(v) is type(default)
        if not ok:
            raise CheckpointError(f"{where}[{k!r}]: expected {want.__name__}, got {v!r:.60}")
        if type(v) is int and k != "seed" and v <= 0:
            raise CheckpointError(f"{where}[{k!r}]: expected a positive integer, got {v}")
        if k == "seed" and not 0 <= v < 2**64:
            raise CheckpointError(f"{where}['seed']: expected an integer in [0, 2**64), got {v}")
        if k in FLOAT_RANGES:
            lo, lo_ok, hi = FLOAT_RANGES[k]
            hi_ok = k != "dropout"
            if not (
                math.isfinite(v)
                and (v >= lo if lo_ok else v > lo)
                and (v <= hi if hi_ok else v < hi)
            ):
                raise CheckpointError(
                    f"{where}[{k!r}]: expected a finite number {'>=' if lo_ok else '>'} {lo} "
                    f"and {'<=' if hi_ok else '<'} {hi}, got {v}"
                )
    if config.get("dtype", "float32") not in ("float32", "float64"):
        raise CheckpointError(
            f"{where}['dtype']: expected 'float32' or 'float64', got {config['dtype']!r:.60}"
        )
    norm = config.get("input_norm")
    if norm is not None and not all(type(x) in (int, float) for x in norm.values()):
        raise CheckpointError(f"{where}['input_norm']: expected numbers, got {norm!r:.100}")
    try:
        check_input_norm(norm)
    except ValueError as e:
        raise CheckpointError(f"{where}: {e}") from None
    if budget is None:
        return
    for k, v in config.items():  # sizes beyond the stored weights cannot be right
        if type(v) is int and k != "seed" and v > max(budget, 1):
            raise CheckpointError(f"{where}[{k!r}] = {v} does not fit {budget} stored weights")
    need = expected_weights(config)
    if need != budget:
        raise CheckpointError(
            f"{where} implies {need} weights, the file holds {budget}: weights do not fit the "
            "stored config"
        )
    act = _activations(config)
    if act > MAX_ACTIVATIONS:
        raise CheckpointError(
            f"{where} implies {act} activations per example (at most {MAX_ACTIVATIONS})"
        )


def load(path, device="cpu"):
    """The trained model stored in the checkpoint ``path`` (written by ``whitebox.train``),
    ready to use, in evaluation mode (dropout off, BatchNorm on its running statistics):
    ``model = whitebox.models.load("runs/digits-tssa/model.npz")``. A digits
    model takes raw 8 x 8 images in the dataset's 0..16 scale; a text model has
    ``encode``/``decode`` over its stored vocabulary. Call ``model.train()`` to train it on.

    Raises ``CheckpointError`` (a ``ValueError``) for a missing, truncated, foreign or
    inconsistent file: the config is checked (:func:`check_config`) against the stored weights
    before anything is built."""
    ckpt = load_checkpoint(path)
    where = f"{str(path)!r}: model_config"
    for name, w in ckpt["model"].items():
        if name.endswith("num_batches_tracked"):  # BatchNorm's step counter: a non-negative int
            if w.dtype.kind not in "iu" or w.shape != () or int(w) < 0:
                raise CheckpointError(f"{str(path)!r}: buffer {name!r} is not a count")
        elif w.dtype.kind != "f" or not np.isfinite(w).all():
            raise CheckpointError(f"{str(path)!r}: weight {name!r} is not finite floating point")
        elif name.endswith("running_var") and (w < 0).any():
            raise CheckpointError(f"{str(path)!r}: buffer {name!r} holds a negative variance")
    budget = sum(int(v.size) for v in ckpt["model"].values())
    check_config(ckpt["meta"].get("model_config"), where, budget)
    try:
        model = build(ckpt["meta"]["model_config"])
        model.load_state_dict(ckpt["model"])
    except (ValueError, TypeError, KeyError, MemoryError, OverflowError) as e:
        raise CheckpointError(
            f"{str(path)!r}: weights do not fit the stored config ({e})"
        ) from None
    model.eval()  # a loaded model is used, not trained: no dropout, BatchNorm's running stats
    return model.to(device) if device != "cpu" else model
