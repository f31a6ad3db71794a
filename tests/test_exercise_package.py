"""The checker package: one engine, one module per exercise topic, imports that run one way, a
public name for every checker, and a packaging rule that ships the subpackage."""

from __future__ import annotations

import ast
import fnmatch
import tomllib
from pathlib import Path

import whitebox.exercise_checks as ec

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "whitebox" / "exercise_checks"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def _relative_imports(module: str) -> set[str]:
    """The sibling modules ``module`` imports (``from .x import ...``)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    return {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module
    }


def test_every_checker_is_exported_and_has_a_spec():
    checkers = {name for name in ec.__all__ if name.startswith("check_")}
    assert checkers == {name for name in dir(ec) if name.startswith("check_")}
    # every checker but the timer (which measures, it has no reference) has a spec
    assert set(ec.SPECS) == checkers - {"check_time_call"}
    for name in checkers:
        assert callable(getattr(ec, name)), name


def test_the_core_knows_no_exercise():
    assert _relative_imports("core") == set()


def test_imports_between_the_modules_run_one_way():
    """No cycles: the modules can be read in an order where each imports only earlier ones."""
    deps = {m: _relative_imports(m) - {"core"} for m in MODULES if m != "core"}
    assert all(d <= set(MODULES) for d in deps.values()), deps
    done: set[str] = set()
    while deps:
        ready = [m for m, d in deps.items() if d <= done]
        assert ready, f"an import cycle among {sorted(deps)}"
        done |= set(ready)
        for m in ready:
            del deps[m]


def test_packaging_ships_the_subpackage():
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    patterns = find["find"]["include"]
    assert any(fnmatch.fnmatch("whitebox.exercise_checks", p) for p in patterns), patterns
    assert (PACKAGE / "__init__.py").is_file()


def test_the_library_does_not_import_the_checkers():
    """The checkers sit on top of the library (they import it), never the other way. The
    grader (``whitebox/grade.py``) is a tool on top of both, and nothing imports it."""
    for path in (ROOT / "whitebox").glob("*.py"):
        if path.name == "grade.py":
            continue
        text = path.read_text()
        assert "exercise_checks" not in text, path.name
        assert "grade" not in {
            alias.name.split(".")[-1]
            for node in ast.walk(ast.parse(text))
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        } | {
            (node.module or "").split(".")[-1]
            for node in ast.walk(ast.parse(text))
            if isinstance(node, ast.ImportFrom)
        }, path.name
