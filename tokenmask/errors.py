"""The errors a user can fix: one type per cause, each naming the file or key it concerns and the fix.

``tokenmask <command>`` prints any :class:`TokenmaskError` as one line (``tokenmask evaluate:
error: ...``) and exits with status 2; anything else is a bug, shown as one line too, with its
traceback behind ``--debug``. The types also derive from the built-in exception a caller of the
Python API would expect (``ValueError``, ``FileExistsError``), so ``except ValueError`` keeps
working.

==================== =========================================================================
:class:`InputError`      unusable input data (a corpus, a text file, a method argument)
:class:`ConfigError`     an unreadable config file, an unknown key or a value out of range
:class:`OutputExistsError` an output path tokenmask will not replace (a file, a folder it did
                         not write, a folder another process is writing)
:class:`CorruptFileError` a saved file or folder that cannot be read back
==================== =========================================================================
"""

from __future__ import annotations

import os


class TokenmaskError(Exception):
    """Base of the errors a user can fix.

    :param message: what is wrong, in one line (it may already end with ``Fix: ...``).
    :param fix: what to do instead; appended as `` Fix: ...`` when the message has none.
    :param path: the file or folder the error concerns, if any.
    :param key: the config key or option the error concerns, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        fix: str | None = None,
        path: str | os.PathLike[str] | None = None,
        key: str | None = None,
    ) -> None:
        if fix and "Fix:" not in message:
            message = f"{message.rstrip()} Fix: {fix}"
        super().__init__(message)
        self.fix = fix
        self.path = None if path is None else os.fspath(path)
        self.key = key


class InputError(TokenmaskError, ValueError):
    """Unusable input: a missing or damaged corpus, a text that is not text, a bad method argument."""


class ConfigError(TokenmaskError, ValueError):
    """An unreadable config file, an unknown key, or a value of the wrong type or out of range."""


class OutputExistsError(TokenmaskError, FileExistsError):
    """An output path tokenmask will not replace: a file, a non-empty folder it did not write, or a
    folder another process is writing right now."""


class CorruptFileError(TokenmaskError, ValueError):
    """A saved file or folder (checkpoint, prepared corpus, results) that cannot be read back."""


__all__ = ["ConfigError", "CorruptFileError", "InputError", "OutputExistsError", "TokenmaskError"]
