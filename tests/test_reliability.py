"""Issue 15 at the command line: one clear line for every damaged input, checks before models load,
no traceback unless ``--debug``, and argument errors that answer without importing torch."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

import tokenmask.data
from tokenmask.activation_compression.config import ActivationEvaluateConfig, ActivationTrainConfig
from tokenmask.cli import main
from tokenmask.config import ConfigError, load_config
from tokenmask.data import PrepareDataConfig
from tokenmask.errors import ConfigError as BaseConfigError
from tokenmask.errors import CorruptFileError, InputError, OutputExistsError, TokenmaskError

MISSING_JUDGE = "/nonexistent/judge"  # loading it would fail: an error naming anything else came first


def _error_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"tokenmask {command}: error:"), err
    return last


# ---------------------------------------------------------------------------------------- error types
def test_error_types_carry_fix_path_and_key() -> None:
    error = OutputExistsError("out is a file.", fix="choose another folder.", path="out")
    assert str(error) == "out is a file. Fix: choose another folder." and error.path == "out"
    assert isinstance(error, FileExistsError) and isinstance(error, TokenmaskError)
    assert issubclass(ConfigError, BaseConfigError) and issubclass(ConfigError, ValueError)
    for kind in (InputError, CorruptFileError, tokenmask.data.DataError):
        assert issubclass(kind, TokenmaskError) and issubclass(kind, ValueError)
    assert str(InputError("bad. Fix: do x.", fix="ignored")) == "bad. Fix: do x."


# ---------------------------------------------------------------------------------------- no traceback
def test_a_bug_is_one_line_and_its_traceback_is_behind_debug(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise TypeError("unsupported operand")

    monkeypatch.setattr(tokenmask.data, "prepare_data", broken)
    args = ["prepare-data", "--data_path", "sample", "--output_dir", str(tmp_path / "o")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert (
        "Traceback" not in err
        and "internal error: TypeError: unsupported operand" in err
        and "--debug" in err
    )
    with pytest.raises(TypeError):
        main([*args, "--debug"])
    with pytest.raises(TypeError):
        main(["--debug", *args])


def test_system_errors_are_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(tmp_path / "o"))

    monkeypatch.setattr(tokenmask.data, "prepare_data", denied)
    assert main(["prepare-data", "--data_path", "sample", "--output_dir", str(tmp_path / "o")]) == 2
    assert "Permission denied" in _error_line(capsys, "prepare-data")


def test_json_config_errors_name_file_and_line_or_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"data_path": "sample",\n "max_length": 12,,\n}', encoding="utf-8")
    assert main(["prepare-data", "--config", str(bad)]) == 2
    line = _error_line(capsys, "prepare-data")
    assert str(bad) in line and "line 2 column 19" in line
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"data_path": "sample", "max_lenght": 12}), encoding="utf-8")
    assert main(["prepare-data", "--config", str(unknown)]) == 2
    line = _error_line(capsys, "prepare-data")
    assert str(unknown) in line and "'max_lenght'" in line and "Fix:" in line
    typed = tmp_path / "typed.json"
    typed.write_text(json.dumps({"data_path": "sample", "max_length": "abc"}), encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^{typed}: Config key 'max_length'") as info:
        load_config(PrepareDataConfig, typed)
    assert info.value.path == str(typed)
    # a bad value from the command line is not blamed on the file
    with pytest.raises(ConfigError, match=r"^Config key 'max_length': expected int, got 'xyz'"):
        load_config(PrepareDataConfig, typed, {"max_length": "xyz"})


# ---------------------------------------------------------------------------------------- activation
def test_activation_help_with_a_percent_sign_prints(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["activation", "train", "--help"])
    assert info.value.code == 0
    assert "80% depth" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--max_steps", "-1"], "'max_steps': -1"),
        (["train", "--max_documents", "0"], "'max_documents': 0"),
        (["train", "--warmup_steps", "-5"], "'warmup_steps': -5"),
        (["evaluate", "--thresholds", "0.5,1.5"], r"thresholds [1.5] outside (0, 1]"),
        (["evaluate", "--thresholds", "0"], r"thresholds [0.0] outside (0, 1]"),
        (["evaluate", "--timing_thresholds", "2"], "timing_thresholds [2.0]"),
    ],
)
def test_activation_bad_numbers_are_refused_before_anything_runs(
    args: Sequence[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "act"
    assert main(["activation", *args, "--data_path", "/nonexistent/corpus", "--output_dir", str(out)]) == 2
    assert message in _error_line(capsys, "activation")
    assert not out.exists()


def test_activation_threshold_ranges() -> None:
    assert ActivationEvaluateConfig(thresholds=[1.0, 0.01]).thresholds == [1.0, 0.01]
    assert ActivationEvaluateConfig(adaptive_threshold=False, thresholds=[-0.5, 1.01]).thresholds == [
        -0.5,
        1.01,
    ]
    with pytest.raises(BaseConfigError, match=r"\[-1, 1.01\]"):
        ActivationEvaluateConfig(adaptive_threshold=False, thresholds=[1.5])
    assert ActivationTrainConfig(max_steps=None, max_documents=None).max_steps is None


def test_activation_output_folder_of_the_user_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user = tmp_path / "mine"
    user.mkdir()
    (user / "data.csv").write_text("1,2")
    assert (
        main(["activation", "evaluate", "--data_path", "/nonexistent/corpus", "--output_dir", str(user)]) == 2
    )
    assert "did not write" in _error_line(capsys, "activation")
    assert sorted(p.name for p in user.iterdir()) == ["data.csv"]


# ---------------------------------------------------------------------------------------- evaluate: checks before models load
def _evaluate(tmp_path: Path, *args: str) -> list[str]:
    return ["evaluate", "--judge", MISSING_JUDGE, "--num_documents", "1", "--no_progress",
            "--output_dir", str(tmp_path / "ev"), *args]  # fmt: skip


def test_evaluate_refuses_a_user_folder_before_the_evaluation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("n")
    assert main([*_evaluate(tmp_path), "--output_dir", str(user)]) == 2
    assert "did not write" in _error_line(capsys, "evaluate")  # not the judge's error: nothing was loaded
    assert sorted(p.name for p in user.iterdir()) == ["notes.txt"]


def test_evaluate_refuses_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "work.txt").write_text("w")
    monkeypatch.chdir(tmp_path)
    assert main([*_evaluate(tmp_path), "--output_dir", "."]) == 2
    assert "current folder" in _error_line(capsys, "evaluate")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work.txt"]


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ("agent:{tmp}/no_run", "no such run folder"),
        ("agent:{tmp}/empty_run", "is not a tokenmask run folder (no config.json)"),
        ("agent:", "needs a run folder"),
        ("frequency:{tmp}/missing.jsonl", "no such corpus"),
        ("activation:{tmp}/missing.json", "no such file or folder"),
        ("span_self_information:0", "optional span in tokens >= 1"),
        ("random:3", "takes no argument"),
    ],
)
def test_method_arguments_are_checked_before_the_judge_loads(
    method: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty_run").mkdir()
    assert main(_evaluate(tmp_path, "--methods", f"truncation,{method.format(tmp=tmp_path)}")) == 2
    assert message in _error_line(capsys, "evaluate")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty_run"]  # no output folder, no temporary


def test_agent_run_folder_without_an_agent_is_refused_early(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    assert main(_evaluate(tmp_path, "--methods", f"agent:{run}")) == 2
    assert "holds no agent.zip" in _error_line(capsys, "evaluate")


# ---------------------------------------------------------------------------------------- lazy imports
_LIGHT = """
import sys
from tokenmask.cli import main
for argv in {argvs!r}:
    try:
        code = main(argv)
    except SystemExit as exit:
        code = exit.code
    print("CODE", code)
heavy = sorted(m for m in ("torch", "transformers", "stable_baselines3", "datasets") if m in sys.modules)
print("heavy:", heavy)
"""


def test_help_and_argument_errors_import_no_heavy_module(tmp_path: Path) -> None:
    argvs = [
        ["--help"],
        ["evaluate", "--rates", "2"],
        ["evaluate", "--output_dir", "."],
        ["evaluate", "--methods", "agent:/nonexistent/run", "--output_dir", str(tmp_path / "x")],
        ["baselines", "--methods", "truncation,agent:x"],
        ["prepare-data", "--data_path", "sample", "--split_fractions", "0.5,0.2,0.2"],
        ["prepare-data", "--config", str(tmp_path / "missing.json")],
        ["prepare-data", "--data_path", str(tmp_path / "missing.jsonl"), "--output_dir", str(tmp_path / "o")],
        ["prepare-data", "--data_path", "sample", "--output_dir", str(tmp_path)],
        ["evaluate", "--help"],
    ]
    result = subprocess.run(
        [sys.executable, "-c", _LIGHT.format(argvs=argvs)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "heavy: []", result.stdout
    codes = [line.split()[1] for line in lines if line.startswith("CODE ")]
    assert codes == ["0", "2", "2", "2", "2", "2", "2", "2", "2", "0"], result.stdout
    assert "Traceback" not in result.stderr


_ONE_COMMAND = """
import sys
from tokenmask.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit:  # argparse's own errors and --help
    code = exit.code
print("CODE", code, "torch" in sys.modules)
"""


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["train", "--bogus"], 2),
        (["train", "--config", "missing.json"], 2),
        (["train", "--env.window", "0"], 2),
        (["train", "--resume", "no-such-run"], 2),
        (["activation", "--help"], 0),
        (["activation", "train", "--help"], 0),
        (["activation", "train", "--max_steps", "-1"], 2),
        (["activation", "evaluate", "--thresholds", "1.5"], 2),
        (["compress", "--rate", "2"], 2),
        (["label", "--bogus"], 2),
        (["label", "--rates", "1.5"], 2),
        (["label", "--help"], 0),
    ],
)
def test_each_argument_error_answers_before_torch_loads(tmp_path: Path, argv: list[str], code: int) -> None:
    """Each command in a fresh interpreter: torch is not imported when the error (or help) is given."""
    result = subprocess.run(
        [sys.executable, "-c", _ONE_COMMAND, *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == f"CODE {code} False", (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------- found by benchmarks/bad_inputs.py
def test_config_values_of_the_wrong_json_kind_are_refused(tmp_path: Path) -> None:
    """``true`` is not an int (it was read as 1); a bad JSON value names its key; a folder is no config file."""
    from tokenmask.train.config import TrainConfig

    with pytest.raises(ConfigError, match=r"Config key 'n_envs': expected int, got True"):
        load_config(TrainConfig, None, {"n_envs": True})
    with pytest.raises(ConfigError, match=r"Config key 'policy_kwargs': '\{foo' is not valid JSON"):
        load_config(TrainConfig, None, {"policy_kwargs": "{foo"})
    with pytest.raises(ConfigError, match=r"Config key 'rates'"):
        from tokenmask.evaluate.runner import EvaluateConfig

        load_config(EvaluateConfig, None, {"rates": "[0.5,"})
    with pytest.raises(ConfigError, match="is a folder, not a file"):
        load_config(TrainConfig, tmp_path)


class _BytesStdin:
    """A stdin whose bytes are not UTF-8, as a pipe gives them."""

    def __init__(self, data: bytes) -> None:
        import io

        self.buffer = io.BytesIO(data)


def test_compress_names_stdin_bytes_that_are_not_utf8(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", _BytesStdin(b"caf\xe9 au lait " * 5))
    assert main(["compress", "--method", "truncation", "--judge", MISSING_JUDGE]) == 2
    line = _error_line(capsys, "compress")
    assert "stdin is not UTF-8 text (byte 3" in line and "Fix:" in line


def test_text_api_refuses_what_is_not_text_and_keeps_short_texts(tiny_recon) -> None:  # type: ignore[no-untyped-def]
    """Lone surrogates and non-int ids are one clear error, not a tokenizer's or numpy's; a one-token
    text is kept whole (as ``tokenmask compress`` does), not returned empty."""
    import tokenmask

    with pytest.raises(ValueError, match=r"texts\[0\] is not valid Unicode \(character 3"):
        tokenmask.compress("caf\udce9 au lait", rate=0.5, method="truncation", judge=tiny_recon)
    with pytest.raises(InputError, match="Token ids must be integers"):
        tiny_recon.token_bits(["hello"])
    with pytest.raises(InputError, match="Token ids must be integers"):
        tiny_recon.token_bits([[1.5, 2.0]])
    with pytest.raises(TypeError, match="encode takes a str, got a NoneType"):
        tiny_recon.encode(None)
    short, long = tokenmask.compress(
        ["Hi", TEXT_OF_40_WORDS], rate=0.5, method="truncation", judge=tiny_recon
    )
    assert (short.text, short.kept_tokens, short.rate) == ("Hi", 1, 0.0)
    assert 0.4 < long.rate < 0.6 and long.text


TEXT_OF_40_WORDS = " ".join(f"word{i}" for i in range(40))
