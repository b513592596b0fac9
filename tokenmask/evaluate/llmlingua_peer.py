"""LLMLingua (Jiang et al., 2023) through the ``llmlingua`` package, run offline with a local LM.

Install it with the ``peers`` extra (``pip install tokenmask[peers]``). Two things make the
package work on a machine without network access:

* ``PromptCompressor.__init__`` asks ``tiktoken`` for the ``gpt-3.5-turbo`` encoding, which
  ``tiktoken`` downloads. :class:`JudgeEncoding` stands in for it: it counts and decodes with
  the judge's tokenizer, so LLMLingua's token budgets are in judge tokens, the unit of our rate.
* It loads its small LM with ``from_pretrained(model_name)``. :class:`LocalPromptCompressor`
  instead takes the (already loaded) reconstructor's model and tokenizer.

It also adapts LLMLingua's key/value cache handling (tuples of tensors) to the ``Cache`` objects
of transformers 5. LLMLingua's own ``rate`` is the fraction *kept*; ours is the fraction
removed, so it is asked for ``1 - rate``. It does not hit the rate exactly (docs/evaluation.md: it
misses by 0.10 to 0.15); the evaluation reports the achieved rate.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from tokenmask.evaluate.compressor import CompressedContext, Compressor, TokenIds, check_rate
from tokenmask.reconstructors import Reconstructor

try:  # optional dependency (extra "peers")
    from llmlingua import PromptCompressor
except ImportError as _exc:  # pragma: no cover - depends on the environment
    PromptCompressor = object
    _IMPORT_ERROR: ImportError | None = _exc
else:
    _IMPORT_ERROR = None


def llmlingua_available() -> bool:
    """Whether the ``llmlingua`` package can be imported."""
    return _IMPORT_ERROR is None


class JudgeEncoding:
    """A stand-in for a ``tiktoken`` encoding backed by a Hugging Face tokenizer (no download).

    :param tokenizer: the judge's tokenizer.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.name = f"judge:{getattr(tokenizer, 'name_or_path', 'tokenizer')}"

    def encode(self, text: str, **_: Any) -> list[int]:
        """Token ids of ``text`` (no special tokens); tiktoken's keyword arguments are accepted and ignored."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, tokens: Sequence[int], **_: Any) -> str:
        """Text of token ids."""
        return str(self.tokenizer.decode(list(tokens)))


class _IndexableCache:
    """Builds a transformers ``DynamicCache`` from LLMLingua's legacy ``[(key, value), ...]`` cache."""

    @staticmethod
    def from_legacy(layers: Sequence[Sequence[torch.Tensor]]) -> Any:
        from transformers import DynamicCache

        class _Cache(DynamicCache):  # LLMLingua reads ``cache[0][0].shape[2]``
            def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
                layer: Any = self.layers[index]
                return layer.keys, layer.values

        return _Cache([(k, v) for k, v in layers])

    @staticmethod
    def to_legacy(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if hasattr(cache, "layers"):
            return [(layer.keys, layer.values) for layer in cache.layers]
        return [(k, v) for k, v, *_ in cache]


class LocalPromptCompressor(PromptCompressor):  # type: ignore[misc,valid-type]
    """``llmlingua.PromptCompressor`` (LLMLingua-1) on an already loaded local LM, fully offline.

    It sets the attributes ``PromptCompressor.__init__`` of llmlingua 0.2.x sets, without its
    ``tiktoken`` download and without loading a second copy of the model.

    :param lm: the reconstructor whose model and tokenizer LLMLingua uses (not modified).
    """

    def __init__(self, lm: Reconstructor) -> None:  # noqa: D107 - deliberately not calling super().__init__
        if _IMPORT_ERROR is not None:
            raise ImportError(
                "The llmlingua baseline needs the llmlingua package. Fix: pip install 'tokenmask[peers]'."
            ) from _IMPORT_ERROR
        self.model_name = lm.name
        self.use_llmlingua2 = False
        self.retrieval_model = None
        self.retrieval_model_name = None
        self.open_api_config: dict[str, Any] = {}
        self.cache_bos_num = 10
        self.prefix_bos_num = 100
        tokenizer = copy.deepcopy(lm.tokenizer)  # LLMLingua pads on the left; the judge's stays as it is
        tokenizer.padding_side = "left"
        tokenizer.pad_token_id = lm.pad_token_id
        self.oai_tokenizer = JudgeEncoding(tokenizer)
        self.tokenizer = tokenizer
        self.model = lm.model
        self.device = str(lm.device)
        self.context_idxs: list[Any] = []
        self.max_position_embeddings = int(getattr(lm.model.config, "max_position_embeddings", 2048))

    def get_ppl(
        self,
        text: str,
        granularity: str = "sentence",
        input_ids: Any = None,
        attention_mask: Any = None,
        past_key_values: Any = None,
        return_kv: bool = False,
        end: Any = None,
        condition_mode: str = "none",
        condition_pos_id: int = 0,
    ) -> Any:
        """LLMLingua's per-token loss, with its tuple caches converted to and from transformers caches."""
        if past_key_values is not None and not hasattr(past_key_values, "layers"):
            past_key_values = _IndexableCache.from_legacy(past_key_values)
        result = super().get_ppl(
            text,
            granularity,
            input_ids,
            attention_mask,
            past_key_values,
            return_kv,
            end,
            condition_mode,
            condition_pos_id,
        )
        if not return_kv:
            return result
        loss, cache = result
        return loss, _IndexableCache.to_legacy(cache)


class LLMLinguaCompressor(Compressor):
    """LLMLingua-1 token-level compression (the package's default settings), one context at a time.

    :param lm: the small LM LLMLingua scores tokens with (the judge by default).
    :param iterative_size: tokens per LLMLingua iteration (package default 200).
    :param compress_kwargs: further keyword arguments of ``PromptCompressor.compress_prompt``.
    """

    default_name = "llmlingua"

    def __init__(
        self, lm: Reconstructor, iterative_size: int = 200, name: str | None = None, **compress_kwargs: Any
    ) -> None:
        super().__init__(lm.tokenizer, name)
        self.prompt_compressor = LocalPromptCompressor(lm)
        self.iterative_size = iterative_size
        self.compress_kwargs = compress_kwargs

    def compress(
        self,
        contexts: Sequence[TokenIds],
        rate: float,
        texts: Sequence[str] | None = None,
        seed: int = 0,
    ) -> list[CompressedContext]:
        """Compress each context text with LLMLingua asked to keep ``1 - rate`` (no keep mask: it rewrites text)."""
        check_rate(rate)
        out = []
        for ids, text in zip(contexts, self.texts_of(contexts, texts)):
            if rate == 0.0:
                out.append(CompressedContext(text=text))
                continue
            # LLMLingua keeps every token of a prompt shorter than one iteration; shorten the
            # iteration to the context (no effect for contexts of at least iterative_size tokens)
            iterative_size = max(1, min(self.iterative_size, len(ids)))
            result = self.prompt_compressor.compress_prompt(
                [text], rate=1.0 - rate, iterative_size=iterative_size, **self.compress_kwargs
            )
            out.append(CompressedContext(text=str(result["compressed_prompt"])))
        return out
