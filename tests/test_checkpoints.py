"""Checkpoints of ``tokenmask train`` survive any kill: SIGKILL at random moments, SIGTERM / SIGINT,
damaged files, changed options, two writers, the flat layout of older runs, behaviour cloning first.

The kill tests train tiny runs (tiny random LMs, a small policy) in child processes forked by a
fork server that imported :mod:`checkpoint_worker` once, so each restart costs about two seconds.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback

from tokenmask.cli import main
from tokenmask.config import build_config, load_config
from tokenmask.envs.episodes import RECORD_KEY
from tokenmask.errors import ConfigError, CorruptFileError, OutputExistsError
from tokenmask.evaluate.runner import check_methods
from tokenmask.io import atomic_write_json
from tokenmask.reconstructors import Reconstructor
from tokenmask.train.agent import AgentCompressor
from tokenmask.train.config import TrainConfig
from tokenmask.train.loading import load_run_config
from tokenmask.train.run_folder import (
    AGENT_FILE,
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    RECONSTRUCTOR_DIR,
    STATE_FILE,
    Checkpoint,
    RunFolder,
    RunFolderError,
)
from tokenmask.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "configs" / "dev" / "quick_test.json"
SMALL_POLICY = {
    "features_extractor_kwargs": {"d_model": 32, "num_layers": 1, "num_buckets": 256, "embed_dim": 16}
}
TINY: dict[str, Any] = {
    "n_envs": 1,
    "n_steps": 4,
    "batch_size": 4,
    "n_epochs": 1,
    "policy_kwargs": SMALL_POLICY,
    "joint_period": 1,
    "eval_methods": [],
    "eval_documents": 1,
    "context_tokens": 16,
    "continuation_tokens": 8,
    "text_samples": 0,
    "checkpoint_freq": 4,
    "tensorboard": False,
    "progress_bar": False,
    "env.recoverability_weight": 0.0,
}
"""A tiny run: one rollout = 4 env steps (2 episodes) = one checkpoint, the reconstructor fine-tuned every rollout."""
KEEP = 2


def tiny_values(run_dir: Path, total_timesteps: int) -> dict[str, Any]:
    """The config keys of a tiny run (quick_test.json with :data:`TINY`), as a plain dict."""
    values = json.loads(QUICK.read_text())
    values.pop("_comment", None)
    for key, value in {**TINY, "run_dir": str(run_dir), "total_timesteps": total_timesteps}.items():
        head, _, rest = key.partition(".")
        if rest:
            values[head] = {**values[head], rest: value}
        else:
            values[key] = value
    return values


def tiny_config(run_dir: Path, total_timesteps: int = 16) -> TrainConfig:
    return build_config(TrainConfig, tiny_values(run_dir, total_timesteps))


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (dot-files too) -> sha256: proof that a failed command changed nothing."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def leftovers(run_dir: Path) -> list[str]:
    """Temporary or retired checkpoint folders, and the run folder's lock file."""
    names = (
        [p.name for p in (run_dir / CHECKPOINTS_DIR).glob(".step-*")]
        if (run_dir / CHECKPOINTS_DIR).is_dir()
        else []
    )
    return names + [p.name for p in run_dir.parent.glob(f".{run_dir.name}.lock")]


def check_consistent(run_dir: Path, joint: bool = True, keep: int = KEEP) -> Checkpoint | None:
    """The run folder is loadable and its current checkpoint consistent: agent, state, config and
    reconstructor written together at one step (the manifest's sizes and hashes match every file)."""
    run = RunFolder(run_dir)
    assert not run.incomplete_checkpoints()
    steps = [c.step for c in run.checkpoints()]
    assert len(set(steps)) <= keep, steps
    latest = run.latest_checkpoint()
    if latest is None:
        return None
    latest.verify("-")
    state = latest.read_state()
    model = PPO.load(latest.agent_file, device="cpu")
    assert latest.read_manifest()["step"] == state["num_timesteps"] == model.num_timesteps == latest.step
    config, _ = load_run_config(run_dir)
    assert config.total_timesteps >= 1 and run.read_state() == state
    assert latest.read_rng()["env_seed"] == config.seed + latest.step
    if joint:
        manifest_files = latest.read_manifest()["files"]
        assert f"{RECONSTRUCTOR_DIR}/model.safetensors" in manifest_files
        assert Reconstructor.from_pretrained(latest.reconstructor_dir, device="cpu").mask_token_id is not None
        assert state["joint_training"]["rounds"] >= 0
    return latest


# ---------------------------------------------------------------------------------------- processes
@pytest.fixture(scope="module")
def fork_server() -> multiprocessing.context.ForkServerContext:
    """A fork server that imported the worker (and its tokenizer) once; children start in ~2 s."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["checkpoint_worker"])
    return context


def start(
    context: multiprocessing.context.ForkServerContext,
    values: dict[str, Any],
    resume: bool,
    pause: float = 0.0,
) -> Any:
    import checkpoint_worker

    process = context.Process(target=checkpoint_worker.train, args=(values, resume, pause))
    process.start()
    return process


def wait_for(condition: Any, process: Any, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.is_alive(), f"the training process ended (exit code {process.exitcode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def wait_until_training(run_dir: Path, since_ns: int, process: Any) -> None:
    """Until the child's ``train()`` started (it rewrites the root config.json with its handlers installed)."""
    config = run_dir / CONFIG_FILE
    wait_for(lambda: config.is_file() and config.stat().st_mtime_ns >= since_ns, process, "training started")


def newest_step(run_dir: Path) -> int:
    latest = RunFolder(run_dir).latest_checkpoint()
    return -1 if latest is None else latest.step


def temporary_checkpoints(run_dir: Path, pid: int) -> list[Path]:
    """The temporary checkpoint folders process ``pid`` is writing (``.step-N.tmp-HOST-PID-*``)."""
    folder = run_dir / CHECKPOINTS_DIR
    return [p for p in folder.glob(".step-*.tmp-*") if f"-{pid}-" in p.name] if folder.is_dir() else []


KILL_MOMENTS = [
    "training",
    "checkpoint",
    "startup",
    "training",
    "checkpoint",
    "startup",
    "training",
    "checkpoint",
]
"""Where each SIGKILL lands: while the run loads, while it trains (after its first new checkpoint), or in
the middle of writing a checkpoint."""


def test_sigkill_at_random_moments_never_breaks_the_run_folder(tmp_path, fork_server):
    """Eight SIGKILLs at seeded random moments: while the run starts, while it trains, and inside a
    checkpoint being written (slowed down so the kill lands there); after each, the run folder loads
    and is consistent and lost no complete checkpoint, and the next start resumes from it."""
    rng = random.Random(15)
    run_dir = tmp_path / "run"
    values = tiny_values(run_dir, total_timesteps=10_000)
    for moment in KILL_MOMENTS:
        before = newest_step(run_dir)
        resume = RunFolder(run_dir).has_agent()
        process = start(
            fork_server,
            {"run_dir": str(run_dir)} if resume else values,
            resume,
            1.0 if moment == "checkpoint" else 0.0,
        )
        if moment == "startup":
            time.sleep(rng.uniform(0.1, 2.0))
        elif (
            moment == "training"
        ):  # anywhere in a rollout, an update, a fine-tuning round, the next checkpoint
            wait_for(lambda before=before: newest_step(run_dir) > before, process, "a new checkpoint")
            time.sleep(rng.uniform(0.0, 2.0))
        else:  # inside the child's first checkpoint, before its manifest (written 1 s late)
            wait_for(
                lambda pid=process.pid: temporary_checkpoints(run_dir, pid),
                process,
                "a checkpoint was being written",
            )
            time.sleep(rng.uniform(0.0, 0.4))
        assert process.is_alive(), f"exit code {process.exitcode}"
        os.kill(process.pid, signal.SIGKILL)
        process.join(30)
        assert process.exitcode == -signal.SIGKILL
        check_consistent(run_dir)
        assert newest_step(run_dir) >= before  # a kill never loses a complete checkpoint
        if moment == "checkpoint":
            assert newest_step(run_dir) == before and temporary_checkpoints(run_dir, process.pid)
    # the next start cleans what the kills left, resumes from the newest checkpoint and finishes
    last_step = newest_step(run_dir)
    assert last_step >= 12
    process = start(fork_server, {"run_dir": str(run_dir), "total_timesteps": last_step + 8}, resume=True)
    process.join(120)
    assert process.exitcode == 0
    latest = check_consistent(run_dir)
    assert latest is not None and latest.read_state()["status"] == "finished"
    assert latest.step >= last_step + 8
    assert leftovers(run_dir) == []


def test_sigterm_and_sigint_save_a_checkpoint_and_exit_cleanly(tmp_path, fork_server):
    """SIGTERM (as a scheduler sends it) and SIGINT at seeded moments of training: a checkpoint at the
    signal, exit status 143 / 130, no temporary folder or lock left; the next start resumes from it."""
    rng = random.Random(143)
    run_dir = tmp_path / "run"
    values = tiny_values(run_dir, total_timesteps=10_000)
    last_step = -1
    for attempt, (sig, status, code) in enumerate(
        [
            (signal.SIGTERM, "terminated", 143),
            (signal.SIGTERM, "terminated", 143),
            (signal.SIGINT, "interrupted", 130),
        ]
    ):
        started = time.time_ns()
        process = start(
            fork_server, values if attempt == 0 else {"run_dir": str(run_dir)}, resume=attempt > 0
        )
        wait_until_training(run_dir, started, process)
        time.sleep(rng.uniform(0.0, 2.0))
        os.kill(process.pid, sig)
        process.join(60)
        assert process.exitcode == code
        latest = check_consistent(run_dir)
        assert latest is not None
        state = latest.read_state()
        assert (
            state["status"] == status and latest.step > last_step
        )  # written at the signal, after the last one
        assert leftovers(run_dir) == []
        last_step = latest.step


# ---------------------------------------------------------------------------------------- errors
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A tiny finished run with joint fine-tuning: two checkpoints kept (steps 4 and 8)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    assert Trainer(tiny_config(run_dir, total_timesteps=8)).train() == "finished"
    return run_dir


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def test_a_finished_run_keeps_its_last_checkpoints(finished_run, capsys):
    run = RunFolder(finished_run)
    assert [c.step for c in run.checkpoints()] == [4, 8]  # the final save replaced the periodic one at 8
    assert check_consistent(finished_run).read_state()["status"] == "finished"  # type: ignore[union-attr]
    agent = AgentCompressor.load(str(finished_run), device="cpu")
    assert agent.policy is not None


def damage_policy(agent_zip: Path) -> None:
    """Rewrite ``agent.zip`` with garbage in place of ``policy.pth`` (a valid zip: only the member is damaged)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(agent_zip) as old, zipfile.ZipFile(buffer, "w") as new:
        for name in old.namelist():
            new.writestr(name, b"\x00not a torch file" * 64 if name == "policy.pth" else old.read(name))
    agent_zip.write_bytes(buffer.getvalue())


def test_a_damaged_policy_is_named_and_the_run_folder_survives(run_copy, capsys):
    latest = RunFolder(run_copy).latest_checkpoint()
    assert latest is not None
    damage_policy(latest.agent_file)
    before = snapshot(run_copy)
    config, _ = load_run_config(run_copy)
    with pytest.raises(
        CorruptFileError,
        match=r"agent\.zip is damaged: policy\.pth inside it cannot be read.*Fix: delete .*step-000000004",
    ):
        Trainer(config, resume=True)
    with pytest.raises(CorruptFileError, match=r"policy\.pth"):
        AgentCompressor.load(str(run_copy), device="cpu")
    capsys.readouterr()
    assert main(["train", "--resume", str(run_copy)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "policy.pth" in err and "Fix:" in err and "Traceback" not in err
    assert snapshot(run_copy) == before
    # the fix the message names: drop the damaged checkpoint, resume from the one before it
    shutil.rmtree(latest.path)
    trainer = Trainer(load_run_config(run_copy)[0], resume=True)
    assert "from checkpoints/step-000000004 (step 4, status running)" in capsys.readouterr().out
    trainer.close()


def test_a_damaged_agent_zip_of_the_flat_layout_is_named(tmp_path):
    (tmp_path / AGENT_FILE).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(RunFolderError, match=r"agent\.zip is damaged: not a readable zip archive"):
        RunFolder(tmp_path).require_agent()


def test_a_fine_tuned_run_without_its_reconstructor_is_refused(run_copy):
    latest = RunFolder(run_copy).latest_checkpoint()
    assert latest is not None
    shutil.rmtree(latest.reconstructor_dir)
    before = snapshot(run_copy)
    config, _ = load_run_config(run_copy)
    with pytest.raises(
        RunFolderError, match=r"no reconstructor/ though the run fine-tuned its reconstructor.*Fix:"
    ):
        Trainer(config, resume=True)
    with pytest.raises(RunFolderError, match=r"has no fine-tuned reconstructor .*joint_period=1.*Fix:"):
        AgentCompressor.load(str(run_copy), device="cpu")
    with pytest.raises(
        RunFolderError, match=r"has no fine-tuned reconstructor"
    ):  # before any model loads, too
        check_methods([f"agent:{run_copy}"])
    assert isinstance(RunFolderError("x"), CorruptFileError)
    assert snapshot(run_copy) == before


def test_resume_with_a_changed_observation_option_names_the_key(run_copy, capsys):
    before = snapshot(run_copy)
    config, _ = load_run_config(run_copy, {"env.window": 32})
    with pytest.raises(
        ConfigError, match=r"--resume: env\.window is 16 in the run .* but 32 now.*Fix: drop --env\.window"
    ):
        Trainer(config, resume=True)
    for option in (
        ["--env.context_size", "2"],
        ["--env.span", "4"],
        ["--policy_kwargs", '{"net_arch": [8]}'],
    ):
        capsys.readouterr()
        assert main(["train", "--resume", str(run_copy), *option]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err) < 400 and len(err.splitlines()) == 1 and option[0].lstrip("-") in err, err
    assert snapshot(run_copy) == before


def test_an_env_of_other_spaces_is_a_short_config_error(finished_run, tiny_recon):
    """The last line of defence behind the key check: SB3's long space mismatch becomes one short ConfigError."""
    from tokenmask.envs.sb3_vec_env import TokenMaskSB3VecEnv
    from tokenmask.train.loading import load_agent

    agent = RunFolder(finished_run).require_agent()
    env = TokenMaskSB3VecEnv(num_envs=1, reconstructor=tiny_recon, window=32, context_size=4, max_tokens=32)
    with pytest.raises(
        ConfigError, match=r"^The env's observation space is not the one the saved agent .* Fix: "
    ) as error:
        load_agent(agent, "ppo", env=env, device="cpu")
    assert len(str(error.value)) < 400


def test_unknown_policy_kwargs_are_config_errors_naming_the_valid_keys(tmp_path, capsys):
    run_dir = tmp_path / "new"
    assert (
        main(["train", "--config", str(QUICK), "--run_dir", str(run_dir), "--policy_kwargs", '{"foo": 1}'])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert (
        "unknown key 'foo'" in err
        and "net_arch" in err
        and "features_extractor_kwargs" in err
        and "Fix:" in err
    )
    assert len(err.splitlines()) == 1 and not run_dir.exists()
    bad_extractor = {"features_extractor_kwargs": {"d_modle": 32}}
    with pytest.raises(
        ConfigError,
        match=r"unknown features_extractor_kwargs key 'd_modle'; TokenMaskExtractor takes .*d_model",
    ):
        Trainer(load_config(TrainConfig, QUICK, {"run_dir": str(run_dir), "policy_kwargs": bad_extractor}))
    with pytest.raises(ConfigError, match=r"activation_fn must be a Python class"):
        Trainer(
            load_config(
                TrainConfig, QUICK, {"run_dir": str(run_dir), "policy_kwargs": {"activation_fn": "relu"}}
            )
        )
    assert not run_dir.exists()


def test_two_trainings_into_one_folder_fail_clearly(run_copy):
    """Another process writing the folder (it holds the lock): a new run and a resume are refused, nothing changes."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from tokenmask.io import output_lock\n"
            "with output_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(60)",
            str(run_copy),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        before = snapshot(run_copy)
        config, _ = load_run_config(run_copy)
        with pytest.raises(
            OutputExistsError, match=rf"being written by another tokenmask process \(pid {holder.pid}\).*Fix:"
        ):
            Trainer(config, resume=True)
        assert snapshot(run_copy) == before
    finally:
        holder.kill()
        holder.wait()


def test_a_foreign_non_empty_folder_is_refused_and_kept(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "important.txt").write_text("x")
    assert main(["train", "--config", str(QUICK), "--run_dir", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "did not write" in err and "Fix:" in err
    assert (
        sorted(p.name for p in folder.iterdir()) == ["important.txt"]
        and (folder / "important.txt").read_text() == "x"
    )


def test_a_run_of_the_flat_layout_resumes_into_checkpoints(finished_run, tmp_path, capsys):
    """A run folder of earlier versions (agent.zip, state.json, reconstructor/ at its root, no marker) still resumes."""
    latest = RunFolder(finished_run).latest_checkpoint()
    assert latest is not None
    old = tmp_path / "old"
    old.mkdir()
    for name in (AGENT_FILE, STATE_FILE, CONFIG_FILE):
        shutil.copy(latest.path / name, old / name)
    shutil.copytree(latest.reconstructor_dir, old / RECONSTRUCTOR_DIR)
    atomic_write_json(
        old / STATE_FILE,
        {k: v for k, v in latest.read_state().items() if k not in ("joint_training", "checkpoint")},
    )
    # a temporary file of the old layout, left by a killed run (its process is gone)
    writer = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from tokenmask.io import temporary_dir_beside; temporary_dir_beside(sys.argv[1])",
            str(old / RECONSTRUCTOR_DIR),
        ],
        check=True,
    )
    assert writer.returncode == 0 and len(list(old.glob(".reconstructor.tmp-*"))) == 1
    run = RunFolder(old)
    assert run.has_agent() and run.has_reconstructor() and run.latest_checkpoint() is None
    config, _ = load_run_config(old, {"total_timesteps": 12})
    trainer = Trainer(config, resume=True)
    out = capsys.readouterr().out
    assert (
        "removed 1 temporary file(s)" in out
        and "from its root files (the flat layout of an earlier version) (step 8, status finished)" in out
    )
    assert trainer.train() == "finished"
    assert [c.step for c in run.checkpoints()] == [12] and run.read_state()["num_timesteps"] == 12
    assert check_consistent(old) is not None and list(old.glob(".reconstructor.tmp-*")) == []


class EpisodeRecorder(BaseCallback):
    """Records every finished episode as ``(num_timesteps, sub-env, document, target_rate)``."""

    def __init__(self, episodes: list[tuple[int, int, int, float]]) -> None:
        super().__init__()
        self.episodes = episodes

    def _on_step(self) -> bool:
        for row, (done, info) in enumerate(zip(self.locals["dones"], self.locals["infos"])):
            if done:
                record = info[RECORD_KEY]
                self.episodes.append((self.num_timesteps, row, record.document, record.target_rate))
        return True


class RecordingTrainer(Trainer):
    """A trainer whose finished episodes are recorded in :attr:`episodes`."""

    episodes: list[tuple[int, int, int, float]]

    def callbacks(self) -> list[BaseCallback]:
        self.episodes = []
        return [*super().callbacks(), EpisodeRecorder(self.episodes)]


def test_resume_plays_the_episodes_of_the_uninterrupted_run(tmp_path, capsys):
    """The env's draws are saved in the checkpoint, not reseeded: a run stopped at a checkpoint and
    resumed plays, per sub-env, the same documents at the same target rates as the run that never
    stopped (the episode in flight at the checkpoint again from its start, then the next ones)."""
    stop, total = 16, 48

    def config_for(name: str, steps: int) -> TrainConfig:
        values = tiny_values(tmp_path / name, steps)
        values.update(n_envs=2, joint_period=0, checkpoint_freq=0)
        values["env"] = {**values["env"], "target_rate_range": [0.2, 0.8], "shuffle": True}
        return build_config(TrainConfig, values)

    uninterrupted = RecordingTrainer(config_for("a", total))
    assert uninterrupted.train() == "finished"
    assert Trainer(config_for("b", stop)).train() == "finished"
    saved = RunFolder(tmp_path / "b").latest_checkpoint()
    assert saved is not None and saved.step == stop and len(saved.read_rng()["env"]) == 2
    config, _ = load_run_config(tmp_path / "b", {"total_timesteps": total})
    resumed = RecordingTrainer(config, resume=True)
    assert resumed.train() == "finished"
    for row in range(2):
        after = [(d, r) for step, i, d, r in uninterrupted.episodes if i == row and step > stop]
        replayed = [(d, r) for _, i, d, r in resumed.episodes if i == row]
        assert len(replayed) >= 3 and len({r for _, r in replayed}) > 1, replayed
        assert replayed == after[: len(replayed)], (row, replayed, after)


def test_keep_checkpoints_and_superseded_steps(tmp_path):
    config = tiny_config(tmp_path / "run", total_timesteps=16)
    setattr(config, "keep_checkpoints", 3)  # noqa: B010 - a key TrainConfig may not have yet
    config.joint_period = 0
    trainer = Trainer(config)
    assert trainer.train() == "finished"
    run = RunFolder(config.run_dir)
    assert [(c.step, c.serial) for c in run.checkpoints()] == [(8, 0), (12, 0), (16, 1)]
    assert not (run.latest_checkpoint().path / RECONSTRUCTOR_DIR).exists()  # type: ignore[union-attr]
    check_consistent(Path(config.run_dir), joint=False, keep=3)
    setattr(config, "keep_checkpoints", 0)  # noqa: B010
    with pytest.raises(ConfigError, match="keep_checkpoints must be an integer >= 1"):
        Trainer(config, resume=True)


# ---------------------------------------------------------------------------------------- behaviour cloning first


def test_pretrain_clones_the_labels_before_ppo(labels_dir, tiny_recon, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tokenmask.train.cloning import collect_demonstrations, demonstration_nll

    def config_for(name: str, labels: Path | None) -> TrainConfig:
        config = build_config(
            TrainConfig, {**tiny_values(tmp_path / name, 8), "tensorboard": True, "joint_period": 0}
        )
        for key, value in {
            "pretrain": str(labels) if labels else None,
            "pretrain_epochs": 6,
            "pretrain_batch_size": 8,
            "pretrain_learning_rate": 3e-3,
        }.items():
            setattr(config, key, value)  # keys TrainConfig may not have yet
        return config

    untrained = Trainer(config_for("plain", None))  # the same seed: the policy cloning starts from
    demos = collect_demonstrations(labels_dir, tiny_recon, untrained.config.env, untrained.model.policy)
    before = demonstration_nll(untrained.model, demos)
    untrained.close()
    capsys.readouterr()
    trainer = Trainer(config_for("cloned", labels_dir))
    out = capsys.readouterr().out
    assert f"behaviour cloning on {labels_dir}: 6 epochs, batch 8, learning rate 0.003" in out
    assert "behaviour cloning done in" in out and "nats per window decision" in out
    after = demonstration_nll(trainer.model, demos)
    assert after < before - 0.05, (before, after)
    nll = trainer.pretrain_state["nll"]  # type: ignore[index]
    assert len(nll) == 6 and nll[-1] < nll[0]
    run = RunFolder(trainer.config.run_dir)
    pretrained = run.latest_checkpoint()
    assert (
        pretrained is not None and pretrained.step == 0 and pretrained.read_state()["status"] == "pretrained"
    )
    events = EventAccumulator(str(run.tensorboard_dir / "pretrain"))
    events.Reload()
    assert [e.value for e in events.Scalars("pretrain/nll")] == pytest.approx(nll)
    assert trainer.train() == "finished"
    state = run.read_state()
    assert (
        state["status"] == "finished"
        and state["pretrain"]["nll"] == nll
        and state["pretrain"]["labels"] == str(labels_dir)
    )
    # a resume does not clone again; the history stays in every later checkpoint
    config, _ = load_run_config(run.path, {"total_timesteps": 12})
    setattr(config, "pretrain", str(labels_dir))  # noqa: B010
    resumed = Trainer(config, resume=True)
    assert "behaviour cloning" not in capsys.readouterr().out
    assert resumed.train() == "finished" and run.read_state()["pretrain"]["nll"] == nll
