"""Atomic file output, and checked reads of what was written.

Every checkpoint, report and dataset is written to a temporary path, then renamed: a reader (or an
interrupted run) therefore never sees a half-written file or folder. :func:`read_folder_meta` and
:func:`reraise_as` turn a missing or damaged checkpoint into one clear error naming the fix.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename.

    :param path: destination file; its parent folders are created.
    :return: the destination path.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 text atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write an object as indented JSON atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def temporary_dir_beside(target: str | os.PathLike[str]) -> Path:
    """A fresh temporary folder next to ``target`` (same file system, so the final rename is atomic)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))


def replace_dir(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Move folder ``source`` to ``target`` with renames only, replacing any previous ``target``.

    :return: the target path.
    """
    source, target = Path(source), Path(target)
    backup = None
    if target.exists():
        backup = target.with_name(f".{target.name}.old")
        if backup.exists():
            shutil.rmtree(backup)
        os.replace(target, backup)
    os.replace(source, target)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
    return target


@contextlib.contextmanager
def reraise_as(error: type[Exception], message: str) -> Iterator[None]:
    """Re-raise any exception of the block as ``error(f"{message} ({type}: {first line})")``.

    Errors of type ``error`` pass through unchanged. For reading checkpoints: whatever a damaged
    file raises (JSON, safetensors, pickle, zip errors), the user sees one error type that says what
    was being read and how to fix it.
    """
    try:
        yield
    except error:
        raise
    except Exception as exc:
        detail = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise error(f"{message} ({type(exc).__name__}: {detail})") from exc


def read_folder_meta(
    folder: str | os.PathLike[str], file_name: str, error: type[Exception], what: str, fix: str
) -> dict[str, Any]:
    """The JSON object in ``folder/file_name``, the description file of a saved folder.

    :param error: exception type raised when the file is missing, unreadable or not a JSON object.
    :param what: what the folder should be, for the message ("a saved reconstructor").
    :param fix: what the user should do instead, for the message.
    """
    path = Path(folder) / file_name
    if not path.is_file():
        raise error(f"{folder} is not {what} (no {file_name}). Fix: {fix}")
    with reraise_as(error, f"{path} is corrupt: not readable JSON. Fix: {fix}"):
        data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise error(f"{path} is corrupt: it must hold a JSON object. Fix: {fix}")
    return data
