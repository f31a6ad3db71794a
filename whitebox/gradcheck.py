"""Finite-difference oracles for manual backprop (float64 only; Chainer's ``check_backward``).

Two checks: element-wise central differences on small tensors, and the derivative along a
random direction on larger ones. Relative errors use a floor so that two tiny numbers do not
produce a huge ratio: |a - b| / max(floor, |a| + |b|).
"""

from __future__ import annotations

import numpy as np

from .backend import get_array_module, to_numpy


def rel_error(a, b, floor: float = 1e-8) -> float:
    """Largest entry-wise |a - b| / max(floor, |a| + |b|)."""
    a = to_numpy(a).astype(np.float64)
    b = to_numpy(b).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error: shapes differ, {a.shape} vs {b.shape}")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b) / np.maximum(floor, np.abs(a) + np.abs(b))))


def numerical_grad(f, x, h: float = 1e-6):
    """Central-difference gradient of the scalar function ``f`` at ``x`` (perturbs ``x`` in place
    and restores it). Cost: two calls of ``f`` per entry, so keep ``x`` small."""
    xp = get_array_module(x)
    g = xp.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    if not np.shares_memory(to_numpy(flat), to_numpy(x)) and xp is np:
        raise ValueError("numerical_grad needs a contiguous array x")
    for i in range(flat.size):
        old = flat[i].copy()
        flat[i] = old + h
        fp = float(f())
        flat[i] = old - h
        fm = float(f())
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * h)
    return g


def directional_derivative(f, x, direction, h: float = 1e-6) -> float:
    """(f(x + h v) - f(x - h v)) / 2h for the direction v; restores ``x``."""
    x0 = x.copy()
    x += h * direction
    fp = float(f())
    x[...] = x0 - h * direction
    fm = float(f())
    x[...] = x0
    return (fp - fm) / (2 * h)


def check_directional(f, x, grad, seed: int = 0, h: float = 1e-6) -> float:
    """Relative error between <grad, v> and the finite difference of ``f`` along a random unit v.

    ``f`` is a zero-argument function that reads ``x`` (which is perturbed in place)."""
    xp = get_array_module(x)
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(x.shape)
    v /= np.linalg.norm(v) or 1.0
    v = xp.asarray(v, dtype=x.dtype)
    analytic = float(xp.sum(grad * v))
    numeric = directional_derivative(f, x, v, h)
    return abs(analytic - numeric) / max(1e-8, abs(analytic) + abs(numeric))
