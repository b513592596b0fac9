"""The judge's own continuations and the lookahead guard of refine (tiny model, no times).

``judge_continuations`` decodes as a cache-free argmax loop does; ``soft_continuation_nlls`` is the
cross-entropy of the judge's distributions after the full context and after a prefix, summed along the
path (so the full context scores lowest, Gibbs' inequality); ``refine_lookahead`` picks the lowest
``R`` among the candidates within the lookahead tolerance that keep the protected tail.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokenmask.evaluate.baselines import Truncation
from tokenmask.evaluate.compressor import MethodContext, build_method
from tokenmask.evaluate.refine import (
    GUARD_MOVES,
    LOOKAHEAD_PROTECT,
    LOOKAHEAD_TOKENS,
    LOOKAHEAD_TOLERANCE,
    RecoverabilitySearch,
    move_variants,
)
from tokenmask.evaluate.runner import check_methods
from tokenmask.reconstructors.judge import (
    judge_continuations,
    recovery_nlls,
    separator_ids,
    soft_continuation_nlls,
)


def _contexts(count: int = 3, length: int = 48, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(100, 5000, size=length).tolist() for _ in range(count)]


@torch.inference_mode()
def _next_logits(judge, ids: list[int]) -> torch.Tensor:
    return judge.model(input_ids=torch.tensor([ids])).logits[0].float()


@pytest.mark.parametrize("static_cache", [False, True], ids=["dynamic-cache", "static-cache"])
def test_greedy_continuation_is_the_argmax_loop(tiny_recon, static_cache: bool) -> None:  # type: ignore[no-untyped-def]
    """Both decode paths (Hugging Face's cache, and the fixed buffers of CachedDecoder that a GPU replays as a
    CUDA graph) give the argmax loop's tokens."""
    contexts = _contexts(2) + _contexts(1, length=20, seed=1)  # two lengths: decoded in two groups
    paths = judge_continuations(tiny_recon, contexts, tokens=5, static_cache=static_cache)
    for ctx, (path,) in zip(contexts, paths):
        ids = [tiny_recon.bos_token_id, *ctx]
        want = []
        for _ in range(5):
            want.append(int(_next_logits(tiny_recon, ids + want)[-1].argmax()))
        assert path == want


def test_static_decoder_is_kept_and_refilled_between_calls(tiny_recon) -> None:  # type: ignore[no-untyped-def]
    """A later call of the same batch shape refills the kept decoder's buffers in place (its CUDA graph, on a GPU,
    stays valid) and decodes what a fresh decoder does; another shape gets its own decoder."""
    tiny_recon.clear_decoders()
    first, second = _contexts(2, seed=3), _contexts(2, seed=4)
    assert judge_continuations(tiny_recon, first, tokens=5, static_cache=True) == judge_continuations(
        tiny_recon, first, tokens=5, static_cache=False
    )
    assert len(tiny_recon.decoders) == 1
    kept = next(iter(tiny_recon.decoders.values()))
    buffers = [k.data_ptr() for k in kept.cache.keys]
    paths = judge_continuations(tiny_recon, second, tokens=5, static_cache=True)
    assert paths == judge_continuations(tiny_recon, second, tokens=5, static_cache=False)
    assert next(iter(tiny_recon.decoders.values())) is kept
    assert [k.data_ptr() for k in kept.cache.keys] == buffers  # refilled in place
    judge_continuations(tiny_recon, _contexts(3, seed=5), tokens=5, static_cache=True)  # another batch size
    assert len(tiny_recon.decoders) == 2
    tiny_recon.clear_decoders()
    assert not tiny_recon.decoders


def test_kept_decoder_is_not_reused_after_the_weights_move() -> None:
    """Weights cast (new tensors) get a new decoder: a kept one reads the parameters it was built with."""
    from tokenmask.testing import tiny_reconstructor

    judge = tiny_reconstructor(seed=1)
    contexts = _contexts(2, seed=6)
    judge_continuations(judge, contexts, tokens=4, static_cache=True)
    judge.model.to(torch.float64)
    paths = judge_continuations(judge, contexts, tokens=4, static_cache=True)
    assert len(judge.decoders) == 2
    assert paths == judge_continuations(judge, contexts, tokens=4, static_cache=False)


def test_static_cache_path_falls_back_for_other_model_families() -> None:
    """A family without a backbone (GPT-NeoX here) decodes through Hugging Face's cache, with the same tokens."""
    from transformers import GPTNeoXConfig

    from tokenmask.reconstructors import Reconstructor
    from tokenmask.reconstructors.loading import DEFAULT_MODEL, load_tokenizer

    tokenizer = load_tokenizer(DEFAULT_MODEL)
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        bos_token_id=1,
        eos_token_id=2,
    )
    judge = Reconstructor.from_config(config, tokenizer, add_mask_token=False)
    contexts = _contexts(2)
    fast = judge_continuations(judge, contexts, tokens=4, static_cache=True)
    assert fast == judge_continuations(judge, contexts, tokens=4, static_cache=False)


def test_no_repeat_path_is_the_argmax_loop_without_repeated_ngrams(tiny_recon) -> None:
    """With no_repeat=n the greedy path is the argmax over the tokens that do not close one of its own n-grams."""
    contexts = _contexts(2)
    n, tokens = 2, 24
    plain = judge_continuations(tiny_recon, contexts, tokens=tokens)
    paths = judge_continuations(tiny_recon, contexts, tokens=tokens, no_repeat=n)
    for ctx, (path,) in zip(contexts, paths):
        ids = [tiny_recon.bos_token_id, *ctx]
        want: list[int] = []
        for _ in range(tokens):
            logits = _next_logits(tiny_recon, ids + want)[-1].clone()
            tail = want[len(want) - n + 1 :]
            for j in range(len(want) - n + 1):
                if want[j : j + n - 1] == tail:
                    logits[want[j + n - 1]] = float("-inf")
            want.append(int(logits.argmax()))
        assert path == want
        grams = [tuple(path[j : j + n]) for j in range(len(path) - n + 1)]
        assert len(grams) == len(set(grams))
    assert plain != paths  # the tiny judge loops when nothing stops it


def test_sampled_continuations_are_reproducible_from_the_seed(tiny_recon) -> None:
    contexts = _contexts(2)
    a = judge_continuations(tiny_recon, contexts, tokens=6, samples=3, seed=7)
    b = judge_continuations(tiny_recon, contexts, tokens=6, samples=3, seed=7)
    c = judge_continuations(tiny_recon, contexts, tokens=6, samples=3, seed=8)
    assert a == b and a != c
    assert all(len(per) == 3 and all(len(p) == 6 for p in per) for per in a)


def test_judge_continuations_refuses_bad_settings(tiny_recon) -> None:
    with pytest.raises(ValueError, match="tokens >= 1"):
        judge_continuations(tiny_recon, _contexts(1), tokens=0)


def test_soft_nll_is_the_cross_entropy_along_the_path(tiny_recon) -> None:
    contexts = _contexts(2)
    paths = [p[0] for p in judge_continuations(tiny_recon, contexts, tokens=4)]
    prefixes = [contexts[0][-10:], contexts[1][5:30], contexts[0], []]
    owners = [0, 1, 0, 1]
    got = soft_continuation_nlls(tiny_recon, prefixes, owners, contexts, paths)
    for value, prefix, d in zip(got, prefixes, owners):
        path = paths[d]
        full = [tiny_recon.bos_token_id, *contexts[d], *path[:-1]]
        part = [tiny_recon.bos_token_id, *prefix, *path[:-1]]
        q = torch.log_softmax(_next_logits(tiny_recon, full)[-len(path) :], -1)
        p = torch.log_softmax(_next_logits(tiny_recon, part)[-len(path) :], -1)
        assert value == pytest.approx(-float((q.exp() * p).sum()), rel=1e-4)
    # H(q, p) >= H(q, q): the full context scores lowest
    assert got[2] <= got[0] + 1e-4


def test_soft_nll_batches_rows_of_any_path_length(tiny_recon, monkeypatch) -> None:
    """Batched over rows (two contexts and two prefixes per forward pass here), paths of different lengths
    and owners out of order give each item its own cross-entropy, as one item at a time does."""
    contexts = _contexts(3)
    paths = [p[0][:n] for p, n in zip(judge_continuations(tiny_recon, contexts, tokens=5), (5, 2, 4))]
    prefixes = [contexts[2][:7], contexts[0][-12:], [], contexts[1][3:20], contexts[2][10:], contexts[0]]
    owners = [2, 0, 1, 1, 2, 0]
    one_by_one = [
        soft_continuation_nlls(tiny_recon, [p], [0], [contexts[d]], [paths[d]])[0]
        for p, d in zip(prefixes, owners)
    ]
    monkeypatch.setattr(tiny_recon, "batch_size", 2)
    np.testing.assert_allclose(
        soft_continuation_nlls(tiny_recon, prefixes, owners, contexts, paths), one_by_one, rtol=1e-5
    )


def test_lookahead_guard_and_protected_tail(tiny_recon) -> None:
    """The winner is the lowest R among candidates that keep the base's last `protect` kept tokens
    and whose soft NLL is at most the base's plus T * tolerance."""
    contexts = _contexts(3)
    base = Truncation(tiny_recon.tokenizer)
    tokens, tolerance, protect = 4, 0.05, 20  # 24 kept tokens: moves of 4 pass, moves of 8 do not
    search = RecoverabilitySearch(
        base,
        tiny_recon,
        moves=(4, 8),
        stride=4,
        protect=protect,
        lookahead=tokens,
        lookahead_tolerance=tolerance,
    )
    rate = 0.5
    chosen = search.keep_masks(contexts, rate)
    paths = [p[0] for p in judge_continuations(tiny_recon, contexts, tokens)]
    sep = separator_ids(tiny_recon)
    moved = 0
    for d, (ids, keep, proposal) in enumerate(zip(contexts, chosen, base.keep_masks(contexts, rate))):
        array = np.asarray(ids)
        last = np.flatnonzero(proposal)[-protect:]
        candidates = [c for c in [proposal, *move_variants(proposal, (4, 8), 4)] if c[last].all()]
        assert len(candidates) < 1 + len(move_variants(proposal, (4, 8), 4))  # the tail removed some
        prefixes = [array[c].tolist() for c in candidates]
        nlls = recovery_nlls(tiny_recon, prefixes, [ids] * len(candidates), sep)
        soft = soft_continuation_nlls(tiny_recon, prefixes, [d] * len(candidates), contexts, paths)
        admitted = soft <= soft[0] + tokens * tolerance + 1e-6
        want = int(np.flatnonzero(admitted)[np.argmin(nlls[admitted])])
        np.testing.assert_array_equal(keep, candidates[want])
        assert keep[last].all() and keep.sum() == proposal.sum()
        moved += want > 0
    assert moved  # the test exercises a move, not only the base mask


def test_protecting_every_kept_token_returns_the_base(tiny_recon) -> None:
    contexts = _contexts(2)
    base = Truncation(tiny_recon.tokenizer)
    search = RecoverabilitySearch(base, tiny_recon, moves=(8,), stride=8, protect=1000)
    for keep, proposal in zip(search.keep_masks(contexts, 0.5), base.keep_masks(contexts, 0.5)):
        np.testing.assert_array_equal(keep, proposal)


def test_refine_lookahead_name(tiny_recon) -> None:
    check_methods(["refine_lookahead:truncation"])
    method = build_method("refine_lookahead:truncation", MethodContext(judge=tiny_recon))
    assert isinstance(method, RecoverabilitySearch) and method.name == "refine_lookahead:truncation"
    assert (method.protect, method.lookahead, method.lookahead_tolerance) == (
        LOOKAHEAD_PROTECT,
        LOOKAHEAD_TOKENS,
        LOOKAHEAD_TOLERANCE,
    )
    assert method.moves == GUARD_MOVES and method.guard == 0


def test_lookahead_rejects_bad_settings(tiny_recon) -> None:
    with pytest.raises(ValueError, match="protect >= 0"):
        RecoverabilitySearch(Truncation(tiny_recon.tokenizer), tiny_recon, lookahead=-1)
