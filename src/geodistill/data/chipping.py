"""Cutting a large scene and its label into fixed-size, georeferenced GeoTIFF chips.

Scenes are far larger than what a training batch can hold, so they are cut once into chips that
each remain a valid GeoTIFF (own transform, CRS, nodata, band names): a chip can be inspected in
a GIS, and predictions on it can be placed back on the map. The scene is read window by window,
never whole, and the output directory appears only once complete.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio import windows
from rasterio.windows import Window

from geodistill.atomic import make_temp_dir
from geodistill.data.raster import (
    BandSpec,
    RasterInfo,
    check_same_grid,
    open_raster,
    raster_info,
    reading,
    resolve_bands,
    warn_no_crs,
)
from geodistill.data.vector import CLASSES_TAG, write_geotiff
from geodistill.errors import GeodistillError

MANIFEST_NAME = "manifest.json"


def cut_scene(
    image_path: str | Path,
    label: np.ndarray | str | Path | None,
    out_dir: str | Path,
    chip_size: int,
    stride: int | None = None,
    bands: BandSpec = None,
    min_valid_fraction: float = 0.0,
    ignore_index: int = 255,
    prefix: str | None = None,
    classes: Sequence[str] | None = None,
    overwrite: bool = False,
    ignore_values: Sequence[float] = (),
) -> Path:
    """Cut ``image_path`` (and its label) into ``chip_size``² chips and return the manifest path.

    ``label`` is an ``(H, W)`` class-id array on the image grid, the path of a label raster on the
    same grid, or ``None`` for unlabelled imagery. Chips start every ``stride`` pixels (default:
    ``chip_size``, no overlap) and are written as ``images/<prefix>_r<row>_c<col>.tif`` and
    ``labels/<same name>``, where row/col are the chip's pixel offsets in the scene and
    ``prefix`` defaults to the image's file stem. Chips reaching past the scene edge are padded
    with the image nodata (NaN for float images without one, else 0) and ``ignore_index`` in the
    label, so every chip has the same size. Label values in ``ignore_values`` (e.g. ``-1`` for
    "no data" in a file that declares no nodata value) also become ``ignore_index``.

    A pixel is valid when it lies inside the scene, is not nodata in any selected band and, with
    a label, is not ``ignore_index``; chips whose valid fraction is below ``min_valid_fraction``
    are skipped. Class names come from ``classes`` or, failing that, from the label raster's
    metadata (as written by :func:`geodistill.data.vector.prepare_labels`).

    Everything is written to a temporary sibling of ``out_dir`` and renamed into place at the end:
    an interrupted or failed run leaves ``out_dir`` untouched (and creates no parent folder). A
    non-empty ``out_dir`` is refused unless ``overwrite`` is set. The folders get the usual mode
    (``0o777`` less the umask), like any folder the user makes.

    Refused as :class:`GeodistillError` before anything is written: a chip larger than the image,
    a band the image lacks, a label on another grid; and, once the scene is read, an image whose
    every pixel is nodata, a label with no labelled pixel, or no chip reaching
    ``min_valid_fraction``: an empty or useless chip folder is never the result.
    """
    image_path, out_dir = Path(image_path), Path(out_dir)
    stride = chip_size if stride is None else stride
    _check_args(chip_size, stride, min_valid_fraction, ignore_index)
    _check_out_dir(out_dir, overwrite)
    info = raster_info(image_path)
    _check_chip_fits(info, chip_size)
    indexes = [i + 1 for i in resolve_bands(info, bands)]
    if info.crs is None:
        warn_no_crs(image_path, "the chips are written without one")

    with _LabelSource.create(label, info, ignore_index, ignore_values) as labels:
        if classes is None:
            classes = labels.classes
        created = _make_parents(out_dir.parent)
        tmp_dir = _staging_dir(out_dir)
        try:
            manifest = _write_chips(
                image_path,
                info,
                indexes,
                labels,
                tmp_dir,
                chip_size=chip_size,
                stride=stride,
                min_valid_fraction=min_valid_fraction,
                ignore_index=ignore_index,
                prefix=prefix or image_path.stem,
                classes=classes,
            )
            (tmp_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
            _move_into_place(tmp_dir, out_dir, overwrite)
        except BaseException:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            for folder in reversed(created):  # a folder someone else wrote in stays
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise
    return out_dir / MANIFEST_NAME


def _check_chip_fits(info: RasterInfo, chip_size: int) -> None:
    """Refuse chips larger than the image: every chip would be mostly padding (often the default
    ``--chip-size 256`` on a small image)."""
    if chip_size > info.width or chip_size > info.height:
        raise GeodistillError(
            f"--chip-size {chip_size} is larger than the image ({info.width}x{info.height} "
            f"pixels); use --chip-size {min(info.width, info.height)} or less",
            info.path,
        )


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and missing parents; return those created (outermost first), so a
    failed run can remove them again and leave nothing behind."""
    missing = []
    current = folder
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    folder.mkdir(parents=True, exist_ok=True)
    return list(reversed(missing))


def _staging_dir(out_dir: Path) -> Path:
    """A new, empty, hidden sibling of ``out_dir`` to build the chips in, with the usual folder
    mode; a killed run's staging folder is removed by the next run (:func:`make_temp_dir`)."""
    return make_temp_dir(out_dir, ".tmp")


def chip_offsets(size: int, chip_size: int, stride: int) -> list[int]:
    """Chip start offsets along one axis: every ``stride`` until a chip reaches the far edge."""
    last = max(size - chip_size, 0)
    offsets = list(range(0, last + 1, stride))
    if offsets[-1] < last:
        offsets.append(offsets[-1] + stride)
    return offsets


def _write_chips(
    image_path: Path,
    info: RasterInfo,
    indexes: list[int],
    labels: _LabelSource,
    tmp_dir: Path,
    *,
    chip_size: int,
    stride: int,
    min_valid_fraction: float,
    ignore_index: int,
    prefix: str,
    classes: Sequence[str] | None,
) -> dict[str, Any]:
    (tmp_dir / "images").mkdir()
    if labels.present:
        (tmp_dir / "labels").mkdir()
    descriptions = [info.descriptions[i - 1] for i in indexes]
    dtype = np.dtype(info.dtype)
    nodata = info.nodata
    if nodata is None and np.issubdtype(dtype, np.floating):
        nodata = float("nan")
    fill = 0 if nodata is None else nodata
    label_tags = {CLASSES_TAG: json.dumps(list(classes))} if classes is not None else {}

    chips: list[dict[str, Any]] = []
    totals: Counter[int] = Counter()
    coverage = _Coverage()
    with open_raster(image_path) as src:
        for window in _windows(info, chip_size, stride):
            with reading(image_path):
                image, valid = _read_padded(src, indexes, window, fill, dtype)
            coverage.image += int(valid.sum())
            label = labels.read(window)
            if label is not None:
                valid &= label != ignore_index
            coverage.labelled += int(valid.sum())
            fraction = float(valid.mean())
            coverage.best = max(coverage.best, fraction)
            if fraction < min_valid_fraction:
                continue

            name = f"{prefix}_r{window.row_off}_c{window.col_off}.tif"
            transform = windows.transform(window, info.transform)
            write_geotiff(
                tmp_dir / "images" / name,
                image,
                crs=info.crs,
                transform=transform,
                nodata=nodata,
                descriptions=descriptions,
            )
            histogram: dict[str, int] = {}
            if label is not None:
                write_geotiff(
                    tmp_dir / "labels" / name,
                    label[None],
                    crs=info.crs,
                    transform=transform,
                    nodata=ignore_index,
                    descriptions=["class"],
                    tags=label_tags,
                )
                counts = _histogram(label, ignore_index, classes, labels.path)
                totals.update(counts)
                histogram = {str(k): v for k, v in sorted(counts.items())}
            chips.append(
                {
                    "image": f"images/{name}",
                    "label": f"labels/{name}" if label is not None else None,
                    "row": window.row_off,
                    "col": window.col_off,
                    "bounds": list(windows.bounds(window, info.transform)),
                    "valid_fraction": round(fraction, 6),
                    "class_histogram": histogram,
                }
            )

    coverage.check(image_path, labels, ignore_index, min_valid_fraction, bool(chips))
    manifest: dict[str, Any] = {
        "source_image": str(image_path.resolve()),
        "source_label": labels.source,
        "chip_size": chip_size,
        "stride": stride,
        "crs": info.crs.to_string() if info.crs is not None else None,
        "width": info.width,
        "height": info.height,
        "bands": descriptions,
        "band_indexes": [i - 1 for i in indexes],
        "nodata": None if nodata is None or np.isnan(nodata) else nodata,
        "ignore_index": ignore_index,
        "min_valid_fraction": min_valid_fraction,
    }
    if classes is not None:
        manifest["classes"] = list(classes)
    manifest["chips"] = chips
    manifest["class_histogram"] = {str(k): v for k, v in sorted(totals.items())}
    return manifest


class _Coverage:
    """Valid pixels seen while cutting: to refuse a scene that gives nothing to train on."""

    def __init__(self) -> None:
        self.image = 0  # pixels with data in every selected band
        self.labelled = 0  # ... and a label other than ignore (= image without a label)
        self.best = 0.0  # highest valid fraction of a chip

    def check(
        self,
        image_path: Path,
        labels: _LabelSource,
        ignore_index: int,
        min_valid_fraction: float,
        any_chip: bool,
    ) -> None:
        """Raise if the image has no data, the label labels nothing, or no chip was kept."""
        if self.image == 0:
            raise GeodistillError(
                "every pixel is nodata in the selected bands: there is nothing to cut", image_path
            )
        if labels.present and self.labelled == 0:
            raise GeodistillError(
                f"the label has no labelled pixel where the image has data (all --ignore-index "
                f"{ignore_index} or nodata): there is nothing to train on",
                labels.path or image_path,
            )
        if not any_chip:
            raise GeodistillError(
                f"no chip reaches --min-valid {min_valid_fraction:g} (the best chip is "
                f"{self.best:.1%} valid); lower --min-valid",
                image_path,
            )


def _windows(info: RasterInfo, chip_size: int, stride: int) -> Iterator[Window]:
    for row in chip_offsets(info.height, chip_size, stride):
        for col in chip_offsets(info.width, chip_size, stride):
            yield Window(col, row, chip_size, chip_size)


def _inner(window: Window, height: int, width: int) -> tuple[slice, slice, Window]:
    """Part of ``window`` inside the raster, as chip-array slices and as a raster window."""
    row, col = int(window.row_off), int(window.col_off)
    rows = min(row + int(window.height), height) - row
    cols = min(col + int(window.width), width) - col
    return slice(0, rows), slice(0, cols), Window(col, row, cols, rows)


def _read_padded(
    src: rasterio.DatasetReader,
    indexes: list[int],
    window: Window,
    fill: float,
    dtype: np.dtype,
) -> tuple[np.ndarray, np.ndarray]:
    """Read a window that may reach past the bottom/right edge, padding with ``fill``.

    Returns the ``(C, chip, chip)`` pixels and an ``(chip, chip)`` mask of pixels that lie inside
    the scene and are valid in every band.
    """
    size = int(window.height)
    image = np.full((len(indexes), size, size), fill, dtype=dtype)
    valid = np.zeros((size, size), dtype=bool)
    rows, cols, inner = _inner(window, src.height, src.width)
    image[:, rows, cols] = src.read(indexes, window=inner)
    valid[rows, cols] = np.all(src.read_masks(indexes, window=inner) > 0, axis=0)
    if np.issubdtype(dtype, np.floating):
        valid[rows, cols] &= ~np.isnan(image[:, rows, cols]).any(axis=0)
    return image, valid


def _histogram(
    label: np.ndarray, ignore_index: int, classes: Sequence[str] | None, path: str | None
) -> dict[int, int]:
    counts = np.bincount(label.ravel(), minlength=256)
    counts[ignore_index] = 0
    histogram = {int(k): int(counts[k]) for k in np.flatnonzero(counts)}
    if classes is not None:
        unknown = sorted(k for k in histogram if k >= len(classes))
        if unknown:
            raise GeodistillError(
                f"label holds class ids {unknown} beyond the {len(classes)} known classes "
                f"({', '.join(classes)}); give every class name in --classes",
                path,
            )
    return histogram


class _LabelSource:
    """Label pixels per chip window, from an in-memory array, a label raster, or nothing."""

    def __init__(
        self,
        array: np.ndarray | None,
        dataset: rasterio.DatasetReader | None,
        ignore_index: int,
        path: str | None = None,
        classes: list[str] | None = None,
        ignore_values: Sequence[float] = (),
    ) -> None:
        self.array = array
        self.dataset = dataset
        self.ignore_index = ignore_index
        self.path = path
        self.classes = classes
        self.ignore_values = tuple(ignore_values)

    @classmethod
    def create(
        cls,
        label: np.ndarray | str | Path | None,
        image: RasterInfo,
        ignore_index: int,
        ignore_values: Sequence[float] = (),
    ) -> _LabelSource:
        if label is None:
            return cls(None, None, ignore_index)
        if isinstance(label, (str, Path)):
            return cls._from_raster(Path(label), image, ignore_index, ignore_values)
        array = np.asarray(label)
        if array.shape != image.shape:
            raise GeodistillError(
                f"label array shape {array.shape} does not match the image size "
                f"{image.height}x{image.width} (rows x cols)",
                image.path,
            )
        array = _to_uint8(array, ignore_index, None, image.path, ignore_values)
        return cls(array, None, ignore_index)

    @classmethod
    def _from_raster(
        cls, path: Path, image: RasterInfo, ignore_index: int, ignore_values: Sequence[float]
    ) -> _LabelSource:
        info = raster_info(path)
        if info.count != 1:
            raise GeodistillError(
                f"label raster has {info.count} bands; --label needs a single band of class ids",
                path,
            )
        check_same_grid(image, info)
        dataset = open_raster(path)
        classes = None
        tag = dataset.tags().get(CLASSES_TAG)
        if tag:
            try:
                classes = [str(c) for c in json.loads(tag)]
            except (ValueError, TypeError):
                classes = None
        return cls(None, dataset, ignore_index, str(path), classes, ignore_values)

    @property
    def present(self) -> bool:
        return self.array is not None or self.dataset is not None

    @property
    def source(self) -> str | None:
        return str(Path(self.path).resolve()) if self.path is not None else None

    def read(self, window: Window) -> np.ndarray | None:
        """Label chip as uint8, ``ignore_index`` outside the scene; ``None`` without a label."""
        if not self.present:
            return None
        size = int(window.height)
        chip = np.full((size, size), self.ignore_index, dtype=np.uint8)
        if self.array is not None:
            rows, cols, inner = _inner(window, *self.array.shape)
            chip[rows, cols] = self.array[inner.toslices()]
            return chip
        assert self.dataset is not None
        rows, cols, inner = _inner(window, self.dataset.height, self.dataset.width)
        with reading(self.dataset.name):
            data = self.dataset.read(1, window=inner)
        chip[rows, cols] = _to_uint8(
            data, self.ignore_index, self.dataset.nodata, self.path, self.ignore_values
        )
        return chip

    def close(self) -> None:
        if self.dataset is not None:
            self.dataset.close()

    def __enter__(self) -> _LabelSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _to_uint8(
    data: np.ndarray,
    ignore_index: int,
    nodata: float | None,
    path: str | None,
    ignore_values: Sequence[float] = (),
) -> np.ndarray:
    """Class ids as uint8; nodata (declared value, NaN, ``ignore_values``) -> ``ignore_index``."""
    missing = np.isin(data, ignore_values) if ignore_values else np.zeros(data.shape, bool)
    if nodata is not None:
        missing |= np.isnan(data) if np.isnan(nodata) else data == nodata
    if np.issubdtype(data.dtype, np.floating):
        missing |= np.isnan(data)
    values = data[~missing]
    if values.size:
        if np.issubdtype(values.dtype, np.floating) and not np.all(values == np.round(values)):
            raise GeodistillError(
                "label holds non-integer values; class ids must be integers", path
            )
        low, high = values.min(), values.max()
        if low < 0 or high > 255:
            raise GeodistillError(
                f"label values range {low}..{high}; class ids must be within 0..255 "
                "(mark no-data values with --ignore-values)",
                path,
            )
    out = np.where(missing, ignore_index, data)
    return out.astype(np.uint8)


def _check_args(chip_size: int, stride: int, min_valid_fraction: float, ignore_index: int) -> None:
    """Refuse impossible settings before any file is opened, naming the option as typed."""
    if chip_size < 1:
        raise GeodistillError(f"--chip-size must be a positive number of pixels, got {chip_size}")
    if stride < 1:
        raise GeodistillError(f"--stride must be a positive number of pixels, got {stride}")
    if not 0.0 <= min_valid_fraction <= 1.0:
        raise GeodistillError(
            f"--min-valid must be a fraction within 0..1, got {min_valid_fraction}"
        )
    if not 0 <= ignore_index <= 255:
        raise GeodistillError(f"--ignore-index must be within 0..255, got {ignore_index}")


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise GeodistillError("output path exists and is not a directory", out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise GeodistillError(
            "output folder exists and is not empty; pass --overwrite to replace it", out_dir
        )


def _move_into_place(tmp_dir: Path, out_dir: Path, overwrite: bool) -> None:
    """Rename the finished ``tmp_dir`` to ``out_dir``, replacing an empty or overwritable one."""
    if not out_dir.exists():
        tmp_dir.rename(out_dir)
        return
    _check_out_dir(out_dir, overwrite)
    old = make_temp_dir(out_dir, ".old")
    old.rmdir()
    out_dir.rename(old)
    try:
        tmp_dir.rename(out_dir)
    except BaseException:
        old.rename(out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)
