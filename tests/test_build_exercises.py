"""scripts/build_exercises.py: the grader's metadata, and a learner's work is never lost (kept
as it is, backed up before --force replaces it, never condemned by --check)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from whitebox import grade

ROOT = Path(__file__).resolve().parent.parent
NAME = "ex01_coding_rate.ipynb"


def _load_build_module():
    spec = importlib.util.spec_from_file_location(
        "build_exercises_under_test", ROOT / "scripts/build_exercises.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build_module()


@pytest.fixture
def repo(tmp_path):
    """A copy of one exercise's source in a fresh tree, its learner copy built."""
    (tmp_path / "exercises" / "solutions").mkdir(parents=True)
    shutil.copy(ROOT / "exercises" / "solutions" / NAME, tmp_path / "exercises" / "solutions")
    assert build.build(check=False, root=tmp_path) == 0
    return tmp_path


def learner(root: Path) -> Path:
    return root / "exercises" / NAME


def answer(path: Path) -> None:
    """Fill in the learner's first answer, as JupyterLab would save it."""
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if c.metadata.get("whitebox", {}).get("role") == "answer")
    cell.source = cell.source.replace("raise NotImplementedError", "return 42.0  # my answer")
    nbformat.write(nb, path)


def run_once(path: Path) -> None:
    """Add an output, as running the untouched notebook would."""
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hello\n")]
    cell.execution_count = 1
    nbformat.write(nb, path)


def change_source(root: Path) -> None:
    """The instructor edits the source: a new sentence in the first markdown cell."""
    src = root / "exercises" / "solutions" / NAME
    nb = nbformat.read(src, as_version=4)
    cell = next(
        c
        for c in nb.cells
        if c.cell_type == "markdown" and "solution-only" not in c.metadata.get("tags", [])
    )
    cell.source += "\n\nA sentence added by the instructor."
    nbformat.write(nb, src)


def git(root: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", *args],
        cwd=root,
        check=True,
        capture_output=True,
    )


def commit_all(root: Path) -> None:
    if not (root / ".git").exists():
        git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "x")


# ----------------------------------------------------------------------------- metadata


def test_the_learner_copy_names_its_exercise_and_version(repo):
    nb = nbformat.read(learner(repo), as_version=4)
    meta = nb.metadata["whitebox"]
    assert meta["exercise"] == "01_coding_rate"
    assert len(meta["version"]) == 16 and meta["version"] == build.version_of(nb)
    assert build.self_consistent(learner(repo).read_text(encoding="utf-8"))
    roles = [c.metadata.get("whitebox", {}).get("role") for c in nb.cells]
    assert roles.count("answer") == 2 and roles.count("check") == 2
    for cell in nb.cells:
        role = cell.metadata.get("whitebox", {}).get("role")
        if role == "answer":
            assert "raise NotImplementedError" in cell.source
        if role == "check":
            assert "check_" in cell.source


def test_the_version_changes_with_the_source(repo):
    before = nbformat.read(learner(repo), as_version=4).metadata["whitebox"]["version"]
    change_source(repo)
    assert build.build(check=False, root=repo) == 0
    after = nbformat.read(learner(repo), as_version=4).metadata["whitebox"]["version"]
    assert before != after
    assert "A sentence added by the instructor." in learner(repo).read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- never lost


def test_build_keeps_a_copy_with_answers_and_says_so(repo, capsys):
    answer(learner(repo))
    mine = learner(repo).read_bytes()
    change_source(repo)
    capsys.readouterr()
    assert build.build(check=False, root=repo) == 0
    assert learner(repo).read_bytes() == mine
    err = capsys.readouterr().err
    assert f"kept exercises/{NAME}" in err and "FORCE=1" in err
    assert not (repo / "exercises" / "backups").exists()


def test_build_keeps_a_copy_that_was_only_run(repo, capsys):
    run_once(learner(repo))
    mine = learner(repo).read_bytes()
    change_source(repo)
    assert build.build(check=False, root=repo) == 0
    assert learner(repo).read_bytes() == mine
    assert "kept" in capsys.readouterr().err


def test_build_replaces_an_untouched_stale_copy(repo, capsys):
    change_source(repo)
    assert build.build(check=False, root=repo) == 0
    assert "A sentence added" in learner(repo).read_text(encoding="utf-8")
    assert f"wrote exercises/{NAME}" in capsys.readouterr().out


def test_force_backs_up_the_learners_version_first(repo, capsys):
    answer(learner(repo))
    mine = learner(repo).read_bytes()
    change_source(repo)
    assert build.main(["--force"], repo) == 0
    backups = sorted((repo / "exercises" / "backups").iterdir())
    assert len(backups) == 1 and backups[0].read_bytes() == mine
    assert backups[0].name.startswith("ex01_coding_rate-") and backups[0].suffix == ".ipynb"
    assert build.self_consistent(learner(repo).read_text(encoding="utf-8"))
    assert "moved your version" in capsys.readouterr().out
    # a second forced build with new answers keeps the first backup and adds another
    answer(learner(repo))
    second = learner(repo).read_bytes()
    assert build.main(["--force"], repo) == 0
    backups = sorted((repo / "exercises" / "backups").iterdir())
    assert sorted(b.read_bytes() for b in backups) == sorted([mine, second])
    # the backups are not taken for learner copies without a source
    assert build.build(check=True, root=repo) == 0


def test_a_copy_equal_to_the_committed_one_is_not_the_learners_work(repo):
    # a copy in an older format (no version) that git has committed is replaced
    path = learner(repo)
    nb = nbformat.read(path, as_version=4)
    del nb.metadata["whitebox"]
    nbformat.write(nb, path)
    commit_all(repo)
    assert build.build(check=False, root=repo) == 0
    assert build.self_consistent(path.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- --check


def test_check_passes_an_edited_copy_when_the_committed_one_is_fresh(repo, capsys):
    commit_all(repo)
    answer(learner(repo))
    assert build.build(check=True, root=repo) == 0
    assert "holds your work; its committed copy is up to date" in capsys.readouterr().out


def test_check_catches_a_stale_committed_copy_under_an_edited_one(repo, capsys):
    commit_all(repo)
    change_source(repo)
    answer(learner(repo))
    assert build.build(check=True, root=repo) == 1
    assert f"the committed exercises/{NAME} is out of date" in capsys.readouterr().err


def test_a_copy_under_its_old_name_is_kept_and_pointed_to_the_new_one(repo, capsys):
    """A learner who started exercise 1 before the ``ex`` prefix has their work in
    exercises/01_coding_rate.ipynb: no build (not even --force) touches it, the build says where
    the exercise lives now, and only --check --strict (CI) counts it as a stray file."""
    old = repo / "exercises" / "01_coding_rate.ipynb"
    shutil.copy(learner(repo), old)
    answer(old)
    mine, new = old.read_bytes(), learner(repo).read_bytes()
    capsys.readouterr()
    for argv in ([], ["--force"], ["--check"]):
        assert build.main(argv, repo) == 0, argv
        out = capsys.readouterr().out
        assert "exercises/01_coding_rate.ipynb has the exercise's old name" in out, argv
        assert f"exercises/{NAME} now" in out and "still grades" in out
        assert old.read_bytes() == mine and learner(repo).read_bytes() == new
    assert not (repo / "exercises" / "backups").exists()
    assert build.main(["--check", "--strict"], repo) == 1
    assert "01_coding_rate.ipynb has the exercise's old name" in capsys.readouterr().err
    assert nbformat.read(old, as_version=4).metadata["whitebox"]["exercise"] == "01_coding_rate"


def test_a_stray_copy_without_a_source_fails_the_check(repo, capsys):
    for name in ("ex42_nothing.ipynb", "42_nothing.ipynb"):  # new style and old style
        shutil.copy(learner(repo), repo / "exercises" / name)
        assert build.build(check=True, root=repo) == 1
        assert f"exercises/{name} has no solution" in capsys.readouterr().err
        (repo / "exercises" / name).unlink()


def test_the_exercise_is_the_file_name_without_its_prefix():
    assert build.exercise_of("exercises/solutions/ex01_coding_rate.ipynb") == "01_coding_rate"
    assert build.exercise_of("ex10_training_questions.ipynb") == "10_training_questions"
    assert build.exercise_of("class/01_coding_rate.ipynb") == "01_coding_rate"  # an old name
    assert build.exercise_of("extra_notes.ipynb") == "extra_notes"  # "ex" alone is no prefix
    assert build.file_name("03_gradient") == "ex03_gradient.ipynb"
    assert [p.name for p in build.sources(ROOT)] == sorted(
        build.file_name(e) for e in grade.EXERCISES
    )


def test_check_leaves_committed_answers_alone_unless_strict(repo, capsys):
    commit_all(repo)
    answer(learner(repo))
    commit_all(repo)  # the learner commits their answers on a branch of their own
    assert build.build(check=True, root=repo) == 0
    assert "holds your work, committed; not compared" in capsys.readouterr().out
    assert build.main(["--check", "--strict"], repo) == 1
    assert "is not the generated copy" in capsys.readouterr().err
    mine = learner(repo).read_bytes()
    change_source(repo)
    assert build.build(check=False, root=repo) == 0  # committed answers are kept too
    assert learner(repo).read_bytes() == mine


def test_strict_passes_the_generated_copies(repo):
    assert build.main(["--check", "--strict"], repo) == 0


def test_check_catches_a_stale_untouched_copy(repo, capsys):
    change_source(repo)
    assert build.build(check=True, root=repo) == 1
    assert f"exercises/{NAME} is out of date" in capsys.readouterr().err


def test_check_without_git_does_not_condemn_an_edited_copy(repo, capsys):
    answer(learner(repo))
    assert build.build(check=True, root=repo) == 0
    assert "not compared" in capsys.readouterr().out


def test_check_catches_a_missing_copy(repo, capsys):
    learner(repo).unlink()
    assert build.build(check=True, root=repo) == 1
    assert "is missing" in capsys.readouterr().err


def test_check_and_force_together_are_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        build.main(["--check", "--force"])
    assert exc.value.code == 2


def test_the_generated_copies_are_lint_clean(tmp_path):
    """make lint skips the learner copies (they may hold a learner's answers): the copies the
    build generates are linted here instead."""
    ruff = Path(sys.executable).parent / "ruff"
    if not ruff.exists():
        pytest.skip("ruff is not installed next to this Python")
    (tmp_path / "exercises").mkdir()
    shutil.copytree(ROOT / "exercises" / "solutions", tmp_path / "exercises" / "solutions")
    assert build.build(check=False, root=tmp_path) == 0
    copies = sorted(str(p) for p in (tmp_path / "exercises").glob("ex[0-9][0-9]_*.ipynb"))
    assert len(copies) == len(build.sources(ROOT))
    config = ["--config", str(ROOT / "pyproject.toml")]
    for command in (["check"], ["format", "--check"]):
        run = subprocess.run(
            [str(ruff), *command, *config, *copies], capture_output=True, text=True
        )
        assert run.returncode == 0, run.stdout + run.stderr


def test_roles_of_the_cells():
    cells = [
        "import numpy as np\nfrom whitebox.exercise_checks import check_thing",
        "def thing(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION",
        "thing_ok = check_thing(thing)",
        "def given_helper(x):\n    return x + 1",  # a given definition: the grader runs it
        "if thing_ok:\n    print(thing(3))",
    ]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nb.cells.insert(
        2, nbformat.v4.new_markdown_cell("Why?\n\n### BEGIN SOLUTION\nBecause.\n### END SOLUTION")
    )
    out = build.learner_notebook(nb, "exercises/solutions/ex99_thing.ipynb")
    roles = [c.metadata.get("whitebox", {}).get("role") for c in out.cells]
    assert roles == [None, "answer", "written", "check", None, "experiment"]
    assert out.metadata["whitebox"]["exercise"] == "99_thing"  # the name without its "ex"
    assert "*Your answer here.*" in out.cells[2].source and "Because" not in out.cells[2].source
