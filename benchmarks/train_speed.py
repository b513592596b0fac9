"""Samples per second of ``tokenmask train``: PPO's tokens decided per second beside the env's alone.

Both are measured in one run, on one machine, with one training config (the env as the trainer
builds it: reconstructor, judge bonus and its credit, span, corpus; PPO with the config's
``n_steps``, ``batch_size``, ``n_epochs`` and, when the config has it, joint reconstructor
fine-tuning):

- **env alone**: the training vector env stepped with random actions, no policy; tokens decided
  per second = ``n_envs x window x`` env steps per second (one step decides one window);
- **PPO**: ``learn()`` over ``--rollouts`` whole rollouts + updates after one warm-up rollout,
  with the trainer's joint fine-tuning callback; the same token count per second, split into the
  rollout (policy forward + env) and the rest (PPO update, fine-tuning).

The evaluation against the baselines (every ``eval_freq`` steps) and checkpoints are not timed.
The ratio PPO / env is what issue 12 asks to raise to at least 0.5. The table names the machine.

    python benchmarks/train_speed.py --tiny                         # CPU, tiny random LMs, a minute
    python benchmarks/train_speed.py --config configs/prod/gpu_pareto.json --n_envs 256,1024
    python benchmarks/train_speed.py --config configs/prod/gpu_pareto.json --set env.data_path=data/pydocs.jsonl

``--tiny`` keeps the config (default ``configs/prod/gpu_pareto.json``) and replaces only the
reconstructor and judge (tiny random Llamas with the real tokenizer), the corpus (the shipped
sample), the device (CPU) and the sizes (``n_envs`` 8, ``n_steps`` 8, ``batch_size`` 32), so its
figures test the tooling, not the recipe.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from tokenmask.timing import synchronize

DEFAULT_CONFIG = "configs/prod/gpu_pareto.json"
TINY_OVERRIDES: dict[str, Any] = {
    "reconstructor": "tiny-random",
    "env.judge_name": "tiny-random",
    "env.data_path": "sample",
    "device": "cpu",
    "n_envs": 8,
    "n_steps": 8,
    "batch_size": 32,
}
"""What ``--tiny`` changes in the config (everything else, the env options included, stays)."""


@dataclass
class SpeedRow:
    """One ``n_envs`` setting's figures (tokens decided per second)."""

    n_envs: int
    env_tokens_per_s: float
    ppo_tokens_per_s: float
    rollout_s: float
    update_s: float

    @property
    def ratio(self) -> float:
        """PPO's tokens per second over the env's alone."""
        return self.ppo_tokens_per_s / self.env_tokens_per_s


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (``env.key`` for an env option); a value is read as JSON where it parses."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise SystemExit(
                f"--set {pair!r}: expected KEY=VALUE, e.g. --set env.data_path=data/pydocs.jsonl"
            )
        try:
            overrides[key] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key] = raw
    return overrides


def time_env(venv: Any, window: int, steps: int, device: torch.device, seed: int) -> float:
    """Tokens decided per second of the vector env alone, random actions (one warm-up step first)."""
    rng = np.random.default_rng(seed)
    shape = (venv.num_envs, *venv.action_space.shape)
    venv.reset()
    venv.step(rng.integers(0, 2, size=shape, dtype=np.int8))  # warm-up
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        venv.step(rng.integers(0, 2, size=shape, dtype=np.int8))
    synchronize(device)
    return venv.num_envs * window * steps / (time.perf_counter() - start)


def time_ppo(
    config: Any, venv: Any, reconstructor: Any, rollouts: int, device: torch.device
) -> tuple[float, float, float]:
    """(tokens decided per second, rollout seconds, update seconds) of ``rollouts`` PPO iterations."""
    from stable_baselines3.common.callbacks import BaseCallback, CallbackList

    from tokenmask.policies import TokenMaskPolicy
    from tokenmask.train.loading import algorithm_class
    from tokenmask.train.trainer import algorithm_kwargs, joint_callback

    class RolloutTimer(BaseCallback):
        """Seconds spent collecting rollouts (policy forward + env), first in the list so fine-tuning is not counted."""

        def __init__(self) -> None:
            super().__init__()
            self.seconds, self._start = 0.0, 0.0

        def _on_rollout_start(self) -> None:
            synchronize(device)
            self._start = time.perf_counter()

        def _on_step(self) -> bool:
            return True

        def _on_rollout_end(self) -> None:
            synchronize(device)
            self.seconds += time.perf_counter() - self._start

    kwargs = {**algorithm_kwargs(config), "verbose": 0}
    model = algorithm_class(config.algo)(TokenMaskPolicy, venv, device=device, **kwargs)
    timer = RolloutTimer()
    callbacks: list[BaseCallback] = [timer]
    if config.joint_training:
        callbacks.append(joint_callback(replace(config, verbose=0), reconstructor))
    callback = CallbackList(callbacks)
    model.learn(config.rollout_size, callback=callback)  # warm-up: one rollout + update
    timer.seconds = 0.0
    steps_before = model.num_timesteps
    synchronize(device)
    start = time.perf_counter()
    model.learn(rollouts * config.rollout_size, callback=callback, reset_num_timesteps=False)
    synchronize(device)
    seconds = time.perf_counter() - start
    tokens = (model.num_timesteps - steps_before) * config.env.window
    return tokens / seconds, timer.seconds, seconds - timer.seconds


def describe(config: Any, tiny: bool) -> str:
    """The config's throughput-relevant options, in one line."""
    env = config.env
    bonus = (
        f"judge bonus rec {env.recoverability_weight} / ret {getattr(env, 'retention_weight', 0.0)} "
        f"({getattr(env, 'judge_credit', 'terminal')} credit, judge {env.judge_name} {env.judge_dtype})"
        if env.recoverability_weight > 0
        else "no judge bonus"
    )
    joint = (
        f"joint fine-tuning every {config.joint_period} rollouts"
        if config.joint_training
        else "no joint fine-tuning"
    )
    return (
        f"{'TINY: ' if tiny else ''}reconstructor {config.reconstructor} ({config.reconstructor_dtype}), "
        f"corpus {env.data_path}; window {env.window}, span {getattr(env, 'span', 1)}, documents of "
        f"{env.max_tokens} tokens, {bonus}; {config.algo.upper()} n_steps {config.n_steps}, batch {config.batch_size}, "
        f"{config.n_epochs} epochs; {joint}"
    )


def main(argv: list[str] | None = None) -> int:
    """Measure and print the table; returns the exit status."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="tokenmask train config (JSON)")
    parser.add_argument("--tiny", action="store_true", help="tiny random LMs, sample corpus, CPU (see above)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)"
    )
    parser.add_argument(
        "--n_envs", default=None, help="comma-separated n_envs settings (default: the config's)"
    )
    parser.add_argument("--env_steps", type=int, default=32, help="env steps timed for the env alone")
    parser.add_argument(
        "--rollouts", type=int, default=2, help="PPO rollouts + updates timed after the warm-up"
    )
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file (atomically)")
    args = parser.parse_args(argv)

    from tokenmask.config import load_config
    from tokenmask.evaluate.reports import device_description
    from tokenmask.io import atomic_write_json
    from tokenmask.reconstructors import pick_device
    from tokenmask.train.config import TrainConfig
    from tokenmask.train.loading import load_judge, load_reconstructor
    from tokenmask.train.trainer import make_training_env

    overrides = {**(TINY_OVERRIDES if args.tiny else {}), **parse_overrides(args.set), "verbose": 0}
    base = load_config(TrainConfig, args.config, overrides)
    device = pick_device(base.device)
    settings = [int(n) for n in args.n_envs.split(",")] if args.n_envs else [base.n_envs]
    torch.manual_seed(base.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as the trainer does
    rows: list[SpeedRow] = []
    for n_envs in settings:
        config = load_config(TrainConfig, args.config, {**overrides, "n_envs": n_envs})
        # fresh models per setting: joint fine-tuning changes the reconstructor
        reconstructor = load_reconstructor(config, device, trainable=config.joint_training)
        judge = load_judge(config, device)
        venv = make_training_env(config, reconstructor, judge)
        env_rate = time_env(venv, config.env.window, args.env_steps, device, config.seed)
        ppo_rate, rollout_s, update_s = time_ppo(config, venv, reconstructor, args.rollouts, device)
        venv.close()
        rows.append(SpeedRow(n_envs, env_rate, ppo_rate, rollout_s, update_s))
        print(
            f"n_envs {n_envs}: env {env_rate:,.0f} tokens/s, PPO {ppo_rate:,.0f} tokens/s",
            file=sys.stderr,
            flush=True,
        )
    machine = device_description(device)
    print(f"\nmachine: {machine}")
    print(f"config: {args.config}{' ' + ' '.join('--set ' + s for s in args.set) if args.set else ''}")
    print(describe(base, args.tiny))
    print(
        f"env alone: {args.env_steps} steps, random actions; PPO: {args.rollouts} rollouts + updates after a warm-up; "
        "tokens decided = env steps x window"
    )
    print(
        "| n_envs | env alone tokens/s | PPO tokens/s | PPO / env | PPO rollout s | PPO update + fine-tuning s |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r.n_envs} | {r.env_tokens_per_s:,.0f} | {r.ppo_tokens_per_s:,.0f} | {r.ratio:.2f} | "
            f"{r.rollout_s:.2f} | {r.update_s:.2f} |"
        )
    if args.json:
        atomic_write_json(
            args.json,
            {
                "machine": machine,
                "config": args.config,
                "overrides": overrides,
                "tiny": args.tiny,
                "env_steps": args.env_steps,
                "rollouts": args.rollouts,
                "rows": [{**r.__dict__, "ratio": r.ratio} for r in rows],
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
