"""Activation compression on a real LM: perplexity, memory and time over thresholds, before and after training.

For each compression setting (``--settings "24;18;12,24"``: semicolon-separated lists of
compression layers) this fresh-initialises compression layers on the model, sweeps the thresholds
(perplexity with/without compression on held-out sequences, ratio, KV/hidden bytes saved, peak
memory and pre-fill time, also on long sequences), trains the layers for ``--steps`` steps with the
base frozen, sweeps again, saves the trained layers, and prints one Markdown table naming the machine.

    # tokenize the prepared corpus once (needs `datasets`):
    python benchmarks/activation_quality.py export --data_path data_out/pydocs --out runs/act_sequences.json
    # measure (any machine; a GPU makes the training part fast):
    python benchmarks/activation_quality.py run --sequences runs/act_sequences.json --settings "24;18" --steps 300
    # pre-fill time and memory of a trained model, compressed vs not:
    python benchmarks/activation_quality.py timing --model runs/activation_smollm2_l24/model --lengths 256,1024

Perplexity counts every token after BOS, predicted from the compressed past; ratio and bytes count
the compressed layers only (docs/evaluation.md's rate for in-model compressors is ``1 - 1/ratio``).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import torch

MB = 1024.0 * 1024.0


def export(args: argparse.Namespace) -> None:
    """Write ``{"train": [...], "validation": [...], "test": [...]}`` BOS-started sequences as JSON."""
    from tokenmask.activation_compression.training import load_sequences
    from tokenmask.io import atomic_write_json
    from tokenmask.reconstructors import Reconstructor

    # only the tokenizer's ids matter here; the tiny random model avoids loading the real weights
    from tokenmask.testing import tiny_reconstructor

    recon: Reconstructor = tiny_reconstructor()
    splits = {
        s: load_sequences(recon, args.data_path, s, args.max_length) for s in ("train", "validation", "test")
    }
    atomic_write_json(args.out, splits)
    print({s: len(v) for s, v in splits.items()}, "->", args.out)


def long_sequences(sequences: list[list[int]], length: int, count: int, bos: int) -> list[list[int]]:
    """``count`` BOS-started sequences of ``length`` tokens made by concatenating held-out sequences."""
    stream = [t for s in sequences for t in s[1:]]
    need = count * (length - 1)
    if len(stream) < need:
        stream = stream * (need // max(1, len(stream)) + 1)
    return [[bos, *stream[i * (length - 1) : (i + 1) * (length - 1)]] for i in range(count)]


def run(args: argparse.Namespace) -> None:
    from tokenmask.activation_compression import CompressedCausalLM, CompressionConfig
    from tokenmask.activation_compression.evaluation import (
        machine_description,
        measure_prefill,
        sweep_thresholds,
    )
    from tokenmask.activation_compression.report import markdown_table, write_report
    from tokenmask.activation_compression.training import ActivationTrainer, QualityParachute
    from tokenmask.reconstructors import Reconstructor

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    start = time.perf_counter()
    recon = Reconstructor.load(args.model, device=args.device, dtype=args.dtype)
    print(
        f"loaded {args.model} in {time.perf_counter() - start:.1f}s on {machine_description(recon.device)}",
        flush=True,
    )
    data = json.loads(Path(args.sequences).read_text())
    train_seqs: list[list[int]] = data["train"]
    test_seqs: list[list[int]] = data["test"][: args.eval_documents]
    long_seqs = long_sequences(data["test"], args.timing_length, args.timing_batch, recon.bos_token_id)
    thresholds = [float(x) for x in args.thresholds.split(",")]
    out = Path(args.out)
    summary: dict[str, Any] = {
        "device": machine_description(recon.device),
        "model": args.model,
        "settings": {},
    }
    tables: list[str] = []
    for setting in args.settings.split(";"):
        layers = [int(x) for x in setting.split(",")]
        name = "layers_" + "_".join(map(str, layers))
        torch.manual_seed(args.seed)
        model = CompressedCausalLM(
            recon, CompressionConfig(compression_layers=layers, similarity_threshold=args.train_threshold)
        )
        result: dict[str, Any] = {"layers": layers}
        for phase in ("before", "after"):
            if phase == "after":
                trainer = ActivationTrainer(
                    model,
                    args.learning_rate,
                    freeze_base=True,
                    contrastive_weight=args.contrastive_weight,
                    parachute=QualityParachute(model, args.parachute_tolerance, 0.02),
                    warmup_steps=20,
                    threshold_jitter=args.threshold_jitter,
                    seed=args.seed,
                )
                rng = random.Random(args.seed)
                t0 = time.perf_counter()
                for step in range(1, args.steps + 1):
                    batch = rng.sample(train_seqs, args.batch_size)
                    metrics = trainer.step(batch)
                    if step % args.log_every == 0 or step == args.steps:
                        print(
                            f"[{name}] step {step} lm {metrics.lm_loss:.3f} base {metrics.uncompressed_loss:.3f} "
                            f"(+{100 * metrics.perplexity_increase:.1f}%) ratio {metrics.ratio:.2f} thr {metrics.threshold:.2f} "
                            f"contrastive {metrics.contrastive:.3f} {time.perf_counter() - t0:.0f}s",
                            flush=True,
                        )
                result["train_seconds"] = time.perf_counter() - t0
                result["train_steps"] = args.steps
                result["parachute_offset"] = float(model.threshold_offset)
                model.threshold_offset.zero_()
                model.save_pretrained(out / "models" / name)
            rows = sweep_thresholds(
                model, test_seqs, thresholds, args.batch_size, args.repeats, progress=False
            )
            for row in rows:
                long = measure_prefill(model, long_seqs, args.timing_batch, row["threshold"], args.repeats)
                row.update({f"long_{k}": v for k, v in long.items()})
            result[phase] = rows
            tables.append(
                markdown_table(
                    rows,
                    f"{name}, {phase} training ({len(test_seqs)} sequences of <= {args.max_length} tokens)",
                )
            )
            print(tables[-1], flush=True)
        report = {
            "model": args.model,
            "trained": True,
            "data_path": args.sequences,
            "split": "test",
            "sequences": len(test_seqs),
            "max_length": args.max_length,
            "num_layers": model.backbone.num_layers,
            "compression": model.config.to_dict(),
            "device": summary["device"],
            "sweeps": {"untrained layers": result["before"], "trained layers": result["after"]},
        }
        write_report(out / name, report)
        summary["settings"][name] = result
    summary_table = goal_table(summary, args)
    print(summary_table)
    (out / "summary.md").write_text(summary_table + "\n\n" + "\n".join(tables))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if args.tar:
        with tarfile.open(args.tar, "w:gz") as tar:
            tar.add(out, arcname=out.name)
    print(f"total {time.perf_counter() - start:.0f}s", flush=True)


def goal_table(summary: dict[str, Any], args: argparse.Namespace) -> str:
    """Rows nearest 1.5x, 2x and 3x per setting: perplexity increase, memory and time, before / after training."""
    lines = [
        f"Machine: {summary['device']}; model {summary['model']}; ratio = positions / positions kept in the compressed layers; "
        f"memory/time on {args.timing_batch}x{args.timing_length}-token pre-fills.",
        "",
        "| layers | target | threshold | ratio | ppl increase before | ppl increase after | KV saved (MiB) | KV saved, whole model "
        "| peak memory MiB (compr. / full) | pre-fill ms (compr. / full) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for result in summary["settings"].values():
        for target in (1.5, 2.0, 3.0):
            after = min(result["after"], key=lambda r: abs(r["ratio"] - target))
            before = next(r for r in result["before"] if r["threshold"] == after["threshold"])
            lines.append(
                f"| {result['layers']} | {target}x | {after['threshold']:.2f} | {after['ratio']:.2f}x "
                f"| {100 * before['perplexity_increase']:+.1f}% | {100 * after['perplexity_increase']:+.1f}% "
                f"| {after['long_kv_bytes_saved'] / MB:.1f} | {100 * after['long_kv_saved_fraction_of_model']:.0f}% "
                f"| {after['long_peak_memory_compressed'] / MB:.0f} / {after['long_peak_memory_uncompressed'] / MB:.0f} "
                f"| {after['long_forward_ms_compressed']:.0f} / {after['long_forward_ms_uncompressed']:.0f} |"
            )
    return "\n".join(lines)


def timing(args: argparse.Namespace) -> None:
    """Pre-fill time, peak memory and KV bytes, compressed vs not, for a model at a few thresholds and lengths."""
    from tokenmask.activation_compression import CompressedCausalLM, CompressionConfig
    from tokenmask.activation_compression.config import ActivationEvaluateConfig
    from tokenmask.activation_compression.evaluation import (
        load_for_evaluation,
        machine_description,
        measure_prefill,
    )
    from tokenmask.activation_compression.training import load_sequences

    config = ActivationEvaluateConfig(model_name=args.model, device=args.device, dtype=args.dtype)
    model, trained = load_for_evaluation(config)
    if not trained and args.layers:
        model = CompressedCausalLM(
            model.reconstructor,
            CompressionConfig(compression_layers=[int(x) for x in args.layers.split(",")]),
        )
    held_out = load_sequences(model.reconstructor, args.data_path, "test", 512)
    lines = [
        f"Machine: {machine_description(model.device)}; model {args.model} (layers {model.layer_indices} of "
        f"{model.backbone.num_layers}); batch {args.batch}; median of {args.repeats} interleaved runs.",
        "",
        "| tokens | threshold | ratio | pre-fill ms (compressed / full) | pre-fill CPU ms (compressed / full) "
        "| peak memory MiB (compressed / full) "
        "| KV MiB kept (compressed / full, compressed layers) | KV saved, whole model |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for length in [int(x) for x in args.lengths.split(",")]:
        batch = long_sequences(held_out, length, args.batch, model.reconstructor.bos_token_id)
        for threshold in [float(x) for x in args.thresholds.split(",")]:
            r = measure_prefill(model, batch, args.batch, threshold, args.repeats)
            lines.append(
                f"| {length} | {threshold:.2f} | {r['prefill_ratio']:.2f}x | {r['forward_ms_compressed']:.0f} / {r['forward_ms_uncompressed']:.0f} "
                f"| {r['forward_cpu_ms_compressed']:.0f} / {r['forward_cpu_ms_uncompressed']:.0f} "
                f"| {r['peak_memory_compressed'] / MB:.1f} / {r['peak_memory_uncompressed'] / MB:.1f} "
                f"| {r['kv_bytes_compressed'] / MB:.2f} / {r['kv_bytes_uncompressed'] / MB:.2f} "
                f"| {100 * r['kv_saved_fraction_of_model']:.0f}% |"
            )
            print(lines[-1], flush=True)
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="tokenize a corpus into a sequences JSON")
    ex.add_argument("--data_path", default="data_out/pydocs")
    ex.add_argument("--max_length", type=int, default=256)
    ex.add_argument("--out", default="runs/act_sequences.json")
    ex.set_defaults(func=export)
    rn = sub.add_parser("run", help="sweep, train, sweep")
    rn.add_argument("--model", default="default")
    rn.add_argument("--sequences", default="runs/act_sequences.json")
    rn.add_argument("--settings", default="24;18")
    rn.add_argument("--thresholds", default="0.8,0.67,0.5,0.4,0.33,0.25")
    rn.add_argument("--train_threshold", type=float, default=0.5)
    rn.add_argument("--threshold_jitter", type=float, default=0.2)
    rn.add_argument("--steps", type=int, default=300)
    rn.add_argument("--batch_size", type=int, default=8)
    rn.add_argument("--learning_rate", type=float, default=1e-3)
    rn.add_argument("--contrastive_weight", type=float, default=0.1)
    rn.add_argument("--parachute_tolerance", type=float, default=0.5)
    rn.add_argument("--eval_documents", type=int, default=32)
    rn.add_argument("--max_length", type=int, default=256)
    rn.add_argument("--timing_length", type=int, default=2048)
    rn.add_argument("--timing_batch", type=int, default=4)
    rn.add_argument("--repeats", type=int, default=3)
    rn.add_argument("--log_every", type=int, default=50)
    rn.add_argument("--device", default="auto")
    rn.add_argument("--dtype", default="float32")
    rn.add_argument("--seed", type=int, default=0)
    rn.add_argument("--out", default="runs/act_bench")
    rn.add_argument("--tar", default=None, help="also pack the output folder into this .tar.gz")
    rn.set_defaults(func=run)
    tm = sub.add_parser("timing", help="pre-fill time and memory, compressed vs not")
    tm.add_argument("--model", default="default", help="trained activation folder, or a base model name")
    tm.add_argument("--layers", default="24", help="compression layers of fresh layers on a base model")
    tm.add_argument("--data_path", default="data_out/pydocs")
    tm.add_argument("--thresholds", default="0.67,0.5,0.33")
    tm.add_argument("--lengths", default="256,1024")
    tm.add_argument("--batch", type=int, default=4)
    tm.add_argument("--repeats", type=int, default=5)
    tm.add_argument("--device", default="auto")
    tm.add_argument("--dtype", default="float32")
    tm.set_defaults(func=timing)
    args = parser.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
