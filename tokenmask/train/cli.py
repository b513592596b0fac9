"""``tokenmask train`` and ``tokenmask compress``: the command-line side of :mod:`tokenmask.train`.

Kept light: the trainer, SB3 and the models load only when a command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tokenmask.config import add_config_arguments, config_from_args, config_keys
from tokenmask.train.config import TrainConfig

if TYPE_CHECKING:
    from tokenmask.evaluate.compressor import Compressor

TRAIN_DESCRIPTION = """Train the masking agent (PPO or A2C on TokenMask-v0) into a run folder.

  tokenmask train --config configs/dev/debug.json [--key value ...]   start a run
  tokenmask train --resume RUN_DIR [--total_timesteps N ...]          continue a run

The env's options are the config file's "env" object and are overridden one by one as
--env.KEY VALUE (e.g. --env.window 32 --env.target_rate_range 0.3,0.7).

The run folder holds config.json, agent.zip, the fine-tuned reconstructor/ (joint training),
state.json, evaluation.json and TensorBoard logs (tb/). Ctrl+C saves it before exiting.
"""


COMPRESS_DESCRIPTION = """Read a text on stdin and print it compressed: the fraction --rate of its tokens removed.

  echo "some long text" | tokenmask compress --rate 0.5                  the shipped agent
  tokenmask compress --agent runs/ppo1 --show < prompt.txt               a trained agent, removals shown
  tokenmask compress --method span_self_information --rate 0.3 < f.txt  any registered method

The text goes through tokenmask.compress (the Python API): words never fuse where removed tokens
held the only space or line break between them, and the rate counts the emitted text re-tokenized.
A non-empty text always keeps at least one token: where --rate would remove them all (a very short
text), the method is asked for the rate that leaves one, and stderr says so. The achieved rate is
printed on stderr.
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
        help="compress text from stdin with the shipped agent, a trained one, or any registered method",
        description=COMPRESS_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = compress.add_mutually_exclusive_group()
    source.add_argument(
        "--agent",
        default=None,
        metavar="RUN_DIR",
        help='"default" (the agent shipped in the package; the default) or a run folder written by tokenmask train',
    )
    source.add_argument(
        "--method",
        default=None,
        metavar="NAME",
        help="a registered method instead of an agent: span_self_information, truncation, self_information, ...",
    )
    compress.add_argument(
        "--rate", type=float, default=0.5, help="fraction of tokens to remove, in [0, 1) (default 0.5)"
    )
    compress.add_argument(
        "--judge", default="default", help="the LM a --method is built with (default: the embedded SmolLM2)"
    )
    compress.add_argument("--device", default="auto", help="device of the models (auto, cpu, cuda)")
    compress.add_argument(
        "--show",
        action="store_true",
        help="first print the whole text with the removed tokens struck through, then the compressed text",
    )
    compress.set_defaults(func=run_compress)


def run_train(args: argparse.Namespace) -> int:
    """``tokenmask train``: exit status 0 when finished, 130 when interrupted (the run folder is saved)."""
    if args.resume is not None:
        if args.config is not None:
            raise ValueError(
                "--resume reads the run's own config.json; drop --config (override single keys instead)."
            )
        from tokenmask.train.run_folder import RunFolder

        RunFolder(args.resume).read_config()  # not a run folder: said before SB3 and torch load
        from tokenmask.train.loading import load_run_config

        names = [n for n in config_keys(TrainConfig) if n != "run_dir"]
        overrides = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
        config, _ = load_run_config(args.resume, overrides)
    else:
        config = config_from_args(TrainConfig, args)  # a bad file or value fails here, before torch loads
    from tokenmask.train.trainer import Trainer

    trainer = Trainer(config, resume=args.resume is not None)
    print(
        f"agent: TokenMaskPolicy, {trainer.policy_parameters:,} trainable parameters; run folder {trainer.run.path}"
    )
    status = trainer.train()
    print(json.dumps(trainer.run.read_state(), indent=2))
    return 130 if status == "interrupted" else 0


def run_compress(args: argparse.Namespace) -> int:
    """``tokenmask compress``: stdin -> compressed text on stdout; the achieved rate on stderr."""
    import tokenmask
    from tokenmask.evaluate.compressor import check_rate

    check_rate(args.rate)
    text = read_stdin_text()
    if not text.strip():
        raise ValueError(
            "No text on stdin: there is nothing to compress. Fix: e.g. echo 'some text' | tokenmask compress --rate 0.5."
        )
    compressor = load_compressor(args.agent, args.method, args.judge, args.device)
    result = tokenmask.compress(text, rate=args.rate, agent=compressor)  # keeps one token at least
    note = ""
    if result.tokens * (1.0 - args.rate) < 1.0:
        note = "; at least one token kept, as --rate would have removed every token"
    if args.show:
        print(show_removed(compressor, text, result.keep))
        print()
    print(result.text)
    print(
        f"[tokenmask compress: {compressor.name}, {result.tokens} tokens -> {result.kept_tokens}, "
        f"rate {result.rate:.3f} (asked {args.rate:.3f}){note}]",
        file=sys.stderr,
    )
    return 0


def read_stdin_text() -> str:
    """All of stdin as text, decoded as UTF-8.

    :raises InputError: for bytes that are not UTF-8 (naming the first bad byte).
    """
    from tokenmask.errors import InputError

    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:  # a text stream without bytes underneath (e.g. io.StringIO)
        return sys.stdin.read()
    data = buffer.read()
    try:
        return data.decode("utf-8-sig")  # a byte-order mark is not part of the text
    except UnicodeDecodeError as exc:
        raise InputError(
            f"stdin is not UTF-8 text (byte {exc.start}: {exc.reason}).",
            fix="convert it first, e.g. iconv -f LATIN1 -t UTF-8 < file | tokenmask compress ...",
        ) from None


def load_compressor(
    agent: str | None, method: str | None, judge: str = "default", device: str = "auto"
) -> Compressor:
    """The compressor ``tokenmask compress`` uses: a registered ``method`` built with ``judge``, else an agent.

    :param agent: ``"default"`` (the shipped agent; also when ``None``) or a run folder.
    :param method: a registered method name (``span_self_information``, ...); wins over ``agent``.
    :param judge: the LM a ``method`` is built with.
    :param device: device of the models.
    :raises AgentNotFoundError: no shipped agent (for ``default``) or no such run folder.
    :raises ValueError: an unknown method, or one that compresses inside the model (no text).
    """
    from tokenmask.api import AgentNotFoundError, build_text_method

    if method is not None:
        return build_text_method(method, judge, device)
    from tokenmask.train import agent_dir

    path = agent_dir(agent or "default")
    if not path.is_dir():
        raise AgentNotFoundError(
            f"--agent {agent}: no such folder. Fix: pass a run folder written by `tokenmask train`, "
            "or --method span_self_information."
        )
    from tokenmask.train.agent import AgentCompressor

    return AgentCompressor.load(str(path), device=device)


def show_removed(compressor: Compressor, text: str, keep: Sequence[bool] | None) -> str:
    """``text`` with the tokens ``keep`` drops struck through (U+0336 on each of their non-space characters).

    :param compressor: the compressor whose tokenizer ``keep`` refers to.
    :param text: the input text.
    :param keep: per token of ``text`` (``compressor.tokenizer``, no special tokens), ``True`` = kept;
        ``None`` for a method that rewrites the text (then the text is returned with a note).
    """
    from tokenmask.evaluate.compressor import token_texts
    from tokenmask.train.text_samples import strike

    if keep is None:
        return f"{text}\n[{compressor.name} rewrites the text instead of removing tokens: nothing to strike through]"
    ids = compressor.tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = token_texts(compressor.tokenizer, ids)
    return "".join(piece if kept else strike(piece) for piece, kept in zip(pieces, keep))
