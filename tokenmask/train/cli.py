"""``tokenmask train`` and ``tokenmask compress``: the command-line side of :mod:`tokenmask.train`.

Kept light: the trainer, SB3 and the models load only when a command runs.
"""

from __future__ import annotations

import argparse
import json
import sys

from tokenmask.config import add_config_arguments, config_from_args, config_keys
from tokenmask.train.config import TrainConfig

TRAIN_DESCRIPTION = """Train the masking agent (PPO or A2C on TokenMask-v0) into a run folder.

  tokenmask train --config configs/dev/debug.json [--key value ...]   start a run
  tokenmask train --resume RUN_DIR [--total_timesteps N ...]          continue a run

The env's options are the config file's "env" object and are overridden one by one as
--env.KEY VALUE (e.g. --env.window 32 --env.target_rate_range 0.3,0.7).

The run folder holds config.json, agent.zip, the fine-tuned reconstructor/ (joint training),
state.json, evaluation.json and TensorBoard logs (tb/). Ctrl+C saves it before exiting.
"""


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``tokenmask train`` and ``tokenmask compress``."""
    train = subparsers.add_parser(
        "train",
        help="train the masking agent (PPO/A2C) with joint reconstructor fine-tuning",
        description=TRAIN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(train, TrainConfig)
    train.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=None,
        help="continue the run saved in RUN_DIR (its config.json, overridden by the options given here)",
    )
    train.set_defaults(func=run_train)

    compress = subparsers.add_parser(
        "compress",
        help="compress text from stdin with a trained agent",
        description="Read a text on stdin and print it compressed by a trained agent (tokens removed at --rate).",
    )
    compress.add_argument(
        "--agent", required=True, metavar="RUN_DIR", help="run folder written by tokenmask train"
    )
    compress.add_argument(
        "--rate", type=float, default=0.5, help="fraction of tokens to remove, in [0, 1) (default 0.5)"
    )
    compress.add_argument(
        "--device", default="auto", help="device of the agent and its reconstructor (auto, cpu, cuda)"
    )
    compress.add_argument(
        "--show", action="store_true", help="print the whole text with removed tokens struck through"
    )
    compress.set_defaults(func=run_compress)


def run_train(args: argparse.Namespace) -> int:
    """``tokenmask train``: exit status 0 when finished, 130 when interrupted (the run folder is saved)."""
    from tokenmask.train.loading import load_run_config
    from tokenmask.train.trainer import Trainer

    if args.resume is not None:
        if args.config is not None:
            raise ValueError(
                "--resume reads the run's own config.json; drop --config (override single keys instead)."
            )
        names = [n for n in config_keys(TrainConfig) if n != "run_dir"]
        overrides = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
        config, _ = load_run_config(args.resume, overrides)
    else:
        config = config_from_args(TrainConfig, args)
    trainer = Trainer(config, resume=args.resume is not None)
    print(
        f"agent: TokenMaskPolicy, {trainer.policy_parameters:,} trainable parameters; run folder {trainer.run.path}"
    )
    status = trainer.train()
    print(json.dumps(trainer.run.read_state(), indent=2))
    return 130 if status == "interrupted" else 0


def run_compress(args: argparse.Namespace) -> int:
    """``tokenmask compress``: stdin -> compressed text on stdout; the achieved rate on stderr."""
    from tokenmask.evaluate.compressor import check_rate
    from tokenmask.train.agent import AgentCompressor
    from tokenmask.train.text_samples import strike_through

    check_rate(args.rate)
    text = sys.stdin.read()
    if not text.strip():
        raise ValueError("No text on stdin. Fix: e.g. echo 'some text' | tokenmask compress --agent RUN_DIR.")
    agent = AgentCompressor.load(args.agent, device=args.device)
    ids = agent.reconstructor.encode(text)
    keep = agent.keep_masks([ids], args.rate)[0]
    compressed = agent.tokenizer.decode([t for t, k in zip(ids, keep) if k])
    print(strike_through(agent.reconstructor, ids, keep) if args.show else compressed)
    kept_tokens = len(agent.tokenizer(compressed, add_special_tokens=False)["input_ids"])
    print(
        f"[tokenmask compress: {len(ids)} tokens -> {kept_tokens}, rate {1 - kept_tokens / len(ids):.3f} (asked {args.rate:.3f})]",
        file=sys.stderr,
    )
    return 0
