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


# --------------------------------------------------------------------------------------------
# a real JupyterLab in headless Chromium
# --------------------------------------------------------------------------------------------

OPEN_AND_WAIT_FOR_KERNEL = """
const [path, done] = [arguments[0], arguments[arguments.length - 1]];
(async () => {
  const app = window.jupyterapp;
  const widget = await app.commands.execute('docmanager:open', {path});
  await widget.context.ready;
  await widget.sessionContext.ready;
  const kernel = widget.sessionContext.session.kernel;
  await kernel.info;
  const model = widget.context.model;
  const start = Date.now();  // the panel writes language_info once kernel info has arrived
  while (!(model.getMetadata('language_info') || {}).version && Date.now() - start < 5000) {
    await new Promise((r) => setTimeout(r, 100));
  }
  await new Promise((r) => setTimeout(r, 500));
  done({dirty: model.dirty, language_info: model.getMetadata('language_info')});
})().catch((e) => done({error: String(e)}));
"""


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on a scratch root holding the index and two small notebooks: one with the
    metadata run_notebooks.py writes, one with the metadata committed before (the control)."""
    import os
    import time
    import urllib.request

    from browser import need_browser

    need_browser()
    tmp = tmp_path_factory.mktemp("lab")
    root = tmp / "root"
    (root / "notebooks").mkdir(parents=True)
    (root / "notebooks" / "README.md").write_text(
        (ROOT / "notebooks" / "README.md").read_text(encoding="utf-8"), encoding="utf-8"
    )
    for name, info in (
        ("fresh", run_notebooks.kernel_language_info()),
        ("stale", {"name": "python", "pygments_lexer": "ipython3"}),
    ):
        nb = nbformat.v4.new_notebook()
        nb.cells = [
            nbformat.v4.new_markdown_cell("# A chapter"),
            nbformat.v4.new_code_cell("1 + 1"),
        ]
        run_notebooks.clean(nb, info)
        nbformat.write(nb, root / f"{name}.ipynb")
    assert lab_settings.main([str(tmp / "settings" / "overrides.json")]) == 0
    env = dict(os.environ)
    for var, sub in (
        ("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_RUNTIME_DIR", "runtime"),
        ("JUPYTERLAB_SETTINGS_DIR", "user-settings"), ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"),
    ):  # fmt: skip
        env[var] = str(tmp / sub)
    port = _free_port()
    cmd = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
        "--ServerApp.token=", "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True",
        f"--ServerApp.root_dir={root}", f"--LabApp.app_settings_dir={tmp / 'settings'}",
        "--LabApp.default_url=/lab/tree/notebooks/README.md",
        "--LabApp.expose_app_in_browser=True", "--allow-root",
    ]  # fmt: skip
    log = open(tmp / "lab.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(base + "api/status", timeout=2)
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    pytest.fail(
                        "JupyterLab did not start:\n" + (tmp / "lab.log").read_text()[-2000:]
                    )
                time.sleep(0.5)
        yield base, tmp
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_lab_opens_the_index_rendered_and_a_chapter_stays_clean(lab):
    """make lab's settings, in a real JupyterLab: the default URL shows notebooks/README.md as
    rendered Markdown (not its source); a notebook with run_notebooks.py's metadata is still
    unmodified once its kernel has started, while the old metadata makes it dirty (the
    control); no "Jupyter news" notification appears."""
    from browser import chromium

    base, tmp = lab
    with chromium(tmp / "profile") as driver:
        driver.get(base)  # the server redirects to --LabApp.default_url
        rendered = driver.execute_async_script(
            """
const done = arguments[arguments.length - 1];
const start = Date.now();
(function poll() {
  const md = [...document.querySelectorAll('.jp-MainAreaWidget .jp-RenderedMarkdown h1')];
  const editors = document.querySelectorAll('.jp-MainAreaWidget .jp-FileEditor').length;
  if (md.length && window.jupyterapp) { done({h1: md[0].textContent, editors: editors}); }
  else if (Date.now() - start > 60000) { done({h1: null, editors: editors}); }
  else { setTimeout(poll, 200); }
})();
"""
        )
        assert rendered["h1"] and "The derivation" in rendered["h1"], rendered
        assert rendered["editors"] == 0
        fresh = driver.execute_async_script(OPEN_AND_WAIT_FOR_KERNEL, "fresh.ipynb")
        stale = driver.execute_async_script(OPEN_AND_WAIT_FOR_KERNEL, "stale.ipynb")
        news = driver.execute_script(
            "return [...document.querySelectorAll('.jp-toast-message, .Toastify__toast')]"
            ".map((e) => e.textContent)"
        )
    assert "error" not in fresh and "error" not in stale, (fresh, stale)
    assert fresh["language_info"] == run_notebooks.kernel_language_info()
    assert fresh["dirty"] is False, fresh
    assert stale["dirty"] is True, stale  # the control: the check can fail
    assert not [t for t in news if "news" in t.lower()], news
