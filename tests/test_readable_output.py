"""Readable output of masking compressors: dropped whitespace never fuses two words, and the emitted text hits the rate."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenmask.data import sample_corpus_path
from tokenmask.evaluate.baselines import RandomDrop, Truncation
from tokenmask.evaluate.compressor import (
    MaskingCompressor,
    MethodContext,
    build_method,
    drop_highest,
    join_kept,
    mask_priority,
    token_texts,
)
from tokenmask.evaluate.metrics import compression_rate
from tokenmask.reconstructors import Reconstructor

MIXED = [
    "It is a policy:\nnames, numbers and\tTabs\tstay apart.\n\nA popular algorithm runs here.",
    'def area(r):\n    """Circle area."""\n    return 3.14159 * r ** 2\n\nprint(area(2))  # 12.57\n',
    "Café naïve — 日本語のテキスト 😀 grüße, Ελληνικά; ¿qué?\n\tüber\r\nfin",
    "if (x&&y){\n\treturn\tz;}\n    else  {  w(); }",
]
MASKING = [
    "random",
    "frequency",
    "length",
    "truncation",
    "truncation_first",
    "self_information",
    "span_self_information",
]
RATES = (0.3, 0.5, 0.7)


def masking(name: str, context: MethodContext) -> MaskingCompressor:
    """The masking method called ``name``."""
    method = build_method(name, context)
    assert isinstance(method, MaskingCompressor)
    return method


def words_of_tokens(pieces: list[str]) -> list[list[int]]:
    """Per token, the index of the original whitespace-separated word of each of its characters (-1: whitespace)."""
    out, word, in_word = [], -1, False
    for piece in pieces:
        marks = []
        for ch in piece:
            if ch.isspace():
                in_word = False
                marks.append(-1)
            else:
                if not in_word:
                    word, in_word = word + 1, True
                marks.append(word)
        out.append(marks)
    return out


def check_readable(pieces: list[str], keep: np.ndarray, text: str) -> None:
    """``text`` is the kept pieces in order with single separators only, and none of its words spans two original words."""
    marks = words_of_tokens(pieces)
    position, word_of_char = 0, []
    gap: list[str] = []
    seen_kept = False
    for piece, kept, mark in zip(pieces, keep, marks):
        if not piece:
            continue
        if not kept:
            gap.append(piece)
            continue
        dropped = "".join(gap)
        if text.startswith(piece, position) and not (
            seen_kept
            and re.search(r"\s", dropped)
            and not text[position - 1].isspace()
            and not piece[0].isspace()
        ):
            pass  # no separator, and none was needed
        else:
            separator = text[position]
            assert separator == ("\n" if "\n" in dropped else " "), (separator, dropped)
            assert seen_kept and re.search(r"\s", dropped), "a separator without dropped whitespace"
            word_of_char.append(-1)
            position += 1
            assert text.startswith(piece, position)
        word_of_char.extend(mark)
        position += len(piece)
        gap, seen_kept = [], True
    assert position == len(text)
    for match in re.finditer(r"\S+", text):
        words = set(word_of_char[match.start() : match.end()])
        assert len(words) == 1, f"{match.group()!r} fuses original words {sorted(words)}"


def test_join_kept_keeps_one_separator_where_whitespace_was_dropped() -> None:
    pieces = ["a", " ", "policy", ",", "\n", "\t", "names", " x", "y", "\t", "z"]
    assert join_kept(pieces, mask("k-kk--k-k-k")) == "a policy,\nnames y z"
    assert join_kept(pieces, mask("k" * len(pieces))) == "".join(pieces)
    # nothing before the first kept token, nor after the last; kept whitespace is enough
    assert join_kept([" ", "a", " b", "\n"], mask("-k--")) == "a"
    assert join_kept(["a ", "\n", "b"], mask("k-k")) == "a b"
    assert join_kept(["a", "\n", " b"], mask("k-k")) == "a b"
    # dropped tokens without whitespace join as they are (parts of one word)
    assert join_kept(["extra", "ordin", "ary"], mask("k-k")) == "extraary"
    assert join_kept([], mask("")) == ""


def test_token_texts_rebuild_the_decoded_text(tiny_recon) -> None:  # type: ignore[no-untyped-def]
    for text in MIXED:
        ids = tiny_recon.encode(text)
        pieces = token_texts(tiny_recon.tokenizer, ids)
        assert len(pieces) == len(ids) and "".join(pieces) == tiny_recon.decode(ids) == text
        assert not any("\ufffd" in p for p in pieces)  # a multi-byte character goes whole to one token


@given(seed=st.integers(0, 10_000), rate=st.floats(0.05, 0.95), which=st.integers(0, len(MIXED) - 1))
@settings(max_examples=80, deadline=None)
def test_no_two_words_fuse_under_any_mask(tiny_recon, seed: int, rate: float, which: int) -> None:  # type: ignore[no-untyped-def]
    ids = tiny_recon.encode(MIXED[which])
    keep = np.random.default_rng(seed).random(len(ids)) >= rate
    pieces = token_texts(tiny_recon.tokenizer, ids)
    check_readable(pieces, keep, join_kept(pieces, keep))


def test_compressed_text_of_each_baseline_is_readable(tiny_recon) -> None:  # type: ignore[no-untyped-def]
    context = MethodContext(judge=tiny_recon, train_texts=MIXED)
    contexts = [tiny_recon.encode(t) for t in MIXED]
    for name in MASKING:
        method = masking(name, context)
        for rate in RATES:
            for ids, out in zip(contexts, method.compress(contexts, rate)):
                assert out.keep is not None
                check_readable(token_texts(tiny_recon.tokenizer, ids), out.keep, out.text)
                assert out.text == method.emitted_text(ids, out.keep)


def test_fused_words_of_the_issue_stay_apart(tiny_recon) -> None:  # type: ignore[no-untyped-def]
    ids = tiny_recon.encode("a\npolicy is a popular\nalgorithm for names,\nnumbers")
    pieces = token_texts(tiny_recon.tokenizer, ids)
    keep = np.array(["\n" not in p for p in pieces])
    text = Truncation(tiny_recon.tokenizer).emitted_text(ids, keep)
    assert text == "a\npolicy is a popular\nalgorithm for names,\nnumbers"
    assert (
        tiny_recon.decode([t for t, k in zip(ids, keep) if k])
        == "apolicy is a popularalgorithm for names,numbers"
    )


def mask(drawing: str) -> np.ndarray:
    """``"--kk"`` -> ``[False, False, True, True]`` (k = kept)."""
    return np.array([c == "k" for c in drawing])


def test_mask_priority_reproduces_the_mask_then_grows_its_runs() -> None:
    priority = mask_priority(mask("--kkk-kkkk"))
    assert (drop_highest(priority, 3) == mask("--kkk-kkkk")).all()
    # kept neighbours of dropped runs go next (ties: earlier first); restoring shortens the runs at their edges
    assert (drop_highest(priority, 5) == mask("---k--kkkk")).all()
    assert (drop_highest(priority, 2) == mask("--kkkkkkkk")).all()
    assert (drop_highest(mask_priority(mask("kkkk")), 1) == mask("-kkk")).all()


def test_a_mask_that_drops_nothing_emits_the_text_itself(tiny_recon) -> None:  # type: ignore[no-untyped-def]
    method = RandomDrop(tiny_recon.tokenizer)
    contexts = [tiny_recon.encode(t) for t in MIXED]
    for ids, out in zip(contexts, method.compress(contexts, 0.0)):
        assert out.keep is not None and out.keep.all() and out.text == tiny_recon.decode(ids)


def sample_contexts(judge: Reconstructor, count: int, size: int = 256) -> list[list[int]]:
    """The first ``count`` contexts of ``size`` tokens of the shipped sample corpus."""
    contexts = []
    with open(sample_corpus_path(), encoding="utf-8") as handle:
        for line in handle:
            ids = judge.encode(json.loads(line)["text"])
            if len(ids) >= size:
                contexts.append(ids[:size])
            if len(contexts) == count:
                break
    return contexts


def check_rates(
    judge: Reconstructor, names: list[str], contexts: list[list[int]], rates: tuple[float, ...] = RATES
) -> None:
    """Each method's emitted text, re-tokenized as the evaluation does, hits each rate within 0.01 (corpus and document)."""
    context = MethodContext(judge=judge, train_texts=[judge.decode(c) for c in contexts])
    for name in names:
        method = masking(name, context)
        for rate in rates:
            outputs = method.compress(contexts, rate)
            emitted = [len(judge.encode(o.text)) if o.text else 0 for o in outputs]
            achieved = compression_rate(emitted, [len(c) for c in contexts])
            assert abs(achieved - rate) <= 0.01, (name, rate, achieved)
            worst = max(abs(1 - e / len(c) - rate) for e, c in zip(emitted, contexts))
            assert worst <= 0.01, (name, rate, worst)


def test_masking_baselines_hit_the_rate_on_the_emitted_text(tiny_recon) -> None:  # type: ignore[no-untyped-def]
    contexts = sample_contexts(tiny_recon, 40)
    scored = ["self_information", "span_self_information"]  # an LM pass each: fewer documents
    check_rates(tiny_recon, [m for m in MASKING if m not in scored], contexts)
    check_rates(tiny_recon, scored, contexts[:6])


@pytest.fixture(scope="module")
def judge() -> Reconstructor:
    """The embedded SmolLM2 as ``tokenmask evaluate`` and ``tokenmask.compress`` load it (no mask token)."""
    return Reconstructor.load("default", device="cpu", add_mask_token=False)


@pytest.mark.integration
def test_embedded_tokenizer_output_is_readable_and_hits_the_rate(judge) -> None:  # type: ignore[no-untyped-def]
    contexts = [judge.encode(t) for t in MIXED]
    for name, rates in (("self_information", (0.5,)), ("span_self_information:4", (0.5,)), ("random", RATES)):
        method = masking(name, MethodContext(judge=judge))
        for rate in rates:
            for ids, out in zip(contexts, method.compress(contexts, rate)):
                assert out.keep is not None
                check_readable(token_texts(judge.tokenizer, ids), out.keep, out.text)
    # one judge pass per call: a few documents, the scattered method at every rate
    sample = sample_contexts(judge, 8)
    check_rates(judge, ["self_information"], sample)
    check_rates(judge, ["span_self_information"], sample, rates=(0.5,))
