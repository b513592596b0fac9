"""benchmarks/foresight_oracle.py: its file holds the move table's gains token by token, its rule is the search's, and
its oracle guards do what they say (tiny random judge, no times)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from conftest import load_benchmark

from tokenmask.envs.moves import MoveTable, build_move_table
from tokenmask.evaluate.compressor import MethodContext, build_method
from tokenmask.evaluate.metrics import EvalDocument
from tokenmask.testing import random_documents

RATES = [0.5, 0.7]


@pytest.fixture(scope="module")
def oracle() -> ModuleType:
    return load_benchmark("foresight_oracle")


@pytest.fixture(scope="module")
def documents() -> list[EvalDocument]:
    return random_documents(4, seed=1)


@pytest.fixture(scope="module")
def search(tiny_recon):  # type: ignore[no-untyped-def]
    return build_method("refine_lookahead:p4:truncation", MethodContext(judge=tiny_recon))


@pytest.fixture(scope="module")
def files(oracle, tiny_recon, search, documents, tmp_path_factory) -> list[Path]:  # type: ignore[no-untyped-def]
    """Two files (the first two and the last two documents), as two splits would be."""
    folder = tmp_path_factory.mktemp("foresight")
    out = []
    for name, part in (("a", documents[:2]), ("b", documents[2:])):
        arrays = oracle.judge_split(search, tiny_recon, part, RATES, chunk=1)
        oracle.save(folder / f"{name}.npz", arrays, {"split": name})
        out.append(folder / f"{name}.npz")
    return out


@pytest.fixture(scope="module")
def table(tiny_recon, search, documents) -> MoveTable:  # type: ignore[no-untyped-def]
    return build_move_table(search, tiny_recon, documents, RATES, chunk=2)


def test_file_holds_the_move_tables_gains_token_by_token(oracle, files, table) -> None:  # type: ignore[no-untyped-def]
    """Per row and candidate, the real R and the summed per-token F give the move table's gains; the rule's choice is
    the table's (the search's own), and its changes are the table's corpus changes."""
    data = oracle.Foresight.load(files)
    assert len(set(data.doc.tolist())) == 4 and data.F.shape[2] == 16
    for rate in RATES:
        mine, theirs = data.rows(rate), np.flatnonzero(np.isclose(table.rate, rate))
        order = np.argsort(data.doc[mine], kind="stable")
        mine = mine[order]
        assert data.doc[mine].tolist() == table.document[theirs].tolist()
        for i, j in zip(mine, theirs):
            n = int(data.valid[i].sum())
            assert n == int(table.valid[j].sum())
            np.testing.assert_allclose(
                data.R[i, 0] - data.R[i, :n], table.gain_r[j, :n], rtol=1e-4, atol=1e-3
            )
            f = data.F[i, :n].sum(axis=1)
            np.testing.assert_allclose(f[0] - f, table.gain_f[j, :n], rtol=1e-4, atol=1e-3)
            assert not np.isnan(data.F[i, :n]).any() and np.isnan(data.F[i, n:]).all()
        choice = np.array([data.choose(i, data.rule) for i in mine])
        assert choice.tolist() == table.rule_choices()[theirs].tolist()
        full = np.zeros(len(table), dtype=int)
        full[theirs] = choice
        d_rec, d_ret, moved = data.changes(rate, data.rule)
        want_rec, want_ret = table.changes(full, theirs)
        assert d_rec == pytest.approx(want_rec, abs=1e-5) and d_ret == pytest.approx(want_ret, abs=1e-5)
        assert moved == pytest.approx((choice > 0).mean())


def test_oracle_guards(oracle, files) -> None:  # type: ignore[no-untyped-def]
    """An oracle of unbounded tolerance is no guard; at tolerance 0 a chosen move never costs the foreseen tokens,
    so foreseeing the whole continuation never loses retention on it; with the rule it allows a subset of both."""
    data = oracle.Foresight.load(files)
    free = dict(oracle.guards(data, 0, []))["no guard"]
    tokens = data.F.shape[2]
    for i in range(len(data.rate)):
        n = int(data.valid[i].sum())
        assert data.choose(i, data.oracle(4, np.inf)) == data.choose(i, free)
        both = data.oracle(4, 0.0, with_rule=True)(i, n)
        assert not (both & ~data.oracle(4, 0.0)(i, n)).any() and not (both & ~data.rule(i, n)).any()
        chosen = data.choose(i, data.oracle(4, 0.0))
        assert data.F[i, chosen, :4].sum() <= data.F[i, 0, :4].sum() + 1e-9
    for rate in RATES:
        assert data.changes(rate, data.oracle(tokens, 0.0), first=0)[1] >= -1e-9
        full_sight = data.changes(rate, data.oracle(tokens, 0.0), first=0)
        assert full_sight[2] <= data.changes(rate, free)[2]  # a guard never moves more rows than none


def test_tables_and_summaries(oracle, files, capsys) -> None:  # type: ignore[no-untyped-def]
    """The table has a row per rate, k and guard with the bar's verdict; the concentration terms are the rule's total;
    the analyse command prints them."""
    data = oracle.Foresight.load(files)
    rows = oracle.oracle_table(data, RATES, [0, 4], [0.02])
    assert len(rows) == len(RATES) * (2 + 2 + 2)
    assert {r[-1] for r in rows} <= {"meets", "-"} and rows[0][1] == "0..15" and rows[2][1] == "4..15"
    for rate in RATES:
        rows_at = data.rows(rate)
        total, worst = oracle.concentration(data, rate, top=len(rows_at))
        assert total == pytest.approx(data.changes(rate, data.rule)[1], abs=1e-9)
        assert sum(t for _, t in worst) == pytest.approx(total, abs=1e-9)
        corr, n = oracle.half_correlation(data, rate)
        assert n == 0 or -1.0 <= corr <= 1.0
    oracle.main(["analyse", *map(str, files), "--foresee", "0,4", "--tolerances", "0"])
    out = capsys.readouterr().out
    assert "4 documents" in out and "| 0.7 | 4..15 | oracle, first 4 real tokens, tol 0 |" in out
    with pytest.raises(ValueError, match="got no files"):
        oracle.Foresight.load([])


def test_the_rule_comes_from_the_files_settings(oracle, files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The rule's lookahead and tolerance are the files' (the search's defaults where a file has none); files of
    different rules are not joined."""
    data = oracle.Foresight.load(files)
    assert (data.lookahead, data.tolerance) == (64, 0.02)
    arrays = dict(np.load(files[0]))
    arrays.pop("settings")
    other = tmp_path / "other.npz"
    oracle.save(other, arrays, {"lookahead": 32, "tolerance": 0.01})
    assert (oracle.Foresight.load([other]).lookahead, oracle.Foresight.load([other]).tolerance) == (32, 0.01)
    with pytest.raises(ValueError, match="different lookahead rules"):
        oracle.Foresight.load([files[0], other])


def test_plot(oracle, files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """--plot_sets writes one PNG with a row of panels per file set."""
    png = tmp_path / "oracle.png"
    sets = f"first={files[0]};both={files[0]},{files[1]}"
    oracle.main(
        ["analyse", "--plot_sets", sets, "--foresee", "0,4,8", "--tolerances", "0.02", "--plot", str(png)]
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rarity_places_a_set_among_draws_of_the_reference(oracle, files, capsys) -> None:  # type: ignore[no-untyped-def]
    """The rule's terms give its corpus changes; a set drawn against itself sits inside its own draws; the rarity
    command prints a row per set and rate."""
    data = oracle.Foresight.load(files)
    for rate in RATES:
        terms = oracle.rule_terms(data, rate)
        d_rec, d_ret, _ = data.changes(rate, data.rule)
        assert terms["rec"].sum() / terms["rec_ref"].sum() == pytest.approx(d_rec, abs=1e-9)
        assert terms["ret"].sum() / terms["ret_ref"].sum() == pytest.approx(d_ret, abs=1e-9)
        r = oracle.rarity(data, data, rate, draws=2000, seed=3)
        assert r["n"] == 4 and r["d_ret"] == pytest.approx(d_ret, abs=1e-9)
        assert 0.0 < r["p_low"] <= 1.0 and 0.0 <= r["p_meets"] <= 1.0
        assert oracle.rarity(data, data, rate, first=2, draws=10)["n"] == 2
        assert oracle.rarity(data, data, rate, draws=500, seed=1) == oracle.rarity(
            data, data, rate, draws=500, seed=1
        )
    oracle.main(
        [
            "rarity",
            "--reference",
            ",".join(map(str, files)),
            "--sets",
            f"own={files[0]};both={files[0]},{files[1]}",
        ]
    )
    out = capsys.readouterr().out
    assert out.count("| own |") == len(RATES) and out.count("| both |") == len(RATES)


def test_rarity_by_source_draws_whole_sources(oracle, files, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """``judge`` keeps each document's source; ``--by_source`` draws as many sources as a set's documents come from,
    each with all its documents, and a file without sources is refused with the fix."""
    import dataclasses

    data = oracle.Foresight.load(files)
    assert data.sources is not None and len(data.sources) == len(data.r_empty) == 4
    shared = dataclasses.replace(
        data, sources=np.array(["p", "p", "q", "q"])
    )  # two pages of two documents each
    for rate in RATES:
        r = oracle.rarity(shared, shared, rate, draws=3000, seed=2, by_source=True)
        plain = oracle.rarity(shared, shared, rate, draws=3000, seed=2)
        assert r["sources"] == 2 and r["n"] == 4 and r["d_ret"] == plain["d_ret"]
        assert r["draw_documents"] == 4.0  # two sources of two documents each reach 4 exactly
        assert 0.0 < r["p_low"] <= 1.0
        one = oracle.rarity(shared, shared, rate, first=3, draws=10, by_source=True)
        assert (
            one["sources"] == 2 and one["draw_documents"] == 4.0
        )  # 3 documents: the second source comes whole
    oracle.main(
        ["rarity", "--reference", ",".join(map(str, files)), "--sets", f"own={files[0]}", "--by_source"]
    )
    out = capsys.readouterr().out
    assert "draws of as many documents, in whole sources" in out
    assert out.count("| own | ") == len(RATES) and "| 2 (1 source; draws " in out
    old = tmp_path / "old.npz"
    arrays = {k: v for k, v in np.load(files[0]).items() if k not in ("sources", "settings")}
    oracle.save(old, arrays, {"split": "a"})
    with pytest.raises(ValueError, match="judge"):
        oracle.rarity(oracle.Foresight.load([old]), data, RATES[0], draws=10, by_source=True)
    with pytest.raises(SystemExit, match="add-sources"):
        oracle.main(["rarity", "--reference", str(old), "--sets", f"own={files[0]}", "--by_source"])


def test_add_sources_gives_an_older_file_its_documents_sources(oracle, tiny_recon, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A file judged before ``judge`` kept sources gets them, after the re-selected documents are checked against the
    file's own NLLs; another corpus is refused and leaves the file as it was."""
    import json

    from tokenmask.evaluate.metrics import select_documents
    from tokenmask.reconstructors.judge import continuation_token_nlls

    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]

    def corpus(name: str, seed: int) -> Path:
        local = np.random.default_rng(seed)
        rows = [
            {"text": " ".join(local.choice(words, 420)), "source": f"page{i // 2}.html"} for i in range(5)
        ] + [{"text": "too short", "source": "stub.html"}]
        path = tmp_path / name
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        return path

    mine = corpus("mine.jsonl", 1)
    docs = select_documents(
        [json.loads(x)["text"] for x in mine.read_text().splitlines()], tiny_recon, 256, 64, 4
    )
    f_full = np.stack(
        continuation_token_nlls(
            tiny_recon, [list(d.context) for d in docs], [list(d.continuation) for d in docs]
        )
    )
    old = tmp_path / "old.npz"
    oracle.save(old, {"r_empty": rng.uniform(size=4), "f_full": f_full}, {"split": "test", "n": 4})
    with pytest.raises(ValueError, match="no corpus"):
        oracle.add_sources(old, None, tiny_recon)
    with pytest.raises(ValueError, match="not the file's"):
        oracle.add_sources(old, str(corpus("other.jsonl", 2)), tiny_recon)
    assert "sources" not in np.load(old).files
    assert oracle.add_sources(old, str(mine), tiny_recon) == [
        "page0.html",
        "page0.html",
        "page1.html",
        "page1.html",
    ]
    kept = np.load(old)
    assert kept["sources"].tolist() == ["page0.html", "page0.html", "page1.html", "page1.html"]
    assert json.loads(str(kept["settings"])) == {"split": "test", "n": 4}
    assert np.array_equal(kept["f_full"], f_full)
