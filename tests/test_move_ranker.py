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


def _groups_file(tiny_recon, path: Path, seed: int, soft: int = 0) -> Path:  # type: ignore[no-untyped-def]
    """A candidate file of three contexts, its one judged rate copied to every rate, with the pointer's caches."""
    analysis = load_benchmark("candidate_analysis")
    rng = np.random.default_rng(seed)
    contexts = [rng.integers(100, 5000, size=96).tolist() for _ in range(3)]
    _candidate_file(tiny_recon, contexts, 0.5, 8, path, moves=GUARD_MOVES, soft=soft)
    data = json.loads(path.read_text())
    for x in data["documents"]:
        x["rates"] = {rate: x["rates"]["0.5"] for rate in analysis.RATES}
        x["rates"]["0.5"] = dict(x["rates"]["0.5"], f=rng.random(len(x["rates"]["0.5"]["r"])).tolist())
        x["r_empty"], x["r_full"] = 400.0, 100.0
    path.write_text(json.dumps(data))
    np.save(path.with_suffix(".features.npy"), rng.random((3, 96, 5)).astype(np.float32))
    analysis.base_nlls(str(path), analysis.load(str(path)), judge=tiny_recon)
    return path


@pytest.fixture
def groups_file(ranker_module: ModuleType, tiny_recon, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    return _groups_file(tiny_recon, tmp_path / "candidates.json", 6)


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


def test_main_scores_every_choice_and_keeps_the_predictions(
    ranker_module: ModuleType, tiny_recon, tiny_judge_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The command end to end (tiny judge, CPU): every row has both changes at every rate, and each ranker's
    predictions are kept per validation context and rate, one (dR, dF) pair per candidate of the file."""
    analysis = load_benchmark("candidate_analysis")
    train = _groups_file(tiny_recon, tmp_path / "train.json", 7)
    validation = _groups_file(tiny_recon, tmp_path / "validation.json", 8, soft=4)
    out = tmp_path / "ranker.json"
    argv = ["--train", str(train), "--validation", str(validation), "--epochs", "2", "--batch", "3"]
    argv += ["--model", str(tiny_judge_dir), "--device", "cpu", "--json", str(out)]
    assert ranker_module.main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {
        "LM ranker (fine-tuned judge)",
        "hand-feature MLP (same data)",
        "refine_lookahead (the search's rule)",
    } <= set(rows)
    for row in rows.values():
        assert all(set(row[rate]) >= {"d_rec", "d_ret", "interval"} for rate in analysis.RATES)
    _, groups = ranker_module.load_groups(str(validation))
    kept = rows["LM ranker (fine-tuned judge)"]["predictions"]
    assert [(k["doc"], k["rate"], k["index"]) for k in kept] == [
        (g.doc, g.rate, g.index.tolist()) for g in groups
    ]
    assert all(np.asarray(k["pred"]).shape == (len(k["index"]), 2) for k in kept)
