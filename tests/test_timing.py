"""The synchronised wall clock every speed column and benchmark goes through (``tokenmask.timing``)."""

from __future__ import annotations

import pytest
import torch

from tokenmask.timing import seconds_per_call, synchronize, timed_call


def test_timed_call_returns_the_calls_result_and_its_duration() -> None:
    calls: list[tuple[int, int]] = []

    def add(a: int, b: int = 0) -> int:
        calls.append((a, b))
        return a + b

    out, seconds = timed_call(torch.device("cpu"), add, 2, b=3)
    assert out == 5 and calls == [(2, 3)]
    assert isinstance(seconds, float) and seconds >= 0.0
    synchronize("cpu")  # nothing to wait for off CUDA
    synchronize(None)


def test_seconds_per_call_warms_once_then_times_each_repeat() -> None:
    calls = []
    mean = seconds_per_call("cpu", lambda: calls.append(1), repeats=4)
    assert len(calls) == 5 and mean >= 0.0
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        seconds_per_call("cpu", lambda: None, repeats=0)
