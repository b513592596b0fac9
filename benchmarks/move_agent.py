"""The move agent: build judged-move tables, train a policy on ``TokenMaskMoves-v0``, score it against the rule.

Three steps (:mod:`tokenmask.envs.moves`):

- ``table``: ``refine_lookahead:p``'s judged moves of a split's documents at each rate, with every candidate's
  real gains (the frozen judge on the context and the continuation), saved as a :class:`MoveTable` (GPU).
- ``train``: a :class:`~tokenmask.policies.MovePolicy` on the table's env: optional behaviour cloning on
  each row's best candidate by its real reward (``--clone_epochs``; the labels read the continuation, the
  policy never does), then PPO (``--steps``); saved atomically as an SB3 ``.zip``.
- ``report``: on held-out tables, each policy's greedy choice beside the rule's, truncation's (the base)
  and the perfect choice's: corpus change in recoverability and retention over truncation per rate, and
  ``P(meets)``, the share of 30-document draws meeting the bar of docs/evaluation.md. Nothing is judged here.

Example (the run of docs/results.md)::

    python benchmarks/move_agent.py table --split train --offsets 0,128 --out runs/moves/train.npz --device cuda
    python benchmarks/move_agent.py table --split validation --out runs/moves/validation.npz --device cuda
    python benchmarks/move_agent.py train --table runs/moves/train.npz --clone_epochs 30 --steps 200000 \
        --out runs/moves/clone_ppo.zip
    python benchmarks/move_agent.py report --tables runs/moves/validation.npz --agents clone_ppo=runs/moves/clone_ppo.zip
"""

from __future__ import annotations

import argparse
import io
import time
from typing import Any

import numpy as np

GAIN, SLACK = 0.02, 0.01  # the bar of docs/evaluation.md over truncation


def table(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from tokenmask.data import iter_texts
    from tokenmask.envs.moves import build_move_table
    from tokenmask.evaluate.compressor import MethodContext, build_method
    from tokenmask.evaluate.metrics import select_documents
    from tokenmask.evaluate.refine import RecoverabilitySearch
    from tokenmask.evaluate.reports import device_description
    from tokenmask.reconstructors import Reconstructor

    judge = Reconstructor.load(
        "default", device=args.device, dtype=args.dtype, add_mask_token=False, batch_size=args.batch_size
    )
    texts = list(iter_texts(args.corpus, split=args.split))
    offsets = [int(o) for o in args.offsets.split(",") if o.strip()]
    limit = None if args.max_documents is None else args.skip + args.max_documents
    docs = select_documents(texts, judge, 256, 64, limit, offsets=offsets)[args.skip :]
    search = build_method(args.method, MethodContext(judge=judge, device=args.device))
    if not isinstance(search, RecoverabilitySearch):
        raise SystemExit(f"--method must be a refine_lookahead:p search, got {args.method}")
    rates = [float(r) for r in args.rates.split(",")]
    began = time.perf_counter()
    with tqdm(total=len(docs) * len(rates), desc=f"judging {args.split}", unit="doc") as bar:
        moves = build_move_table(search, judge, docs, rates, chunk=args.chunk, progress=bar.update)
    moves.settings.update(
        corpus=args.corpus,
        split=args.split,
        offsets=offsets,
        skip=args.skip,
        judge_dtype=args.dtype,
        machine=device_description(judge.device),
        seconds=time.perf_counter() - began,
    )
    moves.save(args.out)
    print(f"{len(docs)} documents x {len(rates)} rates in {moves.settings['seconds']:.0f} s: {args.out}")


def load_tables(paths: str) -> Any:
    """The tables of comma-separated files, as one (:meth:`MoveTable.concatenate`)."""
    from tokenmask.envs.moves import MoveTable

    return MoveTable.concatenate([MoveTable.load(p) for p in paths.split(",") if p.strip()])


def rewards(moves: Any, recoverability_weight: float, retention_weight: float) -> np.ndarray:
    """Every candidate's reward as the env gives it (``-inf`` for padding)."""
    gain_r, gain_f = moves.metric_gains()
    r = recoverability_weight * gain_r + retention_weight * gain_f
    return np.where(moves.valid, r, -np.inf)  # type: ignore[no-any-return]


def clone(model: Any, moves: Any, labels: np.ndarray, epochs: int, batch: int, seed: int) -> list[float]:
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


def validation_curve(moves: Any, every: int, curve: list[dict[str, Any]]) -> Any:
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


def plot_curve(curve: list[dict[str, Any]], path: str) -> None:
    """Recoverability and retention change over truncation vs PPO steps, per rate, beside the rule (dashed)."""
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
                ax.axhline(GAIN, color="grey", ls=":", label="bar (+0.02)")
            else:
                ax.axhline(-SLACK, color="grey", ls=":", label="bar (-0.01)")
            ax.set_xlabel("PPO steps (thousands)")
            ax.set_ylabel(f"change in {label} over truncation")
        axes[1].legend(fontsize=7, ncol=2)
        fig.suptitle("TokenMaskMoves-v0: the greedy policy on held-out documents during PPO", fontsize=10)
        atomic_write_bytes(path, figure_png(fig))
    finally:
        plt.close(fig)


def train(args: argparse.Namespace) -> None:
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    from tokenmask.envs.moves import TokenMaskMovesEnv
    from tokenmask.io import atomic_write_bytes
    from tokenmask.policies import MovePolicy

    moves = load_tables(args.table)
    torch.manual_seed(args.seed)
    env = make_vec_env(
        TokenMaskMovesEnv,
        n_envs=args.n_envs,
        seed=args.seed,
        env_kwargs=dict(
            table=moves,
            recoverability_weight=args.recoverability_weight,
            retention_weight=args.retention_weight,
        ),
    )
    model = PPO(
        MovePolicy,
        env,
        n_steps=args.n_steps,
        batch_size=args.batch,
        n_epochs=args.epochs,
        learning_rate=args.lr,
        gamma=0.0,
        ent_coef=args.ent_coef,
        seed=args.seed,
        tensorboard_log=args.tensorboard,
        verbose=0,
    )
    began = time.perf_counter()
    log: dict[str, Any] = {"table": args.table, "rows": len(moves), "seed": args.seed}
    if args.clone_epochs:
        labels = np.argmax(rewards(moves, args.recoverability_weight, args.retention_weight), axis=1)
        log["clone_loss"] = clone(model, moves, labels, args.clone_epochs, args.batch, args.seed)
        print(f"cloning: loss {log['clone_loss'][0]:.3f} -> {log['clone_loss'][-1]:.3f}")
    curve: list[dict[str, Any]] = []
    callback = None
    if args.eval_table:
        held_out = load_tables(args.eval_table)
        callback = validation_curve(held_out, args.eval_every, curve)
        model.set_logger(configure_logger(args.tensorboard))
        callback.record(0, model.policy, model.logger)
    if args.steps:
        model.learn(args.steps, callback=callback, progress_bar=True)
    if curve:
        from tokenmask.io import atomic_write_json

        callback.record(model.num_timesteps, model.policy, model.logger)
        stem = args.out.removesuffix(".zip")
        atomic_write_json(stem + ".curve.json", {**log, "eval_table": args.eval_table, "curve": curve})
        plot_curve(curve, stem + ".curve.png")
    buffer = io.BytesIO()
    model.save(buffer)
    atomic_write_bytes(args.out, buffer.getvalue())
    log["seconds"] = time.perf_counter() - began
    print(f"{args.out}: {args.clone_epochs} cloning epochs, {args.steps} PPO steps in {log['seconds']:.0f} s")


def configure_logger(folder: str | None) -> Any:
    """SB3's logger: TensorBoard in ``folder`` when given, else nothing written."""
    from stable_baselines3.common.logger import configure

    return configure(folder, ["tensorboard"] if folder else [])


def greedy(policy: Any, moves: Any) -> np.ndarray:
    """The policy's deterministic choice per row."""
    actions, _ = policy.predict(moves.observations, deterministic=True)
    return np.asarray(actions, dtype=np.int64)


def bar_cells(moves: Any, choice: np.ndarray, draws: int, seed: int) -> list[str]:
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


def report(args: argparse.Namespace) -> None:
    from tokenmask.evaluate.move_agent import load_move_policy

    moves = load_tables(args.tables)
    rates = sorted(set(moves.rate.tolist()))
    rows: dict[str, np.ndarray] = {
        "truncation (the base)": np.zeros(len(moves), dtype=np.int64),
        "`refine_lookahead:p` rule": moves.rule_choices(),
        "perfect choice (reads the continuation)": np.argmax(
            rewards(moves, 1.0, args.retention_weight), axis=1
        ),
    }
    for spec in [a for a in args.agents.split(",") if a.strip()]:
        name, _, path = spec.partition("=")
        rows[name] = greedy(load_move_policy(path), moves)
    header = " | ".join(str(r) for r in rates)
    print(
        f"{args.tables}: {len(moves)} rows; d rec / d ret over truncation (P(meets), {args.draws} draws of 30)\n"
    )
    print(f"| choice | {header} |\n| --- |" + " --- |" * len(rates))
    out = {}
    for name, choice in rows.items():
        cells = bar_cells(moves, choice, args.draws, args.seed)
        out[name] = {"cells": cells, "choice": choice.tolist()}
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.json:
        from tokenmask.io import atomic_write_json

        atomic_write_json(args.json, {"tables": args.tables, "rows": out})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("table", help="judge a split's moves (GPU)")
    t.add_argument("--corpus", default="data_out/pydocs")
    t.add_argument("--split", default="train")
    t.add_argument("--max_documents", type=int, default=None)
    t.add_argument("--skip", type=int, default=0)
    t.add_argument("--offsets", default="0")
    t.add_argument("--rates", default="0.3,0.5,0.7")
    t.add_argument("--method", default="refine_lookahead:p:bf16:truncation")
    t.add_argument("--dtype", default="float32", help="the metrics judge's dtype")
    t.add_argument("--batch_size", type=int, default=None)
    t.add_argument("--chunk", type=int, default=32)
    t.add_argument("--device", default="auto")
    t.add_argument("--out", required=True)
    r = sub.add_parser("train", help="cloning and/or PPO on TokenMaskMoves-v0")
    r.add_argument("--table", required=True, help="comma-separated tables")
    r.add_argument("--steps", type=int, default=200_000)
    r.add_argument("--clone_epochs", type=int, default=0)
    r.add_argument("--recoverability_weight", type=float, default=1.0)
    r.add_argument("--retention_weight", type=float, default=1.0)
    r.add_argument("--n_envs", type=int, default=8)
    r.add_argument("--n_steps", type=int, default=128)
    r.add_argument("--batch", type=int, default=256)
    r.add_argument("--epochs", type=int, default=10)
    r.add_argument("--lr", type=float, default=3e-4)
    r.add_argument("--ent_coef", type=float, default=0.0)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--tensorboard", default=None)
    r.add_argument(
        "--eval_table", default=None, help="held-out tables: the learning curve (JSON, PNG, TensorBoard)"
    )
    r.add_argument("--eval_every", type=int, default=10_000)
    r.add_argument("--out", required=True)
    p = sub.add_parser("report", help="score policies against the rule on held-out tables")
    p.add_argument("--tables", required=True)
    p.add_argument("--agents", default="", help="NAME=POLICY.zip, comma-separated")
    p.add_argument("--retention_weight", type=float, default=1.0, help="of the perfect choice")
    p.add_argument("--draws", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    {"table": table, "train": train, "report": report}[args.command](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
