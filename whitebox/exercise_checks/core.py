r"""The engine of the exercise checkers: results, cases, slips, specifications, comparisons.

A checker is a :class:`Spec` (the cases, the reference, the known slips) handed to
:func:`run_check` with the learner's function. The modules next to this one hold one
exercise's specs each; this one knows nothing about any exercise.

Relative errors are entry-wise with a floor, |a - b| / max(floor, |a| + |b|), as in
:mod:`whitebox.gradcheck`; beside the largest of them the table shows the norm-based error
‖got − expected‖ / ‖expected‖, which does not saturate (the entry-wise error is at most 1
however far apart the values are). Everything is compared in float64.

Answers must compute: while the learner's function runs, the library's reference
implementations of that exercise (the spec's ``withheld``) are replaced, everywhere a learner
could reach them, by stand-ins that raise :class:`DelegatesToLibrary` ("this exercise asks you
to write it yourself"); see :func:`withhold`. The checker computes its expected values with the
true references, outside that window.
"""

import contextlib
import copy
import itertools
import linecache
import math
import sys
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np

#: Relative tolerance (entry-wise, float64) for "this quantity is right".
TOL = 1e-6
#: Floor of the relative error's denominator: |a - b| / max(FLOOR, |a| + |b|).
FLOOR = 1e-8
#: The slip named when the learner's function calls a withheld library reference.
DELEGATES = "delegates to the library"
#: The slip named when the learner's function changes an input array.
CHANGES_INPUT = "changed its input in place"
#: What a withheld reference says when it is called.
WRITE_IT_YOURSELF = "this exercise asks you to write it yourself"


# ============================================================================ results and specs


@dataclass
class CheckResult:
    """What a checker found. Truthy exactly when ``status == 'passed'``.

    status: 'passed', 'not implemented', 'wrong' or 'error'; quantity/case: the first wrong
    quantity and the case it was found in; rel_error: its largest entry-wise relative error;
    norm_error: ‖got − expected‖ / ‖expected‖ for it; slips: the names of the known slips the
    output matches (``DELEGATES`` when it called a withheld library function); message: the
    feedback that was printed."""

    name: str
    status: str
    quantity: str | None = None
    case: str | None = None
    rel_error: float | None = None
    slips: list[str] = field(default_factory=list)
    message: str = ""
    norm_error: float | None = None

    def __bool__(self) -> bool:
        return self.status == "passed"

    def __repr__(self) -> str:
        extra = f", quantity={self.quantity!r}" if self.quantity else ""
        extra += f", slips={self.slips!r}" if self.slips else ""
        return f"CheckResult({self.name!r}, status={self.status!r}{extra})"


@dataclass
class Case:
    """One input to the learner's function: ``args`` in call order (names used in messages),
    a ``note`` printed when the learner's function fails on this case, and a ``passed_note``
    printed when it is right on this case but wrong on a later one (a probe case, built so
    that only some of the computation matters, says where the mistake is not)."""

    name: str
    args: dict
    note: str = ""
    passed_note: str = ""


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
    # () -> [(public name, object)]: the library's answers, withheld while fn runs
    withheld: Callable | None = None
    # (fn, args) -> [other functions whose globals the learner's code may reach]
    namespaces: Callable | None = None
    # quantities ``extract`` may leave out (an intermediate read off an output of a wrong shape)
    optional: tuple = ()


class BadOutput(Exception):
    """The learner's output has the wrong form (raised by ``extract``)."""


# ============================================================================ withheld answers


class DelegatesToLibrary(RuntimeError):
    """Raised by a withheld library function: the learner's code called the answer."""


def _stand_in(name):
    def withheld(*args, **kwargs):
        raise DelegatesToLibrary(f"{name} is withheld here: {WRITE_IT_YOURSELF}")

    withheld.__name__ = withheld.__qualname__ = name.rsplit(".", 1)[-1]
    withheld.__doc__ = f"{name}, withheld while a checker runs: {WRITE_IT_YOURSELF}."
    return withheld


def _namespaces_of(fns):
    """Every namespace a learner's code could reach a library function through: the modules
    of ``whitebox`` (the library and its checkers) and the globals of the learner's functions
    (a notebook's namespace, where ``from whitebox.mcr2 import ...`` put names)."""
    spaces = [
        vars(m)
        for name, m in list(sys.modules.items())
        if isinstance(m, ModuleType) and (name == "whitebox" or name.startswith("whitebox."))
    ]
    for fn in fns:
        g = getattr(fn, "__globals__", None)
        if g is None:  # a partial, a bound method, a callable object: look at what it wraps
            inner = getattr(fn, "func", None) or getattr(fn, "__func__", None)
            g = getattr(inner, "__globals__", None)
        if isinstance(g, dict) and not any(g is sp for sp in spaces):
            spaces.append(g)
    return spaces


@contextlib.contextmanager
def withhold(refs, fns=()):
    """Within the block, every name that is bound to one of the objects in ``refs`` ((public
    name, object) pairs), in any ``whitebox`` module or in the globals of ``fns``, is bound to a
    stand-in that raises :class:`DelegatesToLibrary`. The names are found by object identity,
    so a function re-exported under another module (``whitebox.coding_rate`` is
    ``whitebox.mcr2.coding_rate``) or imported under another name is withheld too. Everything
    is restored on leaving the block, also on an exception."""
    refs = [(name, obj) for name, obj in refs if obj is not None]
    if not refs:
        yield
        return
    stand_ins = {id(obj): (obj, _stand_in(name)) for name, obj in refs}

    def stand_in(value):
        hit = stand_ins.get(id(value))
        return hit[1] if hit is not None and hit[0] is value else None

    saved, cells, defaults = [], [], []
    try:
        for space in _namespaces_of(fns):
            for key, value in list(space.items()):
                new = stand_in(value)
                if new is not None:
                    saved.append((space, key, value))
                    space[key] = new
        for fn in fns:  # names the learner's function closes over, and its default arguments
            for cell in getattr(fn, "__closure__", None) or ():
                try:
                    new = stand_in(cell.cell_contents)
                except ValueError:  # an empty cell
                    continue
                if new is not None:
                    cells.append((cell, cell.cell_contents))
                    cell.cell_contents = new
            old = getattr(fn, "__defaults__", None)
            if old and any(stand_in(v) is not None for v in old):
                defaults.append((fn, old))
                fn.__defaults__ = tuple(stand_in(v) or v for v in old)
        yield
    finally:
        for fn, old in reversed(defaults):
            fn.__defaults__ = old
        for cell, value in reversed(cells):
            cell.cell_contents = value
        for space, key, value in reversed(saved):
            space[key] = value


def _delegation(exc) -> bool:
    """True when ``exc`` (or an exception it was raised from) is a withheld function's."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, DelegatesToLibrary) or WRITE_IT_YOURSELF in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


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


def compare(expected, got, tol, floor, relative_floor=0.0, broadcast=False):
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


def norm_error(expected, got) -> float:
    """‖got − expected‖ / ‖expected‖ (Frobenius), nan when the shapes differ, inf for a
    non-finite got; 0 when both are 0. Unlike the entry-wise error it does not saturate."""
    try:
        e = np.asarray(expected, dtype=np.float64)
        g = _to_float_array(got)
        if g.shape != e.shape:
            g = g.reshape(e.shape)
    except (BadOutput, ValueError):
        return math.nan
    if not (np.all(np.isfinite(e)) and np.all(np.isfinite(g))):
        same = np.array_equal(e, g, equal_nan=True)
        return 0.0 if same else math.inf
    ne = float(np.sqrt(np.sum(e * e)))
    nd = float(np.sqrt(np.sum((g - e) ** 2)))
    if ne == 0:
        return 0.0 if nd == 0 else math.inf
    return nd / ne


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


def show_err(err) -> str:
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
            (name, None if f is None else f[0])
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
    head = ("case", "quantity", "expected", "got", "max entry err", "‖got−exp‖/‖exp‖", "")
    cells = [head] + [tuple(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = []
    for c in cells:
        parts = [c[0].ljust(widths[0]), c[1].ljust(widths[1])]
        parts += [c[i].rjust(widths[i]) for i in (2, 3, 4, 5)]
        parts.append(c[6])
        lines.append("  " + "  ".join(parts).rstrip())
    return "\n".join(lines)


def _sums_to_one(a, axis) -> bool:
    """True when the (finite) array ``a`` sums to 1 along ``axis`` everywhere."""
    try:
        a = np.asarray(a, dtype=np.float64)
        return bool(np.all(np.isfinite(a))) and np.allclose(a.sum(axis=axis), 1.0, atol=1e-9)
    except (TypeError, ValueError, np.exceptions.AxisError):
        return False


def normalized_over(key, wrong_axis, right_axis):
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
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return all(slip.detect(case, got) for case, got in runs)
        except Exception:
            return False
    return False


def _slip_fn_matches(spec, slip, runs) -> bool:
    try:
        for case, got in runs:
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a slip may divide by zero, np.cov by n - 1 = 0
                want = slip.fn(case)
            for q, v in want.items():
                if q not in got:
                    continue
                ok, _, _ = compare(v, got[q], spec.tol, spec.floor, spec.relative_floor, True)
                if not ok:
                    return False
        return True
    except Exception:  # a slip that cannot be evaluated on a case explains nothing
        return False


TRANSPOSED = Slip(
    "the output transposed (its axes in another order)",
    "your values are right but the axes are in another order: return the layout the task "
    "asks for (for instance Z is (d, n) with the tokens as columns, Π is (n, K) with one row "
    "per token, a multi-head array is (B, H, n, p)).",
)


def _transposed_everywhere(spec, q, runs):
    """'layout' when, on every case that ran, the learner's ``q`` holds the expected values
    with the axes in one other order (the same permutation in every case) and its shape
    differs somewhere (a layout slip); 'square' when that holds but the shapes never differ
    (which may also be a slip of the mathematics, such as a transposed weight gradient); None
    otherwise."""
    perms, reshaped, seen = None, False, False
    for case, got in runs:
        if q not in got:
            continue
        e = np.asarray(spec.reference(case)[q], dtype=np.float64)
        try:
            g = _to_float_array(got[q])
        except BadOutput:
            return None
        if not 2 <= e.ndim <= 5:
            return None
        fits = set()
        for perm in itertools.permutations(range(e.ndim)):
            if perm == tuple(range(e.ndim)) or (perms is not None and perm not in perms):
                continue
            t = np.transpose(e, perm)
            if t.shape == g.shape and compare(t, g, spec.tol, spec.floor, spec.relative_floor)[0]:
                fits.add(perm)
        perms = fits if perms is None else perms & fits
        if not perms:
            return None
        reshaped = reshaped or g.shape != e.shape
        seen = seen or g.shape != e.shape or not np.allclose(e, g)
    if not perms or not seen:
        return None
    return "layout" if reshaped else "square"


def run_check(spec: Spec, fn) -> CheckResult:
    """Check ``fn`` against ``spec``: print the table and the verdict, return the result."""
    lines: list[str] = []
    name = spec.fn_name

    def finish(result: CheckResult) -> CheckResult:
        result.message = "\n".join(lines)
        print(result.message)
        sys.stdout.flush()
        return result

    if not callable(fn):
        lines.append(f"✗ {name}: expected a function, got {type(fn).__name__}.")
        return finish(CheckResult(name, "error"))

    call = spec.call or _default_call
    withheld = spec.withheld() if spec.withheld else []
    runs: list[tuple[Case, dict]] = []  # (case, learner's quantities) for cases that ran
    right_on: list[Case] = []  # probe cases passed before the first wrong quantity
    rows: list[tuple] = []
    problems: list[str] = []
    first_wrong = None  # (case, quantity, error, detail, expected, got)
    error_line = None
    cases = spec.cases()
    for case in cases:
        args = copy.deepcopy(case.args)
        reach = [fn] + (list(spec.namespaces(fn, args)) if spec.namespaces else [])
        try:
            with withhold(withheld, reach):
                output = call(fn, args)
        except NotImplementedError:
            lines.append(
                f"… {name}: not implemented yet (it raises NotImplementedError). "
                "Replace the TODO with your code, run that cell, then run this one again."
            )
            return finish(CheckResult(name, "not implemented"))
        except Exception as exc:  # the learner's bug: report it, never raise
            where = _where_raised(fn, exc)
            if _delegation(exc):
                names = ", ".join(dict.fromkeys(n for n, _ in withheld if n.startswith("whitebox")))
                lines.append(
                    f"✗ {name} calls the library's answer"
                    + (f" ({where})" if where else "")
                    + f": {WRITE_IT_YOURSELF}.\n  While it is checked, these are withheld: "
                    f"{names}. Compute the result from the formula with NumPy."
                )
                return finish(CheckResult(name, "wrong", case=case.name, slips=[DELEGATES]))
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
        case_ok = True
        for q, e in expected.items():
            if q not in got and q in spec.optional:
                continue  # an intermediate that cannot be read off this output
            if q not in got:
                rows.append((case.name, q, _show(e), "missing", "-", "-", "✗"))
                if first_wrong is None:
                    first_wrong = (case, q, math.nan, f"the output has no {q!r}", e, None, math.nan)
                case_ok = False
                continue
            ok, err, detail = compare(e, got[q], spec.tol, spec.floor, spec.relative_floor)
            shown = _show(got[q]) if not detail.startswith("shape") else "shape"
            nerr = norm_error(e, got[q])
            rows.append(
                (case.name, q, _show(e), shown, show_err(err), show_err(nerr), "✓" if ok else "✗")
            )
            if not ok and first_wrong is None:
                first_wrong = (case, q, err, detail, e, got[q], nerr)
            case_ok = case_ok and ok
        if case_ok and first_wrong is None and case.passed_note:
            right_on.append(case)

    if error_line is None and spec.extra:  # on failures too: its findings explain them
        try:
            with withhold(withheld, [fn]):
                problems += spec.extra(fn)
        except NotImplementedError:
            pass
        except Exception as exc:
            if _delegation(exc):
                lines.append(f"✗ {name} calls the library's answer: {WRITE_IT_YOURSELF}.")
                return finish(CheckResult(name, "wrong", slips=[DELEGATES]))
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
        case, q, err, detail, e, g, nerr = first_wrong
        result.quantity, result.case, result.rel_error = q, case.name, err
        result.norm_error = nerr
        size = (
            ""
            if math.isnan(err)
            else f"largest entry-wise error {show_err(err)}, ‖got − expected‖/‖expected‖ = "
            f"{show_err(nerr)}; "
        )
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
        for c in right_on:
            lines.append(f"  Right on case '{c.name}': {c.passed_note}")
        transposed = _transposed_everywhere(spec, q, runs) if g is not None else None
        if transposed == "layout":
            matched = [TRANSPOSED]  # the precise explanation: right values, swapped axes
        else:
            matched = [s for s in spec.slips if _slip_matches(spec, s, runs)]
            if not matched and transposed:
                matched = [TRANSPOSED]
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
    if any("changed its input `" in p for p in problems) and CHANGES_INPUT not in result.slips:
        result.slips.append(CHANGES_INPUT)
    for p in problems:
        lines.append(f"✗ {p}")
    return finish(result)


# ============================================================================ inputs


def soft_pi(rng, n, K, sharp=1.0):
    logits = sharp * rng.standard_normal((n, K))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def orthonormal(rng, K, d, p):
    return np.linalg.qr(rng.standard_normal((K, d, d)))[0][:, :, :p]


def softmax(z, axis):
    """A softmax with the maximum subtracted (exp cannot overflow)."""
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)
