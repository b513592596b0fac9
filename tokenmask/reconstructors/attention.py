"""Grouped-query attention without repeated keys and values, for tokenmask's own cached forwards.

Transformers' SDPA path repeats every key/value head ``groups`` times when a mask is given. The
environment's scorer (:mod:`tokenmask.envs.scoring`) and the decoder of a pre-filled cache
(:mod:`tokenmask.activation_compression.decoding`) both attend over long key buffers under a mask,
so they switch the model to :func:`packed_gqa_sdpa` (registered with ``AttentionInterface`` as
:data:`PACKED_GQA_ATTENTION`) inside :func:`attention_implementation` where :func:`query_groups`
says it applies.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from transformers import AttentionInterface, PretrainedConfig, PreTrainedModel

PACKED_GQA_ATTENTION = "tokenmask_packed_gqa_sdpa"


def packed_gqa_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Scaled-dot-product attention for grouped-query attention, without repeating keys and values.

    Transformers' SDPA path copies every key/value head ``groups`` times when a mask is given; over
    a vector env's long slot buffers that copy and the reads of the copies dominated the step on a
    GPU. Here the ``groups`` query heads that share a key/value head are stacked along the query
    axis instead, so keys and values are read once per key/value head. The mask must already be
    stacked the same way: ``(batch, 1, groups * q, kv)`` (see :meth:`IncrementalScorer._forward`), or
    broadcast over the query axis (``(batch, 1, 1, kv)``, as one decoded token per row uses). Used
    only for tokenmask's own cached forward passes, never for training.
    """
    batch, heads, q, dim = query.shape
    kv_heads = key.shape[1]
    packed = query.reshape(batch, kv_heads, (heads // kv_heads) * q, dim)
    out = torch.nn.functional.scaled_dot_product_attention(
        packed, key, value, attn_mask=attention_mask, scale=scaling
    )
    return out.reshape(batch, heads, q, dim).transpose(1, 2).contiguous(), None


AttentionInterface.register(PACKED_GQA_ATTENTION, packed_gqa_sdpa)


def query_groups(config: PretrainedConfig) -> int:
    """Query heads per key/value head when packed attention applies (plain SDPA, GQA), else 1."""
    # transformers has no public getter of the attention in force (4.56 to 5.24); its docs read this attribute
    heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    if (
        config._attn_implementation != "sdpa"
        or not heads
        or not kv_heads
        or heads == kv_heads
        or heads % kv_heads
    ):
        return 1
    if getattr(config, "attn_logit_softcapping", None) is not None:
        return 1
    return heads // kv_heads


@contextlib.contextmanager
def attention_implementation(model: PreTrainedModel, name: str) -> Iterator[bool]:
    """Use attention implementation ``name`` inside the block, then restore the previous one.

    Switches through ``model.set_attn_implementation`` (transformers >= 4.56). Yields whether
    ``name`` is in force: a model whose attention does not go through ``AttentionInterface``
    keeps its own (transformers logs why).
    """
    previous = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield model.config._attn_implementation == name
    finally:
        model.set_attn_implementation(previous)


def causal_logsumexp(query: torch.Tensor, key: torch.Tensor, scale: float) -> torch.Tensor | None:
    """``logsumexp`` over the keys ``0..q`` of every query's scaled scores, ``(B, H, S)`` float32, from a fused kernel.

    The causal softmax's normaliser without an ``(S, S)`` score map: flash attention (CUDA, half
    precision), memory-efficient attention (CUDA, float32) or the CPU flash kernel return it beside
    their output. These are PyTorch's internal operators; ``None`` where none applies (another
    device, an unsupported head size or dtype, a PyTorch without them), and the caller computes it
    itself.

    :param query: ``(B, H, S, hd)``.
    :param key: ``(B, H, S, hd)`` (one key head per query head).
    """
    b, h, s, _ = query.shape
    ops = torch.ops.aten
    try:
        if query.device.type == "cpu":
            lse = ops._scaled_dot_product_flash_attention_for_cpu(query, key, key, 0.0, True, scale=scale)[1]
        elif query.device.type == "cuda" and query.dtype in (torch.float16, torch.bfloat16):
            lse = ops._scaled_dot_product_flash_attention(query, key, key, 0.0, True, False, scale=scale)[1]
        elif query.device.type == "cuda":
            lse = ops._scaled_dot_product_efficient_attention(
                query, key, key, None, True, 0.0, True, scale=scale
            )[1]
        else:
            return None
    except (RuntimeError, AttributeError, NotImplementedError):
        return None
    if lse.dim() != 3 or tuple(lse.shape[:2]) != (b, h) or lse.shape[2] < s:
        return None
    return lse[..., :s].float()
