"""Judge NLLs: how well a frozen LM recovers or continues a text after reading a (compressed) prefix.

The one definition of the judge quantities of the evaluation (``docs/evaluation.md``), used by the
metrics (:mod:`tokenmask.evaluate.metrics`) and by the env's judge bonus
(:mod:`tokenmask.envs.judge_bonus`); it lives here, below both. NLLs are in nats (float32
log-softmax), summed over tokens, with ``sep`` = the judge tokens of ``"\\n\\n"``:

* ``R(p) = NLL(context | BOS + p + sep)`` (:func:`recovery_nlls`; per token: :func:`recovery_token_nlls`);
* ``F(p) = NLL(continuation | BOS + p)`` (:func:`continuation_nlls`; per token: :func:`continuation_token_nlls`);
* both kinds in one batched pass (:func:`recovery_and_continuation_nlls`);
* per document ``(R(empty) - R(p)) / (R(empty) - R(context))`` (:func:`document_recoverability`),
  and the same ratio of ``F`` values for retention;
* the judge's own continuations of a context (:func:`judge_continuations`): a stand-in for the
  continuation that a compressor may read, since it is a function of the context alone.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from tokenmask.reconstructors.reconstructor import Reconstructor

TokenIds = Sequence[int]
#: per-document values (a list or a 1-D array)
Values = Sequence[float] | np.ndarray

SEP_TEXT = "\n\n"


def separator_ids(judge: Reconstructor) -> list[int]:
    """``sep``: the judge tokens of ``"\\n\\n"``."""
    return judge.encode(SEP_TEXT)


def _sorted_gather(
    judge: Reconstructor, inputs: list[list[int]], positions: list[list[int]], targets: list[list[int]]
) -> list[torch.Tensor]:
    """``judge.gather_log_probs`` with sequences batched by length (less padding), results in input order."""
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
    out = judge.gather_log_probs(
        [inputs[i] for i in order], [positions[i] for i in order], [targets[i] for i in order]
    )
    result: list[torch.Tensor] = [torch.zeros(0)] * len(inputs)
    for rank, i in enumerate(order):
        result[i] = out[rank]
    return result


def _scored_log_probs(
    judge: Reconstructor, heads: Sequence[list[int]], scored: Sequence[TokenIds]
) -> list[torch.Tensor]:
    """Per document, ``log p(token | head + the scored tokens before it)`` of each scored token, nats."""
    inputs, positions, targets = [], [], []
    for head, tokens in zip(heads, scored, strict=True):
        tokens = list(tokens)
        inputs.append(head + tokens[:-1])  # the last scored token is only predicted, never read
        positions.append(list(range(len(head) - 1, len(head) - 1 + len(tokens))))
        targets.append(tokens)
    return _sorted_gather(judge, inputs, positions, targets)


def _summed_nlls(judge: Reconstructor, heads: Sequence[list[int]], scored: Sequence[TokenIds]) -> np.ndarray:
    """Per document, ``NLL(scored | head)`` in nats: the scored tokens are predicted after the head."""
    return np.array([-float(lp.double().sum()) for lp in _scored_log_probs(judge, heads, scored)])


def recovery_nlls(
    judge: Reconstructor, prefixes: Sequence[TokenIds], contexts: Sequence[TokenIds], sep: TokenIds
) -> np.ndarray:
    """``R(p) = NLL(context | BOS + p + sep)`` per document, nats summed over the context tokens.

    :param judge: the frozen judge.
    :param prefixes: per document, the ids ``p`` the judge reads first (compressed context; ``[]`` = empty).
    :param contexts: per document, the context ids to recover.
    :param sep: separator ids read between ``p`` and the context.
    """
    return _summed_nlls(judge, _recovery_heads(judge, prefixes, sep), contexts)


def recovery_token_nlls(
    judge: Reconstructor, prefixes: Sequence[TokenIds], contexts: Sequence[TokenIds], sep: TokenIds
) -> list[np.ndarray]:
    """The terms of :func:`recovery_nlls`: per document, each context token's NLL after ``BOS + p + sep``
    and the context tokens before it (nats, float64; they sum to ``R(p)``)."""
    heads = _recovery_heads(judge, prefixes, sep)
    return [-lp.double().numpy() for lp in _scored_log_probs(judge, heads, contexts)]


def continuation_nlls(
    judge: Reconstructor, prefixes: Sequence[TokenIds], continuations: Sequence[TokenIds]
) -> np.ndarray:
    """``F(p) = NLL(continuation | BOS + p)`` per document, nats summed over the continuation tokens.

    :param judge: the frozen judge.
    :param prefixes: per document, the ids ``p`` read before the continuation (``[]`` = empty).
    :param continuations: per document, the continuation ids.
    """
    return _summed_nlls(judge, _continuation_heads(judge, prefixes), continuations)


def continuation_token_nlls(
    judge: Reconstructor, prefixes: Sequence[TokenIds], continuations: Sequence[TokenIds]
) -> list[np.ndarray]:
    """The terms of :func:`continuation_nlls`: per document, each continuation token's NLL after ``BOS + p``
    and the continuation tokens before it (nats, float64; they sum to ``F(p)``). What a metric on part of
    the continuation reads (e.g. the tokens after the first ``k``)."""
    heads = _continuation_heads(judge, prefixes)
    return [-lp.double().numpy() for lp in _scored_log_probs(judge, heads, continuations)]


def recovery_and_continuation_nlls(
    judge: Reconstructor,
    recover_prefixes: Sequence[TokenIds],
    contexts: Sequence[TokenIds],
    continue_prefixes: Sequence[TokenIds],
    continuations: Sequence[TokenIds],
    sep: TokenIds,
) -> tuple[np.ndarray, np.ndarray]:
    """``(R, F)``: :func:`recovery_nlls` and :func:`continuation_nlls` of two lists, in one batched pass.

    The two lists may differ in length; all their sequences are sorted by length and scored
    together (fewer, fuller batches than two separate calls).

    :param recover_prefixes: per ``R`` item, the ids ``p`` read first.
    :param contexts: per ``R`` item, the context ids to recover.
    :param continue_prefixes: per ``F`` item, the ids ``p`` read first.
    :param continuations: per ``F`` item, the continuation ids.
    :param sep: separator ids of ``R``.
    :return: ``R`` per ``R`` item and ``F`` per ``F`` item, nats.
    """
    if len(recover_prefixes) != len(contexts) or len(continue_prefixes) != len(continuations):
        raise ValueError(
            f"{len(recover_prefixes)} prefixes for {len(contexts)} contexts and {len(continue_prefixes)} prefixes "
            f"for {len(continuations)} continuations; each pair must match."
        )
    heads = _recovery_heads(judge, recover_prefixes, sep) + _continuation_heads(judge, continue_prefixes)
    nlls = _summed_nlls(judge, heads, [*contexts, *continuations])
    return nlls[: len(contexts)], nlls[len(contexts) :]


@torch.no_grad()
def judge_continuations(
    judge: Reconstructor,
    contexts: Sequence[TokenIds],
    tokens: int,
    samples: int = 1,
    seed: int = 0,
    no_repeat: int = 0,
    static_cache: bool | None = None,
) -> list[list[list[int]]]:
    """The judge's continuations of each context: ``tokens`` ids after ``BOS + context``, ``samples`` per context.

    Sample 0 is greedy; samples 1.. are drawn at temperature 1 from a generator seeded with
    ``seed`` (reproducible for the same contexts, batch size and device). With ``no_repeat = n``,
    the greedy path never repeats one of its own ``n``-grams (the context's phrases may still be
    copied): small judges loop on their own greedy output. Contexts of one length
    are decoded together with a KV cache; each batch's contexts are read once, and every sample
    decodes from a copy of that cache.

    :param static_cache: decode the greedy path (one sample, no ``no_repeat``) from fixed cache buffers
        through :class:`~tokenmask.activation_compression.decoding.CachedDecoder`, whose step is one
        replayed CUDA graph on a GPU instead of hundreds of launches (``None``: on CUDA devices, for the
        model families it supports; the same path up to float rounding, so a near-tie may pick another token). The
        judge keeps that decoder per batch shape (:attr:`~tokenmask.reconstructors.Reconstructor.decoders`): a later
        call of the same shape refills its buffers and replays its graph instead of capturing another.
    :return: per context, ``samples`` lists of ``tokens`` ids.
    """
    if tokens < 1 or samples < 1:
        raise ValueError(
            f"judge_continuations needs tokens >= 1 and samples >= 1, got {tokens} and {samples}."
        )
    out: list[list[list[int]]] = [[] for _ in contexts]
    generator = torch.Generator(device=judge.device).manual_seed(seed)
    # transformers renamed past_key_values to cache (5.2x); pass the name this version reads
    cache_name = (
        "cache" if "cache" in inspect.signature(judge.model.forward).parameters else "past_key_values"
    )
    by_length: dict[int, list[int]] = {}
    for i, ctx in enumerate(contexts):
        by_length.setdefault(len(ctx), []).append(i)
    for length in sorted(by_length):
        rows_all = by_length[length]
        for start in range(0, len(rows_all), judge.batch_size):
            rows = rows_all[start : start + judge.batch_size]
            heads = torch.tensor([[judge.bos_token_id, *contexts[i]] for i in rows], device=judge.device)
            fast = (
                _static_greedy(judge, heads, tokens, static_cache) if samples == 1 and not no_repeat else None
            )
            if fast is not None:
                for row, i in enumerate(rows):
                    out[i].append(fast[row])
                continue
            # the context is read once; each sample decodes from its own copy of that cache
            first_logits, first_past = _next_logits(judge, heads, None, cache_name)
            for s in range(samples):
                logits = first_logits
                past = first_past if s == samples - 1 else copy.deepcopy(first_past)
                drawn: list[torch.Tensor] = []
                for t in range(tokens):
                    if t:
                        logits, past = _next_logits(judge, drawn[-1][:, None], past, cache_name)
                    if s == 0:
                        if no_repeat:
                            logits = _ban_repeats(logits, drawn, no_repeat)
                        chosen = logits.argmax(-1)
                    else:
                        chosen = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)[:, 0]
                    drawn.append(chosen)
                ids = torch.stack(drawn, 1).tolist()
                for row, i in enumerate(rows):
                    out[i].append([int(t) for t in ids[row]])
    return out


def _ban_repeats(logits: torch.Tensor, drawn: list[torch.Tensor], n: int) -> torch.Tensor:
    """``logits`` with ``-inf`` on every token that would close an ``n``-gram already in the row's ``drawn`` path."""
    if len(drawn) < n - 1 or n < 1:
        return logits
    logits = logits.clone()
    paths = torch.stack(drawn, 1).tolist()
    for row, path in enumerate(paths):
        tail = path[len(path) - n + 1 :] if n > 1 else []
        banned = [path[j + n - 1] for j in range(len(path) - n + 1) if path[j : j + n - 1] == tail]
        if banned:
            logits[row, banned] = float("-inf")
    return logits


_KEPT_DECODERS = 4
"""Greedy decoders a judge keeps between calls (:attr:`~tokenmask.reconstructors.Reconstructor.decoders`), one per
batch shape: a search calls with one shape per rate and document count."""


def _static_greedy(
    judge: Reconstructor, heads: torch.Tensor, tokens: int, static_cache: bool | None
) -> list[list[int]] | None:
    """The greedy paths of ``heads`` ``(B, L)`` through fixed cache buffers and a :class:`CachedDecoder`, or ``None``
    where that path is off (``static_cache`` false, or ``None`` off CUDA) or the model family has no backbone."""
    if static_cache is False or (static_cache is None and judge.device.type != "cuda"):
        return None
    # activation_compression holds the project's one fast decode step (fixed buffers, CUDA graph); imported
    # here, not at the top, because that package builds on this one
    from transformers import DynamicCache

    from tokenmask.activation_compression.backbone import UnsupportedModelError, backbone_for, cache_argument
    from tokenmask.activation_compression.decoding import CachedDecoder, StaticKVCache

    try:
        backbone = backbone_for(judge.model)
    except UnsupportedModelError:
        return None
    cache = DynamicCache()
    base = judge.model.base_model
    hidden = base(input_ids=heads, use_cache=True, **{cache_argument(base): cache})[0]
    logits = judge.head_logits(hidden[:, -1])
    position = torch.full((heads.shape[0],), heads.shape[1], device=heads.device)
    # a decoder of this shape from an earlier call: refill its buffers in place and replay its graph (no capture);
    # the weights' address is part of the key, since a graph reads the parameters it was captured with
    weights = next(judge.model.parameters())
    shape = (*heads.shape, tokens, weights.data_ptr())
    decoder = judge.decoders.get(shape)
    if decoder is not None and decoder.cache.refill(cache, reserve=tokens):
        decoder.restart(position)
    else:
        static = StaticKVCache.from_cache(cache, [None] * len(cache.layers), reserve=tokens)
        decoder = CachedDecoder(backbone, judge.head_logits, static, position)
        judge.decoders.pop(shape, None)
        while len(judge.decoders) >= _KEPT_DECODERS:
            judge.decoders.pop(next(iter(judge.decoders)))  # the oldest shape goes first
        judge.decoders[shape] = decoder
    drawn: list[torch.Tensor] = []
    for t in range(tokens):
        if t:
            logits = decoder.step(drawn[-1])
        drawn.append(logits.argmax(-1))
    return [[int(x) for x in row] for row in torch.stack(drawn, 1).tolist()]


def _next_logits(
    judge: Reconstructor, step: torch.Tensor, past: Any, cache_name: str
) -> tuple[torch.Tensor, Any]:
    """One cached decoding step: the float32 next-token logits (the mask token excluded as ``head_logits`` does) and the cache."""
    result = judge.model(input_ids=step, use_cache=True, **{cache_name: past})
    cache = getattr(result, "cache", None)
    logits = result.logits[:, -1].float()
    if judge.exclude_mask_from_predictions and judge.mask_token_id is not None:
        logits[:, judge.mask_token_id] = float("-inf")
    return logits, cache if cache is not None else result.past_key_values


def _path_log_probs(
    judge: Reconstructor, heads: Sequence[list[int]], paths: Sequence[list[int]]
) -> tuple[torch.Tensor, list[int]]:
    """The judge's float32 log-probabilities along each path after its head: one forward pass for all rows.

    Row ``i`` reads ``heads[i] + paths[i][:-1]``; its ``len(paths[i])`` distributions (the ones predicting
    each path token) are stacked in row order, ``(sum of path lengths, vocab)``, with the row sizes.
    """
    sizes = [len(path) for path in paths]
    logits = judge.logits_at(
        [head + path[:-1] for head, path in zip(heads, paths, strict=True)],
        [range(len(head) - 1, len(head) - 1 + n) for head, n in zip(heads, sizes)],
    )
    return torch.log_softmax(logits, -1), sizes


@torch.inference_mode()
def soft_continuation_nlls(
    judge: Reconstructor,
    prefixes: Sequence[TokenIds],
    owners: Sequence[int],
    contexts: Sequence[TokenIds],
    paths: Sequence[TokenIds],
) -> np.ndarray:
    """Per prefix, the judge's expected ``F`` on its own continuation: ``sum_t H(q_t, p_t)`` in nats.

    Along ``path`` (the judge's greedy continuation of the owner's context, :func:`judge_continuations`),
    ``q_t`` is the judge's next-token distribution after ``BOS + context + path[:t]`` and ``p_t`` the
    one after ``BOS + prefix + path[:t]``; the sum of their cross-entropies is ``F(prefix)`` in
    expectation over continuations drawn token by token from the judge itself, without sampling noise.
    It reads the context alone, so a compressor may use it.

    Each batch of ``batch_size`` prefixes is one forward pass and one reduction on the device (the
    cross-entropies of all its rows at once, accumulated in float64), read back once.

    :param prefixes: the ids read first (kept tokens), one per item.
    :param owners: per item, the index of its context in ``contexts`` and ``paths``.
    :param contexts: the full contexts (teachers).
    :param paths: per context, the continuation ids the distributions are read along.
    :return: one value per item, nats. Contexts are taken ``batch_size`` at a time, so the device
        holds only their teacher distributions (``T x vocab`` floats each), however many are passed.
    """
    if len(prefixes) != len(owners):
        raise ValueError(f"{len(prefixes)} prefixes for {len(owners)} owners; each prefix needs its owner.")
    items_of: dict[int, list[int]] = {}
    for i, d in enumerate(owners):
        items_of.setdefault(d, []).append(i)
    used = sorted(items_of)
    values = np.zeros(len(prefixes))
    # a batch of contexts at a time: only their teacher distributions (T x vocab each) are held
    for group_start in range(0, len(used), judge.batch_size):
        group = used[group_start : group_start + judge.batch_size]
        teacher, sizes = _path_log_probs(
            judge, [[judge.bos_token_id, *contexts[d]] for d in group], [list(paths[d]) for d in group]
        )
        teacher = teacher.exp_()  # q, once per context
        offset = dict(zip(group, np.cumsum([0, *sizes[:-1]]).tolist()))
        order = sorted((i for d in group for i in items_of[d]), key=lambda i: (len(prefixes[i]), i))
        for start in range(0, len(order), judge.batch_size):
            rows = order[start : start + judge.batch_size]
            row_paths = [list(paths[owners[i]]) for i in rows]
            student, row_sizes = _path_log_probs(
                judge, [[judge.bos_token_id, *prefixes[i]] for i in rows], row_paths
            )
            where = torch.cat(
                [torch.arange(offset[owners[i]], offset[owners[i]] + n) for i, n in zip(rows, row_sizes)]
            )
            terms = (teacher[where.to(teacher.device)] * student.clamp_min_(-1e4)).sum(
                -1, dtype=torch.float64
            )
            index = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor(row_sizes)).to(terms.device)
            per_row = torch.zeros(len(rows), dtype=torch.float64, device=terms.device).index_add_(
                0, index, terms
            )
            values[rows] = -per_row.cpu().numpy()
    return values


def _recovery_heads(judge: Reconstructor, prefixes: Sequence[TokenIds], sep: TokenIds) -> list[list[int]]:
    return [[judge.bos_token_id, *prefix, *sep] for prefix in prefixes]


def _continuation_heads(judge: Reconstructor, prefixes: Sequence[TokenIds]) -> list[list[int]]:
    return [[judge.bos_token_id, *prefix] for prefix in prefixes]


def document_recoverability(empty: Values, compressed: Values, full: Values) -> np.ndarray:
    """Per document ``(R(empty) - R(compressed)) / (R(empty) - R(context))``, clipped to [-1, 2].

    The per-document form of :func:`tokenmask.evaluate.metrics.information_ratio` (the env's judge
    bonus, the replayed training return); of ``F`` values it is the document's retention. A document the judge recovers no better
    with itself than without carries no signal: its denominator is floored at 1e-6 nats.
    """
    empty_a, comp_a, full_a = (np.asarray(x, dtype=np.float64) for x in (empty, compressed, full))
    denominator = np.maximum(empty_a - full_a, 1e-6)
    return np.clip((empty_a - comp_a) / denominator, -1.0, 2.0)
