"""Reports: image | label | prediction panels, and result tables of several methods."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from geodistill.metrics import UNDEFINED, mean_defined  # noqa: E402


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


def results_table(
    results: dict[str, dict[str, float]] | list[dict[str, dict[str, float]]],
    class_names: Sequence[str],
    order: Sequence[str] | None = None,
) -> str:
    """Markdown table of mean ± std (%) per method over several seeds' results (the plain value
    for one run: a spread of one value says nothing), with the share of the fine-only → oracle
    mIoU gap each method recovers. Methods in ``order`` (default: as in the first run), those
    every run has.

    Undefined values (NaN, e.g. boundary F1 where no boundary was labelled) are left out of the
    means, with ``(k/n runs)`` when only k of the n runs define one; none defined shows ``–``.
    ``boundary_F1_sparse`` gets a column only where it differs from ``boundary_F1``, i.e. where the
    labels leave unlabelled gaps between classes (with dense labels the two are equal).
    """
    runs = results if isinstance(results, list) else [results]
    names = [n for n in (order or list(runs[0])) if all(n in r for r in runs)]

    def differs(metrics: dict[str, float]) -> bool:
        sparse = float(metrics.get("boundary_F1_sparse", math.nan))
        dense = float(metrics.get("boundary_F1", math.nan))
        return math.isfinite(sparse) and not (math.isfinite(dense) and abs(sparse - dense) < 1e-9)

    show_sparse = any(differs(r[name]) for r in runs for name in names)
    keys = ["mIoU", "boundary_F1", *(["boundary_F1_sparse"] if show_sparse else []), "OA"]
    keys += [f"IoU/{c}" for c in class_names]
    header = ["method", *keys, "gap recovered"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def cell(name: str, key: str) -> str:
        values = [100 * v for r in runs if math.isfinite(v := float(r[name].get(key, math.nan)))]
        if not values:
            return UNDEFINED
        text = f"{np.mean(values):.2f}"
        if len(runs) > 1:
            text += f" ± {np.std(values):.2f}" if len(values) > 1 else ""
            text += f" ({len(values)}/{len(runs)} runs)" if len(values) < len(runs) else ""
        return text

    for name in names:
        cells = [name, *(cell(name, key) for key in keys)]
        if "fine_only" in names and "oracle" in names:
            gaps = []
            for r in runs:
                gap = r["oracle"]["mIoU"] - r["fine_only"]["mIoU"]
                gaps.append((r[name]["mIoU"] - r["fine_only"]["mIoU"]) / gap if gap else np.nan)
            recovered = mean_defined(gaps)
            cells.append(f"{100 * recovered:.0f} %" if math.isfinite(recovered) else UNDEFINED)
        else:
            cells.append(UNDEFINED)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
