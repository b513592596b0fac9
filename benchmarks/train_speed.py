"""Training throughput of ``tokenmask train``'s pieces: env steps/s and PPO rollouts+updates/s.

Uses a randomly initialised Llama of the SmolLM2-135M shape (same cost per token as the real
model, no download needed) unless ``--model`` names a real one. Prints a table naming the machine.

    python benchmarks/train_speed.py --n_envs 16,64,128 --window 32 --steps 32
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from transformers import LlamaConfig

from tokenmask.reconstructors import Reconstructor, load_tokenizer, pick_device, pick_dtype


def smollm2_shape() -> LlamaConfig:
    """The architecture of SmolLM2-135M (30 layers, hidden 576, 9 heads, 3 KV heads)."""
    return LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        rope_theta=100000.0,
        bos_token_id=1,
        eos_token_id=2,
    )


def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default=None, help="real model name (default: random SmolLM2-shaped weights)"
    )
    parser.add_argument(
        "--tokenizer", default="default", help="tokenizer of the random model (a name or a saved folder)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--n_envs", default="16,64")
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--context_size", type=int, default=16)
    parser.add_argument("--max_tokens", type=int, default=256)
    parser.add_argument("--reward_type", default="information")
    parser.add_argument("--steps", type=int, default=32, help="env steps timed per setting")
    parser.add_argument(
        "--documents", type=int, default=256, help="documents of the shipped sample corpus used"
    )
    parser.add_argument("--ppo", action="store_true", help="also time PPO learn() over the same steps")
    args = parser.parse_args()

    from stable_baselines3 import PPO

    from tokenmask.envs.sb3_vec_env import TokenMaskSB3VecEnv
    from tokenmask.envs.vector_env import TokenMaskVectorEnv
    from tokenmask.policies import TokenMaskPolicy

    device = pick_device(args.device)
    if args.model:
        recon = Reconstructor.load(args.model, device=device, dtype=args.dtype)
    else:
        recon = Reconstructor.from_config(smollm2_shape(), load_tokenizer(args.tokenizer), device=device)
        recon.model.to(pick_dtype(device, args.dtype))
    from tokenmask.data import load_texts

    texts = [r["text"] for r in load_texts("sample")]
    rows = []
    for n_envs in [int(x) for x in args.n_envs.split(",")]:
        recon.batch_size = max(n_envs, 8)
        options = dict(
            window=args.window,
            context_size=args.context_size,
            max_tokens=args.max_tokens,
            reward_type=args.reward_type,
        )
        env = TokenMaskVectorEnv(num_envs=n_envs, reconstructor=recon, documents=texts, **options)
        env.corpus.documents = env.corpus.documents[: args.documents]
        env.corpus.sources = env.corpus.sources[: args.documents]
        env.corpus.precompute_features(recon)
        env.reset(seed=0)
        rng = np.random.default_rng(0)
        env.step(rng.random((n_envs, args.window)) < 0.5)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.steps):
            env.step(rng.random((n_envs, args.window)) < 0.5)
        if device.type == "cuda":
            torch.cuda.synchronize()
        env_rate = n_envs * args.steps / (time.perf_counter() - start)
        ppo_rate = float("nan")
        if args.ppo:
            venv = TokenMaskSB3VecEnv(env)
            model = PPO(
                TokenMaskPolicy,
                venv,
                n_steps=args.steps,
                batch_size=min(512, n_envs * args.steps),
                n_epochs=4,
                device=device,
                seed=0,
            )
            model.learn(n_envs * args.steps)  # warm-up rollout + update
            start = time.perf_counter()
            model.learn(n_envs * args.steps, reset_num_timesteps=False)
            ppo_rate = n_envs * args.steps / (time.perf_counter() - start)
        rows.append((n_envs, env_rate, ppo_rate))
    print(
        f"\nmachine: {machine_name(device)}; model: {args.model or 'random SmolLM2-135M shape'} {next(recon.model.parameters()).dtype}"
    )
    print(
        f"window {args.window}, context {args.context_size}, documents of {args.max_tokens} tokens, reward {args.reward_type}"
    )
    print("| n_envs | env steps/s (random actions) | PPO env steps/s (rollout + 4 epochs) |")
    print("| --- | --- | --- |")
    for n_envs, env_rate, ppo_rate in rows:
        print(f"| {n_envs} | {env_rate:,.1f} | {ppo_rate:,.1f} |")


if __name__ == "__main__":
    main()
