r"""Grade learner notebooks of the exercises: a gradebook CSV and a feedback text per submission.

    python -m whitebox.grade SUBMISSION.ipynb ... [FOLDER ...] --out grades.csv [--timeout S]
    make grade SUBMISSIONS=folder/

Each submission is recognised from its own metadata, ``metadata.whitebox.exercise``, written
into the learner copies by ``scripts/build_exercises.py``; its file name does not matter. A
notebook without that metadata is graded ``error`` with a message saying so.

Each submission runs in its own Python process, in a scratch folder of its own that is deleted
afterwards, with a time limit per cell and per check (``--timeout``) and a memory limit
(``--memory-mb``, ``RLIMIT_AS``). The process executes the notebook's code cells in order,
except the cells the build marked as checker cells and as the given experiments that use the
learner's functions (a cell that raises is noted and the next one runs, as nbgrader does).
Then the grader's own copy of each checker (:mod:`whitebox.exercise_checks`) is called on the
learner's functions, with the library's reference implementation of that function unavailable,
and the results come back as JSON over a pipe. Nothing the notebook printed is read: a cell that
prints "passed" earns nothing.

Statuses: ``passed``, ``wrong``, ``error`` (the code raised, crashed the process, or the
function is missing), ``timeout`` and ``not attempted`` (the function still raises
``NotImplementedError``). Each check is worth one point. A cell or check that runs past the
time limit is interrupted; a process that hangs in C code or crashes (a segmentation fault,
``os._exit``, the memory limit) is killed or lost and restarted for the remaining checks, and
no submission can stop the grading of another.

Written answers (exercises 09 and 10, the derivation of exercise 03, the comment of exercise
08) are not graded automatically: they have no row in the gradebook, so its scores sum to the
automatic part; the feedback lists each written answer as written or not, for grading by hand.

Not a sandbox: a submission's code runs with your user's rights, and a student who sets out to
fool the grader from inside the notebook (patching numpy, reading the grader's pipe) can.
Grade untrusted work inside a container or a virtual machine.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint import CheckpointWriteError, atomic_write

COLUMNS = ["submission", "exercise", "check", "status", "score", "max_score", "slips"]
STATUSES = ("passed", "wrong", "error", "timeout", "not attempted")
DEFAULT_TIMEOUT = 60.0
DEFAULT_MEMORY_MB = 4096
MIN_MEMORY_MB = 512
FILE_LIMIT_MB = 256  # the largest file a submission's process may write (its printed output too)
STARTUP_S = 120.0  # the child's imports (numpy, the library) on a loaded machine
WRITTEN_STUB = "*Your answer here.*"
SKIPPED_ROLES = ("check", "experiment")
BLOCKED_MESSAGE = "this exercise asks you to write it yourself"


@dataclass(frozen=True)
class Check:
    """One graded function: its name in the notebook, the checker, the notebook objects the
    checker also takes, and the library functions the learner must not call instead."""

    function: str
    checker: str
    extra: tuple[str, ...] = ()
    blocked: tuple[str, ...] = ()


#: the prefix of the exercises' file names: exercise ``01_coding_rate`` is the notebook
#: ``exercises/ex01_coding_rate.ipynb`` (learner copy) and ``exercises/solutions/ex01_...``
#: (source), so that in JupyterLab its tab is told apart from chapter 1's
#: ``notebooks/01_coding_rate.ipynb``. The exercise itself, as its metadata names it and as the
#: gradebook shows it, keeps the name without the prefix (a submission made before the
#: rename, under the old file name, grades the same).
FILE_PREFIX = "ex"
_FILE_STEM = re.compile(rf"{FILE_PREFIX}(\d\d_\w+)")


def file_name(exercise: str) -> str:
    """The notebook file of ``exercise``: ``"01_coding_rate"`` -> ``"ex01_coding_rate.ipynb"``."""
    return f"{FILE_PREFIX}{exercise}.ipynb"


def exercise_of(path: str | Path) -> str:
    """The exercise a notebook file holds, from its name: ``.../ex01_coding_rate.ipynb`` ->
    ``"01_coding_rate"``. A stem without the prefix (a file named before the rename) is the
    exercise itself."""
    stem = Path(path).stem
    m = _FILE_STEM.fullmatch(stem)
    return m.group(1) if m else stem


#: exercise (the metadata's name, the file's stem without "ex") -> the functions graded
#: automatically.
EXERCISES: dict[str, tuple[Check, ...]] = {
    "01_coding_rate": (
        Check("coding_rate", "check_coding_rate", blocked=("whitebox.mcr2.coding_rate",)),
        Check(
            "compression_rate",
            "check_compression_rate",
            blocked=("whitebox.mcr2.compression_rate",),
        ),
    ),
    "02_variational_compression": (
        Check(
            "token_statistics",
            "check_token_statistics",
            blocked=("whitebox.mcr2.token_statistics",),
        ),
        Check(
            "variational_compression_rate",
            "check_variational_compression_rate",
            blocked=("whitebox.mcr2.variational_compression_rate",),
        ),
        Check("eigenbases", "check_eigenbases"),
    ),
    "03_gradient": (
        Check(
            "variational_compression_grad",
            "check_variational_compression_grad",
            blocked=("whitebox.mcr2.variational_compression_grad",),
        ),
        Check(
            "numerical_gradient",
            "check_numerical_gradient",
            blocked=("whitebox.gradcheck.numerical_grad",),
        ),
    ),
    "04_tssa_step_membership": (
        Check("tssa_step", "check_tssa_step", blocked=("whitebox.mcr2.tssa_step",)),
        Check(
            "estimate_membership",
            "check_estimate_membership",
            blocked=("whitebox.mcr2.estimate_membership",),
        ),
    ),
    "05_tssa_forward": (
        Check("tssa_forward", "check_tssa_forward", blocked=("whitebox.nn.tssa_forward",)),
    ),
    "06_tssa_backward": (
        Check(
            "tssa_backward",
            "check_tssa_backward",
            extra=("tssa_forward",),
            blocked=("whitebox.nn.tssa_backward",),
        ),
    ),
    "07_causal_tssa": (
        Check(
            "causal_tssa_forward",
            "check_causal_tssa_forward",
            blocked=("whitebox.nn.causal_tssa_forward",),
        ),
    ),
    "08_complexity": (
        Check("time_call", "check_time_call"),
        Check("fit_exponent", "check_fit_exponent"),
    ),
    "09_unrolled_questions": (),
    "10_training_questions": (),
}


class UsageError(Exception):
    """A bad command-line argument (exit 2, one line)."""


# ============================================================================ reading notebooks


@dataclass
class Notebook:
    exercise: str | None
    version: str | None
    cells: list[dict]  # {"index", "type", "source", "role"}
    problem: str | None = None  # why it cannot be graded


def _text(source) -> str:
    return "".join(source) if isinstance(source, list) else str(source or "")


def read_notebook(path: Path) -> Notebook:
    """The cells and the exercise of a submission; ``problem`` says why it cannot be graded."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "it is not a JSON notebook"
        return Notebook(None, None, [], f"cannot read the notebook: {why}")
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        return Notebook(None, None, [], "it is not a Jupyter notebook (no list of cells)")
    if data.get("nbformat") != 4:
        return Notebook(None, None, [], "it is not a version-4 Jupyter notebook")
    cells = []
    for i, cell in enumerate(data["cells"]):
        if not isinstance(cell, dict):
            continue
        meta = cell.get("metadata") if isinstance(cell.get("metadata"), dict) else {}
        wb_meta = meta.get("whitebox") if isinstance(meta.get("whitebox"), dict) else {}
        role = wb_meta.get("role") if isinstance(wb_meta.get("role"), str) else None
        cells.append(
            {
                "index": i,
                "type": cell.get("cell_type"),
                "source": _text(cell.get("source")),
                "role": role,
            }
        )
    meta = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
    wb_meta = meta.get("whitebox") if isinstance(meta.get("whitebox"), dict) else {}
    exercise = wb_meta.get("exercise")
    version = wb_meta.get("version")
    if not isinstance(exercise, str) or not exercise:
        return Notebook(
            None,
            None,
            cells,
            "the notebook has no exercise metadata (metadata.whitebox.exercise); it was not "
            "made from a learner copy built by `make exercises`",
        )
    if exercise not in EXERCISES:
        return Notebook(exercise, version, cells, f"unknown exercise {exercise!r}")
    return Notebook(exercise, version if isinstance(version, str) else None, cells)


# ============================================================================ the child process


class _Timeout(BaseException):
    """Raised in the child when a cell or a check runs past the time limit (a BaseException,
    so that neither the learner's ``except Exception`` nor a checker swallows it)."""


def _on_alarm(signum, frame):
    raise _Timeout


def _resolve(dotted: str):
    import importlib

    module_name, attr = dotted.rsplit(".", 1)
    return importlib.import_module(module_name), attr


class _Guarded:
    """The learner's function, called with the library's reference implementations of the
    exercise replaced by functions that raise (in every ``whitebox`` module that exports them,
    and in the learner's own global names bound to them)."""

    def __init__(self, fn, blocked: tuple[str, ...]):
        self._fn = fn
        self._blocked = blocked
        self.__wrapped__ = fn
        self.__name__ = getattr(fn, "__name__", "function")
        self.__doc__ = getattr(fn, "__doc__", None)
        if hasattr(fn, "__code__"):
            self.__code__ = fn.__code__  # the checkers name the learner's line that raised

    def __call__(self, *args, **kwargs):
        originals = []
        for dotted in self._blocked:
            module, attr = _resolve(dotted)
            target = getattr(module, attr, None)
            if target is not None:
                originals.append((dotted, target))
        if not originals:
            return self._fn(*args, **kwargs)
        patched = []  # (namespace dict, key, original)
        for dotted, target in originals:

            def refuse(*a, _name=dotted, **k):
                raise RuntimeError(
                    f"{BLOCKED_MESSAGE}: {_name} is not available while your "
                    f"{self.__name__} is checked"
                )

            spaces = [vars(m) for name, m in list(sys.modules.items()) if _is_library(name, m)]
            spaces.append(getattr(self._fn, "__globals__", {}))
            for space in spaces:
                for key, value in list(space.items()):
                    if value is target:
                        patched.append((space, key, value))
                        space[key] = refuse
        try:
            return self._fn(*args, **kwargs)
        finally:
            for space, key, value in reversed(patched):
                space[key] = value


def _is_library(name: str, module) -> bool:
    return (
        module is not None
        and (name == "whitebox" or name.startswith("whitebox."))
        and not name.startswith("whitebox.exercise_checks")
        and name != "whitebox.grade"
    )


def _snapshot() -> dict:
    """(module, name) -> id of every function and class in the library, numpy and the checkers
    (a notebook that replaces one of them is reported, never trusted)."""
    import types

    names = [n for n, m in sys.modules.items() if m is not None and n.split(".")[0] == "whitebox"]
    names += ["numpy", "numpy.linalg"]
    out = {}
    for n in names:
        module = sys.modules.get(n)
        if module is None:
            continue
        for key, value in list(vars(module).items()):
            if isinstance(value, types.FunctionType | types.BuiltinFunctionType | type):
                out[(n, key)] = id(value)
            elif callable(value) and type(value).__name__ in ("ufunc", "_ArrayFunctionDispatcher"):
                out[(n, key)] = id(value)
    return out


def _replaced(before: dict) -> list[str]:
    out = []
    for (n, key), ident in before.items():
        module = sys.modules.get(n)
        value = vars(module).get(key) if module is not None else None
        if value is None or id(value) != ident:
            out.append(f"{n}.{key}")
    return sorted(out)


def _child() -> None:
    """The grading process of one submission: read the job on stdin, report on the pipe."""
    import builtins
    import linecache
    import resource

    fd = int(os.environ.pop("WHITEBOX_GRADE_FD"))
    job = json.loads(sys.stdin.read())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    pipe = os.fdopen(fd, "w", buffering=1, encoding="utf-8")

    def send(**event):
        pipe.write(json.dumps(event) + "\n")
        pipe.flush()

    memory = int(job["memory_mb"]) * 1024 * 1024
    limits = (
        (resource.RLIMIT_AS, memory),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_FSIZE, FILE_LIMIT_MB * 1024 * 1024),  # a print loop cannot fill the disk
    )
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit raises OSError
    for limit, value in limits:
        try:  # never raise a hard limit; some systems (macOS) do not enforce RLIMIT_AS
            hard = resource.getrlimit(limit)[1]
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(limit, (value, hard))
        except (ValueError, OSError):
            pass
    signal.signal(signal.SIGALRM, _on_alarm)
    timeout = float(job["timeout"])

    import whitebox  # noqa: F401  (loaded before the learner's code: the snapshot covers it)
    import whitebox.exercise_checks as checks
    import whitebox.gradcheck  # noqa: F401
    import whitebox.nn  # noqa: F401

    before = _snapshot()
    send(event="ready")
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    for cell in job["cells"]:
        index = cell["index"]
        send(event="cell", index=index, state="start")
        state, error = "done", None
        try:
            source = _python_source(cell["source"])
            filename = f"<cell {index}>"
            linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
            code = compile(source, filename, "exec")
            signal.setitimer(signal.ITIMER_REAL, timeout)
            try:
                exec(code, namespace)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _Timeout:
            state, error = "timeout", f"ran past the time limit of {timeout:g} s"
        except BaseException as exc:  # the learner's code raised: noted, the next cell runs
            state, error = "error", _one_line(exc)
        send(event="cell", index=index, state=state, error=error)

    replaced = _replaced(before)
    for spec in job["checks"]:
        send(event="check", name=spec["function"], state="start")
        try:
            signal.setitimer(signal.ITIMER_REAL, timeout)
            try:
                result = _run_one(checks, namespace, spec, replaced)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _Timeout:
            result = {
                "status": "timeout",
                "message": f"{spec['function']} ran past the time limit of {timeout:g} s (an "
                "endless loop, or far too slow) and was interrupted",
            }
        except BaseException as exc:
            result = {"status": "error", "message": f"the checker failed: {_one_line(exc)}"}
        send(event="check", name=spec["function"], state="done", result=result)
    send(event="finished")
    pipe.close()
    os._exit(0)  # no interpreter shutdown: nothing the learner registered (atexit) runs


def _python_source(source: str) -> str:
    """The cell as plain Python: a line magic or shell escape (``%matplotlib``, ``!pip``)
    becomes ``pass``, and a cell magic's body (``%%time``) runs as it is."""
    lines = source.splitlines()
    if lines and lines[0].lstrip().startswith("%%"):
        lines = lines[1:]
    out = []
    for line in lines:
        stripped = line.lstrip()
        if stripped.startswith(("%", "!")):
            line = line[: len(line) - len(stripped)] + "pass"
        out.append(line)
    return "\n".join(out)


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:300]


def _run_one(checks, namespace, spec, replaced) -> dict:
    name = spec["function"]
    if replaced:
        shown = ", ".join(replaced[:3]) + (" ..." if len(replaced) > 3 else "")
        return {
            "status": "error",
            "message": f"the notebook replaced part of the library or of numpy ({shown}); the "
            "grader does not check functions in a changed library",
        }
    fn = namespace.get(name)
    if fn is None:
        return {"status": "missing", "message": f"the notebook defines no function `{name}`"}
    if not callable(fn):
        return {
            "status": "error",
            "message": f"`{name}` is a {type(fn).__name__}, not a function",
        }
    extra = []
    for other in spec["extra"]:
        if other not in namespace:
            return {"status": "missing", "message": f"the notebook defines no `{other}`"}
        extra.append(namespace[other])
    checker = getattr(checks, spec["checker"])
    out = io.StringIO()
    saved = sys.stdout
    sys.stdout = out  # the checker's printed report; the result object is what counts
    try:
        result = checker(_Guarded(fn, tuple(spec["blocked"])), *extra)
    finally:
        sys.stdout = saved
    status = getattr(result, "status", None)
    status = {"not implemented": "not attempted"}.get(status, status)
    if status not in ("passed", "wrong", "error", "not attempted"):
        status = "error"
    rel = getattr(result, "rel_error", None)
    return {
        "status": status,
        "quantity": getattr(result, "quantity", None),
        "rel_error": rel if isinstance(rel, float) and math.isfinite(rel) else None,
        "slips": [str(s) for s in getattr(result, "slips", []) or []],
        "message": str(getattr(result, "message", "") or out.getvalue()).strip(),
    }


# ============================================================================ the parent


@dataclass
class Outcome:
    """What grading one submission found."""

    submission: str
    exercise: str
    results: dict[str, dict] = field(default_factory=dict)  # function -> result
    notes: list[str] = field(default_factory=list)
    written: list[tuple[str, bool]] = field(default_factory=list)  # (which, written?)
    problem: str | None = None


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _child_env() -> dict:
    env = dict(os.environ)
    package_parent = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
    env.update(
        MPLBACKEND="Agg",
        OMP_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def _run_child(job: dict, scratch: Path, timeout: float):
    """Run one child on ``job``; returns (events, how it ended: 'finished', 'killed' or a
    description of the crash)."""
    read_fd, write_fd = os.pipe()
    env = _child_env()
    env["WHITEBOX_GRADE_FD"] = str(write_fd)
    log = open(scratch / "output.log", "ab")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from whitebox.grade import _child; _child()"],
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=scratch,
            env=env,
            pass_fds=(write_fd,),
            start_new_session=True,
        )
    finally:
        os.close(write_fd)
        log.close()
    events: list[dict] = []
    ended = None
    try:
        try:
            proc.stdin.write(json.dumps(job).encode("utf-8"))
            proc.stdin.close()
        except BrokenPipeError:
            pass
        buffer = b""
        grace = 2.0 + 0.25 * timeout
        step_started = time.monotonic()
        limit = STARTUP_S + timeout
        while True:
            left = step_started + limit - time.monotonic()
            if left <= 0:
                ended = "killed"
                break
            ready, _, _ = select.select([read_fd], [], [], min(left, 1.0))
            if not ready:
                continue
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break  # the child closed the pipe: it finished or died
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(event, dict):
                    continue
                events.append(event)
                step_started = time.monotonic()
                limit = timeout + grace
                if event.get("event") == "finished":
                    ended = "finished"
            if ended == "finished":
                break
    finally:
        os.close(read_fd)
        if ended != "finished":
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
        else:
            if ended != "finished":
                try:  # anything the learner's code started in the group
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
    if ended is None:
        ended = f"died of {_signal_name(code)}" if code < 0 else f"exited with code {code}"
    return events, ended


def _crash_hint(scratch: Path) -> str:
    """The last line of what the process printed, when it names a memory error."""
    try:
        tail = (scratch / "output.log").read_bytes()[-2000:].decode("utf-8", "replace")
    except OSError:
        return ""
    return " (out of memory)" if "MemoryError" in tail else ""


def _first_line(markdown: str) -> str:
    """The first line of a markdown text that says something, without its markup, shortened."""
    for line in markdown.splitlines():
        text = line.strip().lstrip("#>").strip().replace("**", "").replace("*", "").strip(" :.")
        if len(text) > 3:
            return text if len(text) <= 60 else text[:57].rstrip() + "..."
    return ""


def _current_version(exercise: str) -> str | None:
    """The version of the learner copy of ``exercise`` in this repository's exercises/ (None
    when the library is installed without it)."""
    path = Path(__file__).resolve().parent.parent / "exercises" / file_name(exercise)
    try:
        meta = json.loads(path.read_bytes()).get("metadata", {}).get("whitebox", {})
    except (OSError, ValueError, AttributeError):
        return None
    version = meta.get("version") if isinstance(meta, dict) else None
    return version if isinstance(version, str) and version else None


def _is_written(source: str) -> bool:
    """A written-answer cell holds an answer once its placeholder *Your answer here.* is gone
    or has text after it."""
    text = source.strip()
    return bool(text) and not text.endswith(WRITTEN_STUB)


def grade_submission(path: Path, shown: str, timeout: float, memory_mb: int) -> Outcome:
    nb = read_notebook(path)
    outcome = Outcome(shown, nb.exercise or "")
    if nb.problem:
        outcome.problem = nb.problem
        return outcome
    outcome.written = []
    question = ""
    for c in nb.cells:
        if c["type"] != "markdown":
            continue
        if c["role"] == "written":
            own = _first_line(c["source"].split(WRITTEN_STUB)[0])
            about = own if own.startswith("Question") else question  # the question it answers
            label = f"cell {c['index']}" + (f" ({about})" if about else "")
            outcome.written.append((label, _is_written(c["source"])))
        else:
            question = _first_line(c["source"]) or question
    current = _current_version(nb.exercise)
    if current and nb.version != current:
        outcome.notes.append(
            f"this notebook was made from another version of exercise {nb.exercise} "
            f"({nb.version or 'none recorded'}; the current one is {current}): its text may "
            "differ, the functions are checked as the current exercise asks"
        )
    checks = EXERCISES[nb.exercise]
    if not checks:
        return outcome
    code_cells = [
        {"index": c["index"], "source": c["source"]}
        for c in nb.cells
        if c["type"] == "code" and c["role"] not in SKIPPED_ROLES
    ]
    specs = {
        c.function: {
            "function": c.function,
            "checker": c.checker,
            "extra": list(c.extra),
            "blocked": list(c.blocked),
        }
        for c in checks
    }
    skip_cells: set[int] = set()
    cell_state: dict[int, tuple[str, str]] = {}
    scratch = Path(tempfile.mkdtemp(prefix="whitebox-grade-"))
    try:
        for _attempt in range(len(code_cells) + len(checks) + 2):
            todo = [specs[c.function] for c in checks if c.function not in outcome.results]
            if not todo:
                break
            job = {
                "cells": [c for c in code_cells if c["index"] not in skip_cells],
                "checks": todo,
                "timeout": timeout,
                "memory_mb": memory_mb,
            }
            events, ended = _run_child(job, scratch, timeout)
            running = None  # ("cell", index) or ("check", name)
            for event in events:
                kind, state = event.get("event"), event.get("state")
                if kind == "cell" and isinstance(event.get("index"), int):
                    running = ("cell", event["index"]) if state == "start" else None
                    if state in ("error", "timeout"):
                        cell_state[event["index"]] = (state, str(event.get("error")))
                elif kind == "check" and event.get("name") in specs:
                    running = ("check", event["name"]) if state == "start" else None
                    if state == "done" and isinstance(event.get("result"), dict):
                        outcome.results[event["name"]] = event["result"]
            if ended == "finished":
                break
            if ended == "killed":
                status = "timeout"
                why = (
                    f"ran past the time limit of {timeout:g} s and did not stop when "
                    "interrupted, so its process was ended"
                )
            else:
                status, why = "error", f"the grading process {ended}{_crash_hint(scratch)}"
            if running is None:  # between steps (starting, or between cells and checks)
                reason = why if status == "error" else "it stopped responding"
                for spec in todo:
                    outcome.results.setdefault(
                        spec["function"],
                        {
                            "status": "error",
                            "message": f"not checked: {reason}, outside any cell or check",
                        },
                    )
                break
            if running[0] == "cell":
                skip_cells.add(running[1])
                cell_state[running[1]] = (status, why)
            else:
                name = running[1]
                if status == "error":
                    why = f"while {name} was checked, {why}"
                else:
                    why = f"{name} {why}"
                outcome.results[name] = {"status": status, "message": why}
        for c in checks:
            outcome.results.setdefault(
                c.function, {"status": "error", "message": "the grading process kept failing"}
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for index, (state, error) in sorted(cell_state.items()):
        outcome.notes.append(
            (f"cell {index} {error}" if state == "timeout" else f"cell {index}: {error}")
            + " (the next cells ran)"
        )
    for result in outcome.results.values():
        if result.get("status") == "missing":  # say why it is missing, when a cell says it
            bad = [s for s, _ in cell_state.values()]
            result["status"] = "timeout" if "timeout" in bad else "error"
            if bad:
                result["message"] += " (a cell above stopped early: see the notes)"
    return outcome


# ============================================================================ reports


def rows_of(outcome: Outcome) -> list[list[str]]:
    if outcome.problem:
        return [[outcome.submission, outcome.exercise, "", "error", "0", "0", ""]]
    rows = []
    for check in EXERCISES[outcome.exercise]:
        result = outcome.results.get(check.function, {"status": "error"})
        status = result.get("status", "error")
        score = 1 if status == "passed" else 0
        slips = "; ".join(result.get("slips") or [])
        rows.append(
            [outcome.submission, outcome.exercise, check.function, status, str(score), "1", slips]
        )
    return rows


def feedback_of(outcome: Outcome) -> str:
    lines = [f"Feedback on {outcome.submission}"]
    if outcome.problem:
        lines += ["", f"Not graded: {outcome.problem}."]
        return "\n".join(lines) + "\n"
    checks = EXERCISES[outcome.exercise]
    passed = sum(outcome.results.get(c.function, {}).get("status") == "passed" for c in checks)
    lines.append(f"Exercise {outcome.exercise}")
    if checks:
        lines.append(f"Score: {passed} of {len(checks)} (one point per function).")
    for check in checks:
        result = outcome.results.get(check.function, {})
        status = result.get("status", "error")
        head = f"- {check.function}: {status}"
        if result.get("slips"):
            head += " (" + "; ".join(result["slips"]) + ")"
        lines += ["", head]
        message = result.get("message") or ""
        if status == "not attempted":
            message = "It still raises NotImplementedError: replace the TODO with your code."
        lines += ["  " + m for m in message.splitlines() if m.strip()]
    if outcome.written:
        done = sum(w for _, w in outcome.written)
        lines += [
            "",
            f"Written answers: {done} of {len(outcome.written)} written; your instructor "
            "grades them by hand (not in the score above).",
        ]
        lines += [f"  {i}: {'written' if w else 'not written'}" for i, w in outcome.written]
    if outcome.notes:
        lines += ["", "Notes:"]
        lines += [f"  {n}" for n in outcome.notes]
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    """``text`` written atomically (``checkpoint.atomic_write``: the umask's mode, no symlink)."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def gradebook_text(outcomes: list[Outcome]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for outcome in outcomes:
        writer.writerows(rows_of(outcome))
    return out.getvalue()


# ============================================================================ the command


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (no usage block)
        raise UsageError(message)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive number of seconds, got {text!r}"
        ) from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _memory_mb(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < MIN_MEMORY_MB:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of MB, at least {MIN_MEMORY_MB} (numpy and the library "
            f"need that much), got {text!r}"
        )
    return value


def _submissions(paths: list[str]) -> list[Path]:
    found = []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            inside = sorted(
                p
                for p in path.rglob("*.ipynb")
                if ".ipynb_checkpoints" not in p.parts and p.is_file()
            )
            if not inside:
                raise UsageError(f"SUBMISSION: the folder {text} holds no .ipynb file")
            found += inside
        elif path.is_file():
            found.append(path)
        else:
            raise UsageError(f"SUBMISSION: {text} is not a file or a folder")
    unique = []
    for p in found:
        if p.resolve() not in {q.resolve() for q in unique}:
            unique.append(p)
    return unique


def _feedback_names(outcomes: list[Outcome], paths: list[Path]) -> list[str]:
    names, used = [], set()
    for path in paths:
        stem = path.stem or "submission"
        name, i = f"{stem}.txt", 1
        while name in used:
            i += 1
            name = f"{stem}-{i}.txt"
        used.add(name)
        names.append(name)
    return names


def _say(text: str) -> None:
    """Print a progress line; a closed stdout (``| head``) stops the printing, not the grading."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # later prints and the exit's flush go nowhere
        os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(
        prog="python -m whitebox.grade",
        description="Grade learner notebooks of the whitebox exercises.",
    )
    parser.add_argument("submissions", nargs="+", metavar="SUBMISSION", help="notebooks or folders")
    parser.add_argument("--out", required=True, help="the gradebook CSV to write")
    parser.add_argument(
        "--feedback-dir",
        help="where the feedback texts go (default: <out stem>-feedback beside the gradebook)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds per cell and per check (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--memory-mb",
        type=_memory_mb,
        default=DEFAULT_MEMORY_MB,
        help=f"address-space limit of each submission's process (default {DEFAULT_MEMORY_MB})",
    )
    try:
        args = parser.parse_args(argv)
        out = Path(args.out)
        if out.is_dir():
            raise UsageError(f"--out: {args.out} is a folder; expected a CSV file name")
        if not out.parent.is_dir():
            raise UsageError(f"--out: the folder {out.parent} does not exist")
        feedback_dir = Path(args.feedback_dir or out.with_name(f"{out.stem}-feedback"))
        if feedback_dir.exists() and not feedback_dir.is_dir():
            raise UsageError(f"--feedback-dir: {feedback_dir} exists and is not a folder")
        paths = _submissions(args.submissions)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    outcomes = []
    for path in paths:
        shown = os.path.relpath(path) if not path.is_absolute() else str(path)
        outcome = grade_submission(path, shown, args.timeout, args.memory_mb)
        outcomes.append(outcome)
        rows = rows_of(outcome)
        score = sum(int(r[4]) for r in rows)
        total = sum(int(r[5]) for r in rows)
        summary = ", ".join(f"{r[2]} {r[3]}" for r in rows if r[2])
        what = outcome.problem or summary or "written answers only"
        _say(f"{shown}: {outcome.exercise or '?'} {score}/{total} ({what})")
    try:
        feedback_dir.mkdir(parents=True, exist_ok=True)
        for outcome, name in zip(outcomes, _feedback_names(outcomes, paths)):
            _write_atomic(feedback_dir / name, feedback_of(outcome))
        replacing = out.exists()
        _write_atomic(out, gradebook_text(outcomes))
    except CheckpointWriteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(
            f"error: cannot write {exc.filename or args.out}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    rows = sum(len(rows_of(o)) for o in outcomes)
    again = " (replacing the previous one)" if replacing else ""
    _say(f"wrote {out}{again}: {rows} rows, and {len(outcomes)} feedback texts in {feedback_dir}/")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: no gradebook written", file=sys.stderr)
        sys.exit(130)
