"""Headless Chromium for the browser tests (tests/test_book.py, tests/test_lab.py).

Debian's ``chromium`` driven through its ``chromedriver`` by selenium; nothing downloads a
browser or a driver (Selenium Manager is told to stay offline and is given both paths). The
browser resolves no host name but 127.0.0.1, so a page that loads anything from the network
logs an error. Without chromium, chromedriver or selenium the tests skip, except in CI
(``CI=true``), where that is a failure.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def need_browser() -> None:
    """Skip (fail in CI) when the browser, its driver or selenium is missing."""
    missing = [n for n, p in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if not p]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[dev]')")
    if missing:
        msg = f"the browser test needs {', '.join(missing)}"
        if IN_CI:
            pytest.fail(msg + " (in CI: .ci/run installs chromium and chromium-driver)")
        pytest.skip(msg)


@contextmanager
def chromium(profile_dir):
    """A headless Chromium session (selenium WebDriver) with a fresh profile in profile_dir."""
    need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never download anything
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--no-first-run",
        "--disable-extensions", "--disable-sync", "--window-size=1280,900",
        f"--user-data-dir={profile_dir}",
        # nothing but the local server: a page that loads from the network logs an error
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    ):  # fmt: skip
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
