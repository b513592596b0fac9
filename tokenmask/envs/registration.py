"""Registration of ``TokenMask-v0`` with Gymnasium (done by ``import tokenmask``).

``gym.make("TokenMask-v0")`` after ``import tokenmask``, or ``gym.make("tokenmask:TokenMask-v0")``
with no import (Gymnasium imports the module named before the colon). Gymnasium 1.x loads no
plugin entry points, so these are the two ways in. ``gym.make_vec("TokenMask-v0", num_envs=N)``
builds the batched :class:`~tokenmask.envs.TokenMaskVectorEnv`.
"""

from __future__ import annotations

import gymnasium as gym

ENV_ID = "TokenMask-v0"


def register_envs() -> None:
    """Register ``TokenMask-v0`` (single and vector entry points) once per process."""
    if ENV_ID in gym.registry:
        return
    gym.register(
        id=ENV_ID,
        entry_point="tokenmask.envs.token_mask_env:TokenMaskEnv",
        vector_entry_point="tokenmask.envs.vector_env:TokenMaskVectorEnv",
    )
