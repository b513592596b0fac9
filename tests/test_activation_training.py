"""Activation compression: training step, quality parachute, save/load, CLI and the `tokenmask evaluate` method.

Tiny random Llama (4 layers, the real SmolLM2 tokenizer), built here so training it touches no shared fixture.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tokenmask.activation_compression import CompressedCausalLM, CompressionConfig
from tokenmask.activation_compression.sequences import load_sequences
from tokenmask.activation_compression.training import ActivationTrainer, QualityParachute
from tokenmask.cli import main as cli_main
from tokenmask.evaluate.compressor import InModelCompressor, MethodContext, build_method
from tokenmask.reconstructors import CorruptCheckpointError, Reconstructor, load_tokenizer, pad_batch
from tokenmask.testing import tiny_llama_config


@pytest.fixture()
def recon() -> Reconstructor:
    return Reconstructor.from_config(tiny_llama_config(num_layers=4), load_tokenizer("default"), seed=0)


@pytest.fixture(scope="module")
def sequences() -> list[list[int]]:
    tiny = Reconstructor.from_config(tiny_llama_config(num_layers=1), load_tokenizer("default"), seed=0)
    return load_sequences(tiny, "sample", "train", max_length=40, max_sequences=12)


def ratio_of(model: CompressedCausalLM, sequences: list[list[int]]) -> float:
    ids, mask = pad_batch(sequences, model.reconstructor.pad_token_id)
    with torch.no_grad():
        return model(ids, mask).ratio


def test_training_step_updates_only_the_compression_layers(
    recon: Reconstructor, sequences: list[list[int]]
) -> None:
    model = CompressedCausalLM(recon, CompressionConfig(compression_layers=[2]))
    base_before = [p.detach().clone() for p in model.base_parameters]
    layers_before = [p.detach().clone() for p in model.parameters()]
    trainer = ActivationTrainer(
        model, learning_rate=1e-2, freeze_base=True, contrastive_weight=0.5, warmup_steps=1
    )
    first = trainer.step(sequences[:4])
    for _ in range(3):
        last = trainer.step(sequences[:4])
    assert all(torch.equal(a, b) for a, b in zip(base_before, model.base_parameters))
    assert any(not torch.equal(a, b) for a, b in zip(layers_before, model.parameters()))
    assert first.ratio > 1.2 and first.contrastive > 0
    # the cached lower states give the same uncompressed loss as the base LM itself
    ids, mask = pad_batch(sequences[:4], recon.pad_token_id)
    assert last.uncompressed_loss == pytest.approx(
        float(model.uncompressed_nlls(ids, mask).sum() / mask[:, 1:].sum()), rel=1e-5
    )


def test_parachute_backs_off_under_a_high_loss_and_recovers(
    recon: Reconstructor, sequences: list[list[int]]
) -> None:
    model = CompressedCausalLM(recon, CompressionConfig(compression_layers=[1], similarity_threshold=0.4))
    parachute = QualityParachute(model, tolerance=0.03, step=0.1, momentum=0.5)
    before = ratio_of(model, sequences[:6])
    for _ in range(4):
        assert parachute.update(
            compressed_loss=5.0, uncompressed_loss=3.0
        )  # forced: perplexity e^2 times higher
    assert float(model.threshold_offset) == pytest.approx(0.4)
    assert model.effective_threshold() == pytest.approx(0.8)
    assert ratio_of(model, sequences[:6]) < before - 0.2
    for _ in range(30):
        parachute.update(compressed_loss=3.0, uncompressed_loss=3.0)
    assert float(model.threshold_offset) < 0.4
    # a layer plan trained for a rate caps how far the parachute may move it
    capped = QualityParachute(model, tolerance=0.03, step=0.1, momentum=0.5, max_offset=0.15)
    model.threshold_offset.fill_(0.0)
    for _ in range(4):
        capped.update(compressed_loss=5.0, uncompressed_loss=3.0)
    assert float(model.threshold_offset) == pytest.approx(0.15)


def test_save_and_load_round_trip(recon: Reconstructor, sequences: list[list[int]], tmp_path: Path) -> None:
    model = CompressedCausalLM(recon, CompressionConfig(compression_layers=[1, 3], use_residuals=True))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        model.threshold_offset.fill_(0.1)
    folder = model.save_pretrained(tmp_path / "act")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["act"]  # no temporary folder left behind
    loaded = CompressedCausalLM.from_pretrained(folder, device="cpu")
    assert loaded.config == model.config and float(loaded.threshold_offset) == pytest.approx(0.1)
    ids, mask = pad_batch(sequences[:3], recon.pad_token_id)
    with torch.no_grad():
        assert torch.equal(model(ids, mask).hidden, loaded(ids, mask).hidden)
    (folder / "compression_layers.safetensors").write_bytes(b"broken")
    with pytest.raises(CorruptCheckpointError, match="corrupt"):
        CompressedCausalLM.from_pretrained(folder, device="cpu")
    with pytest.raises(CorruptCheckpointError, match="not a saved"):
        CompressedCausalLM.from_pretrained(tmp_path, device="cpu")


def test_in_model_method_of_tokenmask_evaluate(
    recon: Reconstructor, sequences: list[list[int]], tmp_path: Path
) -> None:
    plan = tmp_path / "plan.json"  # compression from layer 1 of 4: rates up to 0.75 of the KV cache
    plan.write_text(json.dumps({"compression_layers": [1, 2], "layer_thresholds": [0.6, 0.6]}))
    method = build_method(f"activation:{plan}", MethodContext(judge=recon))
    assert isinstance(method, InModelCompressor)
    contexts = [s[1:31] for s in sequences[:3]]
    continuations = [s[31:39] for s in sequences[:3]]
    result = method.score(recon, contexts, continuations, recon.encode("\n\n"), rate=0.5)
    kept = sum(s.positions_kept for s in result.scores)
    total = sum(s.positions_total for s in result.scores)
    assert 1 - kept / total == pytest.approx(0.5, abs=0.03)
    assert all(s.context_nll > 0 and s.continuation_nll > 0 for s in result.scores)
    none = method.score(recon, contexts, continuations, recon.encode("\n\n"), rate=0.0)
    # nothing merged: the judge's own NLL of the continuation
    bos = recon.bos_token_id
    plain = recon.sequence_log_probs([[bos, *c, *t] for c, t in zip(contexts, continuations)])
    for score, lp, c in zip(none.scores, plain, contexts):
        assert score.positions_kept == score.positions_total
        assert score.continuation_nll == pytest.approx(float(-lp[len(c) :].sum()), rel=1e-4)


def test_cli_train_then_evaluate(recon: Reconstructor, tmp_path: Path) -> None:
    base = recon.save_pretrained(tmp_path / "tiny")
    out = tmp_path / "run"
    code = cli_main(
        ["activation", "train", "--model_name", str(base), "--data_path", "sample", "--output_dir", str(out),
         "--max_length", "40", "--max_documents", "6", "--max_steps", "2", "--batch_size", "3",
         "--compression_layers", "1,3", "--eval_documents", "2", "--threshold_jitter", "0.1"]
    )  # fmt: skip
    assert code == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 2 and summary["validation"]["ratio"] > 1.0
    assert any((out / "tensorboard").iterdir())
    report_dir = tmp_path / "eval"
    code = cli_main(
        ["activation", "evaluate", "--model_name", str(out / "model"), "--data_path", "sample", "--output_dir", str(report_dir),
         "--max_length", "40", "--max_documents", "3", "--thresholds", "0.67,0.33", "--timing_repeats", "1"]
    )  # fmt: skip
    assert code == 0
    report = json.loads((report_dir / "report.json").read_text())
    assert set(report["sweeps"]) == {"trained layers", "untrained layers"}
    rows = report["sweeps"]["trained layers"]
    assert rows[1]["ratio"] > rows[0]["ratio"] > 1.0
    assert rows[1]["kv_bytes_saved"] > rows[0]["kv_bytes_saved"] > 0
    assert rows[1]["rate"] > rows[0]["rate"] > 0.0  # whole-model rate: layer 0 of 4 keeps everything
    assert rows[1]["rate"] < 0.75 and rows[1]["kept_per_layer"][0] == 1.0
    assert (report_dir / "rate_vs_perplexity.png").read_bytes()[:4] == b"\x89PNG"
    # the picture of merged positions per layer, as a PNG and as a TensorBoard image
    assert (report_dir / "merged_positions.png").read_bytes()[:4] == b"\x89PNG"
    assert any(p.name.startswith("events.out.tfevents") for p in (report_dir / "tensorboard").iterdir())
    text = (report_dir / "report.md").read_text()
    assert "| threshold | rate (all layers) |" in text and "kept per layer: 1.00 (layers 0)" in text


def test_cli_rejects_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        cli_main(["activation", "train", "--compression_layers", "5,2", "--output_dir", str(tmp_path)]) == 2
    )
    assert "increasing" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["activation", "evaluate", "--no_such_option", "1"])
