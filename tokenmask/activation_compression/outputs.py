"""What :class:`~tokenmask.activation_compression.model.CompressedCausalLM` returns: :class:`CompressionOutput`
(a forward pass: states, kept positions per layer, the in-model rate, clusters) and :class:`DecodeState` (a
pre-fill's cache, advanced token by token)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tokenmask.activation_compression.decoding import CachedDecoder, StaticKVCache


@dataclass
class CompressionOutput:
    """What :meth:`CompressedCausalLM.forward` returns.

    :param hidden: ``(B, P, d)`` final-normed states of the computed positions (read them with ``origin``).
    :param origin: ``(B, P)`` original position of each row of ``hidden`` (``-1`` = padding).
    :param layer_kept: ``(B, L)`` positions each decoder layer keeps of the cached sequence (every
        valid position, or ``cache_lengths``): all of them before the first compression layer, the
        clusters of the compressible prefix plus the raw positions after it from there on. Every
        position of a layer holds the same number of KV entries, so these count KV entries.
    :param layer_total: ``(B, L)`` positions each layer would hold uncompressed.
    :param clusters: per compression layer, ``(B,)`` clusters formed.
    :param contrastive: contrastive clustering loss (mean over compression layers), float32 scalar.
    :param thresholds: per compression layer, the mean threshold in force (NaN for budget mode).
    :param assignments: per compression layer, ``(B, U)`` cluster id of each of its units (original
        positions at the first layer, the previous layer's clusters after it; ``-1``: not merged
        by this layer). :meth:`position_clusters` composes them.
    :param compression_layers: the compression layers that ran (empty: nothing compressed).
    :param readable: per decoder layer run with causal attention (all of them in ``prefill``
        mode), ``(B, K)`` bool of the entries a cache of that layer holds that are not padding
        (``None``: all); empty where the layers ran with explicit masks.
    """

    hidden: torch.Tensor
    origin: torch.Tensor
    layer_kept: torch.Tensor
    layer_total: torch.Tensor
    clusters: list[torch.Tensor] = field(default_factory=list)
    contrastive: torch.Tensor | None = None
    thresholds: list[float] = field(default_factory=list)
    assignments: list[torch.Tensor] = field(default_factory=list)
    compression_layers: list[int] = field(default_factory=list)
    readable: list[torch.Tensor | None] = field(default_factory=list)

    @property
    def first_layer(self) -> int | None:
        """The first compression layer that ran (``None``: nothing compressed)."""
        return self.compression_layers[0] if self.compression_layers else None

    @property
    def positions_kept(self) -> torch.Tensor:
        """``(B,)`` positions (KV entries / entries per position) kept, summed over **all** layers."""
        return self.layer_kept.sum(1)

    @property
    def positions_total(self) -> torch.Tensor:
        """``(B,)`` positions the uncompressed model holds, summed over all layers."""
        return self.layer_total.sum(1)

    @property
    def rate(self) -> float:
        """docs/evaluation.md's in-model rate: ``1 - Σ kept / Σ total`` over the KV entries of all layers."""
        total = float(self.layer_total.sum())
        return 1.0 - float(self.layer_kept.sum()) / total if total else 0.0

    @property
    def ratio(self) -> float:
        """Positions / positions kept in the compressed layers only (how hard those layers merge; not the rate)."""
        if self.first_layer is None:
            return 1.0
        kept = float(self.layer_kept[:, self.first_layer :].sum())
        return float(self.layer_total[:, self.first_layer :].sum()) / kept if kept else 1.0

    def position_clusters(self) -> torch.Tensor:
        """``(B, L, N)`` per decoder layer, the cluster each original position belongs to there.

        Layers before the first compression layer and positions that are never merged (padding,
        positions after the compressible prefix) read ``-1``; cluster ids count from 0 per layer
        and row, in order.
        """
        layers = self.layer_kept.shape[1]
        if not self.assignments:
            b = self.layer_kept.shape[0]
            return torch.full((b, layers, self.origin.shape[1]), -1, dtype=torch.long)
        first = self.assignments[0]
        b, n = first.shape
        out = torch.full((b, layers, n), -1, dtype=torch.long, device=first.device)
        current = first
        bounds = [*self.compression_layers, layers]
        for k, cid in enumerate(self.assignments):
            if k > 0:
                current = torch.where(
                    current >= 0, torch.gather(cid, 1, current.clamp(min=0)), torch.full_like(current, -1)
                )
            out[:, bounds[k] : bounds[k + 1]] = current[:, None]
        return out


@dataclass
class DecodeState:
    """What :meth:`CompressedCausalLM.prefill` leaves for decoding; :meth:`CompressedCausalLM.decode_step` advances it.

    :param cache: the :class:`~.decoding.StaticKVCache` holding each layer's keys and values: every
        position below the first compression layer, then per row ``[clusters, last context token]``
        (the merged states are what is stored), each row right-padded to the batch's longest, with
        room for the new tokens.
    :param next_position: ``(B,)`` position id of the next token fed (positions continue after the
        full context, as for the uncompressed model).
    :param logits: ``(B, V)`` float32 logits of the next token.
    :param output: the pre-fill's :class:`CompressionOutput` (``layer_kept``, ``rate``, clusters).
    :param decoder: the :class:`~.decoding.CachedDecoder` reading ``cache`` (built by the first
        :meth:`CompressedCausalLM.decode_step`).
    """

    cache: StaticKVCache
    next_position: torch.Tensor
    logits: torch.Tensor
    output: CompressionOutput
    decoder: CachedDecoder | None = None

    @property
    def layer_kept(self) -> torch.Tensor:
        """``(B, L)`` KV entries each layer keeps per row after the pre-fill (:attr:`CompressionOutput.layer_kept`)."""
        return self.output.layer_kept

    @property
    def readable(self) -> list[torch.Tensor]:
        """Per layer, ``(B, K)`` bool of the filled cache entries a new token reads (``False``: padding)."""
        return [self.cache.readable(layer) for layer in range(len(self.cache.lengths))]

    def cache_lengths(self) -> list[int]:
        """Entries each layer's cache holds (padding included; the same for every row)."""
        return list(self.cache.lengths)

    def kv_bytes(self) -> int:
        """Bytes of the filled key and value entries, summed over the layers (reserved slots excluded)."""
        return self.cache.filled_bytes()
