"""Set-up files agree with each other: pyproject.toml, environment.yml and Binder's copy."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAME = re.compile(r"^\s*-\s*([A-Za-z0-9_.\-]+)\s*([<>=!~].*)?$")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject_requirements() -> dict[str, str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = data["project"]["dependencies"] + data["project"]["optional-dependencies"]["dev"]
    out = {}
    for r in reqs:
        m = re.match(r"([A-Za-z0-9_.\-]+)\s*(.*)", r)
        out[_normalize(m.group(1))] = m.group(2).replace(" ", "")
    return out


def yml_requirements(path: Path) -> dict[str, str]:
    out = {}
    lines = path.read_text().splitlines()
    start = lines.index("dependencies:")  # skip name: and channels:
    for line in lines[start + 1 :]:
        if line.strip().startswith("#") or line.startswith("      "):
            continue  # comments, and the entries of the nested pip: section
        m = NAME.match(line)
        if m and m.group(1) not in ("python", "pip"):
            out[_normalize(m.group(1))] = (m.group(2) or "").replace(" ", "")
    return out


def test_environment_yml_lists_what_pyproject_lists():
    assert yml_requirements(ROOT / "environment.yml") == pyproject_requirements()


def test_binder_environment_matches_and_installs_the_package():
    assert yml_requirements(ROOT / "binder" / "environment.yml") == pyproject_requirements()
    post = (ROOT / "binder" / "postBuild").read_text()
    assert "pip install" in post and "-e ." in post


def test_python_pinned_in_both_ymls_and_matches_requires_python():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    lowest = data["project"]["requires-python"].removeprefix(">=")
    for path in (ROOT / "environment.yml", ROOT / "binder" / "environment.yml"):
        assert f"- python={lowest}" in path.read_text()


def test_yml_installs_the_local_package_through_pip():
    text = (ROOT / "environment.yml").read_text()
    assert re.search(r"^\s*-\s*pip:\s*$", text, re.M) and re.search(
        r"^\s+-\s*-e \.\s*$", text, re.M
    )


def test_cupy_only_in_the_gpu_extra():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert not any("cupy" in r for r in data["project"]["dependencies"])
    assert any(
        r.startswith("cupy-cuda12x") for r in data["project"]["optional-dependencies"]["gpu"]
    )
    assert not any("torch" in r for r in data["project"]["dependencies"])


def test_the_core_stays_small_enough_to_read_in_an_afternoon():
    core = ["backend.py", "mcr2.py", "data.py", "nn.py", "models.py"]
    lines = sum(len((ROOT / "whitebox" / f).read_text().splitlines()) for f in core)
    assert lines < 2000, f"the core has grown to {lines} lines; update the README's promise"
    assert "under 2,000 lines" in (ROOT / "README.md").read_text()
