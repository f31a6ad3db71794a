"""Checks moved out of chapter 11 (notebooks/11_language_model.ipynb), and its helpers tested.

The chapter keeps the checks that teach (the mechanism, over the seeds); what only pins one
implementation to another lives here, where it can fail a build. The chapter's tuning table must
read ``results/tuning.json`` in both of its forms: one grid shared by every model (the first
tuning, one seed) and one grid per model (the coarse-then-fine search over several seeds).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest

import whitebox.mechanism as mech
from whitebox.train import CharCodec, load_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"


def _module(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def helpers():
    return _module("chapter_helpers", ROOT / "notebooks" / "helpers.py")


@pytest.fixture(scope="module")
def script():
    return _module("results_script", ROOT / "scripts" / "results.py")


@pytest.fixture(scope="module")
def text_ids():
    text = load_text()
    codec = CharCodec(sorted(set(text)))
    return codec.encode(text), len(codec.chars)


# ---------------------------------------------------------------- the reference losses


def _dense_addone_ngram(train, test, n, V):
    """The chapter's first implementation: a dense V^n table of counts, every cell started at 1;
    the mean cross-entropy of every n-window of ``test``."""
    counts = np.ones((V,) * n)
    np.add.at(counts, tuple(train[i : len(train) - n + 1 + i] for i in range(n)), 1)
    probs = counts / counts.sum(axis=-1, keepdims=True)
    return float(-np.log(probs[tuple(test[i : len(test) - n + 1 + i] for i in range(n))]).mean())


@pytest.mark.parametrize("n", [1, 2, 3])
def test_ch11_addone_references_against_dense_counts(text_ids, n):
    # section 1's unigram, bigram and trigram: the library's sparse counts against a dense table
    ids, V = text_ids
    split = int(0.9 * len(ids))
    got = mech.ngram_loss(ids[:split], ids[split:], n, 1.0, V)
    assert got == pytest.approx(_dense_addone_ngram(ids[:split], ids[split:], n, V), rel=1e-10)


def test_ch11_ngram_references_are_those_of_the_results_file(text_ids):
    # section 1 recomputes the n-gram references that scripts/mechanism.py stored
    path = RESULTS / "text-mechanism.json"
    if not path.exists():
        pytest.skip("results/text-mechanism.json is written by scripts/mechanism.py")
    stored = json.loads(path.read_text())["ngram_text"]
    assert mech.ngram_references(text_ids[0], orders=(2, 3, 4)) == stored


# ---------------------------------------------------------------- the tuning table, both forms


def _runs(rng, names, lrs, wds, seeds, full):
    """Tuning runs with random losses: every (lr, wd) when ``full``, else the coarse-then-fine
    pattern (every lr at wds[1], every wd at lrs[1])."""
    runs = []
    for name in names:
        settings = [(lr, wd) for lr in lrs for wd in wds]
        if not full:
            settings = [(lr, wds[1]) for lr in lrs] + [(lrs[1], wd) for wd in wds if wd != wds[1]]
        for lr, wd in settings:
            for seed in seeds:
                loss = round(float(rng.uniform(1.0, 3.0)), 4)
                run = {"config": name, "lr": lr, "weight_decay": wd,
                       "val_loss_nats_per_char": loss, "val_loss": loss}  # fmt: skip
                if seeds != [None]:
                    run["seed"] = seed
                runs.append(run)
    return runs


def _first_form(rng):
    lrs, wds = [0.002, 0.004, 0.01], [0.05, 0.1]
    runs = _runs(rng, ["text-tssa", "text-softmax"], lrs, wds, [None], full=True)
    chosen = {}
    for name in ("text-tssa", "text-softmax"):
        best = min((r for r in runs if r["config"] == name), key=lambda r: r["val_loss"])
        chosen[name] = {"lr": best["lr"], "weight_decay": best["weight_decay"]}
    return {"grid": {"lr": lrs, "weight_decay": wds}, "seed": 0, "runs": runs, "chosen": chosen}


def _per_model_form(rng, script):
    grids = {"text-tssa": ([0.005, 0.01, 0.02, 0.04], [0.02, 0.05, 0.1]),
             "text-softmax": ([0.0025, 0.005, 0.01, 0.02, 0.04], [0.02, 0.05, 0.1])}  # fmt: skip
    runs = []
    for name, (lrs, wds) in grids.items():
        runs += _runs(rng, [name], lrs, wds, [0, 1], full=False)
    chosen = {n: {k: script._best(runs, n)[k] for k in ("lr", "weight_decay")} for n in grids}
    grid = {n: {"lr": lrs, "weight_decay": wds} for n, (lrs, wds) in grids.items()}
    return {"grid": grid, "seeds": [0, 1], "runs": runs, "chosen": chosen}


def test_ch11_tuning_table_of_the_first_form(helpers):
    tuning = _first_form(np.random.default_rng(0))
    assert helpers.ch11_tuning_seeds(tuning) == [0]
    for name in ("text-tssa", "text-softmax"):
        assert helpers.ch11_grid(tuning, name) == ([0.002, 0.004, 0.01], [0.05, 0.1])
        table = helpers.ch11_tuning_table(tuning, name)
        runs = {(r["lr"], r["weight_decay"]): r["val_loss"] for r in tuning["runs"]
                if r["config"] == name}  # fmt: skip
        assert table == runs  # one seed: the mean is the run itself
        chosen = tuning["chosen"][name]
        assert min(table, key=table.get) == (chosen["lr"], chosen["weight_decay"])


def test_ch11_tuning_table_of_the_per_model_form_is_the_scripts_mean(helpers, script):
    tuning = _per_model_form(np.random.default_rng(1), script)
    assert helpers.ch11_tuning_seeds(tuning) == [0, 1]
    for name in ("text-tssa", "text-softmax"):
        lrs, wds = helpers.ch11_grid(tuning, name)
        assert (lrs, wds) == (sorted(tuning["grid"][name]["lr"]), [0.02, 0.05, 0.1])
        table = helpers.ch11_tuning_table(tuning, name)
        expected = script._settings(tuning["runs"], name)  # the script's means over the seeds
        assert set(table) == {(s["lr"], s["weight_decay"]) for s in expected}
        for s in expected:
            assert s["seeds"] == [0, 1]
            assert table[s["lr"], s["weight_decay"]] == pytest.approx(s["val_loss"], abs=6e-5)
        chosen = tuning["chosen"][name]
        assert min(table, key=table.get) == (chosen["lr"], chosen["weight_decay"])


def test_ch11_tuning_table_marks_divergence_and_runs_not_made(helpers, script):
    tuning = _per_model_form(np.random.default_rng(2), script)
    tuning["runs"][0].update(val_loss=None, val_loss_nats_per_char=None, diverged=True)
    first = tuning["runs"][0]
    table = helpers.ch11_tuning_table(tuning, first["config"])
    assert table[first["lr"], first["weight_decay"]] is None  # one seed diverged: no mean
    out = io.StringIO()
    tables = {n: helpers.ch11_tuning_table(tuning, f"text-{n}") for n in ("tssa", "softmax")}
    with contextlib.redirect_stdout(out):
        helpers.ch11_print_tuning(tuning, tables)
    text = out.getvalue()
    assert "diverged" in text
    assert " - " in text or "-  " in text  # coarse-then-fine: part of the grid was not run
    assert text.count("*") == 2  # one chosen setting per model
    for name in ("text-tssa", "text-softmax"):
        lrs, _ = helpers.ch11_grid(tuning, name)
        lr = tuning["chosen"][name]["lr"]
        assert helpers.ch11_edge(lr, lrs) == (
            "strictly inside" if lrs[0] < lr < lrs[-1] else "ON THE EDGE of"
        )


def test_ch11_tuning_helpers_read_the_results_file(helpers):
    # whichever form results/tuning.json has now, every chosen setting is a setting that was run
    path = RESULTS / "tuning.json"
    if not path.exists():
        pytest.skip("results/tuning.json is written by make results")
    tuning = json.loads(path.read_text())
    for name in ("text-tssa", "text-softmax"):
        lrs, wds = helpers.ch11_grid(tuning, name)
        table = helpers.ch11_tuning_table(tuning, name)
        chosen = tuning["chosen"][name]
        assert (chosen["lr"], chosen["weight_decay"]) in table
        assert {lr for lr, _ in table} == set(lrs) and {wd for _, wd in table} == set(wds)


def test_ch11_span_and_signed(helpers):
    assert helpers.ch11_span([1.0, 2.0, 4.5]) == "2.500 (1.000–4.500)"
    got = helpers.ch11_signed({"tssa": [0.1, -0.25], "softmax": [0.0]})
    assert got == "ToST +0.100 -0.250 | GPT +0.000"
