"""How often an evaluation on fewer documents would meet the bar: disjoint blocks and random subsets.

Issue 12's bar is read on 30 documents. When a run scored more (``tokenmask evaluate --num_documents
120 --recoverability_documents 120``), this script says what a 30-document evaluation drawn from them
would have reported: each method's change over truncation on the consecutive blocks of ``--size``
documents (the first block is what ``--num_documents SIZE`` gives), the share of ``--draws`` random
``--size``-document subsets that meet the bar, and how low retention goes (its 5th percentile and the
share at or below ``--below``). No judge runs: the changes are ratios of sums of the per-document NLLs
in ``results.json`` (:func:`tokenmask.evaluate.bar.paired_changes`).

Subsets of a finite pool vary less than fresh samples of the same size (the finite-population factor
``sqrt(1 - size / documents)``: 0.87 for 30 of 120), so the shares and the tail are a little optimistic;
keep ``--size`` small against the pool.

Example (docs/results.md, stop 28)::

    python benchmarks/bar_subsets.py runs/git_gpu/g120_0.3 runs/git_gpu/g120_0.5 runs/git_gpu/g120_0.7 \\
        --methods refine_lookahead:p:truncation,refine_lookahead:truncation
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np

from tokenmask.evaluate.bar import (
    block_counts,
    load_results_with_reference,
    method_nlls,
    paired_changes,
    subset_counts,
)
from tokenmask.evaluate.reports import RECOVERABILITY_MARGIN, RETENTION_MARGIN, TRUNCATION


def subset_rows(
    path: str, size: int, draws: int, below: float, methods: Sequence[str] | None = None, seed: int = 0
) -> list[list[str]]:
    """Table rows (method, rate, one cell per block, P(size meet), retention p5, P(d ret <= below)) of one file.

    :raises ValueError: when recoverability was not scored on every document (subsets need both metrics
        on the same documents) or truncation is missing.
    """
    rows, reference, _ = load_results_with_reference(path)
    n = len(reference["continue_empty"])
    if len(reference["recover_empty"]) != n:
        raise ValueError(
            f"{path}: recoverability was scored on {len(reference['recover_empty'])} of {n} documents; subsets need "
            f"both metrics on the same ones. Fix: tokenmask evaluate --recoverability_documents {n}."
        )
    nlls = method_nlls(rows)
    blocks, subsets = block_counts(n, size), subset_counts(n, size, draws, seed)
    out = []
    for (name, rate), (r, f) in nlls.items():
        if name == TRUNCATION or (methods and name not in methods):
            continue
        if (TRUNCATION, rate) not in nlls:
            raise ValueError(f"{path}: no {TRUNCATION} row at rate {rate}. Fix: evaluate it beside {name}.")
        base_r, base_f = nlls[(TRUNCATION, rate)]
        changes = []
        for counts in (blocks, subsets):
            _, rec = paired_changes(reference["recover_empty"], reference["recover_full"], r, base_r, counts)
            _, ret = paired_changes(
                reference["continue_empty"], reference["continue_full"], f, base_f, counts
            )
            changes.append((rec, ret))
        (block_rec, block_ret), (rec, ret) = changes
        meets = np.mean((rec >= RECOVERABILITY_MARGIN) & (ret >= -RETENTION_MARGIN))
        out.append(
            [name, f"{rate:.2f}"]
            + [f"{a:+.3f} / {b:+.3f}" for a, b in zip(block_rec, block_ret)]
            + [f"{meets:.2f}", f"{np.percentile(ret, 5):+.3f}", f"{np.mean(ret <= below):.3f}"]
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", nargs="+", help="results.json files or tokenmask evaluate output folders")
    parser.add_argument("--size", type=int, default=30, help="documents per block and per subset")
    parser.add_argument("--draws", type=int, default=4000, help="random subsets")
    parser.add_argument(
        "--below", type=float, default=-0.026, help="the retention change whose rarity is counted"
    )
    parser.add_argument(
        "--methods", default="", help="comma-separated methods (default: every one but truncation)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    table = [
        row
        for path in args.results
        for row in subset_rows(path, args.size, args.draws, args.below, methods, args.seed)
    ]
    blocks = max((len(row) - 5 for row in table), default=0)
    header = (
        ["method", "rate"]
        + [f"documents {b * args.size}-{(b + 1) * args.size - 1}" for b in range(blocks)]
        + [f"P({args.size} meet)", "d ret p5", f"P(d ret <= {args.below})"]
    )
    print(
        f"Changes over {TRUNCATION} (d recoverability / d retention); {args.draws} random subsets of {args.size}."
    )
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for row in table:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
