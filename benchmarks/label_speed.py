"""Speed and quality of the ``tokenmask label`` search: documents per second, the swap rounds' gain, and
how much of the labels' retention survives on continuation tokens they were not chosen on.

Each document needs C + 2T judge tokens: the search sees the first T continuation tokens (as
``tokenmask label`` does), the next T are held out and scored afterwards for the labels and the
structured baselines (retention there is free of the selection's noise, docs/evaluation.md). Prints one
table per run (corpus ratios of sums)::

    python benchmarks/label_speed.py --corpus data/pydocs.jsonl --documents 64 --dtype bfloat16
"""

from __future__ import annotations

import argparse
from collections import Counter


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", default="data/pydocs.jsonl")
    parser.add_argument("--judge", default="default")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--documents", type=int, default=64)
    parser.add_argument("--context_tokens", type=int, default=256)
    parser.add_argument("--continuation_tokens", type=int, default=64)
    parser.add_argument("--span", type=int, default=16)
    parser.add_argument("--rates", default="0.3,0.5,0.7")
    parser.add_argument("--candidates", type=int, default=64)
    parser.add_argument("--swap_rounds", type=int, default=1)
    parser.add_argument("--retention_weight", type=float, default=0.5)
    parser.add_argument("--batch_size", type=int, default=None, help="judge sequences per forward pass")
    parser.add_argument("--documents_per_batch", type=int, default=8)
    args = parser.parse_args()

    import numpy as np

    from tokenmask.data import iter_texts
    from tokenmask.evaluate.metrics import (
        EvalDocument,
        continuation_nlls,
        information_ratio,
        select_documents,
    )
    from tokenmask.reconstructors import Reconstructor
    from tokenmask.timing import timed_call
    from tokenmask.train.labels import STRUCTURED_CANDIDATES, LabelConfig, LabelSearch, summary, summary_table

    rates = [float(r) for r in args.rates.split(",")]
    config = LabelConfig(
        judge_name=args.judge,
        judge_dtype=args.dtype,
        context_tokens=args.context_tokens,
        continuation_tokens=args.continuation_tokens,
        span=args.span,
        rates=rates,
        candidates=args.candidates,
        swap_rounds=args.swap_rounds,
        retention_weight=args.retention_weight,
        batch_size=args.batch_size,
        documents_per_batch=args.documents_per_batch,
    )
    judge = Reconstructor.load(
        args.judge, device=args.device, dtype=args.dtype, add_mask_token=False, batch_size=args.batch_size
    )
    T = args.continuation_tokens
    texts = list(iter_texts(args.corpus, split="train"))
    full = select_documents(texts, judge, args.context_tokens, 2 * T, args.documents)
    seen = [EvalDocument(d.context, d.continuation[:T], d.text, d.source) for d in full]
    held = [d.continuation[T:] for d in full]
    search = LabelSearch(judge, config)
    search.label_group(seen[:1], [0])  # warm-up (kernels, caches)

    def label_all() -> list:
        labels = []
        for start in range(0, len(seen), args.documents_per_batch):
            group = list(range(start, min(len(seen), start + args.documents_per_batch)))
            labels.extend(search.label_group([seen[i] for i in group], group))
        return labels

    labels, seconds = timed_call(judge.device, label_all)

    print(
        f"judge {args.judge} ({args.dtype}) on {judge.device}: {len(seen)} documents x {len(rates)} rates, "
        f"{args.candidates} random + {len(STRUCTURED_CANDIDATES)} structured candidates, {args.swap_rounds} swap round(s), "
        f"span {args.span}, lambda {args.retention_weight}: {seconds:.1f} s = {len(seen) / seconds:.2f} documents/s"
    )
    print(summary_table(summary(labels, rates)))
    print("origin of the labels:", dict(Counter(label.origin for label in labels)))

    # retention on the held-out next T tokens (the search never saw them)
    contexts = [d.context for d in full]
    empty = continuation_nlls(judge, [[] for _ in full], held)
    whole = continuation_nlls(judge, contexts, held)
    print(f"\nretention on the held-out next {T} continuation tokens (chosen-on retention in brackets):")
    print("| rate | labels | " + " | ".join(STRUCTURED_CANDIDATES) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in STRUCTURED_CANDIDATES) + " |")
    for rate in rates:
        chosen = [label for label in labels if label.rate == rate]
        index = [label.doc_index for label in chosen]
        masks = {"labels": [label.keep for label in chosen]}
        for name, masks_of in search.structured_candidates([full[i] for i in index], rate).items():
            masks[name] = [np.asarray(m, dtype=bool) for m in masks_of]
        cells = []
        for name, keep in masks.items():
            kept = [np.asarray(contexts[i])[k].tolist() for i, k in zip(index, keep)]
            values = continuation_nlls(judge, kept, [held[i] for i in index])
            held_out = information_ratio(empty[index], values, whole[index])
            if name == "labels":
                seen_f = [label.nlls["continue_kept"] for label in chosen]
                seen_e = [label.nlls["continue_empty"] for label in chosen]
                seen_c = [label.nlls["continue_full"] for label in chosen]
            else:
                seen_f = [label.baselines[name][1] for label in chosen]
                seen_e = [label.nlls["continue_empty"] for label in chosen]
                seen_c = [label.nlls["continue_full"] for label in chosen]
            cells.append(f"{held_out:.3f} ({information_ratio(seen_e, seen_f, seen_c):.3f})")
        print(f"| {rate:.2f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
