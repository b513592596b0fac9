"""NVIDIA's kvpress presses as in-model compressors of ``tokenmask evaluate`` (the peers of activation clustering).

Install them with the ``kvpress`` extra (``pip install tokenmask[kvpress]``). kvpress 0.5.x
requires transformers < 5.3, so give it its own virtual environment. Methods are named
``kvpress:<press>`` (see :data:`PRESSES`)::

    tokenmask evaluate --methods truncation,kvpress:expected_attention,kvpress:snapkv --rates 0.5

Per document, as ``docs/evaluation.md`` measures in-model compressors and as kvpress's own
pipeline runs a press: ``BOS + context`` is pre-filled through the judge's LM with the press
attached (each attention layer's KV entries are pruned right after that layer has read them), with
``compression_ratio`` = the requested rate; the continuation (retention) and ``sep + context``
(recoverability; only the context tokens are scored) are then read against the pruned cache,
their position ids continuing after the full context. The first scored token's distribution is the
pre-fill's last one (as generation after a compressed pre-fill takes it). The cache is cut back
to its pruned length between the two reads.

The rate is counted over the KV entries of **all** layers: ``1 - Σ kept / Σ total``, where a
layer's total is ``1 + len(context)`` (BOS included: the press prunes it like any entry) and
kept is what that layer's cache holds after the pre-fill (kvpress keeps ``int(n * (1 - ratio))``
entries of ``n``, so the achieved rate is the asked one rounded up to a whole entry). Each score also
carries the per-layer counts (``layer_kept``, ``layer_total``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tokenmask.errors import InputError, TokenmaskError
from tokenmask.evaluate.compressor import (
    InModelResult,
    InModelScore,
    MethodContext,
    check_rate,
    register_method,
)
from tokenmask.reconstructors import Reconstructor
from tokenmask.timing import timed_call

TokenIds = Sequence[int]

#: method argument -> kvpress press class name (all ``ScorerPress``es taking ``compression_ratio``)
PRESSES: dict[str, str] = {
    "expected_attention": "ExpectedAttentionPress",
    "snapkv": "SnapKVPress",
    "knorm": "KnormPress",
    "tova": "TOVAPress",
    "streaming_llm": "StreamingLLMPress",
}

INSTALL_HINT = (
    "Fix: pip install 'tokenmask[kvpress]' (kvpress 0.5.x needs transformers < 5.3: "
    "install it in a separate virtual environment)."
)


class KVPressNotInstalledError(TokenmaskError, ImportError):
    """A ``kvpress:`` method was asked for where the kvpress package cannot be imported."""


def kvpress_available() -> bool:
    """Whether the ``kvpress`` package is installed."""
    return importlib.util.find_spec("kvpress") is not None


def check_kvpress_argument(argument: str) -> None:
    """Check ``kvpress:<argument>`` without loading a model: a known press, and kvpress installed.

    :raises InputError: for an unknown or missing press name (naming the known ones).
    :raises KVPressNotInstalledError: when kvpress is not installed (naming the install command).
    """
    if argument not in PRESSES:
        got = f"kvpress:{argument}" if argument else "kvpress"
        raise InputError(
            f"{got}: name a press. Fix: use one of {', '.join('kvpress:' + name for name in PRESSES)}."
        )
    if not kvpress_available():
        raise KVPressNotInstalledError(
            f"kvpress:{argument} needs the kvpress package, which is not installed. {INSTALL_HINT}"
        )


def make_press(argument: str, rate: float) -> Any:
    """The kvpress press named ``argument`` (a key of :data:`PRESSES`) with ``compression_ratio=rate``."""
    check_kvpress_argument(argument)
    try:
        import kvpress
    except ImportError as exc:  # installed but broken, e.g. beside transformers >= 5.3
        raise KVPressNotInstalledError(
            f"kvpress is installed but cannot be imported ({exc}). It needs transformers < 5.3. {INSTALL_HINT}"
        ) from exc
    return getattr(kvpress, PRESSES[argument])(compression_ratio=float(rate))


@dataclass
class _Prefilled:
    """A batch of equal-length ``BOS + context`` rows pre-filled through a press."""

    cache: Any  # transformers DynamicCache, pruned
    last_hidden: torch.Tensor  # (B, D) final hidden state at the last context position
    length: int  # 1 + len(context): the position id of the first token read after it
    layer_lengths: list[int]  # per layer, KV entries kept per row


class KVPressCompressor:
    """:class:`~tokenmask.evaluate.compressor.InModelCompressor` of one kvpress press (see the module docstring).

    :param press_name: a key of :data:`PRESSES`.
    :param name: the method's name in reports (default ``kvpress:<press_name>``).
    """

    def __init__(self, press_name: str, name: str | None = None) -> None:
        check_kvpress_argument(press_name)
        self.press_name = press_name
        self.name = name or f"kvpress:{press_name}"

    # ------------------------------------------------------------------ model passes
    def _prefill(self, judge: Reconstructor, contexts: Sequence[list[int]], rate: float) -> _Prefilled:
        """Pre-fill ``BOS + context`` (all of one length) with the press attached."""
        from transformers import DynamicCache

        press = make_press(self.press_name, rate)
        ids = torch.tensor([[judge.bos_token_id, *c] for c in contexts], device=judge.device)
        cache = DynamicCache()
        try:
            with press(judge.model):
                out = judge.model.base_model(input_ids=ids, past_key_values=cache, use_cache=True)
        except AssertionError as exc:  # kvpress states its presses' preconditions as asserts
            raise InputError(
                f"{self.name} cannot compress a context of {ids.shape[1]} positions: {exc}. "
                "Fix: use longer contexts (--context_tokens)."
            ) from exc
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        layer_lengths = [int(cache.get_seq_length(i)) for i in range(len(cache.layers))]
        return _Prefilled(cache, hidden[:, -1], int(ids.shape[1]), layer_lengths)

    @staticmethod
    def _tail_nlls(
        judge: Reconstructor, state: _Prefilled, tails: Sequence[list[int]], skip: int = 0
    ) -> list[float]:
        """Per row, ``-Σ log p(tail[skip:])`` read after the pruned cache; the cache is cut back afterwards."""
        width = max(len(t) for t in tails)
        fed = [t[:-1] + [judge.pad_token_id] * (width - len(t)) for t in tails]  # right padding: never read
        hidden = state.last_hidden[:, None]
        if width > 1:
            ids = torch.tensor(fed, device=judge.device)
            positions = torch.arange(state.length, state.length + width - 1, device=judge.device)
            out = judge.model.base_model(
                input_ids=ids,
                past_key_values=state.cache,
                position_ids=positions[None].expand(len(tails), -1),
                use_cache=True,
            )
            tail_hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
            hidden = torch.cat([hidden, tail_hidden], dim=1)
            for layer, length in zip(state.cache.layers, state.layer_lengths):  # as kvpress's pipeline
                layer.keys = layer.keys[:, :, :length]
                layer.values = layer.values[:, :, :length]
        nlls = []
        for row, tail in enumerate(tails):
            logits = judge.head_logits(hidden[row, skip : len(tail)])
            targets = torch.tensor(tail[skip:], device=logits.device)
            logp = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0]
            nlls.append(-float(logp.double().sum()))
        return nlls

    # ------------------------------------------------------------------ protocol
    def score(
        self,
        judge: Reconstructor,
        contexts: Sequence[TokenIds],
        continuations: Sequence[TokenIds],
        sep: TokenIds,
        rate: float,
        seed: int = 0,
    ) -> InModelResult:
        """Pre-fill each context with the press and return the judge NLLs against the pruned cache.

        Contexts are batched by length (``judge.batch_size`` rows of one length: a press prunes the
        same number of entries in every row). ``seed`` is unused: the presses are deterministic.
        """
        check_rate(rate)
        if len(contexts) != len(continuations):
            raise ValueError(
                f"{len(contexts)} contexts for {len(continuations)} continuations; they must match."
            )
        if any(len(c) == 0 for c in continuations):
            raise ValueError("Every continuation needs at least one token to score.")
        groups: dict[int, list[int]] = {}
        for index, context in enumerate(contexts):
            groups.setdefault(len(context), []).append(index)
        scores: dict[int, InModelScore] = {}
        seconds = 0.0
        with torch.inference_mode():
            for indices in groups.values():
                for start in range(0, len(indices), judge.batch_size):
                    batch = indices[start : start + judge.batch_size]
                    ctx = [list(contexts[i]) for i in batch]
                    state, spent = timed_call(judge.device, self._prefill, judge, ctx, rate)
                    seconds += spent
                    cont = self._tail_nlls(judge, state, [list(continuations[i]) for i in batch])
                    recover = self._tail_nlls(judge, state, [[*sep, *c] for c in ctx], skip=len(sep))
                    for row, index in enumerate(batch):
                        scores[index] = InModelScore(
                            context_nll=recover[row],
                            continuation_nll=cont[row],
                            positions_kept=sum(state.layer_lengths),
                            positions_total=state.length * len(state.layer_lengths),
                            layer_kept=list(state.layer_lengths),
                            layer_total=[state.length] * len(state.layer_lengths),
                        )
        return InModelResult(scores=[scores[i] for i in range(len(contexts))], compress_seconds=seconds)


def build_kvpress_method(argument: str, context: MethodContext) -> KVPressCompressor:
    """Factory of ``kvpress:<press>``: see :data:`PRESSES` for the names.

    :raises InputError: for an unknown press name.
    :raises KVPressNotInstalledError: without kvpress.
    """
    del context  # the press runs on the judge handed to ``score``
    return KVPressCompressor(argument)


register_method("kvpress", build_kvpress_method, overwrite=True, in_model=True)
