"""Atomic file and folder output that never deletes what tokenmask did not write, and checked reads.

Every checkpoint, report and dataset is written to a temporary sibling (``.NAME.tmp-*``), then
renamed: a reader (or an interrupted run) never sees a half-written file or folder. Folder
outputs follow four rules:

* Every folder tokenmask writes holds a marker file (:data:`MARKER_FILE`) naming what wrote it
  (``evaluate``, ``prepare-data``, ...). A non-empty folder without it is the user's, and a folder
  another kind of command wrote (a trained model, when evaluating) is not this command's: both
  are refused (:class:`~tokenmask.errors.OutputExistsError`) unless ``overwrite=True``
  (``--overwrite`` on the command line). A file is always refused, and so is the current folder
  or one above it.
* One writer at a time: a writer holds an exclusive lock (``fcntl.flock`` on ``.NAME.lock``)
  from the check to the rename, so a second process writing the same folder fails at once with
  a clear error instead of racing it.
* Temporary siblings left by a killed run (their writer's process is gone) are removed by the
  next writer of the same path.
* Outputs honour the umask: temporary files and folders (created ``0600``/``0700``) get the
  umask's mode before they are renamed into place.

:func:`read_folder_meta` and :func:`reraise_as` turn a missing or damaged checkpoint into one
clear error naming the fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tokenmask.errors import OutputExistsError

try:  # POSIX; elsewhere writers are not serialised
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

MARKER_FILE = ".tokenmask"
"""Written into every folder tokenmask creates: a folder holding it may be replaced by tokenmask."""

SAVED_FOLDER_KINDS: dict[str, str] = {
    "tokenmask_reconstructor.json": "reconstructor",
    "activation_compression.json": "activation model",
}
"""Description file of a saved model folder -> its kind. Such a folder is tokenmask's even without
:data:`MARKER_FILE` (written before it existed: a run folder's ``reconstructor/`` must stay
replaceable on resume), and only a writer of the same kind (or of none) replaces it."""

_TEMP = "tmp"
_OLD = "old"


# ---------------------------------------------------------------------------------------- modes
def _umask() -> int:
    """The process umask, read without changing it where ``/proc`` tells it (else set and restored)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode of a new file under the current umask (``0o644`` under umask ``022``)."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """Mode of a new folder under the current umask (``0o755`` under umask ``022``)."""
    return 0o777 & ~_umask()


# ---------------------------------------------------------------------------------------- temporary siblings
def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _sibling_prefix(target: Path, kind: str) -> str:
    """``.NAME.tmp-HOST-PID-`` : who made a temporary sibling, so a later run knows if it is stale."""
    return f".{target.name}.{kind}-{_host_tag()}-{os.getpid()}-"


_SIBLING = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def clean_leftovers(target: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary siblings of ``target`` whose writer (a process on this host) is gone.

    Only names this module makes (``.NAME.tmp-HOST-PID-*``, ``.NAME.old-HOST-PID-*``) are touched,
    and only when their process no longer runs, so a concurrent writer's work is never removed.

    :return: the paths removed.
    """
    target = Path(target)
    removed: list[Path] = []
    if not target.parent.is_dir():
        return removed
    host = _host_tag()
    for entry in target.parent.iterdir():
        match = _SIBLING.match(entry.name)
        if match is None or match["name"] != target.name or match["host"] != host:
            continue
        if _process_alive(int(match["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        removed.append(entry)
    return removed


# ---------------------------------------------------------------------------------------- files
def _not_a_folder(path: str | os.PathLike[str]) -> Path:
    target = Path(path)
    if target.is_dir():
        raise OutputExistsError(
            f"{target} is a folder; tokenmask writes a file there. Fix: remove the folder or choose another file name.",
            path=target,
        )
    return target


def check_output_file(path: str | os.PathLike[str], overwrite: bool) -> Path:
    """Before long work that ends by writing one file to ``path``: refuse what the write would refuse.

    :param overwrite: whether an existing file may be replaced.
    :return: ``path`` as a :class:`~pathlib.Path`.
    :raises OutputExistsError: if ``path`` is a folder, or an existing file and ``overwrite`` is false.
    """
    target = _not_a_folder(path)
    if target.exists() and not overwrite:
        raise OutputExistsError(
            f"{target} exists.", fix="pass --overwrite true, or another --out.", path=target
        )
    return target


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename.

    :param path: destination file; its parent folders are created. An existing file is replaced.
    :return: the destination path.
    :raises OutputExistsError: if ``path`` is a folder.
    """
    target = _not_a_folder(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(target)
    fd, tmp = tempfile.mkstemp(prefix=_sibling_prefix(target, _TEMP), dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, file_mode())  # mkstemp makes 0600
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def atomic_write_model(path: str | os.PathLike[str], model: Any) -> Path:
    """Write an SB3 model (anything with ``save(file)``) as one ``.zip``, atomically (see :func:`atomic_write_bytes`)."""
    buffer = io.BytesIO()
    model.save(buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 text atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write an object as indented JSON atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


# ---------------------------------------------------------------------------------------- folders
def output_path(target: str | os.PathLike[str]) -> Path:
    """``target`` as an absolute path with symlinks resolved (so ``.`` and links have a real name).

    :raises OutputExistsError: for an empty path.
    """
    if not os.fspath(target).strip():
        raise OutputExistsError(
            "The output folder is an empty path. Fix: name a folder, e.g. --output_dir runs/x."
        )
    return Path(target).expanduser().resolve()


def write_marker(folder: str | os.PathLike[str], kind: str | None = None) -> Path:
    """Write :data:`MARKER_FILE` into ``folder``: tokenmask wrote it and may replace it.

    :param kind: what wrote it (``evaluate``, ``prepare-data``); ``None``: any tokenmask writer
        may replace it.
    """
    from tokenmask import __version__

    marker = Path(folder) / MARKER_FILE
    content = {"written_by": f"tokenmask {__version__}", "kind": kind}
    marker.write_text(json.dumps(content) + "\n", encoding="utf-8")
    os.chmod(marker, file_mode())
    return marker


def marker_kind(folder: str | os.PathLike[str]) -> str | None:
    """What wrote ``folder``: the ``kind`` in its :data:`MARKER_FILE`, else that of its description
    file (:data:`SAVED_FOLDER_KINDS`), else ``None``."""
    with contextlib.suppress(OSError, ValueError):
        content = json.loads((Path(folder) / MARKER_FILE).read_text(encoding="utf-8"))
        kind = content.get("kind") if isinstance(content, dict) else None
        if isinstance(kind, str):
            return kind
    return next((k for name, k in SAVED_FOLDER_KINDS.items() if (Path(folder) / name).is_file()), None)


def is_tokenmask_dir(folder: str | os.PathLike[str]) -> bool:
    """True when ``folder`` was written by tokenmask (it holds :data:`MARKER_FILE`, or a legacy description file)."""
    folder = Path(folder)
    return any((folder / name).is_file() for name in (MARKER_FILE, *SAVED_FOLDER_KINDS))


def check_output_dir(
    target: str | os.PathLike[str], overwrite: bool = False, replace: bool = True, kind: str | None = None
) -> Path:
    """Refuse an output folder tokenmask may not replace, before any work is done.

    Allowed: a missing path, an empty folder, a folder tokenmask wrote (by a command of the same
    ``kind``), or (``overwrite``) any other folder. Refused: a file, a non-empty folder without
    :data:`MARKER_FILE` or of another kind unless ``overwrite``, and (when the folder is replaced
    whole) the current folder or one above it.

    :param replace: the folder will be replaced whole (not only written into).
    :param kind: what is about to write it (``None``: not checked).
    :return: the resolved path (see :func:`output_path`).
    :raises OutputExistsError: naming the path and the fix.
    """
    path = output_path(target)
    if not path.exists():
        return path
    if not path.is_dir():
        raise OutputExistsError(
            f"{target} is a file, not a folder; tokenmask will not replace it. "
            "Fix: choose another output folder, or remove the file.",
            path=path,
        )
    cwd = Path.cwd().resolve()
    if replace and (path == cwd or path in cwd.parents):
        raise OutputExistsError(
            f"{target} is the current folder or one above it; tokenmask replaces its output folder whole. "
            "Fix: name a new sub-folder, e.g. --output_dir results/run1.",
            path=path,
        )
    if not overwrite and not is_tokenmask_dir(path) and any(path.iterdir()):
        raise OutputExistsError(
            f"{target} is a non-empty folder that tokenmask did not write (no {MARKER_FILE} file); "
            "replacing it would delete its files. Fix: choose a new or empty folder, or pass --overwrite to replace it.",
            path=path,
        )
    found = marker_kind(path)
    if not overwrite and kind is not None and found is not None and found != kind:
        raise OutputExistsError(
            f"{target} holds the output of `tokenmask {found}`, not of `tokenmask {kind}`; replacing it would delete it. "
            "Fix: choose another folder, or pass --overwrite to replace it.",
            path=path,
        )
    return path


_HELD_LOCKS: dict[Path, int] = {}


@contextlib.contextmanager
def output_lock(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold the exclusive write lock of output path ``target`` (re-entrant within a process).

    The lock is ``flock`` on the sibling ``.NAME.lock``: the kernel releases it when its process
    dies, so a killed run never blocks the next one; the file is removed on release.

    :raises OutputExistsError: if another process holds it.
    """
    path = output_path(target)
    if path in _HELD_LOCKS or fcntl is None:
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_file = path.parent / f".{path.name}.lock"
    while True:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutputExistsError(
                f"{path} is being written by another tokenmask process (pid {holder}). "
                "Fix: wait until it finishes, or write to another folder.",
                path=path,
            ) from None
        try:  # the previous holder may have removed the file between our open and flock
            same = os.fstat(fd).st_ino == os.stat(lock_file).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _HELD_LOCKS[path] = fd
    try:
        yield path
    finally:
        del _HELD_LOCKS[path]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_file)
        os.close(fd)  # releases the lock


def temporary_dir_beside(target: str | os.PathLike[str], kind: str | None = None) -> Path:
    """A fresh temporary folder next to ``target`` (same file system, so the final rename is atomic).

    It carries :data:`MARKER_FILE` (with ``kind``, see :func:`write_marker`) and the umask's mode;
    stale siblings of earlier killed runs are removed first (:func:`clean_leftovers`).
    """
    target = output_path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(target)
    tmp = Path(tempfile.mkdtemp(prefix=_sibling_prefix(target, _TEMP), dir=target.parent))
    os.chmod(tmp, dir_mode())  # mkdtemp makes 0700
    write_marker(tmp, kind)
    return tmp


def replace_dir(
    source: str | os.PathLike[str], target: str | os.PathLike[str], overwrite: bool = False
) -> Path:
    """Move folder ``source`` to ``target`` with renames only, replacing a previous ``target`` tokenmask wrote.

    :param source: the finished folder (from :func:`temporary_dir_beside`).
    :param target: the destination; see :func:`check_output_dir` for what may be replaced.
    :param overwrite: replace ``target`` even if tokenmask did not write it.
    :return: the target path.
    :raises OutputExistsError: if ``target`` may not be replaced, or another process is writing it.
    """
    source = Path(source)
    with output_lock(target) as path:
        check_output_dir(path, overwrite, kind=marker_kind(source))
        if not (source / MARKER_FILE).is_file():
            write_marker(source)
        backup = None
        if path.exists():
            backup = path.parent / f"{_sibling_prefix(path, _OLD)}{secrets.token_hex(4)}"
            os.replace(path, backup)
        try:
            os.replace(source, path)
        except BaseException:
            if backup is not None:
                os.replace(backup, path)
            raise
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
    return Path(target)


def _missing_parents(path: Path) -> list[Path]:
    """The ancestors of ``path`` that do not exist yet, innermost first."""
    return [p for p in path.parents if not p.exists()]


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove folders a failed command created (innermost first), unless something was put in them."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextlib.contextmanager
def atomic_output_dir(
    target: str | os.PathLike[str], overwrite: bool = False, kind: str | None = None
) -> Iterator[Path]:
    """Build an output folder in a temporary sibling; on success it replaces ``target`` whole.

    The target is checked (:func:`check_output_dir`) and locked (:func:`output_lock`) on entry,
    before the caller does any work, and stays locked until the rename. On an exception the
    temporary folder is removed and ``target`` is left as it was::

        with atomic_output_dir("runs/eval") as folder:
            write_report(report, folder)

    :param overwrite: replace ``target`` even if tokenmask did not write it.
    :param kind: the command writing it, recorded in its marker (another kind's folder is refused).
    :raises OutputExistsError: see :func:`check_output_dir` and :func:`output_lock`.
    """
    path = check_output_dir(target, overwrite, kind=kind)
    created = _missing_parents(path)
    try:
        with output_lock(path):
            check_output_dir(path, overwrite, kind=kind)
            tmp = temporary_dir_beside(path, kind)
            try:
                yield tmp
                replace_dir(tmp, path, overwrite=overwrite)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        _remove_if_empty(created)
        raise


@contextlib.contextmanager
def claimed_output_dir(
    target: str | os.PathLike[str], overwrite: bool = False, kind: str | None = None
) -> Iterator[Path]:
    """An output folder written in place (training logs, reports added file by file), locked meanwhile.

    Same checks as :func:`check_output_dir`. A new or empty folder gets :data:`MARKER_FILE`, so
    later runs may write it again. Nothing in it is deleted; with ``overwrite``, files of the same
    names in a folder tokenmask did not write are replaced, and that folder stays unmarked (it is
    still the user's).

    :param kind: the command writing it, recorded in its marker (another kind's folder is refused).
    :raises OutputExistsError: see :func:`check_output_dir` and :func:`output_lock`.
    """
    path = check_output_dir(target, overwrite, replace=False, kind=kind)
    created = _missing_parents(path)
    try:
        with output_lock(path):
            check_output_dir(path, overwrite, replace=False, kind=kind)
            if not path.exists():
                created.insert(0, path)
            path.mkdir(parents=True, exist_ok=True)
            if not is_tokenmask_dir(path) and not any(path.iterdir()):
                write_marker(path, kind)
            yield path
    except BaseException:
        if created and created[0] == path and sorted(p.name for p in path.iterdir()) == [MARKER_FILE]:
            (path / MARKER_FILE).unlink()  # the command failed before writing anything: leave no trace
        _remove_if_empty(created)
        raise


# ---------------------------------------------------------------------------------------- reading
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
