"""Regenerate the multi-seed results and the results table in README.md: ``make results``.

Three phases, each run exactly as ``python -m whitebox.train`` runs (a fresh process per run,
one BLAS thread, ``JOBS`` runs side by side):

1. **Tuning.** For each task and each attention (ToST's TSSA and the softmax baseline), the same
   grid of peak learning rates x weight decays (``GRID``), seed 0, with ``--holdout``: trained on
   part of the training data and scored on a validation split carved out of it. The test data is
   never looked at. The best setting of each model (highest validation accuracy on the digits,
   ties broken by the lower validation loss; lowest validation loss on the text) is its setting.
2. **Seeds.** Each configuration of ``CONFIGS`` with its chosen setting, seeds ``SEEDS``, on the
   full training data, scored on the test data (digits) or the held-out last 10% (text).
3. **Inside.** For the digits, the white-box measurements of chapters 9 and 10
   (``whitebox.analysis``) on every seed's trained network and on the same network at
   initialization; for the configurations in ``PROFILED`` also the layer-wise profile of
   chapter 10 (``analysis.profile_report``: R_c^var and the heads' covariances per block, on
   training and test images).

Writes ``results/tuning.json`` and one ``results/<config>.json`` per configuration (per-seed
values, mean, standard deviation, configuration, machine and library versions), then rewrites
the table between the ``<!-- results:start -->`` and ``<!-- results:end -->`` markers of
README.md. Nothing in the table is typed by hand. Checkpoints go to ``runs/results/`` (ignored
by git); ``--reuse`` keeps runs that finished there before (e.g. to redo only the analysis).

    python scripts/results.py                # everything (about 30 minutes on 2 cores)
    python scripts/results.py --reuse        # only what is missing
    python scripts/results.py --only digits-tssa --reuse
    python scripts/results.py --only digits-tost-deep   # chapter 10's six-block network
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import readme_tables  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
RUNS = ROOT / "runs" / "results"
SCHEMA = 1
SEEDS = (0, 1, 2, 3, 4)
TUNING_SEED = 0
GRID = {"lr": (2e-3, 4e-3, 1e-2), "weight_decay": (0.05, 0.1)}
JOBS = 2

#: name -> (task, attention, extra flags). The tuned ones get a grid search of their own.
CONFIGS = {
    "digits-tssa": ("digits", "tssa", ()),
    "digits-softmax": ("digits", "softmax", ()),
    "text-tssa": ("text", "tssa", ()),
    "text-softmax": ("text", "softmax", ()),
    # the paper's vision layout (conv stem, Fourier positions, class attention), small; it gets
    # the simplified ToST's chosen setting (not tuned on its own)
    "digits-tost-cab": ("digits", "tssa", ("--model", "tost-cab")),
    # the default digits ToST, six blocks deep instead of two: enough layers for chapter 10 to
    # follow R_c^var and the head covariances over depth (the paper's layer-wise figures); it
    # borrows the simplified ToST's chosen setting too (not tuned on its own)
    "digits-tost-deep": ("digits", "tssa", ("--depth", "6")),
}
TUNED = ("digits-tssa", "digits-softmax", "text-tssa", "text-softmax")
#: configurations whose white-box measurements include the layer-wise profile of chapter 10
#: (R_c^var and the heads' covariances over depth, on training and test images)
PROFILED = ("digits-tost-deep",)


def machine() -> dict:
    """CPU, cores, BLAS kernel and library versions: where the numbers were made."""
    import numpy
    import scipy
    import sklearn
    from threadpoolctl import threadpool_info

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    blas = [
        f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')})"
        for i in threadpool_info()
        if i.get("user_api") == "blas"
    ]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "blas": blas,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "scikit-learn": sklearn.__version__,
    }


def metric_of(task: str, holdout: bool) -> tuple[str, str]:
    """(key in the result line, 'max' or 'min') of a task's headline metric."""
    if task == "digits":
        return ("val_accuracy" if holdout else "test_accuracy"), "max"
    return "val_loss_nats_per_char", "min"


def train_run(out: Path, task: str, attention: str, extra, reuse: bool, **flags) -> dict:
    """One ``python -m whitebox.train`` run into ``out``; its result line plus its history."""
    done = out / "result.json"
    if reuse and done.exists():
        return json.loads(done.read_text())
    # a run not reused is retrained: it replaces its folder's model (--overwrite)
    cmd = [sys.executable, "-m", "whitebox.train", "--task", task, "--attention", attention,
           "--out", str(out), "--no-progress", "--threads", "1", "--overwrite",
           *extra]  # fmt: skip
    for key, value in flags.items():
        if value is True:
            cmd.append(f"--{key.replace('_', '-')}")
        elif value is not None and value is not False:
            cmd += [f"--{key.replace('_', '-')}", str(value)]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["history"] = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    result["checkpoint"] = str((out / "model.npz").relative_to(ROOT))
    done.write_text(json.dumps(result) + "\n")
    return result


def _parallel(jobs):
    with ThreadPoolExecutor(max_workers=JOBS) as pool:
        futures = [pool.submit(fn, *args, **kw) for fn, args, kw in jobs]
        return [f.result() for f in futures]


def tune(names, reuse: bool) -> dict:
    jobs, keys = [], []
    for name in names:
        task, attention, extra = CONFIGS[name]
        for lr in GRID["lr"]:
            for wd in GRID["weight_decay"]:
                out = RUNS / "tuning" / f"{name}-lr{lr:g}-wd{wd:g}"
                jobs.append((train_run, (out, task, attention, extra, reuse),
                             dict(lr=lr, weight_decay=wd, seed=TUNING_SEED, holdout=True)))  # fmt: skip
                keys.append((name, lr, wd))
    runs = []
    for (name, lr, wd), r in zip(keys, _parallel(jobs)):
        task = CONFIGS[name][0]
        key, _ = metric_of(task, holdout=True)
        last = r["history"][-1]
        runs.append({"config": name, "lr": lr, "weight_decay": wd, key: r[key],
                     "val_loss": round(last["val_loss"], 4), "seconds": r["seconds"]})  # fmt: skip
        print(json.dumps(runs[-1]), flush=True)
    chosen = {}
    for name in names:
        task = CONFIGS[name][0]
        key, direction = metric_of(task, holdout=True)
        mine = [r for r in runs if r["config"] == name]
        if direction == "max":
            best = max(mine, key=lambda r: (r[key], -r["val_loss"]))
        else:
            best = min(mine, key=lambda r: r[key])
        chosen[name] = {"lr": best["lr"], "weight_decay": best["weight_decay"], key: best[key]}
    return {"runs": runs, "chosen": chosen}


def seeds(name: str, setting: dict, reuse: bool) -> dict:
    task, attention, extra = CONFIGS[name]
    key, _ = metric_of(task, holdout=False)
    flags = {k: setting[k] for k in ("lr", "weight_decay") if k in setting}
    jobs = [
        (train_run, (RUNS / f"{name}-seed{s}", task, attention, extra, reuse), dict(flags, seed=s))
        for s in SEEDS
    ]
    per_seed = []
    for s, r in zip(SEEDS, _parallel(jobs)):
        per_seed.append({
            "seed": s, "value": r[key], "params": r["params"], "steps": r["steps"],
            "seconds": r["seconds"], "checkpoint": r["checkpoint"], "history": r["history"],
            **({"sample": r["sample"]} if "sample" in r else {}),
        })  # fmt: skip
    values = [p["value"] for p in per_seed]
    return {
        "schema": SCHEMA,
        "name": name,
        "task": task,
        "attention": attention,
        "model": extra[extra.index("--model") + 1] if "--model" in extra else "tost",
        "metric": key,
        "better": metric_of(task, holdout=False)[1],
        "setting": flags,
        "train_flags": list(extra),
        "seeds": list(SEEDS),
        "values": values,
        "mean": round(statistics.mean(values), 4),
        "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "std_note": "sample standard deviation over the seeds (n - 1 in the denominator)",
        "params": per_seed[0]["params"],
        "steps": per_seed[0]["steps"],
        "mean_seconds": round(statistics.mean(p["seconds"] for p in per_seed), 1),
        "per_seed": per_seed,
    }


def inside(data: dict) -> dict:
    """The white-box measurements of chapters 9 and 10 on every seed's trained digits network."""
    from whitebox import analysis

    per_seed = []
    profiled = data["name"] in PROFILED
    for p in data["per_seed"]:
        report = analysis.digits_report(ROOT / p["checkpoint"])
        if profiled:
            report["profile"] = analysis.profile_report(ROOT / p["checkpoint"])
        per_seed.append({"seed": p["seed"], **report})
        print(f"  inside {data['name']} seed {p['seed']}", flush=True)
    out = {"per_seed": per_seed, "summary": analysis.summarize(per_seed)}
    if profiled:
        out["summary"]["profile"] = analysis.summarize_profile(per_seed)
    return out


def write(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reuse", action="store_true", help="keep runs that finished before")
    ap.add_argument("--only", nargs="+", choices=sorted(CONFIGS), help="these configurations")
    ap.add_argument("--skip-inside", action="store_true", help="no white-box measurements")
    args = ap.parse_args(argv)
    names = args.only or list(CONFIGS)
    names.sort(key=lambda n: n not in TUNED)  # the untuned ones borrow a tuned setting
    RESULTS.mkdir(exist_ok=True)
    where = machine()
    tuning_path = RESULTS / "tuning.json"
    tuning = json.loads(tuning_path.read_text()) if tuning_path.exists() else None
    to_tune = [n for n in names if n in TUNED]
    if to_tune and (tuning is None or not args.reuse or set(to_tune) - set(tuning["chosen"])):
        fresh = tune(to_tune, args.reuse)
        old = tuning or {"runs": [], "chosen": {}}
        tuning = {
            "schema": SCHEMA,
            "grid": {k: list(v) for k, v in GRID.items()},
            "seed": TUNING_SEED,
            "budget": f"{len(GRID['lr']) * len(GRID['weight_decay'])} runs per model, one seed",
            "selection": "digits: highest validation accuracy (ties: lower validation loss); "
            "text: lowest validation loss; validation = --holdout split carved out of the "
            "training data, never the test data",
            "runs": [r for r in old["runs"] if r["config"] not in to_tune] + fresh["runs"],
            "chosen": {**old["chosen"], **fresh["chosen"]},
            "machine": where,
        }
        write(tuning_path, tuning)
    for name in names:
        setting = tuning["chosen"].get(name) or tuning["chosen"][f"{CONFIGS[name][0]}-tssa"]
        data = seeds(name, setting, args.reuse)
        data["machine"] = where
        if data["task"] == "digits" and not args.skip_inside:
            data["inside"] = inside(data)
        write(RESULTS / f"{name}.json", data)
        print(
            f"{name}: {data['metric']} {data['mean']} +- {data['std']} over seeds {data['seeds']}"
        )
    readme_tables.README.write_text(readme_tables.render(readme_tables.README.read_text()))
    print("wrote results/*.json and the table in README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
