"""The GPU check, in one go: everything a GPU machine has to show, continuing after failures.

    python3 benchmarks/gpu_check.py                 # on the GPU machine (about 5 minutes)
    WHITEBOX_GPU_OUT=/tmp/g python3 benchmarks/gpu_check.py
    python3 benchmarks/gpu_check.py --fake --quick  # on a CPU: the plumbing, with tests/fakecupy

Steps (each a subprocess with its own time limit; a failure is recorded and the next step
runs, except that a failed kernel smoke test stops the run with a clear message):

 1. env        GPU, driver, CUDA, CuPy, NumPy, Python (nvidia-smi and CuPy's own report)
 2. install    ``pip install --no-deps --no-build-isolation -e .`` (offline); whatever happens,
               every later step also gets the checkout on PYTHONPATH
 3. smoke      compile and launch every kernel once against its NumPy reference
 4. pytest     ``pytest -m gpu`` over every test file, JUnit report ``gpu_tests.xml``
 5. compare    fused vs plain vs NumPy, outputs and every gradient, awkward shapes
               (n = 1, 31, 257; D not a multiple of 32; 3, 5, 40, 64 heads), float32 and float64
 6. repeat     the same layer twice (deterministic kernels: the same bits), and with
               ``kernels.DETERMINISTIC = False`` (atomics: differences reported, not failed)
 7. train      a short ``--device gpu`` training on each task, and a GPU resume
 8. bench      ``python3 -m whitebox.bench --device gpu`` (TSSA against its bandwidth floor,
               digits and text training step GPU against CPU) -> ``bench_gpu.json``

Results: ``gpu_check.json`` (every step: status, seconds, output tail, data) and the files the
steps write, in ``$WHITEBOX_GPU_OUT`` (default ``benchmarks/``). Uses ``python3`` (or
``$PYTHON``); needs no .venv, no internet. Exit status 0 when every step passed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = os.environ.get("PYTHON", "python3")

# Steps 3, 5 and 6 run this file again as `--step NAME` (in a subprocess, under a limit).

_SHIM = {
    "cupy.py": "import sys, fakecupy\nsys.modules[__name__] = fakecupy\n",
    "cupyx/__init__.py": "",
    "cupyx/scipy/__init__.py": "",
    "cupyx/scipy/special.py": "from fakecupy import _erf as erf  # noqa: F401\n",
}


def _env(fake):
    env = dict(os.environ)
    paths = [str(ROOT)]
    if fake:  # `import cupy` finds the stand-in
        shim = Path(tempfile.mkdtemp(prefix="fakecupy-shim-"))
        for rel, text in _SHIM.items():
            (shim / rel).parent.mkdir(parents=True, exist_ok=True)
            (shim / rel).write_text(text)
        paths = [str(shim), str(ROOT / "tests")] + paths
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env["MPLBACKEND"] = "Agg"
    return env


def _run(cmd, env, limit):
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
        rc, out = r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired as e:
        rc = "timeout"
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else ""
        out += f"\n(killed after {limit} s)"
    except OSError as e:
        rc, out = "not run", str(e)
    return rc, out, time.perf_counter() - t0


def _last_json(text):
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


# ---------------------------------------------------------------- steps run in a subprocess


def step_env():
    import numpy as np

    info = {"python": sys.version.split()[0], "numpy": np.__version__}
    import cupy

    info["cupy"] = cupy.__version__
    rt = cupy.cuda.runtime
    info["driver_version"] = rt.driverGetVersion()
    info["runtime_version"] = rt.runtimeGetVersion()
    props = rt.getDeviceProperties(0)
    info["device"] = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    info["multiprocessors"] = props.get("multiProcessorCount")
    info["memory_bytes"] = props.get("totalGlobalMem")
    info["compute_capability"] = f"{props.get('major')}.{props.get('minor')}"
    return info


def _rel(a, b):
    import numpy as np

    return float(np.abs(a - b).max() / max(1e-30, float(np.abs(b).max())))


def step_smoke():
    """Every kernel, compiled and launched once, against its NumPy reference."""
    import cupy
    import numpy as np

    from whitebox import kernels

    out = {}
    for dtype in (np.float32, np.float64):
        rng = np.random.default_rng(0)
        B, n, D, H = 2, 37, 40, 5
        r = lambda *s, rng=rng, dt=dtype: cupy.asarray(rng.standard_normal(s).astype(dt))  # noqa: E731
        w, dy, bias = r(B, n, D), r(B, n, D), r(D)
        inv_d2, temp = cupy.abs(r(B, D)) + 0.1, r(H)
        ref, gpu = kernels._STEPS["reference"], kernels._STEPS["gpu"]
        w1, w2 = w.copy(), w.copy()
        res = {"bias_colsq": (gpu["bias_colsq"](w1, bias), ref["bias_colsq"](w2, bias))}
        res["stats.pi"] = (gpu["stats"](w, inv_d2, temp)[0], ref["stats"](w, inv_d2, temp)[0])
        pi, a = ref["stats"](w, inv_d2, temp)[:2]
        c = cupy.abs(r(B, D))
        res["output"] = (gpu["output"](w, pi, c), ref["output"](w, pi, c))
        res["pwdy_colsum"] = (gpu["pwdy_colsum"](w, dy, pi), ref["pwdy_colsum"](w, dy, pi))
        u, v, kappa = r(B, D), r(B, D), r(B, H)
        tb = (w, dy, pi, a, u, v, kappa, temp)
        res["token_backward.da"] = (gpu["token_backward"](*tb)[0], ref["token_backward"](*tb)[0])
        da = ref["token_backward"](*tb)[0]
        r1, r2, r3 = r(B, D), r(B, D), r(B, D)
        dw = (w, dy, pi, da, r1, r2, r3, u)
        res["dw"] = (gpu["dw"](*dw), ref["dw"](*dw))
        tol = 1e-4 if dtype == np.float32 else 1e-10
        for k, (g, f) in res.items():
            e = _rel(cupy.asnumpy(g), cupy.asnumpy(f))
            out[f"{np.dtype(dtype).name}.{k}"] = e
            if not e < tol:
                raise SystemExit(f"kernel {k} ({np.dtype(dtype).name}) differs by {e:.1e}")
    return out


AWKWARD = [(2, 1, 36, 3), (3, 31, 40, 5), (2, 257, 120, 40), (1, 257, 192, 64), (2, 31, 100, 5),
           (4, 257, 384, 8)]  # fmt: skip


def _layer_run(layer, x, G):
    from whitebox.backend import to_numpy

    out = layer.forward(x)
    dx = layer.backward(G)
    res = {"out": out, "dx": dx, **{"grad." + k: v for k, v in layer.gradients().items()}}
    return {k: to_numpy(v) for k, v in res.items()}


def step_compare():
    import cupy
    import numpy as np

    from whitebox import kernels, nn

    rows, worst = [], 0.0
    for dtype, tol in ((np.float64, 1e-10), (np.float32, 1e-4)):
        for B, n, D, H in AWKWARD:
            rng = np.random.default_rng(1)
            layer = nn.TSSA(D, H, dtype=dtype, rng=rng)
            for p in layer.params.values():
                p += (0.3 * rng.standard_normal(p.shape)).astype(dtype)
            x, G = (rng.standard_normal((B, n, D)).astype(dtype) for _ in range(2))
            want = _layer_run(layer, x, G)
            layer.to("gpu")
            xg, Gg = cupy.asarray(x), cupy.asarray(G)
            fused = _layer_run(layer, xg, Gg)
            assert layer._cache.get("fused") == "gpu"
            kernels.FUSED = False
            plain = _layer_run(layer, xg, Gg)
            kernels.FUSED = True
            e_np = max(_rel(fused[k], want[k]) for k in want)
            e_plain = max(_rel(fused[k], plain[k]) for k in want)
            ok = e_np < tol and e_plain < tol
            rows.append(dict(B=B, n=n, D=D, H=H, dtype=np.dtype(dtype).name,
                             fused_vs_numpy=e_np, fused_vs_plain=e_plain, ok=ok))  # fmt: skip
            worst = max(worst, e_np / tol, e_plain / tol)
    if not all(r["ok"] for r in rows):
        print(json.dumps({"rows": rows}))
        raise SystemExit("fused kernels differ from the plain path or NumPy (see rows)")
    return {"rows": rows, "worst_error_over_tolerance": worst}


def step_repeat():
    import cupy
    import numpy as np

    from whitebox import kernels, nn

    out = {}
    for det in (True, False):
        kernels.DETERMINISTIC = det
        rng = np.random.default_rng(2)
        layer = nn.TSSA(384, 8, dtype=np.float32, rng=rng).to("gpu")
        x = cupy.asarray(rng.standard_normal((8, 4096, 384)).astype(np.float32))
        G = cupy.asarray(rng.standard_normal((8, 4096, 384)).astype(np.float32))
        a, b = _layer_run(layer, x, G), _layer_run(layer, x, G)
        diff = {k: float(np.abs(a[k] - b[k]).max()) for k in a}
        out["deterministic" if det else "atomics"] = {
            "bitwise_equal": all(v == 0 for v in diff.values()),
            "max_abs_diff": max(diff.values()),
        }
    kernels.DETERMINISTIC = True
    if not out["deterministic"]["bitwise_equal"]:
        print(json.dumps(out))
        raise SystemExit("DETERMINISTIC kernels gave different bits on two runs")
    return out


STEPS_IN_PROCESS = {"env": step_env, "smoke": step_smoke, "compare": step_compare,
                    "repeat": step_repeat}  # fmt: skip


# ---------------------------------------------------------------- the driver


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fake", action="store_true", help="CPU: CuPy replaced by tests/fakecupy")
    ap.add_argument("--quick", action="store_true", help="tiny training runs, a test subset")
    ap.add_argument("--out", default=os.environ.get("WHITEBOX_GPU_OUT", str(ROOT / "benchmarks")))
    ap.add_argument("--step", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.step:  # a subprocess of the driver
        if args.fake:
            sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
            import fakecupy

            fakecupy.install()
        print(json.dumps(STEPS_IN_PROCESS[args.step]()))
        return 0

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = _env(args.fake)
    me = [PY, str(Path(__file__).resolve())] + (["--fake"] if args.fake else [])
    report = {"fake": args.fake, "quick": args.quick, "started": time.time(), "steps": {}}

    def record(name, cmd, limit, fatal=False, data_from_stdout=True):
        rc, text, sec = _run(cmd, env, limit)
        ok = rc == 0
        entry = {"ok": ok, "returncode": rc, "seconds": round(sec, 1), "cmd": " ".join(cmd),
                 "tail": text[-3000:]}  # fmt: skip
        if data_from_stdout:
            entry["data"] = _last_json(text)
        report["steps"][name] = entry
        print(f"[{'ok' if ok else 'FAILED'}] {name} ({sec:.0f} s)", flush=True)
        if not ok:
            print("    " + "\n    ".join(text.strip().splitlines()[-8:]), flush=True)
        (out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
        if fatal and not ok:
            raise SystemExit(
                f"stopping: {name} failed, so CuPy cannot run the kernels here "
                f"(see {out / 'gpu_check.json'}). Is the CuPy for this CUDA installed "
                "(cupy-cuda12x or cupy-cuda13x) and does `nvidia-smi` see a GPU?"
            )
        return ok

    try:
        if not args.fake:
            record("nvidia_smi", ["nvidia-smi"], 30, data_from_stdout=False)
        record("env", me + ["--step", "env"], 60, fatal=True)
        if not args.fake:  # offline: no build isolation, no dependency resolution
            pip = [PY, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e", "."]
            if not record("install", pip, 180, data_from_stdout=False):
                print("    (the checkout is on PYTHONPATH instead)", flush=True)
        record("smoke", me + ["--step", "smoke"], 180, fatal=True)
        tests = ["tests/test_kernels.py"] if args.quick else ["tests"]
        pytest = [PY, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                  f"--junitxml={out / 'gpu_tests.xml'}", *tests]  # fmt: skip
        if args.quick:
            pytest += ["-k", "deterministic or each_kernel"]
        record("pytest", pytest, 600, data_from_stdout=False)
        if not args.quick:
            record("compare", me + ["--step", "compare"], 300)
            record("repeat", me + ["--step", "repeat"], 120)
        steps = "4" if args.quick else "60"
        runs = out / "gpu_runs"
        for task in ("digits", "text", "subspaces"):
            cmd = [PY, "-m", "whitebox.train", "--task", task, "--device", "gpu", "--steps",
                   steps, "--eval-every", str(int(steps) // 2), "--no-progress",
                   "--out", str(runs / task)]  # fmt: skip
            if args.quick:
                cmd += ["--dim", "16"]
            record(f"train_{task}", cmd, 300)
        # a GPU resume: interrupted after the first evaluation, resumed, = uninterrupted
        cmd = [PY, "-m", "whitebox.train", "--task", "digits", "--device", "gpu", "--steps",
               steps, "--eval-every", str(int(steps) // 2), "--no-progress", "--stop-after",
               "1", "--out", str(runs / "resume")]  # fmt: skip
        if args.quick:
            cmd += ["--dim", "16"]
        record("train_interrupt", cmd, 300)
        resume = [PY, "-m", "whitebox.train", "--device", "gpu", "--no-progress",
                  "--resume", str(runs / "resume" / "model.npz")]  # fmt: skip
        if record("train_resume", resume, 300):
            a = report["steps"]["train_digits"].get("data") or {}
            b = report["steps"]["train_resume"].get("data") or {}
            same = a.get("test_accuracy") is not None and a.get("test_accuracy") == b.get(
                "test_accuracy"
            )
            report["resume_matches_uninterrupted"] = same
            print(f"[{'ok' if same else 'DIFFERS'}] resumed run = uninterrupted run", flush=True)
        if args.fake:
            report["steps"]["bench"] = {"ok": None, "skipped": "no GPU to time (--fake)"}
        else:
            record("bench", [PY, "-m", "whitebox.bench", "--device", "gpu", "--out", str(out)],
                   600, data_from_stdout=False)  # fmt: skip
    except SystemExit as e:
        report["stopped"] = str(e)
        print(e, flush=True)
    report["seconds"] = round(time.time() - report["started"], 1)
    report["all_ok"] = all(s.get("ok") is not False for s in report["steps"].values()) and (
        "stopped" not in report
    )
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out / 'gpu_check.json'} ({report['seconds']:.0f} s); all ok: {report['all_ok']}")
    return 0 if report["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
