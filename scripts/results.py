"""Regenerate the results table in README.md: ``make results``.

Trains the default configuration of every task with both attentions (ToST's TSSA and the
softmax baseline, same code, same budget), each in a fresh process exactly as
``python -m whitebox.train`` runs, writes ``results/results.json`` and rewrites the table
between the ``<!-- results:start -->`` and ``<!-- results:end -->`` markers of README.md.
Nothing in the table is typed by hand.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import readme_tables  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNS = [("digits", "tssa"), ("digits", "softmax"), ("text", "tssa"), ("text", "softmax")]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import numpy

    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, NumPy {numpy.__version__}"


def run(task: str, attention: str, out: Path) -> dict:
    cmd = [sys.executable, "-m", "whitebox.train", "--task", task, "--attention", attention,
           "--out", str(out), "--no-progress"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for task, attention in RUNS:
            r = run(task, attention, Path(tmp) / f"{task}-{attention}")
            r.pop("checkpoint", None)
            results.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "sample"}), flush=True)
    where = machine()
    out = ROOT / "results" / "results.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": where, "runs": results}, indent=2) + "\n")
    readme_tables.README.write_text(readme_tables.render(readme_tables.README.read_text()))
    print(f"wrote {out.relative_to(ROOT)} and the table in README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
