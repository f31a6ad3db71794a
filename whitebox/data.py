"""Data: tokens drawn from a mixture of K random low-dimensional subspaces; the real digits
and text that ``whitebox.train`` uses, with their preprocessing.

The mixture is the setting in which the white-box derivation is exact: each group of tokens lives
(up to noise) in its own p-dimensional subspace, spanned by an orthonormal basis U_k, so the
"true" bases and memberships are known and every layer can be checked against them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "CharCodec", "SubspaceMixture", "digits_normalization", "load_digits_split", "load_text",
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
