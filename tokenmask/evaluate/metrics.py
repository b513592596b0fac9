"""The metrics of docs/evaluation.md: the one implementation, used by ``tokenmask evaluate``, the training
callbacks and the benchmarks.

Setting: a frozen judge (a :class:`~tokenmask.reconstructors.Reconstructor`, loaded without a mask
token or with it excluded from predictions). For each document of at least ``C + T`` judge tokens,
``context`` = its first C tokens and ``continuation`` = the next T (:func:`select_documents`).
``sep`` = the tokens of ``"\\n\\n"``. NLLs are in nats (float32 log-softmax), summed over tokens:

* ``R(p) = NLL(context | BOS + p + sep)`` and ``F(p) = NLL(continuation | BOS + p)``;
* ``rate = 1 - Σ len(compressed ids) / Σ C``, ``rate_error = |rate - r|``;
* ``recoverability = Σ(R(empty) - R(compressed)) / Σ(R(empty) - R(context))``;
* ``retention = Σ(F(empty) - F(compressed)) / Σ(F(empty) - F(context))``;
* ``recon_bits_per_masked``: mean ``-log2 p`` of the original token at masked positions;
  ``recon_top1``: fraction of masked tokens the reconstructor's argmax gets right.

Every corpus figure is a ratio of sums over documents, never a mean of per-document ratios.
The judge NLLs (:func:`recovery_nlls`, :func:`continuation_nlls`, :func:`separator_ids`,
:func:`document_recoverability`) are defined in :mod:`tokenmask.reconstructors.judge`, below both
this module and the env's recoverability bonus, and re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tokenmask.reconstructors import MaskMode, Reconstructor
from tokenmask.reconstructors.judge import SEP_TEXT as SEP_TEXT  # re-exported: the judge NLLs' old home
from tokenmask.reconstructors.judge import TokenIds, Values, continuation_nlls, recovery_nlls, separator_ids
from tokenmask.reconstructors.judge import document_recoverability as document_recoverability


@dataclass
class EvalDocument:
    """One evaluation document: the first C judge tokens (``context``) and the next T (``continuation``).

    :param context: context ids (no BOS).
    :param continuation: continuation ids.
    :param text: the decoded context, what text compressors receive.
    :param source: where the document came from.
    """

    context: list[int]
    continuation: list[int]
    text: str
    source: str = ""


def select_documents(
    texts: Sequence[str],
    judge: Reconstructor,
    context_tokens: int = 256,
    continuation_tokens: int = 64,
    max_documents: int | None = 30,
    sources: Sequence[str] | None = None,
    offsets: Sequence[int] = (0,),
) -> list[EvalDocument]:
    """The first ``max_documents`` texts with at least ``C + T`` judge tokens, cut into context and continuation.

    :param texts: the corpus, in order.
    :param judge: whose tokenizer defines tokens.
    :param context_tokens: C.
    :param continuation_tokens: T.
    :param max_documents: how many documents (windows, with ``offsets``) to keep (``None``: all long enough).
    :param sources: optional source name per text.
    :param offsets: token offsets of each text's windows, in order: a window ``[o, o + C + T)`` is cut at
        every offset that fits (its source gains ``@o`` when ``o > 0``). The default is the evaluation's one
        window per text; more offsets give more windows for training on judged candidates.
    :raises ValueError: if C or T is not positive, an offset is negative, or no text is long enough.
    """
    if context_tokens < 1 or continuation_tokens < 1:
        raise ValueError(f"C and T must be >= 1, got C={context_tokens}, T={continuation_tokens}.")
    if max_documents is not None and max_documents < 1:
        raise ValueError(f"max_documents must be >= 1, got {max_documents}.")
    if not offsets or any(o < 0 for o in offsets):
        raise ValueError(f"offsets must be one or more token offsets >= 0, got {list(offsets)}.")
    need = context_tokens + continuation_tokens
    docs: list[EvalDocument] = []
    for i, text in enumerate(texts):
        ids = judge.encode(text)
        name = str(sources[i]) if sources is not None else str(i)
        for o in offsets:
            if o + need > len(ids):
                continue
            context = ids[o : o + context_tokens]
            docs.append(
                EvalDocument(
                    context=context,
                    continuation=ids[o + context_tokens : o + need],
                    text=judge.decode(context),
                    source=f"{name}@{o}" if o else name,
                )
            )
            if max_documents is not None and len(docs) >= max_documents:
                return docs
    if not docs:
        raise ValueError(
            f"No document of the corpus has C+T = {need} judge tokens ({len(texts)} texts read). "
            "Fix: lower --context_tokens/--continuation_tokens or use a corpus of longer documents."
        )
    return docs


def select_corpus_documents(
    corpus: str,
    split: str,
    judge: Reconstructor,
    context_tokens: int = 256,
    continuation_tokens: int = 64,
    max_documents: int | None = 30,
    text_column: str = "text",
) -> list[EvalDocument]:
    """:func:`select_documents` of a corpus's ``split`` (:func:`tokenmask.data.iter_records`), each document named by
    its text's source (what the bar's bootstrap draws together)."""
    from tokenmask.data import iter_records

    records = iter_records(corpus, split=split, text_column=text_column)
    return select_documents(
        [r["text"] for r in records],
        judge,
        context_tokens,
        continuation_tokens,
        max_documents,
        sources=[r["source"] for r in records],
    )


def information_ratio(empty: Values, compressed: Values, full: Values) -> float:
    """``Σ(empty - compressed) / Σ(empty - full)``: recoverability (R values) or retention (F values).

    1 = the compressed prefix helps as much as the full context, 0 = as little as nothing.
    Returns ``nan`` when the full context does not help at all (zero denominator).
    """
    empty_a, comp_a, full_a = (np.asarray(x, dtype=np.float64) for x in (empty, compressed, full))
    if not (empty_a.shape == comp_a.shape == full_a.shape):
        raise ValueError(
            f"Shapes differ: empty {empty_a.shape}, compressed {comp_a.shape}, full {full_a.shape}."
        )
    denominator = float(np.sum(empty_a - full_a))
    if denominator == 0.0:
        return math.nan
    return float(np.sum(empty_a - comp_a)) / denominator


def compression_rate(compressed_lengths: Sequence[int], context_lengths: Sequence[int]) -> float:
    """``1 - Σ compressed / Σ context``: the fraction of context tokens (or positions) removed."""
    total = int(np.sum(context_lengths))
    if total <= 0:
        raise ValueError("The contexts hold no token; a rate needs at least one.")
    return 1.0 - float(np.sum(compressed_lengths)) / total


@dataclass
class ReferenceNLLs:
    """Per-document judge NLLs that do not depend on the method: ``R(empty)``, ``R(context)``, ``F(empty)``, ``F(context)``.

    The ``recover_*`` arrays may cover only the first documents (docs/evaluation.md's figures use the
    first 30 documents for recoverability and the first 60 for retention); every method's
    recoverability is then computed on those same first documents.
    """

    recover_empty: np.ndarray
    recover_full: np.ndarray
    continue_empty: np.ndarray
    continue_full: np.ndarray

    @property
    def recover_documents(self) -> int:
        """How many (first) documents recoverability is computed on."""
        return len(self.recover_empty)

    @classmethod
    def compute(
        cls,
        judge: Reconstructor,
        docs: Sequence[EvalDocument],
        sep: TokenIds | None = None,
        recover_documents: int | None = None,
    ) -> ReferenceNLLs:
        """One batched judge pass per quantity.

        :param judge: the judge.
        :param docs: the documents.
        :param sep: separator ids (default ``"\\n\\n"``).
        :param recover_documents: compute the recoverability references on the first N documents
            only (``None``: all).
        """
        sep = separator_ids(judge) if sep is None else sep
        n_recover = len(docs) if recover_documents is None else min(len(docs), recover_documents)
        if n_recover < 1:
            raise ValueError(f"recover_documents must be >= 1, got {recover_documents}.")
        contexts = [d.context for d in docs]
        continuations = [d.continuation for d in docs]
        empty: list[list[int]] = [[] for _ in docs]
        return cls(
            recover_empty=recovery_nlls(judge, empty[:n_recover], contexts[:n_recover], sep),
            recover_full=recovery_nlls(judge, contexts[:n_recover], contexts[:n_recover], sep),
            continue_empty=continuation_nlls(judge, empty, continuations),
            continue_full=continuation_nlls(judge, contexts, continuations),
        )


@dataclass
class Scores:
    """The docs/evaluation.md figures of one method at one requested rate (corpus ratios of sums).

    NaN marks a figure that does not apply (e.g. ``recon_*`` for a method without a keep mask).
    """

    requested_rate: float
    rate: float
    rate_error: float
    recoverability: float
    retention: float
    recon_bits_per_masked: float = math.nan
    recon_top1: float = math.nan
    compress_ms_per_1k_tokens: float = math.nan
    #: every timed call's ``compress_ms_per_1k_tokens`` (its median is the figure above; ``timing_repeats``)
    compress_ms_calls: list[float] = field(default_factory=list)
    documents: int = 0
    recoverability_documents: int = 0
    context_tokens: int = 0
    kept_tokens: int = 0
    extra: dict[str, float] = field(default_factory=dict)
    #: in-model methods: per decoder layer, the fraction of the context's positions (KV entries) kept
    kept_per_layer: list[float] = field(default_factory=list)
    #: per document, ``R(compressed)`` in nats (the first ``recoverability_documents``; for :mod:`.bar`)
    recover_nlls: list[float] = field(default_factory=list)
    #: per document, ``F(compressed)`` in nats (for :mod:`.bar`)
    continue_nlls: list[float] = field(default_factory=list)


def score_compressed_texts(
    judge: Reconstructor,
    docs: Sequence[EvalDocument],
    compressed_texts: Sequence[str],
    requested_rate: float,
    reference: ReferenceNLLs,
    sep: TokenIds | None = None,
) -> Scores:
    """Re-tokenize compressed texts with the judge and compute rate, recoverability and retention.

    :param judge: the judge.
    :param docs: the documents (contexts and continuations).
    :param compressed_texts: per document, the compressor's output text.
    :param requested_rate: the rate the compressor was asked for.
    :param reference: :meth:`ReferenceNLLs.compute` of the same documents and judge.
    :param sep: separator ids (default ``"\\n\\n"``).
    """
    if len(compressed_texts) != len(docs):
        raise ValueError(f"{len(compressed_texts)} compressed texts for {len(docs)} documents.")
    sep = separator_ids(judge) if sep is None else sep
    compressed = [judge.encode(t) if t else [] for t in compressed_texts]
    return score_compressed_ids(judge, docs, compressed, requested_rate, reference, sep)


def score_compressed_ids(
    judge: Reconstructor,
    docs: Sequence[EvalDocument],
    compressed: Sequence[TokenIds],
    requested_rate: float,
    reference: ReferenceNLLs,
    sep: TokenIds | None = None,
) -> Scores:
    """As :func:`score_compressed_texts`, for already re-tokenized compressed ids."""
    sep = separator_ids(judge) if sep is None else sep
    lengths = [len(c) for c in compressed]
    context_lengths = [len(d.context) for d in docs]
    rate = compression_rate(lengths, context_lengths)
    if len(docs) != len(reference.continue_empty):
        raise ValueError(
            f"{len(docs)} documents, but the reference NLLs cover {len(reference.continue_empty)}."
        )
    n_recover = reference.recover_documents
    recover = recovery_nlls(judge, compressed[:n_recover], [d.context for d in docs[:n_recover]], sep)
    cont = continuation_nlls(judge, compressed, [d.continuation for d in docs])
    return Scores(
        requested_rate=float(requested_rate),
        rate=rate,
        rate_error=abs(rate - float(requested_rate)),
        recoverability=information_ratio(reference.recover_empty, recover, reference.recover_full),
        retention=information_ratio(reference.continue_empty, cont, reference.continue_full),
        documents=len(docs),
        recoverability_documents=n_recover,
        context_tokens=int(sum(context_lengths)),
        kept_tokens=int(sum(lengths)),
        recover_nlls=[float(x) for x in recover],
        continue_nlls=[float(x) for x in cont],
    )


def score_in_model(
    context_nlls: Values,
    continuation_nlls_: Values,
    positions_kept: Sequence[int],
    positions_total: Sequence[int],
    requested_rate: float,
    reference: ReferenceNLLs,
    context_tokens: int,
    layer_kept: Sequence[Sequence[int]] = (),
    layer_total: Sequence[Sequence[int]] = (),
) -> Scores:
    """Scores of an in-model compressor from its per-document NLLs and kept KV entries.

    :param context_nlls: per document, ``R(compressed)`` (only the first ``reference.recover_documents`` are used).
    :param continuation_nlls_: per document, ``F(compressed)``.
    :param positions_kept: per document, KV entries kept, summed over all layers.
    :param positions_total: per document, KV entries of the uncompressed context, summed over all layers.
    :param requested_rate: the rate asked for.
    :param reference: the judge's reference NLLs of the same documents.
    :param context_tokens: Σ C over the documents (reported beside the figures).
    :param layer_kept: per document, the entries kept per layer (empty: not reported).
    :param layer_total: per document, the entries per layer uncompressed.
    """
    rate = compression_rate(positions_kept, positions_total)
    recover = np.asarray(context_nlls, dtype=np.float64)[: reference.recover_documents]
    kept_per_layer: list[float] = []
    if layer_kept and all(len(k) for k in layer_kept):
        kept_sum = np.sum(np.asarray(layer_kept, dtype=np.float64), axis=0)
        total_sum = np.sum(np.asarray(layer_total, dtype=np.float64), axis=0)
        kept_per_layer = [float(k / t) if t else 1.0 for k, t in zip(kept_sum, total_sum)]
    return Scores(
        requested_rate=float(requested_rate),
        rate=rate,
        rate_error=abs(rate - float(requested_rate)),
        recoverability=information_ratio(reference.recover_empty, recover, reference.recover_full),
        retention=information_ratio(reference.continue_empty, continuation_nlls_, reference.continue_full),
        documents=len(context_nlls),
        recoverability_documents=reference.recover_documents,
        context_tokens=context_tokens,
        kept_tokens=int(sum(positions_kept)),
        kept_per_layer=kept_per_layer,
        recover_nlls=recover.tolist(),
        continue_nlls=[float(x) for x in continuation_nlls_],
    )


def reconstruction_quality(
    reconstructor: Reconstructor,
    contexts: Sequence[TokenIds],
    keep_masks: Sequence[np.ndarray],
    mode: MaskMode = "delete",
) -> tuple[float, float]:
    """``(recon_bits_per_masked, recon_top1)`` over all masked tokens of all contexts.

    ``recon_bits_per_masked`` = Σ ``-log2 p(x_i | masked prefix)`` over masked tokens / their
    number (the bits of :meth:`Reconstructor.token_bits`); ``recon_top1`` = the fraction of masked
    tokens equal to the reconstructor's most probable token at their position. One forward pass
    per batch gives both. Both are ``nan`` when nothing is masked.

    :param reconstructor: the method's reconstructor (or the judge).
    :param contexts: per document, context ids.
    :param keep_masks: per document, ``True`` = kept.
    :param mode: ``delete`` or ``placeholder`` (how the reconstructor reads masked tokens).
    """
    masked = [~np.asarray(k, dtype=bool) for k in keep_masks]
    count = int(sum(int(m.sum()) for m in masked))
    if count == 0:
        return math.nan, math.nan
    inputs, positions, targets = [], [], []
    for ids, mask in zip(contexts, masked, strict=True):
        inp, pos = reconstructor.masked_inputs(list(ids), mask.tolist(), mode)
        chosen = np.flatnonzero(mask)
        inputs.append(inp)
        positions.append([pos[i] for i in chosen])
        targets.append([int(ids[int(i)]) for i in chosen])
    nats, correct = masked_predictions(reconstructor, inputs, positions, targets)
    return nats / math.log(2.0) / count, correct / count


def masked_predictions(
    reconstructor: Reconstructor,
    inputs: Sequence[TokenIds],
    positions: Sequence[Sequence[int]],
    targets: Sequence[TokenIds],
) -> tuple[float, int]:
    """``(Σ -log p(target), number of targets that are the argmax)`` at the scored positions.

    Reads the inputs as :meth:`Reconstructor.gather_log_probs` does (right-padded batches of
    ``batch_size``, the mask token excluded, only the scored positions through the LM head), and
    also takes the argmax of the same distributions, in the same forward pass
    (:meth:`Reconstructor.gather_log_probs_top1`).
    """
    logps, top1 = reconstructor.gather_log_probs_top1(inputs, positions, targets)
    nats = -sum(float(lp.double().sum()) for lp in logps)
    correct = sum(int(hit.sum()) for hit in top1)
    return nats, correct
