"""TokenMask-v0 (and TokenMaskMoves-v0): the Gymnasium environments, its batched vector form, rewards and the SB3 adapter.

Heavy pieces (torch, transformers) load on first use, so ``import tokenmask`` stays quick while
registering the environment id.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tokenmask.envs.registration import ENV_ID, MOVES_ENV_ID, register_envs

if TYPE_CHECKING:
    from tokenmask.envs.corpus import DocumentCorpus
    from tokenmask.envs.env_config import TokenMaskConfig
    from tokenmask.envs.episodes import GLOBAL_FEATURES, EpisodeRecord
    from tokenmask.envs.judge_bonus import JudgeBonus
    from tokenmask.envs.moves import MOVE_FEATURES, MoveTable, TokenMaskMovesEnv, build_move_table
    from tokenmask.envs.rewards import (
        REWARD_TYPES,
        InformationReward,
        MaskingReward,
        SurprisalReward,
        make_reward,
    )
    from tokenmask.envs.sb3_vec_env import TokenMaskSB3VecEnv
    from tokenmask.envs.scoring import TOKEN_FEATURES, IncrementalScorer, document_features
    from tokenmask.envs.token_mask_env import TokenMaskEnv
    from tokenmask.envs.vector_env import TokenMaskVectorEnv

_EXPORTS: dict[str, str] = {
    "DocumentCorpus": "tokenmask.envs.corpus",
    "TokenMaskConfig": "tokenmask.envs.env_config",
    "GLOBAL_FEATURES": "tokenmask.envs.episodes",
    "EpisodeRecord": "tokenmask.envs.episodes",
    "JudgeBonus": "tokenmask.envs.judge_bonus",
    "MOVE_FEATURES": "tokenmask.envs.moves",
    "MoveTable": "tokenmask.envs.moves",
    "TokenMaskMovesEnv": "tokenmask.envs.moves",
    "build_move_table": "tokenmask.envs.moves",
    "REWARD_TYPES": "tokenmask.envs.rewards",
    "InformationReward": "tokenmask.envs.rewards",
    "MaskingReward": "tokenmask.envs.rewards",
    "SurprisalReward": "tokenmask.envs.rewards",
    "make_reward": "tokenmask.envs.rewards",
    "TokenMaskSB3VecEnv": "tokenmask.envs.sb3_vec_env",
    "TOKEN_FEATURES": "tokenmask.envs.scoring",
    "IncrementalScorer": "tokenmask.envs.scoring",
    "document_features": "tokenmask.envs.scoring",
    "TokenMaskEnv": "tokenmask.envs.token_mask_env",
    "TokenMaskVectorEnv": "tokenmask.envs.vector_env",
}

__all__ = [
    "ENV_ID",
    "GLOBAL_FEATURES",
    "MOVES_ENV_ID",
    "MOVE_FEATURES",
    "REWARD_TYPES",
    "TOKEN_FEATURES",
    "DocumentCorpus",
    "EpisodeRecord",
    "IncrementalScorer",
    "InformationReward",
    "JudgeBonus",
    "MaskingReward",
    "MoveTable",
    "SurprisalReward",
    "TokenMaskConfig",
    "TokenMaskEnv",
    "TokenMaskMovesEnv",
    "TokenMaskSB3VecEnv",
    "TokenMaskVectorEnv",
    "build_move_table",
    "document_features",
    "make_reward",
    "register_envs",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tokenmask.envs' has no attribute {name!r}")
