"""Reconstructors: causal LMs that price tokens in bits. The only way tokenmask code reaches an LM.

* :mod:`.reconstructor` — :class:`Reconstructor` (scoring in bits and its primitives), :func:`pad_batch`,
  the weights version (:func:`weights_version`, :func:`mark_weights_changed`).
* :mod:`.judge` — the judge NLLs shared by the metrics and the env's recoverability bonus.
* :mod:`.finetune` — :class:`ReconstructorFinetuner`.
* :mod:`.loading` — the single model loader.
* :mod:`.options` — option values configs check (mask modes, the default model name); light.

Heavy pieces (torch, transformers) load on first use of a name, so configs and ``--help`` can
import this package without them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tokenmask.reconstructors.options import DEFAULT_MODEL, MASK_MODES, MaskMode

if TYPE_CHECKING:
    from tokenmask.reconstructors.finetune import ReconstructorFinetuner
    from tokenmask.reconstructors.loading import (
        ModelNotFoundError,
        embedded_model_dir,
        load_causal_lm,
        load_tokenizer,
        pick_device,
        pick_dtype,
    )
    from tokenmask.reconstructors.reconstructor import (
        CorruptCheckpointError,
        Reconstructor,
        mark_weights_changed,
        pad_batch,
        weights_version,
    )

_EXPORTS: dict[str, str] = {
    "ReconstructorFinetuner": "tokenmask.reconstructors.finetune",
    "ModelNotFoundError": "tokenmask.reconstructors.loading",
    "embedded_model_dir": "tokenmask.reconstructors.loading",
    "load_causal_lm": "tokenmask.reconstructors.loading",
    "load_tokenizer": "tokenmask.reconstructors.loading",
    "pick_device": "tokenmask.reconstructors.loading",
    "pick_dtype": "tokenmask.reconstructors.loading",
    "CorruptCheckpointError": "tokenmask.reconstructors.reconstructor",
    "Reconstructor": "tokenmask.reconstructors.reconstructor",
    "mark_weights_changed": "tokenmask.reconstructors.reconstructor",
    "pad_batch": "tokenmask.reconstructors.reconstructor",
    "weights_version": "tokenmask.reconstructors.reconstructor",
}


def load_reconstructor(name: str = DEFAULT_MODEL, **kwargs: object) -> Reconstructor:
    """Load a reconstructor by name; shorthand for :meth:`Reconstructor.load` (same keyword arguments)."""
    from tokenmask.reconstructors.reconstructor import Reconstructor

    return Reconstructor.load(name, **kwargs)  # type: ignore[arg-type]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tokenmask.reconstructors' has no attribute {name!r}")


__all__ = [
    "DEFAULT_MODEL",
    "MASK_MODES",
    "CorruptCheckpointError",
    "MaskMode",
    "ModelNotFoundError",
    "Reconstructor",
    "ReconstructorFinetuner",
    "embedded_model_dir",
    "load_causal_lm",
    "load_reconstructor",
    "load_tokenizer",
    "mark_weights_changed",
    "pad_batch",
    "pick_device",
    "pick_dtype",
    "weights_version",
]
