"""scripts/diagrams.py draws the course's four diagrams; the committed PNGs are what it draws now.

With the matplotlib version that drew the committed files (named in each PNG's "Source" field)
the script must reproduce them byte for byte. With another version, glyph rasterization may
differ slightly, so the check falls back to pixels: same size, and almost no pixel differs
strongly (a changed label or arrow changes hundreds of pixels strongly).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "notebooks" / "figures"
NAMES = ("roadmap.png", "tssa_layer.png", "tost_block.png", "tost_models.png")
STRONG = 96  # a channel difference this large is a changed stroke, not antialiasing
MAX_STRONG_SHARE = 2e-4  # of the pixels, under another matplotlib version


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "diagrams.py"), str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGBA"), dtype=np.int16)


def strong_share(a, b):
    """Share of the pixels where some channel differs by more than STRONG (1.0 if sizes differ)."""
    if a.shape != b.shape:
        return 1.0
    return float((np.abs(a - b).max(axis=-1) > STRONG).mean())


@pytest.mark.parametrize("name", NAMES)
def test_script_draws_the_committed_figure(drawn, name):
    new, old = drawn / name, FIGURES / name
    assert new.stat().st_size > 10_000, f"{name}: suspiciously small"
    assert old.exists(), f"{name} is not committed: run python scripts/diagrams.py"
    source = Image.open(old).info.get("Source", "")
    if source.endswith(f"matplotlib {matplotlib.__version__}"):
        assert new.read_bytes() == old.read_bytes(), (
            f"{name} is stale: run python scripts/diagrams.py and commit notebooks/figures/"
        )
    else:
        share = strong_share(_pixels(new), _pixels(old))
        assert share < MAX_STRONG_SHARE, (
            f"{name}: {share:.2%} of the pixels differ from the committed file ({source}); "
            "run python scripts/diagrams.py and commit notebooks/figures/"
        )


def test_a_rerun_gives_identical_bytes(drawn, tmp_path):
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "diagrams.py"), str(tmp_path)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    for name in NAMES:
        assert (tmp_path / name).read_bytes() == (drawn / name).read_bytes(), name


def test_pixel_check_sees_a_changed_label(drawn, tmp_path):
    """The fallback comparison is not blind: one label drawn differently fails it."""
    from matplotlib.figure import Figure

    img = Image.open(drawn / "tost_block.png")
    fig = Figure(figsize=(img.width / 100, img.height / 100), dpi=100)
    fig.figimage(np.asarray(img), 0, 0)
    fig.text(0.5, 0.02, "LayerNorm LN_3", fontsize=10)
    fig.savefig(tmp_path / "edited.png", dpi=100)
    share = strong_share(_pixels(drawn / "tost_block.png"), _pixels(tmp_path / "edited.png"))
    assert share >= MAX_STRONG_SHARE


def test_every_figure_is_referenced_and_every_reference_exists():
    docs = [ROOT / "notebooks" / "README.md", *sorted((ROOT / "notebooks").glob("*.ipynb"))]
    refs = set()
    for doc in docs:
        refs |= set(re.findall(r"\(figures/([\w.-]+\.png)\)", doc.read_text(encoding="utf-8")))
    for name in refs:
        assert (FIGURES / name).exists(), f"figures/{name} is linked but missing"
    assert set(NAMES) <= refs, f"never linked: {sorted(set(NAMES) - refs)}"
    readme = (ROOT / "notebooks" / "README.md").read_text(encoding="utf-8")
    assert readme.lstrip().startswith("# ") and "(figures/roadmap.png)" in readme[:1500]


def test_bad_outdir_is_refused(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "diagrams.py"), str(f)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and "OUTDIR" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
