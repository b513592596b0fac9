"""The importance scores' fused path: the band of causal attention from a kernel's softmax normaliser.

Tiny random models (a grouped-query Llama and GPT-2) on the CPU; no times are asserted
(`benchmarks/kv_memory.py` measures the pre-fill on a GPU).
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config

import tokenmask.activation_compression.backbone as backbone_module
from tokenmask.activation_compression.backbone import backbone_for, causal_ties
from tokenmask.reconstructors.attention import causal_logsumexp
from tokenmask.testing import tiny_llama_config

BAND = 8


def _backbone(kind: str):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    config = (
        tiny_llama_config(num_layers=2, vocab_size=97)
        if kind == "llama"
        else GPT2Config(vocab_size=97, n_positions=128, n_embd=32, n_layer=2, n_head=4)
    )
    return backbone_for(AutoModelForCausalLM.from_config(config).eval())


def _inputs(lengths: list[int], width: int, hidden_size: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(len(lengths), width, hidden_size, generator=generator) * 3
    valid = torch.arange(width)[None] < torch.tensor(lengths)[:, None]
    avail = torch.arange(width).expand(len(lengths), width).clone()
    return hidden, valid, avail


def test_causal_logsumexp_equals_the_explicit_softmax_normaliser() -> None:
    generator = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 37, 16, generator=generator), torch.randn(2, 3, 37, 16, generator=generator)
    lse = causal_logsumexp(q, k, 0.25)
    assert lse is not None and lse.shape == (2, 3, 37)
    scores = (q @ k.transpose(2, 3) * 0.25).masked_fill(
        ~torch.ones(37, 37, dtype=torch.bool).tril(), -torch.inf
    )
    torch.testing.assert_close(lse, torch.logsumexp(scores, -1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("tied", [False, True], ids=["positions", "tied-clusters"])
def test_fused_band_equals_the_chunked_scores(kind: str, tied: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Right-padded rows (one of a single token) give the chunked path's attention band to 1e-5, also when
    the last units share their time (clusters closing together read each other both ways)."""
    backbone = _backbone(kind)
    hidden, valid, avail = _inputs([40, 29, 1], 40, backbone.model.config.hidden_size)
    if tied:
        avail[0, 36:] = 36
        avail[1, 25:29] = 25
    positions = backbone.position_context(hidden, torch.arange(40).expand(3, 40))
    assert causal_ties(avail, valid) == (3 if tied else 0)
    with torch.no_grad():
        fused = backbone.local_attention(1, hidden, avail, valid, positions, BAND)
        monkeypatch.setattr(backbone_module, "causal_logsumexp", lambda *args: None)
        chunked = backbone.local_attention(1, hidden, avail, valid, positions, BAND, chunk_elements=64)
    torch.testing.assert_close(fused, chunked, atol=1e-5, rtol=1e-5)
    assert fused[2, 0, 1:].eq(1).all()  # a padding query attends to itself alone


def test_only_a_causal_layout_takes_the_fused_path() -> None:
    valid = torch.tensor([[True, True, True, False]])
    assert causal_ties(torch.tensor([[0, 1, 2, 0]]), valid) == 0
    assert causal_ties(torch.tensor([[0, 2, 2, 3]]), valid) == 1  # two clusters closing at once
    assert causal_ties(torch.tensor([[0, 2, 1, 3]]), valid) is None  # not in time order
    assert causal_ties(torch.tensor([[0, 1, 2, 3]]), torch.tensor([[True, False, True, True]])) is None
    assert (
        causal_ties(torch.zeros(1, 10, dtype=torch.long), torch.ones(1, 10, dtype=torch.bool), limit=4)
        is None
    )
