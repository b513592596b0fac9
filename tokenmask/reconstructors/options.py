"""Values of reconstructor options that configs check without loading torch.

Defined here, light, and re-exported by :mod:`tokenmask.reconstructors` (and the modules that use
them), so that ``tokenmask train --help`` and a config's argument errors answer without torch.
"""

from __future__ import annotations

from typing import Literal

DEFAULT_MODEL = "default"
"""The model name of the embedded SmolLM2 (the reconstructor and judge used when none is named)."""

MaskMode = Literal["placeholder", "delete"]
"""``placeholder``: a masked token is replaced by the mask token; ``delete``: it is removed."""

MASK_MODES: tuple[str, ...] = ("placeholder", "delete")
"""Every :data:`MaskMode`, for checking a config value."""
