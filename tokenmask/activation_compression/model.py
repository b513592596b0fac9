"""Compression layers inside a causal LM: cluster similar adjacent hidden states, run on fewer positions.

:class:`CompressedCausalLM` wraps a :class:`~tokenmask.reconstructors.Reconstructor`'s causal LM
(Llama family incl. SmolLM2, or GPT-2) and, at each layer of ``compression_layers``:

1. scores each unit's importance with the attention that layer pays it (attention-weighted; the
   BOS attention sink is never merged);
2. clusters runs of adjacent units whose cosine similarity exceeds the threshold (fixed, or a
   causal per-sequence quantile when ``adaptive_threshold`` is on);
3. merges each cluster into one state, importance-weighted (norm-preserving, plus a learned
   correction of merged states);
4. runs the remaining layers on the clusters: a later compression layer clusters these clusters.

Causality: a position reads only *closed* clusters (all of whose units lie before it) plus the raw
states of its own open cluster, and a cluster token reads only clusters; see
:mod:`tokenmask.activation_compression.layout`. Each original position keeps its own query stream
through the compressed layers and is restored before the LM head with a learned gated residual of
its own state at the first compression layer (``use_residuals``).

Two modes:

* ``full``: every position gets its prediction (training, perplexity). The compressed layers hold
  the clusters plus one query stream per position.
* ``prefill``: only the positions after the compressible prefix are computed (the continuation
  of ``tokenmask evaluate``); the compressed layers run on the clusters alone, which is what a
  serving system would keep. Both modes give the same predictions for those positions.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F  # noqa: N812
from safetensors.torch import load_file, save_file
from torch import nn

from tokenmask.activation_compression.backbone import Backbone, backbone_for
from tokenmask.activation_compression.clustering import (
    NO_TIME,
    adjacent_similarity,
    budget_starts,
    cluster_index,
    cluster_last_unit,
    cluster_starts,
    contrastive_loss,
    merge_eligible,
    merge_units,
    received_attention,
    running_quantile,
    steered_quantile,
)
from tokenmask.activation_compression.config import ActivationConfigError, CompressionConfig
from tokenmask.activation_compression.decoding import DEFAULT_RESERVE, CachedDecoder, StaticKVCache
from tokenmask.activation_compression.layout import TokenLayout
from tokenmask.activation_compression.modules import CompressionLayer, RestoreGate
from tokenmask.activation_compression.outputs import CompressionOutput, DecodeState
from tokenmask.activation_compression.plan import UNIFORM_KEEP, cluster_targets, positions_per_layer
from tokenmask.io import atomic_write_json, read_folder_meta, replace_dir, reraise_as, temporary_dir_beside
from tokenmask.reconstructors import CorruptCheckpointError, Reconstructor

Mode = Literal["full", "prefill"]
META_FILE = "activation_compression.json"
WEIGHTS_FILE = "compression_layers.safetensors"
BASE_DIR = "base"
CHECKPOINT_FORMAT = 1
MAX_FIXED_THRESHOLD = 1.01  # a fixed cosine threshold above 1 merges nothing


class CompressedCausalLM(nn.Module):
    """A causal LM with compression layers (see the module docstring).

    The base LM is not a sub-module: ``state_dict()`` and ``parameters()`` hold only the
    compression layers; :attr:`base_parameters` lists the base LM's.

    :param reconstructor: the base LM (``Reconstructor.load(...)`` or ``from_config``).
    :param config: the compression settings.
    """

    threshold_offset: torch.Tensor

    def __init__(self, reconstructor: Reconstructor, config: CompressionConfig | None = None) -> None:
        super().__init__()
        self.reconstructor = reconstructor
        self.backbone: Backbone = backbone_for(reconstructor.model)
        self.config = (config or CompressionConfig()).resolved(self.backbone.num_layers)
        d = self.backbone.hidden_size
        self.layers = nn.ModuleDict(
            {
                str(i): CompressionLayer(d, self.config.similarity_rank, self.config.adapter_rank)
                for i in self.layer_indices
            }
        )
        self.restore = RestoreGate(d, self.config.adapter_rank) if self.config.use_residuals else None
        # raised by the quality parachute: fewer merges while quality suffers
        self.register_buffer("threshold_offset", torch.zeros((), dtype=torch.float32))
        self.to(device=reconstructor.device, dtype=self.backbone.dtype)

    # ------------------------------------------------------------------ properties
    @property
    def layer_indices(self) -> list[int]:
        """The decoder layers whose input is compressed."""
        return self.config.layers

    @property
    def base_model(self) -> Any:
        """The wrapped Hugging Face causal LM."""
        return self.reconstructor.model

    @property
    def base_parameters(self) -> list[nn.Parameter]:
        """Parameters of the base LM."""
        return list(self.base_model.parameters())

    @property
    def device(self) -> torch.device:
        """Device of the base LM."""
        return self.reconstructor.device

    def effective_threshold(self, similarity_threshold: float | None = None) -> float:
        """The base threshold in force: ``similarity_threshold`` if given, else the configured one plus the
        quality parachute's offset (clamped to the valid range). A layer plan's thresholds: :meth:`effective_thresholds`."""
        if similarity_threshold is None:
            value = self.config.similarity_threshold + float(self.threshold_offset)
        else:
            value = float(similarity_threshold)
        return self._clamp_threshold(value)

    def effective_thresholds(
        self, similarity_threshold: float | Sequence[float] | None = None
    ) -> list[float]:
        """The threshold in force at each compression layer.

        :param similarity_threshold: ``None``: the layer plan (``layer_thresholds``, else
            ``similarity_threshold`` everywhere) plus the quality parachute's offset; a number: that
            threshold at every layer (sweeps); a sequence: one threshold per compression layer.
        :raises ValueError: for a sequence of the wrong length.
        """
        count = len(self.layer_indices)
        if similarity_threshold is None:
            offset = float(self.threshold_offset)
            return [self._clamp_threshold(t + offset) for t in self.config.thresholds]
        if isinstance(similarity_threshold, (int, float)):
            return [self._clamp_threshold(float(similarity_threshold))] * count
        values = [float(t) for t in similarity_threshold]
        if len(values) != count:
            raise ValueError(
                f"{len(values)} thresholds for {count} compression layers {self.layer_indices}. Fix: give one per layer."
            )
        return [self._clamp_threshold(t) for t in values]

    def _clamp_threshold(self, value: float) -> float:
        return (
            min(max(value, 0.0), 1.0) if self.config.adaptive_threshold else min(value, MAX_FIXED_THRESHOLD)
        )

    @property
    def plan_keep(self) -> list[float]:
        """Per compression layer, the fraction of its units the plan keeps (the shape budget mode follows).

        The adaptive thresholds themselves; with fixed cosine thresholds the keep fraction is not
        known in advance, so every layer keeps the same share.
        """
        if not self.config.adaptive_threshold:
            return [UNIFORM_KEEP] * len(self.layer_indices)
        return self.config.thresholds

    def plan_rate(self) -> float:
        """Nominal whole-model rate of the configured plan (:meth:`CompressionConfig.plan_rate`)."""
        return self.config.plan_rate(self.backbone.num_layers)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        compress_lengths: torch.Tensor | None = None,
        mode: Mode = "full",
        similarity_threshold: float | Sequence[float] | None = None,
        target_rate: float | None = None,
        compress: bool = True,
        lower_hidden: torch.Tensor | None = None,
        cache_lengths: torch.Tensor | None = None,
        cache: Any = None,
    ) -> CompressionOutput:
        """Run the LM with compression.

        :param input_ids: ``(B, N)`` token ids (start each row with BOS; right padding).
        :param attention_mask: ``(B, N)`` 1 for real tokens (default: all).
        :param compress_lengths: ``(B,)`` leading positions that may be merged (default: all real
            tokens). The rest are never merged (the continuation to score).
        :param mode: ``full`` (every position computed) or ``prefill`` (only positions after the
            compressible prefix; the compressed layers run on the clusters alone).
        :param similarity_threshold: override of the layer plan's thresholds: one number for every
            compression layer (sweeps) or one per layer (:meth:`effective_thresholds`).
        :param target_rate: ``prefill`` only: merge each sequence's most similar pairs until the
            whole-model rate (docs/evaluation.md: KV entries kept over all layers, counted over
            ``cache_lengths``) is this, following the plan's shape (:func:`~tokenmask.activation_compression.plan.cluster_targets`;
            not causal inside the prefix, which is never scored in this mode).
        :param compress: ``False`` runs the unmodified layers (same code path, no merges).
        :param lower_hidden: ``(B, N, d)`` states entering the first compression layer, from
            :meth:`lower_states` of the same inputs; the layers before it are then skipped (they
            do not depend on compression, so a frozen base's states can be cached).
        :param cache_lengths: ``(B,)`` leading positions the counts of :class:`CompressionOutput`
            (and ``target_rate``) cover, at least ``compress_lengths`` (default: every real token).
            The evaluation caches ``BOS + context`` while scoring tokens after it.
        :param cache: ``prefill`` only: a Hugging Face cache (``DynamicCache``) each decoder layer
            appends the keys and values it computed to (:meth:`prefill` uses it); the output's
            ``readable`` then says which entries are padding.
        """
        if mode not in ("full", "prefill"):
            raise ValueError(f"mode must be 'full' or 'prefill', got {mode!r}.")
        if cache is not None and (mode != "prefill" or lower_hidden is not None):
            raise ValueError(
                "A cache is filled only by a 'prefill' pass over every layer. Fix: pass mode='prefill' and no lower_hidden."
            )
        if target_rate is not None and mode != "prefill":
            raise ValueError("target_rate reads the whole prefix, so it is only allowed in 'prefill' mode.")
        device = self.device
        input_ids = input_ids.to(device)
        b, n = input_ids.shape
        valid = (
            torch.ones_like(input_ids, dtype=torch.bool)
            if attention_mask is None
            else attention_mask.to(device).bool()
        )
        lengths = valid.sum(1)
        if compress_lengths is None:
            compress_lengths = lengths
        compress_lengths = torch.minimum(compress_lengths.to(device).long(), lengths)
        cache_lengths = (
            lengths
            if cache_lengths is None
            else torch.maximum(torch.minimum(cache_lengths.to(device).long(), lengths), compress_lengths)
        )
        layout = TokenLayout.positions(valid, compress_lengths, self.config.protected_tokens)
        blocks: list[tuple[int, int]] = [(0, n)]  # (start, width) of each level's columns
        position_ids = torch.arange(n, device=device).expand(b, n)
        base_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.base_parameters)
        first = self.layer_indices[0]
        if lower_hidden is not None:
            if tuple(lower_hidden.shape[:2]) != (b, n):
                raise ValueError(
                    f"lower_hidden has shape {tuple(lower_hidden.shape)}, expected ({b}, {n}, d)."
                )
            hidden = lower_hidden.to(device)
        else:
            with torch.set_grad_enabled(base_grad):
                hidden = self.backbone.embed(input_ids, position_ids)
        levels = [i for i in self.layer_indices if compress]
        level_thresholds = self.effective_thresholds(similarity_threshold)
        targets: list[torch.Tensor | None] = [None] * len(levels)
        if target_rate is not None and levels:
            targets = list(
                cluster_targets(
                    self.backbone.num_layers,
                    levels,
                    self.plan_keep,
                    target_rate,
                    cache_lengths,
                    compress_lengths,
                    self.config.protected_tokens,
                )
            )
        clusters: list[torch.Tensor] = []
        assignments: list[torch.Tensor] = []
        thresholds: list[float] = []
        losses: list[torch.Tensor] = []
        readable: list[torch.Tensor | None] = []
        own: torch.Tensor | None = None
        index = first if lower_hidden is not None else 0
        while index < self.backbone.num_layers:
            if index in levels:
                level = levels.index(index) + 1
                hidden, layout, blocks, count, cid, threshold, loss = self._compress(
                    index,
                    level,
                    hidden,
                    layout,
                    blocks,
                    compress_lengths,
                    mode,
                    level_thresholds[level - 1],
                    targets[level - 1],
                )
                clusters.append(count)
                assignments.append(cid)
                thresholds.append(threshold)
                losses.append(loss)
                if own is None:
                    own = hidden[:, : blocks[0][1]]
            stop = min([i for i in levels if i > index] + [self.backbone.num_layers])
            grad = torch.is_grad_enabled() and (base_grad or own is not None)
            if mode == "prefill" or own is None:
                # positions alone, or prefill's one level of clusters: plain causal attention
                hidden = self._run_causal(index, stop, hidden, layout, grad, cache, readable)
            else:
                bias, positions = self._attention_inputs(layout, hidden)
                with torch.set_grad_enabled(grad):
                    for layer in range(index, stop):
                        hidden = self.backbone.run_layer(layer, hidden, bias, positions)
            index = stop
        width = blocks[0][1]
        final = hidden[:, :width]
        if own is not None and self.restore is not None:
            final = self.restore(final, own)
        final = self.backbone.final_norm(final)
        origin = layout.origin[:, :width]
        kept, total = positions_per_layer(
            self.backbone.num_layers, levels, clusters, cache_lengths, compress_lengths
        )
        contrastive = torch.stack(losses).mean() if losses else None
        return CompressionOutput(
            final, origin, kept, total, clusters, contrastive, thresholds, assignments, levels, readable
        )

    def lower_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """States entering the first compression layer, ``(B, N, d)``, computed without autograd.

        Pass them back as ``forward(..., lower_hidden=...)`` to skip the uncompressed layers.
        """
        device = self.device
        input_ids = input_ids.to(device)
        b, n = input_ids.shape
        valid = (
            torch.ones_like(input_ids, dtype=torch.bool)
            if attention_mask is None
            else attention_mask.to(device).bool()
        )
        layout = TokenLayout.positions(valid, valid.sum(1), self.config.protected_tokens)
        with torch.no_grad():
            hidden = self.backbone.embed(input_ids, torch.arange(n, device=device).expand(b, n))
            return self._run_causal(0, self.layer_indices[0], hidden, layout, False, None, [])

    def _run_causal(
        self,
        start: int,
        stop: int,
        hidden: torch.Tensor,
        layout: TokenLayout,
        grad: bool,
        cache: Any,
        readable: list[torch.Tensor | None],
    ) -> torch.Tensor:
        """Run decoder layers ``[start, stop)`` where the layout is plain causal in :meth:`TokenLayout.causal_order`.

        The columns are put in that order (``[clusters, positions, padding]`` per row), the layers
        run with causal attention (no ``(S, S)`` mask under SDPA), and the columns are put back.
        A ``cache`` stores the keys and values in that order; ``readable`` gets, per layer, the
        ``(B, S)`` bool of its valid entries (``None``: every entry).
        """
        if start >= stop:
            return hidden
        order, keep = layout.causal_order()
        b, s, d = hidden.shape
        packed = torch.gather(hidden, 1, order[..., None].expand(-1, -1, d))
        positions = self.backbone.position_context(packed, torch.gather(layout.position, 1, order))
        bias = self.backbone.causal_bias(b, s, hidden.device)
        mask = None if bool(keep.all()) else keep
        with torch.set_grad_enabled(grad):
            for layer in range(start, stop):
                packed = self.backbone.run_layer(layer, packed, bias, positions, cache)
                readable.append(mask)
        inverse = torch.argsort(order, dim=1)
        return torch.gather(packed, 1, inverse[..., None].expand(-1, -1, d))

    def _attention_inputs(self, layout: TokenLayout, hidden: torch.Tensor) -> tuple[torch.Tensor, object]:
        bias = self.backbone.attention_bias(layout.visibility())
        return bias, self.backbone.position_context(hidden, layout.position)

    def _compress(
        self,
        index: int,
        level: int,
        hidden: torch.Tensor,
        layout: TokenLayout,
        blocks: list[tuple[int, int]],
        compress_lengths: torch.Tensor,
        mode: Mode,
        threshold_value: float,
        target_count: torch.Tensor | None,
    ) -> tuple[
        torch.Tensor, TokenLayout, list[tuple[int, int]], torch.Tensor, torch.Tensor, float, torch.Tensor
    ]:
        """Cluster the units of the previous level before decoder layer ``index``; append the clusters.

        :param threshold_value: this layer's threshold (quantile or cosine).
        :param target_count: budget mode: ``(B,)`` clusters to form (the most similar pairs merge).
        :return: ``(hidden, layout, blocks, count, cid, mean threshold, contrastive loss)``.
        """
        layer = self.layers[str(index)]
        assert isinstance(layer, CompressionLayer)
        start, width = blocks[level - 1]
        units = hidden[:, start : start + width]
        meta = layout.columns(start, start + width)
        member = meta.member & meta.valid
        # importance: the attention this layer pays each unit on the short (pre-fill) sequence
        with torch.no_grad():
            local = self.backbone.local_attention(
                index,
                units.detach(),
                meta.avail,
                meta.valid,
                self.backbone.position_context(units, meta.position),
                self.config.max_cluster_size,
            )
            visible_keys = visible_key_counts(meta.avail, meta.valid)
        features = layer.similarity_features(units)
        similarity = adjacent_similarity(features)
        sim = similarity.detach()
        eligible = merge_eligible(member, meta.protected)
        if target_count is not None:
            merges = (member.sum(1) - target_count).clamp(min=0)
            starts = budget_starts(sim, eligible, merges, self.config.max_cluster_size)
            threshold = torch.full_like(sim, float("nan"))
        elif self.config.adaptive_threshold:
            quantile = steered_quantile if self.config.steered_threshold else running_quantile
            threshold = quantile(sim, eligible, threshold_value)
            starts = cluster_starts(sim, threshold, eligible, self.config.max_cluster_size)
        else:
            threshold = torch.full_like(sim, threshold_value)
            starts = cluster_starts(sim, threshold, eligible, self.config.max_cluster_size)
        cid, count = cluster_index(starts, member)
        m = max(int(count.max()), 1)
        received = received_attention(local, visible_keys, cid, m)
        weights = layer.merge_weights(units, received)
        merged, _ = merge_units(units, weights, cid, m)
        merged_position, _ = merge_units(meta.position, weights.to(meta.position.dtype), cid, m)
        b = units.shape[0]
        slot = torch.where(cid >= 0, cid, torch.full_like(cid, m))
        sizes = torch.zeros(b, m + 1, device=units.device).scatter_add(1, slot, member.float())[:, :m]
        # norm-preserving merge: a mean of similar vectors is shorter than they are
        unit_norm = units.float().norm(dim=-1)
        mean_norm, _ = merge_units(unit_norm, weights.float(), cid, m)
        merged = (
            merged * (mean_norm / merged.float().norm(dim=-1).clamp(min=1e-6)).to(merged.dtype)[..., None]
        )
        merged = layer.adapt(merged, sizes)
        natural = eligible & ~(sim > threshold)
        loss = contrastive_loss(features, cid, m, natural, threshold)
        # layout of the clusters
        last = cluster_last_unit(cid, m)
        end_time = (
            compress_lengths
            if level == 1
            else torch.where(member, meta.avail, torch.zeros_like(meta.avail)).amax(1)
        )
        next_member = torch.cat([member[:, 1:], torch.zeros_like(member[:, :1])], 1)
        next_avail = torch.cat([meta.avail[:, 1:], torch.zeros_like(meta.avail[:, :1])], 1)
        avail_next = torch.where(next_member, next_avail, end_time[:, None].expand_as(next_avail))
        cluster_valid = torch.arange(m, device=units.device)[None] < count[:, None]
        cluster_avail = torch.gather(avail_next, 1, last.clamp(min=0))
        cluster_avail = torch.where(cluster_valid, cluster_avail, torch.full_like(cluster_avail, NO_TIME))
        protected = torch.zeros(b, m + 1, dtype=torch.long, device=units.device)
        protected = protected.scatter_reduce(1, slot, meta.protected.long(), reduce="amax")[:, :m].bool()
        clusters_layout = TokenLayout(
            level=torch.full_like(cluster_avail, level),
            valid=cluster_valid,
            avail=cluster_avail,
            parent_avail=torch.full_like(cluster_avail, NO_TIME),
            position=torch.where(cluster_valid, merged_position, torch.zeros_like(merged_position)),
            protected=protected & cluster_valid,
            origin=torch.full_like(cluster_avail, -1),
            member=cluster_valid,
        )
        parent_avail = torch.where(
            member, torch.gather(cluster_avail, 1, cid.clamp(min=0)), torch.full_like(cid, NO_TIME)
        )
        layout.parent_avail[:, start : start + width] = parent_avail
        merged = torch.where(cluster_valid[..., None], merged, torch.zeros_like(merged))
        parts_hidden = [hidden]
        parts_layout = [layout]
        if mode == "prefill":
            parts_hidden, parts_layout, blocks = self._drop_for_prefill(hidden, layout, blocks, level)
        offset = sum(p.shape[1] for p in parts_hidden)
        hidden = torch.cat([*parts_hidden, merged], dim=1)
        layout = TokenLayout.concat([*parts_layout, clusters_layout])
        blocks = [*blocks, (offset, m)]
        mean_threshold = (
            float(torch.nanmean(threshold[eligible]).item()) if bool(eligible.any()) else float("nan")
        )
        return hidden, layout, blocks, count, cid, mean_threshold, loss

    @staticmethod
    def _drop_for_prefill(
        hidden: torch.Tensor, layout: TokenLayout, blocks: list[tuple[int, int]], level: int
    ) -> tuple[list[torch.Tensor], list[TokenLayout], list[tuple[int, int]]]:
        """Keep only what later queries can read: positions outside the prefix, and the newest clusters."""
        if level == 1:
            start, width = blocks[0]
            keep = layout.valid[:, :width] & ~layout.member[:, :width]
            count = int(keep.sum(1).max()) if keep.numel() else 0
            order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :count]
            kept = torch.gather(keep, 1, order)
            part_layout = layout.columns(0, width).take(order, kept)
            part_hidden = torch.gather(
                hidden[:, :width], 1, order[..., None].expand(-1, -1, hidden.shape[-1])
            )
            return [part_hidden], [part_layout], [(0, count)]
        positions_width = blocks[0][1]
        parts_hidden = [hidden[:, :positions_width]]
        parts_layout = [layout.columns(0, positions_width)]
        # every level below the new one is superseded for every query that is still computed
        new_blocks = [blocks[0]] + [(positions_width, 0)] * (level - 1)
        return parts_hidden, parts_layout, new_blocks

    # ------------------------------------------------------------------ generation
    def prefill(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        target_rate: float | None = None,
        similarity_threshold: float | Sequence[float] | None = None,
        compress: bool = True,
        reserve: int = DEFAULT_RESERVE,
    ) -> DecodeState:
        """Pre-fill a context with compression and keep the KV cache it leaves, for :meth:`decode_step`.

        Every real token but the last of each row may be merged; the last stays raw (it is the
        query that predicts the first new token). The cache stores exactly the keys and values the
        ``prefill`` forward computed, so its layers hold ``layer_kept`` entries per row.

        :param input_ids: ``(B, N)`` token ids, BOS first, right padding.
        :param attention_mask: ``(B, N)`` 1 for real tokens (default: all).
        :param target_rate: merge to this whole-model rate (see :meth:`forward`); ``None``: the
            layer plan's own causal thresholds.
        :param similarity_threshold: as :meth:`forward`.
        :param compress: ``False``: the unmodified LM (the same code, no merges).
        :param reserve: cache slots set aside for new tokens (the cache grows when they run out).
        :raises ValueError: for a row without a real token.
        """
        from transformers import DynamicCache

        input_ids = input_ids.to(self.device)
        valid = (
            torch.ones_like(input_ids, dtype=torch.bool)
            if attention_mask is None
            else attention_mask.to(self.device).bool()
        )
        lengths = valid.sum(1)
        if bool((lengths < 1).any()):
            raise ValueError("Every row needs at least one real token (BOS). Fix: drop empty rows.")
        cache = DynamicCache()
        with torch.no_grad():
            output = self(
                input_ids,
                valid,
                compress_lengths=lengths - 1,
                mode="prefill",
                similarity_threshold=similarity_threshold,
                target_rate=target_rate,
                compress=compress,
                cache_lengths=lengths,
                cache=cache,
            )
            column = (output.origin == (lengths - 1)[:, None]).long().argmax(1)
            rows = torch.arange(input_ids.shape[0], device=self.device)
            logits = self.reconstructor.head_logits(output.hidden[rows, column])
        if len(output.readable) != self.backbone.num_layers:
            raise RuntimeError("The pre-fill did not run every decoder layer with causal attention.")
        static = StaticKVCache.from_cache(cache, output.readable, reserve)
        return DecodeState(static, lengths.clone(), logits, output)

    def decode_step(self, state: DecodeState, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row, reading and extending ``state``'s cache; return the next logits ``(B, V)``.

        Costs what a step of the plain model costs (the same :class:`~.decoding.CachedDecoder`):
        one token through every layer against the (smaller) cache, and the restore gate on the
        new token alone. On a GPU the step is a replayed CUDA graph.

        :param state: from :meth:`prefill` (advanced in place).
        :param tokens: ``(B,)`` token ids.
        """
        if state.decoder is None:
            state.decoder = CachedDecoder(
                self.backbone,
                self.reconstructor.head_logits,
                state.cache,
                state.next_position,
                restore=self.restore,
                restore_from=state.output.first_layer,
            )
        logits = state.decoder.step(tokens.to(self.device))
        state.next_position = state.next_position + 1
        state.logits = logits
        return logits

    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 32,
        target_rate: float | None = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, DecodeState]:
        """Compress the context (:meth:`prefill`), then generate from the compressed cache.

        :param max_new_tokens: tokens generated per row.
        :param target_rate: as :meth:`prefill`.
        :param do_sample: sample (with ``temperature`` and ``top_k``) instead of greedy argmax.
        :param generator: random generator for sampling (on the model's device).
        :return: ``(B, max_new_tokens)`` the new tokens, and the state after the last one was fed.
        """
        if max_new_tokens < 0 or temperature <= 0:
            raise ValueError(
                f"max_new_tokens={max_new_tokens}, temperature={temperature}: both must be positive. Fix: e.g. 32 and 1.0."
            )
        state = self.prefill(input_ids, attention_mask, target_rate=target_rate, reserve=max_new_tokens)
        out: list[torch.Tensor] = []
        logits = state.logits
        for _ in range(max_new_tokens):
            token = _next_token(logits, do_sample, temperature, top_k, generator)
            out.append(token)
            logits = self.decode_step(state, token)
        tokens = torch.stack(out, 1) if out else torch.zeros(logits.shape[0], 0, dtype=torch.long)
        return tokens, state

    # ------------------------------------------------------------------ scoring
    def token_nlls(
        self,
        output: CompressionOutput,
        input_ids: torch.Tensor,
        score_mask: torch.Tensor,
    ) -> torch.Tensor:
        """NLL in nats of every scored token given the compressed past, ``(B, N)`` float32 (0 where not scored).

        ``score_mask[b, j]`` marks token ``j`` (``j >= 1``) as scored: it is predicted from the
        output at position ``j - 1``, which must have been computed.

        :param output: the forward output.
        :param input_ids: ``(B, N)`` the ids given to :meth:`forward`.
        :param score_mask: ``(B, N)`` bool.
        """
        input_ids = input_ids.to(self.device)
        score_mask = score_mask.to(self.device).bool()
        b, n = input_ids.shape
        origin = output.origin
        rows, cols = torch.nonzero(origin >= 0, as_tuple=True)
        source = origin[rows, cols]
        target_pos = source + 1
        inside = target_pos < n
        rows, cols, target_pos = rows[inside], cols[inside], target_pos[inside]
        wanted = score_mask[rows, target_pos]
        rows, cols, target_pos = rows[wanted], cols[wanted], target_pos[wanted]
        nll = torch.zeros(b, n, dtype=torch.float32, device=self.device)
        if rows.numel() == 0:
            return nll
        logits = self.reconstructor.head_logits(output.hidden[rows, cols])
        targets = input_ids[rows, target_pos]
        values = F.cross_entropy(logits, targets, reduction="none")
        nll = nll.index_put((rows, target_pos), values)
        expected = int(score_mask[:, 1:].sum())
        if values.numel() != expected:
            raise ValueError(
                f"{expected - values.numel()} scored tokens have no computed predicting position. "
                "Fix: in 'prefill' mode score only tokens after the compressible prefix (and its last token)."
            )
        return nll

    def uncompressed_nlls(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, lower_hidden: torch.Tensor | None = None
    ) -> torch.Tensor:
        """NLL in nats of every token ``j >= 1`` under the unmodified base LM, ``(B, N)`` (0 at padding and j = 0).

        :param lower_hidden: cached :meth:`lower_states` of the inputs (then only the later layers run,
            through the same code with ``compress=False``); ``None`` runs the base LM itself.
        """
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        if lower_hidden is not None:
            score = attention_mask.bool().clone()
            score[:, 0] = False
            output = self(input_ids, attention_mask, compress=False, lower_hidden=lower_hidden)
            return self.token_nlls(output, input_ids, score)
        hidden = self.reconstructor.last_hidden_state(input_ids, attention_mask)
        logits = self.reconstructor.head_logits(hidden[:, :-1]).flatten(0, 1)
        values = F.cross_entropy(logits, input_ids[:, 1:].flatten(), reduction="none").view(
            input_ids.shape[0], -1
        )
        values = values * attention_mask[:, 1:].float()
        return torch.cat([torch.zeros_like(values[:, :1]), values], dim=1)

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, path: str | os.PathLike[str], include_base: bool | None = None) -> Path:
        """Save the compression layers (and the base LM when it was trained) to a folder, atomically.

        The folder holds ``activation_compression.json`` (settings, base model name, parachute
        offset), ``compression_layers.safetensors`` and, with ``include_base``, ``base/`` (a saved
        reconstructor). Load it back with :meth:`from_pretrained`.

        :param path: destination folder (replaced if it exists).
        :param include_base: save the base LM too; default: when its weights are trainable or it
            cannot be loaded back by name (a randomly initialised test model).
        """
        if include_base is None:
            name = self.reconstructor.name
            include_base = any(p.requires_grad for p in self.base_parameters) or name.startswith("random:")
        target = Path(path)
        tmp = temporary_dir_beside(target)
        try:
            state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_FILE))
            meta = {
                "format": CHECKPOINT_FORMAT,
                "base_model": None if include_base else self.reconstructor.name,
                "base_included": bool(include_base),
                "model_type": str(self.base_model.config.model_type),
                "num_layers": self.backbone.num_layers,
                "hidden_size": self.backbone.hidden_size,
                "compression": self.config.to_dict(),
                "threshold_offset": float(self.threshold_offset),
            }
            atomic_write_json(tmp / META_FILE, meta)
            if include_base:
                self.reconstructor.save_pretrained(tmp / BASE_DIR)
            replace_dir(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return target

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype | None = "auto",
        reconstructor: Reconstructor | None = None,
    ) -> CompressedCausalLM:
        """Load a folder written by :meth:`save_pretrained`.

        :param path: the folder.
        :param device: device of the base LM (``auto``: cuda > mps > cpu).
        :param dtype: dtype of the base LM.
        :param reconstructor: the base LM to wrap instead of loading it (it must have the same
            architecture); ignored when the folder holds its own trained base.
        :raises CorruptCheckpointError: if the folder is not a saved activation model or is damaged.
        """
        folder = Path(path)
        meta = read_folder_meta(
            folder,
            META_FILE,
            CorruptCheckpointError,
            "a saved activation-compression model",
            "pass a folder written by `tokenmask activation train`, or a base model name.",
        )
        with reraise_as(
            CorruptCheckpointError,
            f"The activation model folder {folder} is corrupt or incomplete. Fix: re-save it",
        ):
            # saved before the threshold was steered: keep the plain running quantile it was trained with
            config = CompressionConfig(**{"steered_threshold": False, **meta["compression"]})
            state = load_file(str(folder / WEIGHTS_FILE))
        if meta.get("base_included"):
            reconstructor = Reconstructor.from_pretrained(folder / BASE_DIR, device=device, dtype=dtype)
        elif reconstructor is None:
            reconstructor = Reconstructor.load(str(meta["base_model"]), device=device, dtype=dtype)
        model = cls(reconstructor, config)
        if (
            model.backbone.num_layers != meta["num_layers"]
            or model.backbone.hidden_size != meta["hidden_size"]
        ):
            raise CorruptCheckpointError(
                f"{folder} was trained on a {meta['num_layers']}-layer, {meta['hidden_size']}-wide model, not on "
                f"{reconstructor.name!r} ({model.backbone.num_layers} layers, {model.backbone.hidden_size} wide). "
                "Fix: load it with its own base model."
            )
        try:
            model.load_state_dict({k: v.to(model.threshold_offset.device) for k, v in state.items()})
        except RuntimeError as exc:
            raise CorruptCheckpointError(f"The weights in {folder} do not fit its settings: {exc}") from exc
        model.to(dtype=model.backbone.dtype)
        return model

    # ------------------------------------------------------------------ misc
    def num_trainable_parameters(self) -> int:
        """Parameters of the compression layers."""
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return f"compression_layers={self.layer_indices}, thresholds={self.config.thresholds}, adaptive={self.config.adaptive_threshold}"


def _next_token(
    logits: torch.Tensor,
    do_sample: bool,
    temperature: float,
    top_k: int | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Greedy argmax, or a sample of ``softmax(logits / temperature)`` over the ``top_k`` best."""
    if not do_sample:
        return logits.argmax(-1)
    scaled = logits.float() / temperature
    if top_k is not None and top_k < scaled.shape[-1]:
        floor = torch.topk(scaled, top_k, dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(scaled < floor, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def visible_key_counts(avail: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``(B, S)`` keys each query reads under ``avail[k] <= avail[q]`` among valid tokens (1 for padding queries: itself)."""
    keys = torch.sort(torch.where(valid, avail, torch.full_like(avail, NO_TIME)), dim=1).values
    counts = torch.searchsorted(keys, avail.contiguous(), right=True)
    return torch.where(valid, counts, torch.ones_like(counts))


def kv_bytes(model: CompressedCausalLM, positions: float) -> float:
    """Bytes of keys and values one layer keeps for ``positions`` positions (the model's dtype)."""
    return (
        float(positions) * model.backbone.kv_values_per_position * torch.finfo(model.backbone.dtype).bits / 8
    )


def check_same_tokenizer(model: CompressedCausalLM, vocab_size: int) -> None:
    """Raise if a judge's vocabulary differs from the compressed model's (their ids would not match)."""
    own = int(model.base_model.get_input_embeddings().weight.shape[0])
    if own != vocab_size:
        raise ActivationConfigError(
            f"The activation model's vocabulary ({own}) differs from the judge's ({vocab_size}). "
            "Fix: train the compression layers on the judge's model."
        )
