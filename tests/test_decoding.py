"""tokenmask.activation_compression.decoding: fixed cache buffers and the shared decode step.

Tiny random models (a grouped-query Llama and GPT-2); no times are asserted. The CUDA-graph path
needs a GPU: ``benchmarks/kv_memory.py`` compares it with the eager step there.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache, GPT2Config

from tokenmask.activation_compression.backbone import backbone_for, cache_argument
from tokenmask.activation_compression.decoding import SLOT_MULTIPLE, CachedDecoder, StaticKVCache
from tokenmask.testing import tiny_llama_config


def _model(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = (
        tiny_llama_config(num_layers=3, vocab_size=97)
        if kind == "llama"
        else GPT2Config(vocab_size=97, n_positions=128, n_embd=32, n_layer=3, n_head=4)
    )
    return AutoModelForCausalLM.from_config(config).eval()


def _prefill(model: torch.nn.Module, ids: torch.Tensor, reserve: int) -> tuple[StaticKVCache, torch.Tensor]:
    cache = DynamicCache()
    decoder = model.base_model
    with torch.no_grad():
        hidden = decoder(input_ids=ids, use_cache=True, **{cache_argument(decoder): cache})[0]
    logits = model.get_output_embeddings()(hidden[:, -1]).float()
    return StaticKVCache.from_cache(cache, [None] * len(cache.layers), reserve), logits


def _head(model: torch.nn.Module):  # type: ignore[no-untyped-def]
    return lambda hidden: model.get_output_embeddings()(hidden).float()


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("reserve", [1, 8], ids=["grows", "reserved"])
def test_decode_steps_equal_the_full_forward(kind: str, reserve: int) -> None:
    """Greedy steps from the fixed buffers give the logits of the model's forward over the whole sequence,
    also when the reserved slots run out and the buffers grow."""
    model = _model(kind)
    ids = torch.randint(3, 97, (2, 21), generator=torch.Generator().manual_seed(1))
    cache, logits = _prefill(model, ids, reserve)
    decoder = CachedDecoder(backbone_for(model), _head(model), cache, torch.full((2,), ids.shape[1]))
    seen, fed = [logits], []
    for _ in range(5):
        fed.append(seen[-1].argmax(-1))
        seen.append(decoder.step(fed[-1]))
    assert cache.lengths == [ids.shape[1] + 5] * 3
    full = torch.cat([ids, torch.stack(fed, 1)], 1)
    with torch.no_grad():
        reference = model(full).logits.float()[:, ids.shape[1] - 1 :]
    torch.testing.assert_close(torch.stack(seen, 1), reference, atol=1e-4, rtol=1e-4)


def test_cache_buffers_masks_and_bytes() -> None:
    """Buffers are rounded up to SLOT_MULTIPLE; unreadable entries stay masked; bytes count filled entries."""
    model = _model("llama")
    ids = torch.randint(3, 97, (2, 10), generator=torch.Generator().manual_seed(2))
    cache = DynamicCache()
    with torch.no_grad():
        model.base_model(input_ids=ids, use_cache=True, **{cache_argument(model.base_model): cache})
    entry = sum(t[:, :, 0].numel() * t.element_size() for t in (cache.layers[0].keys, cache.layers[0].values))
    hidden = torch.tensor([[True] * 10, [True] * 7 + [False] * 3])
    static = StaticKVCache.from_cache(cache, [hidden, None, None], reserve=4)
    assert all(static.capacity(i) == SLOT_MULTIPLE for i in range(3))
    assert static.free_slots == SLOT_MULTIPLE - 10
    assert torch.equal(static.readable(0), hidden) and bool(static.readable(1).all())
    assert static.filled_bytes() == 3 * 10 * entry
    assert static.held_bytes() == 3 * SLOT_MULTIPLE * entry
    assert cache.layers[0].keys.numel() == 0  # the source was emptied as it was copied
    static.grow(SLOT_MULTIPLE)
    assert static.capacity(0) == 2 * SLOT_MULTIPLE and torch.equal(static.readable(0), hidden)


def test_concatenated_row_chunks_decode_as_one_batch() -> None:
    """Caches pre-filled row by row (different lengths: padding) decode what each row decodes alone."""
    model = _model("llama")
    generator = torch.Generator().manual_seed(3)
    rows = [torch.randint(3, 97, (1, n), generator=generator) for n in (12, 17)]
    alone = []
    for ids in rows:
        cache, logits = _prefill(model, ids, 2)
        decoder = CachedDecoder(backbone_for(model), _head(model), cache, torch.tensor([ids.shape[1]]))
        alone.append(decoder.step(logits.argmax(-1)))
    parts = [_prefill(model, ids, 2) for ids in rows]
    joined = StaticKVCache.concat([c for c, _ in parts], reserve=2)
    assert joined.lengths == [17] * 3 and not bool(joined.readable(0)[0, 12:].any())
    first = torch.cat([logits for _, logits in parts]).argmax(-1)
    decoder = CachedDecoder(backbone_for(model), _head(model), joined, torch.tensor([12, 17]))
    together = decoder.step(first)
    torch.testing.assert_close(together, torch.cat(alone), atol=1e-4, rtol=1e-4)


def test_refilled_cache_decodes_the_new_sequence() -> None:
    """A used cache refilled in place with another batch of the same shape decodes that batch's full-forward logits
    (earlier steps' entries masked again); a shape that does not fit is refused and changes nothing."""
    model = _model("llama")
    generator = torch.Generator().manual_seed(4)
    first, second = (torch.randint(3, 97, (2, 14), generator=generator) for _ in range(2))
    cache, logits = _prefill(model, first, 6)
    decoder = CachedDecoder(backbone_for(model), _head(model), cache, torch.full((2,), 14))
    for _ in range(4):
        logits = decoder.step(logits.argmax(-1))
    buffers = [k.data_ptr() for k in cache.keys]
    for ids, reserve in ((torch.randint(3, 97, (3, 14), generator=generator), 6), (second, 64)):
        fresh = DynamicCache()
        with torch.no_grad():
            model.base_model(input_ids=ids, use_cache=True, **{cache_argument(model.base_model): fresh})
        assert not cache.refill(fresh, reserve=reserve)
    assert cache.lengths == [18] * 3
    fresh = DynamicCache()
    with torch.no_grad():
        hidden = model.base_model(
            input_ids=second, use_cache=True, **{cache_argument(model.base_model): fresh}
        )[0]
    assert cache.refill(fresh, reserve=6)
    assert cache.lengths == [14] * 3 and [k.data_ptr() for k in cache.keys] == buffers
    decoder.restart(torch.full((2,), 14))
    seen, fed = [model.get_output_embeddings()(hidden[:, -1]).float()], []
    for _ in range(3):
        fed.append(seen[-1].argmax(-1))
        seen.append(decoder.step(fed[-1]))
    with torch.no_grad():
        reference = model(torch.cat([second, torch.stack(fed, 1)], 1)).logits.float()[:, 13:]
    torch.testing.assert_close(torch.stack(seen, 1), reference, atol=1e-4, rtol=1e-4)


def test_update_refuses_more_than_one_token() -> None:
    model = _model("llama")
    cache, _ = _prefill(model, torch.randint(3, 97, (1, 5)), 4)
    k = torch.zeros(1, 2, 2, 8)
    with pytest.raises(ValueError, match="one token per row"):
        cache.update(k, k, 0)
