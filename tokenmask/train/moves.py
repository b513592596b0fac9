"""``tokenmask moves``: the move agent's pipeline (``TokenMaskMoves-v0``, :mod:`tokenmask.envs.moves`) in three steps.

- ``tokenmask moves table``: ``refine_lookahead:p``'s judged moves of a split's documents at each rate, with every
  candidate's real gains (the frozen judge on the context and the continuation), saved as one
  :class:`~tokenmask.envs.moves.MoveTable` ``.npz`` (a GPU makes it minutes; 50 s per 200 windows on an H100).
  The documents are judged ``shard_documents`` at a time and each shard is saved (atomically) in
  ``OUT.parts/`` as it finishes, so an interrupted run, or one cut by a 10-minute GPU call, resumes where it
  stopped when run again with the same settings; the finished table replaces the parts. Data-parallel on N GPUs:
  ``accelerate launch --num_processes N -m tokenmask.cli moves table ...`` (the same table as one process).
- ``tokenmask moves train``: a :class:`~tokenmask.policies.MovePolicy` on the table's env: optional behaviour
  cloning on each row's best candidate by its real reward (``clone_epochs``; the labels read the continuation,
  the policy never does), then PPO or A2C (``algo``, ``steps``), with an optional held-out learning curve (TensorBoard,
  JSON and PNG beside the rule's lines). The model is checkpointed every ``checkpoint_every`` RL steps
  (``OUT.checkpoint.zip``); a run started again with the same ``out`` resumes from it. Saved atomically as an
  SB3 ``.zip``, which ``tokenmask evaluate --methods move_agent:OUT.zip:bf16:truncation`` runs.
- ``tokenmask moves report``: on held-out tables, each policy's greedy choice beside the rule's, truncation's (the
  base) and the perfect choice's: corpus change in recoverability and retention over truncation per rate, and
  ``P(meets)``, the share of 30-document draws meeting the bar of docs/evaluation.md. Nothing is judged here.

Each step takes ``--config FILE.json`` and any key as ``--key value`` (configs/dev/moves_*.json)::

    tokenmask moves table --split train --offsets 0,128 --device cuda --out runs/moves/train.npz
    tokenmask moves table --split validation --device cuda --out runs/moves/validation.npz
    tokenmask moves train --table runs/moves/train.npz --clone_epochs 30 --steps 0 --out runs/moves/clone.zip
    tokenmask moves report --tables runs/moves/validation.npz --agents clone=runs/moves/clone.zip
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tokenmask.config import add_config_arguments, config_from_args
from tokenmask.errors import ConfigError, InputError
from tokenmask.evaluate.reports import RECOVERABILITY_MARGIN as GAIN
from tokenmask.evaluate.reports import RETENTION_MARGIN as SLACK
from tokenmask.io import atomic_write_model

if TYPE_CHECKING:
    from tokenmask.envs.moves import MoveTable


def _check_rates(rates: Sequence[float]) -> None:
    if not rates or any(not 0.0 <= r < 1.0 for r in rates):
        raise ConfigError(
            f"rates must be a non-empty list of rates in [0, 1), got {list(rates)}.", key="rates"
        )


@dataclass
class MoveTableConfig:
    """Options of ``tokenmask moves table`` (any key can be set in a JSON config or on the CLI)."""

    corpus: str = field(
        default="sample", metadata={"help": "prepared corpus folder, .jsonl/.txt file or folder, or 'sample'"}
    )
    split: str = field(default="train", metadata={"help": "split of a prepared corpus folder"})
    text_column: str = field(default="text", metadata={"help": "JSONL key / dataset column holding the text"})
    max_documents: int | None = field(
        default=None, metadata={"help": "judge the first N long-enough windows after skip (None: all)"}
    )
    skip: int = field(default=0, metadata={"help": "windows left out at the start"})
    offsets: list[int] = field(
        default_factory=lambda: [0],
        metadata={"help": "token offsets of each text's windows (more windows to train on)"},
    )
    rates: list[float] = field(default_factory=lambda: [0.3, 0.5, 0.7], metadata={"help": "asked rates"})
    method: str = field(
        default="refine_lookahead:p:bf16:truncation",
        metadata={
            "help": "the search whose judged moves the agent chooses among (a refine_lookahead:p search)"
        },
    )
    judge: str = field(
        default="default",
        metadata={"help": "judge model name or saved folder (default: the embedded SmolLM2-135M-Instruct)"},
    )
    judge_dtype: str = field(
        default="float32",
        metadata={"help": "the metrics judge's dtype (the gains; float32 as tokenmask evaluate)"},
    )
    batch_size: int | None = field(default=None, metadata={"help": "judge sequences per forward pass"})
    chunk: int = field(default=32, metadata={"help": "documents per batched search call"})
    shard_documents: int = field(
        default=200,
        metadata={"help": "documents judged and saved together in OUT.parts/ (the unit of resuming)"},
    )
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    out: str = field(default="runs/moves/train.npz", metadata={"help": "the table to write (.npz)"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing table at out"})

    def __post_init__(self) -> None:
        _check_rates(self.rates)
        if self.skip < 0 or (self.max_documents is not None and self.max_documents < 1):
            raise ConfigError(
                f"skip must be >= 0 and max_documents >= 1 (or None), got {self.skip} and {self.max_documents}."
            )
        if self.chunk < 1 or self.shard_documents < 1:
            raise ConfigError(
                f"chunk and shard_documents must be >= 1, got {self.chunk} and {self.shard_documents}."
            )


@dataclass
class MoveTrainConfig:
    """Options of ``tokenmask moves train``."""

    table: list[str] = field(
        default_factory=lambda: ["default"],
        metadata={"help": "training tables (joined): paths, or default (the packaged pydocs train table)"},
    )
    algo: str = field(default="ppo", metadata={"help": "ppo or a2c (SB3), after the optional cloning"})
    steps: int = field(default=200_000, metadata={"help": "RL steps (0: cloning only)"})
    clone_epochs: int = field(
        default=0, metadata={"help": "behaviour cloning epochs on each row's best candidate, before RL"}
    )
    recoverability_weight: float = field(default=1.0, metadata={"help": "the reward's recoverability weight"})
    retention_weight: float = field(default=1.0, metadata={"help": "the reward's retention weight"})
    n_envs: int = field(default=8, metadata={"help": "parallel envs"})
    n_steps: int = field(default=128, metadata={"help": "rollout steps per env"})
    batch: int = field(default=256, metadata={"help": "minibatch (PPO and cloning)"})
    epochs: int = field(default=10, metadata={"help": "PPO epochs per rollout (A2C: one update per rollout)"})
    lr: float = field(default=3e-4, metadata={"help": "learning rate"})
    ent_coef: float = field(default=0.0, metadata={"help": "entropy coefficient"})
    seed: int = field(default=0, metadata={"help": "seed (envs, policy, cloning order)"})
    tensorboard: str | None = field(default=None, metadata={"help": "TensorBoard folder (None: none)"})
    eval_table: list[str] = field(
        default_factory=list,
        metadata={"help": "held-out tables: the learning curve (JSON, PNG, TensorBoard)"},
    )
    eval_every: int = field(default=10_000, metadata={"help": "RL steps between learning-curve points"})
    checkpoint_every: int = field(
        default=50_000, metadata={"help": "RL steps between checkpoints (OUT.checkpoint.zip; 0: none)"}
    )
    out: str = field(default="runs/moves/agent.zip", metadata={"help": "the policy to write (SB3 .zip)"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing policy at out"})

    def __post_init__(self) -> None:
        if self.algo not in ("ppo", "a2c"):
            raise ConfigError(f"algo must be ppo or a2c, got {self.algo!r}.", key="algo")
        if not self.table:
            raise ConfigError("table needs at least one table file.", key="table")
        if self.steps < 0 or self.clone_epochs < 0 or (self.steps == 0 and self.clone_epochs == 0):
            raise ConfigError(
                f"steps and clone_epochs must be >= 0 and one of them > 0, got {self.steps} and {self.clone_epochs}."
            )
        if (
            min(self.n_envs, self.n_steps, self.batch, self.epochs, self.eval_every) < 1
            or self.checkpoint_every < 0
        ):
            raise ConfigError(
                "n_envs, n_steps, batch, epochs and eval_every must be >= 1, checkpoint_every >= 0."
            )


@dataclass
class MoveReportConfig:
    """Options of ``tokenmask moves report``."""

    tables: list[str] = field(
        default_factory=lambda: ["default:validation"],
        metadata={
            "help": "held-out tables (joined): paths, or default:validation (the packaged pydocs validation table)"
        },
    )
    agents: list[str] = field(default_factory=list, metadata={"help": "NAME=POLICY.zip per policy"})
    retention_weight: float = field(default=1.0, metadata={"help": "of the perfect choice"})
    draws: int = field(default=2000, metadata={"help": "30-document draws for P(meets)"})
    seed: int = field(default=0, metadata={"help": "seed of the draws"})
    json: str | None = field(default=None, metadata={"help": "also write the report here (JSON)"})
    plot: str | None = field(
        default=None,
        metadata={"help": "also draw it here (PNG): each choice's change per rate, the bar's region shaded"},
    )

    def __post_init__(self) -> None:
        if self.draws < 1:
            raise ConfigError(f"draws must be >= 1, got {self.draws}.", key="draws")
        for spec in self.agents:
            if "=" not in spec:
                raise ConfigError(f"agents: {spec!r} is not NAME=POLICY.zip.", key="agents")


# ---------------------------------------------------------------------------------------- table
def build_table(config: MoveTableConfig, progress: bool = True) -> MoveTable | None:
    """Judge the moves of the configured documents, shard by shard (resumable), and write the table.

    Data-parallel under ``accelerate launch``: the shards are dealt to the processes (shard ``i`` to process
    ``i mod N``), each on its own device, each writing its own shards; the main process then joins them. A shard's
    rows do not depend on which process judged it, so the table is the one a single process writes.
    Returns the table on the main process, ``None`` on the others.
    """
    from accelerate import Accelerator
    from tqdm import tqdm

    from tokenmask.data import iter_texts
    from tokenmask.envs.moves import MoveTable, build_move_table
    from tokenmask.evaluate.compressor import MethodContext, build_method, method_factory
    from tokenmask.evaluate.metrics import select_documents
    from tokenmask.evaluate.refine import RecoverabilitySearch
    from tokenmask.evaluate.reports import device_description
    from tokenmask.io import atomic_write_json, check_output_file
    from tokenmask.reconstructors import Reconstructor

    out = check_output_file(config.out, config.overwrite)
    method_factory(config.method)  # an unknown method fails before the judge loads
    parts = Path(f"{out}.parts")
    settings = {
        k: v
        for k, v in asdict(config).items()
        if k not in ("out", "overwrite", "device", "batch_size", "chunk")
    }
    _check_parts(parts, settings)
    accelerator = Accelerator(cpu=config.device == "cpu")
    # one process: the configured device; several: each its own (accelerate's)
    device = config.device if accelerator.num_processes == 1 else str(accelerator.device)
    judge = Reconstructor.load(
        config.judge,
        device=device,
        dtype=config.judge_dtype,
        add_mask_token=False,
        batch_size=config.batch_size,
    )
    texts = list(iter_texts(config.corpus, split=config.split, text_column=config.text_column))
    if not texts:
        raise InputError(
            f"{config.corpus} (split {config.split!r}) holds no text.", fix="pass a corpus with texts."
        )
    limit = None if config.max_documents is None else config.skip + config.max_documents
    docs = select_documents(texts, judge, 256, 64, limit, offsets=config.offsets)[config.skip :]
    search = build_method(config.method, MethodContext(judge=judge, device=device))
    if not isinstance(search, RecoverabilitySearch) or not search.lookahead or not search.proposals:
        raise InputError(
            f"method must be a refine_lookahead:p search, got {config.method!r}.",
            fix="e.g. refine_lookahead:p:bf16:truncation.",
        )
    if accelerator.is_main_process:
        parts.mkdir(parents=True, exist_ok=True)
        atomic_write_json(parts / "settings.json", settings)
    accelerator.wait_for_everyone()
    began = time.perf_counter()
    shards = range(0, len(docs), config.shard_documents)
    mine = shards[accelerator.process_index :: accelerator.num_processes]
    with tqdm(
        total=sum(len(docs[s : s + config.shard_documents]) for s in mine) * len(config.rates),
        desc=f"judging {config.split} ({accelerator.num_processes} proc.)",
        unit="doc",
        disable=not (progress and accelerator.is_main_process),
    ) as bar:
        for start in mine:
            part = parts / f"{start:07d}.npz"
            shard = docs[start : start + config.shard_documents]
            if part.exists():
                bar.update(len(shard) * len(config.rates))
                continue
            table = build_move_table(
                search, judge, shard, config.rates, chunk=config.chunk, progress=bar.update
            )
            table.save(part)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return None
    table = MoveTable.concatenate([_load_part(parts / f"{s:07d}.npz") for s in shards])
    table.settings.update(
        settings,
        judge_dtype=config.judge_dtype,
        documents=len(docs),
        machine=device_description(judge.device),
        processes=accelerator.num_processes,
        seconds=time.perf_counter() - began,
    )
    table.save(out)
    shutil.rmtree(parts, ignore_errors=True)
    print(
        f"{len(docs)} documents x {len(config.rates)} rates ({len(table)} rows) on {accelerator.num_processes} "
        f"process(es) in {table.settings['seconds']:.0f} s: {out}"
    )
    return table


def _check_parts(parts: Path, settings: dict[str, Any]) -> None:
    """Refuse to resume from parts written with other settings (they would mix two tables)."""
    saved = parts / "settings.json"
    if not saved.exists():
        return
    try:
        old = json.loads(saved.read_text())
    except (OSError, ValueError) as error:
        raise InputError(
            f"{saved} is unreadable ({error}).", fix=f"delete {parts} to start the table again."
        ) from error
    now = json.loads(json.dumps(settings))  # as the file holds them (tuples as lists)
    if old != now:
        changed = sorted(k for k in set(old) | set(now) if old.get(k) != now.get(k))
        raise InputError(
            f"{parts} holds a table begun with other settings ({', '.join(changed)}).",
            fix=f"run with the same settings to resume, or delete {parts} to start again.",
        )


def _load_part(path: Path) -> MoveTable:
    """One saved shard of a table being built; a damaged one is named with the fix (judge it again)."""
    from tokenmask.envs.moves import MoveTable

    try:
        return MoveTable.load(path)
    except ValueError as error:
        raise InputError(
            f"{path}, a saved shard of the table, is damaged ({str(error).split('. Fix')[0]}).",
            fix=f"delete {path} and run again: its documents are judged again, the other shards kept.",
            path=path,
        ) from error


def load_tables(paths: Sequence[str]) -> MoveTable:
    """The tables of several files, as one (:meth:`~tokenmask.envs.moves.MoveTable.concatenate`)."""
    from tokenmask.envs.moves import MoveTable

    return MoveTable.concatenate([MoveTable.load(p) for p in paths if str(p).strip()])


# ---------------------------------------------------------------------------------------- train
def rewards(moves: MoveTable, recoverability_weight: float, retention_weight: float) -> np.ndarray:
    """Every candidate's reward as the env gives it (``-inf`` for padding)."""
    gain_r, gain_f = moves.metric_gains()
    r = recoverability_weight * gain_r + retention_weight * gain_f
    return np.where(moves.valid, r, -np.inf)  # type: ignore[no-any-return]


def clone(
    model: Any, moves: MoveTable, labels: np.ndarray, epochs: int, batch: int, seed: int
) -> list[float]:
    """Behaviour cloning of the policy on one label per row (cross-entropy); the mean loss per epoch."""
    import torch

    policy = model.policy
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    obs = torch.as_tensor(moves.observations)
    target = torch.as_tensor(labels)
    losses = []
    for _ in range(epochs):
        order = rng.permutation(len(labels))
        total = 0.0
        for start in range(0, len(order), batch):
            idx = torch.as_tensor(order[start : start + batch])
            _, log_prob, _ = policy.evaluate_actions(obs[idx], target[idx])
            loss = -log_prob.mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        losses.append(total / len(labels))
    return losses


def greedy(policy: Any, moves: MoveTable) -> np.ndarray:
    """The policy's deterministic choice per row."""
    actions, _ = policy.predict(moves.observations, deterministic=True)
    return np.asarray(actions, dtype=np.int64)


def validation_curve(moves: MoveTable, every: int, curve: list[dict[str, Any]]) -> Any:
    """An SB3 callback: every ``every`` steps, the greedy choice's change over truncation per rate on ``moves``
    (held-out), logged to TensorBoard (``moves/d_rec_RATE``, ``moves/d_ret_RATE``, beside the rule's lines
    ``moves/rule_d_rec_RATE``...) and appended to ``curve``."""
    from stable_baselines3.common.callbacks import BaseCallback

    rule = moves.rule_choices()
    rates = sorted(set(moves.rate.tolist()))

    class ValidationCurve(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.last = -every

        def _on_step(self) -> bool:
            if self.num_timesteps - self.last >= every:
                self.last = self.num_timesteps
                self.record(self.num_timesteps, self.model.policy, self.logger)
            return True

        def record(self, step: int, policy: Any, logger: Any) -> None:
            """One point of the curve: the greedy choice's and the rule's changes per rate, logged and kept."""
            choice = greedy(policy, moves)
            point: dict[str, Any] = {"step": step}
            for rate in rates:
                rows = np.flatnonzero(moves.rate == rate)
                for name, picks in (("", choice), ("rule_", rule)):
                    rec, ret = moves.changes(picks, rows)
                    point[f"{name}d_rec_{rate}"], point[f"{name}d_ret_{rate}"] = rec, ret
                    logger.record(f"moves/{name}d_rec_{rate}", rec)
                    logger.record(f"moves/{name}d_ret_{rate}", ret)
            curve.append(point)

    return ValidationCurve()


def checkpoints(path: Path, every: int) -> Any:
    """An SB3 callback that saves the model to ``path`` (atomically) every ``every`` steps: what a rerun resumes from."""
    from stable_baselines3.common.callbacks import BaseCallback

    class Checkpoint(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps % every < self.training_env.num_envs:
                atomic_write_model(path, self.model)
            return True

    return Checkpoint()


def plot_curve(curve: list[dict[str, Any]], path: str | Path) -> None:
    """Recoverability and retention change over truncation vs RL steps, per rate, beside the rule (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tokenmask.evaluate.reports import figure_png
    from tokenmask.io import atomic_write_bytes

    rates = sorted({float(k.rsplit("_", 1)[1]) for k in curve[0] if k.startswith("d_rec_")})
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    steps = [p["step"] / 1000 for p in curve]
    try:
        for ax, key, label in ((axes[0], "d_rec", "recoverability"), (axes[1], "d_ret", "retention")):
            for i, rate in enumerate(rates):
                color = f"C{i}"
                ax.plot(steps, [p[f"{key}_{rate}"] for p in curve], color=color, label=f"agent, rate {rate}")
                ax.plot(
                    steps,
                    [p[f"rule_{key}_{rate}"] for p in curve],
                    color=color,
                    ls="--",
                    label=f"rule, rate {rate}",
                )
            ax.axhline(0.0, color="k", lw=0.8, label="truncation")
            if key == "d_rec":
                ax.axhline(GAIN, color="grey", ls=":", label=f"bar (+{GAIN})")
            else:
                ax.axhline(-SLACK, color="grey", ls=":", label=f"bar (-{SLACK})")
            ax.set_xlabel("RL steps (thousands)")
            ax.set_ylabel(f"change in {label} over truncation")
        axes[1].legend(fontsize=7, ncol=2)
        fig.suptitle(
            "TokenMaskMoves-v0: the greedy policy on held-out documents during training", fontsize=10
        )
        atomic_write_bytes(path, figure_png(fig))
    finally:
        plt.close(fig)


def train_agent(config: MoveTrainConfig, progress: bool = True) -> dict[str, Any]:
    """Cloning and/or PPO / A2C on the configured tables; writes the policy (and its curve); returns the run's log.

    A checkpoint at ``OUT.checkpoint.zip`` (written after cloning and every ``checkpoint_every`` RL steps) is
    resumed from: cloning is not repeated and the RL runs the steps that remain.
    """
    import torch
    from stable_baselines3.common.env_util import make_vec_env

    from tokenmask.envs.moves import TokenMaskMovesEnv
    from tokenmask.io import atomic_write_json, check_output_file
    from tokenmask.policies import MovePolicy

    out = check_output_file(config.out, config.overwrite)
    moves = load_tables(config.table)
    held_out = load_tables(config.eval_table) if config.eval_table else None
    torch.manual_seed(config.seed)
    env = make_vec_env(
        TokenMaskMovesEnv,
        n_envs=config.n_envs,
        seed=config.seed,
        env_kwargs=dict(
            table=moves,
            recoverability_weight=config.recoverability_weight,
            retention_weight=config.retention_weight,
        ),
    )
    from tokenmask.train.loading import algorithm_class, load_agent

    kwargs: dict[str, Any] = dict(
        n_steps=config.n_steps,
        learning_rate=config.lr,
        gamma=0.0,
        ent_coef=config.ent_coef,
        seed=config.seed,
        tensorboard_log=config.tensorboard,
        verbose=0,
    )
    if config.algo == "ppo":
        kwargs.update(batch_size=config.batch, n_epochs=config.epochs)
    checkpoint = Path(f"{out.with_suffix('')}.checkpoint.zip")
    began = time.perf_counter()
    log: dict[str, Any] = {"config": asdict(config), "rows": len(moves)}
    if checkpoint.exists():
        fix = f"delete {checkpoint} to train from the start."
        model = load_agent(
            checkpoint, config.algo, env=env, device="cpu", fix=fix, tensorboard_log=config.tensorboard
        )
        log["resumed_at"] = int(model.num_timesteps)
        print(f"resuming from {checkpoint} at {model.num_timesteps} {config.algo.upper()} steps")
    else:
        model = algorithm_class(config.algo)(MovePolicy, env, **kwargs)
        if config.clone_epochs:
            labels = np.argmax(rewards(moves, config.recoverability_weight, config.retention_weight), axis=1)
            log["clone_loss"] = clone(model, moves, labels, config.clone_epochs, config.batch, config.seed)
            print(f"cloning: loss {log['clone_loss'][0]:.3f} -> {log['clone_loss'][-1]:.3f}")
        if config.checkpoint_every and config.steps:
            atomic_write_model(checkpoint, model)
    callbacks: list[Any] = []
    curve: list[dict[str, Any]] = []
    if held_out is not None:
        from stable_baselines3.common.logger import configure

        model.set_logger(configure(config.tensorboard, ["tensorboard"] if config.tensorboard else []))
        callbacks.append(validation_curve(held_out, config.eval_every, curve))
        callbacks[0].record(model.num_timesteps, model.policy, model.logger)
    if config.checkpoint_every and config.steps:
        callbacks.append(checkpoints(checkpoint, config.checkpoint_every))
    remaining = config.steps - int(model.num_timesteps)
    if remaining > 0:
        model.learn(remaining, callback=callbacks or None, progress_bar=progress, reset_num_timesteps=False)
    if curve:
        callbacks[0].record(model.num_timesteps, model.policy, model.logger)
        stem = str(out.with_suffix(""))
        atomic_write_json(stem + ".curve.json", {**log, "curve": curve})
        plot_curve(curve, stem + ".curve.png")
    atomic_write_model(out, model)
    checkpoint.unlink(missing_ok=True)
    log["seconds"] = time.perf_counter() - began
    print(
        f"{out}: {config.clone_epochs} cloning epochs, {int(model.num_timesteps)} {config.algo.upper()} steps in {log['seconds']:.0f} s"
    )
    return log


# ---------------------------------------------------------------------------------------- report
def bar_cells(moves: MoveTable, choice: np.ndarray, draws: int, seed: int) -> list[str]:
    """Per rate: ``d rec / d ret (P(meets))`` over the base, P over ``draws`` random 30-document draws."""
    rng = np.random.default_rng(seed)
    cells = []
    for rate in sorted(set(moves.rate.tolist())):
        rows = np.flatnonzero(moves.rate == rate)
        rec, ret = moves.changes(choice, rows)
        hits = 0
        for _ in range(draws):
            pick = rng.choice(rows, min(30, len(rows)), replace=False)
            r, f = moves.changes(choice, pick)
            hits += int(r >= GAIN and f >= -SLACK)
        cells.append(f"{rec:+.3f} / {ret:+.3f} ({hits / draws:.2f})")
    return cells


def report(config: MoveReportConfig) -> dict[str, Any]:
    """Print (and optionally write) each choice's change over truncation per rate on the held-out tables."""
    from tokenmask.evaluate.move_agent import load_move_policy
    from tokenmask.io import atomic_write_bytes, atomic_write_json

    moves = load_tables(config.tables)
    rates = sorted(set(moves.rate.tolist()))
    choices: dict[str, np.ndarray] = {
        "truncation (the base)": np.zeros(len(moves), dtype=np.int64),
        "`refine_lookahead:p` rule": moves.rule_choices(),
        "perfect choice (reads the continuation)": np.argmax(
            rewards(moves, 1.0, config.retention_weight), axis=1
        ),
    }
    for spec in config.agents:
        name, _, path = spec.partition("=")
        choices[name] = greedy(load_move_policy(path), moves)
    print(
        f"{', '.join(config.tables)}: {len(moves)} rows; d rec / d ret over truncation "
        f"(P(meets), {config.draws} draws of 30)\n"
    )
    print(f"| choice | {' | '.join(str(r) for r in rates)} |\n| --- |" + " --- |" * len(rates))
    out: dict[str, Any] = {}
    for name, choice in choices.items():
        cells = bar_cells(moves, choice, config.draws, config.seed)
        out[name] = {"cells": cells, "choice": choice.tolist()}
        print(f"| {name} | " + " | ".join(cells) + " |")
    result = {"tables": config.tables, "rates": rates, "rows": out}
    if config.json:
        atomic_write_json(config.json, result)
    if config.plot:
        atomic_write_bytes(config.plot, _report_plot(moves, choices, rates))
    return result


def _report_plot(moves: MoveTable, choices: dict[str, np.ndarray], rates: Sequence[float]) -> bytes:
    """:func:`~tokenmask.evaluate.reports.plot_pareto` of the changes over truncation (truncation at the origin)."""
    from tokenmask.evaluate.reports import TRUNCATION, plot_pareto

    rows = []
    for rate in rates:
        picked = np.flatnonzero(moves.rate == rate)
        for name, choice in choices.items():
            rec, ret = moves.changes(choice, picked)
            method = TRUNCATION if name.startswith("truncation") else name
            rows.append(
                {
                    "method": method,
                    "requested_rate": rate,
                    "rate": rate,
                    "recoverability": rec,
                    "retention": ret,
                }
            )
    return plot_pareto(
        rows,
        axes_named=("change in recoverability over truncation", "change in retention over truncation"),
        title=f"TokenMaskMoves-v0: each choice on {len(set(moves.document.tolist()))} held-out documents (label: rate)",
        zoom=False,  # the changes are already on the bar's scale
    )


# ---------------------------------------------------------------------------------------- CLI
_STEPS: dict[str, tuple[type, str, Callable[[Any, bool], Any]]] = {
    "table": (MoveTableConfig, "judge a split's moves with their real gains (GPU; resumable)", build_table),
    "train": (MoveTrainConfig, "cloning and/or PPO / A2C on TokenMaskMoves-v0 (resumable)", train_agent),
    "report": (
        MoveReportConfig,
        "score policies against the rule on held-out tables",
        lambda c, _: report(c),
    ),
}


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``tokenmask moves`` and its steps."""
    parser = subparsers.add_parser(
        "moves",
        help="the move agent: judge the search's moves (table), train a policy on them (train), score it (report)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    steps = parser.add_subparsers(dest="step", metavar="STEP", required=True)
    for name, (cls, help_text, _) in _STEPS.items():
        step = steps.add_parser(name, help=help_text, description=f"tokenmask moves {name}: {help_text}.")
        add_config_arguments(step, cls)
        step.add_argument("--no_progress", action="store_true", help="hide the progress bar")
        step.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    cls, _, run = _STEPS[args.step]
    run(config_from_args(cls, args), not args.no_progress)
    return 0
