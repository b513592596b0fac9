"""Context-only signals for ``refine_lookahead``'s moves: will the continuation need what a move drops?

``refine_lookahead`` fails the bar at rate 0.7 on test because a few moves drop text that the
continuation re-uses (docs/results.md). This script adds two per-candidate signals, read from the
context alone, to the judged candidates of ``benchmarks/run_candidates.py`` and asks whether a
ceiling on either, on top of the shipped filters (protected tail 32, lookahead tolerance 0.02),
raises the chance of meeting the bar:

- ``a_all``, ``a_lo``, ``a_mid``, ``a_hi``: the judge's attention from the base context's last
  ``--queries`` positions onto the kept tokens the move drops (mean over heads and queries; all
  layers, or the first, middle or last third). The BOS column (the attention sink) is left out.
- ``n2``, ``n3``, ``n4``: the share of the dropped tokens' n-grams that occur elsewhere in the context
  (repeated phrasing).

Reports (Markdown tables; every figure exact, as in ``candidate_analysis.py``):

- ``rank`` (train and validation files): each signal's ceiling at quantiles of its values over the
  files' moves, ranked by ``P(all)``, the share of random ``--draw``-document draws meeting the bar at
  all three rates; the rows without a ceiling come last, for comparison.
- ``score`` (a held-out file): fixed settings ``DROPS:PROTECT:TOL[:KEY@CEILING]`` (as
  ``candidate_analysis.py score``); nothing is chosen.

The attention of a file is cached beside it (``.attention16.npz`` for ``--queries 16``): one judge
pass per document and rate, about 0.4 s per context on 2 CPU cores.

Example (docs/results.md)::

    python benchmarks/candidate_signals.py rank --files runs/cd_train0.json,runs/cd_train1.json,runs/cd_validation.json
    python benchmarks/candidate_signals.py score --files runs/cd_test07_0.json --settings o:32:0.02,os:32:0.02:a_hi@0.1006
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import candidate_analysis as ca  # noqa: E402

from tokenmask.evaluate.refine import LOOKAHEAD_PROTECT, LOOKAHEAD_TOLERANCE  # noqa: E402

LAYER_GROUPS = ("all", "lo", "mid", "hi")
GRAMS = (2, 3, 4)
QUANTILES = (0.5, 0.8, 0.9, 0.95)


def end_attention(judge: Any, kept: Iterable[list[int]], queries: int) -> list[np.ndarray]:
    """Per sequence of kept ids: the attention of its last ``queries`` positions onto each kept token,
    mean over heads and those queries, one row per layer (``layers x len(ids)``; BOS column left out)."""
    model = judge.model
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")  # the fused kernels return no attention weights
    out = []
    try:
        with torch.no_grad():
            for ids in kept:
                inputs = torch.tensor([[judge.bos_token_id, *ids]], device=judge.device)
                weights = model(inputs, output_attentions=True).attentions
                rows = torch.stack([w[0, :, -queries:, 1:].float().mean((0, 1)) for w in weights])
                out.append(rows.cpu().numpy())
    finally:
        model.set_attn_implementation(previous)
    return out


def file_attention(path: str, docs: list[dict[str, Any]], queries: int, judge: Any = None) -> None:
    """Attach ``c["att"]`` (layers x kept tokens of the base) to every rate of every document, cached beside the file."""
    cache = Path(path).with_suffix(f".attention{queries}.npz")
    keys = [(d, rate) for d, x in enumerate(docs) for rate in x["rates"]]
    if not cache.is_file():
        if judge is None:
            from tokenmask.reconstructors import Reconstructor

            judge = Reconstructor.load("default", add_mask_token=False)
        from tqdm.auto import tqdm

        kept = [np.asarray(docs[d]["context"])[docs[d]["rates"][r]["masks"][0]].tolist() for d, r in keys]
        rows = end_attention(judge, tqdm(kept, desc="attention", unit="context"), queries)
        tmp = cache.with_name(cache.name + ".tmp.npz")
        np.savez(tmp, **{f"{d}_{r}": a.astype(np.float32) for (d, r), a in zip(keys, rows)})
        tmp.replace(cache)
    stored = np.load(cache)
    for d, rate in keys:
        docs[d]["rates"][rate]["att"] = stored[f"{d}_{rate}"]


def layer_slice(group: str, layers: int) -> slice:
    """The layers of a group: ``all``, or the first (``lo``), middle (``mid``) or last (``hi``) third (one layer at least)."""
    third = max(1, layers // 3)
    middle = slice(third, layers - third) if layers > 2 * third else slice(layers // 2, layers // 2 + 1)
    return {"all": slice(None), "lo": slice(0, third), "mid": middle, "hi": slice(layers - third, None)}[
        group
    ]


def dropped_attention(c: dict[str, Any], group: str) -> np.ndarray:
    """Per candidate: the attention mass (of :func:`end_attention`, layer group ``group``) on the kept tokens it drops."""
    att = c["att"][layer_slice(group, len(c["att"]))].mean(0)
    base = c["masks"][0]
    return np.array([att[~m[base]].sum() for m in c["masks"]], dtype=np.float64)


def repeated_share(context: list[int], c: dict[str, Any], n: int) -> np.ndarray:
    """Per candidate: the share of the dropped tokens' n-grams (in their order) that occur elsewhere in the context."""
    base = c["masks"][0]
    out = []
    for m in c["masks"]:
        dropped = np.flatnonzero(base & ~m)
        ids = [context[i] for i in dropped]
        grams = {tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)}
        if not grams:
            out.append(0.0)
            continue
        gone = np.zeros(len(context) + 1, dtype=np.int64)
        gone[dropped + 1] = 1
        hits = np.cumsum(gone)  # windows [i, i + n) that touch a dropped token are not "elsewhere"
        elsewhere = {tuple(context[i : i + n]) for i in range(len(context) - n + 1) if hits[i + n] == hits[i]}
        out.append(len(grams & elsewhere) / len(grams))
    return np.array(out)


def add_signals(docs: list[dict[str, Any]]) -> list[str]:
    """Compute every signal of every candidate (``att`` must be attached); returns their keys."""
    for x in docs:
        for c in x["rates"].values():
            for group in LAYER_GROUPS:
                c[f"a_{group}"] = dropped_attention(c, group)
            for n in GRAMS:
                c[f"n{n}"] = repeated_share(list(x["context"]), c, n)
    return [f"a_{g}" for g in LAYER_GROUPS] + [f"n{n}" for n in GRAMS]


def rank(docs: list[dict[str, Any]], keys: list[str], draw: int, seed: int, top: int) -> None:
    """Ceilings on each signal at quantiles of its values over the moves, ranked by P(all)."""
    rng = np.random.default_rng(seed)
    draws = ca.document_draws(docs, draw, 2000, rng)
    spans = any("s" in x["rates"][r].get("kind", "") for x in docs for r in ca.RATES)
    ceilings = {}  # each signal's quantiles over every move (the base mask, index 0, left out)
    for key in keys:
        values = np.concatenate([x["rates"][r][key][1:] for x in docs for r in ca.RATES])
        ceilings.update({(key, q): float(np.quantile(values, q)) for q in QUANTILES})
    rows, reference = [], []
    for drops in ("o", "os") if spans else ("o",):

        def choose(rate: str, limit: tuple[str, float] | None, drops: str = drops) -> list[int]:
            protect, tolerance = LOOKAHEAD_PROTECT, LOOKAHEAD_TOLERANCE
            return ca.lookahead_choice(docs, rate, protect, None, tolerance, drops=drops, limit=limit)

        choices = {rate: choose(rate, None) for rate in ca.RATES}
        reference.append((ca.joint_pass_probability(docs, choices, draws), drops, "-", "-", choices))
        for key, q in itertools.product(keys, QUANTILES):
            ceiling = ceilings[key, q]
            choices = {rate: choose(rate, (key, ceiling)) for rate in ca.RATES}
            rows.append(
                (
                    ca.joint_pass_probability(docs, choices, draws),
                    drops,
                    key,
                    f"q{q:g} = {ceiling:.4f}",
                    choices,
                )
            )
    rows.sort(key=lambda row: -row[0])
    print(
        f"{len(docs)} documents; protect {LOOKAHEAD_PROTECT}, lookahead tolerance {LOOKAHEAD_TOLERANCE}; "
        f"P(all) over {len(draws)} draws of {draw}\n"
    )
    print(
        "| drops | signal | ceiling | P(all) | " + " | ".join(f"{r}: d rec / d ret" for r in ca.RATES) + " |"
    )
    print("| --- " * (4 + len(ca.RATES)) + "|")
    for p, drops, key, ceiling, choices in rows[:top] + reference:
        cells = " | ".join("{:+.3f} / {:+.3f}".format(*ca.metric(docs, r, choices[r])) for r in ca.RATES)
        print(f"| {drops} | {key} | {ceiling} | {p:.3f} | {cells} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", choices=["rank", "score"])
    parser.add_argument("--files", required=True, help="run_candidates JSON files, comma-separated (pooled)")
    parser.add_argument(
        "--queries", type=int, default=16, help="the context's last positions whose attention is read"
    )
    parser.add_argument("--draw", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument(
        "--settings",
        default="o:32:0.02,os:32:0.02",
        help="score: DROPS:PROTECT:TOL[:KEY@CEILING], comma-separated (fixed; chosen on other splits)",
    )
    args = parser.parse_args(argv)
    docs = []
    for path in args.files.split(","):
        part = ca.load(path)
        file_attention(path, part, args.queries)
        docs += part
    keys = add_signals(docs)
    if args.report == "rank":
        rank(docs, keys, args.draw, args.seed, args.top)
    else:
        ca.score(docs, args.settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
