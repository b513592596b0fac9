"""The native Gymnasium vector form of TokenMask-v0: ``gym.make_vec("TokenMask-v0", num_envs=N)``.

All N episodes live in one :class:`~tokenmask.envs.episodes.EpisodeBatch`; a step prices every
episode's window in ONE batched reconstructor forward pass. Autoreset is ``SAME_STEP``: an episode
that ends is reset in the same ``step`` call, the returned observation is the new episode's first,
and the last observation and info of the finished episode are in ``infos["final_obs"]`` and
``infos["final_info"]`` (exactly the layout of ``SyncVectorEnv`` in that mode).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from tokenmask.envs.corpus import CorpusSource
from tokenmask.envs.env_config import TokenMaskConfig
from tokenmask.envs.episodes import TERMINAL_INFOS, check_actions
from tokenmask.envs.rewards import MaskingReward
from tokenmask.envs.token_mask_env import EpisodeBatchMixin
from tokenmask.reconstructors import Reconstructor


def _vector_infos(values: dict[str, np.ndarray], present: np.ndarray) -> dict[str, Any]:
    """Gymnasium's vector info layout: ``key -> (N,) array`` plus ``_key -> (N,) bool`` (who has it)."""
    out: dict[str, Any] = {}
    for key, array in values.items():
        out[key] = np.where(present, array, np.zeros_like(array))
        out[f"_{key}"] = present.copy()
    return out


class TokenMaskVectorEnv(EpisodeBatchMixin, VectorEnv):
    """``num_envs`` TokenMask-v0 episodes stepped together, priced in one batched forward pass.

    Takes the same arguments as :class:`~tokenmask.envs.TokenMaskEnv` (one corpus, one
    reconstructor and one reward shared by all sub-envs). Sub-env ``i`` seeded with ``seed + i``
    plays the same documents and earns the same rewards as ``TokenMaskEnv`` reset with
    ``seed + i`` (with ``shuffle=False``, sub-env ``i`` plays documents ``i, i + N, i + 2N, ...``).

    :param num_envs: episodes stepped together.
    :param config: options; keyword ``options`` override its fields.
    :param documents: the corpus in memory; default: ``config.data_path``.
    :param reconstructor: an already loaded reconstructor; default: load ``config.model_name``.
    :param reward: a reward instance; default: built from ``reward_type``.
    :param judge: the frozen judge of the judge bonus (``recoverability_weight`` or
        ``retention_weight > 0``); default: load ``judge_name``.
    :param render_mode: ``None`` or ``"ansi"``.
    """

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": ["ansi"]}

    def __init__(
        self,
        num_envs: int = 1,
        config: TokenMaskConfig | None = None,
        *,
        documents: CorpusSource | None = None,
        reconstructor: Reconstructor | None = None,
        reward: MaskingReward | None = None,
        judge: Reconstructor | None = None,
        render_mode: str | None = None,
        **options: Any,
    ) -> None:
        if not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}.")
        self.num_envs = int(num_envs)
        self._setup(self.num_envs, config, options, documents, reconstructor, reward, render_mode, judge)
        self.single_observation_space = self._batch.observation_space()
        self.single_action_space = self._batch.action_space()
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)

    # ------------------------------------------------------------------ gymnasium API
    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Reset sub-envs (all, or those of ``options["reset_mask"]``).

        :param seed: an int (sub-env ``i`` gets ``seed + i``) or one seed per sub-env.
        :param options: ``reset_mask`` (bool per sub-env), plus ``document`` / ``target_rate`` as in
            :class:`~tokenmask.envs.TokenMaskEnv`, applied to every reset sub-env.
        """
        options = dict(options or {})
        mask = np.asarray(options.pop("reset_mask", np.ones(self.num_envs, dtype=bool)), dtype=bool)
        if mask.shape != (self.num_envs,):
            raise ValueError(f"reset_mask must have shape ({self.num_envs},), got {mask.shape}.")
        if seed is None:
            seeds: list[int | None] = [None] * self.num_envs
        elif isinstance(seed, (int, np.integer)):
            seeds = [int(seed) + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(
                    f"Got {len(seeds)} seeds for {self.num_envs} sub-envs. Fix: one seed per sub-env, or an int."
                )
        rows = np.nonzero(mask)[0]
        for row in rows:
            if seeds[row] is not None or self._batch.rngs[row] is None:
                self._batch.seed_row(int(row), seeding.np_random(seeds[row])[0])
        infos = self._batch.reset_rows(rows, [options] * len(rows))
        full = {k: np.zeros(self.num_envs, dtype=v.dtype) for k, v in infos.items()}
        for k, v in infos.items():
            full[k][rows] = v
        return self._batch.observe(), _vector_infos(full, mask)

    def step(
        self, actions: np.ndarray
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Decide every sub-env's window; ended episodes are reset in the same call (SAME_STEP)."""
        action_bits = check_actions(actions, (self.num_envs, self.config.action_size))
        rewards, terminated, step_infos = self._batch.step(action_bits)
        truncated = np.zeros(self.num_envs, dtype=bool)
        everyone = np.ones(self.num_envs, dtype=bool)
        if not terminated.any():
            return self._batch.observe(), rewards, terminated, truncated, _vector_infos(step_infos, everyone)
        done = np.nonzero(terminated)[0]
        final_obs = self._batch.observe(done)
        final_obs_array = np.full(self.num_envs, None, dtype=object)
        for j, row in enumerate(done):
            final_obs_array[row] = {k: v[j] for k, v in final_obs.items()}
        reset_infos = self._batch.reset_rows(done, [None] * len(done))
        # as SyncVectorEnv does: a reset sub-env reports its reset info; its step info is in final_info
        infos = _vector_infos({k: v for k, v in step_infos.items() if k not in TERMINAL_INFOS}, ~terminated)
        for key, values in reset_infos.items():
            full = infos[key] if key in infos else np.zeros(self.num_envs, dtype=values.dtype)
            full[done] = values
            infos[key] = full
            infos[f"_{key}"] = infos.get(f"_{key}", np.zeros(self.num_envs, dtype=bool)) | terminated
        for key in [k for k in infos if not k.startswith("_") and not infos[f"_{k}"].any()]:
            del infos[key], infos[f"_{key}"]  # no sub-env reports it this step
        infos["final_obs"] = final_obs_array
        infos["_final_obs"] = terminated.copy()
        infos["final_info"] = _vector_infos(step_infos, terminated)
        infos["_final_info"] = terminated.copy()
        return self._batch.observe(), rewards, terminated, truncated, infos

    def draw_state(self) -> list[dict[str, Any]]:
        """Per sub-env, what draws its documents and target rates, JSON-able (saved in a checkpoint).

        Restored with :meth:`restore_draw_state` and followed by ``reset()`` (no seed), each sub-env
        replays its episode in flight from its first window, then the episodes it would have played
        next (see :meth:`~tokenmask.envs.episodes.EpisodeBatch.draw_state`).
        """
        return self._batch.draw_state()

    def restore_draw_state(self, state: Sequence[dict[str, Any]]) -> None:
        """Restore what :meth:`draw_state` returned; reset next without a seed, which would replace it."""
        self._batch.restore_draw_state(state)

    def render(self) -> tuple[Any, ...] | None:
        """``ansi``: each sub-env's document decided so far, masked tokens shown as the mask token."""
        if self.render_mode != "ansi":
            return None
        return tuple(self._batch.masked_text(i) for i in range(self.num_envs))
