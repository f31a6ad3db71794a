"""Execute notebooks top to bottom in a fresh kernel, in place, with commit-ready metadata.

    python scripts/run_notebooks.py notebooks/*.ipynb exercises/solutions/*.ipynb
    python scripts/run_notebooks.py --metadata-only notebooks/*.ipynb exercises/*.ipynb exercises/solutions/*.ipynb

Each notebook runs in its own directory with the ``python3`` kernel; per-cell timing records
are off and volatile metadata (widget state, cell ids' timing) is removed, so that re-running
an unchanged notebook gives an unchanged file apart from its outputs.
Set ``WHITEBOX_NB_TIMEOUT`` (seconds per cell, default 600) to change the cell time limit.

The notebook metadata is exactly what a fresh kernel makes JupyterLab write: the kernelspec of
the ``python3`` kernel and the ``language_info`` of ipykernel's kernel_info reply
(codemirror_mode, file_extension, mimetype, name, nbconvert_exporter, pygments_lexer, version).
JupyterLab compares what the kernel reports with what the file holds and changes nothing when
they are equal, so a learner who opens a chapter and closes it unedited is not asked to save
(and autosave does not rewrite a tracked file). ``--metadata-only`` rewrites only that metadata,
executing nothing.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
LANGUAGE_INFO_KEYS = (
    "codemirror_mode", "file_extension", "mimetype", "name", "nbconvert_exporter",
    "pygments_lexer", "version",
)  # fmt: skip


def kernel_language_info() -> dict:
    """The ``language_info`` of a fresh ipykernel in this environment (its kernel_info reply)."""
    from ipykernel.ipkernel import IPythonKernel

    info = IPythonKernel.language_info
    return {k: json.loads(json.dumps(info[k])) for k in LANGUAGE_INFO_KEYS}


def clean(nb, language_info: dict | None = None) -> None:
    """Strip volatile metadata in place; keep what a fresh kernel writes. ``language_info``:
    the one the executing kernel reported (nbclient stores it in ``nb.metadata``); None takes
    that one, or this environment's ipykernel when the notebook was not executed."""
    if language_info is None:
        reported = nb.metadata.get("language_info", {})
        if all(k in reported for k in LANGUAGE_INFO_KEYS):
            language_info = {k: reported[k] for k in LANGUAGE_INFO_KEYS}
        else:
            language_info = kernel_language_info()
    nb.metadata = nbformat.NotebookNode(
        kernelspec=dict(KERNELSPEC), language_info=nbformat.from_dict(language_info)
    )
    for cell in nb.cells:
        keep = {k: v for k, v in cell.metadata.items() if k in ("tags", "nbval-ignore-output")}
        cell.metadata = nbformat.NotebookNode(keep)
        if cell.cell_type == "code":
            for out in cell.get("outputs", []):
                out.get("metadata", {}).pop("execution", None)


def run(path: Path, timeout: int) -> float:
    nb = nbformat.read(path, as_version=4)
    nb.metadata["kernelspec"] = KERNELSPEC
    start = time.perf_counter()
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        record_timing=False,
        allow_errors=False,
    )
    client.execute()
    clean(nb)
    _write(nb, path)
    return time.perf_counter() - start


def _write(nb, path: Path) -> None:
    tmp = path.with_suffix(".ipynb.tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, path)  # atomic: an interrupted run never leaves a half-written notebook


def rewrite_metadata(path: Path, language_info: dict) -> bool:
    """Give ``path`` the clean metadata without executing it; True when the file changed."""
    before = path.read_text(encoding="utf-8")
    nb = nbformat.reads(before, as_version=4)
    clean(nb, language_info)
    text = nbformat.writes(nb)
    text = text if text.endswith("\n") else text + "\n"
    if text == before:
        return False
    _write(nb, path)
    return True


def main(argv: list[str]) -> int:
    timeout = int(os.environ.get("WHITEBOX_NB_TIMEOUT", "600"))
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"  # never Agg here
    metadata_only = "--metadata-only" in argv
    args = [a for a in argv if a != "--metadata-only"]
    unknown = [a for a in args if a.startswith("-")]
    if unknown:
        print(
            f"{unknown[0]}: unknown option (expected --metadata-only or notebooks)", file=sys.stderr
        )
        return 2
    paths = [Path(a) for a in args] or sorted(Path("notebooks").glob("*.ipynb"))
    bad = [p for p in paths if p.suffix != ".ipynb" or not p.is_file()]
    if bad:
        print(f"{bad[0]}: expected an existing .ipynb file", file=sys.stderr)
        return 2
    if metadata_only:
        info = kernel_language_info()
        changed = [p for p in paths if rewrite_metadata(p, info)]
        print(f"metadata rewritten in {len(changed)} of {len(paths)} notebooks", flush=True)
        return 0
    for path in paths:
        seconds = run(path, timeout)
        print(f"{path}: executed in {seconds:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
