"""Regression checks moved out of chapters 5, 6, 7 and 12.

The chapters keep the checks that teach; the ones that only pin the library to a formula or to
another part of the library ("library == formula: True") live here, where they can fail a build.
"""

from __future__ import annotations

import numpy as np
import pytest

import whitebox as wb
from whitebox.demo import run_demo

# ---------------------------------------------------------------- chapter 6: unrolled subspaces


def _unrolled_rc_var(steps, seed, eps=0.5, eta=0.05, d=16, p=2, K=4):
    """The loop of chapter 6, section 2: re-estimate Pi, then one tssa_step with the true bases."""
    mix = wb.data.subspace_mixture(n_per_group=64, d=d, p=p, K=K, noise=0.2, seed=seed)
    Z, tau = mix.Z, mix.Z.shape[1] * eps**2 / d
    out = []
    for step in range(steps + 1):
        Pi = wb.estimate_membership(Z, mix.U, eta)
        out.append(float(wb.variational_compression_rate(Z, Pi, mix.U, eps)))
        if step < steps:
            Z = wb.tssa_step(Z, Pi, mix.U, eps, tau)
    return np.array(out)


@pytest.mark.parametrize("seed", [0, 1])
def test_ch6_unrolled_loop_is_the_demo(seed):
    demo = run_demo(steps=10, seed=seed, verbose=False)
    expected = np.array([h["Rc_var"] for h in demo["history"]])
    np.testing.assert_allclose(_unrolled_rc_var(10, seed), expected, rtol=1e-12)


@pytest.mark.parametrize("seed", [3, 4, 5])
@pytest.mark.parametrize("p", [1, 2, 3])
def test_ch6_one_hard_step_follows_the_recursion(seed, p):
    # one group, hard membership, tau = n/c: every coordinate is scaled by c y / (1 + c y)
    eps, d = 0.5, 16
    one = wb.data.subspace_mixture(n_per_group=64, d=d, p=p, K=1, noise=0.2, seed=seed)
    c = d / eps**2
    y0 = wb.token_statistics(one.Z, one.Pi, one.U)
    Z1 = wb.tssa_step(one.Z, one.Pi, one.U, eps, tau=one.Z.shape[1] / c)
    y1 = wb.token_statistics(Z1, one.Pi, one.U)
    np.testing.assert_allclose(y1, y0 * (c * y0 / (1 + c * y0)) ** 2, rtol=1e-10)
    # and the step never flips a coordinate along the basis (the no-overshoot step)
    w0 = np.einsum("dp,dn->pn", one.U[0], one.Z)
    w1 = np.einsum("dp,dn->pn", one.U[0], Z1)
    assert np.all(w0 * w1 >= 0) and np.all(np.abs(w1) <= np.abs(w0) + 1e-12)
