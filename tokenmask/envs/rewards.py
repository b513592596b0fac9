"""Reward functions of TokenMask-v0 (``reward_type``), vectorised over episodes.

Every reward trades compression against information: each masked token earns 1 token of
compression and pays ``bits_weight`` per bit that its recovery costs; at the episode's end a
penalty is paid for missing the target rate. Rewards are divided by the document's length, so an
episode's return is O(1) whatever the document's size. Subclass :class:`MaskingReward` for a new
trade and pass an instance as ``reward=`` to the environment.
The env can add a judge's recoverability and retention of the document on top of any of these
(``recoverability_weight``, ``retention_weight``, ``judge_credit``; :mod:`tokenmask.envs.judge_bonus`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np


class MaskingReward(ABC):
    """Base class: per-step reward of the masked tokens, plus a rate penalty at the episode's end.

    Step ``t`` (window ``W_t``, document of ``n`` tokens, ``m_i`` = 1 if real token ``i`` is masked,
    ``c_i`` = its cost in bits, given by :meth:`token_cost`)::

        r_t = (1 / n) * sum_{i in W_t} m_i * (1 - bits_weight * c_i)

    and the last step adds ``- rate_penalty * |rate - target_rate|`` with ``rate = sum_i m_i / n``.
    With ``rate_penalty > 1`` overshooting the target never pays, so the best policy masks the
    target share of tokens and picks those that cost the fewest bits.

    :param bits_weight: the exchange rate: tokens of compression one bit of reconstruction costs
        (0.1 = a token is worth 10 bits). Must be >= 0.
    :param rate_penalty: weight of the end-of-episode rate penalty (per unit of rate error). >= 0.
    """

    name: ClassVar[str] = "base"
    needs_masked_bits: ClassVar[bool] = False
    """True when :meth:`token_cost` needs the bits of the masked tokens under the masked prefix
    (an LM pass per step); False when the per-document features suffice."""

    def __init__(self, bits_weight: float = 0.1, rate_penalty: float = 4.0) -> None:
        if not np.isfinite(bits_weight) or bits_weight < 0:
            raise ValueError(f"bits_weight must be a finite number >= 0, got {bits_weight}.")
        if not np.isfinite(rate_penalty) or rate_penalty < 0:
            raise ValueError(f"rate_penalty must be a finite number >= 0, got {rate_penalty}.")
        self.bits_weight = float(bits_weight)
        self.rate_penalty = float(rate_penalty)

    @abstractmethod
    def token_cost(self, masked_bits: np.ndarray | None, surprisal_bits: np.ndarray) -> np.ndarray:
        """Cost in bits of masking each token of the window.

        :param masked_bits: ``(envs, window)`` ``-log2 p(x_i | masked prefix)`` at masked tokens,
            or ``None`` when :attr:`needs_masked_bits` is False.
        :param surprisal_bits: ``(envs, window)`` ``-log2 p(x_i | x_<i)`` of the unmasked document.
        :return: ``(envs, window)`` float64 bits (read only where the token is masked).
        """

    def step_reward(self, masked: np.ndarray, cost_bits: np.ndarray, doc_tokens: np.ndarray) -> np.ndarray:
        """``(envs,)`` reward of one step: ``(1/n) * sum m_i * (1 - bits_weight * c_i)``.

        :param masked: ``(envs, window)`` bool, True at masked real tokens.
        :param cost_bits: ``(envs, window)`` from :meth:`token_cost`.
        :param doc_tokens: ``(envs,)`` document lengths ``n``.
        """
        gain = np.where(masked, 1.0 - self.bits_weight * cost_bits, 0.0)
        return gain.sum(axis=1) / doc_tokens

    def final_reward(self, rate: np.ndarray, target_rate: np.ndarray) -> np.ndarray:
        """``(envs,)`` reward added at the episode's last step: ``-rate_penalty * |rate - target_rate|``."""
        return -self.rate_penalty * np.abs(rate - target_rate)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(bits_weight={self.bits_weight}, rate_penalty={self.rate_penalty})"


class InformationReward(MaskingReward):
    """``information`` (default): masked tokens pay the bits the reconstructor needs to recover them.

    ``c_i = -log2 p(x_i | masked prefix)``, computed by the reconstructor when the step is taken
    (KV cache of the episode's masked prefix). What the reconstructor reads follows ``mask_mode``:
    ``delete`` removes masked tokens from its input, as they are from the compressed text (a run
    of masked tokens is predicted after the last kept token before it, so a masked token's bits
    also reflect the masked tokens before it); ``placeholder`` puts the mask token in their place.
    Bits are exact for the prefix: later windows never change an earlier token's bits.
    """

    name = "information"
    needs_masked_bits = True

    def token_cost(self, masked_bits: np.ndarray | None, surprisal_bits: np.ndarray) -> np.ndarray:
        """``c_i`` = bits under the masked prefix."""
        if masked_bits is None:
            raise ValueError(
                "InformationReward needs the masked tokens' bits; the environment must price them."
            )
        return masked_bits


class SurprisalReward(MaskingReward):
    """``simple``: the same trade priced with the per-document surprisal features only (no LM pass per step).

    ``c_i = -log2 p(x_i | x_<i)`` of the *unmasked* document (the ``surprisal_bits`` feature), so
    a masked token's price ignores the other masked tokens. Cheap; a proxy for ``information``.
    """

    name = "simple"
    needs_masked_bits = False

    def token_cost(self, masked_bits: np.ndarray | None, surprisal_bits: np.ndarray) -> np.ndarray:
        """``c_i`` = surprisal of the original token."""
        return surprisal_bits.astype(np.float64)


REWARD_TYPES: dict[str, type[MaskingReward]] = {
    InformationReward.name: InformationReward,
    SurprisalReward.name: SurprisalReward,
}
"""``reward_type`` names and their classes."""


def make_reward(reward_type: str, bits_weight: float = 0.1, rate_penalty: float = 4.0) -> MaskingReward:
    """Build a reward by name.

    :raises ValueError: for an unknown name (the message lists the known ones).
    """
    if reward_type not in REWARD_TYPES:
        raise ValueError(
            f"Unknown reward_type {reward_type!r}. Fix: use one of {sorted(REWARD_TYPES)}, "
            "or pass a MaskingReward instance as reward=."
        )
    return REWARD_TYPES[reward_type](bits_weight=bits_weight, rate_penalty=rate_penalty)
