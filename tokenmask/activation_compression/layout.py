"""The token layout of the compressed layers and who may attend to whom.

After the first compression layer the sequence the decoder layers run on holds two kinds of
tokens: *position tokens* (level 0, one per original position whose output is wanted) and
*cluster tokens* (level ``k`` for the ``k``-th compression layer). Every token carries two times,
in original positions:

* ``avail``: from which query time on the token may be read. A position token is readable at its
  own position; a cluster is readable once it is *closed*, i.e. at the time the unit after its
  last unit was decided not to join it (for level 1: the position right after the cluster).
* ``qtime``: the time of the token as a query (``avail`` for both kinds).

A query at time ``t`` reads a key when the key is readable at ``t`` and not yet *superseded* (its
own cluster at the next level is not closed at ``t``; once it is, the query reads that cluster
instead). Cluster tokens read only tokens of their own or higher levels, so the clusters of a
pre-fill are computed exactly as on the short sequence; position tokens read everything they may.
Hence no token reads information from a later position: a position reads closed clusters of the
past plus the raw positions of its own, still open cluster. Two clusters of one level may close at
the same time (the last two of a later level, both closed by the prefix's end); the earlier one
then does not read the later one, so clusters of a level read only clusters up to themselves.

In the ``prefill`` mode of the compressed model the sequence holds one level of clusters (in time
order) and the positions after them, so :meth:`TokenLayout.causal_order` can put each row in the
order ``[clusters, positions, padding]``, where the rule above is plain causal attention: no
``(S, S)`` mask is needed, and a KV cache of that order is exactly what a decode step reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenmask.activation_compression.clustering import NO_TIME

FIELDS: tuple[str, ...] = (
    "level",
    "valid",
    "avail",
    "parent_avail",
    "position",
    "protected",
    "origin",
    "member",
)


@dataclass
class TokenLayout:
    """Per-token metadata of the sequence the decoder layers run on; every field is ``(B, S)``.

    :param level: 0 for position tokens, ``k`` for clusters of the ``k``-th compression layer.
    :param valid: ``False`` for padding columns.
    :param avail: time from which the token is readable (see the module docstring).
    :param parent_avail: ``avail`` of the cluster that absorbed the token, ``NO_TIME`` if none yet.
    :param position: position id (float; a cluster sits at the weighted mean of its units).
    :param protected: never merged (the BOS attention sink, and clusters holding it).
    :param origin: original position of a position token, ``-1`` for clusters and padding.
    :param member: takes part in the next clustering (compressible position, or a valid cluster).
    """

    level: torch.Tensor
    valid: torch.Tensor
    avail: torch.Tensor
    parent_avail: torch.Tensor
    position: torch.Tensor
    protected: torch.Tensor
    origin: torch.Tensor
    member: torch.Tensor

    @classmethod
    def positions(
        cls, valid: torch.Tensor, compress_lengths: torch.Tensor, protected_tokens: int
    ) -> TokenLayout:
        """The layout before any compression: one position token per column.

        :param valid: ``(B, N)`` bool, real tokens (right padding).
        :param compress_lengths: ``(B,)`` leading positions that may be merged.
        :param protected_tokens: leading positions never merged.
        """
        b, n = valid.shape
        index = torch.arange(n, device=valid.device).expand(b, n)
        return cls(
            level=torch.zeros_like(index),
            valid=valid.clone(),
            avail=index.clone(),
            parent_avail=torch.full_like(index, NO_TIME),
            position=index.float(),
            protected=index < protected_tokens,
            origin=torch.where(valid, index, torch.full_like(index, -1)),
            member=valid & (index < compress_lengths[:, None]),
        )

    @property
    def width(self) -> int:
        """Number of columns ``S``."""
        return int(self.valid.shape[1])

    def take(self, index: torch.Tensor, keep: torch.Tensor) -> TokenLayout:
        """Columns ``index`` ``(B, S')`` of each row; columns where ``keep`` is ``False`` become padding."""
        parts = {name: torch.gather(getattr(self, name), 1, index) for name in FIELDS}
        parts["valid"] = parts["valid"] & keep
        parts["member"] = parts["member"] & keep
        parts["origin"] = torch.where(keep, parts["origin"], torch.full_like(parts["origin"], -1))
        return TokenLayout(**parts)

    def columns(self, start: int, stop: int) -> TokenLayout:
        """Columns ``[start, stop)``."""
        return TokenLayout(**{name: getattr(self, name)[:, start:stop] for name in FIELDS})

    @staticmethod
    def concat(parts: list[TokenLayout]) -> TokenLayout:
        """Columns of several layouts side by side."""
        return TokenLayout(**{name: torch.cat([getattr(p, name) for p in parts], dim=1) for name in FIELDS})

    def visibility(self) -> torch.Tensor:
        """``(B, S, S)`` bool: query (row) may read key (column); see the module docstring."""
        q_time = self.avail[:, :, None]
        column = torch.arange(self.width, device=self.avail.device)
        same_level_later = (
            (self.level[:, None, :] == self.level[:, :, None])
            & (self.level[:, None, :] > 0)
            & (column[None, None, :] > column[None, :, None])
        )
        readable = (self.avail[:, None, :] < q_time) | (
            (self.avail[:, None, :] == q_time) & ~same_level_later
        )
        not_superseded = self.parent_avail[:, None, :] > q_time
        level_ok = (self.level[:, None, :] >= self.level[:, :, None]) | (self.level[:, :, None] == 0)
        allowed = readable & not_superseded & level_ok & self.valid[:, None, :] & self.valid[:, :, None]
        eye = torch.eye(self.width, dtype=torch.bool, device=allowed.device)
        return allowed | eye[None]

    def causal_order(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row, the column order ``[valid clusters, valid positions, padding]`` in which :meth:`visibility` is plain causal.

        Only for layouts with one level of clusters that nothing supersedes (the ``prefill`` mode;
        a layout of positions alone too). Valid tokens then read exactly the valid tokens before
        them in that order: clusters are in time order (ties: column order), every cluster is
        readable before the first position after the prefix, and clusters do not read positions.

        :return: ``(order, keep)``: ``(B, S)`` long, a permutation of the columns, and ``(B, S)``
            bool, valid tokens in the new order (a prefix of each row).
        :raises RuntimeError: if the layout is not one the order makes causal.
        """
        group = torch.where(
            self.valid,
            torch.where(self.level > 0, torch.zeros_like(self.level), torch.ones_like(self.level)),
            torch.full_like(self.level, 2),
        )
        order = torch.argsort(group, dim=1, stable=True)
        keep = torch.gather(self.valid, 1, order)
        avail = torch.gather(self.avail, 1, order)
        level = torch.gather(self.level, 1, order)
        pairs = keep[:, 1:] & keep[:, :-1]
        levels = torch.where(keep & (level > 0), level, torch.zeros_like(level))
        one_level = levels.amax(1) == torch.where(
            keep & (level > 0), level, levels.amax(1, keepdim=True)
        ).amin(1)
        sorted_times = bool(((avail[:, 1:] >= avail[:, :-1]) | ~pairs).all())
        fresh = bool((self.parent_avail[self.valid] == NO_TIME).all())
        if not (sorted_times and fresh and bool(one_level.all())):
            raise RuntimeError(
                "This token layout is not causal in any column order (several cluster levels, superseded "
                "tokens or clusters out of time order). Fix: use the explicit mask of visibility() "
                "(the 'full' mode does)."
            )
        return order, keep
