"""Build the course as a static HTML site, from the committed notebooks (no execution, offline).

    python scripts/build_book.py [OUTDIR]        (default: _build/html; make book)

The Sphinx source folder is laid out in ``_build/book-src``: ``index.md`` (a copy of
``book/index.md``, the root page) and the repository's files as hard links (``notebooks``,
``exercises``, ``docs``...), so every relative link of the notebooks resolves as it does in the
repository. ``book/conf.py`` says which files are pages. Then ``sphinx-build``
writes the site to OUTDIR (index at OUTDIR/index.html), reusing ``_build/doctrees`` between
runs. Set ``BOOK_MATHJAX=cdn`` to load MathJax from its CDN instead of the local copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "_build"
SKIP = {"book", "build", "dist", "runs", "__pycache__"}


def _wanted(path: Path) -> bool:
    name = path.name
    if path.is_dir():
        return not (name.startswith((".", "_")) or name in SKIP or name.endswith(".egg-info"))
    return not name.endswith((".pt", ".pyc", ".tmp"))


def stage(src: Path) -> None:
    """Lay out the Sphinx source folder ``src`` afresh: the repository's files as hard links
    (copies where a link is impossible), and ``book/index.md`` as ``index.md``. Links, not
    symbolic links: MyST resolves a page's real path, which must lie inside ``src``."""
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    shutil.copy2(ROOT / "book" / "index.md", src / "index.md")
    stack = [p for p in sorted(ROOT.iterdir()) if _wanted(p)]
    while stack:
        path = stack.pop()
        dest = src / path.relative_to(ROOT)
        if path.is_dir():
            dest.mkdir()
            stack.extend(p for p in sorted(path.iterdir()) if _wanted(p))
        elif path.is_file():
            try:
                os.link(path, dest)
            except OSError:
                shutil.copy2(path, dest)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        print("usage: python scripts/build_book.py [OUTDIR]", file=sys.stderr)
        return 2
    out = Path(argv[0]).resolve() if argv else BUILD / "html"
    if out.exists() and not out.is_dir():
        print(f"OUTDIR: expected a directory, got the file {out}", file=sys.stderr)
        return 2
    src = BUILD / "book-src"
    stage(src)
    start = time.perf_counter()
    cmd = [
        sys.executable, "-m", "sphinx", "-b", "html", "-q", "-j", "auto",
        "-c", str(ROOT / "book"), "-d", str(BUILD / "doctrees"), str(src), str(out),
    ]  # fmt: skip
    rc = subprocess.call(cmd, cwd=ROOT)
    if rc == 0:
        print(f"book: {out / 'index.html'} ({time.perf_counter() - start:.0f} s)")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
