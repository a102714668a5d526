"""Web maps of predictions: ``geodistill view``, one HTML file a person can open in a browser.

Class maps and polygons are GIS files; without QGIS nobody looks at them. This module turns them
into a single self-contained Leaflet page made with folium: the scene's RGB quicklook, each class
map as a coloured overlay (colours as in the report figures) with a legend, the polygons with
popups (class, area, confidence), and a layer switch between methods. Rasters are read at most
``max_size`` pixels a side through rasterio's ``out_shape`` (so a COG's overviews serve them) and
warped to Web Mercator, the projection Leaflet draws in, so every layer sits where it belongs
whatever its CRS or grid. Images are PNG data URIs and polygons inline GeoJSON; only Leaflet
itself comes from a CDN, unless ``offline_assets`` inlines it too.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import math
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import folium
import geopandas as gpd
import numpy as np
import shapely
from affine import Affine
from branca.element import Element, MacroElement
from jinja2 import Template
from matplotlib import colormaps
from PIL import Image
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import array_bounds
from rasterio.warp import calculate_default_transform, reproject
from rasterio.warp import transform as transform_points

from geodistill.atomic import atomic_output, check_output
from geodistill.data.raster import (
    BandSpec,
    RasterInfo,
    crs_code,
    open_raster,
    raster_info,
    reading,
    resolve_bands,
)
from geodistill.errors import GeodistillError
from geodistill.inference.vectorize import check_class_map, class_names_from_tags
from geodistill.inference.writer import PREDICTION_NODATA

WEB_CRS = CRS.from_epsg(3857)
"""Leaflet draws in Web Mercator: an overlay is stretched linearly between its corners there."""

LONLAT = CRS.from_epsg(4326)

RASTER_SUFFIXES = (".tif", ".tiff")
VECTOR_SUFFIXES = (".gpkg", ".geojson", ".json", ".shp")
MAP_SUFFIXES = (".html", ".htm")

CLASS_OPACITY = 0.6
"""Class maps are drawn half see-through, so the scene under them stays readable."""

PERCENTILES = (2.0, 98.0)
"""Quicklook stretch, as :func:`geodistill.reporting.rgb_composite`."""

CLEAR_CLASSES = ("background",)
"""Classes not painted by default: a coloured background would hide the scene under it."""

MIN_MAX_SIZE = 16

MAX_CLASSES = 256
"""More distinct values than this: not a class map (an image band, most likely)."""

_NOT_CLASS_MAPS = ("_confidence", "_probabilities")
"""Stems of ``geodistill infer``'s other rasters, which hold percent, not class ids."""


def class_color(class_id: int) -> str:
    """Hex colour of a class id: tab10, as the report figures
    (:func:`geodistill.reporting.save_panels`) draw them, so map and figure agree."""
    return "#{:02x}{:02x}{:02x}".format(*_rgb255(colormaps["tab10"](class_id % 10)))


def class_colors(num_classes: int) -> list[str]:
    """:func:`class_color` of ids ``0..num_classes-1``."""
    return [class_color(k) for k in range(num_classes)]


def _rgb255(rgba: Sequence[float]) -> tuple[int, int, int]:
    return (round(rgba[0] * 255), round(rgba[1] * 255), round(rgba[2] * 255))


Bounds = tuple[tuple[float, float], tuple[float, float]]
"""``((south, west), (north, east))`` in degrees, as Leaflet takes them."""


@dataclass(frozen=True)
class Overlay:
    """A georeferenced picture for Leaflet: a PNG data URI and its lat/lon bounds."""

    name: str
    source: Path
    url: str
    bounds: Bounds
    size: tuple[int, int]
    """Width and height of the picture in pixels."""


@dataclass(frozen=True)
class ClassOverlay(Overlay):
    """A class map's overlay with what its legend needs: class id -> name."""

    classes: dict[int, str] = field(default_factory=dict)
    clear: frozenset[int] = frozenset()
    """Class ids left see-through (see :data:`CLEAR_CLASSES`)."""


@dataclass(frozen=True)
class PolygonLayer:
    """Polygons as inline GeoJSON (EPSG:4326) with popup text per feature."""

    name: str
    source: Path
    geojson: dict
    count: int
    bounds: Bounds | None


@dataclass(frozen=True)
class WebMapResult:
    """What :func:`write_web_map` wrote."""

    output: Path
    class_maps: tuple[ClassOverlay, ...]
    polygons: tuple[PolygonLayer, ...]
    scene: Overlay | None

    def describe(self) -> str:
        """One line for the terminal."""
        parts = [f"{len(self.class_maps)} class map{'s' if len(self.class_maps) != 1 else ''}"]
        if self.polygons:
            count = sum(layer.count for layer in self.polygons)
            parts.append(f"{count} polygon{'s' if count != 1 else ''}")
        if self.scene is not None:
            parts.append(f"scene {self.scene.source.name}")
        return f"wrote {self.output} ({', '.join(parts)})"


# --------------------------------------------------------------------------------------------
# rasters -> overlays


def quicklook(
    scene: str | Path, bands: BandSpec = None, max_size: int = 2048, name: str | None = None
) -> Overlay:
    """The scene as an RGB (or grey) picture: three bands (``bands``, else Red/Green/Blue by
    name, else the first three) stretched between their 2nd and 98th percentiles over valid
    pixels, read at most ``max_size`` pixels a side and warped to Web Mercator; nodata is clear."""
    scene = Path(scene)
    _check_max_size(max_size)
    info = raster_info(scene)
    indices = _display_bands(info, bands)
    with open_raster(scene) as src:
        crs = _require_crs(src.crs, scene, "scene")
        shape = _reduced_shape(src.height, src.width, max_size)
        indexes = [i + 1 for i in indices]
        with reading(scene):
            values = src.read(
                indexes, out_shape=(len(indexes), *shape), resampling=Resampling.average
            )
            masks = src.read_masks(indexes, out_shape=(len(indexes), *shape))
        transform = _scaled(src.transform, src.width, src.height, shape)
    data = values.astype(np.float32)
    valid = (masks > 0).all(axis=0) & np.isfinite(data).all(axis=0)
    stretched = np.full(data.shape, np.nan, dtype=np.float32)
    for k, band in enumerate(data):
        if valid.any():
            low, high = np.percentile(band[valid], PERCENTILES)
            stretched[k] = np.clip((band - low) / max(high - low, 1e-9), 0, 1)
    stretched[:, ~valid] = np.nan
    if len(stretched) == 1:
        stretched = np.repeat(stretched, 3, axis=0)
    grid = _web_grid(crs, transform, shape, max_size, scene)
    warped = np.full((3, grid.height, grid.width), np.nan, dtype=np.float32)
    reproject(
        stretched,
        warped,
        src_transform=transform,
        src_crs=crs,
        dst_transform=grid.transform,
        dst_crs=WEB_CRS,
        src_nodata=np.nan,
        dst_nodata=np.nan,
        resampling=Resampling.bilinear,
    )
    shown = np.isfinite(warped).all(axis=0)
    rgba = np.zeros((grid.height, grid.width, 4), dtype=np.uint8)
    rgba[..., :3] = (np.nan_to_num(warped).transpose(1, 2, 0) * 255).round().astype(np.uint8)
    rgba[..., 3] = np.where(shown, 255, 0)
    label = name or f"scene: {scene.name} ({_band_label(info, indices)})"
    return Overlay(label, scene, png_data_uri(rgba), grid.bounds, (grid.width, grid.height))


def class_overlay(
    class_map: str | Path,
    max_size: int = 2048,
    name: str | None = None,
    clear: Collection[str] = CLEAR_CLASSES,
) -> ClassOverlay:
    """A class map as coloured pixels (:func:`class_colors`), read at most ``max_size`` pixels a
    side (mode of the pixels merged) and warped to Web Mercator. Nodata, the outside and the
    classes named in ``clear`` (case-insensitive; background by default, which would hide the
    scene) are left see-through."""
    class_map = Path(class_map)
    _check_max_size(max_size)
    stem = class_map.stem.lower()
    if stem.endswith(_NOT_CLASS_MAPS):
        raise GeodistillError(
            "holds confidence or probabilities in percent, not class ids; give the "
            "*_classes.tif beside it",
            class_map,
        )
    with open_raster(class_map) as src:
        check_class_map(src, class_map)
        crs = _require_crs(src.crs, class_map, "class map")
        names = class_names_from_tags(dict(src.tags()), class_map)
        shape = _reduced_shape(src.height, src.width, max_size)
        nodata = PREDICTION_NODATA if src.nodata is None else src.nodata
        with reading(class_map):
            values = src.read(1, out_shape=shape, resampling=Resampling.mode)
            mask = src.read_masks(1, out_shape=shape)
        transform = _scaled(src.transform, src.width, src.height, shape)
    ids = values.astype(np.int64)
    valid = (mask > 0) & (values != nodata) & (ids >= 0)
    ids = np.where(valid, ids, -1).astype(np.int32)
    grid = _web_grid(crs, transform, shape, max_size, class_map)
    warped = np.full((grid.height, grid.width), -1, dtype=np.int32)
    reproject(
        ids,
        warped,
        src_transform=transform,
        src_crs=crs,
        dst_transform=grid.transform,
        dst_crs=WEB_CRS,
        src_nodata=-1,
        dst_nodata=-1,
        resampling=Resampling.nearest,
    )
    present = sorted(int(v) for v in np.unique(ids[valid]))
    if len(present) > MAX_CLASSES:
        raise GeodistillError(
            f"has {len(present)} distinct values, too many for a class map (at most "
            f"{MAX_CLASSES}); is it an image or a confidence raster?",
            class_map,
        )
    known = sorted(set(present) | set(range(len(names or []))))
    classes = {k: _name(names, k) for k in known}
    hidden = {k for k, n in classes.items() if n.lower() in {c.lower() for c in clear}}
    shown = (warped >= 0) & ~np.isin(warped, list(hidden))
    label = name or _layer_name(class_map)
    return ClassOverlay(
        label,
        class_map,
        _class_png(warped, shown),
        grid.bounds,
        (grid.width, grid.height),
        classes,
        frozenset(hidden),
    )


def _class_png(ids: np.ndarray, shown: np.ndarray) -> str:
    """Class ids (where ``shown``) in :func:`class_color` as a PNG data URI: a palette image (a
    quarter of RGBA's bytes) with a clear index while ids stay under 255, else RGBA."""
    if int(ids[shown].max(initial=0)) < PREDICTION_NODATA:
        index = np.where(shown, ids, PREDICTION_NODATA).astype(np.uint8)
        picture = Image.fromarray(index)  # L; putpalette makes it P
        picture.putpalette([v for k in range(256) for v in _hex_rgb(class_color(k))])
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG", transparency=PREDICTION_NODATA, compress_level=6)
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    tab10 = np.array([_hex_rgb(class_color(k)) for k in range(10)], dtype=np.uint8)
    rgba = np.zeros((*ids.shape, 4), dtype=np.uint8)
    rgba[shown, :3] = tab10[ids[shown] % 10]
    rgba[shown, 3] = 255
    return png_data_uri(rgba)


def png_data_uri(rgba: np.ndarray) -> str:
    """An ``(H, W, 4)`` uint8 picture as a ``data:image/png;base64,`` URI (embedded, no file)."""
    buffer = io.BytesIO()
    Image.fromarray(rgba).save(buffer, format="PNG", compress_level=6)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclass(frozen=True)
class _WebGrid:
    transform: Affine
    width: int
    height: int
    bounds: Bounds


def _web_grid(
    crs: CRS, transform: Affine, shape: tuple[int, int], max_size: int, path: Path
) -> _WebGrid:
    """A Web Mercator grid covering the raster, at most ``max_size`` pixels a side."""
    height, width = shape
    left, bottom, right, top = array_bounds(height, width, transform)
    try:
        dst, w, h = calculate_default_transform(
            crs, WEB_CRS, width, height, left, bottom, right, top
        )
        scale = max(w, h) / max_size
        if scale > 1:
            w2, h2 = max(1, math.ceil(w / scale)), max(1, math.ceil(h / scale))
            dst, w, h = dst * Affine.scale(w / w2, h / h2), w2, h2
        left, bottom, right, top = array_bounds(h, w, dst)
        # Web Mercator is separable: its box is a lat/lon box, two corners give it exactly.
        (west, east), (south, north) = transform_points(
            WEB_CRS, LONLAT, [left, right], [bottom, top]
        )
    except Exception as err:  # PROJ/GDAL: a CRS or extent Web Mercator cannot show
        raise GeodistillError(
            f"cannot be reprojected to Web Mercator for display ({err})", path
        ) from err
    if not all(map(math.isfinite, (west, south, east, north))):
        raise GeodistillError("cannot be reprojected to Web Mercator for display", path)
    return _WebGrid(dst, int(w), int(h), ((south, west), (north, east)))


def _reduced_shape(height: int, width: int, max_size: int) -> tuple[int, int]:
    scale = max(height, width) / max_size
    if scale <= 1:
        return height, width
    return max(1, math.ceil(height / scale)), max(1, math.ceil(width / scale))


def _scaled(transform: Affine, width: int, height: int, shape: tuple[int, int]) -> Affine:
    """The transform of the raster read at ``shape`` (rows, cols) instead of its own size."""
    return transform * Affine.scale(width / shape[1], height / shape[0])


def _require_crs(crs: CRS | None, path: Path, what: str) -> CRS:
    if crs is None:
        raise GeodistillError(
            f"{what} has no CRS, so it cannot be placed on a map; assign one (gdal_edit.py "
            "-a_srs) first",
            path,
        )
    return crs


def _check_max_size(max_size: int) -> None:
    if max_size < MIN_MAX_SIZE:
        raise GeodistillError(f"--max-size must be at least {MIN_MAX_SIZE} pixels, got {max_size}")


def _display_bands(info: RasterInfo, bands: BandSpec) -> list[int]:
    """0-based bands to show: the user's 1 or 3, else Red/Green/Blue by name, else 0,1,2."""
    if bands is not None:
        indices = resolve_bands(info, bands)
        if len(indices) not in (1, 3):
            raise GeodistillError(
                f"--bands must name 3 bands (red, green, blue) or 1 (grey), got {len(indices)}",
                info.path,
            )
        return indices
    names = [(d or "").lower() for d in info.descriptions]
    if all(colour in names for colour in ("red", "green", "blue")):
        return [names.index("red"), names.index("green"), names.index("blue")]
    return [0, 1, 2] if info.count >= 3 else [0]


def _band_label(info: RasterInfo, indices: list[int]) -> str:
    return ", ".join(info.descriptions[i] or f"band {i}" for i in indices)


def _hex_rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def _name(names: list[str] | None, class_id: int) -> str:
    return names[class_id] if names is not None and class_id < len(names) else f"class_{class_id}"


def _layer_name(path: Path) -> str:
    stem = path.stem
    return stem[: -len("_classes")] if stem.endswith("_classes") and stem != "_classes" else stem


# --------------------------------------------------------------------------------------------
# polygons


def find_polygons(class_map: str | Path) -> list[Path]:
    """Polygon files written beside a class map: ``<stem>``, ``<base>`` or ``<base>_polygons``
    with ``.gpkg``/``.geojson``, where ``<base>`` is the stem less ``_classes``."""
    class_map = Path(class_map)
    stems = [class_map.stem]
    base = _layer_name(class_map)
    stems += [base, f"{base}_polygons"] if base != class_map.stem else [f"{base}_polygons"]
    found = []
    for stem in dict.fromkeys(stems):
        for suffix in (".gpkg", ".geojson"):
            candidate = class_map.with_name(stem + suffix)
            if candidate.is_file():
                found.append(candidate)
    return found


def polygons_layer(
    path: str | Path, classes: dict[int, str] | None = None, name: str | None = None
) -> PolygonLayer:
    """Polygons in EPSG:4326 with popup text: class, area in m² and ha (``area_m2``, else
    measured in the local UTM zone) and confidence (``mean_confidence``, 0..1) when known.

    ``classes`` (id -> name, from the class maps' legend) colours polygons named but not
    numbered; ids are coloured as the class maps are."""
    path = Path(path)
    if not path.exists():
        raise GeodistillError("file does not exist", path)
    if path.is_dir():
        raise GeodistillError("is a folder, not a polygon file", path)
    try:
        frame = gpd.read_file(path, engine="pyogrio")
    except Exception as err:  # pyogrio/GDAL: unreadable, not a vector format
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise GeodistillError(f"cannot read polygons: {detail}", path) from err
    if frame.crs is None and len(frame):
        raise GeodistillError("polygons have no CRS, so they cannot be placed on a map", path)
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
    source_crs = frame.crs
    if frame.crs is not None:
        frame = frame.to_crs(LONLAT)
    area = _areas(frame)
    ids, labels = _polygon_classes(frame, classes or {})
    confidence = _column(frame, ("mean_confidence", "confidence"))
    geometry = shapely.transform(frame.geometry.to_numpy(), lambda xy: np.round(xy, 7))
    features = []
    for k, geom in enumerate(geometry):
        conf = None if confidence is None else float(confidence[k])
        features.append(
            {
                "type": "Feature",
                "geometry": shapely.geometry.mapping(geom),
                "properties": {
                    "class": html.escape(labels[k]),
                    "area": format_area(float(area[k])),
                    "confidence": format_confidence(conf),
                    "color": class_color(ids[k]) if ids[k] >= 0 else "#ff00ff",
                },
            }
        )
    bounds = None
    if len(frame):
        west, south, east, north = frame.total_bounds
        if not (-180 <= west <= east <= 180 and -90 <= south <= north <= 90):
            raise GeodistillError(
                f"coordinates do not fit its CRS {crs_code(source_crs)}: they lie outside "
                "longitude/latitude once reprojected (a GeoJSON is always lon/lat; metres need "
                "a GeoPackage with its CRS)",
                path,
            )
        bounds = ((float(south), float(west)), (float(north), float(east)))
    return PolygonLayer(
        name or f"polygons: {path.name}",
        path,
        {"type": "FeatureCollection", "features": features},
        len(features),
        bounds,
    )


def format_area(area_m2: float) -> str:
    """``12,345 m² (1.23 ha)``: both, as mine and land-cover people use either."""
    if not math.isfinite(area_m2):
        return "n/a"
    digits = 0 if area_m2 >= 100 else 1
    return f"{area_m2:,.{digits}f} m² ({area_m2 / 1e4:,.2f} ha)"


def format_confidence(confidence: float | None) -> str:
    """``87 %`` from a 0..1 mean; ``n/a`` when the polygons carry none."""
    if confidence is None or not math.isfinite(confidence):
        return "n/a"
    return f"{100 * confidence:.0f} %"


def _column(frame: gpd.GeoDataFrame, names: Iterable[str]) -> np.ndarray | None:
    for column in names:
        if column in frame.columns:
            return frame[column].to_numpy(dtype=np.float64, na_value=np.nan)
    return None


def _areas(frame: gpd.GeoDataFrame) -> np.ndarray:
    """``area_m2`` as written by ``geodistill vectorize``, else measured in the UTM zone."""
    given = _column(frame, ("area_m2",))
    if given is not None:
        return given
    if not len(frame) or frame.crs is None:
        return np.full(len(frame), np.nan)
    return frame.to_crs(frame.estimate_utm_crs()).area.to_numpy()


def _polygon_classes(
    frame: gpd.GeoDataFrame, classes: dict[int, str]
) -> tuple[list[int], list[str]]:
    """Each polygon's class id (for its colour; -1 unknown) and the name shown in its popup."""
    by_name = {name.lower(): k for k, name in classes.items()}
    if "class_id" in frame.columns:
        ids = [int(v) if v == v else -1 for v in frame["class_id"]]
    else:
        ids = None
    for column in ("class_name", "class"):
        if column in frame.columns:
            names = [str(v) for v in frame[column]]
            break
    else:
        names = None
    if ids is None and names is None:
        return [-1] * len(frame), ["?"] * len(frame)
    if ids is None:
        assert names is not None
        ids = [by_name.get(n.lower(), -1) for n in names]
    if names is None:
        names = [classes.get(k, f"class_{k}") for k in ids]
    return ids, names


# --------------------------------------------------------------------------------------------
# the map


class Legend(MacroElement):
    """A fixed box listing class colours and names (class maps and polygons share them)."""

    _template = Template(
        """
        {% macro html(this, kwargs) %}
        <div id="{{ this.get_name() }}" class="geodistill-legend" style="position: fixed;
             bottom: 28px; right: 12px; z-index: 1000; background: rgba(255,255,255,0.92);
             padding: 6px 10px; border-radius: 5px; box-shadow: 0 1px 5px rgba(0,0,0,0.4);
             font: 13px/1.5 'Helvetica Neue', Arial, sans-serif;">
          <div style="font-weight: bold; margin-bottom: 2px;">{{ this.title|e }}</div>
          {% for name, color, drawn in this.entries %}
          <div><span style="display: inline-block; width: 14px; height: 14px;
               margin-right: 6px; vertical-align: -2px; box-sizing: border-box;
               {% if drawn %}background: {{ color }}; border: 1px solid rgba(0,0,0,0.3);
               {% else %}border: 2px solid {{ color }};{% endif %}"></span>{{ name|e }}
               {%- if not drawn %} <span style="color: #666;">(not drawn)</span>{% endif %}</div>
          {% endfor %}
        </div>
        {% endmacro %}
        """
    )

    def __init__(self, entries: Sequence[tuple[str, str, bool]], title: str = "classes") -> None:
        super().__init__()
        self._name = "Legend"
        self.entries = list(entries)
        self.title = title


def legend_entries(overlays: Sequence[ClassOverlay]) -> list[tuple[str, str, bool]]:
    """(name, colour, drawn) per class id over all class maps; differing names are joined by
    ' / '; ``drawn`` is false for a class every map leaves see-through."""
    names: dict[int, list[str]] = {}
    drawn: dict[int, bool] = {}
    for overlay in overlays:
        for class_id, name in overlay.classes.items():
            known = names.setdefault(class_id, [])
            if name not in known:
                known.append(name)
            drawn[class_id] = drawn.get(class_id, False) or class_id not in overlay.clear
    if not names:
        return []
    return [(" / ".join(names[k]), class_color(k), drawn[k]) for k in sorted(names)]


def build_map(
    class_maps: Sequence[ClassOverlay],
    scene: Overlay | None = None,
    polygons: Sequence[PolygonLayer] = (),
    title: str = "geodistill",
) -> folium.Map:
    """A Leaflet map: scene under class maps under polygons, a radio switch between the class
    maps (methods) with a 'none' entry, check boxes for scene and polygons, legend, scale bar."""
    everything = [o.bounds for o in class_maps] + [p.bounds for p in polygons if p.bounds]
    if scene is not None:
        everything.append(scene.bounds)
    if not everything:
        raise GeodistillError("nothing to show: no class map, scene or polygon")
    south = min(b[0][0] for b in everything)
    west = min(b[0][1] for b in everything)
    north = max(b[1][0] for b in everything)
    east = max(b[1][1] for b in everything)
    web = folium.Map(
        location=[(south + north) / 2, (west + east) / 2],
        tiles=None,
        control_scale=True,
        zoom_start=12,
    )
    # Only Leaflet is needed: folium's jQuery, Bootstrap and marker-icon links are dropped.
    web.default_js = [(n, u) for n, u in folium.Map.default_js if n == "leaflet"]
    web.default_css = [(n, u) for n, u in folium.Map.default_css if n == "leaflet_css"]
    web.get_root().title = title
    folium.map.CustomPane("geodistill-scene", z_index=380, pointer_events=False).add_to(web)
    folium.map.CustomPane("geodistill-classes", z_index=390, pointer_events=False).add_to(web)
    if scene is not None:
        folium.raster_layers.ImageOverlay(
            scene.url,
            bounds=_listed(scene.bounds),
            name=html.escape(scene.name),  # Leaflet's layer control shows names as HTML
            pane="geodistill-scene",
            pixelated=False,
            overlay=True,
            show=True,
        ).add_to(web)
    for k, overlay in enumerate(class_maps):
        folium.raster_layers.ImageOverlay(
            overlay.url,
            bounds=_listed(overlay.bounds),
            name=html.escape(overlay.name),
            opacity=CLASS_OPACITY,
            pane="geodistill-classes",
            pixelated=True,
            overlay=False,  # a base layer: the control switches between methods (radio)
            show=k == 0,
        ).add_to(web)
    if class_maps:
        folium.FeatureGroup(name="no class map", overlay=False, show=False).add_to(web)
    for layer in polygons:
        folium.GeoJson(
            layer.geojson,
            name=html.escape(f"{layer.name} ({layer.count})"),
            style_function=_polygon_style,
            highlight_function=lambda feature: {"weight": 3, "fillOpacity": 0.45},
            popup=(  # folium checks the fields against the features: none, no popup
                folium.GeoJsonPopup(
                    fields=["class", "area", "confidence"],
                    aliases=["class", "area", "confidence"],
                    localize=False,
                )
                if layer.count
                else None
            ),
            zoom_on_click=False,
        ).add_to(web)
    entries = legend_entries(class_maps)
    if entries:
        web.add_child(Legend(entries))
    folium.LayerControl(collapsed=False, position="topright").add_to(web)
    web.fit_bounds([[south, west], [north, east]])
    return web


def _polygon_style(feature: dict) -> dict:
    color = feature["properties"]["color"]
    return {"color": color, "fillColor": color, "weight": 1.5, "fillOpacity": 0.25}


def _listed(bounds: Bounds) -> list[list[float]]:
    return [list(bounds[0]), list(bounds[1])]


# --------------------------------------------------------------------------------------------
# offline assets and writing

_EXTERNAL = re.compile(
    r"<script[^>]*\bsrc=\"https?://[^\"]*\"[^>]*>\s*</script>\s*|<link[^>]*\bhref=\"https?://[^\"]*\"[^>]*>\s*",
    re.IGNORECASE,
)


def leaflet_assets(folder: str | Path) -> tuple[Path, Path]:
    """``leaflet.js`` and ``leaflet.css`` in ``folder``, its ``dist/`` or ``package/dist/`` (what
    ``npm pack leaflet`` unpacks to)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise GeodistillError(
            "--offline-assets must be a folder holding leaflet.js and .css", folder
        )
    for candidate in (folder, folder / "dist", folder / "package" / "dist"):
        script, style = candidate / "leaflet.js", candidate / "leaflet.css"
        if script.is_file() and style.is_file():
            return script, style
    raise GeodistillError(
        "no leaflet.js and leaflet.css here (nor in dist/ or package/dist/); unpack Leaflet's "
        "npm package (npm pack leaflet) into it",
        folder,
    )


def render_html(web: folium.Map, offline_assets: str | Path | None = None) -> str:
    """The page as one HTML string; with ``offline_assets`` Leaflet's JS and CSS (with its
    images as data URIs) are inlined and no script or stylesheet is loaded from the network."""
    if offline_assets is None:
        return web.get_root().render()
    script, style = leaflet_assets(offline_assets)
    web.default_js, web.default_css = [], []
    css = _inline_css_images(style.read_text(encoding="utf-8"), style.parent)
    js = script.read_text(encoding="utf-8").replace("</script", "<\\/script")
    js = re.sub(r"^//# sourceMappingURL=.*$", "", js, flags=re.MULTILINE)  # no .map file here
    root = web.get_root()
    root.header.add_child(Element(f"<style>{css}</style>"), name="leaflet_css_inline")
    root.header.add_child(Element(f"<script>{js}</script>"), name="leaflet_js_inline")
    page = root.render()
    return _EXTERNAL.sub("", page)


def _inline_css_images(css: str, folder: Path) -> str:
    def inline(match: re.Match[str]) -> str:
        target = folder / match.group(1)
        if not target.is_file() or target.suffix.lower() not in (".png", ".svg"):
            return match.group(0)
        kind = "svg+xml" if target.suffix.lower() == ".svg" else "png"
        encoded = base64.b64encode(target.read_bytes()).decode("ascii")
        return f"url(data:image/{kind};base64,{encoded})"

    return re.sub(r"url\(\s*['\"]?(images/[^'\")]+)['\"]?\s*\)", inline, css)


def write_web_map(
    outputs: Sequence[str | Path],
    output: str | Path,
    *,
    scene: str | Path | None = None,
    bands: BandSpec = None,
    max_size: int = 2048,
    offline_assets: str | Path | None = None,
    find_vectors: bool = True,
    clear: Collection[str] = CLEAR_CLASSES,
    overwrite: bool = False,
) -> WebMapResult:
    """Write ``output`` (.html): class maps (``.tif``) and polygon files among ``outputs``, plus
    polygons found beside the class maps (:func:`find_polygons`) and the ``scene`` quicklook.

    Every layer is reprojected to Web Mercator on its own, so a scene and maps on different
    grids or CRSs are shown where they are; a class map or polygons that do not overlap the
    scene at all are refused (the wrong scene, most likely). Classes named in ``clear`` are not
    painted (:func:`class_overlay`). Everything is checked and built before ``output`` is
    written, atomically."""
    output = Path(output)
    if output.suffix.lower() not in MAP_SUFFIXES:
        raise GeodistillError("the web map must be an .html file", output)
    check_output(output, "file", overwrite)
    _check_max_size(max_size)
    if offline_assets is not None:
        leaflet_assets(offline_assets)
    rasters, vectors = split_outputs(outputs)
    if scene is not None and not Path(scene).exists():
        raise GeodistillError("file does not exist", scene)

    overlays = [class_overlay(path, max_size, clear=clear) for path in rasters]
    _unique_names(overlays)
    names: dict[Path, str | None] = {path: None for path in vectors}
    if find_vectors:
        given = {p.resolve() for p in vectors}
        for path, overlay in zip(rasters, overlays, strict=True):
            for found in find_polygons(path):
                if found.resolve() not in given:
                    names[found] = f"polygons: {overlay.name}"  # named for their class map
                    given.add(found.resolve())
    classes = {k: v for o in reversed(overlays) for k, v in o.classes.items()}
    layers = [polygons_layer(path, classes, name) for path, name in names.items()]
    picture = None if scene is None else quicklook(scene, bands, max_size)
    if picture is not None:
        for item in [*overlays, *layers]:
            if item.bounds is not None and not _overlap(item.bounds, picture.bounds):
                raise GeodistillError(
                    f"does not overlap the scene {scene} (wrong scene? the map covers "
                    f"{_describe(item.bounds)}, the scene {_describe(picture.bounds)})",
                    item.source,
                )
    elif bands is not None:
        raise GeodistillError("--bands needs --scene (the bands of the scene quicklook)")
    title = "geodistill: " + ", ".join(o.name for o in overlays) if overlays else "geodistill"
    web = build_map(overlays, picture, layers, title=title)
    page = render_html(web, offline_assets)
    with atomic_output(output, suffix=".partial.html") as temporary:
        temporary.write_text(page, encoding="utf-8")
    return WebMapResult(output, tuple(overlays), tuple(layers), picture)


def split_outputs(outputs: Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """Class maps (``.tif``) and polygon files among ``outputs``; anything else is refused."""
    if not outputs:
        raise GeodistillError("give at least one class map (.tif) or polygon file")
    rasters: list[Path] = []
    vectors: list[Path] = []
    for item in map(Path, outputs):
        if not item.exists():
            raise GeodistillError("file does not exist", item)
        if item.is_dir():
            raise GeodistillError(
                "is a folder; give the class maps in it (e.g. FOLDER/*_classes.tif)", item
            )
        suffix = item.suffix.lower()
        if suffix in RASTER_SUFFIXES:
            rasters.append(item)
        elif suffix in VECTOR_SUFFIXES:
            vectors.append(item)
        else:
            known = ", ".join(RASTER_SUFFIXES + VECTOR_SUFFIXES)
            raise GeodistillError(f"not a class map or polygon file (use {known})", item)
    return rasters, vectors


def _unique_names(overlays: list[ClassOverlay]) -> None:
    """Two maps with one stem (``a/scene.tif``, ``b/scene.tif``) get their folder in the name."""
    seen: dict[str, int] = {}
    for overlay in overlays:
        seen[overlay.name] = seen.get(overlay.name, 0) + 1
    for k, overlay in enumerate(overlays):
        if seen[overlay.name] > 1:
            named = f"{overlay.source.parent.name}/{overlay.name}"
            overlays[k] = dataclasses.replace(overlay, name=named)


def _overlap(a: Bounds, b: Bounds) -> bool:
    return a[0][0] < b[1][0] and b[0][0] < a[1][0] and a[0][1] < b[1][1] and b[0][1] < a[1][1]


def _describe(bounds: Bounds) -> str:
    (south, west), (north, east) = bounds
    return f"lat {south:.4f}..{north:.4f}, lon {west:.4f}..{east:.4f}"
