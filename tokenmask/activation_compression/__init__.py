"""Activation compression: recursive semantic clustering of a causal LM's hidden states.

A comparison module for the RL compressor: instead of removing tokens from the text, compression
layers merge similar adjacent hidden states inside the LM, so the layers after them process fewer
positions. See ``docs/activation_compression.md``.

Importing the package registers the ``activation`` method of ``tokenmask evaluate``.
"""

from tokenmask.activation_compression.config import (
    ActivationConfigError,
    ActivationEvaluateConfig,
    ActivationTrainConfig,
    CompressionConfig,
)
from tokenmask.activation_compression.in_model import ActivationInModelCompressor, build_activation_method
from tokenmask.activation_compression.model import (
    CompressedCausalLM,
    CompressionLayer,
    CompressionOutput,
    RestoreGate,
)
from tokenmask.evaluate.compressor import register_method

__all__ = [
    "ActivationInModelCompressor",
    "ActivationConfigError",
    "ActivationEvaluateConfig",
    "ActivationTrainConfig",
    "CompressedCausalLM",
    "CompressionConfig",
    "CompressionLayer",
    "CompressionOutput",
    "RestoreGate",
]


register_method("activation", build_activation_method)
