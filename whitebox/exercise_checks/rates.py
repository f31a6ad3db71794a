"""Exercise 01: the coding rate R and the compression term R_c."""

from __future__ import annotations

import warnings

import numpy as np

from .. import mcr2
from .core import Case, CheckResult, Slip, Spec, run_check, soft_pi


def _logdet(A):
    """log det A, or nan when A is not finite (a slip that divides by zero)."""
    return np.linalg.slogdet(A)[1] if np.all(np.isfinite(A)) else np.nan


def _rate(Z, scale, half=0.5, centre=False, identity=1.0):
    d = Z.shape[0]
    if centre:
        Z = Z - Z.mean(axis=1, keepdims=True)
    return half * _logdet(identity * np.eye(d) + scale * (Z @ Z.T))


def _hard(Pi):
    """One-hot rows at each row's argmax: hard groups instead of the soft Π."""
    return np.eye(Pi.shape[1])[np.argmax(Pi, axis=1)]


def _rates_withheld():
    """The library's answers to exercise 01 (R from R_c with one group, or R − ΔR, too)."""
    return [("whitebox.coding_rate", mcr2.coding_rate),
            ("whitebox.compression_rate", mcr2.compression_rate),
            ("whitebox.rate_reduction", mcr2.rate_reduction),
            ("whitebox.mcr2._log1p_alpha_gram", getattr(mcr2, "_log1p_alpha_gram", None)),
            ("the checker's own reference", _rate), ("the checker's own reference", _comp)]  # fmt: skip


LOG_BASES = {"2": np.log(2.0), "10": np.log(10.0)}
"""The bases of the logarithm slips: a log in base b is the natural log divided by ln b."""


def _no_identity(case, got):
    """R without the I: right where Z Zᵀ has full rank; where it is singular, logdet is −∞ and
    a learner's np.log(np.linalg.det(...)) returns −∞, nan or a huge negative round-off value."""
    Z, eps = case.args["Z"], case.args["eps"]
    d, n = Z.shape
    want = _rate(Z, d / (n * eps**2), identity=0.0)
    value = float(np.asarray(got["R"], dtype=np.float64))
    if np.linalg.matrix_rank(Z) == d:
        return abs(value - want) <= 1e-6 * max(abs(want), 1e-8)
    return not np.isfinite(value) or value < -20.0


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

    def slip(scale=lambda d, n, e: d / (n * e**2), half=0.5, base=1.0, centre=False,
             identity=1.0):  # fmt: skip
        def f(c):
            Z, eps = c.args["Z"], c.args["eps"]
            d, n = Z.shape
            return {"R": _rate(Z, scale(d, n, eps), half, centre, identity) / base}

        return f

    def np_cov(c):
        Z, eps = c.args["Z"], c.args["eps"]
        d = Z.shape[0]
        with warnings.catch_warnings():  # np.cov of one token divides by n - 1 = 0
            warnings.simplefilter("ignore", RuntimeWarning)
            A = np.eye(d) + d / eps**2 * np.atleast_2d(np.cov(Z))
        return {"R": 0.5 * _logdet(A)}

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
            *[Slip(f"the logarithm in base {b} instead of the natural one", f"log{b}(x) = "
                   f"ln(x) / ln {b}: the rates are in nats, so use np.linalg.slogdet or np.log, "
                   f"not np.log{b}.", slip(base=v)) for b, v in LOG_BASES.items()],
            Slip("a centred covariance (the mean subtracted)", "R codes the tokens themselves, "
                 "not their deviations from the mean: Z Zᵀ with the raw Z, no centring.",
                 slip(centre=True)),
            Slip("1/(n − 1) instead of 1/n", "the scale is d/(n ε²): the coding rate is not an "
                 "unbiased variance estimate, so no n − 1.",
                 slip(scale=lambda d, n, e: d / ((n - 1) * e**2))),
            Slip("np.cov (centred, and 1/(n − 1))", "np.cov subtracts the mean and divides by "
                 "n − 1; R needs (d/(n ε²)) Z Zᵀ with the raw Z.", np_cov),
            Slip("the identity I is missing", "R = ½ logdet(I + (d/(n ε²)) Z Zᵀ): without "
                 "the I the matrix is singular when n < d (logdet = −∞), and the rate of a "
                 "tiny Z is not 0.", slip(identity=0.0), detect=_no_identity),
            Slip("n squared in the scale (d/(n ε)²)", "the scale is d/(n ε²): only ε is "
                 "squared; mind the parentheses.", slip(scale=lambda d, n, e: d / (n * e) ** 2)),
            Slip("ε² multiplies instead of divides", "the scale is d/(n ε²): `d / n * eps**2` "
                 "multiplies by ε²; put n ε² in the denominator.",
                 slip(scale=lambda d, n, e: d / n * e**2)),
        ], shapes="Z is (d, n) with the tokens as columns, eps a float; return a float",
        withheld=_rates_withheld,
    )  # fmt: skip


def check_coding_rate(coding_rate) -> CheckResult:
    """Check ``coding_rate(Z, eps)`` = ½ logdet(I + d/(n ε²) Z Zᵀ) (exercise 01)."""
    return run_check(_coding_rate_spec(), coding_rate)


def _comp(Z, Pi, eps, *, half=0.5, n_in_scale=False, weight="n_k/n", pi_power=1, eps_power=2,
          skip_empty=True, base=1.0, centre=False, minus_one=False, hard=False, identity=1.0,
          last_only=False):  # fmt: skip
    d, n = Z.shape
    K = Pi.shape[1]
    if hard:
        Pi = _hard(Pi)
    total = 0.0
    for k in range(K):
        nk = Pi[:, k].sum()
        if skip_empty and nk == 0:
            continue
        Zk = Z - (Z @ Pi[:, k] / nk)[:, None] if centre else Z  # centred on the group's mean
        cov = (Zk * Pi[:, k] ** pi_power) @ Zk.T  # (d, d)
        count = (n if n_in_scale else nk) - (1 if minus_one else 0)
        alpha = np.float64(d) / (count * eps**eps_power)
        w = {"n_k/n": nk / n, "1": 1.0, "1/K": 1.0 / K, "n_k n": nk * n}[weight]
        term = w * half * _logdet(identity * np.eye(d) + alpha * cov) / base
        total = term if last_only else total + term
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
                 "share of the tokens).", slip(weight="1")),
            Slip("weights 1/K instead of n_k/n", "each group's term is weighted by its share of "
                 "the tokens, n_k/n, not equally: groups of different sizes count differently.",
                 slip(weight="1/K")),
            *[Slip(f"the logarithm in base {b} instead of the natural one", f"log{b}(x) = "
                   f"ln(x) / ln {b}: the rates are in nats, so use np.linalg.slogdet or np.log.",
                   slip(base=v)) for b, v in LOG_BASES.items()],
            Slip("a centred group covariance (the group mean subtracted)", "the group's matrix "
                 "is Z diag(π_k) Zᵀ with the raw Z: no mean is subtracted.", slip(centre=True)),
            Slip("1/(n_k − 1) instead of 1/n_k", "the scale is d/(n_k ε²): no n_k − 1.",
                 slip(minus_one=True)),
            Slip("hard groups (the argmax of Π) instead of the soft Π", "use the memberships "
                 "Π_jk as they are, as weights: group k's matrix is Z diag(π_k) Zᵀ and "
                 "n_k = Σ_j Π_jk, however soft the rows are.", slip(hard=True)),
            Slip("diag(π_k) applied twice", "the group covariance is Z diag(π_k) Zᵀ, weight "
                 "each token once: scale the columns of only one of the two factors by π_k.",
                 slip(pi_power=2)),
            Slip("ε instead of ε²", "the scale is d/(n_k ε²).", slip(eps_power=1)),
            Slip("an empty group gives nan", "a group with n_k = 0 contributes 0 (the limit "
                 "of its term); skip it instead of dividing by n_k = 0.",
                 slip(skip_empty=False)),
            Slip("only the last group's term (= instead of +=)", "R_c adds the terms of all "
                 "K groups: accumulate them (total += ...) instead of overwriting.",
                 slip(last_only=True)),
            Slip("n_k/2 · n instead of n_k/(2n)", "the weight is n_k/(2n): `n_k / 2 * n` "
                 "multiplies by n; put 2n in the denominator.", slip(weight="n_k n")),
            Slip("the identity I is missing", "each group's term is logdet(I + (d/(n_k ε²)) Z "
                 "diag(π_k) Zᵀ): keep the I.", slip(identity=0.0)),
        ], shapes="Z (d, n), Pi (n, K), eps a float; return a float",
        withheld=_rates_withheld,
    )  # fmt: skip


def check_compression_rate(compression_rate) -> CheckResult:
    """Check ``compression_rate(Z, Pi, eps)`` = Σ_k n_k/(2n) logdet(I + d/(n_k ε²) Z diag(π_k) Zᵀ)."""
    return run_check(_compression_rate_spec(), compression_rate)
