"""Reconstructors: causal LMs that price tokens in bits. The only way tokenmask code reaches an LM.

* :mod:`.reconstructor` — :class:`Reconstructor` (scoring in bits and its primitives), :func:`pad_batch`,
  the weights version (:func:`weights_version`, :func:`mark_weights_changed`).
* :mod:`.judge` — the judge NLLs shared by the metrics and the env's recoverability bonus.
* :mod:`.finetune` — :class:`ReconstructorFinetuner`.
* :mod:`.loading` — the single model loader.
"""

from tokenmask.reconstructors.finetune import ReconstructorFinetuner
from tokenmask.reconstructors.loading import (
    DEFAULT_MODEL,
    ModelNotFoundError,
    embedded_model_dir,
    load_causal_lm,
    load_tokenizer,
    pick_device,
    pick_dtype,
)
from tokenmask.reconstructors.reconstructor import (
    MASK_MODES,
    CorruptCheckpointError,
    MaskMode,
    Reconstructor,
    mark_weights_changed,
    pad_batch,
    weights_version,
)


def load_reconstructor(name: str = DEFAULT_MODEL, **kwargs: object) -> Reconstructor:
    """Load a reconstructor by name; shorthand for :meth:`Reconstructor.load` (same keyword arguments)."""
    return Reconstructor.load(name, **kwargs)  # type: ignore[arg-type]


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
