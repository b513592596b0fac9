"""benchmarks/move_ranker.py and run_candidates.py's windows: groups as the files hold them, fitting lowers the loss (tiny model)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from conftest import load_benchmark
from test_candidate_analysis import _candidate_file

from tokenmask.evaluate.refine import GUARD_MOVES


@pytest.fixture(scope="module")
def ranker_module() -> ModuleType:
    load_benchmark("candidate_analysis")  # move_ranker imports it by name
    return load_benchmark("move_ranker")


def test_document_windows_cut_every_offset_that_fits(tiny_recon) -> None:  # type: ignore[no-untyped-def]
    """Each window is the text's ids at its offset, context then continuation; offsets past the end are left out."""
    module = load_benchmark("run_candidates")
    texts = ["word " * 30, "other text " * 5, "more words here " * 20]
    windows = module.document_windows(texts, tiny_recon, [0, 16, 64], None, context=16, continuation=8)
    want = []
    for i, text in enumerate(texts):
        ids = tiny_recon.encode(text)
        want += [
            (f"{i}@{o}", ids[o : o + 16], ids[o + 16 : o + 24]) for o in (0, 16, 64) if o + 24 <= len(ids)
        ]
    assert [(w.source, w.context, w.continuation) for w in windows] == want
    assert len({w.source.split("@")[0] for w in windows}) == 2  # the short text gives none
    assert len(module.document_windows(texts, tiny_recon, [0, 16, 64], 2, context=16, continuation=8)) == 2


@pytest.fixture
def groups_file(ranker_module: ModuleType, tiny_recon, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    """A candidate file of three contexts, its one judged rate copied to every rate, with the pointer's caches."""
    analysis = load_benchmark("candidate_analysis")
    rng = np.random.default_rng(6)
    contexts = [rng.integers(100, 5000, size=96).tolist() for _ in range(3)]
    path = tmp_path / "candidates.json"
    _candidate_file(tiny_recon, contexts, 0.5, 8, path, moves=GUARD_MOVES)
    data = json.loads(path.read_text())
    for x in data["documents"]:
        x["rates"] = {rate: x["rates"]["0.5"] for rate in analysis.RATES}
        x["rates"]["0.5"] = dict(x["rates"]["0.5"], f=rng.random(len(x["rates"]["0.5"]["r"])).tolist())
        x["r_empty"], x["r_full"] = 400.0, 100.0
    path.write_text(json.dumps(data))
    np.save(path.with_suffix(".features.npy"), rng.random((3, 96, 5)).astype(np.float32))
    analysis.base_nlls(str(path), analysis.load(str(path)), judge=tiny_recon)
    return path


def test_groups_hold_the_files_moves_and_choices_take_the_best(
    ranker_module: ModuleType, groups_file: Path
) -> None:
    """One group per document and rate; its added and dropped tokens are the move's against the base, its
    gains the pointer's targets; with the judged gains as predictions the choice is the best move, or the base."""
    analysis = load_benchmark("candidate_analysis")
    docs, groups = ranker_module.load_groups(str(groups_file))
    _, keys, x, y = analysis.pointer_rows(str(groups_file), ranker_module.PROTECT, with_nll=True)
    assert len(groups) == 3 * len(analysis.RATES) and sum(len(g.index) for g in groups) == len(keys)
    for g in groups:
        c = docs[g.doc]["rates"][g.rate]
        for j, added, dropped in zip(g.index, g.added, g.dropped):
            np.testing.assert_array_equal(added, c["masks"][j] & ~c["masks"][0])
            np.testing.assert_array_equal(dropped, c["masks"][0] & ~c["masks"][j])
    np.testing.assert_allclose(np.concatenate([g.gains for g in groups]), y)
    np.testing.assert_allclose(np.concatenate([g.features for g in groups]), x)
    for rate in analysis.RATES:
        picks = ranker_module.choices(groups, [g.gains for g in groups], docs, rate)
        for g in (g for g in groups if g.rate == rate):
            best = g.gains[:, 0].max()
            assert picks[g.doc] == (g.index[int(np.argmax(g.gains[:, 0]))] if best > 0 else 0)
        # dF weighs in with mu: a huge weight picks the best predicted dF among positive scores
        picks_f = ranker_module.choices(groups, [g.gains for g in groups], docs, rate, mu=1e6)
        for g in (g for g in groups if g.rate == rate):
            if g.gains[:, 1].max() > 0:
                assert picks_f[g.doc] == g.index[int(np.argmax(g.gains[:, 1]))]


@pytest.mark.parametrize("lm", [False, True])
def test_fitting_lowers_the_loss_on_its_groups(
    ranker_module: ModuleType, groups_file: Path, tiny_judge_dir: Path, lm: bool
) -> None:
    """The hand-feature MLP and the LM ranker (tiny random backbone, on the CPU) fit their training groups:
    the loss falls over the epochs, and the predictions are one (dR, dF) pair per move."""
    import torch

    _, groups = ranker_module.load_groups(str(groups_file))
    x = np.concatenate([g.features for g in groups])
    y = np.concatenate([g.gains for g in groups])
    torch.manual_seed(0)
    ranker = ranker_module.Ranker(x.mean(0), x.std(0) + 1e-6, y.std(0), lm, "cpu", str(tiny_judge_dir))
    losses = ranker_module.fit(ranker, groups, epochs=12, batch=3, seed=0, tau=0.5)
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    preds = ranker.predict(groups, batch=4)
    assert [p.shape for p in preds] == [(len(g.index), 2) for g in groups]
