"""``tokenmask train``: PPO or A2C on TokenMask-v0, with joint reconstructor fine-tuning and
evaluation against the baselines, into a run folder (see :mod:`tokenmask.train.run_folder`).

``tokenmask train --config configs/dev/debug.json [--key value ...]`` starts a run;
``tokenmask train --resume RUN_DIR [--total_timesteps N ...]`` continues one from its folder.
Ctrl+C saves the run folder (agent, reconstructor, state) before exiting.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.vec_env import VecEnv, VecMonitor

from tokenmask.data import iter_texts
from tokenmask.envs.recoverability import same_vocabulary
from tokenmask.envs.sb3_vec_env import TokenMaskSB3VecEnv
from tokenmask.evaluate.compressor import Compressor, MethodContext, build_method
from tokenmask.evaluate.evaluator import Evaluator
from tokenmask.evaluate.metrics import select_documents
from tokenmask.policies import TokenMaskPolicy, count_trainable_parameters
from tokenmask.reconstructors import Reconstructor, pick_device
from tokenmask.train.agent import AgentCompressor
from tokenmask.train.callbacks import (
    BaselineComparisonCallback,
    JointReconstructorCallback,
    RecoverabilityCallback,
    RunCheckpointCallback,
    TimeLimitCallback,
)
from tokenmask.train.config import TrainConfig
from tokenmask.train.loading import algorithm_class, load_judge, load_reconstructor, load_run_reconstructor
from tokenmask.train.replay import replay_returns
from tokenmask.train.run_folder import RunFolder, RunFolderError


def make_training_env(
    config: TrainConfig, reconstructor: Reconstructor, judge: Reconstructor | None
) -> VecEnv:
    """The SB3 vector env of a run: batched TokenMask-v0 with episode stats.

    ``TokenMaskSB3VecEnv`` (its reward includes the judge's recoverability bonus when
    ``env.recoverability_weight > 0``; each finished episode's record in its terminal info) ->
    ``VecMonitor``.
    """
    venv = TokenMaskSB3VecEnv(
        num_envs=config.n_envs, config=config.env, reconstructor=reconstructor, judge=judge
    )
    venv.seed(config.seed)
    return VecMonitor(venv)


def algorithm_kwargs(config: TrainConfig) -> dict[str, Any]:
    """The SB3 constructor arguments of the configured algorithm."""
    common: dict[str, Any] = {
        "learning_rate": config.learning_rate,
        "n_steps": config.n_steps,
        "gamma": config.gamma,
        "gae_lambda": config.gae_lambda,
        "ent_coef": config.ent_coef,
        "vf_coef": config.vf_coef,
        "max_grad_norm": config.max_grad_norm,
        "policy_kwargs": dict(config.policy_kwargs),
        "verbose": config.verbose,
        "seed": config.seed,
    }
    if config.algo == "ppo":
        common.update(
            batch_size=min(config.batch_size, config.rollout_size),
            n_epochs=config.n_epochs,
            clip_range=config.clip_range,
            target_kl=config.target_kl,
        )
    return common


def build_evaluation(
    config: TrainConfig, judge: Reconstructor, reconstructor: Reconstructor, device: str
) -> tuple[Evaluator, dict[str, Compressor]]:
    """The validation :class:`~tokenmask.evaluate.evaluator.Evaluator` and the baseline compressors."""
    source = config.eval_data_path or config.env.data_path
    texts = list(iter_texts(source, split=config.eval_split))
    docs = select_documents(
        texts, judge, config.context_tokens, config.continuation_tokens, config.eval_documents
    )
    train_texts = list(iter_texts(config.env.data_path, split=config.env.split))
    context = MethodContext(judge=judge, seed=config.seed, device=device, train_texts=train_texts)
    baselines: dict[str, Compressor] = {}
    for name in config.eval_methods:
        try:
            method = build_method(name, context)
        except ImportError as exc:  # an optional peer package (llmlingua) is missing
            print(f"tokenmask train: skipping baseline {name!r} ({exc})")
            continue
        if not isinstance(method, Compressor):
            raise ValueError(
                f"eval_methods: {name!r} is not a text compressor; the callback compares text compressors."
            )
        baselines[name] = method
    return Evaluator(judge, docs), baselines


# ---------------------------------------------------------------------------------------- the trainer
class Trainer:
    """One training run: its env, model, callbacks and run folder.

    :param config: the resolved config.
    :param resume: continue the run saved in ``config.run_dir`` instead of starting one.
    """

    def __init__(self, config: TrainConfig, resume: bool = False) -> None:
        self.config = config
        self.run = RunFolder(config.run_dir)
        self.resume = resume
        if resume and not self.run.has_agent():
            raise RunFolderError(
                f"Cannot resume {self.run.path}: it holds no agent.zip. Fix: start it without --resume."
            )
        if not resume and self.run.has_agent():
            raise RunFolderError(
                f"{self.run.path} already holds a run. Fix: --resume {self.run.path} to continue it, "
                "or choose another --run_dir."
            )
        self.device = str(pick_device(config.device))
        if self.device.startswith("cuda"):
            torch.backends.cuda.matmul.allow_tf32 = (
                True  # a float32 reconstructor (fine-tuned) runs its matmuls in TF32
            )
        torch.manual_seed(config.seed)
        np.random.seed(config.seed)
        if resume:
            self.reconstructor = load_run_reconstructor(
                config, self.run, self.device, trainable=config.joint_training
            )
        else:
            self.reconstructor = load_reconstructor(config, self.device, trainable=config.joint_training)
        self.judge = load_judge(config, self.device)  # the evaluation always needs it; the bonus too when on
        self.env = make_training_env(config, self.reconstructor, self.judge)
        self.model = self._build_model()
        self.status = "created"
        self._started = time.perf_counter()
        self._elapsed_before = float(self.run.read_state().get("elapsed_s", 0.0)) if resume else 0.0

    def _build_model(self) -> BaseAlgorithm:
        cls = algorithm_class(self.config.algo)
        tensorboard = str(self.run.tensorboard_dir) if self.config.tensorboard else None
        if self.resume:
            kwargs = algorithm_kwargs(self.config)
            for key in ("policy_kwargs", "seed", "verbose"):
                kwargs.pop(key)
            model = cls.load(
                self.run.agent_file, env=self.env, device=self.device, tensorboard_log=tensorboard, **kwargs
            )
            model.set_random_seed(self.config.seed)
            return model
        return cls(
            TokenMaskPolicy,
            self.env,
            device=self.device,
            tensorboard_log=tensorboard,
            **algorithm_kwargs(self.config),
        )

    @property
    def policy_parameters(self) -> int:
        """Trainable parameters of the agent."""
        return count_trainable_parameters(self.model.policy)

    def callbacks(self) -> list[BaseCallback]:
        """Joint fine-tuning (if on), the baseline comparison, periodic checkpoints, training recoverability logging."""
        config = self.config
        callbacks: list[BaseCallback] = [RecoverabilityCallback()]
        if config.joint_training:
            callbacks.append(
                JointReconstructorCallback(
                    self.reconstructor,
                    period=config.joint_period,
                    learning_rate=config.recon_learning_rate,
                    grad_accum_steps=config.recon_grad_accum_steps,
                    batch_documents=config.recon_batch_docs,
                    micro_batches=config.recon_micro_batches,
                    buffer_size=config.recon_buffer,
                    mode=config.env.mask_mode,  # type: ignore[arg-type]
                    seed=config.seed,
                    verbose=config.verbose,
                )
            )
        evaluator, baselines = build_evaluation(config, self.judge, self.reconstructor, self.device)
        env_options = asdict(config.env)
        contexts = [d.context for d in evaluator.docs]
        replay = None
        if same_vocabulary(self.reconstructor, self.judge):  # the judge's contexts are valid env documents

            def replay(masks: list[np.ndarray]) -> np.ndarray:
                return replay_returns(
                    contexts,
                    masks,
                    config.eval_rate,
                    self.reconstructor,
                    env_options,
                    seed=config.seed,
                    judge=self.judge,
                    recoverability_weight=config.env.recoverability_weight,
                )

        callbacks.append(
            BaselineComparisonCallback(
                evaluator,
                make_agent=lambda model: AgentCompressor.from_training(model, self.reconstructor, config),
                baselines=baselines,
                rate=config.eval_rate,
                eval_freq=config.eval_freq,
                tensorboard_dir=self.run.tensorboard_dir if config.tensorboard else None,
                replay=replay,
                reprice_baselines=config.joint_training,
                text_samples=config.text_samples,
                on_evaluation=self.run.save_evaluation,
                seed=config.seed,
                verbose=config.verbose,
            )
        )
        if config.checkpoint_freq:
            callbacks.append(RunCheckpointCallback(lambda: self.save("running"), config.checkpoint_freq))
        if config.max_train_minutes is not None:
            # before the evaluation callback, whose last evaluation then runs at the stopping step
            callbacks.insert(0, TimeLimitCallback(config.max_train_minutes))
        return callbacks

    def save(self, status: str) -> None:
        """Write the run folder: config, agent, fine-tuned reconstructor (joint training), state."""
        self.run.save_config(self.config)
        self.run.save_agent(self.model)
        if self.config.joint_training:
            self.run.save_reconstructor(self.reconstructor)
        self.run.save_state(
            {
                "status": status,
                "num_timesteps": int(self.model.num_timesteps),
                "total_timesteps": self.config.total_timesteps,
                "algo": self.config.algo,
                "policy": "TokenMaskPolicy",
                "policy_parameters": self.policy_parameters,
                "reconstructor": "reconstructor/"
                if self.config.joint_training
                else self.config.reconstructor,
                "device": self.device,
                "elapsed_s": round(self._elapsed_before + time.perf_counter() - self._started, 1),
            }
        )

    def train(self) -> str:
        """Train for the remaining timesteps; save the run folder (also on Ctrl+C). Returns the status."""
        remaining = self.config.total_timesteps - int(self.model.num_timesteps)
        if remaining <= 0:
            print(
                f"{self.run.path} already reached total_timesteps={self.config.total_timesteps}; nothing to do."
            )
            self.status = "finished"
            return self.status
        self.run.save_config(self.config)
        callbacks = self.callbacks()
        try:
            self.model.learn(
                total_timesteps=remaining,
                callback=CallbackList(callbacks),
                progress_bar=self.config.progress_bar,
                reset_num_timesteps=not self.resume,
                tb_log_name="agent",
            )
            limited = any(getattr(c, "stopped", False) for c in callbacks)
            self.status = "time_limit" if limited else "finished"
        except KeyboardInterrupt:
            self.status = "interrupted"
            print(
                f"\ninterrupted at {self.model.num_timesteps} steps: saving the run folder {self.run.path} ..."
            )
        finally:
            for callback in callbacks:
                close = getattr(callback, "close", None)
                if callable(close):
                    close()
        self.save(self.status)
        self.env.close()
        return self.status


def train(config: TrainConfig, resume: bool = False) -> RunFolder:
    """Train (or resume) a run; returns its folder.

    :param config: the resolved config (for a resume: the saved config with any overrides).
    :param resume: continue the run saved in ``config.run_dir``.
    """
    trainer = Trainer(config, resume=resume)
    trainer.train()
    return trainer.run
