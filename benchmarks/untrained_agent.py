"""Save a run's agent before any PPO update (step 0), to measure what training adds.

With ``--pretrain LABELS`` the agent is behaviour-cloned on a ``tokenmask label`` folder first
(the "cloning only" row of the ablation); without it, it is the untrained policy.

The policy is built exactly as ``tokenmask train`` builds it (same config, same seed, so the same
initial weights), saved with the base reconstructor, and not trained. Judge it next to the trained
run with ``tokenmask evaluate``::

    python benchmarks/untrained_agent.py --config configs/prod/gpu.json --run_dir runs/gpu_untrained --device cpu
    tokenmask evaluate --methods agent:runs/gpu_untrained,agent:runs/gpu --corpus data_out/pydocs --split test
"""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/prod/gpu.json")
    parser.add_argument("--run_dir", default="runs/gpu_untrained")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--n_envs", type=int, default=2, help="envs of the throwaway env (the policy does not depend on it)"
    )
    parser.add_argument(
        "--pretrain", default=None, help="`tokenmask label` folder: clone on it first (cloning only)"
    )
    args = parser.parse_args()

    from tokenmask.config import load_config
    from tokenmask.train.config import TrainConfig
    from tokenmask.train.trainer import Trainer

    overrides = {
        "run_dir": args.run_dir,
        "device": args.device,
        "n_envs": args.n_envs,
        "joint_period": 0,  # no fine-tuned reconstructor: the agent reads the base one, as at step 0
        "tensorboard": False,
    }
    if args.pretrain:
        overrides["pretrain"] = args.pretrain
    config = load_config(TrainConfig, args.config, overrides)
    trainer = Trainer(config)
    trainer.save("pretrained" if args.pretrain else "untrained")
    print(
        f"{'cloned' if args.pretrain else 'untrained'} agent ({trainer.policy_parameters:,} parameters, seed {config.seed}) saved to {args.run_dir}"
    )


if __name__ == "__main__":
    main()
