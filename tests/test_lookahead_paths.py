"""benchmarks/lookahead_paths.py on the tiny model: both decode paths agree and the table says so (no times asserted)."""

from __future__ import annotations

import pytest
from conftest import load_benchmark

from tokenmask.reconstructors import Reconstructor


def test_paths_compare_and_table(tiny_recon: Reconstructor) -> None:
    bench = load_benchmark("lookahead_paths")
    contexts = [[100 + (7 * i + j) % 900 for j in range(24)] for i in range(5)]
    row = bench.compare(tiny_recon, contexts, tokens=6)
    assert (row.dtype, row.contexts, row.identical, row.first_differences) == ("float32", 5, 5, [])
    table = bench.path_table([row], "machine X", "setting Y")
    assert table.splitlines()[:2] == ["machine: machine X", "setting Y"]
    assert "| float32 | 5 | 5 | - |" in table


def test_main_prints_one_row_per_dtype(capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_benchmark("lookahead_paths")
    assert bench.main(["--model", "tiny", "--documents", "3", "--tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "| float32 | 3 |" in out and "| bfloat16 | 3 |" in out
