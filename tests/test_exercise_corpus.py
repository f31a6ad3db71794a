"""A corpus of answers as students write them, for the exercise checkers (issue 22).

Each wrong answer below is a separate function written the way a learner would write it (not
one of the checkers' slip generators): none may pass, and at least four in five must be named
with the right slip. Each correct alternative (another factorization, a loop, einsum instead
of matmul, an equivalent formula) must pass. Answers that call the library's own function are
refused with the named slip ``delegates to the library``, and the library is restored after.
"""

from __future__ import annotations

import contextlib
import io
import time

import numpy as np
import pytest
import scipy.special

import whitebox as wb
from whitebox import exercise_checks as ec
from whitebox import mcr2, nn
from whitebox.exercise_checks.core import DELEGATES

# ============================================================================ exercise 01


def cr_no_identity(Z, eps):
    d, n = Z.shape
    return 0.5 * np.log(np.linalg.det(d / (n * eps**2) * Z @ Z.T))


def cr_parentheses(Z, eps):
    d, n = Z.shape
    return 0.5 * np.linalg.slogdet(np.eye(d) + d / (n * eps) ** 2 * Z @ Z.T)[1]


def cr_eps_multiplies(Z, eps):
    d, n = Z.shape
    return 0.5 * np.linalg.slogdet(np.eye(d) + d / n * eps**2 * Z @ Z.T)[1]


def cr_log10(Z, eps):
    d, n = Z.shape
    return 0.5 * np.log10(np.linalg.det(np.eye(d) + d / (n * eps**2) * (Z @ Z.T)))


def cr_shape_swapped(Z, eps):
    n, d = Z.shape
    return 0.5 * np.linalg.slogdet(np.eye(Z.shape[0]) + d / (n * eps**2) * Z @ Z.T)[1]


def cr_log_trace(Z, eps):
    d, n = Z.shape
    return 0.5 * np.log(np.trace(np.eye(d) + d / (n * eps**2) * Z @ Z.T))


def comp_overwrites(Z, Pi, eps):
    d, n = Z.shape
    total = 0.0
    for k in range(Pi.shape[1]):
        nk = Pi[:, k].sum()
        if nk == 0:
            continue
        cov = Z @ np.diag(Pi[:, k]) @ Z.T
        total = nk / (2 * n) * np.linalg.slogdet(np.eye(d) + d / (nk * eps**2) * cov)[1]
    return total


def comp_precedence(Z, Pi, eps):
    d, n = Z.shape
    out = 0
    for k in range(Pi.shape[1]):
        pk = Pi[:, k]
        nk = np.sum(pk)
        if nk > 0:
            ld = np.linalg.slogdet(np.eye(d) + d / (nk * eps**2) * (Z * pk) @ Z.T)[1]
            out += nk / 2 * n * ld
    return out


def comp_no_empty_check(Z, Pi, eps):
    d, n = Z.shape
    nks = Pi.sum(axis=0)
    terms = [
        nk / (2 * n) * np.linalg.slogdet(np.eye(d) + d / (nk * eps**2) * (Z * Pi[:, k]) @ Z.T)[1]
        for k, nk in enumerate(nks)
    ]
    return float(np.sum(terms))


def comp_diag_twice(Z, Pi, eps):
    d, n = Z.shape
    total = 0.0
    for k in range(Pi.shape[1]):
        P = np.diag(Pi[:, k])
        nk = np.trace(P)
        if nk == 0:
            continue
        total += (
            nk / (2 * n) * np.linalg.slogdet(np.eye(d) + d / (nk * eps**2) * Z @ P @ P @ Z.T)[1]
        )
    return total


def cr_gram_with_identity_d(Z, eps):
    d, n = Z.shape
    return 0.5 * np.linalg.slogdet(np.eye(d) + d / (n * eps**2) * Z.T @ Z)[1]


def comp_nk_as_count(Z, Pi, eps):
    d, n = Z.shape
    total = 0.0
    for k in range(Pi.shape[1]):
        pk = Pi[:, k]
        nk = len(pk)
        if pk.sum() == 0:
            continue
        total += nk / (2 * n) * np.linalg.slogdet(np.eye(d) + d / (nk * eps**2) * (Z * pk) @ Z.T)[1]
    return total


# ============================================================================ exercise 02


def ts_groups_last(Z, Pi, U):
    UtZ = np.einsum("kdp,dn->kpn", U, Z)
    return (np.einsum("kpn,nk->kp", UtZ**2, Pi) / Pi.sum(axis=0)[:, None]).T


def ts_mean_over_tokens(Z, Pi, U):
    UtZ = np.einsum("kdp,dn->kpn", U, Z)
    return (UtZ**2 * Pi.T[:, None, :]).mean(axis=2)


def ts_not_squared(Z, Pi, U):
    K = U.shape[0]
    return np.stack([U[k].T @ Z @ Pi[:, k] / Pi[:, k].sum() for k in range(K)])


def vr_no_scale(Z, Pi, U, eps):
    n = Z.shape[1]
    nk = Pi.sum(axis=0)
    y = np.einsum("kpn,nk->kp", np.einsum("kdp,dn->kpn", U, Z) ** 2, Pi) / nk[:, None]
    return float(np.sum(nk / (2 * n) * np.log(1 + y).sum(axis=1)))


def vr_scale_from_R(Z, Pi, U, eps):
    d, n = Z.shape
    nk = Pi.sum(axis=0)
    y = np.einsum("kpn,nk->kp", np.einsum("kdp,dn->kpn", U, Z) ** 2, Pi) / nk[:, None]
    return float(np.sum(nk / (2 * n) * np.log1p(d / (n * eps**2) * y).sum(axis=1)))


def eig_rows(Z, Pi):
    return np.array([np.linalg.eigh(Z @ np.diag(Pi[:, k]) @ Z.T)[1].T for k in range(Pi.shape[1])])


def eig_all_tokens(Z, Pi):
    _, V = np.linalg.eigh(Z @ Z.T)
    return np.stack([V] * Pi.shape[1])


# ============================================================================ exercise 03


def _stats(Z, Pi, U, by=None):
    UtZ = np.einsum("kdp,dn->kpn", U, Z)
    return UtZ, np.einsum("kpn,nk->kp", UtZ**2, Pi) / (
        Pi.sum(axis=0)[:, None] if by is None else by
    )


def grad_forgot_gain(Z, Pi, U, eps):
    d, n = Z.shape
    c = d / eps**2
    UtZ, y = _stats(Z, Pi, U)
    D = c * np.ones_like(y)
    return np.einsum("kdp,kp,kpn,nk->dn", U, D, UtZ, Pi) / n


def grad_c_only_on_top(Z, Pi, U, eps):
    d, n = Z.shape
    c = d / eps**2
    UtZ, y = _stats(Z, Pi, U)
    D = c / (1 + y)
    return np.einsum("kdp,kp,kpn,nk->dn", U, D, UtZ, Pi) / n


def grad_gain_squared(Z, Pi, U, eps):
    d, n = Z.shape
    c = d / eps**2
    UtZ, y = _stats(Z, Pi, U)
    D = c / (1 + c * y) ** 2
    return np.einsum("kdp,kp,kpn,nk->dn", U, D, UtZ, Pi) / n


def grad_y_over_n(Z, Pi, U, eps):
    d, n = Z.shape
    c = d / eps**2
    G = np.zeros_like(Z)
    for k in range(U.shape[0]):
        P = U[k].T @ Z
        y = (P**2) @ Pi[:, k] / n
        G += U[k] @ np.diag(c / (1 + c * y)) @ P @ np.diag(Pi[:, k])
    return G / n


def grad_loop_kept_half(Z, Pi, U, eps):
    d, n = Z.shape
    c = d / eps**2
    G = np.zeros_like(Z)
    for k in range(U.shape[0]):
        P = U[k].T @ Z
        y = (P**2) @ Pi[:, k] / Pi[:, k].sum()
        G += U[k] @ np.diag(c / (1 + c * y)) @ P @ np.diag(Pi[:, k])
    return G / (2 * n)


def numgrad_no_restore(f, Z, h=1e-5):
    g = np.zeros_like(Z)
    for idx in np.ndindex(Z.shape):
        Z[idx] += h
        fp = f(Z)
        Z[idx] -= 2 * h
        fm = f(Z)
        g[idx] = (fp - fm) / (2 * h)
    return g


def numgrad_forward(f, Z, h=1e-5):
    g = np.zeros_like(Z)
    f0 = f(Z)
    for idx in np.ndindex(Z.shape):
        Zp = Z.copy()
        Zp[idx] += h
        g[idx] = (f(Zp) - f0) / h
    return g


# ============================================================================ exercise 04


def grad_tokens_as_rows(Z, Pi, U, eps):
    d, n = Z.shape
    c = d / eps**2
    UtZ = np.einsum("kdp,dn->kpn", U, Z)
    y = np.einsum("kpn,nk->kp", UtZ**2, Pi) / Pi.sum(axis=0)[:, None]
    return np.einsum("kdp,kp,kpn,nk->nd", U, c / (1 + c * y), UtZ, Pi) / n


def memb_groups_by_tokens(Z, U, eta):
    s = np.sum(np.einsum("kdp,dn->kpn", U, Z) ** 2, axis=1) / (2 * eta)  # (K, n)
    return scipy.special.softmax(s, axis=0)


def step_forgot_gain(Z, Pi, U, eps, tau):
    d, n = Z.shape
    c = d / eps**2
    UtZ = np.einsum("kdp,dn->kpn", U, Z)
    update = np.einsum("kdp,kpn,nk->dn", U, c * UtZ, Pi) / n
    return Z - tau * update


def memb_norm_not_squared(Z, U, eta):
    s = np.linalg.norm(np.einsum("kdp,dn->nkp", U, Z), axis=2) / (2 * eta)
    s = s - s.max(axis=1, keepdims=True)
    return np.exp(s) / np.exp(s).sum(axis=1, keepdims=True)


def memb_distance_sign(Z, U, eta):
    s = -np.sum(np.einsum("kdp,dn->nkp", U, Z) ** 2, axis=2) / (2 * eta)
    return scipy.special.softmax(s, axis=1)


# ============================================================================ exercise 05


def _heads(x, params):
    B, n, D = x.shape
    H = params["temp"].shape[0]
    w = (x @ params["qkv.weight"] + params["qkv.bias"]).reshape(B, n, H, D // H)
    return w.transpose(0, 2, 1, 3)


def _finish(v, params):
    B, H, n, p = v.shape
    return (
        v.transpose(0, 2, 1, 3).reshape(B, n, H * p) @ params["proj.weight"] + params["proj.bias"]
    )


def fwd_norm_over_features(x, params):
    w = _heads(x, params)
    w_hat = w / np.maximum(np.linalg.norm(w, axis=3, keepdims=True), 1e-12)
    pi = scipy.special.softmax(params["temp"] * (w_hat**2).sum(axis=3), axis=1)
    y = np.einsum("bhn,bhnp->bhp", pi / (pi.sum(axis=2, keepdims=True) + 1e-8), w**2)
    v = -pi[..., None] * w / (1 + y[:, :, None, :])
    return _finish(v, params), {"w": w, "pi": pi, "y": y, "v": v}


def fwd_stats_of_w_hat(x, params):
    w = _heads(x, params)
    w_hat = w / np.maximum(np.linalg.norm(w, axis=2, keepdims=True), 1e-12)
    pi = scipy.special.softmax(params["temp"] * (w_hat**2).sum(axis=3), axis=1)
    y = np.einsum("bhn,bhnp->bhp", pi / (pi.sum(axis=2, keepdims=True) + 1e-8), w_hat**2)
    v = -pi[..., None] * w / (1 + y[:, :, None, :])
    return _finish(v, params), {"w": w, "pi": pi, "y": y, "v": v}


def fwd_v_tokens_first(x, params):
    w = _heads(x, params)
    w_hat = w / np.maximum(np.linalg.norm(w, axis=2, keepdims=True), 1e-12)
    pi = scipy.special.softmax(params["temp"] * (w_hat**2).sum(axis=3), axis=1)
    y = np.einsum("bhn,bhnp->bhp", pi / (pi.sum(axis=2, keepdims=True) + 1e-8), w**2)
    v = (-pi[..., None] * w / (1 + y[:, :, None, :])).transpose(0, 2, 1, 3)  # (B, n, H, p)
    B, n, H, p = v.shape
    out = v.reshape(B, n, H * p) @ params["proj.weight"] + params["proj.bias"]
    return out, {"w": w, "pi": pi, "y": y, "v": v}


def fwd_no_one(x, params):
    w = _heads(x, params)
    w_hat = w / np.maximum(np.linalg.norm(w, axis=2, keepdims=True), 1e-12)
    pi = scipy.special.softmax(params["temp"] * (w_hat**2).sum(axis=3), axis=1)
    y = np.einsum("bhn,bhnp->bhp", pi / (pi.sum(axis=2, keepdims=True) + 1e-8), w**2)
    v = -pi[..., None] * w / y[:, :, None, :]
    return _finish(v, params), {"w": w, "pi": pi, "y": y, "v": v}


# ============================================================================ exercise 06


def given_forward(x, params):
    """Exercise 06's given forward pass (with its cache)."""
    B, n, D = x.shape
    H = params["temp"].shape[0]
    p = D // H
    w = (x @ params["qkv.weight"] + params["qkv.bias"]).reshape(B, n, H, p).transpose(0, 2, 1, 3)
    w_sq = w**2
    norm = np.sqrt(w_sq.sum(axis=2, keepdims=True))
    denom = np.maximum(norm, 1e-12)
    a = (w_sq / denom**2).sum(axis=3)
    z = params["temp"] * a
    e = np.exp(z - z.max(axis=1, keepdims=True))
    pi = e / e.sum(axis=1, keepdims=True)
    pi_sum = pi.sum(axis=2, keepdims=True) + 1e-8
    pi_bar = pi / pi_sum
    y = np.einsum("bhn,bhnp->bhp", pi_bar, w_sq)
    g = 1 / (1 + y)
    v = -pi[..., None] * w * g[:, :, None, :]
    v_flat = v.transpose(0, 2, 1, 3).reshape(B, n, D)
    out = v_flat @ params["proj.weight"] + params["proj.bias"]
    cache = dict(x=x, params=params, w=w, w_sq=w_sq, norm=norm, denom=denom, a=a, pi=pi,
                 pi_sum=pi_sum, pi_bar=pi_bar, y=y, g=g, v_flat=v_flat)  # fmt: skip
    return out, cache


def _output_side(dout, cache):
    """The output projection's gradients and dv (B, H, n, p): a student's helper."""
    params, w = cache["params"], cache["w"]
    B, H, n, p = w.shape
    D = H * p
    grads = {
        "proj.bias": dout.sum(axis=(0, 1)),
        "proj.weight": cache["v_flat"].reshape(-1, D).T @ dout.reshape(-1, D),
    }
    dv = (dout @ params["proj.weight"].T).reshape(B, n, H, p).transpose(0, 2, 1, 3)
    return grads, dv


def _input_side(dw, cache, grads):
    x, params = cache["x"], cache["params"]
    B, H, n, p = dw.shape
    dw_flat = dw.transpose(0, 2, 1, 3).reshape(B, n, H * p)
    grads["qkv.bias"] = dw_flat.sum(axis=(0, 1))
    grads["qkv.weight"] = np.einsum("bni,bnj->ij", x, dw_flat)
    return dw_flat @ params["qkv.weight"].T, grads


def bwd_no_direct_path(dout, cache):
    """Starts dw with the path through y only: v = -pi w g's own dependence on w is lost."""
    grads, dv = _output_side(dout, cache)
    w, pi, g, pi_bar, pi_sum = cache["w"], cache["pi"], cache["g"], cache["pi_bar"], cache["pi_sum"]
    dpi = -np.sum(w * g[:, :, None, :] * dv, axis=3)
    dy = g**2 * np.sum(pi[..., None] * w * dv, axis=2)
    dw = 2 * dy[:, :, None, :] * pi_bar[..., None] * w
    dq = np.einsum("bhnp,bhp->bhn", w**2, dy)
    dpi = dpi + dq / pi_sum - np.sum(dq * pi, axis=2, keepdims=True) / pi_sum**2
    dz = pi * (dpi - np.sum(pi * dpi, axis=1, keepdims=True))
    grads["temp"] = np.einsum("bhn,bhn->h", dz, cache["a"])[:, None]
    da = dz * cache["params"]["temp"]
    m = cache["denom"]
    dw = dw + 2 * da[..., None] * w / m**2
    dm = -2 * np.sum(da[..., None] * w**2, axis=2, keepdims=True) / m**3
    dw = dw + dm * (cache["norm"] >= 1e-12) * w / m
    return _input_side(dw, cache, grads)


def bwd_no_stats_to_w(dout, cache):
    """Remembers that y depends on Pi but not that it depends on w."""
    grads, dv = _output_side(dout, cache)
    w, pi, g = cache["w"], cache["pi"], cache["g"][:, :, None, :]
    dw = -pi[..., None] * g * dv
    dpi = -(w * g * dv).sum(-1)
    dy = -(cache["g"] ** 2) * -(pi[..., None] * w * dv).sum(2)
    dpibar = (w**2 * dy[:, :, None, :]).sum(-1)
    S = cache["pi_sum"]
    dpi += dpibar / S - (dpibar * pi).sum(2, keepdims=True) / S**2
    dz = pi * (dpi - (pi * dpi).sum(1, keepdims=True))
    grads["temp"] = (dz * cache["a"]).sum((0, 2)).reshape(-1, 1)
    da = dz * cache["params"]["temp"]
    m = cache["denom"]
    dw += 2 * da[..., None] * w / m**2
    dw += (
        -2 * (da[..., None] * w**2).sum(2, keepdims=True) / m**3 * (cache["norm"] >= 1e-12) * w / m
    )
    return _input_side(dw, cache, grads)


def bwd_no_stats_to_pi(dout, cache):
    """Treats the weights Pi_bar of the statistics as constants."""
    grads, dv = _output_side(dout, cache)
    w, pi, g = cache["w"], cache["pi"], cache["g"]
    dw = -pi[..., None] * g[:, :, None, :] * dv
    dpi = -np.einsum("bhnp,bhp,bhnp->bhn", w, g, dv)
    dg = -np.einsum("bhn,bhnp,bhnp->bhp", pi, w, dv)
    dy = -(g**2) * dg
    dw += 2 * np.einsum("bhp,bhn,bhnp->bhnp", dy, cache["pi_bar"], w)
    dz = pi * (dpi - np.einsum("bhn,bhn->bn", pi, dpi)[:, None, :])
    grads["temp"] = np.einsum("bhn,bhn->h", dz, cache["a"])[:, None]
    da = dz * cache["params"]["temp"]
    m = cache["denom"]
    dw += 2 * da[..., None] * w / m**2
    dm = -2 * np.einsum("bhn,bhnp->bhp", da, w**2)[:, :, None, :] / m**3
    dw += dm * (cache["norm"] >= 1e-12) * w / m
    return _input_side(dw, cache, grads)


def bwd_softmax_diagonal(dout, cache):
    """Backpropagates through the softmax as if it were exp, element by element."""
    grads, dv = _output_side(dout, cache)
    w, pi, g = cache["w"], cache["pi"], cache["g"][:, :, None, :]
    dw = -pi[..., None] * g * dv
    dpi = -(w * g * dv).sum(-1)
    dy = (cache["g"] ** 2) * (pi[..., None] * w * dv).sum(2)
    dw += 2 * dy[:, :, None, :] * cache["pi_bar"][..., None] * w
    dpibar = (w**2 * dy[:, :, None, :]).sum(-1)
    S = cache["pi_sum"]
    dpi += dpibar / S - (dpibar * pi).sum(2, keepdims=True) / S**2
    dz = pi * dpi
    grads["temp"] = (dz * cache["a"]).sum((0, 2)).reshape(-1, 1)
    da = dz * cache["params"]["temp"]
    m = cache["denom"]
    dw += 2 * da[..., None] * w / m**2
    dw += (
        -2 * (da[..., None] * w**2).sum(2, keepdims=True) / m**3 * (cache["norm"] >= 1e-12) * w / m
    )
    return _input_side(dw, cache, grads)


def bwd_forgot_temp(dout, cache):
    """Multiplies by temp for d temp's partner but forgets it on the way back to a."""
    grads, dv = _output_side(dout, cache)
    w, pi, g = cache["w"], cache["pi"], cache["g"][:, :, None, :]
    dw = -pi[..., None] * g * dv
    dpi = -(w * g * dv).sum(-1)
    dy = (cache["g"] ** 2) * (pi[..., None] * w * dv).sum(2)
    dw += 2 * dy[:, :, None, :] * cache["pi_bar"][..., None] * w
    dpibar = (w**2 * dy[:, :, None, :]).sum(-1)
    S = cache["pi_sum"]
    dpi += dpibar / S - (dpibar * pi).sum(2, keepdims=True) / S**2
    dz = pi * (dpi - (pi * dpi).sum(1, keepdims=True))
    grads["temp"] = (dz * cache["a"]).sum((0, 2)).reshape(-1, 1)
    m = cache["denom"]
    dw += 2 * dz[..., None] * w / m**2
    dw += (
        -2 * (dz[..., None] * w**2).sum(2, keepdims=True) / m**3 * (cache["norm"] >= 1e-12) * w / m
    )
    return _input_side(dw, cache, grads)


def bwd_norm_sign(dout, cache):
    """d(1/m^2)/dm written as +2/m^3."""
    grads, dv = _output_side(dout, cache)
    w, pi, g = cache["w"], cache["pi"], cache["g"][:, :, None, :]
    dw = -pi[..., None] * g * dv
    dpi = -(w * g * dv).sum(-1)
    dy = (cache["g"] ** 2) * (pi[..., None] * w * dv).sum(2)
    dw += 2 * dy[:, :, None, :] * cache["pi_bar"][..., None] * w
    dpibar = (w**2 * dy[:, :, None, :]).sum(-1)
    S = cache["pi_sum"]
    dpi += dpibar / S - (dpibar * pi).sum(2, keepdims=True) / S**2
    dz = pi * (dpi - (pi * dpi).sum(1, keepdims=True))
    grads["temp"] = (dz * cache["a"]).sum((0, 2)).reshape(-1, 1)
    da = dz * cache["params"]["temp"]
    m = cache["denom"]
    dw += 2 * da[..., None] * w / m**2
    dw += 2 * (da[..., None] * w**2).sum(2, keepdims=True) / m**3 * (cache["norm"] >= 1e-12) * w / m
    return _input_side(dw, cache, grads)


def bwd_dx_through_W(dout, cache):
    """Right everywhere but the last line: dx = dw W instead of dw Wᵀ."""
    grads, dv = _output_side(dout, cache)
    w, pi, g = cache["w"], cache["pi"], cache["g"][:, :, None, :]
    dw = -pi[..., None] * g * dv
    dpi = -(w * g * dv).sum(-1)
    dy = (cache["g"] ** 2) * (pi[..., None] * w * dv).sum(2)
    dw += 2 * dy[:, :, None, :] * cache["pi_bar"][..., None] * w
    dpibar = (w**2 * dy[:, :, None, :]).sum(-1)
    S = cache["pi_sum"]
    dpi += dpibar / S - (dpibar * pi).sum(2, keepdims=True) / S**2
    dz = pi * (dpi - (pi * dpi).sum(1, keepdims=True))
    grads["temp"] = (dz * cache["a"]).sum((0, 2)).reshape(-1, 1)
    da = dz * cache["params"]["temp"]
    m = cache["denom"]
    dw += 2 * da[..., None] * w / m**2
    dw += (
        -2 * (da[..., None] * w**2).sum(2, keepdims=True) / m**3 * (cache["norm"] >= 1e-12) * w / m
    )
    dx, grads = _input_side(dw, cache, grads)
    B, H, n, p = w.shape
    return dw.transpose(0, 2, 1, 3).reshape(B, n, H * p) @ cache["params"]["qkv.weight"], grads


# ============================================================================ exercise 07


def _split(x, params):
    B, T, D = x.shape
    H = params["temp"].shape[0]
    w = x @ params["qkv.weight"] + params["qkv.bias"]
    return w.reshape(B, T, H, D // H).transpose(0, 2, 1, 3)


def _merge(pi, w, y, params):
    v = -pi[..., None] * w / (1 + y)
    B, H, T, p = v.shape
    out = v.transpose(0, 2, 1, 3).reshape(B, T, H * p) @ params["proj.weight"] + params["proj.bias"]
    return out, {"w": w, "pi": pi, "y": y, "v": v}


def causal_rolled_stats(x, params):
    """Shifts the running statistics with np.roll, meaning to exclude nothing."""
    w = _split(x, params)
    T, p = w.shape[2], w.shape[3]
    r = np.maximum(np.cumsum(w**2, axis=2), 1e-12)
    pi = scipy.special.softmax(
        params["temp"] * ((w**2 / r).sum(-1) + p * params["denom_bias"][:, :T, 0]), axis=1
    )
    num = np.roll(np.cumsum(pi[..., None] * w**2, axis=2), 1, axis=2)
    den = np.roll(np.cumsum(pi, axis=2), 1, axis=2)
    return _merge(pi, w, num / (den[..., None] + 1e-8), params)


def causal_running_mean_r(x, params):
    """Uses the running mean of w² as the normalizer."""
    w = _split(x, params)
    T, p = w.shape[2], w.shape[3]
    t = np.arange(1, T + 1).reshape(1, 1, T, 1)
    r = np.maximum(np.cumsum(w * w, axis=2) / t, 1e-12)
    z = params["temp"] * (np.sum(w * w / r, axis=3) + p * params["denom_bias"][:, :T, 0])
    pi = np.exp(z - z.max(1, keepdims=True))
    pi /= pi.sum(1, keepdims=True)
    y = np.cumsum(pi[..., None] * w * w, axis=2) / (np.cumsum(pi, axis=2)[..., None] + 1e-8)
    return _merge(pi, w, y, params)


def causal_beta_late(x, params):
    """Counts positions from 1 when slicing the bias."""
    w = _split(x, params)
    T, p = w.shape[2], w.shape[3]
    r = np.maximum(np.cumsum(w**2, axis=2), 1e-12)
    beta = params["denom_bias"][:, 1 : T + 1, 0]
    pi = scipy.special.softmax(params["temp"] * ((w**2 / r).sum(-1) + p * beta), axis=1)
    y = np.cumsum(pi[..., None] * w**2, axis=2) / (np.cumsum(pi, axis=2) + 1e-8)[..., None]
    return _merge(pi, w, y, params)


def causal_plain_denominator(x, params):
    """A running numerator over a per-token denominator."""
    w = _split(x, params)
    T, p = w.shape[2], w.shape[3]
    r = np.maximum(np.cumsum(w**2, axis=2), 1e-12)
    pi = scipy.special.softmax(
        params["temp"] * ((w**2 / r).sum(-1) + p * params["denom_bias"][:, :T, 0]), axis=1
    )
    y = np.cumsum(pi[..., None] * w**2, axis=2) / (pi[..., None] + 1e-8)
    return _merge(pi, w, y, params)


def causal_suffix_r(x, params):
    """Reverses the token axis before the cumulative sum of the normalizer, and back."""
    w = _split(x, params)
    T, p = w.shape[2], w.shape[3]
    r = np.maximum(np.flip(np.cumsum(np.flip(w**2, 2), 2), 2), 1e-12)
    pi = scipy.special.softmax(
        params["temp"] * ((w**2 / r).sum(-1) + p * params["denom_bias"][:, :T, 0]), axis=1
    )
    y = np.cumsum(pi[..., None] * w**2, axis=2) / (np.cumsum(pi, axis=2) + 1e-8)[..., None]
    return _merge(pi, w, y, params)


# ============================================================================ exercise 08


def fit_mixed_logs(ns, times):
    return np.polyfit(np.log(ns), np.log10(times), 1)[0]


def fit_whole_polyfit(ns, times):
    return np.polyfit(np.log(ns), np.log(times), 1)


def fit_intercept(ns, times):
    return float(np.polyfit(np.log(ns), np.log(times), 1)[-1])


def fit_through_origin(ns, times):
    x, y = np.log(ns), np.log(times)
    return float(x @ y / (x @ x))


def fit_log10_n_only(ns, times):
    return np.polyfit(np.log10(ns), np.log(times), deg=1)[0]


def time_once(f, repeats=5):
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def time_clock_outside(f, repeats=5):
    start = time.perf_counter()
    best = float("inf")
    for _ in range(repeats):
        f()
        best = min(best, time.perf_counter() - start)
    return best


def time_with_warm_up_inside(f, repeats=5):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        f()  # "warm up" first, inside the timed region
        f()
        best = min(best, time.perf_counter() - start)
    return best


def time_cpu(f, repeats=5):
    ts = []
    for _ in range(repeats):
        t0 = time.process_time()
        f()
        ts.append(time.process_time() - t0)
    return min(ts) + 1e-9


def time_ns(f, repeats=5):
    best = None
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        f()
        t = time.perf_counter_ns() - t0
        best = t if best is None else min(best, t)
    return best


# ============================================================================ the corpus

# (checker, wrong answer, the slip it must be named with: a prefix, or a tuple of prefixes)
WRONG = [
    ("check_coding_rate", cr_no_identity, "the identity I is missing"),
    ("check_coding_rate", cr_parentheses, "n squared in the scale"),
    ("check_coding_rate", cr_eps_multiplies, "ε² multiplies instead of divides"),
    ("check_coding_rate", cr_log10, "the logarithm in base 10"),
    ("check_coding_rate", cr_shape_swapped, "d and n swapped"),
    ("check_coding_rate", cr_log_trace, None),  # not a known slip: must fail all the same
    ("check_coding_rate", cr_gram_with_identity_d, None),  # a shape error, reported as such
    ("check_compression_rate", comp_nk_as_count, None),  # two slips at once
    ("check_compression_rate", comp_overwrites, "only the last group's term"),
    ("check_compression_rate", comp_precedence, "n_k/2 · n instead of n_k/(2n)"),
    ("check_compression_rate", comp_no_empty_check, "an empty group gives nan"),
    ("check_compression_rate", comp_diag_twice, "diag(π_k) applied twice"),
    ("check_token_statistics", ts_mean_over_tokens, "n instead of n_k"),
    ("check_token_statistics", ts_not_squared, "the projections are not squared"),
    ("check_token_statistics", ts_groups_last, "the output transposed"),
    ("check_variational_compression_grad", grad_tokens_as_rows, "the output transposed"),
    ("check_estimate_membership", memb_groups_by_tokens, "the output transposed"),
    ("check_tssa_forward", fwd_v_tokens_first, "the output transposed"),  # v in another layout
    ("check_fit_exponent", fit_whole_polyfit, "both coefficients returned"),
    ("check_eigenbases", eig_rows, "a transposed U"),
    ("check_eigenbases", eig_all_tokens, "the eigenvectors of Z Zᵀ"),
    ("check_variational_compression_rate", vr_no_scale, "the scale d/ε² is missing"),
    ("check_variational_compression_rate", vr_scale_from_R, "the scale d/(n ε²) copied from R"),
    ("check_variational_compression_grad", grad_forgot_gain, "the gain is missing"),
    ("check_variational_compression_grad", grad_c_only_on_top, "c missing next to y"),
    ("check_variational_compression_grad", grad_gain_squared, "the gain squared"),
    ("check_variational_compression_grad", grad_y_over_n, "1/n instead of 1/n_k in y_k"),
    ("check_variational_compression_grad", grad_loop_kept_half, "an extra ½"),
    ("check_numerical_gradient", numgrad_no_restore, "changed its input in place"),
    ("check_numerical_gradient", numgrad_forward, "a forward difference"),
    ("check_tssa_step", step_forgot_gain, "the gain is missing"),
    ("check_estimate_membership", memb_norm_not_squared, "the norm is not squared"),
    ("check_estimate_membership", memb_distance_sign, "a flipped sign"),
    ("check_tssa_forward", fwd_norm_over_features, "the norm over the wrong axis"),
    ("check_tssa_forward", fwd_stats_of_w_hat, "statistics of ŵ instead of w"),
    ("check_tssa_forward", fwd_no_one, "the 1 in 1 + y is missing"),
    ("check_tssa_backward", bwd_no_direct_path, "the direct path of w"),
    ("check_tssa_backward", bwd_no_stats_to_w, "the path from y to w dropped"),
    ("check_tssa_backward", bwd_no_stats_to_pi, "the path from y to Π dropped"),
    ("check_tssa_backward", bwd_softmax_diagonal, "the softmax backward without its second"),
    ("check_tssa_backward", bwd_forgot_temp, "temp missing on the path"),
    ("check_tssa_backward", bwd_norm_sign, "a wrong sign on the path through the column norm"),
    ("check_tssa_backward", bwd_dx_through_W, "W_qkv instead of W_qkvᵀ on the way back"),
    ("check_causal_tssa_forward", causal_rolled_stats, "the statistics' window shifted"),
    ("check_causal_tssa_forward", causal_running_mean_r, "a running mean instead of a running"),
    ("check_causal_tssa_forward", causal_beta_late, "β taken one position late"),
    ("check_causal_tssa_forward", causal_plain_denominator, "the statistics' denominator"),
    ("check_causal_tssa_forward", causal_suffix_r, "a suffix sum in the normalizer r"),
    ("check_fit_exponent", fit_mixed_logs, "log10 of t but the natural log of n"),
    ("check_fit_exponent", fit_intercept, "the intercept instead of the slope"),
    ("check_fit_exponent", fit_through_origin, "a line through the origin"),
    ("check_fit_exponent", fit_log10_n_only, "the natural log of t but log10 of n"),
    ("check_time_call", time_once, "one call instead of the best of repeats"),
    ("check_time_call", time_clock_outside, "the clock started once, before the loop"),
    ("check_time_call", time_cpu, "CPU time"),
    ("check_time_call", time_with_warm_up_inside, "two calls in one reading"),
    ("check_time_call", time_ns, "nanoseconds instead of seconds"),
]


def _check(checker, fn):
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), np.errstate(all="ignore"):
        if checker == "check_tssa_backward":
            result = ec.check_tssa_backward(fn, given_forward)
        else:
            result = getattr(ec, checker)(fn)
    return result, buffer.getvalue()


def _named(result, slip) -> bool:
    wanted = (slip,) if isinstance(slip, str) else slip
    return any(s.startswith(w) for s in result.slips for w in wanted)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("checker, fn, slip", [pytest.param(*w, id=w[1].__name__) for w in WRONG])
def test_a_wrong_answer_never_passes(checker, fn, slip):
    result, text = _check(checker, fn)
    assert not result and result.status in ("wrong", "error"), text


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_four_in_five_wrong_answers_are_named_with_the_right_slip():
    assert len(WRONG) >= 30
    assert {c for c, _, _ in WRONG} >= {name for name in ec.__all__ if name.startswith("check_")}
    named, missed = 0, []
    for checker, fn, slip in WRONG:
        result, text = _check(checker, fn)
        if slip is not None and _named(result, slip):
            named += 1
        else:
            missed.append((fn.__name__, slip, result.slips))
    rate = named / len(WRONG)
    print(f"named {named} of {len(WRONG)} ({rate:.0%}); not named: {missed}")
    assert rate >= 0.8, missed
    # every planted answer whose slip is known must be named (a regression otherwise)
    assert all(slip is None for _, slip, _ in missed), missed


# ============================================================================ correct answers


def cr_sylvester(Z, eps):
    """det(I_d + c Z Zᵀ) = det(I_n + c Zᵀ Z)."""
    d, n = Z.shape
    return 0.5 * np.linalg.slogdet(np.eye(n) + d / (n * eps**2) * Z.T @ Z)[1]


def cr_eigenvalues(Z, eps):
    d, n = Z.shape
    return 0.5 * np.sum(np.log1p(d / (n * eps**2) * np.linalg.eigvalsh(Z @ Z.T)))


def cr_det(Z, eps):
    d, n = Z.shape
    return (
        np.log(np.linalg.det(np.eye(d) + (d / (n * eps * eps)) * np.einsum("in,jn->ij", Z, Z))) / 2
    )


def comp_cholesky_sqrt(Z, Pi, eps):
    d, n = Z.shape
    total = 0.0
    for k in range(Pi.shape[1]):
        nk = Pi[:, k].sum()
        if nk == 0:
            continue
        Zs = Z * np.sqrt(Pi[:, k])
        L = np.linalg.cholesky(np.eye(d) + d / (nk * eps**2) * Zs @ Zs.T)
        total += nk / n * np.sum(np.log(np.diag(L)))
    return total


def ts_loops(Z, Pi, U):
    K, d, p = U.shape
    y = np.zeros((K, p))
    for k in range(K):
        for i in range(p):
            y[k, i] = sum(Pi[j, k] * (U[k, :, i] @ Z[:, j]) ** 2 for j in range(Z.shape[1]))
        y[k] /= Pi[:, k].sum()
    return y


def grad_matrices(Z, Pi, U, eps):
    d, n = Z.shape
    c = d / eps**2
    G = np.zeros_like(Z)
    for k in range(U.shape[0]):
        P = U[k].T @ Z
        y = (P**2) @ Pi[:, k] / Pi[:, k].sum()
        G += U[k] @ np.diag(c / (1 + c * y)) @ P @ np.diag(Pi[:, k])
    return G / n


def grad_matmul(Z, Pi, U, eps):
    d, n = Z.shape
    c = d / eps**2
    UtZ = np.transpose(U, (0, 2, 1)) @ Z  # (K, p, n)
    y = (UtZ**2 @ Pi).diagonal(axis1=0, axis2=2).T / Pi.sum(axis=0)[:, None]
    W = (c / (1 + c * y))[:, :, None] * UtZ * Pi.T[:, None, :]
    return (U @ W).sum(axis=0) / n


def numgrad_restores(f, Z, h=1e-5):
    Z = np.array(Z, dtype=float)  # a private copy, changed and restored entry by entry
    g = np.empty_like(Z)
    for idx in np.ndindex(*Z.shape):
        old = Z[idx]
        Z[idx] = old + h
        up = f(Z)
        Z[idx] = old - h
        down = f(Z)
        Z[idx] = old
        g[idx] = (up - down) / (2 * h)
    return g


def memb_logsumexp(Z, U, eta):
    s = np.einsum("kdp,dn->nk", U**0, Z**0) * 0 + np.sum(np.einsum("kdp,dn->nkp", U, Z) ** 2, 2)
    s = s / (2 * eta)
    return np.exp(s - scipy.special.logsumexp(s, axis=1, keepdims=True))


def fwd_einsum(x, params):
    B, n, D = x.shape
    H = params["temp"].shape[0]
    p = D // H
    w = np.einsum("bnd,de->bne", x, params["qkv.weight"]) + params["qkv.bias"]
    w = np.moveaxis(w.reshape(B, n, H, p), 2, 1)
    w_hat = w / np.maximum(np.linalg.norm(w, axis=2, keepdims=True), 1e-12)
    pi = scipy.special.softmax(params["temp"] * np.einsum("bhnp,bhnp->bhn", w_hat, w_hat), axis=1)
    y = np.einsum("bhn,bhnp->bhp", pi, w**2) / (pi.sum(axis=2)[..., None] + 1e-8)
    v = -pi[..., None] * w / (1 + y[:, :, None, :])
    out = np.moveaxis(v, 1, 2).reshape(B, n, D) @ params["proj.weight"] + params["proj.bias"]
    return out, {"w": w, "pi": pi, "y": y, "v": v}


def bwd_student(dout, cache):
    """The backward with einsum and in-place accumulation (a correct alternative)."""
    grads, dv = _output_side(dout, cache)
    w, pi, g = cache["w"], cache["pi"], cache["g"][:, :, None, :]
    dw = -pi[..., None] * g * dv
    dpi = -(w * g * dv).sum(-1)
    dy = (cache["g"] ** 2) * (pi[..., None] * w * dv).sum(2)
    dw += 2 * dy[:, :, None, :] * cache["pi_bar"][..., None] * w
    dpibar = (w**2 * dy[:, :, None, :]).sum(-1)
    S = cache["pi_sum"]
    dpi += dpibar / S - (dpibar * pi).sum(2, keepdims=True) / S**2
    dz = pi * (dpi - (pi * dpi).sum(1, keepdims=True))
    grads["temp"] = (dz * cache["a"]).sum((0, 2)).reshape(-1, 1)
    da = dz * cache["params"]["temp"]
    m = cache["denom"]
    dw += 2 * da[..., None] * w / m**2
    dw += (
        -2 * (da[..., None] * w**2).sum(2, keepdims=True) / m**3 * (cache["norm"] >= 1e-12) * w / m
    )
    return _input_side(dw, cache, grads)


def causal_loop(x, params):
    B, T, D = x.shape
    H = params["temp"].shape[0]
    p = D // H
    w = (x @ params["qkv.weight"] + params["qkv.bias"]).reshape(B, T, H, p).transpose(0, 2, 1, 3)
    pi, y = np.zeros((B, H, T)), np.zeros((B, H, T, p))
    run, num, den = np.zeros((B, H, p)), np.zeros((B, H, p)), np.zeros((B, H))
    for t in range(T):
        run = run + w[:, :, t] ** 2
        score = (w[:, :, t] ** 2 / np.maximum(run, 1e-12)).sum(-1) + p * params["denom_bias"][
            :, t, 0
        ]
        pi[:, :, t] = scipy.special.softmax(params["temp"][:, 0] * score, axis=1)
        num = num + pi[:, :, t, None] * w[:, :, t] ** 2
        den = den + pi[:, :, t]
        y[:, :, t] = num / (den[..., None] + 1e-8)
    v = -pi[..., None] * w / (1 + y)
    out = v.transpose(0, 2, 1, 3).reshape(B, T, D) @ params["proj.weight"] + params["proj.bias"]
    return out, {"w": w, "pi": pi, "y": y, "v": v}


def fit_lstsq(ns, times):
    A = np.stack([np.log(ns), np.ones(len(ns))], axis=1)
    return float(np.linalg.lstsq(A, np.log(times), rcond=None)[0][0])


def fit_log10_both(ns, times):
    x, y = np.log10(ns), np.log10(times)
    return float(np.cov(x, y)[0, 1] / np.var(x, ddof=1))


def time_sorted(f, repeats=5):
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[0]


RIGHT = [
    ("check_coding_rate", cr_sylvester),
    ("check_coding_rate", cr_eigenvalues),
    ("check_coding_rate", cr_det),
    ("check_compression_rate", comp_cholesky_sqrt),
    ("check_token_statistics", ts_loops),
    ("check_variational_compression_grad", grad_matrices),
    ("check_variational_compression_grad", grad_matmul),
    ("check_numerical_gradient", numgrad_restores),
    ("check_estimate_membership", memb_logsumexp),
    ("check_tssa_forward", fwd_einsum),
    ("check_tssa_backward", bwd_student),
    ("check_causal_tssa_forward", causal_loop),
    ("check_fit_exponent", fit_lstsq),
    ("check_fit_exponent", fit_log10_both),
    ("check_time_call", time_sorted),
]


@pytest.mark.parametrize("checker, fn", [pytest.param(*r, id=r[1].__name__) for r in RIGHT])
def test_a_correct_alternative_passes(checker, fn):
    result, text = _check(checker, fn)
    assert result, text
    assert "✗" not in text, text


# ============================================================================ delegation


def cr_delegates(Z, eps):
    return wb.coding_rate(Z, eps)


def cr_through_one_group(Z, eps):
    return mcr2.compression_rate(Z, np.ones((Z.shape[1], 1)), eps)


def grad_through_the_step(Z, Pi, U, eps):
    return Z - wb.tssa_step(Z, Pi, U, eps, 1.0)


def memb_delegates(Z, U, eta):
    return wb.estimate_membership(Z, U, eta)


def fwd_through_the_module(x, params):
    layer = nn.TSSA(x.shape[2], params["temp"].shape[0], dtype=np.float64)
    layer.params = params
    out = layer.forward(x)
    return out, {k: layer._cache[k] for k in ("w", "pi", "y", "v") if k in layer._cache}


def bwd_delegates(dout, cache):
    from whitebox.nn import tssa_backward as library_backward

    return library_backward(dout, nn.tssa_forward(cache["x"], cache["params"])[1])


def causal_delegates(x, params):
    return nn.causal_tssa_forward(x, params)


def fit_delegates(ns, times):
    from whitebox import bench

    return bench.fit_exponent(ns, times)


def ref_delegates(x, params):
    r = ec.tssa_reference(x, params)
    return r["out"], {k: r[k] for k in ("w", "pi", "y", "v")}


DELEGATING = [
    ("check_coding_rate", cr_delegates),
    ("check_coding_rate", cr_through_one_group),
    ("check_variational_compression_grad", grad_through_the_step),
    ("check_estimate_membership", memb_delegates),
    ("check_tssa_forward", fwd_through_the_module),
    ("check_tssa_forward", ref_delegates),
    ("check_tssa_backward", bwd_delegates),
    ("check_causal_tssa_forward", causal_delegates),
    ("check_fit_exponent", fit_delegates),
]


@pytest.mark.parametrize("checker, fn", [pytest.param(*d, id=d[1].__name__) for d in DELEGATING])
def test_an_answer_that_calls_the_library_is_refused_and_named(checker, fn):
    before = (wb.coding_rate, mcr2.compression_rate, nn.tssa_forward, nn.tssa_backward,
              ec.tssa_reference, wb.tssa_step)  # fmt: skip
    result, text = _check(checker, fn)
    assert not result and result.slips == [DELEGATES], text
    assert "this exercise asks you to write it yourself" in text
    after = (wb.coding_rate, mcr2.compression_rate, nn.tssa_forward, nn.tssa_backward,
             ec.tssa_reference, wb.tssa_step)  # fmt: skip
    assert all(a is b for a, b in zip(before, after))  # the library is restored


def test_a_name_imported_into_the_learners_namespace_is_withheld_and_restored():
    namespace = {"np": np}
    exec(
        "from whitebox.mcr2 import variational_compression_grad as answer\n"
        "def grad(Z, Pi, U, eps):\n"
        "    return answer(Z, Pi, U, eps)\n",
        namespace,
    )
    original = namespace["answer"]
    result, text = _check("check_variational_compression_grad", namespace["grad"])
    assert result.slips == [DELEGATES], text
    assert namespace["answer"] is original is mcr2.variational_compression_grad


def test_the_library_is_restored_when_the_answer_raises():
    def crashes(Z, eps):
        raise ZeroDivisionError("a bug of the learner")

    result, text = _check("check_coding_rate", crashes)
    assert result.status == "error" and "ZeroDivisionError" in text
    assert wb.coding_rate is mcr2.coding_rate and wb.coding_rate.__name__ == "coding_rate"
    d = 3
    Z = np.random.default_rng(0).standard_normal((d, 4))
    assert np.isfinite(wb.coding_rate(Z, 0.5))


def test_an_allowed_library_function_still_works_inside_a_checker():
    """Exercise 04 allows whitebox.token_statistics in the step: it is not withheld there."""

    def step_with_library_statistics(Z, Pi, U, eps, tau):
        d, n = Z.shape
        c = d / eps**2
        D = c / (1 + c * wb.token_statistics(Z, Pi, U))
        return Z - tau / n * np.einsum(
            "kdp,kp,kpn,nk->dn", U, D, np.einsum("kdp,dn->kpn", U, Z), Pi
        )

    result, text = _check("check_tssa_step", step_with_library_statistics)
    assert result, text


def test_the_norm_error_does_not_saturate_and_the_first_wrong_intermediate_is_named():
    result, text = _check("check_variational_compression_grad", grad_forgot_gain)
    assert result.quantity == "D/n (read off the probe)", text  # the intermediate comes first
    assert "‖got − expected‖/‖expected‖" in text
    assert result.norm_error > 1 and result.rel_error <= 1  # the entry-wise error saturates
    assert ec.core.norm_error(np.array([1.0, 2.0]), np.array([1.1, 2.2])) == pytest.approx(0.1)


def test_a_closure_or_a_default_argument_holding_the_answer_is_withheld_too():
    def make(answer):
        def rate(Z, eps):
            return answer(Z, eps)

        return rate

    def rate_by_default(Z, eps, answer=mcr2.coding_rate):
        return answer(Z, eps)

    for fn in (make(mcr2.coding_rate), rate_by_default):
        result, text = _check("check_coding_rate", fn)
        assert result.slips == [DELEGATES], text
    assert make(mcr2.coding_rate).__closure__[0].cell_contents is mcr2.coding_rate
    assert rate_by_default.__defaults__ == (mcr2.coding_rate,)


def test_a_probe_passed_says_where_the_mistake_is_not():
    """Ex. 06's first case has temp = 0, where only the direct path and the path through y
    reach w: a mistake on the column norm's path is right there, and the feedback says so."""
    result, text = _check("check_tssa_backward", bwd_norm_sign)
    assert "Right on case 'probe: the random case with temp = 0'" in text, text
    assert result.case != "probe: the random case with temp = 0"
    result, text = _check("check_tssa_backward", bwd_no_stats_to_w)
    assert result.case == "probe: the random case with temp = 0" and "Right on case" not in text


@pytest.mark.parametrize("name", sorted(ec.SPECS))
def test_every_withheld_name_resolves_to_the_library_object(name):
    """A renamed or moved library function must not silently escape the withholding: every
    public name a spec withholds exists and is the object withheld."""
    import importlib

    spec = ec.SPECS[name](given_forward) if name == "check_tssa_backward" else ec.SPECS[name]()
    if name == "check_eigenbases":  # the library has no eigenbases: nothing to withhold
        assert spec.withheld is None
        return
    pairs = spec.withheld()
    assert pairs
    for public, obj in pairs:
        assert obj is not None, public
        if not public.startswith("whitebox"):
            continue
        module, _, attr = public.rpartition(".")
        assert getattr(importlib.import_module(module), attr) is obj, public
