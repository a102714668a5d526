"""Sliding-window prediction of a whole scene onto its own georeferenced grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from geodistill.data.raster import BandSpec, raster_info, read_image
from geodistill.inference.writer import PREDICTION_NODATA, write_class_map


def blend_weights(tile: int) -> torch.Tensor:
    """A separable, strictly positive hann-like window: tile centres count more than edges."""
    ramp = torch.hann_window(tile + 2, periodic=False)[1:-1]
    return torch.outer(ramp, ramp)


def tile_origins(length: int, tile: int, stride: int) -> list[int]:
    """Tile start offsets covering ``[0, length)``, the last one flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return [*starts, length - tile]


@torch.no_grad()
def predict_scene(
    model: nn.Module,
    scene: str | Path,
    output: str | Path,
    bands: BandSpec = None,
    tile: int = 256,
    overlap: int = 64,
    batch_size: int = 4,
) -> Path:
    """Predict ``scene`` tile by tile, blend overlapping tiles, write a class-map GeoTIFF.

    Overlapping tile logits are averaged with a smooth window so tile borders leave no seams.
    Nodata pixels (NaN in every band) stay nodata in the output.
    """
    model.eval()
    info = raster_info(scene)
    image = torch.from_numpy(read_image(scene, bands))
    _, height, width = image.shape
    pad_h, pad_w = max(tile - height, 0), max(tile - width, 0)
    if pad_h or pad_w:
        image = torch.nn.functional.pad(image, (0, pad_w, 0, pad_h), value=float("nan"))
    H, W = image.shape[1:]
    weights = blend_weights(tile)
    scores: torch.Tensor | None = None
    total = torch.zeros(H, W)
    windows = [
        (r, c)
        for r in tile_origins(H, tile, tile - overlap)
        for c in tile_origins(W, tile, tile - overlap)
    ]
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        batch = torch.stack([image[:, r : r + tile, c : c + tile] for r, c in chunk])
        probs = model(batch).softmax(1)
        if scores is None:
            scores = torch.zeros(probs.shape[1], H, W)
        for (r, c), p in zip(chunk, probs, strict=True):
            scores[:, r : r + tile, c : c + tile] += p * weights
            total[r : r + tile, c : c + tile] += weights
    assert scores is not None
    classes = (scores / total).argmax(0)[:height, :width].numpy().astype(np.uint8)
    nodata = torch.isnan(image[:, :height, :width]).all(0).numpy()
    classes[nodata] = PREDICTION_NODATA
    return write_class_map(output, classes, info)
