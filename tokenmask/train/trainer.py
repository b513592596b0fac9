"""``tokenmask train``: PPO or A2C on TokenMask-v0, with joint reconstructor fine-tuning and
evaluation against the baselines, into a run folder (see :mod:`tokenmask.train.run_folder`).

``tokenmask train --config configs/dev/debug.json [--key value ...]`` starts a run;
``tokenmask train --resume RUN_DIR [--total_timesteps N ...]`` continues one from its newest
complete checkpoint (and says which).

Checkpoints: every ``checkpoint_freq`` env steps, at the end, and when a signal stops the run.
SIGTERM (what a cluster scheduler sends) and SIGINT (Ctrl+C) stop training at the next env step,
save a checkpoint and return; the exit status then follows the shell's convention for the signal
(:data:`EXIT_CODES`: 143 for SIGTERM, 130 for SIGINT), so a scheduler sees the run did not finish
(and may requeue it with ``--resume``) while nothing is lost. A SIGKILL loses at most the steps
since the last checkpoint: a checkpoint is one folder written whole and renamed into place.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import asdict
from types import TracebackType
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.vec_env import VecEnv, VecMonitor

from tokenmask.data import iter_texts
from tokenmask.envs.recoverability import same_vocabulary
from tokenmask.envs.sb3_vec_env import TokenMaskSB3VecEnv
from tokenmask.errors import ConfigError
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
    StopOnSignalCallback,
    TimeLimitCallback,
)
from tokenmask.train.config import TrainConfig, check_policy_kwargs
from tokenmask.train.loading import (
    algorithm_class,
    check_resume_config,
    load_agent,
    load_judge,
    load_reconstructor,
    load_run_config,
    load_run_reconstructor,
)
from tokenmask.train.replay import replay_returns
from tokenmask.train.run_folder import (
    CHECKPOINTS_DIR,
    MANIFEST_FILE,
    Checkpoint,
    RunFolder,
    RunFolderError,
    capture_rng_state,
    restore_rng_state,
)

EXIT_CODES: dict[str, int] = {"finished": 0, "time_limit": 0, "interrupted": 130, "terminated": 143}
"""Exit status of ``tokenmask train`` per final status: 0 when the run ended as asked (its steps or
its time limit), 128 + the signal's number when SIGINT (``interrupted``) or SIGTERM
(``terminated``) stopped it, as a shell reports a process the signal killed; the checkpoint is
saved in every case."""

DEFAULT_KEEP_CHECKPOINTS = 2
PRETRAIN_DEFAULTS: dict[str, Any] = {
    "pretrain_epochs": 5,
    "pretrain_batch_size": 256,
    "pretrain_learning_rate": 3e-4,
}


def exit_code(status: str) -> int:
    """The exit status of a run that ended with ``status`` (see :data:`EXIT_CODES`)."""
    return EXIT_CODES.get(status, 0)


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


def joint_callback(config: TrainConfig, reconstructor: Reconstructor) -> JointReconstructorCallback:
    """The joint fine-tuning callback of a config (call it only when ``config.joint_training``)."""
    return JointReconstructorCallback(
        reconstructor,
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
    # one timed call: the callbacks compare quality, not speed (benchmarks/ and tokenmask evaluate time methods)
    return Evaluator(judge, docs, timing_repeats=1), baselines


# ---------------------------------------------------------------------------------------- the trainer
class Trainer:
    """One training run: its env, model, callbacks and run folder.

    The run folder is claimed (checked and locked, :meth:`RunFolder.claim`) before any model
    loads and stays locked until :meth:`train` returns (or :meth:`close`): a second training into
    the same folder fails at once with a clear error.

    :param config: the resolved config.
    :param resume: continue the run saved in ``config.run_dir`` (its newest complete checkpoint)
        instead of starting one.
    """

    def __init__(self, config: TrainConfig, resume: bool = False) -> None:
        self.config = config
        self.run = RunFolder(config.run_dir)
        self.resume = resume
        self.keep_checkpoints = _keep_checkpoints(config)
        if not resume:  # the model is built with them: refused before any folder or model
            check_policy_kwargs(config.policy_kwargs)
        self._check_folder()
        self._claim = contextlib.ExitStack()
        self._claim.enter_context(self.run.claim(overwrite=bool(getattr(config, "overwrite", False))))
        try:
            self._check_folder()  # again, holding the lock
            self._setup()
        except BaseException:
            if not self._claim.__exit__(*sys.exc_info()):
                raise

    def _check_folder(self) -> None:
        if self.resume and not self.run.has_agent():
            raise RunFolderError(
                f"Cannot resume {self.run.path}: it holds no agent.zip. Fix: start it without --resume.",
                path=self.run.path,
            )
        if not self.resume and self.run.has_agent():
            raise RunFolderError(
                f"{self.run.path} already holds a run. Fix: --resume {self.run.path} to continue it, "
                "or choose another --run_dir.",
                path=self.run.path,
            )

    def _setup(self) -> None:
        config = self.config
        removed = self.run.clean_leftovers()
        if removed:
            print(
                f"tokenmask train: removed {len(removed)} temporary file(s) left in {self.run.path} by a killed run"
            )
        self.checkpoint: Checkpoint | None = self.run.latest_checkpoint() if self.resume else None
        self.last_checkpoint: Checkpoint | None = self.checkpoint
        saved_state = self._check_resume() if self.resume else {}
        self.device = str(pick_device(config.device))
        if self.device.startswith("cuda"):
            torch.backends.cuda.matmul.allow_tf32 = (
                True  # a float32 reconstructor (fine-tuned) runs its matmuls in TF32
            )
        torch.manual_seed(config.seed)
        np.random.seed(config.seed)
        if self.resume:
            self.reconstructor = load_run_reconstructor(
                config, self.run, self.device, trainable=config.joint_training
            )
        else:
            self.reconstructor = load_reconstructor(config, self.device, trainable=config.joint_training)
        self.judge = load_judge(config, self.device)  # the evaluation always needs it; the bonus too when on
        self.env = make_training_env(config, self.reconstructor, self.judge)
        self.model = self._build_model()
        rng = self.checkpoint.read_rng() if self.checkpoint is not None else {}
        if self.resume:
            restore_rng_state(rng)
            if rng.get("env") is not None:
                # each sub-env replays its episode in flight from its start, then plays the episodes
                # the uninterrupted run would have played (same documents, same target rates)
                self.token_env.restore_draw_state(rng["env"])
            else:  # a checkpoint of an earlier version: fresh episodes from a seed of its step
                self.env.seed(int(rng.get("env_seed", config.seed + int(self.model.num_timesteps))))
        self._joint_state: dict[str, Any] = {
            **saved_state.get("joint_training", {}),
            "rng": rng.get("joint_sampling"),
        }
        self.status = "created"
        self._started = time.perf_counter()
        self._elapsed_before = float(saved_state.get("elapsed_s", 0.0))
        self._joint: JointReconstructorCallback | None = None
        #: the behaviour cloning of this run (its settings and NLL per epoch), when it had one
        self.pretrain_state: dict[str, Any] | None = saved_state.get("pretrain")
        labels = getattr(config, "pretrain", None)
        if labels and not self.resume:
            self._pretrain(labels)

    def _check_resume(self) -> dict[str, Any]:
        """Check the checkpoint to resume from (files, config); say which it is; return its state."""
        if self.checkpoint is not None:
            self.checkpoint.verify(self.run.damage_fix(self.checkpoint))
            source = f"{CHECKPOINTS_DIR}/{self.checkpoint.name}"
        else:
            source = "its root files (the flat layout of an earlier version)"
        saved, _ = load_run_config(self.run.path)
        check_resume_config(saved, self.config, source)
        state = self.run.read_state()
        skipped = [
            c.name
            for c in self.run.incomplete_checkpoints()
            if self.checkpoint is None or c.step > self.checkpoint.step
        ]
        note = f"; ignored {', '.join(skipped)} (no {MANIFEST_FILE}: incomplete)" if skipped else ""
        print(
            f"tokenmask train: resuming {self.run.path} from {source} "
            f"(step {int(state.get('num_timesteps', 0)):,}, status {state.get('status', 'unknown')}){note}"
        )
        return state

    def _build_model(self) -> BaseAlgorithm:
        cls = algorithm_class(self.config.algo)
        tensorboard = str(self.run.tensorboard_dir) if self.config.tensorboard else None
        if self.resume:
            kwargs = algorithm_kwargs(self.config)
            for key in ("policy_kwargs", "seed", "verbose"):
                kwargs.pop(key)
            model = load_agent(
                self.run.agent_file,
                self.config.algo,
                env=self.env,
                device=self.device,
                fix=self.run.damage_fix(self.checkpoint),
                tensorboard_log=tensorboard,
                **kwargs,
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

    def _pretrain(self, labels: Any) -> None:
        """Behaviour cloning of the new policy on ``labels`` (``tokenmask label`` output), then a checkpoint at step 0."""
        from tokenmask.train.cloning import clone_policy

        settings = {key: getattr(self.config, key, default) for key, default in PRETRAIN_DEFAULTS.items()}
        epochs = int(settings["pretrain_epochs"])
        batch_size = int(settings["pretrain_batch_size"])
        learning_rate = float(settings["pretrain_learning_rate"])
        print(
            f"tokenmask train: behaviour cloning on {labels}: {epochs} epochs, batch {batch_size}, "
            f"learning rate {learning_rate:g}"
        )
        started = time.perf_counter()
        history = clone_policy(
            self.model,
            labels,
            epochs,
            batch_size,
            learning_rate,
            env_options=self.config.env,
            reconstructor=self.reconstructor,
            seed=self.config.seed,
            progress=self.config.verbose > 0,
        )
        seconds = time.perf_counter() - started
        self.pretrain_state = {
            "labels": str(labels),
            "epochs": epochs,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "nll": [float(v) for v in history],
            "seconds": round(seconds, 1),
        }
        if self.config.tensorboard and history:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(self.run.tensorboard_dir / "pretrain"))
            for epoch, nll in enumerate(history, start=1):
                writer.add_scalar("pretrain/nll", nll, epoch)
            writer.close()
        change = (
            f"NLL {history[0]:.4f} -> {history[-1]:.4f} nats per window decision" if history else "no epochs"
        )
        print(f"tokenmask train: behaviour cloning done in {seconds:.1f} s: {change}")
        self.save("pretrained")

    @property
    def token_env(self) -> TokenMaskSB3VecEnv:
        """The run's batched env under its ``VecMonitor`` (its episode draws are saved in checkpoints)."""
        env = self.env.venv if isinstance(self.env, VecMonitor) else self.env
        if not isinstance(env, TokenMaskSB3VecEnv):
            raise TypeError(f"The training env is a {type(env).__name__}, not a TokenMaskSB3VecEnv.")
        return env

    @property
    def policy_parameters(self) -> int:
        """Trainable parameters of the agent."""
        return count_trainable_parameters(self.model.policy)

    @property
    def exit_code(self) -> int:
        """The exit status for the run's current :attr:`status` (see :data:`EXIT_CODES`)."""
        return exit_code(self.status)

    def callbacks(self) -> list[BaseCallback]:
        """Joint fine-tuning (if on), the baseline comparison, periodic checkpoints, training recoverability logging."""
        config = self.config
        callbacks: list[BaseCallback] = [RecoverabilityCallback()]
        if config.joint_training:
            callbacks.append(joint_callback(config, self.reconstructor))
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

    def save(self, status: str) -> Checkpoint:
        """Write one checkpoint of the run (agent, state, config, RNG states, the fine-tuned reconstructor).

        :param status: ``running``, ``pretrained``, ``finished``, ``time_limit``, ``interrupted`` or ``terminated``.
        """
        steps = int(self.model.num_timesteps)
        state: dict[str, Any] = {
            "status": status,
            "num_timesteps": steps,
            "total_timesteps": self.config.total_timesteps,
            "algo": self.config.algo,
            "policy": "TokenMaskPolicy",
            "policy_parameters": self.policy_parameters,
            "reconstructor": "reconstructor/" if self.config.joint_training else self.config.reconstructor,
            "device": self.device,
            "elapsed_s": round(self._elapsed_before + time.perf_counter() - self._started, 1),
        }
        rng = capture_rng_state()
        rng["env"] = self.token_env.draw_state()
        rng["env_seed"] = self.config.seed + steps  # read by versions that saved no env state
        if self._joint is not None:
            joint = self._joint.state_dict()
            rng["joint_sampling"] = joint.pop("rng")
            state["joint_training"] = joint
        elif self._joint_state.get("rollouts") is not None:  # saved before training (re)started: carry it
            state["joint_training"] = {k: v for k, v in self._joint_state.items() if k != "rng"}
            rng["joint_sampling"] = self._joint_state.get("rng")
        if self.pretrain_state is not None:
            state["pretrain"] = self.pretrain_state
        self.last_checkpoint = self.run.write_checkpoint(
            self.model,
            state,
            self.config,
            rng,
            reconstructor=self.reconstructor if self.config.joint_training else None,
            keep=self.keep_checkpoints,
        )
        return self.last_checkpoint

    def train(self) -> str:
        """Train for the remaining timesteps and save a checkpoint (also on SIGTERM / SIGINT / Ctrl+C).

        Releases the run folder when it returns.

        :return: the final status: ``finished``, ``time_limit``, ``interrupted`` (SIGINT, Ctrl+C) or
            ``terminated`` (SIGTERM); :data:`EXIT_CODES` maps it to an exit status.
        """
        try:
            self.status = self._train()
        finally:
            self.close()
        return self.status

    def _train(self) -> str:
        remaining = self.config.total_timesteps - int(self.model.num_timesteps)
        if remaining <= 0:
            print(
                f"{self.run.path} already reached total_timesteps={self.config.total_timesteps}; nothing to do."
            )
            return "finished"
        stop = StopOnSignalCallback()
        with stop.catching():
            self.run.save_config(self.config)
            callbacks = self.callbacks()
            evaluation = [c for c in callbacks if isinstance(c, BaselineComparisonCallback)]

            def skip_final_evaluation() -> None:  # on a signal, the checkpoint comes first
                for callback in evaluation:
                    callback.final_evaluation = False

            stop.on_stop = skip_final_evaluation
            callbacks.insert(0, stop)
            self._joint = next((c for c in callbacks if isinstance(c, JointReconstructorCallback)), None)
            if self._joint is not None:
                self._joint.load_state_dict(self._joint_state)
            status = "finished"
            try:
                self.model.learn(
                    total_timesteps=remaining,
                    callback=CallbackList(callbacks),
                    progress_bar=self.config.progress_bar,
                    reset_num_timesteps=not self.resume,
                    tb_log_name="agent",
                )
                if stop.received is not None and self.model.num_timesteps < self.config.total_timesteps:
                    status = "interrupted" if stop.signal_name == "SIGINT" else "terminated"
                elif any(isinstance(c, TimeLimitCallback) and c.stopped for c in callbacks):
                    status = "time_limit"
            except KeyboardInterrupt:
                status = "interrupted"
                print(
                    f"\ninterrupted at {self.model.num_timesteps} steps: saving a checkpoint in {self.run.path} ...",
                    file=sys.stderr,
                )
            finally:
                for callback in callbacks:
                    close = getattr(callback, "close", None)
                    if callable(close):
                        close()
            checkpoint = self.save(status)
            if status in ("interrupted", "terminated"):
                print(
                    f"tokenmask train: {status} at step {checkpoint.step:,}: saved {checkpoint.path}; "
                    f"continue with --resume {self.run.path}",
                    file=sys.stderr,
                    flush=True,
                )
        self.env.close()
        return status

    def close(self) -> None:
        """Release the run folder (:meth:`train` does when it returns); the trainer cannot save after it."""
        self._claim.close()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _keep_checkpoints(config: TrainConfig) -> int:
    keep = getattr(config, "keep_checkpoints", DEFAULT_KEEP_CHECKPOINTS)
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ConfigError(
            f"keep_checkpoints must be an integer >= 1, got {keep!r}. Fix: e.g. keep_checkpoints=2.",
            key="keep_checkpoints",
        )
    return keep


def train(config: TrainConfig, resume: bool = False) -> RunFolder:
    """Train (or resume) a run; returns its folder.

    :param config: the resolved config (for a resume: the saved config with any overrides).
    :param resume: continue the run saved in ``config.run_dir``.
    """
    trainer = Trainer(config, resume=resume)
    trainer.train()
    return trainer.run
