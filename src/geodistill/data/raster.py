"""Raster reading with rasterio: band selection, nodata and clear errors.

Everything geodistill reads goes through these functions so that a corrupt file, a missing band
or a grid mismatch is reported once, with the file name, in the same words.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from geodistill.errors import GeodistillError

BandSpec = Sequence[int | str] | None
"""Bands to read: ``None`` for all, else 0-based indices or band descriptions (names)."""


@dataclass(frozen=True)
class RasterInfo:
    """Header of a raster: what is needed to check and georeference without reading pixels."""

    path: str
    width: int
    height: int
    count: int
    dtype: str
    crs: CRS | None
    transform: Affine
    nodata: float | None
    descriptions: tuple[str | None, ...]

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width


def open_raster(path: str | Path) -> rasterio.DatasetReader:
    """Open a raster for reading, turning rasterio's errors into a :class:`GeodistillError`."""
    path = Path(path)
    if not path.exists():
        raise GeodistillError("file does not exist", path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioError as err:
        raise GeodistillError(f"cannot read raster ({err})", path) from err


def raster_info(path: str | Path) -> RasterInfo:
    """Read a raster's header."""
    with open_raster(path) as src:
        return RasterInfo(
            path=str(path),
            width=src.width,
            height=src.height,
            count=src.count,
            dtype=src.dtypes[0],
            crs=src.crs,
            transform=src.transform,
            nodata=src.nodata,
            descriptions=tuple(src.descriptions),
        )


def resolve_bands(info: RasterInfo, bands: BandSpec) -> list[int]:
    """Turn a band spec into 0-based indices valid for ``info``.

    Names are matched against the band descriptions stored in the file (case-insensitive).
    """
    if bands is None:
        return list(range(info.count))
    names = [(d or "").lower() for d in info.descriptions]
    indices = []
    for band in bands:
        if isinstance(band, str) and not band.lstrip("-").isdigit():
            if band.lower() not in names:
                known = ", ".join(d or "?" for d in info.descriptions)
                raise GeodistillError(f"no band named {band!r} (bands: {known})", info.path)
            indices.append(names.index(band.lower()))
            continue
        index = int(band)
        if not 0 <= index < info.count:
            raise GeodistillError(
                f"band index {index} out of range: the file has {info.count} bands", info.path
            )
        indices.append(index)
    return indices


def read_image(
    path: str | Path,
    bands: BandSpec = None,
    window: Window | None = None,
    boundless: bool = False,
) -> np.ndarray:
    """Read image bands as float32 ``(C, H, W)``; nodata pixels (declared value or NaN) become NaN.

    NaN is geodistill's single in-memory nodata marker: the model's normaliser maps it to zero and
    the label pipeline maps it to the ignore index, so nodata is never trained on or scored.
    """
    info = raster_info(path)
    indexes = [i + 1 for i in resolve_bands(info, bands)]
    with open_raster(path) as src:
        return read_pixels(src, indexes, window, boundless)


def read_pixels(
    src: rasterio.DatasetReader,
    indexes: list[int],
    window: Window | None = None,
    boundless: bool = False,
) -> np.ndarray:
    """:func:`read_image` on an open dataset (1-based ``indexes``): for many windowed reads."""
    try:
        data = src.read(indexes, window=window, boundless=boundless, fill_value=src.nodata)
        masks = None
        if _has_mask_beyond_nodata(src, indexes):
            masks = src.read_masks(indexes, window=window, boundless=boundless)
    except RasterioError as err:
        raise GeodistillError(f"cannot read pixels ({err})", src.name) from err
    image = data.astype(np.float32, copy=False)
    if masks is not None:
        image[masks == 0] = np.nan
    elif src.nodata is not None and not np.isnan(src.nodata):
        image[data == src.nodata] = np.nan
    return image


def _has_mask_beyond_nodata(src: rasterio.DatasetReader, indexes: list[int]) -> bool:
    """Whether a band has a mask other than its nodata value (alpha band, internal mask).

    A nodata-only mask is applied by comparing values, which is an order of magnitude faster
    than GDAL's windowed ``read_masks``.
    """
    flags = [src.mask_flag_enums[i - 1] for i in indexes]
    return any(MaskFlags.per_dataset in f or MaskFlags.alpha in f for f in flags)


def check_same_grid(image: RasterInfo, label: RasterInfo) -> None:
    """Refuse an image/label pair whose size, CRS or (when both are georeferenced) placement differ.

    Placement may differ by a hundredth of a pixel (rounding in the files' own writers); a label
    without a transform (pixel grid only) is taken as aligned with its image.
    """
    if image.shape != label.shape:
        raise GeodistillError(
            f"label size {label.width}x{label.height} does not match image {image.path} "
            f"size {image.width}x{image.height}",
            label.path,
        )
    if image.crs is not None and label.crs is not None and image.crs != label.crs:
        raise GeodistillError(
            f"label CRS {label.crs.to_string()} does not match image {image.path} "
            f"CRS {image.crs.to_string()}",
            label.path,
        )
    georeferenced = not image.transform.is_identity and not label.transform.is_identity
    tolerance = 0.01 * min(abs(image.transform.a), abs(image.transform.e))
    if georeferenced and not image.transform.almost_equals(label.transform, tolerance):
        raise GeodistillError(
            f"label grid {tuple(label.transform)[:6]} does not match image {image.path} "
            f"grid {tuple(image.transform)[:6]} (shifted or another pixel size)",
            label.path,
        )
