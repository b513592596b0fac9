"""Reports of an evaluation: ``results.json``, a Markdown table, rate-vs-quality PNGs, the Pareto
plot and TensorBoard runs.

Every file is written atomically (:mod:`tokenmask.io`); the TensorBoard runs (one folder per
method under ``tensorboard/``, so they overlay in the UI) use the requested rate in percent as
the step, which makes the x-axis the rate. Their tags are those of the training callbacks
(``eval/<metric>``, text samples under :data:`SAMPLES_TAG`): one spelling everywhere, the method
being the run.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from tokenmask.evaluate.metrics import Scores
from tokenmask.io import atomic_write_bytes, atomic_write_json, atomic_write_text

RESULTS_FILE = "results.json"
TABLE_FILE = "results.md"
RECOVERABILITY_PLOT = "rate_vs_recoverability.png"
RETENTION_PLOT = "rate_vs_retention.png"
PARETO_PLOT = "pareto.png"
TENSORBOARD_DIR = "tensorboard"
SAMPLES_TAG = "eval/samples"
"""TensorBoard text tag of compressed samples (``tokenmask evaluate`` and the training callbacks)."""

TRUNCATION = "truncation"
"""The method every learned compressor must dominate (keep the last tokens; docs/evaluation.md)."""
RECOVERABILITY_MARGIN = 0.02
"""Issue 12's bar: dominating truncation needs recoverability at least this much higher ..."""
RETENTION_MARGIN = 0.01
"""... and retention no more than this much lower."""

#: scalars logged to TensorBoard, one tag each under ``eval/``
SCALARS: tuple[str, ...] = (
    "rate",
    "rate_error",
    "recoverability",
    "retention",
    "recon_bits_per_masked",
    "recon_top1",
    "compress_ms_per_1k_tokens",
)


@dataclass
class MethodResult:
    """One row of the results: a method at one requested rate.

    :param method: the method's name as given (``random``, ``agent:runs/x``).
    :param scores: its figures.
    :param sample: the compressed text of the first document (text compressors), for a look.
    """

    method: str
    scores: Scores
    sample: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; NaN figures become ``null``."""
        row: dict[str, Any] = {"method": self.method}
        for key, value in asdict(self.scores).items():
            row[key] = None if isinstance(value, float) and math.isnan(value) else value
        row["sample"] = self.sample
        return row


@dataclass
class EvaluationReport:
    """Everything a run measured, and what it was measured on.

    :param results: one :class:`MethodResult` per method x rate.
    :param setting: judge, corpus, C, T, documents, seed, device (printed above the table).
    :param skipped: methods that could not run, with the reason.
    :param reference: per document, the judge's reference NLLs (keys ``recover_empty``, ``recover_full``,
        ``continue_empty``, ``continue_full``: :class:`~tokenmask.evaluate.metrics.ReferenceNLLs`); with the
        rows' own per-document NLLs they give the bar's intervals (:mod:`tokenmask.evaluate.bar`).
    """

    results: list[MethodResult]
    setting: dict[str, Any]
    skipped: dict[str, str] = field(default_factory=dict)
    reference: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The content of ``results.json``."""
        return {
            "setting": self.setting,
            "skipped": self.skipped,
            "results": [r.to_dict() for r in self.results],
            "reference": self.reference,
        }

    def methods(self) -> list[str]:
        """Method names in first-seen order."""
        seen: list[str] = []
        for result in self.results:
            if result.method not in seen:
                seen.append(result.method)
        return seen


def device_description(device: Any) -> str:
    """The device numbers come from, in words: GPU name, or CPU model, cores and torch threads."""
    import os
    import platform

    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def _fmt(value: float, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def markdown_table(report: EvaluationReport) -> str:
    """The results as a Markdown table, with a line naming the setting above it."""
    s = report.setting
    lines = [
        f"Judge `{s.get('judge')}`, corpus `{s.get('corpus')}`, {s.get('documents')} documents "
        f"(recoverability on the first {s.get('recoverability_documents')}), "
        f"C={s.get('context_tokens')}, T={s.get('continuation_tokens')}, seed {s.get('seed')}, device {s.get('device')}.",
        "",
        "| method | asked rate | achieved rate | recoverability | retention | recon bits/masked | recon top-1 | ms per 1k tokens |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report.results:
        sc = r.scores
        lines.append(
            f"| {r.method} | {sc.requested_rate:.2f} | {_fmt(sc.rate, 2)} | {_fmt(sc.recoverability, 2)} | "
            f"{_fmt(sc.retention, 2)} | {_fmt(sc.recon_bits_per_masked, 2)} | {_fmt(sc.recon_top1, 2)} | "
            f"{_fmt(sc.compress_ms_per_1k_tokens, 1)} |"
        )
    layered = [r for r in report.results if r.scores.kept_per_layer]
    if layered:  # in-model methods: the rate counts KV entries of all layers; show where they are kept
        lines.append("\nIn-model methods, fraction of the context's positions (KV entries) kept per layer:")
        for r in layered:
            lines.append(
                f"- {r.method} at {r.scores.requested_rate:.2f}: {layer_runs(r.scores.kept_per_layer)}"
            )
    for method, reason in report.skipped.items():
        lines.append(f"\nSkipped {method}: {reason}")
    from tokenmask.evaluate.bar import bar_table, report_bar_rows, source_groups

    against = bar_table(report_bar_rows(report), groups=source_groups(report.setting))
    return "\n".join(lines) + "\n" + (f"\n{against}" if against else "")


def layer_runs(fractions: Sequence[float]) -> str:
    """Per-layer fractions in a line, runs of equal values joined: ``1.00 (layers 0-3), 0.60 (4-29)``."""
    parts: list[str] = []
    start = 0
    for i in range(1, len(fractions) + 1):
        if i == len(fractions) or f"{fractions[i]:.2f}" != f"{fractions[start]:.2f}":
            span = f"{start}-{i - 1}" if i - 1 > start else f"{start}"
            parts.append(f"{fractions[start]:.2f} ({'' if parts else 'layers '}{span})")
            start = i
    return ", ".join(parts)


def plot_rate_vs(report: EvaluationReport, metric: str) -> bytes:
    """PNG bytes of ``metric`` against the achieved rate, one line per method (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    try:
        for method in report.methods():
            rows = sorted((r.scores for r in report.results if r.method == method), key=lambda s: s.rate)
            points = [(s.rate, getattr(s, metric)) for s in rows if not math.isnan(getattr(s, metric))]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
        ax.set_xlabel("achieved rate (fraction of context tokens removed)")
        ax.set_ylabel(metric)
        docs = report.setting.get("recoverability_documents" if metric == "recoverability" else "documents")
        ax.set_title(f"{metric} vs rate ({docs} docs, judge {report.setting.get('judge')})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        return figure_png(fig)
    finally:
        plt.close(fig)


def _figure(value: Any) -> float:
    # a results.json figure: None (NaN written as null) and non-numbers become NaN
    try:
        return math.nan if value is None else float(value)
    except (TypeError, ValueError):
        return math.nan


def _truncation_region(
    ax: Any, rec: float, ret: float, xlim: tuple[float, float], ylim: tuple[float, float]
) -> None:
    """Shade where a point dominates truncation by issue 12's bar, and mark its corner."""
    x0, y0 = rec + RECOVERABILITY_MARGIN, ret - RETENTION_MARGIN
    if x0 < xlim[1] and y0 < ylim[1]:
        ax.fill_between(
            [x0, xlim[1]],
            max(y0, ylim[0]),
            ylim[1],
            color="tab:green",
            alpha=0.12,
            linewidth=0,
            label=f"dominates truncation (rec ≥ +{RECOVERABILITY_MARGIN}, ret ≥ −{RETENTION_MARGIN})",
        )
        ax.plot([x0, x0, xlim[1]], [ylim[1], y0, y0], color="tab:green", linestyle="--", linewidth=0.8)


def _limits(values: list[float], pad: float = 0.03) -> tuple[float, float]:
    low, high = min(values), max(values)
    margin = max(pad, 0.08 * (high - low))
    return low - margin, high + margin


#: the zoomed row of :func:`plot_pareto`: recoverability / retention around truncation's point (low, high offsets)
ZOOM_RECOVERABILITY = (-0.03, 0.07)
ZOOM_RETENTION = (-0.12, 0.07)


class _Point(NamedTuple):
    method: str
    rec: float
    ret: float
    rate: float


def plot_pareto(
    rows: Sequence[Mapping[str, Any]],
    setting: Mapping[str, Any] | None = None,
    reference: Mapping[str, Sequence[float]] | None = None,
    axes_named: tuple[str, str] = ("recoverability", "retention"),
    title: str | None = None,
    zoom: bool = True,
) -> bytes:
    """PNG bytes of the Pareto plot: per asked rate, recoverability (x) vs retention (y).

    One panel per asked rate, one labelled point per method (the label gives the achieved rate);
    :data:`TRUNCATION`'s point is drawn as a star, and the region of points that dominate it by
    issue 12's bar (recoverability at least :data:`RECOVERABILITY_MARGIN` higher, retention no
    more than :data:`RETENTION_MARGIN` lower) is shaded. Rows without recoverability or retention
    are listed under the panel instead of drawn. Where a rate has a truncation row, a second row of
    panels zooms on truncation's neighbourhood (:data:`ZOOM_RECOVERABILITY`, :data:`ZOOM_RETENTION`),
    where the methods that contend for the bar crowd together; a legend there names each colour.

    :param rows: the ``"results"`` rows of a ``results.json`` (:meth:`MethodResult.to_dict`).
    :param setting: the ``"setting"`` of the same file (judge, documents), for the title.
    :param reference: the ``"reference"`` of the same file; with the rows' per-document NLLs, each point
        but truncation's gets error bars: the 90 % paired bootstrap interval of its change over
        truncation (:mod:`tokenmask.evaluate.bar`), drawn around the point.
    :param axes_named: the x and y axes' labels (e.g. changes over truncation, where the rows hold changes).
    :param title: the figure's title (default: the judge and the number of documents of ``setting``).
    :param zoom: add the zoomed row (where a truncation row exists).
    :raises ValueError: when ``rows`` holds no row.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("No result row to plot. Fix: pass the rows of a tokenmask evaluate results.json.")
    by_rate: dict[float, list[Mapping[str, Any]]] = {}
    methods: list[str] = []
    for row in rows:
        by_rate.setdefault(round(_figure(row.get("requested_rate")), 6), []).append(row)
        if str(row.get("method")) not in methods:
            methods.append(str(row.get("method")))
    palette = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    colors = {m: palette(i % palette.N) for i, m in enumerate(methods)}
    from tokenmask.evaluate.bar import bar_rows, source_groups

    spread = {
        (b.method, round(b.requested_rate, 6)): b
        for b in (bar_rows(rows, reference, groups=source_groups(setting)) if reference else [])
        if all(math.isfinite(v) for v in (*b.rec_interval, *b.ret_interval))
    }
    rates = sorted(by_rate)
    panels: list[tuple[float, list[_Point], list[str]]] = []
    for asked in rates:
        points, missing = [], []
        for row in by_rate[asked]:
            point = _Point(
                str(row.get("method")),
                _figure(row.get("recoverability")),
                _figure(row.get("retention")),
                _figure(row.get("rate")),
            )
            if math.isfinite(point.rec) and math.isfinite(point.ret):
                points.append(point)
            else:
                missing.append(point.method)
        panels.append((asked, points, missing))
    zoomed = zoom and any(p.method == TRUNCATION for _, points, _ in panels for p in points)
    fig, axes = plt.subplots(
        2 if zoomed else 1,
        len(rates),
        figsize=(4.8 * len(rates), 10.4 if zoomed else 4.6),
        dpi=120,
        squeeze=False,
    )
    try:
        for column, (asked, points, missing) in enumerate(panels):
            ax = axes[0][column]
            truncation = next((p for p in points if p.method == TRUNCATION), None)
            xs, ys = [p.rec for p in points], [p.ret for p in points]
            for p in points:  # room for the interval bars
                if (p.method, asked) in spread:
                    b = spread[(p.method, asked)]
                    xs += [p.rec + b.rec_interval[0] - b.d_rec, p.rec + b.rec_interval[1] - b.d_rec]
                    ys += [p.ret + b.ret_interval[0] - b.d_ret, p.ret + b.ret_interval[1] - b.d_ret]
            if truncation is not None:  # room for the shaded region beyond truncation's corner
                xs.append(truncation.rec + RECOVERABILITY_MARGIN + 0.03)
                ys.append(truncation.ret + 0.04)
            xlim = _limits(xs) if xs else (0.0, 1.0)
            ylim = _limits(ys) if ys else (0.0, 1.0)
            _pareto_panel(
                ax, points, truncation, spread, asked, colors, (xlim, ylim), axes_named, labels=True
            )
            ax.set_title(
                f"asked rate {asked:.2f}" + ("" if truncation else " (no truncation row)"), fontsize=10
            )
            if missing:
                ax.text(
                    0.0,
                    -0.2,
                    "not drawn (no figure): " + ", ".join(missing),
                    transform=ax.transAxes,
                    fontsize=7,
                )
            if zoomed:
                ax = axes[1][column]
                if truncation is None:
                    ax.axis("off")
                    continue
                xlim = (truncation.rec + ZOOM_RECOVERABILITY[0], truncation.rec + ZOOM_RECOVERABILITY[1])
                ylim = (truncation.ret + ZOOM_RETENTION[0], truncation.ret + ZOOM_RETENTION[1])
                inside = [p for p in points if xlim[0] <= p.rec <= xlim[1] and ylim[0] <= p.ret <= ylim[1]]
                _pareto_panel(
                    ax, inside, truncation, spread, asked, colors, (xlim, ylim), axes_named, labels=False
                )
                ax.set_title(f"asked rate {asked:.2f}, near truncation", fontsize=10)
        s = setting or {}
        fig.suptitle(
            title
            or f"Pareto plot: one point per method (label: achieved rate); judge {s.get('judge', '?')}, "
            f"{s.get('documents', '?')} documents"
            + ("; bars: 90 % paired bootstrap interval of the change over truncation" if spread else ""),
            fontsize=10,
        )
        return figure_png(fig)
    finally:
        plt.close(fig)


def _pareto_panel(
    ax: Any,
    points: Sequence[_Point],
    truncation: _Point | None,
    spread: Mapping[tuple[str, float], Any],
    asked: float,
    colors: Mapping[str, Any],
    limits: tuple[tuple[float, float], tuple[float, float]],
    axes_named: tuple[str, str],
    labels: bool,
) -> None:
    """One panel of :func:`plot_pareto`: the points (truncation's a star), their interval bars, the shaded region
    that dominates truncation; each point labelled beside it (``labels``) or named in the panel's legend."""
    xlim, ylim = limits
    if truncation is not None:
        _truncation_region(ax, truncation.rec, truncation.ret, xlim, ylim)
    placed: list[tuple[float, float]] = []
    for p in points:
        is_truncation = p.method == TRUNCATION
        label = f"{p.method} ({p.rate:.2f})" if math.isfinite(p.rate) else p.method
        ax.scatter(
            [p.rec],
            [p.ret],
            s=160 if is_truncation else 40,
            marker="*" if is_truncation else "o",
            color=colors[p.method],
            edgecolors="black",
            linewidths=0.8 if is_truncation else 0.4,
            zorder=3,
            label=None if labels else label,
        )
        if (p.method, asked) in spread:  # the change's interval, placed around the point
            b = spread[(p.method, asked)]
            ax.errorbar(
                [p.rec],
                [p.ret],
                xerr=[[b.d_rec - b.rec_interval[0]], [b.rec_interval[1] - b.d_rec]],
                yerr=[[b.d_ret - b.ret_interval[0]], [b.ret_interval[1] - b.d_ret]],
                color=colors[p.method],
                linewidth=0.8,
                capsize=2,
                zorder=2,
            )
        if labels:
            # labels of points within 4 % of the axes of an earlier one go below it, one line each
            near = sum(
                abs(p.rec - x) < 0.04 * (xlim[1] - xlim[0]) and abs(p.ret - y) < 0.04 * (ylim[1] - ylim[0])
                for x, y in placed
            )
            placed.append((p.rec, p.ret))
            ax.annotate(
                label, (p.rec, p.ret), xytext=(6, 4 - 9 * near), textcoords="offset points", fontsize=7
            )
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_xlabel(axes_named[0])
    ax.set_ylabel(axes_named[1])
    ax.grid(alpha=0.3)
    if not labels:  # below the axes: the zoomed points fill the panel
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    elif truncation is not None:
        ax.legend(fontsize=7, loc="best")


def figure_png(fig: Any, dpi: int | None = None) -> bytes:
    """A matplotlib figure as PNG bytes, laid out tight (the caller closes the figure)."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def run_folder_name(method: str) -> str:
    """A file-system-safe TensorBoard run name for a method (``agent:runs/x`` -> ``agent_runs_x``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", method).strip("_") or "method"


def write_tensorboard(report: EvaluationReport, folder: Path) -> None:
    """One TensorBoard run per method under ``folder``; step = requested rate in percent."""
    from torch.utils.tensorboard import SummaryWriter

    for method in report.methods():
        writer = SummaryWriter(log_dir=str(folder / run_folder_name(method)))
        try:
            for r in report.results:
                if r.method != method:
                    continue
                step = int(round(r.scores.requested_rate * 100))
                for name in SCALARS:
                    value = getattr(r.scores, name)
                    if not math.isnan(value):
                        writer.add_scalar(f"eval/{name}", value, global_step=step)
                if r.sample:
                    writer.add_text(SAMPLES_TAG, r.sample.replace("\n", "  \n"), global_step=step)
        finally:
            writer.close()


def write_report(report: EvaluationReport, folder: str | Path, tensorboard: bool = True) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` (the table, the bar, the closing verdicts), the three PNGs and
    (optionally) the TensorBoard runs.

    :param report: what to write.
    :param folder: the output folder (created).
    :param tensorboard: also write the TensorBoard runs.
    :return: the paths written, by kind.
    """
    from tokenmask.evaluate.runner import closing_lines  # the verdicts live with the command that prints them

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": atomic_write_json(out / RESULTS_FILE, report.to_dict()),
        "table": atomic_write_text(out / TABLE_FILE, f"{markdown_table(report)}\n{closing_lines(report)}\n"),
        "recoverability_plot": atomic_write_bytes(
            out / RECOVERABILITY_PLOT, plot_rate_vs(report, "recoverability")
        ),
        "retention_plot": atomic_write_bytes(out / RETENTION_PLOT, plot_rate_vs(report, "retention")),
        "pareto_plot": atomic_write_bytes(
            out / PARETO_PLOT,
            plot_pareto([r.to_dict() for r in report.results], report.setting, report.reference),
        ),
    }
    if tensorboard:
        write_tensorboard(report, out / TENSORBOARD_DIR)
        paths["tensorboard"] = out / TENSORBOARD_DIR
    return paths


def load_results_file(path: str | Path) -> dict[str, Any]:
    """The whole checked document of a ``results.json`` (or of the folder holding it): its ``results`` rows,
    and ``setting`` and ``reference`` where the file has them.

    :raises FileNotFoundError: when there is no such file.
    :raises CorruptFileError: when it is not JSON or holds no list of result rows.
    """
    import json

    from tokenmask.errors import CorruptFileError
    from tokenmask.io import reraise_as

    file = Path(path)
    if file.is_dir():
        file = file / RESULTS_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist. Fix: point at a tokenmask evaluate output folder.")
    fix = "run tokenmask evaluate again to rewrite it."
    with reraise_as(CorruptFileError, f"{file} is damaged: not readable JSON. Fix: {fix}"):
        data = json.loads(file.read_text(encoding="utf-8"))
    rows = data.get("results") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise CorruptFileError(f"{file} is damaged: it holds no list of result rows.", fix=fix, path=file)
    document: dict[str, Any] = data
    return document


def load_results(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``results.json`` (or of the folder holding it), checked as :func:`load_results_file` does."""
    return list(load_results_file(path)["results"])
