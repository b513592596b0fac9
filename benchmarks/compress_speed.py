"""Compression speed of every method, side by side: ``compress_ms_per_1k_tokens`` (EVALUATION.md).

Wall time of the compressor alone (no judge scoring), warm (each method compresses the first
document once before timing), per 1,000 context tokens, every method on the same device in one
run. Contexts are the first C judge tokens of the first ``--documents`` long-enough documents of
the corpus. The machine (and its load average: other processes share CPU cores) is printed with
the table; the best of ``--repeats`` timings is reported, the least disturbed by other load.

Examples::

    python benchmarks/compress_speed.py                               # all baselines, embedded SmolLM2
    python benchmarks/compress_speed.py --methods truncation,random,agent:runs/ppo1 --documents 16
    python benchmarks/compress_speed.py --model tiny --methods random,self_information   # smoke test
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from tokenmask.data import iter_texts
from tokenmask.evaluate.compressor import (
    Compressor,
    InModelCompressor,
    MethodContext,
    build_method,
    parse_method_names,
)
from tokenmask.evaluate.metrics import select_documents, separator_ids
from tokenmask.evaluate.reports import device_description
from tokenmask.evaluate.runner import DEFAULT_METHODS
from tokenmask.reconstructors import Reconstructor
from tokenmask.testing import tiny_reconstructor


def machine_name(device: torch.device) -> str:
    """The device the numbers come from, with the load average on a CPU (other processes share its cores)."""
    if device.type == "cuda" or not hasattr(os, "getloadavg"):
        return device_description(device)
    return f"{device_description(device)}, load average {os.getloadavg()[0]:.1f}"


def time_method(method: object, judge: Reconstructor, docs: list, rate: float, repeats: int) -> float:
    """Best wall time (seconds) of one compression of every document at ``rate``, after a warm-up call."""
    contexts = [d.context for d in docs]
    texts = [d.text for d in docs]
    if isinstance(method, Compressor):
        run = lambda: method.compress(contexts, rate, texts=texts)  # noqa: E731
        method.compress(contexts[:1], rate, texts=texts[:1])
    elif isinstance(method, InModelCompressor):
        sep = separator_ids(judge)
        conts = [d.continuation for d in docs]

        def run() -> object:
            result = method.score(judge, contexts, conts, sep, rate)
            return result.compress_seconds

        method.score(judge, contexts[:1], conts[:1], sep, rate)
    else:
        raise TypeError(f"{type(method).__name__} is not a compressor")
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        reported = run()
        elapsed = time.perf_counter() - start
        if isinstance(reported, float):  # an in-model method times its compression itself
            elapsed = reported
        best = min(best, elapsed)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="judge: default (embedded SmolLM2), tiny, or a model name")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated method names")
    parser.add_argument("--corpus", default="sample", help="corpus (prepared folder, .jsonl/.txt, or 'sample')")
    parser.add_argument("--documents", type=int, default=8)
    parser.add_argument("--context-tokens", type=int, default=256)
    parser.add_argument("--rate", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    if args.model == "tiny":
        judge = tiny_reconstructor(seed=0, device=args.device)
    else:
        judge = Reconstructor.load(args.model, device=args.device, dtype="float32", add_mask_token=False)
    texts = list(iter_texts(args.corpus, split="test"))
    docs = select_documents(texts, judge, args.context_tokens, 1, args.documents)
    tokens = sum(len(d.context) for d in docs)
    context = MethodContext(judge=judge, device=args.device, train_texts=texts)

    rows = []
    for name in parse_method_names(args.methods):
        try:
            method = build_method(name, context)
        except ImportError as exc:
            rows.append((name, float("nan"), f"skipped: {exc}"))
            continue
        seconds = time_method(method, judge, docs, args.rate, args.repeats)
        rows.append((name, seconds * 1e6 / tokens, ""))

    print(f"machine: {machine_name(judge.device)}")
    print(f"judge {args.model}, {len(docs)} contexts of {args.context_tokens} tokens ({tokens} tokens), rate {args.rate}")
    print(f"{'method':<24} {'ms per 1k tokens':>18} {'ms per context':>16}")
    for name, ms, note in rows:
        per_context = ms * args.context_tokens / 1000 if np.isfinite(ms) else float("nan")
        print(f"{name:<24} {ms:>18.2f} {per_context:>16.2f} {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
