"""Choose ``refine``'s moves on a validation split: recoverability and retention per (base, moves, rate).

``refine:BASE`` (tokenmask/evaluate/refine.py) moves runs of ``m`` tokens; this sweep scores every set
of run lengths in ``--moves`` and every retention guard in ``--guards`` on the bases in ``--bases``
beside the bases alone, with the evaluation's own metrics (docs/evaluation.md), and prints one
Markdown table (machine named). Choose on validation,
report on test (``tokenmask evaluate --methods refine:...``)::

    python benchmarks/refine_sweep.py --split validation --num_documents 30 --device cuda --json runs/refine_sweep.json
"""

from __future__ import annotations

import argparse


def parse_guard(text: str) -> tuple[int, float]:
    """``0`` -> ``(0, 0.0)``; ``16@0.05`` -> ``(16, 0.05)``."""
    tokens, _, tolerance = text.strip().partition("@")
    return int(tokens), float(tolerance or 0.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default="data_out/pydocs")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--num_documents", type=int, default=30)
    parser.add_argument("--rates", default="0.3,0.5,0.7")
    parser.add_argument("--bases", default="truncation,agent:default")
    parser.add_argument("--moves", default="8;16;32;16,32;8,16,32", help="sets of run lengths, ';'-separated")
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument(
        "--guards",
        default="0",
        help="retention guards, ';'-separated: 0 (none) or TOKENS@TOLERANCE (nats per token), e.g. 0;16@0.05",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", default=None, help="write the rows here (atomically)")
    args = parser.parse_args(argv)

    from tqdm.auto import tqdm

    from tokenmask.data import iter_texts
    from tokenmask.evaluate.compressor import MethodContext, build_method
    from tokenmask.evaluate.evaluator import Evaluator
    from tokenmask.evaluate.metrics import select_documents
    from tokenmask.evaluate.refine import RecoverabilitySearch
    from tokenmask.evaluate.reports import device_description
    from tokenmask.io import atomic_write_json
    from tokenmask.reconstructors import Reconstructor

    judge = Reconstructor.load("default", device=args.device, add_mask_token=False)
    docs = select_documents(
        list(iter_texts(args.corpus, split=args.split)), judge, 256, 64, args.num_documents
    )
    context = MethodContext(judge=judge, device=args.device)
    rates = [float(r) for r in args.rates.split(",")]
    move_sets = [tuple(int(m) for m in s.split(",")) for s in args.moves.split(";") if s.strip()]
    guards = [parse_guard(g) for g in args.guards.split(";") if g.strip()]
    evaluator = Evaluator(judge, docs, recon_metrics=False)
    jobs = []
    for base_name in args.bases.split(","):
        base = build_method(base_name, context)
        jobs.append((base_name, "-", base))
        jobs += [
            (
                base_name,
                ",".join(map(str, m)) + (f" guard {k}@{tol:g}" if k else ""),
                RecoverabilitySearch(base, judge, m, args.stride, guard=k, guard_tolerance=tol),
            )
            for m in move_sets
            for k, tol in guards
        ]
    rows = []
    for base_name, moves, method in tqdm(jobs, desc="sweep"):
        for rate in rates:
            s = evaluator.evaluate(method, rate)
            rows.append(
                dict(
                    base=base_name,
                    moves=moves,
                    rate=rate,
                    achieved=s.rate,
                    recoverability=s.recoverability,
                    retention=s.retention,
                )
            )
    print(f"\n{len(docs)} documents of {args.corpus} ({args.split}); {device_description(judge.device)}\n")
    print("| base | moves | " + " | ".join(f"{r} (rate / rec / ret)" for r in rates) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in rates) + " |")
    for base_name, moves, _ in jobs:
        cells = [r for r in rows if r["base"] == base_name and r["moves"] == moves]
        print(
            f"| {base_name} | {moves} | "
            + " | ".join(
                f"{c['achieved']:.3f} / {c['recoverability']:.3f} / {c['retention']:.3f}" for c in cells
            )
            + " |"
        )
    chosen = choose(rows)
    for base_name, (setting, margin) in chosen.items():
        print(f"\nchosen for {base_name}: {setting} (Pareto margin over the base {margin:+.3f})")
    if args.json:
        atomic_write_json(
            args.json, {"documents": len(docs), "split": args.split, "rows": rows, "chosen": chosen}
        )
    return 0


def choose(rows: list[dict], gain: float = 0.02, slack: float = 0.01) -> dict[str, tuple[str, float]]:
    """Per base, the setting whose worst rate is furthest above the bar (recoverability ``gain`` over the
    base alone AND retention at most ``slack`` below it): ``margin = min over rates of
    min(rec - base_rec - gain, ret - base_ret + slack)``; ``margin >= 0`` meets the bar at every rate.
    """
    out: dict[str, tuple[str, float]] = {}
    for base_name in dict.fromkeys(r["base"] for r in rows):
        alone = {r["rate"]: r for r in rows if r["base"] == base_name and r["moves"] == "-"}
        best: tuple[str, float] | None = None
        for setting in dict.fromkeys(
            r["moves"] for r in rows if r["base"] == base_name and r["moves"] != "-"
        ):
            cells = [r for r in rows if r["base"] == base_name and r["moves"] == setting]
            margin = min(
                min(
                    c["recoverability"] - alone[c["rate"]]["recoverability"] - gain,
                    c["retention"] - alone[c["rate"]]["retention"] + slack,
                )
                for c in cells
            )
            if best is None or margin > best[1]:
                best = (setting, float(margin))
        if best is not None:
            out[base_name] = best
    return out


if __name__ == "__main__":
    raise SystemExit(main())
