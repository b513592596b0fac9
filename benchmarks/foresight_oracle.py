"""Foresight oracle: would knowing the real continuation's first ``k`` tokens protect the tokens after them?

The judge search (``refine_lookahead:p``) guards retention with the judge's *own* 64-token continuation of the
context (its lookahead ``S``). At rate 0.7 on the pydocs test split that guard lets through moves that cost the
real continuation, and "a stronger LM to write the lookahead" is the idea stop 36 left open. No LM can foresee
more than the real continuation itself, so this script bounds what any lookahead could do: a guard that reads
the *real* continuation's first ``k`` tokens, with retention scored on the tokens after them.

- ``judge`` (a GPU makes it minutes): per document and asked rate, the search's judged candidates (base mask
  first: truncation's), each with the search's own ``R`` and ``S`` (what its rule reads), the real ``R`` (the
  evaluation's float32 judge) and every continuation token's real NLL; per document the references
  (``R(empty)``, ``R(context)``, and per token ``F(empty)``, ``F(context)``). One ``.npz`` per split, written
  atomically.
- ``analyse`` (CPU, seconds): per rate and per ``k`` of ``--foresee``, the change over the base (recoverability,
  and retention on continuation tokens ``k .. T-1`` only: ratios of sums, as docs/evaluation.md) of the search's
  rule, of no guard (the lowest ``R``), and of the oracle guards (a move is allowed when its real ``F`` on the first
  ``k`` tokens is within ``k * tol`` nats of the base's; alone or together with the rule's own guard), with the
  bar's verdict (+0.02 / -0.01). Then where the rule's retention change comes from (the documents that lose most)
  and, over each document's candidates, the correlation of a move's ``F`` change on the continuation's first and
  second halves. With ``--plot_sets``, a plot of the retention change against ``k`` instead (one row of panels
  per set of files).
- ``rarity`` (CPU, seconds): where each set's rule change (recoverability, retention) sits among bootstrap draws of
  as many documents from a reference set (train + validation): is a set's figure a draw of the reference's kind?
  With ``--by_source``, draws of whole sources (each with all its documents) until a draw holds as many documents
  (the files' ``sources``, which ``judge`` writes since stop 40; ``add-sources`` adds them to older files, checking
  that it selects the file's documents).

Choices use the search's own ``R`` (as its rule does) and are scored with the real ``R`` and ``F``; nothing is fitted.

Example (docs/results.md, stop 37; one H100, 160 s for the three splits)::

    python benchmarks/foresight_oracle.py judge --split validation --device cuda --out runs/s37/oracle_validation.npz
    python benchmarks/foresight_oracle.py judge --split train --max_documents 240 --device cuda --out runs/s37/oracle_train.npz
    python benchmarks/foresight_oracle.py analyse runs/s37/oracle_train.npz runs/s37/oracle_validation.npz
    python benchmarks/foresight_oracle.py analyse --plot_sets "train + validation=runs/s37/oracle_train.npz,\
runs/s37/oracle_validation.npz;test=runs/s37/oracle_test.npz" --tolerances 0.02 --plot docs/foresight_oracle.png
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tokenmask.envs.moves import guarded_choice, lookahead_allowed
from tokenmask.evaluate.bar import group_ids
from tokenmask.evaluate.refine import LOOKAHEAD_TOKENS, LOOKAHEAD_TOLERANCE
from tokenmask.evaluate.reports import RECOVERABILITY_MARGIN as GAIN
from tokenmask.evaluate.reports import RETENTION_MARGIN as SLACK

if TYPE_CHECKING:
    from tokenmask.evaluate.metrics import EvalDocument
    from tokenmask.evaluate.refine import RecoverabilitySearch
    from tokenmask.reconstructors import Reconstructor

_PER_ROW = ("R", "F", "SR", "SS", "valid", "rate", "doc")
_PER_DOC = ("r_empty", "r_full", "f_empty", "f_full")

Guard = Callable[[int, int], np.ndarray]
"""``(row, candidates) -> allowed`` over one row's candidates (base first)."""


def _rule_settings(file: dict[str, np.ndarray]) -> tuple[int, float]:
    """(lookahead, tolerance) from a file's settings; the search's defaults where a file has none."""
    settings = json.loads(str(file["settings"])) if "settings" in file else {}
    return int(settings.get("lookahead", LOOKAHEAD_TOKENS)), float(
        settings.get("tolerance", LOOKAHEAD_TOLERANCE)
    )


def judge_split(
    search: RecoverabilitySearch,
    judge: Reconstructor,
    documents: Sequence[EvalDocument],
    rates: Sequence[float],
    chunk: int = 16,
    progress: Callable[[str], None] | None = None,
) -> dict[str, np.ndarray]:
    """The arrays of one split (see the module docstring): rows are (rate, document) pairs, candidates padded.

    :param search: a ``refine_lookahead:p`` search (lookahead and proposals on).
    :param judge: the evaluation's judge (real ``R`` and per-token ``F`` of every candidate).
    :param documents: context and continuation of each document.
    :param rates: asked rates.
    :param chunk: documents per batched search call.
    :param progress: called with a line after each chunk.
    """
    from tokenmask.envs.moves import judged_chunks
    from tokenmask.evaluate.compressor import check_rate
    from tokenmask.reconstructors.judge import continuation_token_nlls, recovery_nlls, separator_ids

    if not documents:
        raise ValueError(
            "judge_split got no documents. Fix: a corpus split with documents of at least C + T tokens."
        )
    for rate in rates:
        check_rate(rate)
    sep = separator_ids(judge)
    contexts = [list(d.context) for d in documents]
    continuations = [list(d.continuation) for d in documents]
    empty: list[list[int]] = [[] for _ in documents]
    arrays: dict[str, Any] = {
        "r_empty": recovery_nlls(judge, empty, contexts, sep),
        "r_full": recovery_nlls(judge, contexts, contexts, sep),
        "f_empty": np.stack(continuation_token_nlls(judge, empty, continuations)),
        "f_full": np.stack(continuation_token_nlls(judge, contexts, continuations)),
    }
    rows: list[dict[str, Any]] = []
    for rate, batch, judged, owners, prefixes in judged_chunks(search, contexts, rates, chunk):
        r = recovery_nlls(judge, prefixes, [contexts[d] for d in owners], sep)
        f = np.stack(continuation_token_nlls(judge, prefixes, [continuations[d] for d in owners]))
        first = 0
        for d, moves in zip(batch, judged):
            k = len(moves.masks)
            rows.append(
                {
                    "rate": rate,
                    "doc": d,
                    "R": r[first : first + k],
                    "F": f[first : first + k],
                    "SR": moves.r,
                    "SS": moves.s,
                }
            )
            first += k
        if progress is not None:
            progress(f"rate {rate}: {batch[-1] + 1}/{len(documents)} documents")
    width = max(len(row["R"]) for row in rows)
    tokens = arrays["f_full"].shape[1]
    arrays["R"], arrays["SR"], arrays["SS"] = (np.full((len(rows), width), np.inf) for _ in range(3))
    arrays["F"] = np.full((len(rows), width, tokens), np.nan)
    arrays["valid"] = np.zeros((len(rows), width), dtype=bool)
    for i, row in enumerate(rows):
        k = len(row["R"])
        for key in ("R", "F", "SR", "SS"):
            arrays[key][i, :k] = row[key]
        arrays["valid"][i, :k] = True
    arrays["rate"] = np.array([row["rate"] for row in rows])
    arrays["doc"] = np.array([row["doc"] for row in rows])
    arrays["sources"] = np.array([d.source for d in documents], dtype=str)
    return arrays


def save(path: str | Path, arrays: dict[str, np.ndarray], settings: dict[str, Any]) -> None:
    """One ``.npz`` with the arrays and the settings (JSON), written atomically."""
    from tokenmask.io import atomic_write_bytes

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays, settings=np.array(json.dumps(settings)))
    atomic_write_bytes(path, buffer.getvalue())


@dataclass
class Foresight:
    """Splits' arrays joined: per row (a document at a rate) its candidates; per document the references."""

    R: np.ndarray
    F: np.ndarray
    SR: np.ndarray
    SS: np.ndarray
    valid: np.ndarray
    rate: np.ndarray
    doc: np.ndarray
    r_empty: np.ndarray
    r_full: np.ndarray
    f_empty: np.ndarray
    f_full: np.ndarray
    lookahead: int = LOOKAHEAD_TOKENS
    """The rule's lookahead and tolerance: the files' settings (``judge`` writes them), else the search's defaults."""
    tolerance: float = LOOKAHEAD_TOLERANCE
    sources: np.ndarray | None = None
    """Per document, its corpus source (``judge`` writes them since stop 40, ``add-sources`` adds them to older
    files); ``None`` where a joined file has none."""

    @classmethod
    def load(cls, paths: Sequence[str | Path]) -> Foresight:
        """Join files written by ``judge`` (documents renumbered so each file's stay distinct)."""
        if not paths:
            raise ValueError("Foresight.load got no files. Fix: name the .npz files that `judge` wrote.")
        files = [dict(np.load(p, allow_pickle=False)) for p in paths]
        width = max(f["R"].shape[1] for f in files)
        fill = {"R": np.inf, "SR": np.inf, "SS": np.inf, "F": np.nan, "valid": False}
        joined: dict[str, Any] = {}
        for key in _PER_ROW + _PER_DOC:
            parts = []
            for f in files:
                value = f[key]
                if key in fill:
                    pad = [(0, 0), (0, width - value.shape[1])] + [(0, 0)] * (value.ndim - 2)
                    value = np.pad(value, pad, constant_values=fill[key])
                parts.append(value)
            joined[key] = np.concatenate(parts)
        offsets = np.cumsum([0] + [len(f["r_empty"]) for f in files[:-1]])
        joined["doc"] = np.concatenate([f["doc"] + o for f, o in zip(files, offsets)])
        rules = {_rule_settings(f) for f in files}
        if len(rules) > 1:
            raise ValueError(
                f"The files were judged with different lookahead rules {sorted(rules)}. Fix: join files of one search."
            )
        lookahead, tolerance = rules.pop()
        sources = (
            np.concatenate([f["sources"].astype(str) for f in files])
            if all("sources" in f for f in files)
            else None
        )
        return cls(**joined, lookahead=lookahead, tolerance=tolerance, sources=sources)

    def rows(self, rate: float) -> np.ndarray:
        """The rows at one asked rate."""
        return np.flatnonzero(np.isclose(self.rate, rate))

    def choose(self, row: int, guard: Guard) -> int:
        """The lowest search ``R`` among the allowed candidates, if it beats the base's; else the base (0)."""
        n = int(self.valid[row].sum())
        return guarded_choice(self.SR[row, :n], guard(row, n))

    def rule(self, row: int, n: int) -> np.ndarray:
        """The search's own guard: lookahead ``S`` within ``lookahead * tolerance`` nats of the base's."""
        return lookahead_allowed(self.SS[row, :n], self.lookahead, self.tolerance)

    def no_guard(self, row: int, n: int) -> np.ndarray:
        """Every candidate allowed (the lowest ``R`` wins)."""
        return np.ones(n, dtype=bool)

    def oracle(self, k: int, tol: float, with_rule: bool = False) -> Guard:
        """The guard that reads the real continuation's first ``k`` tokens (within ``k * tol`` nats of the base)."""

        def guard(row: int, n: int) -> np.ndarray:
            f = self.F[row, :n, :k].sum(axis=1)
            allowed = f <= f[0] + k * tol
            return allowed & self.rule(row, n) if with_rule else allowed

        return guard

    def terms(self, rate: float, guard: Guard, first: int = 0) -> dict[str, np.ndarray]:
        """Per row at ``rate`` (in file order), the guarded choice and its gains over the base with the references they
        are divided by: ``rec`` / ``rec_ref`` (``R``, nats) and ``ret`` / ``ret_ref`` (``F`` on continuation tokens
        ``first ..``); corpus changes are ``rec.sum() / rec_ref.sum()`` and ``ret.sum() / ret_ref.sum()``; ``doc`` the
        documents, ``choice`` the chosen candidates."""
        rows = self.rows(rate)
        docs = self.doc[rows]
        choice = np.array([self.choose(i, guard) for i in rows])
        return {
            "doc": docs,
            "choice": choice,
            "rec": self.R[rows, 0] - self.R[rows, choice],
            "rec_ref": self.r_empty[docs] - self.r_full[docs],
            "ret": self.F[rows, 0, first:].sum(axis=1) - self.F[rows, choice, first:].sum(axis=1),
            "ret_ref": (self.f_empty[docs, first:] - self.f_full[docs, first:]).sum(axis=1),
        }

    def changes(self, rate: float, guard: Guard, first: int = 0) -> tuple[float, float, float]:
        """(recoverability change, retention change on continuation tokens ``first ..``, share of moved rows)."""
        t = self.terms(rate, guard, first)
        d_rec = t["rec"].sum() / t["rec_ref"].sum()
        d_ret = t["ret"].sum() / t["ret_ref"].sum()
        return float(d_rec), float(d_ret), float((t["choice"] > 0).mean())


def guards(data: Foresight, k: int, tolerances: Sequence[float]) -> list[tuple[str, Guard]]:
    """The compared guards at foresight ``k``: the rule, none, and the oracle (alone and with the rule) per tolerance."""
    out: list[tuple[str, Guard]] = [
        ("rule (judge's lookahead)", data.rule),
        ("no guard", data.no_guard),
    ]
    if k:
        for tol in tolerances:
            out.append((f"oracle, first {k} real tokens, tol {tol:g}", data.oracle(k, tol)))
            out.append((f"rule + oracle, first {k}, tol {tol:g}", data.oracle(k, tol, with_rule=True)))
    return out


def oracle_table(
    data: Foresight, rates: Sequence[float], foresee: Sequence[int], tolerances: Sequence[float]
) -> list[list[str]]:
    """Rows (rate, scored tokens, guard, d rec, d ret, moved, meets) for every rate, ``k`` and guard."""
    tokens = data.F.shape[2]
    out = []
    for rate in rates:
        for k in foresee:
            for name, guard in guards(data, k, tolerances):
                d_rec, d_ret, moved = data.changes(rate, guard, first=k)
                meets = "meets" if d_rec >= GAIN and d_ret >= -SLACK else "-"
                out.append(
                    [
                        f"{rate:g}",
                        f"{k}..{tokens - 1}",
                        name,
                        f"{d_rec:+.3f}",
                        f"{d_ret:+.3f}",
                        f"{moved:.2f}",
                        meets,
                    ]
                )
    return out


def rule_terms(data: Foresight, rate: float) -> dict[str, np.ndarray]:
    """:meth:`Foresight.terms` of the search's own rule over the whole continuation."""
    return data.terms(rate, data.rule)


def concentration(data: Foresight, rate: float, top: int = 3) -> tuple[float, list[tuple[int, float]]]:
    """The rule's retention change at ``rate`` and the ``top`` documents contributing most to it (their terms sum to it)."""
    t = rule_terms(data, rate)
    terms = t["ret"] / t["ret_ref"].sum()
    order = np.argsort(terms)[:top]
    return float(terms.sum()), [(int(t["doc"][i]), float(terms[i])) for i in order]


def rarity(
    reference: Foresight,
    data: Foresight,
    rate: float,
    first: int | None = None,
    draws: int = 20000,
    seed: int = 0,
    by_source: bool = False,
) -> dict[str, float]:
    """Where the rule's changes on ``data`` (its first ``first`` documents, or all) sit among bootstrap draws from
    ``reference``: of as many documents (with replacement), or with ``by_source`` of whole *sources* (each with all
    its reference documents, drawn with replacement) until the draw holds as many documents (documents of one page
    are not independent; the document draws understate the spread where sources repeat).

    :return: ``n``, ``d_rec`` and ``d_ret`` of ``data``; the draws' mean ``d_ret``, the share of draws with
        ``d_ret`` at most ``data``'s (``p_low``), and the share meeting the bar (``p_meets``); with ``by_source``,
        also ``sources`` (how many ``data``'s documents come from) and ``draw_documents`` (the draws' mean size:
        ``n`` or a little more, as the last source drawn comes whole).
    :raises ValueError: ``by_source`` with a file that holds no sources.
    """
    ref, own = rule_terms(reference, rate), rule_terms(data, rate)
    n = len(own["doc"]) if first is None else min(first, len(own["doc"]))
    d_rec = own["rec"][:n].sum() / own["rec_ref"][:n].sum()
    d_ret = own["ret"][:n].sum() / own["ret_ref"][:n].sum()
    rng = np.random.default_rng(seed)
    extra: dict[str, float] = {}
    if by_source:
        if reference.sources is None or data.sources is None:
            raise ValueError(
                "rarity --by_source needs every file's document sources (files judged before stop 40 hold none). "
                "Fix: python benchmarks/foresight_oracle.py add-sources FILE ... (or judge those splits again)."
            )
        ids = group_ids(reference.sources[ref["doc"]].tolist())
        sizes = np.bincount(ids)
        picks = rng.integers(len(sizes), size=(draws, n))  # n picks always reach n documents
        before = np.cumsum(sizes[picks], axis=1) - sizes[picks]
        taken = np.zeros((draws, len(sizes)))
        rows = np.repeat(np.arange(draws), n).reshape(draws, n)
        np.add.at(taken, (rows[before < n], picks[before < n]), 1)  # whole sources until n documents
        weights = taken[:, ids]
        rec = (weights @ ref["rec"]) / (weights @ ref["rec_ref"])
        ret = (weights @ ref["ret"]) / (weights @ ref["ret_ref"])
        extra["sources"] = float(len(set(data.sources[own["doc"][:n]].tolist())))
        extra["draw_documents"] = float(np.mean(weights.sum(axis=1)))
    else:
        pick = rng.integers(len(ref["doc"]), size=(draws, n))
        rec = ref["rec"][pick].sum(axis=1) / ref["rec_ref"][pick].sum(axis=1)
        ret = ref["ret"][pick].sum(axis=1) / ref["ret_ref"][pick].sum(axis=1)
    return {
        **extra,
        "n": float(n),
        "d_rec": float(d_rec),
        "d_ret": float(d_ret),
        "draw_d_ret": float(ret.mean()),
        "p_low": float(np.mean(ret <= d_ret)),
        "p_meets": float(np.mean((rec >= GAIN) & (ret >= -SLACK))),
    }


def half_correlation(data: Foresight, rate: float) -> tuple[float, int]:
    """Median over rows (with 4+ candidates) of the correlation, across candidates, of ``F`` on the first and second
    halves of the continuation; and the number of rows it is taken over."""
    half = data.F.shape[2] // 2
    values = []
    for i in data.rows(rate):
        n = int(data.valid[i].sum())
        early, late = data.F[i, :n, :half].sum(axis=1), data.F[i, :n, half:].sum(axis=1)
        if n >= 4 and early.std() > 0 and late.std() > 0:
            values.append(float(np.corrcoef(early, late)[0, 1]))
    return (float(np.median(values)) if values else float("nan")), len(values)


def plot_oracle(
    panels: Sequence[tuple[str, Foresight]],
    rates: Sequence[float],
    foresee: Sequence[int],
    tolerance: float,
    path: str | Path,
) -> None:
    """Retention change on the tokens after the first ``k`` vs ``k``, per rate (columns) and file set (rows): the
    rule, no guard, the oracle and rule + oracle (tolerance ``tolerance``), truncation at 0 and the bar dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tokenmask.evaluate.reports import figure_png
    from tokenmask.io import atomic_write_bytes

    fig, axes = plt.subplots(
        len(panels), len(rates), figsize=(3.4 * len(rates), 2.8 * len(panels)), squeeze=False
    )
    styles = {
        "rule": ("C0", "-"),
        "no guard": ("C3", ":"),
        "oracle": ("C2", "--"),
        "rule + oracle": ("C1", "-."),
    }
    try:
        for row, (label, data) in enumerate(panels):
            for col, rate in enumerate(rates):
                ax = axes[row][col]
                lines: dict[str, list[float]] = {name: [] for name in styles}
                for k in foresee:
                    lines["rule"].append(data.changes(rate, data.rule, first=k)[1])
                    lines["no guard"].append(data.changes(rate, data.no_guard, first=k)[1])
                    lines["oracle"].append(
                        data.changes(rate, data.oracle(k, tolerance), first=k)[1] if k else np.nan
                    )
                    both = data.oracle(k, tolerance, with_rule=True)
                    lines["rule + oracle"].append(data.changes(rate, both, first=k)[1] if k else np.nan)
                for name, values in lines.items():
                    color, style = styles[name]
                    ax.plot(foresee, values, color=color, ls=style, marker="o", ms=3, label=name)
                ax.axhline(0.0, color="k", lw=0.8, label="truncation")
                ax.axhline(-SLACK, color="grey", ls=":", lw=0.8, label=f"bar (-{SLACK})")
                ax.set_title(f"{label}, rate {rate:g}", fontsize=9)
                ax.set_xlabel("k: real continuation tokens the guard reads", fontsize=8)
                if col == 0:
                    ax.set_ylabel("retention change on tokens k..T-1", fontsize=8)
        axes[0][-1].legend(fontsize=7)
        fig.suptitle("Foresight oracle: retention after the foreseen tokens, over truncation", fontsize=10)
        fig.tight_layout()
        atomic_write_bytes(path, figure_png(fig))
    finally:
        plt.close(fig)


def _judge(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from tokenmask.data import is_prepared_corpus
    from tokenmask.evaluate.compressor import MethodContext, build_method
    from tokenmask.evaluate.metrics import select_corpus_documents
    from tokenmask.evaluate.refine import RecoverabilitySearch
    from tokenmask.evaluate.reports import device_description
    from tokenmask.reconstructors import Reconstructor

    began = time.perf_counter()
    judge = Reconstructor.load(args.judge, device=args.device, dtype="float32", add_mask_token=False)
    documents = select_corpus_documents(args.corpus, args.split, judge, 256, 64, args.max_documents)
    search = build_method(args.method, MethodContext(judge=judge, device=args.device))
    if not isinstance(search, RecoverabilitySearch) or not search.lookahead or not search.proposals:
        raise SystemExit(f"--method must be a refine_lookahead:p search, got {args.method!r}.")
    rates = [float(r) for r in args.rates.split(",")]
    with tqdm(
        total=len(rates) * -(-len(documents) // args.chunk),
        desc=f"judging {args.corpus}" + (f" ({args.split})" if is_prepared_corpus(args.corpus) else ""),
        unit="chunk",
    ) as bar:
        arrays = judge_split(search, judge, documents, rates, args.chunk, progress=lambda line: bar.update(1))
    settings = {
        "corpus": args.corpus,
        "split": args.split,
        "documents": len(documents),
        "method": args.method,
        "lookahead": search.lookahead,
        "tolerance": search.lookahead_tolerance,
        "machine": device_description(judge.device),
        "seconds": round(time.perf_counter() - began, 1),
    }
    save(args.out, arrays, settings)
    print(
        f"{len(documents)} documents x {len(rates)} rates on {settings['machine']} in {settings['seconds']} s: {args.out}"
    )


def add_sources(path: str | Path, corpus: str | None, judge: Reconstructor, check: int = 2) -> list[str]:
    """Write into a file judged before ``judge`` kept sources the sources of its documents, atomically.

    The documents are selected again as ``judge`` selected them (the first long-enough texts of the file's split and
    corpus, as many as the file holds); the first and last ``check`` of them are scored again (their full-context
    continuation NLLs) and must match the file's, so a file is never given another selection's sources.

    :param corpus: the corpus the file was judged on (default: the one its settings name).
    :raises ValueError: when the settings name no split or corpus, or the re-selected documents do not match.
    """
    from tokenmask.evaluate.metrics import select_corpus_documents
    from tokenmask.reconstructors.judge import continuation_token_nlls

    arrays = dict(np.load(path, allow_pickle=False))
    settings = json.loads(str(arrays.pop("settings", "{}")))
    corpus = corpus or settings.get("corpus")
    if not corpus or "split" not in settings:
        raise ValueError(f"{path}: its settings name no corpus or split ({settings}). Fix: pass --corpus.")
    count = len(arrays["r_empty"])
    documents = select_corpus_documents(corpus, settings["split"], judge, 256, 64, count)
    picked = sorted({*range(min(check, count)), *range(max(count - check, 0), count)})
    again = continuation_token_nlls(
        judge, [list(documents[i].context) for i in picked], [list(documents[i].continuation) for i in picked]
    )
    if len(documents) != count or not all(
        np.allclose(a, arrays["f_full"][i], atol=0.05) for a, i in zip(again, picked)
    ):
        raise ValueError(
            f"{path}: the documents selected again from {corpus} ({settings['split']}) are not the file's. "
            "Fix: pass the --corpus it was judged on, or judge the split again."
        )
    arrays["sources"] = np.array([d.source for d in documents], dtype=str)
    save(path, arrays, settings)
    return [d.source for d in documents]


def _add_sources(args: argparse.Namespace) -> None:
    from tokenmask.reconstructors import Reconstructor

    judge = Reconstructor.load(args.judge, device=args.device, dtype="float32", add_mask_token=False)
    for path in args.files:
        try:
            sources = add_sources(path, args.corpus, judge)
        except ValueError as exc:
            raise SystemExit(str(exc)) from exc
        print(f"{path}: {len(sources)} documents from {len(set(sources))} sources")


def _analyse(args: argparse.Namespace) -> None:
    if args.plot_sets:
        sets = [part.split("=", 1) for part in args.plot_sets.split(";")]
        panels = [(label, Foresight.load(files.split(","))) for label, files in sets]
        rates = sorted({float(r) for r in panels[0][1].rate})
        foresee = [int(k) for k in args.foresee.split(",")]
        plot_oracle(panels, rates, foresee, float(args.tolerances.split(",")[0]), args.plot)
        print(f"plot: {args.plot}")
        return
    if not args.files:
        raise SystemExit(
            "analyse: no files. Fix: name the .npz files that `judge` wrote, or pass --plot_sets."
        )
    data = Foresight.load(args.files)
    rates = sorted({float(r) for r in data.rate})
    foresee = [int(k) for k in args.foresee.split(",")]
    tolerances = [float(t) for t in args.tolerances.split(",")]
    print(f"{len(set(data.doc.tolist()))} documents from {', '.join(args.files)}")
    print("| rate | retention on tokens | guard | d recoverability | d retention | moved | bar |")
    print("| --- | --- | --- | ---: | ---: | ---: | --- |")
    for row in oracle_table(data, rates, foresee, tolerances):
        print("| " + " | ".join(row) + " |")
    for rate in rates:
        total, worst = concentration(data, rate)
        corr, n = half_correlation(data, rate)
        listed = ", ".join(f"document {d}: {t:+.4f}" for d, t in worst)
        print(
            f"rate {rate:g}: the rule's retention change {total:+.4f}; most of it from {listed}; "
            f"correlation of F on the continuation's halves over a document's candidates, median {corr:+.3f} ({n} rows)"
        )


def _rarity(args: argparse.Namespace) -> None:
    reference = Foresight.load(args.reference.split(","))
    unit = "documents, in whole sources" if args.by_source else "documents"
    sources = "" if reference.sources is None else f" from {len(set(reference.sources.tolist()))} sources"
    print(
        f"The rule's change over truncation on each set, against {args.draws:,} bootstrap draws of as many {unit} "
        f"from {args.reference} ({len(set(reference.doc.tolist()))} documents{sources})"
    )
    print(
        "| set | rate | documents | d recoverability | d retention | draws: mean d retention | P(draw <= it) | P(draw meets) |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for part in args.sets.split(";"):
        label, files = part.split("=", 1)
        data = Foresight.load(files.split(","))
        for rate in sorted({float(r) for r in data.rate}):
            try:
                r = rarity(reference, data, rate, args.first, args.draws, args.seed, args.by_source)
            except ValueError as exc:  # a file without sources: one line with the fix, no traceback
                raise SystemExit(str(exc)) from exc
            count = f"{int(r['n'])}" + (
                f" ({int(r['sources'])} source{'s' * (r['sources'] != 1)}; draws {r['draw_documents']:.1f})"
                if "sources" in r
                else ""
            )
            print(
                f"| {label} | {rate:g} | {count} | {r['d_rec']:+.3f} | {r['d_ret']:+.3f} | {r['draw_d_ret']:+.3f} "
                f"| {r['p_low']:.4f} | {r['p_meets']:.2f} |"
            )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    judge = commands.add_parser("judge", help="judge a split's candidates with per-token continuation NLLs")
    judge.add_argument("--corpus", default="data_out/pydocs", help="prepared corpus folder or .jsonl")
    judge.add_argument("--split", default="validation")
    judge.add_argument("--max_documents", type=int, default=None, help="the first N long-enough documents")
    judge.add_argument("--rates", default="0.3,0.5,0.7")
    judge.add_argument(
        "--method", default="refine_lookahead:p:bf16:truncation", help="a refine_lookahead:p search"
    )
    judge.add_argument("--judge", default="default")
    judge.add_argument("--device", default="cuda")
    judge.add_argument("--chunk", type=int, default=16, help="documents per batched search call")
    judge.add_argument("--out", required=True, help=".npz to write")
    analyse = commands.add_parser("analyse", help="the oracle table of one or more judged files")
    analyse.add_argument("files", nargs="*", help="files written by judge (for the table)")
    analyse.add_argument(
        "--foresee", default="0,8,16,32", help="k: real continuation tokens the oracle reads"
    )
    analyse.add_argument("--tolerances", default="0.02,0", help="oracle tolerances, nats per foreseen token")
    analyse.add_argument(
        "--plot_sets",
        default="",
        help="instead of the table: a plot, one row per 'LABEL=FILE,FILE' set (';' between sets); the first tolerance",
    )
    analyse.add_argument("--plot", default="foresight_oracle.png", help="the plot's PNG (with --plot_sets)")
    rare = commands.add_parser(
        "rarity", help="where each set's rule changes sit among draws of a reference set"
    )
    rare.add_argument("--reference", required=True, help="comma-separated files of the reference set")
    rare.add_argument("--sets", required=True, help="'LABEL=FILE,FILE' sets, ';' between them")
    rare.add_argument("--first", type=int, default=None, help="only each set's first N documents")
    rare.add_argument("--draws", type=int, default=20000)
    rare.add_argument("--seed", type=int, default=0)
    rare.add_argument(
        "--by_source",
        action="store_true",
        help="draw whole sources (all their documents) until a draw holds as many documents (files need sources)",
    )
    add = commands.add_parser(
        "add-sources",
        help="give files judged before stop 40 their documents' sources (checked, written atomically)",
    )
    add.add_argument("files", nargs="+", help="files written by judge")
    add.add_argument(
        "--corpus", default=None, help="the corpus they were judged on (default: their settings')"
    )
    add.add_argument("--judge", default="default")
    add.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    {"judge": _judge, "analyse": _analyse, "rarity": _rarity, "add-sources": _add_sources}[args.command](args)


if __name__ == "__main__":
    main()
