"""The bar against truncation with paired bootstrap intervals (:mod:`tokenmask.evaluate.bar`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tokenmask.evaluate.bar import (
    bar_from_file,
    bar_rows,
    bar_table,
    check_unit,
    draw_counts,
    paired_changes,
    source_groups,
)
from tokenmask.evaluate.metrics import information_ratio


def _reference(n: int, rng: np.random.Generator) -> dict[str, list[float]]:
    empty_r, empty_f = rng.uniform(900, 1100, n), rng.uniform(250, 350, n)
    return {
        "recover_empty": empty_r.tolist(),
        "recover_full": (empty_r - rng.uniform(500, 700, n)).tolist(),
        "continue_empty": empty_f.tolist(),
        "continue_full": (empty_f - rng.uniform(50, 100, n)).tolist(),
    }


def _row(method: str, r: np.ndarray, f: np.ndarray, asked: float = 0.5, error: float = 0.0) -> dict[str, Any]:
    return {
        "method": method,
        "requested_rate": asked,
        "rate_error": error,
        "recover_nlls": r.tolist(),
        "continue_nlls": f.tolist(),
    }


def test_the_change_on_all_documents_is_the_difference_of_the_corpus_ratios() -> None:
    rng = np.random.default_rng(0)
    ref = _reference(12, rng)
    base_r, method_r = rng.uniform(600, 800, 12), rng.uniform(550, 800, 12)
    once = np.ones((1, 12), dtype=int)
    change, per_draw = paired_changes(ref["recover_empty"], ref["recover_full"], method_r, base_r, once)
    expected = information_ratio(ref["recover_empty"], method_r, ref["recover_full"]) - information_ratio(
        ref["recover_empty"], base_r, ref["recover_full"]
    )
    assert change == pytest.approx(expected)
    assert per_draw[0] == pytest.approx(expected)  # a draw of every document once is the whole corpus
    with pytest.raises(ValueError, match="one length"):
        paired_changes([1.0, 2.0], [0.0], [1.0], [1.0], once)
    # a draw over more documents: the first columns are these documents, as drawn
    wider = np.concatenate([2 * once, np.zeros((1, 5), dtype=int)], axis=1)
    assert paired_changes(ref["recover_empty"], ref["recover_full"], method_r, base_r, wider)[1][
        0
    ] == pytest.approx(expected)


def test_one_draw_resamples_the_documents_for_both_metrics() -> None:
    counts = draw_counts(7, 300, seed=4)
    assert counts.shape == (300, 7) and (counts.sum(axis=1) == 7).all()
    assert (draw_counts(7, 300, seed=4) == counts).all() and not (draw_counts(7, 300, seed=5) == counts).all()
    # recoverability on the first 3 documents reads the same draw's first 3 counts
    rng = np.random.default_rng(5)
    ref = _reference(7, rng)
    ref = {k: (v[:3] if k.startswith("recover") else v) for k, v in ref.items()}
    results = [
        _row("truncation", rng.uniform(600, 700, 3), rng.uniform(200, 250, 7)),
        _row("m", rng.uniform(580, 700, 3), rng.uniform(200, 250, 7)),
    ]
    (row,) = bar_rows(results, ref, draws=300, seed=4)
    per_rec = paired_changes(
        ref["recover_empty"],
        ref["recover_full"],
        results[1]["recover_nlls"],
        results[0]["recover_nlls"],
        counts,
    )[1]
    finite = per_rec[np.isfinite(per_rec)]
    assert row.rec_interval == pytest.approx(tuple(np.percentile(finite, [5, 95])))


def test_a_clear_win_meets_the_bar_in_nearly_every_draw_and_truncation_itself_is_no_row() -> None:
    rng = np.random.default_rng(1)
    n = 30
    ref = _reference(n, rng)
    r_scale = np.subtract(ref["recover_empty"], ref["recover_full"])
    f_scale = np.subtract(ref["continue_empty"], ref["continue_full"])
    base_r = np.asarray(ref["recover_empty"]) - 0.5 * r_scale  # recoverability 0.5
    base_f = np.asarray(ref["continue_empty"]) - 0.9 * f_scale  # retention 0.9
    results = [
        _row("truncation", base_r, base_f),
        _row("win", base_r - 0.05 * r_scale * rng.uniform(0.8, 1.2, n), base_f - 0.01 * f_scale),
        _row("same", base_r, base_f),
        _row("off_rate", base_r - 0.05 * r_scale, base_f, error=0.02),
        _row("other_rate", base_r - 0.05 * r_scale, base_f, asked=0.3),  # no truncation at 0.3
    ]
    rows = {r.method: r for r in bar_rows(results, ref, draws=500)}
    assert set(rows) == {"win", "same", "off_rate"}
    win, same, off = rows["win"], rows["same"], rows["off_rate"]
    assert win.meets and win.p_meets > 0.95
    assert win.rec_interval[0] <= win.d_rec <= win.rec_interval[1] and win.rec_interval[0] > 0.02
    assert win.d_ret == pytest.approx(0.01)
    assert same.d_rec == same.d_ret == 0.0 and same.rec_interval == (0.0, 0.0) and not same.meets
    assert not off.meets and off.p_meets == 0.0  # rate error above 0.01: never meets
    table = bar_table(list(rows.values()), draws=500)
    assert table.count("\n| ") == 5 and "| win | 0.50 | +0.0" in table and "| yes |" in table


def test_source_draws_take_a_sources_documents_together() -> None:
    """A cluster bootstrap: a drawn source brings all its documents; with every source distinct, the document draws."""
    groups = ["a", "b", "a", "c", "b", "a"]
    counts = draw_counts(6, 400, seed=7, groups=groups)
    assert counts.shape == (400, 6)
    assert (counts[:, 0] == counts[:, 2]).all() and (counts[:, 0] == counts[:, 5]).all()
    assert (counts[:, 1] == counts[:, 4]).all()
    # three sources drawn per draw: their documents add up to 3 + 2 + 1 on average (sizes 3, 2, 1)
    assert counts[:, [0, 1, 3]].sum(axis=1).tolist() == [3] * 400
    assert counts.sum(axis=1).mean() == pytest.approx(6, abs=0.3)
    distinct = [f"s{i}" for i in range(6)]
    assert (draw_counts(6, 50, seed=3, groups=distinct) == draw_counts(6, 50, seed=3)).all()
    with pytest.raises(ValueError, match="one label per document"):
        draw_counts(6, 10, groups=["a"])


def test_documents_of_one_source_widen_the_interval_when_drawn_together() -> None:
    """Each document twice (two windows of one text): drawn as independent documents the interval is narrower than
    the data supports; drawn by source it is the interval of the distinct documents."""
    rng = np.random.default_rng(11)
    n = 15
    ref = _reference(n, rng)
    base_r, m_r = rng.uniform(600, 700, n), rng.uniform(560, 720, n)
    base_f, m_f = rng.uniform(200, 250, n), rng.uniform(190, 260, n)
    twice = {k: v + v for k, v in ref.items()}
    results = [
        _row("truncation", np.tile(base_r, 2), np.tile(base_f, 2)),
        _row("m", np.tile(m_r, 2), np.tile(m_f, 2)),
    ]
    groups = [f"text{i}" for i in range(n)] * 2
    (by_document,) = bar_rows(results, twice, draws=3000, seed=1)
    (by_source,) = bar_rows(results, twice, draws=3000, seed=1, groups=groups)
    (distinct,) = bar_rows([_row("truncation", base_r, base_f), _row("m", m_r, m_f)], ref, draws=3000, seed=1)
    width = lambda b: b.ret_interval[1] - b.ret_interval[0]  # noqa: E731
    assert by_source.d_ret == pytest.approx(by_document.d_ret) == pytest.approx(distinct.d_ret)
    assert width(by_source) > 1.25 * width(by_document)
    assert width(by_source) == pytest.approx(width(distinct), rel=0.15)
    table = bar_table([by_source], draws=3000, groups=groups)
    assert "the 15 sources of the 30 documents" in table
    assert "draws of the documents:" in bar_table([by_document], draws=3000)


def test_source_groups_follow_the_evaluations_unit() -> None:
    setting = {"sources": ["a.rst", "b.rst@64", "b.rst", "mail@host"], "config": {"bootstrap_unit": "source"}}
    assert source_groups(setting) == ["a.rst", "b.rst", "b.rst", "mail@host"]
    assert source_groups({"sources": ["a", "b"]}) == [
        "a",
        "b",
    ]  # a file without the key: the default, sources
    assert source_groups({**setting, "config": {"bootstrap_unit": "document"}}) is None
    assert source_groups({}) is None and source_groups(None) is None
    assert check_unit("document") == "document"
    with pytest.raises(ValueError, match="Unknown bootstrap unit 'page'. Fix: use one of source, document"):
        check_unit("page")


def test_the_draws_are_seeded() -> None:
    rng = np.random.default_rng(2)
    ref = _reference(20, rng)
    results = [
        _row("truncation", rng.uniform(600, 700, 20), rng.uniform(200, 250, 20)),
        _row("m", rng.uniform(580, 700, 20), rng.uniform(200, 250, 20)),
    ]
    first, again, other = (bar_rows(results, ref, draws=200, seed=s)[0] for s in (0, 0, 1))
    assert first == again
    assert other.d_rec == first.d_rec and other.rec_interval != first.rec_interval
    with pytest.raises(ValueError, match="lack"):
        bar_rows(results, {"recover_empty": []})
    with pytest.raises(ValueError, match="draws"):
        bar_rows(results, ref, draws=0)


def test_a_results_file_without_reference_nlls_is_refused_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text(json.dumps({"results": [], "setting": {}}))
    with pytest.raises(ValueError, match="run tokenmask evaluate again"):
        bar_from_file(tmp_path / "results.json")


def test_the_pareto_plot_draws_each_methods_interval_around_its_point(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import matplotlib.axes

    from tokenmask.evaluate.reports import plot_pareto

    rng = np.random.default_rng(3)
    ref = _reference(10, rng)
    rows = []
    for asked in (0.3, 0.7):
        for method in ("truncation", "a", "b"):
            row = _row(method, rng.uniform(600, 700, 10), rng.uniform(200, 250, 10), asked=asked)
            rows.append({**row, "rate": asked, "recoverability": 0.5, "retention": 0.9})
    calls: list[tuple[Any, Any, Any, Any]] = []

    def record(self: Any, x: Any, y: Any, xerr: Any = None, yerr: Any = None, **kwargs: Any) -> None:
        calls.append((x, y, xerr, yerr))

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", record)
    plain = plot_pareto(rows)
    assert calls == [] and plain.startswith(b"\x89PNG")
    plot_pareto(rows, reference=ref)
    assert len(calls) == 8  # a and b at both rates, in the overview and the zoomed row; truncation has no bar
    expected = {(b.requested_rate, b.d_rec - b.rec_interval[0]) for b in bar_rows(rows, ref)}
    assert all(xerr[0][0] >= 0 and xerr[1][0] >= 0 and yerr[0][0] >= 0 for _, _, xerr, yerr in calls)
    assert {round(c[2][0][0], 12) for c in calls} == {round(e[1], 12) for e in expected}


def test_the_pareto_plots_zoomed_row_shows_only_the_points_near_truncation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import matplotlib.axes

    from tokenmask.evaluate.reports import ZOOM_RECOVERABILITY, plot_pareto

    rows = [
        {
            "method": "truncation",
            "requested_rate": 0.5,
            "rate": 0.5,
            "recoverability": 0.48,
            "retention": 0.93,
        },
        {"method": "near", "requested_rate": 0.5, "rate": 0.5, "recoverability": 0.51, "retention": 0.92},
        {"method": "far", "requested_rate": 0.5, "rate": 0.5, "recoverability": 0.52, "retention": 0.33},
    ]
    drawn: list[str] = []
    scatter = matplotlib.axes.Axes.scatter

    def record(self: Any, x: Any, y: Any, *args: Any, **kwargs: Any) -> Any:
        drawn.append(f"{self.get_subplotspec().rowspan.start}:{kwargs.get('label') or ''}")
        return scatter(self, x, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "scatter", record)
    assert plot_pareto(rows).startswith(b"\x89PNG")
    assert drawn == ["0:", "0:", "0:", "1:truncation (0.50)", "1:near (0.50)"]  # the zoom leaves "far" out
    assert 0.52 - 0.48 < ZOOM_RECOVERABILITY[1]  # "far" is out on retention alone
    drawn.clear()
    plot_pareto([r for r in rows if r["method"] != "truncation"])  # no truncation: no zoomed row
    assert drawn == ["0:", "0:"]


def test_subsets_and_blocks_are_documents_without_replacement() -> None:
    from tokenmask.evaluate.bar import block_counts, subset_counts

    counts = subset_counts(10, 4, 50, seed=3)
    assert counts.shape == (50, 10) and set(np.unique(counts)) <= {0, 1} and (counts.sum(axis=1) == 4).all()
    assert (subset_counts(10, 4, 50, seed=3) == counts).all() and not (
        subset_counts(10, 4, 50, seed=4) == counts
    ).all()
    assert (subset_counts(4, 4, 3) == 1).all()  # every document once: the whole corpus
    blocks = block_counts(10, 4)  # documents 0-3 and 4-7; 8-9 are a partial block, left out
    assert blocks.tolist() == [[1, 1, 1, 1, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1, 0, 0]]
    for bad in (lambda: subset_counts(3, 4, 10), lambda: subset_counts(3, 0, 10), lambda: block_counts(3, 4)):
        with pytest.raises(ValueError, match="size"):
            bad()


def test_bar_subsets_reports_blocks_and_the_share_of_subsets_that_meet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from conftest import load_benchmark

    from tokenmask.evaluate.bar import block_counts, method_nlls, paired_changes

    rng = np.random.default_rng(5)
    ref = _reference(8, rng)
    base_r, base_f = rng.uniform(600, 700, 8), rng.uniform(200, 250, 8)
    results = [
        _row("truncation", base_r, base_f),
        _row("better", base_r - 60.0, base_f - 1.0),  # clears the bar on every subset
        _row("worse", base_r + 5.0, base_f + 20.0),  # never does
    ]
    (tmp_path / "results.json").write_text(json.dumps({"results": results, "setting": {}, "reference": ref}))
    assert sorted(method_nlls(results)) == [("better", 0.5), ("truncation", 0.5), ("worse", 0.5)]
    module = load_benchmark("bar_subsets")
    rows = module.subset_rows(str(tmp_path), size=4, draws=100, below=-0.026)
    assert [r[0] for r in rows] == ["better", "worse"] and [r[-3] for r in rows] == ["1.00", "0.00"]
    first_block = paired_changes(
        ref["recover_empty"], ref["recover_full"], base_r - 60.0, base_r, block_counts(8, 4)
    )[1][0]
    assert rows[0][2].startswith(f"{first_block:+.3f} / ")  # documents 0-3, as a 4-document run would score
    assert rows[1][-1] == "1.000"  # retention below -0.026 on every subset
    assert module.main([str(tmp_path), "--size", "4", "--draws", "20", "--methods", "better"]) == 0
    out = capsys.readouterr().out
    assert "| better | 0.50 |" in out and "worse" not in out and "documents 4-7" in out
    ref["recover_empty"] = ref["recover_empty"][:4]
    (tmp_path / "results.json").write_text(json.dumps({"results": results, "setting": {}, "reference": ref}))
    with pytest.raises(ValueError, match="recoverability_documents 8"):
        module.subset_rows(str(tmp_path), size=4, draws=10, below=0.0)
