"""Fine-tuning the reconstructor on (original ids, mask) pairs, with gradient accumulation."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tokenmask.reconstructors.reconstructor import MaskMode, Reconstructor


class ReconstructorFinetuner:
    """Trains a reconstructor to recover masked tokens: minimises the nats of the masked tokens.

    The loss is :meth:`Reconstructor.masked_loss`, i.e. the same ``-log p(x_i | masked prefix)``
    the environment prices, so fine-tuning lowers exactly the bits the agent pays. Every optimizer
    step bumps :attr:`Reconstructor.weights_version`, so the env's cached scores are recomputed.

    :param reconstructor: the reconstructor to train in place (load it with ``share=False`` so the
        process-wide cached model is left untouched).
    :param learning_rate: AdamW learning rate.
    :param grad_accum_steps: micro-batches whose gradients add up before one optimizer step.
    :param weight_decay: AdamW weight decay.
    :param max_grad_norm: gradient-norm clipping (``None`` = no clipping).
    :param mode: ``delete`` or ``placeholder``, how masked tokens appear to the LM.
    """

    def __init__(
        self,
        reconstructor: Reconstructor,
        learning_rate: float = 1e-5,
        grad_accum_steps: int = 1,
        weight_decay: float = 0.0,
        max_grad_norm: float | None = 1.0,
        mode: MaskMode = "delete",
    ) -> None:
        if grad_accum_steps < 1:
            raise ValueError(f"grad_accum_steps must be >= 1, got {grad_accum_steps}.")
        if learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate}.")
        self.reconstructor = reconstructor
        self.grad_accum_steps = grad_accum_steps
        self.max_grad_norm = max_grad_norm
        self.mode: MaskMode = mode
        params = [p for p in reconstructor.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
        self.micro_steps = 0
        self.optimizer_steps = 0

    def step(self, ids: Sequence[Sequence[int]], masks: Sequence[Sequence[bool]]) -> float:
        """One micro-batch: backpropagate the masked loss; step the optimizer every ``grad_accum_steps``.

        :param ids: original token ids per document.
        :param masks: per document and token, ``True`` = masked.
        :return: the micro-batch loss in nats per masked token.
        """
        model = self.reconstructor.model
        model.train()
        try:
            loss = self.reconstructor.masked_loss(ids, masks, self.mode)
            (loss / self.grad_accum_steps).backward()
        finally:
            model.eval()
        self.micro_steps += 1
        if self.micro_steps % self.grad_accum_steps == 0:
            self._optimizer_step()
        return float(loss.detach())

    def flush(self) -> None:
        """Apply any gradients accumulated since the last optimizer step."""
        if self.micro_steps % self.grad_accum_steps != 0:
            self._optimizer_step()
            self.micro_steps = 0

    def _optimizer_step(self) -> None:
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.reconstructor.model.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer_steps += 1
        self.reconstructor.mark_weights_changed()
