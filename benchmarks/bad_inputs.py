"""Bad-input sweep (issue 15): the inputs a careful user tries, run and classified.

    python benchmarks/bad_inputs.py                    # every case (~10 minutes on 2 CPU cores)
    python benchmarks/bad_inputs.py --only compress    # the cases whose name holds "compress"
    python benchmarks/bad_inputs.py --list             # the case names

CLI cases run ``python -m tokenmask ...`` in a subprocess, each in its own folder, under a timeout
(two at once for the concurrent-writer cases). Python-API cases run in one worker subprocess that
loads the tiny random Llama (the real SmolLM2 tokenizer) once; each runs under an alarm. The
fixtures (prepared corpora, a tiny trained run and damaged copies of it, bad files) are built first
in ``--work_dir`` (default: a temporary folder). No network: the hub is set offline.

Every outcome is classified:

================ ==================================================================================
clear error      refused in one line (CLI: ``tokenmask CMD: error: ...``, exit status 2; API: an
                 exception raised by a check of tokenmask's own), the user's files intact
traceback        a traceback or an "internal error" (CLI); an exception raised inside a library (API)
silent wrong     success for an input that must be refused, a wrong result, or user data lost
hang             no answer within the timeout
ok               a valid (if odd) input answered correctly
================ ==================================================================================

Prints one row per case, then the counts per class; exits 1 when any case is a traceback, a silent
wrong result or a hang.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "tokenmask"
OUTCOMES = ("clear error", "traceback", "silent wrong", "hang", "ok")
BAD = ("traceback", "silent wrong", "hang")
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONWARNINGS": "ignore",
}
ENV.pop("TOKENMASK_DEBUG", None)
TEXT = (
    "The os module provides a portable way of using operating system dependent functionality. "
    "If you just want to read or write a file see open(), if you want to manipulate paths, see the "
    "os.path module, and if you want to read all the lines in all the files on the command line see "
    "the fileinput module. For creating temporary files and directories see the tempfile module."
)
EMOJI = "Deploy 🚀 done ✅, tests 🧪 green 🟢, coffee ☕ ready; naïve café déjà vu 日本語のテキスト 😀🎉 end."
QUICK = REPO / "configs" / "dev" / "quick_test.json"
EVAL_SMALL = [
    "--rates",
    "0.5",
    "--num_documents",
    "2",
    "--context_tokens",
    "32",
    "--continuation_tokens",
    "8",
]


# ---------------------------------------------------------------------------------------- cases
@dataclass
class Result:
    """What one CLI process did."""

    returncode: int | None
    stdout: str
    stderr: str
    seconds: float


Check = Callable[[Path, Path, list[Result]], "str | None"]
"""``check(work, case_dir, results) -> reason`` the outcome is silently wrong, or ``None``."""


@dataclass
class Case:
    """One bad input.

    :param name: a short id (``area/what``).
    :param argv: the ``tokenmask`` arguments (CLI case); ``{W}`` is replaced by the work folder.
    :param stdin: bytes fed to stdin.
    :param expect: ``error`` (must be refused), ``ok`` (must succeed) or ``either`` (a clear
        refusal or a correct success).
    :param setup: prepares the case's folder (it is the process's working directory).
    :param check: says why a finished case is silently wrong (run for errors too: data intact?).
    :param concurrent: run the command twice at once (concurrent writers).
    :param timeout: seconds before the case counts as a hang.
    """

    name: str
    argv: list[str]
    expect: str = "error"
    stdin: bytes | None = None
    setup: Callable[[Path, Path], None] | None = None
    check: Check | None = None
    concurrent: bool = False
    timeout: float = 240.0


def user_dir(work: Path, case: Path) -> None:
    """A folder of the user's: ``userdir/important.txt``."""
    (case / "userdir").mkdir()
    (case / "userdir" / "important.txt").write_text("x")


def user_file(work: Path, case: Path) -> None:
    (case / "userfile.txt").write_text("my notes")


def user_data_kept(work: Path, case: Path, results: list[Result]) -> str | None:
    """The user's folder and file are as they were."""
    folder = case / "userdir"
    if folder.exists():
        if sorted(p.name for p in folder.iterdir()) != ["important.txt"]:
            return f"userdir now holds {sorted(p.name for p in folder.iterdir())}"
        if (folder / "important.txt").read_text() != "x":
            return "userdir/important.txt changed"
    file = case / "userfile.txt"
    if file.exists() and (not file.is_file() or file.read_text() != "my notes"):
        return "userfile.txt was replaced"
    return None


def stdout_has(*needles: str, forbid: tuple[str, ...] = ()) -> Check:
    def check(work: Path, case: Path, results: list[Result]) -> str | None:
        out = results[0].stdout
        for needle in needles:
            if needle not in out:
                return f"stdout lacks {needle!r}: {out[-200:]!r}"
        for bad in forbid:
            if bad in out:
                return f"stdout holds {bad!r}: {out[-200:]!r}"
        return None

    return check


def compressed_text_ok(work: Path, case: Path, results: list[Result]) -> str | None:
    """``compress`` printed a non-empty text with no replacement character."""
    out = results[0].stdout.strip()
    if results[0].returncode == 0 and not out:
        return "exit 0 but no compressed text on stdout"
    if "\ufffd" in out:
        return f"the compressed text holds U+FFFD (a character cut in half): {out!r}"
    return None


def prepared_loadable(folder: str) -> Check:
    """The prepared corpus in ``folder`` has its splits, each readable."""

    def check(work: Path, case: Path, results: list[Result]) -> str | None:
        code = (
            "import sys, json; from tokenmask.data import prepared_splits, load_prepared_split\n"
            "splits = prepared_splits(sys.argv[1])\n"
            "print(json.dumps({s: len(load_prepared_split(sys.argv[1], s)) for s in splits}))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(case / folder)], capture_output=True, text=True, env=ENV
        )
        if out.returncode != 0:
            return f"the written corpus does not load: {out.stderr.strip().splitlines()[-1:]}"
        sizes = json.loads(out.stdout)
        if not sizes or any(n == 0 for n in sizes.values()):
            return f"a written split is empty: {sizes}"
        texts = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from tokenmask.data import load_prepared_split as l\n"
                "print(sum('\\ufffd' in t for s in sys.argv[2:] for t in l(sys.argv[1], s)['text']))",
                str(case / folder),
                *sizes,
            ],
            capture_output=True,
            text=True,
            env=ENV,
        )
        if texts.stdout.strip() not in ("", "0"):
            return f"{texts.stdout.strip()} documents hold U+FFFD (cut mid-character)"
        return None

    return check


def results_written(folder: str) -> Check:
    def check(work: Path, case: Path, results: list[Result]) -> str | None:
        target = case / folder
        if not (target / "results.json").is_file():
            return f"{folder}/results.json missing though a run said it wrote results"
        json.loads((target / "results.json").read_text())
        return user_data_kept(work, case, results)

    return check


def copy_of(name: str, into: str = "run") -> Callable[[Path, Path], None]:
    def setup(work: Path, case: Path) -> None:
        shutil.copytree(work / name, case / into)

    return setup


def write(name: str, content: str | bytes) -> Callable[[Path, Path], None]:
    def setup(work: Path, case: Path) -> None:
        path = case / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")

    return setup


def both(*setups: Callable[[Path, Path], None]) -> Callable[[Path, Path], None]:
    def setup(work: Path, case: Path) -> None:
        for one in setups:
            one(work, case)

    return setup


def cli_cases() -> list[Case]:
    """Every CLI case; ``{W}`` in an argument is the work folder with the fixtures."""
    W = "{W}"
    tiny_train = ["train", "--config", str(QUICK), "--total_timesteps", "16", "--run_dir", "r"]
    cases = [
        # ---- start-up and arguments
        Case("cli/no-command", []),
        Case("cli/unknown-command", ["frobnicate"]),
        Case("cli/version", ["--version"], expect="ok"),
        Case("train/unknown-flag", ["train", "--bogus"]),
        Case("train/missing-config", ["train", "--config", "missing.json"]),
        Case(
            "train/config-trailing-comma",
            ["train", "--config", "c.json"],
            setup=write("c.json", '{"seed": 1,}'),
        ),
        Case("train/config-not-object", ["train", "--config", "c.json"], setup=write("c.json", "[1, 2]")),
        Case("train/config-empty-file", ["train", "--config", "c.json"], setup=write("c.json", "")),
        Case(
            "train/config-not-utf8",
            ["train", "--config", "c.json"],
            setup=write("c.json", b'{"seed": "\xff"}'),
        ),
        Case("train/config-is-folder", ["train", "--config", "."]),
        Case(
            "train/config-unknown-key",
            ["train", "--config", "c.json"],
            setup=write("c.json", '{"windw": 16}'),
        ),
        Case(
            "train/config-unknown-env-key",
            ["train", "--config", "c.json"],
            setup=write("c.json", '{"env": {"windw": 16}}'),
        ),
        Case(
            "train/config-wrong-type",
            ["train", "--config", "c.json"],
            setup=write("c.json", '{"n_envs": "eight"}'),
        ),
        Case(
            "train/config-null-int",
            ["train", "--config", "c.json"],
            setup=write("c.json", '{"n_envs": null}'),
        ),
        Case("train/window-0", ["train", "--env.window", "0"]),
        Case("train/window-not-multiple-of-span", ["train", "--env.window", "16", "--env.span", "3"]),
        Case("train/target-rate-1", ["train", "--env.target_rate", "1.0"]),
        Case("train/target-rate-nan", ["train", "--env.target_rate", "nan"]),
        Case("train/target-rate-range-reversed", ["train", "--env.target_rate_range", "0.8,0.2"]),
        Case("train/total-timesteps-negative", ["train", "--total_timesteps", "-5"]),
        Case("train/n-envs-0", ["train", "--n_envs", "0"]),
        Case("train/learning-rate-text", ["train", "--learning_rate", "abc"]),
        Case("train/learning-rate-inf", ["train", "--learning_rate", "inf"]),
        Case("train/policy-kwargs-unknown", ["train", "--policy_kwargs", '{"foo": 1}']),
        Case("train/policy-kwargs-not-json", ["train", "--policy_kwargs", "{foo"]),
        Case("train/reward-type-unknown", ["train", "--env.reward_type", "bogus"]),
        Case("train/judge-credit-unknown", ["train", "--env.judge_credit", "bogus"]),
        Case("train/token-features-unknown", ["train", "--env.token_features", "bogus"]),
        Case("train/device-bogus", [*tiny_train, "--device", "tpu9"]),
        Case("train/device-cuda-without-gpu", [*tiny_train, "--device", "cuda"]),
        Case("train/reconstructor-missing", [*tiny_train, "--reconstructor", "/nonexistent/model"]),
        Case(
            "train/run-dir-user-folder", [*tiny_train[:-1], "userdir"], setup=user_dir, check=user_data_kept
        ),
        Case(
            "train/run-dir-user-file",
            [*tiny_train[:-1], "userfile.txt"],
            setup=user_file,
            check=user_data_kept,
        ),
        Case("train/data-empty-file", [*tiny_train, "--env.data_path", "e.txt"], setup=write("e.txt", "")),
        Case(
            "train/data-not-utf8",
            [*tiny_train, "--env.data_path", "l.txt"],
            setup=write("l.txt", b"caf\xe9 " * 200),
        ),
        Case("train/data-short-texts", [*tiny_train, "--env.data_path", f"{W}/short.jsonl"]),
        Case("train/data-null-text", [*tiny_train, "--env.data_path", f"{W}/null_text.jsonl"]),
        Case(
            "train/data-prepared-omitted-split",
            [*tiny_train, "--env.data_path", f"{W}/prepared_train_only", "--env.split", "validation"],
        ),
        Case(
            "train/eval-split-omitted",
            [*tiny_train, "--eval_data_path", f"{W}/prepared_train_only", "--eval_split", "test"],
        ),
        Case("train/pretrain-missing", [*tiny_train, "--pretrain", "/nonexistent/labels"]),
        Case("train/resume-missing", ["train", "--resume", "no-such-run"]),
        Case(
            "train/resume-user-folder", ["train", "--resume", "userdir"], setup=user_dir, check=user_data_kept
        ),
        Case(
            "train/resume-with-config",
            ["train", "--resume", "run", "--config", str(QUICK)],
            setup=copy_of("run"),
        ),
        Case(
            "train/resume-changed-window",
            ["train", "--resume", "run", "--env.window", "32"],
            setup=copy_of("run"),
        ),
        Case("train/resume-damaged-policy", ["train", "--resume", "run"], setup=copy_of("run_bad_policy")),
        Case("train/resume-truncated-zip", ["train", "--resume", "run"], setup=copy_of("run_truncated_zip")),
        Case("train/resume-no-reconstructor", ["train", "--resume", "run"], setup=copy_of("run_no_recon")),
        Case("train/resume-bad-state", ["train", "--resume", "run"], setup=copy_of("run_bad_state")),
        Case("train/resume-bad-manifest", ["train", "--resume", "run"], setup=copy_of("run_bad_manifest")),
        Case("train/resume-bad-rng", ["train", "--resume", "run"], setup=copy_of("run_bad_rng")),
        Case("train/resume-bad-config", ["train", "--resume", "run"], setup=copy_of("run_bad_config")),
        Case("train/start-over-a-run", [*tiny_train[:-1], "run"], setup=copy_of("run")),
        Case("train/two-writers", tiny_train, expect="either", concurrent=True, timeout=400),
        # ---- prepare-data
        Case(
            "prepare/output-user-folder",
            ["prepare-data", "--data_path", "sample", "--output_dir", "userdir", "--max_sequences", "20"],
            setup=user_dir,
            check=user_data_kept,
        ),
        Case(
            "prepare/output-user-file",
            [
                "prepare-data",
                "--data_path",
                "sample",
                "--output_dir",
                "userfile.txt",
                "--max_sequences",
                "20",
            ],
            setup=user_file,
            check=user_data_kept,
        ),
        Case("prepare/five-texts", ["prepare-data", "--data_path", f"{W}/five.jsonl", "--output_dir", "o"]),
        Case("prepare/missing-file", ["prepare-data", "--data_path", "missing.jsonl", "--output_dir", "o"]),
        Case(
            "prepare/empty-file",
            ["prepare-data", "--data_path", "e.jsonl", "--output_dir", "o"],
            setup=write("e.jsonl", ""),
        ),
        Case(
            "prepare/blank-text",
            ["prepare-data", "--data_path", "b.txt", "--output_dir", "o"],
            setup=write("b.txt", " \n\t\n"),
        ),
        Case(
            "prepare/not-utf8",
            ["prepare-data", "--data_path", "l.txt", "--output_dir", "o"],
            setup=write("l.txt", b"caf\xe9 " * 200),
        ),
        Case(
            "prepare/binary",
            ["prepare-data", "--data_path", "b.txt", "--output_dir", "o"],
            setup=write("b.txt", bytes(range(256)) * 8),
        ),
        Case(
            "prepare/utf16-bom",
            ["prepare-data", "--data_path", "u.txt", "--output_dir", "o"],
            setup=write("u.txt", ("hello world " * 100).encode("utf-16")),
        ),
        Case(
            "prepare/null-text", ["prepare-data", "--data_path", f"{W}/null_text.jsonl", "--output_dir", "o"]
        ),
        Case(
            "prepare/number-text",
            ["prepare-data", "--data_path", "n.jsonl", "--output_dir", "o"],
            setup=write("n.jsonl", '{"text": 5}\n'),
        ),
        Case(
            "prepare/bad-json-line",
            ["prepare-data", "--data_path", "b.jsonl", "--output_dir", "o"],
            setup=write("b.jsonl", json.dumps({"text": TEXT}) + "\nnot json\n"),
        ),
        Case(
            "prepare/array-line",
            ["prepare-data", "--data_path", "a.jsonl", "--output_dir", "o"],
            setup=write("a.jsonl", "[1, 2]\n"),
        ),
        Case(
            "prepare/missing-key",
            ["prepare-data", "--data_path", "k.jsonl", "--output_dir", "o"],
            setup=write("k.jsonl", json.dumps({"body": TEXT}) + "\n"),
        ),
        Case(
            "prepare/text-column-missing",
            ["prepare-data", "--data_path", "sample", "--text_column", "body", "--output_dir", "o"],
        ),
        Case(
            "prepare/empty-folder",
            ["prepare-data", "--data_path", "d", "--output_dir", "o"],
            setup=lambda w, c: (c / "d").mkdir(),
        ),
        Case(
            "prepare/fractions-sum",
            [
                "prepare-data",
                "--data_path",
                "sample",
                "--split_fractions",
                "0.5,0.2,0.2",
                "--output_dir",
                "o",
            ],
        ),
        Case(
            "prepare/fractions-negative",
            [
                "prepare-data",
                "--data_path",
                "sample",
                "--split_fractions",
                "1.2,-0.1,-0.1",
                "--output_dir",
                "o",
            ],
        ),
        Case(
            "prepare/fractions-two",
            ["prepare-data", "--data_path", "sample", "--split_fractions", "0.5,0.5", "--output_dir", "o"],
        ),
        Case(
            "prepare/max-length-0",
            ["prepare-data", "--data_path", "sample", "--max_length", "0", "--output_dir", "o"],
        ),
        Case(
            "prepare/min-over-max",
            [
                "prepare-data",
                "--data_path",
                "sample",
                "--min_length",
                "600",
                "--max_length",
                "512",
                "--output_dir",
                "o",
            ],
        ),
        Case(
            "prepare/all-too-short", ["prepare-data", "--data_path", f"{W}/short.jsonl", "--output_dir", "o"]
        ),
        Case(
            "prepare/max-sequences-0",
            ["prepare-data", "--data_path", "sample", "--max_sequences", "0", "--output_dir", "o"],
        ),
        Case(
            "prepare/model-missing",
            [
                "prepare-data",
                "--data_path",
                "sample",
                "--model_name",
                "/nonexistent/model",
                "--output_dir",
                "o",
            ],
        ),
        Case(
            "prepare/hub-offline",
            ["prepare-data", "--dataset_name", "no-such-org/no-such-dataset", "--output_dir", "o"],
            timeout=120,
        ),
        Case(
            "prepare/both-sources",
            ["prepare-data", "--data_path", "sample", "--dataset_name", "wikitext", "--output_dir", "o"],
        ),
        Case(
            "prepare/emoji-small-documents",
            [
                "prepare-data",
                "--data_path",
                f"{W}/emoji.txt",
                "--max_length",
                "7",
                "--min_length",
                "2",
                "--split_fractions",
                "1,0,0",
                "--output_dir",
                "o",
            ],
            expect="ok",
            check=prepared_loadable("o"),
        ),
        Case(
            "prepare/train-only",
            [
                "prepare-data",
                "--data_path",
                "sample",
                "--max_sequences",
                "20",
                "--split_fractions",
                "1,0,0",
                "--output_dir",
                "o",
            ],
            expect="ok",
            check=prepared_loadable("o"),
        ),
        Case(
            "prepare/two-writers",
            ["prepare-data", "--data_path", "sample", "--max_sequences", "30", "--output_dir", "o"],
            expect="either",
            concurrent=True,
            check=prepared_loadable("o"),
        ),
        # ---- evaluate
        Case("evaluate/rate-2", ["evaluate", "--rates", "2"]),
        Case("evaluate/rate-1", ["evaluate", "--rates", "1.0"]),
        Case("evaluate/rate-empty", ["evaluate", "--rates", ""]),
        Case("evaluate/rate-nan", ["evaluate", "--rates", "nan"]),
        Case("evaluate/rates-bad-json", ["evaluate", "--rates", "[0.5,"]),
        Case("evaluate/bootstrap-unit-unknown", ["evaluate", "--bootstrap_unit", "page"]),
        Case("evaluate/method-unknown", ["evaluate", "--methods", "bogus"]),
        Case("evaluate/methods-empty", ["evaluate", "--methods", ""]),
        Case(
            "evaluate/agent-missing", ["evaluate", "--methods", "agent:/nonexistent/run", "--output_dir", "o"]
        ),
        Case("evaluate/agent-empty", ["evaluate", "--methods", "agent:", "--output_dir", "o"]),
        Case(
            "evaluate/agent-damaged-policy",
            ["evaluate", "--methods", "agent:run", "--output_dir", "o"],
            setup=copy_of("run_bad_policy"),
        ),
        Case(
            "evaluate/agent-truncated-zip",
            ["evaluate", "--methods", "agent:run", "--output_dir", "o"],
            setup=copy_of("run_truncated_zip"),
        ),
        Case(
            "evaluate/agent-no-reconstructor",
            ["evaluate", "--methods", "agent:run", "--output_dir", "o"],
            setup=copy_of("run_no_recon"),
        ),
        Case(
            "evaluate/agent-no-config",
            ["evaluate", "--methods", "agent:run", "--output_dir", "o"],
            setup=copy_of("run_no_config"),
        ),
        Case(
            "evaluate/activation-bad-config",
            ["evaluate", "--methods", "activation:missing.json", "--output_dir", "o"],
        ),
        Case("evaluate/output-current-folder", ["evaluate", "--methods", "truncation", "--output_dir", "."]),
        Case(
            "evaluate/output-user-folder",
            ["evaluate", "--methods", "truncation", "--output_dir", "userdir"],
            setup=user_dir,
            check=user_data_kept,
        ),
        Case(
            "evaluate/output-user-file",
            ["evaluate", "--methods", "truncation", "--output_dir", "userfile.txt"],
            setup=user_file,
            check=user_data_kept,
        ),
        Case(
            "evaluate/output-a-run",
            ["evaluate", "--methods", "truncation", "--output_dir", "run"],
            setup=copy_of("run"),
        ),
        Case(
            "evaluate/corpus-missing",
            ["evaluate", "--methods", "truncation", "--corpus", "missing.jsonl", "--output_dir", "o"],
        ),
        Case(
            "evaluate/split-missing",
            [
                "evaluate",
                "--methods",
                "truncation",
                "--corpus",
                f"{W}/prepared",
                "--split",
                "nosuch",
                "--output_dir",
                "o",
            ],
        ),
        Case(
            "evaluate/split-omitted",
            [
                "evaluate",
                "--methods",
                "truncation",
                "--corpus",
                f"{W}/prepared_train_only",
                "--split",
                "test",
                "--output_dir",
                "o",
            ],
        ),
        Case("evaluate/num-documents-0", ["evaluate", "--num_documents", "0"]),
        Case("evaluate/num-documents-negative", ["evaluate", "--num_documents", "-3"]),
        Case("evaluate/context-0", ["evaluate", "--context_tokens", "0"]),
        Case(
            "evaluate/judge-missing",
            ["evaluate", "--methods", "truncation", "--judge", "/nonexistent/judge", "--output_dir", "o"],
        ),
        Case(
            "evaluate/device-bogus",
            ["evaluate", "--methods", "truncation", "--device", "tpu9", "--output_dir", "o"],
        ),
        Case(
            "evaluate/dtype-bogus",
            ["evaluate", "--methods", "truncation", "--dtype", "float7", "--output_dir", "o"],
        ),
        Case(
            "evaluate/config-unknown-key",
            ["evaluate", "--config", "c.json"],
            setup=write("c.json", '{"ratez": [0.5]}'),
        ),
        Case("baselines/agent-without-run", ["baselines", "--methods", "truncation,agent:x"]),
        Case(
            "evaluate/short-documents",
            [
                "evaluate",
                "--methods",
                "truncation",
                "--corpus",
                f"{W}/short.jsonl",
                *EVAL_SMALL,
                "--output_dir",
                "o",
            ],
        ),
        Case(
            "evaluate/two-writers",
            [
                "evaluate",
                "--methods",
                "truncation",
                "--corpus",
                f"{W}/prepared",
                "--split",
                "train",
                *EVAL_SMALL,
                "--no_progress",
                "--output_dir",
                "o",
            ],
            expect="either",
            concurrent=True,
            check=results_written("o"),
            timeout=400,
        ),
        # ---- compress
        Case("compress/empty-stdin", ["compress", "--method", "truncation"], stdin=b""),
        Case("compress/blank-stdin", ["compress", "--method", "truncation"], stdin=b"  \n\t \n"),
        Case(
            "compress/not-utf8-stdin", ["compress", "--method", "truncation"], stdin=b"caf\xe9 au lait " * 20
        ),
        Case("compress/rate-1", ["compress", "--rate", "1.0"], stdin=TEXT.encode()),
        Case("compress/rate-negative", ["compress", "--rate", "-0.1"], stdin=TEXT.encode()),
        Case("compress/rate-nan", ["compress", "--rate", "nan"], stdin=TEXT.encode()),
        Case("compress/rate-text", ["compress", "--rate", "half"], stdin=TEXT.encode()),
        Case(
            "compress/agent-default-not-shipped",
            ["compress", "--rate", "0.5"],
            stdin=TEXT.encode(),
            expect="either",
            check=compressed_text_ok,
        ),
        Case("compress/agent-missing", ["compress", "--agent", "/nonexistent/run"], stdin=TEXT.encode()),
        Case(
            "compress/agent-damaged-policy",
            ["compress", "--agent", "run"],
            stdin=TEXT.encode(),
            setup=copy_of("run_bad_policy"),
        ),
        Case(
            "compress/agent-no-reconstructor",
            ["compress", "--agent", "run"],
            stdin=TEXT.encode(),
            setup=copy_of("run_no_recon"),
        ),
        Case(
            "compress/agent-user-folder",
            ["compress", "--agent", "userdir"],
            stdin=TEXT.encode(),
            setup=user_dir,
            check=user_data_kept,
        ),
        Case("compress/method-unknown", ["compress", "--method", "bogus"], stdin=TEXT.encode()),
        Case("compress/method-in-model", ["compress", "--method", "activation"], stdin=TEXT.encode()),
        Case(
            "compress/judge-missing",
            ["compress", "--method", "truncation", "--judge", "/nonexistent"],
            stdin=TEXT.encode(),
        ),
        Case(
            "compress/agent-and-method",
            ["compress", "--agent", "x", "--method", "truncation"],
            stdin=TEXT.encode(),
        ),
        Case(
            "compress/two-letters",
            ["compress", "--method", "truncation", "--rate", "0.5"],
            stdin=b"Hi",
            expect="either",
            check=compressed_text_ok,
        ),
        Case(
            "compress/one-emoji",
            ["compress", "--method", "truncation", "--rate", "0.5"],
            stdin="🚀".encode(),
            expect="either",
            check=compressed_text_ok,
        ),
        Case(
            "compress/emoji-text",
            ["compress", "--method", "span_self_information", "--rate", "0.5"],
            stdin=EMOJI.encode(),
            expect="ok",
            check=compressed_text_ok,
        ),
        Case(
            "compress/utf8-bom-stdin",
            ["compress", "--method", "truncation", "--rate", "0.3"],
            stdin="\ufeff".encode() + TEXT.encode(),
            expect="ok",
            check=lambda w, c, r: (
                compressed_text_ok(w, c, r)
                or ("the byte-order mark is in the output" if "\ufeff" in r[0].stdout else None)
            ),
        ),
        Case(
            "compress/nul-bytes",
            ["compress", "--method", "truncation", "--rate", "0.3"],
            stdin=b"abc\x00def\x00 ghi jkl mno",
            expect="either",
            check=compressed_text_ok,
        ),
        Case(
            "compress/trained-agent",
            ["compress", "--agent", "run", "--rate", "0.5"],
            stdin=TEXT.encode(),
            setup=copy_of("run"),
            expect="ok",
            check=compressed_text_ok,
        ),
        # ---- activation
        Case("activation/no-subcommand", ["activation"]),
        Case(
            "activation/train-help",
            ["activation", "train", "--help"],
            expect="ok",
            check=stdout_has("--max_steps"),
        ),
        Case(
            "activation/evaluate-help",
            ["activation", "evaluate", "--help"],
            expect="ok",
            check=stdout_has("--thresholds"),
        ),
        Case("activation/max-steps-negative", ["activation", "train", "--max_steps", "-1"]),
        Case("activation/threshold-over-1", ["activation", "evaluate", "--thresholds", "1.5"]),
        Case("activation/thresholds-empty", ["activation", "evaluate", "--thresholds", ""]),
        Case(
            "activation/output-user-folder",
            ["activation", "train", "--output_dir", "userdir"],
            setup=user_dir,
            check=user_data_kept,
        ),
        Case(
            "activation/config-unknown-key",
            ["activation", "train", "--config", "c.json"],
            setup=write("c.json", '{"max_stepz": 3}'),
        ),
        # ---- label
        Case("label/unknown-flag", ["label", "--bogus"]),
        Case("label/rate-1", ["label", "--rates", "1.0", "--output_dir", "o"]),
        Case("label/candidates-negative", ["label", "--candidates", "-1", "--output_dir", "o"]),
        Case(
            "label/output-user-folder",
            ["label", "--judge_name", "tiny-random", "--max_documents", "2", "--output_dir", "userdir"],
            setup=user_dir,
            check=user_data_kept,
        ),
        Case("label/data-missing", ["label", "--data_path", "missing.jsonl", "--output_dir", "o"]),
        # ---- the move agent: tokenmask moves, and the search methods' names
        Case("moves/unknown-step", ["moves", "frob"]),
        Case("moves/table-unknown-flag", ["moves", "table", "--bogus"]),
        Case("moves/table-rate-1", ["moves", "table", "--rates", "1.0"]),
        Case("moves/table-method-not-a-search", ["moves", "table", "--method", "truncation"]),
        Case("moves/table-lookahead-0", ["moves", "table", "--method", "refine_lookahead:p:l0:truncation"]),
        Case("moves/table-corpus-missing", ["moves", "table", "--corpus", "missing.jsonl"]),
        Case("moves/table-chunk-0", ["moves", "table", "--chunk", "0"]),
        Case(
            "moves/table-out-user-folder",
            ["moves", "table", "--out", "userdir", "--overwrite", "true"],
            setup=user_dir,
            check=user_data_kept,
        ),
        Case("moves/train-table-missing", ["moves", "train", "--table", "missing.npz"]),
        Case(
            "moves/train-table-not-npz",
            ["moves", "train", "--table", "notes.txt"],
            setup=write("notes.txt", "my notes"),
        ),
        Case("moves/train-algo-unknown", ["moves", "train", "--algo", "dqn"]),
        Case("moves/train-steps-negative", ["moves", "train", "--steps", "-1"]),
        Case(
            "moves/train-out-user-folder",
            ["moves", "train", "--out", "userdir", "--overwrite", "true"],
            setup=user_dir,
            check=user_data_kept,
        ),
        Case("moves/report-table-missing", ["moves", "report", "--tables", "missing.npz"]),
        Case("moves/report-agent-not-name-equals", ["moves", "report", "--agents", "a.zip"]),
        Case(
            "moves/report-agent-not-zip",
            ["moves", "report", "--agents", "x=notes.txt"],
            setup=write("notes.txt", "my notes"),
        ),
        Case(
            "evaluate/move-agent-policy-missing",
            ["evaluate", "--methods", "move_agent:missing.zip:truncation", *EVAL_SMALL, "--output_dir", "o"],
        ),
        Case(
            "evaluate/move-agent-policy-not-zip",
            ["evaluate", "--methods", "move_agent:notes.txt:truncation", *EVAL_SMALL, "--output_dir", "o"],
            setup=write("notes.txt", "my notes"),
        ),
        Case(
            "evaluate/move-agent-fp16",
            ["evaluate", "--methods", "move_agent:default:fp16:truncation", *EVAL_SMALL, "--output_dir", "o"],
        ),
        Case(
            "evaluate/refine-no-base",
            ["evaluate", "--methods", "refine_lookahead:", *EVAL_SMALL, "--output_dir", "o"],
        ),
        Case(
            "evaluate/refine-of-a-search",
            [
                "evaluate",
                "--methods",
                "refine_lookahead:move_agent:default:truncation",
                *EVAL_SMALL,
                "--output_dir",
                "o",
            ],
        ),
        Case(
            "compress/move-agent-policy-missing",
            ["compress", "--method", "move_agent:missing.zip:truncation"],
            stdin=TEXT.encode(),
        ),
    ]
    for case in cases:
        case.argv = [a.replace(W, "{W}") for a in case.argv]
    return cases


# ---------------------------------------------------------------------------------------- fixtures
def build_fixtures(work: Path) -> None:
    """Bad files, prepared corpora, a tiny trained run and damaged copies of it, in ``work``."""
    texts = [
        json.loads(line)["text"] for line in (REPO / "data" / "pydocs.jsonl").read_text().splitlines()[:40]
    ]
    (work / "five.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:5]))
    (work / "short.jsonl").write_text(
        "".join(json.dumps({"text": f"tiny text {i}."}) + "\n" for i in range(30))
    )
    (work / "null_text.jsonl").write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in texts[:10]) + '{"text": null}\n'
    )
    (work / "emoji.txt").write_text((EMOJI + "\n") * 20)
    steps = [
        [
            "prepare-data",
            "--data_path",
            "sample",
            "--max_sequences",
            "60",
            "--max_length",
            "128",
            "--min_length",
            "32",
            "--output_dir",
            "prepared",
        ],
        [
            "prepare-data",
            "--data_path",
            "sample",
            "--max_sequences",
            "20",
            "--split_fractions",
            "1,0,0",
            "--output_dir",
            "prepared_train_only",
        ],
        ["train", "--config", str(QUICK), "--total_timesteps", "16", "--run_dir", "run"],
    ]
    for argv in steps:
        done = subprocess.run(
            [sys.executable, "-m", "tokenmask", *argv], cwd=work, env=ENV, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise SystemExit(f"fixture `tokenmask {' '.join(argv)}` failed:\n{done.stderr[-2000:]}")
    run = work / "run"
    latest = sorted((run / "checkpoints").glob("step-*"))[-1].relative_to(run)

    def damaged(name: str, damage: Callable[[Path], object]) -> None:
        shutil.copytree(run, work / name)
        damage(work / name / latest)

    def bad_policy(folder: Path) -> None:
        agent = folder / "agent.zip"
        with zipfile.ZipFile(agent) as old:
            members = {n: old.read(n) for n in old.namelist()}
        members["policy.pth"] = b"\x00garbage" * 100
        with zipfile.ZipFile(agent, "w") as new:
            for name, content in members.items():
                new.writestr(name, content)

    def truncated_zip(folder: Path) -> None:
        agent = folder / "agent.zip"
        agent.write_bytes(agent.read_bytes()[: agent.stat().st_size // 2])

    damaged("run_bad_policy", bad_policy)
    damaged("run_truncated_zip", truncated_zip)
    damaged("run_no_recon", lambda f: shutil.rmtree(f / "reconstructor"))
    damaged("run_bad_state", lambda f: (f / "state.json").write_text("{not json"))
    damaged("run_bad_manifest", lambda f: (f / "checkpoint.json").write_text("[]"))
    damaged("run_bad_rng", lambda f: (f / "rng.json").write_text('{"python": 5}'))
    damaged("run_bad_config", lambda f: (f / "config.json").write_text('{"env": 5}'))

    def no_config(folder: Path) -> None:
        (folder / "config.json").unlink()
        (folder.parents[1] / "config.json").unlink()

    damaged("run_no_config", no_config)


# ---------------------------------------------------------------------------------------- running CLI cases
def _is_clear_cli_error(result: Result) -> bool:
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    if result.returncode == 2 and not lines and result.stdout.startswith("usage:"):
        return True  # no command: the usage is printed
    if result.returncode != 2 or not lines:
        return False
    last = lines[-1]
    return last.startswith("tokenmask") and ": error: " in last and "internal error" not in last


def run_cli(case: Case, work: Path, root: Path) -> tuple[str, str, float]:
    """Run one CLI case; return its outcome, a detail, and seconds."""
    folder = root / case.name.replace("/", "__")
    folder.mkdir(parents=True)
    if case.setup is not None:
        case.setup(work, folder)
    argv = [a.replace("{W}", str(work)) for a in case.argv]
    command = [sys.executable, "-m", "tokenmask", *argv]
    started = time.perf_counter()
    copies = 2 if case.concurrent else 1
    processes = [
        subprocess.Popen(
            command,
            cwd=folder,
            env=ENV,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        for _ in range(copies)
    ]
    results: list[Result] = []
    hung = False
    for process in processes:
        try:
            out, err = process.communicate(
                case.stdin or b"", timeout=max(1.0, case.timeout - (time.perf_counter() - started))
            )
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
            hung = True
        results.append(
            Result(process.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), 0.0)
        )
    seconds = time.perf_counter() - started
    if hung:
        return "hang", f"no answer in {case.timeout:.0f} s", seconds
    for result in results:
        if "Traceback (most recent call last)" in result.stderr or "internal error" in result.stderr:
            return "traceback", _last_line(result.stderr), seconds
    errors = [r for r in results if r.returncode != 0]
    for result in errors:
        if not _is_clear_cli_error(result):
            return "traceback", f"exit {result.returncode}: {_last_line(result.stderr)}", seconds
    reason = case.check(work, folder, results) if case.check is not None else None
    if reason is not None:
        return "silent wrong", reason, seconds
    if errors:
        if case.expect == "ok" and len(errors) == len(results):
            return "clear error", f"REFUSED A VALID INPUT: {_last_line(errors[0].stderr)}", seconds
        return "clear error", _last_line(errors[0].stderr), seconds
    if case.expect == "error":
        return (
            "silent wrong",
            f"exit 0 for an input that must be refused: {_last_line(results[0].stdout)}",
            seconds,
        )
    return "ok", _last_line(results[0].stderr) or _last_line(results[0].stdout), seconds


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:160] if lines else ""


# ---------------------------------------------------------------------------------------- API cases
@dataclass
class ApiCase:
    """One Python-API case: ``call(ctx)`` runs it; ``check(value)`` says why a returned value is wrong."""

    name: str
    call: Callable[[dict[str, Any]], Any]
    expect: str = "error"
    check: Callable[[Any], str | None] | None = None


def _env(ctx: dict[str, Any], **options: Any) -> Any:
    from tokenmask.envs import TokenMaskEnv

    return TokenMaskEnv(reconstructor=ctx["tiny"], documents=[TEXT] * 4, **options)


def _moves_env(ctx: dict[str, Any], **options: Any) -> Any:
    import gymnasium as gym

    import tokenmask  # noqa: F401  (registers TokenMaskMoves-v0)

    return gym.make("TokenMaskMoves-v0", **options)


def _moves_step(ctx: dict[str, Any], action: int) -> Any:
    env = _moves_env(ctx)
    env.reset(seed=0)
    return env.step(action)


def _compress(ctx: dict[str, Any], texts: Any, rate: Any = 0.5, **kwargs: Any) -> Any:
    import tokenmask

    kwargs.setdefault("method", "truncation")
    kwargs.setdefault("judge", ctx["tiny"])
    return tokenmask.compress(texts, rate=rate, **kwargs)


def _no_fffd(value: Any) -> str | None:
    text = value.text if hasattr(value, "text") else str(value)
    if "\ufffd" in text:
        return f"U+FFFD in the output: {text!r}"
    if not text.strip():
        return "an empty compressed text"
    return None


def _stepped(ctx: dict[str, Any], action: Any, reset: bool = True) -> Any:
    env = _env(ctx)
    if reset:
        env.reset(seed=0)
    return env.step(action)


def _vector_restore(ctx: dict[str, Any]) -> Any:
    from tokenmask.envs import TokenMaskVectorEnv

    env = TokenMaskVectorEnv(num_envs=2, reconstructor=ctx["tiny"], documents=[TEXT] * 4)
    env.reset(seed=0)
    return env.restore_draw_state(env.draw_state()[:1])


def _corrupt_reconstructor(ctx: dict[str, Any]) -> Any:
    from tokenmask.reconstructors import Reconstructor

    folder = Path(ctx["scratch"]) / "recon"
    ctx["tiny"].save_pretrained(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return Reconstructor.from_pretrained(folder, device="cpu")


def _load_config(ctx: dict[str, Any], text: str, cls: str = "train") -> Any:
    from tokenmask.config import load_config
    from tokenmask.data import PrepareDataConfig
    from tokenmask.train.config import TrainConfig

    path = Path(ctx["scratch"]) / "config.json"
    path.write_text(text)
    return load_config(TrainConfig if cls == "train" else PrepareDataConfig, str(path))


def _prepare(ctx: dict[str, Any], path: str, **overrides: Any) -> Any:
    from tokenmask.data import PrepareDataConfig, prepare_data

    out = Path(ctx["scratch"]) / f"prepared-{time.monotonic_ns()}"
    config = PrepareDataConfig(data_path=path, output_dir=str(out), **overrides)
    return prepare_data(config, progress=False)


def _agent(ctx: dict[str, Any], run: str) -> Any:
    from tokenmask.train.agent import AgentCompressor

    return AgentCompressor.load(str(Path(ctx["work"]) / run), device="cpu")


def _token_bits(ctx: dict[str, Any], ids: Any, masks: Any = None) -> Any:
    return ctx["tiny"].token_bits(ids, masks)


def _select(ctx: dict[str, Any]) -> Any:
    from tokenmask.evaluate.metrics import select_documents

    return select_documents(["short"], ctx["tiny"], 32, 8, 2)


def api_cases() -> list[ApiCase]:
    """Every Python-API case (``ctx``: ``tiny`` reconstructor, ``work`` fixtures, ``scratch`` folder)."""
    big_id = 10**7
    return [
        ApiCase("api/compress-rate-1", lambda c: _compress(c, TEXT, 1.0)),
        ApiCase("api/compress-rate-negative", lambda c: _compress(c, TEXT, -0.5)),
        ApiCase("api/compress-rate-nan", lambda c: _compress(c, TEXT, float("nan"))),
        ApiCase("api/compress-rate-str", lambda c: _compress(c, TEXT, "0.5")),
        ApiCase("api/compress-rate-bool", lambda c: _compress(c, TEXT, True)),
        ApiCase("api/compress-empty-text", lambda c: _compress(c, "")),
        ApiCase("api/compress-none", lambda c: _compress(c, None)),
        ApiCase("api/compress-none-in-list", lambda c: _compress(c, [TEXT, None])),
        ApiCase("api/compress-bytes", lambda c: _compress(c, TEXT.encode())),
        ApiCase("api/compress-empty-list", lambda c: _compress(c, [])),
        ApiCase("api/compress-int", lambda c: _compress(c, 42)),
        ApiCase("api/compress-two-letters", lambda c: _compress(c, "Hi"), expect="either", check=_no_fffd),
        ApiCase("api/compress-one-emoji", lambda c: _compress(c, "🚀"), expect="either", check=_no_fffd),
        ApiCase(
            "api/compress-emoji-text",
            lambda c: _compress(c, EMOJI, method="random"),
            expect="ok",
            check=_no_fffd,
        ),
        ApiCase(
            "api/compress-emoji-span",
            lambda c: _compress(c, EMOJI * 3, method="span_self_information:8"),
            expect="ok",
            check=_no_fffd,
        ),
        ApiCase(
            "api/compress-nul-chars",
            lambda c: _compress(c, "abc\x00def ghi"),
            expect="either",
            check=_no_fffd,
        ),
        ApiCase("api/compress-lone-surrogate", lambda c: _compress(c, "caf\udce9 au lait " * 5)),
        ApiCase(
            "api/compress-short-long-mix",
            lambda c: _compress(c, ["Hi", TEXT]),
            expect="ok",
            check=lambda v: next((_no_fffd(r) for r in v if _no_fffd(r)), None),
        ),
        ApiCase("api/compress-method-unknown", lambda c: _compress(c, TEXT, method="bogus")),
        ApiCase(
            "api/compress-agent-missing", lambda c: _compress(c, TEXT, method=None, agent="/nonexistent")
        ),
        ApiCase("api/compress-agent-int", lambda c: _compress(c, TEXT, method=None, agent=5)),
        ApiCase("api/compress-agent-and-method", lambda c: _compress(c, TEXT, agent="x")),
        ApiCase("api/compress-judge-missing", lambda c: _compress(c, TEXT, judge="/nonexistent/judge")),
        ApiCase("api/compress-batch-size-0", lambda c: _compress(c, TEXT, batch_size=0)),
        ApiCase("api/compress-device-bogus", lambda c: _compress(c, TEXT, judge="default", device="tpu9")),
        ApiCase("api/env-window-0", lambda c: _env(c, window=0)),
        ApiCase("api/env-target-rate-1.5", lambda c: _env(c, target_rate=1.5)),
        ApiCase("api/env-unknown-kwarg", lambda c: _env(c, windw=16)),
        ApiCase("api/env-span-not-divisor", lambda c: _env(c, window=16, span=3)),
        ApiCase(
            "api/env-empty-corpus",
            lambda c: __import__("tokenmask.envs", fromlist=["x"]).TokenMaskEnv(
                reconstructor=c["tiny"], documents=[]
            ),
        ),
        ApiCase(
            "api/env-none-document",
            lambda c: __import__("tokenmask.envs", fromlist=["x"]).TokenMaskEnv(
                reconstructor=c["tiny"], documents=[None]
            ),
        ),
        ApiCase("api/env-step-before-reset", lambda c: _stepped(c, [0] * 16, reset=False)),
        ApiCase("api/env-action-shape", lambda c: _stepped(c, [0] * 3)),
        ApiCase("api/env-action-values", lambda c: _stepped(c, [2] * 16)),
        ApiCase("api/env-reset-document-negative", lambda c: _env(c).reset(options={"document": -1})),
        ApiCase("api/env-reset-rate-2", lambda c: _env(c).reset(options={"target_rate": 2.0})),
        ApiCase("api/env-reset-unknown-option", lambda c: _env(c).reset(options={"doc": 1})),
        ApiCase(
            "api/vector-env-0",
            lambda c: __import__("tokenmask.envs", fromlist=["x"]).TokenMaskVectorEnv(
                num_envs=0, reconstructor=c["tiny"]
            ),
        ),
        ApiCase("api/vector-env-restore-wrong-rows", _vector_restore),
        ApiCase("api/token-bits-oov", lambda c: _token_bits(c, [[1, 2, big_id]])),
        ApiCase("api/token-bits-negative-id", lambda c: _token_bits(c, [[1, -5, 3]])),
        ApiCase("api/token-bits-mask-length", lambda c: _token_bits(c, [[1, 2, 3]], [[True]])),
        ApiCase(
            "api/token-bits-empty-doc",
            lambda c: _token_bits(c, [[]]),
            expect="either",
            check=lambda v: None if len(v[0]) == 0 else "bits for no token",
        ),
        ApiCase("api/token-bits-str", lambda c: _token_bits(c, ["hello"])),
        ApiCase("api/token-bits-float-ids", lambda c: _token_bits(c, [[1.5, 2.0]])),
        ApiCase(
            "api/env-document-shorter-than-window",
            lambda c: _env(c, window=128).reset(seed=0),
            expect="either",
        ),
        ApiCase("api/encode-none", lambda c: c["tiny"].encode(None)),
        ApiCase(
            "api/reconstructor-missing",
            lambda c: __import__("tokenmask.reconstructors", fromlist=["x"]).Reconstructor.load(
                "/nonexistent/model"
            ),
        ),
        ApiCase(
            "api/reconstructor-empty-folder",
            lambda c: __import__("tokenmask.reconstructors", fromlist=["x"]).Reconstructor.from_pretrained(
                c["scratch"]
            ),
        ),
        ApiCase("api/reconstructor-corrupt-weights", _corrupt_reconstructor),
        ApiCase("api/config-bad-json", lambda c: _load_config(c, '{"seed": }')),
        ApiCase("api/config-unknown-key", lambda c: _load_config(c, '{"sed": 1}')),
        ApiCase("api/config-bool-for-int", lambda c: _load_config(c, '{"n_envs": true}')),
        ApiCase("api/config-float-for-int", lambda c: _load_config(c, '{"n_envs": 2.5}')),
        ApiCase(
            "api/config-string-for-list",
            lambda c: _load_config(c, '{"split_fractions": "abc"}', cls="prepare"),
        ),
        ApiCase("api/prepare-five-texts", lambda c: _prepare(c, str(Path(c["work"]) / "five.jsonl"))),
        ApiCase("api/prepare-missing", lambda c: _prepare(c, "/nonexistent.jsonl")),
        ApiCase(
            "api/iter-texts-missing",
            lambda c: list(__import__("tokenmask.data", fromlist=["x"]).iter_texts("/nonexistent.jsonl")),
        ),
        ApiCase("api/agent-damaged-policy", lambda c: _agent(c, "run_bad_policy")),
        ApiCase("api/agent-no-reconstructor", lambda c: _agent(c, "run_no_recon")),
        ApiCase("api/agent-user-folder", lambda c: _agent(c, "prepared")),
        ApiCase(
            "api/select-documents-too-short",
            _select,
            expect="either",
            check=lambda v: None if len(v) == 0 else f"{len(v)} documents from one short text",
        ),
        ApiCase(
            "api/register-method-bad-name",
            lambda c: __import__("tokenmask.evaluate", fromlist=["x"]).register_method(
                "bad name!", lambda a, ctx: None
            ),
        ),
        ApiCase(
            "api/compress-move-agent-policy-missing",
            lambda c: _compress(c, TEXT, method="move_agent:/no.zip:truncation"),
        ),
        ApiCase(
            "api/compress-refine-of-a-search", lambda c: _compress(c, TEXT, method="refine:refine:truncation")
        ),
        ApiCase("api/moves-env-table-missing", lambda c: _moves_env(c, table="/nonexistent.npz")),
        ApiCase("api/moves-env-unknown-rate", lambda c: _moves_env(c, rates=[0.9])),
        ApiCase("api/moves-env-weights-negative", lambda c: _moves_env(c, retention_weight=-1.0)),
        ApiCase(
            "api/moves-env-action-out-of-range",
            lambda c: _moves_step(c, 99),
            expect="either",
            check=lambda v: None if v[1] <= 0 else f"reward {v[1]} for a padding action",
        ),
        ApiCase(
            "api/build-method-agent-empty",
            lambda c: __import__("tokenmask.evaluate", fromlist=["x"]).build_method(
                "agent:", __import__("tokenmask.evaluate", fromlist=["x"]).MethodContext(judge=c["tiny"])
            ),
        ),
    ]


def _is_clear_api_error(exc: BaseException) -> bool:
    """Raised by a check of tokenmask's own (a ``raise`` in the package), not deep inside a library."""
    from tokenmask.errors import TokenmaskError

    if isinstance(exc, TokenmaskError):
        return True
    if not isinstance(exc, (ValueError, TypeError, OSError, NotImplementedError, RuntimeError)):
        return False
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return False
    last = frames[-1]
    return str(Path(last.filename).resolve()).startswith(str(PACKAGE)) and (
        last.line or ""
    ).lstrip().startswith("raise")


def run_api_worker(work: Path, names: list[str], timeout: float) -> None:
    """The worker side: run the named API cases in this process, one JSON line each."""
    from tokenmask.testing import tiny_reconstructor

    ctx: dict[str, Any] = {"work": str(work), "tiny": tiny_reconstructor(seed=0, device="cpu")}

    def alarm(signum: int, frame: Any) -> None:
        raise TimeoutError("hang")

    signal.signal(signal.SIGALRM, alarm)
    for case in api_cases():
        if case.name not in names:
            continue
        ctx["scratch"] = tempfile.mkdtemp(prefix="api-", dir=work)
        started = time.perf_counter()
        signal.alarm(int(timeout))
        outcome, detail = "ok", ""
        try:
            value = case.call(ctx)
            signal.alarm(0)
            reason = case.check(value) if case.check is not None else None
            if reason is not None:
                outcome, detail = "silent wrong", reason
            elif case.expect == "error":
                outcome, detail = (
                    "silent wrong",
                    f"returned {str(value)[:120]!r} for an input that must be refused",
                )
            else:
                detail = str(value)[:120]
        except TimeoutError as exc:
            outcome, detail = (
                ("hang", f"no answer in {timeout:.0f} s") if str(exc) == "hang" else ("traceback", repr(exc))
            )
        except Exception as exc:
            signal.alarm(0)
            message = f"{type(exc).__name__}: {str(exc).splitlines()[0][:150] if str(exc).strip() else ''}"
            if _is_clear_api_error(exc):
                outcome = "clear error"
                detail = ("REFUSED A VALID INPUT: " if case.expect == "ok" else "") + message
            else:
                frame = traceback.extract_tb(exc.__traceback__)[-1]
                outcome, detail = (
                    "traceback",
                    f"{message} (raised at {Path(frame.filename).name}:{frame.lineno})",
                )
        print(
            json.dumps(
                {
                    "name": case.name,
                    "outcome": outcome,
                    "detail": detail,
                    "seconds": time.perf_counter() - started,
                }
            ),
            flush=True,
        )


def run_api(work: Path, names: list[str], timeout: float) -> list[tuple[str, str, str, float]]:
    if not names:
        return []
    done = subprocess.run(
        [sys.executable, __file__, "--worker", str(work), "--timeout", str(timeout), "--only", *names],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout * len(names) + 300,
    )
    rows = {}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            rows[row["name"]] = (row["name"], row["outcome"], row["detail"], row["seconds"])
    missing = [n for n in names if n not in rows]
    for name in missing:  # the worker died on an earlier case
        rows[name] = (name, "traceback", f"the worker died: {_last_line(done.stderr)}", 0.0)
    return [rows[n] for n in names]


# ---------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="*", default=None, help="run the cases whose name holds any of these")
    parser.add_argument(
        "--work_dir", default=None, help="where fixtures and case folders go (default: a temporary folder)"
    )
    parser.add_argument(
        "--timeout", type=float, default=240.0, help="seconds per API case before it counts as a hang"
    )
    parser.add_argument("--list", action="store_true", help="print the case names and exit")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None, help="also write the rows and counts to this JSON file")
    args = parser.parse_args(argv)
    if args.worker:
        run_api_worker(Path(args.worker), args.only or [], args.timeout)
        return 0
    cli = [c for c in cli_cases() if not args.only or any(s in c.name for s in args.only)]
    api = [c.name for c in api_cases() if not args.only or any(s in c.name for s in args.only)]
    if args.list:
        print("\n".join([c.name for c in cli] + api))
        return 0
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="tokenmask-bad-inputs-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if not (work / "run").is_dir():
        print(f"building fixtures in {work} ...", flush=True)
        build_fixtures(work)
    root = work / f"cases-{time.strftime('%Y%m%d-%H%M%S')}"
    rows: list[tuple[str, str, str, float]] = []
    for case in cli:
        outcome, detail, seconds = run_cli(case, work, root)
        rows.append((case.name, outcome, detail, seconds))
        print(f"{outcome:13s} {seconds:6.1f}s  {case.name:42s} {detail}", flush=True)
    for row in run_api(work, api, args.timeout):
        rows.append(row)
        print(f"{row[1]:13s} {row[3]:6.1f}s  {row[0]:42s} {row[2]}", flush=True)
    counts = Counter(outcome for _, outcome, _, _ in rows)
    cli_counts = Counter(outcome for name, outcome, _, _ in rows if not name.startswith("api/"))
    api_counts = Counter(outcome for name, outcome, _, _ in rows if name.startswith("api/"))
    print()
    print("| cases | " + " | ".join(OUTCOMES) + " | total |")
    print("| --- | " + " | ".join("---" for _ in OUTCOMES) + " | --- |")
    for label, counter in (("CLI", cli_counts), ("Python API", api_counts), ("all", counts)):
        print(
            f"| {label} | "
            + " | ".join(str(counter.get(o, 0)) for o in OUTCOMES)
            + f" | {sum(counter.values())} |"
        )
    print(f"\n{len(rows)} cases in {time.perf_counter() - started:.0f} s; case folders in {root}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"rows": rows, "counts": {o: counts.get(o, 0) for o in OUTCOMES}}, indent=1) + "\n"
        )
    return 1 if any(counts.get(o, 0) for o in BAD) else 0


if __name__ == "__main__":
    sys.exit(main())
