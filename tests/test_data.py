"""`tokenmask prepare-data`: splits, statistics and clear errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokenmask.cli import main
from tokenmask.data import (
    DataError,
    PrepareDataConfig,
    chunk_ids,
    is_prepared_corpus,
    iter_records,
    iter_texts,
    load_prepared_split,
    load_texts,
    prepare_data,
    split_indices,
)
from tokenmask.errors import CorruptFileError


def _jsonl(path: Path, texts: list[str], key: str = "text") -> Path:
    path.write_text(
        "\n".join(json.dumps({key: t, "source": f"s{i}"}) for i, t in enumerate(texts)) + "\n",
        encoding="utf-8",
    )
    return path


def test_prepare_pydocs_splits_and_stats(tmp_path: Path, pydocs_path: Path) -> None:
    out = tmp_path / "pydocs"
    code = main(
        [
            "prepare-data",
            "--data_path",
            str(pydocs_path),
            "--output_dir",
            str(out),
            "--max_length",
            "256",
            "--max_sequences",
            "200",
            "--seed",
            "7",
        ]
    )
    assert code == 0
    stats = json.loads((out / "stats.json").read_text())
    counts = {s: stats["splits"][s]["documents"] for s in ("train", "validation", "test")}
    assert sum(counts.values()) == 200  # the cap (the shared pydocs and the shipped sample both hold more)
    assert counts["train"] > counts["validation"] > 0 and counts["test"] > 0
    train = load_prepared_split(out, "train")
    assert set(train.column_names) == {"input_ids", "text", "source", "num_tokens"}
    lengths = [len(x) for x in train["input_ids"]]
    assert max(lengths) <= 256 and min(lengths) >= 64
    assert stats["splits"]["train"]["tokens"] == sum(lengths)
    # no document leaks across splits
    docs = {
        s: {tuple(x) for x in load_prepared_split(out, s)["input_ids"]}
        for s in ("train", "validation", "test")
    }
    assert not (docs["train"] & docs["test"]) and not (docs["train"] & docs["validation"])


def test_same_seed_same_split(tmp_path: Path) -> None:
    corpus = _jsonl(
        tmp_path / "c.jsonl", [f"Document number {i}. " + "words and more words " * 40 for i in range(20)]
    )
    runs = []
    for name in ("a", "b"):
        cfg = PrepareDataConfig(
            data_path=str(corpus), output_dir=str(tmp_path / name), min_length=16, seed=3, max_length=64
        )
        prepare_data(cfg, progress=False)
        runs.append(load_prepared_split(tmp_path / name, "test")["source"])
    assert runs[0] == runs[1]


def test_sample_config_works_offline(tmp_path: Path) -> None:
    code = main(
        ["prepare-data", "--config", "configs/dev/sample_data.json", "--output_dir", str(tmp_path / "s")]
    )
    assert code == 0
    assert load_prepared_split(tmp_path / "s", "train").num_rows > 50


def test_txt_files_and_folders(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("Some plain text. " * 100, encoding="utf-8")
    (tmp_path / "docs" / "b.txt").write_text("More plain text here. " * 100, encoding="utf-8")
    assert len(load_texts(tmp_path / "docs")) == 2


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: p / "missing.jsonl", "does not exist"),
        (
            lambda p: (p / "empty.txt").write_text("  \n", encoding="utf-8") and p / "empty.txt",
            "holds no text",
        ),
        (
            lambda p: (p / "latin.txt").write_bytes("caf\xe9 au lait".encode("latin-1")) and p / "latin.txt",
            "not UTF-8",
        ),
        (lambda p: _jsonl(p / "nocol.jsonl", ["hello"], key="body"), "no 'text' field"),
        (
            lambda p: (p / "bad.jsonl").write_text("{not json}\n", encoding="utf-8") and p / "bad.jsonl",
            "not valid JSON",
        ),
        (
            lambda p: (p / "doc.pdf").write_text("x", encoding="utf-8") and p / "doc.pdf",
            "neither .txt nor .jsonl",
        ),
    ],
)
def test_bad_input_files(tmp_path: Path, setup, message: str) -> None:
    path = setup(tmp_path)
    with pytest.raises(DataError, match=message):
        load_texts(path)


def test_documents_shorter_than_minimum(tmp_path: Path) -> None:
    corpus = _jsonl(tmp_path / "short.jsonl", ["too short", "also short"])
    with pytest.raises(DataError, match="No document reaches min_length"):
        prepare_data(PrepareDataConfig(data_path=str(corpus), output_dir=str(tmp_path / "o")), progress=False)
    assert not (tmp_path / "o").exists()


def test_bad_config_values(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="sum to"):
        PrepareDataConfig(data_path="x", split_fractions=[0.5, 0.2, 0.2])
    with pytest.raises(DataError, match="exactly one of"):
        PrepareDataConfig()
    with pytest.raises(DataError, match="min_length"):
        PrepareDataConfig(data_path="x", min_length=600, max_length=512)


def test_cli_reports_errors_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["prepare-data", "--data_path", str(tmp_path / "nope.jsonl"), "--output_dir", str(tmp_path / "o")]
    )
    assert code == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["prepare-data", "--data_path", "x", "--not_a_key", "1"])


def test_hub_dataset_without_network_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    cfg = PrepareDataConfig(dataset_name="no-such-user/no-such-dataset-xyz", output_dir=str(tmp_path / "o"))
    with pytest.raises(DataError, match="Could not load dataset"):
        prepare_data(cfg, progress=False)


# ---------------------------------------------------------------------------------------- reliability (issue 15)
def _long_texts(count: int) -> list[str]:
    return [f"Text number {i}. " + "The quick brown fox jumps over the lazy dog. " * 30 for i in range(count)]


def test_output_folder_of_the_user_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user = tmp_path / "d"
    user.mkdir()
    (user / "important.txt").write_text("x")
    args = ["prepare-data", "--data_path", "sample", "--max_sequences", "20"]
    assert main([*args, "--output_dir", str(user)]) == 2
    assert "did not write" in capsys.readouterr().err
    assert sorted(p.name for p in user.iterdir()) == ["important.txt"]
    afile = tmp_path / "afile"
    afile.write_text("y")
    assert main([*args, "--output_dir", str(afile), "--overwrite"]) == 2
    assert "is a file" in capsys.readouterr().err
    assert afile.read_text() == "y"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "d"]
    assert main([*args, "--output_dir", str(user), "--overwrite"]) == 0  # asked for: replaced
    assert load_prepared_split(user, "test").num_rows > 0


def test_too_few_texts_is_an_error_before_anything_is_written(tmp_path: Path) -> None:
    out = tmp_path / "o"
    prepare_data(PrepareDataConfig(data_path=str(_jsonl(tmp_path / "many.jsonl", _long_texts(20))), output_dir=str(out),
                                   min_length=16, max_length=64), progress=False)  # fmt: skip
    before = load_prepared_split(out, "train")["input_ids"]
    five = _jsonl(tmp_path / "five.jsonl", _long_texts(5))
    with pytest.raises(DataError, match=r"Too few texts.*\['validation'\] would be empty.*Fix:"):
        prepare_data(
            PrepareDataConfig(data_path=str(five), output_dir=str(out), min_length=16), progress=False
        )
    assert load_prepared_split(out, "train")["input_ids"] == before  # the previous corpus survives
    # enough texts, but the validation ones are all too short: caught after tokenizing, still before writing
    texts = _long_texts(20)
    for index in split_indices(20, [0.5, 0.1, 0.4], seed=0)["validation"]:
        texts[index] = "short"
    with pytest.raises(DataError, match=r"Too few texts.*train \d+, validation 0, test \d+ documents"):
        prepare_data(PrepareDataConfig(data_path=str(_jsonl(tmp_path / "mixed.jsonl", texts)), output_dir=str(out),
                                       min_length=16, split_fractions=[0.5, 0.1, 0.4], seed=0), progress=False)  # fmt: skip
    assert load_prepared_split(out, "train")["input_ids"] == before


def test_a_split_of_fraction_zero_is_omitted_and_every_written_split_reads_back(tmp_path: Path) -> None:
    out = tmp_path / "o"
    corpus = _jsonl(tmp_path / "c.jsonl", _long_texts(5))
    stats = prepare_data(PrepareDataConfig(data_path=str(corpus), output_dir=str(out), min_length=16,
                                           split_fractions=[0.8, 0.0, 0.2]), progress=False)  # fmt: skip
    assert stats["omitted_splits"] == ["validation"] and set(stats["splits"]) == {"train", "test"}
    for split in ("train", "test"):
        assert load_prepared_split(out, split).num_rows == stats["splits"][split]["documents"] > 0
        assert iter_texts(out, split)
    with pytest.raises(DataError, match=r"has no 'validation' split.*Fix:"):
        load_prepared_split(out, "validation")


def test_an_empty_split_of_an_older_version_is_a_clear_error(tmp_path: Path) -> None:
    import datasets

    columns = {"input_ids": [[1, 2]], "text": ["a b"], "source": ["s"], "num_tokens": [2]}
    empty = {k: [] for k in columns}
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(columns), "validation": datasets.Dataset.from_dict(empty)}
    ).save_to_disk(str(tmp_path / "dataset"))
    assert load_prepared_split(tmp_path, "train").num_rows == 1
    with pytest.raises(
        CorruptFileError, match=r"'validation' split .* cannot be read.*Fix: run tokenmask prepare-data"
    ):
        load_prepared_split(tmp_path, "validation")


@pytest.mark.parametrize(("value", "what"), [(None, "null"), (12345, "a JSON int"), (["a"], "a JSON list")])
def test_a_text_that_is_not_a_string_names_file_and_line(tmp_path: Path, value: object, what: str) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(
        json.dumps({"text": "A real text. " * 50}) + "\n" + json.dumps({"text": value}) + "\n",
        encoding="utf-8",
    )
    with pytest.raises(DataError, match=rf"c.jsonl:2: 'text' is {what}, not a text\. Fix:"):
        load_texts(corpus)
    with pytest.raises(DataError):
        prepare_data(
            PrepareDataConfig(data_path=str(corpus), output_dir=str(tmp_path / "o"), min_length=1),
            progress=False,
        )
    assert not (tmp_path / "o").exists()


def test_byte_order_mark_is_not_part_of_the_text(tmp_path: Path) -> None:
    (tmp_path / "bom.jsonl").write_text(json.dumps({"text": "hello"}) + "\n", encoding="utf-8-sig")
    (tmp_path / "bom.txt").write_text("plain", encoding="utf-8-sig")
    assert [r["text"] for r in load_texts(tmp_path)] == ["hello", "plain"]


def test_documents_are_never_cut_inside_a_character(tmp_path: Path) -> None:
    text = "日本語のテキストと絵文字 😀🎉 and some English. " * 60
    corpus = _jsonl(tmp_path / "e.jsonl", [text] * 10)
    out = tmp_path / "o"
    prepare_data(
        PrepareDataConfig(data_path=str(corpus), output_dir=str(out), max_length=37, min_length=1),
        progress=False,
    )
    docs = {s: load_prepared_split(out, s) for s in ("train", "validation", "test")}
    assert not any("\ufffd" in t for d in docs.values() for t in d["text"])
    assert max(n for d in docs.values() for n in d["num_tokens"]) <= 37
    # the pieces of one text join back into it: nothing was lost at the cuts
    train = docs["train"]
    first = train["source"][0]
    assert "".join(t for t, s in zip(train["text"], train["source"]) if s == first) == text


def test_chunk_ids_moves_a_cut_back_to_a_boundary() -> None:
    ids = list(range(10))
    assert chunk_ids(ids, 4, 1) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert chunk_ids(ids, 4, 1, cut_ok=lambda i: i % 3 == 0) == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    assert chunk_ids(ids, 4, 1, cut_ok=lambda i: False) == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9],
    ]  # no boundary: hard cut


def test_is_prepared_corpus_tells_a_prepare_data_folder_from_text(tmp_path: Path) -> None:
    corpus = _jsonl(tmp_path / "many.jsonl", _long_texts(20))
    out = tmp_path / "o"
    prepare_data(PrepareDataConfig(data_path=str(corpus), output_dir=str(out), min_length=16, max_length=64),
                 progress=False)  # fmt: skip
    assert is_prepared_corpus(out) and is_prepared_corpus(str(out))
    assert not is_prepared_corpus(corpus)  # a .jsonl file
    assert not is_prepared_corpus(tmp_path / "missing")
    (tmp_path / "texts").mkdir()
    assert not is_prepared_corpus(tmp_path / "texts")  # a folder of text files


def test_iter_records_gives_each_text_its_source(tmp_path: Path) -> None:
    """The evaluation's documents carry their corpus's source (the bar draws a source's documents together)."""
    import shutil

    corpus = _jsonl(tmp_path / "many.jsonl", _long_texts(20))
    records = iter_records(corpus)
    assert [r["text"] for r in records] == list(iter_texts(corpus))
    assert [r["source"] for r in records] == [f"s{i}" for i in range(20)]
    out = tmp_path / "o"
    prepare_data(PrepareDataConfig(data_path=str(corpus), output_dir=str(out), min_length=16, max_length=64),
                 progress=False)  # fmt: skip
    split = load_prepared_split(out, "test")
    prepared = iter_records(out, split="test")
    assert [r["text"] for r in prepared] == list(iter_texts(out, split="test")) == list(split["text"])
    assert [r["source"] for r in prepared] == list(split["source"])
    # a split written without the column: its rows are named by split and index
    bare = tmp_path / "bare"
    shutil.copytree(out, bare)
    shutil.rmtree(bare / "dataset" / "test")
    split.remove_columns("source").save_to_disk(str(bare / "dataset" / "test"))
    assert [r["source"] for r in iter_records(bare, split="test")] == [f"test:{i}" for i in range(len(split))]
