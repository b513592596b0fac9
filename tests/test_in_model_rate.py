"""The in-model rate of docs/evaluation.md (KV entries kept over all layers), layer plans, causality, the merge picture.

Tiny random Llama models built from a config (the real SmolLM2 tokenizer); no embedded model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tokenmask.activation_compression import CompressedCausalLM, CompressionConfig
from tokenmask.activation_compression.clustering import running_quantile, steered_quantile
from tokenmask.activation_compression.config import ActivationConfigError, ActivationTrainConfig
from tokenmask.activation_compression.in_model import ActivationInModelCompressor
from tokenmask.activation_compression.merge_map import MERGE_MAP_FILE, merge_map, write_merge_map
from tokenmask.activation_compression.plan import cluster_targets, plan_rate
from tokenmask.cli import main as cli_main
from tokenmask.evaluate.compressor import InModelScore
from tokenmask.evaluate.evaluator import Evaluator
from tokenmask.evaluate.metrics import EvalDocument
from tokenmask.evaluate.reports import EvaluationReport, MethodResult, markdown_table
from tokenmask.reconstructors import Reconstructor, load_tokenizer
from tokenmask.testing import tiny_llama_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def recon() -> Reconstructor:
    return Reconstructor.from_config(tiny_llama_config(num_layers=4), load_tokenizer("default"), seed=0)


@pytest.fixture(scope="module")
def deep() -> Reconstructor:
    return Reconstructor.from_config(tiny_llama_config(num_layers=6), load_tokenizer("default"), seed=1)


def random_ids(recon: Reconstructor, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 40000, (batch, length), generator=g)
    ids[:, 0] = recon.bos_token_id
    return ids


def hand_built(recon: Reconstructor) -> CompressedCausalLM:
    """Every adjacent pair may merge (cosine threshold -1), runs capped at 4: the clusters are known in advance."""
    config = CompressionConfig(
        compression_layers=[1, 3], similarity_threshold=-1.0, adaptive_threshold=False, max_cluster_size=4
    )
    return CompressedCausalLM(recon, config)


def test_rate_of_a_hand_built_cluster_plan_is_the_count_by_hand(recon: Reconstructor) -> None:
    model = hand_built(recon)
    with torch.no_grad():
        out = model(random_ids(recon, 2, 21))
    # BOS stays alone; 20 tokens in runs of 4 -> 5 clusters at layer 1 (6 units); at layer 3 BOS alone
    # and the 5 clusters in runs of 4 -> 2 (3 units). Layer 0 keeps all 21 positions.
    assert out.layer_kept.tolist() == [[21, 6, 6, 3]] * 2
    assert out.layer_total.tolist() == [[21] * 4] * 2
    assert out.positions_kept.tolist() == [36, 36] and out.positions_total.tolist() == [84, 84]
    assert out.rate == pytest.approx(1 - 36 / 84)
    assert out.ratio == pytest.approx(63 / 15)  # layers 1-3 only
    clusters = out.position_clusters()[0]
    assert clusters[0].tolist() == [-1] * 21
    assert clusters[1].tolist() == [0] + [1 + i // 4 for i in range(20)] == clusters[2].tolist()
    assert clusters[3].tolist() == [0] + [1] * 16 + [2] * 4


def test_cache_lengths_count_the_prefill_only(recon: Reconstructor) -> None:
    """The evaluation caches BOS + context and scores a tail after it: only the cached positions count."""
    model = hand_built(recon)
    with torch.no_grad():
        out = model(
            random_ids(recon, 1, 30),
            compress_lengths=torch.tensor([20]),
            mode="prefill",
            cache_lengths=torch.tensor([21]),
        )
    # 20 mergeable positions (BOS + 19) -> BOS + 5 clusters (runs of 4, 4, 4, 4, 3), then 1 raw position
    assert out.layer_kept.tolist() == [[21, 7, 7, 3 + 1]]
    assert out.layer_total.tolist() == [[21] * 4]


def test_plan_arithmetic_and_budget_targets() -> None:
    assert plan_rate([4, 12, 20], [0.6, 0.6, 0.6], 30) == pytest.approx(
        1 - (4 + 8 * 0.6 + 8 * 0.36 + 10 * 0.216) / 30
    )
    assert CompressionConfig(compression_layers=[10, 20], layer_thresholds=[0.66, 0.66]).plan_rate(
        30
    ) == pytest.approx(0.3, abs=0.005)
    n_cache, n = torch.tensor([257, 101]), torch.tensor([256, 100])
    none = cluster_targets(30, [4, 12, 20], [0.6] * 3, 0.0, n_cache, n, protected=1)
    assert [t.tolist() for t in none] == [[256, 100]] * 3
    for rate in (0.3, 0.5, 0.7):
        targets = cluster_targets(30, [4, 12, 20], [0.6] * 3, rate, n_cache, n, protected=1)
        kept = 4 * n_cache + 8 * (targets[0] + 1) + 8 * (targets[1] + 1) + 10 * (targets[2] + 1)
        achieved = 1 - kept.double() / (30 * n_cache.double())
        assert torch.allclose(achieved, torch.full_like(achieved, rate), atol=10 / (30 * 100))
        assert bool((targets[0] >= targets[1]).all() and (targets[1] >= targets[2]).all())
    # layers 0-23 keep everything: 0.5 is out of reach
    with pytest.warns(UserWarning, match="before layer 15"):
        cluster_targets(30, [24], [0.5], 0.5, n_cache, n, protected=1)


def test_in_model_method_reports_all_layers_and_hits_the_rate(recon: Reconstructor) -> None:
    model = CompressedCausalLM(
        recon, CompressionConfig(compression_layers=[1, 2], layer_thresholds=[0.6, 0.6])
    )
    method = ActivationInModelCompressor(model)
    ids = random_ids(recon, 3, 49, seed=3)[:, 1:].tolist()
    contexts, continuations = [c[:40] for c in ids], [c[40:] for c in ids]
    result = method.score(recon, contexts, continuations, recon.encode("\n\n"), rate=0.5)
    for score in result.scores:
        assert score.layer_total == [41] * 4  # BOS + 40 context positions in each of the 4 layers
        assert score.layer_kept[0] == 41  # the layer before the first compression keeps everything
        assert score.layer_kept[1] >= score.layer_kept[2] >= score.layer_kept[3]
        assert 1 - score.positions_kept / score.positions_total == pytest.approx(0.5, abs=2 / 164)


def test_a_model_that_merges_nothing_has_rate_zero_and_the_judges_nlls(recon: Reconstructor) -> None:
    ids = random_ids(recon, 3, 49, seed=4)[:, 1:].tolist()
    docs = [EvalDocument(context=c[:40], continuation=c[40:], text="") for c in ids]
    evaluator = Evaluator(recon, docs, warmup=False)
    method = ActivationInModelCompressor(
        CompressedCausalLM(recon, CompressionConfig(compression_layers=[1, 2]))
    )
    scores = evaluator.evaluate(method, rate=0.0)
    assert scores.rate == 0.0 and scores.kept_per_layer == [1.0] * 4
    # kept everything: the judge's own NLLs of the context (after sep) and of the continuation
    # (compared as NLLs: a random judge barely uses its context, so the ratios would magnify float noise)
    result = method.score(
        recon, [d.context for d in docs], [d.continuation for d in docs], evaluator.sep, 0.0
    )
    reference = evaluator.reference
    assert [s.context_nll for s in result.scores] == pytest.approx(list(reference.recover_full), rel=1e-5)
    assert [s.continuation_nll for s in result.scores] == pytest.approx(
        list(reference.continue_full), rel=1e-5
    )
    # the same in full mode with a threshold that merges nothing
    exact = CompressedCausalLM(
        recon,
        CompressionConfig(compression_layers=[1, 2], similarity_threshold=1.01, adaptive_threshold=False),
    )
    batch = torch.tensor([[recon.bos_token_id, *d.context, *d.continuation] for d in docs])
    score = torch.ones_like(batch, dtype=torch.bool)
    score[:, 0] = False
    with torch.no_grad():
        out = exact(batch)
        nll = exact.token_nlls(out, batch, score)
        plain = exact.uncompressed_nlls(batch, torch.ones_like(batch))
    assert out.rate == 0.0 and torch.equal(out.layer_kept, out.layer_total)
    assert torch.allclose(nll, plain, atol=1e-4)


def test_rate_and_layers_appear_in_the_evaluate_table(recon: Reconstructor) -> None:
    ids = random_ids(recon, 2, 49, seed=5)[:, 1:].tolist()
    docs = [EvalDocument(context=c[:40], continuation=c[40:], text="") for c in ids]
    model = CompressedCausalLM(recon, CompressionConfig(compression_layers=[1, 2]))
    scores = Evaluator(recon, docs, warmup=False).evaluate(ActivationInModelCompressor(model), rate=0.3)
    assert scores.rate == pytest.approx(0.3, abs=0.02)
    assert scores.kept_per_layer[0] == 1.0 and scores.kept_per_layer[3] < scores.kept_per_layer[1] < 1.0
    table = markdown_table(EvaluationReport([MethodResult("activation", scores)], {}))
    assert "kept per layer" in table and "1.00 (layers 0)" in table


def test_steered_threshold_merges_the_planned_share_causally() -> None:
    """Similarities drifting down along the sequence: the plain running quantile merges too few pairs."""
    g = torch.Generator().manual_seed(0)
    sim = torch.rand(4, 256, generator=g) - torch.linspace(0, 0.5, 256)[None]
    eligible = torch.ones(4, 256, dtype=torch.bool)
    eligible[:, :2] = False
    plain = (eligible & (sim > running_quantile(sim, eligible, 0.64))).float().mean()
    steered_thresholds = steered_quantile(sim, eligible, 0.64)
    steered = (eligible & (sim > steered_thresholds)).float().sum() / eligible.sum()
    assert float(plain) < 0.3 and float(steered) == pytest.approx(0.36, abs=0.015)
    later = sim.clone()
    later[:, 100:] = torch.rand(4, 156, generator=g)
    torch.testing.assert_close(
        steered_quantile(later, eligible, 0.64)[:, :100], steered_thresholds[:, :100], equal_nan=True
    )


def test_in_model_score_checks_its_per_layer_counts() -> None:
    InModelScore(1.0, 1.0, 10, 20, [5, 5], [10, 10])
    with pytest.raises(ValueError, match="sum"):
        InModelScore(1.0, 1.0, 10, 20, [5, 6], [10, 10])
    with pytest.raises(ValueError, match="both"):
        InModelScore(1.0, 1.0, 10, 20, [5, 5], [])


@pytest.mark.parametrize("mode", ["full", "prefill"])
def test_no_position_sees_a_later_token_under_a_recursive_plan(deep: Reconstructor, mode: str) -> None:
    """Perturb every token from position t on: no output before t changes (plan of 3 recursive layers)."""
    config = CompressionConfig(compression_layers=[1, 3, 4], layer_thresholds=[0.6, 0.5, 0.5])
    model = CompressedCausalLM(deep, config)
    torch.manual_seed(0)
    with torch.no_grad():  # a trained-looking model: non-zero learned parts everywhere
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids = random_ids(deep, 2, 56, seed=6)
    changed = ids.clone()
    t = 44 if mode == "prefill" else 30
    changed[:, t:] = random_ids(deep, 2, 56, seed=7)[:, t:]
    first = 33 if mode == "prefill" else 1  # prefill computes only the positions after the context
    score = torch.zeros_like(ids, dtype=torch.bool)
    score[:, first:] = True
    kwargs: dict[str, object] = {}
    if mode == "prefill":  # the evaluation's path: a compressed context of 32, then raw positions
        prefix = torch.tensor([32, 32])
        kwargs = {
            "compress_lengths": prefix,
            "mode": "prefill",
            "target_rate": 0.5,
            "cache_lengths": prefix + 1,
        }
    with torch.no_grad():
        before = model(ids, **kwargs)  # type: ignore[arg-type]
        after = model(changed, **kwargs)  # type: ignore[arg-type]
        nll_before = model.token_nlls(before, ids, score)
        nll_after = model.token_nlls(after, changed, score)
    assert before.rate > 0.2
    if mode == "full":
        a, b = model.backbone.logits(before.hidden), model.backbone.logits(after.hidden)
        assert torch.allclose(a[:, :t], b[:, :t], atol=1e-5)
        assert not torch.allclose(a[:, t:], b[:, t:], atol=1e-3)
    # token j < t is predicted from position j - 1 and is itself unchanged
    assert torch.allclose(nll_before[:, first:t], nll_after[:, first:t], atol=1e-5)
    assert not torch.allclose(nll_before[:, t + 1 :], nll_after[:, t + 1 :], atol=1e-3)


def test_merge_picture_is_written(recon: Reconstructor, tmp_path: Path) -> None:
    mmap = merge_map(hand_built(recon), random_ids(recon, 1, 21)[0].tolist())
    assert mmap.layer_kept == [21, 6, 6, 3] and mmap.rate == pytest.approx(1 - 36 / 84)
    merged = mmap.merged()
    assert not merged[0].any() and merged[1].tolist() == [False] + [True] * 20
    path = write_merge_map(mmap, tmp_path, "hand-built plan")
    assert path == tmp_path / MERGE_MAP_FILE and path.read_bytes()[:4] == b"\x89PNG"
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents*"))
    assert events and events[0].stat().st_size > 1000  # holds the image


def test_layer_plan_settings_are_checked_and_reach_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ActivationConfigError, match="one threshold per compression layer"):
        CompressionConfig(compression_layers=[4, 12], layer_thresholds=[0.6])
    with pytest.raises(ActivationConfigError, match="quantile"):
        CompressionConfig(compression_layers=[4], layer_thresholds=[1.5])
    code = cli_main(
        ["activation", "train", "--compression_layers", "4,12", "--layer_thresholds", "0.6",
         "--output_dir", str(tmp_path / "x")]
    )  # fmt: skip
    assert code == 2 and "layer_thresholds" in capsys.readouterr().err


@pytest.mark.parametrize("target", [0.3, 0.5])
def test_shipped_plans_target_their_rate(target: float) -> None:
    """configs/{dev,prod}/activation_{train,method}_rate{30,50}.json: the plan's nominal rate on SmolLM2's 30 layers."""
    name = f"rate{round(100 * target)}.json"
    files = sorted(
        [*REPO.glob(f"configs/*/activation_train_{name}"), *REPO.glob(f"configs/*/activation_method_{name}")]
    )
    assert len(files) >= 3
    for file in files:
        values = {k: v for k, v in json.loads(file.read_text()).items() if not k.startswith("_")}
        if "model_name" in values:  # a train config
            compression = ActivationTrainConfig(**values).compression()
        else:  # a method config of `tokenmask evaluate`
            compression = CompressionConfig(**values)
        assert compression.plan_rate(30) == pytest.approx(target, abs=0.01), file.name


def test_plan_config_keys_are_valid() -> None:
    assert np.isnan(CompressionConfig(adaptive_threshold=False, similarity_threshold=0.9).plan_rate(30))
