r"""Benchmarks for issue 7: linear scaling, NumPy against PyTorch on the CPU, and the GPU.

    python -m whitebox.bench                     # CPU: scaling + NumPy vs PyTorch (~5-10 min)
    python -m whitebox.bench --quick             # tiny sizes, < 1 min (a smoke test)
    python -m whitebox.bench --device gpu        # GPU: fused kernels vs bandwidth floor
    python -m whitebox.bench --out benchmarks/   # where bench_cpu.json / bench_gpu.json go

What is measured (every time is the median over repeats of one forward + backward):

1. Scaling. One TSSA layer (B = 1, D = 384, H = 8, float32) at n = 512 ... 32768 tokens:
   time and peak memory (``tracemalloc``, to which NumPy reports its array allocations; the
   peak of what one forward + backward allocates on top of its inputs). Softmax attention
   beside it, stopped before its predicted peak (the last measured peak times (n / n_last)^2)
   exceeds ``--budget-gib`` (2 GiB by default). Exponents are least-squares slopes of
   log(time) and log(memory) against log(n) over n >= 1024, where fixed per-call costs no
   longer dominate. The issue's bar: t(16384) / t(1024) <= 1.5 x 16 = 24.
2. NumPy against PyTorch CPU autograd, run side by side and interleaved (N, T, N, T, ...)
   so that both see the same machine load: one TSSA layer (B = 8, n = 1024, D = 384, H = 8,
   float32; the bar is a ratio <= 0.8), one ToST block, one training step of the default
   digits model (forward, loss, backward, gradient clipping, AdamW). The PyTorch versions are
   written here from the same formulas (the public ToST code's ``AttentionTSSA``), loaded
   with the same weights, and checked to give the same outputs before they are timed.
   PyTorch gets as many threads as NumPy's BLAS (``threadpoolctl``); the load average of the
   machine is recorded before and after. torch is imported only here, and only if installed.
3. GPU (``--device gpu``, needs CuPy): TSSA forward and backward with the fused kernels and
   with the plain array path, against the bandwidth floor (the bytes the layer must move over
   the bandwidth of a large device-to-device copy); digits training time on GPU and on CPU.

Timings live here and never in the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

from . import kernels, nn, optim
from .backend import device_module, to_numpy
from .models import build

FULL = dict(
    scaling_ns=[512, 1024, 2048, 4096, 8192, 16384, 32768], scaling_D=384, scaling_H=8,
    layer=dict(B=8, n=1024, D=384, H=8), repeats=21, scaling_repeats=5, digits_steps=30,
    gpu_layers=[dict(B=8, n=1024, D=384, H=8), dict(B=1, n=32768, D=384, H=8)],
)  # fmt: skip
QUICK = dict(
    scaling_ns=[128, 256, 512, 1024], scaling_D=64, scaling_H=4,
    layer=dict(B=2, n=128, D=64, H=4), repeats=3, scaling_repeats=2, digits_steps=3,
    gpu_layers=[dict(B=2, n=256, D=64, H=4)],
)  # fmt: skip

SOFTMAX_BUDGET_GIB = 2.0
TIME_RATIO_BAR = 1.5 * 16  # t(16384) / t(1024)
TORCH_RATIO_BAR = 0.8
FIT_MIN_N = 1024
SCALING_THREADS = 1
"""BLAS threads in the scaling run: one, so that other jobs on a shared machine (which stall
a multi-threaded BLAS call until every one of its threads gets a core) disturb it least."""


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _median_time(fn, repeats, sync=None):
    """Median wall time of ``fn()`` over ``repeats`` calls after one warm-up call."""
    fn()
    if sync:
        sync()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _interleaved(fns, repeats):
    """Median wall time of each of ``fns`` (name -> callable), calls interleaved."""
    for f in fns.values():
        f()
    ts = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            ts[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in ts.items()}, ts


def _peak_bytes(fn):
    """Peak bytes allocated (tracemalloc) while ``fn()`` runs, above what was live before."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak - base


def fit_exponent(ns, values):
    """Slope of log(values) against log(ns) (least squares)."""
    return float(np.polyfit(np.log(ns), np.log(values), 1)[0])


def _threads():
    info = {}
    try:
        from threadpoolctl import threadpool_info

        info["threadpools"] = [
            {k: d.get(k) for k in ("user_api", "internal_api", "num_threads", "version")}
            for d in threadpool_info()
        ]
        blas = [d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"]
        info["blas_threads"] = blas[0] if blas else None
    except ImportError:
        info["blas_threads"] = None
    return info


def _load():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _layer_fb(layer, x, g):
    def f():
        layer.forward(x)
        layer.backward(g)

    return f


# --------------------------------------------------------------------------------------------
# 1. Scaling
# --------------------------------------------------------------------------------------------


def scaling(cfg, budget_gib=SOFTMAX_BUDGET_GIB, log=print, threads=SCALING_THREADS):
    from threadpoolctl import threadpool_limits

    with threadpool_limits(threads, user_api="blas"):
        out = _scaling(cfg, budget_gib, log)
    out["blas_threads"] = threads
    return out


def _scaling(cfg, budget_gib, log):
    D, H, ns = cfg["scaling_D"], cfg["scaling_H"], cfg["scaling_ns"]
    rng = np.random.default_rng(0)
    layers = {
        "tssa": nn.TSSA(D, H, dtype=np.float32, rng=rng),
        "softmax": nn.SoftmaxAttention(D, H, dtype=np.float32, rng=rng),
    }
    budget = budget_gib * 2**30
    out = {name: {"n": [], "seconds": [], "peak_bytes": []} for name in layers}
    stopped = {}
    for n in ns:
        x = rng.standard_normal((1, n, D)).astype(np.float32)
        g = rng.standard_normal((1, n, D)).astype(np.float32)
        for name, layer in layers.items():
            if name in stopped:
                continue
            r = out[name]
            if name == "softmax" and r["n"]:
                predicted = r["peak_bytes"][-1] * (n / r["n"][-1]) ** 2
                if predicted > budget:
                    stopped[name] = (
                        f"stopped before n = {n}: predicted peak {predicted / 2**30:.2f} GiB "
                        f"exceeds the {budget_gib:g} GiB budget"
                    )
                    log(f"  softmax attention {stopped[name]}")
                    continue
            fb = _layer_fb(layer, x, g)
            peak = _peak_bytes(fb)
            reps = cfg["scaling_repeats"] if n >= 4096 else 2 * cfg["scaling_repeats"]
            t = _median_time(fb, reps)
            r["n"].append(n)
            r["seconds"].append(t)
            r["peak_bytes"].append(peak)
            log(f"  {name:8s} n={n:6d}  {t * 1e3:9.2f} ms  peak {peak / 2**20:9.1f} MiB")
            layer._cache = None  # free the cache before the next size
    for name, r in out.items():
        ns_fit = [i for i, n in enumerate(r["n"]) if n >= min(FIT_MIN_N, r["n"][-1] // 4)]
        ns_fit = ns_fit if len(ns_fit) >= 2 else list(range(len(r["n"])))
        sel = lambda key, r=r, idx=ns_fit: [r[key][i] for i in idx]
        r["fit_from_n"] = r["n"][ns_fit[0]]
        r["time_exponent"] = fit_exponent(sel("n"), sel("seconds"))
        r["memory_exponent"] = fit_exponent(sel("n"), sel("peak_bytes"))
        r["stopped"] = stopped.get(name)
    t = dict(zip(out["tssa"]["n"], out["tssa"]["seconds"]))
    ratio = t[16384] / t[1024] if 16384 in t and 1024 in t else None
    return dict(
        B=1, D=D, H=H, dtype="float32", softmax_budget_gib=budget_gib, results=out,
        tssa_time_ratio_16384_over_1024=ratio, time_ratio_bar=TIME_RATIO_BAR,
        time_ratio_ok=None if ratio is None else bool(ratio <= TIME_RATIO_BAR),
    )  # fmt: skip


def plot_scaling(sc, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    labels = {"tssa": "TSSA", "softmax": "softmax attention"}
    for name, r in sc["results"].items():
        ns = np.array(r["n"], dtype=float)
        for ax, key, expo, scale in (
            (axes[0], "seconds", "time_exponent", 1e3),
            (axes[1], "peak_bytes", "memory_exponent", 2.0**-20),
        ):
            vals = np.array(r[key]) * scale
            ax.loglog(ns, vals, "o-", label=f"{labels[name]}: slope {r[expo]:.2f}")
    axes[0].set_ylabel("forward + backward time (ms)")
    axes[1].set_ylabel("peak memory (MiB)")
    for ax in axes:
        ax.set_xlabel("tokens n")
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(
        f"One attention layer, B = 1, D = {sc['D']}, H = {sc['H']}, float32 "
        f"(softmax stopped at a {sc['softmax_budget_gib']:g} GiB budget)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# 2. PyTorch references (same formulas, same weights)
# --------------------------------------------------------------------------------------------


def _torch_modules(torch):
    """PyTorch modules written from the same formulas (``AttentionTSSA`` of the public code)."""
    F = torch.nn.functional
    tnn = torch.nn

    class TorchTSSA(tnn.Module):
        def __init__(self, dim, heads):
            super().__init__()
            self.heads = heads
            self.qkv = tnn.Linear(dim, dim)
            self.temp = tnn.Parameter(torch.ones(heads, 1))
            self.proj = tnn.Linear(dim, dim)

        def forward(self, x):
            b, n, D = x.shape
            w = self.qkv(x).view(b, n, self.heads, D // self.heads).transpose(1, 2)  # b h n p
            w_normed = F.normalize(w, dim=-2)
            Pi = F.softmax((w_normed**2).sum(dim=-1) * self.temp, dim=1)  # b h n
            dots = torch.matmul((Pi / (Pi.sum(dim=-1, keepdim=True) + 1e-8)).unsqueeze(-2), w**2)
            attn = 1.0 / (1 + dots)
            out = -torch.mul(w.mul(Pi.unsqueeze(-1)), attn)
            return self.proj(out.transpose(1, 2).reshape(b, n, D))

    class TorchBlock(tnn.Module):
        def __init__(self, dim, heads, mlp_ratio=4):
            super().__init__()
            self.ln_1 = tnn.LayerNorm(dim)
            self.attn = TorchTSSA(dim, heads)
            self.ln_2 = tnn.LayerNorm(dim)
            self.c_fc = tnn.Linear(dim, mlp_ratio * dim)
            self.c_proj = tnn.Linear(mlp_ratio * dim, dim)
            self.gamma1 = tnn.Parameter(torch.ones(dim))
            self.gamma2 = tnn.Parameter(torch.ones(dim))

        def forward(self, x):
            x = x + self.gamma1 * self.attn(self.ln_1(x))
            return x + self.gamma2 * self.c_proj(F.gelu(self.c_fc(self.ln_2(x))))

    class TorchClassifier(tnn.Module):
        def __init__(self, c):
            super().__init__()
            self.c = c
            P, D = c["patch_size"], c["dim"]
            self.patch_embed = tnn.Linear(c["in_chans"] * P * P, D)
            n_tok = (c["image_size"] // P) ** 2
            self.pos_embed = tnn.Parameter(torch.zeros(1, n_tok, D))
            self.blocks = tnn.ModuleList(
                TorchBlock(D, c["num_heads"], c.get("mlp_ratio", 4)) for _ in range(c["depth"])
            )
            self.norm = tnn.LayerNorm(D)
            self.head = tnn.Linear(D, c["num_classes"])

        def forward(self, x):
            B, C, S, _ = x.shape
            P = self.c["patch_size"]
            G = S // P
            x = x.reshape(B, C, G, P, G, P).permute(0, 2, 4, 1, 3, 5).reshape(B, G * G, C * P * P)
            z = self.patch_embed(x) + self.pos_embed
            for blk in self.blocks:
                z = blk(z)
            return self.head(self.norm(z.mean(dim=1)))

    return TorchTSSA, TorchBlock, TorchClassifier


def _torch_name(name):
    """whitebox parameter name -> the name in the PyTorch modules above."""
    return name.replace("mlp.c_fc", "c_fc").replace("mlp.c_proj", "c_proj")


def _load_into_torch(torch, tmodule, wmodule):
    """Copy the whitebox parameters into the torch module (Linear weights transposed: whitebox
    stores (in, out), PyTorch (out, in))."""
    tparams = dict(tmodule.named_parameters())
    assert len(tparams) == len(wmodule.parameters()), "parameter lists differ"
    with torch.no_grad():
        for name, v in wmodule.parameters().items():
            v = np.asarray(to_numpy(v))
            if name.endswith("weight") and v.ndim == 2:
                v = v.T
            t = tparams[_torch_name(name)]
            t.copy_(torch.from_numpy(np.ascontiguousarray(v)).reshape(t.shape))


def _rel_diff(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(1e-12, np.abs(b).max()))


def torch_comparison(cfg, log=print):
    """NumPy against PyTorch CPU autograd, interleaved, with NumPy's default number of BLAS
    threads and with one thread; None when torch is not installed."""
    try:
        import torch
    except ImportError:
        log("  torch is not installed: the comparison with PyTorch is skipped")
        return None
    from threadpoolctl import threadpool_limits

    default = _threads().get("blas_threads") or 1
    out = {}
    for nthreads in dict.fromkeys([default, 1]):
        log(f"  {nthreads} thread(s) for NumPy's BLAS and for PyTorch:")
        with threadpool_limits(nthreads, user_api="blas"):
            out[f"threads_{nthreads}"] = _torch_comparison(torch, cfg, nthreads, log)
    out["default_threads"] = default
    out["tssa_layer_ratio"] = out[f"threads_{default}"]["tssa_layer"]["ratio"]
    out["ratio_bar"] = TORCH_RATIO_BAR
    out["ratio_ok"] = bool(out["tssa_layer_ratio"] <= TORCH_RATIO_BAR)
    out["torch_version"] = torch.__version__
    return out


def _torch_comparison(torch, cfg, nthreads, log):
    threads = _threads()
    torch.set_num_threads(nthreads)
    TorchTSSA, TorchBlock, TorchClassifier = _torch_modules(torch)
    F = torch.nn.functional
    L = cfg["layer"]
    B, n, D, H = L["B"], L["n"], L["D"], L["H"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, n, D)).astype(np.float32)
    g = rng.standard_normal((B, n, D)).astype(np.float32)
    xt, gt = torch.from_numpy(x), torch.from_numpy(g)
    results = {}
    load_before = _load()

    def compare(name, wmod, tmod):
        _load_into_torch(torch, tmod, wmod)
        xr = xt.clone().requires_grad_(True)
        y_t = tmod(xr)
        y_t.backward(gt)
        y_w = wmod.forward(x)
        dx_w = wmod.backward(g)
        check = {"out": _rel_diff(y_w, y_t.detach().numpy()), "dx": _rel_diff(dx_w, xr.grad)}

        def torch_fb():
            xr.grad = None
            for p in tmod.parameters():
                p.grad = None
            tmod(xr).backward(gt)

        med, ts = _interleaved({"numpy": _layer_fb(wmod, x, g), "torch": torch_fb}, cfg["repeats"])
        results[name] = dict(
            numpy_seconds=med["numpy"], torch_seconds=med["torch"],
            ratio=med["numpy"] / med["torch"], numpy_min_seconds=min(ts["numpy"]),
            torch_min_seconds=min(ts["torch"]), ratio_of_minima=min(ts["numpy"]) / min(ts["torch"]),
            max_rel_diff=check,
        )  # fmt: skip
        log(
            f"  {name:14s} numpy {med['numpy'] * 1e3:8.2f} ms  torch {med['torch'] * 1e3:8.2f} ms"
            f"  ratio {med['numpy'] / med['torch']:.3f}   (outputs agree to {check['out']:.1e})"
        )

    compare("tssa_layer", nn.TSSA(D, H, dtype=np.float32, rng=rng), TorchTSSA(D, H))
    blk = nn.Block(D, H, attention="tssa", dtype=np.float32, rng=rng)
    compare("tost_block", blk, TorchBlock(D, H))
    results["digits_train_step"] = _digits_step_comparison(torch, TorchClassifier, F, cfg, log)
    results["shapes"] = dict(B=B, n=n, D=D, H=H, dtype="float32")
    results["threads"] = dict(numpy_blas=threads.get("blas_threads"), torch=torch.get_num_threads())
    results["load_before"], results["load_after"] = load_before, _load()
    return results


def _digits_batch(cfg):
    from .train import DigitsTask, make_config

    tcfg = make_config(task="digits")
    task = DigitsTask(tcfg)
    rng = np.random.default_rng(0)
    xb, yb = task.batch(0, rng)
    return tcfg, task, xb, yb


def _digits_step_comparison(torch, TorchClassifier, F, cfg, log):
    from .data import normalize_images

    tcfg, task, xb, yb = _digits_batch(cfg)
    # both sides get the same standardized batch (the model's own input_norm is a NumPy step)
    config = task.model_config()
    norm = config.pop("input_norm", None)
    if norm is not None:
        xb = normalize_images(xb, norm)
    model = build(config)
    opt = optim.AdamW(model, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    tmodel = TorchClassifier(model.config)
    _load_into_torch(torch, tmodel, model)
    decay = [p for k, p in tmodel.named_parameters() if _is_decayed(model, k)]
    no_decay = [p for k, p in tmodel.named_parameters() if not _is_decayed(model, k)]
    topt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": tcfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=tcfg.lr,
    )  # fmt: skip
    xt, ytt = torch.from_numpy(xb), torch.from_numpy(yb)
    check = _rel_diff(model.forward(xb), tmodel(xt).detach().numpy())
    lr = tcfg.lr

    def np_step():
        logits = model.forward(xb)
        _, dlogits = nn.cross_entropy(logits, yb, tcfg.label_smoothing)
        model.backward(dlogits)
        optim.clip_grad_norm(model, tcfg.clip)
        opt.step(lr)

    def torch_step():
        topt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(tmodel(xt), ytt, label_smoothing=tcfg.label_smoothing)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tmodel.parameters(), tcfg.clip)
        topt.step()

    med, ts = _interleaved({"numpy": np_step, "torch": torch_step}, 3 * cfg["repeats"])
    log(
        f"  {'digits step':14s} numpy {med['numpy'] * 1e3:8.2f} ms  torch "
        f"{med['torch'] * 1e3:8.2f} ms  ratio {med['numpy'] / med['torch']:.3f}   "
        f"(logits agree to {check:.1e})"
    )
    return dict(
        numpy_seconds=med["numpy"], torch_seconds=med["torch"],
        ratio=med["numpy"] / med["torch"], numpy_min_seconds=min(ts["numpy"]),
        torch_min_seconds=min(ts["torch"]), ratio_of_minima=min(ts["numpy"]) / min(ts["torch"]),
        max_rel_diff={"logits": check},
        batch_size=tcfg.batch_size, model=model.config,
    )  # fmt: skip


def _is_decayed(model, torch_name):
    for k in model.parameters():
        if _torch_name(k) == torch_name:
            return not model.no_weight_decay(k)
    raise KeyError(torch_name)


# --------------------------------------------------------------------------------------------
# 3. GPU
# --------------------------------------------------------------------------------------------


def measure_bandwidth(cp, nbytes=1 << 30):
    """Device memory bandwidth (bytes/s) of a large device-to-device copy (read + write)."""
    a = cp.empty(nbytes // 4, dtype=cp.float32)
    b = cp.empty_like(a)
    b[...] = a
    cp.cuda.Device().synchronize()
    ts = []
    for _ in range(10):
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        b[...] = a
        end.record()
        end.synchronize()
        ts.append(cp.cuda.get_elapsed_time(start, end) / 1e3)
    return 2 * a.nbytes / statistics.median(ts)


def tssa_floor_bytes(B, n, D, itemsize, backward=False):
    """Bytes the TSSA part between the two projections must move at least: forward reads w
    and writes y; backward reads w and dy and writes dw (every other array is O(n H + D))."""
    return (3 if backward else 2) * B * n * D * itemsize


def _gpu_time(cp, fn, repeats):
    fn()
    cp.cuda.Device().synchronize()
    ts = []
    for _ in range(repeats):
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        ts.append(cp.cuda.get_elapsed_time(start, end) / 1e3)
    return statistics.median(ts)


def gpu_benchmark(cfg, log=print):
    cp = device_module("gpu")
    bw = measure_bandwidth(cp, (1 << 30) if cfg is FULL else (1 << 26))
    log(f"  device-to-device copy bandwidth: {bw / 1e9:.0f} GB/s")
    layers = []
    for L in cfg["gpu_layers"]:
        B, n, D, H = L["B"], L["n"], L["D"], L["H"]
        rng = np.random.default_rng(0)
        layer = nn.TSSA(D, H, dtype=np.float32, rng=rng).to("gpu")
        x = cp.asarray(rng.standard_normal((B, n, D)).astype(np.float32))
        g = cp.asarray(rng.standard_normal((B, n, D)).astype(np.float32))
        row = dict(B=B, n=n, D=D, H=H, dtype="float32")
        modes = (("fused", True, True), ("fused_atomics", True, False), ("plain", False, True))
        for mode, flag, det in modes:
            kernels.FUSED, kernels.DETERMINISTIC = flag, det
            try:
                fwd = _gpu_time(cp, lambda L=layer, x=x: L.forward(x), cfg["repeats"])
                fb = _gpu_time(cp, _layer_fb(layer, x, g), cfg["repeats"])
                # the part between the projections: time the projections alone and subtract
                W = layer.params["qkv.weight"]
                x2 = x.reshape(-1, D)
                mm = _gpu_time(cp, lambda W=W, x2=x2: x2 @ W, cfg["repeats"])
            finally:
                kernels.FUSED, kernels.DETERMINISTIC = True, True
            row[mode] = dict(
                forward_seconds=fwd, backward_seconds=fb - fwd, fwd_bwd_seconds=fb,
                core_forward_seconds=max(fwd - 2 * mm, 0.0),
                core_backward_seconds=max(fb - fwd - 4 * mm, 0.0), matmul_seconds=mm,
            )  # fmt: skip
        isz = 4
        floor_f = tssa_floor_bytes(B, n, D, isz) / bw
        floor_b = tssa_floor_bytes(B, n, D, isz, backward=True) / bw
        row["floor_core_forward_seconds"], row["floor_core_backward_seconds"] = floor_f, floor_b
        f = row["fused"]
        row["core_forward_over_floor"] = f["core_forward_seconds"] / floor_f
        row["core_backward_over_floor"] = f["core_backward_seconds"] / floor_b
        # what the fixed-order sums over tokens cost against float atomics (fwd + bwd)
        row["deterministic_cost"] = (
            f["fwd_bwd_seconds"] / row["fused_atomics"]["fwd_bwd_seconds"] - 1
        )
        log(
            f"  TSSA B={B} n={n}: fused fwd {f['forward_seconds'] * 1e3:.3f} ms "
            f"bwd {f['backward_seconds'] * 1e3:.3f} ms; plain fwd "
            f"{row['plain']['forward_seconds'] * 1e3:.3f} ms bwd "
            f"{row['plain']['backward_seconds'] * 1e3:.3f} ms; core vs floor: fwd "
            f"{row['core_forward_over_floor']:.1f}x, bwd {row['core_backward_over_floor']:.1f}x; "
            f"deterministic sums cost {100 * row['deterministic_cost']:+.0f} %"
        )
        layers.append(row)
    train = {d: _digits_train_time(d, cfg["digits_steps"]) for d in ("gpu", "cpu")}
    log(
        f"  digits training: {train['gpu']['seconds_per_step'] * 1e3:.2f} ms/step on GPU, "
        f"{train['cpu']['seconds_per_step'] * 1e3:.2f} ms/step on CPU"
    )
    text = {d: _text_train_time(d, cfg["digits_steps"]) for d in ("gpu", "cpu")}
    log(
        f"  text training: {text['gpu']['seconds_per_step'] * 1e3:.2f} ms/step on GPU, "
        f"{text['cpu']['seconds_per_step'] * 1e3:.2f} ms/step on CPU"
    )
    name = cp.cuda.runtime.getDeviceProperties(0)["name"]
    return dict(
        device=name.decode() if isinstance(name, bytes) else name,
        cupy_version=cp.__version__, bandwidth_bytes_per_second=bw, tssa=layers,
        digits_training=train, text_training=text,
    )  # fmt: skip


def _seconds_per_train_step(task, tcfg, device, steps, batch_and_lr):
    """Seconds per step of ``task``'s default model through the training loop's own step (one
    wait for the device a step), after 3 warm-up steps; ``batch_and_lr(i)`` -> (x, y, lr)."""
    from .train import _train_step

    xp = device_module(device)
    model = build(task.model_config())
    if device != "cpu":
        model.to(device)
    opt = optim.AdamW(model, lr=tcfg.lr, weight_decay=tcfg.weight_decay)

    def step(i):
        x, y, lr = batch_and_lr(i)
        return _train_step(model, opt, x, y, xp, tcfg, lr, i)

    for i in range(3):
        step(i)
    t0 = time.perf_counter()
    for i in range(3, 3 + steps):
        step(i)
    return (time.perf_counter() - t0) / steps


def _text_train_time(device, steps):
    """Seconds per step of the default text model (batches drawn before the clock starts)."""
    from .train import TextTask, make_config

    tcfg = make_config(task="text", device=device)
    task = TextTask(tcfg)
    rng = np.random.default_rng(1)
    batches = [task.batch(i, rng) for i in range(3 + steps)]
    sec = _seconds_per_train_step(task, tcfg, device, steps, lambda i: (*batches[i], tcfg.lr))
    return dict(seconds_per_step=sec, steps_timed=steps, batch_size=tcfg.batch_size,
                block_size=tcfg.block_size)  # fmt: skip


def _digits_train_time(device, steps):
    """Seconds per training step of the default digits model (batches and the learning-rate
    schedule inside the timed loop, as in training)."""
    tcfg, task, _, _ = _digits_batch(None)
    rng = np.random.default_rng(1)

    def batch_and_lr(i):
        x, y = task.batch(i, rng)
        return x, y, optim.cosine_lr(i, task.total_steps, tcfg.warmup, tcfg.lr)

    sec = _seconds_per_train_step(task, tcfg, device, steps, batch_and_lr)
    return dict(
        seconds_per_step=sec, steps_timed=steps, batch_size=tcfg.batch_size,
        epoch_seconds=sec * task.steps_per_epoch,
        full_training_seconds_estimate=sec * task.total_steps,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _meta(cfg_name):
    return dict(
        config=cfg_name, python=platform.python_version(), numpy=np.__version__,
        machine=platform.machine(), processor=platform.processor(), cpu_count=os.cpu_count(),
        **_threads(),
    )  # fmt: skip


def run_cpu(cfg, out: Path, quick=False, budget_gib=SOFTMAX_BUDGET_GIB, log=print):
    t0 = time.perf_counter()
    result = {"meta": _meta("quick" if quick else "full"), "load_start": _load()}
    log(f"load average {result['load_start']}, BLAS threads {result['meta']['blas_threads']}")
    log("1. Scaling: one layer, forward + backward")
    result["scaling"] = scaling(cfg, budget_gib, log)
    sc = result["scaling"]
    for name in ("tssa", "softmax"):
        r = sc["results"][name]
        log(
            f"  {name}: time exponent {r['time_exponent']:.2f}, memory exponent "
            f"{r['memory_exponent']:.2f} (fit on n >= {r['fit_from_n']})"
        )
    if sc["tssa_time_ratio_16384_over_1024"] is not None:
        log(
            f"  TSSA t(16384) / t(1024) = {sc['tssa_time_ratio_16384_over_1024']:.1f} "
            f"(bar {TIME_RATIO_BAR:g}: {'ok' if sc['time_ratio_ok'] else 'MISSED'})"
        )
    log("2. NumPy against PyTorch CPU autograd (interleaved)")
    result["torch"] = torch_comparison(cfg, log)
    if result["torch"]:
        r = result["torch"]
        log(
            f"  TSSA layer ratio at {r['default_threads']} thread(s) {r['tssa_layer_ratio']:.3f}"
            f" (bar {TORCH_RATIO_BAR}: {'ok' if r['ratio_ok'] else 'MISSED'})"
        )
    result["load_end"] = _load()
    result["seconds"] = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_cpu.json").write_text(json.dumps(result, indent=1) + "\n")
    plot_scaling(sc, out / "scaling.png")
    log(f"wrote {out / 'bench_cpu.json'} and {out / 'scaling.png'} ({result['seconds']:.0f} s)")
    return result


def run_gpu(cfg, out: Path, quick=False, log=print):
    t0 = time.perf_counter()
    result = {"meta": _meta("quick" if quick else "full"), "load_start": _load()}
    log("GPU: fused TSSA kernels against the bandwidth floor; digits training")
    result["gpu"] = gpu_benchmark(cfg, log)
    result["seconds"] = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_gpu.json").write_text(json.dumps(result, indent=1) + "\n")
    log(f"wrote {out / 'bench_gpu.json'} ({result['seconds']:.0f} s)")
    return result


def build_parser():
    ap = argparse.ArgumentParser(
        prog="python -m whitebox.bench", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test, < 1 min)")
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--out", default="benchmarks", help="output folder (default benchmarks/)")
    ap.add_argument(
        "--budget-gib", type=float, default=SOFTMAX_BUDGET_GIB,
        help="memory budget for softmax attention in the scaling run (GiB)",
    )  # fmt: skip
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cfg = QUICK if args.quick else FULL
    if args.device == "gpu":
        run_gpu(cfg, Path(args.out), args.quick)
    else:
        run_cpu(cfg, Path(args.out), args.quick, args.budget_gib)
    return 0


if __name__ == "__main__":
    sys.exit(main())
