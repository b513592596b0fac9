"""Measuring activation compression: perplexity with and without it, ratio, memory, bytes saved, time.

All figures are corpus figures (ratios of sums over sequences). ``rate`` is docs/evaluation.md's
in-model rate: ``1 - Σ positions kept / Σ positions``, summed over **all** decoder layers (the
fraction of the KV cache saved); ``ratio`` is positions / positions kept in the compressed layers
only (how hard those layers merge); ``kept_per_layer`` lists the fraction kept by each layer.
Perplexity is over every token
after BOS, each predicted from the compressed past (``full`` mode: closed clusters plus the raw
states of the position's own open cluster). Memory and time are measured on a pre-fill of the
whole sequence (``prefill`` mode: the compressed layers run on the clusters alone), the
uncompressed reference running the same code with ``compress=False``:

* ``peak_memory_*``: peak bytes of tensors allocated during the forward pass (CUDA allocator
  statistics on a GPU; on the CPU, allocations traced by the torch profiler);
* ``kv_bytes_*`` / ``hidden_bytes_*``: bytes of keys+values and of hidden states held by the
  pre-fill, summed over **all** layers (exact counts times the dtype's size);
* ``forward_ms_*``: wall time of the pre-fill, warm, median over ``repeats`` (compressed and
  uncompressed runs interleaved); ``forward_cpu_ms_*``: the process's CPU time for it (steadier
  than the wall clock on a shared machine).
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile
from tqdm.auto import tqdm

from tokenmask.activation_compression.config import ActivationEvaluateConfig, CompressionConfig
from tokenmask.activation_compression.merge_map import merge_map, write_merge_map
from tokenmask.activation_compression.model import META_FILE, CompressedCausalLM, kv_bytes
from tokenmask.activation_compression.plan import plan_rate
from tokenmask.activation_compression.report import write_report
from tokenmask.activation_compression.sequences import load_sequences
from tokenmask.reconstructors import Reconstructor, pad_batch
from tokenmask.timing import timed_call


def _batches(sequences: Sequence[Sequence[int]], batch_size: int) -> list[Sequence[Sequence[int]]]:
    return [sequences[i : i + batch_size] for i in range(0, len(sequences), batch_size)]


def lower_states(
    model: CompressedCausalLM, sequences: Sequence[Sequence[int]], batch_size: int = 4
) -> list[torch.Tensor]:
    """Per batch, the states entering the first compression layer (they do not depend on the threshold)."""
    states = []
    for batch in _batches(sequences, batch_size):
        ids, mask = pad_batch(batch, model.reconstructor.pad_token_id)
        states.append(model.lower_states(ids, mask))
    return states


def uncompressed_nll(
    model: CompressedCausalLM,
    sequences: Sequence[Sequence[int]],
    batch_size: int = 4,
    lower: Sequence[torch.Tensor] | None = None,
) -> float:
    """Σ NLL (nats) of every token after BOS under the unmodified base LM (``lower``: cached :func:`lower_states`)."""
    total = 0.0
    with torch.no_grad():
        for k, batch in enumerate(_batches(sequences, batch_size)):
            ids, mask = pad_batch(batch, model.reconstructor.pad_token_id)
            total += float(model.uncompressed_nlls(ids, mask, None if lower is None else lower[k]).sum())
    return total


def perplexity_comparison(
    model: CompressedCausalLM,
    sequences: Sequence[Sequence[int]],
    batch_size: int = 4,
    similarity_threshold: float | Sequence[float] | None = None,
    reference_nll: float | None = None,
    lower: Sequence[torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Perplexity with and without compression on the same sequences, and the ratio achieved.

    :param model: the compressed model.
    :param sequences: BOS-started token sequences.
    :param batch_size: sequences per forward pass.
    :param similarity_threshold: operating threshold, one or one per compression layer (default: the model's plan).
    :param reference_nll: :func:`uncompressed_nll` of the same sequences, if already known.
    :param lower: cached :func:`lower_states` of the same sequences and batch size, if already known.
    :return: ``compressed_perplexity``, ``uncompressed_perplexity``, ``perplexity_increase``
        (relative), ``rate`` (whole model, all layers), ``ratio`` (Σ positions / Σ kept in the
        compressed layers), ``kept_per_layer`` (list), ``tokens``.
    """
    compressed = 0.0
    tokens = 0
    layers = model.backbone.num_layers
    kept = torch.zeros(layers, dtype=torch.float64)
    total = torch.zeros(layers, dtype=torch.float64)
    with torch.no_grad():
        for k, batch in enumerate(_batches(sequences, batch_size)):
            ids, mask = pad_batch(batch, model.reconstructor.pad_token_id)
            score = mask.bool().clone()
            score[:, 0] = False
            output = model(
                ids,
                mask,
                similarity_threshold=similarity_threshold,
                lower_hidden=None if lower is None else lower[k],
            )
            compressed += float(model.token_nlls(output, ids, score).sum())
            tokens += int(score.sum())
            kept += output.layer_kept.sum(0).double().cpu()
            total += output.layer_total.sum(0).double().cpu()
    uncompressed = (
        uncompressed_nll(model, sequences, batch_size, lower) if reference_nll is None else reference_nll
    )
    c, u = compressed / tokens, uncompressed / tokens
    first = model.layer_indices[0]
    return {
        "compressed_perplexity": math.exp(c),
        "uncompressed_perplexity": math.exp(u),
        "perplexity_increase": math.exp(c - u) - 1.0,
        "rate": 1.0 - float(kept.sum() / total.sum()) if float(total.sum()) else 0.0,
        "ratio": float(total[first:].sum() / kept[first:].sum()) if float(kept[first:].sum()) else 1.0,
        "kept_per_layer": [float(k / t) if t else 1.0 for k, t in zip(kept.tolist(), total.tolist())],
        "tokens": float(tokens),
    }


def _peak_cpu_bytes(fn: Any) -> float:
    """Peak bytes of torch tensors alive while ``fn()`` runs on the CPU (allocations traced by the profiler)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    current = peak = 0.0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        # frees outside an op come as "[memory]" events; an op's own allocations as its self memory
        current += event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


def _peak_bytes(model: CompressedCausalLM, fn: Any) -> float:
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
        torch.cuda.reset_peak_memory_stats(model.device)
        start = torch.cuda.memory_allocated(model.device)
        fn()
        torch.cuda.synchronize(model.device)
        return float(torch.cuda.max_memory_allocated(model.device) - start)
    return _peak_cpu_bytes(fn)


def _median_ms(model: CompressedCausalLM, runs: dict[str, Any], repeats: int) -> dict[str, float]:
    """Median wall time and process CPU time (ms) of each run, warm, the runs interleaved so load changes hit them alike.

    Keys ``<name>`` (wall) and ``<name>_cpu`` (CPU time of this process, all threads: on a shared
    machine it tracks the work done better than the wall clock).
    """
    for fn in runs.values():
        fn()  # warm-up
    samples: dict[str, list[float]] = {key: [] for name in runs for key in (name, f"{name}_cpu")}
    for _ in range(repeats):
        for name, fn in runs.items():
            cpu_start = time.process_time()
            _, seconds = timed_call(model.device, fn)
            samples[name].append(seconds * 1000.0)
            samples[f"{name}_cpu"].append((time.process_time() - cpu_start) * 1000.0)
    return {key: float(statistics.median(values)) for key, values in samples.items()}


def measure_prefill(
    model: CompressedCausalLM,
    sequences: Sequence[Sequence[int]],
    batch_size: int = 4,
    similarity_threshold: float | Sequence[float] | None = None,
    repeats: int = 3,
) -> dict[str, float]:
    """Memory, bytes and time of pre-filling ``sequences`` with and without compression.

    Uses the first ``batch_size`` sequences as one batch. Returns ``forward_ms_compressed``,
    ``forward_ms_uncompressed``, ``peak_memory_compressed`` / ``_uncompressed`` (bytes),
    ``kv_bytes_compressed`` / ``_uncompressed`` and ``hidden_bytes_compressed`` /
    ``_uncompressed`` (bytes held over all layers), ``kv_bytes_saved``, ``hidden_bytes_saved``,
    ``kv_saved_fraction_of_model`` (the rate of this batch) and ``prefill_ratio`` (its ratio in
    the compressed layers).
    """
    ids, mask = pad_batch(list(sequences[:batch_size]), model.reconstructor.pad_token_id)

    def run(compress: bool) -> Any:
        return lambda: model(
            ids, mask, mode="prefill", similarity_threshold=similarity_threshold, compress=compress
        )

    with torch.no_grad():
        output = run(True)()
        times = _median_ms(model, {"compressed": run(True), "uncompressed": run(False)}, repeats)
        result = {
            "forward_ms_compressed": times["compressed"],
            "forward_ms_uncompressed": times["uncompressed"],
            "forward_cpu_ms_compressed": times["compressed_cpu"],
            "forward_cpu_ms_uncompressed": times["uncompressed_cpu"],
            "peak_memory_compressed": _peak_bytes(model, run(True)),
            "peak_memory_uncompressed": _peak_bytes(model, run(False)),
        }
    kept, total = float(output.positions_kept.sum()), float(output.positions_total.sum())
    width = model.backbone.hidden_size * torch.finfo(model.backbone.dtype).bits / 8
    result.update(
        {
            "kv_bytes_compressed": kv_bytes(model, kept),
            "kv_bytes_uncompressed": kv_bytes(model, total),
            "hidden_bytes_compressed": kept * width,
            "hidden_bytes_uncompressed": total * width,
            "prefill_ratio": output.ratio,
            "batch": float(ids.shape[0]),
            "tokens": float(mask.sum()),
        }
    )
    result["kv_bytes_saved"] = result["kv_bytes_uncompressed"] - result["kv_bytes_compressed"]
    result["hidden_bytes_saved"] = result["hidden_bytes_uncompressed"] - result["hidden_bytes_compressed"]
    # kept and total count every layer: the layers before the first compression keep everything
    result["kv_saved_fraction_of_model"] = 1.0 - kept / total if total else 0.0
    return result


def sweep_thresholds(
    model: CompressedCausalLM,
    sequences: Sequence[Sequence[int]],
    thresholds: Sequence[float],
    batch_size: int = 4,
    repeats: int = 3,
    progress: bool = True,
    timing_thresholds: Sequence[float] | None = None,
    lower: Sequence[torch.Tensor] | None = None,
) -> list[dict[str, Any]]:
    """One row per threshold: :func:`perplexity_comparison` plus :func:`measure_prefill` figures.

    :param repeats: timed repetitions of each pre-fill; 0 measures no memory or time.
    :param timing_thresholds: thresholds whose memory and time are measured (default: all).
    :param lower: cached :func:`lower_states` of the sequences (computed when ``None``).
    """
    if lower is None:
        with torch.no_grad():
            lower = lower_states(model, sequences, batch_size)
    reference = uncompressed_nll(model, sequences, batch_size, lower)
    rows = []
    for threshold in tqdm(list(thresholds), desc="thresholds", disable=not progress):
        row: dict[str, Any] = {"threshold": float(threshold)}
        row.update(perplexity_comparison(model, sequences, batch_size, threshold, reference, lower))
        timed = timing_thresholds is None or any(abs(threshold - t) < 1e-9 for t in timing_thresholds)
        if repeats > 0 and timed:
            row.update(measure_prefill(model, sequences, batch_size, threshold, repeats))
        rows.append(row)
    return rows


def machine_description(device: torch.device) -> str:
    """The device in words (GPU name, or the CPU and its core count), for reports."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (cuda)"
    return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def load_for_evaluation(config: ActivationEvaluateConfig) -> tuple[CompressedCausalLM, bool]:
    """The model an evaluation measures, and whether it holds trained compression layers.

    A saved activation folder loads with its layers; any other name is a base model wrapped with
    fresh layers built from the config's compression options.
    """
    if (Path(config.model_name) / META_FILE).is_file():
        return CompressedCausalLM.from_pretrained(
            config.model_name, device=config.device, dtype=config.dtype
        ), True
    recon = Reconstructor.load(config.model_name, device=config.device, dtype=config.dtype)
    return CompressedCausalLM(recon, untrained_config(config)), False


def operating_thresholds(config: ActivationEvaluateConfig) -> float | list[float] | None:
    """The operating point's threshold override: the config's layer plan, its single threshold, or ``None`` (the model's)."""
    if config.layer_thresholds is not None:
        return list(config.layer_thresholds)
    return config.similarity_threshold


def untrained_config(
    config: ActivationEvaluateConfig, base: CompressionConfig | None = None
) -> CompressionConfig:
    """Compression settings of fresh layers: ``base`` (a trained model's) overridden by the config's options."""
    values = (base or CompressionConfig()).to_dict()
    for key in (
        "compression_layers",
        "use_residuals",
        "adaptive_threshold",
        "similarity_threshold",
        "layer_thresholds",
    ):
        if getattr(config, key) is not None:
            values[key] = getattr(config, key)
    return CompressionConfig(**values)


def evaluate(config: ActivationEvaluateConfig, progress: bool = True) -> dict[str, Any]:
    """Run ``tokenmask activation evaluate``: sweep thresholds (trained and fresh layers), write the reports.

    :return: the report (also written to ``<output_dir>/report.json``).
    """
    torch.manual_seed(config.seed)
    model, trained = load_for_evaluation(config)
    sequences = load_sequences(
        model.reconstructor,
        config.data_path,
        config.split,
        config.max_length,
        config.max_documents,
        config.text_column,
    )
    with torch.no_grad():
        lower = lower_states(model, sequences, config.batch_size)
    override = operating_thresholds(config)
    operating = perplexity_comparison(model, sequences, config.batch_size, override, lower=lower)
    thresholds = model.effective_thresholds(override)
    plan = (  # the rate the plan nominally gives (None: fixed cosine thresholds, no nominal rate)
        plan_rate(model.layer_indices, thresholds, model.backbone.num_layers)
        if model.config.adaptive_threshold
        else None
    )
    main = sweep_thresholds(
        model,
        sequences,
        config.thresholds,
        config.batch_size,
        config.timing_repeats,
        progress,
        config.timing_thresholds,
        lower,
    )
    sweeps = {("trained layers" if trained else "untrained layers"): main}
    if trained:  # fresh layers cost the same memory and time: only their perplexity is measured
        torch.manual_seed(config.seed)
        fresh = CompressedCausalLM(model.reconstructor, untrained_config(config, model.config))
        same_lower = fresh.layer_indices[0] == model.layer_indices[0]
        sweeps["untrained layers"] = sweep_thresholds(
            fresh,
            sequences,
            config.thresholds,
            config.batch_size,
            0,
            progress,
            lower=lower if same_lower else None,
        )
    report = {
        "model": config.model_name,
        "trained": trained,
        "data_path": config.data_path,
        "split": config.split,
        "sequences": len(sequences),
        "max_length": config.max_length,
        "num_layers": model.backbone.num_layers,
        "compression": model.config.to_dict(),
        "device": machine_description(model.device),
        "operating_point": {"thresholds": thresholds, "plan_rate": plan, **operating},
        "sweeps": sweeps,
    }
    paths = write_report(config.output_dir, report)
    sample = merge_map(model, sequences[0], override)
    paths["merge_map"] = write_merge_map(
        sample,
        config.output_dir,
        f"{config.model_name}, layers {model.layer_indices}, thresholds {thresholds}",
    )
    report["files"] = {k: str(v) for k, v in paths.items()}
    return report
