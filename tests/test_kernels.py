"""The fused TSSA path (``whitebox.kernels``) against the plain array path of ``whitebox.nn``.

On the CPU the fused path runs as the NumPy reference of the kernels (same steps, same
algebra), so CI checks the algebra, gradients included, without a GPU. The tests marked
``gpu`` compare the CuPy kernels with the plain path and with NumPy; they skip cleanly
without CuPy and a GPU (``benchmarks/gpu_check.py`` runs them on a GPU machine)."""

import ast
import subprocess
import sys

import numpy as np
import pytest

from whitebox import kernels, nn
from whitebox.backend import gpu_available, to_numpy
from whitebox.gradcheck import check_directional

F64 = np.float64
gpu = [pytest.mark.gpu, pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a GPU")]

# (B, n, D, H): p = 4, 48 (> one warp of 32 lanes), and one head owning every feature
SHAPES = [(2, 7, 12, 3), (1, 33, 96, 2), (3, 5, 8, 1)]
# n = 1, 31, 257; D not a multiple of 32; 3, 5, 40 and 64 heads
AWKWARD = [(2, 1, 36, 3), (3, 31, 40, 5), (2, 257, 120, 40), (1, 257, 192, 64), (2, 31, 100, 5)]


def make_layer(D, H, dtype, seed=0):
    rng = np.random.default_rng(seed)
    layer = nn.TSSA(D, H, dtype=dtype, rng=rng)
    for p in layer.params.values():
        p += (0.3 * rng.standard_normal(p.shape)).astype(dtype)
    return layer


def run(layer, x, G):
    """out, Pi, a, dx and the gradients of one forward + backward, as NumPy arrays."""
    out = layer.forward(x)
    cache = layer._cache
    dx = layer.backward(G)
    res = {"out": out, "pi": cache["pi"], "a": cache["a"], "dx": dx}
    res.update({"grad." + k: v for k, v in layer.gradients().items()})
    return {k: np.array(to_numpy(v)) for k, v in res.items()}


def assert_close(got, want, rtol, what):
    for k, w in want.items():
        g = got[k]
        assert g.shape == w.shape, f"{what}: {k} has shape {g.shape}, expected {w.shape}"
        scale = max(1e-30, float(np.abs(w).max()))
        err = float(np.abs(g - w).max()) / scale
        assert err < rtol, f"{what}: {k} differs by {err:.2e} (relative to its max) > {rtol}"


@pytest.fixture
def reference_path(monkeypatch):
    monkeypatch.setattr(kernels, "REFERENCE_ON_CPU", True)


def test_importing_does_not_import_cupy():
    code = "import sys, whitebox, whitebox.kernels, whitebox.bench; print('cupy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_kernels_depend_on_the_backend_alone():
    """nn calls kernels (between the two projections), never the other way round."""
    tree = ast.parse(open(kernels.__file__).read())
    local = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.module != "__future__":
                local.add(node.module if node.level else "absolute " + str(node.module))
        elif isinstance(node, ast.Import):
            local.update(a.name for a in node.names)
    assert local <= {"backend", "numpy"}, f"whitebox.kernels imports {sorted(local)}"


def test_dispatch(monkeypatch):
    x = np.zeros((1, 2, 4), np.float32)
    assert kernels.fused_impl(x, 2) is None  # NumPy: the plain path by default
    monkeypatch.setattr(kernels, "REFERENCE_ON_CPU", True)
    assert kernels.fused_impl(x, 2) == "reference"
    assert kernels.fused_impl(x.astype(np.float16), 2) is None  # no kernels for float16
    assert kernels.FUSED is True


@pytest.mark.parametrize("dtype,rtol", [(F64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("shape", SHAPES)
def test_reference_of_kernels_matches_plain_path(shape, dtype, rtol, monkeypatch):
    B, n, D, H = shape
    layer = make_layer(D, H, dtype)
    rng = np.random.default_rng(1)
    x, G = (rng.standard_normal((B, n, D)).astype(dtype) for _ in range(2))
    want = run(layer, x, G)
    monkeypatch.setattr(kernels, "REFERENCE_ON_CPU", True)
    got = run(layer, x, G)
    assert layer._cache.get("fused") == "reference"
    assert_close(got, want, rtol, "reference of the kernels vs plain path")


def test_reference_of_kernels_hard_case(reference_path):
    """A zero feature (only the 1e-12 floor keeps w_hat finite) and a head whose membership
    is ~e^-100 (only the 1e-8 keeps its statistics finite): same as the plain path."""
    D, H = 6, 3
    layer = make_layer(D, H, F64)
    layer.params["qkv.weight"][...] = np.eye(D)
    layer.params["qkv.bias"][...] = 0.0
    layer.params["temp"][...] = [[-200.0], [1.0], [1.5]]
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 4, D))
    x[..., 0:2] = rng.choice([-1.0, 1.0], size=(1, 4, 2))
    x[..., 2] = 0.0
    G = rng.standard_normal(x.shape)
    got = run(layer, x, G)
    kernels.REFERENCE_ON_CPU = False
    want = run(layer, x, G)
    assert all(np.isfinite(v).all() for v in got.values())
    assert_close(got, want, 1e-10, "hard case")


@pytest.mark.parametrize("shape", SHAPES[:2])
def test_reference_of_kernels_gradients(shape, reference_path):
    """Directional float64 gradient check of the whole layer through the fused algebra."""
    B, n, D, H = shape
    layer = make_layer(D, H, F64)
    rng = np.random.default_rng(3)
    x, G = rng.standard_normal((B, n, D)), rng.standard_normal((B, n, D))
    layer.forward(x)
    dx = layer.backward(G)
    grads = {k: v.copy() for k, v in layer.gradients().items()}
    f = lambda: float((layer.forward(x) * G).sum())
    errs = {"x": check_directional(f, x, dx, seed=0, h=1e-5)}
    for i, (k, p) in enumerate(layer.parameters().items()):
        errs[k] = check_directional(f, p, grads[k], seed=i + 1, h=1e-5)
    bad = {k: f"{v:.1e}" for k, v in errs.items() if not v < 1e-6}
    assert not bad, f"gradient check through the fused algebra failed: {bad}"


def test_backward_does_not_modify_its_input(reference_path):
    layer = make_layer(12, 3, F64)
    rng = np.random.default_rng(4)
    x, G = rng.standard_normal((2, 5, 12)), rng.standard_normal((2, 5, 12))
    G0 = G.copy()
    layer.forward(x)
    layer.backward(G)
    np.testing.assert_array_equal(G, G0)


# ------------------------------------------------------------------------------ on a GPU


@pytest.mark.parametrize("dtype,rtol", [(F64, 1e-10), (np.float32, 1e-4)])
@pytest.mark.parametrize("shape", SHAPES + AWKWARD + [(2, 1000, 384, 8)])
@pytest.mark.parametrize("_", [pytest.param(0, marks=gpu, id="gpu")])
def test_gpu_kernels_match_plain_path_and_numpy(shape, dtype, rtol, _, monkeypatch):
    B, n, D, H = shape
    layer = make_layer(D, H, dtype)
    rng = np.random.default_rng(5)
    x, G = (rng.standard_normal((B, n, D)).astype(dtype) for _ in range(2))
    want_cpu = run(layer, x, G)
    layer.to("gpu")
    import cupy

    xg, Gg = cupy.asarray(x), cupy.asarray(G)
    fused = run(layer, xg, Gg)
    assert layer._cache.get("fused") == "gpu"
    monkeypatch.setattr(kernels, "FUSED", False)
    plain = run(layer, xg, Gg)
    assert "fused" not in layer._cache
    assert_close(fused, plain, rtol, "GPU kernels vs GPU plain path")
    assert_close(fused, want_cpu, rtol, "GPU kernels vs NumPy")


@pytest.mark.parametrize("dtype", [F64, np.float32])
@pytest.mark.parametrize("_", [pytest.param(0, marks=gpu, id="gpu")])
def test_gpu_each_kernel_matches_its_reference(dtype, _):
    import cupy

    B, n, D, H = 2, 300, 96, 4
    rng = np.random.default_rng(6)
    r = lambda *s: cupy.asarray(rng.standard_normal(s).astype(dtype))
    w, dy, bias = r(B, n, D), r(B, n, D), r(D)
    inv_d2, temp = cupy.abs(r(B, D)) + 0.1, r(H)
    ref, gpu_ = kernels._STEPS["reference"], kernels._STEPS["gpu"]
    tol = 1e-10 if dtype == F64 else 1e-4

    def close(a, b, name):
        a, b = cupy.asnumpy(a), cupy.asnumpy(b)
        err = np.abs(a - b).max() / max(1e-30, np.abs(b).max())
        assert err < tol, f"{name}: kernel vs reference differ by {err:.1e}"

    w1, w2 = w.copy(), w.copy()
    close(gpu_["bias_colsq"](w1, bias), ref["bias_colsq"](w2, bias), "bias_colsq")
    close(w1, w2, "bias_colsq (w + bias)")
    for name, a, b in zip(("pi", "a", "pisum", "snum"), gpu_["stats"](w, inv_d2, temp),
                          ref["stats"](w, inv_d2, temp)):  # fmt: skip
        close(a, b, "stats: " + name)
    pi, a = ref["stats"](w, inv_d2, temp)[:2]
    c = cupy.abs(r(B, D))
    close(gpu_["output"](w, pi, c), ref["output"](w, pi, c), "output")
    close(gpu_["pwdy_colsum"](w, dy, pi), ref["pwdy_colsum"](w, dy, pi), "pwdy_colsum")
    u, v, kappa = r(B, D), r(B, D), r(B, H)
    for name, x1, x2 in zip(("da", "q", "dtemp"),
                            gpu_["token_backward"](w, dy, pi, a, u, v, kappa, temp),
                            ref["token_backward"](w, dy, pi, a, u, v, kappa, temp)):  # fmt: skip
        close(x1, x2, "token_backward: " + name)
    da = ref["token_backward"](w, dy, pi, a, u, v, kappa, temp)[0]
    r1, r2, r3 = r(B, D), r(B, D), r(B, D)
    close(gpu_["dw"](w, dy, pi, da, r1, r2, r3, u), ref["dw"](w, dy, pi, da, r1, r2, r3, u), "dw")


@pytest.mark.parametrize("dtype", [F64, np.float32])
@pytest.mark.parametrize("_", [pytest.param(0, marks=gpu, id="gpu")])
def test_gpu_deterministic_mode_is_bitwise_repeatable(dtype, _):
    """kernels.DETERMINISTIC (the default): two runs, the same bits, outputs and gradients."""
    import cupy

    assert kernels.DETERMINISTIC
    B, n, D, H = 4, 3000, 96, 4
    layer = make_layer(D, H, dtype).to("gpu")
    rng = np.random.default_rng(7)
    x, G = (cupy.asarray(rng.standard_normal((B, n, D)).astype(dtype)) for _ in range(2))
    first, second = run(layer, x, G), run(layer, x, G)
    for k in first:
        np.testing.assert_array_equal(first[k], second[k], err_msg=k)
