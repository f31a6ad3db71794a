r"""Coding rates, the MCR² objective, its variational compression term and the TSSA step.

Notation follows the paper (Wu et al., ICLR 2025, arXiv 2412.17810), with the layout said once:

* ``Z``  : (d, n)    tokens are the n columns z_1, ..., z_n of dimension d;
* ``Pi`` : (n, K)    row j is on the simplex: the soft membership of token j in the K groups;
  the column pi_k holds group k's weights and n_k = sum_j Pi[j, k];
* ``U``  : (K, d, p) one basis U_k (d x p) per group;
* ``eps``: epsilon, the coding precision (epsilon itself, *not* epsilon squared).

The scale inside every log-determinant is d / (n eps^2) (other public code writes p/(m eps) or
d/(m eps) with eps meaning eps^2; ours is pinned here and by a test).

Functions (all work unchanged on NumPy and CuPy arrays and compute in the dtype of Z):

    coding_rate                 R(Z)       = 1/2 logdet(I + d/(n eps^2) Z Z^T)
    compression_rate            R_c(Z|Pi)  = sum_k n_k/(2n) logdet(I + d/(n_k eps^2) Z diag(pi_k) Z^T)
    rate_reduction              DeltaR     = R - R_c
    variational_compression_rate R_c^var   = sum_k n_k/(2n) sum_i log(1 + d/eps^2 y_ki)
                                 with the token statistics y_k = (U_k^T Z)^{.2} pi_k / n_k
    variational_compression_grad grad      = 1/n sum_k U_k D_k U_k^T Z diag(pi_k),
                                 D_k = diag((d/eps^2) / (1 + (d/eps^2) y_k))
    tssa_step                    Z - tau * grad
    estimate_membership          Pi[j, k] = softmax_k(||U_k^T z_j||^2 / (2 eta))

Range: the exact rates never form d/(n eps^2) or a Gram matrix; they take the singular values
of Z in float64 and are accurate (about 1e-12 relative in float64, 1e-6 in float32) for every
positive finite eps and finite Z. The variational functions need c = d/eps^2 and 1/c to be
normal numbers of the working dtype (eps in [sqrt(d tiny), sqrt(d / tiny)]) and the squared
projections |U_k^T z_j|^2 to fit in it; outside that they raise a ValueError saying so.
"""

from __future__ import annotations

import math

import numpy as np

from .backend import get_array_module

#: Tolerance for "rows of Pi sum to one" (absolute, per row), loose enough for float32.
SIMPLEX_ATOL = 1e-5

__all__ = [
    "SIMPLEX_ATOL",
    "coding_rate",
    "compression_rate",
    "rate_reduction",
    "variational_compression_rate",
    "variational_compression_grad",
    "tssa_step",
    "estimate_membership",
    "token_statistics",
]


# --------------------------------------------------------------------------- validation


def _as_float(xp, a, name):
    """The array ``a`` as a floating array (integers become float64), dtype otherwise kept."""
    a = xp.asarray(a)
    if a.dtype.kind not in "fc":
        if a.dtype.kind not in "biu":
            raise ValueError(f"{name} must be a real numeric array, got dtype {a.dtype}")
        a = a.astype(np.float64)
    if a.dtype.kind == "c":
        raise ValueError(f"{name} must be real, got complex dtype {a.dtype}")
    return a


def _check_finite(xp, a, name):
    if not bool(xp.all(xp.isfinite(a))):
        raise ValueError(f"{name} contains non-finite values (nan or inf)")


def _check_Z(Z):
    xp = get_array_module(Z)
    Z = _as_float(xp, Z, "Z")
    if Z.ndim != 2:
        raise ValueError(f"Z must have shape (d, n) (tokens as columns), got shape {Z.shape}")
    d, n = Z.shape
    if d == 0 or n == 0:
        raise ValueError(f"Z must have shape (d, n) with d >= 1 and n >= 1, got shape {Z.shape}")
    _check_finite(xp, Z, "Z")
    return xp, Z


def _check_positive(value, name):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive real number, got {value!r}") from None
    if not np.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return v


def _check_Pi(xp, Pi, n, dtype):
    Pi = _as_float(xp, Pi, "Pi")
    if Pi.ndim != 2 or Pi.shape[0] != n:
        raise ValueError(f"Pi must have shape (n, K) = ({n}, K) to match Z, got shape {Pi.shape}")
    if Pi.shape[1] == 0:
        raise ValueError(f"Pi must have at least one group (K >= 1), got shape {Pi.shape}")
    _check_finite(xp, Pi, "Pi")
    if bool(xp.any(Pi < 0)):
        raise ValueError("Pi must have rows on the simplex: found negative entries")
    row_sums = Pi.sum(axis=1)
    worst = float(xp.max(xp.abs(row_sums - 1)))
    if worst > SIMPLEX_ATOL:
        raise ValueError(
            f"Pi must have rows on the simplex (each row sums to 1); the worst row is off by {worst:.3g}"
        )
    return Pi.astype(dtype, copy=False)


def _check_U(xp, U, d, K, dtype):
    U = _as_float(xp, U, "U")
    if U.ndim != 3:
        raise ValueError(f"U must have shape (K, d, p) = ({K}, {d}, p), got shape {U.shape}")
    if U.shape[0] != K or U.shape[1] != d:
        raise ValueError(
            f"U must have shape (K, d, p) = ({K}, {d}, p) to match Pi (K={K}) and Z (d={d}), "
            f"got shape {U.shape}"
        )
    if U.shape[2] == 0:
        raise ValueError(f"U must have p >= 1 columns per basis, got shape {U.shape}")
    _check_finite(xp, U, "U")
    return U.astype(dtype, copy=False)


def _log1p_alpha_gram(xp, Z, log_sqrt_alpha):
    r"""sum_i log1p(alpha s_i^2) = logdet(I + alpha Z Z^T) for a (batch of) Z: (..., d, m).

    Sylvester's identity makes logdet(I_d + alpha Z Z^T) = logdet(I_m + alpha Z^T Z), and both
    equal sum_i log1p(alpha s_i^2) over the singular values s_i of Z. We take the s_i from an
    SVD of Z itself (not an eigendecomposition of a Gram matrix: forming Z Z^T squares the
    condition number, so a zero eigenvalue comes back as ~1e-16 ||Z||^2, which alpha ~ 1e16
    would turn into whole nats of error), in float64, after scaling Z by its largest entry so no
    square can overflow. ``log_sqrt_alpha`` (shape broadcasting against the batch) is
    log(sqrt(alpha)), so alpha itself is never formed: eps^2 may underflow or overflow.
    Each term is log1p(r^2) with r = sqrt(alpha) s for r < 1 and 2 log r + log1p(r^-2) for
    r >= 1, exact in exact arithmetic and free of overflow. Returns float64, shape (...,).
    """
    Z = Z.astype(xp.float64)
    m = xp.max(xp.abs(Z), axis=(-2, -1))  # (...,)
    safe_m = xp.where(m > 0, m, 1.0)
    s = xp.linalg.svd(Z / safe_m[..., None, None], compute_uv=False)  # (..., min(d, m))
    log_m = xp.log(safe_m)[..., None]
    lsa = xp.asarray(log_sqrt_alpha, dtype=xp.float64)[..., None]
    with np.errstate(all="ignore"):
        r = (s * safe_m[..., None]) * xp.exp(lsa)  # may be inf (huge) or 0 (underflow)
        log_r = xp.where(
            xp.isfinite(r) & (r > 0), xp.log(r), xp.log(s) + log_m + lsa
        )  # log r without overflow where r itself does not fit
        small = xp.log1p(r * r)
        big = 2 * log_r + xp.log1p(xp.exp(-2 * log_r))
        terms = xp.where(s > 0, xp.where(r < 1, small, big), 0.0)
    return terms.sum(axis=-1)


def _precision_scale(eps, d, dtype):
    """c = d / eps^2 for the variational form, refused unless c and 1/c are normal numbers of
    ``dtype`` (so neither eps^2 nor d/eps^2 can underflow or overflow)."""
    info = np.finfo(dtype)
    tiny = float(info.tiny)
    lo, hi = math.sqrt(d) * math.sqrt(tiny), math.sqrt(d) / math.sqrt(tiny)
    if not lo <= eps <= hi:
        raise ValueError(
            f"eps must lie in [{lo:.3g}, {hi:.3g}] for d = {d} in {np.dtype(dtype).name} "
            f"(d/eps^2 must be a normal {np.dtype(dtype).name} number), got {eps!r}"
        )
    return d / eps / eps


def _check_statistics(xp, y, dtype):
    """y_k holds squares of projections; refuse when they overflowed the working dtype."""
    if not bool(xp.all(xp.isfinite(y))):
        bound = math.sqrt(float(np.finfo(dtype).max))
        raise ValueError(
            f"Z (with U) is too large: the projections |U_k^T z_j| must stay below about "
            f"{bound:.3g} in {np.dtype(dtype).name} so their squares fit; rescale Z"
        )


def _scalar(x):
    """A 0-d result: a NumPy scalar on the CPU, a 0-d array on the GPU (no device sync)."""
    return x[()]


# --------------------------------------------------------------------------- exact rates


def coding_rate(Z, eps):
    r"""Coding rate of the tokens: R(Z) = 1/2 logdet(I_d + d/(n eps^2) Z Z^T).

    The number of nats needed to code the n columns of ``Z`` up to precision ``eps`` (the
    paper's coding rate; Ma et al. 2007). ``Z``: (d, n); ``eps`` > 0 is epsilon (not epsilon squared).
    Returns a scalar in the dtype of ``Z``.
    """
    xp, Z = _check_Z(Z)
    eps = _check_positive(eps, "eps")
    d, n = Z.shape
    # alpha = d / (n eps^2), kept as log(sqrt(alpha)) so eps^2 is never formed
    log_sqrt_alpha = 0.5 * (math.log(d) - math.log(n)) - math.log(eps)
    return _scalar((0.5 * _log1p_alpha_gram(xp, Z, log_sqrt_alpha)).astype(Z.dtype))


def compression_rate(Z, Pi, eps):
    r"""Rate of coding each group separately:

        R_c(Z | Pi) = sum_k n_k/(2n) logdet(I_d + d/(n_k eps^2) Z diag(pi_k) Z^T),
        n_k = sum_j Pi[j, k].

    ``Z``: (d, n), ``Pi``: (n, K) with rows on the simplex, ``eps`` > 0. An empty group
    (n_k = 0) contributes 0, its limit as n_k -> 0.
    """
    xp, Z = _check_Z(Z)
    d, n = Z.shape
    Pi = _check_Pi(xp, Pi, n, Z.dtype)
    eps = _check_positive(eps, "eps")
    Z64, Pi64 = Z.astype(xp.float64), Pi.astype(xp.float64)
    n_k = Pi64.sum(axis=0)  # (K,)
    nonempty = n_k > 0
    safe_nk = xp.where(nonempty, n_k, 1.0)
    # Z diag(pi_k) Z^T = (Z sqrt(pi_k)) (Z sqrt(pi_k))^T: one (d, n) factor per group, (K, d, n)
    factors = Z64[None, :, :] * xp.sqrt(Pi64.T)[:, None, :]
    # alpha_k = d / (n_k eps^2), kept as log(sqrt(alpha_k))
    log_sqrt_alpha = 0.5 * (math.log(d) - xp.log(safe_nk)) - math.log(eps)  # (K,)
    logdets = _log1p_alpha_gram(xp, factors, log_sqrt_alpha)  # (K,)
    terms = xp.where(nonempty, n_k / (2 * n) * logdets, 0.0)
    return _scalar(terms.sum().astype(Z.dtype))


def rate_reduction(Z, Pi, eps):
    r"""The MCR² objective DeltaR(Z | Pi) = R(Z) - R_c(Z | Pi) (the paper's rate reduction): expand
    the whole, compress the parts. ``Z``: (d, n), ``Pi``: (n, K), ``eps`` > 0."""
    xp, Z = _check_Z(Z)
    Z64 = Z.astype(xp.float64)  # subtract in float64, round once to the input dtype
    diff = coding_rate(Z64, eps) - compression_rate(Z64, Pi, eps)
    return _scalar(xp.asarray(diff).astype(Z.dtype))


# --------------------------------------------------------------------------- variational form


def _checked_all(Z, Pi, U, eps):
    xp, Z = _check_Z(Z)
    d, n = Z.shape
    Pi = _check_Pi(xp, Pi, n, Z.dtype)
    U = _check_U(xp, U, d, Pi.shape[1], Z.dtype)
    eps = _check_positive(eps, "eps")
    return xp, Z, Pi, U, eps


def _statistics(xp, Z, Pi, U):
    """Shared work of the value and the gradient: U_k^T Z, n_k and y_k."""
    UtZ = xp.einsum("kdp,dn->kpn", U, Z)  # (K, p, n): projections of every token on every basis
    n_k = Pi.sum(axis=0)  # (K,)
    safe_nk = xp.where(n_k > 0, n_k, 1)  # an empty group has y_k = 0/0; its weight is 0 anyway
    # y_k = (U_k^T Z)^{.2} pi_k / n_k, for all k: (K, p)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is refused by the callers
        y = xp.einsum("kpn,nk->kp", UtZ * UtZ, Pi) / safe_nk[:, None]
    return UtZ, n_k, y


def token_statistics(Z, Pi, U):
    r"""The token statistics y_k = (U_k^T Z)^{.2} pi_k / n_k, stacked as (K, p).

    The only thing TSSA needs to know about the tokens: per group, the weighted second moment of
    each projected coordinate. ``Z``: (d, n), ``Pi``: (n, K), ``U``: (K, d, p)."""
    xp, Z = _check_Z(Z)
    d, n = Z.shape
    Pi = _check_Pi(xp, Pi, n, Z.dtype)
    U = _check_U(xp, U, d, Pi.shape[1], Z.dtype)
    y = _statistics(xp, Z, Pi, U)[2]
    _check_statistics(xp, y, Z.dtype)
    return y


def variational_compression_rate(Z, Pi, U, eps):
    r"""The variational compression term (the paper's R_c^var):

        R_c^var(Z, Pi | U) = sum_k n_k/(2n) sum_i log(1 + (d/eps^2) y_ki),
        y_k = (U_k^T Z)^{.2} pi_k / n_k                       (shape (p,) per group).

    For p = d and orthogonal U_k it bounds ``compression_rate`` from above (a concave function
    of a PSD matrix's eigenvalues is at most the same function of its diagonal in any
    orthonormal basis), with equality when U_k diagonalizes Z diag(pi_k) Z^T. The bound needs
    the orthonormality: scaling U_k by a scales y_k by a^2, so without it the value can be
    made as small or as large as one likes. For any U (orthonormal or not, any p) it bounds
    from above the coding rate of the projected tokens U_k^T z_j at the same scale; for p < d
    that rate ignores the spread outside span(U_k), so the value can fall below the exact R_c.
    ``Z``: (d, n), ``Pi``: (n, K), ``U``: (K, d, p), ``eps`` > 0.
    """
    xp, Z, Pi, U, eps = _checked_all(Z, Pi, U, eps)
    d, n = Z.shape
    _, n_k, y = _statistics(xp, Z, Pi, U)
    _check_statistics(xp, y, Z.dtype)
    c = _precision_scale(eps, d, Z.dtype)
    # log(1 + c y): log1p where c y < 1, else log(c) + log(1/c + y), which cannot overflow
    with np.errstate(all="ignore"):
        cy = c * y
        per_entry = xp.where(cy < 1, xp.log1p(cy), math.log(c) + xp.log(1 / c + y))
    per_group = per_entry.sum(axis=1)  # (K,)
    return _scalar((n_k / (2 * n) * per_group).sum())


def variational_compression_grad(Z, Pi, U, eps):
    r"""Gradient of ``variational_compression_rate`` with respect to Z (Pi held fixed):

        grad = (1/n) sum_k U_k D_k U_k^T Z diag(pi_k),
        D_k  = diag( (d/eps^2) / (1 + (d/eps^2) y_k) ).

    Costs O(n d p K) time and memory: there is no n x n array anywhere (compare softmax
    attention's n x n score matrix). Returns an array shaped like ``Z``: (d, n).
    """
    xp, Z, Pi, U, eps = _checked_all(Z, Pi, U, eps)
    d, n = Z.shape
    K, _, p = U.shape
    UtZ, _, y = _statistics(xp, Z, Pi, U)
    _check_statistics(xp, y, Z.dtype)
    c = _precision_scale(eps, d, Z.dtype)
    # D = c / (1 + c y) written as 1 / (1/c + y): c y may overflow, 1/c + y cannot (no silent 0)
    D = 1 / ((1 / c) + y)  # (K, p)
    W = D[:, :, None] * UtZ * Pi.T[:, None, :]  # (K, p, n): D_k U_k^T Z diag(pi_k)
    # sum_k U_k W_k as one (d, K p) @ (K p, n) product
    U_flat = U.transpose(1, 0, 2).reshape(d, K * p)  # (d, K p)
    return (U_flat @ W.reshape(K * p, n)) / n


def tssa_step(Z, Pi, U, eps, tau):
    r"""One gradient-descent step on the variational compression term:

        Z_+ = Z - tau * grad_Z R_c^var(Z, Pi | U),

    the unrolled step that *is* Token Statistics Self-Attention (the paper's TSSA operator).
    For fixed Pi, orthonormal columns in each U_k and rows of Pi summing to at most 1, any
    0 <= tau <= 2 n eps^2 / d does not increase R_c^var (chapter 3 derives why).
    ``tau`` is the step size (finite, >= 0)."""
    try:
        t = float(tau)
    except (TypeError, ValueError):
        raise ValueError(f"tau must be a finite real number >= 0, got {tau!r}") from None
    if not np.isfinite(t) or t < 0:
        raise ValueError(f"tau must be a finite real number >= 0, got {tau!r}")
    xp, Z = _check_Z(Z)
    grad = variational_compression_grad(Z, Pi, U, eps)
    with np.errstate(over="ignore", invalid="ignore"):  # refused just below
        out = Z - t * grad
    if not bool(xp.all(xp.isfinite(out))):
        raise ValueError(f"tau = {tau!r} is too large: the step overflows {Z.dtype.name}")
    return out


def estimate_membership(Z, U, eta):
    r"""Soft group membership from how much of each token each basis captures:

        Pi[j, k] = softmax_k( ||U_k^T z_j||^2 / (2 eta) ),

    computed with the max subtracted. ``Z``: (d, n), ``U``: (K, d, p), ``eta`` > 0 is a
    temperature (small eta: nearly hard assignment). Returns ``Pi``: (n, K), rows on the simplex.
    """
    xp, Z = _check_Z(Z)
    d, n = Z.shape
    U = _as_float(xp, U, "U")
    if U.ndim != 3 or U.shape[1] != d or U.shape[0] == 0 or U.shape[2] == 0:
        raise ValueError(f"U must have shape (K, d, p) with d = {d} to match Z, got {U.shape}")
    _check_finite(xp, U, "U")
    U = U.astype(Z.dtype, copy=False)
    eta = _check_positive(eta, "eta")
    UtZ = xp.einsum("kdp,dn->kpn", U, Z)  # (K, p, n)
    with np.errstate(over="ignore", invalid="ignore"):  # refused just below
        energy = (UtZ * UtZ).sum(axis=1).T  # (n, K): ||U_k^T z_j||^2
    if not bool(xp.all(xp.isfinite(energy))):
        bound = math.sqrt(float(np.finfo(Z.dtype).max))
        raise ValueError(
            f"Z (with U) is too large: ||U_k^T z_j|| must stay below about {bound:.3g} in "
            f"{Z.dtype.name} so its square fits; rescale Z"
        )
    # subtract the max *before* dividing by 2 eta: the logits are <= 0, so a tiny eta gives
    # -inf (weight 0) and 0 (the winner), never inf - inf
    with np.errstate(all="ignore"):
        scores = (energy - energy.max(axis=1, keepdims=True)) / 2 / eta
    e = xp.exp(scores)
    return e / e.sum(axis=1, keepdims=True)
