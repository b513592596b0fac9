"""Loading the pieces of a run: its config, algorithm class, reconstructor and judge.

The trainer (which builds a run) and the agent (which reads a finished one) both load these; they
live here, below both, so neither imports the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.base_class import BaseAlgorithm

from tokenmask.config import build_config, merge_overrides
from tokenmask.reconstructors import Reconstructor, pick_device
from tokenmask.testing import tiny_reconstructor
from tokenmask.train.config import TINY_RECONSTRUCTOR, TrainConfig, nest_flat_layout
from tokenmask.train.run_folder import RunFolder

ALGORITHM_CLASSES: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "a2c": A2C}


def algorithm_class(name: str) -> type[BaseAlgorithm]:
    """The SB3 class of an algorithm name (``ppo`` or ``a2c``)."""
    if name not in ALGORITHM_CLASSES:
        raise ValueError(f"Unknown algo {name!r}. Fix: use one of {sorted(ALGORITHM_CLASSES)}.")
    return ALGORITHM_CLASSES[name]


def load_run_config(
    run_dir: str | Path, overrides: dict[str, Any] | None = None
) -> tuple[TrainConfig, RunFolder]:
    """The saved config of a run folder (with optional overrides) and the folder.

    A config saved in the flat layout of earlier versions (env options at the top level) is read
    into today's nested one.

    :param overrides: key/value overrides, ``env.KEY`` for an env option (``None`` values are ignored).
    :raises RunFolderError: if ``run_dir`` is not a run folder.
    """
    run = RunFolder(run_dir)
    saved = nest_flat_layout(run.read_config())
    values = merge_overrides(TrainConfig, saved, {**(overrides or {}), "run_dir": str(run_dir)})
    return build_config(TrainConfig, values), run


def load_reconstructor(
    config: TrainConfig, device: str | torch.device = "auto", trainable: bool = False
) -> Reconstructor:
    """The reconstructor named by ``config.reconstructor`` (a private copy when it will be trained).

    :param trainable: it will be fine-tuned: never hand out the process-wide cached model.
    """
    if config.reconstructor == TINY_RECONSTRUCTOR:
        return tiny_reconstructor(
            seed=config.seed, device=pick_device(device), batch_size=config.reconstructor_batch_size
        )
    return Reconstructor.load(
        config.reconstructor,
        device=device,
        dtype=config.reconstructor_dtype,
        share=not trainable,
        batch_size=config.reconstructor_batch_size,
    )


def load_run_reconstructor(
    config: TrainConfig, run: RunFolder, device: str | torch.device = "auto", trainable: bool = False
) -> Reconstructor:
    """The run's fine-tuned reconstructor when the folder has one, else the configured one."""
    if run.has_reconstructor():
        return Reconstructor.from_pretrained(
            run.reconstructor_dir,
            device=device,
            dtype=config.reconstructor_dtype,
            batch_size=config.reconstructor_batch_size,
        )
    return load_reconstructor(config, device=device, trainable=trainable)


def load_judge(config: TrainConfig, device: str | torch.device = "auto") -> Reconstructor:
    """The frozen judge (``env.judge_name``) of the evaluation and of the recoverability bonus.

    Loaded without a mask token, as ``tokenmask evaluate`` loads it.
    """
    if config.env.judge_name == TINY_RECONSTRUCTOR:
        return tiny_reconstructor(
            seed=config.seed, device=pick_device(device), batch_size=config.reconstructor_batch_size
        )
    return Reconstructor.load(
        config.env.judge_name, device=device, dtype=config.env.judge_dtype, add_mask_token=False
    )
