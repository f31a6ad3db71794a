"""The backend: NumPy by default, CuPy only when asked for, and a clear error without it."""

import subprocess
import sys

import numpy as np
import pytest

from whitebox import backend


def test_numpy_arrays_get_numpy():
    assert backend.get_array_module(np.zeros(3), 1.0, [1, 2]) is np
    assert backend.device_of(np.zeros(2)) == "cpu"


def test_importing_whitebox_does_not_import_cupy():
    code = "import sys, whitebox, whitebox.demo; print('cupy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_bad_device_name():
    with pytest.raises(ValueError, match="device must be 'cpu' or 'gpu'"):
        backend.device_module("tpu")


@pytest.mark.skipif(backend.gpu_available(), reason="this machine has a GPU")
def test_asking_for_the_gpu_without_one_says_how_to_install():
    with pytest.raises(
        RuntimeError, match=r"pip install -e \"\.\[gpu\]\".*cupy-cuda12x.*cupy-cuda13x"
    ):
        backend.require_gpu()


def test_round_trip_to_the_cpu(xp):
    x = xp.arange(6.0).reshape(2, 3)
    assert backend.get_array_module(x) is xp
    y = backend.to_numpy(x)
    assert isinstance(y, np.ndarray)
    np.testing.assert_array_equal(y, np.arange(6.0).reshape(2, 3))


def _float32_sample():
    """Every float32 exponent densely: random bit patterns of positive finite floats, a fine
    grid over [0, 4.5] (where erf changes), the edges, and their negatives."""
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 0x7F800000, size=2_000_000, dtype=np.uint32)  # all positive finite
    x = np.concatenate([
        bits.view(np.float32),
        np.linspace(0, 4.5, 2_000_001, dtype=np.float32),
        np.array([0.0, np.finfo(np.float32).tiny, 1e-45, 3.95, 3.9499998, 4.0, 1e30,
                  np.finfo(np.float32).max], np.float32),
    ])  # fmt: skip
    return np.concatenate([x, -x])


def test_float32_erf_is_accurate_to_float32_precision():
    """erf32 against SciPy's float64 erf: at most 4 float32 ulps anywhere (3.75 measured, at
    x = 0.433), under 1 ulp on average, 2 ulps or less for 95 % of the sample."""
    from scipy.special import erf

    x = _float32_sample()
    got = backend.erf32(x)
    assert got.dtype == np.float32
    want = erf(x.astype(np.float64))
    ulp = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    err = np.abs(got.astype(np.float64) - want) / ulp
    worst = int(np.argmax(err))
    assert err.max() <= 4.0, f"erf32({x[worst]!r}) off by {err.max():.2f} ulp"
    assert err.mean() < 1.0 and np.mean(err <= 2.0) > 0.95
    assert backend.erf(x[:10]).dtype == np.float32


def test_float32_erf_special_values():
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], np.float32)
    got = backend.erf32(x)
    assert np.isnan(got[0]) and got[1] == 1.0 and got[2] == -1.0 and got[3] == 0.0
    assert np.signbit(got[4])  # erf is odd: -0 -> -0


def test_float64_keeps_the_exact_erf():
    from scipy.special import erf

    x = np.linspace(-5, 5, 1001)
    np.testing.assert_array_equal(backend.erf(x), erf(x))


def test_erf32_in_blocks_is_the_whole_array_formula_element_for_element():
    """erf32 goes through large arrays in cache-sized blocks; the result must be bitwise the
    whole-array Horner evaluation, for sizes around the block size and non-contiguous input."""
    from whitebox.backend import ERF32_BLOCK, ERF32_COEFFS, erf32

    def whole(x):
        t = x * x
        acc = t * np.float32(ERF32_COEFFS[0])
        acc += np.float32(ERF32_COEFFS[1])
        for c in ERF32_COEFFS[2:]:
            acc *= t
            acc += np.float32(c)
        acc *= x
        return np.tanh(acc, out=acc)

    rng = np.random.default_rng(0)
    for n in (ERF32_BLOCK - 1, ERF32_BLOCK, ERF32_BLOCK + 1, 5 * ERF32_BLOCK + 7):
        x = (rng.standard_normal(n) * 3).astype(np.float32)
        x[:4] = [np.nan, np.inf, -np.inf, 3e38]
        with np.errstate(over="ignore", invalid="ignore"):
            np.testing.assert_array_equal(erf32(x), whole(x.copy()))
    xt = rng.standard_normal((3 * ERF32_BLOCK, 3)).astype(np.float32).T  # not contiguous
    got = erf32(xt)
    assert got.shape == xt.shape
    np.testing.assert_array_equal(got, whole(np.ascontiguousarray(xt)))
