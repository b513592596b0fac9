"""The single config loader: dataclass configs, read from JSON files, every key overridable on the CLI.

A command declares its options as a dataclass. ``tokenmask <command> --config FILE --key value``
builds it from the dataclass defaults, then the JSON file, then the command-line overrides; an
unknown key, in the file or on the command line, is an error that lists the valid keys.

A field whose type is itself a dataclass is a nested section (``"env": {"window": 16}`` in the
file), overridden key by key as ``--env.window 16`` on the command line (``{"env.window": 16}``
in an overrides dict); a section's own dataclass checks its keys. A top-level key that belongs to
a section (or one listed in the config class's ``MOVED_KEYS``) is an error naming its new place.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from tokenmask.errors import ConfigError  # raised for an unreadable file, an unknown key, a wrong value

T = TypeVar("T")


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_section(annotation: Any) -> bool:
    """True when a field of this type is a nested section (its type is a dataclass)."""
    return isinstance(annotation, type) and dataclasses.is_dataclass(annotation)


def _sections(cls: type) -> dict[str, type]:
    """The nested sections of a config dataclass: field name -> its dataclass."""
    return {name: t for name, t in _field_types(cls).items() if _is_section(t)}


def config_keys(cls: type) -> list[str]:
    """Every key of a config dataclass as the command line names it: ``name``, or ``section.name``."""
    keys: list[str] = []
    for name, annotation in _field_types(cls).items():
        if _is_section(annotation):
            keys.extend(f"{name}.{f.name}" for f in dataclasses.fields(annotation))
        else:
            keys.append(name)
    return keys


def _moved_key_error(cls: type, key: str) -> ConfigError | None:
    """The error for a top-level ``key`` that now lives in a section, or ``None``."""
    moved: dict[str, str] = dict(getattr(cls, "MOVED_KEYS", {}))
    for section, section_cls in _sections(cls).items():
        if key in {f.name for f in dataclasses.fields(section_cls)} and key not in moved:
            moved[key] = f"{section}.{key}"
    if key not in moved:
        return None
    section, _, new = moved[key].partition(".")
    return ConfigError(
        f'Config key {key!r} moved: put it under "{section}": {{"{new}": ...}}. '
        f'Fix: move it into the file\'s "{section}" object (on the command line: --{section}.{new} VALUE).',
        key=key,
    )


def _json_value(name: str, raw: str) -> Any:
    """A JSON value given as text for key ``name`` (an error names the key)."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"Config key {name!r}: {raw!r} is not valid JSON ({exc}).", key=name) from None


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
            raw = (
                _json_value(name, raw)
                if raw.strip().startswith("[")
                else [x for x in raw.split(",") if x.strip()]
            )
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
        if annotation is not str and isinstance(raw, bool):  # int(True) would silently be 1
            raise ConfigError(f"Config key {name!r}: expected {annotation.__name__}, got {raw!r}.")
        if annotation is int and isinstance(raw, float) and not raw.is_integer():
            raise ConfigError(f"Config key {name!r}: expected an integer, got {raw!r}.")
        try:
            return annotation(raw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"Config key {name!r}: expected {annotation.__name__}, got {raw!r}.") from exc
    if _is_section(annotation):
        if isinstance(raw, annotation):
            return raw
        if isinstance(raw, str):
            raw = _json_value(name, raw)
        if not isinstance(raw, dict):
            raise ConfigError(
                f"Config key {name!r}: expected a JSON object of {annotation.__name__} keys, got {raw!r}."
            )
        return build_config(annotation, raw, section=name)
    if annotation is dict or origin is dict:
        if isinstance(raw, str):
            raw = _json_value(name, raw)
        if not isinstance(raw, dict):
            raise ConfigError(f"Config key {name!r}: expected a JSON object, got {raw!r}.")
        return raw
    return raw


def build_config(cls: type[T], values: dict[str, Any], section: str | None = None) -> T:
    """Build dataclass ``cls`` from a dict, checking keys and coercing types (sections recursively).

    :param section: the key this dict sits under in its parent config (for error messages).
    :raises ConfigError: on an unknown or moved key or a value of the wrong type.
    """
    types_ = _field_types(cls)
    unknown = sorted(set(values) - set(types_))
    for key in unknown:
        moved = _moved_key_error(cls, key)
        if moved is not None:
            raise moved
    if unknown:
        where = f' (under "{section}")' if section else ""
        raise ConfigError(
            f"Unknown config key(s) {unknown} for {cls.__name__}{where}. Valid keys: {sorted(types_)}. "
            "Fix: remove or rename them."
        )
    prefix = f"{section}." if section else ""
    parsed = {k: _parse_value(f"{prefix}{k}", types_[k], v) for k, v in values.items()}
    return cls(**parsed)


def merge_overrides(cls: type, values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``values`` with ``overrides`` applied (``None`` values are ignored).

    ``section.key`` sets one key of a nested section; a whole section given as a dict is merged
    into the existing one key by key; any other key replaces its value.
    """
    merged = dict(values)
    sections = _sections(cls)
    for key, value in overrides.items():
        if value is None:
            continue
        head, dot, rest = key.partition(".")
        if dot and head in sections:
            merged[head] = {**_section_dict(merged.get(head)), rest: value}
        elif key in sections and isinstance(value, dict):
            merged[key] = {**_section_dict(merged.get(key)), **value}
        else:
            merged[key] = value
    return merged


def _section_dict(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, dict):
        return dict(value)
    raise ConfigError(
        f'A config section must be a JSON object, got {value!r}. Fix: give it as {{"key": value, ...}}.'
    )


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON config file into a dict (keys starting with ``_`` are comments and dropped).

    :raises ConfigError: if the file is missing or not a JSON object.
    """
    file = Path(path)
    if not file.is_file():
        what = "is a folder, not a file" if file.is_dir() else "does not exist"
        raise ConfigError(
            f"Config file {file} {what}. Fix: pass an existing JSON file, e.g. configs/dev/debug.json."
        )
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"Config file {file} is not valid UTF-8 JSON: {exc}. Fix: correct the file."
        ) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {file} must hold a JSON object of key: value pairs.")
    return {k: v for k, v in data.items() if not k.startswith("_")}


def load_config(cls: type[T], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> T:
    """Dataclass defaults, then the JSON file at ``path``, then ``overrides``.

    :param cls: the config dataclass.
    :param path: optional JSON config file.
    :param overrides: key/value overrides (command line; ``section.key`` for a key of a nested
        section); ``None`` values are ignored.
    """
    values = read_config_file(path) if path is not None else {}
    try:
        return build_config(cls, merge_overrides(cls, values, overrides or {}))
    except ConfigError as exc:
        message = str(exc)
        given = {
            k for key, v in (overrides or {}).items() if v is not None for k in (key, key.partition(".")[0])
        }
        if path is None or any(f"'{k}'" in message or f'"{k}"' in message for k in given):
            raise
        raise ConfigError(f"{path}: {message}", path=path, key=exc.key) from exc  # the key came from the file


def _add_field_arguments(parser: Any, fields: list[dataclasses.Field[Any]], prefix: str = "") -> None:
    for field in fields:
        default = field.default if field.default is not dataclasses.MISSING else None
        if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = field.default_factory()  # type: ignore[misc]
        doc = field.metadata.get("help", "")
        parser.add_argument(
            f"--{prefix}{field.name}",
            dest=f"{prefix}{field.name}",
            default=None,
            metavar="VALUE",
            help=f"{doc} (default: {default!r})".strip().replace("%", "%%"),  # argparse formats help with %
        )


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add ``--config`` and one ``--<field>`` option per dataclass field (all optional overrides).

    A nested section ``env`` gets one ``--env.<field>`` option per field of its dataclass, in its
    own help group.
    """
    parser.add_argument(
        "--config", default=None, help="JSON config file; the options below override its keys."
    )
    sections = _sections(cls)
    fields = list(dataclasses.fields(cls))
    _add_field_arguments(parser, [f for f in fields if f.name not in sections])
    for field in fields:
        if field.name in sections:
            group = parser.add_argument_group(f"--{field.name}.KEY", field.metadata.get("help", ""))
            _add_field_arguments(
                group, list(dataclasses.fields(sections[field.name])), prefix=f"{field.name}."
            )


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Build the config of a command from parsed arguments made by :func:`add_config_arguments`."""
    overrides = {n: getattr(args, n) for n in config_keys(cls) if getattr(args, n, None) is not None}
    return load_config(cls, getattr(args, "config", None), overrides)
