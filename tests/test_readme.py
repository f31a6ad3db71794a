"""The README's numbers come from the JSON that `make results` and `make bench` wrote."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_tables():
    spec = importlib.util.spec_from_file_location(
        "readme_tables", ROOT / "scripts" / "readme_tables.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_tables_are_generated_from_the_json():
    mod = _readme_tables()
    text = (ROOT / "README.md").read_text()
    assert mod.render(text) == text, "run: python scripts/readme_tables.py"


def test_results_cover_both_tasks_and_both_attentions():
    data = json.loads((ROOT / "results" / "results.json").read_text())
    runs = {(r["task"], r["attention"]) for r in data["runs"]}
    assert runs == {
        ("digits", "tssa"),
        ("digits", "softmax"),
        ("text", "tssa"),
        ("text", "softmax"),
    }
    digits = next(r for r in data["runs"] if r["task"] == "digits" and r["attention"] == "tssa")
    assert digits["test_accuracy"] >= 0.97 and digits["seconds"] <= 180


def test_benchmark_json_meets_the_scaling_bar():
    data = json.loads((ROOT / "benchmarks" / "bench_cpu.json").read_text())
    sc = data["scaling"]
    assert sc["tssa_time_ratio_16384_over_1024"] <= 1.5 * 16
    assert 0.8 < sc["results"]["tssa"]["memory_exponent"] < 1.2
