"""Judge NLLs: how well a frozen LM recovers or continues a text after reading a (compressed) prefix.

The one definition of the judge quantities of the evaluation (``docs/evaluation.md``), used by the
metrics (:mod:`tokenmask.evaluate.metrics`) and by the env's judge bonus
(:mod:`tokenmask.envs.judge_bonus`); it lives here, below both. NLLs are in nats (float32
log-softmax), summed over tokens, with ``sep`` = the judge tokens of ``"\\n\\n"``:

* ``R(p) = NLL(context | BOS + p + sep)`` (:func:`recovery_nlls`);
* ``F(p) = NLL(continuation | BOS + p)`` (:func:`continuation_nlls`);
* both kinds in one batched pass (:func:`recovery_and_continuation_nlls`);
* per document ``(R(empty) - R(p)) / (R(empty) - R(context))`` (:func:`document_recoverability`),
  and the same ratio of ``F`` values for retention.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def _summed_nlls(judge: Reconstructor, heads: Sequence[list[int]], scored: Sequence[TokenIds]) -> np.ndarray:
    """Per document, ``NLL(scored | head)`` in nats: the scored tokens are predicted after the head."""
    inputs, positions, targets = [], [], []
    for head, tokens in zip(heads, scored, strict=True):
        tokens = list(tokens)
        inputs.append(head + tokens[:-1])  # the last scored token is only predicted, never read
        positions.append(list(range(len(head) - 1, len(head) - 1 + len(tokens))))
        targets.append(tokens)
    return np.array([-float(lp.double().sum()) for lp in _sorted_gather(judge, inputs, positions, targets)])


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


def continuation_nlls(
    judge: Reconstructor, prefixes: Sequence[TokenIds], continuations: Sequence[TokenIds]
) -> np.ndarray:
    """``F(p) = NLL(continuation | BOS + p)`` per document, nats summed over the continuation tokens.

    :param judge: the frozen judge.
    :param prefixes: per document, the ids ``p`` read before the continuation (``[]`` = empty).
    :param continuations: per document, the continuation ids.
    """
    return _summed_nlls(judge, _continuation_heads(judge, prefixes), continuations)


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
