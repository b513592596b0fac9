"""RL Baselines3 Zoo trains on TokenMask-v0 with the shipped hyperparameter files (extra ``zoo``: rl-zoo3 2.9.x).

Each test runs ``python -m rl_zoo3.train`` in a subprocess, as a user would, for 256 steps on a
tiny random reconstructor saved to a folder and named through ``--env-kwargs``, and loads the
model RL Zoo saved. RL Zoo's ``--env-kwargs`` replaces the YAML's ``env_kwargs`` instead of
merging into them, so the YAML's env options are passed again beside the model.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("rl_zoo3", reason="rl-zoo3 is not installed (pip install -e '.[zoo]')")

import yaml  # noqa: E402  (an rl-zoo3 dependency)
from stable_baselines3 import A2C, PPO  # noqa: E402

from tokenmask.policies import TokenMaskPolicy  # noqa: E402
from tokenmask.testing import tiny_reconstructor  # noqa: E402

HYPERPARAMS = Path(__file__).resolve().parents[1] / "tokenmask" / "train" / "hyperparams"
ENV_ID = "TokenMask-v0"


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    """A tiny random reconstructor (real SmolLM2 tokenizer) saved as a folder the env loads by name."""
    path = tmp_path_factory.mktemp("zoo") / "tiny-reconstructor"
    tiny_reconstructor(seed=0).save_pretrained(path)
    return path


def yaml_env_kwargs(algo: str) -> dict[str, Any]:
    """The ``env_kwargs`` of the shipped ``{algo}.yml`` for TokenMask-v0."""
    with open(HYPERPARAMS / f"{algo}.yml", encoding="utf-8") as handle:
        return dict(yaml.safe_load(handle)[ENV_ID]["env_kwargs"])


def run_zoo(algo: str, model_dir: Path, log_dir: Path) -> subprocess.CompletedProcess[str]:
    env_kwargs = {**yaml_env_kwargs(algo), "model_name": str(model_dir), "device": "cpu"}
    command = [
        sys.executable, "-m", "rl_zoo3.train",
        "--algo", algo,
        "--env", ENV_ID,
        "--gym-packages", "tokenmask", "tokenmask.policies",  # the second registers the "TokenMaskPolicy" alias
        "--conf-file", str(HYPERPARAMS / f"{algo}.yml"),
        "-n", "256",
        "-f", str(log_dir),
        "--eval-freq", "-1",
        "--device", "cpu",
        "--seed", "0",
        "--env-kwargs", *(f"{key}:{value!r}" for key, value in env_kwargs.items()),
    ]  # fmt: skip
    environment = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=900, env=environment, cwd=log_dir)


@pytest.mark.parametrize(("algo", "algorithm"), [("ppo", PPO), ("a2c", A2C)])
def test_rl_zoo_trains_with_the_shipped_hyperparameters(algo, algorithm, tiny_model_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    done = run_zoo(algo, tiny_model_dir, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    saved = sorted((tmp_path / algo).glob(f"{ENV_ID}_*/{ENV_ID}.zip"))
    assert len(saved) == 1, f"no saved model under {tmp_path / algo}: {done.stdout[-2000:]}"
    model = algorithm.load(saved[0], device="cpu")
    assert isinstance(model.policy, TokenMaskPolicy)
    assert model.num_timesteps >= 256
    # the YAML's env options reached the env: the policy observes windows of its size
    assert model.observation_space["token_ids"].shape == (yaml_env_kwargs(algo)["window"],)  # type: ignore[index]
    with open(saved[0].parent / ENV_ID / "config.yml", encoding="utf-8") as handle:
        config = handle.read()
    assert str(tiny_model_dir) in config and "target_rate_range" in config
