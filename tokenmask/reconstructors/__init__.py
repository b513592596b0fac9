"""Reconstructors: causal LMs that price tokens in bits. The only way tokenmask code reaches an LM."""

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
    "pick_device",
    "pick_dtype",
]
