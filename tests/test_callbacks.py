"""The training callbacks: joint reconstructor fine-tuning and the episode records it learns from
(terminal infos), the evaluation against the baselines in TensorBoard, checkpoints, limits, signals
(tiny random LMs)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList

from tokenmask.data import load_texts
from tokenmask.envs import TokenMaskConfig
from tokenmask.envs.episodes import RECORD_KEY, EpisodeRecord
from tokenmask.envs.episodes import RECOVERABILITY_KEY as GAIN_KEY
from tokenmask.envs.recoverability import RecoverabilityBonus
from tokenmask.envs.sb3_vec_env import TokenMaskSB3VecEnv
from tokenmask.envs.scoring import weights_fingerprint
from tokenmask.evaluate.compressor import MethodContext, build_method
from tokenmask.evaluate.evaluator import Evaluator
from tokenmask.evaluate.metrics import select_documents
from tokenmask.evaluate.reports import SAMPLES_TAG
from tokenmask.policies import TokenMaskPolicy
from tokenmask.testing import tiny_reconstructor
from tokenmask.train.agent import AgentCompressor
from tokenmask.train.callbacks import (
    BaselineComparisonCallback,
    JointReconstructorCallback,
    RunCheckpointCallback,
    StopOnSignalCallback,
    TimeLimitCallback,
)
from tokenmask.train.replay import replay_episodes, replay_returns

ENV: dict[str, Any] = {"window": 16, "context_size": 4, "max_tokens": 32, "target_rate": 0.5}
SMALL_POLICY = {
    "features_extractor_kwargs": {"d_model": 32, "num_layers": 1, "num_buckets": 256, "embed_dim": 16}
}


def test_env_bonus_and_records_in_terminal_infos(tiny_recon):
    judge = tiny_reconstructor(seed=1)
    plain = TokenMaskSB3VecEnv(num_envs=2, reconstructor=tiny_recon, **ENV)
    bonus = TokenMaskSB3VecEnv(
        num_envs=2, reconstructor=tiny_recon, judge=judge, recoverability_weight=0.5, **ENV
    )
    for venv in (plain, bonus):
        venv.seed(0)
        venv.reset()
    rng = np.random.default_rng(0)
    all_actions = []
    for step in range(2):  # two windows of 16 = one 32-token document
        actions = (rng.random((2, 16)) < 0.5).astype(np.int8)
        all_actions.append(actions)
        _, plain_rewards, dones, plain_infos = plain.step(actions)
        _, bonus_rewards, _, bonus_infos = bonus.step(actions)
        if step == 0:
            assert not dones.any() and GAIN_KEY not in bonus_infos[0]  # only at the episode's last step
    assert dones.all()
    for row in range(2):
        record = bonus_infos[row][RECORD_KEY]
        assert isinstance(record, EpisodeRecord) and record.mask.shape == record.ids.shape
        assert GAIN_KEY not in plain_infos[row] and np.isnan(plain_infos[row][RECORD_KEY].recoverability)
        gain = bonus_infos[row][GAIN_KEY]
        assert -1.0 <= gain <= 2.0 and record.recoverability == pytest.approx(gain)
        assert bonus_rewards[row] == pytest.approx(plain_rewards[row] + 0.5 * gain, abs=1e-5)
    # replaying the same masks offline earns the same episode returns, bonus included
    records = [bonus_infos[row][RECORD_KEY] for row in range(2)]
    options = {"window": ENV["window"], "context_size": ENV["context_size"]}
    replayed = replay_returns(
        [r.ids for r in records],
        [~r.mask for r in records],
        0.5,
        tiny_recon,
        options,
        judge=judge,
        recoverability_weight=0.5,
    )
    assert replayed == pytest.approx([r.episode_return for r in records], abs=1e-4)
    # one replay also gives the bonus it paid: less that, the return is the plain env's
    returns, gains = replay_episodes(
        [r.ids for r in records],
        [~r.mask for r in records],
        0.5,
        tiny_recon,
        options,
        judge=judge,
        recoverability_weight=0.5,
    )
    assert gains == pytest.approx([r.recoverability for r in records], abs=1e-5)
    plain_records = [plain_infos[row][RECORD_KEY] for row in range(2)]
    assert returns - 0.5 * gains == pytest.approx([r.episode_return for r in plain_records], abs=1e-4)
    # keeping everything reads the document itself: the bonus is then +1 (or -1 when, for this random
    # judge, the document does not help predict itself at all)
    everything = RecoverabilityBonus(judge, tiny_recon).gains(
        [0], [records[0].ids], [np.zeros(len(records[0].ids), bool)]
    )
    assert everything[0] in (pytest.approx(1.0, abs=1e-4), -1.0)
    with pytest.raises(ValueError, match="below rate_penalty"):
        TokenMaskSB3VecEnv(
            num_envs=1, reconstructor=tiny_recon, judge=judge, recoverability_weight=5.0, **ENV
        )


def test_joint_callback_fine_tunes_the_env_reconstructor_on_agent_masks():
    recon = tiny_reconstructor(seed=0)  # a private copy: this test trains it
    venv = TokenMaskSB3VecEnv(num_envs=2, reconstructor=recon, **ENV)
    callback = JointReconstructorCallback(
        recon, period=1, learning_rate=1e-2, batch_documents=2, micro_batches=2, probe_documents=1, seed=0
    )
    model = PPO(
        TokenMaskPolicy,
        venv,
        n_steps=8,
        batch_size=16,
        n_epochs=1,
        policy_kwargs=SMALL_POLICY,
        seed=0,
        device="cpu",
    )
    before = weights_fingerprint(recon.model)
    model.learn(32, callback=callback)
    assert len(callback.buffer) >= 4
    assert callback.finetuner.optimizer_steps >= 2
    assert weights_fingerprint(recon.model) != before
    assert callback.history and all(np.isfinite(b) and np.isfinite(a) for b, a in callback.history)
    # the env prices with the same object, so its scorer sees the new weights
    assert venv.vector_env.reconstructor is recon


def test_checkpoints_every_n_steps_counted_from_each_start(tiny_recon):
    venv = TokenMaskSB3VecEnv(num_envs=2, reconstructor=tiny_recon, **ENV)
    model = PPO(
        TokenMaskPolicy,
        venv,
        n_steps=4,
        batch_size=8,
        n_epochs=1,
        policy_kwargs=SMALL_POLICY,
        seed=0,
        device="cpu",
    )
    saved: list[int] = []
    model.learn(16, callback=RunCheckpointCallback(lambda: saved.append(model.num_timesteps), save_freq=4))
    assert saved == [4, 8, 12, 16]
    saved.clear()  # a resumed run (timesteps not reset) saves save_freq steps after its start, not at once
    model.learn(
        8,
        callback=RunCheckpointCallback(lambda: saved.append(model.num_timesteps), 4),
        reset_num_timesteps=False,
    )
    assert saved == [20, 24]


def test_callbacks_reject_bad_arguments(tiny_recon):
    with pytest.raises(ValueError, match="period"):
        JointReconstructorCallback(tiny_recon, period=0)
    with pytest.raises(ValueError, match="minutes"):
        TimeLimitCallback(0)
    with pytest.raises(ValueError, match="save_freq"):
        RunCheckpointCallback(lambda: None, 0)


class SignalAt(BaseCallback):
    """Sends ``signum`` to this process once training passed ``steps`` (what a scheduler or Ctrl+C does)."""

    def __init__(self, steps: int, signum: int) -> None:
        super().__init__()
        self.steps, self.signum, self.sent_at = steps, signum, -1

    def _on_step(self) -> bool:
        if self.sent_at < 0 and self.num_timesteps >= self.steps:
            self.sent_at = self.num_timesteps
            os.kill(os.getpid(), self.signum)
        return True


def test_stop_on_signal_ends_learn_at_the_next_step_and_restores_the_handlers(tiny_recon):
    venv = TokenMaskSB3VecEnv(num_envs=2, reconstructor=tiny_recon, **ENV)
    model = PPO(
        TokenMaskPolicy,
        venv,
        n_steps=4,
        batch_size=8,
        n_epochs=1,
        policy_kwargs=SMALL_POLICY,
        seed=0,
        device="cpu",
    )
    stops: list[int] = []
    stop = StopOnSignalCallback(on_stop=lambda: stops.append(model.num_timesteps))
    previous = signal.getsignal(signal.SIGTERM)
    sender = SignalAt(8, signal.SIGTERM)
    with stop.catching():
        model.learn(1_000, callback=CallbackList([stop, sender]))
    assert signal.getsignal(signal.SIGTERM) is previous
    assert stop.signal_name == "SIGTERM" and stops == [stop.stop_step]
    # the handler ran when the signal arrived; the stop took effect at the next step
    assert stop.stop_step == sender.sent_at + 2 and model.num_timesteps == stop.stop_step
    # a second Ctrl+C does not wait for the next step; a second SIGTERM changes nothing
    again = StopOnSignalCallback()
    with again.catching():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        assert again.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_joint_callback_state_round_trips_through_json(tiny_recon):
    callback = JointReconstructorCallback(tiny_recon, period=2, seed=3)
    callback.rng.random(5)
    callback.rollouts, callback.rounds, callback.finetuner.optimizer_steps = 7, 3, 12
    state = json.loads(json.dumps(callback.state_dict()))
    resumed = JointReconstructorCallback(tiny_recon, period=2, seed=99)
    resumed.load_state_dict(state)
    assert (resumed.rollouts, resumed.rounds, resumed.finetuner.optimizer_steps) == (7, 3, 12)
    assert resumed.rng.random(4).tolist() == callback.rng.random(4).tolist()


def _events(folder: Path) -> tuple[dict[str, list[tuple[int, float]]], set[str]]:
    """(scalars: tag -> [(step, value)], text tags) of a TensorBoard run folder, read back as TensorBoard does."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    tags = accumulator.Tags()
    scalars = {t: [(e.step, e.value) for e in accumulator.Scalars(t)] for t in tags["scalars"]}
    return scalars, set(tags["tensors"])  # add_text is stored as a text-plugin tensor


def test_agent_and_baselines_draw_both_metrics_on_the_same_tensorboard_charts(tiny_recon, tmp_path: Path):
    """Recoverability and retention of the agent at each evaluation, each baseline a flat line under the same tags."""
    judge = tiny_reconstructor(seed=1)
    texts = [row["text"] for row in load_texts("sample")]
    evaluator = Evaluator(judge, select_documents(texts, judge, 32, 8, 2))
    context = MethodContext(judge=judge, seed=0, device="cpu", train_texts=texts)
    baselines = {name: build_method(name, context) for name in ("truncation", "span_self_information:8")}
    env_config = TokenMaskConfig(**ENV)
    venv = TokenMaskSB3VecEnv(num_envs=2, reconstructor=tiny_recon, config=env_config)
    tb = tmp_path / "tb"
    model = PPO(
        TokenMaskPolicy,
        venv,
        n_steps=4,
        batch_size=8,
        n_epochs=1,
        policy_kwargs=SMALL_POLICY,
        seed=0,
        device="cpu",
        tensorboard_log=str(tb),
    )
    callback = BaselineComparisonCallback(
        evaluator,
        make_agent=lambda m: AgentCompressor(m.policy, tiny_recon, env_config, name="agent"),
        baselines=baselines,  # type: ignore[arg-type]
        rate=0.5,
        eval_freq=6,  # mid-rollout (rollouts of 8 steps): the point must still sit at the evaluation's step
        tensorboard_dir=tb,
        text_samples=2,
    )
    model.learn(16, callback=callback, tb_log_name="agent")
    callback.close()
    steps = [step for step, _ in callback.agent_history]
    assert steps == [0, 6, 12, 16]  # start, every 6 steps (checked at each env step of 2 envs), end
    agent, agent_text = _events(tb / "agent_1")
    runs = {name: _events(tb / folder) for name, folder in
            (("truncation", "baseline_truncation"), ("span_self_information:8", "baseline_span_self_information_8"))}  # fmt: skip
    assert sorted(p.name for p in tb.iterdir()) == [
        "agent_1",
        "baseline_span_self_information_8",
        "baseline_truncation",
    ]
    for metric in ("eval/recoverability", "eval/retention", "eval/rate"):
        assert [s for s, _ in agent[metric]] == steps
        history = [values[metric.split("/")[1]] for _, values in callback.agent_history]
        assert [v for _, v in agent[metric]] == pytest.approx(history, abs=1e-6)
        for name, (scalars, _) in runs.items():
            assert [s for s, _ in scalars[metric]] == steps  # a point at every evaluation ...
            values = {v for _, v in scalars[metric]}
            assert len(values) == 1  # ... of one value: a flat line
            assert values.pop() == pytest.approx(
                callback.baseline_scores[name][metric.split("/")[1]], abs=1e-6
            )
    assert all(
        np.isfinite(v) for metric in ("eval/recoverability", "eval/retention") for _, v in agent[metric]
    )
    # the baselines' scalar tags are the agent's (one spelling), and text samples share one tag in every run
    for scalars, text in runs.values():
        assert {t for t in scalars if t.startswith("eval/")} <= set(agent)
        assert text == agent_text == {f"{SAMPLES_TAG}/text_summary"}  # torch's add_text appends /text_summary
