"""``tokenmask activation train`` and ``tokenmask activation evaluate``.

train:    fit compression layers on a corpus (LM loss + contrastive loss, quality parachute);
          writes <output_dir>/model (load with CompressedCausalLM.from_pretrained),
          <output_dir>/train_summary.json and <output_dir>/tensorboard.
evaluate: perplexity with and without compression, rate (KV entries saved over all layers),
          ratio, memory, bytes saved and pre-fill time over a threshold sweep; writes report.json,
          report.md, rate_vs_perplexity.png and merged_positions.png (which positions each layer
          merged, for the first sequence; also a TensorBoard image under tensorboard/).

A layer plan: --compression_layers 4,12,20 --layer_thresholds 0.64,0.64,0.64 (each layer keeps
about its threshold's share of its units; whole-model rate about 0.5 on SmolLM2's 30 layers).

Every option can come from --config FILE.json and be overridden on the command line. Both write
into output_dir in place; a non-empty folder tokenmask did not write is refused (--overwrite
writes into it anyway, replacing files of the same names), and it stays locked while the command
runs, so a second command writing the same folder fails at once.
"""

from __future__ import annotations

import argparse
import json

from tokenmask.activation_compression.config import ActivationEvaluateConfig, ActivationTrainConfig
from tokenmask.config import add_config_arguments, config_from_args
from tokenmask.io import claimed_output_dir

OVERWRITE_HELP = (
    "write into output_dir even if tokenmask did not write it (files of the same names are replaced)"
)


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``tokenmask activation {train,evaluate}``."""
    parser = subparsers.add_parser(
        "activation",
        help="activation compression: cluster hidden states inside the LM (train / evaluate)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="activation_command", metavar="SUBCOMMAND")
    train_parser = commands.add_parser(
        "train", help="train compression layers", description=ActivationTrainConfig.__doc__
    )
    add_config_arguments(train_parser, ActivationTrainConfig)
    train_parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    train_parser.set_defaults(func=_train)
    eval_parser = commands.add_parser(
        "evaluate",
        help="measure perplexity, rate, memory and time over thresholds; picture the merged positions",
        description=ActivationEvaluateConfig.__doc__,
    )
    add_config_arguments(eval_parser, ActivationEvaluateConfig)
    eval_parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    eval_parser.set_defaults(func=_evaluate)
    parser.set_defaults(func=lambda args: _missing(parser))


def _missing(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _train(args: argparse.Namespace) -> int:
    config = config_from_args(ActivationTrainConfig, args)  # a bad value fails here, before torch loads
    from tokenmask.activation_compression.training import train

    with claimed_output_dir(config.output_dir, args.overwrite, kind="activation train"):
        summary = train(config)
    print(
        json.dumps(
            {
                "steps": summary["steps"],
                "validation": {k: v for k, v in summary["validation"].items() if k != "kept_per_layer"},
                "model_dir": summary["model_dir"],
            },
            indent=2,
        )
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    config = config_from_args(ActivationEvaluateConfig, args)  # a bad value fails here, before torch loads
    from tokenmask.activation_compression.evaluation import evaluate
    from tokenmask.activation_compression.report import markdown_table

    with claimed_output_dir(config.output_dir, args.overwrite, kind="activation evaluate"):
        report = evaluate(config)
    for name, rows in report["sweeps"].items():
        print(markdown_table(rows, name))
    print(f"reports: {report['files']}")
    return 0
