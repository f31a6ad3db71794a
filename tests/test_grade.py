"""The grader (``python -m whitebox.grade``): submissions built from the learner copies, graded
in one run; every status, the gradebook's columns, the feedback texts, and bad arguments."""

from __future__ import annotations

import ast
import contextlib
import copy
import csv
import io
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import numpy as np
import pytest

from whitebox import exercise_checks as ec
from whitebox import grade

ROOT = Path(__file__).resolve().parent.parent
EXERCISES = ROOT / "exercises"
SOLUTIONS = EXERCISES / "solutions"
TIMEOUT = 4  # seconds per cell and per check: the solutions of exercise 01 take well under 1


def learner(name: str):
    """The learner copy of exercise ``name`` (``"01_coding_rate"``: exercises/ex01_...)."""
    return nbformat.read(EXERCISES / grade.file_name(name), as_version=4)


def filled(name: str):
    """The learner copy with every answer (code and written) taken back from the solution."""
    nb = learner(name)
    solution = {
        c.id: c for c in nbformat.read(SOLUTIONS / grade.file_name(name), as_version=4).cells
    }
    for cell in nb.cells:
        if cell.metadata.get("whitebox", {}).get("role") in ("answer", "written"):
            cell.source = solution[cell.id].source
    return nb


def replace_function(nb, function: str, source: str):
    """Put ``source`` in place of the answer cell that defines ``function``."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type == "code" and f"def {function}(" in cell.source:
            cell.source = textwrap.dedent(source).strip()
            return nb
    raise AssertionError(f"no cell defines {function}")


def insert_cell(nb, position: int, source: str):
    nb = copy.deepcopy(nb)
    nb.cells.insert(position, nbformat.v4.new_code_cell(textwrap.dedent(source).strip()))
    return nb


MISSING_HALF = """
import numpy as np

def coding_rate(Z, eps):
    d, n = Z.shape
    return np.linalg.slogdet(np.eye(d) + d / (n * eps**2) * (Z @ Z.T))[1]
"""
ENDLESS = """
def coding_rate(Z, eps):
    while True:
        pass
"""
STUBBORN = """
def coding_rate(Z, eps):
    while True:  # swallows the grader's interruption: the process must be stopped
        try:
            while True:
                pass
        except BaseException:
            pass
"""
EXITS = """
import os

def compression_rate(Z, Pi, eps):
    os._exit(3)
"""
SEGFAULT = """
import ctypes

def coding_rate(Z, eps):
    return ctypes.string_at(0)
"""
HOGS_MEMORY = """
import numpy as np

def coding_rate(Z, eps):
    big = np.ones(2**28)  # 2 GiB, over the 1 GiB limit of this run
    return float(big.sum())
"""
DELEGATES = """
import whitebox as wb

def coding_rate(Z, eps):
    return wb.coding_rate(Z, eps)
"""
DELEGATES_BOUND = """
from whitebox.mcr2 import coding_rate as reference

def coding_rate(Z, eps):
    return reference(Z, eps)
"""
WRONG = """
def coding_rate(Z, eps):
    return 0.0
"""


def _submissions() -> dict[str, nbformat.NotebookNode]:
    good = filled("01_coding_rate")
    untouched = learner("01_coding_rate")
    forged = replace_function(good, "coding_rate", WRONG)
    forged = insert_cell(
        forged,
        len(forged.cells),
        """
        print("✓ coding_rate is correct.")
        print("✓ compression_rate is correct.")
        coding_rate_ok = True
        def check_coding_rate(fn):
            return True
        """,
    )
    tampered = insert_cell(
        replace_function(good, "coding_rate", WRONG),
        1,
        """
        import whitebox.exercise_checks.core as core
        core.compare = lambda *args, **kwargs: (True, 0.0, "")
        """,
    )
    crashing_cell = insert_cell(good, 2, "import os\nos._exit(4)")
    noisy = insert_cell(good, 2, "undefined_name + 1")
    noisy = insert_cell(noisy, 2, "%matplotlib inline\n!echo hello")
    noisy = replace_function(
        noisy,
        "compression_rate",
        "%%time\n" + next(c.source for c in good.cells if "def compression_rate(" in c.source),
    )
    noisy = insert_cell(noisy, 3, "while True:\n    pass")
    old_version = copy.deepcopy(untouched)
    old_version.metadata["whitebox"]["version"] = "0123456789abcdef"
    no_metadata = copy.deepcopy(good)
    del no_metadata.metadata["whitebox"]
    written = learner("09_unrolled_questions")
    first = next(c for c in written.cells if c.metadata.get("whitebox", {}).get("role"))
    first.source = "The step overshoots: the factor 1 - τ c/n changes sign."
    return {
        "correct.ipynb": good,
        "slip.ipynb": replace_function(good, "coding_rate", MISSING_HALF),
        "endless.ipynb": replace_function(good, "coding_rate", ENDLESS),
        "stubborn.ipynb": replace_function(good, "coding_rate", STUBBORN),
        "exits.ipynb": replace_function(good, "compression_rate", EXITS),
        "segfault.ipynb": replace_function(good, "coding_rate", SEGFAULT),
        "memory.ipynb": replace_function(good, "coding_rate", HOGS_MEMORY),
        "delegates.ipynb": replace_function(good, "coding_rate", DELEGATES),
        "delegates_bound.ipynb": replace_function(good, "coding_rate", DELEGATES_BOUND),
        "forged.ipynb": forged,
        "tampered.ipynb": tampered,
        "noisy.ipynb": noisy,
        "crashing_cell.ipynb": crashing_cell,
        "untouched.ipynb": untouched,
        "old_version.ipynb": old_version,
        "no_metadata.ipynb": no_metadata,
        "written.ipynb": written,
        "renamed/homework 1 (final).ipynb": good,
        # the same work under the exercise's file name from before the "ex" prefix, and under
        # today's: one function right, one with a named slip
        "01_coding_rate.ipynb": replace_function(good, "coding_rate", MISSING_HALF),
        "ex01_coding_rate.ipynb": replace_function(good, "coding_rate", MISSING_HALF),
    }


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """Grade every submission in one run; returns (rows by submission, feedback folder, run)."""
    folder = tmp_path_factory.mktemp("submissions")
    for name, nb in _submissions().items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, folder / name)
    out = folder.parent / "grades.csv"
    run = subprocess.run(
        [sys.executable, "-m", "whitebox.grade", folder.name, "--out", str(out)]
        + ["--timeout", str(TIMEOUT), "--memory-mb", "1024"],
        capture_output=True,
        text=True,
        cwd=folder.parent,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    with open(out, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames
        rows = list(reader)
    by_submission: dict[str, dict[str, dict]] = {}
    for row in rows:
        key = Path(row["submission"]).relative_to(folder.name).as_posix()
        by_submission.setdefault(key, {})[row["check"]] = row
    return {
        "header": header,
        "rows": by_submission,
        "feedback": folder.parent / "grades-feedback",
        "stdout": run.stdout,
    }


def status(graded, submission, check):
    return graded["rows"][submission][check]["status"]


def feedback(graded, stem):
    return (graded["feedback"] / f"{stem}.txt").read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- the gradebook


def test_gradebook_has_exactly_the_columns_and_statuses(graded):
    assert graded["header"] == [
        "submission",
        "exercise",
        "check",
        "status",
        "score",
        "max_score",
        "slips",
    ]
    for checks in graded["rows"].values():
        for row in checks.values():
            assert row["status"] in grade.STATUSES, row
            assert row["score"] == ("1" if row["status"] == "passed" else "0"), row


def test_a_correct_submission_passes(graded):
    rows = graded["rows"]["correct.ipynb"]
    assert set(rows) == {"coding_rate", "compression_rate"}
    assert all(r["status"] == "passed" and r["score"] == "1" for r in rows.values())
    assert all(r["exercise"] == "01_coding_rate" for r in rows.values())
    assert "Score: 2 of 2" in feedback(graded, "correct")


def test_a_named_slip_is_wrong_and_named(graded):
    row = graded["rows"]["slip.ipynb"]["coding_rate"]
    assert row["status"] == "wrong" and row["score"] == "0"
    ns: dict = {}
    exec(MISSING_HALF, ns)
    with contextlib.redirect_stdout(io.StringIO()):
        direct = ec.check_coding_rate(ns["coding_rate"])
    assert direct.slips, "the planted slip should be a known one"
    assert row["slips"] == "; ".join(direct.slips)  # the checker's names, joined by '; '
    assert status(graded, "slip.ipynb", "compression_rate") == "passed"
    assert direct.slips[0] in feedback(graded, "slip")


def test_an_endless_loop_is_a_timeout_and_the_rest_is_graded(graded):
    assert status(graded, "endless.ipynb", "coding_rate") == "timeout"
    assert status(graded, "endless.ipynb", "compression_rate") == "passed"
    # a loop that swallows the interruption: the process is stopped, a new one grades the rest
    assert status(graded, "stubborn.ipynb", "coding_rate") == "timeout"
    assert status(graded, "stubborn.ipynb", "compression_rate") == "passed"
    assert "time limit" in feedback(graded, "stubborn")


def test_a_crash_is_an_error_and_the_rest_is_graded(graded):
    assert status(graded, "exits.ipynb", "compression_rate") == "error"
    assert status(graded, "exits.ipynb", "coding_rate") == "passed"
    assert "exited with code 3" in feedback(graded, "exits")
    assert status(graded, "segfault.ipynb", "coding_rate") == "error"
    assert "SIGSEGV" in feedback(graded, "segfault")
    assert status(graded, "segfault.ipynb", "compression_rate") == "passed"
    assert status(graded, "memory.ipynb", "coding_rate") == "error"
    assert "MemoryError" in feedback(graded, "memory")
    assert status(graded, "memory.ipynb", "compression_rate") == "passed"


def test_a_delegation_to_the_library_does_not_pass(graded):
    for name in ("delegates", "delegates_bound"):
        assert status(graded, f"{name}.ipynb", "coding_rate") != "passed"
        assert grade.BLOCKED_MESSAGE in feedback(graded, name)
        assert status(graded, f"{name}.ipynb", "compression_rate") == "passed"


def test_a_forged_print_earns_nothing(graded):
    assert status(graded, "forged.ipynb", "coding_rate") == "wrong"
    assert status(graded, "forged.ipynb", "compression_rate") == "passed"


def test_a_patched_checker_is_not_trusted(graded):
    assert status(graded, "tampered.ipynb", "coding_rate") == "error"
    assert "whitebox.exercise_checks.core.compare" in feedback(graded, "tampered")


def test_failing_cells_are_noted_and_the_next_ones_run(graded):
    rows = graded["rows"]["noisy.ipynb"]
    assert all(r["status"] == "passed" for r in rows.values())
    text = feedback(graded, "noisy")
    assert "NameError" in text and "time limit" in text


def test_a_cell_that_ends_the_process_is_skipped_and_the_rest_graded(graded):
    rows = graded["rows"]["crashing_cell.ipynb"]
    assert all(r["status"] == "passed" for r in rows.values())
    assert "cell 2: the grading process exited with code 4" in feedback(graded, "crashing_cell")


def test_a_renamed_file_grades_the_same(graded):
    renamed = graded["rows"]["renamed/homework 1 (final).ipynb"]
    correct = graded["rows"]["correct.ipynb"]
    strip = {"submission"}
    assert {k: {c: v for c, v in r.items() if c not in strip} for k, r in renamed.items()} == {
        k: {c: v for c, v in r.items() if c not in strip} for k, r in correct.items()
    }


def test_the_untouched_learner_copy_is_not_attempted(graded):
    rows = graded["rows"]["untouched.ipynb"]
    assert {r["status"] for r in rows.values()} == {"not attempted"}
    assert "NotImplementedError" in feedback(graded, "untouched")


def test_another_version_of_the_exercise_is_graded_and_noted(graded):
    rows = graded["rows"]["old_version.ipynb"]
    assert {r["status"] for r in rows.values()} == {"not attempted"}
    assert "another version of exercise 01_coding_rate" in feedback(graded, "old_version")
    assert "another version" not in feedback(graded, "untouched")


def test_a_submission_under_the_old_file_name_grades_like_one_under_the_new(graded):
    """Exercise 1 was exercises/01_coding_rate.ipynb before its file took the "ex" prefix: a
    submission under the old name gets the same rows and the same feedback as under the new
    one (the grader reads the exercise from the metadata, which the rename left unchanged)."""
    old, new = graded["rows"]["01_coding_rate.ipynb"], graded["rows"]["ex01_coding_rate.ipynb"]
    assert set(old) == set(new) == {"coding_rate", "compression_rate"}
    for check in old:
        a, b = dict(old[check]), dict(new[check])
        assert a.pop("submission") != b.pop("submission")
        assert a == b, check
    assert old["coding_rate"]["status"] == "wrong" and old["coding_rate"]["slips"]
    assert old["compression_rate"]["status"] == "passed"
    assert old["coding_rate"]["exercise"] == "01_coding_rate"
    texts = [feedback(graded, stem).splitlines() for stem in ("01_coding_rate", "ex01_coding_rate")]
    assert texts[0][0] != texts[1][0]  # "Feedback on <the path>"
    assert texts[0][1:] == texts[1][1:] and "Exercise 01_coding_rate" in texts[0]
    assert "another version" not in "\n".join(texts[0])


def test_a_notebook_without_metadata_is_an_error_that_says_why(graded):
    rows = graded["rows"]["no_metadata.ipynb"]
    assert list(rows) == [""]
    assert rows[""]["status"] == "error" and rows[""]["exercise"] == ""
    assert "no exercise metadata" in feedback(graded, "no_metadata")


def test_written_answers_are_listed_for_hand_grading_not_scored(graded):
    assert "written.ipynb" not in graded["rows"]  # no row: nothing graded automatically
    text = feedback(graded, "written")
    assert "1 of 4 written" in text and "by hand" in text


# ----------------------------------------------------------------------------- the table


def _checker_calls(nb) -> set[tuple[str, str]]:
    calls = set()
    for cell in nb.cells:
        if cell.metadata.get("whitebox", {}).get("role") != "check":
            continue
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                if node.func.id.startswith("check_") and node.args:
                    calls.add((node.args[0].id, node.func.id))
    return calls


@pytest.mark.parametrize(
    "name", sorted(grade.exercise_of(p) for p in EXERCISES.glob("ex[0-9][0-9]_*.ipynb"))
)
def test_the_grader_checks_what_the_notebook_checks(name):
    nb = learner(name)
    assert nb.metadata["whitebox"]["exercise"] == name
    table = {(c.function, c.checker) for c in grade.EXERCISES[name]}
    assert table == _checker_calls(nb)
    for check in grade.EXERCISES[name]:
        assert hasattr(ec, check.checker)
        for dotted in check.blocked:
            module, attr = grade._resolve(dotted)
            assert callable(getattr(module, attr)), dotted


def test_the_guard_restores_the_library():
    import whitebox as wb
    import whitebox.mcr2 as mcr2

    original = wb.coding_rate

    def uses_library(Z, eps):
        return wb.coding_rate(Z, eps)

    guarded = grade._Guarded(uses_library, ("whitebox.mcr2.coding_rate",))
    with pytest.raises(RuntimeError, match=grade.BLOCKED_MESSAGE):
        guarded(np.eye(2), 1.0)
    assert wb.coding_rate is original and mcr2.coding_rate is original
    assert guarded.__code__ is uses_library.__code__


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "args, words",
    [
        (["missing.ipynb", "--out", "g.csv"], "missing.ipynb"),
        (["NB", "--out", "g.csv", "--timeout", "0"], "--timeout"),
        (["NB", "--out", "g.csv", "--timeout", "nan"], "--timeout"),
        (["NB", "--out", "g.csv", "--timeout", "-3"], "--timeout"),
        (["NB", "--out", "FOLDER"], "--out"),
        (["NB", "--out", "nowhere/g.csv"], "--out"),
        (["NB"], "--out"),
        (["EMPTY", "--out", "g.csv"], "no .ipynb"),
        (["NB", "--out", "g.csv", "--memory-mb", "lots"], "--memory-mb"),
        (["NB", "--out", "g.csv", "--memory-mb", "100"], "--memory-mb"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, monkeypatch, capsys, args, words):
    monkeypatch.chdir(tmp_path)
    nbformat.write(filled("01_coding_rate"), tmp_path / "nb.ipynb")
    (tmp_path / "folder").mkdir()
    (tmp_path / "empty").mkdir()
    names = {"NB": "nb.ipynb", "FOLDER": "folder", "EMPTY": "empty"}
    code = grade.main([names.get(a, a) for a in args])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and words in err, err
    assert not (tmp_path / "g.csv").exists()


def test_grading_a_copy_of_a_folder_twice_replaces_the_gradebook(tmp_path, capsys):
    nb = learner("10_training_questions")  # written answers only: no process is started
    nbformat.write(nb, tmp_path / "a.ipynb")
    shutil.copy(tmp_path / "a.ipynb", tmp_path / "b.ipynb")
    out = tmp_path / "g.csv"
    assert (
        grade.main([str(tmp_path / "a.ipynb"), str(tmp_path / "b.ipynb"), "--out", str(out)]) == 0
    )
    assert out.read_text() == ",".join(grade.COLUMNS) + "\n"
    assert (tmp_path / "g-feedback" / "a.txt").exists()
    assert grade.main([str(tmp_path), "--out", str(out)]) == 0
    assert "replacing the previous one" in capsys.readouterr().out


def test_the_command_line_answers_a_missing_file_with_one_line(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "whitebox.grade", "nothing.ipynb", "--out", "g.csv"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "error: SUBMISSION: nothing.ipynb is not a file or a folder"
    ]
