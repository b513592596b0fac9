"""SB3 callbacks of ``tokenmask train``: joint reconstructor fine-tuning, evaluation against the
baselines, periodic checkpoints of the run folder, a time limit, a clean stop on SIGTERM / SIGINT
and the training recoverability.

All are plain SB3 callbacks (:class:`~stable_baselines3.common.callbacks.BaseCallback`, the
checkpoint one an :class:`~stable_baselines3.common.callbacks.EveryNTimesteps`), usable with any
SB3 on-policy algorithm on a TokenMask vector env: what they read of the episodes comes through
the terminal ``infos`` SB3 hands its callbacks (``self.locals["infos"]``), where the env puts each
finished episode's :class:`~tokenmask.envs.EpisodeRecord` (``info["episode_record"]``) and, with
the bonus on, its ``info["recoverability"]``.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, EveryNTimesteps

from tokenmask.envs.episodes import RECORD_KEY, RECOVERABILITY_KEY
from tokenmask.evaluate.compressor import Compressor
from tokenmask.evaluate.evaluator import Evaluator, MethodEvaluation
from tokenmask.evaluate.metrics import reconstruction_quality
from tokenmask.evaluate.reports import SAMPLES_TAG, SCALARS, run_folder_name
from tokenmask.reconstructors import MaskMode, Reconstructor, ReconstructorFinetuner
from tokenmask.train.text_samples import markdown_escape, strike_through

EVAL_METRICS: tuple[str, ...] = SCALARS
"""Fields of :class:`~tokenmask.evaluate.metrics.Scores` logged as ``eval/<name>`` (the tags of ``tokenmask evaluate``)."""

BASELINE_RUN_PREFIX = "baseline_"
"""A baseline's TensorBoard run is ``<tensorboard_dir>/baseline_<name>`` (name made file-system safe)."""

_TEXT_ONLY = ("stdout", "log", "json", "csv")  # text samples go to TensorBoard only


class JointReconstructorCallback(BaseCallback):
    """Fine-tunes the reconstructor every ``period`` rollouts on the masks the agent produced.

    Finished episodes (document ids + the agent's mask, ``info["episode_record"]`` of the terminal
    steps) are collected from the step infos into a buffer of the ``buffer_size`` most recent ones. Every ``period`` rollouts, the most recent
    ``probe_documents`` episodes are held out as a probe and ``micro_batches`` micro-batches of
    ``batch_documents`` episodes are sampled from the rest; each is one
    :meth:`ReconstructorFinetuner.step` (own AdamW optimizer, learning rate, gradient
    accumulation). The env prices with the same reconstructor object, so every later step's
    reward uses the updated weights (the env notices the change and refreshes its caches).

    Logged (``reconstructor/...``): ``loss_nats`` (mean fine-tuning loss, nats per masked token),
    ``probe_bits_before`` / ``probe_bits_after`` (``recon_bits_per_masked`` of the probe episodes
    before and after the round, from :func:`tokenmask.evaluate.metrics.reconstruction_quality`),
    ``updates`` (optimizer steps so far) and ``episodes`` (episodes in the buffer).

    :param reconstructor: the env's reconstructor (load it with ``share=False``: it is trained in place).
    :param period: rollouts between fine-tuning rounds.
    :param learning_rate: AdamW learning rate of the reconstructor.
    :param grad_accum_steps: micro-batches per optimizer step.
    :param batch_documents: episodes per micro-batch.
    :param micro_batches: micro-batches per round.
    :param buffer_size: recent episodes kept.
    :param probe_documents: recent episodes held out to measure the round's effect (0: no probe).
    :param mode: ``delete`` or ``placeholder``, as the env's ``mask_mode``.
    :param seed: seed of the sampling.
    :param verbose: SB3 verbosity.
    """

    def __init__(
        self,
        reconstructor: Reconstructor,
        period: int = 1,
        learning_rate: float = 1e-5,
        grad_accum_steps: int = 1,
        batch_documents: int = 4,
        micro_batches: int = 4,
        buffer_size: int = 256,
        probe_documents: int = 8,
        mode: MaskMode = "delete",
        seed: int = 0,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        if period < 1:
            raise ValueError(f"period must be >= 1 rollout, got {period}.")
        if batch_documents < 1 or micro_batches < 1 or buffer_size < 1 or probe_documents < 0:
            raise ValueError(
                "batch_documents, micro_batches and buffer_size must be >= 1, probe_documents >= 0."
            )
        self.reconstructor = reconstructor
        self.period = period
        self.batch_documents = batch_documents
        self.micro_batches = micro_batches
        self.probe_documents = probe_documents
        self.mode: MaskMode = mode
        self.finetuner = ReconstructorFinetuner(reconstructor, learning_rate, grad_accum_steps, mode=mode)
        self.buffer: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=buffer_size)
        self.rng = np.random.default_rng(seed)
        self.rollouts = 0
        self.rounds = 0
        #: (probe bits before, probe bits after) of every round
        self.history: list[tuple[float, float]] = []

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", []):
            record = info.get(RECORD_KEY)
            if record is not None and np.any(record.mask):
                self.buffer.append((np.asarray(record.ids), np.asarray(record.mask, dtype=bool)))
        return True

    def _on_rollout_end(self) -> None:
        self.rollouts += 1
        if self.rollouts % self.period == 0:
            self.fine_tune()

    def fine_tune(self) -> float | None:
        """One fine-tuning round on the buffer; returns the mean loss (nats), or ``None`` if nothing to learn from."""
        episodes = list(self.buffer)
        probe = (
            episodes[-self.probe_documents :]
            if self.probe_documents and len(episodes) > self.probe_documents
            else []
        )
        train = episodes[: len(episodes) - len(probe)]
        if not train:
            return None
        before = self._probe_bits(probe)
        losses = []
        for _ in range(self.micro_batches):
            chosen = self.rng.choice(len(train), size=min(self.batch_documents, len(train)), replace=False)
            losses.append(
                self.finetuner.step(
                    [train[i][0].tolist() for i in chosen], [train[i][1].tolist() for i in chosen]
                )
            )
        self.finetuner.flush()
        after = self._probe_bits(probe)
        self.rounds += 1
        loss = float(np.mean(losses))
        self.logger.record("reconstructor/loss_nats", loss)
        self.logger.record("reconstructor/updates", self.finetuner.optimizer_steps)
        self.logger.record("reconstructor/episodes", len(self.buffer))
        if probe:
            self.history.append((before, after))
            self.logger.record("reconstructor/probe_bits_before", before)
            self.logger.record("reconstructor/probe_bits_after", after)
        if self.verbose:
            probed = (
                f", probe bits {before:.3f} -> {after:.3f}"
                if probe
                else " (no probe: too few episodes held out yet)"
            )
            print(f"reconstructor round {self.rounds}: loss {loss:.3f} nats{probed}")
        return loss

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the fine-tuning (JSON-able): the counters and the sampler's RNG state.

        The episode buffer is not kept (a resumed run refills it in a few rollouts), nor the
        reconstructor's AdamW moments (the optimizer restarts on resume).
        """
        return {
            "rollouts": self.rollouts,
            "rounds": self.rounds,
            "optimizer_steps": self.finetuner.optimizer_steps,
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (missing entries keep their current values)."""
        self.rollouts = int(state.get("rollouts", self.rollouts))
        self.rounds = int(state.get("rounds", self.rounds))
        self.finetuner.optimizer_steps = int(state.get("optimizer_steps", self.finetuner.optimizer_steps))
        if state.get("rng") is not None:
            self.rng.bit_generator.state = state["rng"]

    def _probe_bits(self, probe: list[tuple[np.ndarray, np.ndarray]]) -> float:
        if not probe:
            return math.nan
        bits, _ = reconstruction_quality(
            self.reconstructor, [p[0].tolist() for p in probe], [~p[1] for p in probe], self.mode
        )
        return bits


class BaselineComparisonCallback(BaseCallback):
    """Evaluates the agent and the baselines on validation documents with the metrics of docs/evaluation.md.

    Every ``eval_freq`` env steps (and at the start and the end of training) the agent compresses
    the :class:`~tokenmask.evaluate.evaluator.Evaluator`'s documents at ``rate`` and its scores
    (recoverability, retention, rate, ... of docs/evaluation.md) are logged as ``eval/<metric>``
    in the agent's TensorBoard run, and dumped at once, so the point sits at the evaluation's step.
    The baselines are scored once (they do not learn) and their scores are written under the
    *same tags* at the same steps into one TensorBoard run per baseline
    (``<tensorboard_dir>/baseline_<name>``): TensorBoard draws the runs sharing a tag on one chart,
    so ``eval/recoverability`` and ``eval/retention`` show the agent's curve with each baseline as
    a flat line beside it (the tags and the method-as-run layout of ``tokenmask evaluate``'s
    TensorBoard output). ``eval/env_return`` (the env's own reward of each method's masks, see
    :func:`~tokenmask.train.replay.replay_returns`) is logged too when ``replay`` is given. A few
    compressed contexts, removed tokens struck through, go to the text tab under the same tag
    for every run (:data:`~tokenmask.evaluate.reports.SAMPLES_TAG`, ``eval/samples``).

    :param evaluator: the judge and the validation documents.
    :param make_agent: builds the agent's compressor from the model being trained.
    :param baselines: the baseline compressors by name.
    :param rate: the rate asked of every method.
    :param eval_freq: env steps between evaluations (0: start and end only).
    :param tensorboard_dir: folder of the baselines' TensorBoard runs (``None``: not written).
    :param replay: ``replay(keep_masks) -> returns``, the env's reward of masks (``None``: not logged).
    :param reprice_baselines: replay the baselines' masks at every evaluation (the env's reconstructor is
        being fine-tuned, so their env return changes); otherwise they are priced once.
    :param text_samples: agent samples logged per evaluation.
    :param on_evaluation: called with the evaluation's results (a JSON-able dict) after each evaluation.
    :param seed: seed passed to the methods.
    :param verbose: SB3 verbosity.

    Set :attr:`final_evaluation` to ``False`` to skip the evaluation at the end of training (the
    trainer does when a signal stops it: the checkpoint comes first).
    """

    def __init__(
        self,
        evaluator: Evaluator,
        make_agent: Callable[[Any], Compressor],
        baselines: dict[str, Compressor],
        rate: float = 0.5,
        eval_freq: int = 0,
        tensorboard_dir: str | Path | None = None,
        replay: Callable[[list[np.ndarray]], np.ndarray] | None = None,
        reprice_baselines: bool = False,
        text_samples: int = 2,
        on_evaluation: Callable[[dict[str, Any]], object] | None = None,
        seed: int = 0,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        if eval_freq < 0:
            raise ValueError(f"eval_freq must be >= 0, got {eval_freq}.")
        self.evaluator = evaluator
        self.make_agent = make_agent
        self.baselines = dict(baselines)
        self.rate = rate
        self.eval_freq = eval_freq
        self.tensorboard_dir = Path(tensorboard_dir) if tensorboard_dir is not None else None
        self.replay = replay
        self.reprice_baselines = reprice_baselines
        self.text_samples = text_samples
        self.on_evaluation = on_evaluation
        self.seed = seed
        self.baseline_scores: dict[str, dict[str, float]] = {}
        self._baseline_masks: dict[str, list[np.ndarray]] = {}
        self.agent_history: list[tuple[int, dict[str, float]]] = []
        self._writers: dict[str, Any] = {}
        self._next_eval = 0
        self._last_eval_step = -1
        #: evaluate once more when training ends (unless the last evaluation was at that step)
        self.final_evaluation = True

    # ------------------------------------------------------------------ hooks
    def _on_training_start(self) -> None:
        if not self.baseline_scores:
            for name, method in self.baselines.items():
                if self.verbose:
                    print(
                        f"eval: scoring baseline {name} on {len(self.evaluator.docs)} documents ...",
                        flush=True,
                    )
                result = self._run(method)
                self.baseline_scores[name] = self._values(result)
                if result.keep_masks is not None:
                    self._baseline_masks[name] = result.keep_masks
                samples = self._samples(result)
                if self.tensorboard_dir is not None and samples:
                    self._writer(name).add_text(SAMPLES_TAG, samples, self.num_timesteps)
        self._next_eval = self.num_timesteps
        self.evaluate()  # the agent's first point at the baselines' first step

    def _on_step(self) -> bool:
        if self.eval_freq and self.num_timesteps >= self._next_eval:
            self.evaluate()
        return True

    def _on_training_end(self) -> None:
        if self.final_evaluation and self._last_eval_step != self.num_timesteps:
            self.evaluate()
        if self.logger.name_to_value:  # the last update's train/ figures (SB3 dumps before it updates)
            self.logger.dump(self.num_timesteps)
        for writer in self._writers.values():
            writer.flush()

    # ------------------------------------------------------------------ evaluation
    def _run(self, method: Compressor) -> MethodEvaluation:
        return self.evaluator.compress_and_score(method, self.rate, seed=self.seed)

    def _values(self, result: MethodEvaluation) -> dict[str, float]:
        """The logged figures of one evaluation: the scores, and ``env_return`` when replayed."""
        values = {k: float(getattr(result.scores, k)) for k in EVAL_METRICS}
        if self.replay is not None and result.keep_masks is not None:
            values["env_return"] = float(np.mean(self.replay(result.keep_masks)))
        return values

    def _samples(self, result: MethodEvaluation) -> str:
        """The first ``text_samples`` compressed contexts, removed tokens struck through, as one Markdown text.

        One text per step and tag: TensorBoard shows one text of a tag per step, so the samples
        of the agent and of each baseline are the same documents under the same tag.
        """
        parts = [
            f"**document {i}**\n\n"
            + markdown_escape(
                strike_through(self.evaluator.judge, self.evaluator.docs[i].context, output.keep)
            )
            for i, output in enumerate(result.outputs[: self.text_samples])
            if output.keep is not None
        ]
        return "\n\n---\n\n".join(parts)

    def evaluate(self) -> dict[str, Any]:
        """Score the agent now; log it and the baselines' lines at the current step."""
        step = self.num_timesteps
        if self.verbose:
            print(f"eval @ {step}: scoring the agent on {len(self.evaluator.docs)} documents ...", flush=True)
        agent = self.make_agent(self.model)
        evaluation = self._run(agent)
        values = self._values(evaluation)
        for key, value in values.items():
            if math.isfinite(value):
                self.logger.record(f"eval/{key}", value)
        samples = self._samples(evaluation)
        if samples:
            self.logger.record(SAMPLES_TAG, samples, exclude=_TEXT_ONLY)
        # written now, at this step (SB3 would dump them after the rollout, at a later step than the baselines')
        self.logger.dump(step)
        if self.replay is not None and self.reprice_baselines and self._last_eval_step >= 0:
            # the env prices with the jointly fine-tuned reconstructor: re-price the baselines' fixed masks
            for name, masks in self._baseline_masks.items():
                self.baseline_scores[name]["env_return"] = float(np.mean(self.replay(masks)))
        for name, scores in self.baseline_scores.items():
            if self.tensorboard_dir is None:
                break
            writer = self._writer(name)
            for key, value in scores.items():
                if math.isfinite(value):
                    writer.add_scalar(f"eval/{key}", value, step)
            writer.flush()  # the flat lines are visible while training runs
        self.agent_history.append((step, values))
        self._last_eval_step = step
        if self.eval_freq:
            while self._next_eval <= step:
                self._next_eval += self.eval_freq
        result = {
            "step": step,
            "rate": self.rate,
            "documents": len(self.evaluator.docs),
            "agent": values,
            "baselines": self.baseline_scores,
        }
        if self.verbose:
            best = max(self.baseline_scores.items(), key=lambda kv: kv[1]["recoverability"], default=None)
            line = (
                f"eval @ {step}: agent recoverability {values['recoverability']:.3f}, "
                f"retention {values['retention']:.3f} (rate {values['rate']:.3f})"
            )
            if best is not None:
                line += (
                    f"; best baseline by recoverability {best[0]} {best[1]['recoverability']:.3f}, "
                    f"retention {best[1]['retention']:.3f}"
                )
            print(line)
        if self.on_evaluation is not None:
            self.on_evaluation(result)
        return result

    def _writer(self, name: str) -> Any:
        if self.tensorboard_dir is None:
            raise RuntimeError("No tensorboard_dir: baseline runs are not written.")
        if name not in self._writers:
            from torch.utils.tensorboard import SummaryWriter

            folder = self.tensorboard_dir / f"{BASELINE_RUN_PREFIX}{run_folder_name(name)}"
            self._writers[name] = SummaryWriter(log_dir=str(folder))
        return self._writers[name]

    def close(self) -> None:
        """Close the baselines' TensorBoard writers."""
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


class SaveRunCallback(BaseCallback):
    """Writes the run folder each time it is called (the child of :class:`RunCheckpointCallback`).

    :param save: the function that writes the run folder.
    """

    def __init__(self, save: Callable[[], object], verbose: int = 0) -> None:
        super().__init__(verbose)
        self.save = save
        self.saves = 0

    def _on_step(self) -> bool:
        self.save()
        self.saves += 1
        return True


class RunCheckpointCallback(EveryNTimesteps):
    """Saves the run folder every ``save_freq`` env steps (the trainer saves at the end and on Ctrl+C).

    SB3's :class:`~stable_baselines3.common.callbacks.EveryNTimesteps` counted from the step
    training (re)starts at, so a resumed run saves ``save_freq`` steps after its resume, not at once.

    :param save: the function that writes the run folder.
    :param save_freq: env steps between saves (>= 1).
    """

    def __init__(self, save: Callable[[], object], save_freq: int) -> None:
        if save_freq < 1:
            raise ValueError(f"save_freq must be >= 1 env step, got {save_freq}.")
        super().__init__(n_steps=save_freq, callback=SaveRunCallback(save))

    def _on_training_start(self) -> None:
        super()._on_training_start()
        self.last_time_trigger = self.num_timesteps


class TimeLimitCallback(BaseCallback):
    """Stops training once ``minutes`` of wall time have passed since training started.

    The step count then depends on the machine; the run folder's ``state.json`` records it.

    :param minutes: wall-time budget of ``learn``.
    :param verbose: SB3 verbosity.
    """

    def __init__(self, minutes: float, verbose: int = 0) -> None:
        super().__init__(verbose)
        if not minutes > 0:
            raise ValueError(f"minutes must be > 0, got {minutes}.")
        self.seconds = 60.0 * minutes
        self.stopped = False
        self._start = 0.0

    def _on_training_start(self) -> None:
        self._start = time.perf_counter()

    def _on_step(self) -> bool:
        if time.perf_counter() - self._start >= self.seconds:
            self.stopped = True
            return False
        return True


class StopOnSignalCallback(BaseCallback):
    """Stops training at the next env step after SIGTERM or SIGINT, so the trainer can save a checkpoint and exit.

    The handlers only record the signal (:attr:`received`); :meth:`_on_step` then returns ``False``,
    SB3 ends ``learn`` after that step, and the caller saves. So a signal never interrupts a
    PPO update, a fine-tuning round or a checkpoint being written; it takes effect at the next
    env step (after the update or evaluation in progress). A second SIGINT (Ctrl+C pressed again)
    raises ``KeyboardInterrupt`` at once; a second SIGTERM changes nothing.

    Handlers are installed only inside :meth:`catching` (and only in the main thread, the one
    Python delivers signals to); the previous ones are restored on exit.

    :param on_stop: called once, at the step the stop takes effect (e.g. to skip the final evaluation).
    :param verbose: SB3 verbosity.
    """

    SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, on_stop: Callable[[], object] | None = None, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.on_stop = on_stop
        #: the first signal received (``None``: none)
        self.received: signal.Signals | None = None
        self.stop_step: int | None = None

    @property
    def signal_name(self) -> str | None:
        """``SIGTERM`` or ``SIGINT`` once one was received."""
        return None if self.received is None else self.received.name

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.received = signal.Signals(signum)  # no printing here: the signal may have interrupted a print

    @contextlib.contextmanager
    def catching(self) -> Iterator[StopOnSignalCallback]:
        """Install the handlers for the block (a no-op outside the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.getsignal(s) for s in self.SIGNALS}
        for s in self.SIGNALS:
            signal.signal(s, self._handle)
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _on_step(self) -> bool:
        if self.received is None:
            return True
        if self.stop_step is None:
            self.stop_step = self.num_timesteps
            print(
                f"tokenmask train: {self.signal_name} received: stopping at step {self.num_timesteps:,} to save a checkpoint",
                file=sys.stderr,
                flush=True,
            )
            if self.on_stop is not None:
                self.on_stop()
        return False

    def _on_training_end(self) -> None:
        # a signal during the last update: no step saw it, but the callbacks ending after this one should
        if self.received is not None and self.stop_step is None:
            self.stop_step = self.num_timesteps
            if self.on_stop is not None:
                self.on_stop()


class RecoverabilityCallback(BaseCallback):
    """Logs ``rollout/recoverability``: mean judge recoverability of the training episodes that ended."""

    def __init__(self, verbose: int = 0) -> None:
        super().__init__(verbose)
        self._gains: list[float] = []

    def _on_step(self) -> bool:
        infos = self.locals.get("infos", [])
        self._gains.extend(float(info[RECOVERABILITY_KEY]) for info in infos if RECOVERABILITY_KEY in info)
        return True

    def _on_rollout_end(self) -> None:
        if self._gains:
            self.logger.record("rollout/recoverability", float(np.mean(self._gains)))
            self._gains.clear()
