"""Checks moved out of chapter 9 (training on digits), and the chapter's helpers.

The chapter keeps the checks that teach (its claims over the five seeds); the ones that pin the
library or the results files to a formula live here, where they can fail a build. The chapter
reads ``results/tuning.json`` in both of its formats (one grid for all models, one seed; or a
grid per model, several seeds), through ``helpers.ch9_tuning``: tested on both here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import whitebox as wb
from whitebox.analysis import membership_stats
from whitebox.train import DigitsTask, load_digits_split, make_config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "notebooks"))
import helpers  # noqa: E402

# ---------------------------------------------------------------- the two formats of tuning.json

OLD = {  # one grid shared by all models, one seed: the runs are the settings
    "grid": {"lr": [0.002, 0.004, 0.01], "weight_decay": [0.05, 0.1]},
    "seed": 0,
    "runs": [
        {"config": "m", "lr": lr, "weight_decay": wd, "val_accuracy": acc, "val_loss": 0.2}
        for (lr, wd), acc in {
            (0.002, 0.05): 0.97,
            (0.002, 0.1): 0.96,
            (0.004, 0.05): 0.99,
            (0.004, 0.1): 0.95,
            (0.01, 0.05): 0.94,
            (0.01, 0.1): 0.93,
        }.items()
    ],  # fmt: skip
    "chosen": {"m": {"lr": 0.004, "weight_decay": 0.05, "val_accuracy": 0.99}},
}
NEW = {  # a grid per model (not a full product), the mean over two seeds per setting
    "seeds": [0, 1],
    "budget": {"digits": "7 runs per model (2 seeds per setting)"},
    "grid": {
        "m": {"lr": [0.0005, 0.001, 0.002, 0.004], "weight_decay": [0.02, 0.05, 0.1]},
        "n": {"lr": [0.001, 0.002, 0.004, 0.008], "weight_decay": [0.02, 0.05, 0.1]},
    },
    "settings": {
        "m": [
            {"lr": lr, "weight_decay": wd, "seeds": [0, 1], "val_accuracy": acc, "val_loss": 0.2}
            for lr, wd, acc in [
                (0.0005, 0.05, 0.95),
                (0.001, 0.05, 0.98),
                (0.002, 0.05, 0.97),
                (0.004, 0.05, 0.96),
                (0.001, 0.02, 0.97),
                (0.001, 0.1, 0.975),
            ]
        ],  # fmt: skip
        "n": [
            {"lr": lr, "weight_decay": wd, "seeds": [0, 1], "val_accuracy": acc, "val_loss": 0.2}
            for lr, wd, acc in [
                (0.001, 0.05, 0.95),
                (0.002, 0.05, 0.96),
                (0.004, 0.05, 0.97),
                (0.008, 0.05, 0.98),
                (0.008, 0.02, 0.97),
                (0.008, 0.1, 0.99),
            ]
        ],  # fmt: skip
    },
    "chosen": {
        "m": {"lr": 0.001, "weight_decay": 0.05, "val_accuracy": 0.98},
        "n": {"lr": 0.008, "weight_decay": 0.1, "val_accuracy": 0.99},
    },
}


def test_ch9_tuning_reads_the_old_format():
    v = helpers.ch9_tuning(OLD, "m")
    assert v["grid"] == OLD["grid"]
    assert v["seeds"] == [0]
    assert len(v["settings"]) == 6 and all(s["seeds"] == [0] for s in v["settings"])
    assert v["edge"] == {"lr": "inside", "weight_decay": "smallest"}


def test_ch9_tuning_reads_the_per_model_format():
    m, n = helpers.ch9_tuning(NEW, "m"), helpers.ch9_tuning(NEW, "n")
    assert m["grid"] == NEW["grid"]["m"] and n["grid"] == NEW["grid"]["n"]
    assert m["seeds"] == [0, 1]
    assert m["settings"] is NEW["settings"]["m"]
    assert m["edge"] == {"lr": "inside", "weight_decay": "inside"}
    assert n["edge"] == {"lr": "largest", "weight_decay": "largest"}


def test_ch9_print_tuning_marks_the_chosen_setting_and_the_edges(capsys):
    helpers.ch9_print_tuning(NEW, {"m": "model m", "n": "model n"})
    out = capsys.readouterr().out
    assert "7 runs per model" in out
    m_part, n_part = out.split("model n")
    assert m_part.count("*") == 1 and "0.9800*" in m_part
    assert "ON THE EDGE" not in m_part
    assert n_part.count("ON THE EDGE (the largest value)") == 2
    # settings not run are shown as not run, never as a number
    assert m_part.count(" . ") == 12 - 6


@pytest.mark.parametrize("name", ["digits-tssa", "digits-softmax"])
def test_ch9_results_tuning_choice_is_the_best_setting_run(name):
    # the chapter says each model got its best setting: check it against the file's own numbers
    tuning = json.loads((ROOT / "results" / "tuning.json").read_text())
    v = helpers.ch9_tuning(tuning, name)
    scored = [s for s in v["settings"] if s["val_accuracy"] is not None]
    best = max(scored, key=lambda s: (s["val_accuracy"], -s["val_loss"]))
    assert (best["lr"], best["weight_decay"]) == (v["chosen"]["lr"], v["chosen"]["weight_decay"])
    for s in v["settings"]:
        assert s["lr"] in v["grid"]["lr"] and s["weight_decay"] in v["grid"]["weight_decay"]
    result = json.loads((ROOT / "results" / f"{name}.json").read_text())
    assert result["setting"] == {k: v["chosen"][k] for k in ("lr", "weight_decay")}


# ---------------------------------------------------------------- parameters: a fact, not a result


def _digits_model(attention):
    return wb.models.build(
        DigitsTask(make_config(task="digits", attention=attention)).model_config()
    )


def test_ch9_tost_has_fewer_parameters_by_the_count_of_the_projections():
    # TSSA: one D x D projection (+ D biases) and H temperatures per layer; softmax attention:
    # D x 3D (+ 3D biases) for queries, keys and values. The rest of the two models is the same.
    cfg = make_config(task="digits")
    D, H, depth = cfg.dim, cfg.heads, cfg.depth
    tost, vit = _digits_model("tssa"), _digits_model("softmax")
    gap = vit.num_parameters() - tost.num_parameters()
    assert gap == depth * (2 * D * D + 2 * D - H)
    for name, model in (("tssa", tost), ("softmax", vit)):
        stored = json.loads((ROOT / "results" / f"digits-{name}.json").read_text())["params"]
        assert stored == model.num_parameters()


def test_ch9_pi_is_a_soft_partition_over_the_heads():
    # the print "sum over heads = 1" of section 4, as a test (untrained and after a few steps)
    _, _, Xte, _ = load_digits_split()
    model = _digits_model("tssa")
    _, inter = model.forward(Xte[:32], return_intermediates=True)
    cfg = make_config(task="digits")
    assert len(inter["pi"]) == cfg.depth
    for pi in inter["pi"]:
        pi = np.asarray(pi)
        assert pi.shape == (32, cfg.heads, 16)
        assert np.all(pi >= 0) and np.all(pi <= 1)
        np.testing.assert_allclose(pi.sum(axis=1), 1.0, atol=1e-5)


# ---------------------------------------------------------------- the variance shares of Pi


def _shares_by_loops(pi, labels):
    """Position, class and individual shares of one head's (B, N) memberships, by explicit
    group sums (independent of ``membership_stats``'s vectorized form)."""
    B, N = pi.shape
    mean = pi.sum() / (B * N)
    total = ((pi - mean) ** 2).sum() / (B * N)
    pos = np.array([pi[:, j].sum() / B for j in range(N)])
    position = sum((pos[j] - mean) ** 2 for j in range(N)) / N
    cls = 0.0
    indiv = 0.0
    for c in set(labels.tolist()):
        rows = pi[labels == c]
        for j in range(N):
            m = rows[:, j].sum() / len(rows)
            cls += len(rows) * (m - pos[j]) ** 2
            indiv += ((rows[:, j] - m) ** 2).sum()
    return position / total, cls / (B * N) / total, indiv / (B * N) / total


def test_ch9_membership_shares_are_the_law_of_total_variance():
    rng = np.random.default_rng(9)
    B, H, N = 60, 3, 16
    labels = rng.integers(0, 4, B)
    logits = rng.normal(size=(B, H, N)) + 0.8 * rng.normal(size=(1, H, N))  # position effect
    logits += 0.5 * rng.normal(size=(4, H, N))[labels]  # a class effect
    pi = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    stats = membership_stats(pi, labels)
    for h in range(H):
        expected = _shares_by_loops(pi[:, h], labels)
        got = [stats[f"{k}_share"][h] for k in ("position", "class", "individual")]
        np.testing.assert_allclose(got, expected, rtol=1e-10)
        assert abs(sum(got) - 1.0) < 1e-12
    entropy = np.mean([-(p * np.log(p)).sum() for p in pi.transpose(0, 2, 1).reshape(-1, H)])
    assert stats["entropy"] == pytest.approx(entropy, rel=1e-12)
    assert stats["confidence"] == pytest.approx(pi.max(axis=1).mean(), rel=1e-12)


def test_ch9_uniform_membership_has_confidence_one_over_h_and_entropy_ln_h():
    pi = np.full((10, 4, 16), 0.25)
    stats = membership_stats(pi, np.arange(10) % 3)
    assert stats["confidence"] == pytest.approx(0.25)
    assert stats["entropy"] == pytest.approx(np.log(4))
