"""``tokenmask <command>``: the command-line entry point.

Each command lives in the module that owns it; that module exposes
``add_subparser(subparsers) -> None``, which adds its parser(s) and sets ``func`` (called with the
parsed arguments, returning an exit code). Add a command by listing it in :data:`COMMANDS`.

Only the module of the command being run is imported, so ``tokenmask --help`` and argument
errors answer without loading torch. Errors a user can fix (:mod:`tokenmask.errors`, and any
``ValueError`` or ``OSError``) print one line and exit with status 2; anything else is a bug,
printed as one line too (status 1), with the traceback behind ``--debug``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

#: command -> (module that registers it, one-line help shown by ``tokenmask --help``)
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare-data": ("tokenmask.data", "tokenize a corpus into train/validation/test documents"),
    "evaluate": (
        "tokenmask.evaluate.runner",
        "score compressors (baselines, agent:RUN, activation:CFG) with the metrics of docs/evaluation.md",
    ),
    "baselines": (
        "tokenmask.evaluate.runner",
        "tokenmask evaluate with the baselines as the default methods",
    ),
    "activation": (
        "tokenmask.activation_compression.cli",
        "activation compression: cluster hidden states inside the LM (train / evaluate)",
    ),
    "label": (
        "tokenmask.train.labels",
        "search judge-optimal span masks of training documents (the policy's warm start), data-parallel with accelerate",
    ),
    "train": (
        "tokenmask.train.cli",
        "train the masking agent (PPO/A2C) with joint reconstructor fine-tuning",
    ),
    "compress": (
        "tokenmask.train.cli",
        "compress text from stdin with the shipped agent, a trained one, or any registered method",
    ),
    "moves": (
        "tokenmask.train.moves",
        "the move agent (TokenMaskMoves-v0): judge the search's moves (table), train a policy (train), score it (report)",
    ),
    "export": (
        "tokenmask.train.export",
        "write a trained run's policy-only agent folder (what ships as tokenmask/agents/default)",
    ),
}

DEBUG_FLAG = "--debug"
DEBUG_ENV = "TOKENMASK_DEBUG"


def _command_of(argv: Sequence[str]) -> str | None:
    """The command named in ``argv`` (the first word that is not an option), if any."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; ``command``'s module adds its real subparser, the others a light stand-in.

    :param command: the command about to run; ``None`` builds stand-ins only (``tokenmask --help``).
    """
    from tokenmask import __version__

    parser = argparse.ArgumentParser(
        prog="tokenmask",
        description="Learned context compression of LM input as a Gymnasium / Stable-Baselines3 RL problem.",
    )
    parser.add_argument("--version", action="version", version=f"tokenmask {__version__}")
    parser.add_argument(
        DEBUG_FLAG,
        action="store_true",
        help=f"show the traceback of an error (also with {DEBUG_ENV}=1; may be given anywhere on the line)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    loaded: set[str] = set()
    for name, (module_name, help_text) in COMMANDS.items():
        if name == command and module_name not in loaded:
            importlib.import_module(module_name).add_subparser(subparsers)
            loaded.add(module_name)
        elif COMMANDS.get(command or "", ("",))[0] != module_name:
            subparsers.add_parser(name, help=help_text)
    return parser


def _is_user_error(exc: BaseException) -> bool:
    """True for an error the user can fix (bad input, config, path, memory), False for a bug."""
    from tokenmask.errors import TokenmaskError

    if isinstance(exc, (TokenmaskError, ValueError, OSError, MemoryError)):
        return True
    return type(exc).__name__ == "OutOfMemoryError"  # torch's, without importing torch


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if type(exc).__name__ == "OutOfMemoryError" or isinstance(exc, MemoryError):
        first = text.splitlines()[0]
        return (
            f"out of memory ({first[:200]}). Fix: lower batch_size, or use a smaller model or --device cpu."
        )
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; errors a user can fix print one clear line and exit with status 2.

    :param argv: the arguments (default: ``sys.argv[1:]``); ``--debug`` anywhere shows tracebacks.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in args_list or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    args_list = [a for a in args_list if a != DEBUG_FLAG]
    command = _command_of(args_list)
    label = f"tokenmask {command}" if command in COMMANDS else "tokenmask"
    try:
        parser = build_parser(command if command in COMMANDS else None)
        args = parser.parse_args(args_list)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{label}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        if _is_user_error(exc):
            print(f"{label}: error: {_one_line(exc)}", file=sys.stderr)
            return 2
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        print(
            f"{label}: internal error: {type(exc).__name__}: {detail} "
            f"(a bug in tokenmask). Fix: re-run with {DEBUG_FLAG} for the traceback and report it.",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
