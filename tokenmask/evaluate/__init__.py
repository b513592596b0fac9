"""Evaluation: the compressor interfaces, baselines, the metrics of docs/evaluation.md and the reports.

* :mod:`.compressor` — :class:`Compressor`, :class:`MaskingCompressor`, :class:`InModelCompressor`
  and the method registry (:func:`register_method`, :func:`build_method`).
* :mod:`.baselines` — random, frequency, length, truncation, self-information (+ LLMLingua).
* :mod:`.metrics` — the one implementation of rate, recoverability, retention, ...
* :mod:`.runner` — ``tokenmask evaluate`` / ``tokenmask baselines`` and the reports.
* :mod:`.bar` — the change over truncation with paired bootstrap intervals, and the bar's verdict.

Only the light interface module is imported here; the rest loads on use.
"""

from tokenmask.evaluate.compressor import (
    CompressedContext,
    Compressor,
    InModelCompressor,
    InModelResult,
    InModelScore,
    MaskingCompressor,
    MethodContext,
    build_method,
    compresses_in_model,
    register_method,
    registered_methods,
)

__all__ = [
    "CompressedContext",
    "Compressor",
    "InModelCompressor",
    "InModelResult",
    "InModelScore",
    "MaskingCompressor",
    "MethodContext",
    "build_method",
    "compresses_in_model",
    "register_method",
    "registered_methods",
]
