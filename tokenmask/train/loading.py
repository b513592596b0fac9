"""Loading the pieces of a run: its config, algorithm class, agent, reconstructor and judge.

The trainer (which builds a run) and the agent (which reads a finished one) both load these; they
live here, below both, so neither imports the other.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv

from tokenmask.config import build_config, merge_overrides
from tokenmask.errors import ConfigError
from tokenmask.io import reraise_as
from tokenmask.reconstructors import Reconstructor, pick_device
from tokenmask.testing import tiny_reconstructor
from tokenmask.train.config import TINY_RECONSTRUCTOR, TrainConfig, nest_flat_layout
from tokenmask.train.run_folder import RunFolder, RunFolderError, check_agent_file

RESUME_FIXED_KEYS: tuple[str, ...] = ("algo", "policy_kwargs", "env.window", "env.span", "env.context_size")
"""Keys a resumed run cannot change: they shape the saved agent (its algorithm, network, observation and action spaces)."""

ALGORITHM_CLASSES: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "a2c": A2C}


def algorithm_class(name: str) -> type[BaseAlgorithm]:
    """The SB3 class of an algorithm name (``ppo`` or ``a2c``)."""
    if name not in ALGORITHM_CLASSES:
        raise ConfigError(f"Unknown algo {name!r}. Fix: use one of {sorted(ALGORITHM_CLASSES)}.", key="algo")
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
    """The run's fine-tuned reconstructor (joint training), else the configured one.

    :raises RunFolderError: if the run fine-tuned its reconstructor (``joint_period > 0``) but the
        folder holds none (the agent would silently be paired with the base model), or it is damaged.
    """
    if run.has_reconstructor():
        with reraise_as(
            RunFolderError,
            f"{run.reconstructor_dir} is damaged: the fine-tuned reconstructor cannot be loaded. Fix: {run.damage_fix()}",
        ):
            return Reconstructor.from_pretrained(
                run.reconstructor_dir,
                device=device,
                dtype=config.reconstructor_dtype,
                batch_size=config.reconstructor_batch_size,
            )
    check_run_reconstructor(config, run)
    return load_reconstructor(config, device=device, trainable=trainable)


def check_run_reconstructor(config: TrainConfig, run: RunFolder) -> None:
    """Before any model loads: a run that fine-tuned its reconstructor (``joint_period > 0``) and saved an agent
    holds that reconstructor.

    :raises RunFolderError: if it does not (the agent would silently be paired with the base model).
    """
    if config.joint_training and run.has_agent() and not run.has_reconstructor():
        raise RunFolderError(
            f"{run.path} has no fine-tuned reconstructor ({run.reconstructor_dir} is missing) though the run fine-tuned "
            f"it (joint_period={config.joint_period}): its agent would be paired with the base model. "
            f"Fix: restore {run.reconstructor_dir.name}/ from a copy, or {run.damage_fix()}",
            path=run.reconstructor_dir,
        )


def load_agent(
    path: str | os.PathLike[str],
    algo: str,
    env: VecEnv | None = None,
    device: str | torch.device = "auto",
    fix: str = "re-train the run, or restore the file from a copy.",
    **kwargs: Any,
) -> BaseAlgorithm:
    """The SB3 model saved in ``path`` (an ``agent.zip``), checked readable first.

    :param algo: ``ppo`` or ``a2c``.
    :param env: the env to continue training on (its spaces must be the saved ones).
    :param fix: what to do when the file is damaged (ends the error message).
    :param kwargs: passed to ``load`` (hyper-parameters to replace, ``tensorboard_log``).
    :raises RunFolderError: naming the file (and the damaged member inside it).
    :raises ConfigError: if ``env``'s observation or action space is not the saved one.
    """
    check_agent_file(path, fix)
    cls = algorithm_class(algo)
    try:
        return cls.load(Path(path), env=env, device=device, **kwargs)
    except ValueError as exc:
        if "spaces do not match" not in str(exc):
            raise RunFolderError(
                f"{path} cannot be loaded as a {algo.upper()} agent ({_first_line(exc)}). Fix: {fix}"
            ) from exc
        kind = "action" if str(exc).startswith("Action") else "observation"
        raise ConfigError(
            f"The env's {kind} space is not the one the saved agent {path} was trained on (changed env options, "
            "or a reconstructor of another vocabulary). Fix: resume with the run's own env options and reconstructor.",
            path=path,
        ) from None
    except (RuntimeError, KeyError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        # weights that do not fit the policy the file describes, a missing entry in its data
        raise RunFolderError(
            f"{path} cannot be loaded as a {algo.upper()} agent ({type(exc).__name__}: {_first_line(exc)}). Fix: {fix}",
            path=path,
        ) from exc


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (dict, list)) else repr(value)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


def check_resume_config(saved: TrainConfig, config: TrainConfig, source: str | os.PathLike[str]) -> None:
    """Refuse a resume whose config changes a key the saved agent depends on (:data:`RESUME_FIXED_KEYS`).

    :param saved: the config the run's checkpoint was trained with.
    :param config: the config of the resume (saved one with the command line's overrides).
    :param source: the checkpoint or folder ``saved`` was read from, for the message.
    :raises ConfigError: naming the key and both values.
    """
    for key in RESUME_FIXED_KEYS:
        section, _, name = key.rpartition(".")
        old = getattr(getattr(saved, section) if section else saved, name)
        new = getattr(getattr(config, section) if section else config, name)
        if old != new:
            raise ConfigError(
                f"--resume: {key} is {_show(old)} in the run ({source}) but {_show(new)} now, and the saved agent "
                f"was built for it. Fix: drop --{key} (the run keeps its value), or start a new run in another --run_dir.",
                key=key,
            )


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
