"""``tokenmask evaluate``'s closing lines: the Pareto front of its results, and what the columns mean."""

from __future__ import annotations

import json
import math

from tokenmask.cli import main
from tokenmask.evaluate.bar import BarRow
from tokenmask.evaluate.metrics import Scores
from tokenmask.evaluate.reports import MethodResult
from tokenmask.evaluate.runner import (
    COLUMNS_EXPLAINED,
    RATE_SLACK,
    pareto_front,
    pareto_verdict,
    shipping_verdict,
)


def row(method: str, rate: float, rec: float, ret: float, asked: float = 0.5) -> dict[str, object]:
    """A ``results.json`` row (the keys the verdict reads)."""
    return {"method": method, "requested_rate": asked, "rate": rate, "recoverability": rec, "retention": ret}


def test_dominated_methods_leave_the_front() -> None:
    results = [
        row("truncation", 0.50, 0.49, 0.91),
        row("random", 0.50, 0.13, 0.33),  # below truncation on both
        row("span_self_information", 0.50, 0.52, 0.61),  # better recoverability, worse retention: a trade-off
        row("agent:x", 0.50, 0.20, 0.55),
    ]
    assert pareto_front(results) == {0.5: ["truncation", "span_self_information"]}
    verdict = pareto_verdict(results)
    assert (
        "truncation, span_self_information" in verdict
        and "(off the front, dominated: agent:x, random)" in verdict
    )
    assert verdict.count(".") >= 1 and "\n" not in verdict


def test_removing_less_is_no_free_win() -> None:
    """LLMLingua asked for 0.5 removes 0.39: it is not dominated by methods that remove more but score lower."""
    results = [row("truncation", 0.50, 0.50, 0.92), row("llmlingua", 0.39, 0.34, 0.80)]
    assert pareto_front(results) == {0.5: ["truncation"]}  # removes less AND scores lower: dominated
    results = [row("truncation", 0.50, 0.50, 0.80), row("llmlingua", 0.39, 0.34, 0.85)]
    assert pareto_front(results) == {0.5: ["truncation", "llmlingua"]}
    # within RATE_SLACK the achieved rates count as equal
    close = [row("a", 0.50, 0.50, 0.80), row("b", 0.50 - RATE_SLACK / 2, 0.50, 0.80)]
    assert pareto_front(close) == {0.5: ["a", "b"]}


def test_rates_are_judged_apart_and_missing_figures_take_no_part() -> None:
    results = [
        row("truncation", 0.30, 0.40, 0.95, asked=0.3),
        row("agent", 0.30, 0.45, 0.96, asked=0.3),
        row("truncation", 0.70, 0.30, 0.80, asked=0.7),
        row("agent", 0.70, 0.20, 0.70, asked=0.7),
        row("activation", 0.50, None, 0.9, asked=0.7),  # type: ignore[arg-type]
    ]
    assert pareto_front(results) == {0.3: ["agent"], 0.7: ["truncation"]}
    verdict = pareto_verdict(results)
    assert verdict.index("rate 0.30") < verdict.index("rate 0.70")
    assert "No method" in pareto_verdict([row("x", 0.5, math.nan, 0.5)])


def test_method_results_and_results_json_rows_agree() -> None:
    def scores(rate: float, rec: float, ret: float) -> Scores:
        return Scores(
            requested_rate=0.5, rate=rate, rate_error=abs(rate - 0.5), recoverability=rec, retention=ret
        )

    objects = [
        MethodResult("truncation", scores(0.5, 0.49, 0.91)),
        MethodResult("random", scores(0.5, 0.13, 0.33)),
    ]
    rows = [r.to_dict() for r in objects]
    assert pareto_verdict(objects) == pareto_verdict(rows)
    assert pareto_front(objects) == {0.5: ["truncation"]}


def test_evaluate_prints_one_table_the_columns_and_the_verdict(tiny_judge_dir, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    out_dir = tmp_path / "eval"
    status = main(
        [
            "evaluate", "--corpus", "sample", "--judge", str(tiny_judge_dir), "--methods", "truncation,random",
            "--rates", "0.5", "--num_documents", "2", "--recoverability_documents", "2", "--context_tokens", "32",
            "--continuation_tokens", "8", "--device", "cpu", "--tensorboard", "false", "--no_progress",
            "--output_dir", str(out_dir),
        ]
    )  # fmt: skip
    assert status == 0
    out = capsys.readouterr().out
    assert out.count("| method | asked rate | achieved rate |") == 1  # the table once
    assert out.count("Against truncation") == 1  # and the bar's intervals once
    assert COLUMNS_EXPLAINED in out
    saved = json.loads((out_dir / "results.json").read_text())["results"]
    verdict = pareto_verdict(saved)
    assert verdict in out and out.index(COLUMNS_EXPLAINED) < out.index(verdict)
    assert all(r["sample"] for r in saved)  # the first document's compressed text, from compress_and_score


def _bar(method: str, asked: float, meets: bool) -> BarRow:
    return BarRow(
        method, asked, 0.0, 0.03 if meets else 0.0, 0.0, (0.0, 0.0), (0.0, 0.0), meets, 1.0 if meets else 0.0
    )


def _timed(
    method: str, rate: float, rec: float, ret: float, ms: float, asked: float = 0.5
) -> dict[str, object]:
    return {**row(method, rate, rec, ret, asked), "compress_ms_per_1k_tokens": ms}


def test_shipping_needs_the_bar_the_front_and_llmlingua_speed() -> None:
    results = [
        _timed("truncation", 0.50, 0.49, 0.91, 2.0),
        _timed("llmlingua", 0.39, 0.34, 0.80, 120.0),
        _timed("search_fast", 0.50, 0.52, 0.92, 115.0),
        _timed("search_slow", 0.50, 0.52, 0.91, 388.0),
        _timed("agent", 0.50, 0.49, 0.90, 6.0),
    ]
    bars = [_bar("search_fast", 0.5, True), _bar("search_slow", 0.5, True), _bar("agent", 0.5, False)]
    verdict = shipping_verdict(results, bars)
    assert "Worth shipping by docs/evaluation.md" in verdict and ": search_fast at 0.50." in verdict
    assert (
        "search_slow (0.50: dominated, not faster than LLMLingua (388.0 vs 120.0 ms per 1k tokens))"
        in verdict
    )
    assert "agent (0.50: below the bar, dominated)" in verdict
    assert "speed is not judged" not in verdict and "\n" not in verdict


def test_shipping_without_llmlingua_says_speed_is_not_judged() -> None:
    results = [_timed("truncation", 0.50, 0.49, 0.91, 2.0), _timed("search", 0.50, 0.52, 0.92, 388.0)]
    verdict = shipping_verdict(results, [_bar("search", 0.5, True)])
    assert ": search at 0.50 (speed not judged)." in verdict and "add llmlingua to the methods" in verdict
    assert "none can be judged" in shipping_verdict(results, [])
