"""kvpress presses as in-model compressors (tokenmask.evaluate.kvpress_peer) on a tiny random Llama.

The press tests need the ``kvpress`` extra (kvpress 0.5.x, transformers < 5.3) and are skipped
without it; ``.ci/run`` runs this file in a second virtual environment that has it. The name and
install-hint checks run everywhere.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tokenmask.errors import InputError
from tokenmask.evaluate.compressor import MethodContext, build_method
from tokenmask.evaluate.evaluator import Evaluator
from tokenmask.evaluate.kvpress_peer import (
    PRESSES,
    KVPressCompressor,
    KVPressNotInstalledError,
    check_kvpress_argument,
)
from tokenmask.evaluate.metrics import EvalDocument
from tokenmask.reconstructors import Reconstructor
from tokenmask.reconstructors.judge import continuation_nlls, recovery_nlls, separator_ids

needs_kvpress = pytest.mark.skipif(
    importlib.util.find_spec("kvpress") is None,
    reason="kvpress is not installed (pip install tokenmask[kvpress])",
)

C, T = 80, 12  # SnapKV reads a 64-token window: contexts must be longer


def _ids(count: int, length: int, seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 40000, (length,), generator=generator).tolist() for _ in range(count)]


@pytest.fixture(scope="module")
def data() -> tuple[list[list[int]], list[list[int]]]:
    return _ids(3, C, 0), _ids(3, T, 1)


def test_unknown_press_names_the_known_ones() -> None:
    with pytest.raises(InputError, match="kvpress:expected_attention"):
        check_kvpress_argument("no_such_press")
    with pytest.raises(InputError, match="name a press"):
        check_kvpress_argument("")


def test_missing_kvpress_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from tokenmask.evaluate import kvpress_peer

    monkeypatch.setattr(kvpress_peer, "kvpress_available", lambda: False)
    with pytest.raises(KVPressNotInstalledError, match=r"pip install 'tokenmask\[kvpress\]'") as info:
        build_method("kvpress:snapkv", MethodContext(judge=None))  # type: ignore[arg-type]
    assert isinstance(info.value, ImportError)


@needs_kvpress
@pytest.mark.parametrize("press", sorted(PRESSES))
@pytest.mark.parametrize("rate", [0.3, 0.5])
def test_press_hits_the_asked_rate_over_all_layers(
    tiny_recon: Reconstructor, data, press: str, rate: float
) -> None:  # type: ignore[no-untyped-def]
    contexts, continuations = data
    method = build_method(f"kvpress:{press}", MethodContext(judge=tiny_recon))
    assert isinstance(method, KVPressCompressor) and method.name == f"kvpress:{press}"
    result = method.score(tiny_recon, contexts, continuations, separator_ids(tiny_recon), rate)
    layers = tiny_recon.model.config.num_hidden_layers
    kept_per_layer = int((C + 1) * (1 - rate))  # kvpress's compute_n_kept; BOS is an entry too
    assert len(result.scores) == len(contexts)
    for score in result.scores:
        assert score.positions_total == layers * (C + 1)
        assert score.positions_kept == layers * kept_per_layer
        assert score.layer_kept == [kept_per_layer] * layers and score.layer_total == [C + 1] * layers
        achieved = 1 - score.positions_kept / score.positions_total
        assert rate <= achieved < rate + 1 / (C + 1)  # the asked rate, rounded up to a whole entry
        assert torch.isfinite(torch.tensor([score.context_nll, score.continuation_nll])).all()
    assert result.compress_seconds is not None and result.compress_seconds > 0


@needs_kvpress
@pytest.mark.parametrize("press", sorted(PRESSES))
def test_ratio_zero_gives_the_judges_exact_nlls(tiny_recon: Reconstructor, data, press: str) -> None:  # type: ignore[no-untyped-def]
    contexts, continuations = data
    sep = separator_ids(tiny_recon)
    result = KVPressCompressor(press).score(tiny_recon, contexts, continuations, sep, 0.0)
    recover = recovery_nlls(tiny_recon, contexts, contexts, sep)
    cont = continuation_nlls(tiny_recon, contexts, continuations)
    for row, score in enumerate(result.scores):
        assert score.positions_kept == score.positions_total
        assert score.context_nll == pytest.approx(recover[row], rel=1e-5)
        assert score.continuation_nll == pytest.approx(cont[row], rel=1e-5)


@needs_kvpress
def test_batching_and_cache_cut_back_do_not_change_scores(tiny_recon: Reconstructor, data) -> None:  # type: ignore[no-untyped-def]
    contexts, continuations = data
    contexts = [*contexts, contexts[0][: C - 5]]  # a second context length: its own batch
    continuations = [*continuations, continuations[0]]
    sep = separator_ids(tiny_recon)
    method = KVPressCompressor("expected_attention")
    together = method.score(tiny_recon, contexts, continuations, sep, 0.5).scores
    for row in range(len(contexts)):
        alone = method.score(
            tiny_recon, contexts[row : row + 1], continuations[row : row + 1], sep, 0.5
        ).scores[0]
        assert alone.context_nll == pytest.approx(together[row].context_nll, rel=1e-4)
        assert alone.continuation_nll == pytest.approx(together[row].continuation_nll, rel=1e-4)
        assert alone.positions_kept == together[row].positions_kept


@needs_kvpress
def test_evaluator_reports_the_press_rate(tiny_recon: Reconstructor, data) -> None:  # type: ignore[no-untyped-def]
    contexts, continuations = data
    docs = [EvalDocument(c, t, tiny_recon.decode(c)) for c, t in zip(contexts, continuations)]
    evaluator = Evaluator(tiny_recon, docs, warmup=False)
    scores = evaluator.evaluate(build_method("kvpress:knorm", MethodContext(judge=tiny_recon)), 0.5)
    assert scores.rate == pytest.approx(1 - int((C + 1) * 0.5) / (C + 1))
    identity = evaluator.evaluate(KVPressCompressor("knorm"), 0.0)
    assert identity.rate == 0.0
    assert identity.recoverability == pytest.approx(1.0, abs=1e-4)
    assert identity.retention == pytest.approx(1.0, abs=1e-4)


@needs_kvpress
def test_too_short_context_is_a_clear_error(tiny_recon: Reconstructor) -> None:
    contexts, continuations = _ids(1, 20, 2), _ids(1, 4, 3)
    with pytest.raises(InputError, match="context_tokens"):
        KVPressCompressor("snapkv").score(tiny_recon, contexts, continuations, separator_ids(tiny_recon), 0.5)
