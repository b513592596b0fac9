"""Baselines: each hits the requested rate exactly (on judge tokens) and drops what it says it drops."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenmask.evaluate.baselines import (
    FrequencyDrop,
    LengthDrop,
    RandomDrop,
    SelfInformationDrop,
    SpanSelfInformationDrop,
    Truncation,
    drop_lowest,
)
from tokenmask.evaluate.compressor import MaskingCompressor, MethodContext, build_method, tokens_to_drop
from tokenmask.evaluate.llmlingua_peer import JudgeEncoding, llmlingua_available

TEXT = (
    "The import system searches sys.path for a module, then executes it in a fresh namespace. "
    "A package is a directory with an __init__ file; its submodules are loaded on demand. "
)
RATES = [0.0, 0.3, 0.5, 0.7, 0.95]
MASKING = [
    "random",
    "frequency",
    "length",
    "truncation",
    "truncation_first",
    "self_information",
    "span_self_information",
    "span_self_information:5",
]


@pytest.fixture(scope="module")
def context(tiny_recon):  # type: ignore[no-untyped-def]
    return MethodContext(judge=tiny_recon, train_texts=[TEXT * 3, "the the the of of a"])


@pytest.fixture(scope="module")
def contexts(tiny_recon):  # type: ignore[no-untyped-def]
    ids = tiny_recon.encode(TEXT)
    return [ids[:40], ids[5:38], ids[:17]]


@given(n=st.integers(0, 300), rate=st.floats(0.0, 0.999))
@settings(max_examples=60, deadline=None)
def test_drop_lowest_drops_exactly_round_rate_times_n(n: int, rate: float) -> None:
    keep = drop_lowest(np.random.default_rng(n).random(n), rate)
    assert int((~keep).sum()) == tokens_to_drop(n, rate) == min(n, int(np.floor(rate * n + 0.5)))


@pytest.mark.parametrize("name", MASKING)
def test_each_baseline_hits_the_rate_on_judge_tokens(name: str, context, contexts, tiny_recon) -> None:  # type: ignore[no-untyped-def]
    method = build_method(name, context)
    assert isinstance(method, MaskingCompressor)
    for rate in RATES:
        masks = method.keep_masks(contexts, rate)
        dropped = sum(int((~keep).sum()) for keep in masks)
        assert dropped == sum(tokens_to_drop(len(c), rate) for c in contexts)
        # compress emits the kept text (one separator where dropped whitespace was), its mask fitted to the rate
        outputs = method.compress(contexts, rate)
        for ids, out in zip(contexts, outputs):
            assert out.text == method.emitted_text(ids, out.keep)
        achieved = 1 - sum(len(tiny_recon.encode(o.text)) for o in outputs) / sum(map(len, contexts))
        assert abs(achieved - rate) < 0.05  # re-tokenizing the kept text may merge a few tokens


def test_bad_rate_is_a_clear_error(context, contexts) -> None:  # type: ignore[no-untyped-def]
    for rate in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"outside \[0, 1\)"):
            build_method("random", context).compress(contexts, rate)


def test_truncation_keeps_the_last_or_first_tokens(tiny_recon, contexts) -> None:  # type: ignore[no-untyped-def]
    ids = contexts[0]
    (last,) = Truncation(tiny_recon.tokenizer, keep="last").keep_masks([ids], 0.25)
    (first,) = Truncation(tiny_recon.tokenizer, keep="first").keep_masks([ids], 0.25)
    assert last.tolist() == [False] * 10 + [True] * 30
    assert first.tolist() == [True] * 30 + [False] * 10
    with pytest.raises(ValueError, match="'last' or 'first'"):
        Truncation(tiny_recon.tokenizer, keep="middle")


def test_random_is_seeded(tiny_recon, contexts) -> None:  # type: ignore[no-untyped-def]
    method = RandomDrop(tiny_recon.tokenizer)
    a = method.keep_masks(contexts, 0.5, seed=1)
    b = method.keep_masks(contexts, 0.5, seed=1)
    c = method.keep_masks(contexts, 0.5, seed=2)
    assert all((x == y).all() for x, y in zip(a, b))
    assert any((x != z).any() for x, z in zip(a, c))


def test_frequency_drops_the_most_frequent_tokens(tiny_recon) -> None:  # type: ignore[no-untyped-def]
    the, cat, mat = (tiny_recon.encode(w)[0] for w in (" the", " cat", " mat"))
    method = FrequencyDrop(tiny_recon.tokenizer, Counter({the: 100, cat: 5}))
    (keep,) = method.keep_masks([[cat, the, mat, the]], 0.5)
    assert keep.tolist() == [True, False, True, False]
    (keep,) = method.keep_masks([[cat, the, mat, the]], 0.75)  # then cat (5) before mat (unseen)
    assert keep.tolist() == [False, False, True, False]
    with pytest.raises(ValueError, match="non-empty training corpus"):
        FrequencyDrop(tiny_recon.tokenizer, Counter())


def test_frequency_needs_a_training_corpus(tiny_recon) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="no training corpus"):
        build_method("frequency", MethodContext(judge=tiny_recon))


def test_length_drops_the_shortest_tokens(tiny_recon) -> None:  # type: ignore[no-untyped-def]
    ids = [tiny_recon.encode(w)[0] for w in (" extraordinary", " a", " house", ",")]
    (keep,) = LengthDrop(tiny_recon.tokenizer).keep_masks([ids], 0.5)
    assert keep.tolist() == [True, False, True, False]


def test_self_information_drops_the_least_surprising_tokens(tiny_recon, contexts) -> None:  # type: ignore[no-untyped-def]
    (keep,) = SelfInformationDrop(tiny_recon).keep_masks(contexts[:1], 0.5)
    (bits,) = tiny_recon.token_bits(contexts[:1])
    assert bits[~keep].max() <= bits[keep].min()


def test_span_self_information_drops_whole_spans_of_lowest_mean_surprisal(tiny_recon, contexts) -> None:  # type: ignore[no-untyped-def]
    span = 4
    (keep,) = SpanSelfInformationDrop(tiny_recon, span).keep_masks(contexts[:1], 0.5)
    (bits,) = tiny_recon.token_bits(contexts[:1])
    n = len(bits)
    starts = list(range(0, n, span))
    means = [bits[s : s + span].mean() for s in starts]
    dropped = [s for s in starts if not keep[s : s + span].any()]
    kept = [s for s in starts if keep[s : s + span].all()]
    assert dropped and kept
    assert max(means[s // span] for s in dropped) <= min(means[s // span] for s in kept)
    # at most one span is cut, and it loses its first tokens
    cut = [s for s in starts if keep[s : s + span].any() and not keep[s : s + span].all()]
    assert len(cut) <= 1
    for s in cut:
        part = keep[s : min(n, s + span)]
        assert not part[0] and part[-1] and np.all(np.diff(part.astype(int)) >= 0)
    with pytest.raises(ValueError, match="span of >= 1"):
        SpanSelfInformationDrop(tiny_recon, 0)


def test_method_arguments_are_checked(context) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="takes no argument"):
        build_method("random:5", context)
    with pytest.raises(ValueError, match="iterative size"):
        build_method("llmlingua:abc", context)
    with pytest.raises(ValueError, match="optional span in tokens"):
        build_method("span_self_information:x", context)


def test_judge_encoding_stands_in_for_tiktoken(tiny_recon) -> None:  # type: ignore[no-untyped-def]
    encoding = JudgeEncoding(tiny_recon.tokenizer)
    ids = encoding.encode(TEXT, disallowed_special=())
    assert ids == tiny_recon.encode(TEXT) and encoding.decode(ids) == TEXT


@pytest.mark.integration
@pytest.mark.skipif(not llmlingua_available(), reason="llmlingua is not installed (extra 'peers')")
def test_llmlingua_runs_offline_with_the_local_model(smollm) -> None:  # type: ignore[no-untyped-def]
    method = build_method("llmlingua", MethodContext(judge=smollm))
    ids = smollm.encode(TEXT)
    (half,) = method.compress([ids], 0.5)
    (same,) = method.compress([ids], 0.0)
    assert half.keep is None and same.text == TEXT
    kept = len(smollm.encode(half.text))
    assert 0 < kept < len(ids)
