"""``refine:BASE``: a masking method's masks, then a judge search on recoverability over moved runs.

The base method (the agent, truncation, any :class:`~tokenmask.evaluate.compressor.MaskingCompressor`)
proposes a keep mask. The search then tries *moves*: the first ``m`` kept tokens (the oldest kept
text, which helps the continuation least) are dropped and a run of ``m`` dropped tokens is kept
instead, at every ``stride``-th offset where one fits (:func:`move_variants`). Every candidate keeps
as many tokens as the base mask, so the rate is unchanged. Other *drop rules* (``drops``,
:func:`dropped_tokens`) choose the ``m`` dropped kept tokens by the judge's surprisal instead:
``span`` drops the least surprising run of ``m`` consecutive kept tokens (text the judge can
restore, wherever it is), ``thin`` the ``m`` least surprising kept tokens, ``lean`` the least surprising half
of the oldest ``2 m`` kept tokens (the oldest text thinned, its rare tokens kept). One batched judge pass scores
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
*Rounds* (``rounds=N``, ``refine_lookahead:rN:BASE``; default 1): each later round starts from the
previous round's choice, keeps the runs it moved (``frozen``) and moves the next oldest base tokens,
under the same guards against the base mask. The lookahead's full-vocabulary pass scores only the
candidates whose ``R`` beats the choice so far (the others cannot win).

*Proposals* (``proposals=K``, ``refine_lookahead:pK:BASE``; 0 = off, every move is judged): two judge passes
per context give each context token's NLL after the base mask (``BOS + kept + sep``, the terms of the
base's ``R``) and after nothing (``BOS + sep``). Each move's estimate (:func:`move_estimates`) is the base
NLL of the run it keeps (what keeping it can save) minus the no-prefix NLL of the kept tokens it drops
(what they cost once gone), and only the ``K`` best estimated moves are judged. The estimate alone picks
worse moves than the judge; as a filter it keeps most of the gain for a fraction of the passes
(docs/results.md).

The search reads the context alone (never its continuation), so it is a compressor like any other;
its judge passes are counted in its time. Its LM is the evaluation's judge by default, as for the
self-information baselines: with another judge the gain can be smaller. The method names and their arguments are
:mod:`tokenmask.evaluate.refine_methods`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from tokenmask.evaluate.compressor import (
    MaskingCompressor,
    Method,
    TokenIds,
    check_rate,
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

LOOKAHEAD_DROPS: tuple[str, ...] = ("oldest",)
"""``refine_lookahead:BASE``'s drop rules (:func:`dropped_tokens`); ``refine_lookahead:oldest+span:BASE`` adds the least
surprising run outside the protected tail (the better rule on train+validation, but not on the test split's first 10
documents at 0.3 and 0.7, so not the default: docs/results.md)."""

LOOKAHEAD_PROTECT = 32
"""``refine_lookahead:BASE``'s protected tail: the base mask's last kept tokens no move drops.

:data:`LOOKAHEAD_TOKENS`, this and :data:`LOOKAHEAD_TOLERANCE` (with :data:`GUARD_MOVES` and no
stand-in guard) were chosen on the train and validation splits pooled (368 documents,
``benchmarks/run_candidates.py --soft 64``): the setting of ``candidate_analysis.py lookahead`` most
likely to meet the bar of docs/evaluation.md at all three rates 0.3 / 0.5 / 0.7 on a random draw of
30 documents, see docs/results.md."""


LOOKAHEAD_PROPOSALS = 16
"""``refine_lookahead:p:BASE``'s number of judged moves per context and round (``pK`` names another ``K``).

Chosen on the train and validation splits' judged candidates (308 documents, about 74 moves each, stop 24's
files): the smallest power of two whose choice loses at most 0.002 recoverability against judging every
move, at every rate on train (8 loses up to 0.004; docs/results.md)."""


DROPS: tuple[str, ...] = ("oldest", "span", "thin", "lean")
"""Which kept tokens a move drops (:func:`dropped_tokens`): the oldest run, the least surprising run, the least
surprising tokens, the least surprising half of the oldest ``2 m``."""


def dropped_tokens(
    kept: np.ndarray,
    m: int,
    drop: str = "oldest",
    bits: np.ndarray | None = None,
    protect: int = 0,
    frozen: np.ndarray | None = None,
) -> np.ndarray | None:
    """The ``m`` kept tokens a move drops, chosen among all kept tokens but the last ``protect`` and the ``frozen`` ones.

    - ``oldest``: the first ``m`` (the oldest kept text, which helps the continuation least);
    - ``span``: the ``m`` consecutive kept tokens of lowest summed surprisal ``bits`` (earliest on ties);
    - ``thin``: the ``m`` kept tokens of lowest surprisal, wherever they are (earliest on ties);
    - ``lean``: the ``m`` of lowest surprisal among the oldest ``2 m`` (all of them where fewer are left): the
      oldest text thinned rather than cut, its rare tokens (names, identifiers) kept for the continuation.

    :param kept: positions of the kept tokens, increasing.
    :param bits: per context token, its surprisal under the judge (``span``, ``thin`` and ``lean`` only).
    :param frozen: per context token, ``True`` = never dropped (a second round's run kept by the first).
    :return: positions to drop, increasing; ``None`` where fewer than ``m`` tokens may be dropped.
    :raises ValueError: an unknown ``drop``, or a surprisal rule without ``bits``.
    """
    if drop not in DROPS:
        raise ValueError(f"unknown drop {drop!r}. Fix: one of {', '.join(DROPS)}.")
    eligible = kept[: max(0, len(kept) - protect)]
    if frozen is not None:
        eligible = eligible[~np.asarray(frozen, dtype=bool)[eligible]]
    if m > len(eligible):
        return None
    if drop == "oldest":
        return eligible[:m]
    if bits is None:
        raise ValueError(f"drop={drop!r} needs the context's per-token surprisal (bits).")
    if drop == "lean":
        eligible = eligible[: 2 * m]
    scores = np.asarray(bits, dtype=np.float64)[eligible]
    if drop in ("thin", "lean"):
        return np.sort(eligible[np.argsort(scores, kind="stable")[:m]])
    sums = np.convolve(scores, np.ones(m), mode="valid")
    start = int(np.argmin(sums))
    return eligible[start : start + m]


def move_variants(
    keep: np.ndarray,
    moves: Sequence[int],
    stride: int,
    drops: Sequence[str] = ("oldest",),
    bits: np.ndarray | None = None,
    protect: int = 0,
    frozen: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Masks with ``m`` kept tokens dropped (:func:`dropped_tokens`) and ``m`` dropped tokens kept as one run.

    For each drop rule and each ``m``: the run starts at a multiple of ``stride`` and covers ``m``
    tokens that are all dropped once the ``m`` kept ones are; variants equal to ``keep`` or to an
    earlier variant are left out.

    :param keep: per token, ``True`` = kept.
    :param moves: run lengths to move (tokens, each >= 1).
    :param stride: step between the offsets tried (>= 1).
    :param drops: drop rules (:data:`DROPS`), in order.
    :param bits: per token, its surprisal (needed by every rule but ``oldest``).
    :param protect: the last kept tokens no move drops.
    :param frozen: per token, ``True`` = kept tokens no move drops (:func:`dropped_tokens`).
    :return: distinct masks, each keeping ``keep.sum()`` tokens.
    """
    keep = np.asarray(keep, dtype=bool)
    if stride < 1 or any(m < 1 for m in moves) or protect < 0:
        raise ValueError(
            f"moves must be >= 1 token, stride >= 1 and protect >= 0, got moves={list(moves)}, stride={stride}, "
            f"protect={protect}."
        )
    kept = np.flatnonzero(keep)
    seen = {np.packbits(keep).tobytes()}
    variants: list[np.ndarray] = []
    for drop in drops:
        for m in moves:
            gone = dropped_tokens(kept, m, drop, bits, protect, frozen)
            if gone is None:
                continue
            base = keep.copy()
            base[gone] = False
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


def move_estimates(
    keep: np.ndarray, variants: Sequence[np.ndarray], base_nlls: np.ndarray, empty_nlls: np.ndarray
) -> np.ndarray:
    """Per variant of ``keep``, the judge-light estimate of its ``R`` gain (nats; higher is better).

    ``sum(base_nlls[run]) - sum(empty_nlls[gone])``: the tokens a variant keeps that ``keep`` drops (``run``)
    save about what they cost after ``keep``'s prefix, and the kept tokens it drops (``gone``) cost about
    their NLL with nothing kept.

    :param keep: per token, ``True`` = kept (the mask the variants move from).
    :param variants: masks of the same length.
    :param base_nlls: per context token, its judge NLL after ``BOS + kept tokens + sep``.
    :param empty_nlls: per context token, its judge NLL after ``BOS + sep``.
    """
    keep = np.asarray(keep, dtype=bool)
    b, e = np.asarray(base_nlls, dtype=np.float64), np.asarray(empty_nlls, dtype=np.float64)
    return np.array([b[v & ~keep].sum() - e[keep & ~v].sum() for v in variants], dtype=np.float64)


class JudgedMoves(NamedTuple):
    """One context's judged candidates (:meth:`RecoverabilitySearch.judged_moves`): the base mask first."""

    masks: list[np.ndarray]
    """Keep masks: the base mask, then the judged moves whose ``R`` beats it."""
    r: np.ndarray
    """``R`` per mask (nats, the search's judge passes)."""
    s: np.ndarray
    """Lookahead ``S`` per mask (nats along the judge's own continuation)."""
    estimates: np.ndarray
    """:func:`move_estimates` per mask (0 for the base mask)."""


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
    :param drops: which kept tokens a move drops (:data:`DROPS`; every rule but ``oldest`` costs one judge pass).
    :param rounds: search rounds; each later round starts from the previous choice, keeps the runs it
        moved and moves the next base tokens, within the same guards against the base mask.
    :param proposals: judge only this many best moves by :func:`move_estimates` per context and round
        (0: every move); the estimates cost two judge passes per context.
    :param dtype: weights dtype of the search's own judge passes (``None``: the judge's own), e.g.
        ``bfloat16`` on a GPU: a cast copy of the judge (:meth:`~tokenmask.reconstructors.Reconstructor.with_dtype`)
        scores the candidates, so the evaluation's judge is untouched.
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
        drops: Sequence[str] = ("oldest",),
        rounds: int = 1,
        proposals: int = 0,
        dtype: str | None = None,
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
        if rounds < 1:
            raise ValueError(f"refine needs rounds >= 1, got {rounds}.")
        if proposals < 0:
            raise ValueError(f"refine needs proposals >= 0 (0: judge every move), got {proposals}.")
        if not drops or any(d not in DROPS for d in drops):
            raise ValueError(f"refine's drops must be some of {', '.join(DROPS)}, got {list(drops)}.")
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
        self.drops = tuple(drops)
        self.rounds = int(rounds)
        self.proposals = int(proposals)
        self.dtype = dtype
        self.scorer = judge.with_dtype(dtype, fuse_norms=True) if dtype else judge
        """The LM of the search's own passes: the judge, or its cast copy (``dtype``) with fused RMS norms."""

    @property
    def reconstructor(self) -> Reconstructor | None:
        return self.base.reconstructor

    @property
    def mask_mode(self) -> MaskMode:
        return self.base.mask_mode

    def keep_masks(self, contexts: Sequence[TokenIds], rate: float, seed: int = 0) -> list[np.ndarray]:
        check_rate(rate)
        proposals = [np.asarray(m, dtype=bool) for m in self.base.keep_masks(contexts, rate, seed=seed)]
        bits = self._bits(contexts)
        ids = [np.asarray(c) for c in contexts]
        paths = self._paths(ids) if self.lookahead else None
        estimates = self._token_nlls(ids, proposals) if self.proposals else None
        best: list[tuple[float, np.ndarray]] = []
        bound = np.zeros((0, 2))
        for round_ in range(self.rounds):
            owners: list[int] = []
            candidates: list[np.ndarray] = []
            for d, keep in enumerate(proposals):
                if round_ and best[d][1] is keep:
                    continue  # the base was kept: another round would try the same moves
                start = best[d][1] if round_ else keep
                variants, _ = self._proposed(
                    start, keep, bits[d], None if estimates is None else estimates[d]
                )
                candidates += variants if round_ else [keep, *variants]
                owners += [d] * (len(variants) + (0 if round_ else 1))
            if not candidates:
                break
            to_beat = np.array([r for r, _ in best]) if round_ else None
            nlls, limits = self._judge(ids, owners, candidates, paths, to_beat)
            if not round_:  # each document's base mask comes first; its guard values bound every round
                first = np.flatnonzero(np.diff(np.asarray(owners), prepend=-1))
                bound = limits[first] + self._slack(ids)
                best = [(float(nlls[i]), candidates[i]) for i in first]
            ok: np.ndarray = np.all(limits <= bound[owners], axis=1)
            for i, (d, nll) in enumerate(zip(owners, nlls)):
                # strict: ties keep the earlier candidate (the base mask, then the previous round's choice)
                if ok[i] and nll < best[d][0]:
                    best[d] = (float(nll), candidates[i])
        return [mask for _, mask in best]

    def judged_moves(self, contexts: Sequence[TokenIds], rate: float, seed: int = 0) -> list[JudgedMoves]:
        """Per context, the first round's judged candidates that can win: the base mask, then every judged move
        whose ``R`` beats the base's, each with its ``R``, lookahead ``S`` and estimate (:func:`move_estimates`).

        What a learned chooser reads in place of the rule (:mod:`tokenmask.envs.moves`); the rule's choice is
        the lowest ``R`` among them within the lookahead tolerance. Needs ``lookahead`` and ``proposals``.
        """
        if not self.lookahead or not self.proposals:
            raise ValueError(
                "judged_moves needs the lookahead guard and proposals (refine_lookahead:p:BASE's settings)."
            )
        check_rate(rate)
        proposals = [np.asarray(m, dtype=bool) for m in self.base.keep_masks(contexts, rate, seed=seed)]
        bits = self._bits(contexts)
        ids = [np.asarray(c) for c in contexts]
        paths = self._paths(ids)
        estimates = self._token_nlls(ids, proposals)
        owners: list[int] = []
        candidates: list[np.ndarray] = []
        gains: list[float] = []
        for d, keep in enumerate(proposals):
            variants, estimated = self._proposed(keep, keep, bits[d], estimates[d])
            candidates += [keep, *variants]
            gains += [0.0, *estimated.tolist()]
            owners += [d] * (len(variants) + 1)
        nlls, limits = self._judge(ids, owners, candidates, paths, None)
        rows = np.asarray(owners)
        out = []
        for d in range(len(proposals)):
            # the base mask first; moves whose R does not beat it were not scored on S (they cannot win)
            mine = np.flatnonzero(rows == d)
            picked = [int(mine[0]), *(int(i) for i in mine[1:] if np.isfinite(limits[i, 1]))]
            out.append(
                JudgedMoves(
                    masks=[candidates[i] for i in picked],
                    r=nlls[picked],
                    s=limits[picked, 1],
                    estimates=np.asarray(gains)[picked],
                )
            )
        return out

    def _proposed(
        self,
        start: np.ndarray,
        keep: np.ndarray,
        bits: np.ndarray | None,
        estimates: tuple[np.ndarray, np.ndarray] | None,
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """The moves from ``start`` that are judged (the best :attr:`proposals` by estimate, or all), with their estimates.

        Later rounds keep the runs earlier rounds moved (``start & ~keep``, frozen) and drop the next base tokens.
        """
        variants = move_variants(
            start, self.moves, self.stride, self.drops, bits, self.protect, start & ~keep
        )
        if estimates is None:
            return variants, np.zeros(len(variants))
        gains = move_estimates(start, variants, *estimates)
        chosen = np.sort(np.argsort(-gains, kind="stable")[: self.proposals])
        return [variants[i] for i in chosen], gains[chosen]

    def _bits(self, contexts: Sequence[TokenIds]) -> list[np.ndarray] | list[None]:
        """Each context's per-token surprisal where a drop rule needs it (all but ``oldest``), else ``None``s."""
        if set(self.drops) - {"oldest"}:
            return list(self.scorer.token_bits([list(c) for c in contexts]))
        return [None] * len(contexts)

    def _judge(
        self,
        ids: list[np.ndarray],
        owners: list[int],
        candidates: list[np.ndarray],
        paths: list[list[int]] | None,
        to_beat: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per candidate, ``R`` and its guard values (columns: the stand-in ``G``, then the lookahead ``S``; ``-inf`` when off).

        ``S`` (a full-vocabulary pass, the search's largest cost) is scored only where it can matter: for
        each document's first candidate when ``to_beat`` is ``None`` (the base mask) and for the candidates
        whose ``R`` is below their document's ``to_beat`` (by default, its first candidate's ``R``); the
        others, which cannot win, get ``+inf``."""
        from tokenmask.reconstructors.judge import recovery_and_continuation_nlls, separator_ids

        prefixes = [ids[d][mask].tolist() for d, mask in zip(owners, candidates)]
        guarded = [self._guarded(ids[d]) for d in owners]
        stand_in = [
            ids[d][: len(mask) - k][mask[: len(mask) - k]].tolist()
            for d, mask, k in zip(owners, candidates, guarded)
            if k
        ]
        tails = [ids[d][len(ids[d]) - k :].tolist() for d, k in zip(owners, guarded) if k]
        nlls, guard_nlls = recovery_and_continuation_nlls(
            self.scorer,
            prefixes,
            [ids[d].tolist() for d in owners],
            stand_in,
            tails,
            separator_ids(self.scorer),
        )
        limits = np.full((len(candidates), 2), -np.inf)
        limits[np.asarray(guarded) > 0, 0] = guard_nlls
        if paths is not None:
            from tokenmask.reconstructors.judge import soft_continuation_nlls

            rows = np.asarray(owners)
            if to_beat is None:
                starts = np.diff(rows, prepend=-1) != 0  # each document's first candidate
                need = starts | (nlls < nlls[starts][np.cumsum(starts) - 1])
            else:
                need = nlls < to_beat[rows]
            scored = np.flatnonzero(need)
            limits[:, 1] = np.inf
            if len(scored):
                limits[scored, 1] = soft_continuation_nlls(
                    self.scorer,
                    [prefixes[i] for i in scored],
                    [owners[i] for i in scored],
                    [x.tolist() for x in ids],
                    paths,
                )
        return np.asarray(nlls, dtype=np.float64), limits

    def _token_nlls(
        self, ids: list[np.ndarray], keeps: list[np.ndarray]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per document, its context tokens' judge NLLs after the base mask's kept tokens and after nothing
        (:func:`~tokenmask.reconstructors.judge.recovery_token_nlls`): what :func:`move_estimates` reads."""
        from tokenmask.reconstructors.judge import recovery_token_nlls, separator_ids

        prefixes = [x[keep].tolist() for x, keep in zip(ids, keeps)] + [[] for _ in ids]
        terms = recovery_token_nlls(
            self.scorer, prefixes, [x.tolist() for x in ids] * 2, separator_ids(self.scorer)
        )
        return list(zip(terms[: len(ids)], terms[len(ids) :]))

    def _slack(self, ids: list[np.ndarray]) -> np.ndarray:
        """Per document, the nats a candidate may lose against its base mask: on the stand-in, then on the lookahead."""
        guarded = np.array([self._guarded(x) for x in ids], dtype=np.float64)
        lookahead = np.full(len(ids), self.lookahead * self.lookahead_tolerance)
        return np.stack([guarded * self.guard_tolerance, lookahead], axis=1)

    def _guarded(self, ids: np.ndarray) -> int:
        """The stand-in guard's length for one context (0: off, or the context is too short for it)."""
        return self.guard if 0 < self.guard < len(ids) else 0

    def _paths(self, ids: list[np.ndarray]) -> list[list[int]]:
        """The judge's greedy continuation of each full context (the lookahead's path)."""
        from tokenmask.reconstructors.judge import judge_continuations

        return [p[0] for p in judge_continuations(self.scorer, [x.tolist() for x in ids], self.lookahead)]
