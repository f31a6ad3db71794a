"""Render README.md's generated tables from the JSON the scripts wrote; nothing typed by hand.

    python scripts/readme_tables.py          # rewrite the tables in README.md
    python scripts/readme_tables.py --check  # exit 1 if README.md differs from the JSON

* results (between ``<!-- results:start -->`` and ``<!-- results:end -->``):
  ``results/results.json``, written by ``make results`` (scripts/results.py);
* performance (between ``<!-- perf:start -->`` and ``<!-- perf:end -->``):
  ``benchmarks/bench_cpu.json`` (and ``bench_gpu.json`` when present), written by ``make bench``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def results_table(data: dict) -> str:
    rows = ["| task | attention | result | parameters | seconds |", "|---|---|---|---|---|"]
    for r in data["runs"]:
        if "test_accuracy" in r:
            metric = f"test accuracy {r['test_accuracy']:.4f}"
        else:
            metric = f"validation loss {r['val_loss_nats_per_char']:.4f} nats/char"
        name = "ToST (TSSA)" if r["attention"] == "tssa" else "softmax (ViT/GPT)"
        rows.append(f"| {r['task']} | {name} | {metric} | {r['params']:,} | {r['seconds']:.1f} |")
    rows += ["", f"Machine: {data['machine']}. Regenerate with `make results`."]
    return "\n".join(rows)


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
    res = ROOT / "results" / "results.json"
    if res.exists():
        text = _replace(text, "results", results_table(json.loads(res.read_text())))
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
            print("README.md's tables differ from the JSON: run python scripts/readme_tables.py")
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
