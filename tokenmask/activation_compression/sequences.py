"""Token sequences for activation compression: the corpus cut into BOS-started pieces.

Shared by training (:mod:`.training`) and measuring (:mod:`.evaluation`), so it sits below both.
Batches of these sequences are padded with :func:`tokenmask.reconstructors.pad_batch`.
"""

from __future__ import annotations

from tokenmask.data import DataError, chunk_ids, is_prepared_corpus, load_prepared_split, load_texts
from tokenmask.reconstructors import Reconstructor

MIN_SEQUENCE_TOKENS = 16
"""Shortest piece kept, in tokens (BOS excluded): shorter tails of documents are dropped."""


def load_sequences(
    reconstructor: Reconstructor,
    data_path: str,
    split: str,
    max_length: int,
    max_sequences: int | None = None,
    text_column: str = "text",
) -> list[list[int]]:
    """Token sequences of at most ``max_length`` ids, each starting with BOS.

    :param reconstructor: whose tokenizer and BOS are used.
    :param data_path: a prepared corpus folder (its ``split``), a ``.jsonl``/``.txt`` file or folder,
        or ``"sample"``.
    :param split: split of a prepared corpus; for plain files ``train`` is the first nine tenths of
        the texts and any other split the last tenth.
    :param max_length: tokens per sequence, BOS included.
    :param max_sequences: keep at most this many.
    :param text_column: JSONL key of the text.
    :raises DataError: when no sequence of at least 16 tokens can be made.
    """
    if is_prepared_corpus(data_path):
        documents = [list(ids) for ids in load_prepared_split(data_path, split)["input_ids"]]
    else:
        texts = [r["text"] for r in load_texts(data_path, text_column)]
        cut = len(texts) - max(1, len(texts) // 10) if len(texts) > 1 else len(texts)
        # plain files: the last tenth of the texts is held out for validation and test
        texts = texts[:cut] if split == "train" else (texts[cut:] or texts)
        documents = [reconstructor.encode(t) for t in texts]
    sequences: list[list[int]] = []
    for ids in documents:
        for piece in chunk_ids(ids, max_length - 1, MIN_SEQUENCE_TOKENS):
            sequences.append([reconstructor.bos_token_id, *piece])
            if max_sequences is not None and len(sequences) >= max_sequences:
                return sequences
    if not sequences:
        raise DataError(
            f"{data_path} ({split}) gives no sequence of {MIN_SEQUENCE_TOKENS}+ tokens. Fix: give longer texts."
        )
    return sequences
