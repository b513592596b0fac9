"""The ``refine*`` method names: their arguments parsed and checked, and the methods registered.

``refine:BASE`` (:class:`~tokenmask.evaluate.refine.RecoverabilitySearch` with its defaults),
``refine_guard:[K@TOL:]BASE`` (the retention guard) and
``refine_lookahead:[DROPS:][rN:][pK:][lN:][bf16:]BASE`` (the lookahead guard and a protected tail: the search the
README's tables use). Each parser returns the parts of its argument or raises a ``ValueError`` naming the fix;
``tokenmask evaluate`` runs the ``check_*`` functions before any model loads. The search itself lives in
:mod:`tokenmask.evaluate.refine`.
"""

from __future__ import annotations

from typing import NamedTuple

from tokenmask.evaluate.compressor import MethodContext, build_method, register_method
from tokenmask.evaluate.refine import (
    DROPS,
    GUARD_MOVES,
    GUARD_TOKENS,
    GUARD_TOLERANCE,
    LOOKAHEAD_DROPS,
    LOOKAHEAD_PROPOSALS,
    LOOKAHEAD_PROTECT,
    LOOKAHEAD_TOKENS,
    LOOKAHEAD_TOLERANCE,
    RecoverabilitySearch,
)


def check_refine_argument(argument: str, method: str = "refine") -> None:
    """``refine:BASE`` needs a base method name that is not itself a search.

    :param argument: the base method's name.
    :param method: the prefix it follows, named in the error (``refine``, ``refine_lookahead``, ``move_agent``).
    :raises ValueError: for no base, or a base that is a search.
    """
    if not argument:
        raise ValueError(f"{method} needs a base method. Fix: e.g. {method}:truncation.")
    from tokenmask.evaluate.compressor import split_method_name

    if split_method_name(argument)[0] in ("refine", "refine_guard", "refine_lookahead", "move_agent"):
        raise ValueError(
            f"{method}:{argument} searches over a method that is already a search. Fix: name the base method once, "
            f"e.g. {method}:truncation."
        )


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


def split_drops_argument(argument: str) -> tuple[tuple[str, ...], str]:
    """``refine_lookahead``'s argument: ``DROPS:BASE`` -> ``(drops, BASE)`` where ``DROPS`` joins rules of
    :data:`DROPS` with ``+`` (``oldest+span``); ``BASE`` alone -> :data:`LOOKAHEAD_DROPS`.

    :raises ValueError: for a head that names a drop rule and something else.
    """
    head, _, rest = argument.partition(":")
    rules = tuple(r.strip() for r in head.split("+"))
    if not rest or not any(r in DROPS for r in rules):
        return LOOKAHEAD_DROPS, argument
    if any(r not in DROPS for r in rules) or len(set(rules)) < len(rules):
        raise ValueError(
            f"refine_lookahead:{argument}: the drop rules must be distinct names of {', '.join(DROPS)} joined by '+'. "
            "Fix: e.g. refine_lookahead:oldest+span:truncation, or refine_lookahead:truncation for the default."
        )
    return rules, rest


def _split_count(
    argument: str, whole: str, letter: str, default: int, missing: int | None = None
) -> tuple[int, str]:
    """A ``{letter}N:REST`` head -> ``(N, REST)``; no such head -> ``(default, argument)``; ``{letter}:REST``
    -> ``(missing, REST)`` where ``missing`` is given (else it is no such head).

    :raises ValueError: for ``N < 1``.
    """
    head, _, rest = argument.partition(":")
    bare = head[1:] == "" and missing is not None
    if not (rest and head[:1] == letter and (bare or head[1:].lstrip("-").isdigit())):
        return default, argument
    count = int(head[1:]) if head[1:] else (missing or 0)
    if count < 1:
        raise ValueError(
            f"refine_lookahead:{whole}: {letter}N needs N >= 1. Fix: e.g. refine_lookahead:{letter}2:truncation."
        )
    return count, rest


SEARCH_DTYPES: dict[str, str] = {"bf16": "bfloat16"}
"""``refine_lookahead``'s dtype heads: the weights dtype of the search's own judge passes (the judge's by default)."""


OTHER_DTYPES = frozenset({"fp16", "float16", "half", "fp32", "float32", "bfloat16", "fp8"})
"""Dtype spellings ``refine_lookahead`` and ``move_agent`` refuse with a fix (rather than as an unknown base method)."""


class LookaheadArgument(NamedTuple):
    """``refine_lookahead``'s parsed argument (:func:`split_lookahead_argument`)."""

    drops: tuple[str, ...]
    rounds: int
    proposals: int
    dtype: str | None
    base: str
    lookahead: int = LOOKAHEAD_TOKENS
    """Tokens of the judge's own continuation the guard reads (``lN``)."""


def split_lookahead_argument(argument: str) -> LookaheadArgument:
    """``refine_lookahead``'s argument: ``[DROPS:][rN:][pK:][lN:][bf16:]BASE`` -> ``(drops, rounds, proposals, dtype, BASE,
    lookahead)``.

    ``DROPS`` as :func:`split_drops_argument`; ``rN`` runs ``N`` search rounds (default 1), e.g.
    ``refine_lookahead:r2:truncation``; ``pK`` judges only the ``K`` best estimated moves (``p`` alone:
    :data:`LOOKAHEAD_PROPOSALS`; default: every move), e.g. ``refine_lookahead:p16:truncation``; ``lN`` guards on
    the first ``N`` tokens of the judge's own continuation (default :data:`LOOKAHEAD_TOKENS`; the tolerance stays
    per token), e.g. ``refine_lookahead:p:l32:bf16:truncation``; ``bf16``
    runs the search's own judge passes in bfloat16 (:data:`SEARCH_DTYPES`; default: the judge's dtype), e.g.
    ``refine_lookahead:p:bf16:truncation``.

    :raises ValueError: for a drop-rule head that names something else, or ``rN`` / ``pK`` / ``lN`` below 1.
    """
    drops, rest = split_drops_argument(argument)
    rounds, rest = _split_count(rest, argument, "r", 1)
    proposals, rest = _split_count(rest, argument, "p", 0, LOOKAHEAD_PROPOSALS)
    lookahead, rest = _split_count(rest, argument, "l", LOOKAHEAD_TOKENS)
    head, _, base = rest.partition(":")
    if base and head in SEARCH_DTYPES:
        return LookaheadArgument(drops, rounds, proposals, SEARCH_DTYPES[head], base, lookahead)
    if base and head in OTHER_DTYPES:
        raise ValueError(
            f"refine_lookahead:{argument}: the search's passes run in the judge's dtype or in {', '.join(SEARCH_DTYPES)}, "
            f"not {head}. Fix: e.g. refine_lookahead:p:bf16:truncation, or load the judge in that dtype (--dtype)."
        )
    return LookaheadArgument(drops, rounds, proposals, None, rest, lookahead)


def check_drops_argument(argument: str) -> None:
    """``refine_lookahead:[DROPS:][rN:][pK:][lN:][bf16:]BASE``: the drop rules, rounds and proposals parse and the base is checked as ``refine``'s."""
    check_refine_argument(split_lookahead_argument(argument).base, "refine_lookahead")


def check_guard_argument(argument: str) -> None:
    """``refine_guard:[K@TOL:]BASE``: the guard parses and the base is checked as ``refine``'s."""
    check_refine_argument(split_guard_argument(argument)[2], "refine_guard")


def _refine(argument: str, context: MethodContext) -> RecoverabilitySearch:
    """``refine:BASE``: :class:`RecoverabilitySearch` of the method ``BASE``, scored by the run's judge."""
    check_refine_argument(argument)
    return RecoverabilitySearch(build_method(argument, context), context.judge)


def _refine_guard(argument: str, context: MethodContext) -> RecoverabilitySearch:
    """``refine_guard:[K@TOL:]BASE``: ``refine`` over :data:`GUARD_MOVES` with the retention guard (default :data:`GUARD_TOKENS` @ :data:`GUARD_TOLERANCE`)."""
    k, tol, base = split_guard_argument(argument)
    check_refine_argument(base, "refine_guard")
    return RecoverabilitySearch(
        build_method(base, context),
        context.judge,
        moves=GUARD_MOVES,
        guard=k,
        guard_tolerance=tol,
        name=f"refine_guard:{argument}",
    )


def _refine_lookahead(argument: str, context: MethodContext) -> RecoverabilitySearch:
    """``refine_lookahead:[DROPS:][rN:][pK:][lN:][bf16:]BASE``: ``refine`` over :data:`GUARD_MOVES` and the drop rules
    (default :data:`LOOKAHEAD_DROPS`) with the lookahead guard and a protected tail (:func:`split_lookahead_argument`)."""
    drops, rounds, proposals, dtype, base, lookahead = split_lookahead_argument(argument)
    check_refine_argument(base, "refine_lookahead")
    return RecoverabilitySearch(
        build_method(base, context),
        context.judge,
        moves=GUARD_MOVES,
        protect=LOOKAHEAD_PROTECT,
        lookahead=lookahead,
        lookahead_tolerance=LOOKAHEAD_TOLERANCE,
        drops=drops,
        rounds=rounds,
        proposals=proposals,
        dtype=dtype,
        name=f"refine_lookahead:{argument}",
    )


register_method("refine", _refine, overwrite=True)
register_method("refine_lookahead", _refine_lookahead, overwrite=True)
register_method("refine_guard", _refine_guard, overwrite=True)
