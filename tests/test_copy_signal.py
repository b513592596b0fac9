"""benchmarks/copy_signal.py: copy labels, the copy model's signals per move, and its AUC (no model download, no times)."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest
from conftest import load_benchmark


@pytest.fixture(scope="module")
def copy_signal() -> ModuleType:
    return load_benchmark("copy_signal")


def test_copy_labels_mark_the_tokens_of_trigrams_the_continuation_repeats(copy_signal: ModuleType) -> None:
    context = [1, 2, 3, 4, 5, 6, 7, 8]
    continuation = [9, 4, 5, 6, 9, 2, 3, 9]  # repeats the trigram (4, 5, 6); (2, 3) alone is only a bigram
    np.testing.assert_array_equal(copy_signal.copy_labels(context, continuation), [0, 0, 0, 1, 1, 1, 0, 0])
    assert not copy_signal.copy_labels(context, [9] * 8).any()


def test_auc_counts_ordered_pairs(copy_signal: ModuleType) -> None:
    rng = np.random.default_rng(0)
    labels = rng.random(60) < 0.3
    scores = np.round(rng.random(60), 1)  # ties count one half
    pos, neg = scores[labels], scores[~labels]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert copy_signal.auc(labels, scores) == pytest.approx(pairs)


def test_the_fitted_model_is_seeded_and_its_signals_sum_over_the_dropped_tokens(
    copy_signal: ModuleType,
) -> None:
    rng = np.random.default_rng(1)
    vocab = 50
    windows = []
    for _ in range(
        40
    ):  # continuations that repeat the context's last trigram: the model can learn "near the end"
        context = rng.integers(0, vocab, size=32).tolist()
        windows.append((context, [*context[-3:], *rng.integers(0, vocab, size=5).tolist()]))
    log_freq = np.log(np.full(vocab, 1.0 / vocab))
    shapes = copy_signal.token_shapes([f"t{i}" for i in range(vocab)])
    predict = copy_signal.fit_copy_model(windows, log_freq, shapes, epochs=3, seed=0)
    again = copy_signal.fit_copy_model(windows, log_freq, shapes, epochs=3, seed=0)
    p = predict(windows[0][0])
    np.testing.assert_array_equal(p, again(windows[0][0]))
    assert p.shape == (32,) and ((p > 0) & (p < 1)).all()
    base = np.zeros(32, dtype=bool)
    base[16:] = True
    move = base.copy()
    move[16:24], move[0:8] = False, True  # drops the oldest 8 kept tokens, keeps an earlier run
    docs = [{"context": windows[0][0], "rates": {"0.5": {"masks": [base, move]}}}]
    assert copy_signal.add_copy_signals(docs, predict) == ["copy_sum", "copy_max"]
    c = docs[0]["rates"]["0.5"]
    np.testing.assert_allclose(c["copy_sum"], [0.0, p[16:24].sum()], rtol=1e-6)
    np.testing.assert_allclose(c["copy_max"], [0.0, p[16:24].max()], rtol=1e-6)
