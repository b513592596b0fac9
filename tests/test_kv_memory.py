"""benchmarks/kv_memory.py on a tiny random Llama: compressed caches are smaller and decoding reads them.

No times are asserted. The kvpress case needs the ``kvpress`` extra and is skipped without it.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
import torch
from conftest import load_benchmark

from tokenmask.testing import tiny_llama_config

CONTEXT = 64


@pytest.fixture(scope="module")
def kv() -> ModuleType:
    return load_benchmark("kv_memory")


@pytest.fixture(scope="module")
def recon(kv: ModuleType):  # type: ignore[no-untyped-def]
    return kv.random_reconstructor(tiny_llama_config(num_layers=4), torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A recursive two-level layer plan (compression before layers 1 and 2 of 4)."""
    path = tmp_path_factory.mktemp("plan") / "plan.json"
    path.write_text(json.dumps({"compression_layers": [1, 2], "layer_thresholds": [0.6, 0.6]}))
    return path


def test_compressed_cache_is_smaller_and_decoded(kv: ModuleType, recon, plan: Path) -> None:  # type: ignore[no-untyped-def]
    ids = kv.context_rows(recon, 2, CONTEXT, True, None, 0)
    (none,) = kv.build_methods("none", [0.5], recon)[0]
    (activation,) = kv.build_methods(f"activation:{plan}", [0.5], recon)[0]
    full, _ = kv.measure(none, recon, ids, 4)
    small, tokens = kv.measure(activation, recon, ids, 4)
    assert full.kv_bytes == full.kv_bytes_uncompressed and full.kv_saved == 0.0
    assert small.kv_bytes < full.kv_bytes
    assert small.kv_saved == pytest.approx(0.5, abs=0.05)
    assert small.counted_rate == pytest.approx(small.kv_saved, abs=0.02)
    assert small.layer_entries[0] == CONTEXT and small.layer_entries[-1] < CONTEXT / 2
    assert tokens.shape == (2, 4)


@pytest.mark.parametrize("rate", [0.5, None], ids=["budget", "plan_thresholds"])
def test_decode_from_the_cache_predicts_as_the_model_forward(kv: ModuleType, recon, plan: Path, rate) -> None:  # type: ignore[no-untyped-def]
    """Decoding from the cached clusters gives the compressed model's own predictions for the same tokens."""
    from tokenmask.activation_compression.backbone import backbone_for

    ids = kv.context_rows(recon, 3, CONTEXT, True, None, 1)
    (method,) = kv.build_methods(f"activation:{plan}", [rate], recon)[0]
    steps = 4
    with torch.no_grad():
        state = method.prefill(recon, ids, steps)
        # the model's own cache: each layer holds the entries the model counts as kept
        assert state.cache.lengths == [int(x) for x in state.state.layer_kept.amax(0)]
        fed, logits = kv.greedy_decode(
            recon, backbone_for(recon.model), state, steps, method, keep_logits=True
        )
        b, n = ids.shape
        out = method.model(
            torch.cat([ids, fed], 1),
            compress_lengths=torch.full((b,), n - 1),
            mode="prefill",
            target_rate=rate,
            cache_lengths=torch.full((b,), n),
        )
    order = torch.argsort(torch.where(out.origin >= 0, out.origin, 10**6), dim=1)[:, : steps + 1]
    reference = recon.head_logits(
        torch.gather(out.hidden, 1, order[..., None].expand(-1, -1, out.hidden.shape[-1]))
    )
    assert torch.equal(torch.gather(out.origin, 1, order)[0], torch.arange(n - 1, n + steps))
    torch.testing.assert_close(torch.stack(logits, 1), reference, atol=1e-4, rtol=1e-4)


def test_row_chunks_of_the_prefill_decode_as_one_batch(kv: ModuleType, recon, plan: Path) -> None:  # type: ignore[no-untyped-def]
    """Pre-filling row by row and joining the caches decodes the same tokens as one pre-fill."""
    ids = kv.context_rows(recon, 3, CONTEXT, True, None, 2)
    (method,) = kv.build_methods(f"activation:{plan}", [None], recon)[0]
    whole, tokens = kv.measure(method, recon, ids, 3)
    chunked, chunk_tokens = kv.measure(method, recon, ids, 3, prefill_rows=1)
    assert torch.equal(tokens, chunk_tokens)
    assert chunked.kv_bytes == whole.kv_bytes


@pytest.mark.skipif(importlib.util.find_spec("kvpress") is None, reason="kvpress is not installed")
def test_kvpress_cache_is_pruned(kv: ModuleType, recon) -> None:  # type: ignore[no-untyped-def]
    ids = kv.context_rows(recon, 1, 80, True, None, 0)  # SnapKV reads a 64-token window
    (method,) = kv.build_methods("kvpress:snapkv", [0.5], recon)[0]
    row, _ = kv.measure(method, recon, ids, 2)
    assert row.kv_saved == pytest.approx(0.5, abs=0.02)
