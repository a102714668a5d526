"""Vector labels (polygons, roads, points) burnt onto a raster's pixel grid.

Coarse labels usually arrive as a GeoPackage, GeoJSON or Shapefile in whatever CRS the mapping
team used; training needs a class-id raster aligned pixel for pixel with the image. Everything
that can go wrong on the way (no CRS, a misspelt field, a class name nobody declared, a layer that
misses the image, a broken geometry) is reported as a :class:`GeodistillError` naming the vector
file; what can be mended (a self-intersecting polygon) is mended with a :class:`GeodistillWarning`.
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
from shapely.errors import ShapelyError

from geodistill.atomic import atomic_output
from geodistill.data.raster import RasterInfo, crs_label, quiet_georeferencing, raster_info
from geodistill.errors import GeodistillError, GeodistillWarning

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
    allow_empty_labels: bool = False,
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

    A layer that labels nothing on the image (no features, none overlapping the image, usually
    a wrong CRS, or none with a class) is refused with both extents in the image's CRS, unless
    ``allow_empty_labels`` (``--allow-empty-labels``) accepts an all-background label with a
    warning. A geometry that cannot be parsed (a ring of two points) is refused naming its
    feature; an invalid (self-intersecting) polygon is repaired with ``shapely.make_valid`` and
    a warning: its intended area is clear, and hand-digitised labels often hold such polygons.
    """
    path = Path(vector_path)
    layer = _choose_layer(path, layer)
    info = _layer_info(path, layer)
    empty = _EmptyLabel(path, reference, background, nodata_outside, allow_empty_labels)
    if info["features"] == 0:
        return empty("the vector layer has no features (it is empty)")
    fields = [str(f) for f in info["fields"]]
    if class_field not in fields:
        available = ", ".join(fields) or "none"
        raise GeodistillError(
            f"no field {class_field!r} (--class-field) in the vector layer; its fields: "
            f"{available}",
            path,
        )
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
    bbox = _read_bbox(raster_bounds, reference, vector_crs)
    gdf = _read_layer(path, layer, class_field, bbox)
    gdf = gdf[~(gdf.geometry.isna() | gdf.geometry.is_empty)]
    gdf = _repair_invalid(gdf, path)
    if vector_crs is not None and reference.crs is not None and vector_crs != reference.crs:
        gdf = gdf.to_crs(reference.crs)
    gdf = gdf[gdf.geometry.intersects(shapely.box(*raster_bounds))]
    if len(gdf) == 0:
        return empty(_miss_reason(path, layer, reference, vector_crs))

    values = gdf[class_field]
    if class_values:
        values = values.map(lambda v: class_values.get(str(v), v))
    ids, keep = _class_ids(values, classes, path, class_field)
    gdf = gdf[keep]
    if len(gdf) == 0:
        return empty(
            f"none of the {len(values)} feature(s) over image {reference.path} has a value in "
            f"field {class_field!r} (--class-field)"
        )
    dtype = _label_dtype([background, nodata_outside, *ids.tolist()], path)

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
    allow_empty_labels: bool = False,
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
        allow_empty_labels=allow_empty_labels,
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
    """Write a ``(C, H, W)`` array as an LZW-compressed GeoTIFF with its georeferencing.

    A raster without CRS or transform is written without rasterio's ``NotGeoreferencedWarning``:
    the command that reads such a source says "no CRS" once itself.
    """
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
        with quiet_georeferencing(), rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
            for band, description in enumerate(descriptions, start=1):
                if description:
                    dst.set_band_description(band, description)
            if tags:
                dst.update_tags(**tags)
    except RasterioError as err:
        raise GeodistillError(f"cannot write GeoTIFF ({err})", path) from err


class _EmptyLabel:
    """The answer to a layer that labels nothing on the image: refusal, or (with
    ``--allow-empty-labels``) an all-background label and a warning saying why."""

    def __init__(
        self,
        path: Path,
        reference: RasterInfo,
        background: int,
        nodata_outside: int | None,
        allow: bool,
    ) -> None:
        self.path, self.reference, self.allow = path, reference, allow
        self.fill = background if nodata_outside is None else nodata_outside
        self.dtype = _label_dtype([background, nodata_outside], path)

    def __call__(self, reason: str) -> np.ndarray:
        if not self.allow:
            raise GeodistillError(
                f"{reason}; --allow-empty-labels accepts an all-background label", self.path
            )
        warnings.warn(
            f"{self.path}: {reason}; the label is all background (--allow-empty-labels)",
            GeodistillWarning,
            stacklevel=3,
        )
        return np.full(self.reference.shape, self.fill, dtype=self.dtype)


def _choose_layer(path: Path, layer: str | int | None) -> str | None:
    """The layer to read, by name: ``layer`` (a name, or a 0-based index), or the file's only
    layer with geometries. Several such layers and no ``--layer`` are refused rather than the
    first taken silently: labels from the wrong layer would train a wrong model."""
    if not path.exists():
        raise GeodistillError("file does not exist", path)
    try:
        listing = pyogrio.list_layers(path)
    except (DataSourceError, DataLayerError) as err:
        raise _vector_read_error(err, path) from err
    names = [str(name) for name, _ in listing]
    spatial = [str(name) for name, kind in listing if kind is not None]
    if not names:
        raise GeodistillError("the vector file has no layers", path)
    if layer is None:
        if len(spatial) > 1:
            raise GeodistillError(
                f"the vector file has {len(spatial)} layers ({', '.join(spatial)}); choose one "
                "with --layer",
                path,
            )
        return (spatial or names)[0]
    if str(layer) in names:
        return str(layer)
    if str(layer).isdigit() and int(layer) < len(names):
        return names[int(layer)]
    raise GeodistillError(
        f"no layer {str(layer)!r} (--layer) in the vector file; its layers: {', '.join(names)}",
        path,
    )


def _layer_info(path: Path, layer: str | None) -> dict[str, Any]:
    try:
        return pyogrio.read_info(path, layer=layer)
    except (DataSourceError, DataLayerError) as err:
        raise _vector_read_error(err, path) from err


def _vector_read_error(err: Exception, path: Path) -> GeodistillError:
    """GDAL's complaint about a vector file in a sentence, without its hint on drivers."""
    message = str(err).split("; It might help", 1)[0].strip().rstrip(".")
    if "not recognized as" in message or "not recognised as" in message:
        message = "not a vector format GDAL recognises (GeoPackage, GeoJSON, Shapefile, ...)"
    else:
        message = message.replace(f"'{path}'", "the file").replace(str(path), "the file")
    return GeodistillError(f"cannot read vector file: {message}", path)


def _vector_crs(path: Path, crs: str | None) -> CRS | None:
    if not crs:
        return None
    try:
        return CRS.from_user_input(crs)
    except CRSError as err:
        raise GeodistillError(f"the vector layer's CRS is not understood ({err})", path) from err


def _read_layer(
    path: Path, layer: str | None, class_field: str, bbox: tuple[float, ...] | None
) -> gpd.GeoDataFrame:
    """The class field and geometries of the features near the raster, indexed by FID."""
    try:
        with warnings.catch_warnings():
            # GDAL's "Non closed ring detected" RuntimeWarning: _broken_feature says it better
            warnings.filterwarnings("ignore", "Non closed ring", RuntimeWarning)
            return gpd.read_file(
                path,
                engine="pyogrio",
                layer=layer,
                columns=[class_field],
                bbox=bbox,
                fid_as_index=True,
            )
    except ShapelyError as err:
        raise _broken_feature(path, layer, bbox, err) from err
    except (DataSourceError, DataLayerError, ValueError) as err:
        raise _vector_read_error(err, path) from err


def _broken_feature(
    path: Path, layer: str | None, bbox: tuple[float, ...] | None, err: Exception
) -> GeodistillError:
    """Name the first feature whose geometry GEOS cannot build (e.g. a ring of two points).

    Only run once reading has failed: the geometries are read again as raw WKB and built one
    by one, so the error can say which feature (its FID) to fix.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Non closed ring", RuntimeWarning)
        _, fids, wkbs, _ = pyogrio.raw.read(
            path, layer=layer, columns=[], bbox=bbox, return_fids=True
        )
    for fid, wkb in zip(fids, wkbs, strict=True):
        if wkb is None:
            continue
        try:
            shapely.from_wkb(wkb)
        except ShapelyError as broken:
            reason = str(broken).split(": ", 1)[-1]
            return GeodistillError(
                f"feature {fid} has a broken geometry ({reason}; a polygon ring needs at least 4 "
                "points, the last equal to the first); fix or delete that feature",
                path,
            )
    return GeodistillError(f"cannot read the geometries of the vector layer ({err})", path)


def _repair_invalid(gdf: gpd.GeoDataFrame, path: Path) -> gpd.GeoDataFrame:
    """Mend invalid polygons (self-intersections, bow-ties) with ``shapely.make_valid``.

    Repaired rather than refused: GIS tools draw such polygons without complaint, the area
    meant is clear, and GEOS operations (reprojection, the overlap test) are unreliable on them.
    The "structure" method keeps every area a ring encloses and drops collapsed parts (lines).
    """
    areal = gdf.geometry.geom_type.isin(["Polygon", "MultiPolygon"]).to_numpy()
    invalid = areal & ~gdf.geometry.is_valid.to_numpy()
    if not invalid.any():
        return gdf
    first = int(np.flatnonzero(invalid)[0])
    reason = shapely.is_valid_reason(gdf.geometry.iloc[first])
    gdf = gdf.copy()
    repaired = shapely.make_valid(
        gdf.geometry.to_numpy()[invalid], method="structure", keep_collapsed=False
    )
    gdf.loc[invalid, gdf.geometry.name] = repaired
    warnings.warn(
        f"{path}: repaired {int(invalid.sum())} invalid polygon(s) with shapely.make_valid "
        f"(first: feature {gdf.index[first]}, {reason})",
        GeodistillWarning,
        stacklevel=3,
    )
    return gdf[~gdf.geometry.is_empty]


def _miss_reason(
    path: Path, layer: str | None, reference: RasterInfo, vector_crs: CRS | None
) -> str:
    """Why nothing landed on the image, with both extents in the image's CRS where possible."""
    start = f"no feature of the vector layer overlaps image {reference.path}"
    image_extent = _extent(_raster_bounds(reference), _digits(reference))
    bounds = _total_bounds(path, layer)
    if bounds is None:
        return f"{start} (image: {image_extent} in {crs_label(reference.crs)})"
    same = vector_crs is None or reference.crs is None or vector_crs == reference.crs
    moved = bounds if same else _bounds_in(bounds, vector_crs, reference.crs)
    if moved is None:
        assert vector_crs is not None
        digits = 6 if vector_crs.is_geographic else 1
        return (
            f"{start}: the features span {_extent(bounds, digits)} in the layer's CRS "
            f"{crs_label(vector_crs)}, which cannot be placed in the image's CRS "
            f"{crs_label(reference.crs)}{_crs_hint(bounds, vector_crs)}; the image spans "
            f"{image_extent}"
        )
    extents = f"the features span {_extent(moved, _digits(reference))} and the image {image_extent}"
    if same:
        return f"{start}: {extents}, both in {crs_label(reference.crs)}; check the layer's CRS"
    return (
        f"{start}: reprojected from the layer's CRS {crs_label(vector_crs)} to the image's CRS "
        f"{crs_label(reference.crs)}, {extents}; check the layer's CRS"
    )


def _total_bounds(path: Path, layer: str | None) -> tuple[float, float, float, float] | None:
    try:
        bounds = pyogrio.read_info(path, layer=layer, force_total_bounds=True)["total_bounds"]
    except Exception:  # only an error message is at stake: show it without the extent
        return None
    if bounds is None or not all(map(math.isfinite, bounds)):
        return None
    return tuple(float(b) for b in bounds)  # type: ignore[return-value]


def _bounds_in(
    bounds: tuple[float, ...], source: CRS | None, target: CRS | None
) -> tuple[float, ...] | None:
    """``bounds`` reprojected, or ``None`` where they fall outside what ``source`` can place."""
    try:
        moved = transform_bounds(source, target, *bounds, densify_pts=21)
    except Exception:  # unprojectable coordinates: the caller says so instead
        return None
    return moved if all(map(math.isfinite, moved)) else None


def _crs_hint(bounds: tuple[float, ...], crs: CRS) -> str:
    left, bottom, right, top = bounds
    if crs.is_geographic and (max(abs(left), abs(right)) > 180 or max(abs(bottom), abs(top)) > 90):
        return (
            " (coordinates beyond ±180/±90 are not longitude/latitude, so the layer's CRS is "
            "wrong; GeoJSON without a 'crs' member is read as EPSG:4326)"
        )
    return ""


def _number(value: float, digits: int) -> str:
    """``value`` to ``digits`` decimals, without trailing zeros: 500100, 12.3456."""
    text = f"{value:.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _digits(reference: RasterInfo) -> int:
    """Decimals that resolve a pixel: 0 for 10 m pixels, 4 for 0.0001° ones."""
    t = reference.transform
    size = min(abs(v) for v in (t.a, t.e) if v) if (t.a or t.e) else 1.0
    return max(0, math.ceil(-math.log10(size)))


def _extent(bounds: tuple[float, ...], digits: int) -> str:
    left, bottom, right, top = (_number(v, digits) for v in bounds)
    return f"x {left}..{right}, y {bottom}..{top}"


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
    """Map a class field to integer ids; features with an empty class are dropped (warned)."""
    keep = ~values.isna().to_numpy()
    if keep.any() and not keep.all():  # none at all: the caller refuses the layer instead
        warnings.warn(
            f"{path}: {int((~keep).sum())} feature(s) with no value in field {field!r} are ignored",
            GeodistillWarning,
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
                    "to map them to ids; pass --classes",
                    path,
                )
            raise GeodistillError(
                f"unknown class {name!r} in field {field!r}: not one of --classes "
                f"({', '.join(classes)})",
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
            f"{len(classes)} classes of --classes ({', '.join(classes)})",
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
