"""Exercise 01: the coding rate R and the compression term R_c."""

from __future__ import annotations

import numpy as np

from .. import mcr2
from .core import Case, CheckResult, Slip, Spec, run_check, soft_pi


def _rate(Z, scale, half=0.5):
    d = Z.shape[0]
    return half * np.linalg.slogdet(np.eye(d) + scale * (Z @ Z.T))[1]


def _coding_rate_spec() -> Spec:
    def cases():
        rng = np.random.default_rng(101)
        return [
            Case("random d=6 n=10 ε=0.5", {"Z": rng.standard_normal((6, 10)), "eps": 0.5}),
            Case("more dims than tokens d=8 n=3 ε=0.7", {"Z": rng.standard_normal((8, 3)), "eps": 0.7}),
            Case("one token d=3 n=1 ε=2", {"Z": rng.standard_normal((3, 1)), "eps": 2.0}),
        ]  # fmt: skip

    def ref(c):
        return {"R": mcr2.coding_rate(c.args["Z"], c.args["eps"])}

    def slip(scale=lambda d, n, e: d / (n * e**2), half=0.5, base=1.0):
        def f(c):
            Z, eps = c.args["Z"], c.args["eps"]
            d, n = Z.shape
            return {"R": _rate(Z, scale(d, n, eps), half) / base}

        return f

    return Spec(
        "coding_rate", "coding_rate(Z, eps)", "whitebox.coding_rate", cases, ref,
        quantity="R",
        slips=[
            Slip("a missing ½", "R = ½ logdet(I + d/(n ε²) Z Zᵀ): the ½ comes from the Gaussian "
                 "volume (a square root of a determinant).", slip(half=1.0)),
            Slip("ε instead of ε²", "the scale is d/(n ε²): `eps` is ε itself, square it.",
                 slip(scale=lambda d, n, e: d / (n * e))),
            Slip("a missing d in the scale", "the scale is d/(n ε²), with d = Z.shape[0].",
                 slip(scale=lambda d, n, e: 1 / (n * e**2))),
            Slip("a missing n in the scale", "the scale is d/(n ε²), with n = Z.shape[1]: the "
                 "rate is per token.", slip(scale=lambda d, n, e: d / e**2)),
            Slip("d and n swapped in the scale", "Z is (d, n): d = Z.shape[0] is the dimension, "
                 "n = Z.shape[1] the number of tokens.", slip(scale=lambda d, n, e: n / (d * e**2))),
            Slip("log base 2", "the rates are in nats: use the natural logarithm.",
                 slip(base=np.log(2.0))),
        ], shapes="Z is (d, n) with the tokens as columns, eps a float; return a float",
    )  # fmt: skip


def check_coding_rate(coding_rate) -> CheckResult:
    """Check ``coding_rate(Z, eps)`` = ½ logdet(I + d/(n ε²) Z Zᵀ) (exercise 01)."""
    return run_check(_coding_rate_spec(), coding_rate)


def _comp(Z, Pi, eps, *, half=0.5, n_in_scale=False, weight=True, pi_power=1, eps_power=2,
          skip_empty=True):  # fmt: skip
    d, n = Z.shape
    total = 0.0
    for k in range(Pi.shape[1]):
        nk = Pi[:, k].sum()
        if skip_empty and nk == 0:
            continue
        cov = (Z * Pi[:, k] ** pi_power) @ Z.T  # (d, d)
        alpha = np.float64(d) / ((n if n_in_scale else nk) * eps**eps_power)
        A = np.eye(d) + alpha * cov
        ld = np.linalg.slogdet(A)[1] if np.all(np.isfinite(A)) else np.nan
        total += (nk / n if weight else 1.0) * half * ld
    return total


def _compression_rate_spec() -> Spec:
    def cases():
        rng = np.random.default_rng(102)
        labels = np.array([0, 1, 1, 0, 1, 1, 0, 1, 1])
        empty = np.array([0, 2, 0, 0, 2, 2, 0, 2])
        return [
            Case("random soft Π d=5 n=12 K=3 ε=0.5",
                 {"Z": rng.standard_normal((5, 12)), "Pi": soft_pi(rng, 12, 3), "eps": 0.5}),
            Case("hard Π, groups of 3 and 6, d=4 ε=0.8",
                 {"Z": rng.standard_normal((4, 9)), "Pi": np.eye(2)[labels], "eps": 0.8}),
            Case("an empty group (n_1 = 0) d=3 n=8 ε=0.6",
                 {"Z": rng.standard_normal((3, 8)), "Pi": np.eye(3)[empty], "eps": 0.6},
                 note="group 1 is empty (n_1 = 0): its term n_k/(2n) logdet(...) tends to 0, so "
                      "skip groups with n_k = 0."),
        ]  # fmt: skip

    def ref(c):
        return {"R_c": mcr2.compression_rate(c.args["Z"], c.args["Pi"], c.args["eps"])}

    def slip(**kw):
        return lambda c: {"R_c": _comp(c.args["Z"], c.args["Pi"], c.args["eps"], **kw)}

    return Spec(
        "compression_rate", "compression_rate(Z, Pi, eps)", "whitebox.compression_rate", cases,
        ref, quantity="R_c",
        slips=[
            Slip("a missing ½", "each group's term is n_k/(2n) logdet(...).", slip(half=1.0)),
            Slip("n instead of n_k in the scale", "inside the logdet the scale is d/(n_k ε²): "
                 "each group is coded with its own token count.", slip(n_in_scale=True)),
            Slip("the weight n_k/n is missing", "each group's term is weighted by n_k/n (its "
                 "share of the tokens).", slip(weight=False)),
            Slip("diag(π_k) applied twice", "the group covariance is Z diag(π_k) Zᵀ, weight "
                 "each token once: (Z * pi_k) @ Z.T, not (Z * pi_k) @ (Z * pi_k).T.",
                 slip(pi_power=2)),
            Slip("ε instead of ε²", "the scale is d/(n_k ε²).", slip(eps_power=1)),
            Slip("an empty group gives nan", "a group with n_k = 0 contributes 0 (the limit "
                 "of its term); skip it instead of dividing by n_k = 0.",
                 slip(skip_empty=False)),
        ], shapes="Z (d, n), Pi (n, K), eps a float; return a float",
    )  # fmt: skip


def check_compression_rate(compression_rate) -> CheckResult:
    """Check ``compression_rate(Z, Pi, eps)`` = Σ_k n_k/(2n) logdet(I + d/(n_k ε²) Z diag(π_k) Zᵀ)."""
    return run_check(_compression_rate_spec(), compression_rate)
