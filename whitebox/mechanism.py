r"""What a trained causal language model does with its context, measured (chapter 11).

Causal TSSA (``nn.causal_tssa_forward``) gives token t the output

    v_{hti} = -Pi_{ht} w_{hti} / (1 + y_{hti}),
    y_{hti} = sum_{u<=t} Pi_{hu} w_{hui}^2 / (sum_{u<=t} Pi_{hu} + 1e-8),

so an earlier token u reaches token t only through its weight Pi_{hu} / (sum_{u'<=t} Pi_{hu'}
+ 1e-8) in the prefix average y_t, and that weight was fixed when u was processed. The functions
here measure what follows from this on trained models and compare it with references whose
answer is known:

* :func:`prefix_weights` -- the weight of token t - lag in y_t, per block, per position;
* :func:`loss_by_position` -- the held-out loss at each position of the context window;
* :func:`lag_sensitivity` -- how much the next-token distribution at position t moves (KL, nats)
  when the token at t - k is replaced;
* :func:`lag_task` -- a synthetic sequence whose entropy floor is known in closed form
  (:func:`lag_task_floor`): the next symbol is a fixed permutation of the one two back with
  probability ``p_copy``, else uniform;
* :func:`ngram_loss` and :func:`choose_add_k` -- add-k smoothed n-gram references.

Every function takes and returns NumPy arrays (a model on a GPU is read back to the host)."""

from __future__ import annotations

import math

import numpy as np

from .backend import to_numpy
from .nn import MEMBERSHIP_EPS, CausalTSSA, SoftmaxAttention

__all__ = [
    "LAG_ALPHABET",
    "bucket_means",
    "choose_add_k",
    "lag_sensitivity",
    "lag_task",
    "lag_task_floor",
    "lag_task_permutation",
    "loss_by_position",
    "ngram_loss",
    "ngram_references",
    "prefix_weights",
    "random_replacements",
    "windows",
]

#: the symbols of the synthetic task (16 letters, no newline)
LAG_ALPHABET = "abcdefghijklmnop"


# ---- the synthetic task --------------------------------------------------------------------


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
    return int(value)


def _check_prob(name, value):
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: expected a probability in [0, 1], got {value!r}")
    return float(value)


def lag_task_permutation(num_symbols=16, seed=0) -> np.ndarray:
    """The fixed permutation sigma of the synthetic task (seeded, so the task is one task)."""
    num_symbols = _check_int("num_symbols", num_symbols, 2)
    return np.random.default_rng([_check_int("seed", seed, 0), 7]).permutation(num_symbols)


def lag_task(length, num_symbols=16, lag=2, p_copy=0.9, seed=0, perm_seed=0) -> str:
    r"""A synthetic text: x_{t+1} = sigma(x_{t+1-lag}) with probability ``p_copy``, else uniform.

    With ``lag=2`` the next symbol is a fixed function of the one two back. The symbols are the
    first ``num_symbols`` letters of :data:`LAG_ALPHABET`; the first ``lag`` symbols are uniform.
    ``sigma`` is :func:`lag_task_permutation` (``perm_seed``); ``seed`` draws the sequence. The
    uniform draw may land on sigma's value too, so p(next = sigma(x_{t+1-lag})) is
    p_copy + (1 - p_copy) / num_symbols and the entropy floor is :func:`lag_task_floor`."""
    length = _check_int("length", length, 1)
    num_symbols = _check_int("num_symbols", num_symbols, 2)
    if num_symbols > len(LAG_ALPHABET):
        raise ValueError(f"num_symbols: expected at most {len(LAG_ALPHABET)}, got {num_symbols}")
    lag = _check_int("lag", lag, 1)
    p_copy = _check_prob("p_copy", p_copy)
    sigma = lag_task_permutation(num_symbols, perm_seed)
    rng = np.random.default_rng(_check_int("seed", seed, 0))
    copy = rng.random(length) < p_copy
    fresh = rng.integers(0, num_symbols, size=length)
    x = np.empty(length, dtype=np.int64)
    for t in range(length):
        x[t] = sigma[x[t - lag]] if t >= lag and copy[t] else fresh[t]
    return "".join(LAG_ALPHABET[i] for i in x)


def lag_task_floor(num_symbols=16, p_copy=0.9) -> float:
    """The entropy (nats) of the next symbol of :func:`lag_task` given its whole past: the loss
    no predictor can beat once it sees the symbol ``lag`` back.

    H = -q ln q - (V - 1) r ln r with r = (1 - p_copy) / V and q = p_copy + r."""
    num_symbols = _check_int("num_symbols", num_symbols, 2)
    p_copy = _check_prob("p_copy", p_copy)
    r = (1.0 - p_copy) / num_symbols
    q = p_copy + r
    return -(q * math.log(q)) - ((num_symbols - 1) * r * math.log(r) if r > 0 else 0.0)


# ---- n-gram references ---------------------------------------------------------------------


def _ids(name, seq):
    a = np.asarray(seq)
    if a.ndim != 1 or a.dtype.kind not in "iu" or (a.size and a.min() < 0):
        raise ValueError(f"{name}: expected a 1-D array of non-negative integer ids")
    return a.astype(np.int64)


def ngram_loss(train, test, n, k, vocab_size) -> float:
    r"""Mean held-out loss (nats per token) of an add-k smoothed n-gram model.

        p(x_t | x_{t-n+1..t-1}) = (c(context, x_t) + k) / (c(context) + k V)

    with the counts c taken over ``train`` (every window of n consecutive ids). Each token of
    ``test`` from its (n-1)-th on is scored with its n-1 predecessors in ``test``, so every
    order is scored on the same tokens when called with the same ``test``: pass
    ``test[max_order - n:]`` to score the last ``len(test) - max_order + 1`` tokens with each
    order. ``n = 1`` is the add-k unigram. ``k > 0``; ``vocab_size`` V counts every id."""
    train, test = _ids("train", train), _ids("test", test)
    n = _check_int("n", n, 1)
    vocab_size = _check_int("vocab_size", vocab_size, 1)
    if isinstance(k, bool) or not isinstance(k, int | float) or not k > 0:
        raise ValueError(f"k: expected a positive number, got {k!r}")
    if max(int(train.max(initial=0)), int(test.max(initial=0))) >= vocab_size:
        raise ValueError(f"vocab_size: ids must lie in [0, {vocab_size})")
    if len(train) < n or len(test) < n:
        raise ValueError(f"train, test: need at least n = {n} ids each")

    def codes(seq):  # each n-window as one integer (base V); fits int64 for V^n < 2^63
        m = len(seq) - n + 1
        code = np.zeros(m, dtype=np.int64)
        for j in range(n):
            code = code * vocab_size + seq[j : j + m]
        return code

    if vocab_size**n >= 2**62:
        raise ValueError(f"n: vocab_size ** n must stay below 2**62, got {vocab_size}**{n}")
    full_train, full_test = codes(train), codes(test)
    ctx_train, ctx_test = full_train // vocab_size, full_test // vocab_size
    uf, cf = np.unique(full_train, return_counts=True)
    uc, cc = np.unique(ctx_train, return_counts=True)

    def lookup(keys, counts, q):
        i = np.searchsorted(keys, q)
        i = np.minimum(i, len(keys) - 1)
        return np.where(keys[i] == q, counts[i], 0)

    num = lookup(uf, cf, full_test) + k
    den = lookup(uc, cc, ctx_test) + k * vocab_size
    return float(-np.mean(np.log(num / den)))


def choose_add_k(train, val, n, vocab_size, grid=(0.003, 0.01, 0.03, 0.1, 0.3, 1.0)) -> dict:
    """Choose k of :func:`ngram_loss` on a validation stretch; refuses a choice on the grid's
    edge (``ValueError``: extend ``grid``). Returns {'k', 'grid', 'val_losses'}."""
    grid = tuple(float(g) for g in grid)
    if len(grid) < 3 or any(not g > 0 for g in grid) or list(grid) != sorted(set(grid)):
        raise ValueError(f"grid: expected at least 3 increasing positive values, got {grid}")
    losses = [ngram_loss(train, val, n, g, vocab_size) for g in grid]
    best = int(np.argmin(losses))
    if best in (0, len(grid) - 1):
        raise ValueError(f"grid: the best k for n = {n} is {grid[best]}, on the grid's edge")
    return {"k": grid[best], "grid": list(grid), "val_losses": [round(v, 4) for v in losses]}


K_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
"""The grid of add-k constants :func:`ngram_references` chooses from."""


def ngram_references(ids, orders=(2, 3, 4), grid=K_GRID) -> dict:
    """n-gram references on a text split as ``whitebox.train.TextTask`` splits it: for each
    order n, the add-one loss and the add-k loss on the last 10% (counts from the first 90%),
    with k chosen by :func:`choose_add_k` on the 80-90% stretch (counts from the first 80%).
    Every order is scored on the same tokens (from the ``max(orders) - 1``-th of each stretch).
    Returns {'n-gram': {'add_one', 'add_k', 'k', 'grid', 'val_losses'}}."""
    ids = _ids("ids", ids)
    vocab_size = int(ids.max()) + 1
    cut, split = int(0.8 * len(ids)), int(0.9 * len(ids))
    top = max(orders)
    out = {}
    for n in orders:
        pick = choose_add_k(ids[:cut], ids[cut + top - n : split], n, vocab_size, grid)
        test = ids[split + top - n :]
        out[f"{n}-gram"] = {
            "add_one": round(ngram_loss(ids[:split], test, n, 1.0, vocab_size), 4),
            "add_k": round(ngram_loss(ids[:split], test, n, pick["k"], vocab_size), 4),
            **pick,
        }
    return out


# ---- measurements on a trained language model ----------------------------------------------


def windows(data, T, count):
    """``count`` evenly spaced windows of T + 1 ids from ``data``: (inputs, targets), (count, T)."""
    data = _ids("data", data)
    T, count = _check_int("T", T, 1), _check_int("count", count, 1)
    if len(data) < T + 1:
        raise ValueError(f"data: need at least T + 1 = {T + 1} ids, got {len(data)}")
    starts = np.linspace(0, len(data) - T - 1, count).astype(np.int64)
    chunk = data[starts[:, None] + np.arange(T + 1)[None, :]]
    return chunk[:, :-1], chunk[:, 1:]


def _log_probs(model, x):
    logits = to_numpy(model.forward(x)).astype(np.float64)  # (B, T, V)
    logits -= logits.max(axis=-1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))


def loss_by_position(model, x, y) -> np.ndarray:
    """The cross-entropy (nats) at each position t = 0..T-1, averaged over the windows: (T,)."""
    logp = _log_probs(model, np.asarray(x))
    y = np.asarray(y)
    picked = np.take_along_axis(logp, y[..., None], axis=-1)[..., 0]  # (B, T)
    return -picked.mean(axis=0)


def bucket_means(values, buckets) -> list:
    """Means of ``values`` over the inclusive position ranges ``buckets`` [(lo, hi), ...]."""
    values = np.asarray(values, dtype=np.float64)
    out = []
    for lo, hi in buckets:
        if not 0 <= lo <= hi < len(values):
            raise ValueError(f"buckets: ({lo}, {hi}) outside positions 0..{len(values) - 1}")
        out.append(float(values[lo : hi + 1].mean()))
    return out


def prefix_weights(model, x, lag=1) -> np.ndarray:
    r"""The weight of token t - ``lag`` in token t's statistics, per block and position.

    For causal TSSA: Pi_{h,t-lag} / (sum_{u<=t} Pi_{hu} + 1e-8), averaged over heads and
    windows (the weight of u in y_t, ``nn.causal_tssa_forward``). For causal softmax attention:
    A_{h,t,t-lag}, averaged the same way. Returns (n_blocks, T) with NaN for t < lag."""
    x = np.asarray(x)
    lag = _check_int("lag", lag, 0)
    model.forward(x)
    rows = []
    for blk in model.blocks:
        attn = blk.attn
        T = x.shape[1]
        w = np.full(T, np.nan)
        if isinstance(attn, CausalTSSA):
            pi = to_numpy(attn._cache["pi"]).astype(np.float64)  # (B, H, T)
            den = np.cumsum(pi, axis=2) + MEMBERSHIP_EPS
            w[lag:] = (pi[:, :, : T - lag] / den[:, :, lag:]).mean(axis=(0, 1))
        elif isinstance(attn, SoftmaxAttention):
            a = to_numpy(attn._cache["attn"]).astype(np.float64)  # (B, H, T, T)
            t = np.arange(lag, T)
            w[lag:] = a[:, :, t, t - lag].mean(axis=(0, 1))
        else:
            raise ValueError("model: expected blocks with CausalTSSA or SoftmaxAttention")
        rows.append(w)
    return np.array(rows)


def lag_sensitivity(model, x, t, k, replacements) -> float:
    r"""Mean KL(p || p') (nats) of the next-token distribution at position t, where p' is the
    model's prediction after the token at position t - k is replaced.

    x: (B, T) windows; ``replacements``: (B,) ids put at t - k (each must differ from the id it
    replaces, so that every window is a real change)."""
    x = np.array(x, dtype=np.int64)
    t, k = _check_int("t", t, 0), _check_int("k", k, 1)
    if not k <= t < x.shape[1]:
        raise ValueError(f"t: expected k <= t < {x.shape[1]}, got t = {t}, k = {k}")
    replacements = np.asarray(replacements, dtype=np.int64)
    if replacements.shape != (x.shape[0],) or (replacements == x[:, t - k]).any():
        raise ValueError("replacements: expected one id per window, each differing from x[:, t-k]")
    changed = x.copy()
    changed[:, t - k] = replacements
    logp = _log_probs(model, x[:, : t + 1])[:, t]
    logq = _log_probs(model, changed[:, : t + 1])[:, t]
    return float((np.exp(logp) * (logp - logq)).sum(axis=-1).mean())


def random_replacements(x_col, pool, rng) -> np.ndarray:
    """For each id of ``x_col``, an id drawn uniformly from ``pool`` (e.g. the held-out text, so
    replacements follow the characters' frequencies), redrawn until it differs from the id."""
    x_col = np.asarray(x_col, dtype=np.int64)
    pool = _ids("pool", pool)
    if len(np.unique(pool)) < 2:
        raise ValueError("pool: expected at least two distinct ids")
    out = pool[rng.integers(0, len(pool), size=x_col.shape)]
    while (same := out == x_col).any():
        out[same] = pool[rng.integers(0, len(pool), size=int(same.sum()))]
    return out
