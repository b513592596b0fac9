"""Tiny randomly initialised reconstructors and random documents for unit tests and speed benchmarks (never the
main path)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from transformers import LlamaConfig

from tokenmask.reconstructors import DEFAULT_MODEL, Reconstructor, load_tokenizer

if TYPE_CHECKING:
    from tokenmask.evaluate.metrics import EvalDocument


def tiny_llama_config(vocab_size: int = 49152, hidden_size: int = 32, num_layers: int = 2) -> LlamaConfig:
    """A Llama config small enough for unit tests (~1.6M parameters, mostly the embedding table)."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )


def tiny_reconstructor(
    seed: int = 0, device: str | torch.device = "cpu", batch_size: int | None = None
) -> Reconstructor:
    """A random tiny Llama paired with the embedded SmolLM2 tokenizer (real tokens, fake weights)."""
    tokenizer = load_tokenizer(DEFAULT_MODEL)
    return Reconstructor.from_config(
        tiny_llama_config(), tokenizer, device=device, seed=seed, batch_size=batch_size
    )


def random_documents(
    count: int, seed: int = 0, context_tokens: int = 96, continuation_tokens: int = 16
) -> list[EvalDocument]:
    """``count`` evaluation documents of random token ids (100-4999; no text): what a judge search needs to run."""
    from tokenmask.evaluate.metrics import EvalDocument

    rng = np.random.default_rng(seed)
    return [
        EvalDocument(
            rng.integers(100, 5000, context_tokens).tolist(),
            rng.integers(100, 5000, continuation_tokens).tolist(),
            "",
        )
        for _ in range(count)
    ]
