"""Label rasters: class-id rasters or RGB-coded masks, mapped to class ids with an ignore index."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from geodistill.data.raster import open_raster, raster_info, reading
from geodistill.errors import GeodistillError

ColorMap = Mapping[str, int]
"""RGB colour → class id, keys as ``"R,G,B"`` or ``"#RRGGBB"``; a value < 0 means ignore."""


def parse_color(key: str) -> tuple[int, int, int]:
    """Parse ``"R,G,B"`` or ``"#RRGGBB"``."""
    key = key.strip()
    if key.startswith("#") and len(key) == 7:
        return tuple(int(key[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
    parts = key.split(",")
    if len(parts) == 3 and all(p.strip().isdigit() for p in parts):
        return tuple(int(p) for p in parts)  # type: ignore[return-value]
    raise GeodistillError(f"colour map key {key!r} is neither 'R,G,B' nor '#RRGGBB'")


def read_label(
    path: str | Path,
    num_classes: int,
    ignore_index: int = 255,
    color_map: ColorMap | None = None,
    ignore_values: Sequence[int] = (),
    window: Window | None = None,
) -> np.ndarray:
    """Read a label raster as int64 ``(H, W)`` class ids, unlabelled pixels set to ``ignore_index``.

    Unlabelled means: the raster's declared nodata value, any of ``ignore_values``, colours mapped
    to a negative id, or colours absent from ``color_map``. Any other value outside
    ``[0, num_classes)`` is an error, because it almost always means the wrong class list.
    """
    info = raster_info(path)
    with reading(path), open_raster(path) as src:
        if color_map is not None:
            return _map_colors(_read_rgb(src, window), color_map, ignore_index)
        label = src.read(1, window=window, boundless=window is not None, fill_value=info.nodata)
    if label.dtype.kind == "f":  # float labels: NaN (e.g. NaN nodata) is unlabelled
        label = np.where(np.isnan(label), ignore_index, label)
    label = label.astype(np.int64)
    unlabelled = np.isin(label, list(ignore_values)) | (label == ignore_index)
    if info.nodata is not None and not np.isnan(info.nodata):
        unlabelled |= label == int(info.nodata)
    label[unlabelled] = ignore_index
    bad = (~unlabelled) & ((label < 0) | (label >= num_classes))
    if bad.any():
        values = np.unique(label[bad])[:10].tolist()
        raise GeodistillError(
            f"label values {values} are outside the {num_classes} classes [0, {num_classes - 1}] "
            f"(declare them as ignore values if they mean 'unlabelled')",
            path,
        )
    return label


def _read_rgb(src: rasterio.DatasetReader, window: Window | None) -> np.ndarray:
    """RGB of a colour-coded mask: three bands, or one band of palette indices (indexed PNG)."""
    boundless = window is not None
    if src.count >= 3:
        return src.read([1, 2, 3], window=window, boundless=boundless).astype(np.int64)
    try:
        palette = src.colormap(1)
    except ValueError as err:
        raise GeodistillError(
            f"colour-coded labels need 3 bands or a palette, the file has {src.count} band(s) "
            "and no colour table",
            src.name,
        ) from err
    lut = np.zeros((256, 3), dtype=np.int64)
    for index, rgba in palette.items():
        lut[index] = rgba[:3]
    return lut[src.read(1, window=window, boundless=boundless)].transpose(2, 0, 1)


def _map_colors(rgb: np.ndarray, color_map: ColorMap, ignore_index: int) -> np.ndarray:
    packed = (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]
    label = np.full(packed.shape, ignore_index, dtype=np.int64)
    for key, class_id in color_map.items():
        r, g, b = parse_color(key)
        label[packed == ((r << 16) | (g << 8) | b)] = ignore_index if class_id < 0 else class_id
    return label


LABEL_BLOCK_PIXELS = 1 << 22
"""Pixels read per block when a label raster is checked whole (bounded memory on large scenes)."""

_LABELLED_COUNTS: dict[tuple[object, ...], int] = {}
"""In-process cache of :func:`count_labelled`, keyed by file (path, size, mtime) and arguments."""


def count_labelled(
    path: str | Path,
    num_classes: int,
    ignore_index: int = 255,
    color_map: ColorMap | None = None,
    ignore_values: Sequence[int] = (),
) -> int:
    """Check a whole label raster once and return how many of its pixels are labelled.

    Training reads random crops, so a value outside the classes in a corner no crop covers would
    otherwise go unnoticed; a value outside ``[0, num_classes)`` raises the same error as
    :func:`read_label`. The raster is read in blocks of rows (bounded memory) and the result is
    cached by path, size and modification time, so repeated setups in one process stay cheap.
    """
    stat = Path(path).stat()
    key = (
        str(Path(path).resolve()),
        stat.st_size,
        stat.st_mtime_ns,
        num_classes,
        ignore_index,
        tuple(sorted((color_map or {}).items())),
        color_map is None,
        tuple(ignore_values),
    )
    if key not in _LABELLED_COUNTS:
        info = raster_info(path)
        rows = max(1, LABEL_BLOCK_PIXELS // max(info.width, 1))
        labelled = 0
        for row in range(0, info.height, rows):
            whole = rows >= info.height  # one plain read; windows read boundless (slower)
            window = None if whole else Window(0, row, info.width, min(rows, info.height - row))
            block = read_label(path, num_classes, ignore_index, color_map, ignore_values, window)
            labelled += int(np.count_nonzero(block != ignore_index))
        _LABELLED_COUNTS[key] = labelled
    return _LABELLED_COUNTS[key]
