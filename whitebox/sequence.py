r"""A sequence classifier for long token sequences (chapter 13), ToST or softmax attention.

    Z_0 = E[idx] + P                          (B, n, D): embeddings plus sinusoidal positions
    Z_l = Block_l(Z_{l-1})                    l = 1..L, non-causal (see ``nn.Block``)
    logits = LN(pool(Z_L)) W_head + b_head    (B, num_classes)

``pool="mean"`` averages the n tokens; ``pool="last"`` reads the last token, so that whatever
it knows of the others came through the attention layers. The positions are fixed sinusoids
(Vaswani et al.), so one model runs at any length up to ``max_len`` without new parameters.
The embeddings start at standard deviation 1 (PyTorch's ``nn.Embedding`` default), the scale
of the sinusoids, so that a token's identity is not drowned by its position at the start.
No padding mask: pad tokens are tokens like any other, for both attentions alike.
"""

from __future__ import annotations

import numpy as np

from .module import Module, ModuleList
from .nn import Block, Embedding, LayerNorm, Linear

POOLS = ("mean", "last")


def sinusoidal_positions(n, dim, dtype=np.float32):
    """P (n, dim): P[t, 2i] = sin(t / 10000^(2i/dim)), P[t, 2i+1] = cos(same)."""
    t = np.arange(n)[:, None]
    freq = 10000.0 ** (-np.arange(0, dim, 2) / dim)  # (ceil(dim / 2),)
    P = np.zeros((n, dim))
    P[:, 0::2] = np.sin(t * freq)
    P[:, 1::2] = np.cos(t * freq[: dim // 2])
    return P.astype(dtype)


class SequenceClassifier(Module):
    """Embedding + sinusoidal positions + ``depth`` blocks + pooling + head.

    ``attention`` is "tssa" (ToST) or "softmax" (the Transformer baseline); everything else is
    the same code. Children: 'embed', 'blocks.{l}', 'norm', 'head'. ``self.config`` as the other
    models (JSON-able constructor arguments plus ``"model"``)."""

    input_kind = "index"

    def __init__(
        self, vocab_size, num_classes, max_len, dim=32, depth=1, num_heads=2, mlp_ratio=2,
        attention="tssa", pool="mean", dtype="float32", seed=0,
    ):  # fmt: skip
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool: expected one of {POOLS}, got {pool!r}")
        if int(max_len) != max_len or max_len < 1:
            raise ValueError(f"max_len: expected a positive integer, got {max_len!r}")
        dtype = np.dtype(dtype)
        self.config = dict(
            model="sequence_classifier", vocab_size=vocab_size, num_classes=num_classes,
            max_len=max_len, dim=dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
            attention=attention, pool=pool, dtype=dtype.name, seed=seed,
        )  # fmt: skip
        rng = np.random.default_rng(seed)
        self.dim, self.pool, self.max_len = dim, pool, int(max_len)
        self.embed = Embedding(vocab_size, dim, dtype=dtype, rng=rng, init_std=1.0)
        self.blocks = ModuleList(
            Block(dim, num_heads, attention, mlp_ratio=mlp_ratio, dtype=dtype, rng=rng)
            for _ in range(depth)
        )
        self.norm = LayerNorm(dim, dtype=dtype)
        self.head = Linear(dim, num_classes, dtype=dtype, rng=rng)
        self._pos = sinusoidal_positions(self.max_len, dim, dtype)

    def forward(self, idx):
        """idx: (B, n) integer token ids, n <= max_len. Returns logits (B, num_classes)."""
        idx = np.asarray(idx)
        if idx.ndim != 2 or not 1 <= idx.shape[1] <= self.max_len:
            raise ValueError(f"idx: expected shape (B, n) with 1 <= n <= {self.max_len}")
        n = idx.shape[1]
        z = self.embed.forward(idx) + self._pos[:n]  # (B, n, D)
        for blk in self.blocks:
            z = blk.forward(z)
        self._n = n
        pooled = z.mean(axis=1) if self.pool == "mean" else z[:, -1]  # (B, D)
        return self.head.forward(self.norm.forward(pooled))

    def backward(self, dlogits):
        """dlogits: (B, num_classes). Fills every gradient; returns None (ids have none)."""
        dp = self.norm.backward(self.head.backward(dlogits))  # (B, D)
        B, n, D = dp.shape[0], self._n, self.dim
        if self.pool == "mean":
            dz = np.broadcast_to(dp[:, None, :] / n, (B, n, D)).copy()
        else:
            dz = np.zeros((B, n, D), dtype=dp.dtype)
            dz[:, -1] = dp
        for blk in reversed(self.blocks._items):
            dz = blk.backward(dz)
        self.embed.backward(dz)
        return None
