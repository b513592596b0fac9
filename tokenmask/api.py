"""``tokenmask.compress``: compress texts from Python in one call.

Example::

    import tokenmask

    result = tokenmask.compress("Some long prompt ...", rate=0.5, method="span_self_information")
    print(result.text, result.rate)          # the compressed text, the fraction of tokens removed
    results = tokenmask.compress(["first text", "second text"], rate=0.3, agent="runs/ppo1")

What compresses, in this order:

* ``method=NAME``: any method registered with :func:`tokenmask.evaluate.register_method`
  (``truncation``, ``random``, ``self_information``, ``span_self_information``, ``llmlingua`` when
  installed, ``agent:RUN_DIR``; see :func:`tokenmask.evaluate.registered_methods`), built with the
  judge ``judge``;
* ``agent=`` a :class:`~tokenmask.evaluate.Compressor` object (e.g. an ``AgentCompressor``, or any
  method built once and reused across calls);
* ``agent=RUN_DIR``: the agent of a folder written by ``tokenmask train`` or ``tokenmask export``;
* ``agent="default"``: the agent shipped inside the package, in :data:`DEFAULT_AGENT_DIR`.

Only the light standard library loads with this module; models load when :func:`compress` runs.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, overload

if TYPE_CHECKING:
    from tokenmask.evaluate.compressor import Compressor
    from tokenmask.reconstructors import Reconstructor

from tokenmask.shipped_agent import (  # noqa: F401  (public here: tokenmask.api.DEFAULT_AGENT_DIR, ...)
    DEFAULT_AGENT,
    DEFAULT_AGENT_DIR,
    AgentNotFoundError,
    shipped_agent_available,
    shipped_agent_dir,
)


@dataclass(frozen=True)
class CompressionResult:
    """One compressed text.

    :param text: the compressed text (for masking methods: the kept tokens in order, with one
        space or newline where the dropped ones held the only whitespace between two kept ones).
    :param keep: per judge token of the input text, ``True`` = kept; ``None`` for methods that
        rewrite text instead of masking tokens (LLMLingua).
    :param rate: the fraction of the input's judge tokens removed, counted on the re-tokenized
        compressed text (as ``docs/evaluation.md`` counts it): ``1 - kept_tokens / tokens``.
    :param tokens: judge tokens of the input text.
    :param kept_tokens: judge tokens of the compressed text.
    """

    text: str
    keep: list[bool] | None
    rate: float
    tokens: int
    kept_tokens: int


@overload
def compress(  # type: ignore[overload-overlap]  # a str is also a Sequence[str]; the str overload wins
    texts: str,
    rate: float = ...,
    agent: str | os.PathLike[str] | Compressor | None = ...,
    method: str | None = ...,
    judge: str | Reconstructor = ...,
    device: str = ...,
    batch_size: int = ...,
    seed: int = ...,
) -> CompressionResult: ...


@overload
def compress(
    texts: Sequence[str],
    rate: float = ...,
    agent: str | os.PathLike[str] | Compressor | None = ...,
    method: str | None = ...,
    judge: str | Reconstructor = ...,
    device: str = ...,
    batch_size: int = ...,
    seed: int = ...,
) -> list[CompressionResult]: ...


def compress(
    texts: str | Sequence[str],
    rate: float = 0.5,
    agent: str | os.PathLike[str] | Compressor | None = "default",
    method: str | None = None,
    judge: str | Reconstructor = "default",
    device: str = "auto",
    batch_size: int = 64,
    seed: int = 0,
) -> CompressionResult | list[CompressionResult]:
    """Compress one text or a list of texts, removing the fraction ``rate`` of their tokens.

    :param texts: a text, or a list of texts (each non-empty).
    :param rate: fraction of each text's judge tokens to remove, in ``[0, 1)``. A text always keeps
        at least one token: where the rate would remove them all (a very short text), the method is
        asked for the rate that leaves one.
    :param agent: ``"default"`` (the agent shipped in :data:`DEFAULT_AGENT_DIR`), a folder
        written by ``tokenmask train`` or ``tokenmask export``, or a :class:`~tokenmask.evaluate.Compressor` object (an
        ``AgentCompressor``, a baseline, ...); leave it at ``"default"`` when giving ``method``.
    :param method: a registered method name (``span_self_information``, ``truncation``,
        ``self_information:MODEL``, ``agent:RUN_DIR``, ...) to use instead of an agent.
    :param judge: the LM (a model name for :meth:`Reconstructor.load`, or a loaded one) that
        ``method`` is built with: its tokenizer defines the tokens, LM-based methods score with it.
    :param device: device of the models loaded here (``auto``, ``cpu``, ``cuda``).
    :param batch_size: texts compressed together (one batched pass of the method per batch).
    :param seed: seed of randomised methods (same seed, same output).
    :return: a :class:`CompressionResult` for a text, a list of them (in order) for a list.
    :raises TypeError: if ``texts`` is not a str or a list of str.
    :raises ValueError: for an empty text, a rate outside ``[0, 1)``, an unknown method, or a
        method that returns no text (one that compresses inside the model).
    :raises AgentNotFoundError: if ``agent`` is neither the shipped agent nor a run folder.
    """
    single = isinstance(texts, str)
    batch = _check_texts(texts)
    _check_rate(rate)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}. Fix: e.g. batch_size=64.")
    if method is not None and agent not in ("default", None):
        raise ValueError(f"Both agent={agent!r} and method={method!r} were given. Fix: pass one of them.")
    compressor = _build_compressor(agent, method, judge, device, seed)
    results: list[CompressionResult] = []
    for start in range(0, len(batch), batch_size):
        results.extend(_compress_batch(compressor, batch[start : start + batch_size], rate, seed))
    for i, result in enumerate(results):
        # a very short text the rate would erase: never return nothing
        if result.kept_tokens == 0 and result.tokens:
            results[i] = _keep_one_token(compressor, batch[i], result.tokens, seed)
    return results[0] if single else results


def _keep_one_token(compressor: Compressor, text: str, tokens: int, seed: int) -> CompressionResult:
    """``text`` at the rate that leaves one of its ``tokens`` (the method still picks which), else at rate 0."""
    for rate in ((tokens - 1) / tokens, 0.0):
        result = _compress_batch(compressor, [text], rate, seed)[0]
        if result.kept_tokens:
            break  # (the one token kept may emit no text of its own: part of a character)
    return result


def _check_texts(texts: object) -> list[str]:
    if isinstance(texts, str):
        batch = [texts]
    elif isinstance(texts, Sequence) and not isinstance(texts, (bytes, bytearray)):
        batch = list(texts)
    else:
        raise TypeError(
            f"texts is a {type(texts).__name__}, not a str or a list of str. Fix: pass a str or a list of str"
            " (decode bytes first)."
        )
    if not batch:
        raise ValueError(
            "texts is an empty list: there is nothing to compress. Fix: pass a str or a non-empty list of str."
        )
    for i, text in enumerate(batch):
        if not isinstance(text, str):
            raise TypeError(
                f"texts[{i}] is a {type(text).__name__}, not a str. Fix: pass only str (decode bytes first)."
            )
        if not text.strip():
            raise ValueError(
                f"texts[{i}] is empty or only whitespace: there is nothing to compress. Fix: drop it or pass text."
            )
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # lone surrogates: bytes decoded with errors="surrogateescape"
            raise ValueError(
                f"texts[{i}] is not valid Unicode (character {exc.start} is a lone surrogate, left by bytes that "
                "were not UTF-8). Fix: decode the bytes with their real encoding first."
            ) from None
    return batch


def _check_rate(rate: object) -> None:
    from tokenmask.evaluate.compressor import check_rate

    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise TypeError(
            f"rate is a {type(rate).__name__}, not a number. Fix: pass the fraction of tokens to remove, e.g. rate=0.5."
        )
    check_rate(rate)


def _build_compressor(
    agent: str | os.PathLike[str] | Compressor | None,
    method: str | None,
    judge: str | Reconstructor,
    device: str,
    seed: int,
) -> Compressor:
    from tokenmask.evaluate.compressor import Compressor

    if method is not None:
        return build_text_method(method, judge, device, seed)
    if isinstance(agent, Compressor):
        return agent
    if agent is None:
        raise ValueError(
            "No agent and no method given. Fix: pass agent='default', agent=RUN_DIR or method='span_self_information'."
        )
    if not isinstance(agent, (str, os.PathLike)):
        raise TypeError(
            f"agent is a {type(agent).__name__}. Fix: pass 'default', a run folder path or a Compressor (e.g. AgentCompressor)."
        )
    run_dir = _agent_dir(agent)
    from tokenmask.train.agent import AgentCompressor

    return AgentCompressor.load(str(run_dir), device=device)


def build_text_method(
    method: str, judge: str | Reconstructor = "default", device: str = "auto", seed: int = 0
) -> Compressor:
    """A registered method that returns text, built with ``judge`` (what ``compress(method=...)`` and ``tokenmask
    compress --method`` use). A judge search on a CPU warns once that it is a GPU method.

    :raises ValueError: for an unknown method or a bad argument (before any model loads), or one that compresses inside
        the model.
    """
    from tokenmask.evaluate.compressor import Compressor, MethodContext, build_method, compresses_in_model
    from tokenmask.evaluate.runner import check_methods
    from tokenmask.reconstructors import Reconstructor

    check_methods([method])  # an unknown name or a bad argument fails here, before any model loads
    textless = ValueError(
        f"Method {method!r} compresses inside the model and returns no text. "
        "Fix: use a text method such as span_self_information or truncation."
    )
    if compresses_in_model(method):
        raise textless
    lm = (
        judge
        if isinstance(judge, Reconstructor)
        else Reconstructor.load(judge, device=device, add_mask_token=False)
    )
    built = build_method(method, MethodContext(judge=lm, seed=seed, device=device))
    if not isinstance(built, Compressor):  # an in-model method registered without in_model=True
        raise textless
    _warn_if_search_on_cpu(built, lm, method)
    return built


def _warn_if_search_on_cpu(built: Compressor, lm: Reconstructor, method: str) -> None:
    """A judge search (``refine*``, ``move_agent``) on a CPU: one warning that it is a GPU method."""
    from tokenmask.evaluate.refine import RecoverabilitySearch

    if isinstance(built, RecoverabilitySearch) and lm.device.type == "cpu":
        warnings.warn(
            f"{method} runs the judge search (dozens of judge passes per context), a GPU method: on a CPU it takes "
            "19x (move agent) to 300x (full search) LLMLingua's time (README, speed table). Fix: run it on a GPU "
            "(device='cuda'; tokenmask compress --device cuda), or use the shipped agent (no LM pass) on a CPU.",
            UserWarning,
            stacklevel=2,
        )


def _agent_dir(agent: str | os.PathLike[str]) -> Path:
    if str(agent) == DEFAULT_AGENT:
        return shipped_agent_dir(
            f"agent={DEFAULT_AGENT!r}",
            "pass method='span_self_information' (or another of tokenmask.evaluate.registered_methods()), "
            "or agent=RUN_DIR from `tokenmask train`.",
        )
    path = Path(agent)
    if not path.is_dir():
        raise AgentNotFoundError(
            f"agent {str(agent)!r} is neither 'default' nor a folder. "
            "Fix: pass a folder written by `tokenmask train` or `tokenmask export`, or method='span_self_information'."
        )
    return path


def _compress_batch(
    compressor: Compressor, texts: list[str], rate: float, seed: int
) -> list[CompressionResult]:
    tokenizer = compressor.tokenizer
    contexts = [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    outputs = compressor.compress(contexts, rate, texts=texts, seed=seed)
    if len(outputs) != len(texts):
        raise ValueError(f"{compressor.name} returned {len(outputs)} outputs for {len(texts)} texts.")
    emitted = [
        len(ids) for ids in tokenizer([o.text for o in outputs], add_special_tokens=False)["input_ids"]
    ]
    results = []
    for ids, output, kept in zip(contexts, outputs, emitted):
        kept = kept if output.text else 0
        results.append(
            CompressionResult(
                text=output.text,
                keep=None if output.keep is None else [bool(k) for k in output.keep],
                rate=1.0 - kept / len(ids),
                tokens=len(ids),
                kept_tokens=kept,
            )
        )
    return results
