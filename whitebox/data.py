"""Synthetic data: tokens drawn from a mixture of K random low-dimensional subspaces.

This is the setting in which the white-box derivation is exact: each group of tokens lives
(up to noise) in its own p-dimensional subspace, spanned by an orthonormal basis U_k, so the
"true" bases and memberships are known and every layer can be checked against them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SubspaceMixture", "random_orthonormal_bases", "subspace_mixture"]


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
