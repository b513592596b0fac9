"""Choose ``refine``'s moves on a validation split: recoverability and retention per (base, moves, rate).

``refine:BASE`` (tokenmask/evaluate/refine.py) moves runs of ``m`` tokens; this sweep scores every set
of run lengths in ``--moves`` on the bases in ``--bases`` beside the bases alone, with the evaluation's
own metrics (docs/evaluation.md), and prints one Markdown table (machine named). Choose on validation,
report on test (``tokenmask evaluate --methods refine:...``)::

    python benchmarks/refine_sweep.py --split validation --num_documents 30 --device cuda --json runs/refine_sweep.json
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default="data_out/pydocs")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--num_documents", type=int, default=30)
    parser.add_argument("--rates", default="0.3,0.5,0.7")
    parser.add_argument("--bases", default="truncation,agent:default")
    parser.add_argument("--moves", default="8;16;32;16,32;8,16,32", help="sets of run lengths, ';'-separated")
    parser.add_argument("--stride", type=int, default=8)
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
    evaluator = Evaluator(judge, docs, recon_metrics=False)
    jobs = []
    for base_name in args.bases.split(","):
        base = build_method(base_name, context)
        jobs.append((base_name, "-", base))
        jobs += [
            (base_name, ",".join(map(str, m)), RecoverabilitySearch(base, judge, m, args.stride))
            for m in move_sets
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
    if args.json:
        atomic_write_json(args.json, {"documents": len(docs), "split": args.split, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
