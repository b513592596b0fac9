"""``EpisodeOutcomes``: an SB3 ``VecEnvWrapper`` that puts each finished episode's record in its terminal info.

The joint fine-tuning reads the records (document ids and the agent's mask). The recoverability
bonus is the env's own (``recoverability_weight``, :mod:`tokenmask.envs.recoverability`): the env
reports it as ``info["recoverability"]`` at each episode's last step.
"""

from __future__ import annotations

import numpy as np
from stable_baselines3.common.vec_env import VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn

from tokenmask.envs.episodes import EpisodeRecord

RECORD_KEY = "episode_record"
"""Info key of the finished episode's :class:`~tokenmask.envs.EpisodeRecord` (terminal steps only)."""
GAIN_KEY = "recoverability"
"""Info key of the episode's document recoverability (terminal steps, set by the env when its bonus is on)."""


class EpisodeOutcomes(VecEnvWrapper):
    """Puts each finished episode's record in its terminal info (``info["episode_record"]``).

    Wraps a :class:`~tokenmask.envs.TokenMaskSB3VecEnv` (or a wrapper of it) whose batched env has
    ``pop_completed_episodes``.
    """

    def reset(self) -> VecEnvObs:
        obs = self.venv.reset()
        self.venv.env_method("pop_completed_episodes")  # drop episodes of an earlier life of the env
        return obs

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, dones, infos = self.venv.step_wait()
        if not dones.any():
            return obs, rewards, dones, infos
        records: list[EpisodeRecord] = self.venv.env_method("pop_completed_episodes", indices=[0])[0]
        done_rows = np.flatnonzero(dones)
        # the env appends records in row order of the episodes that ended in this step
        records = records[-len(done_rows) :]
        if len(records) != len(done_rows):
            raise RuntimeError(f"{len(done_rows)} episodes ended but the env reported {len(records)}.")
        for row, record in zip(done_rows, records):
            infos[row][RECORD_KEY] = record
        return obs, rewards, dones, infos
