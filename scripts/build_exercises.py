"""Generate the learner copies of the exercises from their instructor sources.

    python scripts/build_exercises.py            # write exercises/NN_*.ipynb
    python scripts/build_exercises.py --check    # exit 1 when a learner copy is stale or missing

One source of truth: the instructor source of exercise NN is its worked solution,
``exercises/solutions/NN_topic.ipynb``. Inside its code cells the lines between
``### BEGIN SOLUTION`` and ``### END SOLUTION`` are the answer (nbgrader's convention); the
learner copy ``exercises/NN_topic.ipynb`` replaces each region, at the region's indentation, by

    # TODO: your code here
    raise NotImplementedError

In markdown cells a region becomes *Your answer here.* Cells tagged ``solution-only`` are
dropped. Outputs and execution counts are stripped, the metadata is the clean metadata of
``scripts/run_notebooks.py``, and markdown links that climb out of ``solutions/`` (``../../``)
are rewritten for the learner copy's place (``../``). The output is a function of the source
alone, so ``--check`` can compare it byte for byte.
"""

from __future__ import annotations

import argparse
import ast
import copy
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
EXERCISES = ROOT / "exercises"
SOLUTIONS = EXERCISES / "solutions"

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
CODE_STUB = ("# TODO: your code here", "raise NotImplementedError")
MARKDOWN_STUB = "*Your answer here.*"
SOLUTION_ONLY_TAG = "solution-only"
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
LANGUAGE_INFO = {"name": "python", "pygments_lexer": "ipython3"}


class BuildError(Exception):
    """A malformed instructor source (unbalanced markers, a stub that does not parse)."""


def strip_regions(source: str, stub: tuple[str, ...], where: str) -> tuple[str, int]:
    """Replace every BEGIN/END SOLUTION region of ``source`` by ``stub`` lines, indented like
    the BEGIN marker. Returns (new source, number of regions)."""
    out: list[str] = []
    inside = False
    count = 0
    for number, line in enumerate(source.split("\n"), start=1):
        marker = line.strip()
        if marker == BEGIN:
            if inside:
                raise BuildError(f"{where}, line {number}: {BEGIN} inside another region")
            inside = True
            count += 1
            indent = line[: len(line) - len(line.lstrip())]
            out.extend(indent + s for s in stub)
        elif marker == END:
            if not inside:
                raise BuildError(f"{where}, line {number}: {END} without {BEGIN}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise BuildError(f"{where}: {BEGIN} without {END}")
    return "\n".join(out), count


def learner_notebook(source_nb, name: str):
    """The learner copy of one instructor notebook (a new object)."""
    nb = copy.deepcopy(source_nb)
    cells = []
    regions = 0
    for i, cell in enumerate(nb.cells):
        if SOLUTION_ONLY_TAG in cell.metadata.get("tags", []):
            continue
        where = f"{name}, cell {i}"
        if cell.cell_type == "code":
            cell.source, n = strip_regions(cell.source, CODE_STUB, where)
            try:
                ast.parse(cell.source)
            except SyntaxError as e:
                raise BuildError(f"{where}: the learner's code does not parse: {e}") from None
            cell.outputs = []
            cell.execution_count = None
        elif cell.cell_type == "markdown":
            cell.source, n = strip_regions(cell.source, (MARKDOWN_STUB,), where)
            cell.source = re.sub(r"\]\(\.\./\.\./", "](../", cell.source)
        else:
            n = 0
        regions += n
        keep = {k: v for k, v in cell.metadata.items() if k in ("tags", "nbval-ignore-output")}
        cell.metadata = nbformat.NotebookNode(keep)
        cells.append(cell)
    if regions == 0:
        raise BuildError(f"{name}: no {BEGIN} region, so the learner would have nothing to do")
    nb.cells = cells
    nb.metadata = nbformat.NotebookNode(kernelspec=KERNELSPEC, language_info=LANGUAGE_INFO)
    return nb


def render(nb) -> str:
    text = nbformat.writes(nb)
    return text if text.endswith("\n") else text + "\n"


def sources() -> list[Path]:
    return sorted(SOLUTIONS.glob("[0-9][0-9]_*.ipynb"))


def build(check: bool) -> int:
    problems = []
    expected_names = set()
    for src in sources():
        target = EXERCISES / src.name
        expected_names.add(src.name)
        nb = nbformat.read(src, as_version=4)
        text = render(learner_notebook(nb, str(src.relative_to(ROOT))))
        if check:
            if not target.exists():
                problems.append(f"{target.relative_to(ROOT)} is missing")
            elif target.read_text(encoding="utf-8") != text:
                problems.append(f"{target.relative_to(ROOT)} is out of date with {src.name}")
        else:
            if not target.exists() or target.read_text(encoding="utf-8") != text:
                target.write_text(text, encoding="utf-8")
                print(f"wrote {target.relative_to(ROOT)}")
    for learner in sorted(EXERCISES.glob("[0-9][0-9]_*.ipynb")):
        if learner.name not in expected_names:
            problems.append(f"{learner.relative_to(ROOT)} has no solution in exercises/solutions/")
    if problems:
        for p in problems:
            print(p, file=sys.stderr)
        if check:
            print("Run `make exercises` to regenerate the learner copies.", file=sys.stderr)
        return 1
    if check:
        print(f"{len(expected_names)} learner copies are up to date.")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="only verify that the learner copies are up to date"
    )
    args = parser.parse_args(argv)
    try:
        return build(args.check)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
