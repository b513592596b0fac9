"""benchmarks/compress_speed.py: the table's layout and a smoke run on the tiny model (no times asserted)."""

from __future__ import annotations

import math

import pytest
from conftest import load_benchmark


def test_speed_table_fits_long_method_names() -> None:
    speed = load_benchmark("compress_speed")
    rows = [
        speed.SpeedRow("llmlingua", 120.0),
        speed.SpeedRow("refine_lookahead:p:bf16:truncation", 114.9),
        speed.SpeedRow("agent:missing", math.nan, "skipped: no agent"),
    ]
    lines = speed.speed_table(rows, "machine X", "setting Y").splitlines()
    assert lines[:2] == ["machine: machine X", "setting Y"]
    table = lines[2:]
    assert (
        len({line.index("|", 2) for line in table}) == 1
    )  # the first column's right edge is the same on every line
    assert "0.96" in table[3] and "1.00" in table[2] and table[4].endswith("skipped: no agent")


def test_smoke_run_names_the_judge_batch(capsys: pytest.CaptureFixture[str]) -> None:
    speed = load_benchmark("compress_speed")
    code = speed.main(
        [
            "--model",
            "tiny",
            "--methods",
            "truncation,random",
            "--documents",
            "2",
            "--repeats",
            "1",
            "--batch-size",
            "3",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "judge batch 3" in out
    assert "| truncation" in out and "| random" in out
