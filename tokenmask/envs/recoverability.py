"""The end-of-episode recoverability bonus of TokenMask-v0 (``recoverability_weight > 0``).

The per-token ``information`` reward prices a masked token by how well the reconstructor predicts
it *from the masked prefix*, which favours scattered masks of predictable tokens. The primary
metric of EVALUATION.md instead asks how much of the document a frozen *judge* recovers when it
reads the compressed text first, which favours keeping readable, contiguous spans. The bonus is
that metric for the episode's document, with the judge NLLs the metrics use (one definition)::

    bonus = recoverability_weight * (R(empty) - R(kept)) / (R(empty) - R(document))

with ``R(p) = NLL(document | BOS + p + sep)`` (:func:`tokenmask.reconstructors.judge.recovery_nlls`)
and ``kept`` the document's unmasked ids: 1 when the kept tokens help the judge as much as the
whole document, 0 when they help as little as nothing (clipped to [-1, 2]). It is added to the
reward of the episode's last step. Keep ``recoverability_weight`` below ``rate_penalty``: a bonus
that grows faster with kept tokens than the penalty for missing the rate teaches masking too little.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tokenmask.reconstructors import Reconstructor
from tokenmask.reconstructors.judge import document_recoverability, recovery_nlls, separator_ids


def vocabulary_without_mask(reconstructor: Reconstructor) -> dict[str, int]:
    """The tokenizer's vocabulary without an added mask token (a judge is loaded without one)."""
    vocab = dict(reconstructor.tokenizer.get_vocab())
    if reconstructor.mask_token_id is not None:
        vocab = {k: v for k, v in vocab.items() if v != reconstructor.mask_token_id}
    return vocab


def same_vocabulary(first: Reconstructor, second: Reconstructor) -> bool:
    """True when both tokenizers give text the same ids (an added mask token aside)."""
    return first is second or vocabulary_without_mask(first) == vocabulary_without_mask(second)


class RecoverabilityBonus:
    """Recoverability of finished episodes' documents from their kept tokens, by a frozen judge.

    ``R(empty)`` and ``R(document)`` of a document are computed once and cached by its corpus index.

    :param judge: the frozen judge LM (loaded without a mask token).
    :param reconstructor: the env's reconstructor: its tokenizer made the document ids (they are
        decoded and re-encoded for a judge of another vocabulary).
    """

    def __init__(self, judge: Reconstructor, reconstructor: Reconstructor) -> None:
        if not isinstance(judge, Reconstructor):
            raise ValueError(f"judge must be a tokenmask Reconstructor, got {type(judge).__name__}.")
        self.judge = judge
        self.reconstructor = reconstructor
        self._sep = separator_ids(judge)
        self._same_vocab = same_vocabulary(reconstructor, judge)
        self._reference: dict[int, tuple[float, float]] = {}  # document -> (R(empty), R(document))

    def _judge_ids(self, ids: np.ndarray) -> list[int]:
        """Reconstructor ids as judge ids (decoded and re-encoded when the vocabularies differ)."""
        if self._same_vocab:
            return [int(t) for t in ids]
        return self.judge.encode(self.reconstructor.decode([int(t) for t in ids]))

    def gains(
        self, documents: Sequence[int], ids: Sequence[np.ndarray], masks: Sequence[np.ndarray]
    ) -> np.ndarray:
        """``(episodes,)`` recoverability of each document from its kept tokens, in one batched judge pass.

        :param documents: corpus index of each episode's document (the cache key).
        :param ids: each document's token ids (reconstructor vocabulary).
        :param masks: each document's mask, ``True`` = masked.
        """
        targets = [self._judge_ids(np.asarray(d)) for d in ids]
        kept = [
            self._judge_ids(np.asarray(d)[~np.asarray(m, dtype=bool)])
            for d, m in zip(ids, masks, strict=True)
        ]
        first = {int(doc): target for doc, target in zip(documents, targets)}
        missing = sorted(set(first) - set(self._reference))
        if missing:
            docs = [first[m] for m in missing]
            empty = recovery_nlls(self.judge, [[] for _ in missing], docs, self._sep)
            full = recovery_nlls(self.judge, docs, docs, self._sep)
            self._reference.update(zip(missing, zip(empty.tolist(), full.tolist())))
        with_kept = recovery_nlls(self.judge, kept, targets, self._sep)
        empty_nll = np.array([self._reference[int(d)][0] for d in documents])
        full_nll = np.array([self._reference[int(d)][1] for d in documents])
        return document_recoverability(empty_nll, with_kept, full_nll)
