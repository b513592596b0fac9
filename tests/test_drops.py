"""Drop rules of refine's moves: which kept tokens a move drops (oldest run, least surprising run, least surprising tokens, the oldest text thinned)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenmask.evaluate.baselines import Truncation
from tokenmask.evaluate.compressor import MethodContext, build_method
from tokenmask.evaluate.refine import (
    LOOKAHEAD_DROPS,
    RecoverabilitySearch,
    dropped_tokens,
    move_variants,
)
from tokenmask.evaluate.refine_methods import split_drops_argument
from tokenmask.evaluate.runner import check_methods
from tokenmask.reconstructors.judge import recovery_nlls, separator_ids


def test_dropped_tokens_by_hand() -> None:
    kept = np.array([2, 3, 4, 7, 8, 9, 10])
    bits = np.array([0, 0, 5.0, 1.0, 0.5, 0, 0, 4.0, 0.2, 3.0, 9.0])
    np.testing.assert_array_equal(dropped_tokens(kept, 2), [2, 3])
    # runs of 2 consecutive kept tokens: (2,3)=6, (3,4)=1.5, (4,7)=4.5, (7,8)=4.2, (8,9)=3.2, (9,10)=12
    np.testing.assert_array_equal(dropped_tokens(kept, 2, "span", bits), [3, 4])
    np.testing.assert_array_equal(dropped_tokens(kept, 2, "thin", bits), [4, 8])
    # lean: the 2 least surprising of the oldest 4 kept tokens (2, 3, 4, 7: bits 5, 1, 0.5, 4)
    np.testing.assert_array_equal(dropped_tokens(kept, 2, "lean", bits), [3, 4])
    # fewer than 2m left after the protected tail: the least surprising of what is left
    np.testing.assert_array_equal(dropped_tokens(kept, 3, "lean", bits, protect=3), [3, 4, 7])
    # the last 3 kept tokens are spared: the span (8,9) and the token 9/10 can no longer go
    np.testing.assert_array_equal(dropped_tokens(kept, 3, "span", bits, protect=3), [3, 4, 7])
    assert dropped_tokens(kept, 5, "oldest", protect=3) is None


def test_dropped_tokens_reject_bad_rules() -> None:
    with pytest.raises(ValueError, match="unknown drop"):
        dropped_tokens(np.arange(4), 2, "newest")
    with pytest.raises(ValueError, match="surprisal"):
        dropped_tokens(np.arange(4), 2, "span")


@settings(max_examples=60, deadline=None)
@given(
    keep=st.lists(st.booleans(), min_size=8, max_size=48),
    moves=st.lists(st.integers(1, 8), min_size=1, max_size=3, unique=True),
    stride=st.integers(1, 4),
    protect=st.integers(0, 10),
    seed=st.integers(0, 1000),
)
def test_every_drop_rule_keeps_the_count_and_spares_the_tail(keep, moves, stride, protect, seed) -> None:  # type: ignore[no-untyped-def]
    keep = np.asarray(keep)
    bits = np.random.default_rng(seed).random(len(keep))
    variants = move_variants(keep, moves, stride, ("oldest", "span", "thin", "lean"), bits, protect)
    tail = np.flatnonzero(keep)[max(0, keep.sum() - protect) :]
    keys = {v.tobytes() for v in variants}
    assert len(keys) == len(variants) and keep.tobytes() not in keys
    for v in variants:
        assert v.sum() == keep.sum() and v[tail].all()


def test_search_with_span_drops_picks_the_lowest_r(tiny_recon) -> None:  # type: ignore[no-untyped-def]
    """The search tries oldest and span moves (spans priced by the judge's surprisal) and keeps the lowest R."""
    rng = np.random.default_rng(7)
    contexts = [rng.integers(100, 5000, size=48).tolist() for _ in range(3)]
    base = Truncation(tiny_recon.tokenizer)
    drops, moves, protect, rate = ("oldest", "span"), (4, 8), 6, 0.5
    search = RecoverabilitySearch(base, tiny_recon, moves=moves, stride=4, protect=protect, drops=drops)
    chosen = search.keep_masks(contexts, rate)
    bits = tiny_recon.token_bits(contexts)
    sep = separator_ids(tiny_recon)
    spans = 0
    for ids, keep, proposal, b in zip(contexts, chosen, base.keep_masks(contexts, rate), bits):
        oldest = move_variants(proposal, moves, 4, ("oldest",), b, protect)
        candidates = [proposal, *move_variants(proposal, moves, 4, drops, b, protect)]
        spans += len(candidates) - 1 - len(oldest)
        nlls = recovery_nlls(
            tiny_recon, [np.asarray(ids)[c].tolist() for c in candidates], [ids] * len(candidates), sep
        )
        np.testing.assert_array_equal(keep, candidates[int(np.argmin(nlls))])
    assert spans  # span moves added candidates the oldest rule does not make


def test_refine_lookahead_drops_argument(tiny_recon) -> None:  # type: ignore[no-untyped-def]
    assert split_drops_argument("truncation") == (LOOKAHEAD_DROPS, "truncation")
    assert split_drops_argument("oldest+span:agent:default") == (("oldest", "span"), "agent:default")
    check_methods(["refine_lookahead:oldest+span:truncation", "refine_lookahead:span:truncation"])
    method = build_method("refine_lookahead:oldest+span:truncation", MethodContext(judge=tiny_recon))
    assert isinstance(method, RecoverabilitySearch) and method.drops == ("oldest", "span")
    assert method.name == "refine_lookahead:oldest+span:truncation"
    with pytest.raises(ValueError, match="drops must be some of"):
        RecoverabilitySearch(Truncation(tiny_recon.tokenizer), tiny_recon, drops=("newest",))


def test_refine_lookahead_rounds_argument(tiny_recon) -> None:  # type: ignore[no-untyped-def]
    from tokenmask.evaluate.refine_methods import split_lookahead_argument

    assert split_lookahead_argument("truncation") == (LOOKAHEAD_DROPS, 1, 0, None, "truncation", 64)
    assert split_lookahead_argument("r2:truncation") == (LOOKAHEAD_DROPS, 2, 0, None, "truncation", 64)
    assert split_lookahead_argument("oldest+span:r3:agent:default") == (
        ("oldest", "span"),
        3,
        0,
        None,
        "agent:default",
        64,
    )
    check_methods(["refine_lookahead:r2:truncation", "refine_lookahead:oldest:r2:truncation"])
    method = build_method("refine_lookahead:r2:truncation", MethodContext(judge=tiny_recon))
    assert isinstance(method, RecoverabilitySearch) and method.rounds == 2
    assert method.name == "refine_lookahead:r2:truncation"
    with pytest.raises(ValueError, match="rN needs N >= 1"):
        check_methods(["refine_lookahead:r0:truncation"])
