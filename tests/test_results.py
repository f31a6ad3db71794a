"""The multi-seed results that `make results` wrote: schema, consistency, and the README table."""

from __future__ import annotations

import importlib.util
import json
import math
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


#: ``results/tuning.json`` from the two-seed procedure of issue 20 (stage 1 learning rates, stage 2
#: weight decays, edges extended, the mean over seeds 0 and 1); an older file holds the one-seed
#: grid that preceded it, until ``make results`` is run again
TWO_SEED = "seeds" in json.loads((RESULTS / "tuning.json").read_text())
two_seed = pytest.mark.skipif(
    not TWO_SEED, reason="results/tuning.json predates the two-seed procedure: run make results"
)
one_seed = pytest.mark.skipif(TWO_SEED, reason="the one-seed grid of results made before issue 20")


@one_seed
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


def _seed_means(runs, key):
    """(lr, weight decay) -> (mean metric, mean val loss, seeds), recomputed from the runs."""
    groups = {}
    for r in runs:
        groups.setdefault((r["lr"], r["weight_decay"]), []).append(r)
    out = {}
    for setting, rs in groups.items():
        if any(r[key] is None for r in rs):  # a diverged run: the worst result
            out[setting] = (None, None, sorted(r["seed"] for r in rs))
        else:
            out[setting] = (
                statistics.mean(r[key] for r in rs),
                statistics.mean(r["val_loss"] for r in rs),
                sorted(r["seed"] for r in rs),
            )
    return out


@two_seed
def test_tuning_json_chose_on_the_seed_mean_and_each_model_got_its_best():
    t = json.loads((RESULTS / "tuning.json").read_text())
    seeds = t["seeds"]
    assert len(seeds) >= 2 and len(set(seeds)) == len(seeds)
    budgets = {}
    for name in TUNED:
        key = "val_accuracy" if name.startswith("digits") else "val_loss_nats_per_char"
        runs = [r for r in t["runs"] if r["config"] == name]
        budgets.setdefault(CONFIGS[name][0], set()).add(len(runs))
        means = _seed_means(runs, key)
        # every setting was run with every tuning seed, once
        assert all(s == seeds for _, _, s in means.values()), name
        ok = {k: v for k, v in means.items() if v[0] is not None}
        if name.startswith("digits"):
            best = max(ok, key=lambda k: (round(ok[k][0], 4), -round(ok[k][1], 4)))
        else:
            best = min(ok, key=lambda k: round(ok[k][0], 4))
        chosen = t["chosen"][name]
        assert (chosen["lr"], chosen["weight_decay"]) == best, name
        assert chosen[key] == pytest.approx(ok[best][0], abs=1e-4)
        # the recorded grid is the set of values run
        assert t["grid"][name]["lr"] == sorted({r["lr"] for r in runs})
        assert t["grid"][name]["weight_decay"] == sorted({r["weight_decay"] for r in runs})
        # ... and the seeds were trained with exactly that setting
        assert _load(name)["setting"] == {
            "lr": chosen["lr"],
            "weight_decay": chosen["weight_decay"],
        }
    for task, counts in budgets.items():  # ToST and its baseline: the same number of runs
        assert len(counts) == 1, f"{task}: unequal budgets {counts}"
        assert t["budget"][task].startswith(f"{counts.pop()} runs per model")


@two_seed
@pytest.mark.parametrize("name", TUNED)
@pytest.mark.parametrize("param", ["lr", "weight_decay"])
def test_tuning_chose_strictly_inside_the_grid(name, param):
    """A chosen value on the edge of the values run says the optimum may lie beyond them."""
    t = json.loads((RESULTS / "tuning.json").read_text())
    values = sorted({r[param] for r in t["runs"] if r["config"] == name})
    assert len(values) >= 3
    if param == "lr":  # log-spaced: a constant ratio between neighbours
        ratios = [b / a for a, b in zip(values, values[1:])]
        assert max(ratios) == pytest.approx(min(ratios), rel=1e-9)
    chosen = t["chosen"][name][param]
    assert values[0] < chosen < values[-1], f"{name}: {param} {chosen} on the edge of {values}"


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


def test_inside_controls_and_delta_r_jumps_recompute_from_the_per_seed_reports():
    d = _load("digits-tssa")
    inside = d["inside"]
    if "controls" not in inside["per_seed"][0]["trained"]:
        pytest.skip("results/digits-tssa.json predates the controls of issue 20: run make results")
    claims, spread = inside["summary"]["claims"], inside["summary"]["spread"]
    per_seed = inside["per_seed"]
    L = inside["summary"]["blocks"]
    for eps in ("1", "4", "16"):
        for l in range(L):
            for r in per_seed:  # all three arms, and the trained arm is chapter 10's sub-step
                ctl = r["trained"]["controls"][eps][l]
                assert set(ctl) == {"trained", "random", "softmax"}
                sub = r["trained"]["substep"][eps][l]
                assert ctl["trained"]["change_mean"] == pytest.approx(sub["attention_change"])
                assert ctl["trained"]["cos2_mean"] == pytest.approx(sub["cos2_mean"])
                for arm in ctl.values():
                    assert 0 <= arm["lowers_share"] <= 1 and 0 <= arm["cos2_mean"] <= 1
                    assert arm["cos_mean"] ** 2 <= arm["cos2_mean"] + 1e-12  # Jensen
            for arm in ("random", "softmax"):
                held = [
                    r["seed"]
                    for r in per_seed
                    if r["trained"]["controls"][eps][l]["trained"]["change_mean"]
                    < r["trained"]["controls"][eps][l][arm]["change_mean"]
                    and r["trained"]["controls"][eps][l]["trained"]["cos_mean"]
                    > r["trained"]["controls"][eps][l][arm]["cos_mean"]
                ]
                assert claims[f"trained_block{l + 1}_beats_{arm}_eps{eps}"]["seeds"] == held
    dR = [
        [(b["in"]["delta_R"], b["out"]["delta_R"]) for b in r["trained"]["rates"]] for r in per_seed
    ]
    for l in range(L - 1):
        jumps = [c[l + 1][0] - c[l][1] for c in dR]
        assert spread["trained_delta_R_jump"][l]["mean"] == pytest.approx(
            statistics.mean(jumps), abs=1e-4
        )
        up = [r["seed"] for r, j in zip(per_seed, jumps) if j > 0]
        assert claims[f"trained_delta_R_jumps_up_at_boundary{l + 1}"]["seeds"] == up
    ends = [r["seed"] for r, c in zip(per_seed, dR) if c[-1][1] > c[0][0]]
    assert claims["trained_delta_R_rises_end_to_end"]["seeds"] == ends


@pytest.mark.parametrize("name, blocks", [("digits-tost-deep", 6), ("digits-tssa", 2)])
def test_profile_schema_and_its_statistics_are_those_of_the_per_seed_values(name, blocks):
    from whitebox.analysis import BASIS_KINDS, PROFILE_KEYS, PROFILE_REPS

    d = _load(name)
    inside = d["inside"]
    if "profile" not in inside["summary"]:
        assert name != "digits-tost-deep"
        pytest.skip(f"results/{name}.json predates the profile of issue 20: run make results")
    # the rescaled TSSA input came with issue 20; results made before it lack only that
    reps = [
        rep for rep in PROFILE_REPS if rep in inside["per_seed"][0]["profile"]["trained"]["test"][0]
    ]
    assert set(PROFILE_REPS) - set(reps) <= {"in_scaled"}
    summary = inside["summary"]["profile"]
    L = summary["blocks"]
    assert L == blocks and summary["eps"] > 0
    assert [r["seed"] for r in inside["per_seed"]] == d["seeds"]
    for r in inside["per_seed"]:
        prof = r["profile"]
        assert prof["eps"] == summary["eps"]
        for state in ("trained", "init"):
            for split in ("train", "test"):
                assert len(prof[state][split]) == L
                for block in prof[state][split]:
                    assert set(block) == set(reps)
                    for rep in reps:
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


def test_tuning_procedure_extends_every_edge_with_the_same_budget_per_task(monkeypatch):
    """``scripts/results.py``'s search on a made-up landscape whose optima lie off the stage-1
    grids (one model's learning rate below it, another's above, weight decays at both ends):
    every choice ends strictly inside the values run, the best of them by the seed mean, and the
    two models of a task get the same number of runs."""
    mod = _script("results")
    optimum = {"digits-tssa": (4e-3, 0.03), "digits-softmax": (2.5e-4, 0.15),
               "text-tssa": (0.1, 0.012), "text-softmax": (8e-3, 0.05)}  # fmt: skip

    def fake_run(out, task, attention, extra, reuse, lr, weight_decay, seed, holdout):
        name = out.name.split("-lr")[0]
        lr0, wd0 = optimum[name]
        bad = math.log(lr / lr0) ** 2 + 0.3 * math.log(weight_decay / wd0) ** 2 + 0.01 * seed
        if task == "text" and lr > 0.3:  # too high a learning rate diverges: the worst result
            raise RuntimeError("... training diverged at step 7: loss nan")
        key = "val_accuracy" if task == "digits" else "val_loss_nats_per_char"
        value = round(1 - bad / 50, 4) if task == "digits" else 1 + bad
        return {key: value, "history": [{"val_loss": 1 + bad}], "seconds": 0.0}

    monkeypatch.setattr(mod, "train_run", fake_run)
    for task in ("digits", "text"):
        names = [n for n in mod.TUNED if mod.CONFIGS[n][0] == task]
        out = mod.tune(names, reuse=False)
        counts = {n: sum(r["config"] == n for r in out["runs"]) for n in names}
        assert len(set(counts.values())) == 1, counts
        for name in names:
            runs = [r for r in out["runs"] if r["config"] == name]
            assert {r["seed"] for r in runs} == set(mod.TUNING_SEEDS)
            chosen = out["chosen"][name]
            for param in ("lr", "weight_decay"):
                values = sorted({r[param] for r in runs})
                assert values[0] < chosen[param] < values[-1], (name, param, values)
            # the nearest value run to each optimum, in log distance, is the one chosen
            lr0, wd0 = optimum[name]
            near = min(
                {(r["lr"], r["weight_decay"]) for r in runs if r["val_loss"] is not None},
                key=lambda s: math.log(s[0] / lr0) ** 2 + 0.3 * math.log(s[1] / wd0) ** 2,
            )
            assert (chosen["lr"], chosen["weight_decay"]) == near, name


def test_merging_tuning_drops_the_old_shared_grid_and_keeps_models_not_retuned():
    import importlib.util

    spec = importlib.util.spec_from_file_location("results_script", ROOT / "scripts" / "results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    old = {  # the one-seed file: one grid shared by every model
        "grid": {"lr": [0.002, 0.004, 0.01], "weight_decay": [0.05, 0.1]},
        "settings": {}, "budget": {}, "chosen": {"digits-tssa": {"lr": 0.004}, "text-tssa": {"lr": 0.01}},
        "runs": [{"config": "digits-tssa", "lr": 0.004}, {"config": "text-tssa", "lr": 0.01}],
    }  # fmt: skip
    fresh = {"grid": {"digits-tssa": {"lr": [0.004, 0.008], "weight_decay": [0.05]}},
             "settings": {}, "chosen": {"digits-tssa": {"lr": 0.008}},
             "runs": [{"config": "digits-tssa", "lr": 0.008, "seed": 0}]}  # fmt: skip
    merged = mod.merge_tuning(old, fresh, ["digits-tssa"], {})
    assert set(merged["grid"]) == {"digits-tssa"}  # no stale top-level "lr"/"weight_decay"
    assert merged["chosen"] == {"digits-tssa": {"lr": 0.008}, "text-tssa": {"lr": 0.01}}
    assert merged["runs"] == [old["runs"][1], fresh["runs"][0]]
