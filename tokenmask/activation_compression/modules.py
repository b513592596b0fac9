"""The learned parts of activation compression: :class:`CompressionLayer` (merge weights, similarity features,
merged-state correction) and :class:`RestoreGate` (each position's gated residual before the LM head).

Both start as the identity or a parameter-free merge (their last projections are zero), so an untrained
:class:`~tokenmask.activation_compression.model.CompressedCausalLM` merges by cosine similarity and attention alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


class CompressionLayer(nn.Module):
    """The learned parts of one compression layer (all start as the identity / parameter-free merge).

    :param hidden_size: width of the hidden states.
    :param similarity_rank: rank of the learned correction of the similarity features.
    :param adapter_rank: rank of the learned correction of merged states.
    """

    def __init__(self, hidden_size: int, similarity_rank: int = 64, adapter_rank: int = 64) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.similarity_down = nn.Linear(hidden_size, similarity_rank, bias=False)
        self.similarity_up = nn.Linear(similarity_rank, hidden_size, bias=False)
        self.importance_scale = nn.Parameter(torch.ones(()))
        self.importance_bias = nn.Linear(hidden_size, 1)
        self.adapter_down = nn.Linear(hidden_size + 1, adapter_rank)
        self.adapter_up = nn.Linear(adapter_rank, hidden_size)
        for zero in (
            self.similarity_up.weight,
            self.importance_bias.weight,
            self.importance_bias.bias,
            self.adapter_up.weight,
            self.adapter_up.bias,
        ):
            nn.init.zeros_(zero)

    def _normed(self, states: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(states.float(), (self.hidden_size,)).to(self.similarity_down.weight.dtype)

    def similarity_features(self, states: torch.Tensor) -> torch.Tensor:
        """Features whose cosine similarity decides merges: the centred, normalized state plus a learned low-rank term."""
        x = self._normed(states)
        return x + self.similarity_up(self.similarity_down(x))

    def merge_weights(self, states: torch.Tensor, received: torch.Tensor) -> torch.Tensor:
        """Positive merge weights: ``received_attention ** scale * exp(learned bias)``, per unit ``(B, U)``."""
        log_w = self.importance_scale * torch.log(received.float().clamp(min=1e-6))
        log_w = log_w + self.importance_bias(self._normed(states))[..., 0].float()
        return torch.exp(log_w.clamp(-30.0, 30.0))

    def adapt(self, merged: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        """Learned correction of merged states (clusters of one unit are left exactly as they are).

        :param merged: ``(B, M, d)`` merged states.
        :param sizes: ``(B, M)`` units per cluster.
        """
        x = torch.cat(
            [
                self._normed(merged),
                torch.log(sizes.clamp(min=1).to(self.adapter_down.weight.dtype))[..., None],
            ],
            -1,
        )
        delta = self.adapter_up(F.gelu(self.adapter_down(x)))
        rms = merged.float().pow(2).mean(-1, keepdim=True).sqrt().to(delta.dtype)
        return merged + (delta * rms * (sizes > 1)[..., None].to(delta.dtype)).to(merged.dtype)


class RestoreGate(nn.Module):
    """Learned gated residual restoring each position's own state before the LM head.

    ``out = y + sigmoid(gate([norm(y), norm(own)])) * up(down(own))``; ``up`` starts at zero, and
    the low rank keeps it a correction rather than a second LM head.

    :param hidden_size: width of the hidden states.
    :param rank: rank of the residual's projection.
    """

    def __init__(self, hidden_size: int, rank: int = 64) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.gate = nn.Linear(2 * hidden_size, 1)
        self.down = nn.Linear(hidden_size, rank, bias=False)
        self.up = nn.Linear(rank, hidden_size, bias=False)
        for zero in (self.gate.weight, self.gate.bias, self.up.weight):
            nn.init.zeros_(zero)

    def forward(self, final: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        """Restore ``final`` ``(B, P, d)`` with the positions' ``own`` states ``(B, P, d)``."""
        dtype = self.gate.weight.dtype
        normed = torch.cat(
            [
                F.layer_norm(final.float(), (self.hidden_size,)),
                F.layer_norm(own.float(), (self.hidden_size,)),
            ],
            -1,
        )
        gate = torch.sigmoid(self.gate(normed.to(dtype)))
        return final + (gate * self.up(self.down(own.to(dtype)))).to(final.dtype)
