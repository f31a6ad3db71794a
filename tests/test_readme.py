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


def test_benchmark_json_meets_the_scaling_bar():
    data = json.loads((ROOT / "benchmarks" / "bench_cpu.json").read_text())
    sc = data["scaling"]
    assert sc["tssa_time_ratio_16384_over_1024"] <= 1.5 * 16
    assert 0.8 < sc["results"]["tssa"]["memory_exponent"] < 1.2
