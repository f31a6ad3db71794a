"""The GPU code path on the CPU: CuPy replaced by a NumPy-backed stand-in (``fakecupy``).

The stand-in refuses what CuPy refuses (host arrays in device code, ``np.asarray`` of a device
array) and runs each CUDA kernel through a NumPy twin that checks its launch (grid, block,
shared memory, pointer arguments). So these tests exercise what only a GPU machine ran before:
dispatch to the fused kernels, their launch configuration and guards, layers, models, the
training loop and its host synchronizations. They say nothing about the CUDA code itself
(``tests/test_nvcc.py`` compiles it; ``benchmarks/gpu_check.py`` runs it on a GPU)."""

import fakecupy
import numpy as np
import pytest

from whitebox import kernels, nn

F64, F32 = np.float64, np.float32

# (B, n, D, H): n = 1, 31, 257; D not a multiple of 32; 3, 5, 40 and 64 heads
AWKWARD = [(2, 1, 36, 3), (3, 31, 40, 5), (2, 257, 120, 40), (1, 257, 192, 64), (2, 31, 100, 5)]


@pytest.fixture
def cp(monkeypatch):
    fakecupy.install(monkeypatch)
    return fakecupy


def make_layer(D, H, dtype, seed=0):
    rng = np.random.default_rng(seed)
    layer = nn.TSSA(D, H, dtype=dtype, rng=rng)
    for p in layer.params.values():
        p += (0.3 * rng.standard_normal(p.shape)).astype(dtype)
    return layer


def run(layer, x, G):
    out = layer.forward(x)
    dx = layer.backward(G)
    res = {"out": out, "pi": layer._cache["pi"], "dx": dx}
    res.update({"grad." + k: v for k, v in layer.gradients().items()})
    return {k: v.get() if isinstance(v, fakecupy.ndarray) else np.array(v) for k, v in res.items()}


def assert_close(got, want, rtol, what):
    for k, w in want.items():
        g = got[k]
        assert g.shape == w.shape, f"{what}: {k} has shape {g.shape}, expected {w.shape}"
        err = float(np.abs(g - w).max()) / max(1e-30, float(np.abs(w).max()))
        assert err < rtol, f"{what}: {k} differs by {err:.2e} (relative to its max) > {rtol}"


# ------------------------------------------------------------------ the stand-in refuses


def test_stand_in_refuses_what_cupy_refuses(cp):
    d = cp.asarray(np.arange(3.0))
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(d)
    with pytest.raises(TypeError):
        d + np.ones(3)  # device + host
    with pytest.raises(TypeError):
        np.ones(3) * d  # host * device
    with pytest.raises(TypeError):
        np.exp(d)  # a NumPy ufunc on a device array
    with pytest.raises(TypeError):
        cp.exp(np.ones(3))  # a CuPy function on a host array
    s = d.sum()
    assert isinstance(s, cp.ndarray) and cp.SYNCS[0] == 0  # reductions stay on the device
    assert float(s) == 3.0 and cp.SYNCS[0] == 1


def test_stand_in_kernels_check_their_launch(cp):
    w = cp.zeros((1, 4, 8), dtype=F32)
    colsq = cp.zeros((1, 1, 8), dtype=F32)
    k = cp.RawKernel(kernels.raw_source("tssa_bias_colsq", F32), "tssa_bias_colsq")
    args = (w, cp.zeros(8, dtype=F32), colsq, *kernels._i32(4, 8, 4, 1, 0))
    with pytest.raises(RuntimeError, match="zero-size"):
        k((0,), (32, 8), args)
    with pytest.raises(RuntimeError, match="over the limits"):
        k((1, 70000), (32, 8), args)
    with pytest.raises(TypeError, match="float64, the kernel reads float32"):
        k((1,), (32, 8), (cp.zeros((1, 4, 8)),) + args[1:])
    with pytest.raises(AssertionError, match="grid"):
        k((2,), (32, 8), args)
    k((1,), (32, 8), args)  # the right launch runs


# ------------------------------------------------------------------ dispatch and guards


def test_fused_path_taken_on_the_device(cp):
    layer = make_layer(12, 3, F32).to("gpu")
    layer.forward(cp.asarray(np.ones((2, 5, 12), F32)))
    assert layer._cache["fused"] == "gpu"


@pytest.mark.parametrize("deterministic", [True, False])
@pytest.mark.parametrize("dtype,rtol", [(F64, 1e-12), (F32, 2e-5)])
@pytest.mark.parametrize("shape", AWKWARD)
def test_fused_path_matches_numpy(shape, dtype, rtol, deterministic, cp, monkeypatch):
    """Outputs, Pi, dx and every parameter gradient: fused (through the kernels' twins)
    against the plain NumPy path, on awkward shapes."""
    monkeypatch.setattr(kernels, "DETERMINISTIC", deterministic)
    B, n, D, H = shape
    layer = make_layer(D, H, dtype)
    rng = np.random.default_rng(1)
    x, G = (rng.standard_normal((B, n, D)).astype(dtype) for _ in range(2))
    want = run(layer, x, G)
    layer.to("gpu")
    got = run(layer, cp.asarray(x), cp.asarray(G))
    assert layer._cache["fused"] == "gpu"
    assert_close(got, want, rtol, f"fused {shape} {np.dtype(dtype).name}")


@pytest.mark.parametrize("shape", [(2, 0, 12), (0, 5, 12)])
def test_empty_input_takes_the_plain_path(shape, cp):
    layer = make_layer(12, 3, F32).to("gpu")
    x = cp.zeros(shape, dtype=F32)
    assert kernels.fused_impl(x, 3) is None
    out = layer.forward(x)
    assert out.shape == shape
    assert layer.backward(cp.zeros(shape, dtype=F32)).shape == shape


def test_a_batch_over_the_grid_y_limit(cp):
    """B = 70,000 > 65,535: the one-dimensional grid takes it (the twin checks the limits)."""
    B, n, D, H = 70_000, 1, 4, 2
    layer = make_layer(D, H, F64)
    rng = np.random.default_rng(2)
    x, G = rng.standard_normal((B, n, D)), rng.standard_normal((B, n, D))
    want = run(layer, x, G)
    layer.to("gpu")
    assert_close(run(layer, cp.asarray(x), cp.asarray(G)), want, 1e-10, "B = 70,000")


@pytest.mark.parametrize("B,n", [(1, 16_777_000), (70_000, 3), (8, 1024), (1, 1), (300, 2)])
def test_launch_configuration(B, n, cp):
    """Chunks tile the tokens, at most TOKENS_PER_BLOCK a block, the grid stays 1-D and
    covers BLOCKS_PER_SM blocks per multiprocessor whenever there are enough tokens."""
    sms = cp.MULTIPROCESSORS
    chunk, C = kernels.token_chunks(B, n, sms)
    assert chunk <= kernels.TOKENS_PER_BLOCK and (C - 1) * chunk < n <= C * chunk
    want = min(kernels.BLOCKS_PER_SM * sms, B * -(-n // kernels.WARPS))
    assert B * C >= want, f"B={B} n={n}: {B * C} blocks < {want}"
    for D in (None, 384):
        *_, blocks = kernels._launch_config(cp, B, n, D)
        assert blocks <= kernels.MAX_GRID_X


def test_heads_must_divide_the_dim(cp):
    with pytest.raises(ValueError, match="num_heads"):
        kernels.fused_impl(cp.zeros((1, 2, 10), dtype=F32), 4)
    params = make_layer(12, 3, F32).params
    params["temp"] = np.ones((5, 1), F32)
    with pytest.raises(ValueError, match="divisible by num_heads=5"):
        nn.tssa_forward(np.zeros((1, 2, 12), F32), params)


def test_weights_of_another_dtype_take_the_plain_path(cp):
    x = cp.zeros((1, 4, 12), dtype=F32)
    assert kernels.fused_impl(x, 3, (cp.zeros(3, dtype=F32),)) == "gpu"
    assert kernels.fused_impl(x, 3, (cp.zeros(3, dtype=F64),)) is None
    assert kernels.fused_impl(x, 3, (np.zeros(3, dtype=F32),)) is None  # host weights


def test_shared_memory_is_sized_by_the_kernel_dtype(cp):
    """D = 620: the float64 kernels would need more than 48 KiB, the float32 ones fit."""
    D, H = 620, 4
    assert kernels._shared_bytes(D, H, 8) > kernels.MAX_SHARED_BYTES
    assert kernels.fused_impl(cp.zeros((1, 2, D), dtype=F32), H) == "gpu"
    assert kernels.fused_impl(cp.zeros((1, 2, D), dtype=F64), H) is None


def test_pointer_arguments_are_checked(cp):
    w = cp.asarray(np.ones((2, 12, 5), F32)).transpose(0, 2, 1)  # (2, 5, 12), not contiguous
    inv, temp = cp.ones((2, 12), dtype=F32), cp.ones(3, dtype=F32)
    with pytest.raises(ValueError, match="w: the kernel needs a C-contiguous float32"):
        kernels._stats_gpu(w, inv, temp)
    w = cp.ascontiguousarray(w)
    with pytest.raises(ValueError, match="inv_d2: the kernel needs a C-contiguous float32"):
        kernels._stats_gpu(w, inv.astype(F64), temp)


# ------------------------------------------------------------------ models and training


def test_models_on_the_device_match_numpy(cp):
    from whitebox.models import build

    rng = np.random.default_rng(3)
    cfgs = [
        (dict(model="classifier", image_size=8, patch_size=2, in_chans=1, num_classes=10,
              dim=24, depth=2, num_heads=3, dtype="float64"), rng.standard_normal((3, 1, 8, 8))),
        (dict(model="language_model", vocab_size=11, block_size=16, n_layer=2, n_head=4,
              n_embd=16, dtype="float64"), rng.integers(0, 11, size=(2, 9))),
    ]  # fmt: skip
    for cfg, x in cfgs:
        cpu, dev = build(cfg), build(cfg).to("gpu")
        out = cpu.forward(x)
        G = rng.standard_normal(out.shape)
        cpu.backward(G)
        got = dev.forward(cp.asarray(x))
        dev.backward(cp.asarray(G))
        want = {"out": out, **cpu.gradients()}
        have = {"out": got.get(), **{k: v.get() for k, v in dev.gradients().items()}}
        assert_close(have, want, 1e-10, cfg["model"])


def _train(tmp_path, task, device, name, stop_after=None, **kw):
    from whitebox import train as T

    cfg = T.make_config(task=task, device=device, out=str(tmp_path / name), dim=16, heads=4,
                        batch_size=8, warmup=2, **kw)  # fmt: skip
    return T.train(cfg, progress=False, stop_after=stop_after)


@pytest.mark.parametrize("task", ["digits", "text", "subspaces"])
def test_training_on_the_device_at_most_two_syncs_a_step(task, tmp_path, cp, monkeypatch):
    """A training step reads from the device at most twice (counted by the stand-in); the
    run's numbers match the CPU's."""
    counts = []
    step = nn.AdamW.step

    def counting_step(self, lr=None):
        counts.append(cp.SYNCS[0])
        return step(self, lr)

    monkeypatch.setattr(nn.AdamW, "step", counting_step)
    r_gpu = _train(tmp_path, task, "gpu", "gpu", steps=6, eval_every=6)
    per_step = np.diff(counts)
    assert len(per_step) == 5 and per_step.max() <= 2, f"syncs per step: {per_step.tolist()}"
    r_cpu = _train(tmp_path, task, "cpu", "cpu", steps=6, eval_every=6)
    key = "val_loss_nats_per_char" if task == "text" else "test_accuracy"
    assert r_gpu[key] == pytest.approx(r_cpu[key], abs=2e-3), (r_gpu, r_cpu)


def test_resume_on_the_device_is_exact(tmp_path, cp):
    """Interrupted and resumed on the device = uninterrupted on the device."""
    from whitebox import train as T

    full = _train(tmp_path, "digits", "gpu", "full", steps=8, eval_every=4)
    part = _train(tmp_path, "digits", "gpu", "part", steps=8, eval_every=4, stop_after=1)
    assert part["interrupted_at_step"] == 4
    cfg = T.make_config(task="digits", device="gpu", out=str(tmp_path / "part"))
    resumed = T.train(cfg, resume=part["checkpoint"], progress=False)
    assert resumed["test_accuracy"] == full["test_accuracy"]
    a = np.load(tmp_path / "full" / "model.npz")
    b = np.load(tmp_path / "part" / "model.npz")
    for k in a.files:
        if k != "meta":
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_a_checkpoint_copies_in_one_batch_per_dtype(tmp_path, cp):
    from whitebox.checkpoint import save_checkpoint
    from whitebox.models import build

    model = build(dict(model="token_classifier", in_dim=4, num_classes=3, dim=8, depth=2,
                       num_heads=2)).to("gpu")  # fmt: skip
    opt = nn.AdamW(model, lr=1e-3)
    n_arrays = len(model.parameters())
    cp.reset_syncs()
    save_checkpoint(tmp_path / "m.npz", model, opt)
    assert n_arrays > 20 and cp.SYNCS[0] == 2  # the model's arrays, then the optimizer's


def test_gpu_benchmark_plumbing(cp, monkeypatch):
    """The GPU benchmark runs on the stand-in and reports what the README table needs (its
    times mean nothing here)."""
    from whitebox import bench

    monkeypatch.setattr(bench, "measure_bandwidth", lambda cp_, nbytes: 1e12)
    r = bench.gpu_benchmark(bench.QUICK, log=lambda *a: None)
    row = r["tssa"][0]
    for key in ("fused", "fused_atomics", "plain", "core_forward_over_floor",
                "deterministic_cost"):  # fmt: skip
        assert key in row, key
    assert r["digits_training"]["gpu"]["seconds_per_step"] > 0
    assert r["text_training"]["cpu"]["seconds_per_step"] > 0
    assert kernels.FUSED and kernels.DETERMINISTIC  # restored


@pytest.mark.parametrize("V, N", [(7, 50), (3000, 30000)])  # the second runs in several chunks
def test_embedding_backward_on_the_device_is_a_product_not_atomics(V, N, cp):
    """No scatter-add (float atomics: last bits vary between runs) on the GPU: a one-hot
    product, in chunks, equal to NumPy's position-order sum; ids that never occur get 0."""
    rng = np.random.default_rng(0)
    idx = rng.integers(0, V // 2 + 1, size=(1, N))  # the upper half of the vocabulary unused
    dy = rng.standard_normal((1, N, 4))
    _, ref = nn.embedding_backward(dy, (idx, (V, 4)))
    _, got = nn.embedding_backward(cp.asarray(dy), (cp.asarray(idx), (V, 4)))
    assert isinstance(got["weight"], cp.ndarray)
    np.testing.assert_allclose(cp.asnumpy(got["weight"]), ref["weight"], rtol=1e-12, atol=1e-12)
    assert (ref["weight"][V // 2 + 1 :] == 0).all()
