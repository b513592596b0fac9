"""Reports of an evaluation: ``results.json``, a Markdown table, rate-vs-quality PNGs and TensorBoard runs.

Every file is written atomically (:mod:`tokenmask.io`); the TensorBoard runs (one folder per
method under ``tensorboard/``, so they overlay in the UI) use the requested rate in percent as
the step, which makes the x-axis the rate.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tokenmask.evaluate.metrics import Scores
from tokenmask.io import atomic_write_bytes, atomic_write_json, atomic_write_text

RESULTS_FILE = "results.json"
TABLE_FILE = "results.md"
RECOVERABILITY_PLOT = "rate_vs_recoverability.png"
RETENTION_PLOT = "rate_vs_retention.png"
TENSORBOARD_DIR = "tensorboard"

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
    """

    results: list[MethodResult]
    setting: dict[str, Any]
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The content of ``results.json``."""
        return {
            "setting": self.setting,
            "skipped": self.skipped,
            "results": [r.to_dict() for r in self.results],
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
    for method, reason in report.skipped.items():
        lines.append(f"\nSkipped {method}: {reason}")
    return "\n".join(lines) + "\n"


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
        buffer = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
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
                    writer.add_text("eval/sample", r.sample.replace("\n", "  \n"), global_step=step)
        finally:
            writer.close()


def write_report(report: EvaluationReport, folder: str | Path, tensorboard: bool = True) -> dict[str, Path]:
    """Write ``results.json``, ``results.md``, the two PNGs and (optionally) the TensorBoard runs.

    :param report: what to write.
    :param folder: the output folder (created).
    :param tensorboard: also write the TensorBoard runs.
    :return: the paths written, by kind.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": atomic_write_json(out / RESULTS_FILE, report.to_dict()),
        "table": atomic_write_text(out / TABLE_FILE, markdown_table(report)),
        "recoverability_plot": atomic_write_bytes(
            out / RECOVERABILITY_PLOT, plot_rate_vs(report, "recoverability")
        ),
        "retention_plot": atomic_write_bytes(out / RETENTION_PLOT, plot_rate_vs(report, "retention")),
    }
    if tensorboard:
        write_tensorboard(report, out / TENSORBOARD_DIR)
        paths["tensorboard"] = out / TENSORBOARD_DIR
    return paths


def load_results(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``results.json`` (or of the folder holding it)."""
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
    result: Sequence[dict[str, Any]] = rows
    return list(result)
