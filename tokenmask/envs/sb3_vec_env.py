"""A thin Stable-Baselines3 ``VecEnv`` over :class:`TokenMaskVectorEnv`, so ``PPO(policy, vec_env)`` uses the batched env.

SB3 conventions: ``step_wait`` returns ``(obs, rewards, dones, infos)`` with one info dict per
sub-env; an ended sub-env is already reset, its last observation is in
``infos[i]["terminal_observation"]`` and its reset info in ``reset_infos[i]``. Wrap it in
``VecMonitor`` for episode statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

from tokenmask.envs.vector_env import TokenMaskVectorEnv


def _unbatch_infos(infos: dict[str, Any], index: int) -> dict[str, Any]:
    """Sub-env ``index``'s info dict from Gymnasium's ``key`` / ``_key`` vector layout."""
    out: dict[str, Any] = {}
    for key, value in infos.items():
        if key.startswith("_") or key in ("final_obs", "final_info"):
            continue
        present = infos.get(f"_{key}")
        if present is None or present[index]:
            item = value[index]
            out[key] = item.item() if isinstance(item, np.generic) else item
    return out


class TokenMaskSB3VecEnv(VecEnv):
    """SB3 ``VecEnv`` adapter of a :class:`TokenMaskVectorEnv` (or built from its arguments).

    ``get_attr`` / ``set_attr`` / ``env_method`` act on the one batched env: ``get_attr(name)``
    returns its attribute once per requested index, ``env_method(name)`` calls it ONCE and returns
    the result once per requested index (e.g. ``env_method("pop_completed_episodes")[0]``). For
    direct access use :attr:`vector_env`.

    :param vector_env: the batched env; if ``None``, one is built from ``num_envs`` and ``kwargs``.
    :param num_envs: sub-envs when building one.
    :param kwargs: arguments of :class:`TokenMaskVectorEnv` when building one.
    """

    def __init__(
        self, vector_env: TokenMaskVectorEnv | None = None, num_envs: int = 1, **kwargs: Any
    ) -> None:
        if vector_env is None:
            vector_env = TokenMaskVectorEnv(num_envs=num_envs, **kwargs)
        elif kwargs:
            raise ValueError("Pass either a vector_env or the arguments to build one, not both.")
        self.vector_env = vector_env
        self._actions: np.ndarray | None = None
        super().__init__(
            vector_env.num_envs, vector_env.single_observation_space, vector_env.single_action_space
        )

    def reset(self) -> VecEnvObs:
        """Reset every sub-env (with the seeds given by ``seed()`` and options by ``set_options()``, if any)."""
        seeds = None if all(s is None for s in self._seeds) else list(self._seeds)
        options = self._options[0] if self._options and self._options[0] else None
        obs, infos = self.vector_env.reset(seed=seeds, options=options)
        self.reset_infos = [_unbatch_infos(infos, i) for i in range(self.num_envs)]
        self._reset_seeds()
        self._reset_options()
        return obs

    def draw_state(self) -> list[dict[str, Any]]:
        """The batched env's :meth:`~TokenMaskVectorEnv.draw_state` (what draws each sub-env's episodes)."""
        return self.vector_env.draw_state()

    def restore_draw_state(self, state: Sequence[dict[str, Any]]) -> None:
        """Restore a :meth:`draw_state` and drop seeds given by ``seed()``, so the next reset keeps it."""
        self.vector_env.restore_draw_state(state)
        self._reset_seeds()

    def step_async(self, actions: np.ndarray) -> None:
        """Store the actions for :meth:`step_wait`."""
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        """Step the batched env; ended sub-envs are reset (their last observation is in the infos)."""
        if self._actions is None:
            raise RuntimeError("step_wait called without step_async.")
        obs, rewards, terminated, truncated, infos = self.vector_env.step(self._actions)
        self._actions = None
        dones = terminated | truncated
        info_list: list[dict[str, Any]] = []
        for i in range(self.num_envs):
            if dones[i]:
                info = _unbatch_infos(infos["final_info"], i)
                info["terminal_observation"] = infos["final_obs"][i]
                info["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
                self.reset_infos[i] = _unbatch_infos(infos, i)
            else:
                info = _unbatch_infos(infos, i)
            info_list.append(info)
        return obs, rewards.astype(np.float32), dones, info_list

    def close(self) -> None:
        """Close the batched env."""
        self.vector_env.close()

    def _count(self, indices: VecEnvIndices) -> int:
        return len(list(self._get_indices(indices)))

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """The batched env's attribute, once per requested index."""
        return [getattr(self.vector_env, attr_name)] * self._count(indices)

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set an attribute of the batched env (shared by all sub-envs)."""
        setattr(self.vector_env, attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        """Call a method of the batched env once; its result is returned once per requested index."""
        result = getattr(self.vector_env, method_name)(*method_args, **method_kwargs)
        return [result] * self._count(indices)

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        """Sub-envs of the batched env are never wrapped."""
        return [False] * self._count(indices)

    def get_images(self) -> Sequence[np.ndarray | None]:
        """No image rendering (TokenMask renders text)."""
        return [None] * self.num_envs
