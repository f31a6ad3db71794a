"""JupyterLab as a learner finds it (make lab): the settings overrides, and notebook metadata
that a fresh kernel leaves unchanged.

JupyterLab compares the kernelspec and ``language_info`` a starting kernel reports with the
notebook's metadata and writes them only when they differ (``setMetadata`` is a no-op on deep
equality); writing them marks the notebook dirty, so closing an unedited chapter asks to save and
autosave rewrites a tracked file. Every committed notebook therefore carries exactly what
ipykernel reports. The browser test that opens a notebook in a real JupyterLab is in
tests/test_book.py (it needs Chromium).
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(
    [
        *(ROOT / "notebooks").glob("*.ipynb"),
        *(ROOT / "exercises").glob("*.ipynb"),
        *(ROOT / "exercises" / "solutions").glob("*.ipynb"),
    ]
)


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


lab_settings = _load("lab_settings")
run_notebooks = _load("run_notebooks")


# --------------------------------------------------------------------------------------------
# the settings overrides
# --------------------------------------------------------------------------------------------


def test_overrides_render_markdown_and_silence_the_news():
    o = lab_settings.OVERRIDES
    assert o["@jupyterlab/docmanager-extension:plugin"]["defaultViewers"] == {
        "markdown": "Markdown Preview"
    }
    assert o["@jupyterlab/apputils-extension:notification"]["fetchNews"] == "false"


def test_overrides_are_valid_for_the_installed_jupyterlab():
    """Each key exists in the installed JupyterLab's setting schemas, with an allowed value,
    and "Markdown Preview" is the name of a document factory of its build."""
    lab = Path(sys.prefix) / "share" / "jupyter" / "lab"
    if not (lab / "schemas").is_dir():
        pytest.skip("JupyterLab is not installed in this environment")
    for plugin, values in lab_settings.OVERRIDES.items():
        package, name = plugin.split(":")
        schema = json.loads((lab / "schemas" / package / f"{name}.json").read_text())
        for key, value in values.items():
            prop = schema["properties"][key]
            if "oneOf" in prop:
                assert value in [c["const"] for c in prop["oneOf"]], (plugin, key)
            elif prop["type"] == "object":
                assert isinstance(value, dict)
                assert all(isinstance(v, str) for v in value.values())
            else:
                assert isinstance(value, {"boolean": bool, "string": str}[prop["type"]])
    core = "".join(p.read_text(errors="replace") for p in (lab / "static").glob("jlab_core*.js"))
    assert '"Markdown Preview"' in core


def test_settings_are_merged_into_an_existing_file_and_kept(tmp_path):
    path = tmp_path / "settings" / "overrides.json"
    path.parent.mkdir()
    mine = {
        "@jupyterlab/docmanager-extension:plugin": {
            "defaultViewers": {"csv": "CSVTable"},
            "autosaveInterval": 30,
        },
        "@jupyterlab/apputils-extension:themes": {"theme": "JupyterLab Dark"},
    }
    path.write_text(json.dumps(mine))
    script = [sys.executable, str(ROOT / "scripts" / "lab_settings.py")]
    check = subprocess.run([*script, "--check", str(path)], capture_output=True, text=True)
    assert check.returncode == 1
    assert subprocess.run([*script, str(path)], capture_output=True).returncode == 0
    got = json.loads(path.read_text())
    doc = got["@jupyterlab/docmanager-extension:plugin"]
    assert doc["defaultViewers"] == {"csv": "CSVTable", "markdown": "Markdown Preview"}
    assert doc["autosaveInterval"] == 30
    assert got["@jupyterlab/apputils-extension:themes"] == {"theme": "JupyterLab Dark"}
    assert got["@jupyterlab/apputils-extension:notification"]["fetchNews"] == "false"
    assert subprocess.run([*script, "--check", str(path)], capture_output=True).returncode == 0
    before = path.read_text()
    subprocess.run([*script, str(path)], check=True, capture_output=True)
    assert path.read_text() == before  # idempotent


def test_bad_settings_file_is_refused_in_one_line(tmp_path):
    path = tmp_path / "overrides.json"
    path.write_text("{not json")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "lab_settings.py"), str(path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.startswith("PATH:")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert path.read_text() == "{not json"  # nothing lost


def test_make_lab_writes_the_settings_before_starting_lab():
    if subprocess.run(["which", "make"], capture_output=True).returncode:
        pytest.skip("make is not installed")
    cmds = subprocess.run(
        ["make", "-n", "-B", "--no-print-directory", "lab", "VENV=.venv-dry-run-absent"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    settings = cmds.index(".venv-dry-run-absent/bin/python scripts/lab_settings.py")
    assert settings < cmds.index("jupyter lab")
    assert "--LabApp.default_url=/lab/tree/notebooks/README.md" in cmds
    assert "scripts/lab_settings.py" in (ROOT / "binder" / "postBuild").read_text()


# --------------------------------------------------------------------------------------------
# notebook metadata
# --------------------------------------------------------------------------------------------


def test_kernelspec_is_the_installed_python3_kernel():
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    assert run_notebooks.KERNELSPEC == {
        "name": "python3", "display_name": spec.display_name, "language": spec.language,
    }  # fmt: skip


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_notebook_carries_what_a_fresh_kernel_writes(path):
    meta = json.loads(path.read_text(encoding="utf-8"))["metadata"]
    assert meta.get("kernelspec") == run_notebooks.KERNELSPEC
    info = meta.get("language_info", {})
    fresh = run_notebooks.kernel_language_info()
    assert sorted(info) == sorted(run_notebooks.LANGUAGE_INFO_KEYS), (
        f"{path.name}: language_info has {sorted(info)}; apply "
        "`python scripts/run_notebooks.py --metadata-only` (see its docstring)"
    )
    assert {k: v for k, v in info.items() if k != "version"} == {
        k: v for k, v in fresh.items() if k != "version"
    }
    assert re.fullmatch(r"3\.\d+\.\d+", info["version"])


def test_every_notebook_records_the_same_python_version():
    versions = {
        json.loads(p.read_text(encoding="utf-8"))["metadata"]
        .get("language_info", {})
        .get("version")
        for p in NOTEBOOKS
    }
    assert len(versions) == 1, versions


def test_metadata_only_rewrites_nothing_but_the_metadata(tmp_path):
    src = ROOT / "notebooks" / "05_linear_cost.ipynb"
    copy = tmp_path / src.name
    nb = nbformat.read(src, as_version=4)
    nb.metadata = nbformat.from_dict({"kernelspec": {"name": "python3"}, "widgets": {"x": 1}})
    nbformat.write(nb, copy)
    script = [sys.executable, str(ROOT / "scripts" / "run_notebooks.py"), "--metadata-only"]
    subprocess.run([*script, str(copy)], check=True, capture_output=True)
    out = nbformat.read(copy, as_version=4)
    assert out.cells == nbformat.read(src, as_version=4).cells
    assert out.metadata == {
        "kernelspec": run_notebooks.KERNELSPEC,
        "language_info": run_notebooks.kernel_language_info(),
    }
    before = copy.read_text()
    subprocess.run([*script, str(copy)], check=True, capture_output=True)
    assert copy.read_text() == before
    bad = subprocess.run([*script, str(tmp_path / "missing.ipynb")], capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
