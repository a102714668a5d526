"""Vector labels (polygons, roads, points) burnt onto a raster's pixel grid.

Coarse labels usually arrive as a GeoPackage, GeoJSON or Shapefile in whatever CRS the mapping
team used; training needs a class-id raster aligned pixel for pixel with the image. Everything
that can go wrong on the way (no CRS, a misspelt field, a class name nobody declared) is reported
as a :class:`GeodistillError` naming the vector file.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import rasterio
import shapely
from affine import Affine
from pyogrio.errors import DataLayerError, DataSourceError
from rasterio import features
from rasterio.crs import CRS
from rasterio.errors import CRSError, RasterioError
from rasterio.warp import transform_bounds

from geodistill.atomic import atomic_output
from geodistill.data.raster import RasterInfo, raster_info
from geodistill.errors import GeodistillError

CLASSES_TAG = "geodistill_classes"
"""GeoTIFF metadata tag holding the JSON list of class names, so chips and manifests keep them."""

_AREAL = {"Polygon", "MultiPolygon", "GeometryCollection"}
_LINEAR = {"LineString", "MultiLineString", "LinearRing"}


def rasterize_vector(
    vector_path: str | Path,
    reference: RasterInfo,
    class_field: str,
    classes: Sequence[str] | None = None,
    background: int = 0,
    all_touched: bool = False,
    nodata_outside: int | None = None,
    layer: str | int | None = None,
    class_values: Mapping[str, str] | None = None,
) -> np.ndarray:
    """Burn a vector layer's features into an ``(H, W)`` class-id array on ``reference``'s grid.

    ``class_field`` holds class ids (integers) or class names, which are mapped to their index in
    ``classes``; ``class_values`` renames attribute values first (``{"yes": "building"}`` for a
    layer whose field only says which features are buildings). Pixels no feature covers get
    ``background``; with ``nodata_outside`` set, pixels
    outside the bounding box of the features that reach the raster get that value instead, so a
    label layer covering only part of a scene does not claim the rest is background.

    Overlaps are resolved deterministically rather than by file order: areas are burnt first, then
    lines, then points (a road crossing a field stays visible), and within each kind higher class
    ids are burnt last and win. Polygons take the pixels whose centre they contain (every touched
    pixel with ``all_touched``); lines and points take the pixels they pass through.

    The result is uint8 when every value fits, int32 otherwise.
    """
    path = Path(vector_path)
    info = _layer_info(path, layer)
    fields = [str(f) for f in info["fields"]]
    if class_field not in fields:
        available = ", ".join(fields) or "none"
        raise GeodistillError(
            f"no field {class_field!r} in the vector layer (available fields: {available})", path
        )
    if info["features"] == 0:
        raise GeodistillError("the vector layer is empty: it has no features", path)
    vector_crs = _vector_crs(path, info["crs"])
    if vector_crs is None and reference.crs is not None:
        raise GeodistillError(
            f"the vector layer has no CRS, so it cannot be placed on raster {reference.path} "
            f"(CRS {reference.crs.to_string()}); assign one (e.g. ogr2ogr -a_srs)",
            path,
        )
    if vector_crs is not None and reference.crs is None:
        raise GeodistillError(
            f"raster {reference.path} has no CRS, so the vector layer (CRS "
            f"{vector_crs.to_string()}) cannot be placed on it",
            path,
        )

    raster_bounds = _raster_bounds(reference)
    gdf = _read_layer(path, layer, class_field, _read_bbox(raster_bounds, reference, vector_crs))
    gdf = gdf[~(gdf.geometry.isna() | gdf.geometry.is_empty)]
    if vector_crs is not None and reference.crs is not None and vector_crs != reference.crs:
        gdf = gdf.to_crs(reference.crs)
    gdf = gdf[gdf.geometry.intersects(shapely.box(*raster_bounds))]

    values = gdf[class_field]
    if class_values:
        values = values.map(lambda v: class_values.get(str(v), v))
    ids, keep = _class_ids(values, classes, path, class_field)
    gdf = gdf[keep]
    dtype = _label_dtype([background, nodata_outside, *ids.tolist()], path)
    if len(gdf) == 0:
        warnings.warn(
            f"{path}: no feature of the vector layer intersects raster {reference.path}; "
            "the label is all background",
            stacklevel=2,
        )
        fill = background if nodata_outside is None else nodata_outside
        return np.full(reference.shape, fill, dtype=dtype)

    rank = gdf.geometry.geom_type.map(lambda t: 0 if t in _AREAL else 1 if t in _LINEAR else 2)
    order = np.lexsort((ids, rank.to_numpy()))
    shapes = zip(gdf.geometry.to_numpy()[order], ids[order].tolist(), strict=True)
    label = features.rasterize(
        shapes,
        out_shape=reference.shape,
        transform=reference.transform,
        fill=background,
        all_touched=all_touched,
        dtype=dtype,
    )
    if nodata_outside is not None:
        _mask_outside(label, gdf.total_bounds, reference.transform, nodata_outside)
    return label


def prepare_labels(
    image_path: str | Path,
    vector_path: str | Path,
    class_field: str,
    out_path: str | Path,
    classes: Sequence[str] | None = None,
    background: int = 0,
    all_touched: bool = False,
    nodata_outside: int | None = None,
    layer: str | int | None = None,
    class_values: Mapping[str, str] | None = None,
) -> Path:
    """Rasterise a vector layer onto an image's grid and write it as a single-band GeoTIFF.

    The label raster gets the image's CRS and transform, ``nodata_outside`` as its nodata value
    and the class names in its metadata. It is written to a temporary file and renamed into place,
    so ``out_path`` is either the previous file or the complete new one, never half a raster.
    """
    reference = raster_info(image_path)
    label = rasterize_vector(
        vector_path,
        reference,
        class_field,
        classes=classes,
        background=background,
        all_touched=all_touched,
        nodata_outside=nodata_outside,
        layer=layer,
        class_values=class_values,
    )
    out_path = Path(out_path)
    tags = {CLASSES_TAG: json.dumps(list(classes))} if classes is not None else {}
    with atomic_output(out_path) as temporary:
        write_geotiff(
            temporary,
            label[None],
            crs=reference.crs,
            transform=reference.transform,
            nodata=nodata_outside,
            descriptions=["class"],
            tags=tags,
        )
    return out_path


def write_geotiff(
    path: str | Path,
    data: np.ndarray,
    *,
    crs: CRS | None,
    transform: Affine,
    nodata: float | None = None,
    descriptions: Sequence[str | None] = (),
    tags: Mapping[str, str] | None = None,
) -> None:
    """Write a ``(C, H, W)`` array as an LZW-compressed GeoTIFF with its georeferencing."""
    count, height, width = data.shape
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": data.dtype.name,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
        "compress": "lzw",
    }
    if width % 16 == 0 and height % 16 == 0 and min(width, height) >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    try:
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
            for band, description in enumerate(descriptions, start=1):
                if description:
                    dst.set_band_description(band, description)
            if tags:
                dst.update_tags(**tags)
    except RasterioError as err:
        raise GeodistillError(f"cannot write GeoTIFF ({err})", path) from err


def _layer_info(path: Path, layer: str | int | None) -> dict[str, Any]:
    if not path.exists():
        raise GeodistillError("file does not exist", path)
    try:
        return pyogrio.read_info(path, layer=layer)
    except (DataSourceError, DataLayerError) as err:
        raise GeodistillError(f"cannot read vector file ({err})", path) from err


def _vector_crs(path: Path, crs: str | None) -> CRS | None:
    if not crs:
        return None
    try:
        return CRS.from_user_input(crs)
    except CRSError as err:
        raise GeodistillError(f"the vector layer's CRS is not understood ({err})", path) from err


def _read_layer(
    path: Path, layer: str | int | None, class_field: str, bbox: tuple[float, ...] | None
) -> gpd.GeoDataFrame:
    try:
        return gpd.read_file(path, engine="pyogrio", layer=layer, columns=[class_field], bbox=bbox)
    except (DataSourceError, DataLayerError, ValueError) as err:
        raise GeodistillError(f"cannot read vector file ({err})", path) from err


def _raster_bounds(reference: RasterInfo) -> tuple[float, float, float, float]:
    t = reference.transform
    corners = [(c, r) for c in (0, reference.width) for r in (0, reference.height)]
    xs = [t.c + t.a * c + t.b * r for c, r in corners]
    ys = [t.f + t.d * c + t.e * r for c, r in corners]
    return min(xs), min(ys), max(xs), max(ys)


def _read_bbox(
    raster_bounds: tuple[float, float, float, float],
    reference: RasterInfo,
    vector_crs: CRS | None,
) -> tuple[float, ...] | None:
    """Raster footprint in the layer's CRS, padded, so a large layer is not read whole.

    ``None`` (read everything) where the footprint cannot be trusted, e.g. across the antimeridian.
    """
    bounds: tuple[float, ...] = raster_bounds
    if vector_crs is not None and reference.crs is not None and vector_crs != reference.crs:
        try:
            bounds = transform_bounds(reference.crs, vector_crs, *raster_bounds, densify_pts=21)
        except Exception:
            return None  # an unprojectable footprint only costs reading the whole layer
    left, bottom, right, top = bounds
    if not all(map(math.isfinite, bounds)) or left >= right or bottom >= top:
        return None
    pad_x, pad_y = 0.01 * (right - left), 0.01 * (top - bottom)
    return left - pad_x, bottom - pad_y, right + pad_x, top + pad_y


def _class_ids(
    values: pd.Series, classes: Sequence[str] | None, path: Path, field: str
) -> tuple[np.ndarray, np.ndarray]:
    """Map a class field to integer ids; features with an empty class are dropped with a warning."""
    keep = ~values.isna().to_numpy()
    if not keep.all():
        warnings.warn(
            f"{path}: {int((~keep).sum())} feature(s) with no value in {field!r} are ignored",
            stacklevel=3,
        )
    lookup = {name: i for i, name in enumerate(classes or [])}
    lookup_lower = {name.lower(): i for i, name in enumerate(classes or [])}
    mapping: dict[Any, int] = {}
    for value in pd.unique(values[keep]):
        mapping[value] = _class_id(value, lookup, lookup_lower, classes, path, field)
    ids = np.array([mapping[v] for v in values[keep]], dtype=np.int64)
    return ids, keep


def _class_id(
    value: Any,
    lookup: dict[str, int],
    lookup_lower: dict[str, int],
    classes: Sequence[str] | None,
    path: Path,
    field: str,
) -> int:
    if isinstance(value, str):
        name = value.strip()
        if name in lookup:
            return lookup[name]
        if name.lower() in lookup_lower:
            return lookup_lower[name.lower()]
        if not name.lstrip("-").isdigit():
            if classes is None:
                raise GeodistillError(
                    f"field {field!r} holds class names ({name!r}) but no class list was given "
                    "to map them to ids",
                    path,
                )
            raise GeodistillError(
                f"unknown class {name!r} in field {field!r} (known classes: {', '.join(classes)})",
                path,
            )
        class_id = int(name)
    elif isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise GeodistillError(
            f"field {field!r} holds {value!r}, which is neither a class id nor a class name", path
        )
    elif float(value).is_integer():
        class_id = int(value)
    else:
        raise GeodistillError(f"field {field!r} holds {value!r}, not an integer class id", path)
    if class_id < 0:
        raise GeodistillError(f"negative class id {class_id} in field {field!r}", path)
    if classes is not None and class_id >= len(classes):
        raise GeodistillError(
            f"class id {class_id} in field {field!r} is out of range for the "
            f"{len(classes)} classes given ({', '.join(classes)})",
            path,
        )
    return class_id


def _label_dtype(values: list[int | None], path: Path) -> np.dtype:
    present = [v for v in values if v is not None]
    low, high = min(present), max(present)
    if low >= 0 and high <= 255:
        return np.dtype(np.uint8)
    info = np.iinfo(np.int32)
    if info.min <= low and high <= info.max:
        return np.dtype(np.int32)
    raise GeodistillError(f"label values {low}..{high} do not fit a 32-bit integer raster", path)


def _mask_outside(label: np.ndarray, bounds: np.ndarray, transform: Affine, value: int) -> None:
    """Set pixels whose centre lies outside ``bounds`` (minx, miny, maxx, maxy) to ``value``."""
    inside = features.geometry_mask(
        [shapely.box(*bounds)], out_shape=label.shape, transform=transform, invert=True
    )
    label[~inside] = value
