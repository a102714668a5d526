"""Raster reading with rasterio: band selection, nodata and clear errors.

Everything geodistill reads goes through these functions so that a corrupt file, a missing band
or a grid mismatch is reported once, with the file name, in the same words: every GDAL failure
while opening or reading a raster is translated by :func:`raster_error` (used through
:func:`reading`), and a file without a CRS is announced once by :func:`warn_no_crs`.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS
from rasterio.enums import MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from geodistill.errors import GeodistillError, GeodistillWarning

BandSpec = Sequence[int | str] | None
"""Bands to read: ``None`` for all, else 0-based indices or band descriptions (names)."""

ReadError = (RasterioError, CPLE_BaseError)
"""What rasterio raises when GDAL cannot open or read a file."""

_CORRUPT = re.compile(
    r"read error|failed to read|ireadblock|tiffread|truncat|corrupt|decod|not enough data|"
    r"premature end|unexpected end|read failed|bad (?:data|value)|invalid (?:tiff|data)",
    re.IGNORECASE,
)
_GENERIC = re.compile(r"see previous exception|^\s*\w+\(\) failed\.?\s*$", re.IGNORECASE)
_NO_CRS_SHOWN: dict[object, object] = {}
"""Registry of :func:`warn_no_crs`: one line per file (reset when the warning filters change)."""


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
    if path.is_dir():
        raise GeodistillError("is a folder, not a raster file", path)
    with reading(path), quiet_georeferencing():
        return rasterio.open(path)


@contextmanager
def reading(path: str | Path) -> Iterator[None]:
    """Translate any GDAL failure inside the block into :func:`raster_error` for ``path``.

    Wrap every ``open``/``read``/``read_masks`` of a raster in it, so a truncated file says the
    same thing whichever command reads it, and when (header or pixels).
    """
    try:
        yield
    except ReadError as err:
        raise raster_error(err, path) from err


def raster_error(err: BaseException, path: str | Path) -> GeodistillError:
    """One-line :class:`GeodistillError` for a GDAL failure on ``path``.

    rasterio reports a failed read as "Read failed. See previous exception for details." with the
    real cause several exceptions down the chain; the CLI shows no chain, so the most specific
    sentence GDAL gave is pulled up here and the failure is put in words: an empty file, a
    format GDAL does not know, or a file that is truncated or corrupt.
    """
    path = Path(path)
    messages = _error_chain(err)
    detail = _useful_sentence(messages, path)
    everything = " ".join(messages).lower()
    if path.is_file() and path.stat().st_size == 0:
        problem = "the file is empty"
    elif "not recognized as" in everything or "not recognised as" in everything:
        problem = "not a raster format GDAL recognises (is it an image file?)"
    elif "permission denied" in everything:
        problem = "permission denied"
    elif _CORRUPT.search(everything):
        problem = "the file is truncated or corrupt"
    else:
        problem = "GDAL failed"
    if detail and problem.startswith(("the file is truncated", "GDAL failed")):
        problem += f" ({detail})"
    return GeodistillError(f"cannot read raster: {problem}", path)


def _error_chain(err: BaseException) -> list[str]:
    """Messages of ``err`` and its causes, outermost first (rasterio chains GDAL's errors)."""
    messages, seen = [], set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        messages.append(str(current).strip())
        current = current.__cause__ or current.__context__
    return messages


def _useful_sentence(messages: list[str], path: Path) -> str:
    """The innermost message that says something (not "see previous exception", not "X()
    failed"), without the file name or the name of the C function that failed."""
    for message in reversed(messages):
        text = message
        for name in (str(path), path.name):
            text = text.replace(f"'{name}'", "the file")
            text = text[len(name) :] if text.startswith(name) else text
        text = re.sub(r"^[\s,:]*(?:band \d+:\s*)?", "", text)
        text = re.sub(r"^[A-Za-z_]\w*:(?=\S)", "", text)  # "TIFFReadEncodedStrip:Read error"
        text = text.replace(" at scanline 4294967295", "")  # libtiff's "no scanline" (-1)
        text = text.strip().rstrip(".")
        if text and not _GENERIC.search(text):
            return text[:200]
    return ""


@contextmanager
def quiet_georeferencing() -> Iterator[None]:
    """Silence rasterio's ``NotGeoreferencedWarning`` (a warning with a source line, emitted on
    every open): geodistill says "no CRS" itself, once per file (:func:`warn_no_crs`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


def warn_no_crs(path: str | Path, consequence: str) -> None:
    """Warn that ``path`` has no CRS and what follows from it, once per file and run.

    The warning is attributed to the file itself and kept in a registry of this module, so
    Python's default rule (show the first occurrence per location) prints it once however many
    times a command checks the file; changing the warning filters (every ``geodistill`` run
    does) starts afresh.
    """
    warnings.warn_explicit(
        f"{path}: no CRS; {consequence}",
        GeodistillWarning,
        filename=str(path),
        lineno=0,
        module=__name__,
        registry=_NO_CRS_SHOWN,
    )


def crs_code(crs: CRS | None) -> str:
    """A CRS's authority code (``EPSG:32633``), else its :func:`crs_label`."""
    authority = crs.to_authority() if crs is not None else None
    return ":".join(authority) if authority else crs_label(crs)


def crs_label(crs: CRS | None) -> str:
    """A CRS as people know it: ``EPSG:32633 (WGS 84 / UTM zone 33N)``; never a page of WKT."""
    if crs is None:
        return "no CRS"
    authority = crs.to_authority()
    code = ":".join(authority) if authority else None
    try:
        from pyproj import CRS as ProjCRS

        name = ProjCRS.from_user_input(crs.to_wkt()).name
    except Exception:  # a name is a nicety: any failure falls back to the code or the WKT head
        name = None
    if code and name and name.lower() != "unknown":
        return f"{code} ({name})"
    return code or name or crs.to_string()[:60]


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

    Names are matched against the band descriptions stored in the file (case-insensitive); a
    band that is not there is refused with what the file does have, so the fix is obvious.
    """
    if bands is None:
        return list(range(info.count))
    if len(bands) == 0:
        raise GeodistillError("no bands selected: give band indices (0-based) or names", info.path)
    names = [(d or "").lower() for d in info.descriptions]
    indices = []
    for band in bands:
        if isinstance(band, str) and not band.strip().lstrip("-").isdigit():
            if band.strip().lower() not in names:
                raise GeodistillError(f"no band named {band!r}: {_band_listing(info)}", info.path)
            indices.append(names.index(band.strip().lower()))
            continue
        index = int(band)
        if not 0 <= index < info.count:
            raise GeodistillError(f"band {index} is out of range: {_band_listing(info)}", info.path)
        indices.append(index)
    return indices


def _band_listing(info: RasterInfo) -> str:
    """What bands a file has, in the form a band selection takes (0-based index, name)."""
    last = f"0..{info.count - 1}" if info.count > 1 else "0"
    count = f"the file has {info.count} band{'s' if info.count != 1 else ''} (0-based: {last})"
    if not any(info.descriptions):
        return f"{count}, none of them named; select bands by index"
    named = ", ".join(f"{i}={d}" for i, d in enumerate(info.descriptions) if d)
    return f"{count}, named {named}"


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
    with reading(src.name):
        data = src.read(indexes, window=window, boundless=boundless, fill_value=src.nodata)
        masks = None
        if _has_mask_beyond_nodata(src, indexes):
            masks = src.read_masks(indexes, window=window, boundless=boundless)
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
            f"label CRS {crs_code(label.crs)} does not match image {image.path} "
            f"CRS {crs_code(image.crs)}",
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
