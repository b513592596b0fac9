"""Atomic writes and checked reads of saved folders (tokenmask.io)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokenmask.io import atomic_write_json, read_folder_meta, replace_dir, reraise_as, temporary_dir_beside


class FolderError(ValueError):
    pass


def test_atomic_write_json_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]


def test_replace_dir_swaps_a_whole_folder(tmp_path: Path) -> None:
    target = tmp_path / "model"
    for value in ("old", "new"):
        staging = temporary_dir_beside(target)
        (staging / "weights.txt").write_text(value)
        replace_dir(staging, target)
    assert (target / "weights.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_read_folder_meta_reads_the_object(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "meta.json", {"layers": 3})
    assert read_folder_meta(tmp_path, "meta.json", FolderError, "a saved thing", "save one.") == {"layers": 3}


def test_read_folder_meta_missing_file_names_folder_and_fix(tmp_path: Path) -> None:
    with pytest.raises(FolderError, match=r"is not a saved thing \(no meta.json\)\. Fix: save one\."):
        read_folder_meta(tmp_path, "meta.json", FolderError, "a saved thing", "save one.")


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00", b"[1, 2]"])
def test_read_folder_meta_damaged_file_is_corrupt(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "meta.json").write_bytes(content)
    with pytest.raises(FolderError, match="corrupt.*Fix: save one"):
        read_folder_meta(tmp_path, "meta.json", FolderError, "a saved thing", "save one.")


def test_reraise_as_wraps_other_errors_and_passes_its_own() -> None:
    with pytest.raises(FolderError, match=r"reading weights \(KeyError: 'w'\)") as info:
        with reraise_as(FolderError, "reading weights"):
            {}["w"]
    assert isinstance(info.value.__cause__, KeyError)
    with pytest.raises(FolderError, match="^as is$"):
        with reraise_as(FolderError, "reading weights"):
            raise FolderError("as is")
