"""Regenerate the multi-seed results and the results table in README.md: ``make results``.

Three phases, each run exactly as ``python -m whitebox.train`` runs (a fresh process per run,
one BLAS thread, ``JOBS`` runs side by side: the environment variable JOBS, default 2):

1. **Tuning.** For each task and each attention (ToST's TSSA and the softmax baseline), a
   coarse-then-fine search with ``--holdout`` (trained on part of the training data, scored on a
   validation split carved out of it; the test data is never looked at). Every setting is run
   with the seeds ``TUNING_SEEDS`` and judged by the mean over them (digits: highest mean
   validation accuracy, ties broken by the lower mean validation loss; text: lowest mean
   validation loss). Stage 1: the four peak learning rates of ``LR_GRID`` (factor 2 apart) at
   weight decay ``WD_START``. Stage 2: the other weight decays of ``WD_GRID`` at the model's
   stage-1 learning rate. After each stage, while any model's best value sits on the edge of the
   values it was run with, *every* model of the task gets one more value of that parameter (a
   factor ``EXTEND`` beyond the edge where its best lies, or, when its best is inside, beyond the
   edge on the side of its better neighbour): the same number of runs for ToST and its baseline,
   and every chosen value strictly inside the values run. A run that diverges counts as the
   worst result. The two tasks run as two pipelines side by side (tuning, then seeds, then the
   measurements), the digits' runs first whenever both wait for a worker.
2. **Seeds.** Each configuration of ``CONFIGS`` with its chosen setting, seeds ``SEEDS``, on the
   full training data, scored on the test data (digits) or the held-out last 10% (text).
3. **Inside.** For the digits, the white-box measurements of chapters 9 and 10
   (``whitebox.analysis``) on every seed's trained network and on the same network at
   initialization, with chapter 10's controls of each block's attention update (a random update
   of the same per-token norms; for ``CONTROLS`` also the softmax baseline's update of the same
   seed, measured with the ToST's U and Pi); for the configurations in ``PROFILED`` also the
   layer-wise profile of chapter 10 (``analysis.profile_report``: R_c^var and the heads'
   covariances per block, on training and test images, raw and rescaled per image).

Writes ``results/tuning.json`` and one ``results/<config>.json`` per configuration (per-seed
values, mean, standard deviation, configuration, machine and library versions), then rewrites
the table between the ``<!-- results:start -->`` and ``<!-- results:end -->`` markers of
README.md. Nothing in the table is typed by hand. Checkpoints go to ``runs/results/`` (ignored
by git); ``--reuse`` keeps runs that finished there before (e.g. to redo only the analysis).

    python scripts/results.py                # everything (about 75 minutes on 2 cores)
    python scripts/results.py --reuse        # only what is missing
    python scripts/results.py --only digits-tssa --reuse
    python scripts/results.py --only digits-tost-deep   # chapter 10's six-block network
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import queue
import statistics
import subprocess
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import readme_tables  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
RUNS = ROOT / "runs" / "results"
SCHEMA = 1
SEEDS = (0, 1, 2, 3, 4)
#: tuning: every setting is run with these seeds and judged by the mean over them
TUNING_SEEDS = (0, 1)
#: stage 1: peak learning rates (log-spaced, factor 2; each task's grid is centred on the optima of
#: an earlier one-seed search) at weight decay WD_START, per task
LR_GRID = {"digits": (1e-3, 2e-3, 4e-3, 8e-3), "text": (5e-3, 1e-2, 2e-2, 4e-2)}
WD_START = 0.05
#: stage 2: weight decays at the stage-1 learning rate
WD_GRID = (0.02, 0.05, 0.1)
#: an edge is extended by this factor, one value per round, at most MAX_EXTENSIONS rounds
EXTEND = 2.0
MAX_EXTENSIONS = 3
TUNING_PROCEDURE = (
    "stage 1: every peak lr of the task's grid (4 values, factor 2 apart) at weight decay "
    f"{WD_START:g}; while any model's best lr is the smallest or largest value run, every model "
    f"of the same task gets one more lr (a factor {EXTEND:g} beyond the edge where its best "
    "lies, else beyond the edge on the side of its better neighbour). stage 2: weight decays "
    f"{', '.join(f'{w:g}' for w in WD_GRID if w != WD_START)} at the model's stage-1 lr, then the "
    "same extension rule for weight decay. Every setting with seeds "
    f"{', '.join(map(str, TUNING_SEEDS))}; the chosen setting is the best over everything run by "
    "the mean over the seeds, and it lies strictly inside the values run of both lr and weight "
    "decay. The models compared on a task (ToST and its softmax baseline) get the same budget."
)
#: runs side by side (environment variable JOBS; default 2, one per core of a 2-core machine)
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
PROFILED = ("digits-tost-deep", "digits-tssa")
#: configuration -> the softmax configuration whose network (same seed) is chapter 10's control:
#: its attention update measured with the ToST's U and Pi (``analysis.update_controls``)
CONTROLS = {"digits-tssa": "digits-softmax"}


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


class _PriorityPool:
    """``JOBS`` worker threads that take the waiting job of the lowest priority first (the
    digits before the text), first come first served within a priority."""

    def __init__(self, workers: int):
        self.queue: queue.PriorityQueue = queue.PriorityQueue()
        self.order = itertools.count()
        for _ in range(workers):
            threading.Thread(target=self._work, daemon=True).start()

    def _work(self):
        while True:
            _, _, future, fn, args, kw = self.queue.get()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kw))
                except BaseException as err:  # handed to whoever waits on the future
                    future.set_exception(err)

    def submit(self, priority: int, fn, *args, **kw) -> Future:
        future: Future = Future()
        self.queue.put((priority, next(self.order), future, fn, args, kw))
        return future


_POOL: _PriorityPool | None = None


def _parallel(jobs, priority: int = 0):
    global _POOL
    if _POOL is None:
        _POOL = _PriorityPool(JOBS)
    futures = [_POOL.submit(priority, fn, *args, **kw) for fn, args, kw in jobs]
    return [f.result() for f in futures]


def _rank(task: str, setting: dict):
    """Sort key of a setting's seed-mean metrics: smaller is better; a diverged run is worst."""
    if setting["val_loss"] is None:
        return (math.inf, math.inf)
    if task == "digits":  # highest mean accuracy, ties broken by the lower mean loss
        return (-setting["val_accuracy"], setting["val_loss"])
    return (setting["val_loss_nats_per_char"],)


def _mean(values: list):
    """The mean to 4 decimals; None when a run diverged (no value)."""
    return None if None in values else round(statistics.mean(values), 4)


def _tuning_run(*args, **kw):
    """A tuning run; None when training diverged (a learning rate too high is a result too)."""
    try:
        return train_run(*args, **kw)
    except RuntimeError as err:
        if "training diverged" in str(err):
            return None
        raise


def _settings(runs: list, name: str) -> list:
    """Every (lr, weight decay) a model was run with: the mean over its seeds of each metric."""
    key, _ = metric_of(CONFIGS[name][0], holdout=True)
    groups: dict = {}
    for r in runs:
        if r["config"] == name:
            groups.setdefault((r["lr"], r["weight_decay"]), []).append(r)
    out = []
    for (lr, wd), rs in sorted(groups.items()):
        out.append({
            "lr": lr, "weight_decay": wd, "seeds": sorted(r["seed"] for r in rs),
            key: _mean([r[key] for r in rs]), "val_loss": _mean([r["val_loss"] for r in rs]),
        })  # fmt: skip
    return out


def _best(runs: list, name: str) -> dict:
    task = CONFIGS[name][0]
    return min(_settings(runs, name), key=lambda s: _rank(task, s))


def _on_edge(runs: list, name: str, param: str):
    """-1 or +1 when the best setting's ``param`` is the smallest or largest value run, else 0."""
    values = sorted({r[param] for r in runs if r["config"] == name})
    best = _best(runs, name)[param]
    return -1 if best == values[0] else (1 if best == values[-1] else 0)


def _extension(runs: list, name: str, param: str) -> float:
    """The next value of ``param`` beyond the edge where the model's best lies; a model whose best
    is inside gets one beyond the edge on the side of its better neighbour (same budget)."""
    task = CONFIGS[name][0]
    values = sorted({r[param] for r in runs if r["config"] == name})
    side = _on_edge(runs, name, param)
    if side == 0:
        best = _best(runs, name)
        table = {s[param]: s for s in _settings(runs, name) if all(
            s[k] == best[k] for k in ("lr", "weight_decay") if k != param)}  # fmt: skip
        i = values.index(best[param])
        lower, upper = table.get(values[i - 1]), table.get(values[i + 1])
        side = -1 if upper is None or (lower and _rank(task, lower) <= _rank(task, upper)) else 1
    return values[0] / EXTEND if side < 0 else values[-1] * EXTEND


def tune(names, reuse: bool, priority: int = 0) -> dict:
    """Coarse-then-fine search, the same number of runs for every model (see the docstring)."""
    runs: list = []

    def stage(label: str, plan: dict) -> None:
        jobs, keys = [], []
        for name, settings in plan.items():
            task, attention, extra = CONFIGS[name]
            for lr, wd in settings:
                for seed in TUNING_SEEDS:
                    out = RUNS / "tuning" / f"{name}-lr{lr:g}-wd{wd:g}-seed{seed}"
                    jobs.append((_tuning_run, (out, task, attention, extra, reuse),
                                 dict(lr=lr, weight_decay=wd, seed=seed, holdout=True)))  # fmt: skip
                    keys.append((name, lr, wd, seed))
        for (name, lr, wd, seed), r in zip(keys, _parallel(jobs, priority)):
            key, _ = metric_of(CONFIGS[name][0], holdout=True)
            run = {"config": name, "stage": label, "lr": lr, "weight_decay": wd, "seed": seed}
            if r is None:
                run.update({key: None, "val_loss": None, "diverged": True})
            else:
                run.update({key: r[key], "val_loss": round(r["history"][-1]["val_loss"], 4),
                            "seconds": r["seconds"]})  # fmt: skip
            runs.append(run)
            print(json.dumps(run), flush=True)

    def widen(param: str, fixed: dict) -> None:
        for round_ in range(1, MAX_EXTENSIONS + 1):
            if not any(_on_edge(runs, n, param) for n in names):
                return
            plan = {}
            for n in names:
                value = _extension(runs, n, param)
                other = fixed[n] if param == "lr" else _best(runs, n)["lr"]
                plan[n] = [(value, other) if param == "lr" else (other, value)]
            stage(f"{param} extension {round_}", plan)

    stage("1: lr", {n: [(lr, WD_START) for lr in LR_GRID[CONFIGS[n][0]]] for n in names})
    widen("lr", {n: WD_START for n in names})
    lr1 = {n: _best(runs, n)["lr"] for n in names}
    stage("2: weight decay", {n: [(lr1[n], wd) for wd in WD_GRID if wd != WD_START] for n in names})
    widen("weight_decay", {})
    chosen, grid = {}, {}
    for name in names:
        key, _ = metric_of(CONFIGS[name][0], holdout=True)
        best = _best(runs, name)
        chosen[name] = {"lr": best["lr"], "weight_decay": best["weight_decay"], key: best[key],
                        "val_loss": best["val_loss"], "seeds": best["seeds"]}  # fmt: skip
        grid[name] = {p: sorted({r[p] for r in runs if r["config"] == name})
                      for p in ("lr", "weight_decay")}  # fmt: skip
    settings = {name: _settings(runs, name) for name in names}
    return {"runs": runs, "chosen": chosen, "grid": grid, "settings": settings}


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


def _inside_one(name: str, seed: int, checkpoint: str) -> dict:
    """The white-box measurements of one seed's network (run in a worker process)."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from whitebox import analysis

    control = CONTROLS.get(name)  # the softmax baseline of the same seed
    control = RUNS / f"{control}-seed{seed}" / "model.npz" if control else None
    if control is not None and not control.exists():  # not trained here (e.g. --only): no arm
        control = None
    report = analysis.digits_report(ROOT / checkpoint, control)
    if name in PROFILED:
        report["profile"] = analysis.profile_report(ROOT / checkpoint)
    return {"seed": seed, **report}


def inside(data: dict) -> dict:
    """The white-box measurements of chapters 9 and 10 on every seed's trained digits network,
    two seeds side by side (one process each)."""
    from concurrent.futures import ProcessPoolExecutor

    from whitebox import analysis

    with ProcessPoolExecutor(max_workers=min(JOBS, 2)) as pool:
        futures = [
            pool.submit(_inside_one, data["name"], p["seed"], p["checkpoint"])
            for p in data["per_seed"]
        ]
        per_seed = [f.result() for f in futures]
    print(f"  inside {data['name']}: seeds {[r['seed'] for r in per_seed]}", flush=True)
    out = {"per_seed": per_seed, "summary": analysis.summarize(per_seed)}
    if data["name"] in PROFILED:
        out["summary"]["profile"] = analysis.summarize_profile(per_seed)
    return out


def write(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def merge_tuning(old: dict, fresh: dict, to_tune: list, where: dict) -> dict:
    """``results/tuning.json``: the models just tuned replace their old entries."""
    old = old or {"runs": [], "chosen": {}, "grid": {}, "settings": {}, "budget": {}}
    # entries of models not tuned now survive; anything else of the old file (the one shared
    # grid of the one-seed procedure, keyed "lr"/"weight_decay") does not
    keep = lambda d: {k: v for k, v in d.items() if k in CONFIGS and k not in to_tune}  # noqa: E731
    budget = keep(old.get("budget")) if isinstance(old.get("budget"), dict) else {}
    for task in sorted({CONFIGS[n][0] for n in to_tune}):
        counts = {
            sum(r["config"] == n for r in fresh["runs"]) for n in to_tune if CONFIGS[n][0] == task
        }
        budget[task] = (
            f"{counts.pop()} runs per model ({len(TUNING_SEEDS)} seeds per setting)"
            if len(counts) == 1
            else f"unequal: {sorted(counts)}"
        )
    return {
        "schema": SCHEMA,
        "seeds": list(TUNING_SEEDS),
        "procedure": TUNING_PROCEDURE,
        "budget": budget,
        "selection": "the mean over the seeds; digits: highest mean validation accuracy "
        "(ties: lower mean validation loss); text: lowest mean validation loss; validation = "
        "--holdout split carved out of the training data, never the test data",
        "grid": {**keep(old.get("grid", {})), **fresh["grid"]},
        "settings": {**keep(old.get("settings", {})), **fresh["settings"]},
        "runs": [r for r in old["runs"] if r["config"] not in to_tune] + fresh["runs"],
        "chosen": {**keep(old["chosen"]), **fresh["chosen"]},
        "machine": where,
    }


def tuning_is_stale(tuning, names) -> bool:
    """Whether ``tuning`` (results/tuning.json, or None) cannot serve ``names``: missing, made
    by another procedure or other seeds, or without a choice for one of them."""
    return (
        tuning is None
        or tuning.get("procedure") != TUNING_PROCEDURE
        or tuning.get("seeds") != list(TUNING_SEEDS)
        or bool(set(names) - set(tuning.get("chosen", {})))
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reuse", action="store_true", help="keep runs that finished before")
    ap.add_argument("--only", nargs="+", choices=sorted(CONFIGS), help="these configurations")
    ap.add_argument("--skip-inside", action="store_true", help="no white-box measurements")
    ap.add_argument("--retune", action="store_true",
                    help="tune again even with --reuse (keeping the tuning runs that finished)")  # fmt: skip
    ap.add_argument("--reuse-tuning", action="store_true",
                    help="keep results/tuning.json when it holds these configurations and was made "
                         "by this procedure and these seeds; the seeds are trained again")  # fmt: skip
    args = ap.parse_args(argv)
    global JOBS
    jobs = os.environ.get("JOBS", str(JOBS))
    if not jobs.isdigit() or int(jobs) < 1:
        ap.exit(2, f"JOBS: expected a positive integer (runs side by side), got {jobs!r}\n")
    JOBS = int(jobs)
    names = args.only or list(CONFIGS)
    names.sort(key=lambda n: n not in TUNED)  # the untuned ones borrow a tuned setting
    RESULTS.mkdir(exist_ok=True)
    where = machine()
    lock = threading.Lock()  # around tuning.json
    tasks: dict = {}
    for name in names:
        tasks.setdefault(CONFIGS[name][0], []).append(name)

    def pipeline(task: str, mine: list, priority: int) -> None:
        """Tune a task's models, then train and measure its configurations (the digits' jobs
        go first whenever both tasks wait for a worker)."""
        tuning_path = RESULTS / "tuning.json"
        with lock:
            tuning = json.loads(tuning_path.read_text()) if tuning_path.exists() else None
        to_tune = [n for n in mine if n in TUNED]
        stale = tuning_is_stale(tuning, to_tune) or args.retune
        if to_tune and (stale or not (args.reuse or args.reuse_tuning)):
            fresh = tune(to_tune, args.reuse, priority)
            with lock:
                old = json.loads(tuning_path.read_text()) if tuning_path.exists() else {}
                tuning = merge_tuning(old, fresh, to_tune, where)
                write(tuning_path, tuning)
        setting_of = {
            n: tuning["chosen"].get(n) or tuning["chosen"][f"{CONFIGS[n][0]}-tssa"] for n in mine
        }
        # the task's seeds in one pool, each configuration written as soon as its seeds are done
        # (the tuned ones first: the chapters compare them)
        pending = []
        for name in mine:
            _, attention, extra = CONFIGS[name]
            flags = {k: setting_of[name][k] for k in ("lr", "weight_decay")}
            futures = [
                _POOL.submit(priority, train_run, RUNS / f"{name}-seed{s}", task, attention, extra,
                             args.reuse, **flags, seed=s)
                for s in SEEDS
            ]  # fmt: skip
            pending.append((name, futures))
        waits = dict(pending)
        for name, futures in pending:
            # the control network of chapter 10's measurements must be trained first
            for f in futures + waits.get(CONTROLS.get(name), []):
                f.result()
            data = seeds(name, setting_of[name], reuse=True)  # the runs just made
            data["machine"] = {**where, "jobs": JOBS}  # runs side by side: the seconds' context
            if data["task"] == "digits" and not args.skip_inside:
                data["inside"] = inside(data)
            write(RESULTS / f"{name}.json", data)
            print(f"{name}: {data['metric']} {data['mean']} +- {data['std']} over seeds {data['seeds']}",
                  flush=True)  # fmt: skip

    global _POOL
    _POOL = _PriorityPool(JOBS)  # one pool for both pipelines, made before either starts
    with ThreadPoolExecutor(max_workers=len(tasks)) as each:
        done = [each.submit(pipeline, t, m, i) for i, (t, m) in enumerate(tasks.items())]
        for f in done:
            f.result()
    readme_tables.README.write_text(readme_tables.render(readme_tables.README.read_text()))
    print("wrote results/*.json and the table in README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
