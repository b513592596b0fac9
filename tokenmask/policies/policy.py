"""``TokenMaskPolicy``: an SB3 actor-critic policy that gives one mask logit per window token.

SB3's default heads map the whole feature vector to the ``MultiBinary(window)`` logits with one
dense layer; here the logit of token ``i`` comes from token ``i``'s own features through a small
MLP shared by all positions, and padded positions are pinned to "keep" (probability ~0 of
masking, so they add nothing to the log-probability or the entropy). The value comes from the
extractor's summary vector pooled with the mean of the valid tokens.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.distributions import BernoulliDistribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import Schedule
from torch import nn

from tokenmask.policies.features import TokenMaskExtractor

# Logit given to padded positions: sigmoid(-30) ~ 1e-13, far from numerical trouble.
PADDING_LOGIT = -30.0


def _mlp(sizes: list[int], activation_fn: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for size_in, size_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(size_in, size_out), activation_fn()]
    return nn.Sequential(*layers)


class TokenMaskHeads(nn.Module):
    """The policy's ``mlp_extractor``: per-token actor latents and a pooled critic latent.

    Reads the :class:`TokenMaskExtractor` layout ``[summary | window x d_model | valid]``.

    :param window: tokens per window.
    :param d_model: width of the extractor's vectors.
    :param pi_sizes: hidden sizes of the per-token actor MLP (shared by positions).
    :param vf_sizes: hidden sizes of the critic MLP.
    :param activation_fn: activation between layers.
    """

    def __init__(
        self,
        window: int,
        d_model: int,
        pi_sizes: list[int],
        vf_sizes: list[int],
        activation_fn: type[nn.Module],
    ) -> None:
        super().__init__()
        self.window = window
        self.d_model = d_model
        self.token_dim = pi_sizes[-1] if pi_sizes else d_model
        self.actor = _mlp([d_model, *pi_sizes], activation_fn)
        self.critic = _mlp([2 * d_model, *vf_sizes], activation_fn)
        # SB3 reads these two attributes to size the action and value layers.
        self.latent_dim_pi = window * (self.token_dim + 1)
        self.latent_dim_vf = vf_sizes[-1] if vf_sizes else 2 * d_model

    def _split(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        d, w = self.d_model, self.window
        summary = features[:, :d]
        tokens = features[:, d : d + w * d].reshape(-1, w, d)
        valid = features[:, d + w * d :]
        return summary, tokens, valid

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_actor(features), self.forward_critic(features)

    def forward_actor(self, features: torch.Tensor) -> torch.Tensor:
        """``(batch, window * (token_dim + 1))``: each token's latent followed by its valid flag."""
        _, tokens, valid = self._split(features)
        latent = self.actor(tokens)
        return torch.cat([latent, valid[..., None]], dim=-1).reshape(features.shape[0], -1)

    def forward_critic(self, features: torch.Tensor) -> torch.Tensor:
        summary, tokens, valid = self._split(features)
        weights = valid / valid.sum(dim=1, keepdim=True).clamp(min=1.0)
        pooled = torch.einsum("bw,bwd->bd", weights, tokens)
        return self.critic(torch.cat([summary, pooled], dim=1))


class TokenLogits(nn.Module):
    """The action layer: one logit per action entry from the token latents (weights shared by positions).

    Each token's latent gives it a logit; with ``span > 1`` an entry's logit is the mean over the
    valid tokens of its run of ``span`` tokens. Entries with no valid token (padding past the
    document's end) get :data:`PADDING_LOGIT`, i.e. they are always kept.

    :param window: tokens per window.
    :param token_dim: width of each token's latent.
    :param span: tokens per action entry (the env's ``span``; divides ``window``).
    """

    def __init__(self, window: int, token_dim: int, span: int = 1) -> None:
        super().__init__()
        if span < 1 or window % span:
            raise ValueError(f"span must be >= 1 and divide the window ({window}), got {span}.")
        self.window = window
        self.token_dim = token_dim
        self.span = span
        self.linear = nn.Linear(token_dim, 1)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        per_token = latent.reshape(latent.shape[0], self.window, self.token_dim + 1)
        logits = self.linear(per_token[..., :-1]).squeeze(-1)
        valid = per_token[..., -1] >= 0.5
        if self.span > 1:
            shape = (latent.shape[0], self.window // self.span, self.span)
            weights = valid.reshape(shape).float()
            count = weights.sum(-1)
            logits = (logits.reshape(shape) * weights).sum(-1) / count.clamp(min=1.0)
            valid = count > 0
        return logits.masked_fill(~valid, PADDING_LOGIT)


class TokenMaskPolicy(ActorCriticPolicy):
    """Actor-critic policy for TokenMask-v0: ``PPO(TokenMaskPolicy, env)`` or ``A2C(TokenMaskPolicy, env)``.

    Accepts every ``ActorCriticPolicy`` argument. ``net_arch`` is read as
    ``dict(pi=[...], vf=[...])``: ``pi`` = hidden sizes of the per-token actor MLP, ``vf`` = those
    of the critic MLP. ``features_extractor_kwargs`` go to :class:`TokenMaskExtractor`
    (``d_model``, ``num_layers``, ``num_buckets``, ...). Default: about 0.95M trainable parameters.

    :param observation_space: the env's ``Dict`` observation space.
    :param action_space: ``MultiBinary(window // span)`` (1 = mask; the span is read from its size).
    :param lr_schedule: learning-rate schedule (SB3 passes it).
    :param net_arch: ``dict(pi=[64], vf=[64])`` by default.
    :param activation_fn: activation of the head MLPs (default GELU).
    :param features_extractor_class: :class:`TokenMaskExtractor` by default (a subclass may replace it).
    :param kwargs: the remaining ``ActorCriticPolicy`` arguments.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.GELU,
        features_extractor_class: type[TokenMaskExtractor] = TokenMaskExtractor,
        **kwargs: Any,
    ) -> None:
        if not isinstance(action_space, spaces.MultiBinary):
            raise ValueError(f"TokenMaskPolicy needs a MultiBinary(window) action space, got {action_space}.")
        if not issubclass(features_extractor_class, TokenMaskExtractor):
            raise ValueError("TokenMaskPolicy reads the TokenMaskExtractor layout; pass a subclass of it.")
        if net_arch is None:
            net_arch = dict(pi=[64], vf=[64])
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch=net_arch,
            activation_fn=activation_fn,
            features_extractor_class=features_extractor_class,
            **kwargs,
        )

    def _head_sizes(self) -> tuple[list[int], list[int]]:
        arch = self.net_arch
        if isinstance(arch, dict):
            return list(arch.get("pi", [])), list(arch.get("vf", []))
        return list(arch), list(arch)

    def _build_mlp_extractor(self) -> None:
        extractor = self.features_extractor
        assert isinstance(extractor, TokenMaskExtractor)
        pi_sizes, vf_sizes = self._head_sizes()
        self.mlp_extractor = TokenMaskHeads(  # type: ignore[assignment]
            extractor.window, extractor.d_model, pi_sizes, vf_sizes, self.activation_fn
        )

    def _build(self, lr_schedule: Schedule) -> None:
        if not isinstance(self.action_dist, BernoulliDistribution):
            raise ValueError("TokenMaskPolicy supports MultiBinary actions only (no gSDE).")
        self._build_mlp_extractor()
        assert isinstance(self.mlp_extractor, TokenMaskHeads)
        window = self.mlp_extractor.window
        entries = int(self.action_space.n)  # type: ignore[attr-defined]
        if entries < 1 or window % entries:
            raise ValueError(
                f"The action space has {entries} entries, which does not divide the window of {window} tokens."
            )
        self.action_net = TokenLogits(window, self.mlp_extractor.token_dim, span=window // entries)
        self.value_net = nn.Linear(self.mlp_extractor.latent_dim_vf, 1)
        # The transformer keeps PyTorch's own initialisation; heads follow SB3's gains.
        finish_heads(self, lr_schedule)

    def action_probabilities(self, observation: dict[str, torch.Tensor]) -> torch.Tensor:
        """Probability of each action entry being 1 (mask), ``(batch, window // span)``.

        :param observation: a batch of observations, already tensors on the policy's device.
        """
        distribution = self.get_distribution(observation)
        assert isinstance(distribution, BernoulliDistribution)
        return distribution.distribution.probs

    def mask_probabilities(self, observation: dict[str, torch.Tensor]) -> torch.Tensor:
        """Probability of masking each window token, ``(batch, window)``; padding past the document's end gives ~0.

        With ``span > 1`` every token of a run gets its entry's probability.

        :param observation: a batch of observations, already tensors on the policy's device.
        """
        assert isinstance(self.action_net, TokenLogits)
        return self.action_probabilities(observation).repeat_interleave(self.action_net.span, dim=1)


def finish_heads(policy: ActorCriticPolicy, lr_schedule: Schedule) -> None:
    """The end of a custom ``_build``: SB3's orthogonal gains for the heads (``mlp_extractor`` sqrt 2, ``action_net``
    0.01, ``value_net`` 1; the features extractor keeps its own initialisation) when ``ortho_init``, then the
    optimiser over every parameter."""
    if policy.ortho_init:
        for module, gain in (
            (policy.mlp_extractor, 2**0.5),
            (policy.action_net, 0.01),
            (policy.value_net, 1.0),
        ):
            module.apply(functools.partial(policy.init_weights, gain=gain))
    policy.optimizer = policy.optimizer_class(
        policy.parameters(), lr=lr_schedule(1), **policy.optimizer_kwargs
    )  # type: ignore[call-arg]


def count_trainable_parameters(module: nn.Module) -> int:
    """Number of trainable parameters of a module (a policy counts its extractor once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
