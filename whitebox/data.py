"""Data: tokens drawn from a mixture of K random low-dimensional subspaces; the real digits
and text that ``whitebox.train`` uses, with their preprocessing; and three seeded long-sequence
tasks (ListOps as in the Long Range Arena, a count comparison, an associative recall).

The mixture is the setting in which the white-box derivation is exact: each group of tokens lives
(up to noise) in its own p-dimensional subspace, spanned by an orthonormal basis U_k, so the
"true" bases and memberships are known and every layer can be checked against them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "LISTOPS_VOCAB", "encode_listops", "make_listops", "make_majority", "make_recall", "CharCodec", "SubspaceMixture", "digits_normalization", "load_digits_split", "load_text",
    "check_input_norm", "normalize_images", "random_orthonormal_bases", "random_shift", "subspace_mixture",
]  # fmt: skip


@dataclass(frozen=True)
class SubspaceMixture:
    """Tokens and the ground truth they were drawn from.

    Z: (d, n) tokens as columns; labels: (n,) group of each token; U: (K, d, p) the true
    orthonormal bases; Pi: (n, K) the one-hot memberships (rows on the simplex)."""

    Z: np.ndarray
    labels: np.ndarray
    U: np.ndarray
    Pi: np.ndarray


def random_orthonormal_bases(K: int, d: int, p: int, rng) -> np.ndarray:
    """K independent random d x p matrices with orthonormal columns (QR of a Gaussian): (K, d, p)."""
    if not (1 <= p <= d):
        raise ValueError(f"p must satisfy 1 <= p <= d = {d}, got p = {p}")
    G = rng.standard_normal((K, d, p))
    Q, R = np.linalg.qr(G)  # (K, d, p), (K, p, p)
    # fix the sign ambiguity of QR so the draw is a function of the seed alone
    signs = np.sign(np.diagonal(R, axis1=1, axis2=2))
    signs[signs == 0] = 1
    return Q * signs[:, None, :]


def subspace_mixture(
    n_per_group: int = 64,
    d: int = 16,
    p: int = 2,
    K: int = 4,
    noise: float = 0.05,
    seed: int = 0,
    dtype=np.float64,
) -> SubspaceMixture:
    r"""Draw ``n_per_group`` tokens from each of ``K`` random ``p``-dimensional subspaces of R^d.

    Token j of group k is z_j = U_k a_j + noise * e_j with a_j ~ N(0, I_p / p) and
    e_j ~ N(0, I_d / d), so signal and noise have comparable per-token energy scales.
    The tokens are shuffled (labels tell the groups). Seeded: the same seed gives the same
    draw on every machine.
    """
    for name, v in (("n_per_group", n_per_group), ("d", d), ("p", p), ("K", K)):
        if int(v) != v or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if not (np.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    rng = np.random.default_rng(seed)
    U = random_orthonormal_bases(K, d, p, rng)  # (K, d, p)
    labels = np.repeat(np.arange(K), n_per_group)  # (n,)
    coeffs = rng.standard_normal((K * n_per_group, p)) / np.sqrt(p)  # (n, p)
    Z = np.einsum("ndp,np->dn", U[labels], coeffs)  # (d, n)
    Z += noise * rng.standard_normal(Z.shape) / np.sqrt(d)
    perm = rng.permutation(K * n_per_group)
    Z, labels = Z[:, perm], labels[perm]
    Pi = np.eye(K)[labels]  # (n, K)
    return SubspaceMixture(Z=Z.astype(dtype), labels=labels, U=U.astype(dtype), Pi=Pi.astype(dtype))


# --------------------------------------------------------------------------- real data
# The data-specific preprocessing lives here, next to the data; a trained model carries what it
# needs of it in its config (the digits' normalization, the text's vocabulary).

DIGITS_MAX = 16.0  #: the digits' pixel scale: integers 0..16 (``sklearn.datasets.load_digits``)


#: Share of the training data held out as the validation split of ``--holdout`` (tuning).
HOLDOUT_SHARE = 0.2


def load_digits_split(test_size: float = 0.25, split_seed: int = 0, holdout: bool = False):
    """The scikit-learn digits as raw images (N, 1, 8, 8) float32 in the dataset's 0..16 scale,
    split stratified and seeded: (Xtr, ytr, Xte, yte). A model trained by ``whitebox.train``
    normalizes its input itself (see :func:`digits_normalization`), so feed it these raw images.
    The split does not depend on the training seed: every run is tested on the same 450 images.
    ``holdout=True`` returns (train, validation) instead of (train, test): the validation split
    is a stratified ``HOLDOUT_SHARE`` of the training images (the test images are not touched),
    for choosing hyperparameters without looking at the test set."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)  # (1797, 64) in 0..16, (1797,)
    X = X.reshape(-1, 1, 8, 8).astype(np.float32)
    Xtr, Xte, ytr, yte = train_test_split(
        X, y, test_size=test_size, stratify=y, random_state=split_seed
    )
    if holdout:
        Xtr, Xte, ytr, yte = train_test_split(
            Xtr, ytr, test_size=HOLDOUT_SHARE, stratify=ytr, random_state=split_seed
        )
    return Xtr, ytr.astype(np.int64), Xte, yte.astype(np.int64)


def digits_normalization(Xtr) -> dict:
    """{"scale", "mean", "std"} of raw training images: x -> (x / scale - mean) / std maps them
    to zero mean and unit variance (mean and std of x / scale over the whole training set)."""
    x = np.asarray(Xtr, dtype=np.float32) / np.float32(DIGITS_MAX)
    return {"scale": DIGITS_MAX, "mean": float(x.mean()), "std": float(x.std())}


def check_input_norm(norm) -> None:
    """A ValueError naming ``input_norm`` unless it is None or {"scale", "mean", "std"} with
    finite values, scale > 0 and std > 0."""
    if norm is not None and (
        not isinstance(norm, dict)
        or set(norm) != {"scale", "mean", "std"}
        or not all(np.isfinite(float(v)) for v in norm.values())
        or not (norm["scale"] > 0 and norm["std"] > 0)
    ):
        raise ValueError(f"input_norm: expected finite scale > 0, mean, std > 0; got {norm!r}")


def normalize_images(x, norm):
    """(x / scale - mean) / std in x's floating dtype (NumPy or CuPy); ``norm`` as returned by
    :func:`digits_normalization`."""
    t = x.dtype.type
    return (x / t(norm["scale"]) - t(norm["mean"])) / t(norm["std"])


def random_shift(x, rng, max_shift: int = 1):
    """Shift each image (B, C, H, W) by up to ``max_shift`` pixels in each direction, padding
    with the background value (the batch's minimum): cheap augmentation for 8 x 8 digits."""
    B, C, H, W = x.shape
    padded = np.full((B, C, H + 2 * max_shift, W + 2 * max_shift), x.min(), dtype=x.dtype)
    padded[:, :, max_shift : max_shift + H, max_shift : max_shift + W] = x
    dy = rng.integers(0, 2 * max_shift + 1, size=B)
    dx = rng.integers(0, 2 * max_shift + 1, size=B)
    rows = dy[:, None] + np.arange(H)[None, :]  # (B, H)
    cols = dx[:, None] + np.arange(W)[None, :]  # (B, W)
    b = np.arange(B)[:, None, None]
    return padded[b, :, rows[:, :, None], cols[:, None, :]].transpose(0, 3, 1, 2)


def load_text(path=None) -> str:
    """The training text: ``path`` read as UTF-8, or CPython's ``pydoc_data.topics``."""
    if path is None:
        from pydoc_data.topics import topics

        return "".join(topics[k] for k in sorted(topics))
    p = Path(path)
    try:
        if not p.is_file():  # a regular file (or a link to one): not a folder, FIFO or device
            raise ValueError(f"--text-file: {str(path)!r} does not exist or is not a file")
        raw = p.read_bytes()
    except OSError as e:  # e.g. no permission to read it
        raise ValueError(f"--text-file: cannot read {str(path)!r} ({e.strerror or e})") from None
    if not raw.strip():
        raise ValueError(f"--text-file: {str(path)!r} is empty")
    if b"\x00" in raw:
        raise ValueError(f"--text-file: {str(path)!r} looks binary (it contains NUL bytes)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"--text-file: {str(path)!r} is not UTF-8 text ({e})") from None


class CharCodec:
    """Characters <-> integer ids over a vocabulary (the sorted set of characters of a text)."""

    def __init__(self, chars):
        self.chars = list(chars)
        self.index = {c: i for i, c in enumerate(self.chars)}
        if len(self.index) != len(self.chars) or not all(
            isinstance(c, str) and len(c) == 1 for c in self.chars
        ):
            raise ValueError("chars: expected distinct single characters")

    def encode(self, s: str) -> np.ndarray:
        unknown = sorted(set(s) - self.index.keys())
        if unknown:
            raise ValueError(f"text: characters outside the vocabulary: {''.join(unknown)!r}")
        return np.fromiter((self.index[c] for c in s), dtype=np.int64, count=len(s))

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


# --------------------------------------------------------------------------- long sequences
# Seeded, nothing downloaded. ListOps follows the Long Range Arena's generator
# (``lra_benchmarks/data/listops.py``, Tay et al. 2021) rule for rule; the two other tasks are
# built to separate what a layer that sees only token statistics can and cannot do.

LISTOPS_OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
#: The model's vocabulary for ListOps, one id per token: the pad (id 0), the ten values, the four
#: operators and the closing bracket. Sources are split on spaces; each piece is one token.
LISTOPS_VOCAB = ("<pad>",) + tuple(str(v) for v in range(10)) + LISTOPS_OPERATORS + ("]",)
LISTOPS_VALUE_P = 0.75  #: a node below max_depth is a value with this probability (LRA: r > 0.25)


def _positive_int(name, v, low=1):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {v!r}")
    return int(v)


def _listops_node(rng, depth, max_depth, max_args, out, budget):
    """Append one node's tokens to ``out``; return its value, or None once ``out`` holds
    ``budget`` tokens (the tree is then too long to keep: generation stops early)."""
    if len(out) >= budget:
        return None
    if depth >= max_depth or rng.random() < LISTOPS_VALUE_P:
        v = int(rng.integers(10))
        out.append(str(v))
        return v
    op = LISTOPS_OPERATORS[int(rng.integers(4))]
    out.append(op)
    args = []
    for _ in range(int(rng.integers(2, max_args + 1))):
        a = _listops_node(rng, depth + 1, max_depth, max_args, out, budget)
        if a is None:
            return None
        args.append(a)
    out.append("]")
    if op == "[MIN":
        return min(args)
    if op == "[MAX":
        return max(args)
    if op == "[MED":  # LRA: int(np.median(args)), the integer part of the median
        s, m = sorted(args), len(args) // 2
        return s[m] if len(s) % 2 else (s[m - 1] + s[m]) // 2
    return sum(args) % 10  # [SM


def make_listops(num, min_length=500, max_length=2000, max_depth=10, max_args=10, seed=0):
    """``num`` distinct ListOps expressions and their values: (sources, labels).

    The Long Range Arena's rules: a node is a value 0-9 with probability 0.75, else an operator
    ``[MIN``, ``[MAX``, ``[MED`` (the integer part of the median) or ``[SM`` (the sum mod 10),
    drawn uniformly, with a number of arguments drawn uniformly from 2..``max_args``, each a node
    one level deeper, closed by ``]``. The root is at depth 1; a node at ``max_depth`` is always a
    value. A tree is kept iff ``min_length < length < max_length``, its length counted in
    operator, value and ``]`` tokens, and only if its source is new (no duplicates).

    ``sources``: strings of space-separated tokens, e.g. ``"[MAX 2 9 [MIN 4 7 ] 0 ]"`` (LRA's
    files wrap them in parentheses that its input pipeline strips); ``labels``: ints 0-9.
    Tokenization for a model (:func:`encode_listops`): one token per piece, 16 ids in all
    (:data:`LISTOPS_VOCAB`: the pad 0, ten digits, four operators, ``]``). Seeded
    (``np.random.default_rng(seed)``): the same seed gives the same data on every machine."""
    num = _positive_int("num", num)
    min_length = _positive_int("min_length", min_length, low=0)
    max_length = _positive_int("max_length", max_length, low=min_length + 2)
    max_depth = _positive_int("max_depth", max_depth)
    max_args = _positive_int("max_args", max_args, low=2)
    longest = 1  # the longest tree the depth and the arguments allow, from the leaves up
    for _ in range(max_depth - 1):
        longest = min(2 + max_args * longest, max_length)
    if longest <= min_length:
        raise ValueError(
            f"min_length: no tree of max_depth={max_depth}, max_args={max_args} is longer than "
            f"{min_length} tokens (the longest has {longest})"
        )
    rng = np.random.default_rng(seed)
    found = {}  # source -> label, in the order drawn
    for _ in range(2000 * num + 100_000):
        out = []
        value = _listops_node(rng, 1, max_depth, max_args, out, max_length)
        if value is not None and min_length < len(out) < max_length:
            found.setdefault(" ".join(out), value)
            if len(found) == num:
                return list(found), [int(v) for v in found.values()]
    raise ValueError(
        f"min_length: too few trees fall inside ({min_length}, {max_length}); widen the bounds"
    )


def encode_listops(sources, length):
    """Token ids (N, ``length``) int64 of ListOps sources, padded at the end with 0 (the pad);
    a ValueError names ``sources`` for an unknown token or a source longer than ``length``."""
    length = _positive_int("length", length)
    index = {t: i for i, t in enumerate(LISTOPS_VOCAB)}
    ids = np.zeros((len(sources), length), dtype=np.int64)
    for i, s in enumerate(sources):
        toks = s.split()
        if len(toks) > length or any(t not in index or t == "<pad>" for t in toks):
            raise ValueError(f"sources: item {i} has an unknown token or more than {length} tokens")
        ids[i, : len(toks)] = [index[t] for t in toks]
    return ids


def make_majority(num, length, num_symbols=8, seed=0):
    """A global statistic: (tokens (num, length) int64 in 0..num_symbols-1, labels (num,)).

    Label 1 iff symbol 1 occurs more often than symbol 0, else 0 (the two never tie). The more
    frequent of the two fills 15-25 % of the positions, the other 5 % up to 0.8 times as many;
    the remaining positions hold symbols 2..num_symbols-1 uniformly; positions are shuffled.
    Which of the two wins is a fair coin. The label depends on the counts alone, not on the
    order: a sum over the tokens (a first or second moment of one-hot features) carries it."""
    num, length = _positive_int("num", num), _positive_int("length", length, low=40)
    num_symbols = _positive_int("num_symbols", num_symbols, low=3)
    rng = np.random.default_rng(seed)
    tokens = np.empty((num, length), dtype=np.int64)
    labels = rng.integers(2, size=num)
    for i in range(num):
        hi = int(rng.integers(int(0.15 * length), int(0.25 * length) + 1))
        lo = int(rng.integers(int(0.05 * length), int(0.8 * hi) + 1))
        rest = rng.integers(2, num_symbols, size=length - hi - lo)
        win = labels[i]
        seq = np.concatenate([np.full(hi, win), np.full(lo, 1 - win), rest])
        tokens[i] = rng.permutation(seq)
    return tokens, labels.astype(np.int64)


def make_recall(num, length, num_keys=64, num_values=8, seed=0):
    """Associative recall: (tokens (num, length) int64, labels (num,) in 0..num_values-1).

    Each of the first ``length - 1`` tokens stores one key-value pair (id ``k * num_values +
    v``); the last token is a query (id ``num_keys * num_values + q``). The query's key occurs
    in exactly one pair, at a uniform position, with a uniform value: the label. The other pairs
    draw their keys uniformly from the remaining keys and their values uniformly. Vocabulary:
    ``num_keys * (num_values + 1)`` ids. Answering means reading one token chosen by the query,
    which per-coordinate sums over all tokens do not single out."""
    num, length = _positive_int("num", num), _positive_int("length", length, low=3)
    K = _positive_int("num_keys", num_keys, low=2)
    V = _positive_int("num_values", num_values, low=2)
    rng = np.random.default_rng(seed)
    q = rng.integers(K, size=num)  # (num,)
    keys = rng.integers(K - 1, size=(num, length - 1))
    keys += keys >= q[:, None]  # uniform over the keys other than q
    values = rng.integers(V, size=(num, length - 1))
    where = rng.integers(length - 1, size=num)
    labels = rng.integers(V, size=num)
    rows = np.arange(num)
    keys[rows, where], values[rows, where] = q, labels
    tokens = np.concatenate([keys * V + values, (K * V + q)[:, None]], axis=1)
    return tokens.astype(np.int64), labels.astype(np.int64)
