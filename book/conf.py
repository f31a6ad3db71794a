"""Sphinx configuration of the course as a book (``make book``; see scripts/build_book.py).

The site is built from the committed notebooks with their stored outputs: nothing is executed
(``nb_execution_mode = "off"``) and nothing is downloaded. scripts/build_book.py lays out a
source folder (``_build/book-src``) whose entries link to the repository's, with
``book/index.md`` as its root page, and runs ``sphinx-build`` on it with this file.

Environment:
* ``BOOK_MATHJAX=local`` (the default) serves MathJax 3 from ``_static/mathjax``, copied from
  the ``sphinx-mathjax-offline`` package: the site reads offline. ``BOOK_MATHJAX=cdn`` keeps
  Sphinx's CDN address (a published site may prefer it).
* ``BOOK_REPOSITORY_URL`` (e.g. a GitHub address) turns on the theme's repository link and its
  Binder and Colab launch buttons on every notebook page.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

project = "whitebox: the Token Statistics Transformer, derived"
author = "the whitebox authors"
copyright = "the whitebox authors, MIT License"

extensions = ["myst_nb", "sphinx.ext.mathjax"]
root_doc = "index"
# Only these are pages; every other file a page links to (a script, a JSON result) is copied
# as a download.
include_patterns = [
    "index.md",
    "notebooks/README.md",
    "notebooks/[0-9]*.ipynb",
    "notebooks/answers/*.md",
    "exercises/README.md",
    "exercises/ex[0-9]*.ipynb",
    "exercises/solutions/ex[0-9]*.ipynb",
    "docs/*.md",
    "README.md",
]
exclude_patterns = ["**/.ipynb_checkpoints"]

# MyST: $...$ and $$...$$ (numbered when written "$$ ... $$ (label)"), amsmath environments,
# heading anchors for the "#section" links the chapters use.
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_dmath_double_inline = True
myst_heading_anchors = 3
myst_url_schemes = ["http", "https", "mailto"]
math_numfig = True
math_eqref_format = "({number})"
numfig = True

# the notebooks as committed: stored outputs, never executed
nb_execution_mode = "off"
nb_ipywidgets_js = {}  # no widget state is committed; never load widget JS from a CDN
nb_merge_streams = True

html_theme = "sphinx_book_theme"
html_title = "whitebox: ToST, derived"
html_static_path = []
html_favicon = "favicon.svg"  # else browsers ask for /favicon.ico, which a static site lacks
html_context = {"default_mode": "auto"}  # light or dark as the reader's system prefers
html_last_updated_fmt = None
html_copy_source = True  # the download button offers each page's .ipynb / .md
html_show_sourcelink = False
html_theme_options = {
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "use_download_button": True,
}

repository = os.environ.get("BOOK_REPOSITORY_URL", "").strip()
if repository:
    html_theme_options.update(
        repository_url=repository,
        repository_branch=os.environ.get("BOOK_REPOSITORY_BRANCH", "main"),
        use_repository_button=True,
        launch_buttons={
            "notebook_interface": "jupyterlab",
            "binderhub_url": "https://mybinder.org",
            "colab_url": "https://colab.research.google.com",
        },
    )

mathjax_mode = os.environ.get("BOOK_MATHJAX", "local")
if mathjax_mode not in ("local", "cdn"):
    raise ValueError(f"BOOK_MATHJAX: expected 'local' or 'cdn', got {mathjax_mode!r}")
if mathjax_mode == "local":
    spec = importlib.util.find_spec("sphinx-mathjax-offline")
    if spec is None or spec.origin is None:
        raise ValueError(
            "BOOK_MATHJAX=local needs the package sphinx-mathjax-offline (pip install -e '.[book]')"
        )
    static = Path(spec.origin).parent / "static"  # holds mathjax/ (MathJax 3.2.2)
    html_static_path.append(str(static))
    mathjax_path = "mathjax/tex-chtml.js"


# A link to a folder ("../notebooks/", "solutions/") is no page: point it at the folder's
# README.md when that is a page, else keep only the link's text.
FOLDER_LINK = re.compile(r"\[([^\]]*)\]\(((?!https?:)[^()\s]*/)\)")


def _folder_links(app, docname, source):
    here = Path(app.env.doc2path(docname)).parent

    def repl(m):
        text, target = m.group(1), m.group(2)
        if (here / target / "README.md").is_file():
            return f"[{text}]({target}README.md)"
        return text

    source[0] = FOLDER_LINK.sub(repl, source[0])


def setup(app):
    app.connect("source-read", _folder_links)
