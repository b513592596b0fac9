"""KV-cache memory, pre-fill time and decode speed after a compressed pre-fill (issue 13, item 4).

For each context length and method, ``--batch-size`` rows of ``context`` tokens (BOS included) are
pre-filled, the KV cache the pre-fill leaves is kept, and ``--new-tokens`` greedy decode steps are
run that each feed one token per row and read that cache. One Markdown row per (context, method,
rate):

- **KV MiB**: bytes of the key and value tensors the cache holds after the pre-fill, summed over
  all layers (what is allocated, padding included). **KV saved** = 1 - that / the uncompressed
  cache's bytes: docs/evaluation.md's in-model rate, measured on the tensors held.
- **peak MiB**: on a GPU ``torch.cuda.max_memory_allocated`` over pre-fill and decode (weights
  included); on a CPU the growth of the process's peak resident set (``VmHWM``, reset through
  ``/proc/self/clear_refs``) over the same span, after ``malloc_trim``.
- **pre-fill s**: wall time of the pre-fill of every row (in ``--prefill-batch`` row chunks whose
  caches are then joined); **decode tok/s**: ``batch x new_tokens`` / wall time of the decode.
  Every (method, rate) is warmed up first (one row, same context, two decode steps); the GPU is
  synchronised around every timed span; everything runs under ``torch.no_grad``.

Methods (``--methods``, comma-separated):

- ``none``: the unmodified LM (its Hugging Face forward with a ``DynamicCache``).
- ``activation[:ARG]``: tokenmask's activation clustering, built as ``tokenmask evaluate`` builds
  it (``ARG``: a JSON of ``CompressionConfig`` keys with a layer plan, a trained folder, or empty).
  The pre-fill is ``CompressedCausalLM.prefill(ids, target_rate=rate)``: the clusters follow the
  plan's shape and remove ``rate`` of the KV entries over all layers (``--rates plan``: the plan's
  own causal thresholds instead). Its cache holds every position below the first compression layer
  and, from there on, the last level's clusters plus the raw last context token; padded cluster
  slots of rows that formed fewer are masked. ``tests/test_kv_memory.py`` checks that the decode
  predicts what the model's own pre-fill forward predicts for the same tokens.
- ``kvpress:<press>`` (``tokenmask.evaluate.kvpress_peer.PRESSES``) where kvpress is importable
  (kvpress 0.5.x needs transformers < 5.3: run it in ``.venv-kvpress``): the pre-fill runs with the
  press attached (``compression_ratio`` = rate), decoding runs without it, as kvpress's pipeline does.

Decoding: every method's cache is moved into a
:class:`~tokenmask.activation_compression.decoding.StaticKVCache` (buffers with room for the new
tokens, counted in the pre-fill time) and read by the same
:class:`~tokenmask.activation_compression.decoding.CachedDecoder` (activation through the model's
``decode_step``, which adds the restore gate on the new token): packed grouped-query attention and,
on a GPU, the whole step replayed as a CUDA graph captured before the clock starts
(``--no-cuda-graph``: eager steps). The note column gives the largest logit difference between the
graphed and the eager decode of one row. Positions continue after the full context.

Weights: ``--random-weights`` builds a ``LlamaForCausalLM`` of the SmolLM2-135M shape from a
config (random ids; no GGUF, no tokenizer file needed), else ``--model`` (the embedded SmolLM2)
reads corpus text. Examples::

    python benchmarks/kv_memory.py --contexts 512,1024 --new-tokens 16 --random-weights   # CPU check
    python benchmarks/kv_memory.py --random-weights --time-limit 540 --json runs/kv_memory.json   # GPU: 4k, 8k
    .venv-kvpress/bin/python benchmarks/kv_memory.py --random-weights --methods none,kvpress:snapkv
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib.metadata
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from tokenmask.activation_compression.backbone import Backbone, backbone_for, cache_argument
from tokenmask.activation_compression.decoding import CachedDecoder, StaticKVCache
from tokenmask.evaluate.reports import device_description
from tokenmask.reconstructors import Reconstructor
from tokenmask.timing import synchronize

MIB = 1024.0 * 1024.0
DEFAULT_METHODS = (
    "none,activation:configs/dev/activation_method_rate50.json,kvpress:expected_attention,kvpress:snapkv"
)
WARMUP_STEPS = 2


# ---------------------------------------------------------------------------------------- the model
def smollm2_135m_config() -> Any:
    """A ``LlamaConfig`` of SmolLM2-135M's shape (30 layers, width 576, 9 query / 3 KV heads)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )


def ids_only_tokenizer() -> Any:
    """A three-token tokenizer built in memory: random-weight runs need only its BOS/EOS ids (1, 2)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<|im_start|>", eos_token="<|im_end|>", unk_token="<|endoftext|>"
    )


def random_reconstructor(
    config: Any, device: torch.device, dtype: torch.dtype, seed: int = 0
) -> Reconstructor:
    """A randomly initialised causal LM of ``config`` on ``device`` in ``dtype``, as a Reconstructor."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).to(device=device, dtype=dtype).eval()
    return Reconstructor(model, ids_only_tokenizer(), None, name=f"random:{config.model_type}")


# ---------------------------------------------------------------------------------------- the cache
@dataclass
class Prefilled:
    """What a pre-fill leaves for decoding.

    :param cache: the :class:`StaticKVCache` every method's decode reads (room for the new tokens).
    :param first_logits: ``(B, V)`` float32 logits of the first new token.
    :param next_position: position id of the first new token (the full context length).
    :param counted_rate: the method's own count of the in-model rate, when it reports one.
    :param state: activation: the model's ``DecodeState`` (its ``decode_step`` decodes), else ``None``.
    """

    cache: StaticKVCache
    first_logits: torch.Tensor
    next_position: int
    counted_rate: float | None = None
    state: Any = None


def join_prefilled(parts: list[Prefilled], reserve: int) -> Prefilled:
    """One cache of all rows from row chunks (:meth:`StaticKVCache.concat`: one layer of extra memory)."""
    if len(parts) == 1:
        return parts[0]
    cache = StaticKVCache.concat([p.cache for p in parts], reserve)
    rates = [p.counted_rate for p in parts]
    rows = [p.first_logits.shape[0] for p in parts]
    counted = (
        None
        if any(r is None for r in rates)
        else sum(float(r) * n for r, n in zip(rates, rows) if r is not None) / sum(rows)
    )
    logits = torch.cat([p.first_logits for p in parts])
    state = None
    if parts[0].state is not None:
        first = parts[0].state
        output = replace(
            first.output,
            layer_kept=torch.cat([p.state.output.layer_kept for p in parts]),
            layer_total=torch.cat([p.state.output.layer_total for p in parts]),
        )
        position = torch.cat([p.state.next_position for p in parts])
        state = type(first)(cache, position, logits, output)
    return Prefilled(cache, logits, parts[0].next_position, counted, state)


# ---------------------------------------------------------------------------------------- methods
class BenchMethod:
    """One row of the table: how a batch of equal-length rows is pre-filled.

    :param name: the method as given on the command line.
    :param rate: rate asked (``None``: uncompressed, or the activation plan's own thresholds).
    """

    def __init__(self, name: str, rate: float | None) -> None:
        self.name = name
        self.rate = rate

    @property
    def rate_label(self) -> str:
        """The rate column."""
        return "-" if self.rate is None else f"{self.rate:g}"

    def prefill(self, recon: Reconstructor, ids: torch.Tensor, reserve: int) -> Prefilled:
        """Pre-fill ``ids`` ``(B, N)`` (BOS first, no padding), leaving ``reserve`` cache slots free."""
        raise NotImplementedError


class Uncompressed(BenchMethod):
    """The unmodified LM: its Hugging Face forward fills a ``DynamicCache``; ``press`` prunes it on the way."""

    def __init__(self, name: str = "none", rate: float | None = None, press: Any = None) -> None:
        super().__init__(name, rate)
        self.press = press

    def prefill(self, recon: Reconstructor, ids: torch.Tensor, reserve: int) -> Prefilled:
        from transformers import DynamicCache

        cache = DynamicCache()
        decoder = recon.model.base_model
        arguments = {"input_ids": ids, "use_cache": True, cache_argument(decoder): cache}
        if self.press is None:
            out = decoder(**arguments)
        else:
            with self.press(recon.model):
                out = decoder(**arguments)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        logits = recon.head_logits(hidden[:, -1])
        static = StaticKVCache.from_cache(cache, [None] * len(cache.layers), reserve)
        return Prefilled(static, logits, int(ids.shape[1]))


def kvpress_method(name: str, press: str, rate: float) -> Uncompressed:
    """``kvpress:<press>`` at ``rate`` (its ``compression_ratio``), through tokenmask's kvpress peer."""
    from tokenmask.evaluate.kvpress_peer import make_press

    return Uncompressed(name, rate, make_press(press, rate))


class ActivationPrefill(BenchMethod):
    """Activation clustering through ``CompressedCausalLM.prefill`` (its own KV cache) and ``decode_step``.

    :param model: the compressed model (``tokenmask.activation_compression.CompressedCausalLM``).
    """

    def __init__(self, name: str, rate: float | None, model: Any) -> None:
        super().__init__(name, rate)
        self.model = model

    @property
    def rate_label(self) -> str:
        return "plan" if self.rate is None else f"{self.rate:g}"

    def prefill(self, recon: Reconstructor, ids: torch.Tensor, reserve: int) -> Prefilled:
        state = self.model.prefill(ids, target_rate=self.rate, reserve=reserve)
        return Prefilled(state.cache, state.logits, int(ids.shape[1]), float(state.output.rate), state)


def build_methods(
    spec: str, rates: Sequence[float | None], recon: Reconstructor
) -> tuple[list[BenchMethod], str]:
    """The table rows of one ``--methods`` entry, or none and the reason it is skipped.

    :param spec: ``none``, ``activation[:ARG]`` or ``kvpress:<press>``.
    :param rates: asked rates; ``None`` (``plan``) applies to activation only.
    """
    prefix, _, argument = spec.partition(":")
    if prefix == "none":
        return [Uncompressed()], ""
    if prefix == "activation":
        from tokenmask.evaluate.compressor import MethodContext, build_method

        method: Any = build_method(spec, MethodContext(judge=recon, device=str(recon.device)))
        return [ActivationPrefill(spec, rate, method.model) for rate in rates], ""
    if prefix == "kvpress":
        from tokenmask.evaluate.kvpress_peer import check_kvpress_argument

        try:
            check_kvpress_argument(argument)
            import kvpress  # noqa: F401  (installed but broken beside transformers >= 5.3)
        except ImportError as exc:
            return [], f"kvpress is not importable here ({type(exc).__name__}); run it under .venv-kvpress"
        return [kvpress_method(spec, argument, rate) for rate in rates if rate is not None], ""
    raise SystemExit(f"Unknown method {spec!r}. Fix: use none, activation[:ARG] or kvpress:<press>.")


# ---------------------------------------------------------------------------------------- decoding
def decoder_for(
    recon: Reconstructor,
    backbone: Backbone,
    state: Prefilled,
    method: BenchMethod | None = None,
    cuda_graph: bool | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The decode step of ``state``: ``(B,)`` tokens fed -> ``(B, V)`` next logits; its CUDA graph already captured.

    Every method decodes through the same :class:`CachedDecoder` (activation through the model's
    ``decode_step``, which adds the restore gate on the new token).

    :param cuda_graph: replay the step as a CUDA graph (default: on a GPU).
    """
    model = getattr(method, "model", None)
    if state.state is not None and model is not None:
        decode_state = state.state
        if decode_state.decoder is None:
            decode_state.decoder = CachedDecoder(
                backbone,
                recon.head_logits,
                state.cache,
                decode_state.next_position,
                restore=model.restore,
                restore_from=decode_state.output.first_layer,
                cuda_graph=cuda_graph,
            )
        decode_state.decoder.prepare()
        return lambda tokens: model.decode_step(decode_state, tokens)  # type: ignore[no-any-return]
    rows = state.first_logits.shape[0]
    position = torch.full((rows,), state.next_position, device=state.first_logits.device)
    decoder = CachedDecoder(backbone, recon.head_logits, state.cache, position, cuda_graph=cuda_graph)
    decoder.prepare()
    return decoder.step


def greedy_decode(
    recon: Reconstructor,
    backbone: Backbone,
    state: Prefilled,
    steps: int,
    method: BenchMethod | None = None,
    keep_logits: bool = False,
    cuda_graph: bool | None = None,
    step_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Feed ``steps`` greedy tokens, one per row and step, each reading and extending ``state.cache``.

    The first token is the argmax of the pre-fill's logits; step ``t`` runs at position
    ``next_position + t``.

    :param step_fn: the decode step (default: :func:`decoder_for` of ``state``).
    :return: ``(B, steps)`` the tokens fed, and (``keep_logits``) the logits that chose each token
        and the one after the last.
    """
    step_fn = step_fn or decoder_for(recon, backbone, state, method, cuda_graph)
    token = state.first_logits.argmax(-1)
    fed: list[torch.Tensor] = []
    logits_seen = [state.first_logits] if keep_logits else []
    for _ in range(steps):
        fed.append(token)
        logits = step_fn(token)
        token = logits.argmax(-1)
        if keep_logits:
            logits_seen.append(logits)
    return torch.stack(fed, 1), logits_seen


def graph_error(method: BenchMethod, recon: Reconstructor, ids: torch.Tensor, steps: int = 4) -> float:
    """Largest logit difference between the graphed and the eager decode of the same pre-fill (GPU only)."""
    backbone = backbone_for(recon.model)
    seen = []
    with torch.no_grad():
        for graph in (False, True):
            state = method.prefill(recon, ids.to(recon.device), steps)
            _, logits = greedy_decode(
                recon, backbone, state, steps, method, keep_logits=True, cuda_graph=graph
            )
            seen.append(torch.stack(logits))
    return float((seen[0] - seen[1]).abs().max())


# ---------------------------------------------------------------------------------------- measuring
class PeakMemory:
    """Peak memory over a span: the CUDA allocator's peak, or the growth of the peak RSS on a CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._start_rss = 0.0
        self._libc: Any = None
        if device.type != "cuda":
            try:
                self._libc = ctypes.CDLL("libc.so.6")
            except OSError:
                self._libc = None

    @property
    def kind(self) -> str:
        """What the number is, in words."""
        if self.device.type == "cuda":
            return "torch.cuda.max_memory_allocated over pre-fill + decode, weights included"
        return "growth of the peak RSS (VmHWM reset via /proc/self/clear_refs) over pre-fill + decode"

    def start(self) -> None:
        """Forget earlier peaks."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        if self._libc is not None:
            self._libc.malloc_trim(0)
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self._start_rss = math.nan
            return
        self._start_rss = _status_kib("VmRSS")

    def peak_bytes(self) -> float:
        """Peak since :meth:`start` (NaN where the RSS peak cannot be reset)."""
        if self.device.type == "cuda":
            return float(torch.cuda.max_memory_allocated(self.device))
        return (_status_kib("VmHWM") - self._start_rss) * 1024.0


def _status_kib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return float(line.split()[1])
    return math.nan


@dataclass
class Measurement:
    """One row of the table (sizes in bytes, times in seconds)."""

    context: int
    method: str
    rate: str
    batch: int
    prefill_rows: int
    new_tokens: int
    kv_bytes: int = 0
    kv_bytes_uncompressed: int = 0
    kv_saved: float = math.nan
    counted_rate: float | None = None
    peak_bytes: float = math.nan
    prefill_seconds: float = math.nan
    decode_seconds: float = math.nan
    decode_tokens_per_second: float = math.nan
    layer_entries: list[int] = field(default_factory=list)
    note: str = ""


def uncompressed_kv_bytes(recon: Reconstructor, rows: int, positions: int) -> int:
    """Bytes of the uncompressed cache of ``rows`` x ``positions`` over all layers."""
    backbone = backbone_for(recon.model)
    element = torch.finfo(backbone.dtype).bits // 8
    return backbone.num_layers * rows * positions * backbone.kv_values_per_position * element


def measure(
    method: BenchMethod,
    recon: Reconstructor,
    ids: torch.Tensor,
    new_tokens: int,
    prefill_rows: int | None = None,
    peak: PeakMemory | None = None,
    cuda_graph: bool | None = None,
) -> tuple[Measurement, torch.Tensor]:
    """Pre-fill ``ids`` ``(B, N)`` with ``method``, decode ``new_tokens`` steps, and measure both (no warm-up).

    The decode step's CUDA graph is captured before the decode's clock starts.

    :param prefill_rows: rows per pre-fill forward (default: all at once).
    :param cuda_graph: as :func:`greedy_decode`.
    :return: the measurement and the ``(B, new_tokens)`` tokens fed.
    """
    device = recon.device
    ids = ids.to(device)
    b, n = ids.shape
    rows = min(prefill_rows or b, b)
    peak = peak or PeakMemory(device)
    backbone = backbone_for(recon.model)
    row = Measurement(n, method.name, method.rate_label, b, rows, new_tokens)
    with torch.no_grad():
        peak.start()
        began = time.perf_counter()
        parts = [method.prefill(recon, ids[i : i + rows], new_tokens) for i in range(0, b, rows)]
        state = join_prefilled(parts, new_tokens)
        del parts
        synchronize(device)
        row.prefill_seconds = time.perf_counter() - began
        row.kv_bytes = state.cache.filled_bytes()
        row.layer_entries = list(state.cache.lengths)
        row.counted_rate = state.counted_rate
        step_fn = decoder_for(recon, backbone, state, method, cuda_graph)
        synchronize(device)
        began = time.perf_counter()
        tokens, _ = greedy_decode(recon, backbone, state, new_tokens, method, step_fn=step_fn)
        synchronize(device)
        row.decode_seconds = time.perf_counter() - began
        row.peak_bytes = peak.peak_bytes()
        grown = [after - before for after, before in zip(state.cache.lengths, row.layer_entries)]
        if grown != [new_tokens] * len(grown):
            raise RuntimeError(f"The decode did not extend every layer's cache by {new_tokens}: {grown}.")
    row.kv_bytes_uncompressed = uncompressed_kv_bytes(recon, b, n)
    row.kv_saved = 1.0 - row.kv_bytes / row.kv_bytes_uncompressed
    row.decode_tokens_per_second = b * new_tokens / row.decode_seconds
    del state
    return row, tokens.cpu()


def warm_up(
    method: BenchMethod, recon: Reconstructor, ids: torch.Tensor, cuda_graph: bool | None = None
) -> tuple[float, Measurement]:
    """One untimed pre-fill of ``ids`` plus two decode steps: the peak bytes above the start (GPU) and its row."""
    device = recon.device
    before = float(torch.cuda.memory_allocated(device)) if device.type == "cuda" else 0.0
    row, _ = measure(method, recon, ids, WARMUP_STEPS, cuda_graph=cuda_graph)
    return (row.peak_bytes - before if device.type == "cuda" else row.peak_bytes), row


def bench_row(
    method: BenchMethod,
    recon: Reconstructor,
    ids: torch.Tensor,
    new_tokens: int,
    prefill_batch: str,
    peak: PeakMemory,
    deadline: float | None = None,
    cuda_graph: bool | None = None,
) -> Measurement:
    """Warm up, then measure one (method, rate) on every row of ``ids``; a skipped or failed row says why.

    On a GPU with CUDA graphs on, the note gives the largest logit difference between the graphed
    and the eager decode of the first row (:func:`graph_error`).

    :param prefill_batch: rows per pre-fill forward, or ``auto``.
    :param deadline: ``time.perf_counter()`` value after which no row starts (estimated from the warm-up).
    :param cuda_graph: as :func:`greedy_decode`.
    """
    b, n = ids.shape
    skipped = Measurement(n, method.name, method.rate_label, b, 0, new_tokens)
    if deadline is not None and time.perf_counter() > deadline:
        skipped.note = "skipped: --time-limit reached"
        return skipped
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            row_peak, warm = warm_up(method, recon, ids[:1], cuda_graph)
            graphed = recon.device.type == "cuda" and cuda_graph is not False
            error = graph_error(method, recon, ids[:1]) if graphed else None
            rows = (
                auto_prefill_rows(recon, b, n, new_tokens, row_peak)
                if prefill_batch == "auto"
                else int(prefill_batch)
            )
            estimate = warm.prefill_seconds * b + warm.decode_seconds / WARMUP_STEPS * new_tokens
            print(
                f"  {method.name} rate {method.rate_label}: warm-up pre-fill {warm.prefill_seconds:.3f} s per row, "
                f"{rows} rows per pre-fill forward, about {estimate:.0f} s",
                flush=True,
            )
            if deadline is not None and time.perf_counter() + estimate > deadline:
                skipped.note = f"skipped: about {estimate:.0f} s would pass --time-limit"
                return skipped
            row, _ = measure(method, recon, ids, new_tokens, rows, peak, cuda_graph)
        notes = sorted(
            {
                str(w.message).split(";")[0].split(".")[0]
                for w in caught
                if "out of reach" in str(w.message) or "CUDA graph" in str(w.message)
            }
        )
        if error is not None:
            notes.insert(0, f"graph vs eager logits max diff {error:.2g}")
        if row.counted_rate is not None:
            notes.insert(0, f"model counts rate {row.counted_rate:.3f}")
        row.note = "; ".join(notes)
        return row
    except torch.cuda.OutOfMemoryError:
        gc.collect()
        torch.cuda.empty_cache()
        skipped.note = "out of memory: lower --batch-size or --prefill-batch"
        return skipped


# ---------------------------------------------------------------------------------------- inputs
def context_rows(
    recon: Reconstructor, rows: int, length: int, random_ids: bool, corpus: str | None, seed: int
) -> torch.Tensor:
    """``(rows, length)`` ids, BOS first: random ids, or windows of the corpus's token stream."""
    generator = torch.Generator().manual_seed(seed)
    bos = recon.bos_token_id
    if random_ids:
        embeddings: Any = recon.model.get_input_embeddings()
        vocab = int(embeddings.weight.shape[0])
        body = torch.randint(3, vocab, (rows, length - 1), generator=generator)
    else:
        from tokenmask.data import iter_texts, sample_corpus_path

        source = corpus or (str(Path("data/pydocs.jsonl")) if Path("data/pydocs.jsonl").is_file() else None)
        stream: list[int] = []
        for text in iter_texts(source or sample_corpus_path()):
            stream += recon.encode(text + "\n\n")
            if len(stream) >= length + rows * 64:
                break
        while len(stream) < length:
            stream = stream + stream
        last_start = len(stream) - (length - 1)  # rows start at spread offsets of the stream
        stride = max(1, last_start // rows)
        starts = [(i * stride) % (last_start + 1) for i in range(rows)]
        body = torch.tensor([stream[s : s + length - 1] for s in starts])
    return torch.cat([torch.full((rows, 1), bos, dtype=torch.long), body.long()], 1)


def auto_batch(recon: Reconstructor, context: int, new_tokens: int, fill: float) -> int:
    """GPU: the rows whose uncompressed cache (context + new tokens) takes ``fill`` of the free memory; CPU: 1."""
    if recon.device.type != "cuda":
        return 1
    free, _ = torch.cuda.mem_get_info(recon.device)
    return max(1, int(fill * free // uncompressed_kv_bytes(recon, 1, context + new_tokens)))


def auto_prefill_rows(
    recon: Reconstructor, batch: int, context: int, new_tokens: int, row_peak: float
) -> int:
    """GPU: rows per pre-fill forward that fit beside the batch's (at most uncompressed) cache; CPU: all."""
    if recon.device.type != "cuda" or not row_peak > 0:
        return batch
    free, _ = torch.cuda.mem_get_info(recon.device)
    spare = free - uncompressed_kv_bytes(recon, batch, context + new_tokens)
    return int(min(max(1, 0.8 * spare // row_peak), batch))


# ---------------------------------------------------------------------------------------- reporting
def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:,.{digits}f}"


def markdown(rows: Sequence[Measurement], header: Sequence[str]) -> str:
    """The table, with the machine and settings above it."""
    lines = [*(f"- {h}" for h in header), ""]
    lines.append(
        "| context | method | rate | batch | KV MiB | KV saved | peak MiB | pre-fill s | decode tok/s | note |"
    )
    lines.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        lines.append(
            f"| {r.context} | {r.method} | {r.rate} | {r.batch} | {_fmt(r.kv_bytes / MIB if r.kv_bytes else math.nan, 1)} "
            f"| {_fmt(r.kv_saved, 3)} | {_fmt(r.peak_bytes / MIB, 1)} | {_fmt(r.prefill_seconds, 3)} "
            f"| {_fmt(r.decode_tokens_per_second, 1)} | {r.note} |"
        )
    return "\n".join(lines)


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def parse_rates(text: str) -> list[float | None]:
    """``0.3,0.5,plan`` -> ``[0.3, 0.5, None]``."""
    out: list[float | None] = []
    for item in text.split(","):
        item = item.strip()
        if item == "plan":
            out.append(None)
        elif item:
            value = float(item)
            if not 0.0 <= value < 1.0:
                raise SystemExit(f"--rates: {value} is outside [0, 1). Fix: e.g. --rates 0.3,0.5.")
            out.append(value)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contexts", default="4096,8192", help="context lengths in tokens, BOS included")
    parser.add_argument(
        "--batch-size", default="auto", help="rows (auto: fill --fill of the GPU; 1 on a CPU)"
    )
    parser.add_argument(
        "--fill",
        type=float,
        default=0.5,
        help="auto batch: share of free GPU memory for the uncompressed cache",
    )
    parser.add_argument(
        "--prefill-batch", default="auto", help="rows per pre-fill forward (auto: what fits; all on a CPU)"
    )
    parser.add_argument(
        "--methods", default=DEFAULT_METHODS, help="comma-separated: none, activation[:ARG], kvpress:<press>"
    )
    parser.add_argument(
        "--rates",
        default="0.3,0.5",
        help="rates of the compressing methods; 'plan': activation's own thresholds",
    )
    parser.add_argument("--new-tokens", type=int, default=128, help="greedy decode steps reading the cache")
    parser.add_argument(
        "--no-cuda-graph",
        action="store_true",
        help="decode eagerly on a GPU (default: a replayed CUDA graph)",
    )
    parser.add_argument(
        "--random-weights", action="store_true", help="random LlamaForCausalLM of SmolLM2-135M's shape"
    )
    parser.add_argument("--model", default="default", help="model name when weights are not random")
    parser.add_argument(
        "--corpus", default=None, help="text for real weights (default data/pydocs.jsonl or the sample)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="auto: bfloat16 on cuda, float32 elsewhere")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--time-limit", type=float, default=0.0, help="seconds after which no row starts (0: none)"
    )
    parser.add_argument(
        "--json", default=None, help="write the rows and settings here (atomically, after every row)"
    )
    args = parser.parse_args(argv)

    from tokenmask.io import atomic_write_json
    from tokenmask.reconstructors.loading import pick_device, pick_dtype

    device = pick_device(args.device)
    dtype = pick_dtype(device, args.dtype)
    if args.random_weights:
        recon = random_reconstructor(smollm2_135m_config(), device, dtype, args.seed)
    else:
        recon = Reconstructor.load(args.model, device=device, dtype=dtype)
    rates = parse_rates(args.rates)
    contexts = [int(x) for x in args.contexts.split(",") if x.strip()]
    weights = sum(p.numel() * p.element_size() for p in recon.model.parameters())
    peak = PeakMemory(device)
    header = [
        f"machine: {device_description(device)}; transformers {_version('transformers')}, kvpress {_version('kvpress')}",
        f"model: {recon.name} ({recon.num_parameters / 1e6:.0f} M parameters, {dtype}, {weights / MIB:.0f} MiB); "
        f"{'random ids' if args.random_weights else 'corpus text'}; {args.new_tokens} greedy tokens per row",
        f"peak MiB: {peak.kind}",
    ]
    print("\n".join(header), flush=True)
    methods: list[tuple[str, list[BenchMethod], str]] = []
    for spec in [s.strip() for s in args.methods.split(",") if s.strip()]:
        built, why = build_methods(spec, rates, recon)
        methods.append((spec, built, why))
    results: list[Measurement] = []

    def save() -> None:
        if args.json:
            atomic_write_json(
                args.json,
                {"header": header, "settings": vars(args), "rows": [asdict(r) for r in results]},
            )

    deadline = time.perf_counter() + args.time_limit if args.time_limit > 0 else None
    for context in contexts:
        batch = (
            auto_batch(recon, context, args.new_tokens, args.fill)
            if args.batch_size == "auto"
            else int(args.batch_size)
        )
        ids = context_rows(recon, batch, context, args.random_weights, args.corpus, args.seed)
        print(f"context {context}: batch {batch}", flush=True)
        for spec, built, why in methods:
            if why:
                results.append(Measurement(context, spec, "-", batch, 0, args.new_tokens, note=why))
                continue
            for method in built:
                row = bench_row(
                    method,
                    recon,
                    ids,
                    args.new_tokens,
                    args.prefill_batch,
                    peak,
                    deadline,
                    not args.no_cuda_graph,
                )
                results.append(row)
                print(
                    f"  {method.name} rate {method.rate_label}: KV {row.kv_bytes / MIB:.1f} MiB (saved {row.kv_saved:.3f}), "
                    f"pre-fill {row.prefill_seconds:.3f} s, {row.decode_tokens_per_second:.1f} tok/s {row.note}",
                    flush=True,
                )
                save()
        del ids
    print()
    print(markdown(results, header))
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
