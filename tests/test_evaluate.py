"""The method registry, the in-model interface and ``tokenmask evaluate`` end to end (tiny random judge)."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from tokenmask.cli import main
from tokenmask.evaluate import compressor as registry
from tokenmask.evaluate.bar import bar_from_file
from tokenmask.evaluate.compressor import (
    InModelCompressor,
    InModelResult,
    InModelScore,
    MethodContext,
    build_method,
    parse_method_names,
    register_method,
)
from tokenmask.evaluate.evaluator import Evaluator
from tokenmask.evaluate.metrics import continuation_nlls, recovery_nlls, select_documents
from tokenmask.evaluate.reports import (
    PARETO_PLOT,
    RECOVERABILITY_PLOT,
    RESULTS_FILE,
    RETENTION_PLOT,
    TABLE_FILE,
    load_results,
    plot_pareto,
)
from tokenmask.evaluate.runner import EvaluateConfig


class KeepLastPositions:
    """An in-model compressor that keeps the last positions of BOS + context (StreamingLLM without sinks).

    Keeping positions of a causal LM's cache without merging them equals reading the kept tokens,
    so the judge scores it with the same passes as a text compressor.
    """

    name = "keep_last_positions"

    def score(self, judge, contexts, continuations, sep, rate, seed=0):  # type: ignore[no-untyped-def]
        kept = [list(c)[len(c) - int(round(len(c) * (1 - rate))) :] for c in contexts]
        r = recovery_nlls(judge, kept, contexts, sep)
        f = continuation_nlls(judge, kept, continuations)
        scores = [
            InModelScore(float(a), float(b), len(k), len(c)) for a, b, k, c in zip(r, f, kept, contexts)
        ]
        return InModelResult(scores=scores)


def test_unknown_method_names_the_known_ones(tiny_recon) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="Unknown method 'nonsense'.*truncation"):
        build_method("nonsense", MethodContext(judge=tiny_recon))


@pytest.fixture()
def scratch_registry(monkeypatch):  # type: ignore[no-untyped-def]
    """Registrations made by a test are undone after it."""
    registry.registered_methods()  # built-ins first, so they stay registered
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_register_method_passes_the_argument(tiny_recon, scratch_registry) -> None:  # type: ignore[no-untyped-def]
    seen: list[str] = []

    def factory(argument: str, context: MethodContext) -> InModelCompressor:
        seen.append(argument)
        return KeepLastPositions()

    register_method("keep_last_test", factory, overwrite=True)
    method = build_method("keep_last_test:some/path", MethodContext(judge=tiny_recon))
    assert isinstance(method, InModelCompressor) and seen == ["some/path"]
    with pytest.raises(ValueError, match="already registered"):
        register_method("keep_last_test", lambda a, c: KeepLastPositions())
    with pytest.raises(ValueError, match="must be non-empty"):
        register_method("bad prefix", factory)


def test_plugins_register_themselves_when_first_named(
    tiny_recon, tmp_path, monkeypatch, scratch_registry
) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "tm_plugin_for_test.py").write_text(
        textwrap.dedent(
            """
            from tokenmask.evaluate.baselines import Truncation
            from tokenmask.evaluate.compressor import register_method
            register_method("plugtest", lambda arg, ctx: Truncation(ctx.judge.tokenizer, keep=arg or "last"))
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.PLUGIN_MODULES, "plugtest", ("tm_plugin_missing", "tm_plugin_for_test"))
    assert "tm_plugin_for_test" not in sys.modules
    method = build_method("plugtest:first", MethodContext(judge=tiny_recon))
    assert method.name == "truncation_first"


def test_parse_method_names() -> None:
    assert parse_method_names(" random, agent:runs/x ,random,") == ["random", "agent:runs/x"]
    with pytest.raises(ValueError, match="No method named"):
        parse_method_names(" , ")


def test_in_model_compressor_is_scored_like_its_text_equivalent(tiny_recon) -> None:  # type: ignore[no-untyped-def]
    texts = ["Functions are first-class objects: they can be passed, returned and stored in lists. " * 3] * 2
    docs = select_documents(texts, tiny_recon, 24, 8)
    evaluator = Evaluator(tiny_recon, docs)
    in_model = evaluator.evaluate(KeepLastPositions(), 0.5)
    text = evaluator.evaluate(build_method("truncation", MethodContext(judge=tiny_recon)), 0.5)
    assert in_model.rate == pytest.approx(0.5)
    assert in_model.recoverability == pytest.approx(text.recoverability, abs=1e-5)
    assert in_model.retention == pytest.approx(text.retention, abs=1e-5)
    identity = evaluator.evaluate(KeepLastPositions(), 0.0)
    assert identity.rate == 0.0 and identity.recoverability == pytest.approx(1.0, abs=1e-5)


def test_config_rejects_bad_rates_and_counts() -> None:
    with pytest.raises(ValueError, match=r"outside \[0, 1\)"):
        EvaluateConfig(rates=[0.5, 1.0])
    with pytest.raises(ValueError, match="num_documents"):
        EvaluateConfig(num_documents=0)
    with pytest.raises(ValueError, match="Unknown warmup 'twice'"):
        EvaluateConfig(warmup="twice")


def _counted_truncation(recon):  # type: ignore[no-untyped-def]
    """Three short documents and truncation whose ``compress`` records how many contexts each call got."""
    texts = ["Functions are first-class objects: they can be passed, returned and stored in lists. " * 3] * 3
    docs = select_documents(texts, recon, 24, 8)
    method = build_method("truncation", MethodContext(judge=recon))
    seen: list[int] = []
    compress = method.compress
    method.compress = lambda contexts, *a, **k: seen.append(len(contexts)) or compress(contexts, *a, **k)  # type: ignore[method-assign]
    return docs, method, seen


@pytest.mark.parametrize(
    ("warmup", "calls"), [("one", [1, 3]), ("all", [3, 3]), ("none", [3]), (True, [1, 3]), ("auto", [1, 3])]
)
def test_warmup_compresses_before_the_timed_call(tiny_recon, warmup, calls) -> None:  # type: ignore[no-untyped-def]
    """The untimed call before each timed one: the first document, every document (a batched method's shapes are
    warm too), or nothing; the scores do not depend on it."""
    docs, method, seen = _counted_truncation(tiny_recon)
    scores = Evaluator(tiny_recon, docs, warmup=warmup).evaluate(method, 0.5)
    assert seen == calls
    assert scores.recoverability == pytest.approx(
        Evaluator(tiny_recon, docs).evaluate(method, 0.5).recoverability
    )
    with pytest.raises(ValueError, match="Unknown warmup"):
        Evaluator(tiny_recon, docs, warmup="twice")


def test_auto_warmup_warms_every_document_on_a_gpu_only() -> None:
    """``auto`` (the default of ``tokenmask evaluate`` and ``Evaluator``) is ``all`` on cuda and ``one`` elsewhere."""
    from tokenmask.evaluate.compressor import resolve_warmup

    assert resolve_warmup("auto", "cuda") == "all"
    assert resolve_warmup("auto", "cpu") == resolve_warmup("auto", "mps") == "one"
    assert [resolve_warmup(w, "cuda") for w in ("one", "all", "none", True, False)] == [
        "one",
        "all",
        "none",
        "one",
        "none",
    ]
    assert EvaluateConfig().warmup == "auto"
    with pytest.raises(ValueError, match="Unknown warmup 'twice'. Fix"):
        resolve_warmup("twice", "cpu")


def test_evaluate_command_writes_every_report(tiny_judge_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    code = main(
        [
            "evaluate", "--judge", str(tiny_judge_dir), "--corpus", "sample", "--methods", "truncation,random,frequency",
            "--rates", "0.3,0.5", "--num_documents", "3", "--recoverability_documents", "2", "--context_tokens", "32",
            "--continuation_tokens", "8", "--device", "cpu", "--output_dir", str(out), "--no_progress",
        ]
    )  # fmt: skip
    assert code == 0
    for name in (RESULTS_FILE, TABLE_FILE, RECOVERABILITY_PLOT, RETENTION_PLOT, PARETO_PLOT):
        assert (out / name).stat().st_size > 0
    for name in (RECOVERABILITY_PLOT, PARETO_PLOT):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = sorted(p.name for p in (out / "tensorboard").iterdir())
    assert runs == ["frequency", "random", "truncation"]
    assert all(
        any(f.name.startswith("events.out.tfevents") for f in (out / "tensorboard" / r).iterdir())
        for r in runs
    )
    rows = load_results(out)
    assert [(r["method"], r["requested_rate"]) for r in rows] == [
        (m, r) for m in ("truncation", "random", "frequency") for r in (0.3, 0.5)
    ]
    for row in rows:
        assert row["documents"] == 3 and row["recoverability_documents"] == 2
        assert abs(row["rate"] - row["requested_rate"]) < 0.05
        assert np.isfinite(row["recoverability"]) and np.isfinite(row["recon_bits_per_masked"])
    table = (out / TABLE_FILE).read_text()
    assert "| truncation | 0.30 |" in table
    # the closing verdicts end the file as the command prints them (no LLMLingua here: speed not judged)
    assert "On the Pareto front" in table and "Worth shipping by docs/evaluation.md" in table
    assert "speed is not judged" in table.splitlines()[-1]
    # what the bar's intervals need is kept: per-document NLLs of every row and the references
    reference = json.loads((out / RESULTS_FILE).read_text())["reference"]
    assert {k: len(v) for k, v in reference.items()} == {
        "recover_empty": 2, "recover_full": 2, "continue_empty": 3, "continue_full": 3
    }  # fmt: skip
    assert all(len(r["recover_nlls"]) == 2 and len(r["continue_nlls"]) == 3 for r in rows)
    by_key = {(r["method"], r["requested_rate"]): r for r in rows}
    bar = bar_from_file(out)
    assert {(b.method, b.requested_rate) for b in bar} == {
        (m, r) for m in ("random", "frequency") for r in (0.3, 0.5)
    }
    for b in bar:
        row, base = by_key[(b.method, b.requested_rate)], by_key[("truncation", b.requested_rate)]
        assert b.d_rec == pytest.approx(row["recoverability"] - base["recoverability"])
        assert b.d_ret == pytest.approx(row["retention"] - base["retention"])
    assert "| random | 0.50 |" in table.split("Against truncation")[1]
    setting = json.loads((out / RESULTS_FILE).read_text())["setting"]
    assert setting["context_tokens"] == 32
    # the documents' own sources (the corpus's "source" field), which the bar's draws take whole
    from tokenmask.data import iter_records

    named = {r["source"] for r in iter_records("sample")}
    assert len(setting["sources"]) == 3 and set(setting["sources"]) <= named
    assert setting["config"]["bootstrap_unit"] == "source"
    assert "sources of the 3 documents" in table


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "truncation,nonsense"], "Unknown method 'nonsense'"),
        (["--rates", "0.5,1.2"], "outside [0, 1)"),
        (["--context_tokens", "5000"], "No document of the corpus has C+T"),
        (["--bootstrap_unit", "page"], "Unknown bootstrap unit 'page'. Fix: use one of source, document"),
    ],
)
def test_evaluate_command_bad_input_is_one_clear_line(
    args: Sequence[str],
    message: str,
    tiny_judge_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = ["evaluate", "--judge", str(tiny_judge_dir), "--corpus", "sample", "--num_documents", "2",
            "--context_tokens", "32", "--continuation_tokens", "8", "--device", "cpu", "--no_progress",
            "--output_dir", str(tmp_path / "x")]  # fmt: skip
    assert main([*base, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.strip().splitlines()[-1].startswith("tokenmask evaluate: error:")
    assert not (tmp_path / "x").exists()


def test_baselines_command_refuses_other_methods(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["baselines", "--methods", "truncation,agent:runs/x", "--no_progress"]) == 2
    assert "runs baselines only" in capsys.readouterr().err


def test_evaluate_replaces_only_its_own_output(
    tiny_judge_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    base = ["evaluate", "--judge", str(tiny_judge_dir), "--corpus", "sample", "--num_documents", "2",
            "--recoverability_documents", "1", "--context_tokens", "32", "--continuation_tokens", "8", "--device", "cpu",
            "--no_progress", "--tensorboard", "false", "--output_dir", str(out)]  # fmt: skip
    assert main([*base, "--methods", "truncation", "--rates", "0.5"]) == 2
    assert "did not write" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    assert main([*base, "--methods", "truncation", "--rates", "0.5", "--overwrite"]) == 0
    assert [r["method"] for r in load_results(out)] == ["truncation"]
    assert main([*base, "--methods", "random", "--rates", "0.5"]) == 0  # its own folder: replaced whole
    assert [r["method"] for r in load_results(out)] == ["random"]
    assert not (out / "mine.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]  # no temporary, backup or lock left


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"results": 3}'])
def test_damaged_results_file_is_a_clear_error(tmp_path: Path, content: str) -> None:
    from tokenmask.errors import CorruptFileError

    (tmp_path / RESULTS_FILE).write_text(content)
    with pytest.raises(CorruptFileError, match=r"results.json is damaged.*Fix: run tokenmask evaluate again"):
        load_results(tmp_path)


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG that Pillow reads whole (``verify`` checks every chunk's CRC)."""
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        image.load()
        return image.size


def test_pareto_plot_of_a_small_results_dict(tmp_path: Path) -> None:
    """One panel per rate: a wider image for two rates; rows without a figure are no error; the script redraws it."""
    import subprocess

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "pareto_plot.py"

    def pareto_main(args: list[str]) -> int:
        return subprocess.run([sys.executable, str(script), *args], check=False).returncode

    def row(
        method: str, asked: float, rate: float, rec: float | None, ret: float | None
    ) -> dict[str, object]:
        return {
            "method": method,
            "requested_rate": asked,
            "rate": rate,
            "recoverability": rec,
            "retention": ret,
        }

    rows = [
        row("truncation", 0.3, 0.30, 0.67, 0.96),
        row("agent:runs/x", 0.3, 0.30, 0.70, 0.95),
        row("span_self_information", 0.3, 0.30, 0.70, 0.79),
        row("truncation", 0.5, 0.50, 0.48, 0.93),
        row("agent:runs/x", 0.5, 0.50, 0.49, 0.91),
        row("activation:cfg", 0.5, 0.10, None, 0.99),  # no recoverability: listed, not drawn
    ]
    setting = {"judge": "tiny", "documents": 3}
    one = tmp_path / "one.png"
    one.write_bytes(plot_pareto([r for r in rows if r["requested_rate"] == 0.5], setting))
    two = tmp_path / "two.png"
    two.write_bytes(plot_pareto(rows, setting))
    (w1, h1), (w2, h2) = _png_size(one), _png_size(two)
    assert w2 > 1.5 * w1 and h1 == h2 and h1 > 100
    assert plot_pareto([row("random", 0.5, 0.5, 0.1, 0.3)])[:8] == b"\x89PNG\r\n\x1a\n"  # no truncation row
    with pytest.raises(ValueError, match="No result row"):
        plot_pareto([])
    (tmp_path / RESULTS_FILE).write_text(json.dumps({"setting": setting, "results": rows}))
    out = tmp_path / "docs" / "pareto.png"
    assert pareto_main([str(tmp_path / RESULTS_FILE), str(out)]) == 0
    assert _png_size(out) == (w2, h2)
    assert pareto_main([str(tmp_path), str(out)]) == 0  # the folder holding results.json works too
    assert sorted(p.name for p in out.parent.iterdir()) == ["pareto.png"]  # no temporary left
    # one run per rate on the same documents: drawn as one figure, as the two-rate file is
    for asked in (0.3, 0.5):
        (tmp_path / f"r{asked}").mkdir()
        runs = [r for r in rows if r["requested_rate"] == asked]
        (tmp_path / f"r{asked}" / RESULTS_FILE).write_text(json.dumps({"setting": setting, "results": runs}))
    merged = tmp_path / "merged.png"
    assert pareto_main([str(tmp_path / "r0.3"), str(tmp_path / "r0.5"), str(merged)]) == 0
    assert _png_size(merged) == (w2, h2)
    (tmp_path / "r0.5" / RESULTS_FILE).write_text(
        json.dumps({"setting": setting, "results": rows[3:], "reference": {"recover_empty": [1.0]}})
    )
    assert pareto_main([str(tmp_path / "r0.3"), str(tmp_path / "r0.5"), str(merged)]) != 0  # other documents


def test_timing_repeats_time_several_calls_and_score_the_first(tiny_recon, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """``timing_repeats=N``: N synchronised timed calls after the warm-up; the reported time is their median and
    the first call's outputs are scored. ``auto`` is three on cuda and one elsewhere; bad values are errors."""
    import itertools

    import tokenmask.evaluate.evaluator as evaluator_module
    from tokenmask.evaluate.compressor import resolve_timing_repeats

    docs, method, seen = _counted_truncation(tiny_recon)
    clock = itertools.cycle([0.5, 0.1, 0.3])  # seconds of the timed calls, in order

    def fake_timed_call(device, fn):  # type: ignore[no-untyped-def]
        return fn(), next(clock)

    monkeypatch.setattr(evaluator_module, "timed_call", fake_timed_call)
    counted = method.compress
    calls = itertools.count()
    # the second and third timed calls compress at another rate: scoring them would change every figure
    method.compress = lambda contexts, rate, **k: counted(contexts, rate if next(calls) == 0 else 0.9, **k)  # type: ignore[method-assign]
    evaluator = Evaluator(tiny_recon, docs, warmup="none", timing_repeats=3)
    evaluation = evaluator.compress_and_score(method, 0.5)
    method.compress = counted  # type: ignore[method-assign]
    assert seen == [3, 3, 3]
    assert evaluation.scores.compress_ms_per_1k_tokens == pytest.approx(0.3 * 1e6 / evaluator.context_tokens)
    per_1k = [t * 1e6 / evaluator.context_tokens for t in (0.5, 0.1, 0.3)]
    assert evaluation.scores.compress_ms_calls == pytest.approx(per_1k)
    once = Evaluator(tiny_recon, docs, warmup="none").compress_and_score(
        method, 0.5
    )  # auto on this CPU: one call
    assert [o.text for o in evaluation.outputs] == [o.text for o in once.outputs]
    assert evaluation.scores.recoverability == pytest.approx(once.scores.recoverability)
    assert resolve_timing_repeats("auto", "cuda") == 3
    assert resolve_timing_repeats("auto", "cpu") == resolve_timing_repeats(1, "cuda") == 1
    assert EvaluateConfig().timing_repeats == "auto"
    assert EvaluateConfig(timing_repeats=5).timing_repeats == 5
    for bad in (0, "twice", True):
        with pytest.raises(ValueError, match="timing_repeats must be 'auto' or an integer >= 1"):
            resolve_timing_repeats(bad, "cpu")
    with pytest.raises(ValueError, match="timing_repeats"):
        EvaluateConfig(timing_repeats="twice")
