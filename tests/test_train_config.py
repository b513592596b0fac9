"""``TrainConfig``'s behaviour-cloning, checkpoint and policy options: defaults, JSON and CLI, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokenmask.config import load_config
from tokenmask.errors import ConfigError
from tokenmask.train.config import TrainConfig, check_policy_kwargs

QUICK = Path(__file__).resolve().parents[1] / "configs" / "dev" / "quick_test.json"


def test_defaults_are_off_and_round_trip_through_json(tmp_path: Path) -> None:
    config = TrainConfig()
    assert config.pretrain is None and config.pretrain_epochs == 5 and config.pretrain_batch_size == 256
    assert config.pretrain_learning_rate == 3e-4 and config.keep_checkpoints == 2
    saved = config.to_dict()
    assert {
        "pretrain",
        "pretrain_epochs",
        "pretrain_batch_size",
        "pretrain_learning_rate",
        "keep_checkpoints",
    } <= set(saved)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**saved, "pretrain": "runs/labels", "keep_checkpoints": 3}))
    back = load_config(TrainConfig, path)
    assert back.pretrain == "runs/labels" and back.keep_checkpoints == 3


def test_cli_style_overrides_are_read(tmp_path: Path) -> None:
    config = load_config(
        TrainConfig,
        QUICK,
        {
            "pretrain": "labels_out",
            "pretrain_epochs": "2",
            "pretrain_learning_rate": "1e-3",
            "keep_checkpoints": "1",
        },
    )
    assert config.pretrain == "labels_out" and config.pretrain_epochs == 2
    assert config.pretrain_learning_rate == 1e-3 and config.keep_checkpoints == 1


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"pretrain": ""}, "pretrain"),
        ({"pretrain_epochs": 0}, "pretrain_epochs"),
        ({"pretrain_batch_size": -1}, "pretrain_batch_size"),
        ({"pretrain_learning_rate": 0.0}, "pretrain_learning_rate"),
        ({"pretrain_learning_rate": float("nan")}, "pretrain_learning_rate"),
        ({"keep_checkpoints": 0}, "keep_checkpoints"),
        ({"keep_checkpoints": True}, "keep_checkpoints"),
    ],
)
def test_bad_values_are_config_errors_naming_the_key(options, key) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as info:
        TrainConfig(**options)
    assert info.value.key == key and key in str(info.value) and "Fix:" in str(info.value)
    assert "\n" not in str(info.value)


def test_policy_kwargs_keys_are_checked_against_the_policy() -> None:
    TrainConfig(policy_kwargs={"features_extractor_kwargs": {"d_model": 64}, "ortho_init": False})
    with pytest.raises(ConfigError, match="unknown key 'dmodel'") as info:
        TrainConfig(policy_kwargs={"dmodel": 64})
    assert info.value.key == "policy_kwargs.dmodel"
    assert "features_extractor_kwargs" in str(info.value) and "Fix:" in str(
        info.value
    )  # the valid keys are named
    with pytest.raises(ConfigError, match="unknown features_extractor_kwargs key 'width'") as info:
        TrainConfig(policy_kwargs={"features_extractor_kwargs": {"width": 64}})
    assert "d_model" in str(info.value)
    with pytest.raises(ConfigError, match="must be a Python class"):
        TrainConfig(policy_kwargs={"activation_fn": "relu"})
    with pytest.raises(ConfigError, match="must be a JSON object"):
        check_policy_kwargs(["d_model"])
