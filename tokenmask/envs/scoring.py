"""Pricing tokens with the reconstructor inside the environment.

Two jobs, both through :class:`~tokenmask.reconstructors.Reconstructor`'s model:

- :func:`document_features`: per-token features of an *unmasked* document (surprisal, entropy, ...),
  computed once per document when an episode starts.
- :class:`IncrementalScorer`: the bits of the tokens the agent masks, ``-log2 p(x_i | masked prefix)``,
  computed when the step is taken. Each episode keeps a KV cache of its masked prefix, so a step
  runs the LM over one window per episode (all episodes in ONE batched forward), not over the
  whole prefix again. The bits are the same as :meth:`Reconstructor.token_bits` on the masked
  document (tested), in both mask modes.

The KV cache is a fixed slot buffer per episode: slot 0 holds BOS and slot ``1 + t * window + j``
the ``j``-th token of window ``t``. Tokens that are not in the LM's input (deleted tokens, padding
past a document's end) keep their slot but are hidden by the attention mask; position ids count
only the tokens in the input, so the LM sees exactly the compressed sequence.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import Cache

from tokenmask.reconstructors import Reconstructor, weights_version
from tokenmask.reconstructors.attention import PACKED_GQA_ATTENTION, attention_implementation, query_groups

LN2 = math.log(2.0)
TOKEN_FEATURES: tuple[str, ...] = (
    "surprisal_bits",
    "entropy_bits",
    "is_top1",
    "next_surprisal_bits",
    "position",
)
"""Names of the per-token features of the observation, in order (see :func:`document_features`)."""

REBUILD_CHUNK = 128
"""Tokens per row per forward pass when re-reading prefixes after a weight change (bounds memory)."""


def head_rows(device: torch.device) -> int:
    """Hidden states sent through the LM head at once: bounds the ``(rows, vocab)`` logits' memory."""
    return 4096 if device.type == "cuda" else 512


def weights_fingerprint(model: Reconstructor | torch.nn.Module) -> tuple[int, int, int]:
    """A value that changes whenever the weights of a reconstructor's LM (or of the LM itself) change.

    In-place updates are counted by :func:`~tokenmask.reconstructors.weights_version`, which
    :class:`~tokenmask.reconstructors.ReconstructorFinetuner` bumps at every optimizer step (code
    that edits weights otherwise calls :meth:`Reconstructor.mark_weights_changed`); replacing the
    model or moving it changes the id or the data pointer.
    """
    module = model.model if isinstance(model, Reconstructor) else model
    first = next(module.parameters(), None)
    return (id(module), weights_version(module), first.data_ptr() if first is not None else 0)


class HeadPlan:
    """Which hidden-state rows go through the LM head, and which target each row's log-prob is read at.

    Built on the CPU and copied to the device BEFORE the forward pass, so the forward and the head
    run back to back on the device without the host waiting in between.

    :param rows: ``(M,)`` for each target, the index of its hidden-state row (any order, repeats allowed).
    :param targets: ``(M,)`` token ids.
    :param device: where the hidden states will be.
    """

    def __init__(self, rows: np.ndarray, targets: np.ndarray, device: torch.device) -> None:
        self.size = len(rows)
        unique, inverse = np.unique(rows, return_inverse=True)
        inverse = inverse.reshape(-1)
        self.unique = torch.as_tensor(unique, dtype=torch.long, device=device)
        self.chunks: list[tuple[int, int, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        step = head_rows(device)
        for lo in range(0, len(unique), step):
            chosen = np.nonzero((inverse >= lo) & (inverse < lo + step))[0]
            self.chunks.append(
                (
                    lo,
                    min(len(unique), lo + step),
                    torch.as_tensor(chosen, dtype=torch.long, device=device),
                    torch.as_tensor(inverse[chosen] - lo, dtype=torch.long, device=device),
                    torch.as_tensor(targets[chosen], dtype=torch.long, device=device),
                )
            )

    def log_probs(self, reconstructor: Reconstructor, hidden: torch.Tensor) -> torch.Tensor:
        """``(M,)`` float32 ``log p(target)`` in nats from ``hidden`` ``(R, D)`` (no host sync)."""
        selected = hidden.index_select(0, self.unique)
        out = torch.empty(self.size, dtype=torch.float32, device=hidden.device)
        for lo, hi, chosen, local, target in self.chunks:
            logits = reconstructor.head_logits(selected[lo:hi])
            # log_softmax read at the targets only: no (rows, vocab) output is written
            out[chosen] = logits[local, target] - torch.logsumexp(logits, dim=-1)[local]
        return out


def position_features(documents: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The features of ``token_features="position"``: only the ``position`` column (``i / n``), the rest 0.

    No LM pass: an agent trained on these observes token ids and positions alone, so at inference it
    needs no reconstructor forward (see ``TokenMaskConfig.token_features``).
    """
    results = []
    for doc in documents:
        n = len(doc)
        feats = np.zeros((n, len(TOKEN_FEATURES)), dtype=np.float32)
        feats[:, 4] = np.arange(n, dtype=np.float32) / max(n, 1)
        results.append(feats)
    return results


def document_features(reconstructor: Reconstructor, documents: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per-token features of unmasked documents, one ``(n, len(TOKEN_FEATURES))`` float32 array each.

    Columns (see :data:`TOKEN_FEATURES`): ``surprisal_bits`` = ``-log2 p(x_i | x_<i)`` with BOS
    prepended; ``entropy_bits`` of the LM's distribution at that position; ``is_top1`` = 1 when
    ``x_i`` is the LM's most likely token; ``next_surprisal_bits`` = surprisal of ``x_{i+1}`` (0 for
    the last token); ``position`` = ``i / n``. One forward pass per ``batch_size`` documents.
    """
    results: list[np.ndarray] = []
    device = reconstructor.device
    step = head_rows(device)
    bos = np.array([reconstructor.bos_token_id], dtype=np.int64)
    with torch.inference_mode():
        for start in range(0, len(documents), reconstructor.batch_size):
            batch = documents[start : start + reconstructor.batch_size]
            lengths = [len(d) for d in batch]
            ids, attention = reconstructor.pad_batch(
                [np.concatenate([bos, np.asarray(d, dtype=np.int64)]) for d in batch]
            )
            width = ids.shape[1]
            # position j predicts token j (the input is BOS + doc): rows of all documents, concatenated
            flat_index = np.concatenate([row * width + np.arange(n) for row, n in enumerate(lengths)])
            targets = torch.as_tensor(
                np.concatenate([np.asarray(d) for d in batch]), dtype=torch.long, device=device
            )
            index = torch.as_tensor(flat_index, dtype=torch.long, device=device)
            hidden = reconstructor.last_hidden_state(ids, attention)
            hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index)
            stats = torch.empty((len(flat_index), 3), dtype=torch.float32, device=device)
            for lo in range(0, len(flat_index), step):
                logits = reconstructor.head_logits(hidden[lo : lo + step])
                target = targets[lo : lo + step]
                lse = torch.logsumexp(logits, dim=-1)
                stats[lo : lo + step, 0] = (lse - logits.gather(1, target[:, None])[:, 0]) / LN2
                logits.clamp_(
                    min=torch.finfo(logits.dtype).min
                )  # excluded tokens: -inf -> finite, their p stays 0
                expected = (torch.softmax(logits, dim=-1) * logits).sum(-1)
                stats[lo : lo + step, 1] = (lse - expected) / LN2
                stats[lo : lo + step, 2] = (logits.argmax(-1) == target).float()
            values = stats.cpu().numpy()
            offset = 0
            for n in lengths:
                feats = np.zeros((n, len(TOKEN_FEATURES)), dtype=np.float32)
                feats[:, :3] = values[offset : offset + n]
                feats[:-1, 3] = feats[1:, 0]
                feats[:, 4] = np.arange(n, dtype=np.float32) / n
                results.append(feats)
                offset += n
    return results


class SlotKVCache(Cache):
    """A KV cache with a fixed slot buffer per batch row, written at per-row slots.

    Hugging Face's caches append at one position shared by the whole batch; episodes of a vector
    env sit at different positions, so each row writes its new keys/values at its own slots
    (``write_index``) and reads the first ``kv_length`` slots back, under a 4-D attention mask
    prepared by :class:`IncrementalScorer`.

    :param capacity: slots per row.
    """

    def __init__(self, capacity: int) -> None:
        # no transformers layer objects: this class keeps the keys/values and answers update() itself
        super().__init__(layers=[])
        self.capacity = capacity
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.write_index: torch.Tensor | None = None
        self.kv_length = 0

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new keys/values at ``write_index`` and return the first ``kv_length`` slots."""
        if self.write_index is None:
            raise RuntimeError("SlotKVCache.write_index must be set before a forward pass.")
        if layer_idx == len(self.keys):
            shape = (key_states.shape[0], key_states.shape[1], self.capacity, key_states.shape[-1])
            self.keys.append(torch.zeros(shape, dtype=key_states.dtype, device=key_states.device))
            vshape = (*shape[:3], value_states.shape[-1])
            self.values.append(torch.zeros(vshape, dtype=value_states.dtype, device=value_states.device))
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        index = self.write_index[:, None, :, None]
        keys.scatter_(2, index.expand(-1, keys.shape[1], -1, keys.shape[3]), key_states)
        values.scatter_(2, index.expand(-1, values.shape[1], -1, values.shape[3]), value_states)
        return keys[:, :, : self.kv_length], values[:, :, : self.kv_length]

    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        """Slots in use (the models only read it when no position ids are given)."""
        return self.kv_length

    def get_max_length(self, layer_idx: int | None = 0) -> int:
        """Slots per row."""
        return self.capacity


def _cache_argument(model: torch.nn.Module) -> str:
    """The name of the base model's cache argument (``past_key_values`` before transformers 5.2x, then ``cache``)."""
    params = inspect.signature(model.forward).parameters
    return "past_key_values" if "past_key_values" in params else "cache"


class IncrementalScorer:
    """Bits of masked tokens, priced window by window with a KV cache of each row's masked prefix.

    Row ``b`` is one episode. :meth:`start` begins episodes (BOS only); :meth:`score` feeds one
    window per row in a single batched forward and returns ``-log2 p(x_i | masked prefix)`` of the
    masked tokens: in ``delete`` mode masked tokens are left out of the LM's input and a masked
    token is predicted after the last kept token before it; in ``placeholder`` mode the mask token
    takes its place. :meth:`rebuild` re-reads every row's prefix (after the weights changed).

    :param reconstructor: prices the tokens; its model is read, never trained here.
    :param num_rows: episodes priced together.
    :param capacity: token slots per row (BOS excluded): the longest episode, windows padded.
    :param mode: ``delete`` or ``placeholder``.
    """

    def __init__(self, reconstructor: Reconstructor, num_rows: int, capacity: int, mode: str) -> None:
        if mode == "placeholder" and reconstructor.mask_token_id is None:
            raise ValueError(
                "mask_mode='placeholder' needs a mask token. Fix: load the reconstructor with add_mask_token=True."
            )
        self.reconstructor = reconstructor
        self.num_rows = num_rows
        self.capacity = capacity + 1
        self.mode = mode
        self.cache = SlotKVCache(self.capacity)
        self.offsets = np.ones(num_rows, dtype=np.int64)  # next free slot
        self.positions = np.ones(num_rows, dtype=np.int64)  # next position id = tokens in the LM input so far
        self._cache_arg = _cache_argument(reconstructor.model.base_model)
        self._device = reconstructor.device
        self._slot_valid = torch.zeros((num_rows, self.capacity), dtype=torch.bool, device=self._device)
        self._carry: torch.Tensor | None = None  # (rows, D): hidden state predicting each row's next token
        self._bos_keys: list[torch.Tensor] = []
        self._bos_values: list[torch.Tensor] = []
        self._bos_hidden: torch.Tensor | None = None
        self._fingerprint: tuple[int, int, int] | None = None
        self._packed_attention = True  # cleared if the model cannot switch to packed_gqa_sdpa

    # ------------------------------------------------------------------ state
    def _prepare_bos(self) -> None:
        """Keys/values and hidden state of BOS alone (the same for every episode), for these weights."""
        fingerprint = weights_fingerprint(self.reconstructor.model)
        if fingerprint == self._fingerprint:
            return
        bos_cache = SlotKVCache(1)
        device = self._device
        hidden = self._forward(
            bos_cache,
            torch.full((1, 1), self.reconstructor.bos_token_id, dtype=torch.long, device=device),
            torch.zeros((1, 1), dtype=torch.long, device=device),
            torch.zeros((1, 1), dtype=torch.long, device=device),
            torch.ones((1, 1, 1), dtype=torch.bool, device=device),
        )
        self._bos_keys, self._bos_values = bos_cache.keys, bos_cache.values
        self._bos_hidden = hidden[0, 0]
        if not self.cache.keys:
            n = self.num_rows
            self.cache.keys = [
                torch.zeros((n, k.shape[1], self.capacity, k.shape[3]), dtype=k.dtype, device=k.device)
                for k in bos_cache.keys
            ]
            self.cache.values = [
                torch.zeros((n, v.shape[1], self.capacity, v.shape[3]), dtype=v.dtype, device=v.device)
                for v in bos_cache.values
            ]
            self._carry = torch.zeros((n, hidden.shape[-1]), dtype=hidden.dtype, device=hidden.device)
        self._fingerprint = fingerprint

    def start(self, rows: np.ndarray) -> None:
        """Begin new episodes in ``rows``: their prefix is BOS alone."""
        if len(rows) == 0:
            return
        with torch.inference_mode():
            self._prepare_bos()
            assert self._carry is not None and self._bos_hidden is not None
            index = torch.as_tensor(rows, dtype=torch.long, device=self._device)
            for layer, (k, v) in enumerate(zip(self._bos_keys, self._bos_values)):
                self.cache.keys[layer][index, :, 0] = k[0, :, 0]
                self.cache.values[layer][index, :, 0] = v[0, :, 0]
            self._slot_valid[index] = False
            self._slot_valid[index, 0] = True
            self._carry[index] = self._bos_hidden
        self.offsets[rows] = 1
        self.positions[rows] = 1

    # ------------------------------------------------------------------ forward
    def _forward(
        self,
        cache: SlotKVCache,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        slots: torch.Tensor,
        allowed: torch.Tensor,
    ) -> torch.Tensor:
        """Run the base model over ``tokens`` (on the device) written at ``slots``; ``allowed`` = (rows, q, kv)."""
        model = self.reconstructor.model
        groups = query_groups(model.config) if self._packed_attention else 1
        if groups == 1:
            return self._run_base(cache, tokens, positions, slots, allowed)
        with attention_implementation(model, PACKED_GQA_ATTENTION) as packed:
            if packed:  # rows stacked as packed_gqa_sdpa stacks the query heads
                return self._run_base(cache, tokens, positions, slots, allowed.repeat(1, groups, 1))
        self._packed_attention = False
        return self._run_base(cache, tokens, positions, slots, allowed)

    def _run_base(
        self,
        cache: SlotKVCache,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        slots: torch.Tensor,
        allowed: torch.Tensor,
    ) -> torch.Tensor:
        """The base model's forward under the additive mask of ``allowed`` (rows, queries, kv), with ``cache``."""
        model = self.reconstructor.model
        dtype = next(model.parameters()).dtype
        mask = torch.zeros(allowed.shape, dtype=dtype, device=self._device)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        cache.write_index = slots
        cache.kv_length = allowed.shape[-1]
        out = model.base_model(
            input_ids=tokens,
            attention_mask=mask[:, None],
            position_ids=positions,
            use_cache=True,
            **{self._cache_arg: cache},
        )
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def _feed(
        self, tokens: np.ndarray, in_input: np.ndarray, advance: np.ndarray, plan: HeadPlan | None = None
    ) -> torch.Tensor | None:
        """Feed ``q`` tokens per row at the row's next slots; return the log-probs ``plan`` asks for.

        Hidden states are indexed as ``row * (q + 1) + column``: column 0 is the carried hidden
        state (the last input token before these), column ``j + 1`` the hidden state at token
        ``j``. Only tokens with ``in_input`` are part of the LM's input; the row's slot pointer moves
        by ``advance``. Every index is copied to the device before the forward pass, so forward and
        head are queued back to back; the attention always spans the whole slot buffer (one shape
        per batch, so kernels such as cuDNN's attention plan once).
        """
        assert self._carry is not None
        q = tokens.shape[1]
        order = np.cumsum(in_input, axis=1) - in_input
        positions = self.positions[:, None] + order
        slots = self.offsets[:, None] + np.arange(q)[None, :]
        if int(slots.max()) >= self.capacity:
            raise RuntimeError("An episode ran past the scorer's capacity; this is a bug in the environment.")
        carry_index = _last_true_index(in_input) + 1  # 0 keeps the carried state when no token entered
        device = self._device
        slots_t = torch.as_tensor(slots, device=device)
        tokens_t = torch.as_tensor(tokens, dtype=torch.long, device=device)
        positions_t = torch.as_tensor(positions, dtype=torch.long, device=device)
        in_input_t = torch.as_tensor(in_input, device=device)
        carry_t = torch.as_tensor(carry_index, dtype=torch.long, device=device)
        self._slot_valid.scatter_(1, slots_t, in_input_t)
        key_slots = torch.arange(self.capacity, device=device)
        allowed = (key_slots[None, None, :] <= slots_t[:, :, None]) & self._slot_valid[:, None, :]
        hidden = self._forward(self.cache, tokens_t, positions_t, slots_t, allowed)
        hidden_all = torch.cat([self._carry[:, None], hidden], dim=1)
        logp = (
            plan.log_probs(self.reconstructor, hidden_all.reshape(-1, hidden_all.shape[-1]))
            if plan is not None
            else None
        )
        self._carry = hidden_all[torch.arange(self.num_rows, device=device), carry_t]
        self.positions += in_input.sum(axis=1)
        self.offsets += advance
        return logp

    def _lm_tokens(
        self, tokens: np.ndarray, valid: np.ndarray, masked: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The token fed at each slot and whether it is part of the LM's input."""
        if self.mode == "delete":
            in_input = valid & ~masked
            fed = np.where(in_input, tokens, self.reconstructor.pad_token_id)
        else:
            in_input = valid.copy()
            mask_id = self.reconstructor.mask_token_id
            assert mask_id is not None  # checked in __init__
            fed = np.where(valid, np.where(masked, mask_id, tokens), self.reconstructor.pad_token_id)
        return fed, in_input

    def score(self, tokens: np.ndarray, valid: np.ndarray, masked: np.ndarray) -> np.ndarray:
        """Extend every row by one window and price its masked tokens.

        :param tokens: ``(rows, window)`` original token ids (any value where not ``valid``).
        :param valid: ``(rows, window)`` True for real tokens, False for padding past the end.
        :param masked: ``(rows, window)`` True where the agent masks (only real tokens count).
        :return: ``(rows, window)`` float64 bits ``-log2 p(x_i | masked prefix)`` at masked real
            tokens, 0 elsewhere.
        """
        masked = masked & valid
        fed, in_input = self._lm_tokens(tokens, valid, masked)
        window = tokens.shape[1]
        rows, cols = np.nonzero(masked)
        bits = np.zeros(tokens.shape, dtype=np.float64)
        with torch.inference_mode():
            plan = None
            if rows.size:
                # the hidden state predicting token j: the last input token before it (0 = carried state)
                before = np.concatenate(
                    [np.full((len(tokens), 1), -1), _running_last_true(in_input)[:, :-1]], axis=1
                )
                plan = HeadPlan(
                    rows * (window + 1) + before[rows, cols] + 1, tokens[rows, cols], self._device
                )
            logp = self._feed(fed, in_input, np.full(self.num_rows, window, dtype=np.int64), plan)
            if logp is not None:
                bits[rows, cols] = -logp.double().cpu().numpy() / LN2
        return bits

    def rebuild(self, tokens: np.ndarray, valid: np.ndarray, masked: np.ndarray, lengths: np.ndarray) -> None:
        """Re-read every row's masked prefix (its first ``lengths[b]`` slots) with the current weights.

        Called when the reconstructor's weights changed mid-episode (joint fine-tuning), so the
        rest of each episode is priced by the new weights on a consistent cache.
        """
        self._fingerprint = None
        self.start(np.arange(self.num_rows))
        width = int(lengths.max()) if len(lengths) else 0
        inside = np.arange(width)[None, :] < lengths[:, None]
        fed, in_input = self._lm_tokens(tokens[:, :width], valid[:, :width] & inside, masked[:, :width])
        with torch.inference_mode():
            for lo in range(0, width, REBUILD_CHUNK):
                hi = min(width, lo + REBUILD_CHUNK)
                advance = np.clip(lengths - lo, 0, hi - lo).astype(np.int64)
                self._feed(fed[:, lo:hi], in_input[:, lo:hi], advance)


def _running_last_true(flags: np.ndarray) -> np.ndarray:
    """Per row and column, the index of the last True at or before it (-1 if none)."""
    index = np.where(flags, np.arange(flags.shape[1])[None, :], -1)
    return np.maximum.accumulate(index, axis=1)


def _last_true_index(flags: np.ndarray) -> np.ndarray:
    """Per row, the index of the last True (-1 if none)."""
    if flags.shape[1] == 0:
        return np.full(flags.shape[0], -1)
    return _running_last_true(flags)[:, -1]
