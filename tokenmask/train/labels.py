"""``tokenmask label``: judge-searched span masks of training documents, the warm start of the policy.

For every document of a corpus with at least ``C + T`` judge tokens (cut into ``context`` and
``continuation`` exactly as ``tokenmask evaluate`` does, :func:`~tokenmask.evaluate.metrics.select_documents`)
and every rate ``r``, the search picks the keep mask of the context that maximises, for that document,

    J = recoverability + retention_weight * retention

with the per-document forms of docs/evaluation.md's metrics, computed with the judge NLLs of
:mod:`tokenmask.evaluate.metrics` on the kept ids (no re-tokenization):
``recoverability = (R(empty) - R(kept)) / (R(empty) - R(context))``, ``R(p) = NLL(context | BOS + p + sep)``;
``retention = (F(empty) - F(kept)) / (F(empty) - F(context))``, ``F(p) = NLL(continuation | BOS + p)``.

Candidates, all dropping exactly ``round(r * C)`` tokens (as every baseline does):

* ``candidates`` random span masks, distinct, drawn uniformly: a random priority order of the
  ``span``-token spans; the lowest spans are dropped, the last one needed is cut at its first tokens
  (the rule of the ``span_self_information`` baseline, :func:`~tokenmask.evaluate.baselines.span_means`
  + :func:`~tokenmask.evaluate.baselines.drop_lowest`);
* the structured masks of the baselines ``truncation`` (keep the last tokens), ``truncation_first``
  and ``span_self_information:SPAN``.

All candidates of ``documents_per_batch`` documents are scored in batched judge passes; the best
by ``J`` is kept, then improved by ``swap_rounds`` rounds of best-improvement swaps (exchange the
keep patterns of two neighbouring spans, one dropped and one kept, when that raises ``J``).
Randomness is seeded per ``(seed, document, rate)``, and documents are scored in fixed groups of
``documents_per_batch``, so the labels do not depend on how many processes share the work.

Data-parallel with ``accelerate``: ``accelerate launch --num_processes N -m tokenmask.train.labels
--config FILE`` splits the document groups between processes; the main process gathers and writes
``OUTPUT_DIR/labels`` (a ``datasets.Dataset``, ``save_to_disk``) and ``OUTPUT_DIR/label_config.json``
(the settings and the summary table), atomically. Labels are chosen with each document's own
continuation: measure a policy cloned on them only on documents it was not trained on.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tokenmask.config import add_config_arguments, config_from_args
from tokenmask.evaluate.compressor import check_rate
from tokenmask.io import atomic_write_json, check_output_dir, replace_dir, temporary_dir_beside

# the judge-side modules (torch, transformers) are imported where they are used, so that
# `tokenmask label --help` and its argument errors answer before torch loads
if TYPE_CHECKING:
    from accelerate import Accelerator
    from datasets import Dataset

    from tokenmask.evaluate.metrics import EvalDocument, ReferenceNLLs
    from tokenmask.reconstructors import Reconstructor

LABELS_SUBDIR = "labels"
"""Folder of the ``datasets.Dataset`` inside a labels output folder."""
LABEL_CONFIG_FILE = "label_config.json"
"""The settings (and the summary) beside the dataset."""
LABEL_COLUMNS: tuple[str, ...] = (
    "doc_index",
    "source",
    "rate",
    "span",
    "context_ids",
    "continuation_ids",
    "keep",
    "span_keep",
    "recoverability",
    "retention",
    "objective",
    "objective_before_swaps",
    "origin",
)
"""Columns of the labels dataset, one row per (document, rate)."""
STRUCTURED_CANDIDATES: tuple[str, ...] = ("truncation", "truncation_first", "span_self_information")
"""The baselines' masks that are always among the candidates (the label is never worse than them by J)."""
RANDOM_ORIGIN = "random"
MOVES_ORIGIN = "moves"
SWAP_SUFFIX = "+swap"
LABEL_FAMILIES: tuple[str, ...] = ("random", "refine")
"""Values of ``LabelConfig.family``: which masks the label is chosen among."""


# ---------------------------------------------------------------------------------------- config
@dataclass
class LabelConfig:
    """Options of ``tokenmask label`` (any key can be set in a JSON config or on the CLI)."""

    data_path: str = field(
        default="sample", metadata={"help": "prepared corpus folder, .jsonl/.txt file or folder, or 'sample'"}
    )
    split: str = field(
        default="train",
        metadata={"help": "split of a prepared corpus folder (label training documents only)"},
    )
    text_column: str = field(default="text", metadata={"help": "JSONL key / dataset column holding the text"})
    judge_name: str = field(
        default="default",
        metadata={"help": "judge model name or saved folder (default: embedded SmolLM2-135M-Instruct)"},
    )
    judge_dtype: str = field(
        default="float32",
        metadata={"help": "judge dtype (float32 as tokenmask evaluate; bfloat16 is faster on a GPU)"},
    )
    device: str = field(
        default="auto", metadata={"help": "auto (accelerate gives each process its device) or cpu"}
    )
    context_tokens: int = field(default=256, metadata={"help": "C: context tokens per document"})
    continuation_tokens: int = field(default=64, metadata={"help": "T: continuation tokens per document"})
    span: int = field(default=16, metadata={"help": "tokens per span: the unit candidates drop and keep"})
    rates: list[float] = field(
        default_factory=lambda: [0.3, 0.5, 0.7], metadata={"help": "rates to label, each in [0, 1)"}
    )
    candidates: int = field(
        default=64, metadata={"help": "N: distinct random span masks per document and rate"}
    )
    swap_rounds: int = field(
        default=1, metadata={"help": "rounds of neighbouring-span swaps after the best candidate (0: off)"}
    )
    retention_weight: float = field(
        default=0.5, metadata={"help": "lambda of J = recoverability + lambda * retention"}
    )
    family: str = field(
        default="random",
        metadata={
            "help": "random: the baselines' masks + N random span masks (+ swaps); refine: truncation and its moves as refine:truncation tries them (tokenmask/evaluate/refine.py), so with retention_weight 0 the label is refine:truncation's mask and needs no continuation"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of the random candidates (per document and rate)"})
    max_documents: int | None = field(
        default=None, metadata={"help": "label the first N long-enough documents (None: all)"}
    )
    batch_size: int | None = field(
        default=None, metadata={"help": "judge sequences per forward pass (default: 64 on cuda, 8 on cpu)"}
    )
    documents_per_batch: int = field(
        default=8,
        metadata={
            "help": "documents whose candidates are scored together (fixed groups: labels do not depend on the process count)"
        },
    )
    output_dir: str = field(
        default="runs/labels",
        metadata={"help": "output folder: labels/ (datasets) and label_config.json, replaced atomically"},
    )
    overwrite: bool = field(
        default=False,
        metadata={"help": "replace output_dir even if tokenmask did not write it (its files are deleted)"},
    )

    def __post_init__(self) -> None:
        if self.context_tokens < 1 or self.continuation_tokens < 1:
            raise ValueError(
                f"context_tokens and continuation_tokens must be >= 1, got {self.context_tokens}, {self.continuation_tokens}. "
                "Fix: e.g. --context_tokens 256 --continuation_tokens 64."
            )
        if not 1 <= self.span <= self.context_tokens:
            raise ValueError(
                f"span must be in [1, context_tokens={self.context_tokens}], got {self.span}. Fix: e.g. --span 16."
            )
        if not self.rates:
            raise ValueError("No rate given. Fix: e.g. --rates 0.3,0.5,0.7.")
        self.rates = [check_rate(r) for r in self.rates]
        if len(set(self.rates)) != len(self.rates):
            raise ValueError(f"rates {self.rates} repeat a rate. Fix: list each rate once.")
        if self.candidates < 0:
            raise ValueError(f"candidates must be >= 0, got {self.candidates}. Fix: e.g. --candidates 64.")
        if self.swap_rounds < 0:
            raise ValueError(f"swap_rounds must be >= 0, got {self.swap_rounds}. Fix: 0 turns the swaps off.")
        if not math.isfinite(self.retention_weight) or self.retention_weight < 0:
            raise ValueError(
                f"retention_weight must be a finite number >= 0, got {self.retention_weight}. Fix: e.g. 0.5."
            )
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0 (it seeds numpy generators), got {self.seed}.")
        if self.family not in LABEL_FAMILIES:
            raise ValueError(f"Unknown family {self.family!r}. Fix: use one of {list(LABEL_FAMILIES)}.")
        if self.max_documents is not None and self.max_documents < 1:
            raise ValueError(f"max_documents must be >= 1 or None, got {self.max_documents}.")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {self.batch_size}.")
        if self.documents_per_batch < 1:
            raise ValueError(f"documents_per_batch must be >= 1, got {self.documents_per_batch}.")
        if self.device not in ("auto", "cpu"):
            raise ValueError(
                f"device must be 'auto' or 'cpu', got {self.device!r}: with accelerate each process takes its own device. "
                "Fix: --device auto (GPUs through accelerate launch) or --device cpu."
            )


# ---------------------------------------------------------------------------------------- masks
def span_priority_mask(priority: np.ndarray, length: int, span: int, rate: float) -> np.ndarray:
    """Keep mask dropping ``round(rate * length)`` tokens, whole spans of lowest ``priority`` first.

    As the ``span_self_information`` baseline drops spans (same functions): span ``k`` covers
    tokens ``[k * span, (k + 1) * span)``; the last span needed is cut at its first tokens.

    :param priority: one value per span (``ceil(length / span)``); lower = dropped first.
    :return: bool array, ``True`` = kept.
    """
    spans = math.ceil(length / span)
    priority = np.asarray(priority, dtype=np.float64)
    if priority.shape != (spans,):
        raise ValueError(f"priority needs one value per span ({spans}), got shape {priority.shape}.")
    from tokenmask.evaluate.baselines import drop_lowest, span_means

    return drop_lowest(span_means(np.repeat(priority, span)[:length], span), rate)


def random_span_masks(
    rng: np.random.Generator, length: int, span: int, rate: float, count: int
) -> list[np.ndarray]:
    """Up to ``count`` distinct span masks (:func:`span_priority_mask` of uniform random span orders).

    Fewer come back when the rate leaves fewer distinct masks (tried ``20 * count`` orders at most).
    """
    spans = math.ceil(length / span)
    seen: set[bytes] = set()
    masks: list[np.ndarray] = []
    for _ in range(20 * count):
        if len(masks) >= count:
            break
        keep = span_priority_mask(rng.permutation(spans).astype(np.float64), length, span, rate)
        key = np.packbits(keep).tobytes()
        if key not in seen:
            seen.add(key)
            masks.append(keep)
    return masks


def span_slices(length: int, span: int) -> list[slice]:
    """The token ranges of the spans of a ``length``-token context (the last one may be shorter)."""
    return [slice(s, min(s + span, length)) for s in range(0, length, span)]


def span_keep_from_keep(keep: np.ndarray, span: int) -> np.ndarray:
    """Per span, ``True`` = kept: at least half of its tokens are kept (a span cut to hit the rate counts by its majority)."""
    keep = np.asarray(keep, dtype=bool)
    return np.array([keep[s].mean() >= 0.5 for s in span_slices(len(keep), span)], dtype=bool)


def swap_variants(keep: np.ndarray, span: int) -> list[np.ndarray]:
    """Masks with the keep patterns of two neighbouring equal-length spans exchanged (where they differ).

    Every variant drops as many tokens as ``keep``: a dropped span moves one span left or right.
    """
    keep = np.asarray(keep, dtype=bool)
    slices = span_slices(len(keep), span)
    variants: list[np.ndarray] = []
    for left, right in zip(slices[:-1], slices[1:]):
        a, b = keep[left], keep[right]
        if len(a) != len(b) or np.array_equal(a, b):
            continue
        variant = keep.copy()
        variant[left], variant[right] = b, a
        variants.append(variant)
    return variants


def candidate_rng(seed: int, document: int, rate: float) -> np.random.Generator:
    """The generator of one (document, rate): ``default_rng([seed, document, round(rate * 1000)])``."""
    return np.random.default_rng([int(seed), int(document), int(round(rate * 1000))])


# ---------------------------------------------------------------------------------------- search
@dataclass
class DocumentLabel:
    """The searched mask of one document at one rate, with its judge NLLs (nats).

    :param doc_index: index of the document among the selected (long-enough) documents.
    :param source: where the document came from.
    :param rate: the rate labelled.
    :param span: tokens per span of the search.
    :param context_ids: the C context ids (judge vocabulary).
    :param continuation_ids: the T continuation ids.
    :param keep: per context token, ``True`` = kept.
    :param recoverability: the document's recoverability of the kept ids.
    :param retention: the document's retention of the kept ids.
    :param objective: ``recoverability + retention_weight * retention``.
    :param objective_before_swaps: ``objective`` of the best candidate, before the swap rounds.
    :param origin: the candidate it came from (``random``, a baseline name), ``+swap`` when swaps changed it.
    :param nlls: ``R(empty), R(context), R(kept), F(empty), F(context), F(kept)``.
    :param baselines: per structured candidate, its ``(R(kept), F(kept))``.
    """

    doc_index: int
    source: str
    rate: float
    span: int
    context_ids: list[int]
    continuation_ids: list[int]
    keep: np.ndarray
    recoverability: float
    retention: float
    objective: float
    objective_before_swaps: float
    origin: str
    nlls: dict[str, float] = field(default_factory=dict)
    baselines: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def span_keep(self) -> np.ndarray:
        """Per span, ``True`` = kept (see :func:`span_keep_from_keep`)."""
        return span_keep_from_keep(self.keep, self.span)

    def row(self) -> dict[str, Any]:
        """The dataset row (see :data:`LABEL_COLUMNS`)."""
        return {
            "doc_index": self.doc_index,
            "source": self.source,
            "rate": self.rate,
            "span": self.span,
            "context_ids": list(self.context_ids),
            "continuation_ids": list(self.continuation_ids),
            "keep": self.keep.tolist(),
            "span_keep": self.span_keep.tolist(),
            "recoverability": self.recoverability,
            "retention": self.retention,
            "objective": self.objective,
            "objective_before_swaps": self.objective_before_swaps,
            "origin": self.origin,
        }


@dataclass
class _Candidate:
    doc: int  # position in the group
    rate: int  # position in config.rates
    origin: str
    keep: np.ndarray


class LabelSearch:
    """The search of :mod:`tokenmask.train.labels` on one judge (no ``accelerate`` in here).

    :param judge: the frozen judge (loaded without a mask token, as ``tokenmask evaluate`` does).
    :param config: the label settings (span, rates, candidates, swap rounds, weight, seed).
    """

    def __init__(self, judge: Reconstructor, config: LabelConfig) -> None:
        from tokenmask.evaluate.baselines import SpanSelfInformationDrop, Truncation
        from tokenmask.evaluate.metrics import separator_ids

        self.judge = judge
        self.config = config
        self.sep = separator_ids(judge)
        self._truncation = Truncation(judge.tokenizer, keep="last")
        self._truncation_first = Truncation(judge.tokenizer, keep="first")
        self._span_si = SpanSelfInformationDrop(judge, span=config.span)

    # ------------------------------------------------------------------ scoring
    def objectives(
        self, reference: ReferenceNLLs, docs: Sequence[EvalDocument], candidates: Sequence[_Candidate]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(J, recoverability, retention, R(kept), F(kept))`` per candidate, from two batched judge passes."""
        from tokenmask.evaluate.metrics import continuation_nlls, information_ratio, recovery_nlls

        if not candidates:
            empty = np.zeros(0)
            return empty, empty, empty, empty, empty
        prefixes = [np.asarray(docs[c.doc].context)[c.keep].tolist() for c in candidates]
        recover = recovery_nlls(self.judge, prefixes, [docs[c.doc].context for c in candidates], self.sep)
        cont = continuation_nlls(self.judge, prefixes, [docs[c.doc].continuation for c in candidates])
        rec = np.array(
            [
                information_ratio([reference.recover_empty[c.doc]], [r], [reference.recover_full[c.doc]])
                for c, r in zip(candidates, recover)
            ]
        )
        ret = np.array(
            [
                information_ratio([reference.continue_empty[c.doc]], [f], [reference.continue_full[c.doc]])
                for c, f in zip(candidates, cont)
            ]
        )
        return rec + self.config.retention_weight * ret, rec, ret, recover, cont

    # ------------------------------------------------------------------ one group of documents
    def structured_candidates(self, docs: Sequence[EvalDocument], rate: float) -> dict[str, list[np.ndarray]]:
        """The baselines' keep masks of the documents at ``rate`` (the ones in :data:`STRUCTURED_CANDIDATES`)."""
        contexts = [d.context for d in docs]
        return {
            "truncation": self._truncation.keep_masks(contexts, rate),
            "truncation_first": self._truncation_first.keep_masks(contexts, rate),
            "span_self_information": self._span_si.keep_masks(contexts, rate),
        }

    def label_group(self, docs: Sequence[EvalDocument], doc_indices: Sequence[int]) -> list[DocumentLabel]:
        """Labels of a group of documents at every rate, in (document, rate) order.

        :param docs: the documents (context and continuation in judge ids).
        :param doc_indices: their indices among the selected documents (they seed the candidates).
        """
        from tokenmask.evaluate.metrics import ReferenceNLLs, information_ratio

        config = self.config
        reference = ReferenceNLLs.compute(self.judge, docs, self.sep)
        candidates: list[_Candidate] = []
        for r, rate in enumerate(config.rates):
            structured = self.structured_candidates(docs, rate)
            for name, masks in structured.items():
                candidates.extend(
                    _Candidate(d, r, name, np.asarray(m, dtype=bool)) for d, m in enumerate(masks)
                )
            if config.family == "refine":
                from tokenmask.evaluate.refine import DEFAULT_MOVES, DEFAULT_STRIDE, move_variants

                for d, keep in enumerate(structured["truncation"]):
                    moved = move_variants(np.asarray(keep, dtype=bool), DEFAULT_MOVES, DEFAULT_STRIDE)
                    candidates.extend(_Candidate(d, r, MOVES_ORIGIN, m) for m in moved)
                continue
            for d, (doc, index) in enumerate(zip(docs, doc_indices)):
                rng = candidate_rng(config.seed, index, rate)
                masks = random_span_masks(rng, len(doc.context), config.span, rate, config.candidates)
                candidates.extend(_Candidate(d, r, RANDOM_ORIGIN, m) for m in masks)
        j, _, _, recover, cont = self.objectives(reference, docs, candidates)
        # the refine family chooses among truncation and its moves only (the other baselines are scored for the summary)
        allowed = {"truncation", MOVES_ORIGIN} if config.family == "refine" else None
        best: dict[tuple[int, int], int] = {}
        for i, c in enumerate(candidates):
            if allowed is not None and c.origin not in allowed:
                continue
            key = (c.doc, c.rate)
            if key not in best or _better(j[i], j[best[key]]):
                best[key] = i
        chosen = {
            key: (candidates[i], float(j[i]), float(recover[i]), float(cont[i])) for key, i in best.items()
        }
        before = {key: value[1] for key, value in chosen.items()}
        baselines = {
            (c.doc, c.rate, c.origin): (float(recover[i]), float(cont[i]))
            for i, c in enumerate(candidates)
            if c.origin in STRUCTURED_CANDIDATES
        }
        for _ in range(
            config.swap_rounds if config.family == "random" else 0
        ):  # refine labels stay refine's masks
            variants = [
                _Candidate(c.doc, c.rate, c.origin, v)
                for c, *_ in chosen.values()
                for v in swap_variants(c.keep, config.span)
            ]
            vj, _, _, vrec, vcont = self.objectives(reference, docs, variants)
            improved = False
            for i, v in enumerate(variants):
                key = (v.doc, v.rate)
                if _better(vj[i], chosen[key][1]):
                    origin = v.origin if v.origin.endswith(SWAP_SUFFIX) else v.origin + SWAP_SUFFIX
                    chosen[key] = (
                        _Candidate(v.doc, v.rate, origin, v.keep),
                        float(vj[i]),
                        float(vrec[i]),
                        float(vcont[i]),
                    )
                    improved = True
            if not improved:
                break
        labels: list[DocumentLabel] = []
        for d, (doc, index) in enumerate(zip(docs, doc_indices)):
            for r, rate in enumerate(config.rates):
                c, objective, r_kept, f_kept = chosen[(d, r)]
                nlls = {
                    "recover_empty": float(reference.recover_empty[d]),
                    "recover_full": float(reference.recover_full[d]),
                    "recover_kept": r_kept,
                    "continue_empty": float(reference.continue_empty[d]),
                    "continue_full": float(reference.continue_full[d]),
                    "continue_kept": f_kept,
                }
                labels.append(
                    DocumentLabel(
                        doc_index=int(index),
                        source=doc.source,
                        rate=float(rate),
                        span=config.span,
                        context_ids=[int(t) for t in doc.context],
                        continuation_ids=[int(t) for t in doc.continuation],
                        keep=c.keep,
                        recoverability=information_ratio(
                            [nlls["recover_empty"]], [r_kept], [nlls["recover_full"]]
                        ),
                        retention=information_ratio(
                            [nlls["continue_empty"]], [f_kept], [nlls["continue_full"]]
                        ),
                        objective=objective,
                        objective_before_swaps=before[(d, r)],
                        origin=c.origin,
                        nlls=nlls,
                        baselines={name: baselines[(d, r, name)] for name in STRUCTURED_CANDIDATES},
                    )
                )
        return labels


def _better(candidate: float, incumbent: float) -> bool:
    """``candidate > incumbent``, NaN (a document the full context does not help) never better."""
    if math.isnan(candidate):
        return False
    return math.isnan(incumbent) or candidate > incumbent


# ---------------------------------------------------------------------------------------- the command
def load_judge(config: LabelConfig, device: Any) -> Reconstructor:
    """The frozen judge of the search on ``device`` (``tiny-random``: the unit tests' tiny model)."""
    from tokenmask.reconstructors import Reconstructor

    if config.judge_name == "tiny-random":
        from tokenmask.testing import tiny_reconstructor

        return tiny_reconstructor(seed=0, device=device, batch_size=config.batch_size)
    return Reconstructor.load(
        config.judge_name,
        device=device,
        dtype=config.judge_dtype,
        add_mask_token=False,
        batch_size=config.batch_size,
    )


def select_label_documents(config: LabelConfig, judge: Reconstructor) -> list[EvalDocument]:
    """The documents to label: as ``tokenmask evaluate`` selects them, from ``data_path``'s ``split``."""
    from tokenmask.data import iter_texts
    from tokenmask.evaluate.metrics import select_documents

    texts = list(iter_texts(config.data_path, split=config.split, text_column=config.text_column))
    return select_documents(
        texts, judge, config.context_tokens, config.continuation_tokens, config.max_documents
    )


def document_groups(count: int, size: int) -> list[list[int]]:
    """Document indices in fixed groups of ``size`` (the unit of work split between processes)."""
    return [list(range(start, min(count, start + size))) for start in range(0, count, size)]


def make_labels(
    config: LabelConfig,
    judge: Reconstructor | None = None,
    accelerator: Accelerator | None = None,
    progress: bool = True,
) -> list[DocumentLabel]:
    """Search the labels of every selected document and rate; every process gets all of them.

    :param config: the settings.
    :param judge: an already loaded judge (single process use); default: ``judge_name`` on the
        process's device.
    :param accelerator: default: ``Accelerator(cpu=config.device == "cpu")``.
    :param progress: tqdm bar over this process's document groups (main process only).
    :return: labels sorted by (document, rate).
    """
    from accelerate import Accelerator
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    accelerator = accelerator if accelerator is not None else Accelerator(cpu=config.device == "cpu")
    judge = judge if judge is not None else load_judge(config, accelerator.device)
    docs = select_label_documents(config, judge)
    search = LabelSearch(judge, config)
    groups = document_groups(len(docs), config.documents_per_batch)
    mine: list[DocumentLabel] = []
    with accelerator.split_between_processes(groups) as assigned:
        bar = tqdm(
            assigned,
            desc=f"label ({accelerator.num_processes} proc.)",
            unit="group",
            disable=not (progress and accelerator.is_main_process),
        )
        for group in bar:
            mine.extend(search.label_group([docs[i] for i in group], group))
    labels: list[DocumentLabel] = gather_object(mine)
    return sorted(labels, key=lambda label: (label.doc_index, config.rates.index(label.rate)))


def labels_dataset(labels: Sequence[DocumentLabel], config: LabelConfig | None = None) -> Dataset:
    """The labels as a ``datasets.Dataset`` (:data:`LABEL_COLUMNS`), the settings in its description."""
    from datasets import Dataset, DatasetInfo

    rows = [label.row() for label in labels]
    columns = {name: [row[name] for row in rows] for name in LABEL_COLUMNS}
    description = json.dumps({"label_config": asdict(config)}) if config is not None else ""
    return Dataset.from_dict(columns, info=DatasetInfo(description=description))


def summary(labels: Sequence[DocumentLabel], rates: Sequence[float]) -> list[dict[str, Any]]:
    """Per rate, corpus recoverability / retention (ratios of sums, as docs/evaluation.md) of the labels and each structured baseline.

    Plus the mean per-document objective of the labels before and after the swap rounds.
    """
    from tokenmask.evaluate.metrics import information_ratio

    rows: list[dict[str, Any]] = []
    for rate in rates:
        chosen = [label for label in labels if label.rate == rate]
        if not chosen:
            continue

        nll = {
            key: [label.nlls[key] for label in chosen]
            for key in ("recover_empty", "recover_full", "continue_empty", "continue_full")
        }
        methods = {"labels": [(label.nlls["recover_kept"], label.nlls["continue_kept"]) for label in chosen]}
        for name in STRUCTURED_CANDIDATES:
            methods[name] = [label.baselines[name] for label in chosen]
        row: dict[str, Any] = {"rate": rate, "documents": len(chosen)}
        for name, kept in methods.items():
            row[f"{name}_recoverability"] = information_ratio(
                nll["recover_empty"], [k[0] for k in kept], nll["recover_full"]
            )
            row[f"{name}_retention"] = information_ratio(
                nll["continue_empty"], [k[1] for k in kept], nll["continue_full"]
            )
        row["objective_before_swaps"] = float(np.nanmean([label.objective_before_swaps for label in chosen]))
        row["objective"] = float(np.nanmean([label.objective for label in chosen]))
        row["swapped"] = sum(label.origin.endswith(SWAP_SUFFIX) for label in chosen)
        rows.append(row)
    return rows


def summary_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: per rate, recoverability / retention of the labels beside each structured baseline."""
    methods = ["labels", *STRUCTURED_CANDIDATES]
    lines = [
        "| rate | docs | "
        + " | ".join(f"{m} rec / ret" for m in methods)
        + " | mean J before / after swaps | swapped |",
        "| --- | --- | " + " | ".join("---" for _ in methods) + " | --- | --- |",
    ]
    for row in rows:
        cells = [f"{row[f'{m}_recoverability']:.3f} / {row[f'{m}_retention']:.3f}" for m in methods]
        lines.append(
            f"| {row['rate']:.2f} | {row['documents']} | "
            + " | ".join(cells)
            + f" | {row['objective_before_swaps']:.3f} / {row['objective']:.3f} | {row['swapped']} |"
        )
    return "\n".join(lines)


def write_labels(
    labels: Sequence[DocumentLabel], config: LabelConfig, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``output_dir/labels`` (``save_to_disk``) and ``output_dir/label_config.json``, atomically.

    :param extra: more entries of ``label_config.json`` (e.g. timing).
    :return: the output folder.
    """
    target = Path(config.output_dir)
    tmp = temporary_dir_beside(target)
    labels_dataset(labels, config).save_to_disk(str(tmp / LABELS_SUBDIR))
    atomic_write_json(
        tmp / LABEL_CONFIG_FILE,
        {
            "label_config": asdict(config),
            "labels": len(labels),
            "documents": len({label.doc_index for label in labels}),
            "summary": summary(labels, config.rates),
            **(extra or {}),
        },
    )
    return replace_dir(tmp, target, overwrite=config.overwrite)


def load_labels(path: str | Path) -> Dataset:
    """The labels dataset of a ``tokenmask label`` output folder (or of its ``labels`` subfolder).

    :raises FileNotFoundError: if the folder holds no labels.
    """
    from datasets import load_from_disk

    folder = Path(path)
    dataset_dir = folder / LABELS_SUBDIR if (folder / LABELS_SUBDIR).is_dir() else folder
    if not (dataset_dir / "dataset_info.json").is_file():
        raise FileNotFoundError(
            f"{path} holds no labels dataset. Fix: pass the output_dir of `tokenmask label`."
        )
    dataset = load_from_disk(str(dataset_dir))
    missing = [c for c in ("context_ids", "keep", "rate", "span") if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"{path} is not a labels dataset (no column(s) {missing}). Fix: pass the output_dir of `tokenmask label`."
        )
    return dataset


def check_label_inputs(config: LabelConfig) -> None:
    """Refuse, before any model loads, an output folder tokenmask may not replace and a corpus without text.

    :raises OutputExistsError: see :func:`~tokenmask.io.check_output_dir`.
    :raises InputError: when ``data_path``'s ``split`` holds no text (a missing path raises its own clear error).
    """
    from tokenmask.data import iter_texts
    from tokenmask.errors import InputError

    check_output_dir(config.output_dir, config.overwrite)
    if (
        next(iter(iter_texts(config.data_path, split=config.split, text_column=config.text_column)), None)
        is None
    ):
        raise InputError(
            f"{config.data_path} (split {config.split!r}) holds no text to label. Fix: pass a corpus with texts "
            "(a prepared corpus folder, a .jsonl/.txt file, or 'sample')."
        )


def run_labels(config: LabelConfig, progress: bool = True) -> list[DocumentLabel]:
    """Check the inputs, search (all processes), then write and print the summary (main process); returns the labels."""
    from accelerate import Accelerator

    check_label_inputs(config)
    accelerator = Accelerator(cpu=config.device == "cpu")
    started = time.perf_counter()
    labels = make_labels(config, accelerator=accelerator, progress=progress)
    seconds = time.perf_counter() - started
    if accelerator.is_main_process:
        extra = {
            "processes": accelerator.num_processes,
            "device": str(accelerator.device),
            "search_seconds": round(seconds, 1),
        }
        write_labels(labels, config, extra)
        print(summary_table(summary(labels, config.rates)))
        print(
            f"{len(labels)} labels of {len({label.doc_index for label in labels})} documents in {seconds:.1f} s "
            f"on {accelerator.num_processes} process(es), written to {config.output_dir}"
        )
    accelerator.wait_for_everyone()
    return labels


# ---------------------------------------------------------------------------------------- CLI
def _add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, LabelConfig)
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``tokenmask label``."""
    parser = subparsers.add_parser(
        "label",
        help="search judge-optimal span masks of training documents (the policy's warm start), data-parallel with accelerate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    run_labels(config_from_args(LabelConfig, args), progress=not args.no_progress)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tokenmask.train.labels`` (also under ``accelerate launch``); errors a user can fix exit with status 2."""
    parser = argparse.ArgumentParser(
        prog="tokenmask label", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _add_arguments(parser)
    args = parser.parse_args(argv)
    from tokenmask.errors import TokenmaskError

    try:
        return _run(args)
    except (ValueError, FileNotFoundError, TokenmaskError) as exc:
        print(f"tokenmask label: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
