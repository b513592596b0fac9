"""The run folder of ``tokenmask train``: everything needed to resume a run or use its agent.

Layout (every file written atomically with :mod:`tokenmask.io`)::

    RUN_DIR/config.json        the resolved TrainConfig
    RUN_DIR/agent.zip          the SB3 model (policy weights, optimizer, hyper-parameters)
    RUN_DIR/reconstructor/     the fine-tuned reconstructor (joint training only)
    RUN_DIR/state.json         progress: timesteps done, finished / interrupted, parameter count
    RUN_DIR/evaluation.json    the last evaluation of the agent and the baselines (when run)
    RUN_DIR/tb/                TensorBoard logs: agent_1/ and one baseline_<name>/ per baseline
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm

from tokenmask.io import atomic_write_bytes, atomic_write_json, read_folder_meta
from tokenmask.reconstructors import Reconstructor
from tokenmask.train.config import TrainConfig

CONFIG_FILE = "config.json"
AGENT_FILE = "agent.zip"
RECONSTRUCTOR_DIR = "reconstructor"
STATE_FILE = "state.json"
EVALUATION_FILE = "evaluation.json"
TENSORBOARD_DIR = "tb"


class RunFolderError(ValueError):
    """Raised when a folder is not a (complete) run folder."""


class RunFolder:
    """Paths and atomic reads/writes of one run folder.

    :param path: the run folder (created on the first write).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def agent_file(self) -> Path:
        return self.path / AGENT_FILE

    @property
    def reconstructor_dir(self) -> Path:
        return self.path / RECONSTRUCTOR_DIR

    @property
    def state_file(self) -> Path:
        return self.path / STATE_FILE

    @property
    def evaluation_file(self) -> Path:
        return self.path / EVALUATION_FILE

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / TENSORBOARD_DIR

    def has_agent(self) -> bool:
        """True when the folder holds a saved agent."""
        return self.agent_file.is_file()

    def has_reconstructor(self) -> bool:
        """True when the folder holds a fine-tuned reconstructor."""
        return (self.reconstructor_dir / "tokenmask_reconstructor.json").is_file()

    # ------------------------------------------------------------------ writing
    def save_config(self, config: TrainConfig) -> Path:
        """Write the resolved config."""
        return atomic_write_json(self.config_file, config.to_dict())

    def save_agent(self, model: BaseAlgorithm) -> Path:
        """Write the SB3 model as ``agent.zip`` (serialised in memory, then renamed into place)."""
        buffer = io.BytesIO()
        model.save(buffer)
        return atomic_write_bytes(self.agent_file, buffer.getvalue())

    def save_reconstructor(self, reconstructor: Reconstructor) -> Path:
        """Write the fine-tuned reconstructor folder (atomic: built beside, then renamed)."""
        return reconstructor.save_pretrained(self.reconstructor_dir)

    def save_state(self, state: dict[str, Any]) -> Path:
        """Write ``state.json``."""
        return atomic_write_json(self.state_file, state)

    def save_evaluation(self, evaluation: dict[str, Any]) -> Path:
        """Write ``evaluation.json``."""
        return atomic_write_json(self.evaluation_file, evaluation)

    # ------------------------------------------------------------------ reading
    def read_config(self) -> dict[str, Any]:
        """The saved config as a dict.

        :raises RunFolderError: if the folder has no readable ``config.json``.
        """
        return read_folder_meta(
            self.path,
            CONFIG_FILE,
            RunFolderError,
            "a tokenmask run folder",
            "pass a folder written by `tokenmask train` (its run_dir), or re-run training.",
        )

    def read_state(self) -> dict[str, Any]:
        """``state.json`` as a dict (empty when absent)."""
        if not self.state_file.is_file():
            return {}
        return dict(json.loads(self.state_file.read_text(encoding="utf-8")))

    def require_agent(self) -> Path:
        """The agent file.

        :raises RunFolderError: if the run has no saved agent yet.
        """
        if not self.has_agent():
            raise RunFolderError(
                f"{self.path} holds no {AGENT_FILE}: the run saved no agent yet. "
                "Fix: train first (`tokenmask train --config ...`), or pass another run folder."
            )
        return self.agent_file
