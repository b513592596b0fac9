"""Layer-by-layer access to a Hugging Face causal LM, so compression can run between its decoder layers.

A :class:`Backbone` exposes the pieces of a causal LM that the compression wrapper drives itself:
the input embeddings, one decoder layer at a time (with an explicit 4-D attention bias, so any
visibility pattern can be expressed), the final norm, the LM head, and the head-averaged attention
probabilities of a layer near the diagonal (the importance signal of the compression layers).

Two families are supported: the Llama family (Llama, SmolLM2, Mistral, Qwen2: rotary positions,
pre-norm ``input_layernorm``, ``q_proj``/``k_proj``) and GPT-2 (learned absolute positions added to
the embeddings, fused ``c_attn``). :func:`backbone_for` picks the right one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

LLAMA_FAMILY: tuple[str, ...] = ("llama", "mistral", "qwen2")
GPT2_FAMILY: tuple[str, ...] = ("gpt2",)


class UnsupportedModelError(ValueError):
    """Raised for a causal LM whose architecture the compression layers cannot drive."""


class Backbone(ABC):
    """Layer-wise view of a causal LM.

    :param model: the Hugging Face causal LM (its weights are used as they are, never copied).
    """

    def __init__(self, model: PreTrainedModel) -> None:
        self.model: Any = model
        self.config = model.config

    @property
    def num_layers(self) -> int:
        """Number of decoder layers."""
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        """Width of the hidden states."""
        return int(self.config.hidden_size)

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the model's weights (hidden states and attention biases use it)."""
        return next(self.model.parameters()).dtype

    @property
    @abstractmethod
    def layers(self) -> nn.ModuleList:
        """The decoder layers, in order."""

    @property
    @abstractmethod
    def kv_values_per_position(self) -> int:
        """Numbers stored in the KV cache per position and layer (keys + values)."""

    @abstractmethod
    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Input hidden states ``(B, N, d)`` of token ids ``(B, N)`` at integer positions ``(B, N)``."""

    @abstractmethod
    def position_context(self, hidden: torch.Tensor, position_ids: torch.Tensor) -> Any:
        """Whatever the layers need to know about positions (rotary cos/sin), for ``(B, S)`` float positions."""

    @abstractmethod
    def run_layer(
        self, index: int, hidden: torch.Tensor, attention_bias: torch.Tensor, positions: Any
    ) -> torch.Tensor:
        """Run decoder layer ``index`` on ``(B, S, d)`` with an additive bias ``(B, 1, S, S)``."""

    @abstractmethod
    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        """The norm applied before the LM head."""

    @abstractmethod
    def queries_keys(
        self, index: int, hidden: torch.Tensor, positions: Any
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Per-head queries and keys ``(B, H, S, hd)`` of layer ``index`` (rotated; keys repeated per group) and the score scale."""

    def local_attention(
        self, index: int, hidden: torch.Tensor, allowed: torch.Tensor, positions: Any, band: int
    ) -> torch.Tensor:
        """Head-averaged attention that layer ``index`` pays from each query to the ``band`` keys just before it.

        ``out[b, d, j]`` = probability that query ``j + d`` gives key ``j`` (0 past the end), float32
        ``(B, band, S)``. Heads are processed one at a time so memory stays at one ``(B, S, S)`` map.

        :param allowed: ``(B, S, S)`` bool visibility (query, key).
        """
        q, keys, scale = self.queries_keys(index, hidden, positions)
        b, heads, s, _ = q.shape
        out = torch.zeros(b, band, s, dtype=torch.float32, device=hidden.device)
        blocked = torch.finfo(torch.float32).min
        for h in range(heads):
            scores = torch.matmul(q[:, h].float(), keys[:, h].float().transpose(1, 2)) * scale
            probs = torch.softmax(scores.masked_fill(~allowed, blocked), dim=-1)
            for d in range(min(band, s)):
                out[:, d, : s - d] += torch.diagonal(probs, offset=-d, dim1=1, dim2=2)
        return out / heads

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM-head logits (float32) of final-normed hidden states."""
        return self.model.get_output_embeddings()(hidden).float()

    def attention_bias(self, allowed: torch.Tensor) -> torch.Tensor:
        """Additive attention bias ``(B, 1, S, S)``: 0 where ``allowed`` (bool ``(B, S, S)``), else the dtype's minimum."""
        bias = torch.zeros(allowed.shape, dtype=self.dtype, device=allowed.device)
        bias.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        return bias[:, None]


class LlamaBackbone(Backbone):
    """Llama-family decoder (SmolLM2 included): ``model.model.{embed_tokens, layers, norm, rotary_emb}``."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__(model)
        self.decoder: Any = model.model

    @property
    def layers(self) -> nn.ModuleList:
        return self.decoder.layers  # type: ignore[no-any-return]

    @property
    def kv_values_per_position(self) -> int:
        attn: Any = self.layers[0].self_attn
        return 2 * int(attn.k_proj.out_features)

    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self.decoder.embed_tokens(input_ids)  # type: ignore[no-any-return]

    def position_context(self, hidden: torch.Tensor, position_ids: torch.Tensor) -> Any:
        return self.decoder.rotary_emb(hidden, position_ids=position_ids.float())

    def run_layer(
        self, index: int, hidden: torch.Tensor, attention_bias: torch.Tensor, positions: Any
    ) -> torch.Tensor:
        layer: Any = self.layers[index]
        out = layer(hidden, attention_mask=attention_bias, position_embeddings=positions)
        return out[0] if isinstance(out, tuple) else out

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder.norm(hidden)  # type: ignore[no-any-return]

    def queries_keys(
        self, index: int, hidden: torch.Tensor, positions: Any
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        # imported here: a GPT-2 backbone never needs the Llama modeling module (seconds to import cold)
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        layer: Any = self.layers[index]
        attn = layer.self_attn
        x = layer.input_layernorm(hidden)
        b, s, _ = x.shape
        q = attn.q_proj(x).view(b, s, -1, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(b, s, -1, attn.head_dim).transpose(1, 2)
        cos, sin = positions
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        return q, k, float(attn.scaling)


class GPT2Backbone(Backbone):
    """GPT-2: ``model.transformer.{wte, wpe, drop, h, ln_f}``; positions enter only at the embeddings."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__(model)
        self.decoder: Any = model.transformer

    @property
    def layers(self) -> nn.ModuleList:
        return self.decoder.h  # type: ignore[no-any-return]

    @property
    def kv_values_per_position(self) -> int:
        return 2 * self.hidden_size

    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.decoder.wte(input_ids) + self.decoder.wpe(position_ids)
        return self.decoder.drop(hidden)  # type: ignore[no-any-return]

    def position_context(self, hidden: torch.Tensor, position_ids: torch.Tensor) -> Any:
        return None  # absolute positions were added to the embeddings

    def run_layer(
        self, index: int, hidden: torch.Tensor, attention_bias: torch.Tensor, positions: Any
    ) -> torch.Tensor:
        layer: Any = self.layers[index]
        out = layer(hidden, attention_mask=attention_bias)
        return out[0] if isinstance(out, tuple) else out

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder.ln_f(hidden)  # type: ignore[no-any-return]

    def queries_keys(
        self, index: int, hidden: torch.Tensor, positions: Any
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        layer: Any = self.layers[index]
        attn = layer.attn
        x = layer.ln_1(hidden)
        b, s, _ = x.shape
        q, k, _ = attn.c_attn(x).split(attn.split_size, dim=2)
        q = q.view(b, s, -1, attn.head_dim).transpose(1, 2)
        k = k.view(b, s, -1, attn.head_dim).transpose(1, 2)
        return q, k, _gpt2_scaling(attn)


def _gpt2_scaling(attn: Any) -> float:
    # recent transformers store the softmax scale as `scaling`; 5.2 (the kvpress extra's line) computes it inline
    if hasattr(attn, "scaling"):
        return float(attn.scaling)
    scaling = float(attn.head_dim) ** -0.5 if attn.scale_attn_weights else 1.0
    return scaling / float(attn.layer_idx + 1) if attn.scale_attn_by_inverse_layer_idx else scaling


def backbone_for(model: PreTrainedModel) -> Backbone:
    """The :class:`Backbone` of a causal LM.

    :raises UnsupportedModelError: for a family other than Llama (incl. SmolLM2, Mistral, Qwen2) or GPT-2.
    """
    model_type = str(getattr(model.config, "model_type", ""))
    if model_type in LLAMA_FAMILY:
        return LlamaBackbone(model)
    if model_type in GPT2_FAMILY:
        return GPT2Backbone(model)
    raise UnsupportedModelError(
        f"Activation compression supports the Llama family {LLAMA_FAMILY} and GPT-2, not model_type {model_type!r}. "
        "Fix: use one of those models (the embedded default SmolLM2 is a Llama)."
    )
