"""``refine_lookahead:pK``: only the K moves of best judge-light estimate are judged."""

from __future__ import annotations

import numpy as np
import pytest

from tokenmask.evaluate.baselines import Truncation
from tokenmask.evaluate.compressor import MethodContext, build_method
from tokenmask.evaluate.refine import (
    LOOKAHEAD_DROPS,
    LOOKAHEAD_PROPOSALS,
    RecoverabilitySearch,
    move_estimates,
    move_variants,
)
from tokenmask.evaluate.refine_methods import split_lookahead_argument
from tokenmask.evaluate.runner import check_methods
from tokenmask.reconstructors.judge import recovery_nlls, recovery_token_nlls, separator_ids


def test_move_estimates_by_hand() -> None:
    keep = np.array([0, 0, 1, 1, 1, 0], dtype=bool)
    moved = np.array([1, 0, 0, 1, 1, 0], dtype=bool)  # keeps token 0, drops token 2
    b = np.array([3.0, 1.0, 0.5, 0.2, 0.1, 2.0])
    e = np.array([9.0, 8.0, 4.0, 2.0, 1.0, 7.0])
    np.testing.assert_allclose(move_estimates(keep, [moved, keep], b, e), [3.0 - 4.0, 0.0])


def _contexts() -> list[list[int]]:
    rng = np.random.default_rng(3)
    return [rng.integers(100, 5000, size=48).tolist() for _ in range(3)]


def test_enough_proposals_change_nothing(tiny_recon) -> None:  # type: ignore[no-untyped-def]
    """With K at least the number of moves, the search judges every move and picks what it picks without K."""
    base, contexts = Truncation(tiny_recon.tokenizer), _contexts()
    every = RecoverabilitySearch(base, tiny_recon, moves=(4, 8), stride=4).keep_masks(contexts, 0.5)
    pruned = RecoverabilitySearch(base, tiny_recon, moves=(4, 8), stride=4, proposals=1000)
    for a, b in zip(every, pruned.keep_masks(contexts, 0.5)):
        np.testing.assert_array_equal(a, b)


def test_one_proposal_is_the_best_estimate_or_the_base(tiny_recon) -> None:  # type: ignore[no-untyped-def]
    """K = 1: the choice is the base mask or its move of highest estimate, whichever has the lower R."""
    base, contexts, rate = Truncation(tiny_recon.tokenizer), _contexts(), 0.5
    chosen = RecoverabilitySearch(base, tiny_recon, moves=(4, 8), stride=4, proposals=1).keep_masks(
        contexts, rate
    )
    sep = separator_ids(tiny_recon)
    for ids, keep, pick in zip(contexts, base.keep_masks(contexts, rate), chosen):
        variants = move_variants(keep, (4, 8), 4)
        b, e = recovery_token_nlls(tiny_recon, [np.asarray(ids)[keep].tolist(), []], [ids, ids], sep)
        top = variants[int(np.argmax(move_estimates(keep, variants, b, e)))]
        r_base, r_top = recovery_nlls(
            tiny_recon, [np.asarray(ids)[m].tolist() for m in (keep, top)], [ids] * 2, sep
        )
        np.testing.assert_array_equal(pick, top if r_top < r_base else keep)


def test_only_the_proposals_are_judged(tiny_recon, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Per context, the judge scores the base mask and K moves, not every move."""
    base, contexts = Truncation(tiny_recon.tokenizer), _contexts()
    search = RecoverabilitySearch(base, tiny_recon, moves=(4, 8), stride=4, proposals=2)
    judged: list[int] = []
    judge = search._judge
    monkeypatch.setattr(
        search, "_judge", lambda ids, owners, *rest: judged.append(len(owners)) or judge(ids, owners, *rest)
    )
    search.keep_masks(contexts, 0.5)
    every = sum(1 + len(move_variants(k, (4, 8), 4)) for k in base.keep_masks(contexts, 0.5))
    assert judged == [len(contexts) * 3] and every > judged[0]


def test_proposals_argument(tiny_recon) -> None:  # type: ignore[no-untyped-def]
    assert split_lookahead_argument("p:truncation") == (
        LOOKAHEAD_DROPS,
        1,
        LOOKAHEAD_PROPOSALS,
        None,
        "truncation",
        64,
    )
    assert split_lookahead_argument("oldest+span:r2:p8:agent:default") == (
        ("oldest", "span"),
        2,
        8,
        None,
        "agent:default",
        64,
    )
    check_methods(["refine_lookahead:p:truncation", "refine_lookahead:r2:p4:truncation"])
    assert split_lookahead_argument("p:l32:bf16:truncation") == (
        LOOKAHEAD_DROPS,
        1,
        LOOKAHEAD_PROPOSALS,
        "bfloat16",
        "truncation",
        32,
    )
    assert split_lookahead_argument("l16:length").lookahead == 16  # lN, then a base that starts with l
    assert split_lookahead_argument("length").base == "length"
    with pytest.raises(ValueError, match="lN needs N >= 1"):
        split_lookahead_argument("l0:truncation")
    method = build_method("refine_lookahead:p4:l8:truncation", MethodContext(judge=tiny_recon))
    assert isinstance(method, RecoverabilitySearch) and method.lookahead == 8 and method.proposals == 4
    method = build_method("refine_lookahead:p8:truncation", MethodContext(judge=tiny_recon))
    assert isinstance(method, RecoverabilitySearch) and method.proposals == 8
    with pytest.raises(ValueError, match="pN needs N >= 1"):
        check_methods(["refine_lookahead:p0:truncation"])
    with pytest.raises(ValueError, match="proposals >= 0"):
        RecoverabilitySearch(Truncation(tiny_recon.tokenizer), tiny_recon, proposals=-1)
