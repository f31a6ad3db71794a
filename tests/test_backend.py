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
