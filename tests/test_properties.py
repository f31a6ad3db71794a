"""Property-based tests (hypothesis) over the public mathematics and every Module (issue 12).

Each drawn input must give either a ValueError that names the argument at fault, or a finite
result that matches a reference: for the exact coding rates an independent high-precision
computation (mpmath, 80 digits), for the variational form and the TSSA step the same formula
written out in float64 loops, for float32 layers the same layer in float64 with the same
weights. The draws cover what broke before: n < d, rank-deficient Z, eps from 1e-8 to 1e3,
|Z| from 1e-6 to 1e6 (and beyond, to be refused), NaN / Inf planted in any argument.

``derandomize=True``: the same examples on every machine and every run (a CI failure can be
reproduced), and ``max_examples`` keeps the whole file to a few seconds.
"""

import math

import mpmath
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_validation import _float_modules

import whitebox as wb
from whitebox.module import _first_array

SETTINGS = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
F32, F64 = np.float32, np.float64


# ---- independent references ----------------------------------------------------------------


def _mp_logdet(M):
    mpmath.mp.dps = 80
    return mpmath.log(mpmath.det(mpmath.matrix(M.tolist())))


def mp_coding_rate(Z, eps):
    d, n = Z.shape
    alpha = mpmath.mpf(d) / (n * mpmath.mpf(eps) ** 2)
    Zm = mpmath.matrix(Z.tolist())
    return float(mpmath.log(mpmath.det(mpmath.eye(d) + alpha * Zm * Zm.T)) / 2)


def mp_compression_rate(Z, Pi, eps):
    mpmath.mp.dps = 80
    d, n = Z.shape
    total = mpmath.mpf(0)
    Zm = mpmath.matrix(Z.tolist())
    for k in range(Pi.shape[1]):
        nk = mpmath.fsum(mpmath.mpf(v) for v in Pi[:, k])
        if nk == 0:
            continue
        D = mpmath.diag([mpmath.mpf(v) for v in Pi[:, k]])
        alpha = mpmath.mpf(d) / (nk * mpmath.mpf(eps) ** 2)
        M = mpmath.eye(d) + alpha * Zm * D * Zm.T
        total += nk / (2 * n) * mpmath.log(mpmath.det(M))
    return float(total)


def loop_variational(Z, Pi, U, eps):
    """R_c^var and its gradient, term by term in float64 (no einsum, no shared helper)."""
    d, n = Z.shape
    K, _, p = U.shape
    c = d / eps**2
    value, grad = 0.0, np.zeros((d, n))
    for k in range(K):
        nk = Pi[:, k].sum()
        if nk == 0:
            continue
        for i in range(p):
            u = U[k, :, i]
            proj = u @ Z  # (n,)
            y = float((Pi[:, k] * proj**2).sum() / nk)
            value += nk / (2 * n) * math.log1p(c * y)
            # d/dz_j: nk/(2n) * c/(1+cy) * 2 Pi_jk (u.z_j) u / nk
            grad += np.outer(u, (c / (1 + c * y)) * Pi[:, k] * proj) / n
    return value, grad


# ---- strategies -----------------------------------------------------------------------------


@st.composite
def problems(draw):
    """Z (d, n), Pi (n, K), U (K, d, p) orthonormal columns, eps; float64 originals."""
    d = draw(st.integers(1, 5))
    n = draw(st.integers(1, 6))
    K = draw(st.integers(1, 3))
    p = draw(st.integers(1, d))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scale = 10.0 ** draw(st.floats(-6, 6))
    rank = draw(st.integers(0, min(d, n)))  # rank-deficient Z, n < d included
    Z = (rng.standard_normal((d, rank)) @ rng.standard_normal((rank, n))) * scale
    if draw(st.booleans()):
        Pi = np.eye(K)[rng.integers(0, K, n)]  # hard groups (some may be empty)
    else:
        logits = rng.standard_normal((n, K)) * 3
        Pi = np.exp(logits - logits.max(axis=1, keepdims=True))
        Pi /= Pi.sum(axis=1, keepdims=True)
    U = np.stack([np.linalg.qr(rng.standard_normal((d, d)))[0][:, :p] for _ in range(K)])
    eps = 10.0 ** draw(st.floats(-8, 3))
    return Z, Pi, U, eps


def _plant(draw, arrays, names):
    """Maybe put a NaN or an Inf into one argument; returns (arrays, name of the bad one)."""
    if not draw(st.booleans()):
        return arrays, None
    which = draw(st.integers(0, len(arrays) - 1))
    bad = arrays[which].copy()
    bad.flat[draw(st.integers(0, bad.size - 1))] = draw(st.sampled_from([np.nan, np.inf]))
    arrays = list(arrays)
    arrays[which] = bad
    return arrays, names[which]


def _named(err, names):
    """The ValueError's message starts with one of the argument names."""
    first = str(err).split()[0].rstrip(":")
    assert first in names, f"unnamed ValueError: {err}"
    return first


def _close(got, ref, rtol):
    got, ref = np.asarray(got, F64), np.asarray(ref, F64)
    assert np.isfinite(got).all(), got
    scale = max(float(np.abs(ref).max()), 1e-300)
    assert float(np.abs(got - ref).max()) <= rtol * scale + 1e-300, (got, ref)


# ---- the mathematics ------------------------------------------------------------------------


@SETTINGS
@given(problems(), st.sampled_from([F64, F32]), st.data())
def test_exact_rates_refuse_by_name_or_match_an_80_digit_reference(problem, dtype, data):
    Z, Pi, U, eps = problem
    (Zd, Pid), bad = _plant(data.draw, [Z.astype(dtype), Pi], ["Z", "Pi"])
    rtol = 1e-10 if dtype == F64 else 2e-6
    try:
        R = wb.coding_rate(Zd, eps)
        Rc = wb.compression_rate(Zd, Pid, eps)
        dR = wb.rate_reduction(Zd, Pid, eps)
    except ValueError as err:
        assert _named(err, ["Z", "Pi", "eps"]) == bad
        return
    assert bad is None, "a planted NaN/Inf was not refused"
    Zr = Zd.astype(F64)  # the reference sees the same (rounded) tokens
    R_ref, Rc_ref = mp_coding_rate(Zr, eps), mp_compression_rate(Zr, Pi, eps)
    _close(R, R_ref, rtol)
    _close(Rc, Rc_ref, rtol)
    # a difference of two rates: accurate relative to the rates, not to itself
    assert abs(float(dR) - (R_ref - Rc_ref)) <= rtol * max(abs(R_ref), abs(Rc_ref), 1e-300)


@SETTINGS
@given(problems(), st.sampled_from([F64, F32]), st.data())
def test_variational_form_refuses_by_name_or_matches_the_loop_reference(problem, dtype, data):
    Z, Pi, U, eps = problem
    (Zd, Pid, Ud), bad = _plant(data.draw, [Z.astype(dtype), Pi, U], ["Z", "Pi", "U"])
    try:
        value = wb.variational_compression_rate(Zd, Pid, Ud, eps)
        grad = wb.variational_compression_grad(Zd, Pid, Ud, eps)
        step = wb.tssa_step(Zd, Pid, Ud, eps, tau=0.5)
    except ValueError as err:
        name = _named(err, ["Z", "Pi", "U", "eps", "tau"])
        assert bad is None or name == bad
        if bad is None:  # refused without a planted fault: only an out-of-range eps or Z
            assert name in ("eps", "Z"), err
        return
    assert bad is None, "a planted NaN/Inf was not refused"
    v_ref, g_ref = loop_variational(Zd.astype(F64), Pi, U.astype(dtype).astype(F64), eps)
    rtol = 1e-10 if dtype == F64 else 1e-4
    _close(value, v_ref, rtol)
    _close(grad, g_ref, rtol)
    _close(step, Zd.astype(F64) - 0.5 * g_ref, rtol)


@SETTINGS
@given(problems(), st.sampled_from([F64, F32]), st.floats(-3, 3), st.data())
def test_membership_refuses_by_name_or_matches_a_direct_softmax(problem, dtype, log_eta, data):
    Z, _, U, _ = problem
    (Zd, Ud), bad = _plant(data.draw, [Z.astype(dtype), U], ["Z", "U"])
    eta = 10.0**log_eta
    try:
        Pi = wb.estimate_membership(Zd, Ud, eta)
    except ValueError as err:
        assert _named(err, ["Z", "U", "eta"]) == bad
        return
    assert bad is None
    energy = np.array(
        [[np.sum((Ud[k].astype(F64).T @ Zd[:, j].astype(F64)) ** 2) for k in range(len(Ud))]
         for j in range(Zd.shape[1])]
    )  # fmt: skip
    with mpmath.workdps(50):
        ref = np.array(
            [[float(mpmath.exp(mpmath.mpf(e) / (2 * eta)) / mpmath.fsum(
                mpmath.exp(mpmath.mpf(f) / (2 * eta)) for f in row)) for e in row]
             for row in energy]
        )  # fmt: skip
    _close(Pi, ref, 1e-9 if dtype == F64 else 1e-3)


# ---- every Module ---------------------------------------------------------------------------

N_MODULES = len(_float_modules(F32))


@SETTINGS
@given(
    st.integers(0, N_MODULES - 1),
    st.sampled_from([F64, F32, np.float16]),
    st.floats(-8, 42),
    st.integers(0, 2**32 - 1),
    st.data(),
)
def test_every_module_refuses_by_name_or_gives_a_finite_result(index, in_dtype, log_scale, seed,
                                                               data):  # fmt: skip
    """Any scale, any input dtype, maybe a planted NaN/Inf in x or dy: a ValueError naming x
    or dy, or a finite output in the module's dtype and a finite backward."""
    name, module, shape = _float_modules(F32)[index]
    rng = np.random.default_rng(seed)
    with np.errstate(over="ignore"):
        x = (rng.standard_normal(shape) * 10.0**log_scale).astype(in_dtype)
    (x,), bad = _plant(data.draw, [x], ["x"])
    with np.errstate(all="ignore"):  # overflow inside a layer must become a ValueError
        try:
            out = _first_array(module.forward(x))
        except ValueError as err:
            assert _named(err, ["x"]) == "x"
            return
        assert bad is None and np.isfinite(x.astype(F32)).all(), "refusal expected"
        assert np.isfinite(out).all() and out.dtype == (module.dtype if module.parameters()
                                                        else x.dtype)  # fmt: skip
        dy = rng.standard_normal(out.shape).astype(F32)
        (dy,), bad = _plant(data.draw, [dy], ["dy"])
        try:
            dx = module.backward(dy)
        except ValueError as err:
            assert _named(err, ["dy"]) == "dy"
            return
    assert bad is None
    assert dx is None or np.isfinite(dx).all()
    assert all(np.isfinite(g).all() for g in module.gradients().values())


@SETTINGS
@given(st.integers(0, N_MODULES - 1), st.floats(-3, 3), st.integers(0, 2**32 - 1))
def test_every_float32_module_matches_its_float64_twin(index, log_scale, seed):
    """Same weights, the input rounded to float32: output, dx and every parameter gradient of
    the float32 module within 1e-3 (relative to the largest entry) of the float64 module's."""
    name, m32, shape = _float_modules(F32)[index]
    _, m64, _ = _float_modules(F64)[index]
    if m32.parameters():
        m64.load_state_dict(m32.state_dict())
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 10.0**log_scale).astype(F32)
    out32 = _first_array(m32.forward(x))
    out64 = _first_array(m64.forward(x.astype(F64)))
    dy = rng.standard_normal(out32.shape).astype(F32)
    dx32, dx64 = m32.backward(dy), m64.backward(dy.astype(F64))
    _close(out32, out64, 1e-3)
    if dx64 is not None:
        _close(dx32, dx64, 1e-3)
    g32, g64 = m32.gradients(), m64.gradients()
    for k in g64:
        if np.abs(g64[k]).max() > 0:
            _close(g32[k], g64[k], 1e-3)


def test_the_reference_itself_is_checked():
    """The 80-digit reference against a case worked by hand: Z = [[3], [4]] (d = 2, n = 1),
    eps = 1: R = 1/2 log det(I + 2 z z^T) = 1/2 log(1 + 2 |z|^2) = 1/2 log 51."""
    assert mp_coding_rate(np.array([[3.0], [4.0]]), 1.0) == pytest.approx(0.5 * math.log(51))
    v, g = loop_variational(
        np.array([[3.0], [4.0]]), np.ones((1, 1)), np.eye(2)[None], 1.0
    )  # y = (9, 16), c = 2: 1/2 (log 19 + log 33); grad = z c / (1 + c y)
    assert v == pytest.approx(0.5 * (math.log(19) + math.log(33)))
    np.testing.assert_allclose(g[:, 0], [3 * 2 / 19, 4 * 2 / 33])
