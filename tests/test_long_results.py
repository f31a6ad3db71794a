"""scripts/long_results.py's tuning rule (chapter 13), on stand-in runs whose best rate is known.

The rule: for each task, both attentions on the same grid of learning rates; the best rate is
the highest mean validation accuracy over the tuning seeds, ties broken by the lower mean
validation loss; while either attention's best sits on an edge, that edge is extended one
step of the 1-3-10 ladder, at most twice a side. The runs here are not trained: ``fake`` returns an accuracy
that peaks at a chosen rate, so the answer is known.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lr_script():
    sys.path.insert(0, str(ROOT / "scripts"))  # it imports results.machine from its folder
    spec = importlib.util.spec_from_file_location("long_results", ROOT / "scripts" / "long_results.py")  # fmt: skip
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def fake(peaks, calls):
    """A stand-in for the process pool: accuracy falls with |log(lr / peak)|, per attention."""

    def map_runs(jobs):
        calls.append(jobs)
        out = []
        for j in jobs:
            d = abs(math.log(j["lr"] / peaks[j["attention"]]))
            out.append(dict(j, value=round(max(0.1, 0.9 - 0.1 * d), 4), loss=1 + d))
        return out

    return map_runs


@pytest.mark.parametrize(
    "lr, down, up", [(1e-3, 3e-4, 3e-3), (3e-3, 1e-3, 1e-2), (1e-2, 3e-3, 3e-2), (0.3, 0.1, 1.0)]
)
def test_the_ladder_steps_one_three_ten(lr_script, lr, down, up):
    assert lr_script.ladder(lr, up=False) == down and lr_script.ladder(lr, up=True) == up


def test_choose_takes_the_best_mean_and_breaks_ties_by_the_loss(lr_script):
    grid = [1e-3, 3e-3, 1e-2]
    runs = [  # two seeds a rate; 3e-3 and 1e-2 tie on accuracy, 1e-2 has the lower loss
        dict(lr=1e-3, value=0.5, loss=1.0), dict(lr=1e-3, value=0.7, loss=1.0),
        dict(lr=3e-3, value=0.9, loss=0.6), dict(lr=3e-3, value=0.7, loss=0.6),
        dict(lr=1e-2, value=0.8, loss=0.5), dict(lr=1e-2, value=0.8, loss=0.4),
    ]  # fmt: skip
    c = lr_script.choose(grid, runs)
    assert c["lr"] == 1e-2 and not c["inside"]
    assert c["val_accuracy"] == {"0.001": 0.6, "0.003": 0.8, "0.01": 0.8}
    assert c["val_loss"]["0.01"] == pytest.approx(0.45)
    runs[-1]["loss"] = 0.8  # now 3e-3 has the lower mean loss
    assert lr_script.choose(grid, runs)["lr"] == 3e-3


@pytest.mark.parametrize(
    "peaks, grid, chosen, extended",
    [
        # both peaks inside the starting grid: no extension
        ({"tssa": 3e-3, "softmax": 1e-2}, [1e-3, 3e-3, 1e-2, 3e-2], {"tssa": 3e-3, "softmax": 1e-2},
         {"low": 0, "high": 0}),
        # softmax peaks below the grid: the low edge is extended (twice) for both attentions
        ({"tssa": 1e-2, "softmax": 3e-4}, [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2],
         {"tssa": 1e-2, "softmax": 3e-4}, {"low": 2, "high": 0}),
        # ToST peaks far above: two extensions, then the edge is kept and said (inside False)
        ({"tssa": 1.0, "softmax": 3e-3}, [1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3],
         {"tssa": 0.3, "softmax": 3e-3}, {"low": 0, "high": 2}),
    ],
)  # fmt: skip
def test_tune_extends_an_edge_that_wins_for_both_attentions(lr_script, peaks, grid, chosen, extended):  # fmt: skip
    calls = []
    out = lr_script.tune("majority", fake(peaks, calls))
    assert out["grid"] == pytest.approx(grid) and out["extended"] == extended
    for a, lr in chosen.items():
        assert out["chosen"][a]["lr"] == pytest.approx(lr)
        assert out["chosen"][a]["inside"] == (min(grid) < lr < max(grid))
    # every rate of the final grid ran once per attention and seed, none twice
    runs = [(j["attention"], j["lr"], j["seed"]) for jobs in calls for j in jobs]
    assert len(runs) == len(set(runs)) == len(grid) * 2 * len(lr_script.TUNE_SEEDS)
    assert all(j["split"] == "val" and j["n"] == lr_script.TUNE_LEN["majority"]
               for jobs in calls for j in jobs)  # fmt: skip
    assert out["tune_len"] == lr_script.TUNE_LEN["majority"]


def test_the_tuning_file_chose_inside_its_grid_for_every_task_and_attention(lr_script):
    import json

    tuning = json.loads((ROOT / "results" / "long-tuning.json").read_text())
    assert set(tuning["tasks"]) == set(lr_script.TASKS)
    for task, rec in tuning["tasks"].items():
        assert rec["tune_len"] == lr_script.TUNE_LEN[task]
        for a in lr_script.ATTENTIONS:
            c = rec["chosen"][a]
            assert c["lr"] in rec["grid"], (task, a)
            assert min(rec["grid"]) < c["lr"] < max(rec["grid"]), (task, a, c["lr"], rec["grid"])
            # the choice follows the recorded runs by the stated rule
            runs = [r for r in rec["runs"] if r["attention"] == a]
            assert lr_script.choose(rec["grid"], runs)["lr"] == c["lr"]
            assert {r["seed"] for r in runs} == set(tuning["seeds"]) and len(tuning["seeds"]) >= 2
