"""Reports of ``tokenmask activation evaluate``: JSON, a Markdown table and a rate-vs-perplexity PNG.

``rate`` is docs/evaluation.md's in-model rate (KV entries saved over **all** layers); ``ratio``
counts the compressed layers only. The picture of merged positions is :mod:`.merge_map`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenmask.evaluate.reports import figure_png, layer_runs
from tokenmask.io import atomic_write_bytes, atomic_write_json, atomic_write_text

MB = 1024.0 * 1024.0
PLOT_FILE = "rate_vs_perplexity.png"


def markdown_table(rows: Sequence[dict[str, Any]], title: str) -> str:
    """One Markdown table of a threshold sweep (see :func:`tokenmask.activation_compression.evaluation.sweep_thresholds`)."""
    # a row that merged nothing shows what the learned parts do by themselves (e.g. a trained restore gate)
    unmerged = next((r["compressed_perplexity"] for r in rows if r["ratio"] == 1.0), None)
    extra = " increase vs no merges, same layers |" if unmerged is not None else ""
    lines = [
        f"### {title}",
        "",
        "| threshold | rate (all layers) | ratio (compressed layers) | perplexity | increase |"
        + extra
        + " KV saved (MiB) | hidden saved (MiB) "
        "| peak memory MiB (compressed / full) | pre-fill ms (compressed / full) |",
        "| --- | --- | --- | --- | --- |" + (" --- |" if extra else "") + " --- | --- | --- | --- |",
    ]
    for row in rows:
        timed = "forward_ms_compressed" in row
        memory = (
            f"{row['peak_memory_compressed'] / MB:.1f} / {row['peak_memory_uncompressed'] / MB:.1f}"
            if timed
            else "-"
        )
        times = f"{row['forward_ms_compressed']:.0f} / {row['forward_ms_uncompressed']:.0f}" if timed else "-"
        saved = (
            f"{row['kv_bytes_saved'] / MB:.2f} | {row['hidden_bytes_saved'] / MB:.2f}" if timed else "- | -"
        )
        lines.append(
            f"| {row['threshold']:.2f} | {row['rate']:.3f} | {row['ratio']:.2f}x | {row['compressed_perplexity']:.2f} "
            f"(base {row['uncompressed_perplexity']:.2f}) | {100 * row['perplexity_increase']:+.1f}% "
            + (
                f"| {100 * (row['compressed_perplexity'] / unmerged - 1):+.1f}% "
                if unmerged is not None
                else ""
            )
            + f"| {saved} | {memory} | {times} |"
        )
    return "\n".join(lines) + "\n"


def operating_point_text(point: dict[str, Any]) -> str:
    """The operating point in a few lines: thresholds, plan rate, measured rate, perplexity, positions per layer."""
    plan = point.get("plan_rate")
    planned = "-" if plan is None else f"{plan:.3f}"
    return (
        f"**Operating point** (thresholds {point['thresholds']}): rate {point['rate']:.3f} "
        f"(the plan says {planned}), ratio in the compressed layers {point['ratio']:.2f}x, perplexity "
        f"{point['compressed_perplexity']:.2f} vs {point['uncompressed_perplexity']:.2f} "
        f"({100 * point['perplexity_increase']:+.1f}%).\n"
        f"Fraction of positions kept per layer: {layer_runs(point['kept_per_layer'])}.\n"
    )


def rate_plot_png(sweeps: dict[str, Sequence[dict[str, Any]]], title: str) -> bytes:
    """PNG bytes: whole-model rate (x) against perplexity increase in % (y), one line per sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        for name, rows in sweeps.items():
            ordered = sorted(rows, key=lambda r: r["rate"])
            ax.plot(
                [r["rate"] for r in ordered],
                [100 * r["perplexity_increase"] for r in ordered],
                marker="o",
                label=name,
            )
            for r in ordered:
                ax.annotate(f"{r['threshold']:.2f}", (r["rate"], 100 * r["perplexity_increase"]), fontsize=7)
        ax.axhline(3.0, color="grey", linestyle="--", linewidth=0.8, label="3% goal")
        ax.set_xlabel("rate (fraction of the KV cache saved, all layers)")
        ax.set_ylabel("perplexity increase (%)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        return figure_png(fig, dpi=120)
    finally:
        plt.close(fig)


def write_report(output_dir: str | Path, report: dict[str, Any]) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``rate_vs_perplexity.png`` atomically; return their paths."""
    folder = Path(output_dir)
    sweeps: dict[str, Sequence[dict[str, Any]]] = report["sweeps"]
    header = (
        f"## Activation compression: {report['model']}\n\n"
        f"Compression layers {report['compression']['compression_layers']} of {report['num_layers']}, "
        f"adaptive threshold {report['compression']['adaptive_threshold']}; {report['sequences']} held-out sequences "
        f"of up to {report['max_length']} tokens from {report['data_path']}; device: {report['device']}.\n"
        "Rate: KV entries saved over all layers (docs/evaluation.md); ratio: positions / kept in the compressed "
        "layers only; KV and hidden bytes over all layers; perplexity over every token after BOS.\n\n"
    )
    if "operating_point" in report:
        header += operating_point_text(report["operating_point"]) + "\n"
    body = "\n".join(markdown_table(rows, name) for name, rows in sweeps.items())
    paths = {
        "json": atomic_write_json(folder / "report.json", report),
        "markdown": atomic_write_text(folder / "report.md", header + body),
        "plot": atomic_write_bytes(
            folder / PLOT_FILE,
            rate_plot_png(sweeps, f"{report['model']} on {report['data_path']}"),
        ),
    }
    return paths
