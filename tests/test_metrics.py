"""The metrics of docs/evaluation.md on cases with known answers (tiny random judge)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tokenmask.evaluate.compressor import CompressedContext, Compressor, TokenIds
from tokenmask.evaluate.evaluator import Evaluator
from tokenmask.evaluate.metrics import (
    ReferenceNLLs,
    compression_rate,
    continuation_nlls,
    information_ratio,
    reconstruction_quality,
    recovery_nlls,
    select_documents,
    separator_ids,
)
from tokenmask.reconstructors.judge import continuation_token_nlls, recovery_token_nlls

TEXTS = [
    "The interpreter reads a module, compiles it to bytecode and runs the code object. " * 4,
    "A list comprehension builds a new list from an iterable in a single readable expression. " * 4,
    "Exceptions propagate up the call stack until a matching handler catches them or the program ends. " * 4,
]


class FixedOutput(Compressor):
    """Returns a fixed function of each context: the identity, or nothing at all."""

    def __init__(self, tokenizer, mode: str) -> None:  # type: ignore[no-untyped-def]
        super().__init__(tokenizer, name=mode)
        self.mode = mode

    def compress(
        self, contexts: list[TokenIds], rate: float, texts=None, seed: int = 0
    ) -> list[CompressedContext]:  # type: ignore[no-untyped-def,override]
        texts = self.texts_of(contexts, texts)
        if self.mode == "identity":
            return [
                CompressedContext(text=t, keep=np.ones(len(c), dtype=bool)) for t, c in zip(texts, contexts)
            ]
        return [CompressedContext(text="", keep=np.zeros(len(c), dtype=bool)) for c in contexts]


@pytest.fixture(scope="module")
def docs(tiny_recon):  # type: ignore[no-untyped-def]
    found = select_documents(TEXTS, tiny_recon, context_tokens=24, continuation_tokens=8, max_documents=None)
    assert len(found) == 3
    for doc in found:  # the identity case needs texts that re-tokenize to the same ids
        assert tiny_recon.encode(doc.text) == doc.context
    return found


@pytest.fixture(scope="module")
def evaluator(tiny_recon, docs):  # type: ignore[no-untyped-def]
    return Evaluator(tiny_recon, docs)


def test_select_documents_cuts_context_and_continuation(tiny_recon) -> None:  # type: ignore[no-untyped-def]
    ids = tiny_recon.encode(TEXTS[0])
    (doc,) = select_documents([TEXTS[0], "too short"], tiny_recon, 24, 8, max_documents=5)
    assert doc.context == ids[:24] and doc.continuation == ids[24:32]
    assert doc.text == tiny_recon.decode(ids[:24])


def test_select_documents_cuts_every_offset_that_fits(tiny_recon) -> None:  # type: ignore[no-untyped-def]
    """With offsets, each window is the text's ids at its offset, context then continuation, in text order;
    offsets past the end are left out, and max_documents counts windows."""
    texts = ["word " * 30, "other text " * 5, "more words here " * 20]
    windows = select_documents(texts, tiny_recon, 16, 8, None, offsets=[0, 16, 64])
    want = []
    for i, text in enumerate(texts):
        ids = tiny_recon.encode(text)
        want += [
            (f"{i}@{o}" if o else str(i), ids[o : o + 16], ids[o + 16 : o + 24])
            for o in (0, 16, 64)
            if o + 24 <= len(ids)
        ]
    assert [(w.source, w.context, w.continuation) for w in windows] == want
    assert all(w.text == tiny_recon.decode(w.context) for w in windows)
    assert len({w.source.split("@")[0] for w in windows}) == 2  # the short text gives none
    assert len(select_documents(texts, tiny_recon, 16, 8, 2, offsets=[0, 16, 64])) == 2
    with pytest.raises(ValueError, match="offsets must be"):
        select_documents(texts, tiny_recon, 16, 8, offsets=[-1])


def test_no_long_enough_document_is_a_clear_error(tiny_recon) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="No document of the corpus has C\\+T = 1064"):
        select_documents(["short text", "another one"], tiny_recon, 1000, 64)


def test_identity_scores_one_and_rate_zero(evaluator, tiny_recon) -> None:  # type: ignore[no-untyped-def]
    scores = evaluator.evaluate(FixedOutput(tiny_recon.tokenizer, "identity"), rate=0.0)
    assert scores.rate == 0.0 and scores.rate_error == 0.0
    assert scores.recoverability == pytest.approx(1.0, abs=1e-5)
    assert scores.retention == pytest.approx(1.0, abs=1e-5)
    assert math.isnan(scores.recon_bits_per_masked)  # nothing masked


def test_empty_output_scores_zero_and_rate_one(evaluator, tiny_recon) -> None:  # type: ignore[no-untyped-def]
    scores = evaluator.evaluate(FixedOutput(tiny_recon.tokenizer, "empty"), rate=0.5)
    assert scores.rate == 1.0 and scores.rate_error == pytest.approx(0.5)
    assert scores.recoverability == pytest.approx(0.0, abs=1e-5)
    assert scores.retention == pytest.approx(0.0, abs=1e-5)
    assert scores.kept_tokens == 0


def test_information_ratio_is_a_ratio_of_sums_not_a_mean_of_ratios() -> None:
    empty, compressed, full = [10.0, 100.0], [5.0, 100.0], [0.0, 0.0]
    assert information_ratio(empty, compressed, full) == pytest.approx(5.0 / 110.0)
    assert information_ratio(empty, compressed, full) != pytest.approx(np.mean([0.5, 0.0]))
    assert math.isnan(information_ratio([3.0], [2.0], [3.0]))  # the context does not help: undefined
    with pytest.raises(ValueError, match="Shapes differ"):
        information_ratio([1.0], [1.0, 2.0], [0.0])


def test_compression_rate_is_a_ratio_of_sums() -> None:
    assert compression_rate([1, 9], [2, 10]) == pytest.approx(1 - 10 / 12)  # mean of ratios would be 0.3
    with pytest.raises(ValueError):
        compression_rate([], [])


def test_recovery_nll_matches_a_plain_forward_pass(tiny_recon, docs) -> None:  # type: ignore[no-untyped-def]
    sep = separator_ids(tiny_recon)
    prefix = docs[0].context[5:12]
    (got,) = recovery_nlls(tiny_recon, [prefix], [docs[0].context], sep)
    sequence = [tiny_recon.bos_token_id, *prefix, *sep, *docs[0].context]
    (log_probs,) = tiny_recon.sequence_log_probs([sequence])
    start = 1 + len(prefix) + len(sep)  # first context token
    assert got == pytest.approx(-float(log_probs[start - 1 :].double().sum()), rel=1e-5)
    (terms,) = recovery_token_nlls(tiny_recon, [prefix], [docs[0].context], sep)  # the same, token by token
    np.testing.assert_allclose(terms, -log_probs[start - 1 :].double().numpy(), rtol=1e-4, atol=1e-5)
    assert terms.sum() == pytest.approx(got, rel=1e-9)
    (cont,) = continuation_nlls(tiny_recon, [prefix], [docs[0].continuation])
    (log_probs,) = tiny_recon.sequence_log_probs([[tiny_recon.bos_token_id, *prefix, *docs[0].continuation]])
    assert cont == pytest.approx(-float(log_probs[len(prefix) :].double().sum()), rel=1e-5)
    (cont_terms,) = continuation_token_nlls(tiny_recon, [prefix], [docs[0].continuation])  # token by token
    np.testing.assert_allclose(cont_terms, -log_probs[len(prefix) :].double().numpy(), rtol=1e-4, atol=1e-5)
    assert cont_terms.sum() == pytest.approx(cont, rel=1e-9)


def test_evaluator_recoverability_equals_ratio_of_per_document_sums(tiny_recon, docs, evaluator) -> None:  # type: ignore[no-untyped-def]
    class KeepOddTokens(Compressor):
        """Rewrites text (no keep mask): every second token."""

        def compress(self, contexts, rate, texts=None, seed=0):  # type: ignore[no-untyped-def]
            return [CompressedContext(text=tiny_recon.decode(list(c)[1::2])) for c in contexts]

    method = KeepOddTokens(tiny_recon.tokenizer, name="odd")
    scores = evaluator.evaluate(method, rate=0.5)
    kept = [tiny_recon.encode(tiny_recon.decode(d.context[1::2])) for d in docs]
    ref = ReferenceNLLs.compute(tiny_recon, docs)
    r = recovery_nlls(tiny_recon, kept, [d.context for d in docs], separator_ids(tiny_recon))
    f = continuation_nlls(tiny_recon, kept, [d.continuation for d in docs])
    expected_rec = np.sum(ref.recover_empty - r) / np.sum(ref.recover_empty - ref.recover_full)
    expected_ret = np.sum(ref.continue_empty - f) / np.sum(ref.continue_empty - ref.continue_full)
    assert scores.recoverability == pytest.approx(expected_rec, rel=1e-6)
    assert scores.retention == pytest.approx(expected_ret, rel=1e-6)
    assert scores.rate == pytest.approx(1 - sum(map(len, kept)) / sum(len(d.context) for d in docs))
    assert math.isnan(scores.recon_bits_per_masked)  # a text rewrite has no keep mask


def test_recoverability_on_the_first_documents_only(tiny_recon, docs) -> None:  # type: ignore[no-untyped-def]
    evaluator = Evaluator(tiny_recon, docs, recover_documents=2)
    scores = evaluator.evaluate(FixedOutput(tiny_recon.tokenizer, "identity"), rate=0.0)
    assert evaluator.reference.recover_documents == 2 and scores.recoverability_documents == 2
    assert scores.documents == 3 and scores.recoverability == pytest.approx(1.0, abs=1e-5)


def test_reconstruction_quality_matches_token_bits_and_argmax(tiny_recon, docs) -> None:  # type: ignore[no-untyped-def]
    contexts = [d.context for d in docs]
    keeps = [np.arange(len(c)) % 3 != 1 for c in contexts]
    bits, top1 = reconstruction_quality(tiny_recon, contexts, keeps, "delete")
    all_bits = tiny_recon.token_bits(contexts, [~k for k in keeps], mode="delete")
    expected_bits = sum(float(b[~k].sum()) for b, k in zip(all_bits, keeps)) / sum(
        int((~k).sum()) for k in keeps
    )
    assert bits == pytest.approx(expected_bits, rel=1e-5)
    correct = total = 0
    for ids, keep in zip(contexts, keeps):
        inputs, positions = tiny_recon.masked_inputs(ids, (~keep).tolist(), "delete")
        with torch.no_grad():
            logits = tiny_recon.model(torch.tensor([inputs])).logits[0].float()
        logits[:, tiny_recon.mask_token_id] = float("-inf")
        for i in np.flatnonzero(~keep):
            correct += int(int(logits[positions[i]].argmax()) == ids[i])
            total += 1
    assert top1 == pytest.approx(correct / total)
    nothing_masked = reconstruction_quality(tiny_recon, contexts, [np.ones(len(c), bool) for c in contexts])
    assert all(math.isnan(x) for x in nothing_masked)


def test_judge_that_predicts_its_mask_token_is_refused(tiny_recon, docs) -> None:  # type: ignore[no-untyped-def]
    tiny_recon.exclude_mask_from_predictions = False
    try:
        with pytest.raises(ValueError, match="add_mask_token=False"):
            Evaluator(tiny_recon, docs)
    finally:
        tiny_recon.exclude_mask_from_predictions = True
