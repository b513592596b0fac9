"""Masked-text samples for people: removed tokens struck through.

TensorBoard's text tab sanitises HTML (no ``<del>``) and its Markdown has no ``~~strike~~``, so
removed characters carry the Unicode combining long stroke (U+0336), which every viewer renders
as a strike-through, in TensorBoard, terminals and logs alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tokenmask.reconstructors import Reconstructor

STROKE = "\u0336"
_MARKDOWN_SPECIAL = "\\`*_{}[]()#+-!|<>"


def strike(text: str) -> str:
    """``text`` with a combining stroke after every visible character."""
    return "".join(ch + STROKE if not ch.isspace() else ch for ch in text)


def strike_through(
    reconstructor: Reconstructor, ids: Sequence[int], keep: Sequence[bool] | np.ndarray
) -> str:
    """The document's text with each removed token struck through (runs of removed tokens decoded together).

    :param reconstructor: whose tokenizer made ``ids``.
    :param ids: the document's token ids.
    :param keep: per token, ``True`` = kept.
    """
    keep = np.asarray(keep, dtype=bool)
    if keep.shape != (len(ids),):
        raise ValueError(f"keep has shape {keep.shape} for {len(ids)} tokens; they must match.")
    pieces: list[str] = []
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or keep[i] != keep[start]:
            text = reconstructor.decode(list(ids[start:i]))
            pieces.append(text if keep[start] else strike(text))
            start = i
    return "".join(pieces)


def markdown_escape(text: str) -> str:
    """Escape Markdown's special characters and keep line breaks (for TensorBoard's text tab)."""
    escaped = "".join("\\" + ch if ch in _MARKDOWN_SPECIAL else ch for ch in text)
    return escaped.replace("\n", "  \n")
