"""The documentation names only things that exist: links, functions, tests and section headings.

notebooks/README.md maps each step of the derivation to a chapter section, a `whitebox`
function and a test; docs/deviations.md pins every deviation by a test; docs/references.md
points to chapters. When a file, a function, a test or a heading is renamed, these tests say
which mention went stale.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NB_README = ROOT / "notebooks" / "README.md"
DOCS = [
    NB_README,
    ROOT / "docs" / "deviations.md",
    ROOT / "docs" / "references.md",
    ROOT / "README.md",
]

LINK = re.compile(r"\]\(([^)\s]+)\)")
MODULES = (
    "mcr2|nn|module|optim|models|vision|interop|analysis|bench|demo|train|gradcheck|data|checkpoint"
    "|complexity"
)
NAME = re.compile(rf"`(?:whitebox\.)?({MODULES})\.(?!py\b)([A-Za-z_]\w*)(?:\.([A-Za-z_]\w*))?")
TEST = re.compile(r"\b(test_\w+\.py)(?:::(\w+))?")
MAP_ITEM = re.compile(r"\]\((\d\d_\w+\.ipynb)\)|§ “([^”]+)”")


def _slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def _md_headings(path: Path) -> list[str]:
    return [ln.lstrip("#").strip() for ln in path.read_text().splitlines() if ln.startswith("#")]


def _nb_headings(path: Path) -> set[str]:
    """A notebook's markdown headings without the '#'s and the section number ('2. ')."""
    out = set()
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        for line in "".join(cell["source"]).splitlines():
            if line.startswith("#"):
                out.add(re.sub(r"^\d+\.\s+", "", line.lstrip("#").strip()))
    return out


def _links(doc: Path):
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        yield target, (doc.parent / path_part).resolve() if path_part else doc, anchor


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc):
    bad = []
    for target, path, anchor in _links(doc):
        if not path.exists():
            bad.append(f"{target}: no such file")
        elif (
            anchor and path.suffix == ".md" and anchor not in {_slug(h) for h in _md_headings(path)}
        ):
            bad.append(f"{target}: no heading with the anchor #{anchor}")
    assert not bad, f"{doc.relative_to(ROOT)}: " + "; ".join(bad)


@pytest.mark.parametrize("doc", DOCS[:3], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_whitebox_name_exists(doc):
    names = sorted(set(NAME.findall(doc.read_text())))
    assert names, f"{doc.name} names no whitebox function"  # the regex itself must keep working
    missing = []
    for mod, attr, sub in names:
        obj = importlib.import_module(f"whitebox.{mod}")
        for part in (attr, sub) if sub else (attr,):
            if not hasattr(obj, part):
                missing.append(".".join(p for p in (mod, attr, sub) if p))
                break
            obj = getattr(obj, part)
    assert not missing, f"{doc.name} names what whitebox does not have: {missing}"


@pytest.mark.parametrize("doc", DOCS[:2], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_named_test_exists(doc):
    found = sorted(set(TEST.findall(doc.read_text())))
    assert len(found) >= 10, f"{doc.name}: expected the map's tests, found {found}"
    missing = []
    for fname, func in found:
        path = ROOT / "tests" / fname
        if not path.exists():
            missing.append(fname)
        elif func and not re.search(rf"^\s*def {func}\(", path.read_text(), re.M):
            missing.append(f"{fname}::{func}")
    assert not missing, f"{doc.name} names tests that do not exist: {missing}"


def _map_section() -> str:
    text = NB_README.read_text()
    start = text.index("## The map")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def test_every_section_the_map_names_is_a_heading_of_its_chapter():
    pairs, current = [], None
    for row in _map_section().splitlines():
        if not row.startswith("|"):
            continue
        current = None  # a heading belongs to the chapter named before it in the same row
        for nb, heading in MAP_ITEM.findall(row):
            if nb:
                current = nb
            else:
                assert current, f"a section without its chapter: {heading!r} in {row[:60]!r}"
                pairs.append((current, heading))
    assert len(pairs) >= 20, f"the map names too few sections: {pairs}"
    stale = []
    for nb, heading in pairs:
        path = (NB_README.parent / nb).resolve()
        if heading not in _nb_headings(path):
            stale.append(f"{nb} § {heading!r}")
    assert not stale, "the map names sections its chapters do not have: " + "; ".join(stale)


def test_every_notebook_is_in_the_chapter_table():
    table = NB_README.read_text().split("## Notation")[0]
    listed = set(re.findall(r"\]\((\d\d_\w+\.ipynb)\)", table))
    on_disk = {p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    assert on_disk <= listed, (
        f"not in notebooks/README.md's chapter table: {sorted(on_disk - listed)}"
    )


def test_checker_catches_a_stale_name_and_heading(tmp_path):
    """The extraction the tests rely on finds a planted wrong name, test and heading."""
    text = (
        "| x | y | [`01_coding_rate.ipynb`](01_coding_rate.ipynb) § “No such section” "
        "| `whitebox.mcr2.no_such_function` | `test_mcr2.py::test_no_such_test` |"
    )
    ((mod, attr, _),) = NAME.findall(text)
    assert not hasattr(importlib.import_module(f"whitebox.{mod}"), attr)
    ((fname, func),) = TEST.findall(text)
    assert not re.search(rf"^\s*def {func}\(", (ROOT / "tests" / fname).read_text(), re.M)
    items = MAP_ITEM.findall(text)
    assert items == [("01_coding_rate.ipynb", ""), ("", "No such section")]
    assert "No such section" not in _nb_headings(ROOT / "notebooks" / "01_coding_rate.ipynb")
    assert "Lossy coding of Gaussian data" in _nb_headings(
        ROOT / "notebooks" / "01_coding_rate.ipynb"
    )
