"""Exercise 02: the token statistics y_k, the variational compression term R_c^var and the
eigenbases where the bound is tight."""

from __future__ import annotations

import numpy as np

from .. import mcr2
from .core import (
    FLOOR,
    TOL,
    BadOutput,
    Case,
    CheckResult,
    Slip,
    Spec,
    compare,
    orthonormal,
    run_check,
    soft_pi,
)
from .rates import LOG_BASES, _hard


def _stats(Z, Pi, U, *, transpose_U=False, by_n=False, normalize=True, square=True, pi_power=1,
           centre=False, minus_one=False, hard=False):  # fmt: skip
    """y_k = (U_k^T Z)^2 pi_k / n_k with optional slips: (K, p)."""
    if hard:
        Pi = _hard(Pi)
    UtZ = np.einsum("kdp,dn->kpn", U, Z) if not transpose_U else np.einsum("kpd,dn->kpn", U, Z)
    nk = Pi.sum(axis=0)  # (K,)
    if centre:  # the weighted mean of each coordinate subtracted: a variance
        UtZ = UtZ - (np.einsum("kpn,nk->kp", UtZ, Pi) / nk[:, None])[:, :, None]
    P = UtZ * UtZ if square else UtZ
    y = np.einsum("kpn,nk->kp", P, Pi**pi_power)
    if normalize:
        y = y / (Z.shape[1] if by_n else nk[:, None] - (1 if minus_one else 0))
    return y


def _var_rate(Z, Pi, U, eps, *, half=0.5, eps_power=2, weight="n_k/n", scale_n=False, c_dim="d",
              base=1.0, mean_coords=False, **kw):  # fmt: skip
    d, n = Z.shape
    y = _stats(Z, Pi, U, **kw)
    K, p = y.shape
    # c = d/eps^2 (right), p/eps^2, or 1 (the scale dropped altogether: log(1 + y))
    c = 1.0 if c_dim == "1" else {"d": d, "p": p}[c_dim] / eps**eps_power
    c = c / (n if scale_n else 1)
    nk = (_hard(Pi) if kw.get("hard") else Pi).sum(axis=0)
    per = np.log1p(c * y)  # (K, p)
    per = per.mean(axis=1) if mean_coords else per.sum(axis=1)  # (K,)
    w = {"n_k/n": nk / n, "1": np.ones(K), "1/K": np.full(K, 1.0 / K)}[weight]
    return float((w * half * per).sum() / base)


def _variational_cases(seed):
    rng = np.random.default_rng(seed)
    # the square case first: a transposed U runs there (and is named) but fails on p < d
    random = Case(
        "random d=6 n=10 K=3 p=2 ε=0.5",
        {
            "Z": rng.standard_normal((6, 10)),
            "Pi": soft_pi(rng, 10, 3),
            "U": orthonormal(rng, 3, 6, 2),
            "eps": 0.5,
        },
    )
    square = Case(
        "square non-orthogonal U, d=p=4 n=7 K=2 ε=0.8",
        {
            "Z": rng.standard_normal((4, 7)),
            "Pi": soft_pi(rng, 7, 2, sharp=2.0),
            "U": rng.standard_normal((2, 4, 4)),
            "eps": 0.8,
        },
    )
    return [square, random]  # fmt: skip


def _token_statistics_spec() -> Spec:
    def cases():
        return [Case(c.name.rsplit(" ε", 1)[0], {k: c.args[k] for k in ("Z", "Pi", "U")})
                for c in _variational_cases(201)]  # fmt: skip

    def ref(c):
        return {"y": mcr2.token_statistics(c.args["Z"], c.args["Pi"], c.args["U"])}

    def slip(**kw):
        return lambda c: {"y": _stats(c.args["Z"], c.args["Pi"], c.args["U"], **kw)}

    hard = Slip("hard groups (the argmax of Π) instead of the soft Π", "weight every token by "
                "its membership Π_jk as it is, and n_k = Σ_j Π_jk: no rounding of Π to 0 or 1.",
                slip(hard=True))  # fmt: skip

    return Spec(
        "token_statistics", "token_statistics(Z, Pi, U)", "whitebox.token_statistics", cases,
        ref, quantity="y",
        slips=[
            Slip("n instead of n_k", "y_k averages over group k: divide by n_k = Σ_j Π_jk, "
                 "not by n.", slip(by_n=True)),
            Slip("the division by n_k is missing", "y_k = (U_kᵀZ)^⊙2 π_k / n_k is a weighted "
                 "mean, divide by n_k.", slip(normalize=False)),
            Slip("the projections are not squared", "y_k holds second moments: square "
                 "U_kᵀZ entry-wise before weighting.", slip(square=False)),
            Slip("a transposed U", "project with U_kᵀ (p × d) on the tokens: U_kᵀ Z, "
                 "i.e. np.einsum('kdp,dn->kpn', U, Z); U[k] is d × p.", slip(transpose_U=True)),
            Slip("π_k applied twice", "weight each token once: (U_kᵀZ)^⊙2 @ π_k.",
                 slip(pi_power=2)),
            Slip("a centred second moment (a variance)", "y_ki is the weighted mean of "
                 "(u_kiᵀz_j)² itself: subtract no mean before squaring.", slip(centre=True)),
            Slip("1/(n_k − 1) instead of 1/n_k", "y_k = (U_kᵀZ)^⊙2 π_k / n_k: divide by "
                 "n_k = Σ_j Π_jk, not n_k − 1.", slip(minus_one=True)),
            hard,
        ], shapes="Z (d, n), Pi (n, K), U (K, d, p) with U[k] = U_k (d × p); return y (K, p)",
        withheld=lambda: [("whitebox.token_statistics", mcr2.token_statistics),
                          ("whitebox.mcr2._statistics", getattr(mcr2, "_statistics", None)),
                          ("the checker's own reference", _stats)],
    )  # fmt: skip


def check_token_statistics(token_statistics) -> CheckResult:
    """Check ``token_statistics(Z, Pi, U)`` = y (K, p), y_k = (U_kᵀZ)^⊙2 π_k / n_k (exercise 02)."""
    return run_check(_token_statistics_spec(), token_statistics)


def _variational_rate_spec() -> Spec:
    def ref(c):
        a = c.args
        return {"R_c^var": mcr2.variational_compression_rate(a["Z"], a["Pi"], a["U"], a["eps"])}

    def slip(**kw):
        return lambda c: {"R_c^var": _var_rate(*c.args.values(), **kw)}

    return Spec(
        "variational_compression_rate", "variational_compression_rate(Z, Pi, U, eps)",
        "whitebox.variational_compression_rate", lambda: _variational_cases(202), ref,
        quantity="R_c^var",
        slips=[
            Slip("a missing ½", "R_c^var = Σ_k n_k/(2n) Σ_i log(1 + (d/ε²) y_ki).", slip(half=1.0)),
            Slip("ε instead of ε²", "the scale is d/ε².", slip(eps_power=1)),
            Slip("the scale d/(n ε²) copied from R", "in the variational form the scale is "
                 "d/ε²: the 1/n_k is already inside y_k.", slip(scale_n=True)),
            Slip("n instead of n_k in y_k", "y_k divides by n_k = Σ_j Π_jk.", slip(by_n=True)),
            Slip("the weight n_k/n is missing", "each group's sum is weighted by n_k/(2n).",
                 slip(weight="1")),
            Slip("a transposed U", "project with U_kᵀ: U_kᵀ Z is p × n.", slip(transpose_U=True)),
            Slip("weights 1/K instead of n_k/n", "each group's sum is weighted by n_k/(2n), "
                 "its share of the tokens, not equally.", slip(weight="1/K")),
            Slip("c = p/ε² instead of d/ε²", "the scale is c = d/ε², with d the token "
                 "dimension (Z.shape[0]), not the subspace dimension p, in every group.",
                 slip(c_dim="p")),
            Slip("the scale d/ε² is missing", "R_c^var = Σ_k n_k/(2n) Σ_i log(1 + (d/ε²) "
                 "y_ki): multiply y by c = d/ε² inside the log.", slip(c_dim="1")),
            Slip("a mean over the coordinates instead of a sum", "Σ_i log(1 + c y_ki) sums "
                 "over the p coordinates of each basis (axis 1 of the (K, p) statistics): no "
                 "division by p.", slip(mean_coords=True)),
            *[Slip(f"the logarithm in base {b} instead of the natural one", f"log{b}(x) = "
                   f"ln(x) / ln {b}: use np.log1p (or np.log), the natural logarithm.",
                   slip(base=v)) for b, v in LOG_BASES.items()],
            Slip("hard groups (the argmax of Π) instead of the soft Π", "use the memberships "
                 "Π_jk as they are, in y_k and in n_k = Σ_j Π_jk.", slip(hard=True)),
            Slip("a centred second moment (a variance) in y_k", "y_ki is the weighted mean of "
                 "(u_kiᵀz_j)² itself: subtract no mean.", slip(centre=True)),
        ], shapes="Z (d, n), Pi (n, K), U (K, d, p), eps a float; return a float",
        withheld=lambda: [("whitebox.variational_compression_rate",
                           mcr2.variational_compression_rate),
                          ("the checker's own reference", _var_rate)],
    )  # fmt: skip


def check_variational_compression_rate(variational_compression_rate) -> CheckResult:
    """Check ``variational_compression_rate(Z, Pi, U, eps)`` = R_c^var (exercise 02)."""
    return run_check(_variational_rate_spec(), variational_compression_rate)


def _group_covariances(Z, Pi):
    return np.einsum("in,nk,jn->kij", Z, Pi, Z)  # (K, d, d): Z diag(pi_k) Z^T


def _eigen_quantities(Z, Pi, eps, U):
    U = np.asarray(U, dtype=np.float64)
    K, d = Pi.shape[1], Z.shape[0]
    if U.shape != (K, d, d):
        raise BadOutput(f"it returned shape {U.shape}, expected (K, d, d) = ({K}, {d}, {d})")
    S = _group_covariances(Z, Pi)
    UtSU = np.einsum("kdp,kde,keq->kpq", U, S, U)
    scale = np.linalg.norm(S, axis=(1, 2))[:, None, None]
    off = (UtSU - UtSU * np.eye(d)) / scale
    return {
        "U_kᵀU_k": np.einsum("kdp,kdq->kpq", U, U),
        "off-diagonal of U_kᵀΣ_kU_k": off,
        "R_c^var(U)": mcr2.variational_compression_rate(Z, Pi, U, eps),
    }


def _eigenbases_spec() -> Spec:
    def cases():
        rng = np.random.default_rng(203)
        return [
            Case("random d=4 n=12 K=2 ε=0.5",
                 {"Z": rng.standard_normal((4, 12)), "Pi": soft_pi(rng, 12, 2), "eps": 0.5}),
            Case("hard Π d=3 n=9 K=3 ε=1",
                 {"Z": rng.standard_normal((3, 9)), "Pi": np.eye(3)[np.arange(9) % 3], "eps": 1.0}),
        ]  # fmt: skip

    def ref(c):
        Z, Pi, eps = c.args["Z"], c.args["Pi"], c.args["eps"]
        K, d = Pi.shape[1], Z.shape[0]
        return {
            "U_kᵀU_k": np.broadcast_to(np.eye(d), (K, d, d)),
            "off-diagonal of U_kᵀΣ_kU_k": np.zeros((K, d, d)),
            "R_c^var(U)": mcr2.compression_rate(Z, Pi, eps),
        }

    def extract(U, c):
        q = _eigen_quantities(c.args["Z"], c.args["Pi"], c.args["eps"], U)
        q["_U"] = np.asarray(U, dtype=np.float64)  # for the slip detectors; not compared
        return q

    def detect_with(transform=None, cov=None):
        """Recognize 'the learner's U, transformed, is a right answer' (or one for ``cov``)."""

        def detect(c, got):
            Z, Pi, eps = c.args["Z"], c.args["Pi"], c.args["eps"]
            U = got["_U"]
            if transform is not None:
                q, want = _eigen_quantities(Z, Pi, eps, transform(U)), ref(c)
            else:
                S = cov(Z, Pi)
                UtSU = np.einsum("kdp,kde,keq->kpq", U, S, U)
                scale = np.linalg.norm(S, axis=(1, 2))[:, None, None]
                q = {"off": (UtSU - UtSU * np.eye(Z.shape[0])) / scale}
                want = {"off": np.zeros_like(q["off"])}
            return all(compare(want[k], q[k], TOL, FLOOR)[0] for k in want)

        return detect

    def all_tokens_cov(Z, Pi):
        return np.broadcast_to(Z @ Z.T, (Pi.shape[1],) + (Z.shape[0],) * 2)

    return Spec(
        "eigenbases", "eigenbases(Z, Pi)",
        "the eigenvectors of Z diag(π_k) Zᵀ",
        cases, ref, extract=extract, call=lambda fn, a: fn(a["Z"], a["Pi"]),
        slips=[
            Slip("a transposed U (eigenvectors as rows)", "np.linalg.eigh returns the "
                 "eigenvectors as the columns of V; U_k = V, not V.T.",
                 detect=detect_with(transform=lambda U: U.transpose(0, 2, 1))),
            Slip("the eigenvectors of Z Zᵀ (all tokens)", "each group has its own covariance "
                 "Z diag(π_k) Zᵀ: weight the tokens by π_k.", detect=detect_with(cov=all_tokens_cov)),
        ], shapes="Z (d, n), Pi (n, K); return U (K, d, d)",
    )  # fmt: skip


def check_eigenbases(eigenbases) -> CheckResult:
    """Check ``eigenbases(Z, Pi)`` -> U (K, d, d): orthonormal eigenvectors of Z diag(π_k) Zᵀ,
    for which the variational bound is tight: R_c^var(Z, Π | U) = R_c(Z | Π) (exercise 02)."""
    return run_check(_eigenbases_spec(), eigenbases)
