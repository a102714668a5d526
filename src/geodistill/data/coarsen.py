"""Degrade an exact class-id label into a coarse, inventory-style label (the benchmark's recipe).

Global mining inventories (e.g. the Maus et al. mining polygons) are drawn by people at a coarse
scale: outlines are generous and include the ground between nearby features, borders are smooth
and simplified, tiny features are skipped. To measure how well a method learns from such labels,
the benchmark derives a coarse label from an exact one with this documented, seeded recipe. All
distances are in pixels of the input label:

1. **Coarser drawing grid** -- majority vote of the labelled (non-ignore) pixels in each
   ``block`` x ``block`` cell (ties go to the lowest class id; cells with no labelled pixel stay
   ignore), then back to full resolution by nearest neighbour.
2. **Closing** -- each class is vectorised (``rasterio.features.shapes``, 4-connected, pixel
   coordinates) and its polygons are closed morphologically, ``buffer(+closing)`` then
   ``buffer(-closing)``, so features closer than about ``2 * closing`` merge into one outline
   that includes the ground between them.
3. **Generous, uneven outlines** -- each resulting polygon is grown by its own distance, drawn
   uniformly from ``[0, max_dilation]`` with ``np.random.default_rng(seed)`` (painted classes
   in increasing id, polygons in vectorisation order).
4. **Simplification** -- Douglas-Peucker with tolerance ``simplify`` (shapely ``simplify``,
   ``preserve_topology=True``) for smooth, simplified borders.
5. **Small features dropped** -- a polygon whose feature area (measured after the closing of
   step 2, before the random growth of step 3, so the seed never decides what is mapped) is
   below ``min_area`` px² is dropped: inventories skip tiny features.

The polygons are then rasterised (``rasterio.features.rasterize``, ``all_touched=False``) onto a
canvas filled with the ``background`` class (default: the most frequent labelled class),
class by class in ``paint_order`` (default: by decreasing pixel count, so rare, thin classes end
on top). Pixels that are ignore in the input stay ignore: unlabelled areas remain unknown.
The same label, recipe and seed always give the same coarse label.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import shapely
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.features import rasterize, shapes
from rasterio.transform import Affine
from shapely.geometry import shape

from geodistill.atomic import atomic_output
from geodistill.data.raster import open_raster, reading
from geodistill.errors import GeodistillError

_IDENTITY = Affine.identity()


@dataclass(frozen=True)
class CoarsenRecipe:
    """Parameters of the coarse-label recipe (steps 1-5 of this module's docstring), in pixels.

    Validated on construction, so a bad config fails before any label is touched.
    """

    block: int = 4
    """1. majority-vote cell size: the coarser grid the inventory was drawn on."""
    closing: float = 6.0
    """2. per-class closing radius: fills the gaps between nearby features."""
    max_dilation: float = 4.0
    """3. each polygon grows by a seeded distance in ``[0, max_dilation]``: generous outlines."""
    simplify: float = 3.0
    """4. Douglas-Peucker tolerance: smooth, simplified borders."""
    min_area: float = 16.0
    """5. features smaller than this (px²) are dropped: inventories skip tiny features."""
    background: int | None = None
    """Class painted first everywhere; default: the label's most frequent labelled class."""
    paint_order: tuple[int, ...] | None = None
    """Classes painted after the background, later on top; default: decreasing pixel count.
    Present classes missing from an explicit order are painted first (below the listed ones)."""

    def __post_init__(self) -> None:
        if isinstance(self.block, bool) or not isinstance(self.block, (int, np.integer)):
            raise GeodistillError(f"coarsen recipe: block must be an integer, got {self.block!r}")
        if self.block < 1:
            raise GeodistillError(f"coarsen recipe: block must be >= 1, got {self.block}")
        for name in ("closing", "max_dilation", "simplify", "min_area"):
            value = getattr(self, name)
            if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(
                value, bool
            ):
                raise GeodistillError(f"coarsen recipe: {name} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise GeodistillError(
                    f"coarsen recipe: {name} must be finite and >= 0, got {value}"
                )
        if self.background is not None and (
            not isinstance(self.background, (int, np.integer)) or self.background < 0
        ):
            raise GeodistillError(
                f"coarsen recipe: background must be a class id >= 0, got {self.background!r}"
            )
        if self.paint_order is not None:
            order = tuple(self.paint_order)
            if any(not isinstance(c, (int, np.integer)) or c < 0 for c in order):
                raise GeodistillError(
                    f"coarsen recipe: paint_order must list class ids >= 0, got {order!r}"
                )
            if len(set(order)) != len(order):
                raise GeodistillError(f"coarsen recipe: paint_order repeats a class: {order!r}")


def coarsen_label(
    label: np.ndarray,
    recipe: CoarsenRecipe = CoarsenRecipe(),  # noqa: B008 - frozen, immutable default
    seed: int = 0,
    ignore_index: int = 255,
) -> np.ndarray:
    """Coarse, inventory-style version of an exact class-id label (see the module docstring).

    Returns an array of the same shape and dtype; ``ignore_index`` pixels of the input stay
    ``ignore_index``. Deterministic for a given ``seed``.
    """
    if not isinstance(recipe, CoarsenRecipe):
        raise GeodistillError(f"recipe must be a CoarsenRecipe, got {type(recipe).__name__}")
    label = np.asarray(label)
    if label.ndim != 2:
        raise GeodistillError(f"label must be a 2-D class-id array, got shape {label.shape}")
    if not np.issubdtype(label.dtype, np.integer):
        raise GeodistillError(f"label must hold integer class ids, got dtype {label.dtype}")
    ignored = label == ignore_index
    labelled = label[~ignored]
    if labelled.size and labelled.min() < 0:
        raise GeodistillError(
            f"label holds negative class id {int(labelled.min())} (ignore is {ignore_index})"
        )
    if labelled.size == 0:  # nothing known: nothing to draw
        return label.copy()
    for name, cls in (("background", recipe.background), ("paint_order", recipe.paint_order)):
        if cls is not None and ignore_index in np.atleast_1d(cls):
            raise GeodistillError(f"coarsen recipe: {name} uses the ignore value {ignore_index}")

    counts = np.bincount(labelled.astype(np.int64).ravel())
    present = np.flatnonzero(counts)
    background = int(np.argmax(counts)) if recipe.background is None else int(recipe.background)
    order = _paint_order(counts, present, background, recipe.paint_order)

    grid = _block_majority(label.astype(np.int64), recipe.block, ignore_index)
    rng = np.random.default_rng(seed)
    canvas = np.full(label.shape, background, dtype=np.int32)
    painted = sorted(set(order) & {int(c) for c in present})  # increasing id: fixed rng order
    polygons = {c: _class_polygons(grid == c, recipe, rng) for c in painted}
    for cls in order:
        if polygons.get(cls):
            rasterize(
                polygons[cls],
                out=canvas,
                transform=_IDENTITY,
                default_value=cls,
                all_touched=False,
            )
    out = canvas.astype(label.dtype)
    out[ignored] = ignore_index
    return out


def _paint_order(
    counts: np.ndarray,
    present: np.ndarray,
    background: int,
    explicit: tuple[int, ...] | None,
) -> list[int]:
    """Classes to paint after the background, bottom first."""
    by_count = sorted((int(c) for c in present), key=lambda c: (-counts[c], c))
    if explicit is None:
        return [c for c in by_count if c != background]
    listed = [int(c) for c in explicit]
    unlisted = [c for c in by_count if c != background and c not in listed]
    return unlisted + listed


def _block_majority(label: np.ndarray, block: int, ignore_index: int) -> np.ndarray:
    """Step 1: majority class of the labelled pixels per ``block`` x ``block`` cell, full res."""
    if block == 1:
        return label
    h, w = label.shape
    hb, wb = -(-h // block), -(-w // block)
    padded = np.full((hb * block, wb * block), ignore_index, dtype=np.int64)
    padded[:h, :w] = label
    cells = padded.reshape(hb, block, wb, block).transpose(0, 2, 1, 3).reshape(hb * wb, -1)
    valid = cells != ignore_index
    num_classes = int(cells[valid].max()) + 1 if valid.any() else 1
    cell_ids = np.broadcast_to(np.arange(hb * wb)[:, None], cells.shape)
    votes = np.bincount(
        cell_ids[valid] * num_classes + cells[valid], minlength=hb * wb * num_classes
    ).reshape(hb * wb, num_classes)
    winner = np.where(votes.any(axis=1), votes.argmax(axis=1), ignore_index).reshape(hb, wb)
    return np.repeat(np.repeat(winner, block, axis=0), block, axis=1)[:h, :w]


def _class_polygons(
    mask: np.ndarray, recipe: CoarsenRecipe, rng: np.random.Generator
) -> list[shapely.Geometry]:
    """Steps 2-5 for one class mask: closed, grown, simplified polygons (pixel coordinates)."""
    if not mask.any():
        return []
    pieces = [
        shape(geom)
        for geom, value in shapes(
            mask.astype(np.uint8), mask=mask, connectivity=4, transform=_IDENTITY
        )
        if value == 1
    ]
    if recipe.closing > 0:
        # buffer(+r) of a union is the union of the pieces' buffers; buffering the (disjoint)
        # pieces one by one is several times faster than buffering their staircase union.
        grown = shapely.union_all(shapely.buffer(np.asarray(pieces, dtype=object), recipe.closing))
        merged = grown.buffer(-recipe.closing)
    else:
        merged = shapely.union_all(pieces)
    parts = [p for p in shapely.get_parts(merged) if not p.is_empty and p.area > 0]
    grow = rng.uniform(0.0, recipe.max_dilation, size=len(parts))
    out = []
    for part, dist in zip(parts, grow, strict=True):
        if part.area < recipe.min_area:
            continue
        geom = part.buffer(float(dist)) if dist > 0 else part
        if recipe.simplify > 0:
            geom = geom.simplify(recipe.simplify, preserve_topology=True)
        if not geom.is_empty:
            out.append(geom)
    return out


def coarsen_label_file(
    src: str | Path,
    dst: str | Path,
    recipe: CoarsenRecipe = CoarsenRecipe(),  # noqa: B008 - frozen, immutable default
    seed: int = 0,
    ignore_index: int = 255,
) -> Path:
    """Coarsen a single-band class-id raster (GeoTIFF/PNG) into a uint8 GeoTIFF at ``dst``.

    The source's nodata pixels count as ignore. The output keeps the source grid (CRS,
    transform), declares ``nodata=ignore_index`` and is written atomically (a temporary file in
    the same folder, then ``os.replace``), so a crash never leaves a half-written label.
    """
    src, dst = Path(src), Path(dst)
    if not 0 <= ignore_index <= 255:
        raise GeodistillError(f"ignore_index must fit uint8 (0..255), got {ignore_index}")
    with open_raster(src) as ds, reading(src):
        if ds.count != 1:
            raise GeodistillError(f"expected a single-band class-id raster, got {ds.count}", src)
        label = ds.read(1)
        crs, transform, nodata = ds.crs, ds.transform, ds.nodata
    if not np.issubdtype(label.dtype, np.integer):
        raise GeodistillError(f"expected integer class ids, got dtype {label.dtype}", src)
    label = label.astype(np.int64)
    if nodata is not None and math.isfinite(nodata):
        label[label == int(nodata)] = ignore_index
    try:
        coarse = coarsen_label(label, recipe, seed=seed, ignore_index=ignore_index)
    except GeodistillError as err:
        raise GeodistillError(str(err), src) from err
    if coarse.max() > 255:
        raise GeodistillError(f"class id {int(coarse.max())} does not fit a uint8 label", src)

    profile = {
        "driver": "GTiff",
        "height": coarse.shape[0],
        "width": coarse.shape[1],
        "count": 1,
        "dtype": "uint8",
        "crs": crs,
        "transform": transform,
        "nodata": ignore_index,
        "compress": "deflate",
    }
    try:
        with atomic_output(dst) as temporary, warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(temporary, "w", **profile) as out:
                out.write(coarse.astype(np.uint8), 1)
    except (RasterioError, OSError) as err:
        raise GeodistillError(f"cannot write coarse label ({err})", dst) from err
    return dst
