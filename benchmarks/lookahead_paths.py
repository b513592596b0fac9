"""The judge's greedy lookahead path, decoded two ways: Hugging Face's cache and fixed buffers (a CUDA graph on a GPU).

``judge_continuations(static_cache=...)`` (``tokenmask.reconstructors.judge``) decodes the greedy path of
``refine_lookahead``'s guard either through the model's own growing cache or through
``activation_compression``'s ``CachedDecoder`` (fixed buffers, one replayed CUDA graph per step on a GPU).
This prints, per judge dtype, how many contexts get the same path token for token, the first step where
the others part, and each path's wall time (warm: both decode four contexts first). It reads the context
only, so any split may be used; docs/results.md's figures come from the pydocs validation split.

Example (on the GPU machine)::

    python benchmarks/lookahead_paths.py --corpus data_out/pydocs --split validation --documents 1000 --device cuda
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenmask.data import iter_texts
from tokenmask.evaluate.metrics import select_documents
from tokenmask.reconstructors import Reconstructor
from tokenmask.reconstructors.judge import judge_continuations
from tokenmask.timing import timed_call

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compress_speed import load_judge, machine_name  # noqa: E402


@dataclass
class PathRow:
    """One judge dtype's comparison.

    :param dtype: the judge's weights dtype.
    :param contexts: contexts decoded.
    :param identical: contexts whose two paths are the same token for token.
    :param first_differences: for each other context, the first step where the paths part.
    :param dynamic_ms: wall time of Hugging Face's cache path.
    :param static_ms: wall time of the fixed-buffer path.
    """

    dtype: str
    contexts: int
    identical: int
    first_differences: list[int]
    dynamic_ms: float
    static_ms: float


def _timed(
    judge: Reconstructor, contexts: list[list[int]], tokens: int, static: bool
) -> tuple[list[list[int]], float]:
    outs, seconds = timed_call(
        judge.device, judge_continuations, judge, contexts, tokens, static_cache=static
    )
    return [p[0] for p in outs], seconds * 1e3


def compare(judge: Reconstructor, contexts: list[list[int]], tokens: int) -> PathRow:
    """Decode ``contexts`` both ways with ``judge`` and compare the paths."""
    for static in (False, True):  # warm both paths (kernels, cuBLAS heuristics, the first graph capture)
        judge_continuations(judge, contexts[:4], tokens, static_cache=static)
    dynamic, dynamic_ms = _timed(judge, contexts, tokens, static=False)
    fixed, static_ms = _timed(judge, contexts, tokens, static=True)
    firsts = [next((k for k, (u, v) in enumerate(zip(a, b)) if u != v), -1) for a, b in zip(dynamic, fixed)]
    return PathRow(
        str(judge.model.dtype).removeprefix("torch."),
        len(contexts),
        sum(f < 0 for f in firsts),
        [f for f in firsts if f >= 0],
        dynamic_ms,
        static_ms,
    )


def path_table(rows: Sequence[PathRow], machine: str, setting: str) -> str:
    """The comparison as a Markdown table, machine and setting first."""
    lines = [
        f"machine: {machine}",
        setting,
        "| judge dtype | contexts | identical paths | first differing step (others) | Hugging Face cache, ms | fixed buffers, ms |",
        "| --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for r in rows:
        steps = ", ".join(map(str, sorted(r.first_differences))) or "-"
        lines.append(
            f"| {r.dtype} | {r.contexts} | {r.identical} | {steps} | {r.dynamic_ms:.0f} | {r.static_ms:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="default", help="judge: default (embedded SmolLM2), tiny, or a model name"
    )
    parser.add_argument(
        "--corpus", default="sample", help="corpus (prepared folder, .jsonl/.txt, or 'sample')"
    )
    parser.add_argument("--split", default="validation", help="split of a prepared corpus folder")
    parser.add_argument("--documents", type=int, default=64, help="first N long-enough documents")
    parser.add_argument("--context-tokens", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=64, help="path length (refine_lookahead's: 64)")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="judge dtypes compared, comma-separated")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    judge = load_judge(args.model, args.device)
    texts = list(iter_texts(args.corpus, split=args.split))
    contexts = [d.context for d in select_documents(texts, judge, args.context_tokens, 1, args.documents)]
    rows = [
        compare(judge.with_dtype(dtype.strip()), contexts, args.tokens) for dtype in args.dtypes.split(",")
    ]
    setting = (
        f"judge {args.model}, {len(contexts)} contexts of {args.context_tokens} tokens from {args.corpus} "
        f"({args.split}), {args.tokens}-token greedy paths, judge batch {judge.batch_size}"
    )
    print(path_table(rows, machine_name(judge.device), setting))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
