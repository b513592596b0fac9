"""Decoding one token per row from a pre-filled KV cache, as fast as the cache's size allows.

One decode step reads every key and value the cache holds, so after a compressed pre-fill it can
only be faster than an uncompressed one where that read, not the per-step overhead, sets the time.
This module removes the overhead the Hugging Face path adds on top of the read:

- :class:`StaticKVCache`: each layer's keys and values in a buffer allocated once with room for
  the new tokens (a ``DynamicCache`` concatenates, i.e. copies the whole layer, on every step), a
  device-side write slot per layer and an additive mask per layer (``0`` readable, the dtype's
  minimum for padding and unwritten slots), so every step has the same shapes;
- grouped-query attention packed along the query axis
  (:func:`~tokenmask.reconstructors.attention.packed_gqa_sdpa`: keys and values read once, never
  repeated per query head);
- :class:`CachedDecoder`: on a GPU the whole step (embeddings, every decoder layer, the final norm
  and the LM head) is captured once as a CUDA graph and replayed, so a step costs a few kernel
  launches of Python, not hundreds.

The uncompressed model, kvpress's pruned caches and :class:`~.model.CompressedCausalLM` (which adds
its restore gate on the new token) decode through the same :class:`CachedDecoder`, so a benchmark
compares caches, not code paths (``benchmarks/kv_memory.py``).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from transformers import Cache

from tokenmask.activation_compression.backbone import Backbone
from tokenmask.reconstructors.attention import PACKED_GQA_ATTENTION, attention_implementation, query_groups

SLOT_MULTIPLE = 16
"""Buffer lengths are rounded up to this many slots (aligned masks for the memory-efficient SDPA kernel)."""
DEFAULT_RESERVE = 256
"""Slots reserved for new tokens when the caller does not say how many it will decode."""


class StaticKVCache(Cache):
    """Per-layer key/value buffers of fixed length, written one slot per decode step.

    Layer ``l`` holds ``lengths[l]`` filled entries per row (padding included) in buffers of
    ``capacity(l)`` slots; :meth:`update` (called by the decoder layer) writes the new token's key
    and value at the layer's write slot, opens that slot in the layer's mask and returns the whole
    buffers, which attention reads under :attr:`bias`. :meth:`advance` moves every write slot on.

    :param keys: per layer ``(B, H_kv, capacity, head_dim)``.
    :param values: per layer, the same shape as ``keys`` (value width may differ).
    :param bias: per layer ``(B, 1, 1, capacity)`` additive mask in the model's dtype.
    :param lengths: per layer, the filled slots.
    """

    def __init__(
        self,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        bias: list[torch.Tensor],
        lengths: Sequence[int],
    ) -> None:
        super().__init__(layers=[])  # no transformers layer objects: update() is answered here
        self.keys = keys
        self.values = values
        self.bias = bias
        self.lengths = [int(n) for n in lengths]
        device = keys[0].device if keys else torch.device("cpu")
        self.write = torch.tensor(self.lengths, dtype=torch.long, device=device)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_cache(
        cls, cache: Any, readable: Sequence[torch.Tensor | None], reserve: int = DEFAULT_RESERVE
    ) -> StaticKVCache:
        """Move a filled Hugging Face ``DynamicCache`` into fixed buffers with ``reserve`` free slots per layer.

        The source layers are emptied one by one as they are copied, so the move costs one layer
        of extra memory, not a second cache.

        :param readable: per layer ``(B, K)`` bool of the entries a new token reads (``None``: all).
        """
        keys, values, bias, lengths = [], [], [], []
        for index, layer in enumerate(cache.layers):
            k, v = layer.keys, layer.values
            filled = int(k.shape[-2])
            capacity = _round_up(filled + max(1, reserve))
            new_k = k.new_zeros((*k.shape[:2], capacity, k.shape[-1]))
            new_v = v.new_zeros((*v.shape[:2], capacity, v.shape[-1]))
            new_k[:, :, :filled] = k
            new_v[:, :, :filled] = v
            layer.keys = layer.values = torch.empty(0, device=k.device)
            mask = torch.full(
                (k.shape[0], 1, 1, capacity), torch.finfo(k.dtype).min, dtype=k.dtype, device=k.device
            )
            seen = readable[index] if index < len(readable) else None
            if seen is None:
                mask[..., :filled] = 0.0
            else:
                mask[:, 0, 0, :filled].masked_fill_(seen.to(k.device), 0.0)
            keys.append(new_k)
            values.append(new_v)
            bias.append(mask)
            lengths.append(filled)
        return cls(keys, values, bias, lengths)

    def refill(self, cache: Any, reserve: int) -> bool:
        """Hold a newly filled Hugging Face ``DynamicCache`` in these buffers, in place (every entry readable), so a
        CUDA graph captured on them stays valid; ``False`` (nothing changed) where its shape does not fit: another
        batch size, head layout, dtype or filled length, or fewer than ``reserve`` free slots after it.

        The source layers are emptied one by one as they are copied, as in :meth:`from_cache`.
        """
        layers = list(cache.layers)
        if len(layers) != len(self.keys):
            return False
        for layer, k, v in zip(layers, self.keys, self.values):
            new_k, new_v = layer.keys, layer.values
            filled = int(new_k.shape[-2])
            if (
                new_k.shape[:2] != k.shape[:2]
                or new_v.shape[:2] != v.shape[:2]
                or new_k.shape[-1] != k.shape[-1]
                or new_v.shape[-1] != v.shape[-1]
                or new_k.dtype != k.dtype
                or filled + reserve > k.shape[-2]
            ):
                return False
        lengths = []
        for layer, k, v, mask in zip(layers, self.keys, self.values, self.bias):
            filled = int(layer.keys.shape[-2])
            k[:, :, :filled].copy_(layer.keys)
            v[:, :, :filled].copy_(layer.values)
            layer.keys = layer.values = torch.empty(0, device=k.device)
            mask.fill_(torch.finfo(mask.dtype).min)
            mask[..., :filled] = 0.0
            lengths.append(filled)
        self.lengths = lengths
        self.write.copy_(torch.tensor(lengths, dtype=torch.long))
        return True

    @classmethod
    def concat(cls, parts: Sequence[StaticKVCache], reserve: int = DEFAULT_RESERVE) -> StaticKVCache:
        """The caches of row chunks as one batch (shorter layers padded; padding is unreadable).

        Each part's buffers are released as soon as they are copied (one layer of extra memory).
        """
        if len(parts) == 1:
            return parts[0]
        keys, values, bias, lengths = [], [], [], []
        for index in range(len(parts[0].keys)):
            filled = max(p.lengths[index] for p in parts)
            capacity = _round_up(filled + max(1, reserve))
            first_k, first_v, first_mask = parts[0].keys[index], parts[0].values[index], parts[0].bias[index]
            rows = sum(int(p.keys[index].shape[0]) for p in parts)
            new_k = first_k.new_zeros((rows, first_k.shape[1], capacity, first_k.shape[-1]))
            new_v = first_v.new_zeros((rows, first_v.shape[1], capacity, first_v.shape[-1]))
            mask = torch.full(
                (rows, 1, 1, capacity),
                torch.finfo(first_mask.dtype).min,
                dtype=first_mask.dtype,
                device=first_mask.device,
            )
            row = 0
            for part in parts:
                n, b = part.lengths[index], int(part.keys[index].shape[0])
                new_k[row : row + b, :, :n] = part.keys[index][:, :, :n]
                new_v[row : row + b, :, :n] = part.values[index][:, :, :n]
                mask[row : row + b, ..., :n] = part.bias[index][..., :n]
                part.keys[index] = part.values[index] = part.bias[index] = torch.empty(0, device=new_k.device)
                row += b
            keys.append(new_k)
            values.append(new_v)
            bias.append(mask)
            lengths.append(filled)
        return cls(keys, values, bias, lengths)

    def grow(self, reserve: int) -> None:
        """Make room for ``reserve`` more slots in every layer (new buffers; a captured graph is stale)."""
        for index, (k, v, mask) in enumerate(zip(self.keys, self.values, self.bias)):
            filled = self.lengths[index]
            capacity = _round_up(filled + max(1, reserve))
            if capacity <= k.shape[-2]:
                continue
            new_k = k.new_zeros((*k.shape[:2], capacity, k.shape[-1]))
            new_v = v.new_zeros((*v.shape[:2], capacity, v.shape[-1]))
            new_k[:, :, :filled] = k[:, :, :filled]
            new_v[:, :, :filled] = v[:, :, :filled]
            new_mask = (
                torch.full_like(mask[..., :1], torch.finfo(mask.dtype).min)
                .expand(-1, -1, -1, capacity)
                .clone()
            )
            new_mask[..., :filled] = mask[..., :filled]
            self.keys[index], self.values[index], self.bias[index] = new_k, new_v, new_mask

    # ------------------------------------------------------------------ the Cache interface
    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one new entry per row at layer ``layer_idx``'s write slot; return the whole buffers."""
        if key_states.shape[-2] != 1:
            raise ValueError(f"StaticKVCache decodes one token per row, not {key_states.shape[-2]}.")
        slot = self.write[layer_idx : layer_idx + 1]
        self.keys[layer_idx].index_copy_(2, slot, key_states)
        self.values[layer_idx].index_copy_(2, slot, value_states)
        self.bias[layer_idx].index_fill_(3, slot, 0.0)
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        """Filled slots of layer ``layer_idx`` (padding included)."""
        return self.lengths[layer_idx or 0]

    def get_max_length(self, layer_idx: int | None = 0) -> int:
        """Slots of layer ``layer_idx``'s buffers."""
        return self.capacity(layer_idx or 0)

    # ------------------------------------------------------------------ state
    def capacity(self, layer: int) -> int:
        """Slots of ``layer``'s buffers."""
        return int(self.keys[layer].shape[-2])

    @property
    def free_slots(self) -> int:
        """New tokens that fit before :meth:`grow` is needed."""
        return min(self.capacity(i) - n for i, n in enumerate(self.lengths))

    def advance(self) -> None:
        """Every layer's write slot moves one on (after a decode step wrote it)."""
        self.write += 1
        self.lengths = [n + 1 for n in self.lengths]

    def readable(self, layer: int) -> torch.Tensor:
        """``(B, lengths[layer])`` bool of the filled entries a new token reads."""
        return self.bias[layer][:, 0, 0, : self.lengths[layer]] == 0

    def filled_bytes(self) -> int:
        """Bytes of the filled key and value entries (padding included), summed over the layers."""
        total = 0
        for k, v, n in zip(self.keys, self.values, self.lengths):
            total += n * (k[:, :, 0].numel() * k.element_size() + v[:, :, 0].numel() * v.element_size())
        return total

    def held_bytes(self) -> int:
        """Bytes of the key and value buffers, reserved slots included."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


class CachedDecoder:
    """Feeds one token per row through a model's decoder layers against a :class:`StaticKVCache`.

    :param backbone: the model, layer by layer.
    :param head: final-normed hidden states ``(B, d)`` -> float32 logits ``(B, V)``.
    :param cache: the pre-filled cache (advanced in place).
    :param next_position: ``(B,)`` position id of the next token fed.
    :param restore: optional ``(final, own) -> hidden`` applied after the last layer, where ``own``
        is the new token's hidden state entering layer ``restore_from`` (the compressed model's
        restore gate).
    :param restore_from: see ``restore``.
    :param cuda_graph: capture the step as a CUDA graph (default: on CUDA devices); a capture that
        fails falls back to running the step eagerly, with a warning.
    """

    def __init__(
        self,
        backbone: Backbone,
        head: Callable[[torch.Tensor], torch.Tensor],
        cache: StaticKVCache,
        next_position: torch.Tensor,
        restore: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        restore_from: int | None = None,
        cuda_graph: bool | None = None,
    ) -> None:
        self.backbone = backbone
        self.head = head
        self.cache = cache
        self.restore = restore if restore_from is not None else None
        self.restore_from = restore_from
        device = cache.write.device
        self.tokens = torch.zeros(next_position.shape[0], 1, dtype=torch.long, device=device)
        self.position = next_position.to(device=device, dtype=torch.long).reshape(-1, 1).clone()
        self.use_graph = (
            device.type == "cuda" if cuda_graph is None else bool(cuda_graph and device.type == "cuda")
        )
        self._graph: Any = None
        self._graph_logits: torch.Tensor | None = None

    def restart(self, next_position: torch.Tensor) -> None:
        """Decode on from a cache refilled in place (:meth:`StaticKVCache.refill`): ``next_position`` ``(B,)`` is the
        position id of the next token fed. A captured graph is kept: it reads the same buffers."""
        self.position.copy_(next_position.to(device=self.position.device, dtype=torch.long).reshape(-1, 1))

    @property
    def graphed(self) -> bool:
        """Whether steps replay a captured CUDA graph."""
        return self._graph is not None

    def prepare(self) -> None:
        """Capture the CUDA graph now (else the first :meth:`step` does), e.g. before a timed span."""
        if self.cache.free_slots < 1:
            self.cache.grow(DEFAULT_RESERVE)
            self._graph = self._graph_logits = None
        if self.use_graph and self._graph is None:
            with torch.no_grad(), self._attention():
                self._capture()

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed ``tokens`` ``(B,)`` (one per row) and return the next logits ``(B, V)`` (float32)."""
        self.tokens.copy_(tokens.reshape(-1, 1))
        self.prepare()
        if self._graph is not None:
            # the replayed kernels are the captured ones: no attention switch (two model walks) per step
            self._graph.replay()
            assert self._graph_logits is not None
            logits = self._graph_logits.clone()
        else:
            with torch.no_grad(), self._attention():
                logits = self._forward()
        self.cache.advance()
        self.position += 1
        return logits

    def _forward(self) -> torch.Tensor:
        """One step on the fed tokens: writes each layer's current slot, moves nothing on."""
        backbone = self.backbone
        hidden = backbone.embed(self.tokens, self.position)
        rotary = backbone.position_context(hidden, self.position)
        own = hidden
        for index in range(backbone.num_layers):
            if index == self.restore_from:
                own = hidden
            hidden = backbone.run_layer(index, hidden, self.cache.bias[index], rotary, self.cache)
        if self.restore is not None:
            hidden = self.restore(hidden, own)
        return self.head(backbone.final_norm(hidden)[:, -1])

    def _capture(self) -> None:
        """Record :meth:`_forward` as a CUDA graph (two warm-up runs first: they rewrite the same slots)."""
        try:
            stream = torch.cuda.Stream(device=self.tokens.device)
            stream.wait_stream(torch.cuda.current_stream(self.tokens.device))
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self._forward()
            torch.cuda.current_stream(self.tokens.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._graph_logits = self._forward()
            self._graph = graph
        except Exception as exc:  # noqa: BLE001  (any capture failure: the eager step is still right)
            warnings.warn(
                f"CUDA graph capture of the decode step failed ({type(exc).__name__}: {exc}); decoding eagerly.",
                stacklevel=3,
            )
            self.use_graph = False
            self._graph = self._graph_logits = None

    @contextlib.contextmanager
    def _attention(self) -> Iterator[None]:
        """Packed grouped-query attention for the step where the model allows it."""
        model: Any = self.backbone.model
        if query_groups(model.config) == 1:
            yield
            return
        with attention_implementation(model, PACKED_GQA_ATTENTION):
            yield


def _round_up(slots: int) -> int:
    return int(math.ceil(slots / SLOT_MULTIPLE) * SLOT_MULTIPLE)
