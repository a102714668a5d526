"""Polygons with areas from a predicted class map: ``geodistill vectorize``.

A class map answers "which class is this pixel"; the people who use a mining or land-cover map
want footprints: one polygon per connected patch of a class, with its area in m² and how sure the
model was. Areas are measured in a Lambert azimuthal equal-area projection centred on the scene,
so they are right anywhere on Earth, whatever the map's own CRS (UTM, Web Mercator, degrees).
The class map is held in memory: one byte per pixel plus a 4-byte patch id.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import shapely
from affine import Affine
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from pyproj.exceptions import ProjError
from rasterio import features
from rasterio.crs import CRS
from scipy import ndimage

from geodistill.atomic import atomic_output, check_output
from geodistill.data.raster import open_raster, reading
from geodistill.data.vector import CLASSES_TAG
from geodistill.errors import GeodistillError, GeodistillWarning
from geodistill.inference.writer import CLASS_NAMES_TAG, PERCENT_SCALE, PREDICTION_NODATA

DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON"}
"""Output suffix -> OGR driver. GeoJSON is written in EPSG:4326 as RFC 7946 asks."""

_AREA_SEGMENT_PIXELS = 8.0
"""Edges are densified to this length (pixels) before reprojection for area and perimeter, so a
long straight edge in degrees does not become a chord in the equal-area projection."""

_GEOMETRY_TYPE = "MultiPolygon"
"""Every feature is written as a MultiPolygon: one schema whatever the connectivity (an 8-connected
patch touching itself at a corner is only valid as several parts)."""


@dataclass(frozen=True)
class ClassSummary:
    """Polygon count and total area of one class; area is NaN when the map has no CRS."""

    class_id: int
    class_name: str
    polygons: int
    area_km2: float


@dataclass(frozen=True)
class VectorizeResult:
    """What :func:`vectorize_class_map` wrote, with the per-class summary."""

    output: Path
    summary_path: Path
    confidence: Path | None
    crs: CRS | None
    classes: tuple[ClassSummary, ...]

    @property
    def polygons(self) -> int:
        return sum(c.polygons for c in self.classes)

    @property
    def area_km2(self) -> float:
        return math.fsum(c.area_km2 for c in self.classes)


def vectorize_class_map(
    class_map: str | Path,
    output: str | Path,
    *,
    confidence: str | Path | None = None,
    find_confidence: bool = True,
    classes: Sequence[int | str] | None = None,
    min_area: float = 0.0,
    simplify: float = 0.0,
    connectivity: int = 4,
    overwrite: bool = False,
) -> VectorizeResult:
    """Write one polygon per connected patch of each class in ``class_map`` to ``output``.

    Columns: ``class_id``, ``class_name``, ``area_m2``, ``perimeter_m`` and, when a confidence
    raster is given (or found beside a ``*_classes.tif`` as ``*_confidence.tif`` while
    ``find_confidence``), ``mean_confidence`` (0..1, the exact mean over the patch's pixels).
    ``classes`` picks classes by name or id (default all); nodata never becomes a polygon.
    ``simplify`` is a Douglas-Peucker tolerance in pixels (topology of each polygon preserved),
    applied before areas are measured; patches under ``min_area`` m² are dropped. ``output`` is a
    ``.gpkg`` (raster CRS) or ``.geojson``/``.json`` (EPSG:4326); a per-class summary is written
    beside it as ``<stem>_summary.json``. Both files are written atomically.
    """
    class_map, output = Path(class_map), Path(output)
    driver = _driver(output)
    summary_path = summary_path_for(output)
    for path in (output, summary_path):
        check_output(path, "file", overwrite)
    if connectivity not in (4, 8):
        raise GeodistillError(f"connectivity must be 4 or 8, got {connectivity}")
    if not (min_area >= 0 and math.isfinite(min_area)):
        raise GeodistillError(f"min_area must be a number >= 0 (m²), got {min_area}")
    if not (simplify >= 0 and math.isfinite(simplify)):
        raise GeodistillError(f"simplify must be a number >= 0 (pixels), got {simplify}")

    labels, valid, grid = _read_class_map(class_map)
    if grid.crs is None:
        if min_area > 0:
            raise GeodistillError(
                "class map has no CRS, so areas in m² are unknown and min_area cannot be applied",
                class_map,
            )
        warnings.warn(
            f"{class_map}: class map has no CRS; polygons are written without one "
            "and their areas are NaN",
            GeodistillWarning,
            stacklevel=2,
        )
    names = class_names_from_tags(grid.tags, class_map)
    selected = _select_classes(classes, names, labels, valid, class_map)
    if confidence is None and find_confidence:
        confidence = _sibling_confidence(class_map)
    fractions = None if confidence is None else _read_confidence(Path(confidence), grid)

    components, component_class = _components(labels, valid, selected, connectivity)
    del labels
    ids, shapes = _polygons(components, connectivity, simplify)
    frame = _frame(ids, shapes, component_class, names, grid)
    if fractions is not None:
        frame["mean_confidence"] = _zonal_mean(components, fractions)[frame.index.to_numpy()]
    del components
    if min_area > 0:
        frame = frame[frame["area_m2"] >= min_area]
    frame = frame.sort_values(["class_id", "area_m2"], ascending=[True, False], kind="stable")
    frame = frame.reset_index(drop=True)

    summary = tuple(
        ClassSummary(
            class_id=class_id,
            class_name=_name(names, class_id),
            polygons=int((frame["class_id"] == class_id).sum()),
            area_km2=(
                float("nan")
                if grid.crs is None
                else math.fsum(frame.loc[frame["class_id"] == class_id, "area_m2"]) / 1e6
            ),
        )
        for class_id in selected
    )
    _write_vector(frame, output, driver)
    result = VectorizeResult(
        output=output,
        summary_path=summary_path,
        confidence=None if confidence is None else Path(confidence),
        crs=grid.crs,
        classes=summary,
    )
    _write_summary(result, class_map, min_area, simplify, connectivity, grid)
    return result


def summary_path_for(output: str | Path) -> Path:
    """The per-class summary written beside ``output``: ``<stem>_summary.json``."""
    output = Path(output)
    return output.with_name(f"{output.stem}_summary.json")


def format_summary(result: VectorizeResult) -> str:
    """A small per-class table (polygons, km²) for the terminal."""
    width = max([len("total"), *(len(c.class_name) for c in result.classes)])
    lines = [f"{'class':<{width}}  {'polygons':>8}  {'area km²':>12}"]
    rows = [(c.class_name, c.polygons, c.area_km2) for c in result.classes]
    rows.append(("total", result.polygons, result.area_km2))
    for name, count, area in rows:
        shown = "n/a (no CRS)" if math.isnan(area) else f"{area:.6f}"
        lines.append(f"{name:<{width}}  {count:>8d}  {shown:>12}")
    return "\n".join(lines)


@dataclass(frozen=True)
class _Grid:
    width: int
    height: int
    crs: CRS | None
    transform: Affine
    tags: dict[str, str]


def _driver(output: Path) -> str:
    driver = DRIVERS.get(output.suffix.lower())
    if driver is None:
        known = ", ".join(DRIVERS)
        raise GeodistillError(f"unknown output format {output.suffix!r} (use {known})", output)
    return driver


def check_class_map(src: rasterio.DatasetReader, path: Path) -> np.dtype:
    """Refuse a raster that is not a single band of integer class ids; return its dtype."""
    dtype = np.dtype(src.dtypes[0])
    if src.count != 1 or dtype.kind not in "iu":
        raise GeodistillError(
            f"a class map must be a single-band integer raster, got {src.count} band(s) of {dtype}",
            path,
        )
    return dtype


def _read_class_map(path: Path) -> tuple[np.ndarray, np.ndarray, _Grid]:
    """Class ids and the valid-pixel mask (not nodata, not masked, not negative)."""
    with open_raster(path) as src:
        dtype = check_class_map(src, path)
        labels, valid = _read_band(src, path)
        grid = _Grid(src.width, src.height, src.crs, src.transform, dict(src.tags()))
    if dtype.kind == "i":
        valid &= labels >= 0
    return labels, valid, grid


def _read_band(src: rasterio.DatasetReader, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Band 1 and its valid mask: not masked by the file, not its nodata (255 when undeclared)."""
    nodata = PREDICTION_NODATA if src.nodata is None else src.nodata
    with reading(path):
        values = src.read(1)
        valid = src.read_masks(1) > 0
    return values, valid & (values != nodata)


def class_names_from_tags(tags: dict[str, str], path: Path) -> list[str] | None:
    """Class names from the ``class_names`` tag (or the label rasters' tag), if any."""
    for tag in (CLASS_NAMES_TAG, CLASSES_TAG):
        if tag not in tags:
            continue
        try:
            names = json.loads(tags[tag])
        except json.JSONDecodeError:
            names = None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise GeodistillError(f"tag {tag!r} is not a JSON list of class names", path)
        return names
    return None


def _name(names: list[str] | None, class_id: int) -> str:
    return names[class_id] if names is not None and class_id < len(names) else f"class_{class_id}"


def _select_classes(
    wanted: Sequence[int | str] | None,
    names: list[str] | None,
    labels: np.ndarray,
    valid: np.ndarray,
    path: Path,
) -> list[int]:
    """Class ids to polygonise: all known (named or present) ids, or those asked for."""
    present = {int(v) for v in np.unique(labels[valid])}
    known = sorted(present | set(range(len(names or []))))
    if wanted is None:
        return known
    lookup = {_name(names, i).lower(): i for i in known}
    chosen: list[int] = []
    for item in wanted:
        text = str(item).strip()
        if text.isdigit():
            class_id = int(text)
            # Without names any id may be asked for: absent here just means no polygon.
            if names is not None and class_id not in known:
                raise GeodistillError(f"class id {class_id} is not in {_listing(names)}", path)
        elif text.lower() in lookup:
            class_id = lookup[text.lower()]
        elif names is None and text.lower().startswith("class_") and text[6:].isdigit():
            class_id = int(text[6:])
        else:
            raise GeodistillError(f"no class named {text!r} in {_listing(names)}", path)
        if class_id not in chosen:
            chosen.append(class_id)
    return sorted(chosen)


def _listing(names: list[str] | None) -> str:
    if names is None:
        return "the class map (it has no class_names tag: use ids or class_<id>)"
    return "the class map (classes: " + ", ".join(f"{i} {n}" for i, n in enumerate(names)) + ")"


def _sibling_confidence(class_map: Path) -> Path | None:
    """``<stem>_confidence.tif`` beside ``<stem>_classes.tif``, when it exists."""
    stem, suffix = class_map.stem, class_map.suffix
    if not stem.endswith("_classes"):
        return None
    sibling = class_map.with_name(f"{stem[: -len('_classes')]}_confidence{suffix}")
    return sibling if sibling.exists() else None


def _read_confidence(path: Path, grid: _Grid) -> np.ndarray:
    """Confidence as float32 0..1 with NaN for nodata; integer rasters hold percent 0..100."""
    with open_raster(path) as src:
        if src.count != 1:
            raise GeodistillError(f"a confidence raster must be single-band, got {src.count}", path)
        if (src.width, src.height) != (grid.width, grid.height):
            raise GeodistillError(
                f"confidence size {src.width}x{src.height} does not match the class map's "
                f"{grid.width}x{grid.height}",
                path,
            )
        if not src.transform.almost_equals(grid.transform, precision=1e-9):
            raise GeodistillError(
                "confidence raster is not on the class map's grid (different transform)", path
            )
        if src.crs is not None and grid.crs is not None and src.crs != grid.crs:
            raise GeodistillError(
                f"confidence CRS {src.crs.to_string()} does not match the class map's "
                f"{grid.crs.to_string()}",
                path,
            )
        dtype = np.dtype(src.dtypes[0])
        values, valid = _read_band(src, path)
    valid &= ~np.isnan(values.astype(np.float32, copy=False))
    scale = PERCENT_SCALE if dtype.kind in "iu" else 1.0
    confidence = np.where(valid, values.astype(np.float32) * np.float32(scale), np.nan)
    checked = confidence[valid]
    if checked.size and (checked.min() < 0 or checked.max() > 1 + 1e-6):
        unit = "percent 0..100" if dtype.kind in "iu" else "fractions 0..1"
        raise GeodistillError(f"confidence values must be {unit}", path)
    return confidence


def _components(
    labels: np.ndarray, valid: np.ndarray, selected: Sequence[int], connectivity: int
) -> tuple[np.ndarray, np.ndarray]:
    """Connected patches of each selected class as ids 1..N (0 elsewhere), and each id's class."""
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    components = np.zeros(labels.shape, dtype=np.int32)
    component_class = [-1]  # id 0 = no patch
    for class_id in selected:
        patches, count = ndimage.label(valid & (labels == class_id), structure=structure)
        if count == 0:
            continue
        inside = patches > 0
        components[inside] = patches[inside] + (len(component_class) - 1)
        component_class.extend([class_id] * count)
    return components, np.asarray(component_class, dtype=np.int64)


def _polygons(
    components: np.ndarray, connectivity: int, simplify: float
) -> tuple[np.ndarray, np.ndarray]:
    """Patch ids and one valid (multi)polygon each, in pixel coordinates, simplified if asked."""
    parts: dict[int, list[shapely.Polygon]] = {}
    for shape, value in features.shapes(
        components, mask=components > 0, connectivity=connectivity, transform=Affine.identity()
    ):
        parts.setdefault(int(value), []).append(_polygon(shape["coordinates"]))
    ids = np.array(sorted(parts), dtype=np.int64)
    shapes = np.empty(len(ids), dtype=object)
    for k, patch in enumerate(ids):
        pieces = parts.pop(int(patch))
        shapes[k] = pieces[0] if len(pieces) == 1 else shapely.union_all(pieces)
    invalid = ~shapely.is_valid(shapes)
    if invalid.any():
        # 8-connected patches touching themselves at a corner: split there, area unchanged.
        shapes[invalid] = shapely.make_valid(
            shapes[invalid], method="structure", keep_collapsed=False
        )
    if simplify > 0:
        shapes = shapely.simplify(shapes, simplify, preserve_topology=True)
    keep = ~shapely.is_empty(shapes)
    return ids[keep], shapes[keep]


def _polygon(rings: Sequence[Sequence[tuple[float, float]]]) -> shapely.Polygon:
    """A polygon from GeoJSON-like rings, through numpy (several times faster than ``shape``)."""
    shell, *holes = (shapely.linearrings(np.asarray(ring, dtype=np.float64)) for ring in rings)
    return shapely.Polygon(shell, holes)


def _frame(
    ids: np.ndarray,
    pixel_shapes: np.ndarray,
    component_class: np.ndarray,
    names: list[str] | None,
    grid: _Grid,
) -> gpd.GeoDataFrame:
    """Polygons in map coordinates with class, area and perimeter, indexed by patch id."""
    to_map = _affine_function(grid.transform)
    area = np.full(len(ids), np.nan)
    perimeter = np.full(len(ids), np.nan)
    if grid.crs is not None and len(ids):
        dense = shapely.transform(shapely.segmentize(pixel_shapes, _AREA_SEGMENT_PIXELS), to_map)
        equal_area = gpd.GeoSeries(dense, crs=grid.crs).to_crs(_equal_area_crs(grid))
        area, perimeter = equal_area.area.to_numpy(), equal_area.length.to_numpy()
    class_ids = component_class[ids]
    frame = pd.DataFrame(
        {
            "class_id": class_ids.astype(np.int32),
            "class_name": np.array([_name(names, int(i)) for i in class_ids], dtype=object),
            "area_m2": area.astype(np.float64),
            "perimeter_m": perimeter.astype(np.float64),
        },
        index=pd.Index(ids, dtype="int64"),
    )
    map_shapes = shapely.transform(pixel_shapes, to_map)
    return gpd.GeoDataFrame(
        frame, geometry=gpd.GeoSeries(map_shapes, index=frame.index), crs=grid.crs
    )


def _affine_function(transform: Affine) -> Callable[[np.ndarray], np.ndarray]:
    """Pixel (col, row) -> map (x, y) for arrays of coordinates, as shapely.transform wants."""
    a, b, c, d, e, f = transform[:6]
    matrix = np.array([[a, d], [b, e]])
    offset = np.array([c, f])
    return lambda xy: xy @ matrix + offset


def _equal_area_crs(grid: _Grid) -> ProjCRS:
    """Lambert azimuthal equal-area on WGS84 centred on the scene centre: m², anywhere on Earth."""
    x, y = grid.transform @ (grid.width / 2, grid.height / 2)
    try:
        to_lonlat = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True)
        lon, lat = to_lonlat.transform(x, y)
    except ProjError as err:
        raise GeodistillError(f"cannot locate the scene centre on Earth ({err})") from err
    if not (math.isfinite(lon) and math.isfinite(lat)):
        raise GeodistillError("cannot locate the scene centre on Earth (check the map's CRS)")
    return ProjCRS.from_proj4(
        f"+proj=laea +lat_0={lat:.8f} +lon_0={lon:.8f} +x_0=0 +y_0=0 +datum=WGS84 +units=m +no_defs"
    )


def _zonal_mean(components: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """Exact mean confidence per patch id over its pixels with a confidence value (NaN if none)."""
    known = ~np.isnan(confidence) & (components > 0)
    ids = components[known]
    size = int(components.max()) + 1
    sums = np.bincount(ids, weights=confidence[known].astype(np.float64), minlength=size)
    counts = np.bincount(ids, minlength=size)
    means = np.full(size, np.nan)
    np.divide(sums, counts, out=means, where=counts > 0)
    return means


def _write_vector(frame: gpd.GeoDataFrame, output: Path, driver: str) -> None:
    """Write the polygons atomically; GeoJSON in EPSG:4326 (RFC 7946) when the CRS is known."""
    options: dict[str, Any] = {}
    if driver == "GeoJSON" and frame.crs is not None:
        frame = frame.to_crs("EPSG:4326")
        options["layer_options"] = {"RFC7946": "YES"}
    with (
        atomic_output(output, suffix=f".partial{output.suffix.lower()}") as temporary,
        warnings.catch_warnings(),
    ):
        # A missing CRS was already reported once, in words about the class map.
        warnings.filterwarnings("ignore", message="'crs' was not provided", category=UserWarning)
        frame.to_file(
            temporary,
            driver=driver,
            layer=output.stem,
            engine="pyogrio",
            geometry_type=_GEOMETRY_TYPE,
            promote_to_multi=True,
            **options,
        )


def _write_summary(
    result: VectorizeResult,
    class_map: Path,
    min_area: float,
    simplify: float,
    connectivity: int,
    grid: _Grid,
) -> None:
    """``<output stem>_summary.json``: per-class counts and km² (null when unknown), settings."""

    def km2(value: float) -> float | None:
        return None if math.isnan(value) else value

    summary = {
        "class_map": str(class_map),
        "confidence": None if result.confidence is None else str(result.confidence),
        "output": str(result.output),
        "crs": None if grid.crs is None else grid.crs.to_string(),
        "area_method": "Lambert azimuthal equal-area (WGS84) centred on the scene centre",
        "min_area_m2": min_area,
        "simplify_pixels": simplify,
        "connectivity": connectivity,
        "classes": [
            {
                "class_id": c.class_id,
                "class_name": c.class_name,
                "polygons": c.polygons,
                "area_km2": km2(c.area_km2),
            }
            for c in result.classes
        ],
        "total": {"polygons": result.polygons, "area_km2": km2(result.area_km2)},
    }
    with atomic_output(result.summary_path, suffix=".partial.json") as temporary:
        temporary.write_text(json.dumps(summary, indent=2) + "\n")
