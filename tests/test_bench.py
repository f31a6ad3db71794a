"""The benchmark runs and writes what the README shows (structure only: timings live in the
benchmark, never in the tests)."""

import json

import numpy as np
import pytest

from whitebox import bench


def test_fit_exponent_recovers_a_power_law():
    ns = np.array([512, 1024, 4096])
    assert bench.fit_exponent(ns, 3e-6 * ns**1.0) == pytest.approx(1.0)
    assert bench.fit_exponent(ns, 2e-9 * ns**2.0) == pytest.approx(2.0)


def test_floor_bytes_counts_the_mandatory_passes():
    # forward: read w, write y; backward: read w and dy, write dw (float32: 4 bytes)
    assert bench.tssa_floor_bytes(8, 1024, 384, 4) == 2 * 8 * 1024 * 384 * 4
    assert bench.tssa_floor_bytes(8, 1024, 384, 4, backward=True) == 3 * 8 * 1024 * 384 * 4


def test_quick_cpu_bench_writes_json_and_plot(tmp_path, monkeypatch):
    small = dict(bench.QUICK, scaling_ns=[64, 128, 256], repeats=1, scaling_repeats=1)
    monkeypatch.setattr(bench, "QUICK", small)
    assert bench.main(["--quick", "--out", str(tmp_path), "--budget-gib", "0.002"]) == 0
    data = json.loads((tmp_path / "bench_cpu.json").read_text())
    assert (tmp_path / "scaling.png").stat().st_size > 0
    sc = data["scaling"]
    assert sc["softmax_budget_gib"] == 0.002
    for name in ("tssa", "softmax"):
        r = sc["results"][name]
        assert len(r["n"]) == len(r["seconds"]) == len(r["peak_bytes"]) >= 1
        assert all(t > 0 for t in r["seconds"]) and all(b > 0 for b in r["peak_bytes"])
        assert isinstance(r["time_exponent"], float) and isinstance(r["memory_exponent"], float)
    assert sc["results"]["tssa"]["n"] == [64, 128, 256]
    # the tiny budget stops softmax attention, and the JSON says so
    assert sc["results"]["softmax"]["stopped"].startswith("stopped before n =")
    assert data["meta"]["config"] == "quick" and "blas_threads" in data["meta"]
    if data["torch"] is not None:  # torch installed: the side-by-side comparison is there
        t = data["torch"]
        for key in ("ratio_ok", "tssa_layer_ratio", "default_threads"):
            assert key in t
        for name in ("tssa_layer", "tost_block", "digits_train_step"):
            r = t[f"threads_{t['default_threads']}"][name]
            assert r["numpy_seconds"] > 0 and r["torch_seconds"] > 0
            # the PyTorch reference computes the same thing as the NumPy code
            assert all(v < 1e-4 for v in r["max_rel_diff"].values()), r["max_rel_diff"]
