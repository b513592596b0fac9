"""The picture of which positions were merged, per layer, for one sample text.

Rows are decoder layers (layer 0 at the top), columns the sample's token positions. A cell is
grey where the layer holds the position on its own (the layers before the first compression
layer, clusters of one) and coloured where the position is merged with others; neighbouring
clusters alternate between two colours, so each coloured run is one cluster. The right margin
gives the positions the layer keeps, the title the whole-model rate (docs/evaluation.md).
``tokenmask activation evaluate`` writes it as ``merged_positions.png`` and, when TensorBoard is
installed, as the image ``activation/merged_positions`` under ``<output_dir>/tensorboard``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tokenmask.activation_compression.model import CompressedCausalLM
from tokenmask.evaluate.reports import figure_png
from tokenmask.io import atomic_write_bytes

MERGE_MAP_FILE = "merged_positions.png"
MERGE_MAP_TAG = "activation/merged_positions"
_SINGLE = (0.86, 0.86, 0.86)  # a position held on its own
_MERGED = ((0.12, 0.47, 0.71), (1.0, 0.5, 0.05))  # alternating colours of merged clusters
_MAX_LABELS = 96  # more tokens than this: no token labels under the picture


@dataclass
class MergeMap:
    """Which cluster every position belongs to in every layer, for one sequence.

    :param clusters: ``(L, N)`` cluster id per layer and position (``-1``: held on its own).
    :param tokens: the ``N`` tokens as text (labels).
    :param layer_kept: ``(L,)`` positions each layer keeps.
    :param rate: whole-model rate of this sequence (KV entries saved over all layers).
    """

    clusters: np.ndarray
    tokens: list[str]
    layer_kept: list[int]
    rate: float

    def merged(self) -> np.ndarray:
        """``(L, N)`` bool: the position is merged with at least one other in that layer."""
        out = np.zeros(self.clusters.shape, dtype=bool)
        for layer, row in enumerate(self.clusters):
            ids, counts = np.unique(row[row >= 0], return_counts=True)
            out[layer] = np.isin(row, ids[counts > 1])
        return out


def merge_map(
    model: CompressedCausalLM,
    ids: Sequence[int],
    similarity_threshold: float | Sequence[float] | None = None,
) -> MergeMap:
    """Run one BOS-started sequence through the model (``full`` mode) and record its clusters per layer.

    :param model: the compressed model.
    :param ids: token ids, BOS first.
    :param similarity_threshold: as :meth:`CompressedCausalLM.forward` (default: the model's plan).
    """
    batch = torch.as_tensor([list(ids)], dtype=torch.long)
    with torch.no_grad():
        output = model(batch, similarity_threshold=similarity_threshold)
    clusters = output.position_clusters()[0].cpu().numpy()
    tokens = [str(model.reconstructor.tokenizer.decode([int(t)])) for t in ids]
    return MergeMap(clusters, tokens, [int(x) for x in output.layer_kept[0].tolist()], output.rate)


def _cell_colours(mmap: MergeMap) -> np.ndarray:
    merged = mmap.merged()
    image = np.empty((*mmap.clusters.shape, 3), dtype=np.float32)
    image[:] = _SINGLE
    for colour, parity in zip(_MERGED, (0, 1)):
        image[merged & (mmap.clusters % 2 == parity)] = colour
    return image


def merge_map_png(mmap: MergeMap, title: str = "") -> tuple[bytes, np.ndarray]:
    """The picture (see the module docstring) as PNG bytes and as an ``(H, W, 3)`` uint8 array."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers, n = mmap.clusters.shape
    width = min(max(6.0, 0.12 * n + 2.0), 24.0)
    fig, ax = plt.subplots(figsize=(width, 1.2 + 0.16 * layers), dpi=110)
    try:
        ax.imshow(_cell_colours(mmap), aspect="auto", interpolation="nearest")
        ax.set_yticks(range(layers))
        ax.set_yticklabels([str(i) for i in range(layers)], fontsize=6)
        ax.set_ylabel("decoder layer")
        if n <= _MAX_LABELS:
            ax.set_xticks(range(n))
            ax.set_xticklabels([t.replace("\n", "\\n") for t in mmap.tokens], rotation=90, fontsize=6)
        else:
            ax.set_xlabel("token position")
        right = ax.secondary_yaxis("right")
        right.set_yticks(range(layers))
        right.set_yticklabels([f"{k}/{n}" for k in mmap.layer_kept], fontsize=6)
        ax.set_title(
            (title + "\n" if title else "")
            + f"positions merged per layer (coloured runs = clusters); rate {mmap.rate:.3f} of the KV cache",
            fontsize=8,
        )
        png = figure_png(fig)
        fig.canvas.draw()
        pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()  # type: ignore[attr-defined]
    finally:
        plt.close(fig)
    return png, pixels


def write_merge_map(mmap: MergeMap, output_dir: str | Path, title: str = "") -> Path:
    """Write ``merged_positions.png`` atomically and, if TensorBoard is installed, the same image under ``tensorboard/``."""
    png, pixels = merge_map_png(mmap, title)
    folder = Path(output_dir)
    path = atomic_write_bytes(folder / MERGE_MAP_FILE, png)
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # TensorBoard is optional here: the PNG is the picture
        return path
    writer = SummaryWriter(str(folder / "tensorboard"))
    try:
        writer.add_image(MERGE_MAP_TAG, pixels, global_step=0, dataformats="HWC")
    finally:
        writer.close()
    return path
