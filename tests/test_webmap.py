"""``geodistill view``: a self-contained web map of class maps, polygons and the scene.

No browser and no network: the HTML is read back (overlay images decoded, bounds parsed, layer
control and legend found); docs/images/webmap.png is the browser check
(benchmarks/webmap_screenshot.py).
"""

from __future__ import annotations

import base64
import io
import re
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from fixtures_small import RES, X0, Y0, chip_transform, write_tif
from harness import assert_refused, run_cli, tree_state
from PIL import Image
from rasterio.warp import transform_bounds

from geodistill.inference.writer import class_map_tags
from geodistill.webmap import (
    class_color,
    class_colors,
    format_area,
    format_confidence,
    quicklook,
)

SIZE = 32
CLASSES = ["background", "target", "spoil"]


def class_map(path: Path, values: np.ndarray, crs: str | None = "EPSG:32633", **kw) -> Path:
    write_tif(path, values.astype(np.uint8), crs=crs, nodata=255, **kw)
    with rasterio.open(path, "r+") as dst:
        dst.update_tags(**class_map_tags(CLASSES))
    return path


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    """A 4-band scene and two class maps on its grid (UTM 33N, 10 m), top rows nodata."""
    rng = np.random.default_rng(0)
    scene = write_tif(
        tmp_path / "scene.tif",
        rng.random((4, SIZE, SIZE)).astype(np.float32),
        descriptions=["Blue", "Green", "Red", "NIR"],
    )
    first = np.zeros((SIZE, SIZE), dtype=np.uint8)
    first[8:24, 8:24] = 1
    first[:4] = 255
    second = first.copy()
    second[8:24, 20:28] = 2
    return {
        "scene": scene,
        "a": class_map(tmp_path / "maps" / "a_classes.tif", first),
        "b": class_map(tmp_path / "maps" / "b_classes.tif", second),
    }


def polygon_file(path: Path, crs: str | None = "EPSG:32633") -> Path:
    """One 100 m x 200 m 'target' rectangle with an area and a mean confidence."""
    box = shapely.box(X0 + 80, Y0 - 280, X0 + 180, Y0 - 80)
    frame = gpd.GeoDataFrame(
        {
            "class_id": [1],
            "class_name": ["target"],
            "area_m2": [20_000.0],
            "mean_confidence": [0.874],
        },
        geometry=[box],
        crs=crs,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="'crs' was not provided")
        frame.to_file(path, engine="pyogrio")
    return path


def overlays(page: str) -> list[tuple[np.ndarray, list[list[float]]]]:
    """Every ``L.imageOverlay``: its decoded RGBA picture and its [[s, w], [n, e]] bounds."""
    found = re.findall(
        r'L\.imageOverlay\(\s*"data:image/png;base64,([^"]+)",\s*(\[\[[^\n]*\]\])', page
    )
    result = []
    for data, bounds in found:
        picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGBA"))
        result.append((picture, eval(bounds)))  # plain nested lists of floats
    return result


def base_layers(page: str) -> list[str]:
    block = re.search(r"base_layers : \{(.*?)\}", page, re.DOTALL)
    assert block, "no layer control"
    return re.findall(r'"([^"]+)" :', block.group(1))


def overlay_layers(page: str) -> list[str]:
    block = re.search(r"overlays :\s*\{(.*?)\}", page, re.DOTALL)
    assert block, "no layer control"
    return re.findall(r'"([^"]+)" :', block.group(1))


def external_links(page: str) -> list[str]:
    scripts = re.findall(r'<script[^>]*\bsrc="(https?://[^"]+)"', page)
    links = re.findall(r'<link[^>]*\bhref="(https?://[^"]+)"', page)
    return scripts + links


def test_view_embeds_scene_and_class_maps_with_switch_legend_and_bounds(capsys, inputs, tmp_path):
    out = tmp_path / "map.html"
    outcome = run_cli(
        capsys, "view", inputs["a"], inputs["b"], "--scene", inputs["scene"], "-o", out
    )
    assert outcome.code == 0, outcome.err
    assert "2 class maps" in outcome.out and str(out) in outcome.out
    page = out.read_text()

    # One radio entry per class map (named from the stem), plus "none"; the scene is an overlay.
    assert base_layers(page) == ["a", "b", "no class map"]
    assert overlay_layers(page) == ["scene: scene.tif (Red, Green, Blue)"]

    pictures = overlays(page)
    assert len(pictures) == 3  # scene + two class maps, all embedded as PNG data URIs
    scene_png, scene_bounds = pictures[0]
    (a_png, a_bounds), (b_png, _) = pictures[1:]
    west, south, east, north = transform_bounds(
        "EPSG:32633", "EPSG:4326", X0, Y0 - SIZE * RES, X0 + SIZE * RES, Y0
    )
    for bounds in (scene_bounds, a_bounds):
        (s, w), (n, e) = bounds
        # Within a tenth of a pixel (10 m ~ 1.3e-4 degrees here) of the raster's own bounds.
        assert (s, w, n, e) == pytest.approx((south, west, north, east), abs=2e-5)

    # Class colours are the figures' (tab10); nodata rows and the background are see-through.
    colors = [tuple(int(c[i : i + 2], 16) for i in (1, 3, 5)) for c in class_colors(3)]
    assert a_png[0, :, 3].max() == 0  # nodata (top rows)
    middle = a_png[a_png.shape[0] // 2, a_png.shape[1] // 2]
    assert tuple(middle[:3]) == colors[1] and middle[3] == 255
    assert a_png[a_png.shape[0] - 2, 1, 3] == 0  # background: not drawn by default
    assert {tuple(p[:3]) for p in b_png.reshape(-1, 4) if p[3]} == {colors[1], colors[2]}
    assert scene_png[..., 3].min() == 255 and scene_png[..., :3].std() > 10

    legend = re.search(r'class="geodistill-legend".*?</div>\s*</div>', page, re.DOTALL)
    assert legend, "no legend"
    for name in CLASSES:
        assert name in legend.group(0)
    assert "(not drawn)" in legend.group(0)
    # Leaflet from folium's CDN, nothing else (no jQuery, Bootstrap, font icons).
    assert all("leaflet" in url for url in external_links(page)) and external_links(page)


def test_show_background_paints_it(capsys, inputs, tmp_path):
    out = tmp_path / "map.html"
    outcome = run_cli(capsys, "view", inputs["a"], "--show-background", "-o", out)
    assert outcome.code == 0, outcome.err
    ((picture, _),) = overlays(out.read_text())
    background = tuple(int(class_colors(1)[0][i : i + 2], 16) for i in (1, 3, 5))
    assert tuple(picture[-2, 1]) == (*background, 255)
    assert picture[0, :, 3].max() == 0  # nodata stays clear


def test_polygons_given_and_found_beside_the_map_with_popups(capsys, inputs, tmp_path):
    given = polygon_file(tmp_path / "mines.geojson")
    polygon_file(inputs["a"].with_name("a.gpkg"))  # found beside a_classes.tif
    out = tmp_path / "map.html"
    outcome = run_cli(capsys, "view", inputs["a"], given, "-o", out)
    assert outcome.code == 0, outcome.err
    assert "2 polygons" in outcome.out
    page = out.read_text()
    assert overlay_layers(page) == ["polygons: mines.geojson (1)", "polygons: a (1)"]
    assert page.count("20,000 m\\u00b2 (2.00 ha)") == 2  # popup text, inline GeoJSON
    assert page.count('"confidence": "87 %"') == 2
    assert page.count('let fields = ["class", "area", "confidence"];') == 2  # both popups

    outcome = run_cli(capsys, "view", inputs["a"], "--no-polygons", "-o", out, "--overwrite")
    assert outcome.code == 0, outcome.err
    assert "polygons" not in "".join(overlay_layers(out.read_text()))


def test_class_ids_beyond_a_byte_keep_their_colours(capsys, tmp_path):
    """Land-cover codes such as 311 (an int16 map) are drawn in the same cycle of colours."""
    values = np.full((8, 8), 311, dtype=np.int16)
    values[:, :4] = 2
    values[0] = -1
    path = write_tif(tmp_path / "codes.tif", values, nodata=-1)
    out = tmp_path / "map.html"
    assert run_cli(capsys, "view", path, "-o", out).code == 0
    page = out.read_text()
    ((picture, _),) = overlays(page)
    rgb = {tuple(int(class_color(k)[i : i + 2], 16) for i in (1, 3, 5)) for k in (2, 311)}
    assert {tuple(p[:3]) for p in picture.reshape(-1, 4) if p[3]} == rgb
    assert picture[0, :, 3].max() == 0
    assert "class_311" in page and "class_2" in page


def test_empty_polygon_file_is_an_empty_layer(capsys, inputs, tmp_path):
    empty = tmp_path / "none.gpkg"
    gpd.GeoDataFrame({"class_id": []}, geometry=[], crs="EPSG:32633").to_file(empty)
    out = tmp_path / "map.html"
    outcome = run_cli(capsys, "view", inputs["a"], empty, "-o", out)
    assert outcome.code == 0, outcome.err
    assert overlay_layers(out.read_text()) == ["polygons: none.gpkg (0)"]


def test_popup_text():
    assert format_area(20_000.0) == "20,000 m² (2.00 ha)"
    assert format_area(12.34) == "12.3 m² (0.00 ha)"
    assert format_area(float("nan")) == "n/a"
    assert format_confidence(0.874) == "87 %"
    assert format_confidence(None) == "n/a"


def test_offline_assets_inline_leaflet_and_load_nothing(capsys, inputs, tmp_path):
    dist = tmp_path / "leaflet" / "package" / "dist"  # as `npm pack leaflet` unpacks
    (dist / "images").mkdir(parents=True)
    (dist / "leaflet.js").write_text("/* LEAFLET-JS-MARKER */ window.L = {};")
    (dist / "leaflet.css").write_text(
        ".leaflet-control-layers-toggle { background-image: url(images/layers.png); }"
    )
    Image.new("RGBA", (2, 2)).save(dist / "images" / "layers.png")
    out = tmp_path / "map.html"
    outcome = run_cli(
        capsys,
        "view",
        inputs["a"],
        inputs["b"],
        "--scene",
        inputs["scene"],
        "--offline-assets",
        tmp_path / "leaflet",
        "-o",
        out,
    )
    assert outcome.code == 0, outcome.err
    page = out.read_text()
    assert external_links(page) == []
    assert "LEAFLET-JS-MARKER" in page
    assert "url(data:image/png;base64," in page and "url(images/" not in page
    assert page.index("LEAFLET-JS-MARKER") < page.index("L.imageOverlay")
    assert len(overlays(page)) == 3


def test_scene_on_another_crs_and_grid_is_reprojected(capsys, inputs, tmp_path):
    """A scene in lat/lon with another pixel size is warped like the maps, not refused."""
    west, south, east, north = transform_bounds(
        "EPSG:32633", "EPSG:4326", X0, Y0 - SIZE * RES, X0 + SIZE * RES, Y0
    )
    transform = rasterio.transform.from_bounds(west, south, east, north, 20, 20)
    scene = write_tif(
        tmp_path / "scene_4326.tif",
        np.random.default_rng(1).random((3, 20, 20)).astype(np.float32),
        crs="EPSG:4326",
        transform=transform,
    )
    out = tmp_path / "map.html"
    outcome = run_cli(capsys, "view", inputs["a"], "--scene", scene, "-o", out)
    assert outcome.code == 0, outcome.err
    (_, scene_bounds), (_, map_bounds) = overlays(out.read_text())
    assert np.allclose(scene_bounds, map_bounds, atol=2e-4)


def decoded(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def test_quicklook_picks_red_green_blue_by_name_and_clears_nodata(tmp_path):
    ramp = np.tile(np.linspace(1, 100, SIZE, dtype=np.float32), (SIZE, 1))  # grows eastwards
    bands = np.stack([ramp.T, ramp.T, ramp, ramp.T])  # Blue, Green, Red, NIR: only Red east
    bands[:, -6:, :] = -1  # nodata rows at the bottom
    scene = write_tif(
        tmp_path / "s.tif", bands, nodata=-1, descriptions=["Blue", "Green", "Red", "NIR"]
    )
    picture = decoded(quicklook(scene).url)
    row = picture[picture.shape[0] // 3]
    assert row[-2, 0] > 200 and row[1, 0] < 50  # red follows the Red band (eastwards)
    assert abs(int(row[-2, 1]) - int(row[1, 1])) < 10  # green does not
    assert picture[-2, :, 3].max() == 0 and picture[1, :, 3].min() == 255
    chosen = decoded(quicklook(scene, bands=[0, 1, 2]).url)  # Blue shown as red: no east ramp
    assert abs(int(chosen[SIZE // 3, -2, 0]) - int(chosen[SIZE // 3, 1, 0])) < 10


def test_max_size_bounds_the_embedded_images(capsys, tmp_path):
    values = np.ones((100, 200), dtype=np.uint8)
    big = class_map(tmp_path / "big_classes.tif", values)
    out = tmp_path / "map.html"
    outcome = run_cli(capsys, "view", big, "--max-size", "50", "-o", out)
    assert outcome.code == 0, outcome.err
    ((picture, _),) = overlays(out.read_text())
    assert max(picture.shape[:2]) <= 50 and min(picture.shape[:2]) >= 20


def bad_case(name: str, tmp: Path, inputs: dict[str, Path]) -> tuple[list, tuple[str, ...]]:
    """Arguments (besides -o) of one bad input and what its error line must say."""
    if name == "missing map":
        return [tmp / "nope.tif"], ("nope.tif", "does not exist")
    if name == "missing scene":
        return [inputs["a"], "--scene", tmp / "nope.tif"], ("nope.tif", "does not exist")
    if name == "multi-band map":
        path = write_tif(tmp / "multi.tif", np.zeros((2, 8, 8), dtype=np.uint8))
        return [path], ("multi.tif", "single-band")
    if name == "map without CRS":
        path = class_map(tmp / "nocrs_classes.tif", np.zeros((8, 8)), crs=None)
        return [path], ("nocrs_classes.tif", "no CRS")
    if name == "scene without CRS":
        path = write_tif(tmp / "nocrs.tif", np.zeros((3, 8, 8), dtype=np.float32), crs=None)
        return [inputs["a"], "--scene", path], ("nocrs.tif", "no CRS")
    if name == "map off the scene":
        far = class_map(tmp / "far_classes.tif", np.ones((8, 8)), transform=chip_transform(500))
        return [far, "--scene", inputs["scene"]], ("far_classes.tif", "does not overlap")
    if name == "image band as map":
        values = np.arange(400, dtype=np.uint16).reshape(20, 20)
        path = write_tif(tmp / "band.tif", values)
        return [path], ("band.tif", "distinct values", "too many")
    if name == "confidence raster":
        path = write_tif(tmp / "s_confidence.tif", np.full((8, 8), 90, dtype=np.uint8))
        return [path], ("s_confidence.tif", "_classes.tif")
    if name == "polygons without CRS":
        return [inputs["a"], polygon_file(tmp / "p.gpkg", crs=None)], ("p.gpkg", "no CRS")
    if name == "GeoJSON in metres":  # GeoJSON without a CRS is lon/lat: these are UTM metres
        return [inputs["a"], polygon_file(tmp / "p.geojson", crs=None)], ("p.geojson", "lon")
    if name == "unknown file kind":
        path = tmp / "notes.txt"
        path.write_text("hi")
        return [path], ("notes.txt", "not a class map")
    if name == "offline assets without leaflet":
        (tmp / "empty").mkdir()
        return [inputs["a"], "--offline-assets", tmp / "empty"], ("empty", "leaflet.js")
    if name == "two bands":
        return [inputs["a"], "--scene", inputs["scene"], "--bands", "0,1"], ("--bands", "3")
    if name == "band name":
        return [inputs["a"], "--scene", inputs["scene"], "--bands", "Red,Green,SWIR"], ("SWIR",)
    raise AssertionError(name)


BAD = [
    "missing map",
    "missing scene",
    "multi-band map",
    "map without CRS",
    "scene without CRS",
    "map off the scene",
    "image band as map",
    "confidence raster",
    "polygons without CRS",
    "GeoJSON in metres",
    "unknown file kind",
    "offline assets without leaflet",
    "two bands",
    "band name",
]


@pytest.mark.parametrize("name", BAD)
def test_bad_inputs_are_refused_and_nothing_is_written(capsys, inputs, tmp_path, name):
    args, needles = bad_case(name, tmp_path, inputs)
    out = tmp_path / "out" / "map.html"
    before = tree_state(tmp_path)
    assert_refused(run_cli(capsys, "view", *args, "-o", out), *needles)
    assert not out.exists()
    assert tree_state(tmp_path) == before


def test_existing_map_is_kept_without_overwrite(capsys, inputs, tmp_path):
    out = tmp_path / "map.html"
    out.write_text("mine")
    assert_refused(run_cli(capsys, "view", inputs["a"], "-o", out), "map.html", "--overwrite")
    assert out.read_text() == "mine"
    assert run_cli(capsys, "view", inputs["a"], "-o", out, "--overwrite").code == 0
    assert out.read_text().startswith("<!DOCTYPE html>")


def test_output_must_be_html(capsys, inputs, tmp_path):
    assert_refused(run_cli(capsys, "view", inputs["a"], "-o", tmp_path / "map.png"), ".html")
    assert not (tmp_path / "map.png").exists()
