"""Training the compression layers: LM loss + contrastive clustering loss, with a quality parachute.

``loss = LM loss with compression (mean nats per token) + contrastive_weight * contrastive loss``.
The layer plan (``compression_layers`` and ``layer_thresholds``) sets how much each layer merges;
the step's ``rate`` is the whole-model rate of docs/evaluation.md.
With ``freeze_base`` only the compression layers learn (the layers before the first compression
layer then run without autograd). The :class:`QualityParachute` compares a running mean of the
compressed LM loss with the uncompressed loss of the same batches and raises the threshold (fewer
merges) while the perplexity increase exceeds its tolerance. Scalars go to TensorBoard
(``<output_dir>/tensorboard``), progress to a tqdm bar; the trained model is saved as a folder.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from tokenmask.activation_compression.config import ActivationTrainConfig
from tokenmask.activation_compression.evaluation import perplexity_comparison
from tokenmask.activation_compression.model import MAX_FIXED_THRESHOLD, META_FILE, CompressedCausalLM
from tokenmask.activation_compression.sequences import load_sequences
from tokenmask.io import atomic_write_json
from tokenmask.reconstructors import Reconstructor, pad_batch


class QualityParachute:
    """The emergency brake: lowers compression while the compressed LM loss runs too far above the uncompressed one.

    Both losses are tracked as exponential running means over the same batches. When
    ``exp(compressed - uncompressed) - 1`` (the relative perplexity increase) exceeds
    ``tolerance``, the model's ``threshold_offset`` rises by ``step`` (fewer merges); when it falls
    below half the tolerance, the offset decays back towards 0 by ``step / 4``.

    :param model: the compressed model whose threshold is steered.
    :param tolerance: relative perplexity increase tolerated (0.03 = 3 %).
    :param step: threshold change per back-off.
    :param momentum: weight of the past in the running means.
    :param max_offset: the highest offset (``None``: up to where no layer merges); a layer plan
        trained for a rate caps it so the rate the layers learn stays near the plan's.
    """

    def __init__(
        self,
        model: CompressedCausalLM,
        tolerance: float = 0.03,
        step: float = 0.02,
        momentum: float = 0.9,
        max_offset: float | None = None,
    ) -> None:
        self.model = model
        self.max_offset = max_offset
        self.tolerance = tolerance
        self.step = step
        self.momentum = momentum
        self.compressed: float | None = None
        self.uncompressed: float | None = None
        self.backoffs = 0

    @property
    def increase(self) -> float:
        """Current running relative perplexity increase (0 before the first update)."""
        if self.compressed is None or self.uncompressed is None:
            return 0.0
        return math.exp(self.compressed - self.uncompressed) - 1.0

    def update(self, compressed_loss: float, uncompressed_loss: float) -> bool:
        """Record one batch's losses (nats per token); return ``True`` if compression was lowered."""
        m = self.momentum
        self.compressed = (
            compressed_loss if self.compressed is None else m * self.compressed + (1 - m) * compressed_loss
        )
        self.uncompressed = (
            uncompressed_loss
            if self.uncompressed is None
            else m * self.uncompressed + (1 - m) * uncompressed_loss
        )
        offset = float(self.model.threshold_offset)
        # enough offset to stop every layer of the plan from merging, no more
        limit = (1.0 if self.model.config.adaptive_threshold else MAX_FIXED_THRESHOLD) - min(
            self.model.config.thresholds
        )
        if self.max_offset is not None:
            limit = min(limit, self.max_offset)
        if self.increase > self.tolerance and offset < limit:
            self.model.threshold_offset.fill_(min(offset + self.step, limit))
            self.backoffs += 1
            return True
        if self.increase < self.tolerance / 2 and offset > 0:
            self.model.threshold_offset.fill_(max(offset - self.step / 4, 0.0))
        return False


@dataclass
class StepMetrics:
    """One optimizer step's figures (losses in nats per token).

    :param rate: docs/evaluation.md's in-model rate of the batch (KV entries saved over all layers).
    :param ratio: positions / positions kept in the compressed layers only.
    :param threshold: mean over compression layers of the thresholds in force.
    """

    loss: float
    lm_loss: float
    contrastive: float
    uncompressed_loss: float
    ratio: float
    threshold: float
    rate: float = 0.0

    @property
    def perplexity(self) -> float:
        """Perplexity with compression."""
        return math.exp(self.lm_loss)

    @property
    def perplexity_increase(self) -> float:
        """Relative perplexity increase over the uncompressed LM."""
        return math.exp(self.lm_loss - self.uncompressed_loss) - 1.0


class ActivationTrainer:
    """Trains a :class:`CompressedCausalLM` on token sequences.

    :param model: the model to train.
    :param learning_rate: AdamW learning rate.
    :param freeze_base: train only the compression layers.
    :param contrastive_weight: weight of the contrastive clustering loss.
    :param parachute: the quality parachute (``None``: no back-off).
    :param grad_clip: max gradient norm.
    :param warmup_steps: steps of linear learning-rate warm-up.
    :param threshold_jitter: each step's threshold is drawn uniformly within this distance of the
        threshold in force, so the layers learn to work over a range of compression ratios.
    :param seed: seed of the jitter draws.
    :param weight_decay: AdamW weight decay (the learned parts start at zero, so it pulls towards the plain merge).
    """

    def __init__(
        self,
        model: CompressedCausalLM,
        learning_rate: float = 5e-4,
        freeze_base: bool = True,
        contrastive_weight: float = 0.1,
        parachute: QualityParachute | None = None,
        grad_clip: float = 1.0,
        warmup_steps: int = 20,
        threshold_jitter: float = 0.0,
        seed: int = 0,
        weight_decay: float = 0.01,
    ) -> None:
        self.model = model
        self.freeze_base = freeze_base
        self.contrastive_weight = contrastive_weight
        self.parachute = parachute
        self.grad_clip = grad_clip
        self.threshold_jitter = threshold_jitter
        self._rng = random.Random(seed)
        for p in model.base_parameters:
            p.requires_grad_(not freeze_base)
        params = list(model.parameters()) + ([] if freeze_base else model.base_parameters)
        self.optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / max(1, warmup_steps))
        )
        self._uncompressed_cache: dict[tuple[int, ...], float] = {}
        self._lower_cache: dict[tuple[int, ...], torch.Tensor] = {}

    def lower_states(
        self, sequences: Sequence[Sequence[int]], ids: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor | None:
        """States entering the first compression layer for a padded batch; cached per sequence while the base is frozen.

        The layers before the first compression layer see no compression, so with a frozen base
        their output for a sequence never changes; computing it once saves most of each step.
        ``None`` when the base is trained.
        """
        if not self.freeze_base:
            return None
        keys = [tuple(s) for s in sequences]
        missing = [i for i, k in enumerate(keys) if k not in self._lower_cache]
        if missing:
            states = self.model.lower_states(ids[missing], mask[missing])
            for row, i in enumerate(missing):
                self._lower_cache[keys[i]] = states[row, : len(keys[i])].detach()
        d = self.model.backbone.hidden_size
        batch = torch.zeros(
            ids.shape[0], ids.shape[1], d, dtype=self.model.backbone.dtype, device=self.model.device
        )
        for row, key in enumerate(keys):
            batch[row, : len(key)] = self._lower_cache[key]
        return batch

    def uncompressed_loss(
        self,
        sequences: Sequence[Sequence[int]],
        ids: torch.Tensor,
        mask: torch.Tensor,
        lower: torch.Tensor | None = None,
    ) -> float:
        """Mean uncompressed NLL per token of a batch (cached per sequence while the base is frozen)."""
        keys = [tuple(s) for s in sequences]
        if not self.freeze_base or any(k not in self._uncompressed_cache for k in keys):
            with torch.no_grad():
                nll = self.model.uncompressed_nlls(ids, mask, lower)
            sums = nll.sum(1).tolist()
            if not self.freeze_base:
                return float(sum(sums)) / float(mask[:, 1:].sum())
            for key, value in zip(keys, sums):
                self._uncompressed_cache[key] = value
        return float(sum(self._uncompressed_cache[k] for k in keys)) / float(mask[:, 1:].sum())

    def step(self, sequences: Sequence[Sequence[int]]) -> StepMetrics:
        """One optimizer step on a batch of BOS-started sequences."""
        model = self.model
        model.train()
        ids, mask = pad_batch(sequences, model.reconstructor.pad_token_id)
        ids, mask = ids.to(model.device), mask.to(model.device)
        score = mask.bool().clone()
        score[:, 0] = False
        thresholds = model.effective_thresholds()
        if self.threshold_jitter > 0:  # the whole plan moves together
            shift = self._rng.uniform(-self.threshold_jitter, self.threshold_jitter)
            thresholds = model.effective_thresholds([t + shift for t in thresholds])
        lower = self.lower_states(sequences, ids, mask)
        output = model(ids, mask, similarity_threshold=thresholds, lower_hidden=lower)
        nll = model.token_nlls(output, ids, score)
        lm_loss = nll.sum() / score.sum()
        contrastive = output.contrastive if output.contrastive is not None else lm_loss * 0.0
        loss = lm_loss + self.contrastive_weight * contrastive
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        if not self.freeze_base:  # the base LM's weights moved: scores cached against them are stale
            model.reconstructor.mark_weights_changed()
        model.eval()
        base = self.uncompressed_loss(sequences, ids, mask, lower)
        metrics = StepMetrics(
            loss=loss.item(),
            lm_loss=lm_loss.item(),
            contrastive=contrastive.item(),
            uncompressed_loss=base,
            ratio=output.ratio,
            threshold=sum(thresholds) / len(thresholds),
            rate=output.rate,
        )
        if self.parachute is not None:
            self.parachute.update(metrics.lm_loss, base)
        return metrics


def iterate_batches(
    sequences: Sequence[list[int]], batch_size: int, epochs: int, seed: int
) -> Iterator[list[list[int]]]:
    """Shuffled batches (sorted by length within a window to limit padding), ``epochs`` times."""
    rng = random.Random(seed)
    for _ in range(epochs):
        order = list(range(len(sequences)))
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            yield [sequences[i] for i in order[start : start + batch_size]]


def train(config: ActivationTrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train compression layers as ``config`` says, save the model folder and return a summary.

    The folder ``<output_dir>/model`` loads back with :meth:`CompressedCausalLM.from_pretrained`;
    ``<output_dir>/train_summary.json`` holds the summary and ``<output_dir>/tensorboard`` the curves.
    """
    from torch.utils.tensorboard import SummaryWriter  # tensorboard loads slowly: only when training

    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    if (Path(config.model_name) / META_FILE).is_file():
        model = CompressedCausalLM.from_pretrained(
            config.model_name, device=config.device, dtype=config.dtype
        )
    else:
        share = config.freeze_base  # a trained base must be a private copy
        recon = Reconstructor.load(config.model_name, device=config.device, dtype=config.dtype, share=share)
        model = CompressedCausalLM(recon, config.compression())
    sequences = load_sequences(
        model.reconstructor,
        config.data_path,
        "train",
        config.max_length,
        config.max_documents,
        config.text_column,
    )
    parachute = QualityParachute(
        model, config.parachute_tolerance, config.parachute_step, max_offset=config.parachute_max_offset
    )
    trainer = ActivationTrainer(
        model,
        config.learning_rate,
        config.freeze_base,
        config.contrastive_weight,
        parachute,
        warmup_steps=config.warmup_steps,
        threshold_jitter=config.threshold_jitter,
        seed=config.seed,
        weight_decay=config.weight_decay,
    )
    output_dir = Path(config.output_dir)
    writer = SummaryWriter(str(output_dir / "tensorboard"))
    total_steps = math.ceil(len(sequences) / config.batch_size) * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    history: list[dict[str, float]] = []
    bar = tqdm(total=total_steps, desc="activation train", unit="step", disable=not progress)
    step = 0
    for batch in iterate_batches(sequences, config.batch_size, config.epochs, config.seed):
        if step >= total_steps:
            break
        metrics = trainer.step(batch)
        step += 1
        scalars = {
            "loss": metrics.loss,
            "lm_loss": metrics.lm_loss,
            "contrastive_loss": metrics.contrastive,
            "perplexity": metrics.perplexity,
            "uncompressed_perplexity": math.exp(metrics.uncompressed_loss),
            "perplexity_increase": metrics.perplexity_increase,
            "compression_ratio": metrics.ratio,
            "rate": metrics.rate,
            "threshold": metrics.threshold,
            "parachute_increase": parachute.increase,
        }
        for key, value in scalars.items():
            writer.add_scalar(f"train/{key}", value, step)
        history.append({"step": step, **scalars})
        bar.set_postfix(
            ppl=f"{metrics.perplexity:.2f}",
            base=f"{math.exp(metrics.uncompressed_loss):.2f}",
            rate=f"{metrics.rate:.2f}",
        )
        bar.update(1)
    bar.close()
    model_dir = model.save_pretrained(output_dir / "model")
    validation = load_sequences(
        model.reconstructor,
        config.data_path,
        "validation",
        config.max_length,
        config.eval_documents,
        config.text_column,
    )
    result = perplexity_comparison(model, validation, config.batch_size)
    for key in ("compressed_perplexity", "uncompressed_perplexity", "ratio", "rate"):
        writer.add_scalar(f"validation/{key}", result[key], step)
    writer.close()
    summary = {
        "config": asdict(config),
        "steps": step,
        "sequences": len(sequences),
        "trainable_parameters": model.num_trainable_parameters(),
        "parachute_backoffs": parachute.backoffs,
        "final_thresholds": model.effective_thresholds(),
        "plan": {
            "compression_layers": model.layer_indices,
            "thresholds": model.config.thresholds,
            "plan_rate": model.plan_rate() if model.config.adaptive_threshold else None,
        },
        "validation": result,
        "model_dir": str(model_dir),
        "history_tail": history[-20:],
    }
    atomic_write_json(output_dir / "train_summary.json", json.loads(json.dumps(summary, default=str)))
    return summary
