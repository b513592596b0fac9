"""Will the continuation copy what a move drops? A copy model as a context-only signal for ``refine_lookahead``.

``refine_lookahead`` fails the bar at rate 0.7 on test because a few moves drop text that the
continuation repeats (docs/results.md). This script asks the question directly, with much more text
than the judged candidates hold:

- **Labels**: a context token is *copied* when one of the context's token trigrams that contains it
  occurs in the continuation (:func:`copy_labels`).
- **Model**: a small MLP on features of the token ids alone (distance to the end, counts in the
  context and its last 64 tokens, whether its trigram repeats in the context, corpus log-frequency
  of the token and its neighbours, the token string's shape: :func:`copy_features`). It is fitted on
  windows of C + T tokens of the corpus's train split at offsets 64, 128 and 192, so never on the
  candidate files' own window (offset 0), and checked on the validation split's windows.
- **Signals** per candidate move: ``copy_sum`` (expected number of dropped tokens the continuation
  copies) and ``copy_max``.

Report (Markdown): the model's AUC; per rate, the correlation of ``copy_sum`` and of the *real*
number of copied dropped tokens with the move's real retention change ``dF``; then
``candidate_signals.rank``'s table of ceilings on the two signals (``P(all)`` over random draws), beside
``oracle_copies``, a ceiling on the real number of copied dropped tokens (it reads the continuation: the
most a perfect copy model could give).

Example (docs/results.md)::

    python benchmarks/copy_signal.py --files runs/r2/r2_train_0.json,...,runs/r2/r2_validation_46.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import candidate_analysis as ca  # noqa: E402
import candidate_signals as cs  # noqa: E402

GRAM = 3
"""Copied = part of a context trigram that occurs in the continuation."""
OFFSETS = (64, 128, 192)
"""Window starts of the fitting documents (offset 0 is the candidate files' own window)."""


def copy_labels(context: Sequence[int], continuation: Sequence[int], n: int = GRAM) -> np.ndarray:
    """1.0 for each context token inside a context n-gram that occurs in the continuation, else 0.0."""
    ctx, cont = list(context), list(continuation)
    found = {tuple(cont[i : i + n]) for i in range(len(cont) - n + 1)}
    y = np.zeros(len(ctx), dtype=np.float32)
    for i in range(len(ctx) - n + 1):
        if tuple(ctx[i : i + n]) in found:
            y[i : i + n] = 1.0
    return y


def token_shapes(strings: Sequence[str]) -> np.ndarray:
    """Per vocabulary entry: leading space, upper case, ``_``, ``.``, a bracket, digits only, letters only, length."""
    rows = []
    for s in strings:
        t = (s or "").lstrip("Ġ▁ ")
        rows.append(
            [
                (s or "").startswith(("Ġ", "▁", " ")),
                any(ch.isupper() for ch in t),
                "_" in t,
                "." in t,
                any(ch in "()[]" for ch in t),
                t.isdigit(),
                t.isalpha(),
                min(len(t), 12) / 12,
            ]
        )
    return np.asarray(rows, dtype=np.float32)


def copy_features(context: Sequence[int], log_freq: np.ndarray, shapes: np.ndarray) -> np.ndarray:
    """Per context token (``len(context) x 14``), from the ids alone (see the module docstring)."""
    ctx = np.asarray(context)
    n = len(ctx)
    ids = ctx.tolist()
    counts: dict[int, int] = {}
    for t in ids:
        counts[t] = counts.get(t, 0) + 1
    tail = set(ids[-64:])
    grams: dict[tuple[int, ...], int] = {}
    for i in range(n - GRAM + 1):
        g = tuple(ids[i : i + GRAM])
        grams[g] = grams.get(g, 0) + 1
    repeated = np.zeros(n, dtype=np.float32)
    for i in range(n - GRAM + 1):
        if grams[tuple(ids[i : i + GRAM])] > 1:
            repeated[i : i + GRAM] = 1.0
    rarity = log_freq[ctx] / 20
    return np.column_stack(
        [
            (n - 1 - np.arange(n)) / n,
            np.log1p([counts[t] - 1 for t in ids]),
            [t in tail for t in ids],
            repeated,
            rarity,
            shapes[ctx],
            np.convolve(rarity, np.ones(5) / 5, mode="same"),
        ]
    ).astype(np.float32)


def fit_copy_model(
    train: Sequence[tuple[Sequence[int], Sequence[int]]],
    log_freq: np.ndarray,
    shapes: np.ndarray,
    epochs: int = 6,
    seed: int = 0,
) -> Callable[[Sequence[int]], np.ndarray]:
    """Fit the MLP on ``(context, continuation)`` windows; returns ``P(copied)`` per token of a context."""
    x = np.concatenate([copy_features(c, log_freq, shapes) for c, _ in train])
    y = np.concatenate([copy_labels(c, t) for c, t in train])
    mean, std = x.mean(0), x.std(0) + 1e-6
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    inputs, targets = torch.tensor((x - mean) / std), torch.tensor(y)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(inputs), 4096):
            batch = order[start : start + 4096]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                net(inputs[batch])[:, 0], targets[batch]
            )
            opt.zero_grad()
            loss.backward()
            opt.step()

    def predict(context: Sequence[int]) -> np.ndarray:
        with torch.no_grad():
            z = torch.tensor((copy_features(context, log_freq, shapes) - mean) / std)
            return torch.sigmoid(net(z)[:, 0]).numpy()

    return predict


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (ties get their mean rank)."""
    positive = np.asarray(labels) > 0.5
    _, inverse, count = np.unique(scores, return_inverse=True, return_counts=True)
    order_rank = np.empty(len(scores))
    order_rank[np.argsort(scores, kind="mergesort")] = np.arange(1, len(scores) + 1)
    ranks = (np.bincount(inverse, order_rank) / count)[inverse]
    n1, n0 = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def add_copy_signals(docs: list[dict[str, Any]], predict: Callable[[Sequence[int]], np.ndarray]) -> list[str]:
    """``copy_sum`` and ``copy_max`` of every candidate: the predicted copies among the kept tokens it drops."""
    for x in docs:
        p = predict(x["context"])
        for c in x["rates"].values():
            base = c["masks"][0]
            gone = [base & ~m for m in c["masks"]]
            c["copy_sum"] = np.array([p[g].sum() for g in gone])
            c["copy_max"] = np.array([p[g].max() if g.any() else 0.0 for g in gone])
    return ["copy_sum", "copy_max"]


def corpus_windows(
    corpus: str, split: str, context: int, continuation: int
) -> list[tuple[list[int], list[int]]]:
    """``(context, continuation)`` id windows of a prepared corpus split, at :data:`OFFSETS`."""
    from datasets import load_from_disk

    out = []
    for ids in load_from_disk(str(Path(corpus) / "dataset"))[split]["input_ids"]:
        for start in OFFSETS:
            if start + context + continuation <= len(ids):
                out.append(
                    (ids[start : start + context], ids[start + context : start + context + continuation])
                )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", required=True, help="run_candidates JSON files, comma-separated (pooled)")
    parser.add_argument(
        "--corpus", default="data_out/pydocs", help="prepared corpus: train windows fit the model"
    )
    parser.add_argument("--draw", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top", type=int, default=8)
    args = parser.parse_args(argv)
    from tokenmask.reconstructors import Reconstructor

    tokenizer = Reconstructor.load("default", add_mask_token=False).tokenizer
    docs = [x for path in args.files.split(",") for x in ca.load(path)]
    context, continuation = len(docs[0]["context"]), len(docs[0]["continuation"])
    train = corpus_windows(args.corpus, "train", context, continuation)
    counts = np.ones(len(tokenizer), dtype=np.float64)
    for c, t in train:
        np.add.at(counts, c + t, 1)
    log_freq = np.log(counts / counts.sum())
    shapes = token_shapes(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))))
    predict = fit_copy_model(train, log_freq, shapes, seed=args.seed)
    check = corpus_windows(args.corpus, "validation", context, continuation)
    y = np.concatenate([copy_labels(c, t) for c, t in check])
    p = np.concatenate([predict(c) for c, _ in check])
    print(
        f"copy model: {len(train)} train windows; validation windows AUC {auc(y, p):.3f} (copied share {y.mean():.3f})"
    )
    copied = [copy_labels(x["context"], x["continuation"]) for x in docs]
    p = np.concatenate([predict(x["context"]) for x in docs])
    print(f"the files' own windows: AUC {auc(np.concatenate(copied), p):.3f}\n")
    keys = add_copy_signals(docs, predict)
    for x, real in zip(
        docs, copied
    ):  # the oracle: the real copies (reads the continuation), the most a signal could give
        for c in x["rates"].values():
            c["oracle_copies"] = np.array([real[c["masks"][0] & ~m].sum() for m in c["masks"]])
    print("| rate | corr(copy_sum, dF) | corr(real copied dropped tokens, dF) |\n| --- | --- | --- |")
    for rate in ca.RATES:
        predicted, real_copies, d_f = [], [], []
        for x in docs:
            c = x["rates"][rate]
            moves = [j for j in range(1, len(c["masks"])) if c["kind"][j] == "o"]
            predicted += [c["copy_sum"][j] for j in moves]
            real_copies += [c["oracle_copies"][j] for j in moves]
            d_f += [c["f"][0] - c["f"][j] for j in moves]
        print(
            f"| {rate} | {np.corrcoef(predicted, d_f)[0, 1]:+.2f} | {np.corrcoef(real_copies, d_f)[0, 1]:+.2f} |"
        )
    print()
    cs.rank(docs, [*keys, "oracle_copies"], args.draw, args.seed, args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
