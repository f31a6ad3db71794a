"""Set-up files agree with each other: pyproject.toml, environment.yml and Binder's copy; the
library depends on what it imports and nothing more; the Makefile installs what each target
needs; the licence and the distribution's name."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
EXTRAS = PROJECT["optional-dependencies"]
DIST = PROJECT["name"]
NAME = re.compile(r"^\s*-\s*([A-Za-z0-9_.\-]+)\s*([<>=!~].*)?$")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _parse(reqs) -> dict[str, str]:
    out = {}
    for r in reqs:
        m = re.match(r"([A-Za-z0-9_.\-]+)\s*(\[[^\]]*\])?\s*(.*)", r)
        out[_normalize(m.group(1))] = m.group(3).replace(" ", "")
    return out


def extra(name: str) -> dict[str, str]:
    """The requirements of an extra, with its references to other extras of this project
    (``whitebox-tost[notebooks]``) expanded."""
    out = {}
    for r in EXTRAS[name]:
        m = re.match(rf"{re.escape(DIST)}\[([^\]]+)\]$", r.replace(" ", ""))
        if m:
            for sub in m.group(1).split(","):
                out.update(extra(sub))
        else:
            out.update(_parse([r]))
    return out


def pyproject_requirements() -> dict[str, str]:
    """What the conda environments must hold: the library, the notebooks and the dev tools."""
    return {**_parse(PROJECT["dependencies"]), **extra("dev")}


def yml_requirements(path: Path) -> dict[str, str]:
    out = {}
    lines = path.read_text().splitlines()
    start = lines.index("dependencies:")  # skip name: and channels:
    for line in lines[start + 1 :]:
        if line.strip().startswith("#") or line.strip() == "- -e .":
            continue  # comments, and the local package in the nested pip: section
        m = NAME.match(line)  # conda packages, and those of the nested pip: section
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


def test_cupy_only_in_the_gpu_extras_one_per_cuda_major_version():
    assert not any("cupy" in r for r in PROJECT["dependencies"])
    assert list(extra("gpu-cuda12")) == ["cupy-cuda12x"]
    assert list(extra("gpu-cuda13")) == ["cupy-cuda13x"]
    assert extra("gpu") == extra("gpu-cuda12")  # the README's choice: [gpu] is CUDA 12
    readme = (ROOT / "README.md").read_text()
    for name in ("gpu-cuda12", "gpu-cuda13"):
        assert f".[{name}]" in readme
    assert not any("torch" in r for r in PROJECT["dependencies"])


# import name -> distribution name, where they differ
DISTRIBUTION = {"sklearn": "scikit-learn", "PIL": "pillow", "jupyter_client": "jupyter-client"}
OPTIONAL = {"cupy", "cupyx", "torch"}  # imported behind a guard: the gpu extras, make torch


def third_party_imports(paths) -> set[str]:
    stdlib = set(sys.stdlib_module_names)
    found = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            found |= {n.split(".")[0] for n in names} - stdlib - {"whitebox", "__future__"}
    return found


def test_the_library_depends_on_exactly_what_it_imports():
    imported = third_party_imports(sorted((ROOT / "whitebox").rglob("*.py"))) - OPTIONAL
    needed = {_normalize(DISTRIBUTION.get(n, n)) for n in imported}
    assert set(_parse(PROJECT["dependencies"])) == needed
    for heavy in ("jupyterlab", "nbval", "ipywidgets", "sympy", "pytest"):
        assert heavy not in _parse(PROJECT["dependencies"])


def test_dev_extra_holds_what_tests_and_notebooks_import():
    imported = third_party_imports(sorted((ROOT / "tests").glob("*.py"))) - OPTIONAL
    imported -= {p.stem for p in (ROOT / "tests").glob("*.py")}  # the tests' own helpers
    imported -= {p.stem for p in (ROOT / "notebooks").glob("*.py")}  # the chapters' helpers.py
    imported |= {"sympy"}  # the notebooks' derivations, run by nbval
    provided = {**_parse(PROJECT["dependencies"]), **extra("dev")}
    provided |= {"nbclient": "", "matplotlib-inline": ""}  # come with nbconvert / ipykernel
    provided |= {"pillow": "", "jupyter-client": ""}  # come with matplotlib / ipykernel
    missing = {_normalize(DISTRIBUTION.get(n, n)) for n in imported} - set(provided)
    assert not missing
    assert set(extra("notebooks")) <= set(extra("dev"))  # make test runs the notebooks
    assert "jupyterlab" in extra("notebooks")


def test_licence_is_an_mit_file_and_an_spdx_expression():
    assert PROJECT["license"] == "MIT"  # an SPDX string (the table form is deprecated)
    assert PROJECT["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "WITHOUT WARRANTY OF ANY KIND" in text


def test_distribution_has_a_name_of_its_own_and_the_import_name_stays():
    # "whitebox" on PyPI is an unrelated geospatial package
    assert DIST == "whitebox-tost"
    assert PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"] == ["whitebox*"]
    readme = (ROOT / "README.md").read_text()
    assert "whitebox-tost" in readme and "import whitebox" in readme


def make_dry_run(target: str) -> str:
    """The commands ``make -n TARGET`` would run in a fresh clone (no .venv yet)."""
    res = subprocess.run(
        ["make", "-n", "-B", "--no-print-directory", target, "VENV=.venv-dry-run-absent"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return res.stdout


@pytest.fixture(scope="module")
def have_make():
    if subprocess.run(["which", "make"], capture_output=True).returncode:
        pytest.skip("make is not installed")


def test_make_train_installs_the_library_alone(have_make):
    cmds = make_dry_run("train")
    assert re.search(r"pip install --quiet -e \.\s*$", cmds, re.M)
    assert "[dev]" not in cmds and "[notebooks]" not in cmds
    assert "-m whitebox.train" in cmds


def test_make_test_installs_the_dev_extra(have_make):
    cmds = make_dry_run("test")
    assert 'pip install --quiet -e ".[dev]"' in cmds
    assert "pytest" in cmds and "--nbval" in cmds and "ruff check" in cmds


def test_make_lab_opens_the_repository_root_on_the_notebooks_index(have_make):
    cmds = make_dry_run("lab")
    assert 'pip install --quiet -e ".[notebooks]"' in cmds and "[dev]" not in cmds
    lab = cmds[cmds.index("jupyter lab") :].replace("\\\n", " ")
    assert "--ServerApp.root_dir=. " in lab  # notebooks/ and exercises/ both reachable
    start = re.search(r"--LabApp.default_url=/lab/tree/(\S+)", lab).group(1)
    assert (ROOT / start).is_file() and start.startswith("notebooks/")
    # Jupyter refuses to run as root without --allow-root; the Makefile passes it then only
    import os

    assert ("--allow-root" in lab) == (os.getuid() == 0)
    assert "$(if $(filter 0,$(shell id -u)),--allow-root)" in (ROOT / "Makefile").read_text()


def test_every_file_of_the_core_stays_under_1000_lines():
    """The modules a learner reads stay short enough to read one sitting at a time; the README
    states their total, regenerated from the files (tests/test_readme.py)."""
    core = ["backend.py", "mcr2.py", "data.py", "nn.py", "module.py", "optim.py", "models.py"]
    core.append("vision.py")
    lines = {f: len((ROOT / "whitebox" / f).read_text().splitlines()) for f in core}
    too_long = {f: n for f, n in lines.items() if n >= 1000}
    assert not too_long, f"split these by idea (issue 24): {too_long}"
