"""Registration of ``TokenMask-v0`` with Gymnasium (done by ``import tokenmask``).

``gym.make("TokenMask-v0")`` after ``import tokenmask``, or ``gym.make("tokenmask:TokenMask-v0")``
with no import (Gymnasium imports the module named before the colon). Gymnasium 1.x loads no
plugin entry points, so these are the two ways in. ``gym.make_vec("TokenMask-v0", num_envs=N)``
builds the batched :class:`~tokenmask.envs.TokenMaskVectorEnv`. ``gym.make("TokenMaskMoves-v0", table=PATH)``
is the move-choice env of :mod:`tokenmask.envs.moves`.
"""

from __future__ import annotations

import gymnasium as gym

ENV_ID = "TokenMask-v0"
MOVES_ENV_ID = "TokenMaskMoves-v0"


def register_envs() -> None:
    """Register ``TokenMask-v0`` (single and vector entry points) and ``TokenMaskMoves-v0`` once per process."""
    if MOVES_ENV_ID not in gym.registry:
        gym.register(id=MOVES_ENV_ID, entry_point="tokenmask.envs.moves:TokenMaskMovesEnv")
    if ENV_ID in gym.registry:
        return
    gym.register(
        id=ENV_ID,
        entry_point="tokenmask.envs.token_mask_env:TokenMaskEnv",
        vector_entry_point="tokenmask.envs.vector_env:TokenMaskVectorEnv",
    )
