"""benchmarks/compressed_forms.py: each form spends exactly its ids at the front and keeps truncation's tail,
keywords are the head's most surprising tokens in order, and the judge's summary is at most the asked length
(tiny random judge with the real tokenizer, no times)."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest
from conftest import load_benchmark

from tokenmask.evaluate.compressor import MethodContext, build_method
from tokenmask.testing import random_documents


@pytest.fixture(scope="module")
def forms() -> ModuleType:
    return load_benchmark("compressed_forms")


@pytest.mark.parametrize("rate", [0.3, 0.5, 0.7])
def test_kept_count_is_truncations(forms, tiny_recon, rate) -> None:  # type: ignore[no-untyped-def]
    document = random_documents(1, seed=3)[0]
    truncation = build_method("truncation", MethodContext(judge=tiny_recon))
    keep = truncation.keep_masks([document.context], rate)[0]
    assert forms.kept_count(rate, len(document.context)) == int(np.sum(keep))
    # with no front, the form is truncation's tail itself
    kept = forms.kept_count(rate, len(document.context))
    assert forms.with_tail([], document.context, kept) == [t for t, k in zip(document.context, keep) if k]


def test_with_tail_spends_the_front(forms) -> None:  # type: ignore[no-untyped-def]
    context = list(range(100, 132))
    out = forms.with_tail([7, 8, 9], context, 10)
    assert out == [7, 8, 9, *range(125, 132)]
    with pytest.raises(ValueError, match="does not fit"):
        forms.with_tail([1] * 11, context, 10)


def test_keywords_are_the_most_surprising_in_order(forms) -> None:  # type: ignore[no-untyped-def]
    head = [10, 11, 12, 13, 14, 15]
    surprisal = np.array([0.1, 5.0, 0.2, 3.0, 9.0, 0.3, 99.0])  # the last value is past the head: ignored
    assert forms.keyword_ids(head, surprisal, 3) == [11, 13, 14]
    with pytest.raises(ValueError, match="Fix"):
        forms.keyword_ids(head, surprisal, 7)


def test_summary_is_at_most_the_asked_length(forms, tiny_recon) -> None:  # type: ignore[no-untyped-def]
    head = random_documents(1, seed=4)[0].context[:40]
    ids = forms.judge_summary(tiny_recon, head, 6)
    assert len(ids) <= 6  # a random model may stop at once: an empty summary spends nothing
    assert ids == forms.judge_summary(tiny_recon, head, 6)  # greedy: the same ids again


def test_change_over_is_a_ratio_of_sums(forms) -> None:  # type: ignore[no-untyped-def]
    r_empty, r_full = np.array([10.0, 20.0]), np.array([0.0, 10.0])
    f_empty, f_full = np.array([5.0, 5.0]), np.array([1.0, 1.0])
    base, form = np.array([6.0, 16.0]), np.array([5.0, 16.0])
    rec = forms.change_over(base, form, r_empty, r_full)
    ret = forms.change_over(base, base, f_empty, f_full)
    assert rec == pytest.approx(1.0 / 20.0) and ret == 0.0


def test_plot_is_a_png(forms, tmp_path) -> None:  # type: ignore[no-untyped-def]
    results = [
        {"rate": rate, "form": form, "s": s, "d_rec": -0.01 * s, "d_ret": 0.001 * s}
        for rate in (0.5, 0.7)
        for form in forms.FORMS
        for s in (8, 16)
    ]
    path = tmp_path / "forms.png"
    forms.plot_forms(results, "a title", path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically: no temporary file left
