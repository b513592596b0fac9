"""The bar against truncation, with paired bootstrap intervals over the documents.

docs/evaluation.md calls a compressor worth shipping when, at each asked rate, it *dominates
truncation*: recoverability at least :data:`~tokenmask.evaluate.reports.RECOVERABILITY_MARGIN`
higher, retention at most :data:`~tokenmask.evaluate.reports.RETENTION_MARGIN` lower, and its achieved
rate within :data:`RATE_ERROR` of the asked one. On 30 documents that verdict is noisy: one document
whose continuation re-uses dropped text can move retention by 0.03. So every change over truncation
comes here with its spread.

Both metrics are ratios of sums over documents, ``Σ(empty - compressed) / Σ(empty - full)``, so
a method's change over truncation is ``Σ(truncation - method) / Σ(empty - full)``: the empty-context
NLLs cancel. Drawing the documents with replacement, the *same* draw for the method and for
truncation (paired: both compressed the same documents) and for both metrics (recoverability reads
the draw's share of its first documents), and recomputing that ratio gives the bootstrap
distribution of the change. :func:`bar_rows` reports its central interval and the share
of draws in which the method meets the bar (``P(meets)``), beside the change on all documents.

Documents cut from one source (one page of a manual) are not independent, so by default
``tokenmask evaluate`` draws *sources* (:data:`UNITS`: a cluster bootstrap): a draw takes as many
sources as the evaluation has, with replacement, and every document of a drawn source. Where every
document has its own source the draws are the document draws, draw for draw.

The per-document NLLs come from the evaluation itself (:attr:`Scores.recover_nlls
<tokenmask.evaluate.metrics.Scores.recover_nlls>`, :attr:`Scores.continue_nlls
<tokenmask.evaluate.metrics.Scores.continue_nlls>` and the report's reference NLLs), so a
``results.json`` written by ``tokenmask evaluate`` holds all it needs (:func:`bar_from_file`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tokenmask.evaluate.reports import EvaluationReport, MethodResult

DRAWS = 2000
"""Bootstrap draws of the documents."""

LEVEL = 0.9
"""Central share of the bootstrap distribution reported as the interval."""

UNITS = ("source", "document")
"""What a bootstrap draw resamples: whole sources (documents of one source together; the default) or documents."""

RATE_ERROR = 0.01
"""The largest ``|achieved - asked|`` rate that meets the bar (docs/evaluation.md)."""

REFERENCE_KEYS = ("recover_empty", "recover_full", "continue_empty", "continue_full")
"""The report's per-document reference NLLs (:class:`~tokenmask.evaluate.metrics.ReferenceNLLs`)."""


@dataclass(frozen=True)
class BarRow:
    """One method at one asked rate, against truncation at the same rate.

    :param method: the method's name.
    :param requested_rate: the asked rate.
    :param rate_error: ``|achieved - asked|`` of the method.
    :param d_rec: recoverability change over truncation on all documents.
    :param d_ret: retention change over truncation on all documents.
    :param rec_interval: the bootstrap interval of ``d_rec``.
    :param ret_interval: the bootstrap interval of ``d_ret``.
    :param meets: the method meets the bar on all documents.
    :param p_meets: the share of bootstrap draws in which it meets the bar.
    """

    method: str
    requested_rate: float
    rate_error: float
    d_rec: float
    d_ret: float
    rec_interval: tuple[float, float]
    ret_interval: tuple[float, float]
    meets: bool
    p_meets: float


def paired_changes(
    empty: Sequence[float] | np.ndarray,
    full: Sequence[float] | np.ndarray,
    method: Sequence[float] | np.ndarray,
    base: Sequence[float] | np.ndarray,
    counts: np.ndarray,
) -> tuple[float, np.ndarray]:
    """The change ``ratio(method) - ratio(base)`` of a ratio-of-sums metric, on all documents and per draw.

    :param empty: per document, the NLL with an empty prefix.
    :param full: per document, the NLL with the full context.
    :param method: per document, the NLL with the method's compressed context.
    :param base: per document, the NLL with the base's (truncation's) compressed context.
    :param counts: one row per bootstrap draw: how often the draw took each document
        (:func:`draw_counts`; a row may cover more documents than these: the first ones are used).
    :return: the change on all documents, and one change per draw (``nan`` where the draw's
        denominator is 0, e.g. it took none of these documents).
    """
    e, f, m, b = (np.asarray(x, dtype=np.float64) for x in (empty, full, method, base))
    if not (e.shape == f.shape == m.shape == b.shape) or e.ndim != 1:
        raise ValueError(
            f"per-document NLLs must be 1-d and of one length, got {e.shape}, {f.shape}, {m.shape}, {b.shape}."
        )
    if counts.ndim != 2 or counts.shape[1] < len(e):
        raise ValueError(f"counts must be (draws, >= {len(e)} documents), got {counts.shape}.")
    gain, scale = b - m, e - f
    total = float(scale.sum())
    change = float(gain.sum()) / total if total else math.nan
    weights = counts[:, : len(e)].astype(np.float64)
    num, den = weights @ gain, weights @ scale
    with np.errstate(divide="ignore", invalid="ignore"):
        per_draw = np.where(den != 0, num / np.where(den != 0, den, 1.0), np.nan)
    return change, per_draw


def draw_counts(documents: int, draws: int, seed: int = 0, groups: Sequence[str] | None = None) -> np.ndarray:
    """``draws`` bootstrap draws of ``documents`` documents with replacement, as counts per document.

    One draw set serves both metrics: recoverability, computed on the first documents only, reads the
    first columns (the same documents, as drawn), so a draw's two changes come from one resample.

    :param groups: optional, one label per document (its source): then a draw takes as many groups as
        there are, with replacement, and counts each document as often as its group was taken (a
        cluster bootstrap). Groups are numbered in order of first appearance, so with every label distinct
        the draws are the document draws of the same seed.
    :raises ValueError: for negative ``documents``, ``draws < 1`` or ``groups`` of another length.
    """
    if documents < 0 or draws < 1:
        raise ValueError(f"draw_counts needs documents >= 0 and draws >= 1, got {documents} and {draws}.")
    if groups is None:
        ids, units = np.arange(documents), documents
    else:
        if len(groups) != documents:
            raise ValueError(
                f"draw_counts got {len(groups)} group labels for {documents} documents. Fix: one label per document."
            )
        ids = group_ids(groups)
        units = int(ids.max()) + 1 if documents else 0
    picks = np.random.default_rng(seed).integers(0, max(units, 1), size=(draws, units))
    counts = np.zeros((draws, units), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(draws), units), picks.ravel()), 1)
    return counts[:, ids]


def group_ids(groups: Sequence[str]) -> np.ndarray:
    """Each label's group number, groups numbered in order of first appearance (``["b", "a", "b"]`` -> ``[0, 1, 0]``)."""
    number: dict[str, int] = {}
    return np.array([number.setdefault(str(g), len(number)) for g in groups], dtype=np.int64)


def source_groups(setting: Mapping[str, Any] | None) -> list[str] | None:
    """The bootstrap groups of an evaluation: its documents' sources when its ``bootstrap_unit`` is ``source``
    (the default), else ``None`` (document draws; also for a setting that lists no sources).

    A window cut at a later offset of a text (source ``NAME@OFFSET``) belongs to its text's group.

    :param setting: the ``setting`` of an :class:`~tokenmask.evaluate.reports.EvaluationReport` or ``results.json``.
    """
    if not setting or not setting.get("sources"):
        return None
    unit = (setting.get("config") or {}).get("bootstrap_unit", "source")
    if unit != "source":
        return None
    return [_text_of(str(s)) for s in setting["sources"]]


def _text_of(source: str) -> str:
    name, at, offset = source.rpartition("@")
    return name if at and offset.isdigit() else source


def check_unit(unit: str) -> str:
    """``unit`` if it is one of :data:`UNITS`.

    :raises ValueError: naming the known units.
    """
    if unit not in UNITS:
        raise ValueError(f"Unknown bootstrap unit {unit!r}. Fix: use one of {', '.join(UNITS)}.")
    return unit


def subset_counts(documents: int, size: int, draws: int, seed: int = 0) -> np.ndarray:
    """``draws`` random subsets of ``size`` of ``documents`` documents (without replacement), as 0/1 counts.

    What a ``size``-document evaluation drawn from these documents would see: :func:`paired_changes` of
    these counts gives the change each such evaluation would report (``benchmarks/bar_subsets.py``).
    """
    if not 0 < size <= documents or draws < 1:
        raise ValueError(
            f"subset_counts needs 0 < size <= documents and draws >= 1, got size {size}, "
            f"{documents} documents and {draws} draws."
        )
    rng = np.random.default_rng(seed)
    counts = np.zeros((draws, documents), dtype=np.int64)
    for row in counts:
        row[rng.choice(documents, size, replace=False)] = 1
    return counts


def block_counts(documents: int, size: int) -> np.ndarray:
    """The consecutive blocks of ``size`` documents (0 to size-1, size to 2 size-1, ...) as 0/1 counts; a last
    partial block is left out."""
    if not 0 < size <= documents:
        raise ValueError(
            f"block_counts needs 0 < size <= documents, got size {size} and {documents} documents."
        )
    blocks = documents // size
    counts = np.zeros((blocks, documents), dtype=np.int64)
    for b in range(blocks):
        counts[b, b * size : (b + 1) * size] = 1
    return counts


def _row_values(row: MethodResult | Mapping[str, Any]) -> tuple[str, float, float, list[float], list[float]]:
    # (method, asked rate, rate error, per-document R, per-document F) of a result or a results.json row
    if isinstance(row, Mapping):
        asked, error = row.get("requested_rate"), row.get("rate_error")
        return (
            str(row.get("method")),
            math.nan if asked is None else float(asked),
            math.nan if error is None else float(error),
            list(row.get("recover_nlls") or []),
            list(row.get("continue_nlls") or []),
        )
    sc = row.scores
    return row.method, sc.requested_rate, sc.rate_error, list(sc.recover_nlls), list(sc.continue_nlls)


def bar_rows(
    results: Sequence[MethodResult | Mapping[str, Any]],
    reference: Mapping[str, Sequence[float]],
    base: str | None = None,
    draws: int = DRAWS,
    level: float = LEVEL,
    seed: int = 0,
    groups: Sequence[str] | None = None,
) -> list[BarRow]:
    """Every method against ``base`` (default truncation) at each asked rate both were run at.

    Rows without per-document NLLs (results written before they were kept, or methods that do not
    score recoverability) are left out, as is the base itself.

    :param results: :class:`~tokenmask.evaluate.reports.MethodResult` objects or ``results.json`` rows.
    :param reference: per-document reference NLLs, keys :data:`REFERENCE_KEYS`.
    :param base: the method compared against.
    :param draws: bootstrap draws of the documents.
    :param level: central share of the draws the interval covers, in ``(0, 1)``.
    :param seed: seed of the draws (one draw set for every method and rate: the rows are comparable).
    :param groups: optional, each document's source (:func:`source_groups`): draws take whole sources.
    :raises ValueError: for ``draws < 1``, a level outside ``(0, 1)``, missing reference keys or ``groups``
        of another length than the documents.
    """
    from tokenmask.evaluate.reports import RECOVERABILITY_MARGIN, RETENTION_MARGIN, TRUNCATION

    if draws < 1 or not 0 < level < 1:
        raise ValueError(f"bar_rows needs draws >= 1 and 0 < level < 1, got {draws} and {level}.")
    missing = [k for k in REFERENCE_KEYS if k not in reference]
    if missing:
        raise ValueError(
            f"the reference NLLs lack {missing}. Fix: pass the report's reference (all of {REFERENCE_KEYS})."
        )
    base = TRUNCATION if base is None else base
    rows = [_row_values(r) for r in results]
    bases = {asked: (r, f) for name, asked, _, r, f in rows if name == base and r and f}
    n_rec, n_ret = len(reference["recover_empty"]), len(reference["continue_empty"])
    counts = draw_counts(max(n_rec, n_ret), draws, seed, groups)  # one resample per draw for both metrics
    tail = (1 - level) / 2 * 100
    out = []
    for name, asked, rate_error, r, f in rows:
        if name == base or asked not in bases or len(r) != n_rec or len(f) != n_ret:
            continue
        base_r, base_f = bases[asked]
        d_rec, rec_per = paired_changes(
            reference["recover_empty"], reference["recover_full"], r, base_r, counts
        )
        d_ret, ret_per = paired_changes(
            reference["continue_empty"], reference["continue_full"], f, base_f, counts
        )
        rate_ok = rate_error <= RATE_ERROR
        meets_per = (rec_per >= RECOVERABILITY_MARGIN) & (ret_per >= -RETENTION_MARGIN) & rate_ok
        out.append(
            BarRow(
                method=name,
                requested_rate=asked,
                rate_error=rate_error,
                d_rec=d_rec,
                d_ret=d_ret,
                rec_interval=_interval(rec_per, tail),
                ret_interval=_interval(ret_per, tail),
                meets=bool(rate_ok and d_rec >= RECOVERABILITY_MARGIN and d_ret >= -RETENTION_MARGIN),
                p_meets=float(np.mean(meets_per)),
            )
        )
    return out


def _interval(values: np.ndarray, tail: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if not len(finite):
        return (math.nan, math.nan)
    low, high = np.percentile(finite, [tail, 100 - tail])
    return (float(low), float(high))


def report_bar_rows(report: EvaluationReport, **kwargs: Any) -> list[BarRow]:
    """:func:`bar_rows` of an :class:`~tokenmask.evaluate.reports.EvaluationReport` (empty without truncation or
    reference), drawing the report's sources (:func:`source_groups`) unless ``groups`` is given."""
    if not report.reference:
        return []
    kwargs.setdefault("groups", source_groups(report.setting))
    return bar_rows(report.results, report.reference, **kwargs)


def bar_from_file(path: str | Path, **kwargs: Any) -> list[BarRow]:
    """:func:`bar_rows` of a ``results.json`` written by ``tokenmask evaluate`` (or the folder holding it), drawing
    its sources as the evaluation did (:func:`source_groups`) unless ``groups`` is given.

    :raises ValueError: when the file holds no reference NLLs (written before they were kept).
    """
    rows, reference, setting = load_results_with_reference(path)
    kwargs.setdefault("groups", source_groups(setting))
    return bar_rows(rows, reference, **kwargs)


def load_results_with_reference(
    path: str | Path,
) -> tuple[list[Any], dict[str, list[float]], dict[str, Any]]:
    """The result rows, the per-document reference NLLs and the setting of a ``results.json`` (or its folder).

    :raises ValueError: when the file holds no reference NLLs (written before they were kept).
    """
    from tokenmask.evaluate.reports import load_results_file

    data = load_results_file(path)  # checks the file: a clear error when missing or damaged
    reference = data.get("reference") or {}
    if not reference:
        raise ValueError(
            f"{path} holds no per-document reference NLLs (written by an older tokenmask). "
            "Fix: run tokenmask evaluate again."
        )
    return list(data["results"]), reference, dict(data.get("setting") or {})


def method_nlls(
    results: Sequence[MethodResult | Mapping[str, Any]],
) -> dict[tuple[str, float], tuple[list[float], list[float]]]:
    """Per (method, asked rate), its per-document ``R`` and ``F`` NLLs (rows without them are left out)."""
    return {(name, asked): (r, f) for name, asked, _, r, f in map(_row_values, results) if r and f}


def bar_table(
    rows: Sequence[BarRow], level: float = LEVEL, draws: int = DRAWS, groups: Sequence[str] | None = None
) -> str:
    """The rows as a Markdown section (empty string for no rows); ``groups`` as given to :func:`bar_rows`, to name
    what the draws took."""
    from tokenmask.evaluate.reports import RECOVERABILITY_MARGIN, RETENTION_MARGIN, TRUNCATION

    if not rows:
        return ""
    pct = f"{level * 100:g} %"
    drawn = (
        "the documents"
        if groups is None
        else f"the {len(set(groups))} sources of the {len(groups)} documents (a source's documents together)"
    )
    lines = [
        f"Against {TRUNCATION} (the bar of docs/evaluation.md: recoverability at least +{RECOVERABILITY_MARGIN}, "
        f"retention at least -{RETENTION_MARGIN}, rate error at most {RATE_ERROR}). Changes on all documents, "
        f"with the {pct} interval and P(meets) over {draws} paired bootstrap draws of {drawn}:",
        "",
        f"| method | asked rate | d recoverability [{pct}] | d retention [{pct}] | meets | P(meets) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r.method} | {r.requested_rate:.2f} | {r.d_rec:+.3f} [{r.rec_interval[0]:+.3f}, {r.rec_interval[1]:+.3f}] | "
            f"{r.d_ret:+.3f} [{r.ret_interval[0]:+.3f}, {r.ret_interval[1]:+.3f}] | {'yes' if r.meets else 'no'} | "
            f"{r.p_meets:.2f} |"
        )
    return "\n".join(lines) + "\n"
