"""The import graph of ``whitebox/``, parsed from the source: no cycle, and imports run one way.

The layering, from the bottom up; a module imports only from its own group or the groups below:

1. base: ``backend`` (NumPy or CuPy).
2. mathematics: ``mcr2`` (the objective functions), ``data``, ``kernels`` (the fused GPU
   kernels), ``gradcheck``.
3. the module base and the optimizer: ``module`` (``Module``, ``ModuleList``, the validation
   policy), ``optim`` (``AdamW``, ``cosine_lr``, ``clip_grad_norm``).
4. layers: ``nn`` (the forward/backward pairs and their modules).
5. costs: ``complexity`` (operation counts of the layers, with their constants).
6. the checkpoint file format: ``checkpoint`` (atomic ``.npz`` files; it imports nothing of
   whitebox: ``models.load`` reads it, the training loop writes it).
7. models: ``vision``, ``models``, ``sequence`` (the long-sequence classifier).
8. what uses the models: training (``train``), benchmarks (``bench``), the commands
   (``predict``, ``sample``, ``demo``), ``analysis``, ``interop`` and the exercise checkers
   (``exercise_checks``).
9. the package itself (``whitebox/__init__.py``), which gathers the public names.

So no module of the mathematics or the layers (groups 1-5) imports from the checkpoints, the
models, training, the benchmarks or the exercise checkers. Every import counts: absolute and
relative, at the top of a file or inside a function. A new module has to be given a group here.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import pytest

import whitebox
from whitebox import module, nn, optim

ROOT = Path(__file__).resolve().parents[1]

LAYERS = [
    ("base", {"backend"}),
    ("mathematics", {"mcr2", "data", "kernels", "gradcheck"}),
    ("module base and optimizer", {"module", "optim"}),
    ("layers", {"nn"}),
    ("costs", {"complexity"}),
    ("checkpoint file format", {"checkpoint"}),
    ("models", {"vision", "models", "sequence"}),
    (
        "training, benchmarks, commands, exercise checkers",
        {"train", "bench", "predict", "sample", "demo", "analysis", "mechanism", "interop"}
        | {"exercise_checks"},
    ),
    # the grader loads the whole package before a learner's code runs (to restore it after)
    ("the package, and the grader that loads all of it", {"", "grade"}),
]
MATHEMATICS_AND_LAYERS = {"backend", "mcr2", "data", "kernels", "gradcheck", "module", "optim"}
MATHEMATICS_AND_LAYERS |= {"nn", "complexity"}
ABOVE = {
    "checkpoint",
    "models",
    "vision",
    "sequence",
    "train",
    "bench",
    "predict",
    "sample",
    "demo",
}
ABOVE |= {"analysis", "mechanism", "interop", "exercise_checks", "grade"}


# --------------------------------------------------------------------------------------------
# The checker
# --------------------------------------------------------------------------------------------


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the package under ``root``."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of the package it imports (any import statement anywhere in it)."""
    files = module_names(root, package)
    graph = {name: set() for name in files}

    def resolve(name: str) -> str | None:
        """The module ``name`` names, or the module that defines the name."""
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name if is_package else name.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        base = base.rpartition(".")[0]
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module or ""
                # 'from pkg import sub' imports the submodule sub; 'from mod import f', mod
                targets = [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                if target == package or target.startswith(package + "."):
                    found = resolve(target)
                    if found is not None and found != name:
                        graph[name].add(found)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the graph as [a, b, ..., a], or None (depth-first search)."""
    state = dict.fromkeys(graph, 0)  # 0 unseen, 1 on the current path, 2 done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt, 0) == 1:
                return path[path.index(nxt) :] + [nxt]
            if state.get(nxt, 0) == 0:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if state[node] == 0:
            found = visit(node)
            if found:
                return found
    return None


def _top(name: str, package: str) -> str:
    """'whitebox.exercise_checks.core' -> 'exercise_checks'; 'whitebox' -> ''."""
    return name[len(package) + 1 :].split(".")[0] if name != package else ""


def layering_violations(graph, package, layers) -> list[str]:
    """Imports that go up the layering (or into a module without a group)."""
    rank = {m: i for i, (_, members) in enumerate(layers) for m in members}
    bad = []
    for src, dsts in sorted(graph.items()):
        s = _top(src, package)
        if s not in rank:
            bad.append(f"{src}: no group in the layering (tests/test_imports.py)")
            continue
        for dst in sorted(dsts):
            d = _top(dst, package)
            if d not in rank or rank[d] > rank[s]:
                where = layers[rank[d]][0] if d in rank else "no group"
                bad.append(f"{src} ({layers[rank[s]][0]}) imports {dst} ({where})")
    return bad


# --------------------------------------------------------------------------------------------
# The library
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph():
    return import_graph(ROOT, "whitebox")


def test_the_graph_is_read_from_every_file(graph):
    """The parser sees relative, absolute and function-level imports of the real code."""
    assert "whitebox.nn" in graph["whitebox.models"]  # from .nn import (...)
    assert {"whitebox.module", "whitebox.optim"} <= graph["whitebox.nn"]  # the re-exports
    assert "whitebox.kernels" in graph["whitebox.nn"]  # from . import kernels
    assert "whitebox.train" in graph["whitebox.bench"]  # inside a function
    assert "whitebox.nn" in graph["whitebox.exercise_checks.causal"]  # from .. import nn
    assert graph["whitebox.backend"] == set() and graph["whitebox.checkpoint"] == set()


def test_no_import_cycle(graph):
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_imports_run_one_way(graph):
    assert layering_violations(graph, "whitebox", LAYERS) == []


def test_mathematics_and_layers_import_nothing_above_them(graph):
    """Stated on its own, as the issue states it: no module of the mathematics or the layers
    imports from the checkpoints, models, training, benchmarks or exercise checkers."""
    bad = [
        f"{src} imports {dst}"
        for src, dsts in sorted(graph.items())
        if _top(src, "whitebox") in MATHEMATICS_AND_LAYERS
        for dst in sorted(dsts)
        if _top(dst, "whitebox") in ABOVE
    ]
    assert bad == []
    assert {_top(m, "whitebox") for m in graph} <= MATHEMATICS_AND_LAYERS | ABOVE | {""}


def test_the_policy_and_the_optimizer_need_only_the_backend(graph):
    assert graph["whitebox.module"] == {"whitebox.backend"}
    assert graph["whitebox.optim"] == {"whitebox.backend"}


# --------------------------------------------------------------------------------------------
# The checker can fail
# --------------------------------------------------------------------------------------------


def test_find_cycle_on_small_graphs():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None  # a diamond is no cycle
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"y"}, "y": {"y"}}) == ["y", "y"]


def test_checker_finds_a_cycle_and_an_upward_import_in_a_package(tmp_path):
    """A tiny package whose layer imports a model inside a function (a cycle through a
    relative and an absolute import): both checks fail on it."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import models\n")
    (pkg / "backend.py").write_text("import numpy as np\n")
    (pkg / "nn.py").write_text(
        "from .backend import np\n\ndef f():\n    from pkg.models import Net\n    return Net\n"
    )
    (pkg / "models.py").write_text("from . import nn\n\nclass Net: ...\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "core.py").write_text("from .. import backend\nfrom ..nn import f\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph == {
        "pkg": {"pkg.models"},
        "pkg.backend": set(),
        "pkg.nn": {"pkg.backend", "pkg.models"},
        "pkg.models": {"pkg.nn"},
        "pkg.sub": set(),
        "pkg.sub.core": {"pkg.backend", "pkg.nn"},
    }
    assert find_cycle(graph) == ["pkg.models", "pkg.nn", "pkg.models"]
    layers = [("base", {"backend"}), ("layers", {"nn"}), ("models", {"models", "sub"}), ("", {""})]
    assert layering_violations(graph, "pkg", layers) == [
        "pkg.nn (layers) imports pkg.models (models)"
    ]
    layers[-1] = ("", set())  # the package itself left out of the layering
    assert "pkg: no group in the layering (tests/test_imports.py)" in layering_violations(
        graph, "pkg", layers
    )


# --------------------------------------------------------------------------------------------
# The old names keep working
# --------------------------------------------------------------------------------------------


def test_nn_reexports_the_moved_names():
    for name in ("Module", "ModuleList", "BackwardBeforeForwardError"):
        assert getattr(nn, name) is getattr(module, name)
    for name in ("AdamW", "cosine_lr", "clip_grad_norm"):
        assert getattr(nn, name) is getattr(optim, name)
    assert whitebox.optim is optim and whitebox.module is module
    # each moved name lives where the library imports it from
    assert nn.AdamW.__module__ == "whitebox.optim" and nn.Module.__module__ == "whitebox.module"


def test_setting_check_inputs_through_nn_reaches_the_policy():
    """``nn.CHECK_INPUTS = False`` (user code and notebooks written before the split) turns off
    the checks the policy in ``whitebox.module`` runs, and the ones the layers run."""
    layer = nn.Linear(4, 3)
    x = np.full((1, 2, 4), np.nan, np.float32)
    logits, bad_targets = np.zeros((1, 2, 3)), np.array([[0, 7]])
    assert nn.CHECK_INPUTS is True and module.CHECK_INPUTS is True
    with pytest.raises(ValueError, match="NaN or Inf"):
        layer.forward(x)
    with pytest.raises(ValueError, match="class ids must lie in"):
        nn.cross_entropy(logits, bad_targets)
    try:
        nn.CHECK_INPUTS = False
        assert module.CHECK_INPUTS is False and nn.CHECK_INPUTS is False
        assert np.isnan(layer.forward(x)).all()  # the policy saw the flag
        with pytest.raises(IndexError):  # the layer's own range check is off too
            nn.cross_entropy(logits, bad_targets)
    finally:
        nn.CHECK_INPUTS = True
    assert module.CHECK_INPUTS is True
    with pytest.raises(ValueError, match="NaN or Inf"):
        layer.forward(x)
    try:  # and the other way: the policy's own name, read through nn
        module.CHECK_INPUTS = False
        assert nn.CHECK_INPUTS is False
    finally:
        module.CHECK_INPUTS = True


def test_monkeypatching_check_inputs_through_nn_is_undone(monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(nn, "CHECK_INPUTS", False)
        assert module.CHECK_INPUTS is False
    assert module.CHECK_INPUTS is True and nn.CHECK_INPUTS is True


MOVED = {
    "module": ("Module", "ModuleList", "BackwardBeforeForwardError", "CHECK_INPUTS"),
    "optim": ("AdamW", "cosine_lr", "clip_grad_norm"),
}
_NAMES = "|".join(n for names in MOVED.values() for n in names)
OLD_HOME = re.compile(
    rf"(?<![\w.])(?:whitebox\.|wb\.)?nn\.({_NAMES})\b|from whitebox\.nn import [^\n]*\b({_NAMES})\b"
)
NEW_HOME = re.compile(r"\bwhitebox\.(module|optim)\.(\w+)")


def _reading_material():
    """(name, text) of every document and notebook cell a learner reads."""
    docs = [ROOT / "README.md", ROOT / "notebooks" / "README.md", ROOT / "exercises" / "README.md"]
    docs += sorted((ROOT / "docs").glob("*.md"))
    for path in docs:
        yield str(path.relative_to(ROOT)), path.read_text()
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    notebooks += sorted((ROOT / "exercises").rglob("*.ipynb"))
    for path in notebooks:
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            yield f"{path.relative_to(ROOT)} cell {i}", "".join(cell["source"])


def test_docs_and_notebooks_name_the_moved_things_at_their_new_home():
    """The documents and notebooks say ``whitebox.optim.AdamW``, not ``nn.AdamW`` (which still
    works), and every ``whitebox.module.X`` / ``whitebox.optim.X`` they name exists."""
    old, missing, new = [], [], 0
    for where, text in _reading_material():
        old += [f"{where}: {m.group(0)}" for m in OLD_HOME.finditer(text)]
        for mod, attr in NEW_HOME.findall(text):
            new += 1
            if not hasattr({"module": module, "optim": optim}[mod], attr):
                missing.append(f"{where}: whitebox.{mod}.{attr}")
    assert old == [], "name these at their new home (whitebox.module, whitebox.optim)"
    assert missing == []
    assert new >= 4  # chapters 9 and 11 point to the optimizer's home


def test_old_home_pattern_finds_the_old_names():
    text = "`nn.AdamW`, wb.nn.cosine_lr(...), from whitebox.nn import Linear, Module; nn.Linear"
    found = [m.group(0) for m in OLD_HOME.finditer(text)]
    assert found == ["nn.AdamW", "wb.nn.cosine_lr", "from whitebox.nn import Linear, Module"]
    assert not OLD_HOME.search("torch.nn.Module, tnn.ModuleList, whitebox.optim.AdamW")
