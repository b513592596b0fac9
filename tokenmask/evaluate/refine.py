"""``refine:BASE``: a masking method's masks, then a judge search on recoverability over moved runs.

The base method (the agent, truncation, any :class:`~tokenmask.evaluate.compressor.MaskingCompressor`)
proposes a keep mask. The search then tries *moves*: the first ``m`` kept tokens (the oldest kept
text, which helps the continuation least) are dropped and a run of ``m`` dropped tokens is kept
instead, at every ``stride``-th offset where one fits (:func:`move_variants`). Every candidate keeps
as many tokens as the base mask, so the rate is unchanged. One batched judge pass scores
``R(p) = NLL(context | BOS + p + sep)`` (docs/evaluation.md) of every candidate; the lowest wins,
which is the highest recoverability, and ties keep the base mask.

*Retention guard* (``guard=k``, off by default): a move can cost the continuation what it gains in
recoverability. With the guard on, the context's last ``k`` tokens stand in for the continuation:
each candidate's ``G = NLL(last k | BOS + kept tokens before them)`` is scored in the same judge
pass, and only candidates with ``G <= G(base) + k * guard_tolerance`` (nats) compete on ``R``.

*Lookahead guard* (``lookahead=T``, off by default): the judge continues the full context itself
(``T`` greedy tokens, :func:`~tokenmask.reconstructors.judge.judge_continuations`) and each
candidate's ``S`` = the cross-entropy of the judge's next-token distributions after the full context
and after the candidate's kept tokens, summed along that path
(:func:`~tokenmask.reconstructors.judge.soft_continuation_nlls`): ``F`` in expectation over the
judge's own continuations. Only candidates with ``S <= S(base) + T * lookahead_tolerance`` compete.
*Protected tail* (``protect=N``): no candidate drops any of the base mask's last ``N`` kept tokens.

The search reads the context alone (never its continuation), so it is a compressor like any other;
its judge passes are counted in its time. Its LM is the evaluation's judge by default, as for the
self-information baselines: with another judge the gain can be smaller.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from tokenmask.evaluate.compressor import (
    MaskingCompressor,
    Method,
    MethodContext,
    TokenIds,
    build_method,
    check_rate,
    register_method,
)

if TYPE_CHECKING:
    from tokenmask.reconstructors import MaskMode, Reconstructor

DEFAULT_MOVES: tuple[int, ...] = (16, 32)
"""Run lengths moved by default (tokens)."""

DEFAULT_STRIDE = 8
"""Offsets tried for a moved run: every ``stride``-th token."""

DEFAULT_GUARD = 0
"""Context tokens standing in for the continuation in the retention guard (0: no guard)."""

DEFAULT_GUARD_TOLERANCE = 0.0
"""Nats per guard token a candidate may lose against the base mask on the stand-in continuation."""

GUARD_MOVES: tuple[int, ...] = (8, 16, 24, 32, 48)
"""``refine_guard``'s run lengths (tokens): more candidates than ``refine``'s, the guard keeps retention."""

GUARD_TOKENS = 32
"""``refine_guard:BASE``'s guard: stand-in continuation length (tokens)."""

GUARD_TOLERANCE = 0.5
"""``refine_guard:BASE``'s guard tolerance (nats per stand-in token).

:data:`GUARD_MOVES`, :data:`GUARD_TOKENS` and this were chosen from every candidate's judged ``R``
and ``F`` on the train and validation splits pooled (604 documents, ``benchmarks/run_candidates.py``;
the setting whose worst rate of 0.3 / 0.5 / 0.7 is furthest above the bar of docs/evaluation.md:
recoverability +0.02 over the base, retention at most 0.01 below it), see docs/results.md."""


LOOKAHEAD_TOKENS = 64
"""``refine_lookahead:BASE``'s lookahead: tokens of the judge's own greedy continuation (the metric's ``T``)."""

LOOKAHEAD_TOLERANCE = 0.02
"""``refine_lookahead:BASE``'s tolerance: nats per lookahead token a candidate may lose against the base mask."""

LOOKAHEAD_PROTECT = 32
"""``refine_lookahead:BASE``'s protected tail: the base mask's last kept tokens no move drops.

:data:`LOOKAHEAD_TOKENS`, this and :data:`LOOKAHEAD_TOLERANCE` (with :data:`GUARD_MOVES` and no
stand-in guard) were chosen on the train and validation splits pooled (368 documents,
``benchmarks/run_candidates.py --soft 64``): the setting of ``candidate_analysis.py lookahead`` most
likely to meet the bar of docs/evaluation.md at all three rates 0.3 / 0.5 / 0.7 on a random draw of
30 documents, see docs/results.md."""


def move_variants(keep: np.ndarray, moves: Sequence[int], stride: int) -> list[np.ndarray]:
    """Masks with the first ``m`` kept tokens dropped and ``m`` dropped tokens kept as one run, for each ``m``.

    The run starts at a multiple of ``stride`` and covers ``m`` tokens that are all dropped once the
    first ``m`` kept ones are; variants equal to ``keep`` or to an earlier variant are left out.

    :param keep: per token, ``True`` = kept.
    :param moves: run lengths to move (tokens, each >= 1).
    :param stride: step between the offsets tried (>= 1).
    :return: distinct masks, each keeping ``keep.sum()`` tokens.
    """
    keep = np.asarray(keep, dtype=bool)
    if stride < 1 or any(m < 1 for m in moves):
        raise ValueError(
            f"moves must be >= 1 token and stride >= 1, got moves={list(moves)}, stride={stride}."
        )
    kept = np.flatnonzero(keep)
    seen = {np.packbits(keep).tobytes()}
    variants: list[np.ndarray] = []
    for m in moves:
        if m > len(kept):
            continue
        base = keep.copy()
        base[kept[:m]] = False
        dropped = ~base
        # runs of m dropped tokens: prefix sums give each window's dropped count
        counts = np.concatenate([[0], np.cumsum(dropped)])
        for start in range(0, len(keep) - m + 1, stride):
            if counts[start + m] - counts[start] != m:
                continue
            variant = base.copy()
            variant[start : start + m] = True
            key = np.packbits(variant).tobytes()
            if key not in seen:
                seen.add(key)
                variants.append(variant)
    return variants


class RecoverabilitySearch(MaskingCompressor):
    """``refine:BASE``: the base method's masks improved by a judge search on recoverability (see the module doc).

    :param base: the masking method that proposes the masks (another kind of method is refused).
    :param judge: the LM that scores ``R(p)`` (the evaluation's judge).
    :param moves: run lengths moved (tokens).
    :param stride: step between the offsets of a moved run.
    :param guard: context tokens standing in for the continuation (0: no retention guard).
    :param guard_tolerance: nats per guard token a candidate may lose against the base mask.
    :param protect: the base mask's last kept tokens no candidate drops (0: none protected).
    :param lookahead: tokens of the judge's own continuation for the lookahead guard (0: off).
    :param lookahead_tolerance: nats per lookahead token a candidate may lose against the base mask.
    :param name: name in reports (default ``refine:<base name>``).
    """

    default_name = "refine"

    def __init__(
        self,
        base: Method,
        judge: Reconstructor,
        moves: Sequence[int] = DEFAULT_MOVES,
        stride: int = DEFAULT_STRIDE,
        guard: int = DEFAULT_GUARD,
        guard_tolerance: float = DEFAULT_GUARD_TOLERANCE,
        protect: int = 0,
        lookahead: int = 0,
        lookahead_tolerance: float = 0.0,
        name: str | None = None,
    ) -> None:
        if not isinstance(base, MaskingCompressor):
            raise ValueError(
                f"refine needs a masking method (one that keeps or drops context tokens), got {base.name!r}. "
                "Fix: e.g. refine:truncation or refine:agent:default."
            )
        if not moves or stride < 1 or any(int(m) < 1 for m in moves):
            raise ValueError(
                f"refine needs moves >= 1 token and a stride >= 1, got {list(moves)} and {stride}."
            )
        if guard < 0 or guard_tolerance < 0:
            raise ValueError(
                f"refine's guard needs guard >= 0 tokens and guard_tolerance >= 0, got {guard} and {guard_tolerance}."
            )
        if protect < 0 or lookahead < 0 or lookahead_tolerance < 0:
            raise ValueError(
                f"refine needs protect >= 0 tokens, lookahead >= 0 tokens and lookahead_tolerance >= 0, "
                f"got {protect}, {lookahead} and {lookahead_tolerance}."
            )
        super().__init__(judge.tokenizer, name or f"refine:{base.name}")
        self.base = base
        self.judge = judge
        self.moves = tuple(int(m) for m in moves)
        self.stride = int(stride)
        self.guard = int(guard)
        self.guard_tolerance = float(guard_tolerance)
        self.protect = int(protect)
        self.lookahead = int(lookahead)
        self.lookahead_tolerance = float(lookahead_tolerance)

    @property
    def reconstructor(self) -> Reconstructor | None:
        return self.base.reconstructor

    @property
    def mask_mode(self) -> MaskMode:
        return self.base.mask_mode

    def keep_masks(self, contexts: Sequence[TokenIds], rate: float, seed: int = 0) -> list[np.ndarray]:
        from tokenmask.reconstructors.judge import recovery_and_continuation_nlls, separator_ids

        check_rate(rate)
        proposals = [np.asarray(m, dtype=bool) for m in self.base.keep_masks(contexts, rate, seed=seed)]
        candidates: list[np.ndarray] = []
        owners: list[int] = []
        for d, keep in enumerate(proposals):
            kept = np.flatnonzero(keep)
            protected = kept[max(0, len(kept) - self.protect) :]
            for mask in [keep, *move_variants(keep, self.moves, self.stride)]:
                if self.protect and not mask[protected].all():
                    continue
                candidates.append(mask)
                owners.append(d)
        ids = [np.asarray(c) for c in contexts]
        prefixes = [ids[d][mask].tolist() for d, mask in zip(owners, candidates)]
        guarded = [self.guard if 0 < self.guard < len(ids[d]) else 0 for d in owners]
        stand_in = [
            ids[d][: len(mask) - k][mask[: len(mask) - k]].tolist()
            for d, mask, k in zip(owners, candidates, guarded)
            if k
        ]
        tails = [ids[d][len(ids[d]) - k :].tolist() for d, k in zip(owners, guarded) if k]
        nlls, guard_nlls = recovery_and_continuation_nlls(
            self.judge,
            prefixes,
            [ids[d].tolist() for d in owners],
            stand_in,
            tails,
            separator_ids(self.judge),
        )
        guard_of = np.full(len(candidates), -np.inf)
        guard_of[np.asarray(guarded) > 0] = guard_nlls
        ok = _within(guard_of, owners, np.asarray(guarded, dtype=np.float64) * self.guard_tolerance)
        if self.lookahead:
            ok &= _within(
                self._lookahead_nlls(ids, owners, prefixes), owners, self.lookahead * self.lookahead_tolerance
            )
        best = [(np.inf, 0)] * len(proposals)
        for i, (d, nll) in enumerate(zip(owners, nlls)):
            # strict: ties keep the earlier candidate (the base mask first)
            if nll < best[d][0] and ok[i]:
                best[d] = (float(nll), i)
        return [candidates[i] for _, i in best]

    def _lookahead_nlls(
        self, ids: list[np.ndarray], owners: list[int], prefixes: list[list[int]]
    ) -> np.ndarray:
        """Each candidate's ``S``: the judge's expected ``F`` along its own greedy continuation of the full context."""
        from tokenmask.reconstructors.judge import judge_continuations, soft_continuation_nlls

        contexts = [x.tolist() for x in ids]
        paths = [p[0] for p in judge_continuations(self.judge, contexts, self.lookahead)]
        return soft_continuation_nlls(self.judge, prefixes, owners, contexts, paths)


def _within(values: np.ndarray, owners: list[int], slack: np.ndarray | float) -> np.ndarray:
    """Per candidate, ``value <= its document's base value + slack``; each document's base mask comes first."""
    slack = np.broadcast_to(np.asarray(slack, dtype=np.float64), values.shape)
    bound = np.zeros(len(values))
    start = 0
    for i, d in enumerate(owners):
        if i == 0 or owners[i - 1] != d:
            start = i
        bound[i] = values[start] + slack[start]
    return values <= bound


def check_refine_argument(argument: str) -> None:
    """``refine:BASE`` needs a base method name; it is checked as that method's own name would be."""
    if not argument:
        raise ValueError("refine needs a base method. Fix: e.g. refine:truncation or refine:agent:default.")
    from tokenmask.evaluate.compressor import split_method_name

    if split_method_name(argument)[0] in ("refine", "refine_guard", "refine_lookahead"):
        raise ValueError(f"refine:{argument} refines a refined method. Fix: name the base method once.")


def split_guard_argument(argument: str) -> tuple[int, float, str]:
    """``refine_guard``'s argument: ``K@TOL:BASE`` -> ``(K, TOL, BASE)``; ``BASE`` -> the default guard.

    :raises ValueError: for a guard that is not ``K@TOL`` with ``K >= 1`` tokens and ``TOL >= 0``.
    """
    head, _, rest = argument.partition(":")
    if "@" not in head:
        return GUARD_TOKENS, GUARD_TOLERANCE, argument
    tokens, _, tolerance = head.partition("@")
    try:
        k, tol = int(tokens), float(tolerance)
    except ValueError:
        k, tol = 0, -1.0
    if k < 1 or tol < 0:
        raise ValueError(
            f"refine_guard:{argument}: the guard must be TOKENS@TOLERANCE (>= 1 token, tolerance >= 0 nats per token). "
            "Fix: e.g. refine_guard:16@0.1:truncation, or refine_guard:truncation for the default guard."
        )
    return k, tol, rest


def check_guard_argument(argument: str) -> None:
    """``refine_guard:[K@TOL:]BASE``: the guard parses and the base is checked as ``refine``'s."""
    check_refine_argument(split_guard_argument(argument)[2])


def _refine(argument: str, context: MethodContext) -> RecoverabilitySearch:
    """``refine:BASE``: :class:`RecoverabilitySearch` of the method ``BASE``, scored by the run's judge."""
    check_refine_argument(argument)
    return RecoverabilitySearch(build_method(argument, context), context.judge)


def _refine_guard(argument: str, context: MethodContext) -> RecoverabilitySearch:
    """``refine_guard:[K@TOL:]BASE``: ``refine`` over :data:`GUARD_MOVES` with the retention guard (default :data:`GUARD_TOKENS` @ :data:`GUARD_TOLERANCE`)."""
    k, tol, base = split_guard_argument(argument)
    check_refine_argument(base)
    return RecoverabilitySearch(
        build_method(base, context),
        context.judge,
        moves=GUARD_MOVES,
        guard=k,
        guard_tolerance=tol,
        name=f"refine_guard:{argument}",
    )


def _refine_lookahead(argument: str, context: MethodContext) -> RecoverabilitySearch:
    """``refine_lookahead:BASE``: ``refine`` over :data:`GUARD_MOVES` with the lookahead guard and a protected tail."""
    check_refine_argument(argument)
    return RecoverabilitySearch(
        build_method(argument, context),
        context.judge,
        moves=GUARD_MOVES,
        protect=LOOKAHEAD_PROTECT,
        lookahead=LOOKAHEAD_TOKENS,
        lookahead_tolerance=LOOKAHEAD_TOLERANCE,
        name=f"refine_lookahead:{argument}",
    )


register_method("refine", _refine, overwrite=True)
register_method("refine_lookahead", _refine_lookahead, overwrite=True)
register_method("refine_guard", _refine_guard, overwrite=True)
