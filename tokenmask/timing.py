"""Wall clocks that wait for the device: the one timing pattern of tokenmask's speed columns and benchmarks.

A CUDA kernel returns before it has run, so a plain ``perf_counter`` around GPU work times its launch. Every
timer here synchronises the device before it starts and before it stops (a no-op off CUDA)::

    from tokenmask.timing import timed_call

    hidden, seconds = timed_call(judge.device, judge.last_hidden_state, ids, attention)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import torch

P = ParamSpec("P")
T = TypeVar("T")


def synchronize(device: torch.device | str | None) -> None:
    """Wait until every kernel queued on ``device`` has run (CUDA devices only; nothing elsewhere)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed_call(
    device: torch.device | str | None, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs
) -> tuple[T, float]:
    """``fn(*args, **kwargs)`` and its wall time in seconds, ``device`` synchronised before and after."""
    synchronize(device)
    began = time.perf_counter()
    out = fn(*args, **kwargs)
    synchronize(device)
    return out, time.perf_counter() - began


def seconds_per_call(device: torch.device | str | None, fn: Callable[[], object], repeats: int) -> float:
    """Mean wall seconds of ``repeats`` back-to-back calls of ``fn`` after one untimed warm call (synchronised)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}.")
    fn()

    def loop() -> None:
        for _ in range(repeats):
            fn()

    return timed_call(device, loop)[1] / repeats
