"""``make results`` keeps the recorded tuning when it was made by the current procedure.

``scripts/results.py --reuse-tuning`` (results/tuning.json), ``scripts/mechanism.py
--reuse-tuning`` (the synthetic task's search in results/text-mechanism.json) and
``scripts/long_results.py --reuse-tuning`` (results/long-tuning.json): each keeps a record only
when it matches what the script would do now, else tunes again. Checked on the committed files
and on altered copies.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name):
    sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location(f"{name}_reuse", ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def results():
    return _script("results")


@pytest.fixture(scope="module")
def mechanism():
    return _script("mechanism")


def test_the_committed_tuning_serves_every_tuned_configuration(results):
    tuning = json.loads((ROOT / "results" / "tuning.json").read_text())
    assert not results.tuning_is_stale(tuning, list(results.TUNED))
    assert results.tuning_is_stale(None, list(results.TUNED))
    for change in (
        {"procedure": "another"},
        {"seeds": [0]},
        {"chosen": {k: v for k, v in tuning["chosen"].items() if k != "text-tssa"}},
    ):
        assert results.tuning_is_stale({**copy.deepcopy(tuning), **change}, list(results.TUNED))


def test_the_recorded_synthetic_search_is_reused_only_when_it_matches(mechanism, tmp_path):
    path = ROOT / "results" / "text-mechanism.json"
    settings, _ = mechanism.chosen_settings()
    rec = mechanism.recorded_synthetic_tuning(path, settings)
    old = json.loads(path.read_text())
    assert rec == old["synthetic"]["tuning"]
    assert {n: rec[n]["chosen_lr"] for n in mechanism.MODELS} == {
        n: old["synthetic"]["tuning"][n]["chosen_lr"] for n in mechanism.MODELS
    }
    # other text settings, another task, other seeds, a grid without the start values: none
    other = copy.deepcopy(settings)
    other["text-tssa"]["lr"] *= 2
    assert mechanism.recorded_synthetic_tuning(path, other) is None
    assert mechanism.recorded_synthetic_tuning(tmp_path / "missing.json", settings) is None
    for edit in (
        lambda d: d["synthetic"].update(steps=d["synthetic"]["steps"] + 1),
        lambda d: d["synthetic"].update(p_copy=0.5),
        lambda d: d["synthetic"]["tuning"]["text-softmax"].update(seeds=[0]),
        lambda d: d["synthetic"]["tuning"]["text-tssa"].update(grid=[0.001, 0.003]),
    ):
        d = copy.deepcopy(old)
        edit(d)
        (tmp_path / "m.json").write_text(json.dumps(d))
        assert mechanism.recorded_synthetic_tuning(tmp_path / "m.json", settings) is None


def test_the_long_tuning_record_matches_the_current_configuration():
    long_results = _script("long_results")
    rec = json.loads((ROOT / "results" / "long-tuning.json").read_text())
    assert all(rec.get(k) == v for k, v in long_results.tuning_config().items())


def test_make_results_reuses_the_tuning_unless_retune(tmp_path):
    text = (ROOT / "Makefile").read_text()
    block = text[text.index("\nresults:") : text.index("\nbench:")]
    for script in ("results.py", "mechanism.py", "long_results.py"):
        assert f"scripts/{script} $(if $(RETUNE),,--reuse-tuning)" in block, script
