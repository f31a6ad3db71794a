"""JupyterLab as a learner should find it: settings overrides for the environment `make lab` uses.

    python scripts/lab_settings.py [PATH]        (default: <sys.prefix>/share/jupyter/lab/settings/overrides.json)
    python scripts/lab_settings.py --check [PATH]    exit 1 when PATH lacks one of the settings

JupyterLab reads ``overrides.json`` in ``<sys.prefix>/share/jupyter/lab/settings/`` as the
defaults of its settings (a user's own settings still win). Two are set:

* Markdown files open in the **Markdown Preview** (``notebooks/README.md``, which ``make lab``
  opens first, shows its tables, formulas and clickable links instead of its source);
* the **"Jupyter news" pop-up** is off (``fetchNews: "false"``; no update check either).

Settings already in the file for other keys or other plugins are kept; the file is written
atomically.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

OVERRIDES = {
    "@jupyterlab/docmanager-extension:plugin": {
        "defaultViewers": {"markdown": "Markdown Preview"},
    },
    "@jupyterlab/apputils-extension:notification": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}


def default_path() -> Path:
    return Path(sys.prefix) / "share" / "jupyter" / "lab" / "settings" / "overrides.json"


def _merge(base, over):
    """``over`` laid over ``base``: dictionaries merged key by key, anything else replaced."""
    if not (isinstance(base, dict) and isinstance(over, dict)):
        return over
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base.get(k), v)
    return out


def merged(existing: dict) -> dict:
    """``existing`` with OVERRIDES laid over it; every other setting is kept."""
    return _merge(existing, OVERRIDES)


def satisfied(settings: dict) -> bool:
    """Whether ``settings`` already holds every value of OVERRIDES."""
    return merged(settings) == settings


def _read(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except json.JSONDecodeError as e:
        raise ValueError(f"PATH: {path} is not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"PATH: {path} holds a JSON {type(data).__name__}, expected an object")
    return data


def main(argv: list[str]) -> int:
    check = "--check" in argv
    rest = [a for a in argv if a != "--check"]
    if len(rest) > 1 or any(a.startswith("-") for a in rest):
        print("usage: python scripts/lab_settings.py [--check] [PATH]", file=sys.stderr)
        return 2
    path = Path(rest[0]) if rest else default_path()
    if path.is_dir():
        print(f"PATH: expected a file, got the directory {path}", file=sys.stderr)
        return 2
    try:
        current = _read(path)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    if check:
        ok = satisfied(current)
        print(f"{path}: {'set' if ok else 'missing the learner settings'}")
        return 0 if ok else 1
    new = merged(current)
    if new != current or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(new, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    print(f"JupyterLab settings: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
