"""``tokenmask train``: config, run folder, TensorBoard tags, Ctrl+C checkpoint, --resume, the debug config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback

from tokenmask.cli import main
from tokenmask.config import ConfigError, load_config
from tokenmask.reconstructors import Reconstructor
from tokenmask.train.config import TrainConfig
from tokenmask.train.loading import load_run_config
from tokenmask.train.run_folder import RunFolder, RunFolderError
from tokenmask.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "configs" / "dev" / "quick_test.json"
DEBUG = REPO / "configs" / "dev" / "debug.json"
TRAIN_CONFIGS = [
    REPO / "configs" / c
    for c in (
        "dev/debug.json",
        "dev/quick_test.json",
        "dev/small_scale.json",
        "prod/standard.json",
        "prod/gpu.json",
        "prod/gpu_token.json",
    )
]


def scalar_tags(folder: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return set(accumulator.Tags()["scalars"])


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    """One quick_test run through the CLI (tiny random LMs): PPO, joint fine-tuning, evaluation, TensorBoard."""
    run_dir = tmp_path_factory.mktemp("runs") / "quick"
    assert main(["train", "--config", str(QUICK), "--run_dir", str(run_dir)]) == 0
    return run_dir


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_train_config_loads(path):
    config = load_config(TrainConfig, path)
    assert config.total_timesteps >= config.rollout_size
    if (
        path != DEBUG
    ):  # issue 15: training checkpoints every few minutes (the step counts are in each config's comment)
        assert 0 < config.checkpoint_freq <= config.total_timesteps


def test_unknown_keys_and_bad_values_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="Unknown config key"):
        load_config(TrainConfig, QUICK, {"learning_rte": 1e-3})
    with pytest.raises(ValueError, match="Unknown algo"):
        load_config(TrainConfig, QUICK, {"algo": "dqn"})
    with pytest.raises(ValueError, match="below rate_penalty"):
        load_config(TrainConfig, QUICK, {"env.recoverability_weight": 5.0, "env.rate_penalty": 4.0})
    assert main(["train", "--config", str(QUICK), "--n_envs", "0", "--run_dir", str(tmp_path / "x")]) == 2


def test_flat_config_keys_name_their_place_under_env():
    with pytest.raises(
        ConfigError, match=r"""Config key 'window' moved: put it under "env": \{"window": ...\}\. Fix:"""
    ):
        load_config(TrainConfig, None, {"window": 16})
    with pytest.raises(
        ConfigError, match=r"""Config key 'judge' moved: put it under "env": \{"judge_name": ...\}"""
    ):
        load_config(TrainConfig, None, {"judge": "default"})
    with pytest.raises(
        ValueError, match="env.model_name is not read by tokenmask train.*Fix: set 'reconstructor'"
    ):
        load_config(TrainConfig, QUICK, {"env.model_name": "other"})
    config = load_config(TrainConfig, QUICK, {"env": {"window": 32}, "env.span": 8})
    assert (config.env.window, config.env.span, config.env.max_tokens) == (
        32,
        8,
        32,
    )  # the file's other env keys stay


def test_run_folder_of_the_flat_layout_still_loads(quick_run, tmp_path):
    """A run folder saved before the env options were nested (env keys at the top level, ``judge``) loads as today's."""
    config, _ = load_run_config(quick_run)
    flat = {k: v for k, v in config.to_dict().items() if k != "env"}
    env = config.to_dict()["env"]
    # env keys named like a top-level key (continuation_tokens) were never in the flat layout
    flat.update(
        {
            k: v
            for k, v in env.items()
            if k not in ("judge_name", "model_name", "dtype", "device") and k not in flat
        }
    )
    flat["judge"] = env["judge_name"]
    old = tmp_path / "old_run"
    old.mkdir()
    (old / "config.json").write_text(json.dumps(flat))
    loaded, _ = load_run_config(old, {"env.window": 32})
    assert loaded.env == type(config.env)(**{**env, "window": 32})
    assert {k: v for k, v in loaded.to_dict().items() if k not in ("env", "run_dir")} == {
        k: v for k, v in config.to_dict().items() if k not in ("env", "run_dir")
    }


def test_run_folder_is_complete_and_loadable(quick_run):
    run = RunFolder(quick_run)
    assert [c.step for c in run.checkpoints()] == [16, 32]  # every rollout; the last two kept
    run.latest_checkpoint().verify("-")  # type: ignore[union-attr]
    state = run.read_state()
    assert state["status"] == "finished" and state["num_timesteps"] >= 32
    assert 500_000 <= state["policy_parameters"] <= 2_000_000
    config, _ = load_run_config(quick_run)
    assert config.algo == "ppo" and config.reconstructor == "tiny-random"
    model = PPO.load(run.agent_file, device="cpu")
    assert model.num_timesteps == state["num_timesteps"]
    reconstructor = Reconstructor.from_pretrained(run.reconstructor_dir, device="cpu")
    assert reconstructor.mask_token_id is not None
    evaluation = json.loads(run.evaluation_file.read_text())
    assert set(evaluation["baselines"]) == {"random", "truncation"}
    assert abs(evaluation["agent"]["rate"] - 0.5) <= 0.01


def test_agent_and_baselines_share_tensorboard_tags(quick_run):
    tb = RunFolder(quick_run).tensorboard_dir
    agent = scalar_tags(tb / "agent_1")
    assert {"eval/recoverability", "eval/retention", "eval/rate", "eval/env_return"} <= agent
    assert {"reconstructor/loss_nats", "rollout/recoverability", "train/loss"} <= agent
    for baseline in ("random", "truncation"):
        tags = scalar_tags(tb / f"baseline_{baseline}")
        assert {"eval/recoverability", "eval/retention", "eval/env_return"} <= tags
        assert {t for t in tags if t.startswith("eval/")} <= agent


class InterruptAt(BaseCallback):
    """Raises KeyboardInterrupt (what Ctrl+C does) once training passed ``steps``."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps = steps

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.steps:
            raise KeyboardInterrupt
        return True


def test_ctrl_c_saves_a_checkpoint_that_resumes(tmp_path):
    overrides = {
        "run_dir": str(tmp_path / "interrupted"),
        "total_timesteps": 96,
        "n_envs": 4,
        "joint_period": 0,
        "eval_methods": ["random"],
        "eval_documents": 1,
        "eval_freq": 0,
    }
    config = load_config(TrainConfig, QUICK, overrides)
    trainer = Trainer(config)
    original = trainer.callbacks
    trainer.callbacks = lambda: [*original(), InterruptAt(32)]  # type: ignore[method-assign]
    assert trainer.train() == "interrupted"
    state = RunFolder(config.run_dir).read_state()
    assert state["status"] == "interrupted" and 32 <= state["num_timesteps"] < 64
    assert (
        main(["train", "--resume", config.run_dir, "--total_timesteps", "64"]) == 0
    )  # a key overridden on resume
    resumed = RunFolder(config.run_dir).read_state()
    assert resumed["status"] == "finished" and resumed["num_timesteps"] >= 64
    assert load_run_config(config.run_dir)[0].total_timesteps == 64
    with pytest.raises(RunFolderError, match="already holds a run"):
        Trainer(load_run_config(config.run_dir)[0])


def test_time_limit_stops_and_saves(tmp_path):
    config = load_config(
        TrainConfig,
        QUICK,
        {
            "run_dir": str(tmp_path / "limited"),
            "total_timesteps": 10_000,
            "max_train_minutes": 1e-4,
            "joint_period": 0,
            "eval_methods": ["random"],
            "eval_documents": 1,
        },
    )
    trainer = Trainer(config)
    assert trainer.train() == "time_limit"
    assert RunFolder(config.run_dir).read_state()["num_timesteps"] < 10_000


@pytest.mark.integration
def test_debug_config_runs_offline_on_cpu(tmp_path):
    """configs/dev/debug.json with the embedded SmolLM2, on a budget of one rollout."""
    run_dir = tmp_path / "debug"
    args = [
        "train",
        "--config",
        str(DEBUG),
        "--run_dir",
        str(run_dir),
        "--total_timesteps",
        "32",
        "--n_steps",
        "8",
    ]
    budget = [
        "--eval_documents",
        "1",
        "--eval_methods",
        "random,truncation,self_information",
        "--progress_bar",
        "false",
    ]
    assert main([*args, *budget]) == 0
    run = RunFolder(run_dir)
    assert run.has_agent() and run.has_reconstructor()
    agent_tags = scalar_tags(run.tensorboard_dir / "agent_1")
    for baseline in ("random", "truncation", "self_information"):
        assert "eval/recoverability" in scalar_tags(run.tensorboard_dir / f"baseline_{baseline}")
    assert "eval/recoverability" in agent_tags


def test_run_folder_without_or_with_a_corrupt_config_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(
        RunFolderError, match="is not a tokenmask run folder.*Fix: pass a folder written by `tokenmask train`"
    ):
        RunFolder(tmp_path).read_config()
    (tmp_path / "config.json").write_text('{"algo": "ppo", ')
    with pytest.raises(RunFolderError, match="corrupt"):
        RunFolder(tmp_path).read_config()
