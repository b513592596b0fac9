"""The single config loader: dataclass configs, read from JSON files, every key overridable on the CLI.

A command declares its options as a dataclass. ``tokenmask <command> --config FILE --key value``
builds it from the dataclass defaults, then the JSON file, then the command-line overrides; an
unknown key, in the file or on the command line, is an error that lists the valid keys.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """Raised for an unreadable config file, an unknown key or a value of the wrong type."""


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _parse_value(name: str, annotation: Any, raw: Any) -> Any:
    """Coerce a JSON or command-line value to the field's annotated type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _parse_value(name, option, raw)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"Config key {name!r}: cannot read {raw!r} as {annotation}.")
    if origin is typing.Literal:
        if raw not in args:
            raise ConfigError(f"Config key {name!r}: {raw!r} is not one of {list(args)}.")
        return raw
    if origin in (list, tuple):
        if isinstance(raw, str):
            raw = json.loads(raw) if raw.strip().startswith("[") else [x for x in raw.split(",") if x.strip()]
        if not isinstance(raw, (list, tuple)):
            raise ConfigError(f"Config key {name!r}: expected a list, got {raw!r}.")
        inner = args[0] if args else Any
        values = [_parse_value(name, inner, x) for x in raw]
        return tuple(values) if origin is tuple else values
    if annotation is Any:
        return raw
    if annotation is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(raw, str) and raw.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"Config key {name!r}: expected true or false, got {raw!r}.")
    if annotation in (int, float, str):
        if annotation is int and isinstance(raw, float) and not raw.is_integer():
            raise ConfigError(f"Config key {name!r}: expected an integer, got {raw!r}.")
        try:
            return annotation(raw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"Config key {name!r}: expected {annotation.__name__}, got {raw!r}.") from exc
    if annotation is dict or origin is dict:
        if isinstance(raw, str):
            raw = json.loads(raw)
        if not isinstance(raw, dict):
            raise ConfigError(f"Config key {name!r}: expected a JSON object, got {raw!r}.")
        return raw
    return raw


def build_config(cls: type[T], values: dict[str, Any]) -> T:
    """Build dataclass ``cls`` from a dict, checking keys and coercing types.

    :raises ConfigError: on an unknown key or a value of the wrong type.
    """
    types_ = _field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise ConfigError(
            f"Unknown config key(s) {unknown} for {cls.__name__}. Valid keys: {sorted(types_)}. "
            "Fix: remove or rename them."
        )
    parsed = {k: _parse_value(k, types_[k], v) for k, v in values.items()}
    return cls(**parsed)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON config file into a dict (keys starting with ``_`` are comments and dropped).

    :raises ConfigError: if the file is missing or not a JSON object.
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"Config file {file} does not exist. Fix: pass an existing JSON file, e.g. configs/dev/debug.json.")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Config file {file} is not valid UTF-8 JSON: {exc}. Fix: correct the file.") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {file} must hold a JSON object of key: value pairs.")
    return {k: v for k, v in data.items() if not k.startswith("_")}


def load_config(cls: type[T], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> T:
    """Dataclass defaults, then the JSON file at ``path``, then ``overrides``.

    :param cls: the config dataclass.
    :param path: optional JSON config file.
    :param overrides: key/value overrides (command line); ``None`` values are ignored.
    """
    values: dict[str, Any] = {}
    if path is not None:
        values.update(read_config_file(path))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return build_config(cls, values)


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add ``--config`` and one ``--<field>`` option per dataclass field (all optional overrides)."""
    parser.add_argument("--config", default=None, help="JSON config file; the options below override its keys.")
    for field in dataclasses.fields(cls):
        default = field.default if field.default is not dataclasses.MISSING else None
        if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = field.default_factory()  # type: ignore[misc]
        doc = field.metadata.get("help", "")
        parser.add_argument(
            f"--{field.name}",
            dest=field.name,
            default=None,
            metavar="VALUE",
            help=f"{doc} (default: {default!r})".strip(),
        )


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Build the config of a command from parsed arguments made by :func:`add_config_arguments`."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    overrides = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    return load_config(cls, getattr(args, "config", None), overrides)
