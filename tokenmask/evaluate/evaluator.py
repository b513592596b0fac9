""":class:`Evaluator`: runs any method at any rate on a fixed set of documents and returns its :class:`Scores`.

The judge's reference NLLs (``R(empty)``, ``R(context)``, ``F(empty)``, ``F(context)``) are
computed once per document set; each method x rate then costs one compression and two batched
judge passes (plus one reconstructor pass for masking methods). ``tokenmask evaluate`` and the
training callbacks both use it, so the figures are always computed the same way.

Example::

    judge = Reconstructor.load("default", add_mask_token=False)
    docs = select_documents(texts, judge, 256, 64, max_documents=30)
    evaluator = Evaluator(judge, docs)
    scores = evaluator.evaluate(RandomDrop(judge.tokenizer), rate=0.5)
    print(scores.recoverability, scores.retention)

:meth:`Evaluator.compress_and_score` returns the compressed outputs with the scores (the training
callbacks log samples and replay the masks from them).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from tokenmask.evaluate.compressor import (
    CompressedContext,
    Compressor,
    InModelCompressor,
    Method,
    check_rate,
    resolve_timing_repeats,
    resolve_warmup,
)
from tokenmask.evaluate.metrics import (
    EvalDocument,
    ReferenceNLLs,
    Scores,
    reconstruction_quality,
    score_compressed_texts,
    score_in_model,
    separator_ids,
)
from tokenmask.reconstructors import Reconstructor
from tokenmask.timing import timed_call

T = TypeVar("T")


@dataclass
class MethodEvaluation:
    """One method at one rate: its scores and, for a text compressor, what it made of each document.

    :param scores: the figures of docs/evaluation.md.
    :param outputs: per document, the :class:`CompressedContext` (its ``keep`` mask for a masking
        method); empty for an in-model method.
    """

    scores: Scores
    outputs: list[CompressedContext] = field(default_factory=list)

    @property
    def keep_masks(self) -> list[np.ndarray] | None:
        """Per document, the kept tokens (``True`` = kept), or ``None`` unless every output has a mask."""
        masks = [o.keep for o in self.outputs]
        if not masks or any(m is None for m in masks):
            return None
        return [np.asarray(m) for m in masks]


class Evaluator:
    """Scores methods on one document set with one judge.

    :param judge: the frozen judge (load it with ``add_mask_token=False``, or keep the mask token
        excluded from predictions, its default).
    :param docs: documents from :func:`~tokenmask.evaluate.metrics.select_documents`.
    :param recon_metrics: also compute ``recon_bits_per_masked`` / ``recon_top1`` for masking methods
        (with the method's reconstructor, or the judge in delete mode when it has none).
    :param warmup: the untimed call before each timed one (:data:`~tokenmask.evaluate.compressor.WARMUPS`): ``"one"`` (or ``True``) compresses the
        first document, ``"all"`` every document, so a batched method's timed call finds its kernels and shapes warm
        too (twice the compression time), ``"none"`` (or ``False``) nothing; ``"auto"`` (the default) is ``"all"``
        when the judge is on a GPU and ``"one"`` elsewhere (:func:`~tokenmask.evaluate.compressor.resolve_warmup`).
    :param recover_documents: compute recoverability on the first N documents only (``None``: all);
        rate, retention and the ``recon_*`` figures use every document.
    :param timing_repeats: timed calls per method and rate, each with the device synchronised; the median is the
        reported time and the first call's outputs are scored. ``"auto"`` (the default): three on a GPU, one
        elsewhere (:func:`~tokenmask.evaluate.compressor.resolve_timing_repeats`).
    """

    def __init__(
        self,
        judge: Reconstructor,
        docs: Sequence[EvalDocument],
        recon_metrics: bool = True,
        warmup: bool | str = "auto",
        recover_documents: int | None = None,
        timing_repeats: int | str = "auto",
    ) -> None:
        if not docs:
            raise ValueError("The evaluator needs at least one document.")
        warmup = resolve_warmup(warmup, judge.device.type)
        self.timing_repeats = resolve_timing_repeats(timing_repeats, judge.device.type)
        if judge.mask_token_id is not None and not judge.exclude_mask_from_predictions:
            raise ValueError(
                "The judge predicts its added mask token. Fix: load it with add_mask_token=False "
                "or keep exclude_mask_from_predictions=True."
            )
        self.judge = judge
        self.docs = list(docs)
        self.sep = separator_ids(judge)
        self.reference = ReferenceNLLs.compute(judge, self.docs, self.sep, recover_documents)
        self.recon_metrics = recon_metrics
        self.warmup: str = warmup

    def _warm_documents(self) -> int:
        """How many of the first documents the untimed call before a timed one compresses (:attr:`warmup`)."""
        return {"one": 1, "all": len(self.docs), "none": 0}[self.warmup]

    def _timed_calls(self, call: Callable[[], T]) -> list[tuple[T, float]]:
        """:attr:`timing_repeats` calls of ``call``, each ``(result, wall seconds)`` on a synchronised clock."""
        return [timed_call(self.judge.device, call) for _ in range(self.timing_repeats)]

    @property
    def context_tokens(self) -> int:
        """Σ C over the documents."""
        return sum(len(d.context) for d in self.docs)

    def evaluate(self, method: Method, rate: float, seed: int = 0) -> Scores:
        """Compress every document at ``rate`` with ``method`` and score it.

        :param method: a :class:`Compressor` or an :class:`InModelCompressor`.
        :param rate: requested fraction removed, in ``[0, 1)``.
        :param seed: seed passed to the method.
        """
        return self.compress_and_score(method, rate, seed).scores

    def compress_and_score(self, method: Method, rate: float, seed: int = 0) -> MethodEvaluation:
        """As :meth:`evaluate`, and return the compressed outputs with the scores.

        :param method: a :class:`Compressor` or an :class:`InModelCompressor`.
        :param rate: requested fraction removed, in ``[0, 1)``.
        :param seed: seed passed to the method.
        """
        check_rate(rate)
        if isinstance(method, Compressor):
            return self._evaluate_text(method, rate, seed)
        if isinstance(method, InModelCompressor):
            return MethodEvaluation(self._evaluate_in_model(method, rate, seed))
        raise TypeError(f"{type(method).__name__} is neither a Compressor nor an InModelCompressor.")

    def _evaluate_text(self, method: Compressor, rate: float, seed: int) -> MethodEvaluation:
        contexts = [d.context for d in self.docs]
        texts = [d.text for d in self.docs]
        if warm := self._warm_documents():
            method.compress(contexts[:warm], rate, texts=texts[:warm], seed=seed)
        calls = self._timed_calls(lambda: method.compress(contexts, rate, texts=texts, seed=seed))
        outputs = calls[0][0]
        if len(outputs) != len(contexts):
            raise ValueError(f"{method.name} returned {len(outputs)} outputs for {len(contexts)} contexts.")
        scores = score_compressed_texts(
            self.judge, self.docs, [o.text for o in outputs], rate, self.reference, self.sep
        )
        self._set_times(scores, [seconds for _, seconds in calls])
        masks = [o.keep for o in outputs]
        if self.recon_metrics and all(m is not None for m in masks):
            recon = method.reconstructor or self.judge
            mode = method.mask_mode if method.reconstructor is not None else "delete"
            bits, top1 = reconstruction_quality(recon, contexts, [np.asarray(m) for m in masks], mode)
            scores.recon_bits_per_masked, scores.recon_top1 = bits, top1
        return MethodEvaluation(scores, list(outputs))

    def _evaluate_in_model(self, method: InModelCompressor, rate: float, seed: int) -> Scores:
        contexts = [d.context for d in self.docs]
        continuations = [d.continuation for d in self.docs]
        if warm := self._warm_documents():
            method.score(self.judge, contexts[:warm], continuations[:warm], self.sep, rate, seed=seed)
        calls = self._timed_calls(
            lambda: method.score(self.judge, contexts, continuations, self.sep, rate, seed=seed)
        )
        result = calls[0][0]
        if len(result.scores) != len(contexts):
            raise ValueError(
                f"{method.name} returned {len(result.scores)} scores for {len(contexts)} documents."
            )
        scores = score_in_model(
            [s.context_nll for s in result.scores],
            [s.continuation_nll for s in result.scores],
            [s.positions_kept for s in result.scores],
            [s.positions_total for s in result.scores],
            rate,
            self.reference,
            self.context_tokens,
            [s.layer_kept for s in result.scores],
            [s.layer_total for s in result.scores],
        )
        # an in-model method may time its own compressing pre-fill (the judge's scoring is not compression)
        self._set_times(
            scores, [r.compress_seconds if r.compress_seconds is not None else t for r, t in calls]
        )
        return scores

    def _set_times(self, scores: Scores, seconds: list[float]) -> None:
        """Each timed call's ms per 1k context tokens into ``scores``, their median as the reported figure."""
        scores.compress_ms_calls = [t * 1e6 / self.context_tokens for t in seconds]
        scores.compress_ms_per_1k_tokens = statistics.median(scores.compress_ms_calls)
