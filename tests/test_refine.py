"""refine:BASE: moves keep the token count, the search picks the candidate of lowest R(p), bad names fail early."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenmask.evaluate.baselines import Truncation
from tokenmask.evaluate.compressor import MethodContext, build_method
from tokenmask.evaluate.refine import (
    GUARD_MOVES,
    GUARD_TOKENS,
    GUARD_TOLERANCE,
    RecoverabilitySearch,
    move_variants,
)
from tokenmask.evaluate.runner import check_methods
from tokenmask.reconstructors.judge import recovery_nlls, separator_ids


def test_move_variants_by_hand() -> None:
    keep = np.array([False] * 4 + [True] * 4)
    variants = move_variants(keep, moves=[2], stride=2)
    # the first two kept tokens (4, 5) go; a run of two dropped tokens is kept at 0 or 2 (4 is the base mask)
    expected = [
        np.array([True, True, False, False, False, False, True, True]),
        np.array([False, False, True, True, False, False, True, True]),
    ]
    assert len(variants) == 2
    for got, want in zip(variants, expected):
        np.testing.assert_array_equal(got, want)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.booleans(), min_size=1, max_size=40),
    st.lists(st.integers(1, 12), min_size=1, max_size=3),
    st.integers(1, 9),
)
def test_move_variants_keep_the_count_and_are_distinct(keep, moves, stride) -> None:
    keep = np.array(keep)
    variants = move_variants(keep, moves, stride)
    keys = {v.tobytes() for v in variants}
    assert len(keys) == len(variants) and keep.tobytes() not in keys
    assert all(v.sum() == keep.sum() for v in variants)


def test_move_variants_reject_bad_settings() -> None:
    with pytest.raises(ValueError, match="moves must be >= 1"):
        move_variants(np.ones(4, bool), moves=[0], stride=1)


def _contexts(judge, count: int = 3) -> list[list[int]]:
    rng = np.random.default_rng(0)
    return [rng.integers(100, 5000, size=48).tolist() for _ in range(count)]


def test_search_picks_the_lowest_recovery_nll(tiny_recon) -> None:
    contexts = _contexts(tiny_recon)
    base = Truncation(tiny_recon.tokenizer)
    search = RecoverabilitySearch(base, tiny_recon, moves=(8,), stride=8)
    rate = 0.5
    chosen = search.keep_masks(contexts, rate)
    sep = separator_ids(tiny_recon)
    for ids, keep, proposal in zip(contexts, chosen, base.keep_masks(contexts, rate)):
        candidates = [proposal, *move_variants(proposal, (8,), 8)]
        nlls = recovery_nlls(
            tiny_recon, [np.asarray(ids)[c].tolist() for c in candidates], [ids] * len(candidates), sep
        )
        assert keep.sum() == proposal.sum()
        np.testing.assert_array_equal(keep, candidates[int(np.argmin(nlls))])


@pytest.mark.parametrize("tolerance", [0.0, 0.2])
def test_guard_admits_only_candidates_within_the_tolerance(tiny_recon, tolerance: float) -> None:
    """With the guard, the winner is the lowest R among candidates whose stand-in continuation NLL
    (the context's last k tokens) is at most the base's plus k * tolerance."""
    from tokenmask.reconstructors.judge import continuation_nlls

    contexts = _contexts(tiny_recon)
    base = Truncation(tiny_recon.tokenizer)
    k = 8
    search = RecoverabilitySearch(base, tiny_recon, moves=(8,), stride=8, guard=k, guard_tolerance=tolerance)
    rate = 0.5
    chosen = search.keep_masks(contexts, rate)
    sep = separator_ids(tiny_recon)
    for ids, keep, proposal in zip(contexts, chosen, base.keep_masks(contexts, rate)):
        array = np.asarray(ids)
        candidates = [proposal, *move_variants(proposal, (8,), 8)]
        nlls = recovery_nlls(
            tiny_recon, [array[c].tolist() for c in candidates], [ids] * len(candidates), sep
        )
        stand_in = continuation_nlls(
            tiny_recon, [array[:-k][c[:-k]].tolist() for c in candidates], [ids[-k:]] * len(candidates)
        )
        admitted = stand_in <= stand_in[0] + k * tolerance + 1e-4
        want = int(np.flatnonzero(admitted)[np.argmin(nlls[admitted])])
        np.testing.assert_array_equal(keep, candidates[want])


def test_guard_rejects_bad_settings(tiny_recon) -> None:
    with pytest.raises(ValueError, match="guard"):
        RecoverabilitySearch(Truncation(tiny_recon.tokenizer), tiny_recon, guard=-1)


@pytest.mark.parametrize(
    ("name", "guard", "tolerance"),
    [("refine_guard:truncation", GUARD_TOKENS, GUARD_TOLERANCE), ("refine_guard:8@0.25:truncation", 8, 0.25)],
)
def test_refine_guard_names(tiny_recon, name: str, guard: int, tolerance: float) -> None:
    check_methods([name])
    method = build_method(name, MethodContext(judge=tiny_recon))
    assert isinstance(method, RecoverabilitySearch) and method.name == name
    assert (method.guard, method.guard_tolerance) == (guard, tolerance)
    assert method.moves == GUARD_MOVES
    assert method.base.name == "truncation"


def test_refine_method_builds_and_keeps_the_rate(tiny_recon) -> None:
    method = build_method("refine:truncation", MethodContext(judge=tiny_recon))
    assert isinstance(method, RecoverabilitySearch) and method.name == "refine:truncation"
    text = " ".join(["The import system searches sys.path for a module."] * 6)
    ids = tiny_recon.encode(text)[:64]
    out = method.compress([ids], 0.5, texts=[tiny_recon.tokenizer.decode(ids)])[0]
    assert abs(len(tiny_recon.encode(out.text)) / len(ids) - 0.5) <= 0.05


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("refine", "refine needs a base method"),
        ("refine:refine:truncation", "already a search"),
        ("refine:no_such_method", "Unknown method"),
        ("refine_guard:0@0.1:truncation", "TOKENS@TOLERANCE"),
        ("refine_guard:16@x:truncation", "TOKENS@TOLERANCE"),
        ("refine_guard:16@0.1:refine:truncation", "already a search"),
        ("refine_guard:no_such_method", "Unknown method"),
        ("refine_lookahead", "refine_lookahead needs a base method"),
        ("refine_lookahead:refine_guard:truncation", "already a search"),
        ("refine:refine_lookahead:truncation", "already a search"),
        ("refine_lookahead:no_such_method", "Unknown method"),
        ("refine_lookahead:oldest+newest:truncation", "drop rules must be distinct names"),
        ("refine_lookahead:span+span:truncation", "drop rules must be distinct names"),
        ("refine_lookahead:oldest:refine:truncation", "already a search"),
        ("refine_lookahead:span:no_such_method", "Unknown method"),
        ("refine_lookahead:fp16:truncation", "not fp16"),
        ("move_agent:no_such_policy.zip:truncation", "no policy file"),
        ("move_agent:default", "a policy file and a base method"),
        ("move_agent:default:fp16:truncation", "not fp16"),
        (
            "move_agent:default:refine_lookahead:truncation",
            "move_agent:refine_lookahead:truncation searches over",
        ),
        ("move_agent:default:no_such_method", "Unknown method"),
    ],
)
def test_bad_refine_names_fail_before_any_model(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_methods([name])


def test_refine_labels_are_the_search_masks(tiny_recon) -> None:
    """`tokenmask label --family refine --retention_weight 0` labels = refine:truncation's masks (no continuation used)."""
    from tokenmask.evaluate.metrics import EvalDocument
    from tokenmask.train.labels import LabelConfig, LabelSearch

    rng = np.random.default_rng(1)
    docs = [
        EvalDocument(
            context=rng.integers(100, 5000, 64).tolist(),
            continuation=rng.integers(100, 5000, 8).tolist(),
            text="",
        )
        for _ in range(3)
    ]
    config = LabelConfig(
        context_tokens=64, continuation_tokens=8, span=8, rates=[0.5], family="refine", retention_weight=0.0
    )
    labels = LabelSearch(tiny_recon, config).label_group(docs, [0, 1, 2])
    search = RecoverabilitySearch(Truncation(tiny_recon.tokenizer), tiny_recon)
    for label, keep in zip(labels, search.keep_masks([d.context for d in docs], 0.5)):
        np.testing.assert_array_equal(label.keep, keep)
        assert label.origin in ("truncation", "moves")


def test_unknown_label_family_is_refused() -> None:
    from tokenmask.train.labels import LabelConfig

    with pytest.raises(ValueError, match="Unknown family"):
        LabelConfig(family="beam")


def test_refine_refuses_an_in_model_method(tiny_recon) -> None:
    with pytest.raises(ValueError, match="refine needs a masking method"):
        build_method("refine:activation", MethodContext(judge=tiny_recon))


def test_frozen_tokens_are_never_dropped() -> None:
    from tokenmask.evaluate.refine import dropped_tokens

    kept = np.array([2, 3, 6, 7, 8, 9])
    frozen = np.zeros(10, dtype=bool)
    frozen[[2, 3]] = True
    np.testing.assert_array_equal(dropped_tokens(kept, 2, protect=2, frozen=frozen), [6, 7])
    assert dropped_tokens(kept, 3, protect=2, frozen=frozen) is None  # only 6 and 7 may go


def test_second_round_searches_from_the_first_rounds_choice(tiny_recon) -> None:
    """rounds=2: the winner is the lowest R among the first round's choice and its moves that keep the run
    it moved (frozen) and drop the next base tokens; the count of kept tokens never changes."""
    contexts = _contexts(tiny_recon)
    base = Truncation(tiny_recon.tokenizer)
    rate = 0.5
    first = RecoverabilitySearch(base, tiny_recon, moves=(8,), stride=8).keep_masks(contexts, rate)
    second = RecoverabilitySearch(base, tiny_recon, moves=(8,), stride=8, rounds=2).keep_masks(contexts, rate)
    sep = separator_ids(tiny_recon)
    for ids, one, two, proposal in zip(contexts, first, second, base.keep_masks(contexts, rate)):
        assert two.sum() == proposal.sum()
        if (one == proposal).all():
            np.testing.assert_array_equal(two, one)  # no first move, no second round
            continue
        candidates = [one, *move_variants(one, (8,), 8, frozen=one & ~proposal)]
        assert all((c[one & ~proposal]).all() for c in candidates)  # the first run stays kept
        nlls = recovery_nlls(
            tiny_recon, [np.asarray(ids)[c].tolist() for c in candidates], [ids] * len(candidates), sep
        )
        np.testing.assert_array_equal(two, candidates[int(np.argmin(nlls))])
    with pytest.raises(ValueError, match="rounds"):
        RecoverabilitySearch(base, tiny_recon, rounds=0)
