"""The multi-seed results that `make results` wrote: schema, consistency, and the README table."""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
#: name -> (task, attention, model); the four tuned ones come first
CONFIGS = {
    "digits-tssa": ("digits", "tssa", "tost"),
    "digits-softmax": ("digits", "softmax", "tost"),
    "text-tssa": ("text", "tssa", "tost"),
    "text-softmax": ("text", "softmax", "tost"),
    "digits-tost-cab": ("digits", "tssa", "tost-cab"),
    "digits-tost-deep": ("digits", "tssa", "tost"),
}
TUNED = tuple(CONFIGS)[:4]
#: the configurations of the README's results table (the deep one serves chapter 10 only)
IN_README = tuple(CONFIGS)[:5]


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _load(name):
    return json.loads((RESULTS / f"{name}.json").read_text())


@pytest.mark.parametrize("name", CONFIGS)
def test_configuration_json_schema(name):
    d = _load(name)
    assert d["schema"] == 1 and d["name"] == name
    task, attention, model = CONFIGS[name]
    assert (d["task"], d["attention"], d["model"]) == (task, attention, model)
    assert d["metric"] == ("test_accuracy" if task == "digits" else "val_loss_nats_per_char")
    assert len(d["seeds"]) >= 5 and len(set(d["seeds"])) == len(d["seeds"])
    assert [p["seed"] for p in d["per_seed"]] == d["seeds"]
    assert d["values"] == [p["value"] for p in d["per_seed"]]
    # the summary statistics are those of the per-seed values (sample std, n - 1)
    assert d["mean"] == pytest.approx(statistics.mean(d["values"]), abs=1e-4)
    assert d["std"] == pytest.approx(statistics.stdev(d["values"]), abs=1e-4)
    assert (d["min"], d["max"]) == (min(d["values"]), max(d["values"]))
    for p in d["per_seed"]:
        # the stored value is the last evaluation of the run's own history
        key = "test_accuracy" if task == "digits" else "val_loss"
        assert p["value"] == pytest.approx(p["history"][-1][key], abs=1e-4)
        assert p["steps"] == p["history"][-1]["step"] == d["steps"]
        assert not Path(p["checkpoint"]).is_absolute()  # no paths of the machine
    assert set(d["setting"]) == {"lr", "weight_decay"}
    if name not in TUNED:  # an untuned configuration borrows the simplified ToST's setting
        chosen = json.loads((RESULTS / "tuning.json").read_text())["chosen"][f"{task}-tssa"]
        assert d["setting"] == {"lr": chosen["lr"], "weight_decay": chosen["weight_decay"]}
    m = d["machine"]
    for key in ("cpu", "cores", "blas", "python", "numpy", "scipy", "scikit-learn"):
        assert key in m


def test_tuning_json_chose_on_validation_and_each_model_got_its_best():
    t = json.loads((RESULTS / "tuning.json").read_text())
    grid = [(lr, wd) for lr in t["grid"]["lr"] for wd in t["grid"]["weight_decay"]]
    assert len(grid) >= 4
    for name in TUNED:
        runs = [r for r in t["runs"] if r["config"] == name]
        assert sorted((r["lr"], r["weight_decay"]) for r in runs) == sorted(grid)  # same budget
        chosen = t["chosen"][name]
        if name.startswith("digits"):
            best = max(runs, key=lambda r: (r["val_accuracy"], -r["val_loss"]))
        else:
            best = min(runs, key=lambda r: r["val_loss"])
        assert (chosen["lr"], chosen["weight_decay"]) == (best["lr"], best["weight_decay"])
        # ... and the seeds were trained with exactly that setting
        assert _load(name)["setting"] == {
            "lr": chosen["lr"],
            "weight_decay": chosen["weight_decay"],
        }


def test_train_defaults_are_the_chosen_tost_setting():
    from whitebox.train import DEFAULTS

    chosen = json.loads((RESULTS / "tuning.json").read_text())["chosen"]
    for task in ("digits", "text"):
        c = chosen[f"{task}-tssa"]
        assert (DEFAULTS[task]["lr"], DEFAULTS[task]["weight_decay"]) == (
            c["lr"],
            c["weight_decay"],
        )


def test_digits_inside_claims_count_the_seeds():
    d = _load("digits-tssa")
    inside = d["inside"]
    assert [r["seed"] for r in inside["per_seed"]] == d["seeds"]
    for claim in inside["summary"]["claims"].values():
        assert claim["of"] == len(d["seeds"]) and claim["held"] == len(claim["seeds"])
    # a claim recomputed from the per-seed reports agrees with the stored count
    held = [
        r["seed"]
        for r in inside["per_seed"]
        if r["trained"]["membership"][0]["entropy"] < r["init"]["membership"][0]["entropy"]
        and r["trained"]["membership"][0]["confidence"] > r["init"]["membership"][0]["confidence"]
    ]
    assert held == inside["summary"]["claims"]["training_sharpens_pi_block1"]["seeds"]


def test_readme_results_table_shows_mean_and_std_of_every_configuration():
    mod = _script("readme_tables")
    text = (ROOT / "README.md").read_text()
    assert mod.render(text) == text, "run: python scripts/readme_tables.py"
    table = text.split("<!-- results:start -->")[1].split("<!-- results:end -->")[0]
    for name in IN_README:
        d = _load(name)
        fmt = "{:.4f}" if d["metric"] == "test_accuracy" else "{:.3f}"
        assert f"{fmt.format(d['mean'])} ± {fmt.format(d['std'])}" in table
        assert ", ".join(fmt.format(v) for v in d["values"]) in table


def test_readme_table_renders_from_other_json(tmp_path):
    """The table is a function of the JSON: change a value and the table changes with it."""
    mod = _script("readme_tables")
    results = mod.load_results()
    d = dict(results["digits-tssa"], mean=0.1234, std=0.0042)
    results["digits-tssa"] = d
    assert "0.1234 ± 0.0042" in mod.results_table(results, None)


def test_deep_configuration_is_the_default_digits_tost_six_blocks_deep():
    d = _load("digits-tost-deep")
    assert d["train_flags"] == ["--depth", "6"]
    assert d["inside"]["summary"]["blocks"] == 6
    default = _load("digits-tssa")
    assert d["steps"] == default["steps"]  # the same epochs and batch size: only depth differs
    assert d["params"] > default["params"]


def test_deep_profile_schema_and_its_statistics_are_those_of_the_per_seed_values():
    from whitebox.analysis import BASIS_KINDS, PROFILE_KEYS, PROFILE_REPS

    d = _load("digits-tost-deep")
    inside = d["inside"]
    summary = inside["summary"]["profile"]
    L = summary["blocks"]
    assert L == 6 and summary["eps"] > 0
    assert [r["seed"] for r in inside["per_seed"]] == d["seeds"]
    for r in inside["per_seed"]:
        prof = r["profile"]
        assert prof["eps"] == summary["eps"]
        for state in ("trained", "init"):
            for split in ("train", "test"):
                assert len(prof[state][split]) == L
                for block in prof[state][split]:
                    for rep in PROFILE_REPS:
                        assert set(block[rep]) == set(PROFILE_KEYS)
                        for kind in BASIS_KINDS:  # the variational bound, per block
                            assert block[rep][f"rc_var_{kind}"] >= block[rep][f"rc_proj_{kind}"]
                            assert 0 <= block[rep][f"offdiag_{kind}"] <= 1
                        # one subspace, two orthonormal bases: one R_c^proj
                        assert block[rep]["rc_proj_qr"] == pytest.approx(
                            block[rep]["rc_proj_polar"], rel=1e-9
                        )
    # every spread is that of the per-seed values (sample std), every count recomputes
    for name, spreads in summary["spread"].items():
        state, split, rest = name.split("_", 2)
        rep = next(r for r in sorted(PROFILE_REPS, key=len, reverse=True) if rest.startswith(r))
        key = rest[len(rep) + 1 :]
        for l, sp in enumerate(spreads):
            values = [r["profile"][state][split][l][rep][key] for r in inside["per_seed"]]
            assert sp["mean"] == pytest.approx(statistics.mean(values), abs=1e-4)
            assert sp["std"] == pytest.approx(statistics.stdev(values), abs=1e-4)
            assert sp["min"] == pytest.approx(min(values), abs=1e-4)
            assert sp["max"] == pytest.approx(max(values), abs=1e-4)
        curves = {
            r["seed"]: [b[rep][key] for b in r["profile"][state][split]] for r in inside["per_seed"]
        }
        falls = summary["claims"][f"{name}_falls"]
        assert falls["seeds"] == [s for s, c in curves.items() if c[-1] < c[0]]
        assert falls["of"] == len(d["seeds"]) and falls["held"] == len(falls["seeds"])
