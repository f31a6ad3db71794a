"""Render README.md's generated parts from the files and the JSON; nothing typed by hand.

    python scripts/readme_tables.py          # rewrite the generated parts of README.md
    python scripts/readme_tables.py --check  # exit 1 if README.md differs from what they give

* the size of the core (between ``<!-- core:start -->`` and ``<!-- core:end -->``): the
  modules in :data:`CORE_FILES` and their line count, read from ``whitebox/``;
* results (between ``<!-- results:start -->`` and ``<!-- results:end -->``):
  ``results/<configuration>.json`` and ``results/tuning.json``, written by ``make results``
  (scripts/results.py);
* performance (between ``<!-- perf:start -->`` and ``<!-- perf:end -->``):
  ``benchmarks/bench_cpu.json`` (and ``bench_gpu.json`` when present), written by ``make bench``.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


#: The modules a learner reads to understand ToST, in reading order (``whitebox/<name>``).
CORE_FILES = (
    "backend.py",
    "mcr2.py",
    "data.py",
    "nn.py",
    "module.py",
    "optim.py",
    "models.py",
    "vision.py",
)
CORE_FILE_LIMIT = 1000
"""No file of the core reaches this many lines (``tests/test_packaging.py``)."""


def core_lines(root: Path = ROOT) -> dict[str, int]:
    """file name -> its number of lines, for every file of the core."""
    return {f: len((root / "whitebox" / f).read_text().splitlines()) for f in CORE_FILES}


def core_bound(total: int) -> int:
    """The round bound the README states: the next multiple of 100 above ``total``."""
    return (total // 100 + 1) * 100


def core_sentence(root: Path = ROOT) -> str:
    """The README's sentence on the size of the core, from the files."""
    lines = core_lines(root)
    names = ", ".join(f"`{f}`" for f in lines)
    text = (
        f"The core you need to read to understand ToST ({names}) is under "
        f"{core_bound(sum(lines.values())):,} lines, docstrings included, and no file of it "
        f"reaches {CORE_FILE_LIMIT:,}."
    )
    return textwrap.fill(text, width=99, break_long_words=False, break_on_hyphens=False)


#: The configurations of the results table, in its order (files results/<name>.json).
RESULT_ORDER = ("digits-tssa", "digits-softmax", "digits-tost-cab", "text-tssa", "text-softmax")
MODEL_NAMES = {
    "digits-tssa": "ToST (TSSA), simplified classifier",
    "digits-softmax": "softmax (ViT), same classifier",
    "digits-tost-cab": "ToST-CAB (the paper's vision layout, small)",
    "text-tssa": "ToST (causal TSSA)",
    "text-softmax": "softmax (GPT)",
}


def load_results(root: Path = ROOT) -> dict:
    """name -> the JSON of every configuration in ``results/`` (``make results``)."""
    out = {}
    for name in RESULT_ORDER:
        path = root / "results" / f"{name}.json"
        if path.exists():
            out[name] = json.loads(path.read_text())
    return out


def _metric(d: dict) -> str:
    if d["metric"] == "test_accuracy":
        return f"test accuracy {d['mean']:.4f} ± {d['std']:.4f}"
    return f"held-out loss {d['mean']:.3f} ± {d['std']:.3f} nats/char"


def _stalled(d: dict) -> str:
    """A sentence naming the seeds of a digits configuration that ended far below the others
    (more than 0.1 under the median), with how many epochs their test accuracy stayed under 0.3."""
    values = sorted(d["values"])
    median = values[len(values) // 2]
    out = []
    for run in d["per_seed"]:
        if run["value"] < median - 0.1:
            low = sum(1 for h in run.get("history", []) if h.get("test_accuracy", 1.0) < 0.3)
            out.append(
                f"seed {run['seed']} ended at {run['value']:.4f}, its test accuracy under 0.3 for "
                f"{low} of {len(run.get('history', []))} epochs"
            )
    return (" At that setting " + "; ".join(out) + ".") if out else ""


def _paired_wins(a: dict, b: dict) -> tuple[int, int]:
    """In how many seeds ``a`` beats ``b`` (same seed, same data order)."""
    sign = 1 if a["better"] == "max" else -1
    pairs = list(zip(a["values"], b["values"]))
    return sum(sign * (x - y) > 0 for x, y in pairs), len(pairs)


def results_table(results: dict, tuning: dict | None) -> str:
    rows = [
        "| task | model | mean ± std over seeds | per seed | peak lr, weight decay "
        "| parameters | seconds per run |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, d in results.items():
        fmt = "{:.4f}" if d["metric"] == "test_accuracy" else "{:.3f}"
        seeds = ", ".join(fmt.format(v) for v in d["values"])
        setting = f"{d['setting']['lr']:g}, {d['setting']['weight_decay']:g}"
        rows.append(
            f"| {d['task']} | {MODEL_NAMES.get(name, name)} | {_metric(d)} | {seeds} | "
            f"{setting} | {d['params']:,} | {d['mean_seconds']:.1f} |"
        )
    any_d = next(iter(results.values()))
    lines = rows + [
        "",
        f"- Seeds {', '.join(map(str, any_d['seeds']))} of each configuration; std is the sample "
        "standard deviation over the seeds. Digits: accuracy on the 450 test images. Text: "
        "loss on the last 10% of the text, never used for tuning.",
    ]
    for task, a, b in (("digits", "digits-tssa", "digits-softmax"),
                       ("text", "text-tssa", "text-softmax")):  # fmt: skip
        if a in results and b in results:
            wins, n = _paired_wins(results[a], results[b])
            lines.append(
                f"- {task}: ToST is better than its softmax baseline in {wins} of {n} seeds "
                "(paired by seed)."
            )
    if "digits-tost-cab" in results:
        lines.append(
            "- ToST-CAB (`--model tost-cab`: conv stem with BatchNorm, Fourier positions, class "
            "attention; `docs/deviations.md`) is not tuned on its own: it gets the simplified "
            "ToST's chosen setting." + _stalled(results["digits-tost-cab"])
        )
    if tuning and "seeds" not in tuning:  # the one-seed grid of results made before issue 20
        grid = tuning["grid"]
        lines.append(
            f"- Tuning, the same for every tuned model: peak lr {{{', '.join(f'{v:g}' for v in grid['lr'])}}}"
            f" x weight decay {{{', '.join(f'{v:g}' for v in grid['weight_decay'])}}}, "
            f"{tuning['budget']} (seed {tuning['seed']}), chosen on a validation split carved "
            "out of the training data (`--holdout`; digits: a stratified 20% of the training "
            "images, text: its 80-90% stretch), never on the test data "
            "(`results/tuning.json`)."
        )
    elif tuning:
        lines.append(
            "- Tuning (`results/tuning.json`), the same procedure and budget for ToST and its "
            "baseline on each task, chosen on a validation split carved out of the training data "
            "(`--holdout`; digits: a stratified 20% of the training images, text: its 80-90% "
            "stretch), never on the test data: each setting trained with seeds "
            f"{', '.join(map(str, tuning['seeds']))} and judged by the mean over them; peak "
            "learning rates a factor 2 apart at weight decay 0.05, then weight decays at the best "
            "learning rate, each grid extended until the chosen value lies strictly inside it."
        )
        for name in RESULT_ORDER:
            grid = tuning["grid"].get(name)
            if grid is None:
                continue
            task = name.split("-")[0]
            budget = tuning["budget"][task] if isinstance(tuning["budget"], dict) else ""
            lines.append(
                f"  - {MODEL_NAMES.get(name, name)} ({task}): peak lr tried "
                f"{{{', '.join(f'{v:g}' for v in grid['lr'])}}}, weight decay tried "
                f"{{{', '.join(f'{v:g}' for v in grid['weight_decay'])}}}; {budget}."
            )
    m = any_d["machine"]
    lines.append(
        f"- Seconds: wall-clock per run, {m.get('jobs', 'two')} runs side by side (one BLAS "
        "thread each)"
        + (" on a machine shared with other work: a rough guide only" if m.get("jobs") else "")
        + ". "
        f"Machine: {m['cpu']}, {m['cores']} cores, BLAS {'; '.join(m['blas'])}, Python "
        f"{m['python']}, NumPy {m['numpy']}. Regenerate with `make results` "
        "(`results/*.json`)."
    )
    return "\n".join(lines)


def _ms(s: float) -> str:
    return f"{1e3 * s:.1f} ms"


def perf_table(cpu: dict, gpu: dict | None = None) -> str:
    sc = cpu["scaling"]
    t, s = sc["results"]["tssa"], sc["results"]["softmax"]
    lines = [
        f"One attention layer, forward + backward, B = {sc['B']}, D = {sc['D']}, H = {sc['H']}, "
        f"{sc['dtype']}, {sc.get('blas_threads', 1)} BLAS thread(s):",
        "",
        "| | time exponent | memory exponent | largest n measured |",
        "|---|---|---|---|",
        f"| TSSA | {t['time_exponent']:.2f} | {t['memory_exponent']:.2f} | "
        f"{t['n'][-1]:,} ({_ms(t['seconds'][-1])}, {t['peak_bytes'][-1] / 2**20:.0f} MiB) |",
        f"| softmax attention | {s['time_exponent']:.2f} | {s['memory_exponent']:.2f} | "
        f"{s['n'][-1]:,} ({_ms(s['seconds'][-1])}, {s['peak_bytes'][-1] / 2**20:.0f} MiB) |",
        "",
        f"TSSA time at n = 16384 over n = 1024: {sc['tssa_time_ratio_16384_over_1024']:.1f} "
        f"(linear would be 16; the bar is {sc['time_ratio_bar']:.0f}). "
        + (f"Softmax attention {s['stopped']}." if s.get("stopped") else ""),
    ]
    torch = cpu.get("torch")
    if torch and not torch.get("skipped"):
        sh = next(iter(v for k, v in torch.items() if k.startswith("threads_")))["shapes"]
        lines += [
            "",
            f"NumPy (manual backprop) against PyTorch CPU autograd, same formulas and weights, "
            f"interleaved; TSSA layer at B = {sh['B']}, n = {sh['n']}, D = {sh['D']}, "
            f"H = {sh['H']}, {sh['dtype']}; ratio = NumPy time / PyTorch time (median):",
            "",
            "| threads | TSSA layer | ToST block | digits training step |",
            "|---|---|---|---|",
        ]
        for key in sorted(k for k in torch if k.startswith("threads_")):
            r = torch[key]
            cells = [
                f"{r[name]['ratio']:.2f} ({_ms(r[name]['numpy_seconds'])} vs "
                f"{_ms(r[name]['torch_seconds'])})"
                for name in ("tssa_layer", "tost_block", "digits_train_step")
            ]
            lines.append(f"| {r['threads']['numpy_blas']} | " + " | ".join(cells) + " |")
    meta = cpu["meta"]
    lines += [
        "",
        f"Machine: {meta['cpu_count']} cores ({meta['machine']}), Python {meta['python']}, "
        f"NumPy {meta['numpy']}; load average before the run {cpu['load_start'][0]:.2f}. "
        "Regenerate with `make bench`.",
    ]
    if gpu:
        lines += ["", "GPU: see `benchmarks/bench_gpu.json`."]
    return "\n".join(lines)


def _replace(text: str, name: str, body: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text:
        raise SystemExit(f"README.md lacks the markers {start} ... {end}")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def render(text: str) -> str:
    text = _replace(text, "core", core_sentence())
    results = load_results()
    if results:
        tuning_path = ROOT / "results" / "tuning.json"
        tuning = json.loads(tuning_path.read_text()) if tuning_path.exists() else None
        text = _replace(text, "results", results_table(results, tuning))
    cpu = ROOT / "benchmarks" / "bench_cpu.json"
    if cpu.exists():
        gpu_path = ROOT / "benchmarks" / "bench_gpu.json"
        gpu = json.loads(gpu_path.read_text()) if gpu_path.exists() else None
        text = _replace(text, "perf", perf_table(json.loads(cpu.read_text()), gpu))
    return text


def main(argv: list[str]) -> int:
    text = README.read_text()
    new = render(text)
    if "--check" in argv:
        if new != text:
            print("README.md's generated parts are stale: run python scripts/readme_tables.py")
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
