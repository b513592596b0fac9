"""Compressed forms other than deletion: does a judge-written summary carry more per token than a verbatim run?

Every move of the judge search (``refine_lookahead``) keeps an earlier *verbatim* run of the context in place
of the oldest kept tokens of truncation's tail. Stop 37 left one idea open for the 0.7 cell: a compressed form
other than deletion. This script puts two such forms beside the verbatim run, each spending the same ``s``
tokens at the front of the compressed ids (the tail keeps its last ``k - s`` tokens; ``k`` = truncation's kept
count at the asked rate; ids used directly, as the search does):

- ``run``: the context's first ``s`` tokens, verbatim (the simplest move; what the search improves on).
- ``summary``: the judge's own greedy answer to "Summarize the topic of this text in a few words" about the
  dropped head (the context before the tail), cut to ``s`` tokens: a paraphrase, not a deletion.
- ``keywords``: the head's ``s`` most surprising tokens (``-log p`` after the tokens before them, no prefix), in
  order: the most informative scattered tokens.

It prints, per asked rate and form, the change over truncation (recoverability / retention: ratios of sums, as
docs/evaluation.md) and the share of documents where the form's ``R`` is below the verbatim run's. With
``--oracle FILE.npz`` (``foresight_oracle.py judge`` of the same corpus, split and documents), also the share of
documents where the form's real ``R`` is below *every* candidate of the search's (so that a recoverability
search would take it), and the no-guard search's change with and without the form among its candidates. With
``--plot PNG``, a plot of the changes against ``s``, one panel per rate.

Example (docs/results.md, stop 39; about 20 minutes on the 2-core CPU)::

    python benchmarks/compressed_forms.py --split validation --rates 0.5,0.7 --oracle runs/s37/oracle_validation.npz \
        --plot docs/compressed_forms.png
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tokenmask.reconstructors import Reconstructor

FORMS = ("run", "summary", "keywords")
PROMPT = "Summarize the topic of this text in a few words:\n\n"


def kept_count(rate: float, context_tokens: int) -> int:
    """Truncation's kept tokens at an asked rate (what the search's base keeps)."""
    return context_tokens - round(rate * context_tokens)


def keyword_ids(head: Sequence[int], surprisal: np.ndarray, count: int) -> list[int]:
    """The ``count`` most surprising tokens of ``head``, in their order (ties: the earlier first)."""
    if count > len(head):
        raise ValueError(f"{count} keywords asked of a head of {len(head)} tokens. Fix: a smaller --lengths.")
    order = np.argsort(-np.asarray(surprisal[: len(head)]), kind="stable")[:count]
    return [int(head[i]) for i in sorted(order)]


def with_tail(front: Sequence[int], context: Sequence[int], kept: int) -> list[int]:
    """``front`` then the context's last ``kept - len(front)`` tokens: ``kept`` ids in all."""
    if len(front) > kept:
        raise ValueError(f"a front of {len(front)} ids does not fit in {kept} kept tokens.")
    return list(front) + list(context[len(context) - (kept - len(front)) :])


def judge_summary(judge: Reconstructor, head: Sequence[int], count: int) -> list[int]:
    """The judge's greedy few-word summary of ``head`` (chat template), re-encoded and cut to ``count`` ids."""
    import torch

    messages = [{"role": "user", "content": PROMPT + judge.decode(head)}]
    prompt = judge.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    if not isinstance(prompt, torch.Tensor):
        prompt = prompt["input_ids"]
    prompt = prompt.to(judge.device)
    with torch.no_grad():
        out = judge.model.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=count + 4, do_sample=False
        )
    text = judge.tokenizer.decode(out[0, prompt.shape[1] :], skip_special_tokens=True).strip()
    return judge.encode(text)[:count]


def change_over(base: np.ndarray, form: np.ndarray, empty: np.ndarray, full: np.ndarray) -> float:
    """A form's change over the base in :func:`~tokenmask.evaluate.metrics.information_ratio` (recoverability from
    ``R`` values, retention from ``F`` values): ratios of sums over documents."""
    from tokenmask.evaluate.metrics import information_ratio

    return information_ratio(empty, form, full) - information_ratio(empty, base, full)


def plot_forms(results: Sequence[dict[str, float | str]], title: str, path: str | Path) -> None:
    """One panel per asked rate: each form's change over truncation (recoverability solid, retention dashed)
    against the ids it spends, with truncation at 0; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tokenmask.evaluate.reports import figure_png
    from tokenmask.io import atomic_write_bytes

    rates = sorted({float(r["rate"]) for r in results})
    fig, axes = plt.subplots(1, len(rates), figsize=(4.5 * len(rates) + 2.0, 3.6), squeeze=False, sharey=True)
    try:
        for ax, rate in zip(axes[0], rates):
            for i, form in enumerate(FORMS):
                rows = sorted(
                    (r for r in results if r["rate"] == rate and r["form"] == form), key=lambda r: r["s"]
                )
                lengths = [r["s"] for r in rows]
                ax.plot(lengths, [r["d_rec"] for r in rows], f"C{i}-o", label=f"{form}: recoverability")
                ax.plot(lengths, [r["d_ret"] for r in rows], f"C{i}--x", label=f"{form}: retention")
            ax.axhline(0.0, color="0.4", lw=0.8, label="truncation")
            ax.set_title(f"asked rate {rate:g}")
            ax.set_xlabel("ids spent at the front (s)")
        axes[0][0].set_ylabel("change over truncation")
        axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        fig.suptitle(title, fontsize=9)
        atomic_write_bytes(path, figure_png(fig))
    finally:
        plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    from tqdm import tqdm

    from tokenmask.data import is_prepared_corpus
    from tokenmask.evaluate.compressor import check_rate
    from tokenmask.evaluate.metrics import select_corpus_documents
    from tokenmask.evaluate.reports import device_description
    from tokenmask.reconstructors import Reconstructor
    from tokenmask.reconstructors.judge import (
        continuation_nlls,
        recovery_nlls,
        recovery_token_nlls,
        separator_ids,
    )

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default="data_out/pydocs", help="prepared corpus folder or .jsonl")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--max_documents", type=int, default=None, help="the first N long-enough documents")
    parser.add_argument("--rates", default="0.5,0.7")
    parser.add_argument("--lengths", default="8,16,24", help="s: ids each form spends at the front")
    parser.add_argument("--judge", default="default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--oracle", default="", help="foresight_oracle.py judge's .npz of the same documents")
    parser.add_argument("--plot", default="", help="a PNG of the changes per rate (optional)")
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]
    for rate in rates:
        check_rate(rate)
    lengths = [int(s) for s in args.lengths.split(",")]
    for rate in rates:
        kept = kept_count(rate, 256)
        if max(lengths) >= min(kept, 256 - kept):
            raise SystemExit(
                f"--lengths {args.lengths}: at rate {rate:g} the tail keeps {kept} tokens and the head has {256 - kept}. "
                f"Fix: lengths below {min(kept, 256 - kept)}."
            )
    began = time.perf_counter()
    judge = Reconstructor.load(args.judge, device=args.device, dtype="float32", add_mask_token=False)
    documents = select_corpus_documents(args.corpus, args.split, judge, 256, 64, args.max_documents)
    sep = separator_ids(judge)
    contexts = [list(d.context) for d in documents]
    continuations = [list(d.continuation) for d in documents]
    empty: list[list[int]] = [[] for _ in documents]
    surprisal = recovery_token_nlls(judge, empty, contexts, sep)
    r_empty, r_full = (
        recovery_nlls(judge, empty, contexts, sep),
        recovery_nlls(judge, contexts, contexts, sep),
    )
    f_empty = continuation_nlls(judge, empty, continuations)
    f_full = continuation_nlls(judge, contexts, continuations)
    oracle = np.load(args.oracle) if args.oracle else None
    split = f" ({args.split})" if is_prepared_corpus(args.corpus) else ""
    print(f"{len(documents)} documents of {args.corpus}{split} on {device_description(judge.device)}")
    header = "| rate | form | s | d recoverability | d retention | R below the run's |"
    if oracle is not None:
        header += " R below every candidate's | no-guard search: d rec without / with it |"
    print(header)
    print("|" + " --- |" * (header.count("|") - 1))
    results: list[dict[str, float | str]] = []
    for rate in rates:
        kept = kept_count(rate, len(contexts[0]))
        heads = [c[: len(c) - kept] for c in contexts]
        summaries = [
            judge_summary(judge, h, max(lengths)) for h in tqdm(heads, desc=f"summaries at {rate:g}")
        ]
        base = [with_tail([], c, kept) for c in contexts]
        r_base, f_base = (
            recovery_nlls(judge, base, contexts, sep),
            continuation_nlls(judge, base, continuations),
        )
        best = None
        if oracle is not None:
            rows = np.flatnonzero(np.isclose(oracle["rate"], rate) & (oracle["doc"] < len(documents)))
            rows = rows[np.argsort(oracle["doc"][rows])]
            if len(rows) != len(documents) or not np.allclose(oracle["R"][rows, 0], r_base, atol=0.05):
                raise SystemExit(f"--oracle {args.oracle} does not hold these documents at rate {rate}.")
            best = np.where(oracle["valid"][rows], oracle["R"][rows], np.inf).min(axis=1)
        for s in lengths:
            fronts = {
                "run": [c[:s] for c in contexts],
                "summary": [summary[:s] for summary in summaries],
                "keywords": [keyword_ids(h, sp, s) for h, sp in zip(heads, surprisal)],
            }
            run_r = None
            for form in FORMS:
                prefixes = [with_tail(front, c, kept) for front, c in zip(fronts[form], contexts)]
                r = recovery_nlls(judge, prefixes, contexts, sep)
                f = continuation_nlls(judge, prefixes, continuations)
                run_r = r if form == "run" else run_r
                rec, ret = change_over(r_base, r, r_empty, r_full), change_over(f_base, f, f_empty, f_full)
                results.append({"rate": rate, "form": form, "s": s, "d_rec": rec, "d_ret": ret})
                line = f"| {rate:g} | {form} | {s} | {rec:+.3f} | {ret:+.3f} | {np.mean(r < run_r):.2f} |"
                if best is not None:
                    without = change_over(r_base, best, r_empty, r_full)
                    with_it = change_over(r_base, np.minimum(best, r), r_empty, r_full)
                    line += f" {np.mean(r < best):.2f} | {without:+.3f} / {with_it:+.3f} |"
                print(line, flush=True)
    print(f"({time.perf_counter() - began:.0f} s)")
    if args.plot:
        plot_forms(results, f"{len(documents)} documents of {Path(args.corpus).name}{split}", args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
