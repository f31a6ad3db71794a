"""Exercise 04: one TSSA step on R_c^var, and the membership softmax."""

from __future__ import annotations

import numpy as np

from .. import mcr2
from .core import Case, CheckResult, Slip, Spec, normalized_over, orthonormal, run_check
from .gradient import _grad_slips, _grad_withheld, _var_grad, probe_case, read_gain
from .variational import _variational_cases

#: The step's probe: one group, Π = 1, U = I, so Z − Z_+ = (τ/n) D Z row by row.
STEP_PROBE = "probe: one group, Π = 1, U = I (d=p=3 n=6 ε=0.7 τ=0.5)"
STEP_GAIN = "τ D/n (read off the probe)"


def _tssa_step_spec() -> Spec:
    def cases():
        probe = probe_case(400, STEP_PROBE)
        probe.args = {**probe.args, "tau": 0.5}
        probe.passed_note = probe.passed_note.replace("the factor 1/n", "the factor τ/n")
        probe.note = ("with one group, Π = 1 and U = I the step is Z − (τ/n) D Z: row i of "
                      "Z − Z_+ should be τ D_i/n times row i of Z, with D_i = c / (1 + c y_i), "
                      "c = d/ε² and y_i the mean of Z_ij² over the tokens j.")  # fmt: skip
        out = _variational_cases(401)
        for c, tau in zip(out, (0.3, 1.7)):
            c.name, c.args = f"{c.name} τ={tau}", {**c.args, "tau": tau}
        return [probe] + out

    def ref(c):
        Zp = mcr2.tssa_step(*c.args.values())
        if c.name != STEP_PROBE:
            return {"Z_+": Zp}
        return {STEP_GAIN: read_gain(c.args["Z"] - Zp, c.args["Z"]), "Z_+": Zp}

    def extract(output, c):
        got = {"Z_+": output}
        if c.name == STEP_PROBE:
            try:
                Zp = np.asarray(output, dtype=np.float64)
            except (TypeError, ValueError):
                return got
            if Zp.shape == c.args["Z"].shape and np.all(np.isfinite(Zp)):
                got[STEP_GAIN] = read_gain(c.args["Z"] - Zp, c.args["Z"])
        return got

    def step_from(G_fn):
        return lambda c: {"Z_+": c.args["Z"] - c.args["tau"] * G_fn(c)}

    def args4(c):
        return (c.args[k] for k in ("Z", "Pi", "U", "eps"))

    slips = [
        Slip("a plus sign (gradient ascent)", "the step descends: Z − τ ∇R_c^var; compressing "
             "means decreasing R_c^var.", lambda c: {"Z_+": c.args["Z"] + c.args["tau"] * _var_grad(*args4(c))}),
        Slip("τ is missing", "Z_+ = Z − τ grad.", lambda c: {"Z_+": c.args["Z"] - _var_grad(*args4(c))}),
        Slip("the update without Z", "return the new tokens Z − τ grad, not only the change.",
             lambda c: {"Z_+": -c.args["tau"] * _var_grad(*args4(c))}),
        Slip("τ/n applied twice (an extra 1/n)", "the step is Z − τ ∇R_c^var = Z − (τ/n) Σ_k "
             "U_k D_k U_kᵀ Z diag(π_k): the 1/n belongs to the gradient, so write either "
             "τ/n with the bare sum or τ with the gradient, not τ/n with the gradient.",
             lambda c: {"Z_+": c.args["Z"] - c.args["tau"] / c.args["Z"].shape[1] * _var_grad(*args4(c))}),
    ]  # fmt: skip
    for s in _grad_slips("grad"):
        if s.name == "the sign is flipped":
            continue
        f = s.fn
        slips.append(Slip(s.name + " (in the gradient)", s.hint,
                          step_from(lambda c, f=f: f(c)["grad"])))  # fmt: skip
    return Spec(
        "tssa_step",
        "tssa_step(Z, Pi, U, eps, tau)",
        "whitebox.tssa_step",
        cases,
        ref,
        extract=extract,
        optional=(STEP_GAIN,),
        quantity="Z_+",
        slips=slips,
        shapes="Z (d, n), Pi (n, K), U (K, d, p), eps and tau floats; return (d, n)",
        withheld=_grad_withheld,
    )


def check_tssa_step(tssa_step) -> CheckResult:
    """Check ``tssa_step(Z, Pi, U, eps, tau)`` = Z − τ ∇_Z R_c^var (exercise 04)."""
    return run_check(_tssa_step_spec(), tssa_step)


def _membership(Z, U, eta, *, axis=1, half=True, square=True, transpose_U=False, stable=True,
                sign=1.0, eta_mult=False, hard=False):  # fmt: skip
    UtZ = np.einsum("kpd,dn->kpn", U, Z) if transpose_U else np.einsum("kdp,dn->kpn", U, Z)
    norms = (UtZ * UtZ).sum(axis=1).T  # (n, K)
    if not square:
        norms = np.sqrt(norms)
    s = norms * eta if eta_mult else norms / ((2 if half else 1) * eta)
    s = sign * s
    if hard:  # one-hot rows at the largest score
        return np.eye(s.shape[1])[np.argmax(s, axis=1)]
    if stable:
        s = s - s.max(axis=axis, keepdims=True)
    e = np.exp(s)
    return e / e.sum(axis=axis, keepdims=True)


def _membership_spec() -> Spec:
    def cases():
        rng = np.random.default_rng(402)
        random = Case(
            "random d=6 n=8 K=3 p=2 η=0.5",
            {"Z": rng.standard_normal((6, 8)), "U": orthonormal(rng, 3, 6, 2), "eta": 0.5},
        )
        square = Case(
            "square non-orthogonal U d=p=4 n=6 K=2 η=0.7",
            {"Z": rng.standard_normal((4, 6)), "U": rng.standard_normal((2, 4, 4)), "eta": 0.7},
        )
        return [
            square,
            random,
            Case("large scores: |z| ~ 30, η=1e-3", {
                "Z": 30 * rng.standard_normal((5, 6)), "U": orthonormal(rng, 3, 5, 2), "eta": 1e-3},
                note="the scores ‖U_kᵀz_j‖²/(2η) reach about 10⁶ here: exp overflows unless you "
                     "subtract each row's maximum first (softmax is unchanged by that shift)."),
        ]  # fmt: skip

    def ref(c):
        return {"Π": mcr2.estimate_membership(*c.args.values())}

    def slip(**kw):
        return lambda c: {"Π": _membership(*c.args.values(), **kw)}

    return Spec(
        "estimate_membership", "estimate_membership(Z, U, eta)", "whitebox.estimate_membership",
        cases, ref, quantity="Π",
        slips=[
            Slip("the softmax over the wrong axis", "Π is (n, K) and each token's row is on the "
                 "simplex: normalize over the groups k (axis=1), not over the tokens.",
                 slip(axis=0), detect=normalized_over("Π", 0, 1)),
            Slip("a missing ½", "the score is ‖U_kᵀz_j‖² / (2η).", slip(half=False)),
            Slip("η multiplies instead of divides", "the score is ‖U_kᵀz_j‖² / (2η): η is a "
                 "temperature.", slip(eta_mult=True)),
            Slip("the norm is not squared", "the score uses the squared norm ‖U_kᵀz_j‖².",
                 slip(square=False)),
            Slip("a transposed U", "project with U_kᵀ: U_kᵀ z_j has p entries.",
                 slip(transpose_U=True)),
            Slip("the max is not subtracted (overflow)", "exp(1000) is inf in float64: "
                 "subtract each row's maximum score before exp.", slip(stable=False)),
            Slip("a flipped sign", "a token belongs to the group whose basis captures most of "
                 "it: the score is +‖U_kᵀz_j‖²/(2η).", slip(sign=-1.0)),
            Slip("a hard argmax instead of the softmax", "Π_jk = softmax_k(‖U_kᵀz_j‖²/(2η)) "
                 "is soft: exp the (shifted) scores and normalize each row, rather than putting "
                 "1 at the largest score.", slip(hard=True)),
        ], shapes="Z (d, n), U (K, d, p), eta a float; return Pi (n, K)",
        withheld=lambda: [("whitebox.estimate_membership", mcr2.estimate_membership),
                          ("the checker's own reference", _membership)],
    )  # fmt: skip


def check_estimate_membership(estimate_membership) -> CheckResult:
    """Check ``estimate_membership(Z, U, eta)`` -> Π (n, K), Π_jk = softmax_k ‖U_kᵀz_j‖²/(2η)."""
    return run_check(_membership_spec(), estimate_membership)
