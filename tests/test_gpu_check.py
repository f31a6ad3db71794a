"""The one-go GPU check runs end to end on a CPU with the CuPy stand-in (its plumbing: steps,
time limits, JSON and JUnit output, training and a resume on the "device")."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_in_fake_mode(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, WHITEBOX_GPU_OUT=str(tmp_path))
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--fake", "--quick"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    failed = {k: v.get("tail") for k, v in report["steps"].items() if v.get("ok") is False}
    assert r.returncode == 0 and report["all_ok"], f"failed steps: {failed}\n{r.stdout}"
    for step in ("env", "smoke", "pytest", "train_digits", "train_text", "train_subspaces",
                 "train_resume"):  # fmt: skip
        assert report["steps"][step]["ok"], step
    assert report["steps"]["env"]["data"]["cupy"].endswith("+fake")
    assert report["resume_matches_uninterrupted"] is True
    junit = (tmp_path / "gpu_tests.xml").read_text()
    assert 'failures="0"' in junit and 'tests="0"' not in junit
