"""The clustering arithmetic of one compression layer, as pure tensor functions.

A compression layer sees a row of *units* per sequence (token positions at the first compression
layer, clusters of the previous layer after that) and groups runs of adjacent, similar units into
clusters. Everything here is causal by construction: the decision to merge unit ``b`` into the run
before it reads only units ``<= b`` (its similarity to unit ``b - 1`` and, with the adaptive
threshold, the similarities seen so far in the same sequence), and a cluster's merge weights read
only attention paid by queries up to the cluster's last unit.

Shapes: ``B`` sequences, ``U`` units, ``d`` features, ``M`` clusters (padded to the batch maximum).
Cosine similarities are float32.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

NO_TIME = torch.iinfo(torch.long).max  # "never": a time no query reaches


def adjacent_similarity(features: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each unit to the unit before it, ``(B, U)`` float32; column 0 is NaN.

    :param features: ``(B, U, d)`` similarity features of the units.
    """
    f = features.float()
    sim = F.cosine_similarity(f[:, 1:], f[:, :-1], dim=-1)
    first = torch.full_like(sim[:, :1], float("nan"))
    return torch.cat([first, sim], dim=1)


def merge_eligible(member: torch.Tensor, protected: torch.Tensor) -> torch.Tensor:
    """Boundaries that may merge: unit ``b`` and unit ``b - 1`` are both members and neither is protected.

    :param member: ``(B, U)`` bool, units taking part in clustering (compressible and not padding).
    :param protected: ``(B, U)`` bool, units that always stay their own cluster (the BOS attention sink).
    :return: ``(B, U)`` bool; column 0 is always ``False``.
    """
    free = member & ~protected
    out = torch.zeros_like(member)
    out[:, 1:] = free[:, 1:] & free[:, :-1]
    return out


def running_quantile(
    similarity: torch.Tensor, eligible: torch.Tensor, quantile: float, chunk: int = 256
) -> torch.Tensor:
    """The causal adaptive threshold: at boundary ``b``, the ``quantile`` of the eligible similarities ``<= b``.

    Each sequence's threshold adapts to its own similarity distribution, reading only the past; a
    pair merges when its similarity lies above it, so ``quantile = 0.5`` merges about half of the
    eligible adjacent pairs.

    :param similarity: ``(B, U)`` from :func:`adjacent_similarity`.
    :param eligible: ``(B, U)`` from :func:`merge_eligible`.
    :param quantile: in ``[0, 1]``.
    :param chunk: boundaries processed at once (memory ``B * chunk * U``).
    :return: ``(B, U)`` float32 thresholds, NaN where no eligible similarity has been seen yet.
    """
    b, u = similarity.shape
    index = torch.arange(u, device=similarity.device)
    values = torch.where(
        eligible, similarity.float(), torch.full_like(similarity, float("nan"), dtype=torch.float32)
    )
    parts = []
    for start in range(0, u, chunk):
        rows = index[start : start + chunk]
        past = index[None, :] <= rows[:, None]  # (chunk, U)
        window = torch.where(
            past[None], values[:, None, :], torch.full_like(values[:, None, :], float("nan"))
        )
        parts.append(torch.nanquantile(window, float(quantile), dim=-1))
    return torch.cat(parts, dim=1)


def steered_quantile(
    similarity: torch.Tensor,
    eligible: torch.Tensor,
    quantile: float,
    chunk: int = 32,
    window: int = 128,
    gain: float = 2.0,
) -> torch.Tensor:
    """The causal adaptive threshold, steered so that about ``1 - quantile`` of the eligible pairs merge.

    :func:`running_quantile` alone merges fewer pairs than ``1 - quantile`` (it starts from few
    samples, and similarities drift along a sequence): at 0.64 it keeps about 0.70 of the units on
    pydocs. Here the boundaries are taken ``chunk`` at a time; each chunk's threshold is the
    quantile of the last ``window`` eligible similarities (up to the boundary itself) at a level
    that asks for ``1 - quantile`` of the chunk's boundaries plus ``gain`` times the merges still
    missing from the earlier chunks. Causal: a decision reads the similarities up to its own
    boundary and the decisions of earlier chunks (eligibility is positional, not content).

    :param similarity: ``(B, U)`` from :func:`adjacent_similarity`.
    :param eligible: ``(B, U)`` from :func:`merge_eligible`.
    :param quantile: in ``[0, 1]``: about the fraction of eligible boundaries that do **not** merge.
    :param chunk: boundaries per steering step.
    :param window: boundaries (back from each one) whose similarities set its threshold.
    :param gain: how hard a shortfall (or excess) of merges is made up in the next chunk.
    :return: ``(B, U)`` float32 thresholds (a pair merges when its similarity lies above), NaN where
        no eligible similarity has been seen yet.
    """
    b, u = similarity.shape
    index = torch.arange(u, device=similarity.device)
    values = torch.where(
        eligible, similarity.float(), torch.full_like(similarity, float("nan"), dtype=torch.float32)
    )
    share = 1.0 - float(quantile)
    seen = torch.zeros(b, dtype=torch.float32, device=similarity.device)
    merged = torch.zeros_like(seen)
    rows = torch.arange(b, device=similarity.device)
    parts = []
    for start in range(0, u, chunk):
        cols = index[start : start + chunk]
        here = eligible[:, start : start + chunk].float().sum(1)
        wanted = (share * here + gain * (share * seen - merged)) / here.clamp(min=1.0)
        level = torch.where(here > 0, 1.0 - wanted.clamp(0.0, 1.0), torch.full_like(wanted, float(quantile)))
        past = (index[None, :] <= cols[:, None]) & (index[None, :] > cols[:, None] - window)  # (chunk, U)
        recent = torch.where(
            past[None], values[:, None, :], torch.full_like(values[:, None, :], float("nan"))
        )
        # one quantile level per row: every row's level on every row, then the diagonal
        threshold = torch.nanquantile(recent, level, dim=-1)[rows, rows]  # (B, chunk)
        decided = eligible[:, start : start + chunk] & (
            similarity[:, start : start + chunk].float() > threshold
        )
        seen += here
        merged += decided.float().sum(1)
        parts.append(threshold)
    return torch.cat(parts, dim=1)


def cluster_starts(
    similarity: torch.Tensor, threshold: torch.Tensor, eligible: torch.Tensor, max_cluster_size: int
) -> torch.Tensor:
    """Where clusters start: every unit whose boundary is not merged, plus cuts every ``max_cluster_size`` units.

    :param similarity: ``(B, U)`` adjacent similarities.
    :param threshold: ``(B, U)`` (or broadcastable) thresholds; a boundary merges when ``similarity > threshold``.
    :param eligible: ``(B, U)`` boundaries allowed to merge.
    :param max_cluster_size: longest run merged into one cluster.
    :return: ``(B, U)`` bool.
    """
    merge = eligible & (similarity > threshold)  # NaN compares False: no history, no merge
    return cap_runs(~merge, max_cluster_size)


def cap_runs(starts: torch.Tensor, max_cluster_size: int) -> torch.Tensor:
    """Add starts so that no run between two starts is longer than ``max_cluster_size`` (causal: reads only the left)."""
    u = starts.shape[1]
    index = torch.arange(u, device=starts.device).expand_as(starts)
    starts = starts.clone()
    starts[:, 0] = True
    last_start = torch.cummax(torch.where(starts, index, torch.zeros_like(index)), dim=1).values
    return starts | ((index - last_start) % max_cluster_size == 0)


def budget_starts(
    similarity: torch.Tensor, eligible: torch.Tensor, merges: torch.Tensor, max_cluster_size: int
) -> torch.Tensor:
    """Cluster starts that merge the ``merges[b]`` most similar eligible pairs of each sequence (runs capped).

    Not causal inside the sequence: it reads the whole row's similarities. Use it only for a
    pre-fill whose positions are never scored themselves (the context of ``tokenmask evaluate``),
    where it hits a requested rate exactly.

    :param similarity: ``(B, U)``.
    :param eligible: ``(B, U)``.
    :param merges: ``(B,)`` number of merges wanted per sequence.
    :param max_cluster_size: longest run merged into one cluster.
    """
    sim = similarity.detach().float().cpu().numpy()
    ok = eligible.cpu().numpy()
    want = merges.cpu().numpy()
    rows, units = sim.shape
    starts = np.ones(sim.shape, dtype=bool)
    if rows == 0 or units == 0:
        return torch.from_numpy(starts).to(similarity.device)
    # each row's pairs, most similar first; the rows advance together, rank by rank (the greedy
    # order within a row is sequential, the rows are independent)
    order = np.argsort(-np.nan_to_num(sim, nan=-np.inf), axis=1, kind="stable")
    ranked_ok = np.take_along_axis(ok, order, axis=1)
    left = np.tile(np.arange(units), (rows, 1))  # left[r, i]: first unit of the run ending at i
    right = left.copy()  # right[r, i]: last unit of the run starting at i
    done = np.zeros(rows, dtype=np.int64)
    row_ids = np.arange(rows)
    for rank in range(units):
        active = ranked_ok[:, rank] & (done < want)
        if not active.any():
            if (done >= want).all():
                break
            continue
        r = row_ids[active]
        b = order[active, rank]
        lo, hi = left[r, b - 1], right[r, b]
        fits = hi - lo + 1 <= max_cluster_size
        r, b, lo, hi = r[fits], b[fits], lo[fits], hi[fits]
        starts[r, b] = False
        right[r, lo] = hi
        left[r, hi] = lo
        done[r] += 1
    return torch.from_numpy(starts).to(similarity.device)


def cluster_index(starts: torch.Tensor, member: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster id of every member unit and the number of clusters per sequence.

    :param starts: ``(B, U)`` bool from :func:`cluster_starts` / :func:`budget_starts`.
    :param member: ``(B, U)`` bool; members must form a prefix of each row.
    :return: ``(cid, count)``: ``(B, U)`` long (``-1`` for non-members) and ``(B,)`` long.
    """
    first = (starts | ~torch.roll(member, 1, dims=1)) & member
    first[:, 0] = member[:, 0]
    cid = torch.cumsum(first.long(), dim=1) - 1
    cid = torch.where(member, cid, torch.full_like(cid, -1))
    return cid, first.long().sum(1)


def cluster_last_unit(cid: torch.Tensor, clusters: int) -> torch.Tensor:
    """``(B, M)`` index of each cluster's last unit (``-1`` for padding clusters)."""
    b, u = cid.shape
    index = torch.arange(u, device=cid.device).expand(b, u)
    last = torch.full((b, clusters + 1), -1, dtype=torch.long, device=cid.device)
    slot = torch.where(cid >= 0, cid, torch.full_like(cid, clusters))
    last.scatter_reduce_(1, slot, index, reduce="amax", include_self=True)
    return last[:, :clusters]


def received_attention(
    local: torch.Tensor, visible_keys: torch.Tensor, cid: torch.Tensor, clusters: int
) -> torch.Tensor:
    """Attention each unit receives from the queries of its own cluster, relative to uniform attention.

    For unit ``j`` of a cluster ending at unit ``e``: the mean over queries ``q`` in ``[j, e]`` of
    ``p(q -> j) * (keys visible to q)``; 1.0 means "as much as uniform attention would give", an
    attention sink gets far more. Reads no query after the cluster's end, so merging stays causal.

    :param local: ``(B, K, U)`` with ``local[b, d, j]`` = attention probability from query ``j + d``
        to key ``j`` (see :meth:`Backbone.local_attention`); ``K`` must reach the longest cluster.
    :param visible_keys: ``(B, U)`` number of keys each query could read.
    :param cid: ``(B, U)`` cluster ids (``-1`` for non-members).
    :param clusters: padded number of clusters ``M``.
    :return: ``(B, U)`` float32 (0 for non-members).
    """
    b, band, u = local.shape
    last = cluster_last_unit(cid, clusters)
    end = torch.gather(last, 1, cid.clamp(min=0))  # (B, U) last unit of each unit's cluster
    index = torch.arange(u, device=cid.device)
    total = torch.zeros(b, u, dtype=torch.float32, device=cid.device)
    count = torch.zeros(b, u, dtype=torch.float32, device=cid.device)
    for d in range(band):
        query = (index + d).clamp(max=u - 1)
        inside = ((index + d) <= end) & (cid >= 0) & ((index + d) < u)
        weight = local[:, d] * torch.gather(visible_keys.float(), 1, query.expand(b, u))
        total += torch.where(inside, weight, torch.zeros_like(weight))
        count += inside.float()
    return total / count.clamp(min=1)


def merge_units(
    values: torch.Tensor, weights: torch.Tensor, cid: torch.Tensor, clusters: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted means of the units of each cluster, summed in a fixed order (deterministic on a GPU too).

    A float ``scatter_add`` on CUDA adds in whatever order its atomics land, so two pre-fills of
    the same text could merge to different states and, a level later, different clusters. Here
    each cluster's members are added one offset from its first member at a time instead.

    :param values: ``(B, U, d)`` (or ``(B, U)``) unit values.
    :param weights: ``(B, U)`` positive weights (ignored for non-members).
    :param cid: ``(B, U)`` cluster ids (``-1`` for non-members).
    :param clusters: padded number of clusters ``M``.
    :return: ``(merged, normalized_weights)``: ``(B, M, d)`` (or ``(B, M)``) and ``(B, U)``.
    """
    b, u = cid.shape
    member = cid >= 0
    slot = torch.where(member, cid, torch.full_like(cid, clusters))
    index = torch.arange(u, device=cid.device).expand(b, u)
    first = torch.full((b, clusters + 1), u, dtype=torch.long, device=cid.device)
    first = first.scatter_reduce(1, slot, index, reduce="amin")[:, :clusters]  # (B, M) first member
    offset = index - torch.gather(first, 1, cid.clamp(min=0)).clamp(max=u - 1)
    span = int(torch.where(member, offset, torch.zeros_like(offset)).max()) + 1 if u else 0
    w = torch.where(member, weights, torch.zeros_like(weights))
    squeeze = values.dim() == 2
    vals = values[..., None] if squeeze else values
    cluster_id = torch.arange(clusters, device=cid.device).expand(b, clusters)
    reads = []  # per offset k: which unit holds cluster c's k-th member, and whether there is one
    for k in range(span):
        unit = (first + k).clamp(max=max(u - 1, 0))
        reads.append((unit, (first + k < u) & (torch.gather(slot, 1, unit) == cluster_id)))
    denom = torch.zeros(b, clusters, dtype=w.dtype, device=w.device)
    for unit, inside in reads:
        denom += torch.where(inside, torch.gather(w, 1, unit), torch.zeros_like(denom))
    denom = torch.cat([denom, torch.ones_like(denom[:, :1])], 1)
    norm_w = w / torch.gather(denom, 1, slot).clamp(min=torch.finfo(w.dtype).tiny)
    weighted = vals * norm_w.to(vals.dtype)[..., None]
    out = torch.zeros(b, clusters, vals.shape[-1], dtype=vals.dtype, device=vals.device)
    for unit, inside in reads:
        part = torch.gather(weighted, 1, unit[..., None].expand(-1, -1, vals.shape[-1]))
        out += torch.where(inside[..., None], part, torch.zeros_like(part))
    return (out[..., 0] if squeeze else out), norm_w


def contrastive_loss(
    features: torch.Tensor,
    cid: torch.Tensor,
    clusters: int,
    natural_boundary: torch.Tensor,
    threshold: torch.Tensor,
) -> torch.Tensor:
    """Clustering loss: pull the units of a cluster to its centroid, push apart adjacent clusters that look alike.

    ``pull`` = mean over units of multi-unit clusters of ``1 - cos(unit, centroid)``;
    ``push`` = mean over natural boundaries (where similarity decided the split, not the size cap)
    of ``relu(cos(centroid_left, centroid_right) - threshold)``. Zero when every cluster's units are
    identical (then the centroids' similarity is the boundary similarity, which lay below the
    threshold); positive otherwise.

    :param features: ``(B, U, d)`` similarity features (the ones the clustering compared).
    :param cid: ``(B, U)`` cluster ids.
    :param clusters: padded number of clusters.
    :param natural_boundary: ``(B, U)`` bool, unit ``b`` starts a cluster because its similarity was at or below the threshold.
    :param threshold: ``(B, U)`` threshold at each boundary (NaN = none).
    :return: scalar, float32.
    """
    f = F.normalize(features.float(), dim=-1)
    centroid, _ = merge_units(f, torch.ones_like(cid, dtype=f.dtype), cid, clusters)
    centroid = F.normalize(centroid, dim=-1)
    member = cid >= 0
    sizes = torch.zeros(cid.shape[0], clusters + 1, device=cid.device).scatter_add(
        1, torch.where(member, cid, torch.full_like(cid, clusters)), member.float()
    )[:, :clusters]
    own = torch.gather(centroid, 1, cid.clamp(min=0)[..., None].expand(-1, -1, f.shape[-1]))
    in_multi = member & (torch.gather(sizes, 1, cid.clamp(min=0)) > 1)
    pull_terms = (1.0 - (f * own).sum(-1))[in_multi]
    pull = pull_terms.mean() if pull_terms.numel() else f.sum() * 0.0
    # boundary b starts cluster cid[b]; its left neighbour is cluster cid[b] - 1
    boundary = natural_boundary & member & (cid > 0) & ~torch.isnan(threshold)
    right = torch.gather(centroid, 1, cid.clamp(min=0)[..., None].expand(-1, -1, f.shape[-1]))
    left = torch.gather(centroid, 1, (cid - 1).clamp(min=0)[..., None].expand(-1, -1, f.shape[-1]))
    push_terms = torch.relu((left * right).sum(-1) - torch.nan_to_num(threshold, nan=1.0))[boundary]
    push = push_terms.mean() if push_terms.numel() else f.sum() * 0.0
    return pull + push
