"""The interfaces every compression method implements, and the registry ``tokenmask evaluate`` reads.

Two families are measured on the same table (see ``EVALUATION.md``):

* :class:`Compressor` — *text* compressors. They receive each context as judge token ids (and
  its decoded text) plus a target rate, and return the compressed text, which the evaluation
  re-tokenizes with the judge's tokenizer. Masking methods (every baseline but LLMLingua, the RL
  agent) derive from :class:`MaskingCompressor` and only decide a keep mask over the ids.
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


class MaskingCompressor(Compressor):
    """A compressor that keeps a subset of the context's tokens; subclasses only choose the mask.

    The compressed text is the decoded kept ids, in their original order.
    """

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
        """Choose the keep masks and decode the kept ids (see :meth:`Compressor.compress`)."""
        check_rate(rate)
        masks = self.keep_masks(contexts, rate, seed=seed)
        if len(masks) != len(contexts):
            raise ValueError(f"{self.name}: {len(masks)} masks for {len(contexts)} contexts.")
        out = []
        for ids, keep in zip(contexts, masks):
            keep = np.asarray(keep, dtype=bool)
            if keep.shape != (len(ids),):
                raise ValueError(f"{self.name}: a keep mask of shape {keep.shape} for {len(ids)} tokens.")
            kept = [int(t) for t, k in zip(ids, keep) if k]
            out.append(CompressedContext(text=str(self.tokenizer.decode(kept)), keep=keep))
        return out


def tokens_to_drop(length: int, rate: float) -> int:
    """How many of ``length`` tokens a masking method drops to hit ``rate`` (round half up)."""
    return min(length, int(np.floor(rate * length + 0.5)))


def check_rate(rate: float) -> float:
    """Return ``rate`` if it lies in ``[0, 1)``, else raise a ``ValueError`` naming the fix."""
    if not (0.0 <= float(rate) < 1.0):
        raise ValueError(f"rate {rate!r} is outside [0, 1): it is the fraction of context tokens removed. Fix: e.g. 0.5.")
    return float(rate)


# ---------------------------------------------------------------------------------------- in-model family
@dataclass
class InModelScore:
    """What an in-model compressor reports for one document (NLLs in nats, summed over tokens).

    :param context_nll: ``-Σ log p(context ids | kept state of BOS + context, then sep)`` — the
        recoverability numerator's ``R(compressed)``.
    :param continuation_nll: ``-Σ log p(continuation | kept state of BOS + context)`` — ``F(compressed)``.
    :param positions_kept: positions (tokens, merged states or KV entries) kept, summed over the
        compressed layers.
    :param positions_total: positions those layers would hold uncompressed.
    """

    context_nll: float
    continuation_nll: float
    positions_kept: int
    positions_total: int


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

    Per ``EVALUATION.md``: pre-fill ``BOS + context`` through the compressing model, then score the
    continuation (retention) and ``sep + context`` (recoverability; only the context tokens are
    scored) against what was kept, position ids continuing after the full context.
    ``rate = 1 - Σ positions_kept / Σ positions_total``.

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

#: Modules imported the first time a method with this prefix is requested; each calls
#: :func:`register_method` when imported. A missing module is skipped.
PLUGIN_MODULES: dict[str, tuple[str, ...]] = {
    "agent": ("tokenmask.train", "tokenmask.policies"),
    "activation": ("tokenmask.activation_compression",),
}

#: Modules holding the built-in methods (imported on first use of the registry).
BUILTIN_MODULES: tuple[str, ...] = ("tokenmask.evaluate.baselines",)


def register_method(prefix: str, factory: MethodFactory, overwrite: bool = False) -> None:
    """Make ``prefix`` (and ``prefix:argument``) a method name of ``tokenmask evaluate``.

    :param prefix: the name before the colon; letters, digits, ``_`` and ``-`` only.
    :param factory: ``factory(argument, context) -> Compressor | InModelCompressor``.
    :param overwrite: replace an existing registration instead of raising.
    :raises ValueError: if the prefix is malformed or taken (and ``overwrite`` is false).
    """
    if not prefix or not all(ch.isalnum() or ch in "_-" for ch in prefix):
        raise ValueError(f"Method prefix {prefix!r} must be non-empty letters, digits, '_' or '-'.")
    if prefix in _REGISTRY and not overwrite and _REGISTRY[prefix] is not factory:
        raise ValueError(f"Method prefix {prefix!r} is already registered. Fix: pick another prefix or pass overwrite=True.")
    _REGISTRY[prefix] = factory


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
        raise ValueError(f"Unknown method {name!r}. Fix: use one of {known} (plug-ins take 'prefix:argument').")
    return _REGISTRY[prefix]


def build_method(name: str, context: MethodContext) -> Method:
    """Build the method called ``name`` (``prefix`` or ``prefix:argument``).

    :raises ValueError: for an unknown prefix, naming the known ones.
    """
    prefix, argument = split_method_name(name)
    method = method_factory(name)(argument, context)
    if not isinstance(method, (Compressor, InModelCompressor)):
        raise TypeError(f"The factory of {prefix!r} returned {type(method).__name__}, not a Compressor or InModelCompressor.")
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
