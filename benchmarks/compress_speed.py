"""Compression speed of the agent beside its peers, in one run: ``compress_ms_per_1k_tokens`` (docs/evaluation.md).

Wall time of the compressor alone (no judge scoring), warm (each method compresses the first
document once before timing), per 1,000 context tokens, every method on the same device in one
run. Contexts are the first C judge tokens of the first ``--documents`` long-enough documents of
the corpus. The table names the machine (and, on a CPU, its load average: other processes share
the cores), gives each method's time as a ratio to LLMLingua's (the peer the agent should beat by
5x on a CPU, issue 14), and reports the best of ``--repeats`` timings, the least disturbed by load.

The agent is ``--agent``: ``default`` (the agent shipped in the package; its row says so when none
ships yet) or a run folder of ``tokenmask train``. LLMLingua's row appears when ``llmlingua`` is
installed (``pip install tokenmask[peers]``).

Examples::

    python benchmarks/compress_speed.py --agent runs/demo/agent            # the table of issue 14
    python benchmarks/compress_speed.py --agent runs/ppo1 --device cuda --documents 64
    python benchmarks/compress_speed.py --model tiny --methods random,self_information   # smoke test
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tokenmask.data import iter_texts
from tokenmask.evaluate.compressor import (
    Compressor,
    InModelCompressor,
    MethodContext,
    build_method,
    parse_method_names,
    split_method_name,
)
from tokenmask.evaluate.metrics import EvalDocument, select_documents, separator_ids
from tokenmask.evaluate.reports import device_description
from tokenmask.evaluate.runner import PEER  # the method every row is compared with
from tokenmask.reconstructors import Reconstructor
from tokenmask.testing import tiny_reconstructor
from tokenmask.timing import timed_call

METHODS: tuple[str, ...] = ("agent", PEER, "self_information", "span_self_information", "truncation")
"""The rows of issue 14's speed table, in order (``agent`` stands for ``agent:AGENT``)."""


@dataclass
class SpeedRow:
    """One method's timing.

    :param method: the method's name.
    :param ms_per_1k_tokens: best wall time per 1,000 context tokens (``nan`` when skipped).
    :param note: why the method was skipped, or ``""``.
    """

    method: str
    ms_per_1k_tokens: float
    note: str = ""


def machine_name(device: torch.device) -> str:
    """The device the numbers come from, with the load average on a CPU (other processes share its cores)."""
    if device.type == "cuda" or not hasattr(os, "getloadavg"):
        return device_description(device)
    return f"{device_description(device)}, load average {os.getloadavg()[0]:.1f}"


def time_method(
    method: object, judge: Reconstructor, docs: Sequence[EvalDocument], rate: float, repeats: int
) -> float:
    """Best wall time (seconds, the device synchronised: :func:`~tokenmask.timing.timed_call`) of one compression of
    every document at ``rate``, after a warm-up call."""
    contexts = [d.context for d in docs]
    texts = [d.text for d in docs]
    if isinstance(method, Compressor):
        compressor = method
        run = lambda: compressor.compress(contexts, rate, texts=texts)  # noqa: E731
        compressor.compress(contexts[:1], rate, texts=texts[:1])
    elif isinstance(method, InModelCompressor):
        in_model = method
        sep = separator_ids(judge)
        conts = [d.continuation for d in docs]

        def run() -> object:
            return in_model.score(judge, contexts, conts, sep, rate).compress_seconds

        in_model.score(judge, contexts[:1], conts[:1], sep, rate)
    else:
        raise TypeError(f"{type(method).__name__} is not a compressor")
    best = math.inf
    for _ in range(repeats):
        reported, elapsed = timed_call(judge.device, run)
        if isinstance(reported, float):  # an in-model method times its compression itself
            elapsed = reported
        best = min(best, elapsed)
    return best


def speed_table(rows: Sequence[SpeedRow], machine: str, setting: str) -> str:
    """The table as text: one line per method with ms per 1k tokens and the ratio to LLMLingua."""
    peer = next((r.ms_per_1k_tokens for r in rows if split_method_name(r.method)[0] == PEER), math.nan)
    width = max([32, *(len(r.method) for r in rows)])
    lines = [
        f"machine: {machine}",
        setting,
        f"| {'method':<{width}} | {'ms per 1k tokens':>16} | {'x LLMLingua':>11} |",
        f"| {'-' * width} | {'-' * 16}:| {'-' * 11}:|",
    ]
    for row in rows:
        if not math.isfinite(row.ms_per_1k_tokens):
            lines.append(f"| {row.method:<{width}} | {'-':>16} | {'-':>11} | {row.note}")
            continue
        ratio = f"{row.ms_per_1k_tokens / peer:.2f}" if math.isfinite(peer) and peer > 0 else "-"
        lines.append(f"| {row.method:<{width}} | {row.ms_per_1k_tokens:>16.1f} | {ratio:>11} |")
    return "\n".join(lines)


def load_judge(model: str, device: str, batch_size: int | None = None) -> Reconstructor:
    """The benchmarks' judge: ``tiny`` (a random tiny Llama) or a model name loaded in float32 without a mask token."""
    if model == "tiny":
        return tiny_reconstructor(seed=0, device=device, batch_size=batch_size)
    return Reconstructor.load(
        model, device=device, dtype="float32", add_mask_token=False, batch_size=batch_size
    )


def _method_names(spec: str, agent: str) -> list[str]:
    return [f"agent:{agent}" if name == "agent" else name for name in parse_method_names(spec)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agent", default="default", help="the agent row: default (shipped) or a run folder")
    parser.add_argument(
        "--methods", default=",".join(METHODS), help="comma-separated method names ('agent' = --agent)"
    )
    parser.add_argument(
        "--model", default="default", help="judge: default (embedded SmolLM2), tiny, or a model name"
    )
    parser.add_argument(
        "--corpus", default="sample", help="corpus (prepared folder, .jsonl/.txt, or 'sample')"
    )
    parser.add_argument("--documents", type=int, default=8)
    parser.add_argument("--context-tokens", type=int, default=256)
    parser.add_argument("--rate", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="judge sequences per forward pass (default 64 on cuda, 8 elsewhere)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's; on a CPU other processes load, 1 avoids threads waiting on each other)",
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    judge = load_judge(args.model, args.device, args.batch_size)
    texts = list(iter_texts(args.corpus, split="test"))
    docs = select_documents(texts, judge, args.context_tokens, 1, args.documents)
    tokens = sum(len(d.context) for d in docs)
    context = MethodContext(judge=judge, device=args.device, train_texts=texts)

    rows: list[SpeedRow] = []
    for name in _method_names(args.methods, args.agent):
        try:
            method = build_method(name, context)
        except (ImportError, ValueError) as exc:  # llmlingua not installed; no shipped agent yet
            rows.append(SpeedRow(name, math.nan, f"skipped: {str(exc).splitlines()[0][:160]}"))
            continue
        print(f"timing {name} ...", flush=True)
        seconds = time_method(method, judge, docs, args.rate, args.repeats)
        rows.append(SpeedRow(name, seconds * 1e6 / tokens))

    setting = (
        f"judge {args.model}, {len(docs)} contexts of {args.context_tokens} tokens ({tokens} tokens), "
        f"rate {args.rate}, best of {args.repeats}, judge batch {judge.batch_size}"
    )
    print(speed_table(rows, machine_name(judge.device), setting))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
