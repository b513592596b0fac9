"""TokenMask-v0 throughput: the batched env's decided tokens/s next to the bare reconstructor forward.

Prints, for one model on one device, in one run:

- ``bare forward``: the reconstructor's LM body over full documents (``--bare-batch`` x
  ``--bare-length`` random tokens, no LM head), tokens/s;
- ``token_bits``: the same batch priced token by token (body + LM head at every position), tokens/s;
- the vector env (``information`` reward, KV-cache pricing, random actions at rate 0.5) for each
  ``--num-envs``: steps/s and decided tokens/s (num_envs x window x steps/s), and its ratio to the
  bare forward; per-document features are computed before timing (they are cached per document and
  reused across episodes), and ``--cold`` adds a run that recomputes them at every reset;
- the ``simple`` reward (no LM pass per step) for the largest ``--num-envs``.

Examples::

    python benchmarks/env_throughput.py --model tiny
    python benchmarks/env_throughput.py --model default --num-envs 8,32 --bare-batch 64
    python benchmarks/env_throughput.py --model random:DIR --device cuda --num-envs 64,256,512
      (DIR: a folder with config.json and tokenizer files, e.g. SmolLM2-135M's; random weights)
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import tokenmask  # noqa: F401
from tokenmask.envs import DocumentCorpus, TokenMaskVectorEnv
from tokenmask.io import atomic_write_json
from tokenmask.reconstructors import Reconstructor, pick_device, pick_dtype
from tokenmask.testing import tiny_reconstructor
from tokenmask.timing import synchronize


def machine_name(device: torch.device) -> str:
    """The device the numbers come from, in words."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    cpu = platform.processor() or "cpu"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def load_model(name: str, device: str, dtype: str, batch_size: int | None) -> Reconstructor:
    """``tiny`` (random tiny Llama), ``random:DIR`` (random weights of DIR's config), or any model name."""
    torch_device = pick_device(device)
    if name == "tiny":
        recon = tiny_reconstructor(seed=0, device=torch_device, batch_size=batch_size)
    elif name.startswith("random:"):
        from transformers import AutoConfig, AutoTokenizer

        folder = name.split(":", 1)[1]
        config = AutoConfig.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        recon = Reconstructor.from_config(
            config, tokenizer, device=torch_device, seed=0, batch_size=batch_size
        )
    else:
        return Reconstructor.load(name, device=torch_device, dtype=dtype, batch_size=batch_size)
    torch.nn.Module.to(recon.model, pick_dtype(torch_device, dtype))  # transformers types .to narrowly
    return recon


def time_bare_forward(recon: Reconstructor, batch: int, length: int, repeats: int) -> dict[str, float]:
    """Tokens/s of the LM body alone and of ``token_bits`` (body + head at every position)."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, recon.model.config.vocab_size - 1, (batch, length), generator=generator)
    device = recon.device
    with torch.inference_mode():
        recon.model.base_model(input_ids=ids.to(device))  # warm-up
        synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            recon.model.base_model(input_ids=ids.to(device))
        synchronize(device)
        bare = batch * length * repeats / (time.perf_counter() - start)
    docs = ids.tolist()
    old_batch = recon.batch_size
    recon.batch_size = batch  # one forward pass for the whole batch, as above
    try:
        recon.token_bits(docs)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            recon.token_bits(docs)
        synchronize(device)
        bits = batch * length * repeats / (time.perf_counter() - start)
    finally:
        recon.batch_size = old_batch
    return {"bare_forward_tokens_per_s": bare, "token_bits_tokens_per_s": bits}


def time_env(
    recon: Reconstructor,
    corpus: DocumentCorpus,
    num_envs: int,
    window: int,
    steps: int,
    warmup: int,
    reward_type: str,
    cache_features: bool,
) -> dict[str, Any]:
    """Steps/s and decided tokens/s of the vector env with random actions (mask probability 0.5)."""
    env = TokenMaskVectorEnv(
        num_envs=num_envs,
        documents=corpus,
        reconstructor=recon,
        window=window,
        reward_type=reward_type,
        cache_features=cache_features,
    )
    rng = np.random.default_rng(0)
    actions = rng.random((warmup + steps, num_envs, window)) < 0.5
    env.reset(seed=0)
    for k in range(warmup):
        env.step(actions[k])
    synchronize(recon.device)
    resets = 0
    start = time.perf_counter()
    for k in range(warmup, warmup + steps):
        resets += int(env.step(actions[k])[2].sum())
    synchronize(recon.device)
    elapsed = time.perf_counter() - start
    env.close()
    return {
        "num_envs": num_envs,
        "window": window,
        "reward_type": reward_type,
        "features_cached": cache_features,
        "steps_per_s": steps / elapsed,
        "decided_tokens_per_s": num_envs * window * steps / elapsed,
        "episodes_ended": resets,
    }


def profile_env(
    recon: Reconstructor, corpus: DocumentCorpus, num_envs: int, window: int, steps: int = 5
) -> None:
    """Print the operations that take the most time over a few env steps (device time where there is a GPU)."""
    from torch.profiler import ProfilerActivity, profile

    env = TokenMaskVectorEnv(num_envs=num_envs, documents=corpus, reconstructor=recon, window=window)
    rng = np.random.default_rng(1)
    env.reset(seed=1)
    env.step(rng.random((num_envs, window)) < 0.5)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if recon.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            env.step(rng.random((num_envs, window)) < 0.5)
        synchronize(recon.device)
    key = "self_cuda_time_total" if recon.device.type == "cuda" else "self_cpu_time_total"
    print(f"\nprofile of {steps} steps, num_envs {num_envs}:")
    print(prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=60))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="tiny", help="tiny, default (embedded SmolLM2), random:DIR, or a model name"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--num-envs", default="8,32,64", help="comma-separated num_envs values")
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per num_envs")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--bare-batch", type=int, default=64)
    parser.add_argument("--bare-length", type=int, default=256)
    parser.add_argument("--bare-repeats", type=int, default=3)
    parser.add_argument("--data", default="sample", help="corpus (data_path) the env samples from")
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument(
        "--max-documents", type=int, default=None, help="use only the first documents of the corpus"
    )
    parser.add_argument(
        "--cold", action="store_true", help="also time the largest num_envs without the feature cache"
    )
    parser.add_argument(
        "--profile", action="store_true", help="print the top operations of 5 steps at the largest num_envs"
    )
    parser.add_argument("--output", default=None, help="write the results as JSON here too")
    args = parser.parse_args(argv)

    num_envs_list = [int(x) for x in args.num_envs.split(",") if x.strip()]
    recon = load_model(args.model, args.device, args.dtype, batch_size=max(args.bare_batch, 8))
    device = recon.device
    machine = machine_name(device)
    dtype = str(next(recon.model.parameters()).dtype).replace("torch.", "")
    corpus = DocumentCorpus.build(args.data, recon, max_tokens=args.max_tokens, min_tokens=args.window)
    if args.max_documents is not None:
        corpus = DocumentCorpus(corpus.documents[: args.max_documents], corpus.sources[: args.max_documents])
    corpus.features(range(min(len(corpus), 4)), recon)  # warm-up (CUDA context, kernels), not timed
    corpus.clear_features()
    start = time.perf_counter()
    corpus.precompute_features(recon)
    synchronize(device)
    features_rate = corpus.num_tokens / (time.perf_counter() - start)

    bare = time_bare_forward(recon, args.bare_batch, args.bare_length, args.bare_repeats)
    runs = [
        time_env(recon, corpus, n, args.window, args.steps, args.warmup, "information", cache_features=True)
        for n in num_envs_list
    ]
    if args.cold:
        runs.append(
            time_env(
                recon,
                corpus,
                num_envs_list[-1],
                args.window,
                args.steps,
                args.warmup,
                "information",
                cache_features=False,
            )
        )
    runs.append(
        time_env(
            recon,
            corpus,
            num_envs_list[-1],
            args.window,
            args.steps,
            args.warmup,
            "simple",
            cache_features=True,
        )
    )

    reference = bare["bare_forward_tokens_per_s"]
    print(f"\nTokenMask-v0 throughput on {machine}")
    print(
        f"model {args.model} ({recon.num_parameters / 1e6:.1f}M parameters, {dtype}), corpus {args.data}: "
        f"{len(corpus)} documents, {corpus.num_tokens} tokens, window {args.window}\n"
    )
    print("| what | tokens/s | vs bare forward |")
    print("| --- | ---: | ---: |")
    print(f"| bare forward {args.bare_batch}x{args.bare_length} (LM body) | {reference:,.0f} | 1.00 |")
    print(
        f"| token_bits {args.bare_batch}x{args.bare_length} (body + head, every token) | "
        f"{bare['token_bits_tokens_per_s']:,.0f} | {bare['token_bits_tokens_per_s'] / reference:.2f} |"
    )
    print(
        f"| document features (once per document) | {features_rate:,.0f} | {features_rate / reference:.2f} |"
    )
    for run in runs:
        label = f"env {run['reward_type']}, num_envs {run['num_envs']}"
        if not run["features_cached"]:
            label += ", features recomputed per episode"
        print(
            f"| {label} ({run['steps_per_s']:.1f} steps/s) | {run['decided_tokens_per_s']:,.0f} | "
            f"{run['decided_tokens_per_s'] / reference:.2f} |"
        )
    if args.profile:
        profile_env(recon, corpus, num_envs_list[-1], args.window)
    if args.output:
        atomic_write_json(
            args.output,
            {
                "machine": machine,
                "model": args.model,
                "dtype": dtype,
                "window": args.window,
                "features_tokens_per_s": features_rate,
                **bare,
                "env": runs,
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
