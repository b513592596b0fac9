"""The documents TokenMask-v0 samples episodes from, and their per-document features.

A :class:`DocumentCorpus` is built from a prepared split, a ``.txt``/``.jsonl`` file or folder,
the shipped sample corpus, a list of texts, a list of token-id lists, or a ``datasets.Dataset``.
Texts are tokenized with the reconstructor's tokenizer and cut into documents of at most
``max_tokens`` tokens, at character boundaries (a document never ends inside a character that
takes several tokens, see :func:`tokenmask.data.character_boundaries`); documents shorter than
``min_tokens`` are dropped. With ``continuation_tokens = T > 0`` texts are cut into chunks of
``max_tokens + T`` tokens instead: the document is the chunk's first part (at most ``max_tokens``
tokens, what the policy sees), its *continuation* the ``T`` tokens after it (the judge's retention
target, never observed), and chunks without ``min_tokens + T`` tokens are dropped. Features
(:func:`~tokenmask.envs.scoring.document_features`) are computed once per document and kept until
the reconstructor's weights change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tokenmask.data import (
    MAX_CUT_BACKOFF,
    SAMPLE_CORPUS,
    DataError,
    character_boundaries,
    chunk_ids,
    is_prepared_corpus,
    load_prepared_split,
    load_texts,
)
from tokenmask.envs.scoring import document_features, position_features, weights_fingerprint
from tokenmask.reconstructors import Reconstructor

CorpusSource = Any
"""A prepared-corpus folder, a text file or folder, ``"sample"``, a list of texts or token-id lists,
a ``datasets.Dataset`` (``input_ids`` or a text column) or a :class:`DocumentCorpus`."""


CutTest = Callable[[int], bool]
"""``cut_ok(i)``: whether a piece of a text's ids may end just before token ``i`` (a character boundary)."""


class DocumentCorpus:
    """Token-id documents with their sources and continuations, and a cache of their per-token features.

    :param documents: token ids per document.
    :param sources: where each document came from (default: its index).
    :param continuations: per document, the ids that follow it in its text (the judge's retention
        target; never observed). Default: none (empty).
    """

    def __init__(
        self,
        documents: Sequence[Sequence[int] | np.ndarray],
        sources: Sequence[str] | None = None,
        continuations: Sequence[Sequence[int] | np.ndarray] | None = None,
    ) -> None:
        self.documents: list[np.ndarray] = [np.asarray(d, dtype=np.int64).reshape(-1) for d in documents]
        self.sources: list[str] = (
            list(sources) if sources is not None else [str(i) for i in range(len(self.documents))]
        )
        if len(self.sources) != len(self.documents):
            raise ValueError(
                f"{len(self.sources)} sources for {len(self.documents)} documents; they must match."
            )
        empty = np.zeros(0, dtype=np.int64)
        self.continuations: list[np.ndarray] = (
            [np.asarray(c, dtype=np.int64).reshape(-1) for c in continuations]
            if continuations is not None
            else [empty] * len(self.documents)
        )
        if len(self.continuations) != len(self.documents):
            raise ValueError(
                f"{len(self.continuations)} continuations for {len(self.documents)} documents; they must match."
            )
        self._features: dict[int, np.ndarray] = {}
        self._fingerprint: tuple[int, int, int] | None = None

    def __len__(self) -> int:
        return len(self.documents)

    @property
    def max_length(self) -> int:
        """Tokens in the longest document."""
        return max((len(d) for d in self.documents), default=0)

    @property
    def num_tokens(self) -> int:
        """Tokens in all documents (continuations not counted)."""
        return int(sum(len(d) for d in self.documents))

    @property
    def continuation_tokens(self) -> int:
        """Tokens of every document's continuation (0: none); :meth:`build` gives them all the same length."""
        return min((len(c) for c in self.continuations), default=0)

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        source: CorpusSource,
        reconstructor: Reconstructor,
        split: str = "train",
        text_column: str = "text",
        max_tokens: int | None = 512,
        min_tokens: int = 1,
        continuation_tokens: int = 0,
    ) -> DocumentCorpus:
        """Build a corpus from any supported source (see :data:`CorpusSource`).

        :param reconstructor: its tokenizer encodes texts; ids must lie in its vocabulary.
        :param split: split of a prepared corpus folder.
        :param text_column: JSONL key or dataset column of the text.
        :param max_tokens: longer texts are cut into consecutive documents of at most this size, at
            character boundaries (None: never cut).
        :param min_tokens: documents shorter than this are dropped.
        :param continuation_tokens: ``T``: each document keeps the ``T`` ids that follow it as its
            continuation; texts are cut into chunks of ``max_tokens + T``, the document ends where
            the chunk's last ``T`` ids begin (moved back to a character boundary for texts), and a
            chunk without ``min_tokens + T`` ids is dropped. A text never cut (``max_tokens=None``,
            or an item of a list of token ids no longer than ``max_tokens + T``) ends with its
            continuation: its last ``T`` ids.
        :raises DataError: empty corpus, unreadable files, ids outside the vocabulary, or no
            document of at least ``min_tokens`` tokens (plus ``T`` for its continuation).
        """
        if isinstance(source, DocumentCorpus):
            if continuation_tokens and any(len(c) != continuation_tokens for c in source.continuations):
                raise DataError(
                    f"The DocumentCorpus given has no continuation of {continuation_tokens} tokens for every document. "
                    "Fix: build it with DocumentCorpus.build(..., continuation_tokens=T), or pass the texts instead."
                )
            return source
        if continuation_tokens < 0:
            raise ValueError(f"continuation_tokens must be >= 0, got {continuation_tokens}.")
        pieces, sources, cut_tests = _read_source(source, reconstructor, split, text_column)
        if not pieces:
            raise DataError(
                f"The corpus {_describe(source)} is empty. Fix: give at least one non-empty document."
            )
        documents: list[np.ndarray] = []
        continuations: list[np.ndarray] = []
        kept_sources: list[str] = []
        longest = 0
        vocab = len(reconstructor.tokenizer)
        for ids, name, cut_ok in zip(pieces, sources, cut_tests):
            longest = max(longest, len(ids))
            if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
                raise DataError(
                    f"Document {name} holds token ids outside the reconstructor's vocabulary [0, {vocab}). "
                    "Fix: tokenize the corpus with the same reconstructor (model_name)."
                )
            for document, continuation in _cut(ids, cut_ok, reconstructor, max_tokens, continuation_tokens):
                if len(document) >= min_tokens and len(continuation) == continuation_tokens:
                    documents.append(document)
                    continuations.append(continuation)
                    kept_sources.append(name)
        if not documents:
            need = (
                f"{min_tokens} tokens"
                if not continuation_tokens
                else (
                    f"{min_tokens + continuation_tokens} tokens (min_tokens {min_tokens} + continuation_tokens {continuation_tokens})"
                )
            )
            fix = "lower window (or min_tokens)" + (" or continuation_tokens" if continuation_tokens else "")
            raise DataError(
                f"All {len(pieces)} documents of {_describe(source)} are shorter than {need} "
                f"(the longest has {longest}), so none fills one window{' and its continuation' if continuation_tokens else ''}. "
                f"Fix: {fix}, or give longer texts."
            )
        return cls(documents, kept_sources, continuations if continuation_tokens else None)

    # ------------------------------------------------------------------ features
    def features(
        self, indices: Sequence[int], reconstructor: Reconstructor, cache: bool = True, kind: str = "lm"
    ) -> list[np.ndarray]:
        """Per-token features of documents ``indices`` (computed in one batched pass for those missing).

        :param cache: keep them for later episodes; the cache is dropped when the weights change.
        :param kind: ``"lm"`` (the reconstructor's pass, :func:`document_features`) or ``"position"``
            (:func:`position_features`: no LM pass, nothing cached).
        """
        if kind == "position":
            return position_features([self.documents[int(i)] for i in indices])
        fingerprint = weights_fingerprint(reconstructor.model)
        if fingerprint != self._fingerprint:
            self._features.clear()
            self._fingerprint = fingerprint
        missing = sorted({int(i) for i in indices if int(i) not in self._features})
        computed = (
            dict(zip(missing, document_features(reconstructor, [self.documents[i] for i in missing])))
            if missing
            else {}
        )
        if cache:
            self._features.update(computed)
        return [self._features[int(i)] if int(i) in self._features else computed[int(i)] for i in indices]

    def clear_features(self) -> None:
        """Forget cached features (they are recomputed on demand)."""
        self._features.clear()

    def precompute_features(self, reconstructor: Reconstructor, progress: bool = False) -> None:
        """Compute and cache the features of every document now (e.g. before timing the env)."""
        from tqdm.auto import tqdm

        step = max(1, reconstructor.batch_size)
        for start in tqdm(range(0, len(self), step), desc="document features", disable=not progress):
            self.features(range(start, min(len(self), start + step)), reconstructor)


def _describe(source: CorpusSource) -> str:
    if isinstance(source, (str, Path)):
        return repr(str(source))
    return f"<{type(source).__name__}>"


def _read_source(
    source: CorpusSource, reconstructor: Reconstructor, split: str, text_column: str
) -> tuple[list[np.ndarray], list[str], list[CutTest | None]]:
    """Token ids, source names and (for texts) character-boundary tests of every text or document of ``source``."""
    if source is None:
        source = SAMPLE_CORPUS
    if isinstance(source, (str, Path)):
        path = Path(source)
        if is_prepared_corpus(path):
            dataset = load_prepared_split(path, split)
            return _from_dataset(dataset, reconstructor, text_column, f"{path}:{split}")
        records = load_texts(source, text_column)
        return _encode_texts(reconstructor, [r["text"] for r in records], [r["source"] for r in records])
    if hasattr(source, "column_names") and hasattr(source, "__getitem__"):
        return _from_dataset(source, reconstructor, text_column, "dataset")
    if isinstance(source, np.ndarray) and source.ndim == 2:
        source = list(source)
    if not isinstance(source, Sequence) and not isinstance(source, np.ndarray):
        raise DataError(
            f"Cannot read a corpus from {type(source).__name__}. Fix: pass a path, 'sample', a list of texts, "
            "a list of token-id lists, a datasets.Dataset or a DocumentCorpus."
        )
    items = list(source)
    if not items:
        return [], [], []
    if all(isinstance(x, str) for x in items):
        return _encode_texts(reconstructor, items, [str(i) for i in range(len(items))])
    try:
        ids = [np.asarray(x, dtype=np.int64).reshape(-1) for x in items]
    except (TypeError, ValueError) as exc:
        raise DataError(
            "A corpus list must hold only texts (str) or only token-id sequences (ints). "
            f"Got {type(items[0]).__name__} items that are neither. Fix: pass texts or ids."
        ) from exc
    kept = [i for i, d in enumerate(ids) if len(d)]
    return [ids[i] for i in kept], [str(i) for i in kept], [None] * len(kept)


def _from_dataset(
    dataset: Any, reconstructor: Reconstructor, text_column: str, name: str
) -> tuple[list[np.ndarray], list[str], list[CutTest | None]]:
    columns = list(dataset.column_names)
    sources = (
        [str(s) for s in dataset["source"]]
        if "source" in columns
        else [f"{name}:{i}" for i in range(len(dataset))]
    )
    if "input_ids" in columns:
        ids = [np.asarray(x, dtype=np.int64) for x in dataset["input_ids"]]
        kept = [i for i, d in enumerate(ids) if len(d)]
        return [ids[i] for i in kept], [sources[i] for i in kept], [None] * len(kept)
    if text_column in columns:
        texts = [str(t) if t is not None else "" for t in dataset[text_column]]
        return _encode_texts(reconstructor, texts, sources)
    raise DataError(
        f"The dataset has neither an input_ids column nor a {text_column!r} column (columns: {columns}). "
        "Fix: pass text_column=NAME."
    )


def _encode_texts(
    reconstructor: Reconstructor, texts: Sequence[str], sources: Sequence[str]
) -> tuple[list[np.ndarray], list[str], list[CutTest | None]]:
    """Ids of the non-blank texts with their sources and character-boundary tests."""
    pieces: list[np.ndarray] = []
    names: list[str] = []
    tests: list[CutTest | None] = []
    for text, name in zip(texts, sources):
        if not text.strip():
            continue
        ids, cut_ok = character_boundaries(reconstructor.tokenizer, text)
        pieces.append(np.asarray(ids, dtype=np.int64))
        names.append(name)
        tests.append(cut_ok)
    return pieces, names, tests


def _ids_boundaries(reconstructor: Reconstructor, ids: np.ndarray) -> CutTest | None:
    """The character-boundary test of token ids that are the tokenizer's own encoding of their text (else None)."""
    again, cut_ok = character_boundaries(reconstructor.tokenizer, reconstructor.decode(ids.tolist()))
    return cut_ok if np.array_equal(np.asarray(again, dtype=np.int64), ids) else None


def _cut(
    ids: np.ndarray,
    cut_ok: CutTest | None,
    reconstructor: Reconstructor,
    max_tokens: int | None,
    continuation_tokens: int,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(document, continuation)`` pieces of one text's ids (see :meth:`DocumentCorpus.build`)."""
    span = None if max_tokens is None else max_tokens + continuation_tokens
    if span is not None and len(ids) > span and cut_ok is None:
        cut_ok = _ids_boundaries(
            reconstructor, ids
        )  # ids without their text: cut cleanly where they re-encode
    chunks = [ids.tolist()] if span is None else chunk_ids(ids.tolist(), span, 1, cut_ok)
    pieces: list[tuple[np.ndarray, np.ndarray]] = []
    start = 0
    for chunk in chunks:
        end = len(chunk) - continuation_tokens
        if continuation_tokens and cut_ok is not None:  # the document ends at a character boundary too
            for candidate in range(end, max(0, end - MAX_CUT_BACKOFF), -1):
                if cut_ok(start + candidate):
                    end = candidate
                    break
        array = np.asarray(chunk, dtype=np.int64)
        pieces.append((array[: max(end, 0)], array[max(end, 0) : max(end, 0) + continuation_tokens]))
        start += len(chunk)
    return pieces
