"""``refine_lookahead:...:bf16:BASE``: the search's own judge passes in bfloat16, the judge untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import load_benchmark

from tokenmask.evaluate.baselines import Truncation
from tokenmask.evaluate.compressor import MethodContext, build_method
from tokenmask.evaluate.refine import LOOKAHEAD_PROPOSALS, RecoverabilitySearch
from tokenmask.evaluate.refine_methods import split_lookahead_argument
from tokenmask.evaluate.runner import check_methods
from tokenmask.reconstructors import Reconstructor
from tokenmask.reconstructors.judge import recovery_nlls, separator_ids


def test_with_dtype_casts_a_copy(tiny_recon: Reconstructor) -> None:
    """The same dtype gives the reconstructor itself; another gives a cast copy, the original untouched."""
    assert tiny_recon.with_dtype("float32") is tiny_recon
    half = tiny_recon.with_dtype("bfloat16")
    assert half is not tiny_recon and half.tokenizer is tiny_recon.tokenizer
    assert half.batch_size == tiny_recon.batch_size and half.mask_token_id == tiny_recon.mask_token_id
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in tiny_recon.model.parameters()} == {torch.float32}
    assert half.with_dtype(torch.bfloat16) is half
    with pytest.raises(ValueError, match="Unknown dtype"):
        tiny_recon.with_dtype("float8")


def _own_forwards(model: torch.nn.Module) -> int:
    return sum(1 for module in model.modules() if "forward" in vars(module))


def test_with_dtype_can_fuse_the_norms_of_a_copy(tiny_recon: Reconstructor) -> None:
    """``fuse_norms``: always a copy, every RMS norm fused (two per layer and the final one), the same hidden
    states in float32 and within bfloat16's rounding in bfloat16; the original keeps its own norms."""
    fused = tiny_recon.with_dtype("float32", fuse_norms=True)
    assert fused is not tiny_recon and fused.tokenizer is tiny_recon.tokenizer
    layers = tiny_recon.model.config.num_hidden_layers
    assert _own_forwards(fused.model) == 2 * layers + 1
    assert _own_forwards(tiny_recon.model) == 0
    ids, attention = tiny_recon.pad_batch([[1, 5, 9, 300, 42, 7], [1, 77, 8]])
    with torch.inference_mode():
        want = tiny_recon.last_hidden_state(ids, attention)
        torch.testing.assert_close(fused.last_hidden_state(ids, attention), want, rtol=1e-5, atol=1e-5)
        half = tiny_recon.with_dtype("bfloat16", fuse_norms=True)
        plain_half = tiny_recon.with_dtype("bfloat16")
        assert _own_forwards(half.model) == 2 * layers + 1 and _own_forwards(plain_half.model) == 0
        torch.testing.assert_close(
            half.last_hidden_state(ids, attention).float(),
            plain_half.last_hidden_state(ids, attention).float(),
            rtol=0.05,
            atol=0.05,
        )


def test_only_llama_style_norms_are_fused() -> None:
    """A norm class whose forward is not ``weight * normalised`` (Gemma's ``1 + weight``) keeps its forward."""
    from transformers import GemmaConfig, GemmaForCausalLM

    from tokenmask.reconstructors.fused import fuse_rms_norms

    gemma = GemmaForCausalLM(
        GemmaConfig(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
        )
    )
    assert fuse_rms_norms(gemma) == 0 and _own_forwards(gemma) == 0


def _contexts() -> list[list[int]]:
    rng = np.random.default_rng(5)
    return [rng.integers(100, 5000, size=48).tolist() for _ in range(3)]


def test_every_search_pass_goes_to_the_cast_copy(tiny_recon: Reconstructor) -> None:
    """With ``dtype``, the judge's own model runs no pass: the estimates, R, the lookahead's path and S are the copy's."""
    calls = {"judge": 0, "scorer": 0}

    def counter(key: str):  # type: ignore[no-untyped-def]
        def hook(*_: object) -> None:
            calls[key] += 1

        return hook

    search = RecoverabilitySearch(
        Truncation(tiny_recon.tokenizer),
        tiny_recon,
        moves=(4, 8),
        stride=4,
        protect=4,
        lookahead=6,
        lookahead_tolerance=0.02,
        proposals=2,
        dtype="bfloat16",
    )
    assert search.judge is tiny_recon and search.scorer.model.dtype == torch.bfloat16
    handles = [
        tiny_recon.model.register_forward_pre_hook(counter("judge")),
        search.scorer.model.register_forward_pre_hook(counter("scorer")),
    ]
    try:
        masks = search.keep_masks(_contexts(), 0.5)
    finally:
        for handle in handles:
            handle.remove()
    assert calls["judge"] == 0 and calls["scorer"] > 0
    base = Truncation(tiny_recon.tokenizer).keep_masks(_contexts(), 0.5)
    assert [int(m.sum()) for m in masks] == [int(b.sum()) for b in base]  # the rate is the base's


def test_dtype_argument(tiny_recon: Reconstructor) -> None:
    assert split_lookahead_argument("p:bf16:truncation") == (
        ("oldest",),
        1,
        LOOKAHEAD_PROPOSALS,
        "bfloat16",
        "truncation",
        64,
    )
    assert split_lookahead_argument("bf16:agent:default").base == "agent:default"
    check_methods(["refine_lookahead:p:bf16:truncation", "refine_lookahead:bf16:truncation"])
    method = build_method("refine_lookahead:p:bf16:truncation", MethodContext(judge=tiny_recon))
    assert isinstance(method, RecoverabilitySearch) and method.dtype == "bfloat16"
    assert method.scorer.model.dtype == torch.bfloat16 and method.judge is tiny_recon
    assert method.name == "refine_lookahead:p:bf16:truncation"
    with pytest.raises(ValueError, match="not fp16. Fix: e.g. refine_lookahead:p:bf16:truncation"):
        check_methods(["refine_lookahead:p:fp16:truncation"])
    plain = build_method("refine_lookahead:p:truncation", MethodContext(judge=tiny_recon))
    assert isinstance(plain, RecoverabilitySearch) and plain.scorer is tiny_recon


@pytest.mark.integration
def test_bfloat16_judge_is_close_on_the_embedded_model(smollm: Reconstructor) -> None:
    """The embedded SmolLM2 (GGUF, dequantized) casts to bfloat16; its R stays within 1 % of float32's."""
    ids = smollm.encode(
        "The os module provides a portable way of using operating system dependent functionality. "
        "If you just want to read or write a file see open(); to manipulate paths, see os.path."
    )
    prefixes = [ids[10:], ids[:5], []]
    sep = separator_ids(smollm)
    full = recovery_nlls(smollm, prefixes, [ids] * 3, sep)
    half = recovery_nlls(smollm.with_dtype("bfloat16"), prefixes, [ids] * 3, sep)
    np.testing.assert_allclose(half, full, rtol=0.01)
    assert smollm.model.dtype == torch.float32


def test_fused_norms_benchmark_prints_both_rows(tiny_judge_dir, capsys) -> None:  # type: ignore[no-untyped-def]
    """``benchmarks/fused_norms.py``: one row per norm kind, the machine named, float32 hidden states unchanged."""
    bench = load_benchmark("fused_norms")
    argv = ["--judge", str(tiny_judge_dir), "--device", "cpu", "--dtype", "float32"]
    assert bench.main([*argv, "--batch", "2", "--length", "8", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out.splitlines()[0]
    rows = [
        line.split(" | ") for line in out.splitlines() if line.startswith(("| own norms", "| fused norms"))
    ]
    assert [r[0] for r in rows] == ["| own norms", "| fused norms"]
    assert float(rows[1][3].rstrip(" |")) < 1e-5
