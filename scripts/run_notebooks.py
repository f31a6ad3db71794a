"""Execute notebooks top to bottom in a fresh kernel, in place, with commit-ready metadata.

    python scripts/run_notebooks.py notebooks/*.ipynb exercises/solutions/*.ipynb

Each notebook runs in its own directory with the ``python3`` kernel; per-cell timing records
are off and volatile metadata (widget state, cell ids' timing, language versions) is removed,
so that re-running an unchanged notebook gives an unchanged file apart from its outputs.
Set ``WHITEBOX_NB_TIMEOUT`` (seconds per cell, default 600) to change the cell time limit.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def clean(nb) -> None:
    """Strip volatile metadata in place."""
    nb.metadata = nbformat.NotebookNode(
        kernelspec=KERNELSPEC,
        language_info={"name": "python", "pygments_lexer": "ipython3"},
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
    tmp = path.with_suffix(".ipynb.tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, path)  # atomic: an interrupted run never leaves a half-written notebook
    return time.perf_counter() - start


def main(argv: list[str]) -> int:
    timeout = int(os.environ.get("WHITEBOX_NB_TIMEOUT", "600"))
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"  # never Agg here
    paths = [Path(a) for a in argv] or sorted(Path("notebooks").glob("*.ipynb"))
    for path in paths:
        seconds = run(path, timeout)
        print(f"{path}: executed in {seconds:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
