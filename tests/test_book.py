"""The course as a book (make book), read in a real browser: headless Chromium opens every page.

For each page it checks that the page loads without a JavaScript error (the browser console
has no SEVERE entry), that its mathematics is typeset (MathJax, served from the site itself,
has turned every math element into an ``mjx-container``, reports no TeX error, and no raw
``$$`` or ``$\\macro$`` is left in the text), that every figure is present (each ``<img>``
decoded with a natural width > 0), that every numbered equation carries its number, and that
every internal link resolves (the file exists in the site, and so does the ``#anchor``).
The browser may reach 127.0.0.1 only: a page that tries to load anything from the network
fails with a console error.

``make book-test`` builds the site once and points ``BOOK_HTML`` at it; without ``BOOK_HTML``
the test builds the site itself (about 40 s). The browser: tests/browser.py (Debian's
``chromium`` and ``chromium-driver``, which ``.ci/run`` installs; without them the test skips,
except in CI, where that is a failure).
"""

from __future__ import annotations

import functools
import html.parser
import http.server
import os
import re
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import pytest
from browser import chromium

ROOT = Path(__file__).resolve().parent.parent
EXPECTED = [
    "index.html",
    "notebooks/README.html",
    *(f"notebooks/{p.stem}.html" for p in sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))),
    *(f"exercises/{p.stem}.html" for p in sorted((ROOT / "exercises").glob("ex[0-9]*.ipynb"))),
    *(f"notebooks/answers/{p.stem}.html" for p in sorted(ROOT.glob("notebooks/answers/*.md"))),
]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    built = os.environ.get("BOOK_HTML")
    if built:
        path = Path(built)
        assert (path / "index.html").is_file(), f"BOOK_HTML={built}: no index.html there"
        return path
    out = tmp_path_factory.mktemp("book") / "html"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_book.py"), str(out)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser(server, tmp_path_factory):
    with chromium(tmp_path_factory.mktemp("chromium-profile")) as driver:
        yield driver


# --------------------------------------------------------------------------------------------
# what the browser reports about one page
# --------------------------------------------------------------------------------------------

WAIT_FOR_MATHJAX = """
const done = arguments[arguments.length - 1];
const start = Date.now();
(function poll() {
  const hasMath = document.querySelector('.math') !== null;
  if (!hasMath) { done('no math'); return; }
  const mj = window.MathJax;
  if (mj && mj.startup && mj.startup.promise) {
    mj.startup.promise.then(() => done('typeset'), (e) => done('error: ' + e));
  } else if (Date.now() - start > 45000) {
    done('MathJax never started');
  } else { setTimeout(poll, 50); }
})();
"""

PAGE_REPORT = """
const math = [...document.querySelectorAll('span.math, div.math')];
const clone = document.querySelector('main, [role=main], body').cloneNode(true);
clone.querySelectorAll('pre, code, script, style, mjx-container, .output, textarea')
  .forEach((e) => e.remove());
return {
  math: math.length,
  untypeset: math.filter((e) => !e.querySelector('mjx-container')).length,
  containers: document.querySelectorAll('mjx-container').length,
  texErrors: [...document.querySelectorAll('mjx-merror')].map((e) => e.textContent).slice(0, 5),
  text: clone.textContent,
  images: [...document.images].map((i) => [i.getAttribute('src'), i.complete, i.naturalWidth]),
  eqnos: [...document.querySelectorAll('.eqno')].map((e) => e.firstChild.textContent.trim()),
  hrefs: [...document.querySelectorAll('a[href]')].map((a) => a.getAttribute('href')),
  ids: [...document.querySelectorAll('[id], a[name]')].map((e) => e.id || e.getAttribute('name')),
  scripts: [...document.scripts].map((s) => s.getAttribute('src')).filter((s) => s),
};
"""

RAW_MATH = re.compile(r"\$\$|\$[^$\n]*\\[A-Za-z]+[^$\n]*\$")


class _Ids(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids = set()

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key == "id" or (tag == "a" and key == "name"):
                self.ids.add(value)


@functools.cache
def _ids_of(path: Path) -> frozenset:
    parser = _Ids()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return frozenset(parser.ids)


def broken_links(site: Path, page: str, hrefs, own_ids) -> list[str]:
    """The internal links of ``page`` (a path relative to ``site``) whose file or anchor is
    missing. External links (http, https, mailto) are not followed."""
    bad = []
    base = "http://site/" + page
    for href in hrefs:
        parts = urllib.parse.urlsplit(href)
        if parts.scheme in ("http", "https", "mailto", "javascript", "data"):
            continue
        target = urllib.parse.urlsplit(urllib.parse.urljoin(base, href))
        rel = urllib.parse.unquote(target.path)[1:]  # drop the leading "/"
        path = site / rel
        if rel == "" or rel.endswith("/"):
            path = path / "index.html"
        if not path.is_file():
            bad.append(f"{href} (no file {rel})")
            continue
        frag = urllib.parse.unquote(target.fragment)
        if frag and path.suffix == ".html":
            ids = own_ids if path == site / page else _ids_of(path)
            if frag not in ids:
                bad.append(f"{href} (no anchor #{frag} in {rel})")
    return bad


def pages(site: Path) -> list[str]:
    skip = {"genindex.html", "search.html"}
    found = sorted(
        str(p.relative_to(site))
        for p in site.rglob("*.html")
        if not p.relative_to(site).parts[0].startswith("_") and p.name not in skip
    )
    return found


def check_page(browser, server, site, page) -> list[str]:
    """Open ``page`` and return what is wrong with it (empty when nothing)."""
    browser.get_log("browser")  # drop what earlier pages left
    browser.get(server + page)
    state = browser.execute_async_script(WAIT_FOR_MATHJAX)
    problems = [] if state in ("typeset", "no math") else [f"MathJax: {state}"]
    browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "if (document.readyState === 'complete') done(); else addEventListener('load', () => done());"
    )
    r = browser.execute_script(PAGE_REPORT)
    for entry in browser.get_log("browser"):
        if entry["level"] == "SEVERE":
            problems.append(f"console: {entry['message'][:300]}")
    if r["untypeset"]:
        problems.append(f"{r['untypeset']} of {r['math']} math elements not typeset")
    if r["math"] and r["containers"] < r["math"]:
        problems.append(f"{r['containers']} MathJax containers for {r['math']} math elements")
    if r["texErrors"]:
        problems.append(f"TeX errors: {r['texErrors']}")
    raw = RAW_MATH.search(r["text"])
    if raw:
        problems.append(f"raw TeX left in the text: {r['text'][raw.start() : raw.start() + 80]!r}")
    for src, complete, width in r["images"]:
        if not (complete and width > 0):
            problems.append(f"image not shown: {src}")
    for eqno in r["eqnos"]:
        if not re.fullmatch(r"\(\d+(\.\d+)?\)", eqno):
            problems.append(f"equation number {eqno!r}")
    for src in r["scripts"]:
        if urllib.parse.urlsplit(src).scheme in ("http", "https") and "127.0.0.1" not in src:
            problems.append(f"script from the network: {src}")
    problems += [f"broken link {b}" for b in broken_links(site, page, r["hrefs"], set(r["ids"]))]
    return problems


# --------------------------------------------------------------------------------------------
# the tests
# --------------------------------------------------------------------------------------------


def test_every_chapter_and_exercise_has_a_page(site):
    missing = [p for p in EXPECTED if not (site / p).is_file()]
    assert not missing, f"pages missing from the book: {missing}"
    assert (site / "_static" / "mathjax" / "tex-chtml.js").is_file() or os.environ.get(
        "BOOK_MATHJAX"
    ) == "cdn", "MathJax is not served from the site"
    assert (site / "searchindex.js").is_file()


def test_every_page_reads_in_a_browser(browser, server, site):
    report = {}
    for page in pages(site):
        problems = check_page(browser, server, site, page)
        if problems:
            report[page] = problems[:8]
    assert not report, "\n".join(f"{p}:\n  " + "\n  ".join(v) for p, v in report.items())


def test_the_book_numbers_equations(browser, server, site):
    """At least one chapter has a labelled equation, and it is shown with its number."""
    numbered = [p for p in pages(site) if 'class="eqno"' in (site / p).read_text()]
    assert numbered, "no numbered equation anywhere in the book"
    browser.get(server + numbered[0])
    assert browser.execute_async_script(WAIT_FOR_MATHJAX) == "typeset"
    eqnos = browser.execute_script(
        "return [...document.querySelectorAll('.eqno')].map((e) => e.firstChild.textContent.trim())"
    )
    assert eqnos and eqnos[0] == "(1)", eqnos


def test_search_finds_a_chapter(browser, server):
    browser.get(server + "search.html?q=coding+rate")
    found = browser.execute_async_script(
        """
const done = arguments[arguments.length - 1];
const start = Date.now();
(function poll() {
  const hits = [...document.querySelectorAll('#search-results li a')].map((a) => a.href);
  if (hits.length || Date.now() - start > 30000) { done(hits); } else { setTimeout(poll, 100); }
})();
"""
    )
    assert any("notebooks/01_coding_rate.html" in h for h in found), found[:10]


def test_the_checks_catch_a_broken_page(browser, server, site, tmp_path):
    """A page with a missing image, untypeset TeX, a TeX error, a dead link, a dead anchor and
    a JavaScript error fails every check (the checks are not blind)."""
    page = "notebooks/_broken_probe.html"
    (site / page).write_text(
        """<!DOCTYPE html><html><head><meta charset="utf-8">
<script>window.MathJax = {tex: {inlineMath: [['\\\\(', '\\\\)']]}};</script>
<script defer src="../_static/mathjax/tex-chtml.js"></script></head><body><main>
<p>Raw: $$x^2$$ and $\\alpha$.</p>
<span class="math">\\(\\frac{1}\\)</span>
<img src="../_images/does_not_exist.png">
<a href="01_coding_rate.html#no-such-anchor">x</a> <a href="no_such_page.html">y</a>
<script>undefined_function_call();</script>
</main></body></html>""",
        encoding="utf-8",
    )
    try:
        problems = "\n".join(check_page(browser, server, site, page))
    finally:
        (site / page).unlink()
    for needle in (
        "console:", "raw TeX", "TeX errors", "image not shown", "no anchor #no-such-anchor",
        "no file notebooks/no_such_page.html",
    ):  # fmt: skip
        assert needle in problems, f"{needle!r} not reported in:\n{problems}"
