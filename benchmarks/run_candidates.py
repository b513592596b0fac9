"""Judge every candidate of ``refine``'s search on a split: recovery AND continuation NLLs per candidate.

For each document of ``--split`` (``select_documents``: C context + T continuation tokens) and each
rate, the base method's keep mask (truncation by default) and every move of
:func:`tokenmask.evaluate.refine.move_variants` are scored by the judge in batched passes:
``R = NLL(context | BOS + p + sep)`` and ``F = NLL(continuation | BOS + p)`` (nats,
docs/evaluation.md), plus each document's ``R``/``F`` of the empty and of the full context (the
metric's denominators); with ``--guards``, also the retention guard's stand-in NLL of each candidate
(``refine_guard``); with ``--pseudo N``, each candidate's NLL of the judge's own ``N`` continuations of
the context (``p0`` greedy, then sampled); with ``--soft T``, its lookahead NLL ``s`` along the judge's greedy
continuation (``refine_lookahead``; ``--soft_paths N`` adds sampled paths: ``s`` is then their mean;
``--soft_no_repeat n`` keeps the greedy path from repeating its own n-grams). With ``--rounds 2``, the
second round's moves from each first-round winner at ``--round_tolerances`` (:func:`second_round`; kind
``2``, each with its ``parent``, and the ``expanded`` winners). The continuation is read here on purpose:
to score choices exactly (``benchmarks/candidate_analysis.py``); no method reads it.

One JSON (atomic), the machine named::

    python benchmarks/run_candidates.py --split train --device cuda --json runs/candidates_train.json
"""

from __future__ import annotations

import argparse
import time
from typing import Any


def candidate_masks(
    keep: Any, moves: tuple[int, ...], stride: int, drops: list[str], bits: Any, protect: int
) -> tuple[list[Any], list[str]]:
    """The base mask, then every distinct move of each drop rule, with each one's rule letter (``b`` for the base).

    ``oldest`` moves are ``refine``'s own (no protected tail: the analysis applies one); ``span`` and
    ``thin`` moves spare the last ``protect`` kept tokens.
    """
    from tokenmask.evaluate.refine import move_variants

    masks, kinds = [keep], ["b"]
    seen = {keep.tobytes()}
    for drop in drops:
        spare = 0 if drop == "oldest" else protect
        for mask in move_variants(keep, moves, stride, (drop,), bits, spare):
            if mask.tobytes() not in seen:
                seen.add(mask.tobytes())
                masks.append(mask)
                kinds.append(drop[0])
    return masks, kinds


def second_round(
    proposals: list[Any],
    owners: list[int],
    masks: list[Any],
    kinds: list[str],
    r: Any,
    soft: Any,
    moves: tuple[int, ...],
    stride: int,
    tolerances: list[float],
    protect: int,
) -> tuple[list[int], list[Any], list[int], list[int]]:
    """Second-round moves: from each document's first-round winner (``refine_lookahead``'s choice over the
    oldest moves at each lookahead tolerance, in nats: ``S <= S(base) + tolerance``), the next oldest base tokens move.

    The winner's kept run is frozen (:func:`tokenmask.evaluate.refine.move_variants`' ``frozen``) and the
    base's last ``protect`` kept tokens stay. Winners that are the base mask get none (their moves are the
    first round's). :return: (owners, masks, parent index into ``masks``) of the new candidates, and every
    expanded parent (one with no possible move has no children).
    """
    import numpy as np

    from tokenmask.evaluate.refine import move_variants

    s = soft.mean(axis=0)
    out_owners: list[int] = []
    out_masks: list[Any] = []
    out_parents: list[int] = []
    expanded: list[int] = []
    for d in sorted(set(owners)):
        rows = np.array([i for i, o in enumerate(owners) if o == d])
        base = proposals[d]
        last = np.flatnonzero(base)[-protect:] if protect else np.array([], dtype=int)
        ok = np.array([kinds[i] in "bo" and masks[i][last].all() for i in rows])
        winners = {
            int(rows[np.argmin(np.where(ok & (s[rows] <= s[rows[0]] + tol), r[rows], np.inf))])
            for tol in tolerances
        }
        for p in sorted(winners - {int(rows[0])}):
            expanded.append(p)
            children = move_variants(masks[p], moves, stride, ("oldest",), None, protect, masks[p] & ~base)
            out_owners += [d] * len(children)
            out_masks += children
            out_parents += [p] * len(children)
    return out_owners, out_masks, out_parents, expanded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default="data_out/pydocs")
    parser.add_argument("--split", default="train")
    parser.add_argument("--max_documents", type=int, default=None, help="default: every long-enough document")
    parser.add_argument("--rates", default="0.3,0.5,0.7")
    parser.add_argument("--base", default="truncation")
    parser.add_argument("--moves", default="16,32")
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=16, help="documents per batched judge call")
    parser.add_argument(
        "--guards",
        default="",
        help="stand-in lengths k (comma-separated): also score NLL(last k context tokens | BOS + kept tokens before them)",
    )
    parser.add_argument(
        "--pseudo",
        type=int,
        default=0,
        help="judge continuations per context (sample 0 greedy): also score NLL(each | BOS + kept tokens), as p0, p1, ...",
    )
    parser.add_argument("--pseudo_tokens", type=int, default=32)
    parser.add_argument(
        "--soft",
        type=int,
        default=0,
        help="tokens of the judge's greedy continuation: also score soft_continuation_nlls along it, as s",
    )
    parser.add_argument(
        "--soft_paths",
        type=int,
        default=1,
        help="paths of --soft: the greedy one, then sampled ones (seed 0); s0, s1, ... per path and s = their mean",
    )
    parser.add_argument(
        "--soft_no_repeat",
        type=int,
        default=0,
        help="n: the greedy --soft path never repeats one of its own n-grams (judge_continuations(no_repeat=n))",
    )
    parser.add_argument(
        "--drops",
        default="oldest",
        help="drop rules of the moves (refine.DROPS, comma-separated); span/thin candidates spare the last --protect "
        "kept tokens, and each candidate's rule is written as its letter in 'kind' (b = the base mask)",
    )
    parser.add_argument("--protect", type=int, default=32, help="kept tokens span/thin moves never drop")
    parser.add_argument(
        "--skip", type=int, default=0, help="leave out the split's first documents (to shard a run)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        choices=(1, 2),
        default=1,
        help="2: also judge second-round oldest moves from each first-round winner (needs --soft; kind '2', 'parent')",
    )
    parser.add_argument(
        "--round_tolerances",
        default="0,0.01,0.02",
        help="lookahead tolerances (nats per --soft token) whose first-round winners get second-round moves",
    )
    parser.add_argument(
        "--offsets",
        default="0",
        help="token offsets of each document's windows (comma-separated): more windows per document for "
        "training a ranker (benchmarks/move_ranker.py); the default 0 is the evaluation's one window",
    )
    parser.add_argument(
        "--dtype", default="auto", help="the judge's dtype (auto: bfloat16 on a GPU, float32 elsewhere)"
    )
    parser.add_argument("--batch_size", type=int, default=None, help="judge sequences per forward pass")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    if args.rounds == 2 and not args.soft:
        parser.error("--rounds 2 picks first-round winners by the lookahead: add --soft 64")

    import numpy as np

    from tokenmask.data import iter_texts
    from tokenmask.evaluate.compressor import MethodContext, build_method
    from tokenmask.evaluate.metrics import select_documents
    from tokenmask.evaluate.reports import device_description
    from tokenmask.io import atomic_write_json
    from tokenmask.reconstructors import Reconstructor
    from tokenmask.reconstructors.judge import (
        judge_continuations,
        recovery_and_continuation_nlls,
        separator_ids,
        soft_continuation_nlls,
    )

    judge = Reconstructor.load(
        "default", device=args.device, dtype=args.dtype, add_mask_token=False, batch_size=args.batch_size
    )
    limit = None if args.max_documents is None else args.skip + args.max_documents
    texts = list(iter_texts(args.corpus, split=args.split))
    offsets = [int(o) for o in args.offsets.split(",") if o.strip()]
    docs = select_documents(texts, judge, 256, 64, limit, offsets=offsets)[args.skip :]
    base = build_method(args.base, MethodContext(judge=judge, device=args.device))
    rates = [float(r) for r in args.rates.split(",")]
    moves = tuple(int(m) for m in args.moves.split(","))
    guards = [int(k) for k in args.guards.split(",") if k.strip()]
    sep = separator_ids(judge)
    tolerances = [float(t) * args.soft for t in args.round_tolerances.split(",") if t.strip()]
    began = time.perf_counter()
    contexts = [list(d.context) for d in docs]
    continuations = [list(d.continuation) for d in docs]
    drops = [d.strip() for d in args.drops.split(",") if d.strip()]
    scored = [d for d in drops if d != "oldest"]
    bits = judge.token_bits(contexts) if scored else [None] * len(docs)
    pseudo = judge_continuations(judge, contexts, args.pseudo_tokens, args.pseudo) if args.pseudo else []
    paths = (
        judge_continuations(judge, contexts, args.soft, args.soft_paths, no_repeat=args.soft_no_repeat)
        if args.soft
        else []
    )
    # the denominators: empty and full context
    reference_r, reference_f = recovery_and_continuation_nlls(
        judge,
        [[] for _ in docs] + contexts,
        contexts + contexts,
        [[] for _ in docs] + contexts,
        continuations + continuations,
        sep,
    )
    n = len(docs)
    out_docs = [
        {
            "context": contexts[i],
            "continuation": continuations[i],
            "pseudo": pseudo[i] if pseudo else [],
            "paths": paths[i] if paths else [],
            "r_empty": float(reference_r[i]),
            "r_full": float(reference_r[n + i]),
            "f_empty": float(reference_f[i]),
            "f_full": float(reference_f[n + i]),
            "rates": {},
        }
        for i in range(n)
    ]

    def judge_masks(owners: list[int], masks: list[Any]) -> tuple[Any, Any, Any, Any]:
        """R and F of each mask; its lookahead NLLs (paths x masks); its guard then pseudo NLLs (rows x masks)."""
        prefixes = [np.asarray(contexts[d])[m].tolist() for d, m in zip(owners, masks)]
        # F items: the real continuation, then per guard k the context's last k tokens after the kept ones before them
        f_prefixes, f_targets = list(prefixes), [continuations[d] for d in owners]
        for k in guards:
            f_prefixes += [np.asarray(contexts[d])[:-k][m[:-k]].tolist() for d, m in zip(owners, masks)]
            f_targets += [contexts[d][-k:] for d in owners]
        for s in range(args.pseudo):
            f_prefixes += list(prefixes)
            f_targets += [pseudo[d][s] for d in owners]
        r, f_all = recovery_and_continuation_nlls(
            judge, prefixes, [contexts[d] for d in owners], f_prefixes, f_targets, sep
        )
        count = len(owners)
        soft = (
            np.stack(
                [
                    soft_continuation_nlls(judge, prefixes, owners, contexts, [p[j] for p in paths])
                    for j in range(args.soft_paths)
                ]
            )
            if args.soft
            else None
        )
        rest = np.asarray(f_all[count:], dtype=np.float64).reshape(len(guards) + args.pseudo, count)
        return np.asarray(r), np.asarray(f_all[:count]), soft, rest

    for rate in rates:
        proposals = [np.asarray(m, dtype=bool) for m in base.keep_masks(contexts, rate)]
        for start in range(0, n, args.chunk):
            owners, masks, kinds = [], [], []
            for d in range(start, min(start + args.chunk, n)):
                variants, kind = candidate_masks(
                    proposals[d], moves, args.stride, drops, bits[d], args.protect
                )
                owners += [d] * len(variants)
                masks += variants
                kinds += kind
            parents = [-1] * len(masks)
            r, f_all, soft, g_all = judge_masks(owners, masks)
            if args.rounds == 2:
                new_owners, new_masks, new_parents, expanded = second_round(
                    proposals, owners, masks, kinds, r, soft, moves, args.stride, tolerances, args.protect
                )
                if new_owners:
                    r2, f2, soft2, g2 = judge_masks(new_owners, new_masks)
                    owners, masks = owners + new_owners, masks + new_masks
                    kinds, parents = kinds + ["2"] * len(new_owners), parents + new_parents
                    r, f_all = np.concatenate([r, r2]), np.concatenate([f_all, f2])
                    soft = np.concatenate([soft, soft2], axis=1)  # --rounds 2 needs --soft
                    g_all = np.concatenate([g_all, g2], axis=1)
            for d in sorted(set(owners)):
                rows = [i for i, o in enumerate(owners) if o == d]
                entry = {
                    "keep": ["".join("1" if k else "0" for k in masks[i]) for i in rows],
                    "kind": "".join(kinds[i] for i in rows),
                    "r": [float(r[i]) for i in rows],
                    "f": [float(f_all[i]) for i in rows],
                }
                if args.rounds == 2:
                    # a second-round move names its parent by its index among the document's candidates;
                    # "expanded" lists every first-round winner that got a second round (children or not)
                    local = {i: j for j, i in enumerate(rows)}
                    entry["parent"] = [local[parents[i]] if parents[i] >= 0 else -1 for i in rows]
                    entry["expanded"] = sorted({local[p] for p in expanded if owners[p] == d})
                for g, k in enumerate(guards):
                    entry[f"g{k}"] = [float(g_all[g, i]) for i in rows]
                if soft is not None:
                    entry["s"] = [float(soft[:, i].mean()) for i in rows]
                    if args.soft_paths > 1:
                        for j in range(args.soft_paths):
                            entry[f"s{j}"] = [float(soft[j, i]) for i in rows]
                for s in range(args.pseudo):
                    entry[f"p{s}"] = [float(g_all[len(guards) + s, i]) for i in rows]
                out_docs[d]["rates"][str(rate)] = entry
        print(f"rate {rate}: {n} documents scored, {time.perf_counter() - began:.0f} s", flush=True)
    atomic_write_json(
        args.json,
        {
            "split": args.split,
            "corpus": args.corpus,
            "base": args.base,
            "moves": list(moves),
            "drops": drops,
            "protect": args.protect,
            "skip": args.skip,
            "offsets": offsets,
            "dtype": args.dtype,
            "stride": args.stride,
            "guards": guards,
            "pseudo": args.pseudo,
            "pseudo_tokens": args.pseudo_tokens,
            "soft": args.soft,
            "soft_paths": args.soft_paths,
            "soft_no_repeat": args.soft_no_repeat,
            "rounds": args.rounds,
            "round_tolerances": [t / args.soft for t in tolerances] if args.rounds == 2 else [],
            "machine": device_description(judge.device),
            "seconds": time.perf_counter() - began,
            "documents": out_docs,
        },
    )
    print(
        f"{n} documents, {len(rates)} rates, {time.perf_counter() - began:.0f} s on {device_description(judge.device)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
