"""benchmarks/candidate_analysis.py reads a candidate file as refine_guard and refine_lookahead choose (tiny model, no times)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from conftest import load_benchmark

from tokenmask.evaluate.baselines import Truncation
from tokenmask.evaluate.refine import GUARD_MOVES, RecoverabilitySearch, move_variants
from tokenmask.reconstructors.judge import (
    continuation_nlls,
    judge_continuations,
    recovery_nlls,
    separator_ids,
    soft_continuation_nlls,
)

MOVES = (8, 16)


@pytest.fixture(scope="module")
def analysis() -> ModuleType:
    return load_benchmark("candidate_analysis")


def _candidate_file(  # type: ignore[no-untyped-def]
    judge,
    contexts: list[list[int]],
    rate: float,
    guard: int,
    path: Path,
    moves=MOVES,
    soft: int = 0,
    spare: int = 0,
) -> None:
    """What run_candidates.py writes, for one rate (F left at 0: only R, the guard and ``s`` matter here);
    with ``spare``, also the span moves that spare the last ``spare`` kept tokens (``--drops oldest,span``)."""
    sep = separator_ids(judge)
    docs = []
    paths = [p[0] for p in judge_continuations(judge, contexts, soft)] if soft else []
    bits = judge.token_bits(contexts)
    for d, (ids, base) in enumerate(zip(contexts, Truncation(judge.tokenizer).keep_masks(contexts, rate))):
        masks = [np.asarray(base), *move_variants(np.asarray(base), moves, 8)]
        kind = "b" + "o" * (len(masks) - 1)
        if spare:
            seen = {m.tobytes() for m in masks}
            spans = [
                m
                for m in move_variants(np.asarray(base), moves, 8, ("span",), bits[d], spare)
                if m.tobytes() not in seen
            ]
            masks += spans
            kind += "s" * len(spans)
        array = np.asarray(ids)
        r = recovery_nlls(judge, [array[m].tolist() for m in masks], [ids] * len(masks), sep)
        g = continuation_nlls(
            judge, [array[:-guard][m[:-guard]].tolist() for m in masks], [ids[-guard:]] * len(masks)
        )
        entry = {
            "keep": ["".join("1" if k else "0" for k in m) for m in masks],
            "kind": kind,
            "r": r.tolist(),
            "f": [0.0] * len(masks),
            f"g{guard}": g.tolist(),
        }
        if soft:
            prefixes = [array[m].tolist() for m in masks]
            entry["s"] = soft_continuation_nlls(judge, prefixes, [d] * len(masks), contexts, paths).tolist()
        docs.append(
            {
                "context": ids,
                "r_empty": 1.0,
                "r_full": 0.0,
                "f_empty": 1.0,
                "f_full": 0.0,
                "rates": {str(rate): entry},
            }
        )
    path.write_text(json.dumps({"protect": spare, "documents": docs}))


def _lookahead_search(judge, protect: int, tokens: int, tolerance: float, **options) -> RecoverabilitySearch:  # type: ignore[no-untyped-def]
    """refine_lookahead's search on truncation over GUARD_MOVES (stride 8), with the test's own lookahead settings."""
    return RecoverabilitySearch(
        Truncation(judge.tokenizer),
        judge,
        GUARD_MOVES,
        8,
        protect=protect,
        lookahead=tokens,
        lookahead_tolerance=tolerance,
        **options,
    )


@pytest.mark.parametrize(("moves", "tolerance"), [(MOVES, 0.1), ((16,), 0.0)])
def test_guarded_choice_is_refine_guards_choice(
    analysis: ModuleType, tiny_recon, tmp_path: Path, moves, tolerance
) -> None:  # type: ignore[no-untyped-def]
    """The analysis picks, from the judged file, the very masks the method picks (a subset of moves included)."""
    rng = np.random.default_rng(4)
    contexts = [rng.integers(100, 5000, size=48).tolist() for _ in range(3)]
    rate, guard = 0.5, 8
    path = tmp_path / "candidates.json"
    _candidate_file(tiny_recon, contexts, rate, guard, path)
    docs = analysis.load(str(path))
    choice = analysis.guarded_choice(docs, str(rate), moves, guard, tolerance)
    method = RecoverabilitySearch(
        Truncation(tiny_recon.tokenizer), tiny_recon, moves, 8, guard=guard, guard_tolerance=tolerance
    )
    for doc, picked, keep in zip(docs, choice, method.keep_masks(contexts, rate)):
        np.testing.assert_array_equal(doc["rates"][str(rate)]["masks"][picked], keep)


@pytest.mark.parametrize("drops", ["o", "os"])
def test_lookahead_choice_is_refine_lookaheads_choice(
    analysis: ModuleType, tiny_recon, tmp_path: Path, drops: str
) -> None:  # type: ignore[no-untyped-def]
    """The lookahead report's choice (protected tail, lookahead tolerance, drop rules) is the method's, mask for mask."""
    rng = np.random.default_rng(5)
    contexts = [rng.integers(100, 5000, size=64).tolist() for _ in range(3)]
    rate, tokens, protect, tolerance = 0.5, 4, 12, 0.05
    path = tmp_path / "candidates.json"
    _candidate_file(tiny_recon, contexts, rate, 8, path, moves=GUARD_MOVES, soft=tokens, spare=protect)
    docs = analysis.load(str(path))
    choice = analysis.lookahead_choice(docs, str(rate), protect, None, tolerance, tokens=tokens, drops=drops)
    method = _lookahead_search(
        tiny_recon, protect, tokens, tolerance, drops=("oldest", "span") if drops == "os" else ("oldest",)
    )
    for doc, picked, keep in zip(docs, choice, method.keep_masks(contexts, rate)):
        np.testing.assert_array_equal(doc["rates"][str(rate)]["masks"][picked], keep)
    assert any(c > 0 for c in choice)  # a move was taken, not only the base mask
    if drops == "os":  # a span move won somewhere
        assert any(doc["rates"][str(rate)]["kind"][c] == "s" for doc, c in zip(docs, choice))


def test_run_candidates_writes_each_moves_rule() -> None:
    """run_candidates.py's candidates: the base, refine's oldest moves, then the span moves not already there."""
    module = load_benchmark("run_candidates")
    keep = np.array([False] * 12 + [True] * 12)
    bits = np.random.default_rng(3).random(len(keep))
    masks, kinds = module.candidate_masks(keep, (2, 4), 2, ["oldest", "span"], bits, 3)
    oldest = move_variants(keep, (2, 4), 2)
    spans = [
        m
        for m in move_variants(keep, (2, 4), 2, ("span",), bits, 3)
        if m.tobytes() not in {o.tobytes() for o in oldest}
    ]
    assert kinds == ["b"] + ["o"] * len(oldest) + ["s"] * len(spans) and spans
    for got, want in zip(masks, [keep, *oldest, *spans]):
        np.testing.assert_array_equal(got, want)


def test_score_report_prints_the_fixed_settings_metrics(
    analysis: ModuleType, tiny_recon, tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    """`score` prints the corpus ratios of the base and of the fixed setting's choice, with the verdict."""
    rng = np.random.default_rng(6)
    contexts = [rng.integers(100, 5000, size=64).tolist() for _ in range(3)]
    path = tmp_path / "candidates.json"
    _candidate_file(tiny_recon, contexts, 0.5, 8, path, moves=GUARD_MOVES, soft=4, spare=12)
    docs = analysis.load(str(path))
    for x, r_empty in zip(docs, (30.0, 40.0, 50.0)):  # references the judged R can be read against
        x["r_empty"], x["r_full"] = r_empty + max(x["rates"]["0.5"]["r"]), 0.0
    analysis.score(docs, "os:12:0.05")
    out = capsys.readouterr().out
    choice = analysis.lookahead_choice(docs, "0.5", 12, None, 0.05, tokens=64, drops="os")
    rec0 = sum(x["r_empty"] - x["rates"]["0.5"]["r"][0] for x in docs) / sum(x["r_empty"] for x in docs)
    rec = analysis.absolute(docs, "0.5", choice)[0]
    assert f"| base (truncation) | {rec0:.3f} / " in out
    assert f"| os protect 12 tol 0.05 | {rec:.3f} / " in out and f"({rec - rec0:+.3f} / " in out


@pytest.fixture(scope="module")
def signals(analysis: ModuleType) -> ModuleType:
    return load_benchmark("candidate_signals")


def test_repeated_share_counts_the_dropped_ngrams_found_elsewhere(signals: ModuleType) -> None:
    """A dropped phrase that recurs elsewhere scores 1, a unique one 0; windows touching the drop do not count."""
    context = [1, 2, 3, 9, 1, 2, 3, 7]
    base = np.ones(8, dtype=bool)
    c = {"masks": [base, base & (np.arange(8) > 2), base & ~np.isin(np.arange(8), [3, 4]), base]}
    np.testing.assert_allclose(signals.repeated_share(context, c, 2), [0.0, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(signals.repeated_share(context, c, 3), [0.0, 1.0, 0.0, 0.0])


def test_attention_signal_and_its_ceiling(
    analysis: ModuleType, signals: ModuleType, tiny_recon, tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    """The judge's end attention is cached once; each move's signal is the mass on what it drops; a ceiling
    filters moves only (no ceiling: the method's choice; a ceiling below every move: the base), and `score` names it."""
    rng = np.random.default_rng(7)
    contexts = [rng.integers(100, 5000, size=64).tolist() for _ in range(3)]
    path = tmp_path / "candidates.json"
    _candidate_file(tiny_recon, contexts, 0.5, 8, path, moves=GUARD_MOVES, soft=4)
    docs = analysis.load(str(path))
    signals.file_attention(str(path), docs, 4, judge=tiny_recon)
    implementation = tiny_recon.model.config._attn_implementation
    again = analysis.load(str(path))
    signals.file_attention(str(path), again, 4)  # from the cache: no judge is loaded
    assert tiny_recon.model.config._attn_implementation == implementation
    for x, y in zip(docs, again):
        c = x["rates"]["0.5"]
        np.testing.assert_array_equal(c["att"], y["rates"]["0.5"]["att"])
        kept = int(c["masks"][0].sum())
        assert c["att"].shape == (tiny_recon.model.config.num_hidden_layers, kept)
        assert np.all(c["att"] >= 0) and np.all(c["att"].sum(1) <= 1 + 1e-5)
    keys = signals.add_signals(docs)
    for x in docs:
        c = x["rates"]["0.5"]
        dropped = ~c["masks"][1][c["masks"][0]]  # first move, in the base's kept-token order
        assert c["a_all"][0] == 0 and np.isclose(c["a_all"][1], c["att"].mean(0)[dropped].sum())
        assert all(c[k].shape == (len(c["masks"]),) for k in keys)
    free = analysis.lookahead_choice(docs, "0.5", 0, None, 0.05, tokens=4)
    assert free == analysis.filtered_choice(
        docs, "0.5", GUARD_MOVES, 0, None, 0.05, 4, limit=("a_all", np.inf)
    )
    assert any(free)
    assert (
        analysis.filtered_choice(docs, "0.5", GUARD_MOVES, 0, None, 0.05, 4, limit=("a_all", -1.0)) == [0] * 3
    )
    analysis.score(docs, "o:0:0.05:a_hi@0.5")
    assert "| o protect 0 tol 0.05 a_hi <= 0.5 |" in capsys.readouterr().out


def test_draw_changes_of_the_whole_set_are_the_metric(analysis: ModuleType) -> None:
    """A draw of every document gives the corpus deltas of `metric`; a draw of one, that document's own ratio."""
    rng = np.random.default_rng(8)
    docs = [
        {
            "r_empty": 50.0 + d,
            "r_full": 10.0,
            "f_empty": 30.0,
            "f_full": 5.0 + d,
            "rates": {"0.5": {"r": 20 + rng.random(4) * 10, "f": 10 + rng.random(4) * 5}},
        }
        for d in range(5)
    ]
    choice = [1, 0, 3, 2, 1]
    rec, ret = analysis.draw_changes(docs, "0.5", choice, [np.arange(5), np.array([2])])
    np.testing.assert_allclose((rec[0], ret[0]), analysis.metric(docs, "0.5", choice))
    c = docs[2]["rates"]["0.5"]
    assert np.isclose(rec[1], (c["r"][0] - c["r"][3]) / 42.0) and np.isclose(
        ret[1], (c["f"][0] - c["f"][3]) / 23.0
    )


def test_second_round_choice_is_two_round_refine_lookahead(
    analysis: ModuleType, tiny_recon, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """run_candidates.py's second round (children of each first-round winner), read back by
    second_round_choice, gives the masks of RecoverabilitySearch(rounds=2), mask for mask."""
    runner = load_benchmark("run_candidates")
    rng = np.random.default_rng(9)  # a seed where round 2 moves again in two of four documents
    contexts = [rng.integers(100, 5000, size=64).tolist() for _ in range(4)]
    rate, tokens, protect, tolerance = 0.5, 4, 12, 0.05
    path = tmp_path / "candidates.json"
    _candidate_file(tiny_recon, contexts, rate, 8, path, moves=GUARD_MOVES, soft=tokens, spare=protect)
    data = json.loads(path.read_text())
    proposals = [np.asarray(m) for m in Truncation(tiny_recon.tokenizer).keep_masks(contexts, rate)]
    owners, masks, kinds, r, s = [], [], [], [], []
    for d, x in enumerate(data["documents"]):
        c = x["rates"][str(rate)]
        owners += [d] * len(c["r"])
        masks += [np.frombuffer(k.encode(), dtype=np.uint8) == ord("1") for k in c["keep"]]
        kinds += list(c["kind"])
        r += c["r"]
        s += c["s"]
    new_owners, new_masks, parents, expanded = runner.second_round(
        proposals,
        owners,
        masks,
        kinds,
        np.array(r),
        np.array([s]),
        GUARD_MOVES,
        8,
        [tokens * tolerance],
        protect,
    )
    assert new_masks  # some first-round winner moved and has children
    sep = separator_ids(tiny_recon)
    paths = [p[0] for p in judge_continuations(tiny_recon, contexts, tokens)]
    for d, x in enumerate(data["documents"]):
        c = x["rates"][str(rate)]
        rows = [i for i, o in enumerate(new_owners) if o == d]
        first = [i for i, o in enumerate(owners) if o == d][0]
        prefixes = [np.asarray(contexts[d])[new_masks[i]].tolist() for i in rows]
        c["keep"] += ["".join("1" if k else "0" for k in new_masks[i]) for i in rows]
        c["kind"] += "2" * len(rows)
        c["parent"] = [-1] * len(c["r"]) + [parents[i] - first for i in rows]
        c["expanded"] = [p - first for p in expanded if owners[p] == d]
        c["r"] += recovery_nlls(tiny_recon, prefixes, [contexts[d]] * len(rows), sep).tolist() if rows else []
        c["s"] += (
            soft_continuation_nlls(tiny_recon, prefixes, [d] * len(rows), contexts, paths).tolist()
            if rows
            else []
        )
        c["f"] += [0.0] * len(rows)
    path.write_text(json.dumps(data))
    docs = analysis.load(str(path))
    first_choice = analysis.lookahead_choice(docs, str(rate), protect, None, tolerance, tokens=tokens)
    choice = analysis.second_round_choice(docs, str(rate), first_choice, tolerance, tokens=tokens)
    method = _lookahead_search(tiny_recon, protect, tokens, tolerance, rounds=2)
    for doc, picked, keep in zip(docs, choice, method.keep_masks(contexts, rate)):
        np.testing.assert_array_equal(doc["rates"][str(rate)]["masks"][picked], keep)
    assert any(
        doc["rates"][str(rate)]["kind"][c] == "2" for doc, c in zip(docs, choice)
    )  # round 2 won somewhere


def test_base_nlls_sum_to_the_files_r_and_are_cached(
    analysis: ModuleType, tiny_recon, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The pointer's per-token NLLs under the base prefix sum to the file's R of the base mask, those under
    the empty prefix to R(empty); the estimate column is their difference over a move; the cache is read back."""
    rng = np.random.default_rng(3)
    contexts = [rng.integers(100, 5000, size=64).tolist() for _ in range(3)]
    path = tmp_path / "candidates.json"
    _candidate_file(tiny_recon, contexts, 0.5, 8, path)
    docs = analysis.load(str(path))
    nlls = analysis.base_nlls(str(path), docs, judge=tiny_recon)
    sep = separator_ids(tiny_recon)
    np.testing.assert_allclose(nlls["b_0.5"].sum(1), [x["rates"]["0.5"]["r"][0] for x in docs], rtol=1e-4)
    np.testing.assert_allclose(
        nlls["e"].sum(1), recovery_nlls(tiny_recon, [[]] * 3, contexts, sep), rtol=1e-4
    )
    c = docs[1]["rates"]["0.5"]
    base, move = c["masks"][0], c["masks"][1]
    row = analysis.nll_features(nlls["b_0.5"][1], nlls["e"][1], base, move)
    assert len(row) == analysis.NLL_FEATURES
    run, gone = move & ~base, base & ~move
    assert np.isclose(row[4] * 50, nlls["b_0.5"][1][run].sum() - nlls["e"][1][gone].sum())
    cached = analysis.base_nlls(str(path), docs)  # no judge: read from .basenll.npz
    np.testing.assert_array_equal(cached["b_0.5"], nlls["b_0.5"])


def test_pointer_rows_keep_refine_lookaheads_moves_and_add_the_nll_block(
    analysis: ModuleType, tiny_recon, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """With a protected tail only the moves that keep the base's last kept tokens are rows; --base_nll adds
    NLL_FEATURES columns; the targets are the judged R gains over the files' mean R(empty) - R(full)."""
    rng = np.random.default_rng(4)
    contexts = [rng.integers(100, 5000, size=64).tolist() for _ in range(2)]
    path = tmp_path / "candidates.json"
    _candidate_file(tiny_recon, contexts, 0.5, 8, path, moves=GUARD_MOVES)
    data = json.loads(path.read_text())
    for x in data["documents"]:  # pointer_rows reads every rate of a full file: copy the one judged rate
        x["rates"] = {rate: x["rates"]["0.5"] for rate in analysis.RATES}
        x["r_empty"], x["r_full"] = 5.0, 1.0
    path.write_text(json.dumps(data))
    docs = analysis.load(str(path))
    np.save(
        path.with_suffix(".features.npy"), rng.random((2, 64, 5)).astype(np.float32)
    )  # the one-pass features' cache
    analysis.base_nlls(str(path), docs, judge=tiny_recon)
    _, keys, x_all, _ = analysis.pointer_rows(str(path))
    got, keys_p, x_p, y_p = analysis.pointer_rows(str(path), protect=12, with_nll=True)
    assert x_p.shape[1] == x_all.shape[1] + analysis.NLL_FEATURES
    assert 0 < len(keys_p) < len(keys)
    for (d, rate, j), y in zip(keys_p, y_p):
        c = got[d]["rates"][rate]
        assert c["masks"][j][np.flatnonzero(c["masks"][0])[-12:]].all()
        assert np.isclose(y[0], (c["r"][0] - c["r"][j]) / 4.0, rtol=1e-5)
    dropped_tail = [
        (d, r, j)
        for d, r, j in keys
        if not docs[d]["rates"][r]["masks"][j][np.flatnonzero(docs[d]["rates"][r]["masks"][0])[-12:]].all()
    ]
    assert dropped_tail and not set(dropped_tail) & set(keys_p)


@pytest.mark.parametrize("k", [2, 1000])
def test_proposal_choice_is_refine_lookahead_pk(
    analysis: ModuleType, tiny_recon, tmp_path: Path, k: int
) -> None:  # type: ignore[no-untyped-def]
    """The proposals report's choice from a judged file (moves ranked by the estimate of base_nlls, the best k
    judged, the shipped tail and tolerance) is refine_lookahead:pK's, mask for mask."""
    from tokenmask.evaluate.refine import LOOKAHEAD_PROTECT, LOOKAHEAD_TOKENS, LOOKAHEAD_TOLERANCE

    rng = np.random.default_rng(6)
    contexts = [rng.integers(100, 5000, size=128).tolist() for _ in range(3)]
    path = tmp_path / "candidates.json"
    _candidate_file(tiny_recon, contexts, 0.5, 8, path, moves=GUARD_MOVES, soft=LOOKAHEAD_TOKENS)
    docs = analysis.load(str(path))
    arrays = analysis.base_nlls(str(path), docs, judge=tiny_recon)
    nlls = [{key: v[i] for key, v in arrays.items()} for i in range(len(docs))]
    choice = analysis.proposal_choice(docs, nlls, "0.5", k)
    method = _lookahead_search(
        tiny_recon, LOOKAHEAD_PROTECT, LOOKAHEAD_TOKENS, LOOKAHEAD_TOLERANCE, proposals=k
    )
    for doc, picked, keep in zip(docs, choice, method.keep_masks(contexts, 0.5)):
        np.testing.assert_array_equal(doc["rates"]["0.5"]["masks"][picked], keep)
    if k == 1000:  # every move judged: the rule's own choice
        assert choice == analysis.lookahead_choice(docs, "0.5", LOOKAHEAD_PROTECT, None, LOOKAHEAD_TOLERANCE)
