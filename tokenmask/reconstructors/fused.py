"""Fused RMS norms for a search's cast copy of the judge.

Transformers' Llama-family ``RMSNorm`` runs as six elementwise kernels (a float32 copy, its square, the
mean, ``rsqrt``, the product, the cast back), each reading and writing the whole hidden state; at
SmolLM2-135M's width (576) fusing them takes about a quarter off a bfloat16 forward pass on an H100
(``benchmarks/fused_norms.py``). :func:`fuse_rms_norms` switches each such module of a model to ``torch.nn.functional.rms_norm``
(one kernel on a GPU; the normalisation in float32, rounded to the weights' dtype) followed by the same
product with the weight in the same order as the module's own forward, so a bfloat16 forward's values
move only by the rounding of the variance's sum. A norm class whose forward does not compute that
(e.g. Gemma's ``1 + weight``) is left as it is: each class is checked once against its own forward.

Use it on a copy whose exact values matter less than their speed (:meth:`Reconstructor.with_dtype` with
``fuse_norms=True``: the judge search's bfloat16 passes); the evaluation's judge keeps its own norms.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F


def _fused_forward(self: torch.nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """``weight * rms_norm(x)``: the Llama ``RMSNorm`` forward with the normalisation as one kernel."""
    weight: torch.Tensor = self.weight  # type: ignore[assignment]
    eps = float(self.variance_epsilon)  # type: ignore[arg-type]
    return weight * F.rms_norm(hidden_states, (hidden_states.shape[-1],), eps=eps)


def _computes_llama_rms_norm(module: torch.nn.Module) -> bool:
    """Whether ``module``'s own forward equals :func:`_fused_forward` on a random float32 input (checked on a copy
    of its weight in float32, on the module's device)."""
    weight = getattr(module, "weight", None)
    eps = getattr(module, "variance_epsilon", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1 or not isinstance(eps, float | int):
        return False
    probe = types.SimpleNamespace(weight=weight.detach().float(), variance_epsilon=eps)
    generator = torch.Generator(device="cpu").manual_seed(0)
    x = (torch.randn(4, weight.shape[0], generator=generator) * 3).to(weight.device)
    with torch.no_grad():
        try:
            own = type(module).forward(probe, x)  # type: ignore[arg-type]
        except (AttributeError, RuntimeError, TypeError):
            return False
        fused = _fused_forward(probe, x)  # type: ignore[arg-type]
    return (
        isinstance(own, torch.Tensor)
        and own.shape == fused.shape
        and torch.allclose(own, fused, atol=1e-5, rtol=1e-5)
    )


def fuse_rms_norms(model: torch.nn.Module) -> int:
    """Run every Llama-style ``RMSNorm`` of ``model`` through the fused kernel (in place); return how many.

    A module qualifies when its class name ends in ``RMSNorm``, it has a 1-D ``weight`` and a
    ``variance_epsilon``, and its class's forward computes ``weight * normalised`` (checked once per class on
    a random input); the others keep their forward.
    """
    verdicts: dict[type, bool] = {}
    count = 0
    for module in model.modules():
        cls = type(module)
        if not cls.__name__.endswith("RMSNorm"):
            continue
        if cls not in verdicts:
            verdicts[cls] = _computes_llama_rms_norm(module)
        if verdicts[cls]:
            module.forward = types.MethodType(_fused_forward, module)  # type: ignore[method-assign]
            count += 1
    return count
