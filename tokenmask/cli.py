"""``tokenmask <command>``: the command-line entry point.

Each command lives in the module that owns it; that module exposes
``add_subparser(subparsers) -> None``, which adds its parser and sets ``func`` (called with the
parsed arguments, returning an exit code). Add a command by listing its module below.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMAND_MODULES: tuple[str, ...] = (
    "tokenmask.data",
    "tokenmask.evaluate.runner",
    "tokenmask.activation_compression.cli",
    "tokenmask.train.cli",
)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every command's subparser."""
    from tokenmask import __version__

    parser = argparse.ArgumentParser(
        prog="tokenmask",
        description="Learned context compression of LM input as a Gymnasium / Stable-Baselines3 RL problem.",
    )
    parser.add_argument("--version", action="version", version=f"tokenmask {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_subparser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; errors a user can fix print one clear line and exit with status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"tokenmask {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tokenmask {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
