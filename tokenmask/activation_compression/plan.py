"""The layer plan of activation compression and the rate it gives over the whole KV cache.

A *plan* is the list of compression layers ``l_1 < ... < l_K`` of an ``L``-layer model and, per
compression layer, the fraction ``q_k`` of its units it keeps (with the adaptive threshold, the
quantile ``layer_thresholds[k]``: ``0.5`` keeps about half). Layers before ``l_1`` hold every
position; layers in ``[l_k, l_{k+1})`` hold the clusters of level ``k``, each level clustering the
clusters of the one before (recursive), so about ``q_1 ... q_k`` of the positions.

The rate is docs/evaluation.md's in-model rate: ``1 - Σ_layers kept / Σ_layers total`` positions,
the fraction of the KV cache saved (every position of a layer holds the same number of KV entries,
so a ratio of positions is a ratio of entries). The nominal rate of a plan is
``1 - (l_1 + Σ_k (l_{k+1} - l_k) q_1 ... q_k) / L`` (with ``l_{K+1} = L``).

All functions are pure arithmetic on ints, floats and ``(B,)`` tensors.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch

#: the plan shape assumed when the keep fractions are unknown (fixed cosine thresholds)
UNIFORM_KEEP = 0.5


def layer_spans(layers: Sequence[int], num_layers: int) -> list[int]:
    """Decoder layers each compression level covers: ``l_{k+1} - l_k``, the last up to ``num_layers``."""
    bounds = [*layers, num_layers]
    return [bounds[k + 1] - bounds[k] for k in range(len(layers))]


def plan_rate(layers: Sequence[int], keep: Sequence[float], num_layers: int) -> float:
    """Nominal whole-model rate of a plan (see the module docstring; BOS and run caps ignored).

    :param layers: compression layers, increasing.
    :param keep: per compression layer, the fraction of its units it keeps, in ``(0, 1]``.
    :param num_layers: decoder layers of the model.
    """
    if len(layers) != len(keep):
        raise ValueError(f"{len(layers)} compression layers for {len(keep)} keep fractions.")
    if not layers:
        return 0.0
    kept, product = float(layers[0]), 1.0
    for span, fraction in zip(layer_spans(layers, num_layers), keep):
        product *= fraction
        kept += span * product
    return 1.0 - kept / num_layers


def positions_per_layer(
    num_layers: int,
    layers: Sequence[int],
    clusters: Sequence[torch.Tensor],
    cache_lengths: torch.Tensor,
    compress_lengths: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (KV entries / entries per position) each decoder layer holds, kept and uncompressed.

    :param num_layers: decoder layers ``L``.
    :param layers: compression layers that merged (empty: nothing merged).
    :param clusters: per compression layer, ``(B,)`` clusters it formed of the compressible prefix.
    :param cache_lengths: ``(B,)`` positions the cache holds uncompressed (``N``).
    :param compress_lengths: ``(B,)`` leading positions that could be merged (``n <= N``); the
        other ``N - n`` stay raw positions in every layer.
    :return: ``(kept, total)``, each ``(B, L)`` long.
    """
    n_cache = cache_lengths.long()
    total = n_cache[:, None].expand(-1, num_layers).clone()
    kept = total.clone()
    raw = (n_cache - compress_lengths.long()).clamp(min=0)
    bounds = [*layers, num_layers]
    for k, count in enumerate(clusters):
        kept[:, bounds[k] : bounds[k + 1]] = (count.long() + raw)[:, None]
    return kept, total


def cluster_targets(
    num_layers: int,
    layers: Sequence[int],
    keep: Sequence[float],
    target_rate: float,
    cache_lengths: torch.Tensor,
    compress_lengths: torch.Tensor,
    protected: int,
) -> list[torch.Tensor]:
    """Clusters each compression level should form so the whole-model rate is ``target_rate``.

    The plan's shape is kept: level ``k`` keeps ``g_k = (q_1 ... q_k) ** s`` of the mergeable
    units, with one exponent ``s >= 0`` per sequence found by bisection (``s = 0``: nothing
    merged; ``s = 1``: the plan itself). Counts are rounded; the last level absorbs the rounding,
    so a sequence's rate is within ``span_K / (L N)`` of the target when it is reachable. A target
    beyond reach (the layers before ``l_1`` keep everything) gives the most merging the plan
    allows, with a warning; the caller reports the rate achieved.

    :param num_layers: decoder layers ``L``.
    :param layers: compression layers.
    :param keep: per compression layer, the plan's keep fraction (its shape).
    :param target_rate: whole-model rate wanted, in ``[0, 1)``.
    :param cache_lengths: ``(B,)`` positions the cache holds (``N``).
    :param compress_lengths: ``(B,)`` mergeable leading positions (``n``, BOS included).
    :param protected: leading positions never merged (the BOS attention sink).
    :return: per compression level, ``(B,)`` long cluster counts (non-increasing over levels).
    """
    if not 0.0 <= float(target_rate) < 1.0:
        raise ValueError(f"target_rate {target_rate!r} is outside [0, 1). Fix: e.g. 0.5.")
    if not layers:
        return []
    log_keep = [math.log(min(max(float(q), 1e-6), 1.0)) for q in keep]
    if all(v == 0.0 for v in log_keep):  # a plan that merges nothing has no shape: use a uniform one
        log_keep = [math.log(UNIFORM_KEEP)] * len(layers)
    cumulative = torch.tensor(list(_cumsum(log_keep)), dtype=torch.float64)
    spans = torch.tensor(layer_spans(layers, num_layers), dtype=torch.float64)
    n_cache = cache_lengths.double().cpu()
    n = compress_lengths.double().cpu()
    fixed = n.clamp(max=float(protected))
    free = n - fixed
    raw = n_cache - n
    goal = (1.0 - float(target_rate)) * num_layers * n_cache

    def kept_of(s: torch.Tensor) -> torch.Tensor:
        share = torch.exp(s[:, None] * cumulative[None])  # (B, K)
        return layers[0] * n_cache + (
            spans[None] * (raw[:, None] + fixed[:, None] + free[:, None] * share)
        ).sum(1)

    low, high = torch.zeros_like(n), torch.full_like(n, 64.0)
    for _ in range(60):
        mid = (low + high) / 2
        above = kept_of(mid) > goal  # still too many kept: merge more
        low, high = torch.where(above, mid, low), torch.where(above, high, mid)
    short = kept_of(high) > goal + 0.5
    if bool(short.any()):
        reach = float((1.0 - kept_of(high) / (num_layers * n_cache))[short].min())
        warnings.warn(
            f"rate {target_rate} is out of reach: with compression from layer {layers[0]} of {num_layers} "
            f"(the layers before it keep every position) and {int(raw.max())} positions that may not merge, "
            f"at most {reach:.2f} of the KV cache can be saved; the achieved rate is lower. Fix: start "
            f"compression_layers well before layer {math.ceil((1 - float(target_rate)) * num_layers)} "
            "(docs/activation_compression.md, layer plans).",
            stacklevel=2,
        )
    share = torch.exp(high[:, None] * cumulative[None])
    floor = (fixed + (free > 0).double()).round()  # at least one cluster of the mergeable units
    targets: list[torch.Tensor] = []
    previous = n.round()
    spent = layers[0] * n_cache
    for k in range(len(layers)):
        if k < len(layers) - 1:
            count = (fixed + free * share[:, k]).round()
        else:  # the last level absorbs the rounding of the others
            count = ((goal - spent) / spans[k] - raw).round()
        count = torch.minimum(torch.maximum(count, floor), previous)
        spent = spent + spans[k] * (raw + count)
        targets.append(count.long().to(compress_lengths.device))
        previous = count
    return targets


def _cumsum(values: Sequence[float]) -> list[float]:
    out, total = [], 0.0
    for v in values:
        total += v
        out.append(total)
    return out
