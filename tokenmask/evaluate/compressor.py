"""The interfaces every compression method implements, and the registry ``tokenmask evaluate`` reads.

Two families are measured on the same table (see ``docs/evaluation.md``):

* :class:`Compressor` — *text* compressors. They receive each context as judge token ids (and
  its decoded text) plus a target rate, and return the compressed text, which the evaluation
  re-tokenizes with the judge's tokenizer. Masking methods (every baseline but LLMLingua, the RL
  agent) derive from :class:`MaskingCompressor` and only decide a keep mask over the ids; the
  base class turns it into readable text (:func:`join_kept`: dropped whitespace leaves one
  separator, so words never fuse) and corrects the mask so that text hits the rate
  (:meth:`MaskingCompressor.fit_rate`).
* :class:`InModelCompressor` — compressors that act *inside* the model (activation clustering,
  KV-cache pruning). They return the judge NLLs obtained with what the model kept.

Methods are named on the command line as ``prefix`` or ``prefix:argument`` (``random``,
``agent:runs/ppo1``, ``activation:configs/dev/act.json``). :func:`register_method` maps a prefix
to a factory; :func:`build_method` turns a name into a method object. Plug-ins register
themselves when their package is imported: the first time an unknown prefix is asked for, the
modules listed for it in :data:`PLUGIN_MODULES` are imported, so ``tokenmask.evaluate`` never
imports the agent or the activation code at import time.

Example (what ``tokenmask/train`` does for the agent)::

    from tokenmask.evaluate.compressor import MaskingCompressor, register_method

    class AgentCompressor(MaskingCompressor):
        def keep_masks(self, contexts, rate, seed=0):
            ...  # one bool array per context, True = keep

    register_method("agent", lambda arg, ctx: AgentCompressor.load(arg, ctx.judge))
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # imported for annotations only, so this module stays light
    from transformers import PreTrainedTokenizerBase

    from tokenmask.reconstructors import MaskMode, Reconstructor

TokenIds = Sequence[int]


# ---------------------------------------------------------------------------------------- text family
@dataclass
class CompressedContext:
    """One compressed context.

    :param text: the compressed text; the evaluation re-tokenizes it with the judge's tokenizer.
    :param keep: for masking methods, one bool per context token id (``True`` = kept); ``None``
        for methods that rewrite text (LLMLingua).
    """

    text: str
    keep: np.ndarray | None = None


class Compressor(ABC):
    """A text compressor: contexts (judge token ids + text) and a target rate in, compressed texts out.

    ``rate`` is the fraction of context tokens to remove, in ``[0, 1)``.

    :param tokenizer: the judge's tokenizer (used to decode kept ids into text).
    :param name: the method's name in reports (defaults to :attr:`default_name`).
    """

    #: name used in reports when none is given
    default_name: str = "compressor"

    def __init__(self, tokenizer: PreTrainedTokenizerBase, name: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.name = name or self.default_name

    @abstractmethod
    def compress(
        self,
        contexts: Sequence[TokenIds],
        rate: float,
        texts: Sequence[str] | None = None,
        seed: int = 0,
    ) -> list[CompressedContext]:
        """Compress a batch of contexts.

        :param contexts: per document, the context as judge token ids (no BOS).
        :param rate: target fraction of tokens to remove, in ``[0, 1)``.
        :param texts: per document, the decoded context (``decode(contexts[b])``); computed when ``None``.
        :param seed: seed for randomised methods (same seed, same output).
        :return: one :class:`CompressedContext` per document.
        """

    # Masking methods report reconstruction quality (recon_bits_per_masked, recon_top1) with this
    # reconstructor; ``None`` means the judge itself, in delete mode.
    @property
    def reconstructor(self) -> Reconstructor | None:
        """The reconstructor paired with this method (the agent's fine-tuned one), if any."""
        return None

    @property
    def mask_mode(self) -> MaskMode:
        """How the paired reconstructor reads masked tokens: ``delete`` or ``placeholder``."""
        return "delete"

    def texts_of(self, contexts: Sequence[TokenIds], texts: Sequence[str] | None) -> list[str]:
        """The given texts, or the decoded contexts when none are given."""
        if texts is not None:
            if len(texts) != len(contexts):
                raise ValueError(f"{len(texts)} texts for {len(contexts)} contexts; they must match.")
            return list(texts)
        return [str(self.tokenizer.decode(list(c))) for c in contexts]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


RATE_TOLERANCE = 0.005
"""Per-document error of the emitted rate (on the re-tokenized text) above which a mask is corrected."""

_WHITESPACE = re.compile(r"\s")

MAX_FIT_STEPS = 6
"""Re-tokenizations :meth:`MaskingCompressor.fit_rate` tries before it keeps the closest mask."""


class MaskingCompressor(Compressor):
    """A compressor that keeps a subset of the context's tokens; subclasses only choose the mask.

    :meth:`compress` emits the kept tokens' text in their original order, joined by
    :func:`join_kept` (where the dropped tokens held the only whitespace between two kept ones, a
    single space or newline stays), and corrects each mask with :meth:`fit_rate` so that the
    *emitted* text, re-tokenized as ``docs/evaluation.md`` counts it, hits the requested rate.
    """

    _text_cache: tuple[PreTrainedTokenizerBase, dict[int, str]] | None = None

    @abstractmethod
    def keep_masks(self, contexts: Sequence[TokenIds], rate: float, seed: int = 0) -> list[np.ndarray]:
        """Per context, a bool array over its ids, ``True`` = kept.

        :param contexts: per document, judge token ids.
        :param rate: target fraction of tokens to remove, in ``[0, 1)``.
        :param seed: seed for randomised methods.
        """

    def compress(
        self,
        contexts: Sequence[TokenIds],
        rate: float,
        texts: Sequence[str] | None = None,
        seed: int = 0,
    ) -> list[CompressedContext]:
        """Choose the keep masks, fit them to the rate and emit the kept text (see :meth:`Compressor.compress`).

        The returned ``keep`` is the mask the text was made from (after :meth:`fit_rate`).
        """
        check_rate(rate)
        masks = self.keep_masks(contexts, rate, seed=seed)
        if len(masks) != len(contexts):
            raise ValueError(f"{self.name}: {len(masks)} masks for {len(contexts)} contexts.")
        out = []
        for ids, keep in zip(contexts, masks):
            keep = np.asarray(keep, dtype=bool)
            if keep.shape != (len(ids),):
                raise ValueError(f"{self.name}: a keep mask of shape {keep.shape} for {len(ids)} tokens.")
            keep, text = self._fit_and_join(ids, keep, rate, None, self.token_texts(ids))
            out.append(CompressedContext(text=text, keep=keep))
        return out

    def emitted_text(self, ids: TokenIds, keep: Sequence[bool] | np.ndarray) -> str:
        """The text :meth:`compress` emits for ``ids`` under ``keep`` (:func:`join_kept` of their token texts).

        :param ids: the context's judge token ids.
        :param keep: per token, ``True`` = kept.
        """
        return join_kept(self.token_texts(ids), keep)

    def token_texts(self, ids: TokenIds) -> list[str]:
        """Per token of ``ids``, its text (:func:`token_texts`, single-token decodes cached per tokenizer)."""
        if self._text_cache is None or self._text_cache[0] is not self.tokenizer:
            self._text_cache = (self.tokenizer, {})
        return token_texts(self.tokenizer, ids, self._text_cache[1])

    def emitted_tokens(self, text: str) -> int:
        """Judge tokens of an emitted text, counted as the evaluation re-tokenizes it (no BOS)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0

    def fit_rate(
        self,
        ids: TokenIds,
        keep: np.ndarray,
        rate: float,
        priority: np.ndarray | None = None,
        pieces: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Correct the dropped count until the emitted text, re-tokenized, is within :data:`RATE_TOLERANCE` of ``rate``.

        The separators :func:`join_kept` adds and the merges of re-tokenization move the emitted
        token count away from the kept count; this drops or restores tokens to make up for it,
        at most :data:`MAX_FIT_STEPS` times, and returns the closest mask seen. A mask that drops
        nothing is returned as it is (its text is the context's own).

        :param ids: the context's judge token ids.
        :param keep: the method's mask, ``True`` = kept.
        :param rate: the requested rate, in ``[0, 1)``.
        :param priority: per token, higher = dropped first; ranks the tokens added to or taken
            from the drop (a method's own scores); default :func:`mask_priority` of ``keep``
            (grow or shrink the dropped runs at their edges).
        :param pieces: ``token_texts(tokenizer, ids)`` when already computed.
        :return: a keep mask over ``ids``.
        """
        pieces = self.token_texts(ids) if pieces is None else pieces
        return self._fit_and_join(ids, keep, rate, priority, pieces)[0]

    def _fit_and_join(
        self, ids: TokenIds, keep: np.ndarray, rate: float, priority: np.ndarray | None, pieces: Sequence[str]
    ) -> tuple[np.ndarray, str]:
        # fit_rate, also returning the emitted text of the mask it chose
        keep = np.asarray(keep, dtype=bool)
        n = len(ids)
        text = join_kept(pieces, keep)
        if n == 0 or keep.all():
            return keep, text
        ranks = mask_priority(keep) if priority is None else np.asarray(priority, dtype=np.float64)
        count = int((~keep).sum())
        best, best_text, best_error = keep, text, math.inf
        for step in range(MAX_FIT_STEPS):
            if step:
                keep = drop_highest(ranks, count)
                text = join_kept(pieces, keep)
            achieved = 1.0 - self.emitted_tokens(text) / n
            if abs(achieved - rate) < best_error:
                best, best_text, best_error = keep, text, abs(achieved - rate)
            correction = int(round((rate - achieved) * n))
            if best_error <= RATE_TOLERANCE or correction == 0:
                break
            count = max(0, min(n, count + correction))
        return best, best_text


def token_texts(
    tokenizer: PreTrainedTokenizerBase, ids: TokenIds, cache: dict[int, str] | None = None
) -> list[str]:
    """Per token, the text it adds to ``decode(ids)``; joined, they give the decoded text back.

    Each token decoded alone where that reproduces the whole decode (byte-level BPE such as
    SmolLM2's); else an incremental decode, which also covers tokenizers that drop a word's
    leading space at the start of a decode (SentencePiece). A character spread over several
    byte tokens belongs to the token that completes it; the others get ``""``.

    :param tokenizer: the tokenizer that made ``ids``.
    :param ids: token ids.
    :param cache: id -> text of the token decoded alone, filled as it goes (one per tokenizer).
    """
    ids = [int(t) for t in ids]
    cache = {} if cache is None else cache
    missing = sorted({t for t in ids if t not in cache})
    if missing:
        cache.update(zip(missing, (str(p) for p in tokenizer.batch_decode([[t] for t in missing]))))
    pieces = [cache[t] for t in ids]
    if "".join(pieces) == str(tokenizer.decode(ids)):
        return pieces
    return _incremental_texts(tokenizer, ids)


def _incremental_texts(tokenizer: PreTrainedTokenizerBase, ids: list[int], max_pending: int = 8) -> list[str]:
    # Decode from the previous token group on, so a token's text is read in context (the
    # detokenization streaming servers use); a group ending in U+FFFD waits for its next byte.
    pieces: list[str] = []
    start = read = 0  # start of the anchor group, first token without text yet
    for i in range(len(ids)):
        prefix = str(tokenizer.decode(ids[start:read]))
        text = str(tokenizer.decode(ids[start : i + 1]))
        complete = len(text) > len(prefix) and text.startswith(prefix) and not text.endswith("\ufffd")
        if complete or i + 1 - read >= max_pending or i == len(ids) - 1:
            pieces.extend([""] * (i - read))
            pieces.append(text[len(prefix) :] if text.startswith(prefix) else text)
            start, read = read, i + 1
    return pieces


def join_kept(pieces: Sequence[str], keep: Sequence[bool] | np.ndarray) -> str:
    """The kept tokens' texts in order, with one separator where the dropped ones held the only whitespace.

    Where a run of dropped tokens contained whitespace and neither the text emitted so far ends
    with whitespace nor the next kept text starts with it, a single ``"\n"`` (if the dropped
    whitespace held a line break) or ``" "`` is emitted between them, so no two words fuse.
    Nothing is added before the first kept token or after the last.

    :param pieces: per token, its text (:func:`token_texts`).
    :param keep: per token, ``True`` = kept.
    """
    out: list[str] = []
    gap_space = gap_newline = False
    for piece, kept in zip(pieces, np.asarray(keep, dtype=bool).tolist()):
        if not piece:
            continue
        if not kept:
            if _WHITESPACE.search(piece):
                gap_space = True
                gap_newline = gap_newline or "\n" in piece
            continue
        if gap_space and out and not out[-1][-1].isspace() and not piece[0].isspace():
            out.append("\n" if gap_newline else " ")
        out.append(piece)
        gap_space = gap_newline = False
    return "".join(out)


def mask_priority(keep: np.ndarray) -> np.ndarray:
    """A drop order that reproduces ``keep`` and then grows or shrinks its dropped runs at their edges.

    Dropped tokens rank above kept ones; among dropped, those farthest from a kept token first;
    among kept, those nearest a dropped token first. So dropping one more token extends a
    dropped run (truncation drops its next-oldest token) and restoring one shortens a run.

    :param keep: per token, ``True`` = kept.
    :return: per token, higher = dropped first (use with :func:`drop_highest`).
    """
    keep = np.asarray(keep, dtype=bool)
    n = len(keep)
    position = np.arange(n)

    def distance_to(targets: np.ndarray) -> np.ndarray:
        if len(targets) == 0:
            return np.full(n, n + 1, dtype=np.float64)
        right = np.searchsorted(targets, position).clip(max=len(targets) - 1)
        left = (right - 1).clip(min=0)
        return np.minimum(np.abs(targets[right] - position), np.abs(targets[left] - position)).astype(
            np.float64
        )

    to_kept = distance_to(np.flatnonzero(keep))
    to_dropped = distance_to(np.flatnonzero(~keep))
    return np.where(keep, -to_dropped, to_kept)


def drop_highest(scores: np.ndarray, count: int) -> np.ndarray:
    """Keep mask dropping the ``count`` highest-scoring positions (ties: the earlier one first)."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((np.arange(len(scores)), -scores))
    keep = np.ones(len(scores), dtype=bool)
    keep[order[: max(0, min(count, len(scores)))]] = False
    return keep


def tokens_to_drop(length: int, rate: float) -> int:
    """How many of ``length`` tokens a masking method drops to hit ``rate`` (round half up)."""
    return min(length, int(np.floor(rate * length + 0.5)))


WARMUPS: tuple[str, ...] = ("auto", "one", "all", "none")
"""What :class:`~tokenmask.evaluate.evaluator.Evaluator` compresses, untimed, before each timed call: ``auto`` (every
document on a GPU, the first elsewhere: :func:`resolve_warmup`), the first document, every document, nothing (here,
in the light module, so ``tokenmask evaluate`` checks it without torch)."""


def resolve_warmup(warmup: bool | str, device_type: str) -> str:
    """``warmup`` as ``one``, ``all`` or ``none``: ``True`` / ``False`` are ``one`` / ``none``; ``auto`` is ``all`` on
    ``cuda`` (a GPU method's first-shape costs, such as PyTorch's attention plans and a search's CUDA graphs, would
    otherwise land in the timed call of whichever method runs first; a warm-up there costs seconds) and ``one``
    elsewhere (on a CPU, warming every document doubles the judge searches' minutes).

    :raises ValueError: for a value not in :data:`WARMUPS`, naming the fix.
    """
    if isinstance(warmup, bool):
        return "one" if warmup else "none"
    if warmup not in WARMUPS:
        raise ValueError(f"Unknown warmup {warmup!r}. Fix: use one of {', '.join(WARMUPS)}.")
    if warmup == "auto":
        return "all" if device_type == "cuda" else "one"
    return warmup


GPU_TIMING_REPEATS = 3
"""Timed calls per method and rate where the judge is on a GPU (``timing_repeats="auto"``): their median is reported."""


def resolve_timing_repeats(repeats: int | str, device_type: str) -> int:
    """How many timed calls :class:`~tokenmask.evaluate.evaluator.Evaluator` makes per method and rate (the median is
    reported). ``auto`` is :data:`GPU_TIMING_REPEATS` on ``cuda`` (a call takes seconds there, and one call's time
    moved by about 40 % between identical runs: 153 against 108 ms per 1k tokens in stop 35) and 1 elsewhere (a judge
    search's call takes minutes on a CPU).

    :raises ValueError: for anything but ``auto`` or an integer >= 1, naming the fix.
    """
    if repeats == "auto":
        return GPU_TIMING_REPEATS if device_type == "cuda" else 1
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"timing_repeats must be 'auto' or an integer >= 1, got {repeats!r}. Fix: e.g. 3.")
    return repeats


def check_rate(rate: float) -> float:
    """Return ``rate`` if it lies in ``[0, 1)``, else raise a ``ValueError`` naming the fix."""
    if not (0.0 <= float(rate) < 1.0):
        raise ValueError(
            f"rate {rate!r} is outside [0, 1): it is the fraction of context tokens removed. Fix: e.g. 0.5."
        )
    return float(rate)


# ---------------------------------------------------------------------------------------- in-model family
@dataclass
class InModelScore:
    """What an in-model compressor reports for one document (NLLs in nats, summed over tokens).

    The counts are of the KV cache of the pre-fill ``BOS + context``, summed over **all** decoder
    layers (docs/evaluation.md): ``rate = 1 - Σ positions_kept / Σ positions_total``. A position of
    a layer holds that layer's keys and values of every head, so counting positions counts KV
    entries; a method that prunes heads unevenly counts entries (kept heads x positions) instead.

    :param context_nll: ``-Σ log p(context ids | kept state of BOS + context, then sep)`` — the
        recoverability numerator's ``R(compressed)``.
    :param continuation_nll: ``-Σ log p(continuation | kept state of BOS + context)`` — ``F(compressed)``.
    :param positions_kept: KV entries (positions: tokens, merged states) kept, summed over all layers.
    :param positions_total: KV entries the uncompressed context holds, summed over all layers.
    :param layer_kept: per decoder layer, the entries kept (empty when the method does not say);
        they sum to ``positions_kept``.
    :param layer_total: per decoder layer, the entries of the uncompressed context; they sum to
        ``positions_total``.
    :raises ValueError: when the per-layer counts do not sum to the totals.
    """

    context_nll: float
    continuation_nll: float
    positions_kept: int
    positions_total: int
    layer_kept: list[int] = field(default_factory=list)
    layer_total: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.layer_kept) != len(self.layer_total):
            raise ValueError(
                f"{len(self.layer_kept)} per-layer kept counts for {len(self.layer_total)} totals; give both or neither."
            )
        if self.layer_kept and (
            sum(self.layer_kept) != self.positions_kept or sum(self.layer_total) != self.positions_total
        ):
            raise ValueError(
                f"per-layer counts sum to {sum(self.layer_kept)} / {sum(self.layer_total)}, not "
                f"positions_kept {self.positions_kept} / positions_total {self.positions_total}. "
                "Fix: sum the per-layer counts over all layers."
            )


@dataclass
class InModelResult:
    """An in-model compressor's scores for a batch, and the time its compression took.

    :param scores: one :class:`InModelScore` per document.
    :param compress_seconds: wall time of the compression alone (pre-fill with compression), or
        ``None`` to let the evaluation time the whole call.
    """

    scores: list[InModelScore]
    compress_seconds: float | None = None


@runtime_checkable
class InModelCompressor(Protocol):
    """A compressor acting inside the model (activation clustering, KV-cache compression).

    Per ``docs/evaluation.md``: pre-fill ``BOS + context`` through the compressing model, then score the
    continuation (retention) and ``sep + context`` (recoverability; only the context tokens are
    scored) against what was kept, position ids continuing after the full context.
    ``rate = 1 - Σ positions_kept / Σ positions_total``, KV entries summed over all layers.

    :attr name: the method's name in reports.
    """

    name: str

    def score(
        self,
        judge: Reconstructor,
        contexts: Sequence[TokenIds],
        continuations: Sequence[TokenIds],
        sep: TokenIds,
        rate: float,
        seed: int = 0,
    ) -> InModelResult:
        """Compress each context inside the model and return the judge NLLs with what was kept.

        :param judge: the judge reconstructor (its tokenizer made the ids).
        :param contexts: per document, the context ids (no BOS; prepend ``judge.bos_token_id``).
        :param continuations: per document, the next T ids.
        :param sep: the ids of ``"\\n\\n"``, read between the kept context and the context to recover.
        :param rate: target fraction of positions removed, in ``[0, 1)``.
        :param seed: seed for randomised methods.
        """
        ...


Method = Compressor | InModelCompressor


# ---------------------------------------------------------------------------------------- registry
@dataclass
class MethodContext:
    """What a method factory may use to build its method.

    :param judge: the judge reconstructor (frozen; do not train it).
    :param seed: the run's seed.
    :param device: device requested for the run (``cpu``, ``cuda``, ``auto``).
    :param train_texts: texts of the training corpus (the frequency baseline counts tokens in them).
    """

    judge: Reconstructor
    seed: int = 0
    device: str = "cpu"
    train_texts: Sequence[str] = field(default_factory=list)


#: ``factory(argument, context)``; ``argument`` is the text after ``prefix:`` (``""`` when absent).
MethodFactory = Callable[[str, MethodContext], Method]

_REGISTRY: dict[str, MethodFactory] = {}
_IN_MODEL: set[str] = set()
"""Prefixes whose factories build in-model compressors (``register_method(..., in_model=True)``)."""

#: Modules imported the first time a method with this prefix is requested; each calls
#: :func:`register_method` when imported. A missing module is skipped.
PLUGIN_MODULES: dict[str, tuple[str, ...]] = {
    "agent": ("tokenmask.train", "tokenmask.policies"),
    "activation": ("tokenmask.activation_compression",),
    "kvpress": ("tokenmask.evaluate.kvpress_peer",),
    "move_agent": ("tokenmask.evaluate.move_agent",),
}

#: Modules holding the built-in methods (imported on first use of the registry).
BUILTIN_MODULES: tuple[str, ...] = ("tokenmask.evaluate.baselines", "tokenmask.evaluate.refine_methods")


def register_method(
    prefix: str, factory: MethodFactory, overwrite: bool = False, in_model: bool = False
) -> None:
    """Make ``prefix`` (and ``prefix:argument``) a method name of ``tokenmask evaluate``.

    :param prefix: the name before the colon; letters, digits, ``_`` and ``-`` only.
    :param factory: ``factory(argument, context) -> Compressor | InModelCompressor``.
    :param overwrite: replace an existing registration instead of raising.
    :param in_model: the factory builds an :class:`InModelCompressor` (no text), so that callers that need text
        (``tokenmask.compress``, ``tokenmask compress``) refuse the name before any model loads.
    :raises ValueError: if the prefix is malformed or taken (and ``overwrite`` is false).
    """
    if not prefix or not all(ch.isalnum() or ch in "_-" for ch in prefix):
        raise ValueError(f"Method prefix {prefix!r} must be non-empty letters, digits, '_' or '-'.")
    if prefix in _REGISTRY and not overwrite and _REGISTRY[prefix] is not factory:
        raise ValueError(
            f"Method prefix {prefix!r} is already registered. Fix: pick another prefix or pass overwrite=True."
        )
    _REGISTRY[prefix] = factory
    if in_model:
        _IN_MODEL.add(prefix)
    else:
        _IN_MODEL.discard(prefix)


def compresses_in_model(name: str) -> bool:
    """Whether the method ``name`` was registered as an in-model compressor (``register_method(..., in_model=True)``).

    :raises ValueError: for an unknown prefix, naming the known ones.
    """
    method_factory(name)
    return split_method_name(name)[0] in _IN_MODEL


def _load_builtins() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def _load_plugins(prefix: str) -> None:
    for module in PLUGIN_MODULES.get(prefix, ()):
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)


def registered_methods() -> list[str]:
    """Prefixes that can be named now (built-ins and plug-ins already imported)."""
    _load_builtins()
    return sorted(_REGISTRY)


def split_method_name(name: str) -> tuple[str, str]:
    """``"agent:runs/x"`` -> ``("agent", "runs/x")``; ``"random"`` -> ``("random", "")``."""
    prefix, _, argument = name.strip().partition(":")
    return prefix.strip(), argument.strip()


def method_factory(name: str) -> MethodFactory:
    """The factory registered for the prefix of ``name``, importing its plug-in module if needed.

    Cheap (no model is loaded): call it to check method names before loading anything.

    :raises ValueError: for an unknown prefix, naming the known ones.
    """
    prefix, _ = split_method_name(name)
    _load_builtins()
    if prefix not in _REGISTRY:
        _load_plugins(prefix)
    if prefix not in _REGISTRY:
        known = ", ".join(sorted(set(_REGISTRY) | set(PLUGIN_MODULES)))
        raise ValueError(
            f"Unknown method {name!r}. Fix: use one of {known} (plug-ins take 'prefix:argument')."
        )
    return _REGISTRY[prefix]


def build_method(name: str, context: MethodContext) -> Method:
    """Build the method called ``name`` (``prefix`` or ``prefix:argument``).

    :raises ValueError: for an unknown prefix, naming the known ones.
    """
    prefix, argument = split_method_name(name)
    method = method_factory(name)(argument, context)
    if not isinstance(method, (Compressor, InModelCompressor)):
        raise TypeError(
            f"The factory of {prefix!r} returned {type(method).__name__}, not a Compressor or InModelCompressor."
        )
    return method


def parse_method_names(spec: str | Sequence[str]) -> list[str]:
    """Method names from a comma-separated string or a list; duplicates and empty names dropped.

    A comma inside an argument cannot be expressed; plug-in arguments are paths or config files.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for item in items:
        item = item.strip()
        if item and item not in names:
            names.append(item)
    if not names:
        raise ValueError("No method named. Fix: e.g. --methods truncation,random,self_information.")
    return names
