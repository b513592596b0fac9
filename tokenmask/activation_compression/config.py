"""Configs of activation compression: the compression layers themselves, training, and evaluation.

All are dataclasses read by :mod:`tokenmask.config` (``--config file.json`` plus ``--key value``
overrides on the command line).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from tokenmask.errors import ConfigError

DEFAULT_DEPTH = 0.8  # default compression layer, as a fraction of the model's depth


class ActivationConfigError(ConfigError):
    """Raised for an inconsistent activation-compression setting; the message names the fix."""


def check_thresholds(name: str, values: Sequence[float] | None, adaptive: bool | None) -> None:
    """Refuse similarity thresholds outside their range before any model loads.

    Adaptive thresholds (the default) are quantiles in ``(0, 1]`` (0 would merge every pair);
    with ``adaptive`` explicitly ``False`` they are cosine similarities in ``[-1, 1.01]`` (1.01
    disables merging).

    :raises ActivationConfigError: naming the key, the bad values and the range.
    """
    if values is None:
        return
    low, high, inclusive_low = (-1.0, 1.01, True) if adaptive is False else (0.0, 1.0, False)
    bad = [v for v in values if not (low <= v <= high if inclusive_low else low < v <= high)]
    if bad:
        span = (
            "[-1, 1.01] (cosine similarities; adaptive_threshold is off)"
            if adaptive is False
            else "(0, 1] (quantiles)"
        )
        raise ActivationConfigError(
            f"{name} {bad} outside {span}. Fix: e.g. --{name} {'0.8,0.5,0.33' if name.endswith('s') else '0.5'}.",
            key=name,
        )


@dataclass
class CompressionConfig:
    """How the compression layers cluster hidden states (saved with a trained model).

    :param compression_layers: decoder layers whose *input* is compressed; layers from there on run
        on the shorter sequence. Several layers compress recursively (a later one clusters the
        clusters of the earlier one). Each must lie in ``[1, num_layers - 1]``. ``None``: the layer
        at 80 % of the depth (24 of SmolLM2's 30), where merging costs the least perplexity.
    :param similarity_threshold: with ``adaptive_threshold`` off, the cosine similarity above which
        adjacent states merge. With it on, the quantile of the sequence's own similarity
        distribution (causal: the similarities seen so far) above which they merge, so ``0.5``
        merges about half of the adjacent pairs (about 2x fewer positions), ``0.33`` about 3x.
    :param layer_thresholds: the layer plan's per-layer thresholds, one per compression layer
        (same meaning as ``similarity_threshold``, which they replace). With the adaptive
        threshold each is about the fraction of its units that layer keeps, so the plan's
        whole-model rate is :meth:`plan_rate`. ``None``: ``similarity_threshold`` everywhere.
    :param adaptive_threshold: adapt the threshold to each sequence (see above).
    :param steered_threshold: with ``adaptive_threshold``, steer the quantile chunk by chunk so
        that each layer merges ``1 - threshold`` of its eligible pairs (causal; see
        :func:`~tokenmask.activation_compression.clustering.steered_quantile`); the plan's rate
        then holds in ``full`` mode too. Models saved before it existed load with it off.
    :param use_residuals: restore each position with a learned gated residual of its own state at
        the first compression layer before the LM head.
    :param max_cluster_size: longest run of states merged into one.
    :param protected_tokens: leading positions never merged (the BOS attention sink).
    :param similarity_rank: rank of the learned correction of the similarity features.
    :param adapter_rank: rank of the learned corrections of merged states and of the restore residual.
    """

    compression_layers: list[int] | None = None
    similarity_threshold: float = 0.5
    layer_thresholds: list[float] | None = None
    adaptive_threshold: bool = True
    steered_threshold: bool = True
    use_residuals: bool = True
    max_cluster_size: int = 8
    protected_tokens: int = 1
    similarity_rank: int = 64
    adapter_rank: int = 64

    def __post_init__(self) -> None:
        if self.compression_layers is not None:
            layers = [int(x) for x in self.compression_layers]
            if not layers:
                raise ActivationConfigError(
                    "compression_layers is empty. Fix: name at least one layer, e.g. --compression_layers 24."
                )
            if sorted(set(layers)) != layers:
                raise ActivationConfigError(
                    f"compression_layers {layers} must be strictly increasing without repeats. Fix: e.g. --compression_layers 12,24."
                )
            self.compression_layers = layers
        if self.adaptive_threshold and not 0.0 <= self.similarity_threshold <= 1.0:
            raise ActivationConfigError(
                f"With adaptive_threshold on, similarity_threshold is a quantile in [0, 1], got {self.similarity_threshold}. "
                "Fix: e.g. 0.5 for about 2x fewer positions."
            )
        if not self.adaptive_threshold and not -1.0 <= self.similarity_threshold <= 1.01:
            raise ActivationConfigError(
                f"similarity_threshold {self.similarity_threshold} is not a cosine similarity in [-1, 1] (1.01 disables merging)."
            )
        if self.layer_thresholds is not None:
            values = [float(x) for x in self.layer_thresholds]
            if self.compression_layers is None or len(values) != len(self.compression_layers):
                raise ActivationConfigError(
                    f"layer_thresholds {values} needs one threshold per compression layer "
                    f"(compression_layers {self.compression_layers}). Fix: e.g. --compression_layers 4,12,20 "
                    "--layer_thresholds 0.6,0.6,0.6.",
                    key="layer_thresholds",
                )
            check_thresholds("layer_thresholds", values, self.adaptive_threshold)
            self.layer_thresholds = values
        if self.max_cluster_size < 1:
            raise ActivationConfigError(f"max_cluster_size must be >= 1, got {self.max_cluster_size}.")
        if self.protected_tokens < 0:
            raise ActivationConfigError(f"protected_tokens must be >= 0, got {self.protected_tokens}.")
        if self.similarity_rank < 1 or self.adapter_rank < 1:
            raise ActivationConfigError("similarity_rank and adapter_rank must be >= 1.")

    @property
    def layers(self) -> list[int]:
        """The compression layers (:meth:`resolved` first when they were left to the default)."""
        if self.compression_layers is None:
            raise ActivationConfigError(
                "compression_layers is not resolved yet. Fix: call resolved(num_layers)."
            )
        return list(self.compression_layers)

    @property
    def thresholds(self) -> list[float]:
        """The plan's threshold of each compression layer (:meth:`resolved` first)."""
        if self.layer_thresholds is not None:
            return list(self.layer_thresholds)
        return [self.similarity_threshold] * len(self.layers)

    def plan_rate(self, num_layers: int) -> float:
        """Nominal whole-model rate of the plan (docs/evaluation.md's in-model rate; NaN for fixed thresholds).

        With the adaptive threshold each compression layer keeps about its threshold's fraction of
        its units; see :func:`tokenmask.activation_compression.plan.plan_rate`.
        """
        from tokenmask.activation_compression.plan import plan_rate  # torch-heavy module: on use

        if not self.adaptive_threshold:
            return math.nan
        resolved = self.resolved(num_layers)
        return plan_rate(resolved.layers, resolved.thresholds, num_layers)

    def resolved(self, num_layers: int) -> CompressionConfig:
        """A copy with the default compression layer filled in for a model of ``num_layers`` layers, checked.

        :raises ActivationConfigError: if a compression layer does not exist in the model.
        """
        layers = self.compression_layers
        if layers is None:
            layers = [min(max(1, round(DEFAULT_DEPTH * num_layers)), num_layers - 1)]
        bad = [x for x in layers if not 1 <= x < num_layers]
        if bad:
            raise ActivationConfigError(
                f"compression_layers {bad} are outside [1, {num_layers - 1}] for a model of {num_layers} layers. "
                f"Fix: e.g. --compression_layers {round(DEFAULT_DEPTH * num_layers)}."
            )
        return replace(self, compression_layers=list(layers))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class ActivationTrainConfig:
    """Options of ``tokenmask activation train``."""

    model_name: str = field(
        default="default",
        metadata={"help": "base causal LM (name, folder, .gguf) or a saved activation model to continue"},
    )
    data_path: str = field(
        default="data_out/pydocs",
        metadata={"help": "prepared corpus folder (tokenmask prepare-data), .jsonl/.txt file, or 'sample'"},
    )
    output_dir: str = field(
        default="runs/activation", metadata={"help": "where the trained model folder and TensorBoard logs go"}
    )
    batch_size: int = field(default=4, metadata={"help": "sequences per step"})
    epochs: int = field(default=1, metadata={"help": "passes over the training documents"})
    learning_rate: float = field(default=5e-4, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(
        default=0.01, metadata={"help": "AdamW weight decay (pulls the learned corrections towards zero)"}
    )
    freeze_base: bool = field(default=True, metadata={"help": "train only the compression layers"})
    compression_layers: list[int] | None = field(
        default=None, metadata={"help": "layers whose input is compressed, e.g. 12,24 (default: 80% depth)"}
    )
    similarity_threshold: float = field(
        default=0.5, metadata={"help": "cosine threshold, or the quantile when adaptive"}
    )
    layer_thresholds: list[float] | None = field(
        default=None,
        metadata={
            "help": "layer plan: one threshold per compression layer, e.g. 0.6,0.6,0.6 (default: similarity_threshold)"
        },
    )
    use_residuals: bool = field(default=True, metadata={"help": "learned gated residual before the LM head"})
    adaptive_threshold: bool = field(
        default=True, metadata={"help": "per-sequence (causal running quantile) threshold"}
    )
    contrastive_weight: float = field(
        default=0.1, metadata={"help": "weight of the contrastive clustering loss"}
    )
    max_length: int = field(default=256, metadata={"help": "tokens per training sequence (BOS added)"})
    max_cluster_size: int = field(default=8, metadata={"help": "longest run merged into one state"})
    max_steps: int | None = field(default=None, metadata={"help": "stop after this many optimizer steps"})
    max_documents: int | None = field(
        default=None, metadata={"help": "use at most this many training sequences"}
    )
    parachute_tolerance: float = field(
        default=0.03, metadata={"help": "relative perplexity increase tolerated before backing off"}
    )
    parachute_step: float = field(default=0.02, metadata={"help": "how far the threshold moves per back-off"})
    parachute_max_offset: float | None = field(
        default=None,
        metadata={
            "help": "highest threshold offset of the parachute (default: until nothing merges); caps the rate lost"
        },
    )
    warmup_steps: int = field(default=20, metadata={"help": "steps of linear learning-rate warm-up"})
    threshold_jitter: float = field(
        default=0.0, metadata={"help": "draw each step's threshold within this distance of the target"}
    )
    eval_documents: int = field(default=16, metadata={"help": "validation sequences measured after training"})
    text_column: str = field(default="text", metadata={"help": "JSONL key of the text"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda or auto"})
    dtype: str = field(default="float32", metadata={"help": "weights dtype (float32 on cpu)"})
    seed: int = field(default=0, metadata={"help": "seed of shuffling and initialisation"})

    def __post_init__(self) -> None:
        positive = {
            "batch_size": self.batch_size,
            "epochs": self.epochs,
            "max_length": self.max_length,
            "eval_documents": self.eval_documents,
            "max_steps": 1 if self.max_steps is None else self.max_steps,
            "max_documents": 1 if self.max_documents is None else self.max_documents,
        }
        bad = {k: v for k, v in positive.items() if v < 1}
        if bad:
            raise ActivationConfigError(
                f"{bad} must be >= 1 (max_steps and max_documents may also be None: no limit).",
                key=next(iter(bad)),
            )
        non_negative = {
            "weight_decay": self.weight_decay,
            "warmup_steps": self.warmup_steps,
            "threshold_jitter": self.threshold_jitter,
        }
        bad_float = {k: v for k, v in non_negative.items() if v < 0}
        if bad_float:
            raise ActivationConfigError(f"{bad_float} must be >= 0.", key=next(iter(bad_float)))
        if self.learning_rate <= 0:
            raise ActivationConfigError(f"learning_rate must be > 0, got {self.learning_rate}.")
        if self.contrastive_weight < 0:
            raise ActivationConfigError(f"contrastive_weight must be >= 0, got {self.contrastive_weight}.")
        if self.parachute_tolerance <= 0 or self.parachute_step < 0:
            raise ActivationConfigError("parachute_tolerance must be > 0 and parachute_step >= 0.")
        if self.parachute_max_offset is not None and self.parachute_max_offset < 0:
            raise ActivationConfigError(
                f"parachute_max_offset must be >= 0, got {self.parachute_max_offset}. Fix: e.g. 0.05, or leave it unset.",
                key="parachute_max_offset",
            )
        self.compression()  # validates the compression settings early

    def compression(self) -> CompressionConfig:
        """The :class:`CompressionConfig` these options describe."""
        return CompressionConfig(
            compression_layers=None if self.compression_layers is None else list(self.compression_layers),
            similarity_threshold=self.similarity_threshold,
            layer_thresholds=None if self.layer_thresholds is None else list(self.layer_thresholds),
            adaptive_threshold=self.adaptive_threshold,
            use_residuals=self.use_residuals,
            max_cluster_size=self.max_cluster_size,
        )


@dataclass
class ActivationEvaluateConfig:
    """Options of ``tokenmask activation evaluate``.

    ``model_name`` is either a trained activation model folder (its compression layers are used) or
    a base model name, in which case fresh (untrained) compression layers are built from the
    compression options below.
    """

    model_name: str = field(
        default="default", metadata={"help": "saved activation model folder, or a base model name"}
    )
    data_path: str = field(
        default="data_out/pydocs", metadata={"help": "prepared corpus folder, .jsonl/.txt file, or 'sample'"}
    )
    output_dir: str = field(
        default="runs/activation_eval", metadata={"help": "where report.json, report.md and the PNG go"}
    )
    split: str = field(default="test", metadata={"help": "split of a prepared corpus"})
    batch_size: int = field(default=4, metadata={"help": "sequences per forward pass"})
    max_length: int = field(default=256, metadata={"help": "tokens per evaluated sequence (BOS added)"})
    max_documents: int = field(default=16, metadata={"help": "held-out sequences measured"})
    compression_layers: list[int] | None = field(
        default=None, metadata={"help": "for an untrained model: compressed layers"}
    )
    similarity_threshold: float | None = field(
        default=None, metadata={"help": "operating threshold (default: the model's)"}
    )
    layer_thresholds: list[float] | None = field(
        default=None,
        metadata={"help": "operating layer plan: one threshold per compression layer (default: the model's)"},
    )
    use_residuals: bool | None = field(default=None, metadata={"help": "for an untrained model"})
    adaptive_threshold: bool | None = field(default=None, metadata={"help": "for an untrained model"})
    thresholds: list[float] = field(
        default_factory=lambda: [0.8, 0.67, 0.5, 0.4, 0.33],
        metadata={"help": "thresholds swept for the ratio-vs-perplexity plot"},
    )
    timing_repeats: int = field(
        default=3, metadata={"help": "timed repetitions of each pre-fill (0: no memory/time measurement)"}
    )
    timing_thresholds: list[float] | None = field(
        default=None,
        metadata={
            "help": "thresholds whose memory and time are measured (default: all; fresh layers cost the same, so only the model's)"
        },
    )
    text_column: str = field(default="text", metadata={"help": "JSONL key of the text"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda or auto"})
    dtype: str = field(default="float32", metadata={"help": "weights dtype"})
    seed: int = field(default=0, metadata={"help": "seed"})

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_length < 2 or self.max_documents < 1 or self.timing_repeats < 0:
            raise ActivationConfigError(
                "batch_size and max_documents must be >= 1, timing_repeats >= 0 and max_length >= 2."
            )
        if not self.thresholds:
            raise ActivationConfigError(
                "thresholds is empty. Fix: e.g. --thresholds 0.67,0.5,0.33.", key="thresholds"
            )
        check_thresholds("thresholds", self.thresholds, self.adaptive_threshold)
        check_thresholds("timing_thresholds", self.timing_thresholds, self.adaptive_threshold)
        check_thresholds(
            "similarity_threshold",
            None if self.similarity_threshold is None else [self.similarity_threshold],
            self.adaptive_threshold,
        )
        check_thresholds("layer_thresholds", self.layer_thresholds, self.adaptive_threshold)
