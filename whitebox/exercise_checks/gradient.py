"""Exercise 03: the gradient of R_c^var in closed form, and central finite differences."""

from __future__ import annotations

import numpy as np

from .. import gradcheck, mcr2
from .core import Case, CheckResult, Slip, Spec, orthonormal, run_check, soft_pi
from .rates import _hard
from .variational import _stats, _variational_cases


def _var_grad(Z, Pi, U, eps, *, inv_n=True, per_nk=False, half=False, numerator=True,
              eps_power=2, transpose_U=False, pi_power=1, sign=1.0, use_pi=True, c_dim="d",
              hard=False, weights_1_over_K=False, mean_coords=False, gain=True, c_in_y=True,
              y_by_n=False, gain_power=1):  # fmt: skip
    d, n = Z.shape
    if hard:
        Pi = _hard(Pi)
    # c = d/eps^2 (right), p/eps^2, or 1 (the scale dropped altogether: log(1 + y))
    c = 1.0 if c_dim == "1" else {"d": d, "p": U.shape[2]}[c_dim] / eps**eps_power
    y = _stats(Z, Pi, U, by_n=y_by_n)
    if gain:
        D = (c if numerator else 1.0) / (1 + (c if c_in_y else 1.0) * y) ** gain_power  # (K, p)
    else:  # the gain 1/(1 + c y) forgotten: D = c
        D = np.full_like(y, c)
    UtZ = np.einsum("kpd,dn->kpn", U, Z) if transpose_U else np.einsum("kdp,dn->kpn", U, Z)
    weights = (Pi**pi_power).T if use_pi else np.ones_like(Pi.T)  # (K, n)
    Wk = D[:, :, None] * UtZ * weights[:, None, :]  # (K, p, n)
    if transpose_U:
        G = np.einsum("kpd,kpn->kdn", U, Wk)
    else:
        G = np.einsum("kdp,kpn->kdn", U, Wk)
    if weights_1_over_K:  # the gradient of sum_k 1/(2K) sum_i log(1 + c y_ki)
        G = G / (Pi.shape[1] * Pi.sum(axis=0)[:, None, None])
    elif per_nk:
        G = G / Pi.sum(axis=0)[:, None, None]
    elif inv_n:
        G = G / n
    if mean_coords:
        G = G / U.shape[2]
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
        Slip("c = p/ε² instead of d/ε²", "c = d/ε² with d the token dimension (Z.shape[0]), "
             "not the subspace dimension p, both in D_k's numerator and in 1 + c y_k.",
             slip(c_dim="p")),
        Slip("the scale d/ε² is missing", "D_k = c / (1 + c y_k) with c = d/ε²: the scale "
             "appears twice, in the numerator and next to y_k.", slip(c_dim="1")),
        Slip("hard groups (the argmax of Π) instead of the soft Π", "use the memberships Π_jk "
             "as they are, in y_k and in diag(π_k).", slip(hard=True)),
        Slip("weights 1/K instead of n_k/n (so 1/(K n_k) instead of 1/n)", "the objective "
             "weighs group k by n_k/(2n); with that weight the n_k cancels and 1/n remains.",
             slip(weights_1_over_K=True)),
        Slip("a mean over the coordinates (an extra 1/p)", "R_c^var sums log(1 + c y_ki) over "
             "the p coordinates, so its gradient has no 1/p.", slip(mean_coords=True)),
        Slip("the gain is missing (D_k = c)", "d/dy log(1 + c y) = c / (1 + c y): D_k holds "
             "the gain 1/(1 + c y_k) as well as c, and that gain is what depends on the "
             "token statistics.", slip(gain=False)),
        Slip("c missing next to y in the gain (D_k = c / (1 + y_k))", "D_k = c / (1 + c y_k): "
             "the scale multiplies y inside the log, so it appears in the denominator too.",
             slip(c_in_y=False)),
        Slip("1/n instead of 1/n_k in y_k", "the token statistics inside D_k are means over "
             "each group: y_k = (U_kᵀZ)^⊙2 π_k / n_k, with n_k = Σ_j Π_jk.", slip(y_by_n=True)),
        Slip("the gain squared (D_k = c / (1 + c y_k)²)", "differentiate log(1 + c y), not "
             "1/(1 + c y): d/dy log(1 + c y) = c / (1 + c y), to the first power.",
             slip(gain_power=2)),
    ]  # fmt: skip


def _grad_withheld():
    """The library's answers to exercise 03b (Z − tssa_step(Z, ..., τ=1) is the gradient)."""
    return [("whitebox.variational_compression_grad", mcr2.variational_compression_grad),
            ("whitebox.tssa_step", mcr2.tssa_step),
            ("the checker's own reference", _var_grad)]  # fmt: skip


#: The probe case's name: one group, Π = 1, U = I, so the gradient is (1/n) D Z row by row.
PROBE = "probe: one group, Π = 1, U = I (d=p=3 n=6 ε=0.7)"
#: The intermediate read off the probe (before the gradient itself, in the table).
GAIN = "D/n (read off the probe)"


def probe_case(seed, name=PROBE):
    """One group with all memberships 1 and U = I: the gradient is (1/n) D Z, so each row of
    the answer is a multiple D_i/n of the same row of Z; its rows have different scales, so the
    D_i differ. The intermediate D is read off the answer by least squares, row by row."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((3, 6)) * np.array([[0.3], [1.0], [2.5]])
    return Case(
        name,
        {"Z": Z, "Pi": np.ones((6, 1)), "U": np.eye(3)[None], "eps": 0.7},
        note="with one group, Π = 1 and U = I the gradient is (1/n) D Z: row i of your "
        "answer should be D_i/n times row i of Z, with D_i = c / (1 + c y_i), c = d/ε² and "
        "y_i the mean of Z_ij² over the tokens j.",
        passed_note="with one group, Π = 1 and U = I your gain D and the factor 1/n are right, "
        "so look at what this probe cannot see: the memberships π_k (in y_k, n_k and "
        "diag(π_k)), several groups, and the bases U_k.",
    )


def read_gain(G, Z):
    """The least-squares multiple of each row of Z in the same row of G: (d,)."""
    return np.sum(G * Z, axis=1) / np.sum(Z * Z, axis=1)


def _grad_spec() -> Spec:
    def ref(c):
        grad = mcr2.variational_compression_grad(*c.args.values())
        if c.name != PROBE:
            return {"grad": grad}
        return {GAIN: read_gain(grad, c.args["Z"]), "grad": grad}

    def extract(output, c):
        got = {"grad": output}
        if c.name == PROBE:
            try:
                G = np.asarray(output, dtype=np.float64)
            except (TypeError, ValueError):
                return got
            if G.shape == c.args["Z"].shape and np.all(np.isfinite(G)):
                got[GAIN] = read_gain(G, c.args["Z"])
        return got

    return Spec(
        "variational_compression_grad", "variational_compression_grad(Z, Pi, U, eps)",
        "whitebox.variational_compression_grad",
        lambda: [probe_case(300)] + _variational_cases(301), ref, extract=extract,
        quantity="grad", slips=_grad_slips("grad"), shapes="Z (d, n), Pi (n, K), U (K, d, p); return (d, n)",
        withheld=_grad_withheld,
        optional=(GAIN,),
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
            Case("a large step: f(Z) = Σ exp(5 Z)/5, h=0.05", {"f": f_exp, "Z": Z1.copy(), "h": 0.05},
                 note="h = 0.05 is large on purpose: the central difference with this h is "
                      "exp(5z) sinh(5h)/(5h), about 1% above the exact gradient exp(5z); the "
                      "checker expects the difference with the h it passes."),
        ]  # fmt: skip

    def ref(c):
        Z, h = c.args["Z"], c.args["h"]
        if c.args["f"] is f_exp:  # the central difference in closed form: exact for any h
            return {"gradient": np.exp(5 * Z) * np.sinh(5 * h) / (5 * h)}
        return {"gradient": mcr2.variational_compression_grad(Z, Pi2, U2, 1.0)}

    def exact(c):
        """What a routine that ignores h (and uses a small step of its own) returns."""
        Z = c.args["Z"]
        if c.args["f"] is f_exp:
            return {"gradient": np.exp(5 * Z)}
        return {"gradient": mcr2.variational_compression_grad(Z, Pi2, U2, 1.0)}

    def slip(kind):
        return lambda c: {"gradient": _fd(c.args["f"], c.args["Z"], c.args["h"], kind)}

    return Spec(
        "numerical_gradient", "numerical_gradient(f, Z, h)",
        "the exact gradient (at h = 0.05, the central difference in closed form)", cases, ref,
        quantity="gradient", relative_floor=1e-6,
        slips=[
            Slip("a forward difference", "(f(Z + h e) - f(Z)) / h has an error of order h; the "
                 "central difference (f(Z + h e) - f(Z - h e)) / (2h) has order h².",
                 slip("forward")),
            Slip("division by h instead of 2h", "the central difference spans 2h: "
                 "(f(Z + h e) - f(Z - h e)) / (2h).", slip("over_h")),
            Slip("the step h is ignored", "perturb by the h that is passed in (Z + h E and "
                 "Z − h E, divided by 2h): a step fixed inside the function, or a default that "
                 "shadows the argument, gives the right answer only for that one h.", exact),
        ], shapes="f maps an array shaped like Z to a float; return an array shaped like Z",
        withheld=lambda: [("whitebox.gradcheck.numerical_grad", gradcheck.numerical_grad),
                          ("the checker's own reference", _fd)],
    )  # fmt: skip


def check_numerical_gradient(numerical_gradient) -> CheckResult:
    """Check ``numerical_gradient(f, Z, h)``: central differences, entry by entry (exercise 03)."""
    return run_check(_numerical_gradient_spec(), numerical_gradient)
