"""The judge bonus of TokenMask-v0: recoverability and retention of the kept tokens, by a frozen judge.

The per-token ``information`` reward prices a masked token by how well the reconstructor predicts
it *from the masked prefix*, which favours scattered masks of predictable tokens. The metrics of
docs/evaluation.md instead ask what a frozen *judge* LM gets from the compressed text: how much of the
document it recovers (recoverability) and how well it then predicts the text that follows
(retention). The bonus is those two metrics for the episode's document, with the judge NLLs the
evaluation uses (:mod:`tokenmask.reconstructors.judge`, one definition)::

    bonus = recoverability_weight * rec + retention_weight * ret
    rec   = (R(empty) - R(kept)) / (R(empty) - R(document)),   R(p) = NLL(document | BOS + p + sep)
    ret   = (F(empty) - F(kept)) / (F(empty) - F(document)),   F(p) = NLL(continuation | BOS + p)

with ``kept`` the document's unmasked ids and ``continuation`` the ``continuation_tokens`` ids that
follow the document in its text (never observed by the policy); each ratio is clipped to [-1, 2].
1 = the kept tokens help the judge as much as the whole document, 0 = as little as nothing.

How the env pays it (``judge_credit``): ``terminal`` adds the bonus of the final mask to the last
step's reward; ``dense`` pays, at every step, the change of ``Phi`` = the bonus of the mask decided so
far with every undecided token kept (potential-based shaping: an episode's payments sum to
``bonus(final) - bonus(keep-all)``, so the best policy is unchanged). Keep the weights' sum below
``rate_penalty``: a bonus that grows faster with kept tokens than the penalty for missing the rate
teaches masking too little.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from tokenmask.envs.judge_credit import (
    JUDGE_CREDITS as JUDGE_CREDITS,  # re-exported (a light module for configs)
)
from tokenmask.reconstructors import Reconstructor
from tokenmask.reconstructors.judge import (
    document_recoverability,
    recovery_and_continuation_nlls,
    separator_ids,
)


def vocabulary_without_mask(reconstructor: Reconstructor) -> dict[str, int]:
    """The tokenizer's vocabulary without an added mask token (a judge is loaded without one)."""
    vocab = dict(reconstructor.tokenizer.get_vocab())
    if reconstructor.mask_token_id is not None:
        vocab = {k: v for k, v in vocab.items() if v != reconstructor.mask_token_id}
    return vocab


def same_vocabulary(first: Reconstructor, second: Reconstructor) -> bool:
    """True when both tokenizers give text the same ids (an added mask token aside)."""
    return first is second or vocabulary_without_mask(first) == vocabulary_without_mask(second)


def _flags(value: bool | Sequence[bool] | np.ndarray, rows: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(value, dtype=bool), (rows,))


class JudgeBonus:
    """Recoverability and retention of documents from their kept tokens, by a frozen judge.

    ``R(empty)``, ``R(document)``, ``F(empty)`` and ``F(document)`` of a document are computed once
    and cached by its corpus index, with the document's judge ids (dropped if the judge's weights
    are ever marked changed).

    :param judge: the frozen judge LM (loaded without a mask token).
    :param reconstructor: the env's reconstructor: its tokenizer made the document ids (they are
        decoded and re-encoded for a judge of another vocabulary).
    :param recoverability_weight: weight of ``rec`` in :meth:`bonus` (>= 0).
    :param retention_weight: weight of ``ret`` in :meth:`bonus` (>= 0; needs continuations).
    """

    def __init__(
        self,
        judge: Reconstructor,
        reconstructor: Reconstructor,
        recoverability_weight: float = 1.0,
        retention_weight: float = 0.0,
    ) -> None:
        if not isinstance(judge, Reconstructor):
            raise ValueError(f"judge must be a tokenmask Reconstructor, got {type(judge).__name__}.")
        for name, weight in (
            ("recoverability_weight", recoverability_weight),
            ("retention_weight", retention_weight),
        ):
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(
                    f"{name} must be a finite number >= 0, got {weight}. Fix: 0 turns that part off."
                )
        self.judge = judge
        self.reconstructor = reconstructor
        self.recoverability_weight = float(recoverability_weight)
        self.retention_weight = float(retention_weight)
        self._sep = separator_ids(judge)
        self._same_vocab = same_vocabulary(reconstructor, judge)
        self._targets: dict[
            int, tuple[list[int], list[int]]
        ] = {}  # document -> judge ids (document, continuation)
        self._reference: dict[
            int, tuple[float, float, float, float]
        ] = {}  # R(empty), R(doc), F(empty), F(doc)
        self._judge_version = judge.weights_version

    # ------------------------------------------------------------------ helpers
    def _judge_ids(self, ids: np.ndarray) -> list[int]:
        """Reconstructor ids as judge ids (decoded and re-encoded when the vocabularies differ)."""
        if self._same_vocab:
            return ids.tolist()
        return self.judge.encode(self.reconstructor.decode(ids.tolist())) if len(ids) else []

    def bonus(self, recoverability: np.ndarray, retention: np.ndarray) -> np.ndarray:
        """``recoverability_weight * rec + retention_weight * ret`` (a part whose weight is 0 is ignored, ``nan`` or not)."""
        total = np.zeros(np.shape(recoverability), dtype=np.float64)
        if self.recoverability_weight > 0:
            total += self.recoverability_weight * np.nan_to_num(np.asarray(recoverability, dtype=np.float64))
        if self.retention_weight > 0:
            total += self.retention_weight * np.nan_to_num(np.asarray(retention, dtype=np.float64))
        return total

    def keep_all(self, documents: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """``(rec, ret)`` of keeping every token, from the cached references (no judge pass).

        ``rec`` is 1 (``-1`` for a document that does not help the judge recover itself); ``ret``
        is 1 likewise, ``nan`` for a document without continuation.

        :raises KeyError: a document :meth:`measure` has not seen yet.
        """
        ref = np.array([self._reference[int(d)] for d in documents], dtype=np.float64).reshape(-1, 4)
        return (
            document_recoverability(ref[:, 0], ref[:, 1], ref[:, 1]),
            np.where(np.isnan(ref[:, 2]), np.nan, document_recoverability(ref[:, 2], ref[:, 3], ref[:, 3])),
        )

    def _fill_references(self, documents: Sequence[int]) -> None:
        """Cache ``R(empty)``, ``R(doc)`` and, with a continuation, ``F(empty)``, ``F(doc)`` of new documents.

        Their own judge pass, never batched with the variants: a row's NLLs depend (in the last
        float32 digits) on what it is padded with, so a step's rewards must not depend on whether
        its documents were seen before (gymnasium's step-determinism check).
        """
        if not documents:
            return
        r_prefixes: list[list[int]] = []
        r_targets: list[list[int]] = []
        f_prefixes: list[list[int]] = []
        f_targets: list[list[int]] = []
        with_continuation = []
        for doc in documents:
            target, cont = self._targets[doc]
            r_prefixes += [[], target]
            r_targets += [target, target]
            if cont:
                f_prefixes += [[], target]
                f_targets += [cont, cont]
                with_continuation.append(doc)
        r_nll, f_nll = recovery_and_continuation_nlls(
            self.judge, r_prefixes, r_targets, f_prefixes, f_targets, self._sep
        )
        for j, doc in enumerate(documents):
            self._reference[doc] = (float(r_nll[2 * j]), float(r_nll[2 * j + 1]), math.nan, math.nan)
        for j, doc in enumerate(with_continuation):
            self._reference[doc] = (*self._reference[doc][:2], float(f_nll[2 * j]), float(f_nll[2 * j + 1]))

    # ------------------------------------------------------------------ the judge pass
    def measure(
        self,
        documents: Sequence[int],
        ids: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        continuations: Sequence[np.ndarray] | None = None,
        recover: bool | Sequence[bool] | np.ndarray = True,
        retain: bool | Sequence[bool] | np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(rec, ret)`` per row from its kept tokens, in ONE batched judge pass.

        Documents seen for the first time get their references first, in a pass of their own, so
        :meth:`keep_all` of every given document works afterwards.

        :param documents: corpus index of each row's document (the cache key).
        :param ids: each row's document ids (reconstructor vocabulary).
        :param masks: each row's mask over its document, ``True`` = masked.
        :param continuations: each row's continuation ids (reconstructor vocabulary); ``None`` = none.
        :param recover: per row (or for all), compute ``rec``; ``nan`` where not.
        :param retain: per row (or for all), compute ``ret``; ``nan`` where not. Default: when
            continuations are given.
        :raises ValueError: ``ret`` asked for a row without continuation.
        """
        rows = len(documents)
        if not (len(ids) == len(masks) == rows) or (continuations is not None and len(continuations) != rows):
            raise ValueError(f"documents, ids, masks and continuations must have one entry per row ({rows}).")
        recover_rows = _flags(recover, rows)
        retain_rows = _flags(continuations is not None if retain is None else retain, rows)
        if (
            self.judge.weights_version != self._judge_version
        ):  # a judge that is fine-tuned invalidates the cache
            self._targets.clear()
            self._reference.clear()
            self._judge_version = self.judge.weights_version
        for i, document in enumerate(documents):
            key = int(document)
            given = np.zeros(0, dtype=np.int64) if continuations is None else np.asarray(continuations[i])
            known = self._targets.get(key)
            if known is None or (
                len(given) and not known[1]
            ):  # first seen, or first seen with its continuation
                self._targets[key] = (self._judge_ids(np.asarray(ids[i])), self._judge_ids(given))
                self._reference.pop(key, None)
            if retain_rows[i] and not self._targets[key][1]:
                raise ValueError(
                    f"Retention needs the document's continuation; document {key} has none. "
                    "Fix: set continuation_tokens > 0 (or retention_weight=0)."
                )
        self._fill_references(sorted({int(d) for d in documents} - set(self._reference)))
        r_prefixes: list[list[int]] = []
        r_targets: list[list[int]] = []
        f_prefixes: list[list[int]] = []
        f_targets: list[list[int]] = []
        for row in np.nonzero(recover_rows | retain_rows)[0].tolist():
            target, cont = self._targets[int(documents[row])]
            kept = self._judge_ids(np.asarray(ids[row])[~np.asarray(masks[row], dtype=bool)])
            if recover_rows[row]:
                r_prefixes.append(kept)
                r_targets.append(target)
            if retain_rows[row]:
                f_prefixes.append(kept)
                f_targets.append(cont)
        r_nll, f_nll = recovery_and_continuation_nlls(
            self.judge, r_prefixes, r_targets, f_prefixes, f_targets, self._sep
        )
        ref = np.array([self._reference[int(d)] for d in documents], dtype=np.float64).reshape(-1, 4)
        rec = np.full(rows, np.nan)
        ret = np.full(rows, np.nan)
        rec[recover_rows] = document_recoverability(ref[recover_rows, 0], r_nll, ref[recover_rows, 1])
        ret[retain_rows] = document_recoverability(ref[retain_rows, 2], f_nll, ref[retain_rows, 3])
        return rec, ret

    def gains(
        self, documents: Sequence[int], ids: Sequence[np.ndarray], masks: Sequence[np.ndarray]
    ) -> np.ndarray:
        """``(rows,)`` recoverability of each document from its kept tokens (:meth:`measure`'s ``rec``).

        :param documents: corpus index of each row's document (the cache key).
        :param ids: each document's token ids (reconstructor vocabulary).
        :param masks: each document's mask, ``True`` = masked.
        """
        return self.measure(documents, ids, masks, recover=True, retain=False)[0]


RecoverabilityBonus = JudgeBonus
"""The former name of :class:`JudgeBonus` (recoverability alone: its default weights)."""
