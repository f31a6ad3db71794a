"""Shared fixtures: every array test body runs on NumPy, and on CuPy where a GPU is present."""

from __future__ import annotations

import numpy as np
import pytest

from whitebox.backend import gpu_available


def _xp_params():
    return [
        pytest.param("numpy", id="numpy"),
        pytest.param(
            "cupy",
            id="cupy",
            marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a GPU"),
            ],
        ),
    ]


@pytest.fixture(params=_xp_params())
def xp(request):
    """The array module under test (numpy, or cupy on a GPU machine)."""
    if request.param == "cupy":
        import cupy

        return cupy
    return np


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
