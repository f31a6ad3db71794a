"""Generate the learner copies of the exercises from their instructor sources.

    python scripts/build_exercises.py            # write exercises/exNN_*.ipynb (never your answers)
    python scripts/build_exercises.py --force    # also replace copies you edited (kept in backups/)
    python scripts/build_exercises.py --check    # exit 1 when a learner copy is stale or missing
    python scripts/build_exercises.py --check --strict  # also when one holds answers (CI)

One source of truth: the instructor source of exercise NN is its worked solution,
``exercises/solutions/exNN_topic.ipynb``. Inside its code cells the lines between
``### BEGIN SOLUTION`` and ``### END SOLUTION`` are the answer (nbgrader's convention); the
learner copy ``exercises/exNN_topic.ipynb`` replaces each region, at the region's indentation, by

    # TODO: your code here
    raise NotImplementedError

In markdown cells a region becomes *Your answer here.* Cells tagged ``solution-only`` are
dropped. Outputs and execution counts are stripped, the metadata is the clean metadata of
``scripts/run_notebooks.py``, and markdown links that climb out of ``solutions/`` (``../../``)
are rewritten for the learner copy's place (``../``). The output is a function of the source
alone, so ``--check`` can compare it byte for byte.

Metadata for the grader (``python -m whitebox.grade``): the notebook's
``metadata.whitebox = {"exercise": "NN_topic", "version": V}`` (the exercise is named without
the file's ``ex``, which only tells its JupyterLab tab apart from chapter NN's
``notebooks/NN_*.ipynb``; see ``whitebox.grade.file_name``), where V is a hash of the
generated copy itself (with V blank), and each cell's ``metadata.whitebox.role``: ``answer``
(a code region to fill in), ``written`` (a markdown answer), ``check`` (calls a checker) or
``experiment`` (a given cell after the first answer that does more than import and define:
it uses the learner's functions).

A learner's work is never lost. A learner copy is *pristine* when it is exactly what the build
wrote (its version hash still matches it), or a copy from before the version metadata that is
exactly what git has committed; only pristine copies are replaced. A copy that differs
(answers filled in, or only run; committed or not) is kept as it is and the build says so;
``--force`` first moves it to ``exercises/backups/exNN_topic-<time>.ipynb``. A learner copy
under its name from before the ``ex`` prefix (``exercises/NN_topic.ipynb``) is never touched: the
build says where its exercise lives now (it still grades, the grader reads the metadata).
``--check`` compares the generator's output with the learner copy when it is pristine, and with
the committed copy (``git show HEAD:...``) when the learner has edited it, so it never condemns
a learner's answers and still catches a stale committed copy; when the learner has committed
answers too, it does not compare. ``--check --strict`` (for CI and before a commit to the
project) requires every learner copy to be exactly the generated one.
"""

from __future__ import annotations

import argparse
import ast
import copy
import hashlib
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat

from whitebox.checkpoint import CheckpointWriteError, atomic_write
from whitebox.grade import exercise_of, file_name

ROOT = Path(__file__).resolve().parent.parent
EXERCISES = ROOT / "exercises"
SOLUTIONS = EXERCISES / "solutions"

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
CODE_STUB = ("# TODO: your code here", "raise NotImplementedError")
MARKDOWN_STUB = "*Your answer here.*"
SOLUTION_ONLY_TAG = "solution-only"
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
LANGUAGE_INFO = {"name": "python", "pygments_lexer": "ipython3"}


ROLE_ANSWER, ROLE_WRITTEN, ROLE_CHECK, ROLE_EXPERIMENT = "answer", "written", "check", "experiment"


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


def checker_names(cells) -> set[str]:
    """The names the notebook imports from ``whitebox.exercise_checks``."""
    names = set()
    for cell in cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "whitebox.exercise_checks":
                names.update(alias.asname or alias.name for alias in node.names)
    return names


def calls_checker(source: str, checkers: set[str]) -> bool:
    """True when the code calls one of the ``checkers`` (a checker cell)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in checkers:
                return True
    return False


def _role(cell, regions: int, after_answer: bool, checkers: set[str]) -> str | None:
    if cell.cell_type == "markdown":
        return ROLE_WRITTEN if regions else None
    if cell.cell_type != "code":
        return None
    if regions:
        return ROLE_ANSWER
    if calls_checker(cell.source, checkers):
        return ROLE_CHECK
    return ROLE_EXPERIMENT if after_answer and not defines_only(cell.source) else None


def defines_only(source: str) -> bool:
    """True for a cell that only imports and defines (a given helper: the grader runs it)."""
    body = ast.parse(source).body
    kinds = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)
    return bool(body) and all(isinstance(node, kinds) for node in body)


def learner_notebook(source_nb, name: str):
    """The learner copy of one instructor notebook (a new object). ``name`` is the source's
    path; its stem without the ``ex`` prefix names the exercise in the copy's metadata."""
    nb = copy.deepcopy(source_nb)
    cells = []
    regions = 0
    after_answer = False
    checkers = checker_names(nb.cells)
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
        role = _role(cell, n, after_answer, checkers)
        after_answer = after_answer or role == ROLE_ANSWER
        keep = {k: v for k, v in cell.metadata.items() if k in ("tags", "nbval-ignore-output")}
        if role:
            keep["whitebox"] = {"role": role}
        cell.metadata = nbformat.NotebookNode(keep)
        cells.append(cell)
    if regions == 0:
        raise BuildError(f"{name}: no {BEGIN} region, so the learner would have nothing to do")
    nb.cells = cells
    nb.metadata = nbformat.NotebookNode(
        kernelspec=source_nb.metadata.get("kernelspec", KERNELSPEC),
        # what a fresh kernel writes (scripts/run_notebooks.py), so opening a copy unedited
        # leaves it clean
        language_info=source_nb.metadata.get("language_info", LANGUAGE_INFO),
        whitebox={"exercise": exercise_of(name), "version": ""},
    )
    nb.metadata.whitebox["version"] = version_of(nb)
    return nb


def render(nb) -> str:
    text = nbformat.writes(nb)
    return text if text.endswith("\n") else text + "\n"


def version_of(nb) -> str:
    """The hash of the notebook as rendered with its version blank (16 hex digits)."""
    blank = copy.deepcopy(nb)
    blank.metadata.setdefault("whitebox", {})["version"] = ""
    return hashlib.sha256(render(blank).encode("utf-8")).hexdigest()[:16]


def self_consistent(text: str) -> bool:
    """True when ``text`` is a learner copy exactly as the build wrote it: it records a
    version and that version is the hash of the text itself (no edit, no output since)."""
    try:
        nb = nbformat.reads(text, as_version=4)
        recorded = nb.metadata["whitebox"]["version"]
    except Exception:  # not a notebook, or no version: not the build's output
        return False
    return (
        isinstance(recorded, str)
        and bool(recorded)
        and render(nb) == text
        and (version_of(nb) == recorded)
    )


def has_version(text: str) -> bool:
    """True when ``text`` is a notebook that records the build's version metadata."""
    try:
        return bool(nbformat.reads(text, as_version=4).metadata["whitebox"]["version"])
    except Exception:
        return False


def committed(root: Path, path: Path) -> str | None:
    """The text of ``path`` as committed in git's HEAD, or None (no git, not tracked)."""
    try:
        rel = path.relative_to(root).as_posix()
        result = subprocess.run(
            ["git", "-C", str(root), "show", f"HEAD:./{rel}"],
            capture_output=True,
            timeout=30,
        )
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    try:
        return result.stdout.decode("utf-8")
    except UnicodeDecodeError:
        return None


def write_atomic(path: Path, text: str) -> None:
    """``text`` written atomically (``checkpoint.atomic_write``): a learner copy is never half
    written; a new file gets the umask's mode, a replaced one keeps its own."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def back_up(path: Path, backups: Path) -> Path:
    """Copy ``path`` to a new file in ``backups`` (never replacing one); returns its path."""
    backups.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    data = path.read_bytes()
    for i in range(1000):
        suffix = "" if i == 0 else f"-{i}"
        dest = backups / f"{path.stem}-{stamp}{suffix}{path.suffix}"
        try:
            with open(dest, "xb") as f:  # exclusive: an existing backup is never replaced
                f.write(data)
            return dest
        except FileExistsError:
            continue
    raise BuildError(f"cannot find a free backup name for {path.name} in {backups}")


def sources(root: Path = ROOT) -> list[Path]:
    return sorted((root / "exercises" / "solutions").glob("ex[0-9][0-9]_*.ipynb"))


def build(check: bool, force: bool = False, root: Path = ROOT, strict: bool = False) -> int:
    exercises = root / "exercises"
    problems, notes, kept = [], [], []
    expected_names = set()
    for src in sources(root):
        target = exercises / src.name
        shown = target.relative_to(root)
        expected_names.add(src.name)
        nb = nbformat.read(src, as_version=4)
        text = render(learner_notebook(nb, str(src.relative_to(root))))
        current = target.read_text(encoding="utf-8") if target.exists() else None
        if current == text:
            continue
        head = committed(root, target) if current is not None else None
        # the build's own output, or a copy from before the version metadata that git holds
        pristine = (
            current is None
            or self_consistent(current)
            or (current == head and not has_version(current))
        )
        if check:
            if current is None:
                problems.append(f"{shown} is missing")
            elif pristine:
                problems.append(f"{shown} is out of date with {src.name}")
            elif strict:
                problems.append(f"{shown} is not the generated copy (answers or outputs in it)")
            elif head is None:
                notes.append(f"{shown} holds your work; not compared (no committed copy in git).")
            elif head == text:
                notes.append(f"{shown} holds your work; its committed copy is up to date.")
            elif self_consistent(head):
                problems.append(f"the committed {shown} is out of date with {src.name}")
            else:  # the learner committed their answers too
                notes.append(f"{shown} holds your work, committed; not compared.")
            continue
        if not pristine:
            if not force:
                kept.append(str(shown))
                continue
            backup = back_up(target, exercises / "backups")
            print(f"moved your version of {shown} to {backup.relative_to(root)}")
        write_atomic(target, text)
        print(f"wrote {shown}")
    for learner in sorted(exercises.glob("ex[0-9][0-9]_*.ipynb")):
        if learner.name not in expected_names:
            problems.append(f"{learner.relative_to(root)} has no solution in exercises/solutions/")
    for old in sorted(exercises.glob("[0-9][0-9]_*.ipynb")):  # a name from before the prefix
        new = file_name(old.stem)
        shown = old.relative_to(root)
        if new not in expected_names:
            problems.append(f"{shown} has no solution in exercises/solutions/")
            continue
        message = (
            f"{shown} has the exercise's old name: it is exercises/{new} now (so that its "
            f"tab differs from chapter {old.stem[:2]}'s). Your work in {shown} is kept and "
            "still grades; to go on in the new file, copy your answers into it (or move it "
            "there once the new copy holds nothing of yours)."
        )
        # a stray file for CI; a learner's own work otherwise
        (problems if check and strict else notes).append(message)
    for note in notes:
        print(note)
    if kept:
        print(
            f"kept {', '.join(kept)} as you left {'them' if len(kept) > 1 else 'it'}: "
            "it differs from the generated copy (your answers, or outputs), so it was not "
            "replaced. `make exercises FORCE=1` (or --force) moves your version to "
            "exercises/backups/ and writes the new copy.",
            file=sys.stderr,
        )
    if problems:
        for p in problems:
            print(p, file=sys.stderr)
        if check:
            print("Run `make exercises` to regenerate the learner copies.", file=sys.stderr)
        return 1
    if check:
        print(f"{len(expected_names)} learner copies are up to date.")
    return 0


def main(argv: list[str], root: Path = ROOT) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--check", action="store_true", help="only verify that the learner copies are up to date"
    )
    mode.add_argument(
        "--force",
        action="store_true",
        help="also replace learner copies that hold your work, after moving each one to "
        "exercises/backups/",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="with --check: every learner copy must be exactly the generated one (for CI and "
        "maintainers before a commit; a learner's answers fail it)",
    )
    args = parser.parse_args(argv)
    if args.strict and not args.check:
        parser.error("--strict only goes with --check")
    try:
        return build(args.check, args.force, root, args.strict)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except CheckpointWriteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
