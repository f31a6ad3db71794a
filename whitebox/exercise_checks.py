r"""Checkers for the exercises in ``exercises/``: the learner's function against the library.

Every checker has the form ``check_xxx(fn) -> CheckResult``. It calls ``fn`` on a few fresh,
seeded inputs (a random case and, where the mathematics has one, a numerically hard case),
compares every quantity with the library, prints a small table (expected vs got, relative
error) and a verdict, and returns a :class:`CheckResult` that is truthy when everything matches.

Checkers report; they never raise into the notebook. ``NotImplementedError`` is reported as
"not implemented yet"; any other exception as one line naming the exception and the line of the
learner's code that raised it; a changed input array as such.

When a quantity is wrong, the checker evaluates known wrong variants on the same inputs (the
*slips*: a missing 1/2, epsilon instead of epsilon^2, a transposed U, the softmax over the wrong
axis, a forgotten 1e-8, n instead of n_k, ...) and names every slip the learner's output
matches. Without a match it says which quantity is wrong first, at which entry, and whether the
result is a constant multiple or the transpose of the expected one.

Relative errors are entry-wise with a floor, |a - b| / max(floor, |a| + |b|), as in
:mod:`whitebox.gradcheck`; everything is compared in float64.

The checkers, by exercise:

    01  check_coding_rate(fn), check_compression_rate(fn)
    02  check_token_statistics(fn), check_variational_compression_rate(fn), check_eigenbases(fn)
    03  check_variational_compression_grad(fn), check_numerical_gradient(fn)
    04  check_tssa_step(fn), check_estimate_membership(fn)
    05  check_tssa_forward(fn)
    06  check_tssa_backward(fn, forward)
    07  check_causal_tssa_forward(fn)
    08  check_time_call(fn), check_fit_exponent(fn)

``SPECS`` maps each checker's name to a function building its specification (cases,
reference, slips), so that the tests can evaluate every slip.
"""

from __future__ import annotations

import copy
import linecache
import math
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import mcr2

#: Relative tolerance (entry-wise, float64) for "this quantity is right".
TOL = 1e-6
#: Floor of the relative error's denominator: |a - b| / max(FLOOR, |a| + |b|).
FLOOR = 1e-8

__all__ = [
    "FLOOR",
    "SPECS",
    "TOL",
    "CheckResult",
    "check_causal_tssa_forward",
    "check_coding_rate",
    "check_compression_rate",
    "check_eigenbases",
    "check_estimate_membership",
    "check_fit_exponent",
    "check_numerical_gradient",
    "check_time_call",
    "check_token_statistics",
    "check_tssa_backward",
    "check_tssa_forward",
    "check_tssa_step",
    "check_variational_compression_grad",
    "check_variational_compression_rate",
]


# ============================================================================ results and specs


@dataclass
class CheckResult:
    """What a checker found. Truthy exactly when ``status == 'passed'``.

    status: 'passed', 'not implemented', 'wrong' or 'error'; quantity/case: the first wrong
    quantity and the case it was found in; rel_error: its largest relative error; slips: the
    names of the known slips the output matches; message: the feedback that was printed."""

    name: str
    status: str
    quantity: str | None = None
    case: str | None = None
    rel_error: float | None = None
    slips: list[str] = field(default_factory=list)
    message: str = ""

    def __bool__(self) -> bool:
        return self.status == "passed"

    def __repr__(self) -> str:
        extra = f", quantity={self.quantity!r}" if self.quantity else ""
        extra += f", slips={self.slips!r}" if self.slips else ""
        return f"CheckResult({self.name!r}, status={self.status!r}{extra})"


@dataclass
class Case:
    """One input to the learner's function: ``args`` in call order (names used in messages),
    and a ``note`` printed when the learner's function fails on this case."""

    name: str
    args: dict
    note: str = ""


@dataclass
class Slip:
    """A known wrong variant. ``fn(case) -> {quantity: value}`` recomputes the quantities with
    the mistake; alternatively ``detect(case, got) -> bool`` recognizes it from the output."""

    name: str
    hint: str
    fn: Callable | None = None
    detect: Callable | None = None


@dataclass
class Spec:
    """How to check one function (see the module docstring)."""

    fn_name: str
    signature: str
    library: str
    cases: Callable[[], list[Case]]
    reference: Callable[[Case], dict]
    slips: list[Slip]
    call: Callable | None = None  # (fn, args) -> output; default fn(*args.values())
    extract: Callable | None = None  # (output, case) -> {quantity: value}; default one quantity
    quantity: str = "result"
    tol: float = TOL
    floor: float = FLOOR
    relative_floor: float = 0.0  # floor also >= relative_floor * max|expected|
    extra: Callable | None = None  # (fn) -> list of problems (strings)
    shapes: str = ""  # the layout, printed with an exception (most are shape slips)


class BadOutput(Exception):
    """The learner's output has the wrong form (raised by ``extract``)."""


# ============================================================================ comparisons


def _to_float_array(value):
    if value is None:
        raise BadOutput("it returned None; did you forget `return`?")
    if isinstance(value, tuple | list) and len(value) == 0:
        raise BadOutput("it returned an empty sequence")
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise BadOutput(
            f"it returned a {type(value).__name__}, which is not a number or an array"
        ) from None


def _compare(expected, got, tol, floor, relative_floor=0.0, broadcast=False):
    """(ok, error, detail). ``error`` is the largest entry-wise relative error (inf for a
    missing finite value, nan for a shape mismatch); ``detail`` says where and how. With
    ``broadcast``, a ``got`` that broadcasts to the expected shape is compared broadcast (a
    slip such as a sum with keepdims instead of a cumulative sum)."""
    e = np.asarray(expected, dtype=np.float64)
    try:
        g = _to_float_array(got)
    except BadOutput as exc:
        return False, math.nan, str(exc)
    if g.shape != e.shape:
        if g.size == e.size and np.squeeze(g).shape == np.squeeze(e).shape:
            g = g.reshape(e.shape)  # e.g. (H,) for (H, 1): same entries, accepted
        elif broadcast and g.ndim == e.ndim and all(a in (1, b) for a, b in zip(g.shape, e.shape)):
            g = np.broadcast_to(g, e.shape)
        else:
            hint = ""
            if g.ndim == e.ndim >= 2 and g.shape == e.shape[::-1]:
                hint = " (the transpose: check the layout)"
            return False, math.nan, f"shape {g.shape}, expected {e.shape}{hint}"
    if e.size == 0:
        return True, 0.0, ""
    finite = np.abs(e[np.isfinite(e)])
    fl = max(floor, relative_floor * float(finite.max()) if finite.size else 0.0)
    with np.errstate(all="ignore"):
        err = np.abs(e - g) / np.maximum(fl, np.abs(e) + np.abs(g))
    both_nan = np.isnan(e) & np.isnan(g)
    same_inf = np.isinf(e) & (e == g)
    err = np.where(both_nan | same_inf, 0.0, err)
    err = np.where(np.isnan(err), np.inf, err)
    worst = float(err.max())
    if worst <= tol:
        return True, worst, ""
    idx = np.unravel_index(int(np.argmax(err)), err.shape)
    where = f"entry {tuple(int(i) for i in idx)}: " if e.ndim else ""
    detail = f"{where}expected {_num(e[idx])}, got {_num(g[idx])}"
    if not np.all(np.isfinite(g)) and np.all(np.isfinite(e)):
        detail += f" ({int(np.sum(~np.isfinite(g)))} entries are nan or inf)"
    return False, worst, detail


def _num(v) -> str:
    v = float(v)
    return f"{v:.6g}"


def _show(v) -> str:
    """A scalar as its value, an array as its norm."""
    if v is None:
        return "None"
    try:
        a = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        return type(v).__name__
    if a.size == 1:
        v = float(a.reshape(()))
        return "≈0" if v != 0 and abs(v) < 1e-12 else _num(v)
    norm = float(np.sqrt(np.sum(a * a)))
    # round-off around an exact zero differs from machine to machine; do not print it
    return "‖·‖≈0" if norm != 0 and norm < 1e-12 else f"‖·‖={_num(norm)}"


def _show_err(err) -> str:
    if err is None or (isinstance(err, float) and math.isnan(err)):
        return "-"
    if math.isinf(err):
        return "inf"
    if err < 1e-10:
        return "<1e-10"
    # below the tolerance, print a bucket: round-off differs from machine to machine
    return "<1e-6" if err <= TOL else f"{err:.1e}"


def _sentence(text: str) -> str:
    """Capitalize a hint that starts with an English word (never a symbol such as ŵ or s_t)."""
    word = text.split(" ", 1)[0]
    if word.isascii() and word.isalpha() and word.islower() and (len(word) > 1 or word == "a"):
        return text[:1].upper() + text[1:]
    return text


def _best_ratio(expected, got):
    """The least-squares c with got ~ c * expected, and whether it explains got exactly
    (None when the arrays cannot be compared)."""
    try:
        e = np.asarray(expected, dtype=np.float64)
        g = _to_float_array(got).reshape(e.shape)
    except (BadOutput, ValueError):
        return None
    if not (np.all(np.isfinite(e)) and np.all(np.isfinite(g))):
        return None
    ee = float(np.sum(e * e))
    if ee == 0:
        return None
    r = float(np.sum(g * e)) / ee
    exact = np.sqrt(np.sum((g - r * e) ** 2)) <= 1e-6 * (np.sqrt(np.sum(g * g)) + 1e-300)
    return r, bool(exact), e, g


def _ratio_hint(expected, got, others=()) -> str:
    """'got = c x expected' or 'got = expected^T' when that explains a wrong array.

    ``others``: (case name, expected, got) of the same quantity in the other cases. "A constant
    factor" is said only when the same factor explains every case; when the factor changes from
    case to case, the hint names the case that differs most instead."""
    fit = _best_ratio(expected, got)
    if fit is None:
        return ""
    r, exact, e, g = fit
    if exact:
        ratios = [(name, _best_ratio(oe, og)) for name, oe, og in others]
        differ = [
            (name, f[0])
            for name, f in ratios
            if f is None or not f[1] or abs(f[0] - r) > 1e-6 * max(abs(r), 1e-300)
        ]
        if differ:
            name, other = max(
                differ, key=lambda t: math.inf if t[1] is None else abs(t[1] - r)
            )  # the case that differs most
            there = (
                "cannot be compared" if other is None else f"is {_num(other)} × the expected one"
            )
            return (
                f"Your value is {_num(r)} × the expected one here, but in case '{name}' it "
                f"{there}: not a constant factor, so look for a term that depends on the "
                "input (a centring, a count, a data-dependent scale)."
            )
        known = {2.0: " (a missing ½?)", 0.5: " (an extra ½, or a lost factor 2?)", -1.0: ""}
        for c, why in known.items():
            if abs(r - c) < 1e-6 * abs(c):
                what = "the sign is flipped" if c == -1 else f"{_num(r)} × the expected one"
                return f"Your value is {what}{why}."
        every = " in every case" if others else ""
        return f"Your value is {_num(r)} × the expected one{every}: a constant factor is off."
    if e.ndim == 2 and e.shape[0] == e.shape[1] and np.allclose(g, e.T, rtol=1e-6, atol=0):
        return "Your value is the transpose of the expected one."
    return ""


# ============================================================================ the engine


def _where_raised(fn, exc) -> str:
    """'line N of fn: `source`' for the innermost frame in the learner's code."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return ""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == code.co_filename]
    if not frames:
        return ""
    f = frames[-1]
    src = (f.line or linecache.getline(f.filename, f.lineno)).strip()
    return f"at line {f.lineno} of {f.name}" + (f": `{src}`" if src else "")


def _changed(before, after, path=""):
    """Names of arrays in ``before`` that differ in ``after`` (inputs modified in place)."""
    out = []
    if isinstance(before, dict):
        for k in before:
            out += _changed(before[k], after.get(k) if isinstance(after, dict) else None, f"{k}")
    elif isinstance(before, np.ndarray):
        if not (
            isinstance(after, np.ndarray)
            and after.shape == before.shape
            and np.array_equal(before, after, equal_nan=True)
        ):
            out.append(path)
    return out


def _default_call(fn, args):
    return fn(*args.values())


def _table(rows) -> str:
    head = ("case", "quantity", "expected", "got", "rel. error", "")
    cells = [head] + [tuple(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = []
    for c in cells:
        parts = [c[0].ljust(widths[0]), c[1].ljust(widths[1])]
        parts += [c[i].rjust(widths[i]) for i in (2, 3, 4)]
        parts.append(c[5])
        lines.append("  " + "  ".join(parts).rstrip())
    return "\n".join(lines)


def _sums_to_one(a, axis) -> bool:
    """True when the (finite) array ``a`` sums to 1 along ``axis`` everywhere."""
    try:
        a = np.asarray(a, dtype=np.float64)
        return bool(np.all(np.isfinite(a))) and np.allclose(a.sum(axis=axis), 1.0, atol=1e-9)
    except (TypeError, ValueError, np.exceptions.AxisError):
        return False


def _normalized_over(key, wrong_axis, right_axis):
    """A detector: ``got[key]`` sums to 1 over ``wrong_axis`` but not over ``right_axis``."""

    def detect(case, got):
        return _sums_to_one(got[key], wrong_axis) and not _sums_to_one(got[key], right_axis)

    return detect


def _slip_matches(spec, slip, runs) -> bool:
    """True when the slip explains the learner's outputs on every case that ran: its
    recomputed quantities all match, or its detector recognizes every output."""
    if slip.fn is not None and _slip_fn_matches(spec, slip, runs):
        return True
    if slip.detect is not None:
        try:
            return all(slip.detect(case, got) for case, got in runs)
        except Exception:
            return False
    return False


def _slip_fn_matches(spec, slip, runs) -> bool:
    try:
        for case, got in runs:
            with np.errstate(all="ignore"):
                want = slip.fn(case)
            for q, v in want.items():
                if q not in got:
                    continue
                ok, _, _ = _compare(v, got[q], spec.tol, spec.floor, spec.relative_floor, True)
                if not ok:
                    return False
        return True
    except Exception:  # a slip that cannot be evaluated on a case explains nothing
        return False


def run_check(spec: Spec, fn) -> CheckResult:
    """Check ``fn`` against ``spec``: print the table and the verdict, return the result."""
    lines: list[str] = []
    name = spec.fn_name
    spec.shapes = spec.shapes or SHAPES.get(name, "")

    def finish(result: CheckResult) -> CheckResult:
        result.message = "\n".join(lines)
        print(result.message)
        sys.stdout.flush()
        return result

    if not callable(fn):
        lines.append(f"✗ {name}: expected a function, got {type(fn).__name__}.")
        return finish(CheckResult(name, "error"))

    call = spec.call or _default_call
    runs: list[tuple[Case, dict]] = []  # (case, learner's quantities) for cases that ran
    rows: list[tuple] = []
    problems: list[str] = []
    first_wrong = None  # (case, quantity, error, detail, expected, got)
    error_line = None
    cases = spec.cases()
    for case in cases:
        args = copy.deepcopy(case.args)
        try:
            output = call(fn, args)
        except NotImplementedError:
            lines.append(
                f"… {name}: not implemented yet (it raises NotImplementedError). "
                "Replace the TODO with your code, run that cell, then run this one again."
            )
            return finish(CheckResult(name, "not implemented"))
        except Exception as exc:  # the learner's bug: report it, never raise
            where = _where_raised(fn, exc)
            msg = f"{type(exc).__name__}: {exc}".strip()
            error_line = f"✗ {name} raised {msg}\n  in case '{case.name}'" + (
                f", {where}" if where else ""
            )
            if spec.shapes:
                error_line += f"\n  Shapes: {spec.shapes}."
            if case.note:
                error_line += f"\n  Note on this case: {case.note}"
            break
        for argname in _changed(case.args, args):
            problems.append(
                f"{name} changed its input `{argname}` in place (case '{case.name}'): work on "
                "a copy or build new arrays; callers do not expect their arguments to change."
            )
        expected = spec.reference(case)
        try:
            got = spec.extract(output, case) if spec.extract else {spec.quantity: output}
        except BadOutput as exc:
            error_line = f"✗ {name}: in case '{case.name}', {exc}"
            break
        runs.append((case, got))
        for q, e in expected.items():
            if q not in got:
                rows.append((case.name, q, _show(e), "missing", "-", "✗"))
                if first_wrong is None:
                    first_wrong = (case, q, math.nan, f"the output has no {q!r}", e, None)
                continue
            ok, err, detail = _compare(e, got[q], spec.tol, spec.floor, spec.relative_floor)
            shown = _show(got[q]) if not detail.startswith("shape") else "shape"
            rows.append((case.name, q, _show(e), shown, _show_err(err), "✓" if ok else "✗"))
            if not ok and first_wrong is None:
                first_wrong = (case, q, err, detail, e, got[q])

    if error_line is None and spec.extra:  # on failures too: its findings explain them
        try:
            problems += spec.extra(fn)
        except NotImplementedError:
            pass
        except Exception as exc:
            problems.append(f"{name} raised {type(exc).__name__}: {exc} in an extra check")

    lines.append(
        f"Checking {spec.signature} against {spec.library} on {len(cases)} "
        f"case{'s' if len(cases) > 1 else ''}."
    )
    if rows:
        lines.append(_table(rows))

    if error_line is None and first_wrong is None and not problems:
        lines.append(f"✓ {name} is correct.")
        return finish(CheckResult(name, "passed"))

    status = "error" if error_line else "wrong"
    result = CheckResult(name, status)
    if error_line:
        lines.append(error_line)
    if first_wrong is not None:
        case, q, err, detail, e, g = first_wrong
        result.quantity, result.case, result.rel_error = q, case.name, err
        size = "" if math.isnan(err) else f"relative error {_show_err(err)}; "
        stop = "" if detail.endswith(("?", ".")) else "."
        lines.append(f"✗ {q} is wrong in case '{case.name}': {size}{detail}{stop}")
        order = list(spec.reference(case))
        if order.index(q) > 0:
            before = ", ".join(order[: order.index(q)])
            lines.append(
                f"  Everything before it ({before}) is right: the mistake is in how {q} is "
                "computed from them."
            )
        if case.note:
            lines.append(f"  Note on this case: {case.note}")
        matched = [s for s in spec.slips if _slip_matches(spec, s, runs)]
        result.slips = [s.name for s in matched]
        if matched:
            for s in matched:
                lines.append(f"  Likely slip: {s.name}. {_sentence(s.hint)}")
        else:
            others = [
                (c.name, spec.reference(c)[q], got[q])
                for c, got in runs
                if c is not case and q in got and q in spec.reference(c)
            ]
            hint = _ratio_hint(e, g, others) if g is not None else ""
            lines.append(
                "  No known slip matches. "
                + (hint or "Compare your code with the formula step by step.")
            )
    for p in problems:
        lines.append(f"✗ {p}")
    return finish(result)


# ============================================================================ inputs


def _soft_pi(rng, n, K, sharp=1.0):
    logits = sharp * rng.standard_normal((n, K))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _orthonormal(rng, K, d, p):
    return np.linalg.qr(rng.standard_normal((K, d, d)))[0][:, :, :p]


# ============================================================================ 01 coding rate


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
        ],
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
                 {"Z": rng.standard_normal((5, 12)), "Pi": _soft_pi(rng, 12, 3), "eps": 0.5}),
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
        ],
    )  # fmt: skip


def check_compression_rate(compression_rate) -> CheckResult:
    """Check ``compression_rate(Z, Pi, eps)`` = Σ_k n_k/(2n) logdet(I + d/(n_k ε²) Z diag(π_k) Zᵀ)."""
    return run_check(_compression_rate_spec(), compression_rate)


# ============================================================================ 02 variational form


def _stats(Z, Pi, U, *, transpose_U=False, by_n=False, normalize=True, square=True, pi_power=1):
    """y_k = (U_k^T Z)^2 pi_k / n_k with optional slips: (K, p)."""
    UtZ = np.einsum("kdp,dn->kpn", U, Z) if not transpose_U else np.einsum("kpd,dn->kpn", U, Z)
    P = UtZ * UtZ if square else UtZ
    y = np.einsum("kpn,nk->kp", P, Pi**pi_power)
    if normalize:
        y = y / (Z.shape[1] if by_n else Pi.sum(axis=0)[:, None])
    return y


def _var_rate(Z, Pi, U, eps, *, half=0.5, eps_power=2, weight=True, scale_n=False, **kw):
    d, n = Z.shape
    y = _stats(Z, Pi, U, **kw)
    c = d / eps**eps_power / (n if scale_n else 1)
    nk = Pi.sum(axis=0)
    per = np.log1p(c * y).sum(axis=1)  # (K,)
    return float(((nk / n if weight else 1.0) * half * per).sum())


def _variational_cases(seed):
    rng = np.random.default_rng(seed)
    # the square case first: a transposed U runs there (and is named) but fails on p < d
    random = Case(
        "random d=6 n=10 K=3 p=2 ε=0.5",
        {
            "Z": rng.standard_normal((6, 10)),
            "Pi": _soft_pi(rng, 10, 3),
            "U": _orthonormal(rng, 3, 6, 2),
            "eps": 0.5,
        },
    )
    square = Case(
        "square non-orthogonal U, d=p=4 n=7 K=2 ε=0.8",
        {
            "Z": rng.standard_normal((4, 7)),
            "Pi": _soft_pi(rng, 7, 2, sharp=2.0),
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
        ],
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
                 slip(weight=False)),
            Slip("a transposed U", "project with U_kᵀ: U_kᵀ Z is p × n.", slip(transpose_U=True)),
        ],
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
                 {"Z": rng.standard_normal((4, 12)), "Pi": _soft_pi(rng, 12, 2), "eps": 0.5}),
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
            return all(_compare(want[k], q[k], TOL, FLOOR)[0] for k in want)

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
        ],
    )  # fmt: skip


def check_eigenbases(eigenbases) -> CheckResult:
    """Check ``eigenbases(Z, Pi)`` -> U (K, d, d): orthonormal eigenvectors of Z diag(π_k) Zᵀ,
    for which the variational bound is tight: R_c^var(Z, Π | U) = R_c(Z | Π) (exercise 02)."""
    return run_check(_eigenbases_spec(), eigenbases)


# ============================================================================ 03 gradient


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
        quantity="grad", slips=_grad_slips("grad"),
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
    Pi2, U2 = _soft_pi(rng, 5, 2), _orthonormal(rng, 2, 4, 2)

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
        ],
    )  # fmt: skip


def check_numerical_gradient(numerical_gradient) -> CheckResult:
    """Check ``numerical_gradient(f, Z, h)``: central differences, entry by entry (exercise 03)."""
    return run_check(_numerical_gradient_spec(), numerical_gradient)


# ============================================================================ 04 step, membership


def _tssa_step_spec() -> Spec:
    def cases():
        out = _variational_cases(401)
        for c, tau in zip(out, (0.3, 1.7)):
            c.name, c.args = f"{c.name} τ={tau}", {**c.args, "tau": tau}
        return out

    def ref(c):
        return {"Z_+": mcr2.tssa_step(*c.args.values())}

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
        quantity="Z_+",
        slips=slips,
    )


def check_tssa_step(tssa_step) -> CheckResult:
    """Check ``tssa_step(Z, Pi, U, eps, tau)`` = Z − τ ∇_Z R_c^var (exercise 04)."""
    return run_check(_tssa_step_spec(), tssa_step)


def _membership(Z, U, eta, *, axis=1, half=True, square=True, transpose_U=False, stable=True,
                sign=1.0, eta_mult=False):  # fmt: skip
    UtZ = np.einsum("kpd,dn->kpn", U, Z) if transpose_U else np.einsum("kdp,dn->kpn", U, Z)
    norms = (UtZ * UtZ).sum(axis=1).T  # (n, K)
    if not square:
        norms = np.sqrt(norms)
    s = norms * eta if eta_mult else norms / ((2 if half else 1) * eta)
    s = sign * s
    if stable:
        s = s - s.max(axis=axis, keepdims=True)
    e = np.exp(s)
    return e / e.sum(axis=axis, keepdims=True)


def _membership_spec() -> Spec:
    def cases():
        rng = np.random.default_rng(402)
        random = Case(
            "random d=6 n=8 K=3 p=2 η=0.5",
            {"Z": rng.standard_normal((6, 8)), "U": _orthonormal(rng, 3, 6, 2), "eta": 0.5},
        )
        square = Case(
            "square non-orthogonal U d=p=4 n=6 K=2 η=0.7",
            {"Z": rng.standard_normal((4, 6)), "U": rng.standard_normal((2, 4, 4)), "eta": 0.7},
        )
        return [
            square,
            random,
            Case("large scores: |z| ~ 30, η=1e-3", {
                "Z": 30 * rng.standard_normal((5, 6)), "U": _orthonormal(rng, 3, 5, 2), "eta": 1e-3},
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
                 slip(axis=0), detect=_normalized_over("Π", 0, 1)),
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
        ],
    )  # fmt: skip


def check_estimate_membership(estimate_membership) -> CheckResult:
    """Check ``estimate_membership(Z, U, eta)`` -> Π (n, K), Π_jk = softmax_k ‖U_kᵀz_j‖²/(2η)."""
    return run_check(_membership_spec(), estimate_membership)


# ============================================================================ 05 TSSA forward

TSSA_CACHE_KEYS = ("w", "pi", "s", "y")
"""The intermediate quantities that ``tssa_forward`` must store in its cache (exercise 05)."""


def _softmax(z, axis):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def tssa_reference(x, params, slip=None):
    r"""The learned TSSA layer in plain NumPy, with an optional planted ``slip`` (a key of
    ``TSSA_FORWARD_SLIPS``). Returns {'w', 'pi', 's', 'y', 'out'} plus the cache entries the
    reference backward needs. With ``slip=None`` it equals ``whitebox.nn.tssa_forward``."""
    W, b = params["qkv.weight"], params["qkv.bias"]
    temp, Wo, bo = params["temp"], params["proj.weight"], params["proj.bias"]
    B, n, D = x.shape
    H = temp.shape[0]
    p = D // H
    w_flat = x @ (W.T if slip == "transposed_qkv" else W) + b  # (B, n, D)
    if slip == "heads_reshape":
        w = w_flat.reshape(B, H, n, p)  # the slip: the token and head axes are mixed up
    else:
        w = w_flat.reshape(B, n, H, p).transpose(0, 2, 1, 3)  # (B, H, n, p)
    w_sq = w * w
    if slip == "norm_over_features":
        norm = np.sqrt(w_sq.sum(axis=3, keepdims=True))  # (B, H, n, 1)
    else:
        norm = np.sqrt(w_sq.sum(axis=2, keepdims=True))  # (B, H, 1, p)
    denom = norm if slip == "no_floor" else np.maximum(norm, 1e-12)
    a = w_sq.sum(axis=3) if slip == "no_normalization" else (w_sq / denom**2).sum(axis=3)
    z = a if slip == "no_temp" else temp * a  # (B, H, n)
    pi = _softmax(z, axis=2 if slip == "softmax_tokens" else 1)  # (B, H, n)
    pi_sum = pi.sum(axis=2, keepdims=True) + (0.0 if slip == "no_eps" else 1e-8)  # (B, H, 1)
    pi_bar = pi if slip == "unnormalized_stats" else pi / pi_sum
    stat_src = (w / denom) ** 2 if slip == "stats_from_w_hat" else w_sq
    s = np.einsum("bhn,bhnp->bhp", pi_bar, stat_src)  # (B, H, p)
    c = 1.0 / (s if slip == "no_one" else 1.0 + s)  # (B, H, p)
    y = (1.0 if slip == "no_minus" else -1.0) * pi[..., None] * w * c[:, :, None, :]
    if slip == "merge_reshape":
        y_flat = y.reshape(B, n, D)
    else:
        y_flat = y.transpose(0, 2, 1, 3).reshape(B, n, D)  # (B, n, D)
    out = y_flat @ (Wo.T if slip == "transposed_out" else Wo) + bo
    return dict(
        w=w, pi=pi, s=s, y=y, out=out, x=x, W=W, Wo=Wo, temp=temp, w_sq=w_sq, norm=norm,
        denom=denom, a=a, pi_sum=pi_sum, pi_bar=pi_bar, c=c, y_flat=y_flat,
    )  # fmt: skip


TSSA_FORWARD_SLIPS = {
    "softmax_tokens": ("the softmax over the wrong axis (tokens instead of heads)",
                       "Π_hj = softmax over the heads h: Π has shape (B, H, n) and sums to 1 "
                       "over axis 1 (the heads) for every token."),
    "norm_over_features": ("the norm over the wrong axis (features instead of tokens)",
                           "ŵ divides each column w_{·,i} by its norm over the n tokens "
                           "(axis 2 of (B, H, n, p))."),
    "no_normalization": ("the scores use w instead of ŵ", "the membership scores are "
                         "temp_h Σ_i ŵ_{j,i}², with the column-normalized ŵ."),
    "no_floor": ("a forgotten 1e-12 floor", "ŵ = w / max(‖w_{·,i}‖, 1e-12): a column that is "
                 "0 for every token would give 0/0 = nan."),
    "no_temp": ("the temperature is missing", "the scores are temp_h Σ_i ŵ_{j,i}²."),
    "no_eps": ("a forgotten 1e-8", "the weights are Π_hj / (Σ_j' Π_hj' + 1e-8): a head with "
               "(almost) no tokens must get (almost) zero statistics, not a division by ~0."),
    "unnormalized_stats": ("Π not normalized in the statistics", "s_{h,i} = Σ_j Π_hj w_{hji}² "
                           "/ (Σ_j' Π_hj' + 1e-8): a weighted mean over the tokens."),
    "stats_from_w_hat": ("statistics of ŵ instead of w", "ŵ is only for the membership "
                         "scores; s uses the un-normalized w."),
    "no_one": ("the 1 in 1 + s is missing", "y = −Π w / (1 + s)."),
    "no_minus": ("the minus sign is missing", "y = −Π w / (1 + s): a gradient *descent* step."),
    "transposed_qkv": ("a transposed projection W_qkv", "w = x W_qkv + b_qkv with W_qkv of "
                       "shape (D_in, D_out) (CS231n layout, not PyTorch's): x @ W, not x @ W.T."),
    "heads_reshape": ("heads split without the transpose", "split the heads as "
                      "w.reshape(B, n, H, p).transpose(0, 2, 1, 3); reshape(B, H, n, p) mixes "
                      "tokens and heads."),
    "merge_reshape": ("heads merged without the transpose", "merge as "
                      "y.transpose(0, 2, 1, 3).reshape(B, n, D), the inverse of the split."),
    "transposed_out": ("a transposed output projection W_out", "out = y W_out + b_out: "
                       "y_flat @ W_out, not @ W_out.T."),
}  # fmt: skip


# slips recognized from the output alone, however the rest of the code differs
_DETECT = {"softmax_tokens": _normalized_over("pi", 2, 1)}


def _tssa_cases(seed):
    rng = np.random.default_rng(seed)
    B, n, D, H = 2, 5, 6, 2
    random = {
        "x": rng.standard_normal((B, n, D)),
        "params": {
            "qkv.weight": 0.6 * rng.standard_normal((D, D)),
            "qkv.bias": 0.1 * rng.standard_normal(D),
            "temp": rng.uniform(0.5, 2.0, (H, 1)),
            "proj.weight": 0.5 * rng.standard_normal((D, D)),
            "proj.bias": 0.1 * rng.standard_normal(D),
        },
    }
    # Hard case: W_qkv = I so w = x. Head 0: entries +-1 and temp -200, so its membership is
    # ~e^-100 for every token (only the 1e-8 keeps its statistics at 0); head 1: one feature
    # is 0 for every token (only the 1e-12 floor keeps w_hat finite).
    B, n, D, H = 1, 4, 6, 3
    x = rng.standard_normal((B, n, D))
    x[..., 0:2] = rng.choice([-1.0, 1.0], size=(B, n, 2))
    x[..., 2] = 0.0
    hard = {
        "x": x,
        "params": {
            "qkv.weight": np.eye(D), "qkv.bias": np.zeros(D),
            "temp": np.array([[-200.0], [1.0], [1.5]]),
            "proj.weight": 0.5 * rng.standard_normal((D, D)),
            "proj.bias": 0.1 * rng.standard_normal(D),
        },
    }  # fmt: skip
    return [
        Case("random B=2 n=5 D=6 H=2", random),
        Case("hard: Π ≈ 0 in head 0, a zero feature", hard,
             note="W_qkv = I, so w = x. Head 0 has temperature −200: its membership is about "
                  "e^−100 for every token, and only the 1e-8 keeps s finite and ≈ 0. In head 1, "
                  "feature 0 is 0 for every token: only the 1e-12 floor keeps ŵ finite."),
    ]  # fmt: skip


def _forward_spec_parts(name, library_forward, reference):
    """The reference, the output extractor and the slip factory shared by the two forward
    exercises (05 TSSA, 07 causal TSSA): both return (out, cache) with the same cache keys."""

    def ref(c):
        out, cache = library_forward(c.args["x"], c.args["params"])
        r = reference(c.args["x"], c.args["params"])
        return {"w": r["w"], "pi": cache["pi"], "s": r["s"], "y": r["y"], "out": out}

    def extract(output, c):
        if not (isinstance(output, tuple | list) and len(output) == 2):
            raise BadOutput(f"{name} should return the pair (out, cache)")
        out, cache = output
        if not isinstance(cache, dict):
            raise BadOutput(f"the cache should be a dict, got {type(cache).__name__}")
        got = {k: cache[k] for k in TSSA_CACHE_KEYS if k in cache}
        got["out"] = out
        return got

    def slip(key):
        def f(c):
            r = reference(c.args["x"], c.args["params"], slip=key)
            return {k: r[k] for k in ("w", "pi", "s", "y", "out")}

        return f

    return ref, extract, slip


def _tssa_forward_spec() -> Spec:
    from . import nn

    ref, extract, slip = _forward_spec_parts("tssa_forward", nn.tssa_forward, tssa_reference)
    return Spec(
        "tssa_forward",
        "tssa_forward(x, params) -> (out, cache)",
        "whitebox.nn.tssa_forward",
        lambda: _tssa_cases(501),
        ref,
        extract=extract,
        slips=[
            Slip(name, hint, slip(k), detect=_DETECT.get(k))
            for k, (name, hint) in TSSA_FORWARD_SLIPS.items()
        ],
    )


def check_tssa_forward(tssa_forward) -> CheckResult:
    """Check ``tssa_forward(x, params) -> (out, cache)`` (exercise 05); the cache must hold
    'w' (B, H, n, p), 'pi' (B, H, n), 's' (B, H, p) and 'y' (B, H, n, p)."""
    return run_check(_tssa_forward_spec(), tssa_forward)


# ============================================================================ 06 TSSA backward

GRAD_KEYS = ("proj.bias", "proj.weight", "temp", "qkv.bias", "qkv.weight")


def tssa_backward_reference(dout, r, slip=None):
    """Backward of :func:`tssa_reference` (its returned dict ``r``) with an optional planted
    ``slip`` (a key of ``TSSA_BACKWARD_SLIPS``). Returns (dx, grads)."""
    w, w_sq, pi, pi_bar, pi_sum, c = r["w"], r["w_sq"], r["pi"], r["pi_bar"], r["pi_sum"], r["c"]
    B, H, n, p = w.shape
    D = H * p
    two = 1.0 if slip == "missing_two" else 2.0
    sign = 1.0 if slip == "sign" else -1.0

    def dW(inp, g):
        m = inp.reshape(-1, inp.shape[-1]).T @ g.reshape(-1, g.shape[-1])
        return m.T if slip == "transposed_dW" else m

    grads = {"proj.bias": dout.reshape(-1, D).sum(axis=0), "proj.weight": dW(r["y_flat"], dout)}
    dy = (dout @ r["Wo"].T).reshape(B, n, H, p).transpose(0, 2, 1, 3)  # (B, H, n, p)
    cc = c[:, :, None, :]  # (B, H, 1, p)
    dw = sign * pi[..., None] * cc * dy
    dpi = sign * (w * cc * dy).sum(axis=3)  # (B, H, n)
    dc = sign * (pi[..., None] * w * dy).sum(axis=2)  # (B, H, p)
    ds = -(c * c) * dc
    if slip == "stats_constant":
        ds = np.zeros_like(ds)
    # s = sum_j pi_bar_j w_j^2
    dpi_bar = np.einsum("bhnp,bhp->bhn", w_sq, ds)
    dw += two * ds[:, :, None, :] * pi_bar[..., None] * w
    # pi_bar = pi / (sum_j pi + eps)
    dpi = dpi + dpi_bar / pi_sum
    if slip != "pi_sum_constant":
        dpi = dpi - (dpi_bar * pi).sum(axis=2, keepdims=True) / pi_sum**2
    axis = 2 if slip == "softmax_backward_axis" else 1
    dz = pi * (dpi - (dpi * pi).sum(axis=axis, keepdims=True))
    if slip == "pi_constant":
        dz = np.zeros_like(dz)
    grads["temp"] = (dz * r["a"]).sum(axis=(0, 2))[:, None]  # (H, 1)
    da = dz * r["temp"]  # (B, H, n)
    denom = r["denom"]
    dw += two * da[..., None] * w / denom**2
    if slip != "norm_constant":
        ddenom = -2.0 * np.einsum("bhn,bhnp->bhp", da, w_sq)[:, :, None, :] / denom**3
        dnorm = ddenom * (r["norm"] >= 1e-12)
        dw += dnorm * w / denom
    dw_flat = dw.transpose(0, 2, 1, 3).reshape(B, n, D)
    grads["qkv.bias"] = dw_flat.reshape(-1, D).sum(axis=0)
    grads["qkv.weight"] = dW(r["x"], dw_flat)
    return dw_flat @ r["W"].T, grads


TSSA_BACKWARD_SLIPS = {
    "pi_constant": ("Π treated as a constant (no gradient through the softmax)",
                    "Π depends on w through the scores temp_h Σ_i ŵ²: backpropagate dΠ through "
                    "the softmax over the heads; without it d temp is 0."),
    "softmax_backward_axis": ("the softmax backward over the wrong axis",
                              "the softmax runs over the heads (axis 1): dz = Π ⊙ (dΠ − Σ_h Π "
                              "dΠ) with the sum over axis 1, not over the tokens."),
    "stats_constant": ("s treated as a constant", "s depends on w and on Π: backpropagate ds = "
                       "−c² dc (c = 1/(1 + s)) into both."),
    "pi_sum_constant": ("Σ_j Π_hj treated as a constant", "the weights Π_hj / (Σ_j' Π_hj' + "
                        "1e-8) are a quotient: the denominator depends on Π too."),
    "norm_constant": ("the column norm treated as a constant", "ŵ = w / ‖w_{·,i}‖ and the norm "
                      "depends on w: add the path through the norm (d‖w‖/dw = w/‖w‖)."),
    "missing_two": ("a missing 2 in d(w²)/dw", "d(w²)/dw = 2w, both in s and in the scores."),
    "transposed_dW": ("a transposed weight gradient", "for y = x W: dW = xᵀ dy (shape (D_in, "
                      "D_out)), not dyᵀ x."),
    "sign": ("the minus sign of y = −Π w / (1 + s) is lost", "every gradient that flows "
             "through y carries the minus sign."),
}  # fmt: skip


def _tssa_backward_spec(forward) -> Spec:
    def cases():
        out = []
        for i, c in enumerate(_tssa_cases(601)):
            rng = np.random.default_rng(6010 + i)
            dout = rng.standard_normal(c.args["x"].shape)  # random, never all ones
            out.append(Case(c.name, {"dout": dout, **c.args}, c.note))
        return out

    def call(fn, args):
        _, cache = forward(args["x"], args["params"])
        return fn(args["dout"], cache)

    def ref(c):
        from . import nn

        _, cache = nn.tssa_forward(c.args["x"], c.args["params"])
        dx, grads = nn.tssa_backward(c.args["dout"], cache)
        return {**{k: grads[k] for k in GRAD_KEYS}, "dx": dx}

    def extract(output, c):
        if not (isinstance(output, tuple | list) and len(output) == 2):
            raise BadOutput("tssa_backward should return the pair (dx, grads)")
        dx, grads = output
        if not isinstance(grads, dict):
            raise BadOutput(f"grads should be a dict, got {type(grads).__name__}")
        return {**{k: grads[k] for k in GRAD_KEYS if k in grads}, "dx": dx}

    def slip(key):
        def f(c):
            r = tssa_reference(c.args["x"], c.args["params"])
            dx, grads = tssa_backward_reference(c.args["dout"], r, slip=key)
            return {**grads, "dx": dx}

        return f

    def transposed_weights(c, got):
        """Some weight gradient is the transpose of the right one; the others are right."""
        want, transposed = ref(c), False
        for k in ("proj.weight", "qkv.weight"):
            if _compare(want[k], got.get(k), TOL, FLOOR)[0]:
                continue
            if not _compare(want[k].T, got.get(k), TOL, FLOOR)[0]:
                return False
            transposed = True
        return transposed

    def extra(fn):
        """The forward the backward is checked with must itself be right."""
        problems = []
        for c in _tssa_cases(601):
            from . import nn

            out, _ = forward(c.args["x"], copy.deepcopy(c.args["params"]))
            want, _ = nn.tssa_forward(c.args["x"], c.args["params"])
            if not _compare(want, out, TOL, FLOOR)[0]:
                problems.append(f"the forward pass given to the checker is wrong on '{c.name}'")
        return problems

    return Spec(
        "tssa_backward",
        "tssa_backward(dout, cache) -> (dx, grads)",
        "whitebox.nn.tssa_backward",
        cases,
        ref,
        call=call,
        extract=extract,
        extra=extra,
        slips=[
            Slip(name, hint, slip(k), detect=transposed_weights if k == "transposed_dW" else None)
            for k, (name, hint) in TSSA_BACKWARD_SLIPS.items()
        ],
    )


def check_tssa_backward(tssa_backward, forward) -> CheckResult:
    """Check ``tssa_backward(dout, cache) -> (dx, grads)`` (exercise 06), with ``cache`` from
    ``forward(x, params)``; grads has the keys of ``GRAD_KEYS``. Compared in backprop order."""
    return run_check(_tssa_backward_spec(forward), tssa_backward)


# ============================================================================ 07 causal TSSA


def causal_tssa_reference(x, params, slip=None):
    """Causal TSSA in plain NumPy with an optional planted ``slip`` (a key of
    ``CAUSAL_SLIPS``). Returns {'w', 'pi', 's', 'y', 'out'}."""
    W, b, temp = params["qkv.weight"], params["qkv.bias"], params["temp"]
    B, T, D = x.shape
    H = temp.shape[0]
    p = D // H
    w = (x @ W + b).reshape(B, T, H, p).transpose(0, 2, 1, 3)  # (B, H, T, p)
    w_sq = w * w
    if slip == "r_sum":
        r_raw = np.broadcast_to(w_sq.sum(axis=2, keepdims=True), w_sq.shape)
    elif slip == "cumsum_features":
        r_raw = np.cumsum(w_sq, axis=3)
    else:
        r_raw = np.cumsum(w_sq, axis=2)  # (B, H, T, p)
    r = r_raw if slip == "no_clamp" else np.maximum(r_raw, 1e-12)
    q = w_sq / (np.sqrt(r) if slip == "sqrt_r" else r)
    beta = params["denom_bias"][:, :T, 0]  # (H, T)
    a = q.sum(axis=3) + (1 if slip == "beta_once" else p) * beta  # (B, H, T)
    pi = _softmax(temp * a, axis=2 if slip == "softmax_tokens" else 1)
    if slip == "s_sum":
        num = np.broadcast_to((pi[..., None] * w_sq).sum(axis=2, keepdims=True), w_sq.shape)
        den = np.broadcast_to(pi.sum(axis=2, keepdims=True), pi.shape) + 1e-8
    else:
        num = np.cumsum(pi[..., None] * w_sq, axis=2)
        den = np.cumsum(pi, axis=2) + (0.0 if slip == "no_eps" else 1e-8)
    s = num / den[..., None]  # (B, H, T, p)
    y = -pi[..., None] * w / (1.0 + s)
    out = y.transpose(0, 2, 1, 3).reshape(B, T, D) @ params["proj.weight"] + params["proj.bias"]
    return {"w": w, "pi": pi, "s": s, "y": y, "out": out}


CAUSAL_SLIPS = {
    "s_sum": ("the statistics s see the future (a sum instead of a cumulative sum)",
              "s_t = cumsum_t(Π w²) / (cumsum_t(Π) + 1e-8): token t may only use tokens ≤ t."),
    "r_sum": ("the normalizer r sees the future (a sum instead of a cumulative sum)",
              "r_t = max(cumsum_t w², 1e-12): the running sum over tokens ≤ t."),
    "cumsum_features": ("the cumulative sum over the wrong axis", "accumulate over the tokens "
                        "(axis 2 of (B, H, T, p)), not over the features."),
    "no_clamp": ("a forgotten 1e-12 clamp", "r = max(cumsum w², 1e-12): a feature that is 0 "
                 "on the first tokens gives 0/0 = nan."),
    "sqrt_r": ("the running norm instead of the running squared norm", "the score uses "
               "w²/r with r = cumsum w² (a squared norm), the causal analogue of ŵ²."),
    "beta_once": ("β added once instead of once per feature", "score_ht = temp_h Σ_i "
                  "(w²/r + β_ht) = temp_h (Σ_i w²/r + p β_ht)."),
    "softmax_tokens": ("the softmax over the wrong axis (tokens instead of heads)",
                       "Π_ht = softmax over the heads h (axis 1)."),
    "no_eps": ("a forgotten 1e-8", "s_t = cumsum_t(Π w²) / (cumsum_t(Π) + 1e-8)."),
}  # fmt: skip


def _causal_cases(seed):
    rng = np.random.default_rng(seed)
    B, T, D, H, L = 2, 6, 8, 2, 9
    random = {
        "x": rng.standard_normal((B, T, D)),
        "params": {
            "qkv.weight": 0.6 * rng.standard_normal((D, D)),
            "qkv.bias": 0.1 * rng.standard_normal(D),
            "temp": rng.uniform(0.5, 2.0, (H, 1)),
            "denom_bias": 0.3 * rng.standard_normal((H, L, 1)),
            "proj.weight": 0.5 * rng.standard_normal((D, D)),
            "proj.bias": 0.1 * rng.standard_normal(D),
        },
    }
    # Hard case, as for the non-causal layer: head 0 has entries +-1 and temperature -200
    # (membership ~e^-100: only the 1e-8 keeps s near 0); in head 1 feature 0 is 0 on the
    # first two tokens (r = 0 there: only the 1e-12 clamp keeps w^2/r finite).
    B, T, D, H, L = 1, 4, 6, 3, 6
    x = rng.standard_normal((B, T, D))
    x[..., 0:2] = rng.choice([-1.0, 1.0], size=(B, T, 2))
    x[:, :2, 2] = 0.0
    hard = {
        "x": x,
        "params": {
            "qkv.weight": np.eye(D), "qkv.bias": np.zeros(D),
            "temp": np.array([[-200.0], [1.0], [1.5]]), "denom_bias": np.zeros((H, L, 1)),
            "proj.weight": 0.5 * rng.standard_normal((D, D)),
            "proj.bias": 0.1 * rng.standard_normal(D),
        },
    }  # fmt: skip
    return [
        Case("random B=2 T=6 D=8 H=2 block_size=9", random),
        Case("hard: Π ≈ 0 in head 0, zeros on tokens 0-1", hard,
             note="W_qkv = I, so w = x. Head 0 has temperature −200 (membership about e^−100: "
                  "only the 1e-8 keeps s ≈ 0); in head 1, feature 0 is 0 on tokens 0 and 1 "
                  "(r = 0 there: only the 1e-12 clamp keeps w²/r finite)."),
    ]  # fmt: skip


def _causal_spec() -> Spec:
    from . import nn

    ref, extract, slip = _forward_spec_parts(
        "causal_tssa_forward", nn.causal_tssa_forward, causal_tssa_reference
    )

    def extra(fn):
        """Changing tokens t0.. must leave the outputs at tokens < t0 unchanged."""
        c = _causal_cases(701)[0]
        x, params = c.args["x"], c.args["params"]
        t0 = 3
        x2 = x.copy()
        x2[:, t0:] = np.random.default_rng(7011).standard_normal(x2[:, t0:].shape)
        out1, _ = fn(x.copy(), copy.deepcopy(params))
        out2, _ = fn(x2, copy.deepcopy(params))
        ok, err, _ = _compare(np.asarray(out1)[:, :t0], np.asarray(out2)[:, :t0], 1e-12, FLOOR)
        if ok:
            return []
        return [
            f"not causal: changing tokens {t0}.. changed the outputs at tokens < {t0} (relative "
            f"change {_show_err(err)}); every statistic at token t must use tokens ≤ t only."
        ]

    return Spec(
        "causal_tssa_forward", "causal_tssa_forward(x, params) -> (out, cache)",
        "whitebox.nn.causal_tssa_forward", lambda: _causal_cases(701), ref, extract=extract,
        extra=extra,
        slips=[
            Slip(name, hint, slip(k), detect=_DETECT.get(k)) for k, (name, hint) in CAUSAL_SLIPS.items()
        ],
    )  # fmt: skip


def check_causal_tssa_forward(causal_tssa_forward) -> CheckResult:
    """Check ``causal_tssa_forward(x, params) -> (out, cache)`` (exercise 07); the cache must
    hold 'w' (B, H, T, p), 'pi' (B, H, T), 's' (B, H, T, p) and 'y' (B, H, T, p)."""
    return run_check(_causal_spec(), causal_tssa_forward)


# ============================================================================ 08 complexity


def check_time_call(time_call) -> CheckResult:
    """Check ``time_call(f, repeats)`` -> the best (smallest) wall time of one call of ``f``, in
    seconds (exercise 08). Uses a function that sleeps 5 ms and counts its calls."""
    name = "time_call"
    lines = ["Checking time_call(f, repeats) on a function that sleeps 5 ms, with repeats=5."]
    calls = []
    sleep = 0.005

    def f():
        calls.append(1)
        time.sleep(sleep)

    def finish(status, **kw):
        r = CheckResult(name, status, **kw)
        r.message = "\n".join(lines)
        print(r.message)
        return r

    try:
        t = time_call(f, 5)
    except NotImplementedError:
        lines[:] = [
            f"… {name}: not implemented yet (it raises NotImplementedError). "
            "Replace the TODO with your code, run that cell, then run this one again."
        ]
        return finish("not implemented")
    except Exception as exc:
        where = _where_raised(time_call, exc)
        lines.append(
            f"✗ {name} raised {type(exc).__name__}: {exc}" + (f", {where}" if where else "")
        )
        return finish("error")
    try:
        t = float(t)
    except (TypeError, ValueError):
        lines.append(f"✗ {name} should return a number of seconds, got {type(t).__name__}.")
        return finish("wrong", quantity="time")
    n = len(calls)
    if n < 5:
        lines.append(f"✗ f was called {n} times: call it `repeats` = 5 times (or more).")
        return finish("wrong", quantity="calls")
    if t < sleep * 0.99:
        lines.append(
            f"✗ the time ({t:.3g} s) is shorter than the 5 ms that f sleeps: is the call to f "
            "between the two readings of time.perf_counter()?"
        )
        return finish("wrong", quantity="time")
    if t > 100 * n * sleep:
        lines.append(
            f"✗ the time ({t:.3g}) is far too long for 5 calls of 5 ms.\n  Likely slip: "
            "milliseconds instead of seconds. Return seconds, as time.perf_counter() gives them."
        )
        return finish("wrong", quantity="time", slips=["milliseconds instead of seconds"])
    if t >= 0.8 * n * sleep:
        lines.append(
            "✗ the time is about the total of all the calls.\n  Likely slip: the total instead "
            "of the best time. Return the best single call (the minimum over the repeats), the "
            "least disturbed measurement."
        )
        return finish("wrong", quantity="time", slips=["the total instead of the best time"])
    lines.append(f"✓ {name} is correct.")
    return finish("passed")


def _fit_exponent_spec() -> Spec:
    def cases():
        rng = np.random.default_rng(801)
        ns = np.array([64, 128, 256, 512, 1024], dtype=float)
        noisy = 3e-6 * ns**1.3 * np.exp(0.2 * rng.standard_normal(ns.size))
        return [
            Case("exact power law t = 2e-7 n^2", {"ns": ns, "times": 2e-7 * ns**2}),
            Case("noisy power law t ≈ 3e-6 n^1.3", {"ns": ns, "times": noisy}),
        ]

    def ref(c):
        x, y = np.log(c.args["ns"]), np.log(c.args["times"])
        return {"exponent": np.polyfit(x, y, 1)[0]}

    def lin(x, y):
        return np.polyfit(x, y, 1)[0]

    def slip(f):
        return lambda c: {"exponent": f(np.asarray(c.args["ns"]), np.asarray(c.args["times"]))}

    return Spec(
        "fit_exponent", "fit_exponent(ns, times)", "the least-squares slope of log t on log n",
        cases, ref, quantity="exponent",
        slips=[
            Slip("a fit of t against n (no logarithms)", "t = c n^a is a line in log-log "
                 "coordinates: fit log t against log n.", slip(lin)),
            Slip("a fit of log t against n", "take the logarithm of n too.",
                 slip(lambda n, t: lin(n, np.log(t)))),
            Slip("the axes swapped", "fit log t (the response) against log n, not log n "
                 "against log t.", slip(lambda n, t: lin(np.log(t), np.log(n)))),
            Slip("a line through the origin", "fit a slope and an intercept: log t = a log n + "
                 "log c.", slip(lambda n, t: np.sum(np.log(n) * np.log(t)) / np.sum(np.log(n) ** 2))),
            Slip("only the first and the last point", "use every measurement: a least-squares "
                 "fit (np.polyfit(log n, log t, 1)).",
                 slip(lambda n, t: (np.log(t[-1]) - np.log(t[0])) / (np.log(n[-1]) - np.log(n[0])))),
        ],
    )  # fmt: skip


def check_fit_exponent(fit_exponent) -> CheckResult:
    """Check ``fit_exponent(ns, times)`` = the least-squares slope a of log t = a log n + b."""
    return run_check(_fit_exponent_spec(), fit_exponent)


SHAPES = {
    "coding_rate": "Z is (d, n) with the tokens as columns, eps a float; return a float",
    "compression_rate": "Z (d, n), Pi (n, K), eps a float; return a float",
    "token_statistics": "Z (d, n), Pi (n, K), U (K, d, p) with U[k] = U_k (d × p); return y (K, p)",
    "variational_compression_rate": "Z (d, n), Pi (n, K), U (K, d, p), eps a float; return a float",
    "eigenbases": "Z (d, n), Pi (n, K); return U (K, d, d)",
    "variational_compression_grad": "Z (d, n), Pi (n, K), U (K, d, p); return (d, n)",
    "numerical_gradient": "f maps an array shaped like Z to a float; return an array shaped like Z",
    "tssa_step": "Z (d, n), Pi (n, K), U (K, d, p), eps and tau floats; return (d, n)",
    "estimate_membership": "Z (d, n), U (K, d, p), eta a float; return Pi (n, K)",
    "tssa_forward": "x (B, n, D); qkv.weight (D, D), qkv.bias (D,), temp (H, 1), proj.weight "
    "(D, D), proj.bias (D,); cache: w (B, H, n, p), pi (B, H, n), s (B, H, p), y (B, H, n, p)",
    "tssa_backward": "dout (B, n, D); return dx (B, n, D) and grads shaped like the parameters: "
    "qkv.weight (D, D), qkv.bias (D,), temp (H, 1), proj.weight (D, D), proj.bias (D,)",
    "causal_tssa_forward": "x (B, T, D); denom_bias (H, block_size, 1), use [:, :T]; cache: w, s, "
    "y (B, H, T, p), pi (B, H, T)",
    "fit_exponent": "ns and times are 1-d arrays of the same length; return a float",
}

SPECS = {
    "check_coding_rate": _coding_rate_spec,
    "check_compression_rate": _compression_rate_spec,
    "check_token_statistics": _token_statistics_spec,
    "check_variational_compression_rate": _variational_rate_spec,
    "check_eigenbases": _eigenbases_spec,
    "check_variational_compression_grad": _grad_spec,
    "check_numerical_gradient": _numerical_gradient_spec,
    "check_tssa_step": _tssa_step_spec,
    "check_estimate_membership": _membership_spec,
    "check_tssa_forward": _tssa_forward_spec,
    "check_tssa_backward": _tssa_backward_spec,
    "check_causal_tssa_forward": _causal_spec,
    "check_fit_exponent": _fit_exponent_spec,
}
