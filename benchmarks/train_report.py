"""What a trained run adds beyond ``tokenmask evaluate``: the env's own reward of the agent and the
baselines, and the effect of joint fine-tuning on the reconstructor.

1. ``env_return``: each method's masks of the evaluation contexts replayed through TokenMask-v0 with
   the run's reward options (the judge's recoverability bonus included when the run's
   ``recoverability_weight`` is > 0: the reward the agent was trained on) and the run's
   reconstructor (:func:`tokenmask.train.replay.replay_episodes`); ``token_return``: the same without
   the bonus (per-token bits and rate penalty only).
2. ``recon_bits_per_masked`` / ``recon_top1`` of the agent's masks under the run's base reconstructor
   (before fine-tuning) and under its fine-tuned one (after), from the metrics module.

    python benchmarks/train_report.py --run runs/gpu --corpus data_out/pydocs --split test --rates 0.5
"""

from __future__ import annotations

import argparse
import math

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", required=True, help="run folder of tokenmask train")
    parser.add_argument("--corpus", default="data_out/pydocs", help="prepared folder or .jsonl file")
    parser.add_argument("--split", default="test")
    parser.add_argument(
        "--frequency_corpus",
        default=None,
        help="texts the frequency baseline counts (default: the corpus' train split)",
    )
    parser.add_argument("--methods", default="random,frequency,length,self_information,truncation")
    parser.add_argument("--rates", default="0.5")
    parser.add_argument("--num_documents", type=int, default=30)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()

    from dataclasses import asdict

    import torch

    from tokenmask.data import iter_texts
    from tokenmask.evaluate.compressor import MaskingCompressor, MethodContext, build_method
    from tokenmask.evaluate.metrics import reconstruction_quality, select_documents
    from tokenmask.io import atomic_write_json
    from tokenmask.reconstructors import Reconstructor
    from tokenmask.train.agent import AgentCompressor
    from tokenmask.train.loading import load_reconstructor, load_run_config
    from tokenmask.train.replay import replay_episodes

    config, run = load_run_config(args.run)
    judge = Reconstructor.load(
        config.env.judge_name, device=args.device, dtype="float32", add_mask_token=False
    )
    texts = list(iter_texts(args.corpus, split=args.split))
    docs = select_documents(
        texts, judge, config.context_tokens, config.continuation_tokens, args.num_documents
    )
    contexts = [d.context for d in docs]
    train_source = args.frequency_corpus or args.corpus
    context = MethodContext(
        judge=judge, device=args.device, train_texts=list(iter_texts(train_source, split="train"))
    )
    agent = AgentCompressor.load(args.run, judge=judge, device=args.device)
    env = config.env
    env_options = asdict(env)
    methods: dict[str, MaskingCompressor] = {"agent": agent}
    for name in args.methods.split(","):
        method = build_method(name.strip(), context)
        assert isinstance(method, MaskingCompressor)
        methods[name.strip()] = method

    figures: dict[str, dict[str, float]] = {}
    agent_masks: dict[float, list[np.ndarray]] = {}
    for rate in [float(r) for r in args.rates.split(",")]:
        for name, method in methods.items():
            masks = method.keep_masks(contexts, rate, seed=0)
            if name == "agent":
                agent_masks[rate] = masks
            returns, recoverability = replay_episodes(
                contexts,
                masks,
                rate,
                agent.reconstructor,
                env_options,
                seed=0,
                judge=judge,
                recoverability_weight=env.recoverability_weight,
            )
            figures.setdefault(name, {})[f"env_return@{rate}"] = float(np.mean(returns))
            if env.recoverability_weight > 0:  # the per-token part: the same episodes less their bonus
                token_only = returns - env.recoverability_weight * recoverability
                figures[name][f"token_return@{rate}"] = float(np.mean(token_only))

    joint: dict[str, float] = {}
    if run.has_reconstructor():
        base = load_reconstructor(config, device=agent.reconstructor.device, trainable=False)
        for rate, masks in agent_masks.items():
            for label, recon in (("before", base), ("after", agent.reconstructor)):
                bits, top1 = reconstruction_quality(recon, contexts, masks, env.mask_mode)  # type: ignore[arg-type]
                joint[f"recon_bits_per_masked@{rate} {label}"] = bits
                joint[f"recon_top1@{rate} {label}"] = top1

    device = agent.reconstructor.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\nrun {args.run}: {len(docs)} documents of {args.corpus} ({args.split}), machine {name}")
    print(
        f"env reward: {env.reward_type}, bits_weight {env.bits_weight}, rate_penalty {env.rate_penalty}, window {env.window}"
        f", recoverability_weight {env.recoverability_weight} (token_return: without the bonus)"
    )
    rate_keys = sorted({k for v in figures.values() for k in v})
    print("| method | " + " | ".join(rate_keys) + " |")
    print("| --- |" + " --- |" * len(rate_keys))
    for method_name, values in figures.items():
        print(f"| {method_name} | " + " | ".join(f"{values[k]:.4f}" for k in rate_keys) + " |")
    if joint:
        print("\njoint fine-tuning, the agent's masks of the same documents:")
        print("| figure | base reconstructor (before) | fine-tuned (after) |")
        print("| --- | --- | --- |")
        for key in sorted({k.rsplit(" ", 1)[0] for k in joint}):
            before, after = joint[f"{key} before"], joint[f"{key} after"]
            if not (math.isnan(before) and math.isnan(after)):
                print(f"| {key} | {before:.3f} | {after:.3f} |")
    if args.json:
        atomic_write_json(args.json, {"env_return": figures, "joint": joint, "documents": len(docs)})


if __name__ == "__main__":
    main()
