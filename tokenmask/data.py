"""Corpora: local ``.txt``/``.jsonl`` files or ``datasets`` hub names, tokenized into document splits.

``tokenmask prepare-data`` reads texts, tokenizes them with the reconstructor's tokenizer, cuts each
text into documents of at most ``max_length`` tokens (dropping pieces shorter than ``min_length``),
splits the *texts* train/validation/test by a seed (so no text leaks across splits), and saves a
``DatasetDict`` with ``save_to_disk`` plus ``stats.json``.

Every saved document has the columns ``input_ids`` (list of int), ``text`` (its decoded text),
``source`` and ``num_tokens``. Documents are cut at token boundaries that are also character
boundaries (a byte-level tokenizer may spell one character with several tokens), so no document
text starts or ends with half a character.

Every split that is written can be read back: a split whose fraction is 0 is omitted (and listed
under ``omitted_splits`` in ``stats.json``); a split with a positive fraction that would get no
document is an error before anything is written. The output folder is replaced whole only when
tokenmask wrote it (see :mod:`tokenmask.io`; ``--overwrite`` replaces any other folder).
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import math
import random
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from tokenmask.config import add_config_arguments, config_from_args
from tokenmask.errors import CorruptFileError, InputError
from tokenmask.io import atomic_output_dir, atomic_write_json, check_output_dir, reraise_as

SPLITS: tuple[str, ...] = ("train", "validation", "test")
STATS_FILE = "stats.json"
SAMPLE_CORPUS = "sample"  # data_path value naming the corpus shipped inside the package
OUTPUT_KIND = "prepare-data"  # recorded in the output folder's marker (see tokenmask.io)


class DataError(InputError):
    """Raised for unusable input data; the message names the problem and the fix."""


def sample_corpus_path() -> Path:
    """Path of the small corpus shipped inside the package (120 documents of the Python docs, JSONL)."""
    return Path(str(importlib.resources.files("tokenmask") / "sample_data" / "pydocs_sample.jsonl"))


@dataclass
class PrepareDataConfig:
    """Options of ``tokenmask prepare-data`` (any key can be set in a JSON config or on the CLI)."""

    data_path: str | None = field(
        default=None,
        metadata={"help": "local .txt/.jsonl file or folder, or 'sample' for the shipped corpus"},
    )
    dataset_name: str | None = field(default=None, metadata={"help": "datasets hub name, e.g. wikitext"})
    dataset_config: str | None = field(
        default=None, metadata={"help": "hub dataset config, e.g. wikitext-103-raw-v1"}
    )
    dataset_split: str = field(default="train", metadata={"help": "hub split to read"})
    text_column: str = field(default="text", metadata={"help": "column (JSONL key) holding the text"})
    model_name: str = field(default="default", metadata={"help": "reconstructor whose tokenizer is used"})
    max_length: int = field(default=512, metadata={"help": "tokens per document at most"})
    min_length: int = field(default=64, metadata={"help": "documents shorter than this are dropped"})
    max_sequences: int | None = field(default=None, metadata={"help": "cap on the number of documents"})
    split_fractions: list[float] = field(
        default_factory=lambda: [0.8, 0.1, 0.1],
        metadata={
            "help": "train,val,test; a split of fraction 0 is omitted, one that would get no document is an error"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of the split"})
    output_dir: str = field(
        default="data_out/pydocs",
        metadata={
            "help": "where the splits are saved (replaced whole if tokenmask wrote it; see --overwrite)"
        },
    )

    def __post_init__(self) -> None:
        if (self.data_path is None) == (self.dataset_name is None):
            raise DataError(
                "Give exactly one of data_path (local files) or dataset_name (a datasets hub name)."
            )
        if self.max_length < 1 or self.min_length < 1:
            raise DataError(
                f"max_length and min_length must be >= 1, got {self.max_length} and {self.min_length}."
            )
        if self.min_length > self.max_length:
            raise DataError(
                f"min_length ({self.min_length}) is larger than max_length ({self.max_length}). Fix: lower it."
            )
        if len(self.split_fractions) != 3 or any(f < 0 for f in self.split_fractions):
            raise DataError(
                f"split_fractions must be three non-negative numbers (train, validation, test), got {self.split_fractions}."
            )
        if not math.isclose(sum(self.split_fractions), 1.0, abs_tol=1e-6):
            raise DataError(
                f"split_fractions {self.split_fractions} sum to {sum(self.split_fractions):g}, not 1. "
                "Fix: e.g. --split_fractions 0.8,0.1,0.1."
            )
        if self.max_sequences is not None and self.max_sequences < 1:
            raise DataError(f"max_sequences must be >= 1 when set, got {self.max_sequences}.")


def _read_utf8(path: Path) -> str:
    try:  # utf-8-sig: a byte-order mark (Windows editors write one) is not part of the text
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason}). Fix: convert it, e.g. iconv -t UTF-8."
        ) from exc


def _files_of(path: Path) -> list[Path]:
    if not path.exists():
        raise DataError(f"Data path {path} does not exist. Fix: pass an existing .txt/.jsonl file or folder.")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl", ".json") and p.is_file())
        if not files:
            raise DataError(
                f"Folder {path} holds no .txt or .jsonl file. Fix: point data_path at your text files."
            )
        return files
    if path.suffix not in (".txt", ".jsonl", ".json"):
        raise DataError(
            f"{path} is neither .txt nor .jsonl. Fix: use one text per .txt file, or one JSON object per .jsonl line."
        )
    return [path]


def load_texts(path: str | Path, text_column: str = "text") -> list[dict[str, str]]:
    """Read texts from a ``.txt`` file (one text), a ``.jsonl`` file (one object a line) or a folder of them.

    :param path: file or folder, or ``"sample"`` for the corpus shipped in the package.
    :param text_column: JSONL key holding the text.
    :return: records ``{"text": ..., "source": ...}``, empty texts dropped.
    :raises DataError: missing path, non-UTF-8 bytes, bad JSON, no text column, a text that is not a
        string (``null``, a number, a list), or no text at all.
    """
    if str(path) == SAMPLE_CORPUS:
        path = sample_corpus_path()
    records: list[dict[str, str]] = []
    for file in _files_of(Path(path)):
        content = _read_utf8(file)
        if file.suffix == ".txt":
            records.append({"text": content, "source": str(file)})
            continue
        for number, line in enumerate(content.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{file}:{number} is not valid JSON ({exc.msg}). Fix: one JSON object per line."
                ) from exc
            if not isinstance(obj, dict) or text_column not in obj:
                keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
                raise DataError(
                    f"{file}:{number} has no {text_column!r} field (it has {keys}). Fix: pass --text_column NAME."
                )
            text = obj[text_column]
            if not isinstance(text, str):
                what = "null" if text is None else f"a JSON {type(text).__name__}"
                raise DataError(
                    f"{file}:{number}: {text_column!r} is {what}, not a text. "
                    f"Fix: give every line a string {text_column!r}, or remove the line."
                )
            records.append({"text": text, "source": str(obj.get("source", f"{file}:{number}"))})
    records = [r for r in records if r["text"].strip()]
    if not records:
        raise DataError(f"{path} holds no text (empty files or empty text fields). Fix: give it some text.")
    return records


def load_hub_texts(name: str, config: str | None, split: str, text_column: str) -> list[dict[str, str]]:
    """Read texts from a ``datasets`` hub dataset (needs the network or a warm cache).

    Missing (``None``) and empty texts are dropped, as in a local file's empty lines.

    :raises DataError: if the dataset cannot be loaded, has no ``text_column``, or a text is not a string.
    """
    import datasets

    try:
        dataset = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # the hub raises many types (connection, missing config, ...)
        raise DataError(
            f"Could not load dataset {name!r} (config {config!r}, split {split!r}): {type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}. Fix: check the name and network, or use --data_path."
        ) from exc
    if text_column not in dataset.column_names:
        raise DataError(
            f"Dataset {name!r} has no column {text_column!r} (columns: {dataset.column_names}). Fix: --text_column NAME."
        )
    records = []
    for i, text in enumerate(dataset[text_column]):
        if text is not None and not isinstance(text, str):
            raise DataError(
                f"Dataset {name!r} row {i}: column {text_column!r} holds {type(text).__name__}, not a text. "
                "Fix: pass --text_column NAME of a text column."
            )
        if text and text.strip():
            records.append({"text": text, "source": f"{name}:{i}"})
    if not records:
        raise DataError(f"Dataset {name!r} has no non-empty text in column {text_column!r}.")
    return records


MAX_CUT_BACKOFF = 8
"""Tokens a cut may move back to reach a character boundary (a character spans at most 4 bytes)."""


def chunk_ids(
    ids: Sequence[int], max_length: int, min_length: int, cut_ok: Callable[[int], bool] | None = None
) -> list[list[int]]:
    """Cut token ids into consecutive pieces of at most ``max_length``; pieces under ``min_length`` are dropped.

    :param cut_ok: ``cut_ok(i)`` tells whether a piece may end just before token ``i`` (a character
        boundary, see :func:`character_boundaries`); a cut moves back up to :data:`MAX_CUT_BACKOFF`
        tokens to find one. ``None``: cut every ``max_length`` tokens.
    """
    pieces: list[list[int]] = []
    start = 0
    while start < len(ids):
        end = min(start + max_length, len(ids))
        if cut_ok is not None and end < len(ids):
            for candidate in range(end, max(start, end - MAX_CUT_BACKOFF), -1):
                if cut_ok(candidate):
                    end = candidate
                    break
        pieces.append(list(ids[start:end]))
        start = end
    return [p for p in pieces if len(p) >= min_length]


def character_boundaries(tokenizer: Any, text: str) -> tuple[list[int], Callable[[int], bool]]:
    """Token ids of ``text`` and a test of whether a document may end before token ``i``.

    A byte-level tokenizer spells a character of several bytes (CJK, emoji) with several tokens;
    cutting between them leaves U+FFFD in both halves. A fast tokenizer's offsets tell the
    boundaries (tokens of one character share its span); for others, the decoded tokens around
    the cut are checked for a broken character.
    """
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(encoded["input_ids"]), list(encoded["offset_mapping"])
        return ids, lambda i: offsets[i][0] >= offsets[i - 1][1]
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def decodes_cleanly(i: int) -> bool:
        before, after = tokenizer.decode(ids[max(0, i - 4) : i]), tokenizer.decode(ids[i : i + 4])
        return not (before.endswith("\ufffd") or after.startswith("\ufffd"))

    return ids, decodes_cleanly


def split_indices(count: int, fractions: Sequence[float], seed: int) -> dict[str, list[int]]:
    """Shuffle ``range(count)`` with ``seed`` and cut it by ``fractions`` into the three splits."""
    order = list(range(count))
    random.Random(seed).shuffle(order)
    n_train = int(round(fractions[0] * count))
    n_val = int(round(fractions[1] * count))
    return {
        "train": order[:n_train],
        "validation": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }


def prepare_data(config: PrepareDataConfig, progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Build and save the tokenized splits; return the statistics written to ``stats.json``.

    :param config: see :class:`PrepareDataConfig`.
    :param progress: show a progress bar while tokenizing.
    :param overwrite: replace ``output_dir`` even if tokenmask did not write it (it is checked first).
    :raises DataError: for any unusable input (see :func:`load_texts`), when no document reaches
        ``min_length``, or when a split with a positive fraction would get no document.
    :raises OutputExistsError: when ``output_dir`` may not be replaced (checked before any work).
    """
    check_output_dir(config.output_dir, overwrite, kind=OUTPUT_KIND)
    if config.data_path is not None:
        records = load_texts(config.data_path, config.text_column)
    else:
        assert config.dataset_name is not None
        records = load_hub_texts(
            config.dataset_name, config.dataset_config, config.dataset_split, config.text_column
        )
    # the heavy modules load once the output folder and the texts passed their checks
    import datasets

    from tokenmask.reconstructors import load_tokenizer

    assignment = split_indices(len(records), config.split_fractions, config.seed)
    asked = [s for s, fraction in zip(SPLITS, config.split_fractions) if fraction > 0]
    tokenizer = load_tokenizer(config.model_name)
    columns: dict[str, dict[str, list[Any]]] = {
        s: {"input_ids": [], "text": [], "source": [], "num_tokens": []} for s in SPLITS
    }
    dropped = 0
    total = 0
    split_of = {index: split for split in SPLITS for index in assignment[split]}
    # A max_sequences cap is shared among the splits by their fractions; texts are visited in a
    # seeded random order until every split has its share.
    quota = _split_quotas(config)
    visit = list(range(len(records)))
    random.Random(config.seed + 1).shuffle(visit)
    bar = tqdm(total=len(records), desc="tokenizing", unit="text", disable=not progress)
    for index in visit:
        if all(len(columns[s]["num_tokens"]) >= quota[s] for s in asked):
            break
        split = split_of[index]
        room = quota[split] - len(columns[split]["num_tokens"])
        if room <= 0:
            bar.update(1)
            continue
        record = records[index]
        ids, cut_ok = character_boundaries(tokenizer, record["text"])
        pieces = chunk_ids(ids, config.max_length, config.min_length, cut_ok)
        dropped += int(len(ids) > 0 and not pieces)
        col = columns[split]
        for piece in pieces[:room]:
            col["input_ids"].append(piece)
            col["text"].append(tokenizer.decode(piece))
            col["source"].append(record["source"])
            col["num_tokens"].append(len(piece))
            total += 1
        bar.update(1)
    bar.close()
    if total == 0:
        raise DataError(
            f"No document reaches min_length={config.min_length} tokens (all {len(records)} texts are shorter). "
            "Fix: lower --min_length or give longer texts."
        )
    _check_splits_filled(asked, {s: len(columns[s]["num_tokens"]) for s in SPLITS}, len(records), config)
    dataset = datasets.DatasetDict({s: datasets.Dataset.from_dict(columns[s]) for s in asked})
    stats = {
        "model_name": config.model_name,
        "source": config.data_path or f"{config.dataset_name}:{config.dataset_config}",
        "texts": len(records),
        "texts_dropped_too_short": dropped,
        "max_length": config.max_length,
        "min_length": config.min_length,
        "seed": config.seed,
        "splits": {
            s: {
                "documents": len(columns[s]["num_tokens"]),
                "tokens": int(sum(columns[s]["num_tokens"])),
                "mean_tokens": sum(columns[s]["num_tokens"]) / len(columns[s]["num_tokens"]),
            }
            for s in asked
        },
        "omitted_splits": [s for s in SPLITS if s not in asked],
    }
    with atomic_output_dir(config.output_dir, overwrite, kind=OUTPUT_KIND) as folder:
        dataset.save_to_disk(str(folder / "dataset"))
        atomic_write_json(folder / STATS_FILE, stats)
    return stats


def _split_quotas(config: PrepareDataConfig) -> dict[str, int]:
    """Documents each split may take: ``max_sequences`` shared by the fractions (unlimited without a cap).

    :raises DataError: when the cap leaves a split of positive fraction no document.
    """
    if config.max_sequences is None:
        return {s: sys.maxsize for s in SPLITS}
    cap = config.max_sequences
    n_train = int(round(config.split_fractions[0] * cap))
    n_val = int(round(config.split_fractions[1] * cap))
    quota = dict(zip(SPLITS, (n_train, n_val, cap - n_train - n_val)))
    starved = [s for s, f in zip(SPLITS, config.split_fractions) if f > 0 and quota[s] < 1]
    if starved:
        raise DataError(
            f"max_sequences {cap} with split_fractions {list(config.split_fractions)} leaves {starved} no document. "
            "Fix: raise --max_sequences, or give the split fraction 0 to omit it."
        )
    return quota


def _check_splits_filled(
    asked: Sequence[str], counts: dict[str, int], texts: int, config: PrepareDataConfig
) -> None:
    """Raise before anything is written when a split with a positive fraction got no document."""
    empty = [s for s in asked if counts[s] == 0]
    if empty:
        got = ", ".join(f"{s} {counts[s]}" for s in SPLITS)
        raise DataError(
            f"Too few texts for the asked splits: {texts} texts with split_fractions {list(config.split_fractions)} "
            f"give {got} documents, so {empty} would be empty (an empty split cannot be read back). "
            "Fix: give more or longer texts, lower --min_length, or omit a split with fraction 0 "
            "(e.g. --split_fractions 0.9,0,0.1)."
        )


def is_prepared_corpus(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by :func:`prepare_data` (it holds ``dataset/``), not a text file or folder."""
    return (Path(path) / "dataset").is_dir()


def prepared_splits(path: str | Path) -> list[str]:
    """The splits a prepared corpus holds (those with a fraction of 0 were omitted).

    :raises DataError: if ``path`` is not a prepared corpus.
    """
    folder = Path(path) / "dataset"
    if not folder.is_dir():
        raise DataError(
            f"{path} is not a prepared corpus (no dataset/ folder). Fix: run tokenmask prepare-data first."
        )
    index = folder / "dataset_dict.json"
    with reraise_as(
        CorruptFileError, f"{index} is damaged. Fix: run tokenmask prepare-data again into {path}"
    ):
        names = json.loads(index.read_text(encoding="utf-8"))["splits"]
    return [str(n) for n in names]


def load_prepared_split(path: str | Path, split: str = "train") -> Any:
    """Load one split saved by :func:`prepare_data` as a ``datasets.Dataset``.

    :param path: the ``output_dir`` of ``prepare-data``.
    :param split: ``train``, ``validation`` or ``test``.
    :raises DataError: if the folder is not a prepared corpus or lacks the split.
    :raises CorruptFileError: if the split cannot be read (damaged, or an empty split written by
        an earlier version).
    """
    import datasets

    if split not in SPLITS:
        raise DataError(f"Unknown split {split!r}. Fix: use one of {SPLITS}.")
    available = prepared_splits(path)
    if split not in available:
        raise DataError(
            f"The prepared corpus {path} has no {split!r} split (it holds {available}; prepare-data omits a split "
            f"of fraction 0). Fix: use --split {available[-1] if available else 'test'}, or re-run prepare-data "
            "with a positive fraction for it."
        )
    location = Path(path) / "dataset" / split
    with reraise_as(
        CorruptFileError,
        f"The {split!r} split of {path} cannot be read (empty or damaged). Fix: run tokenmask prepare-data again into {path}",
    ):
        return datasets.load_from_disk(str(location))


def iter_texts(source: str | Path, split: str = "test", text_column: str = "text") -> Iterable[str]:
    """Texts of a corpus given as a prepared folder (its ``split``) or a ``.txt``/``.jsonl`` file or folder."""
    return [r["text"] for r in iter_records(source, split, text_column)]


def iter_records(source: str | Path, split: str = "test", text_column: str = "text") -> list[dict[str, str]]:
    """:func:`iter_texts` with each text's source: ``{"text": ..., "source": ...}`` in corpus order.

    The source is the corpus's own (a ``.jsonl`` line's ``source`` field, a ``.txt`` file's path, a prepared
    split's ``source`` column); where a corpus names none, ``FILE:LINE`` or, in a prepared split written without
    the column, ``SPLIT:INDEX``. Texts of one source are not independent: the bar's bootstrap draws them together
    (:mod:`tokenmask.evaluate.bar`).
    """
    if is_prepared_corpus(source):
        data = load_prepared_split(source, split)
        texts = list(data["text"])
        names = (
            list(data["source"])
            if "source" in data.column_names
            else [f"{split}:{i}" for i in range(len(texts))]
        )
        return [{"text": t, "source": str(n)} for t, n in zip(texts, names)]
    return load_texts(source, text_column)


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``tokenmask prepare-data``."""
    parser = subparsers.add_parser(
        "prepare-data",
        help="tokenize a corpus into train/validation/test documents",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, PrepareDataConfig)
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace output_dir even if tokenmask did not write it (its files are deleted)",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    config = config_from_args(PrepareDataConfig, args)
    stats = prepare_data(config, overwrite=args.overwrite)
    print(json.dumps(stats["splits"], indent=2))
    if stats["omitted_splits"]:
        print(f"omitted splits (fraction 0): {stats['omitted_splits']}")
    print(f"saved to {config.output_dir}")
    return 0
