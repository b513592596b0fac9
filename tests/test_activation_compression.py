"""Activation compression: causality, exactness without merges, shapes and positions, clustering arithmetic.

Tiny random Llama and GPT-2 models (4 layers, the real SmolLM2 tokenizer); one integration test on SmolLM2.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import GPT2Config

from tokenmask.activation_compression import CompressedCausalLM, CompressionConfig
from tokenmask.activation_compression.clustering import (
    budget_starts,
    cap_runs,
    cluster_index,
    contrastive_loss,
    merge_units,
    running_quantile,
)
from tokenmask.activation_compression.config import ActivationConfigError
from tokenmask.reconstructors import Reconstructor, load_tokenizer
from tokenmask.testing import tiny_llama_config


def tiny_gpt2_config() -> GPT2Config:
    return GPT2Config(
        vocab_size=49152,
        n_embd=32,
        n_layer=4,
        n_head=4,
        n_positions=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def recon(request: pytest.FixtureRequest) -> Reconstructor:
    config = tiny_llama_config(num_layers=4) if request.param == "llama" else tiny_gpt2_config()
    return Reconstructor.from_config(config, load_tokenizer("default"), seed=0)


def random_ids(recon: Reconstructor, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 40000, (batch, length), generator=g)
    ids[:, 0] = recon.bos_token_id
    return ids


def logits(model: CompressedCausalLM, ids: torch.Tensor, **kwargs: object) -> tuple[torch.Tensor, float]:
    with torch.no_grad():
        out = model(ids, **kwargs)  # type: ignore[arg-type]
        return model.backbone.logits(out.hidden), out.ratio


def test_no_merge_is_the_base_model(recon: Reconstructor) -> None:
    """A threshold above 1 merges nothing: the wrapper reproduces the base LM, padding included."""
    model = CompressedCausalLM(
        recon,
        CompressionConfig(compression_layers=[1, 2], similarity_threshold=1.01, adaptive_threshold=False),
    )
    ids = random_ids(recon, 2, 30)
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0
    out, ratio = logits(model, ids, attention_mask=mask)
    with torch.no_grad():
        reference = recon.model(input_ids=ids, attention_mask=mask).logits.float()
    assert ratio == 1.0
    assert torch.allclose(out[0], reference[0], atol=1e-4)
    assert torch.allclose(out[1, :20], reference[1, :20], atol=1e-4)


@pytest.mark.parametrize(
    "config",
    [
        CompressionConfig(compression_layers=[2], similarity_threshold=0.5),
        CompressionConfig(compression_layers=[1, 3], similarity_threshold=0.4),
        CompressionConfig(compression_layers=[1], similarity_threshold=0.0, adaptive_threshold=False),
    ],
    ids=["adaptive", "recursive", "fixed"],
)
def test_changing_a_later_token_leaves_earlier_logits_unchanged(
    recon: Reconstructor, config: CompressionConfig
) -> None:
    model = CompressedCausalLM(recon, config)
    with torch.no_grad():  # a trained-looking model: non-zero learned parts everywhere
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids = random_ids(recon, 2, 48)
    changed = ids.clone()
    changed[:, 30] = 7
    before, ratio = logits(model, ids)
    after, _ = logits(model, changed)
    assert ratio > 1.3  # the test is about merged sequences
    assert torch.allclose(before[:, :30], after[:, :30], atol=1e-5)
    assert not torch.allclose(before[:, 30:], after[:, 30:], atol=1e-3)


def test_prefill_mode_gives_the_same_continuation_on_the_short_sequence(recon: Reconstructor) -> None:
    """Pre-fill (clusters alone in the compressed layers) predicts the continuation exactly as the full pass."""
    model = CompressedCausalLM(recon, CompressionConfig(compression_layers=[1, 2], similarity_threshold=0.5))
    ids = random_ids(recon, 2, 40)
    prefix = torch.tensor([30, 26])
    with torch.no_grad():
        full = model(ids, compress_lengths=prefix, mode="full")
        short = model(ids, compress_lengths=prefix, mode="prefill")
    assert short.hidden.shape[1] == 14 < full.hidden.shape[1] == 40  # only positions after the prefix
    assert torch.equal(full.positions_kept, short.positions_kept)
    for row in range(2):
        for col, origin in enumerate(short.origin[row].tolist()):
            if origin >= 0:
                assert torch.allclose(short.hidden[row, col], full.hidden[row, origin], atol=1e-5)


def test_padding_does_not_change_a_sequence(recon: Reconstructor) -> None:
    model = CompressedCausalLM(recon, CompressionConfig(compression_layers=[1, 3], similarity_threshold=0.5))
    ids = random_ids(recon, 2, 36)
    mask = torch.ones_like(ids)
    mask[1, 25:] = 0
    batched, _ = logits(model, ids, attention_mask=mask)
    alone, _ = logits(model, ids[1:, :25])
    assert torch.allclose(batched[1, :25], alone[0], atol=1e-5)


def test_shapes_counts_and_ratio(recon: Reconstructor) -> None:
    model = CompressedCausalLM(recon, CompressionConfig(compression_layers=[1, 3], similarity_threshold=0.5))
    ids = random_ids(recon, 3, 32)
    with torch.no_grad():
        out = model(ids)
    assert out.hidden.shape == (3, 32, recon.model.config.hidden_size)
    assert torch.equal(out.origin, torch.arange(32).expand(3, 32))
    level1, level2 = out.clusters
    assert bool((level2 <= level1).all()) and bool((level1 < 32).all())
    # layer 0 holds every position, layers 1-2 level-1 clusters, layer 3 level-2 clusters; 4 x 32 in all
    assert torch.equal(out.positions_kept, 32 + 2 * level1 + level2)
    assert torch.equal(out.positions_total, torch.full((3,), 128))
    assert out.rate == pytest.approx(1 - float(out.positions_kept.sum()) / (3 * 128))
    # the ratio counts the compressed layers only
    assert out.ratio == pytest.approx(96 * 3 / float((2 * level1 + level2).sum()))


def test_budget_mode_hits_the_requested_rate(recon: Reconstructor) -> None:
    model = CompressedCausalLM(recon, CompressionConfig(compression_layers=[1, 3]))
    ids = random_ids(recon, 2, 101)
    with torch.no_grad():
        out = model(ids, mode="prefill", target_rate=0.5)
    assert out.rate == pytest.approx(0.5, abs=0.02)
    with pytest.raises(ValueError, match="prefill"):
        model(ids, target_rate=0.5)


def test_merged_positions_lie_inside_their_clusters() -> None:
    starts = torch.tensor([[True, False, False, True, False, True, True, False]])
    member = torch.ones_like(starts)
    member[0, 7] = False
    cid, count = cluster_index(starts, member)
    assert cid.tolist() == [[0, 0, 0, 1, 1, 2, 3, -1]]
    assert count.tolist() == [4]
    positions = torch.arange(8).float()[None]
    weights = torch.tensor([[1.0, 5.0, 1.0, 2.0, 2.0, 1.0, 1.0, 9.0]])
    merged, norm_w = merge_units(positions, weights, cid, 4)
    assert merged.tolist() == [[pytest.approx((0 + 5 + 2) / 7), 3.5, 5.0, 6.0]]
    assert norm_w[0, 7] == 0


def test_merge_units_is_the_weighted_mean_of_each_cluster() -> None:
    """Random runs over rows of different member counts: each cluster's weighted mean, as a plain loop
    computes it (the fixed-order sum that keeps a GPU pre-fill deterministic)."""
    generator = torch.Generator().manual_seed(2)
    starts = torch.rand(3, 30, generator=generator) < 0.4
    member = torch.arange(30)[None] < torch.tensor([[30], [17], [1]])
    cid, count = cluster_index(starts, member)
    values = torch.randn(3, 30, 5, generator=generator, dtype=torch.float64)
    weights = torch.rand(3, 30, generator=generator, dtype=torch.float64) + 0.1
    m = int(count.max())
    merged, norm_w = merge_units(values, weights, cid, m)
    for row in range(3):
        for cluster in range(m):
            inside = cid[row] == cluster
            if inside.any():
                w = weights[row, inside] / weights[row, inside].sum()
                torch.testing.assert_close(merged[row, cluster], (w[:, None] * values[row, inside]).sum(0))
                torch.testing.assert_close(norm_w[row, inside], w)
            else:
                assert merged[row, cluster].eq(0).all()
    assert norm_w[~member].eq(0).all()


def test_cap_and_budget_respect_the_cluster_size() -> None:
    capped = cap_runs(torch.tensor([[True] + [False] * 9]), 4)
    assert capped.nonzero()[:, 1].tolist() == [0, 4, 8]
    sim = torch.rand(2, 40, generator=torch.Generator().manual_seed(1))
    eligible = torch.ones(2, 40, dtype=torch.bool)
    eligible[:, 0] = False
    starts = budget_starts(sim, eligible, torch.tensor([20, 5]), max_cluster_size=3)
    cid, count = cluster_index(starts, torch.ones_like(eligible))
    assert count.tolist() == [20, 35]
    for row in range(2):
        assert int(torch.bincount(cid[row]).max()) <= 3


def _budget_starts_row_by_row(sim: np.ndarray, ok: np.ndarray, want: np.ndarray, cap: int) -> np.ndarray:
    """The greedy budget clustering written plainly, one row at a time (the reference of budget_starts)."""
    starts = np.ones(sim.shape, dtype=bool)
    for row in range(sim.shape[0]):
        order = [
            int(i) for i in np.argsort(-np.nan_to_num(sim[row], nan=-np.inf), kind="stable") if ok[row, i]
        ]
        left, right = np.arange(sim.shape[1]), np.arange(sim.shape[1])
        done = 0
        for b in order:
            if done >= want[row]:
                break
            lo, hi = left[b - 1], right[b]
            if hi - lo + 1 > cap:
                continue
            starts[row, b] = False
            right[lo], left[hi] = hi, lo
            done += 1
    return starts


@pytest.mark.parametrize("seed", range(6))
def test_budget_starts_equals_the_row_by_row_greedy(seed: int) -> None:
    """The rows-together budget clustering merges exactly what the plain per-row greedy merges (NaN, ties, caps)."""
    g = torch.Generator().manual_seed(seed)
    rows, units = 5, 1 + 13 * seed
    sim = torch.randint(0, 6, (rows, units), generator=g).float() / 5  # ties on purpose
    sim[torch.rand(rows, units, generator=g) < 0.1] = float("nan")
    eligible = torch.rand(rows, units, generator=g) < 0.8
    eligible[:, 0] = False
    merges = torch.randint(0, units + 1, (rows,), generator=g)
    cap = 1 + seed % 4
    got = budget_starts(sim, eligible, merges, cap).numpy()
    want = _budget_starts_row_by_row(sim.numpy(), eligible.numpy(), merges.numpy(), cap)
    np.testing.assert_array_equal(got, want)


def test_running_quantile_is_causal_and_exact() -> None:
    g = torch.Generator().manual_seed(0)
    sim = torch.rand(1, 30, generator=g)
    eligible = torch.ones(1, 30, dtype=torch.bool)
    eligible[0, :3] = False
    thresholds = running_quantile(sim, eligible, 0.5, chunk=7)
    assert torch.isnan(thresholds[0, :3]).all()
    for b in range(3, 30):
        assert thresholds[0, b].item() == pytest.approx(
            float(np.quantile(sim[0, 3 : b + 1].numpy(), 0.5)), abs=1e-6
        )
    later = sim.clone()
    later[0, 20:] = 0.0
    torch.testing.assert_close(
        running_quantile(later, eligible, 0.5)[0, :20], thresholds[0, :20], rtol=0, atol=0, equal_nan=True
    )


def test_contrastive_loss_is_zero_for_identical_clusters_and_positive_otherwise() -> None:
    g = torch.Generator().manual_seed(0)
    a, b, c = torch.randn(3, 16, generator=g)
    features = torch.stack([a, a, a, b, b, c])[None]
    cid = torch.tensor([[0, 0, 0, 1, 1, 2]])
    sim = torch.nn.functional.cosine_similarity(features[0, 1:], features[0, :-1], dim=-1)
    threshold = torch.cat([torch.tensor([float("nan")]), torch.full((5,), float(sim.max()) + 0.01)])[None]
    natural = torch.tensor([[False, False, False, True, False, True]])
    assert contrastive_loss(features, cid, 3, natural, threshold).item() == pytest.approx(0.0, abs=1e-6)
    noisy = features + 0.3 * torch.randn(features.shape, generator=g)
    assert contrastive_loss(noisy, cid, 3, natural, threshold).item() > 1e-3
    low = torch.full_like(threshold, -1.0)  # clusters that should have merged are pushed apart
    assert contrastive_loss(features, cid, 3, natural, low).item() > 1e-3


def test_bad_settings_name_the_fix(recon: Reconstructor) -> None:
    with pytest.raises(ActivationConfigError, match="outside"):
        CompressedCausalLM(recon, CompressionConfig(compression_layers=[4]))
    with pytest.raises(ActivationConfigError, match="increasing"):
        CompressionConfig(compression_layers=[3, 1])
    with pytest.raises(ActivationConfigError, match="quantile"):
        CompressionConfig(similarity_threshold=1.5)


@pytest.mark.integration
def test_smollm2_compresses_causally_and_exactly(smollm: Reconstructor, pydocs_path: object) -> None:
    """On the embedded SmolLM2: no merges = the judge's NLL; about 2x at q=0.5; earlier logits untouched by later tokens."""
    from tokenmask.data import load_texts

    text = next(r["text"] for r in load_texts(str(pydocs_path)) if len(smollm.encode(r["text"])) >= 96)
    ids = torch.tensor([[smollm.bos_token_id, *smollm.encode(text)[:95]]])
    mask = torch.ones_like(ids)
    score = mask.bool().clone()
    score[:, 0] = False
    exact = CompressedCausalLM(
        smollm,
        CompressionConfig(compression_layers=[20], similarity_threshold=1.01, adaptive_threshold=False),
    )
    model = CompressedCausalLM(
        smollm, CompressionConfig(compression_layers=[20, 26], similarity_threshold=0.5)
    )
    with torch.no_grad():
        base = float(exact.uncompressed_nlls(ids, mask).sum())
        same = float(exact.token_nlls(exact(ids), ids, score).sum())
        out = model(ids)
        compressed = float(model.token_nlls(out, ids, score).sum())
        changed = ids.clone()
        changed[0, 60] = smollm.encode(" the")[0]
        a, b = model.backbone.logits(out.hidden), model.backbone.logits(model(changed).hidden)
    assert same == pytest.approx(base, rel=1e-4)
    assert 1.5 < out.ratio < 3.5
    assert math.isfinite(compressed) and compressed > 0.9 * base
    assert torch.allclose(a[0, :60], b[0, :60], atol=1e-4)


def _padded(recon: Reconstructor, lengths: list[int], seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    ids = random_ids(recon, len(lengths), max(lengths), seed)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
        ids[row, length:] = recon.pad_token_id
    return ids, mask


@pytest.mark.parametrize("rate", [0.5, None], ids=["budget", "plan_thresholds"])
def test_decoding_from_the_compressed_cache_predicts_as_the_forward(
    recon: Reconstructor, rate: float | None
) -> None:
    """prefill + decode_step on a right-padded batch give the logits of the model's own pre-fill forward,
    and each layer's cache holds ``layer_kept`` readable entries per row."""
    model = CompressedCausalLM(
        recon, CompressionConfig(compression_layers=[1, 2], layer_thresholds=[0.6, 0.6], max_cluster_size=4)
    )
    lengths = [48, 35, 41]
    ids, mask = _padded(recon, lengths)
    steps = 3
    with torch.no_grad():
        state = model.prefill(ids, mask, target_rate=rate)
        readable = [
            torch.full((len(lengths),), n) if r is None else r.sum(1)
            for r, n in zip(state.readable, state.cache_lengths())
        ]
        assert torch.equal(torch.stack(readable, 1), state.layer_kept)
        assert state.cache_lengths()[0] == max(lengths)
        assert max(state.cache_lengths()[2:]) < max(lengths) / 2
        logits, fed = [state.logits], []
        for _ in range(steps):
            fed.append(logits[-1].argmax(-1))
            logits.append(model.decode_step(state, fed[-1]))
        assert state.cache_lengths() == [int(x) for x in state.layer_kept.amax(0) + steps]
        longer = torch.full((len(lengths), max(lengths) + steps), recon.pad_token_id)
        for row, n in enumerate(lengths):
            longer[row, :n] = ids[row, :n]
            longer[row, n : n + steps] = torch.stack(fed, 1)[row]
        cached = torch.as_tensor(lengths)
        out = model(
            longer,
            (torch.arange(longer.shape[1])[None] < (cached + steps)[:, None]).long(),
            compress_lengths=cached - 1,
            mode="prefill",
            target_rate=rate,
            cache_lengths=cached,
        )
    for row, n in enumerate(lengths):
        for step in range(steps + 1):
            column = int((out.origin[row] == n - 1 + step).nonzero())
            reference = recon.head_logits(out.hidden[row, column])
            torch.testing.assert_close(logits[step][row], reference, atol=1e-4, rtol=1e-4)


def test_uncompressed_prefill_and_decode_match_the_base_model(recon: Reconstructor) -> None:
    """Without merges the causal pre-fill and the cache decode are the plain LM (padding included)."""
    model = CompressedCausalLM(recon, CompressionConfig(compression_layers=[1, 2], similarity_threshold=0.5))
    lengths = [30, 22]
    ids, mask = _padded(recon, lengths, seed=5)
    with torch.no_grad():
        state = model.prefill(ids, mask, compress=False)
        first = state.logits
        token = torch.tensor([7, 9])
        step_logits = model.decode_step(state, token)
        longer = torch.cat([ids, torch.full((2, 1), recon.pad_token_id)], 1)
        longer_mask = torch.cat([mask, torch.zeros(2, 1, dtype=mask.dtype)], 1)
        for row, n in enumerate(lengths):
            longer[row, n] = token[row]
            longer_mask[row, n] = 1
        base = recon.head_logits(recon.model.base_model(input_ids=longer, attention_mask=longer_mask)[0])
    for row, n in enumerate(lengths):
        torch.testing.assert_close(first[row], base[row, n - 1], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(step_logits[row], base[row, n], atol=1e-4, rtol=1e-4)
    assert state.output.rate == 0.0


def test_generate_greedy_and_sampled(recon: Reconstructor) -> None:
    model = CompressedCausalLM(recon, CompressionConfig(compression_layers=[1, 2], similarity_threshold=0.5))
    ids = random_ids(recon, 2, 40)
    with torch.no_grad():
        greedy, state = model.generate(ids, max_new_tokens=4, target_rate=0.5)
        again, _ = model.generate(ids, max_new_tokens=4, target_rate=0.5)
        sampled, _ = model.generate(
            ids, max_new_tokens=3, do_sample=True, top_k=5, generator=torch.Generator().manual_seed(0)
        )
    assert greedy.shape == (2, 4) and sampled.shape == (2, 3)
    assert torch.equal(greedy, again)
    assert torch.equal(state.next_position, torch.tensor([44, 44]))
    assert state.output.rate == pytest.approx(0.5, abs=0.05)


def test_clusters_closing_together_read_in_order() -> None:
    """Two clusters of one level closed at the same time: the earlier does not read the later (plain causal order)."""
    from tokenmask.activation_compression.clustering import NO_TIME
    from tokenmask.activation_compression.layout import TokenLayout

    def row(*values: int) -> torch.Tensor:
        return torch.tensor([values])

    layout = TokenLayout(
        level=row(0, 2, 2, 2),
        valid=row(1, 1, 1, 1).bool(),
        avail=row(9, 4, 8, 8),
        parent_avail=row(NO_TIME, NO_TIME, NO_TIME, NO_TIME),
        position=row(9, 1, 5, 7).float(),
        protected=row(0, 0, 0, 0).bool(),
        origin=row(9, -1, -1, -1),
        member=row(0, 1, 1, 1).bool(),
    )
    seen = layout.visibility()[0]
    assert not seen[2, 3] and seen[3, 2] and seen[0].all()
    order, keep = layout.causal_order()
    assert order[0].tolist() == [1, 2, 3, 0] and bool(keep.all())
    assert torch.equal(seen[order[0]][:, order[0]], torch.ones(4, 4, dtype=torch.bool).tril())
