"""Activation compression: recursive semantic clustering of a causal LM's hidden states.

A comparison module for the RL compressor: instead of removing tokens from the text, compression
layers merge similar adjacent hidden states inside the LM, so the layers after them process fewer
positions. See ``docs/activation_compression.md``.

Importing the package registers the ``activation`` method of ``tokenmask evaluate``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tokenmask.activation_compression.config import (
    ActivationConfigError,
    ActivationEvaluateConfig,
    ActivationTrainConfig,
    CompressionConfig,
)
from tokenmask.evaluate.compressor import MethodContext, register_method

if TYPE_CHECKING:  # torch-heavy: loaded on first use, so `tokenmask activation --help` stays quick
    from tokenmask.activation_compression.in_model import ActivationInModelCompressor
    from tokenmask.activation_compression.model import CompressedCausalLM
    from tokenmask.activation_compression.modules import CompressionLayer, RestoreGate
    from tokenmask.activation_compression.outputs import CompressionOutput, DecodeState

_EXPORTS: dict[str, str] = {
    "ActivationInModelCompressor": "tokenmask.activation_compression.in_model",
    "CompressedCausalLM": "tokenmask.activation_compression.model",
    "CompressionLayer": "tokenmask.activation_compression.modules",
    "CompressionOutput": "tokenmask.activation_compression.outputs",
    "DecodeState": "tokenmask.activation_compression.outputs",
    "RestoreGate": "tokenmask.activation_compression.modules",
}

__all__ = [
    "ActivationInModelCompressor",
    "ActivationConfigError",
    "ActivationEvaluateConfig",
    "ActivationTrainConfig",
    "CompressedCausalLM",
    "CompressionConfig",
    "CompressionLayer",
    "CompressionOutput",
    "DecodeState",
    "RestoreGate",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tokenmask.activation_compression' has no attribute {name!r}")


def _activation_method(argument: str, context: MethodContext) -> ActivationInModelCompressor:
    """``activation:CFG``: :func:`~tokenmask.activation_compression.in_model.build_activation_method`, loaded on use."""
    from tokenmask.activation_compression.in_model import build_activation_method

    return build_activation_method(argument, context)


register_method("activation", _activation_method, in_model=True)
