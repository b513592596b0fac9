"""Baseline compressors: each drops exactly ``round(rate * C)`` of the C context tokens.

All of them mask judge tokens (:class:`~tokenmask.evaluate.compressor.MaskingCompressor`); the
kept tokens are decoded in their original order. Method names for ``tokenmask evaluate``:

==================== ==========================================================================
``random``           drop tokens uniformly at random (seeded per call and document)
``frequency``        drop the tokens most frequent in the training corpus
``length``           drop the shortest tokens (characters of the token's text, spaces excluded)
``truncation``       keep the last tokens (``truncation_first``: keep the first ones)
``self_information`` drop the tokens of lowest surprisal under an LM (the judge, or
                     ``self_information:MODEL``), one batched pass
``span_self_information``
                     drop whole spans of consecutive tokens (``span_self_information:K``,
                     K = 32 by default) of lowest mean surprisal under the judge, as Selective
                     Context does with phrases; the last dropped span is cut to hit the rate
``llmlingua``        LLMLingua through the ``llmlingua`` package (see :mod:`.llmlingua_peer`)
==================== ==========================================================================

Ties are broken towards dropping earlier tokens, so every method is deterministic given its seed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tokenmask.errors import InputError
from tokenmask.evaluate.compressor import (
    Compressor,
    MaskingCompressor,
    MethodContext,
    TokenIds,
    check_rate,
    register_method,
    tokens_to_drop,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from tokenmask.reconstructors import Reconstructor


def drop_lowest(scores: np.ndarray, rate: float) -> np.ndarray:
    """Keep mask dropping the ``round(rate * n)`` lowest-scoring positions (ties: earlier dropped first).

    :param scores: one score per token; lower = dropped first.
    :param rate: fraction of tokens to drop, in ``[0, 1)``.
    :return: bool array, ``True`` = kept.
    """
    scores = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((np.arange(len(scores)), scores))  # by score, then by position
    keep = np.ones(len(scores), dtype=bool)
    keep[order[: tokens_to_drop(len(scores), rate)]] = False
    return keep


class RandomDrop(MaskingCompressor):
    """Drop ``round(rate * C)`` tokens chosen uniformly at random (document ``b`` uses seed ``(seed, b)``)."""

    default_name = "random"

    def keep_masks(self, contexts: Sequence[TokenIds], rate: float, seed: int = 0) -> list[np.ndarray]:
        masks = []
        for b, ids in enumerate(contexts):
            rng = np.random.default_rng([seed, b])
            masks.append(drop_lowest(rng.random(len(ids)), rate))
        return masks


class Truncation(MaskingCompressor):
    """Keep the last tokens (``keep="last"``, the default) or the first ones (``keep="first"``).

    :param keep: ``last`` or ``first``.
    """

    default_name = "truncation"

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, keep: str = "last", name: str | None = None
    ) -> None:
        if keep not in ("last", "first"):
            raise ValueError(f"Truncation keeps 'last' or 'first' tokens, not {keep!r}.")
        super().__init__(tokenizer, name or ("truncation" if keep == "last" else "truncation_first"))
        self.keep = keep

    def keep_masks(self, contexts: Sequence[TokenIds], rate: float, seed: int = 0) -> list[np.ndarray]:
        masks = []
        for ids in contexts:
            position = np.arange(len(ids), dtype=np.float64)
            masks.append(drop_lowest(position if self.keep == "last" else -position, rate))
        return masks


class FrequencyDrop(MaskingCompressor):
    """Drop the tokens most frequent in a training corpus (unseen tokens count 0, so they stay).

    :param counts: occurrences of each token id in the training corpus.
    """

    default_name = "frequency"

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, counts: Counter[int], name: str | None = None
    ) -> None:
        super().__init__(tokenizer, name)
        if not counts:
            raise ValueError("The frequency baseline needs token counts from a non-empty training corpus.")
        self.counts = counts

    @classmethod
    def from_texts(cls, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> FrequencyDrop:
        """Count the judge tokens of ``texts`` (the training corpus)."""
        counts: Counter[int] = Counter()
        for text in texts:
            counts.update(tokenizer(text, add_special_tokens=False)["input_ids"])
        return cls(tokenizer, counts)

    def keep_masks(self, contexts: Sequence[TokenIds], rate: float, seed: int = 0) -> list[np.ndarray]:
        return [
            drop_lowest(-np.array([self.counts.get(int(t), 0) for t in ids], dtype=np.float64), rate)
            for ids in contexts
        ]


class LengthDrop(MaskingCompressor):
    """Drop the shortest tokens: fewest characters in the token's text, surrounding whitespace excluded."""

    default_name = "length"

    def keep_masks(self, contexts: Sequence[TokenIds], rate: float, seed: int = 0) -> list[np.ndarray]:
        masks = []
        for ids in contexts:
            # decode each id: byte-level BPE pieces spell spaces with a marker character
            lengths = [len(str(self.tokenizer.decode([int(t)])).strip()) for t in ids]
            masks.append(drop_lowest(np.array(lengths, dtype=np.float64), rate))
        return masks


def span_means(scores: np.ndarray, span: int) -> np.ndarray:
    """Each position's score replaced by the mean score of its span (positions ``[k*span, (k+1)*span)``).

    With these scores :func:`drop_lowest` drops whole spans, lowest mean first (ties: earlier span
    first), and cuts the last span it needs at its first tokens. ``span == 1`` returns ``scores``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if span == 1:
        return scores
    means = [scores[s : s + span].mean() for s in range(0, len(scores), span)]
    return np.repeat(means, span)[: len(scores)]


class SelfInformationDrop(MaskingCompressor):
    """Drop the tokens of lowest surprisal ``-log2 p(x_i | BOS, x_<i)`` under an LM (one batched pass).

    With ``span > 1`` whole spans of ``span`` consecutive tokens go instead, lowest mean surprisal
    first (see :class:`SpanSelfInformationDrop`).

    :param lm: the reconstructor that prices tokens (the judge by default).
    :param span: tokens per dropped span (1: single tokens).
    """

    default_name = "self_information"

    def __init__(self, lm: Reconstructor, name: str | None = None, span: int = 1) -> None:
        if span < 1:
            raise ValueError(f"{name or self.default_name} needs a span of >= 1 token, got {span}.")
        super().__init__(lm.tokenizer, name)
        self.lm = lm
        self.span = span

    def keep_masks(self, contexts: Sequence[TokenIds], rate: float, seed: int = 0) -> list[np.ndarray]:
        check_rate(rate)
        bits = self.lm.token_bits([list(c) for c in contexts])
        return [drop_lowest(span_means(b, self.span), rate) for b in bits]


class SpanSelfInformationDrop(SelfInformationDrop):
    """Drop spans of ``span`` consecutive tokens, lowest mean surprisal first, until ``round(rate * C)`` are dropped.

    A span-level version of :class:`SelfInformationDrop`: dropping whole spans keeps the rest of the
    text readable, which the judge rewards (recoverability), where dropping scattered tokens breaks
    it. The last span dropped is cut (its first tokens go) so the count is exact. Ties: earlier
    spans first.

    :param lm: the reconstructor that prices tokens (the judge).
    :param span: tokens per span (>= 1).
    """

    default_name = "span_self_information"

    def __init__(self, lm: Reconstructor, span: int = 32, name: str | None = None) -> None:
        super().__init__(lm, name, span)


# ---------------------------------------------------------------------------------------- registration
def _self_information(argument: str, context: MethodContext) -> SelfInformationDrop:
    if not argument:
        return SelfInformationDrop(context.judge)
    from tokenmask.reconstructors import Reconstructor

    lm = Reconstructor.load(argument, device=context.device, add_mask_token=False)
    if lm.tokenizer.get_vocab() != context.judge.tokenizer.get_vocab():
        raise ValueError(
            f"self_information:{argument} has another tokenizer than the judge; it must mask judge tokens."
        )
    return SelfInformationDrop(lm, name=f"self_information:{argument}")


def _check_count_argument(prefix: str, what: str, example: str) -> Callable[[str], None]:
    def check(argument: str) -> None:
        if argument and not (argument.isdigit() and int(argument) >= 1):
            raise InputError(
                f"{prefix} takes an optional {what} >= 1 ({prefix}:{example}), not {argument!r}.",
                key="methods",
            )

    return check


def _check_no_argument(prefix: str) -> Callable[[str], None]:
    def check(argument: str) -> None:
        if argument:
            raise InputError(f"Method {prefix!r} takes no argument, got {prefix}:{argument}.", key="methods")

    return check


def _check_frequency_argument(argument: str) -> None:
    if argument and argument != "sample" and not Path(argument).exists():
        raise InputError(
            f"frequency:{argument}: no such corpus.",
            fix="name a prepared corpus folder or a .txt/.jsonl file, e.g. frequency:data_out/pydocs.",
            path=argument,
        )


#: Checks of each baseline's argument; they need no model, so ``tokenmask evaluate`` runs them
#: before the judge loads (the factories run them too).
BASELINE_ARGUMENT_CHECKS: dict[str, Callable[[str], None]] = {
    **{
        prefix: _check_no_argument(prefix)
        for prefix in ("random", "length", "truncation", "truncation_first")
    },
    "frequency": _check_frequency_argument,
    "span_self_information": _check_count_argument("span_self_information", "span in tokens", "32"),
    "llmlingua": _check_count_argument("llmlingua", "iterative size in tokens", "200"),
}


def _span_self_information(argument: str, context: MethodContext) -> SpanSelfInformationDrop:
    BASELINE_ARGUMENT_CHECKS["span_self_information"](argument)
    span = int(argument) if argument else 32
    return SpanSelfInformationDrop(
        context.judge, span, name=f"span_self_information:{span}" if argument else None
    )


def _frequency(argument: str, context: MethodContext) -> FrequencyDrop:
    texts: Sequence[str] = context.train_texts
    _check_frequency_argument(argument)
    if argument:
        from tokenmask.data import iter_texts

        texts = list(iter_texts(argument, split="train"))
    if not texts:
        raise ValueError(
            "The frequency baseline has no training corpus. Fix: name one, e.g. frequency:data_out/pydocs."
        )
    return FrequencyDrop.from_texts(context.judge.tokenizer, texts)


def _llmlingua(argument: str, context: MethodContext) -> Compressor:
    from tokenmask.evaluate.llmlingua_peer import LLMLinguaCompressor

    BASELINE_ARGUMENT_CHECKS["llmlingua"](argument)
    return LLMLinguaCompressor(context.judge, iterative_size=int(argument) if argument else 200)


def _register_builtins() -> None:
    def simple(prefix: str, build):  # type: ignore[no-untyped-def]
        def factory(argument: str, context: MethodContext):  # type: ignore[no-untyped-def]
            BASELINE_ARGUMENT_CHECKS[prefix](argument)
            return build(context)

        register_method(prefix, factory, overwrite=True)

    simple("random", lambda ctx: RandomDrop(ctx.judge.tokenizer))
    simple("length", lambda ctx: LengthDrop(ctx.judge.tokenizer))
    simple("truncation", lambda ctx: Truncation(ctx.judge.tokenizer, keep="last"))
    simple("truncation_first", lambda ctx: Truncation(ctx.judge.tokenizer, keep="first"))
    register_method("frequency", _frequency, overwrite=True)
    register_method("self_information", _self_information, overwrite=True)
    register_method("span_self_information", _span_self_information, overwrite=True)
    register_method("llmlingua", _llmlingua, overwrite=True)


_register_builtins()

#: The baselines ``tokenmask baselines`` runs by default (LLMLingua only when installed).
BASELINE_METHODS: tuple[str, ...] = (
    "truncation",
    "truncation_first",
    "random",
    "frequency",
    "length",
    "self_information",
    "span_self_information",
    "llmlingua",
)
