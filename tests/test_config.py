"""The single config loader: defaults < JSON file < CLI overrides; unknown keys and bad types are errors."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tokenmask.config import ConfigError, add_config_arguments, config_from_args, load_config


@dataclass
class Example:
    batch_size: int = 8
    learning_rate: float = 1e-3
    device: str = "auto"
    resume: bool = False
    max_sequences: int | None = None
    layers: list[int] = field(default_factory=lambda: [1, 2])


def test_precedence_and_types(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"batch_size": 16, "device": "cpu", "_comment": "ignored"}))
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Example)
    args = parser.parse_args(
        [
            "--config",
            str(path),
            "--batch_size",
            "32",
            "--resume",
            "true",
            "--layers",
            "3,5",
            "--max_sequences",
            "none",
        ]
    )
    cfg = config_from_args(Example, args)
    assert cfg == Example(
        batch_size=32, learning_rate=1e-3, device="cpu", resume=True, max_sequences=None, layers=[3, 5]
    )


def test_unknown_key_and_bad_values(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"batch_sise": 16}))
    with pytest.raises(ConfigError, match="Unknown config key"):
        load_config(Example, path)
    with pytest.raises(ConfigError, match="expected int"):
        load_config(Example, None, {"batch_size": "many"})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Example, tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(ConfigError, match="not valid UTF-8 JSON"):
        load_config(Example, tmp_path / "bad.json")


@dataclass
class Section:
    window: int = 16
    name: str = "default"


@dataclass
class Nested:
    MOVED_KEYS = {"old_name": "env.name"}  # a class attribute, not a field

    seed: int = 0
    env: Section = field(default_factory=Section)


def test_nested_sections_from_file_and_dotted_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"seed": 1, "env": {"window": 8}}))
    assert load_config(Nested, path) == Nested(seed=1, env=Section(window=8))
    assert load_config(Nested, path, {"env.name": "x"}) == Nested(seed=1, env=Section(window=8, name="x"))
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Nested)
    args = parser.parse_args(["--config", str(path), "--env.window", "32"])
    assert config_from_args(Nested, args) == Nested(seed=1, env=Section(window=32))
    with pytest.raises(
        ConfigError, match=r"Unknown config key\(s\) \['windw'\] for Section \(under \"env\"\)"
    ):
        load_config(Nested, None, {"env.windw": 3})
    with pytest.raises(ConfigError, match="'env.window': expected int"):
        load_config(Nested, None, {"env.window": "many"})


def test_a_flat_key_of_a_section_names_its_new_place(tmp_path: Path) -> None:
    path = tmp_path / "flat.json"
    path.write_text(json.dumps({"window": 8}))
    with pytest.raises(
        ConfigError,
        match=r"""Config key 'window' moved: put it under "env": \{"window": ...\}\. Fix: .*--env\.window""",
    ):
        load_config(Nested, path)
    with pytest.raises(
        ConfigError, match=r"""Config key 'old_name' moved: put it under "env": \{"name": ...\}"""
    ):
        load_config(Nested, None, {"old_name": "x"})
