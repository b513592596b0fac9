"""The documents TokenMask-v0 samples episodes from, and their per-document features.

A :class:`DocumentCorpus` is built from a prepared split, a ``.txt``/``.jsonl`` file or folder,
the shipped sample corpus, a list of texts, a list of token-id lists, or a ``datasets.Dataset``.
Texts are tokenized with the reconstructor's tokenizer and cut into documents of at most
``max_tokens`` tokens; documents shorter than ``min_tokens`` are dropped. Features
(:func:`~tokenmask.envs.scoring.document_features`) are computed once per document and kept until
the reconstructor's weights change.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tokenmask.data import SAMPLE_CORPUS, DataError, chunk_ids, load_prepared_split, load_texts
from tokenmask.envs.scoring import document_features, weights_fingerprint
from tokenmask.reconstructors import Reconstructor

CorpusSource = Any
"""A prepared-corpus folder, a text file or folder, ``"sample"``, a list of texts or token-id lists,
a ``datasets.Dataset`` (``input_ids`` or a text column) or a :class:`DocumentCorpus`."""


class DocumentCorpus:
    """Token-id documents with their sources, and a cache of their per-token features.

    :param documents: token ids per document.
    :param sources: where each document came from (default: its index).
    """

    def __init__(self, documents: Sequence[Sequence[int] | np.ndarray], sources: Sequence[str] | None = None) -> None:
        self.documents: list[np.ndarray] = [np.asarray(d, dtype=np.int64).reshape(-1) for d in documents]
        self.sources: list[str] = list(sources) if sources is not None else [str(i) for i in range(len(self.documents))]
        if len(self.sources) != len(self.documents):
            raise ValueError(f"{len(self.sources)} sources for {len(self.documents)} documents; they must match.")
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
        """Tokens in all documents."""
        return int(sum(len(d) for d in self.documents))

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
    ) -> DocumentCorpus:
        """Build a corpus from any supported source (see :data:`CorpusSource`).

        :param reconstructor: its tokenizer encodes texts; ids must lie in its vocabulary.
        :param split: split of a prepared corpus folder.
        :param text_column: JSONL key or dataset column of the text.
        :param max_tokens: longer texts are cut into consecutive documents of this size (None: never cut).
        :param min_tokens: documents shorter than this are dropped.
        :raises DataError: empty corpus, unreadable files, ids outside the vocabulary, or no
            document of at least ``min_tokens`` tokens.
        """
        if isinstance(source, DocumentCorpus):
            return source
        pieces, sources = _read_source(source, reconstructor, split, text_column)
        if not pieces:
            raise DataError(f"The corpus {_describe(source)} is empty. Fix: give at least one non-empty document.")
        documents: list[np.ndarray] = []
        kept_sources: list[str] = []
        longest = 0
        vocab = len(reconstructor.tokenizer)
        for ids, name in zip(pieces, sources):
            longest = max(longest, len(ids))
            if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
                raise DataError(
                    f"Document {name} holds token ids outside the reconstructor's vocabulary [0, {vocab}). "
                    "Fix: tokenize the corpus with the same reconstructor (model_name)."
                )
            chunks = [ids] if max_tokens is None else [np.asarray(c, dtype=np.int64) for c in chunk_ids(ids.tolist(), max_tokens, 1)]
            for c in chunks:
                if len(c) >= min_tokens:
                    documents.append(c)
                    kept_sources.append(name)
        if not documents:
            raise DataError(
                f"All {len(pieces)} documents of {_describe(source)} are shorter than {min_tokens} tokens "
                f"(the longest has {longest}), so none fills one window. "
                "Fix: lower window (or min_tokens), or give longer texts."
            )
        return cls(documents, kept_sources)

    # ------------------------------------------------------------------ features
    def features(self, indices: Sequence[int], reconstructor: Reconstructor, cache: bool = True) -> list[np.ndarray]:
        """Per-token features of documents ``indices`` (computed in one batched pass for those missing).

        :param cache: keep them for later episodes; the cache is dropped when the weights change.
        """
        fingerprint = weights_fingerprint(reconstructor.model)
        if fingerprint != self._fingerprint:
            self._features.clear()
            self._fingerprint = fingerprint
        missing = sorted({int(i) for i in indices if int(i) not in self._features})
        computed = dict(zip(missing, document_features(reconstructor, [self.documents[i] for i in missing]))) if missing else {}
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
) -> tuple[list[np.ndarray], list[str]]:
    """Token ids and source names of every text or document of ``source``."""
    if source is None:
        source = SAMPLE_CORPUS
    if isinstance(source, (str, Path)):
        path = Path(source)
        if (path / "dataset").is_dir():
            dataset = load_prepared_split(path, split)
            return _from_dataset(dataset, reconstructor, text_column, f"{path}:{split}")
        records = load_texts(source, text_column)
        texts = [r["text"] for r in records]
        return [_encode(reconstructor, t) for t in texts], [r["source"] for r in records]
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
        return [], []
    if all(isinstance(x, str) for x in items):
        return [_encode(reconstructor, t) for t in items if t.strip()], [str(i) for i, t in enumerate(items) if t.strip()]
    try:
        ids = [np.asarray(x, dtype=np.int64).reshape(-1) for x in items]
    except (TypeError, ValueError) as exc:
        raise DataError(
            "A corpus list must hold only texts (str) or only token-id sequences (ints). "
            f"Got {type(items[0]).__name__} items that are neither. Fix: pass texts or ids."
        ) from exc
    return [d for d in ids if len(d)], [str(i) for i, d in enumerate(ids) if len(d)]


def _from_dataset(dataset: Any, reconstructor: Reconstructor, text_column: str, name: str) -> tuple[list[np.ndarray], list[str]]:
    columns = list(dataset.column_names)
    sources = [str(s) for s in dataset["source"]] if "source" in columns else [f"{name}:{i}" for i in range(len(dataset))]
    if "input_ids" in columns:
        ids = [np.asarray(x, dtype=np.int64) for x in dataset["input_ids"]]
        return [d for d in ids if len(d)], [s for s, d in zip(sources, ids) if len(d)]
    if text_column in columns:
        texts = [str(t) if t is not None else "" for t in dataset[text_column]]
        return [_encode(reconstructor, t) for t in texts if t.strip()], [s for s, t in zip(sources, texts) if t.strip()]
    raise DataError(
        f"The dataset has neither an input_ids column nor a {text_column!r} column (columns: {columns}). "
        "Fix: pass text_column=NAME."
    )


def _encode(reconstructor: Reconstructor, text: str) -> np.ndarray:
    return np.asarray(reconstructor.encode(text), dtype=np.int64)
