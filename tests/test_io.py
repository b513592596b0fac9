"""Atomic writes and checked reads of saved folders (tokenmask.io)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tokenmask.errors import OutputExistsError
from tokenmask.io import (
    MARKER_FILE,
    atomic_output_dir,
    atomic_write_json,
    check_output_dir,
    claimed_output_dir,
    read_folder_meta,
    replace_dir,
    reraise_as,
    temporary_dir_beside,
)


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
    assert (target / MARKER_FILE).is_file()


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


# ---------------------------------------------------------------------------------------- output folders never lose data
def test_non_empty_folder_without_marker_is_refused_and_kept(tmp_path: Path) -> None:
    user = tmp_path / "d"
    user.mkdir()
    (user / "important.txt").write_text("x")
    with pytest.raises(OutputExistsError, match="did not write.*--overwrite"):
        with atomic_output_dir(user) as folder:
            (folder / "result.txt").write_text("new")
    assert sorted(p.name for p in user.iterdir()) == ["important.txt"]
    assert (user / "important.txt").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temporary, no lock left
    with atomic_output_dir(user, overwrite=True) as folder:  # asked for: replaced
        (folder / "result.txt").write_text("new")
    assert sorted(p.name for p in user.iterdir()) == [MARKER_FILE, "result.txt"]


def test_replace_dir_refuses_a_user_folder(tmp_path: Path) -> None:
    user = tmp_path / "model"
    user.mkdir()
    (user / "notes.md").write_text("mine")
    staging = temporary_dir_beside(user)
    with pytest.raises(OutputExistsError, match="did not write"):
        replace_dir(staging, user)
    assert (user / "notes.md").read_text() == "mine"


def test_a_file_is_never_replaced(tmp_path: Path) -> None:
    target = tmp_path / "afile"
    target.write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError, match="is a file"):
            with atomic_output_dir(target, overwrite=overwrite):
                pass
    assert target.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
    folder = tmp_path / "f.json"
    folder.mkdir()
    (folder / "x").write_text("1")
    with pytest.raises(OutputExistsError, match="is a folder"):
        atomic_write_json(folder, {"a": 1})
    assert (folder / "x").read_text() == "1"


def test_current_folder_and_empty_path_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "work.txt").write_text("w")
    monkeypatch.chdir(tmp_path)
    for target in (".", str(tmp_path), str(tmp_path.parent)):
        with pytest.raises(OutputExistsError, match="current folder"):
            with atomic_output_dir(target, overwrite=True):
                pass
    with pytest.raises(OutputExistsError, match="empty path"):
        check_output_dir("")
    assert (tmp_path / "work.txt").read_text() == "w"


def test_folder_written_by_tokenmask_is_replaced_whole(tmp_path: Path) -> None:
    target = tmp_path / "out"
    for value in ("one", "two"):
        with atomic_output_dir(target) as folder:
            (folder / f"{value}.txt").write_text(value)
    assert sorted(p.name for p in target.iterdir()) == [MARKER_FILE, "two.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_output_dir(empty) as folder:  # an empty folder holds nothing to lose
        (folder / "a").write_text("a")
    assert (empty / "a").is_file()


def test_a_failed_write_leaves_the_old_output_and_no_trace(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with atomic_output_dir(target) as folder:
        (folder / "good.txt").write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_output_dir(target) as folder:
            (folder / "half.txt").write_text("half")
            raise RuntimeError("killed midway")
    assert sorted(p.name for p in target.iterdir()) == [MARKER_FILE, "good.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(RuntimeError):  # parents the failed command created are removed again
        with atomic_output_dir(tmp_path / "new" / "deeper" / "out"):
            raise RuntimeError("argument error")
    assert not (tmp_path / "new").exists()


_HOLD_LOCK = """
import sys, time
from pathlib import Path
from tokenmask.io import atomic_output_dir
with atomic_output_dir(sys.argv[1]) as folder:
    (folder / "result.txt").write_text("first")
    Path(sys.argv[2]).write_text("ready")
    while not Path(sys.argv[3]).exists():
        time.sleep(0.05)
"""


def test_a_second_writer_fails_clearly_and_the_first_result_survives(tmp_path: Path) -> None:
    target, ready, go = tmp_path / "out", tmp_path / "ready", tmp_path / "go"
    first = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(target), str(ready), str(go)])
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert first.poll() is None and time.monotonic() < deadline, "the first writer did not start"
            time.sleep(0.05)
        with pytest.raises(
            OutputExistsError, match=rf"being written by another tokenmask process \(pid {first.pid}\)"
        ):
            with atomic_output_dir(target) as folder:
                (folder / "result.txt").write_text("second")
        with pytest.raises(OutputExistsError, match="being written"):
            replace_dir(temporary_dir_beside(tmp_path / "other"), target)
    finally:
        go.write_text("go")
        assert first.wait(timeout=60) == 0
    assert (target / "result.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []


_KILLED_WRITER = """
import os, signal, sys
from tokenmask.io import atomic_write_bytes, temporary_dir_beside
folder = temporary_dir_beside(sys.argv[1])
(folder / "half.bin").write_bytes(b"x" * 100)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_leftovers_of_a_killed_run_are_cleaned_but_live_ones_kept(tmp_path: Path) -> None:
    target = tmp_path / "out"
    killed = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(target)], check=False)
    assert killed.returncode == -signal.SIGKILL
    stale = [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]
    assert len(stale) == 1 and (stale[0] / "half.bin").is_file()
    live = temporary_dir_beside(target)  # this process is alive: its temporary must survive
    with atomic_output_dir(target) as folder:
        (folder / "a").write_text("a")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["out", live.name])


@pytest.mark.parametrize(
    ("umask", "dir_mode", "file_mode"), [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600), (0o002, 0o775, 0o664)]
)
def test_outputs_honour_the_umask(tmp_path: Path, umask: int, dir_mode: int, file_mode: int) -> None:
    old = os.umask(umask)
    try:
        with atomic_output_dir(tmp_path / "out") as folder:
            atomic_write_json(folder / "results.json", {"a": 1})
        atomic_write_json(tmp_path / "single.json", {"b": 2})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == dir_mode
    for file in (tmp_path / "out" / "results.json", tmp_path / "out" / MARKER_FILE, tmp_path / "single.json"):
        assert stat.S_IMODE(file.stat().st_mode) == file_mode


def test_claimed_folder_is_written_in_place_and_refuses_user_folders(tmp_path: Path) -> None:
    target = tmp_path / "act"
    with claimed_output_dir(target) as folder:
        (folder / "log.txt").write_text("1")
    with claimed_output_dir(target) as folder:  # ours now: a second run writes into it
        (folder / "log2.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == [MARKER_FILE, "log.txt", "log2.txt"]
    user = tmp_path / "user"
    user.mkdir()
    (user / "thesis.tex").write_text("t")
    with pytest.raises(OutputExistsError, match="did not write"):
        with claimed_output_dir(user):
            pass
    with claimed_output_dir(user, overwrite=True) as folder:  # writes beside the user's files, deletes none
        (folder / "report.json").write_text("{}")
    assert (user / "thesis.tex").read_text() == "t"


def test_legacy_saved_folders_stay_replaceable(tmp_path: Path) -> None:
    legacy = tmp_path / "reconstructor"
    legacy.mkdir()
    (legacy / "tokenmask_reconstructor.json").write_text("{}")
    (legacy / "model.safetensors").write_bytes(b"old")
    staging = temporary_dir_beside(legacy)
    (staging / "model.safetensors").write_bytes(b"new")
    replace_dir(staging, legacy)
    assert (legacy / "model.safetensors").read_bytes() == b"new"


def test_save_pretrained_into_a_user_folder_is_refused(tiny_recon, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    user = tmp_path / "models"
    user.mkdir()
    (user / "other_model.bin").write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match="did not write"):
        tiny_recon.save_pretrained(user)
    assert sorted(p.name for p in user.iterdir()) == ["other_model.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]


def test_another_commands_output_is_not_replaced(tiny_recon, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    corpus = tmp_path / "corpus"
    with atomic_output_dir(corpus, kind="prepare-data") as folder:
        (folder / "stats.json").write_text("{}")
    with pytest.raises(
        OutputExistsError, match=r"output of `tokenmask prepare-data`, not of `tokenmask evaluate`"
    ):
        with atomic_output_dir(corpus, kind="evaluate"):
            pass
    assert (corpus / "stats.json").is_file()
    model = tiny_recon.save_pretrained(
        tmp_path / "model"
    )  # marker without kind: known by its description file
    with pytest.raises(OutputExistsError, match="output of `tokenmask reconstructor`"):
        with atomic_output_dir(model, kind="evaluate"):
            pass
    assert (model / "tokenmask_reconstructor.json").is_file()
    tiny_recon.save_pretrained(model)  # the same kind replaces it
    with atomic_output_dir(corpus, kind="evaluate", overwrite=True) as folder:  # asked for
        (folder / "results.json").write_text("{}")
    assert sorted(p.name for p in corpus.iterdir()) == [MARKER_FILE, "results.json"]


def test_writing_into_a_user_folder_with_overwrite_does_not_adopt_it(tmp_path: Path) -> None:
    user = tmp_path / "user"
    user.mkdir()
    (user / "thesis.tex").write_text("t")
    with claimed_output_dir(user, overwrite=True) as folder:
        (folder / "report.json").write_text("{}")
    assert not (user / MARKER_FILE).exists()  # still the user's: a later replace needs --overwrite again
    with pytest.raises(OutputExistsError, match="did not write"):
        check_output_dir(user)


def test_check_output_file_refuses_a_folder_and_an_existing_file(tmp_path: Path) -> None:
    from tokenmask.io import check_output_file

    assert check_output_file(tmp_path / "new.npz", overwrite=False) == tmp_path / "new.npz"
    (tmp_path / "old.npz").write_bytes(b"x")
    with pytest.raises(OutputExistsError, match="exists. Fix: pass --overwrite true"):
        check_output_file(tmp_path / "old.npz", overwrite=False)
    assert check_output_file(tmp_path / "old.npz", overwrite=True) == tmp_path / "old.npz"
    with pytest.raises(OutputExistsError, match="is a folder"):
        check_output_file(tmp_path, overwrite=True)
