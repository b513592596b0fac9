"""``MovePolicy``: an SB3 actor-critic policy that scores each judged candidate of ``TokenMaskMoves-v0``.

The observation is one row of features per candidate (:data:`tokenmask.envs.moves.MOVE_FEATURES`,
then a valid flag). Each candidate's logit comes from its own row through a small MLP shared by all
rows, so the policy does not depend on the candidates' order; padding rows get
:data:`~tokenmask.policies.policy.PADDING_LOGIT` (never chosen). The value reads the mean of the
valid rows' hidden vectors and their maximum.
"""

from __future__ import annotations

from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.distributions import CategoricalDistribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import Schedule
from torch import nn

from tokenmask.policies.policy import PADDING_LOGIT, _mlp, finish_heads


class CandidateRows(BaseFeaturesExtractor):
    """Passes the ``(candidates, features + 1)`` observation through, flattened (the heads reshape it)."""

    def __init__(self, observation_space: spaces.Box) -> None:
        if len(observation_space.shape) != 2:
            raise ValueError(
                f"MovePolicy reads a (candidates, features + 1) Box, got shape {observation_space.shape}."
            )
        super().__init__(
            observation_space, features_dim=int(observation_space.shape[0] * observation_space.shape[1])
        )
        self.rows, self.width = (int(x) for x in observation_space.shape)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return observations.reshape(observations.shape[0], -1)


class CandidateHeads(nn.Module):
    """The policy's ``mlp_extractor``: per-candidate actor latents (with the valid flag) and a pooled critic latent.

    :param rows: candidates per observation.
    :param width: features per candidate (without the valid flag).
    :param pi_sizes: hidden sizes of the per-candidate actor MLP.
    :param vf_sizes: hidden sizes of the per-candidate critic MLP (pooled over valid rows).
    :param activation_fn: activation between layers.
    """

    def __init__(
        self, rows: int, width: int, pi_sizes: list[int], vf_sizes: list[int], activation_fn: type[nn.Module]
    ) -> None:
        super().__init__()
        self.rows, self.width = rows, width
        self.actor = _mlp([width, *pi_sizes], activation_fn)
        self.critic = _mlp([width, *vf_sizes], activation_fn)
        self.row_dim = pi_sizes[-1] if pi_sizes else width
        critic_dim = vf_sizes[-1] if vf_sizes else width
        self.latent_dim_pi = rows * (self.row_dim + 1)
        self.latent_dim_vf = 2 * critic_dim

    def _split(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = features.reshape(-1, self.rows, self.width + 1)
        return x[..., :-1], x[..., -1]

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_actor(features), self.forward_critic(features)

    def forward_actor(self, features: torch.Tensor) -> torch.Tensor:
        rows, valid = self._split(features)
        latent = torch.cat([self.actor(rows), valid[..., None]], dim=-1)
        return latent.reshape(features.shape[0], -1)

    def forward_critic(self, features: torch.Tensor) -> torch.Tensor:
        rows, valid = self._split(features)
        hidden = self.critic(rows)
        weights = valid / valid.sum(dim=1, keepdim=True).clamp(min=1.0)
        mean = torch.einsum("bk,bkd->bd", weights, hidden)
        top = hidden.masked_fill(valid[..., None] < 0.5, -1e4).amax(dim=1)
        return torch.cat([mean, top], dim=1)


class CandidateLogits(nn.Module):
    """The action layer: one logit per candidate from its latent (weights shared by rows); padding gets
    :data:`~tokenmask.policies.policy.PADDING_LOGIT`."""

    def __init__(self, rows: int, row_dim: int) -> None:
        super().__init__()
        self.rows, self.row_dim = rows, row_dim
        self.linear = nn.Linear(row_dim, 1)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        per_row = latent.reshape(latent.shape[0], self.rows, self.row_dim + 1)
        logits = self.linear(per_row[..., :-1]).squeeze(-1)
        return logits.masked_fill(per_row[..., -1] < 0.5, PADDING_LOGIT)


class MovePolicy(ActorCriticPolicy):
    """Actor-critic policy for ``TokenMaskMoves-v0``: ``PPO(MovePolicy, env)`` or ``A2C(MovePolicy, env)``.

    ``net_arch`` is read as ``dict(pi=[...], vf=[...])``, the hidden sizes of the per-candidate actor and
    critic MLPs (default ``[32, 32]`` each: about 3k parameters). Every other ``ActorCriticPolicy``
    argument is accepted.

    :param observation_space: ``Box((candidates, features + 1))`` of :class:`~tokenmask.envs.moves.TokenMaskMovesEnv`.
    :param action_space: ``Discrete(candidates)``.
    :param lr_schedule: learning-rate schedule (SB3 passes it).
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.Tanh,
        **kwargs: Any,
    ) -> None:
        if (
            not isinstance(action_space, spaces.Discrete)
            or not isinstance(observation_space, spaces.Box)
            or len(observation_space.shape) != 2
        ):
            raise ValueError(
                f"MovePolicy needs TokenMaskMoves-v0's (candidates, features + 1) Box observation and Discrete action, got "
                f"{observation_space} and {action_space}."
            )
        if int(action_space.n) != observation_space.shape[0]:
            raise ValueError(
                f"MovePolicy needs one action per candidate row: {action_space.n} actions for "
                f"{observation_space.shape[0]} rows."
            )
        kwargs.setdefault("features_extractor_class", CandidateRows)
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch=net_arch if net_arch is not None else dict(pi=[32, 32], vf=[32, 32]),
            activation_fn=activation_fn,
            **kwargs,
        )

    def _build_mlp_extractor(self) -> None:
        arch = self.net_arch
        pi, vf = (
            (list(arch.get("pi", [])), list(arch.get("vf", []))) if isinstance(arch, dict) else (arch, arch)
        )
        rows, width = self.observation_space.shape  # type: ignore[misc]
        self.mlp_extractor = CandidateHeads(rows, width - 1, pi, vf, self.activation_fn)  # type: ignore[assignment]

    def _build(self, lr_schedule: Schedule) -> None:
        if not isinstance(self.action_dist, CategoricalDistribution):
            raise ValueError("MovePolicy supports Discrete actions only.")
        self._build_mlp_extractor()
        assert isinstance(self.mlp_extractor, CandidateHeads)
        self.action_net = CandidateLogits(self.mlp_extractor.rows, self.mlp_extractor.row_dim)
        self.value_net = nn.Linear(self.mlp_extractor.latent_dim_vf, 1)
        finish_heads(self, lr_schedule)

    def choice_probabilities(self, observation: torch.Tensor) -> torch.Tensor:
        """Probability of each candidate, ``(batch, candidates)`` (padding ~0)."""
        distribution = self.get_distribution(observation)
        assert isinstance(distribution, CategoricalDistribution)
        return distribution.distribution.probs
