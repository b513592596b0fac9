"""The agent: an SB3 actor-critic policy (~1M trainable parameters) for the TokenMask-v0 observation.

Importing this module also registers the alias ``"TokenMaskPolicy"`` with SB3's ``PPO`` and
``A2C``, so ``PPO("TokenMaskPolicy", env)`` and RL Zoo's ``policy: TokenMaskPolicy`` work.
"""

from stable_baselines3 import A2C, PPO

from tokenmask.policies.features import HashedTokenEmbedding, TokenMaskExtractor, symlog
from tokenmask.policies.move_policy import MovePolicy
from tokenmask.policies.policy import (
    PADDING_LOGIT,
    TokenLogits,
    TokenMaskHeads,
    TokenMaskPolicy,
    count_trainable_parameters,
)

POLICY_ALIAS = "TokenMaskPolicy"
MOVE_POLICY_ALIAS = "MovePolicy"
for _algorithm in (PPO, A2C):
    _algorithm.policy_aliases = {
        **_algorithm.policy_aliases,
        POLICY_ALIAS: TokenMaskPolicy,
        MOVE_POLICY_ALIAS: MovePolicy,
    }

__all__ = [
    "PADDING_LOGIT",
    "POLICY_ALIAS",
    "MOVE_POLICY_ALIAS",
    "HashedTokenEmbedding",
    "MovePolicy",
    "TokenLogits",
    "TokenMaskExtractor",
    "TokenMaskHeads",
    "TokenMaskPolicy",
    "count_trainable_parameters",
    "symlog",
]
