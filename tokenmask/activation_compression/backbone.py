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

import inspect
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from tokenmask.reconstructors.attention import causal_logsumexp

LLAMA_FAMILY: tuple[str, ...] = ("llama", "mistral", "qwen2")
GPT2_FAMILY: tuple[str, ...] = ("gpt2",)
# attention implementations that apply the causal mask themselves when given none (SDPA's is_causal)
IMPLICIT_CAUSAL: tuple[str, ...] = ("sdpa", "flash_attention_2", "flash_attention_3")
QUERY_CHUNK_ELEMENTS = 1 << 23  # query chunk of the importance scores: about 32 MiB of float32 per tensor
MAX_TIED_KEYS = 64  # the fused importance path adds up to this many later keys of the same time per query


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
        self,
        index: int,
        hidden: torch.Tensor,
        attention_bias: torch.Tensor | None,
        positions: Any,
        cache: Any = None,
    ) -> torch.Tensor:
        """Run decoder layer ``index`` on ``(B, S, d)``.

        :param attention_bias: an additive bias ``(B, 1, S, K)`` or a bool mask (``True`` = read), or
            ``None``: plain causal attention (:meth:`causal_bias` gives what to pass for that).
        :param cache: a Hugging Face cache the layer appends its keys and values to (``None``: none).
        """

    @abstractmethod
    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        """The norm applied before the LM head."""

    @abstractmethod
    def queries_keys(
        self, index: int, hidden: torch.Tensor, positions: Any
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Per-head queries and keys ``(B, H, S, hd)`` of layer ``index`` (rotated; keys repeated per group) and the score scale."""

    def local_attention(
        self,
        index: int,
        hidden: torch.Tensor,
        avail: torch.Tensor,
        valid: torch.Tensor,
        positions: Any,
        band: int,
        chunk_elements: int = QUERY_CHUNK_ELEMENTS,
    ) -> torch.Tensor:
        """Head-averaged attention that layer ``index`` pays from each query to the ``band`` keys just before it.

        ``out[b, d, j]`` = probability that query ``j + d`` gives key ``j`` (0 past the end), float32
        ``(B, band, S)``. Query ``q`` reads key ``k`` when ``avail[k] <= avail[q]`` and both are
        valid (and always itself). The queries are taken a chunk at a time (``B x heads x chunk x S``
        at most ``chunk_elements`` scores), so no ``(B, S, S)`` map is ever held.

        :param avail: ``(B, S)`` time from which each token is readable (see :mod:`.layout`).
        :param valid: ``(B, S)`` bool, ``False`` for padding.
        """
        q, keys, scale = self.queries_keys(index, hidden, positions)
        b, heads, s, _ = q.shape
        ties = causal_ties(avail, valid)
        if ties is not None:
            lse = causal_logsumexp(q, keys, scale)
            if lse is not None:
                qf, kf = q.float(), keys.float()
                lse = with_tied_keys(qf, kf, scale, lse, avail, valid, ties)
                return band_attention(qf, kf, scale, lse, valid, band)
        lags = torch.arange(min(band, s), device=hidden.device)
        by_query = torch.zeros(b, s, len(lags), dtype=torch.float32, device=hidden.device)
        blocked = torch.finfo(torch.float32).min
        keys_t = keys.float().transpose(2, 3)
        # at most chunk_elements scores, and never more than one head's full (B, S, S) map
        step = max(1, min(chunk_elements // max(1, b * heads * s), s // heads))
        column = torch.arange(s, device=hidden.device)
        for start in range(0, s, step):
            stop = min(start + step, s)
            rows = column[start:stop]
            allowed = (
                (avail[:, None, :] <= avail[:, start:stop, None])
                & valid[:, None, :]
                & valid[:, start:stop, None]
            )
            allowed |= rows[:, None] == column[None, :]
            scores = torch.matmul(q[:, :, start:stop].float(), keys_t) * scale
            probs = torch.softmax(scores.masked_fill_(~allowed[:, None], blocked), dim=-1).sum(1)
            # by_query[:, q, d]: what query q gives key q - d
            key = (rows[:, None] - lags[None, :]).clamp(min=0)
            by_query[:, start:stop] = torch.gather(probs, 2, key[None].expand(b, -1, -1))
        out = torch.zeros(b, band, s, dtype=torch.float32, device=hidden.device)
        for d in range(len(lags)):
            out[:, d, : s - d] = by_query[:, d:, d]
        return out / heads

    def causal_bias(self, batch: int, length: int, device: torch.device) -> torch.Tensor | None:
        """What :meth:`run_layer` needs for plain causal attention over ``length`` tokens.

        ``None`` where the attention implementation applies the causal mask itself (SDPA, flash
        attention: no ``(S, S)`` tensor at all), else an explicit additive bias ``(B, 1, S, S)``.
        """
        if str(getattr(self.config, "_attn_implementation", "eager")) in IMPLICIT_CAUSAL:
            return None
        allowed = torch.ones(length, length, dtype=torch.bool, device=device).tril()
        return self.attention_bias(allowed[None].expand(batch, -1, -1))

    def decode_bias(self, readable: torch.Tensor | None) -> torch.Tensor | None:
        """The mask of one new token reading a cache whose readable entries are ``readable`` ``(B, K)`` (``None``: all)."""
        if readable is None:
            return None
        if str(getattr(self.config, "_attn_implementation", "eager")) in IMPLICIT_CAUSAL:
            return readable[:, None, None, :]
        return self.attention_bias(readable[:, None, :])

    def _layer_call(self, layer: nn.Module, hidden: torch.Tensor, cache: Any, **kwargs: Any) -> torch.Tensor:
        if cache is not None:
            kwargs[cache_argument(layer)] = cache
        out = layer(hidden, **kwargs)
        return out[0] if isinstance(out, tuple) else out

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
        self,
        index: int,
        hidden: torch.Tensor,
        attention_bias: torch.Tensor | None,
        positions: Any,
        cache: Any = None,
    ) -> torch.Tensor:
        return self._layer_call(
            self.layers[index], hidden, cache, attention_mask=attention_bias, position_embeddings=positions
        )

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
        self,
        index: int,
        hidden: torch.Tensor,
        attention_bias: torch.Tensor | None,
        positions: Any,
        cache: Any = None,
    ) -> torch.Tensor:
        return self._layer_call(self.layers[index], hidden, cache, attention_mask=attention_bias)

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


def cache_argument(layer: nn.Module) -> str:
    """The keyword a decoder layer takes its cache by: ``cache`` (transformers 5.24 on) or ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(layer.forward).parameters else "past_key_values"


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


def causal_ties(avail: torch.Tensor, valid: torch.Tensor, limit: int = MAX_TIED_KEYS) -> int | None:
    """How far past itself a query reads under ``avail[k] <= avail[q]``, when that is causal attention plus ties.

    Each row's valid tokens must form a prefix with non-decreasing ``avail``: a query then reads
    every key at and before it, plus the later keys of the same ``avail`` (clusters of one level
    that close at the same time, as the last ones of a pre-fill do). Returns the largest number of
    such later keys, ``0`` for plain causal attention, or ``None`` (another layout, or more than
    ``limit`` tied keys): the caller then scores every pair.
    """
    s = avail.shape[1]
    if not bool((valid[:, 1:] <= valid[:, :-1]).all()):
        return None
    if not bool(((avail[:, 1:] >= avail[:, :-1]) | ~valid[:, 1:]).all()):
        return None
    ties = 0
    while ties + 1 < s and bool(
        ((avail[:, ties + 1 :] == avail[:, : s - ties - 1]) & valid[:, ties + 1 :]).any()
    ):
        ties += 1
        if ties > limit:
            return None
    return ties


def _shifted_scores(query: torch.Tensor, key: torch.Tensor, scale: float, shift: int) -> torch.Tensor:
    """``(B, H, S - |shift|)`` scaled scores of query ``q`` on key ``q + shift``, element ``i`` for the pair's smaller index.

    ``shift > 0``: a later key, element ``i`` is query ``i``; ``shift < 0``: an earlier key, element
    ``i`` is key ``i`` (query ``i - shift``).
    """
    s = query.shape[2]
    if shift >= 0:
        return (query[:, :, : s - shift] * key[:, :, shift:]).sum(-1) * scale
    return (query[:, :, -shift:] * key[:, :, : s + shift]).sum(-1) * scale


def with_tied_keys(
    query: torch.Tensor,
    key: torch.Tensor,
    scale: float,
    lse: torch.Tensor,
    avail: torch.Tensor,
    valid: torch.Tensor,
    ties: int,
) -> torch.Tensor:
    """The causal ``lse`` ``(B, H, S)`` with each query's later keys of the same ``avail`` added (see :func:`causal_ties`).

    :param query: ``(B, H, S, hd)`` float32; ``key`` likewise.
    """
    s = query.shape[2]
    for ahead in range(1, ties + 1):
        score = _shifted_scores(query, key, scale, ahead)
        reads = (avail[:, ahead:] == avail[:, : s - ahead]) & valid[:, ahead:] & valid[:, : s - ahead]
        head = lse[:, :, : s - ahead]
        lse = torch.cat(
            [torch.where(reads[:, None], torch.logaddexp(head, score), head), lse[:, :, s - ahead :]], 2
        )
    return lse


def band_attention(
    query: torch.Tensor, key: torch.Tensor, scale: float, lse: torch.Tensor, valid: torch.Tensor, band: int
) -> torch.Tensor:
    """:meth:`Backbone.local_attention` of a causal row (:func:`causal_ties`) from its softmax normaliser: ``(B, band, S)`` float32.

    Only the ``band`` scores of each query that are read are computed (``O(S x band)``, not
    ``O(S^2)``). A padding query attends to itself alone, as in the chunked path.

    :param query: ``(B, H, S, hd)`` float32; ``key`` likewise.
    :param lse: ``(B, H, S)`` float32, from :func:`~tokenmask.reconstructors.attention.causal_logsumexp`.
    """
    b, heads, s, _ = query.shape
    out = torch.zeros(b, band, s, dtype=torch.float32, device=query.device)
    for d in range(min(band, s)):
        probs = torch.exp(_shifted_scores(query, key, scale, -d) - lse[:, :, d:]).sum(1) / heads
        if d == 0:
            out[:, 0] = torch.where(valid, probs, torch.ones_like(probs))
        else:
            read = valid[:, d:] & valid[:, : s - d]
            out[:, d, : s - d] = torch.where(read, probs, torch.zeros_like(probs))
    return out
