"""The agent's features extractor: hashed token embeddings + a small transformer over the window.

The LM's 49k x 576 embedding table is *not* part of the agent: token ids are hashed into a small
learned table (two hash functions whose rows are summed, so two tokens rarely share both rows).
That keeps the agent at about 1M trainable parameters, self-contained in its SB3 zip, and
independent of which reconstructor scores it.
"""

from __future__ import annotations

import gymnasium as gym
import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

OBSERVATION_KEYS: tuple[str, ...] = ("token_ids", "context_ids", "token_features", "valid", "global_features")

# Odd 32-bit multipliers (Knuth's golden-ratio constant and a second large prime) for the two hashes.
_HASH_MULTIPLIERS: tuple[int, int] = (2654435761, 2246822519)


def symlog(x: torch.Tensor) -> torch.Tensor:
    """``sign(x) * log(1 + |x|)``: squashes features of any scale (bits, token counts) into a small range."""
    x = torch.nan_to_num(x, nan=0.0, posinf=1e6, neginf=-1e6)
    return torch.sign(x) * torch.log1p(torch.abs(x))


class HashedTokenEmbedding(nn.Module):
    """Token ids -> vectors through ``num_hashes`` hashed rows of a small table, summed.

    :param num_buckets: rows of the table (the padding id gets one more row of its own).
    :param embed_dim: width of each row.
    :param padding_id: the id that marks padding (the space's upper bound, ``vocab_size``).
    :param num_hashes: hash functions (1 or 2).
    """

    def __init__(self, num_buckets: int, embed_dim: int, padding_id: int, num_hashes: int = 2) -> None:
        super().__init__()
        if num_buckets < 2:
            raise ValueError(f"num_buckets must be >= 2, got {num_buckets}.")
        if num_hashes not in (1, 2):
            raise ValueError(f"num_hashes must be 1 or 2, got {num_hashes}.")
        self.num_buckets = num_buckets
        self.padding_id = padding_id
        self.num_hashes = num_hashes
        self.table = nn.Embedding(num_buckets + 1, embed_dim)
        nn.init.normal_(self.table.weight, std=0.02)

    def buckets(self, ids: torch.Tensor, which: int) -> torch.Tensor:
        """The bucket of each id under hash ``which``; padding maps to the extra last row."""
        hashed = ((ids * _HASH_MULTIPLIERS[which]) % (1 << 32)) % self.num_buckets
        return torch.where(ids == self.padding_id, torch.full_like(hashed, self.num_buckets), hashed)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.table(self.buckets(ids, 0))
        if self.num_hashes == 2:
            out = out + self.table(self.buckets(ids, 1))
        return out


class TokenMaskExtractor(BaseFeaturesExtractor):
    """Features of a TokenMask observation: one vector per window token, plus a summary vector.

    Each position of ``[context before | window | context after]`` gets its hashed token
    embedding, a learned position embedding and a segment embedding; window tokens add a
    projection of their ``token_features`` (e.g. the reconstructor's surprisal in bits) and of
    ``valid``; every position adds a projection of ``global_features`` (position in the
    document, target rate, rate so far). A summary token carries the global features alone. A
    pre-norm transformer encoder mixes them (padding is not attended to).

    Output, flattened to ``features_dim = d_model * (window + 1) + window``:
    ``[summary (d_model) | window tokens (window x d_model) | valid (window)]``;
    :class:`~tokenmask.policies.policy.TokenMaskPolicy` reads this layout to give per-token
    mask logits and a value. With SB3's default ``MultiInputPolicy`` heads the vector is used as is.

    :param observation_space: the env's ``Dict`` space (keys ``token_ids``, ``context_ids``,
        ``token_features``, ``valid``, ``global_features``); ``token_ids``' upper bound is the padding id.
    :param d_model: transformer width.
    :param num_layers: transformer layers.
    :param num_heads: attention heads.
    :param ff_multiplier: feed-forward width as a multiple of ``d_model``.
    :param num_buckets: rows of the hashed token table.
    :param embed_dim: width of the hashed table (projected to ``d_model``).
    :param num_hashes: hash functions per token (1 or 2).
    """

    def __init__(
        self,
        observation_space: gym.Space,
        d_model: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        ff_multiplier: int = 2,
        num_buckets: int = 8192,
        embed_dim: int = 64,
        num_hashes: int = 2,
    ) -> None:
        if not isinstance(observation_space, spaces.Dict):
            raise ValueError(f"TokenMaskExtractor needs a Dict observation space, got {observation_space}.")
        missing = [k for k in OBSERVATION_KEYS if k not in observation_space.spaces]
        if missing:
            raise ValueError(
                f"The observation space lacks key(s) {missing}; TokenMaskExtractor reads {list(OBSERVATION_KEYS)}. "
                "Fix: use the TokenMask-v0 environment (or a space with the same keys)."
            )
        token_space = observation_space["token_ids"]
        feature_space = observation_space["token_features"]
        global_space = observation_space["global_features"]
        context_space = observation_space["context_ids"]
        assert isinstance(token_space, spaces.Box) and isinstance(feature_space, spaces.Box)
        assert isinstance(global_space, spaces.Box) and isinstance(context_space, spaces.Box)
        window = int(token_space.shape[0])
        if feature_space.shape[0] != window:
            raise ValueError(
                f"token_features has {feature_space.shape[0]} rows for a window of {window} tokens."
            )
        if context_space.shape[0] % 2:
            raise ValueError(f"context_ids must hold 2 * context_size ids, got {context_space.shape[0]}.")
        if d_model % num_heads:
            raise ValueError(f"d_model ({d_model}) must be a multiple of num_heads ({num_heads}).")
        super().__init__(observation_space, features_dim=d_model * (window + 1) + window)
        self.window = window
        self.context_size = int(context_space.shape[0]) // 2
        self.num_token_features = int(feature_space.shape[1]) if len(feature_space.shape) > 1 else 1
        self.num_global_features = int(global_space.shape[0])
        self.padding_id = int(token_space.high.max())
        self.d_model = d_model

        self.token_embedding = HashedTokenEmbedding(num_buckets, embed_dim, self.padding_id, num_hashes)
        self.token_projection = nn.Linear(embed_dim, d_model)
        self.feature_projection = nn.Linear(self.num_token_features + 1, d_model)  # + the valid flag
        self.global_projection = nn.Linear(self.num_global_features, d_model)
        length = 1 + self.window + 2 * self.context_size
        self.position_embedding = nn.Parameter(torch.zeros(length, d_model))
        self.segment_embedding = nn.Embedding(4, d_model)  # summary, context before, window, context after
        nn.init.normal_(self.position_embedding, std=0.02)
        segments = [0] + [1] * self.context_size + [2] * self.window + [3] * self.context_size
        self.register_buffer("segments", torch.tensor(segments, dtype=torch.long), persistent=False)
        layer = nn.TransformerEncoderLayer(
            d_model,
            num_heads,
            dim_feedforward=ff_multiplier * d_model,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(d_model)

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        token_ids = observations["token_ids"].round().long()
        context_ids = observations["context_ids"].round().long().reshape(token_ids.shape[0], -1)
        valid = observations["valid"].float().reshape(token_ids.shape[0], self.window)
        features = observations["token_features"].float().reshape(token_ids.shape[0], self.window, -1)
        global_features = symlog(observations["global_features"].float())
        batch = token_ids.shape[0]

        before, after = context_ids[:, : self.context_size], context_ids[:, self.context_size :]
        ids = torch.cat([before, token_ids, after], dim=1)
        tokens = self.token_projection(self.token_embedding(ids))
        window_slice = slice(self.context_size, self.context_size + self.window)
        window_extra = self.feature_projection(torch.cat([symlog(features), valid[..., None]], dim=-1))
        tokens = torch.cat(
            [
                tokens[:, : window_slice.start],
                tokens[:, window_slice] + window_extra,
                tokens[:, window_slice.stop :],
            ],
            dim=1,
        )
        summary = torch.zeros(batch, 1, self.d_model, device=tokens.device, dtype=tokens.dtype)
        hidden = torch.cat([summary, tokens], dim=1)
        hidden = hidden + self.global_projection(global_features)[:, None, :]
        hidden = hidden + self.position_embedding[None] + self.segment_embedding(self.segments)[None]

        padding = torch.cat(
            [torch.zeros(batch, 1, dtype=torch.bool, device=ids.device), ids == self.padding_id], dim=1
        )
        hidden = self.final_norm(self.encoder(hidden, src_key_padding_mask=padding))
        summary_out = hidden[:, 0]
        window_out = hidden[:, 1 + self.context_size : 1 + self.context_size + self.window]
        return torch.cat([summary_out, window_out.reshape(batch, -1), valid], dim=1)
