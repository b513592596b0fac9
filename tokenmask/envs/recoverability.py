"""The former home of the env's judge bonus; it is :mod:`tokenmask.envs.judge_bonus` now.

These names stay importable from here: :class:`RecoverabilityBonus` (= :class:`JudgeBonus`),
:func:`same_vocabulary` and :func:`vocabulary_without_mask`.
"""

from __future__ import annotations

from tokenmask.envs.judge_bonus import (
    JudgeBonus,
    RecoverabilityBonus,
    same_vocabulary,
    vocabulary_without_mask,
)

__all__ = ["JudgeBonus", "RecoverabilityBonus", "same_vocabulary", "vocabulary_without_mask"]
