"""Exercise 03: the gradient of R_c^var in closed form, and central finite differences."""

from __future__ import annotations

import numpy as np

from .. import mcr2
from .core import Case, CheckResult, Slip, Spec, orthonormal, run_check, soft_pi
from .variational import _stats, _variational_cases


def _var_grad(Z, Pi, U, eps, *, inv_n=True, per_nk=False, half=False, numerator=True,
              eps_power=2, transpose_U=False, pi_power=1, sign=1.0, use_pi=True):  # fmt: skip
    d, n = Z.shape
    c = d / eps**eps_power
    y = _stats(Z, Pi, U)
    D = (c if numerator else 1.0) / (1 + c * y)  # (K, p)
    UtZ = np.einsum("kpd,dn->kpn", U, Z) if transpose_U else np.einsum("kdp,dn->kpn", U, Z)
    weights = (Pi**pi_power).T if use_pi else np.ones_like(Pi.T)  # (K, n)
    Wk = D[:, :, None] * UtZ * weights[:, None, :]  # (K, p, n)
    if transpose_U:
        G = np.einsum("kpd,kpn->kdn", U, Wk)
    else:
        G = np.einsum("kdp,kpn->kdn", U, Wk)
    if per_nk:
        G = G / Pi.sum(axis=0)[:, None, None]
    elif inv_n:
        G = G / n
    G = G.sum(axis=0)
    return sign * (0.5 * G if half else G)


def _grad_slips(key, wrap=lambda c, G: G):
    def slip(**kw):
        return lambda c: {
            key: wrap(c, _var_grad(*(c.args[k] for k in ("Z", "Pi", "U", "eps")), **kw))
        }

    return [
        Slip("a missing 1/n", "the gradient is (1/n) Σ_k U_k D_k U_kᵀ Z diag(π_k): the n_k in the "
             "weight n_k/(2n) cancels the 1/n_k in y_k and leaves 1/n.", slip(inv_n=False)),
        Slip("1/n_k instead of 1/n", "the weight n_k/(2n) cancels the 1/n_k inside y_k; "
             "what remains is 1/n for every group.", slip(per_nk=True)),
        Slip("an extra ½ (the 2 from the square was lost)", "d/dZ (U_kᵀZ)^⊙2 = 2 U_kᵀZ: the 2 "
             "cancels the ½ of the objective.", slip(half=True)),
        Slip("D_k without the factor d/ε²", "D_k = (d/ε²) / (1 + (d/ε²) y_k): differentiate "
             "log(1 + c y) to c / (1 + c y).", slip(numerator=False)),
        Slip("ε instead of ε²", "c = d/ε².", slip(eps_power=1)),
        Slip("a transposed U", "grad = (1/n) Σ_k U_k D_k U_kᵀ Z diag(π_k): project with U_kᵀ "
             "(p × d), lift back with U_k (d × p).", slip(transpose_U=True)),
        Slip("diag(π_k) applied twice", "π_k appears once in the gradient: the one in y_k's "
             "derivative (D_k already holds y_k).", slip(pi_power=2)),
        Slip("diag(π_k) missing", "each token's share of group k weighs its gradient: "
             "multiply column j by Π_jk.", slip(use_pi=False)),
        Slip("the sign is flipped", "return the gradient of R_c^var itself (the step "
             "subtracts it).", slip(sign=-1.0)),
    ]  # fmt: skip


def _grad_spec() -> Spec:
    def ref(c):
        return {"grad": mcr2.variational_compression_grad(*c.args.values())}

    return Spec(
        "variational_compression_grad", "variational_compression_grad(Z, Pi, U, eps)",
        "whitebox.variational_compression_grad", lambda: _variational_cases(301), ref,
        quantity="grad", slips=_grad_slips("grad"), shapes="Z (d, n), Pi (n, K), U (K, d, p); return (d, n)",
    )  # fmt: skip


def check_variational_compression_grad(variational_compression_grad) -> CheckResult:
    """Check ``variational_compression_grad(Z, Pi, U, eps)`` (d, n) (exercise 03)."""
    return run_check(_grad_spec(), variational_compression_grad)


def _fd(f, Z, h, kind="central"):
    g = np.zeros_like(Z)
    f0 = f(Z) if kind == "forward" else None
    for idx in np.ndindex(Z.shape):
        Zp, Zm = Z.copy(), Z.copy()
        Zp[idx] += h
        Zm[idx] -= h
        if kind == "central":
            g[idx] = (f(Zp) - f(Zm)) / (2 * h)
        elif kind == "over_h":
            g[idx] = (f(Zp) - f(Zm)) / h
        else:
            g[idx] = (f(Zp) - f0) / h
    return g


def _numerical_gradient_spec() -> Spec:
    rng = np.random.default_rng(302)
    Z1 = 0.5 * rng.standard_normal((3, 4))
    Z2 = rng.standard_normal((4, 5))
    Pi2, U2 = soft_pi(rng, 5, 2), orthonormal(rng, 2, 4, 2)

    def f_exp(Z):
        return float(np.sum(np.exp(5 * Z)) / 5)

    def f_var(Z):
        return float(mcr2.variational_compression_rate(Z, Pi2, U2, 1.0))

    def cases():
        return [
            Case("f(Z) = Σ exp(5 Z)/5 on a 3 × 4 Z, h=1e-4", {"f": f_exp, "Z": Z1.copy(), "h": 1e-4}),
            Case("f = R_c^var(·, Π, U, ε=1) on a 4 × 5 Z, h=1e-4", {"f": f_var, "Z": Z2.copy(), "h": 1e-4}),
        ]  # fmt: skip

    def ref(c):
        Z = c.args["Z"]
        if c.args["f"] is f_exp:
            return {"gradient": np.exp(5 * Z)}
        return {"gradient": mcr2.variational_compression_grad(Z, Pi2, U2, 1.0)}

    def slip(kind):
        return lambda c: {"gradient": _fd(c.args["f"], c.args["Z"], c.args["h"], kind)}

    return Spec(
        "numerical_gradient", "numerical_gradient(f, Z, h)", "the exact gradient", cases, ref,
        quantity="gradient", relative_floor=1e-6,
        slips=[
            Slip("a forward difference", "(f(Z + h e) - f(Z)) / h has an error of order h; the "
                 "central difference (f(Z + h e) - f(Z - h e)) / (2h) has order h².",
                 slip("forward")),
            Slip("division by h instead of 2h", "the central difference spans 2h: "
                 "(f(Z + h e) - f(Z - h e)) / (2h).", slip("over_h")),
        ], shapes="f maps an array shaped like Z to a float; return an array shaped like Z",
    )  # fmt: skip


def check_numerical_gradient(numerical_gradient) -> CheckResult:
    """Check ``numerical_gradient(f, Z, h)``: central differences, entry by entry (exercise 03)."""
    return run_check(_numerical_gradient_spec(), numerical_gradient)
