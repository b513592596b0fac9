"""``tokenmask compress``: stdin to compressed text through ``tokenmask.compress``, ``--method``, ``--show``, short texts."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tokenmask import shipped_agent
from tokenmask.cli import main
from tokenmask.evaluate.baselines import Truncation
from tokenmask.train.cli import show_removed
from tokenmask.train.text_samples import STROKE

TEXT = "a\npolicy is a popular\nalgorithm for names,\nnumbers and more words " * 4


def run(monkeypatch, capsys, stdin: str, *args: str) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    status = main(["compress", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_a_method_compresses_stdin_and_words_never_fuse(tiny_judge_dir, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    status, out, err = run(
        monkeypatch,
        capsys,
        TEXT,
        "--method",
        "random",
        "--judge",
        str(tiny_judge_dir),
        "--rate",
        "0.5",
        "--device",
        "cpu",
    )
    assert status == 0, err
    text = out.rstrip("\n")
    assert 0 < len(text) < len(TEXT)
    assert "apolicy" not in text and "popularalgorithm" not in text and "names,numbers" not in text
    summary = re.search(
        r"tokenmask compress: random, (\d+) tokens -> (\d+), rate ([0-9.]+) \(asked 0\.500\)", err
    )
    assert summary is not None, err
    assert abs(float(summary.group(3)) - 0.5) <= 1 / int(summary.group(1)) + 0.005


def test_a_one_token_text_keeps_its_token(tiny_judge_dir, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """``printf Hi | tokenmask compress --rate 0.5`` prints ``Hi``, not an empty line, and says why on stderr."""
    for method in ("truncation", "span_self_information"):
        status, out, err = run(
            monkeypatch, capsys, "Hi", "--method", method, "--judge", str(tiny_judge_dir), "--rate", "0.5"
        )
        assert status == 0, err
        assert out == "Hi\n"
        assert "at least one token kept" in err and "1 tokens -> 1" in err
    # a short text at a high rate: one token left, not zero
    status, out, err = run(
        monkeypatch,
        capsys,
        "x = 1",
        "--method",
        "truncation",
        "--judge",
        str(tiny_judge_dir),
        "--rate",
        "0.9",
    )
    assert status == 0 and out.strip() and "-> 1," in err and "at least one token kept" in err


def test_show_strikes_the_removed_tokens_then_prints_the_compressed_text(
    tiny_judge_dir, monkeypatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    status, out, err = run(
        monkeypatch,
        capsys,
        TEXT,
        "--method",
        "truncation",
        "--judge",
        str(tiny_judge_dir),
        "--rate",
        "0.5",
        "--show",
    )
    assert status == 0, err
    struck, compressed = out.split("\n\n", 1)  # the struck original, a blank line, the compressed text
    assert STROKE in struck and struck.replace(STROKE, "") == TEXT
    assert compressed.strip() and TEXT.rstrip().endswith(compressed.strip())  # truncation keeps the end


def test_show_marks_exactly_the_dropped_tokens(tiny_recon) -> None:  # type: ignore[no-untyped-def]
    method = Truncation(tiny_recon.tokenizer)
    text = "keep nothing of the start, keep the end"
    ids = tiny_recon.encode(text)
    keep = np.arange(len(ids)) >= len(ids) // 2
    shown = show_removed(method, text, keep.tolist())
    assert shown.replace(STROKE, "") == text
    kept_text = tiny_recon.decode(ids[len(ids) // 2 :])
    assert shown.endswith(kept_text) and STROKE not in shown[-len(kept_text) :]
    assert "rewrites the text" in show_removed(method, text, None)


def test_no_shipped_agent_is_one_clear_line(monkeypatch, capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(shipped_agent, "DEFAULT_AGENT_DIR", tmp_path / "agents" / "default")
    status, out, err = run(monkeypatch, capsys, "some text", "--rate", "0.5")
    assert status == 2 and out == ""
    assert (
        err.count("\n") == 1 and "no agent ships" in err and "Fix:" in err and "span_self_information" in err
    )


def test_bad_arguments_are_refused_before_any_model_loads(monkeypatch, capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    never = "/nonexistent/never/loaded"
    status, _, err = run(monkeypatch, capsys, "text", "--method", "nope", "--judge", never)
    assert status == 2 and "Unknown method 'nope'" in err and "Fix:" in err
    status, _, err = run(
        monkeypatch, capsys, "text", "--method", "truncation", "--judge", never, "--rate", "1.0"
    )
    assert status == 2 and "outside [0, 1)" in err
    status, _, err = run(monkeypatch, capsys, "   \n", "--method", "truncation", "--judge", never)
    assert status == 2 and "No text on stdin" in err and "Fix:" in err
    status, _, err = run(monkeypatch, capsys, "text", "--agent", str(tmp_path / "missing"))
    assert status == 2 and "no such folder" in err and "Fix:" in err
    with pytest.raises(SystemExit) as info:  # argparse: one source of compression, not two
        run(monkeypatch, capsys, "text", "--agent", "default", "--method", "truncation")
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_the_installed_command_reads_a_pipe(tiny_judge_dir) -> None:  # type: ignore[no-untyped-def]
    """``printf Hi | tokenmask compress ...`` as a shell runs it."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tokenmask",
            "compress",
            "--method",
            "truncation",
            "--judge",
            str(tiny_judge_dir),
            "--rate",
            "0.5",
        ],
        input="Hi",
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Hi\n"
