"""Figures for reports: image | label | prediction panels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402


def rgb_composite(image: np.ndarray, rgb: Sequence[int] = (0, 1, 2)) -> np.ndarray:
    """A display RGB from three bands, each stretched between its 2nd and 98th percentile."""
    bands = np.nan_to_num(image[list(rgb)].astype(np.float64))
    low = np.percentile(bands, 2, axis=(1, 2), keepdims=True)
    high = np.percentile(bands, 98, axis=(1, 2), keepdims=True)
    return np.clip((bands - low) / np.maximum(high - low, 1e-9), 0, 1).transpose(1, 2, 0)


def save_panels(
    path: str | Path,
    image: np.ndarray,
    maps: dict[str, np.ndarray],
    class_names: Sequence[str],
    rgb: Sequence[int] = (0, 1, 2),
    ignore_index: int = 255,
) -> Path:
    """Save an RGB composite beside class maps (label, predictions), with a shared legend.

    The layout engine places titles and legend outside the images and the saved area is fitted
    to everything drawn, so no title is cut at the figure's edge.
    """
    colors = plt.get_cmap("tab10")(np.arange(len(class_names)))
    cmap = ListedColormap(colors)
    fig, axes = plt.subplots(
        1, 1 + len(maps), figsize=(4 * (1 + len(maps)), 4.6), layout="constrained"
    )
    axes[0].imshow(rgb_composite(image, rgb))
    axes[0].set_title("image (RGB composite)")
    for ax, (title, class_map) in zip(axes[1:], maps.items(), strict=True):
        shown = np.ma.masked_where(class_map == ignore_index, class_map)
        ax.imshow(shown, cmap=cmap, vmin=-0.5, vmax=len(class_names) - 0.5, interpolation="none")
        ax.set_title(title)
    for ax in axes:
        ax.set_axis_off()
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors]
    fig.legend(
        handles, class_names, loc="outside lower center", ncol=len(class_names), frameon=False
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)
    return path
