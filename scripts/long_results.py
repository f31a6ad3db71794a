"""Long sequences (chapter 13): ToST against softmax attention, same code, same budget.

Three tasks from ``whitebox.data``, no download: ListOps (the Long Range Arena's rules, scaled
down), a count comparison (``make_majority``: a global statistic) and an associative recall
(``make_recall``: one token chosen by the query). For each task and each attention:

1. tuning: a learning rate per task and attention, on a validation set of that task at
   TUNE_LEN[task] tokens, by the mean over TUNE_SEEDS of the validation accuracy (ties broken
   by the mean validation loss); the grid starts at LR_GRID and is extended one step of the
   1-3-10 ladder beyond an edge while the best rate of either attention sits on it (at most
   MAX_EXTEND times a side); both attentions get the same grid, steps and batch;
2. training at TRAIN_LENS tokens (ListOps: its trees, padded to 512) over SEEDS, test accuracy
   on a fixed test set;
3. ToST alone at LONG_LEN tokens (count comparison and recall), where softmax attention's score
   matrix (B H n^2 float32) exceeds SCORE_BUDGET;
4. the cost of one training step against the length: seconds and peak memory (tracemalloc,
   which sees NumPy's allocations), softmax while its score matrix fits SCORE_BUDGET.

Writes results/long-<task>-<attention>-<n>.json (the schema of the other results files plus
``seq_len``), results/long-tuning.json and results/long-scaling.json. ``--jobs`` runs at a time
(default 2), one BLAS thread each. Run: ``python scripts/long_results.py`` (``make
results-long``); ``--skip-cost`` keeps results/long-scaling.json (time it on an idle machine).
On 2 cores (05 Dec 2026): tuning 10 minutes, training 27 (softmax attention at 2,048 tokens,
140 s a run, is half of it), the cost sweep about 1.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import multiprocessing as mp  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from whitebox.data import (  # noqa: E402
    LISTOPS_VOCAB,
    encode_listops,
    make_listops,
    make_majority,
    make_recall,
)
from whitebox.nn import cross_entropy  # noqa: E402
from whitebox.optim import AdamW, clip_grad_norm, cosine_lr  # noqa: E402
from whitebox.sequence import SequenceClassifier  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import machine  # noqa: E402  (the same record as the other results files)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"

MODEL = dict(dim=32, depth=1, num_heads=2, mlp_ratio=2)  # tiny: 2 shared CPU cores
BATCH, STEPS, WARMUP, CLIP, WEIGHT_DECAY = 4, 300, 30, 1.0, 0.05
LR_GRID = (1e-3, 3e-3, 1e-2, 3e-2)  #: the starting grid of every task
MAX_EXTEND = 2  #: an edge that wins is extended along the 1-3-10 ladder, at most this often
TUNE_SEEDS, SEEDS = (0, 1), (0, 1, 2, 3, 4)
TRAIN_LENS, LONG_LEN = (1024, 2048), 16384  #: both attentions at TRAIN_LENS, ToST at LONG_LEN
TUNE_LEN = {"listops": 512, "majority": 1024, "recall": 1024}  #: validation length per task
LONG_SEEDS = SEEDS  # five seeds at 16,384 too (about 90 s a run on an idle core)
N_TEST, N_VAL = 400, 200
SCORE_BUDGET = 1 << 30  #: bytes: softmax attention's score matrix B H n^2 float32 must fit
SCALING_BATCH = 4
SCALING_LENGTHS = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
# ListOps scaled down from LRA's 500 < length < 2000 (96,000 training trees) to
LISTOPS = dict(min_length=100, max_length=512, n_train=2000)
RECALL = dict(num_keys=64, num_values=8)  # more keys than the model has dimensions (32)
MAJORITY = dict(num_symbols=8)

TASKS = {
    "listops": dict(vocab=len(LISTOPS_VOCAB), classes=10, pool="mean"),
    "majority": dict(vocab=MAJORITY["num_symbols"], classes=2, pool="last"),
    "recall": dict(
        vocab=RECALL["num_keys"] * (RECALL["num_values"] + 1),
        classes=RECALL["num_values"],
        pool="last",
    ),
}
ATTENTIONS = ("tssa", "softmax")
MODEL_NAME = {"tssa": "tost", "softmax": "transformer"}
_LISTOPS = {}  # filled in the parent before the workers fork


# ---- data ----------------------------------------------------------------------------------------


def listops_pool():
    """ListOps trees, 100 < length < 512, tokenized and padded to 512: train / val / test."""
    n = LISTOPS["n_train"] + N_VAL + N_TEST
    src, lab = make_listops(
        n, min_length=LISTOPS["min_length"], max_length=LISTOPS["max_length"], seed=0
    )
    x, y = encode_listops(src, LISTOPS["max_length"]), np.array(lab, dtype=np.int64)
    a, b = LISTOPS["n_train"], LISTOPS["n_train"] + N_VAL
    return {"train": (x[:a], y[:a]), "val": (x[a:b], y[a:b]), "test": (x[b:], y[b:])}


def batch(task, n, split, seed, size):
    """``size`` examples of ``task`` at ``n`` tokens; ``split`` picks disjoint seed ranges."""
    offset = {"train": 0, "val": 10**6, "test": 2 * 10**6}[split]
    if task == "majority":
        return make_majority(size, n, seed=offset + seed, **MAJORITY)
    if task == "recall":
        return make_recall(size, n, seed=offset + seed, **RECALL)
    x, y = _LISTOPS[split]
    if split != "train":
        return x, y
    idx = np.random.default_rng(offset + seed).integers(len(x), size=size)
    return x[idx], y[idx]


# ---- one run ---------------------------------------------------------------------------------------


def build(task, attention, n, seed):
    t = TASKS[task]
    return SequenceClassifier(
        t["vocab"], t["classes"], max(n, LONG_LEN), attention=attention, pool=t["pool"],
        seed=seed, **MODEL,
    )  # fmt: skip


def train_step(model, opt, x, y, lr):
    loss, dlogits = cross_entropy(model.forward(x), y)
    model.backward(dlogits)
    clip_grad_norm(model, CLIP)
    opt.step(lr)
    return loss


def evaluate(model, x, y, chunk):
    """(accuracy, mean cross-entropy) of ``model`` on ``x, y``, ``chunk`` sequences at a time."""
    hits, loss = 0, 0.0
    for i in range(0, len(x), chunk):
        logits = model.forward(x[i : i + chunk])
        hits += int((logits.argmax(1) == y[i : i + chunk]).sum())
        loss += cross_entropy(logits, y[i : i + chunk])[0] * len(logits)
    return hits / len(x), loss / len(x)


def run(job):
    """Train one model; return its accuracy on ``job['split']`` and its timings."""
    task, attention, n, seed, lr, split = (
        job[k] for k in ("task", "attention", "n", "seed", "lr", "split")
    )
    model = build(task, attention, n, seed)
    opt = AdamW(model, lr, weight_decay=WEIGHT_DECAY)
    t0 = time.perf_counter()
    losses = []
    for step in range(STEPS):
        x, y = batch(task, n, "train", seed * 100_003 + step, BATCH)
        losses.append(train_step(model, opt, x, y, cosine_lr(step, STEPS, WARMUP, lr)))
    seconds = time.perf_counter() - t0
    size = N_VAL if split == "val" else N_TEST
    x, y = batch(task, n, split, 0, size)
    acc, loss = evaluate(model, x, y, chunk=max(1, 8192 // n * 4))
    return dict(
        job, value=round(acc, 4), loss=round(float(loss), 4), seconds=round(seconds, 1),
        seconds_per_step=round(seconds / STEPS, 4), params=model.num_parameters(),
        final_train_loss=round(float(np.mean(losses[-50:])), 4),
    )  # fmt: skip


# ---- tuning ----------------------------------------------------------------------------------------


def tuning_config() -> dict:
    """What a tuning record depends on (a stored one is reused only if all of it agrees)."""
    return {"grid_start": list(LR_GRID), "ladder": "1-3-10", "max_extend": MAX_EXTEND,
            "seeds": list(TUNE_SEEDS), "tune_len": dict(TUNE_LEN), "steps": STEPS,
            "batch": BATCH, "weight_decay": WEIGHT_DECAY,
            "rule": "best mean validation accuracy over the seeds; ties: lower mean validation loss"}  # fmt: skip


def choose(grid, runs) -> dict:
    """The best rate of ``grid`` for one attention: highest mean accuracy over the seeds, ties
    broken by the lower mean loss. ``runs``: dicts with ``lr``, ``value`` (accuracy), ``loss``.
    Returns ``lr``, ``inside`` (strictly inside the grid) and the means per rate."""
    acc = {lr: statistics.mean(r["value"] for r in runs if r["lr"] == lr) for lr in grid}
    loss = {lr: statistics.mean(r["loss"] for r in runs if r["lr"] == lr) for lr in grid}
    best = max(grid, key=lambda lr: (acc[lr], -loss[lr]))
    return dict(
        lr=best, inside=min(grid) < best < max(grid),
        val_accuracy={str(k): round(v, 4) for k, v in acc.items()},
        val_loss={str(k): round(v, 4) for k, v in loss.items()},
    )  # fmt: skip


def ladder(lr, up):
    """The next rate of the 1-3-10 ladder above (``up``) or below ``lr``: 1e-3 -> 3e-3 -> 1e-2."""
    e = math.floor(math.log10(lr) + 1e-9)
    one = abs(lr / 10**e - 1) < 1e-6  # a 1 (else a 3) times a power of ten
    if up:
        return float(f"{3 * 10**e:.0e}") if one else float(f"{10 ** (e + 1):.0e}")
    return float(f"{3 * 10 ** (e - 1):.0e}") if one else float(f"{10**e:.0e}")


def tune(task, map_runs) -> dict:
    """Both attentions' learning rates for ``task``: the same grid for both, extended one step
    of the 1-3-10 ladder beyond an edge while either's best sits on it, at most MAX_EXTEND
    times a side.
    ``map_runs(jobs) -> results`` runs the jobs (a process pool's map, or a stand-in)."""
    grid, done, extended = sorted(LR_GRID), [], {"low": 0, "high": 0}
    while True:
        have = {(r["attention"], r["lr"], r["seed"]) for r in done}
        jobs = [
            dict(task=task, attention=a, n=TUNE_LEN[task], seed=s, lr=lr, split="val")
            for a in ATTENTIONS for lr in grid for s in TUNE_SEEDS
            if (a, lr, s) not in have
        ]  # fmt: skip
        done += map_runs(jobs)
        chosen = {a: choose(grid, [r for r in done if r["attention"] == a]) for a in ATTENTIONS}
        lows = [c for c in chosen.values() if c["lr"] == grid[0]]
        highs = [c for c in chosen.values() if c["lr"] == grid[-1]]
        if lows and extended["low"] < MAX_EXTEND:
            grid, extended["low"] = [ladder(grid[0], up=False)] + grid, extended["low"] + 1
        elif highs and extended["high"] < MAX_EXTEND:
            grid, extended["high"] = grid + [ladder(grid[-1], up=True)], extended["high"] + 1
        else:
            break
    return {
        "tune_len": TUNE_LEN[task], "grid": grid, "extended": extended, "chosen": chosen,
        "runs": [{k: r[k] for k in ("attention", "lr", "seed", "value", "loss")} for r in done],
    }  # fmt: skip


# ---- cost against length ---------------------------------------------------------------------


def step_cost(attention, n):
    """Median seconds of 3 training steps and the tracemalloc peak of one more (bytes)."""
    model = build("majority", attention, n, 0)
    opt = AdamW(model, 1e-3, weight_decay=WEIGHT_DECAY)
    x, y = make_majority(SCALING_BATCH, n, seed=0)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        train_step(model, opt, x, y, 1e-3)
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    train_step(model, opt, x, y, 1e-3)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return statistics.median(times), peak


def score_bytes(n, batch=SCALING_BATCH):
    return batch * MODEL["num_heads"] * n * n * 4


def scaling() -> dict:
    out = {"batch": SCALING_BATCH, "score_budget_bytes": SCORE_BUDGET, "attention": {}}
    for attention in ("tssa", "softmax"):
        rows = []
        for n in SCALING_LENGTHS:
            if attention == "softmax" and score_bytes(n) > SCORE_BUDGET:
                break
            sec, peak = step_cost(attention, n)
            rows.append(dict(seq_len=n, seconds_per_step=round(sec, 4), peak_bytes=int(peak),
                             score_matrix_bytes=score_bytes(n)))  # fmt: skip
            print(f"cost {attention:8s} n={n:6d}: {sec:.3f} s/step, peak {peak / 2**20:.0f} MiB",
                  flush=True)  # fmt: skip
        ns = np.log([r["seq_len"] for r in rows])
        fit = rows[2:] if len(rows) > 3 else rows  # the slope where the n-terms dominate
        ln = np.log([r["seq_len"] for r in fit])
        out["attention"][attention] = dict(
            rows=rows,
            time_exponent=round(float(np.polyfit(ln, np.log([r["seconds_per_step"] for r in fit]), 1)[0]), 3),
            memory_exponent=round(float(np.polyfit(ln, np.log([r["peak_bytes"] for r in fit]), 1)[0]), 3),
            fit_lengths=[r["seq_len"] for r in fit],
        )  # fmt: skip
        del ns
    return out


# ---- bookkeeping ------------------------------------------------------------------------------------


def summary(values):
    m = statistics.mean(values)
    s = statistics.stdev(values) if len(values) > 1 else 0.0
    return dict(mean=round(m, 4), std=round(s, 4), min=min(values), max=max(values))


def write(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def majority_share(task, n) -> dict:
    """The test accuracy of always answering the test set's most frequent label."""
    _, y = batch(task, n, "test", 0, N_TEST)
    return {"majority_class_share": round(float(np.bincount(y).max() / len(y)), 4)}


def result_file(task, attention, n, setting, rows, where):
    rows = sorted(rows, key=lambda r: r["seed"])
    values = [r["value"] for r in rows]
    return {
        "schema": 1,
        "name": f"long-{task}-{attention}-{n}",
        "task": task,
        "attention": attention,
        "model": MODEL_NAME[attention],
        "metric": "test_accuracy",
        "better": "max",
        "seq_len": n,
        "setting": setting,
        "train_flags": [],
        "seeds": [r["seed"] for r in rows],
        "values": values,
        **summary(values),
        "std_note": "sample standard deviation over the seeds (n - 1 in the denominator)",
        "chance": round(1 / TASKS[task]["classes"], 4),
        **majority_share(task, n),
        "params": rows[0]["params"],
        "steps": STEPS,
        "batch": BATCH,
        "architecture": dict(MODEL, pool=TASKS[task]["pool"], positions="sinusoidal"),
        "mean_seconds": round(statistics.mean(r["seconds"] for r in rows), 1),
        "mean_seconds_per_step": round(statistics.mean(r["seconds_per_step"] for r in rows), 4),
        "per_seed": [
            {
                k: r[k]
                for k in (
                    "seed",
                    "value",
                    "loss",
                    "params",
                    "seconds",
                    "seconds_per_step",
                    "final_train_loss",
                )
            }  # fmt: skip
            for r in rows
        ],
        "machine": where,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2)")
    ap.add_argument(
        "--reuse-tuning",
        action="store_true",
        help="keep results/long-tuning.json if it was made with this grid and budget",
    )
    ap.add_argument("--skip-cost", action="store_true",
                    help="keep results/long-scaling.json (no time and memory sweep)")  # fmt: skip
    args = ap.parse_args(argv)
    if args.jobs < 1:
        print("long_results.py: --jobs: expected an integer >= 1", file=sys.stderr)
        return 2
    t_start = time.time()
    RESULTS.mkdir(exist_ok=True)
    where = machine()
    _LISTOPS.update(listops_pool())
    print(f"ListOps data: {time.time() - t_start:.0f} s", flush=True)
    pairs = [(t, a) for t in TASKS for a in ATTENTIONS]
    old = RESULTS / "long-tuning.json"
    old = json.loads(old.read_text()) if args.reuse_tuning and old.exists() else {}
    reuse = bool(old) and all(old.get(k) == v for k, v in tuning_config().items())
    with mp.get_context("fork").Pool(args.jobs) as pool:
        # 1. a learning rate per task and attention, on validation
        tuning = dict(tuning_config(), tasks={})
        for task in TASKS:
            if reuse:
                tuning["tasks"][task] = old["tasks"][task]
                print(f"tuning {task}: reused results/long-tuning.json", flush=True)
                continue
            tuning["tasks"][task] = tune(task, lambda jobs: pool.map(run, jobs, chunksize=1))
            for a, c in tuning["tasks"][task]["chosen"].items():
                print(f"tuning {task} {a}: {c['val_accuracy']} -> {c['lr']}", flush=True)
        write(RESULTS / "long-tuning.json", tuning)
        print(f"tuning done: {time.time() - t_start:.0f} s", flush=True)
        lr = {(t, a): tuning["tasks"][t]["chosen"][a]["lr"] for t, a in pairs}
        # 2. both attentions at TRAIN_LENS over SEEDS; 3. ToST alone at LONG_LEN
        jobs = [
            dict(task=t, attention=a, n=n, seed=s, lr=lr[t, a], split="test")
            for t, a in pairs
            for n in (TRAIN_LENS if t != "listops" else (LISTOPS["max_length"],))
            for s in SEEDS
        ]
        jobs = [
            dict(task=t, attention="tssa", n=LONG_LEN, seed=s, lr=lr[t, "tssa"], split="test")
            for t in ("majority", "recall")
            for s in SEEDS
        ] + sorted(jobs, key=lambda j: -j["n"])  # the longest first
        done = []
        for r in pool.imap_unordered(run, jobs, chunksize=1):
            done.append(r)
            print(f"  {len(done)}/{len(jobs)} {r['task']} {r['attention']} n={r['n']} "
                  f"seed {r['seed']}: {r['value']} ({r['seconds']} s)", flush=True)  # fmt: skip
    groups = {}
    for r in done:
        groups.setdefault((r["task"], r["attention"], r["n"]), []).append(r)
    for (t, a, n), rows in groups.items():
        setting = {"lr": rows[0]["lr"], "weight_decay": WEIGHT_DECAY}
        write(RESULTS / f"long-{t}-{a}-{n}.json", result_file(t, a, n, setting, rows, where))
        print(f"{t:9s} {a:8s} n={n:6d}: {[r['value'] for r in sorted(rows, key=lambda r: r['seed'])]}",
              flush=True)  # fmt: skip
    made = {f"long-{t}-{a}-{n}.json" for t, a, n in groups}
    for stale in RESULTS.glob("long-*-*-*.json"):
        if stale.name not in made:  # a length or task this script no longer runs
            stale.unlink()
            print(f"removed {stale.name} (not made by this run)", flush=True)
    print(f"training done: {time.time() - t_start:.0f} s", flush=True)
    # 4. cost against length, one process (nothing else running)
    if args.skip_cost:
        return 0
    cost = scaling()
    cost["machine"] = where
    write(RESULTS / "long-scaling.json", cost)
    total = time.time() - t_start
    print(f"long_results.py: {total / 60:.1f} minutes", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
