"""Draw the course's diagrams (boxes, arrows and text; matplotlib only) into notebooks/figures/.

    python scripts/diagrams.py [OUTDIR]            (default: notebooks/figures)

Four figures, referenced from the chapters and notebooks/README.md:

* roadmap.png     the course at a glance: coding rate -> compression -> variational bound ->
                  gradient -> one step -> the TSSA layer -> the ToST block -> trained models,
                  with chapter numbers;
* tssa_layer.png  the TSSA layer (``whitebox.nn.tssa_forward``) with every array's shape;
* tost_block.png  the ToST block (``whitebox.nn.Block``): LN, TSSA, residual, LN, MLP, residual;
* tost_models.png the classifier (``models.ToSTClassifier``), the language model
                  (``models.ToSTLanguageModel``) and ToST-CAB (``vision.ToSTCAB``).

The drawing is deterministic: Agg backend, fixed size and DPI, matplotlib's bundled DejaVu font,
no timestamp in the PNG files (one text field names the matplotlib version that drew them). With
the same matplotlib version a rerun gives identical bytes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

DPI = 120
NAMES = ("roadmap.png", "tssa_layer.png", "tost_block.png", "tost_models.png")
STYLE = {
    "font.family": "DejaVu Sans",
    "mathtext.fontset": "dejavusans",
    "font.size": 10,
    "path.simplify": False,
}
# one colour per kind of thing, the same in every figure
OBJECTIVE, LAYER, MODEL, STUDY = "#dbe9f6", "#fde5c8", "#dff0d8", "#eeeeee"
ARRAY, PARAM, OP = "#ffffff", "#f3e1f5", "#fde5c8"
INK = "#222222"


# --------------------------------------------------------------------------------------------
# drawing primitives (coordinates in the axes' data units; the axes span the whole figure)
# --------------------------------------------------------------------------------------------


def canvas(width, height):
    """A figure of width x height inches whose data units are inches, origin bottom left."""
    fig = plt.figure(figsize=(width, height), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.axis("off")
    return fig, ax


def box(ax, x, y, w, h, text, fc, fontsize=10, ec=INK, lw=1.0, ls="-", weight="normal"):
    """A rounded box centred at (x, y) with centred text; returns its (left, right, bottom, top)."""
    ax.add_patch(
        FancyBboxPatch(
            (x - w / 2, y - h / 2),
            w,
            h,
            boxstyle="round,pad=0,rounding_size=0.08",
            fc=fc,
            ec=ec,
            lw=lw,
            ls=ls,
        )  # fmt: skip
    )
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, color=INK, weight=weight)
    return x - w / 2, x + w / 2, y - h / 2, y + h / 2


def arrow(ax, start, end, color=INK, ls="-", lw=1.2):
    ax.annotate(
        "", xy=end, xytext=start,
        arrowprops=dict(arrowstyle="-|>", color=color, lw=lw, ls=ls, shrinkA=0, shrinkB=0,
                        mutation_scale=12),
    )  # fmt: skip


def path(ax, points, color=INK, ls="-", lw=1.2):
    """A polyline whose last segment ends in an arrow head."""
    xs, ys = zip(*points, strict=True)
    ax.plot(xs[:-1], ys[:-1], color=color, ls=ls, lw=lw, solid_capstyle="butt")
    arrow(ax, points[-2], points[-1], color=color, ls=ls, lw=lw)


def label(ax, x, y, text, fontsize=9, ha="left", color="#444444", style="normal"):
    ax.text(x, y, text, ha=ha, va="center", fontsize=fontsize, color=color, style=style)


def save(fig, outdir, name):
    # No timestamp or default software string: only the matplotlib version that drew the figure
    # (tests/test_diagrams.py compares bytes when it runs the same version, pixels otherwise).
    meta = {"Software": None, "Source": f"scripts/diagrams.py, matplotlib {matplotlib.__version__}"}
    fig.savefig(Path(outdir) / name, dpi=DPI, metadata=meta)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# the figures
# --------------------------------------------------------------------------------------------


def roadmap(outdir):
    fig, ax = canvas(11.0, 6.2)
    w, h, fs = 2.45, 1.05, 11
    ax.text(0.2, 5.85, "The course at a glance (ch. = chapter)", fontsize=13, weight="bold")
    # row 1: the objective
    label(ax, 0.2, 5.3, "the objective", fontsize=11, style="italic")
    xs = [1.425, 4.175, 6.925, 9.675]
    row1 = [
        "ch. 1  Coding rate\n$R(Z)$: bits to code\nthe tokens to precision $\\varepsilon$",
        "ch. 1  Compression\n$R_c$ per group, and the\nrate reduction $\\Delta R = R - R_c$",
        "ch. 2  Variational bound\n$R_c \\leq R_c^{\\rm var}$: a sum over\nthe token statistics $y_k$",
        "ch. 3  Gradient\n$\\nabla R_c^{\\rm var}$ in closed form;\na step never increases it",
    ]
    y1 = 4.55
    for x, t in zip(xs, row1, strict=True):
        box(ax, x, y1, w, h, t, OBJECTIVE, fontsize=fs)
    for a, b in zip(xs, xs[1:], strict=False):
        arrow(ax, (a + w / 2, y1), (b - w / 2, y1))
    # row 2: the layer and the network
    label(ax, 1.6, 3.55, "the layer and the network", fontsize=11, style="italic")
    y2 = 2.85
    row2 = [
        "ch. 4  One step\n$Z - \\tau\\nabla R_c^{\\rm var}$, read\ntoken by token",
        "ch. 4  The TSSA layer\nlearned projections,\n$\\Pi$ by a softmax over heads",
        "ch. 9  The ToST block\nLN, TSSA, residual,\nLN, MLP, residual",
        "ch. 9-13  Trained models\nimage classifier,\nlanguage model",
    ]
    fills = [LAYER, LAYER, MODEL, MODEL]
    for x, t, fc in zip(xs, row2, fills, strict=True):
        box(ax, x, y2, w, h, t, fc, fontsize=fs)
    for a, b in zip(xs, xs[1:], strict=False):
        arrow(ax, (a + w / 2, y2), (b - w / 2, y2))
    # from the gradient (end of row 1) back to the step (start of row 2)
    ymid = (y1 - h / 2 + y2 + h / 2) / 2
    path(ax, [(xs[3], y1 - h / 2), (xs[3], ymid), (xs[0], ymid), (xs[0], y2 + h / 2)])
    # row 3: what the course does with the layer, and with the models
    y3, ws, hs = 0.9, 1.08, 0.95
    study = [
        (0.76, "ch. 5\nlinear cost\nin $n$"),
        (1.95, "ch. 6\nunrolled\nsteps"),
        (3.14, "ch. 7\nmanual\nbackprop"),
        (4.33, "ch. 8\ncausal TSSA\nprefix sums"),
    ]
    models = [
        (5.67, "ch. 9\ndigits: ToST\nvs. softmax"),
        (6.86, "ch. 10\nlayer by\nlayer, inside"),
        (8.05, "ch. 11\ncharacter\nlanguage\nmodel"),
        (9.24, "ch. 12\ntraining\non a GPU"),
        (10.43, "ch. 13\nlong\nsequences"),
    ]
    label(ax, 2.545, 0.2, "the layer, studied", fontsize=10, style="italic", ha="center")
    label(ax, 8.05, 0.2, "the models, trained and opened", fontsize=10, style="italic", ha="center")
    for x, t in study:
        box(ax, x, y3, ws, hs, t, STUDY, fontsize=9.5)
        path(ax, [(xs[1], y2 - h / 2), (xs[1], 1.95), (x, 1.95), (x, y3 + hs / 2)], ls=":")
    for x, t in models:
        box(ax, x, y3, ws, hs, t, STUDY, fontsize=9.5)
        path(ax, [(xs[3], y2 - h / 2), (xs[3], 1.95), (x, 1.95), (x, y3 + hs / 2)], ls=":")
    save(fig, outdir, "roadmap.png")


def tssa_layer(outdir):
    fig, ax = canvas(9.0, 11.0)
    ax.text(0.3, 10.6, "The TSSA layer (whitebox.nn.tssa_forward)", fontsize=13, weight="bold")
    ax.text(
        0.3, 10.2, "B batch, n tokens, D width, H heads of size p = D/H; index j token, "
        "i coordinate, h head", fontsize=9, color="#444444",
    )  # fmt: skip
    cx, bw, bh = 4.5, 4.6, 0.62

    def shape(y, text, x=cx + bw / 2 + 0.15):
        label(ax, x, y, text, fontsize=10, color="#7a2e00")

    # input and projection
    box(ax, cx, 9.55, 2.2, 0.5, "$x$", ARRAY, fontsize=12)
    shape(9.55, "(B, n, D)", x=cx + 1.25)
    box(ax, 1.0, 8.65, 1.5, 0.6, "$W_{qkv}$ (D, D)\n$b_{qkv}$ (D)", PARAM, fontsize=9)
    arrow(ax, (1.75, 8.65), (cx - bw / 2, 8.65))
    box(ax, cx, 8.65, bw, bh, "$w = x\\,W_{qkv} + b_{qkv}$, split into H heads", OP)
    arrow(ax, (cx, 9.3), (cx, 8.65 + bh / 2))
    shape(8.65, "$w$: (B, H, n, p)")
    # left branch: normalization and the memberships
    lx, rx = 2.45, 6.55
    path(ax, [(cx, 8.65 - bh / 2), (cx, 8.05), (lx, 8.05), (lx, 7.55 + bh / 2)])
    box(
        ax, lx, 7.55, 4.2, bh + 0.15, "$\\hat w_{hji} = w_{hji} / \\max(\\nu_{hi}, 10^{-12})$\n"
        "$\\nu_{hi} = \\Vert w_{h\\cdot i} \\Vert_2$ over the n tokens", OP, fontsize=9,
    )  # fmt: skip
    label(ax, lx - 2.1, 7.0, "$\\hat w$: (B, H, n, p)", color="#7a2e00")
    arrow(ax, (lx, 7.55 - (bh + 0.15) / 2), (lx, 6.35 + (bh + 0.15) / 2))
    box(
        ax, lx, 6.35, 4.2, bh + 0.15, "$\\Pi_{hj} = \\mathrm{softmax}_h\\,\\left(\\mathrm{temp}_h"
        "\\sum_i \\hat w_{hji}^2\\right)$\nsoftmax over the H heads", OP, fontsize=9,
    )  # fmt: skip
    box(ax, 0.75, 5.55, 1.2, 0.45, "temp (H, 1)", PARAM, fontsize=9)
    path(ax, [(0.75, 5.55 + 0.225), (0.75, 5.95), (0.75, 6.35 - (bh + 0.15) / 2)])
    label(ax, lx + 0.1, 5.55, "$\\Pi$: (B, H, n)", color="#7a2e00")
    # right branch: statistics and gains
    path(ax, [(cx, 8.05), (rx, 8.05), (rx, 5.0 + bh / 2)])
    label(ax, rx + 0.1, 7.2, "$w$", fontsize=10, color="#7a2e00")
    box(
        ax, rx, 5.0, 4.1, bh + 0.35, "the token statistics\n$y_{hi} = \\sum_j \\bar\\Pi_{hj}\\, w_{hji}^2$,"
        "  $\\bar\\Pi_{hj} = \\Pi_{hj} / (\\sum_{j'}\\Pi_{hj'} + 10^{-8})$", OP, fontsize=9,
    )  # fmt: skip
    path(ax, [(lx, 6.35 - (bh + 0.15) / 2), (lx, 5.0), (rx - 4.1 / 2, 5.0)])
    label(ax, rx + 2.1, 4.45, "$y$: (B, H, p)", color="#7a2e00", ha="right")
    arrow(ax, (rx, 5.0 - (bh + 0.35) / 2), (rx, 3.75 + bh / 2))
    box(ax, rx, 3.75, 3.2, bh, "gains  $g_{hi} = 1 / (1 + y_{hi})$", OP, fontsize=9)
    label(ax, rx + 1.7, 3.25, "$g$: (B, H, p)", color="#7a2e00", ha="right")
    # the head outputs
    box(ax, cx, 2.55, bw, bh, "$v_{hji} = -\\,\\Pi_{hj}\\; g_{hi}\\; w_{hji}$", OP)
    arrow(ax, (rx, 3.75 - bh / 2), (cx + 1.2, 2.55 + bh / 2))
    path(ax, [(lx, 5.0), (lx, 3.2), (cx - 1.2, 2.55 + bh / 2)])
    label(ax, lx + 0.1, 3.6, "$\\Pi$", fontsize=10, color="#7a2e00")
    path(ax, [(rx, 8.05), (8.75, 8.05), (8.75, 2.55), (cx + bw / 2, 2.55)])
    label(ax, 8.65, 6.4, "$w$", fontsize=10, color="#7a2e00", ha="right")
    shape(2.1, "$v$: (B, H, n, p)")
    arrow(ax, (cx, 2.55 - bh / 2), (cx, 1.55 + bh / 2))
    box(ax, cx, 1.55, bw, bh, "merge the heads, then  $out = v\\,W_{out} + b_{out}$", OP)
    box(ax, 1.0, 1.55, 1.5, 0.6, "$W_{out}$ (D, D)\n$b_{out}$ (D)", PARAM, fontsize=9)
    arrow(ax, (1.75, 1.55), (cx - bw / 2, 1.55))
    arrow(ax, (cx, 1.55 - bh / 2), (cx, 0.75))
    box(ax, cx, 0.5, 2.2, 0.5, "$out$", ARRAY, fontsize=12)
    shape(0.5, "(B, n, D)", x=cx + 1.25)
    save(fig, outdir, "tssa_layer.png")


def tost_block(outdir):
    fig, ax = canvas(6.5, 8.2)
    ax.text(0.3, 7.85, "The ToST block (whitebox.nn.Block)", fontsize=13, weight="bold")
    cx, bw, bh = 3.0, 2.8, 0.55
    box(ax, cx, 7.2, 1.8, 0.45, "$x$  (B, n, D)", ARRAY)
    steps = [
        (6.3, "LayerNorm $\\mathrm{LN}_1$", OP),
        (5.45, "TSSA\n(causal TSSA in the language model)", LAYER),
        (4.6, "$\\times\\,\\gamma_1$  (LayerScale, (D,))", OP),
    ]
    arrow(ax, (cx, 7.2 - 0.225), (cx, 6.3 + bh / 2))
    for (ya, _, _), (yb, _, _) in zip(steps, steps[1:], strict=False):
        arrow(ax, (cx, ya - bh / 2 - (0.1 if ya == 5.45 else 0)), (cx, yb + bh / 2))
    for y, t, fc in steps:
        box(ax, cx, y, bw, bh + (0.2 if y == 5.45 else 0), t, fc, fontsize=9)
    # first residual
    box(ax, cx, 3.75, 0.45, 0.45, "+", ARRAY, fontsize=14)
    arrow(ax, (cx, 4.6 - bh / 2), (cx, 3.75 + 0.225))
    path(ax, [(cx, 6.85), (cx + 2.2, 6.85), (cx + 2.2, 3.75), (cx + 0.225, 3.75)])
    label(ax, cx + 2.3, 5.3, "residual", fontsize=9)
    steps2 = [
        (2.85, "LayerNorm $\\mathrm{LN}_2$", OP),
        (2.0, "MLP: D $\\to$ 4D, GELU, 4D $\\to$ D", MODEL),
        (1.15, "$\\times\\,\\gamma_2$  (LayerScale, (D,))", OP),
    ]
    arrow(ax, (cx, 3.75 - 0.225), (cx, 2.85 + bh / 2))
    for (ya, _, _), (yb, _, _) in zip(steps2, steps2[1:], strict=False):
        arrow(ax, (cx, ya - bh / 2), (cx, yb + bh / 2))
    for y, t, fc in steps2:
        box(ax, cx, y, bw, bh, t, fc, fontsize=9)
    box(ax, cx, 0.35, 0.45, 0.45, "+", ARRAY, fontsize=14)
    arrow(ax, (cx, 1.15 - bh / 2), (cx, 0.35 + 0.225))
    path(ax, [(cx, 3.3), (cx - 2.2, 3.3), (cx - 2.2, 0.35), (cx - 0.225, 0.35)])
    label(ax, cx - 2.15, 1.9, "residual", fontsize=9, ha="right")
    arrow(ax, (cx + 0.225, 0.35), (cx + 1.3, 0.35))
    label(ax, cx + 1.4, 0.35, "out  (B, n, D)", fontsize=10, color=INK)
    label(
        ax, 0.3, 7.2, "$x \\leftarrow x + \\gamma_1\\,\\mathrm{TSSA}(\\mathrm{LN}_1(x))$\n"
        "$x \\leftarrow x + \\gamma_2\\,\\mathrm{MLP}(\\mathrm{LN}_2(x))$", fontsize=8,
    )  # fmt: skip
    save(fig, outdir, "tost_block.png")


def tost_models(outdir):
    fig, ax = canvas(11.0, 8.8)
    ax.text(0.3, 8.5, "The models built from the block", fontsize=13, weight="bold")
    columns = [
        (
            1.85,
            "Image classifier\nmodels.ToSTClassifier (ch. 9, 10)",
            [
                ("image (B, 1, 8, 8)", ARRAY),
                ("cut into 2 x 2 patches:\n16 tokens of 4 pixels", OP),
                ("linear map to D, plus a learned\nposition embedding: $Z_0$ (B, 16, D)", OP),
                ("L x ToST block", MODEL),
                ("mean over the tokens (B, D)", OP),
                ("LayerNorm, linear head", OP),
                ("logits (B, 10)", ARRAY),
            ],
        ),
        (
            5.5,
            "Language model\nmodels.ToSTLanguageModel (ch. 11, 12)",
            [
                ("character ids (B, T)", ARRAY),
                ("token embedding wte\n(V, D), a lookup", OP),
                ("plus position embedding wpe:\n$Z_0$ (B, T, D)", OP),
                ("L x ToST block\nwith causal TSSA", MODEL),
                ("LayerNorm $\\mathrm{LN}_f$", OP),
                ("times wte$^\\top$ (the head\nis tied to the embedding)", OP),
                ("logits (B, T, V): the next\ncharacter at every position", ARRAY),
            ],
        ),
        (
            9.15,
            "ToST-CAB, the paper's vision layout\nvision.ToSTCAB (README results)",
            [
                ("image (B, C, H, W)", ARRAY),
                ("conv stem: 3 x 3 convolutions,\nstride 2, BatchNorm, GELU", OP),
                ("plus Fourier position\nfeatures: $Z_0$ (B, N, D)", OP),
                ("depth x ToST block", MODEL),
                ("prepend a class token:\n(B, 1 + N, D)", OP),
                ("2 x class-attention block\n(only the class token attends)", LAYER),
                ("LayerNorm, linear head on the\nclass token: logits (B, classes)", ARRAY),
            ],
        ),
    ]
    bw, bh, top, step = 3.4, 0.78, 7.1, 1.02
    for x, title, items in columns:
        ax.text(x, 7.95, title, ha="center", va="center", fontsize=11.5, weight="bold")
        ys = [top - k * step for k in range(len(items))]
        for y, (t, fc) in zip(ys, items, strict=True):
            lw = 1.8 if fc == MODEL else 1.0
            box(ax, x, y, bw, bh if "\n" in t else 0.5, t, fc, fontsize=10.5, lw=lw)
        for (ya, (ta, _)), (yb, (tb, _)) in zip(
            zip(ys, items, strict=True), zip(ys[1:], items[1:], strict=True), strict=False
        ):
            ha = bh if "\n" in ta else 0.5
            hb = bh if "\n" in tb else 0.5
            arrow(ax, (x, ya - ha / 2), (x, yb + hb / 2))
    label(
        ax, 0.3, 0.3, "green: the ToST block (LN, TSSA, residual, LN, MLP, residual), repeated.\n"
        "The softmax baselines (ViT, GPT) swap TSSA for softmax attention.",
        fontsize=10,
    )  # fmt: skip
    save(fig, outdir, "tost_models.png")


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        print("usage: python scripts/diagrams.py [OUTDIR]", file=sys.stderr)
        return 2
    outdir = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent / "notebooks/figures"
    if outdir.exists() and not outdir.is_dir():
        print(f"OUTDIR: expected a directory, got the file {outdir}", file=sys.stderr)
        return 2
    outdir.mkdir(parents=True, exist_ok=True)
    with plt.rc_context(STYLE):
        for draw in (roadmap, tssa_layer, tost_block, tost_models):
            draw(outdir)
    for name in NAMES:
        print(outdir / name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
