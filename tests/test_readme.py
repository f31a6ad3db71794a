"""The README's numbers come from the JSON that `make results` and `make bench` wrote, and its
statement of the core's size from the files themselves."""

from __future__ import annotations

import importlib.util
import json
import re
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


#: The core a learner reads (issue 24), in the README's order.
CORE = [
    "backend.py",
    "mcr2.py",
    "data.py",
    "nn.py",
    "module.py",
    "optim.py",
    "models.py",
    "vision.py",
]


def _core_claim_problems(text: str, root: Path = ROOT) -> list[str]:
    """What is stale in the README's sentence on the size of the core (empty: nothing)."""
    m = re.search(r"<!-- core:start -->\n(.*?)\n<!-- core:end -->", text, re.S)
    if m is None:
        return ["README.md lacks the sentence between <!-- core:start --> and <!-- core:end -->"]
    claim = " ".join(m.group(1).split())
    problems = []
    named = re.findall(r"`(\w+\.py)`", claim)
    if named != CORE:
        problems.append(f"it names {named}, the core is {CORE}")
    total = sum(len((root / "whitebox" / f).read_text().splitlines()) for f in CORE)
    bound = re.search(r"is under ([\d,]+) lines", claim)
    if bound is None or not (total < int(bound.group(1).replace(",", "")) <= total + 100):
        problems.append(f"the core has {total} lines; the README says {claim!r}")
    return problems


def test_readme_states_the_size_of_the_core_from_the_files():
    problems = _core_claim_problems((ROOT / "README.md").read_text())
    assert not problems, "; ".join(problems) + "; run: python scripts/readme_tables.py"


def test_core_claim_check_catches_a_stale_sentence():
    text = (ROOT / "README.md").read_text()
    assert _core_claim_problems(text.replace("`optim.py`, ", "")) != []
    stale = re.sub(r"is under [\d,]+ lines", "is under 2,600 lines", text)
    assert _core_claim_problems(stale) != []
    too_generous = re.sub(r"is under ([\d,]+) lines", "is under 9,900 lines", text)
    assert _core_claim_problems(too_generous) != []
    assert _core_claim_problems(text.replace("<!-- core:end -->", "")) != []
    # and the script regenerates the true sentence from any of them
    assert _readme_tables().render(stale) == text


def test_a_seed_that_stalled_is_named_with_its_epochs_under_0_3():
    mod = _readme_tables()

    def run(seed, value, accs):
        return {"seed": seed, "value": value, "history": [{"test_accuracy": a} for a in accs]}

    fine = {"values": [0.98, 0.97, 0.99], "per_seed": [run(0, 0.98, [0.5, 0.98]),
            run(1, 0.97, [0.2, 0.97]), run(2, 0.99, [0.9, 0.99])]}  # fmt: skip
    assert mod._stalled(fine) == ""  # a slow first epoch is not a stall
    stalled = {"values": [0.98, 0.25, 0.99], "per_seed": [run(0, 0.98, [0.5, 0.98]),
               run(1, 0.25, [0.1, 0.12, 0.25, 0.31]), run(2, 0.99, [0.9, 0.99])]}  # fmt: skip
    assert mod._stalled(stalled) == (
        " At that setting seed 1 ended at 0.2500, its test accuracy under 0.3 for 3 of 4 epochs."
    )
