"""``tokenmask.compress``: one call from Python; clear errors; methods, run folders and compressor objects."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

import tokenmask
from tokenmask import api, shipped_agent
from tokenmask.api import AgentNotFoundError, CompressionResult
from tokenmask.evaluate.baselines import Truncation

TEXTS = [
    "The import system searches sys.path for a module, then executes it in a fresh namespace.\n"
    "A package is a directory with an __init__ file; its submodules are loaded on demand.",
    "def f(x):\n\treturn x + 1  # names, numbers\n",
    "Café naïve — 日本語 😀 grüße",
    "x = 1",
    "One more short text for the batch.",
]
QUICK = Path(__file__).resolve().parents[1] / "configs" / "dev" / "quick_test.json"


def one_line_with_fix(error: BaseException) -> None:
    message = str(error)
    assert "\n" not in message and "Fix:" in message, message


@pytest.mark.parametrize(
    ("texts", "kind", "match"),
    [
        (5, TypeError, "texts is a int"),
        (b"bytes", TypeError, "texts is a bytes"),
        (None, TypeError, "texts is a NoneType"),
        (["fine", 3], TypeError, r"texts\[1\] is a int"),
        ([], ValueError, "empty list"),
        ("", ValueError, r"texts\[0\] is empty"),
        (["fine", "  \n\t"], ValueError, r"texts\[1\] is empty or only whitespace"),
    ],
)
def test_bad_texts_are_one_line_errors_with_a_fix(texts, kind, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(kind, match=match) as info:
        tokenmask.compress(texts, method="truncation", judge="/nonexistent/never/loaded")
    one_line_with_fix(info.value)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan"), "0.5", True])
def test_a_rate_outside_0_1_is_an_error_with_a_fix(rate) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises((ValueError, TypeError)) as info:
        tokenmask.compress("some text", rate=rate, method="truncation", judge="/nonexistent/never/loaded")
    one_line_with_fix(info.value)


def test_other_arguments_are_checked_before_loading_anything(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    never = "/nonexistent/never/loaded"
    for call, kind, match in [
        (lambda: tokenmask.compress("t", method="nope", judge=never), ValueError, "Unknown method 'nope'"),
        (
            lambda: tokenmask.compress("t", method="truncation", batch_size=0, judge=never),
            ValueError,
            "batch_size",
        ),
        (
            lambda: tokenmask.compress("t", agent=str(tmp_path), method="truncation", judge=never),
            ValueError,
            "Both",
        ),
        (
            lambda: tokenmask.compress("t", agent=str(tmp_path / "missing")),
            AgentNotFoundError,
            "neither 'default' nor a folder",
        ),
        (
            lambda: tokenmask.compress("t", method="activation", judge=never),
            ValueError,
            "compresses inside the model and returns no text",
        ),
        (
            lambda: tokenmask.compress("t", method="move_agent:/no/policy.zip:truncation", judge=never),
            ValueError,
            "no policy file",
        ),
        (lambda: tokenmask.compress("t", agent=None), ValueError, "No agent and no method"),
        (lambda: tokenmask.compress("t", agent=3), TypeError, "agent is a int"),  # type: ignore[call-overload]
    ]:
        with pytest.raises(kind, match=match) as info:
            call()
        one_line_with_fix(info.value)
    monkeypatch.setattr(shipped_agent, "DEFAULT_AGENT_DIR", tmp_path / "agents" / "default")
    with pytest.raises(AgentNotFoundError, match="no agent ships") as info:
        tokenmask.compress("t")
    one_line_with_fix(info.value)


def test_a_text_gives_a_result_and_a_list_gives_results_in_order(tiny_recon) -> None:  # type: ignore[no-untyped-def]
    single = tokenmask.compress(TEXTS[0], rate=0.5, method="truncation", judge=tiny_recon)
    assert isinstance(single, CompressionResult)
    results = tokenmask.compress(TEXTS, rate=0.5, method="truncation", judge=tiny_recon)
    assert isinstance(results, list) and len(results) == len(TEXTS) and results[0] == single
    for text, result in zip(TEXTS, results):
        ids = tiny_recon.encode(text)
        assert result.keep is not None and len(result.keep) == result.tokens == len(ids)
        assert result.kept_tokens == len(tiny_recon.encode(result.text))
        assert result.rate == pytest.approx(1 - result.kept_tokens / result.tokens)
        assert text.endswith(result.text)  # truncation keeps the end
    long = results[0]
    assert abs(long.rate - 0.5) <= 0.01 * 2  # a 40-token text: one token is 0.025


def test_batches_give_the_same_results_as_one_batch(tiny_recon) -> None:  # type: ignore[no-untyped-def]
    for method in ("random", "span_self_information:4"):
        whole = tokenmask.compress(TEXTS, rate=0.4, method=method, judge=tiny_recon, seed=3)
        split = tokenmask.compress(TEXTS, rate=0.4, method=method, judge=tiny_recon, seed=3, batch_size=2)
        if method == "random":  # documents are seeded by their place in a batch
            assert [r.tokens for r in whole] == [r.tokens for r in split]
        else:
            assert whole == split


def test_rate_zero_returns_the_text_and_words_never_fuse(tiny_recon) -> None:  # type: ignore[no-untyped-def]
    for result, text in zip(tokenmask.compress(TEXTS, rate=0.0, method="random", judge=tiny_recon), TEXTS):
        assert result.text == text and result.keep is not None and all(result.keep) and result.rate == 0.0
    text = "a\npolicy is a popular\nalgorithm for names,\nnumbers " * 4
    result = tokenmask.compress(text, rate=0.5, method="random", judge=tiny_recon)
    assert "apolicy" not in result.text and "popularalgorithm" not in result.text
    assert abs(result.rate - 0.5) <= 0.01


def test_a_judge_search_on_a_cpu_warns_that_it_is_a_gpu_method(tiny_recon) -> None:  # type: ignore[no-untyped-def]
    """refine* and move_agent run dozens of judge passes per context: on a CPU, one warning naming the fix; the
    one-pass methods do not warn."""
    with pytest.warns(UserWarning, match="a GPU method.*Fix: run it on a GPU \\(device='cuda'"):
        result = tokenmask.compress(
            TEXTS[0], rate=0.5, method="refine_lookahead:p4:truncation", judge=tiny_recon
        )
    assert 0 < result.kept_tokens < result.tokens
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokenmask.compress(TEXTS[0], rate=0.5, method="span_self_information", judge=tiny_recon)


def test_a_compressor_object_is_used_as_it_is(tiny_recon) -> None:  # type: ignore[no-untyped-def]
    method = Truncation(tiny_recon.tokenizer, keep="first")
    result = tokenmask.compress(TEXTS[0], rate=0.5, agent=method)
    assert TEXTS[0].startswith(result.text) and abs(result.rate - 0.5) <= 0.02


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder holding an untrained agent (tiny random reconstructor), as ``tokenmask train`` writes it."""
    from conftest import save_tiny_run

    return save_tiny_run(tmp_path_factory.mktemp("api") / "run")


def test_a_run_folder_or_its_agent_compresses(run_dir) -> None:  # type: ignore[no-untyped-def]
    from tokenmask.train.agent import AgentCompressor

    results = tokenmask.compress(TEXTS[:2], rate=0.5, agent=run_dir, device="cpu")
    agent = AgentCompressor.load(str(run_dir), device="cpu")
    again = tokenmask.compress(TEXTS[:2], rate=0.5, agent=agent)
    assert results == again
    assert abs(1 - sum(r.kept_tokens for r in results) / sum(r.tokens for r in results) - 0.5) <= 0.01
    via_method = tokenmask.compress(
        TEXTS[:2], rate=0.5, method=f"agent:{run_dir}", judge=agent.reconstructor, device="cpu"
    )
    assert [r.text for r in via_method] == [r.text for r in results]


@pytest.mark.integration
def test_the_embedded_judge_by_default_compresses_offline() -> None:
    text = TEXTS[0] * 3
    result = tokenmask.compress(text, rate=0.5, method="span_self_information:8", device="cpu")
    assert 0 < len(result.text) < len(text) and abs(result.rate - 0.5) <= 0.01


def test_the_shipped_agent_is_the_default(run_dir, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """With an agent in DEFAULT_AGENT_DIR, ``tokenmask.compress(text)`` needs no other argument."""
    monkeypatch.setattr(shipped_agent, "DEFAULT_AGENT_DIR", run_dir)
    result = tokenmask.compress(TEXTS[0], rate=0.5, device="cpu")
    assert result == tokenmask.compress(TEXTS[0], rate=0.5, agent=run_dir, device="cpu")
    assert 0 < result.kept_tokens < result.tokens and abs(result.rate - 0.5) <= 0.02
    assert "apolicy" not in result.text


def test_the_agent_compresses_many_texts_in_one_pass(run_dir) -> None:  # type: ignore[no-untyped-def]
    """Every text of a batch goes through the agent together; each text still hits the rate alone."""
    whole = tokenmask.compress(TEXTS, rate=0.4, agent=run_dir, device="cpu")
    split = tokenmask.compress(TEXTS, rate=0.4, agent=run_dir, device="cpu", batch_size=2)
    # float sums of other batch shapes may move a mask probability across 0.5: compare what is fixed
    assert [r.tokens for r in whole] == [r.tokens for r in split]
    for one, other in zip(whole, split):
        assert one.kept_tokens > 0 and abs(one.rate - other.rate) <= 2 / one.tokens + 0.01


def test_the_shipped_agent_folder_goes_into_the_wheel() -> None:
    """setup.cfg's package data carries tokenmask/agents/default/ (the folder ``agent="default"`` reads)."""
    import configparser

    setup = configparser.ConfigParser()
    setup.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    patterns = [p.strip() for p in setup["options.package_data"]["tokenmask"].split(",")]
    assert "agents/default/*" in patterns
    assert Path(tokenmask.__file__).resolve().parent / "agents" / "default" == api.DEFAULT_AGENT_DIR


def test_every_data_file_of_the_package_goes_into_the_wheel() -> None:
    """Each non-Python file under tokenmask/ (the shipped agents, the move agent's policy and tables, the sample
    data, the marker files) is matched by a package-data pattern of setup.cfg, as setuptools globs them (``*`` leaves
    dot-files out), so a wheel install holds what the package reads."""
    import configparser
    import glob

    setup = configparser.ConfigParser()
    setup.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    root = Path(tokenmask.__file__).resolve().parent
    patterns = [p.strip() for p in setup["options.package_data"]["tokenmask"].split(",")]
    covered = {Path(f) for p in patterns for f in glob.glob(p, root_dir=root) if (root / f).is_file()}
    data = {
        f.relative_to(root)
        for f in root.rglob("*")
        if f.is_file() and f.suffix not in (".py", ".pyc") and "__pycache__" not in f.parts
    }
    assert Path("agents/moves/policy.zip") in data and Path("agents/moves/train.npz") in data
    assert data <= covered, sorted(map(str, data - covered))


@pytest.mark.integration
def test_the_shipped_agent_compresses_offline() -> None:
    """The agent in tokenmask/agents/default/: a small exported folder with its provenance, usable at once."""
    from tokenmask.train.export import AGENT_INFO_FILE, POLICY_FILE, read_agent_info

    folder = api.DEFAULT_AGENT_DIR
    assert (folder / POLICY_FILE).is_file() and not (folder / "agent.zip").exists()
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) < 20_000_000
    info = read_agent_info(folder)
    assert {"source_run", "step", "git_commit", "date", "machine", "figures"} <= set(info), AGENT_INFO_FILE
    text = TEXTS[0] * 3
    result = tokenmask.compress(text, rate=0.5, device="cpu")
    assert 0 < result.kept_tokens < result.tokens and abs(result.rate - 0.5) <= 0.02
