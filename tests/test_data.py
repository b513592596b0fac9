"""`tokenmask prepare-data`: splits, statistics and clear errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokenmask.cli import main
from tokenmask.data import DataError, PrepareDataConfig, load_prepared_split, load_texts, prepare_data


def _jsonl(path: Path, texts: list[str], key: str = "text") -> Path:
    path.write_text("\n".join(json.dumps({key: t, "source": f"s{i}"}) for i, t in enumerate(texts)) + "\n", encoding="utf-8")
    return path


def test_prepare_pydocs_splits_and_stats(tmp_path: Path, pydocs_path: Path) -> None:
    out = tmp_path / "pydocs"
    code = main(["prepare-data", "--data_path", str(pydocs_path), "--output_dir", str(out), "--max_length", "256",
                 "--max_sequences", "200", "--seed", "7"])
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
    docs = {s: {tuple(x) for x in load_prepared_split(out, s)["input_ids"]} for s in ("train", "validation", "test")}
    assert not (docs["train"] & docs["test"]) and not (docs["train"] & docs["validation"])


def test_same_seed_same_split(tmp_path: Path) -> None:
    corpus = _jsonl(tmp_path / "c.jsonl", [f"Document number {i}. " + "words and more words " * 40 for i in range(20)])
    runs = []
    for name in ("a", "b"):
        cfg = PrepareDataConfig(data_path=str(corpus), output_dir=str(tmp_path / name), min_length=16, seed=3, max_length=64)
        prepare_data(cfg, progress=False)
        runs.append(load_prepared_split(tmp_path / name, "test")["source"])
    assert runs[0] == runs[1]


def test_sample_config_works_offline(tmp_path: Path) -> None:
    code = main(["prepare-data", "--config", "configs/dev/sample_data.json", "--output_dir", str(tmp_path / "s")])
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
        (lambda p: (p / "empty.txt").write_text("  \n", encoding="utf-8") and p / "empty.txt", "holds no text"),
        (lambda p: (p / "latin.txt").write_bytes("caf\xe9 au lait".encode("latin-1")) and p / "latin.txt", "not UTF-8"),
        (lambda p: _jsonl(p / "nocol.jsonl", ["hello"], key="body"), "no 'text' field"),
        (lambda p: (p / "bad.jsonl").write_text("{not json}\n", encoding="utf-8") and p / "bad.jsonl", "not valid JSON"),
        (lambda p: (p / "doc.pdf").write_text("x", encoding="utf-8") and p / "doc.pdf", "neither .txt nor .jsonl"),
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
    code = main(["prepare-data", "--data_path", str(tmp_path / "nope.jsonl"), "--output_dir", str(tmp_path / "o")])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["prepare-data", "--data_path", "x", "--not_a_key", "1"])


def test_hub_dataset_without_network_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    cfg = PrepareDataConfig(dataset_name="no-such-user/no-such-dataset-xyz", output_dir=str(tmp_path / "o"))
    with pytest.raises(DataError, match="Could not load dataset"):
        prepare_data(cfg, progress=False)
