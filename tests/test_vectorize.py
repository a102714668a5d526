"""``geodistill vectorize``: polygons, areas in m², confidence, formats, summary and bad input.

Every test writes a tiny class map into ``tmp_path``; areas are checked against shapes whose area
is known by hand or in closed form.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from fixtures_small import cli
from pyproj import Geod
from rasterio.transform import from_origin

# Imported at collection, not inside a test: it imports Lightning, which binds its log handler to
# the sys.stderr of the moment (see tests/test_cli.py).
from geodistill.cli.main import main  # noqa: F401
from geodistill.errors import GeodistillError, GeodistillWarning
from geodistill.inference.vectorize import format_summary, vectorize_class_map

EQUAL_AREA = "EPSG:6933"  # WGS 84 / EASE-Grid 2.0: map units are true m² on the ellipsoid
LAEA = "+proj=laea +lat_0=52 +lon_0=10 +x_0=4321000 +y_0=3210000 +ellps=GRS80 +units=m +no_defs"
UTM = "EPSG:32633"
PIXEL = 10.0
TRANSFORM = from_origin(500_000.0, 5_000_000.0, PIXEL, PIXEL)
NAMES = ["background", "mining", "water"]


def write_map(
    path: Path,
    data: np.ndarray,
    crs: str | None = UTM,
    transform=TRANSFORM,
    names: list[str] | None = NAMES,
    nodata: float | None = 255,
    dtype: str = "uint8",
) -> Path:
    """Write a class map ((H, W) or (C, H, W)) with the ``class_names`` tag."""
    data = data[None] if data.ndim == 2 else data
    profile = dict(
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data.astype(dtype))
        if names is not None:
            dst.update_tags(class_names=json.dumps(names))
    return path


def scene() -> np.ndarray:
    """Background with a mining block holding a water hole, a lone water patch and nodata."""
    labels = np.zeros((40, 50), dtype=np.uint8)
    labels[5:15, 5:25] = 1  # 200 px
    labels[8:10, 10:12] = 2  # hole in the mining block: 4 px of water
    labels[25:30, 30:40] = 2  # 50 px
    labels[35:, :] = 255  # nodata strip
    return labels


def read(path: Path) -> gpd.GeoDataFrame:
    return gpd.read_file(path)


@pytest.mark.parametrize("crs", [EQUAL_AREA, LAEA])
def test_rectangle_area_in_an_equal_area_crs(tmp_path, crs):
    labels = np.zeros((30, 40), dtype=np.uint8)
    labels[5:15, 10:30] = 1  # 10 x 20 pixels of 10 m
    transform = from_origin(1_000_000.0, 2_000_000.0, PIXEL, PIXEL)
    write_map(tmp_path / "map.tif", labels, crs=crs, transform=transform)
    vectorize_class_map(tmp_path / "map.tif", tmp_path / "out.gpkg", classes=["mining"])
    frame = read(tmp_path / "out.gpkg")
    assert len(frame) == 1
    assert frame.area_m2[0] == pytest.approx(20_000.0, rel=1e-6)
    # Both projections are equal-area but not equidistant: the perimeter is only close to 600 m.
    assert frame.perimeter_m[0] == pytest.approx(600.0, rel=0.05)


def test_lat_lon_box_area_matches_closed_form(tmp_path):
    north, west, res, rows, cols = 45.1, 10.0, 0.001, 100, 200
    labels = np.zeros((rows + 20, cols + 20), dtype=np.uint8)
    labels[10 : 10 + rows, 10 : 10 + cols] = 1
    transform = from_origin(west - 10 * res, north + 10 * res, res, res)
    write_map(tmp_path / "map.tif", labels, crs="EPSG:4326", transform=transform)
    vectorize_class_map(tmp_path / "map.tif", tmp_path / "out.gpkg", classes=[1])
    area = read(tmp_path / "out.gpkg").area_m2[0]

    south, east = north - rows * res, west + cols * res
    radius = 6_371_007.181  # authalic radius of WGS84
    sphere = (
        radius**2
        * math.radians(east - west)
        * (math.sin(math.radians(north)) - math.sin(math.radians(south)))
    )
    assert area == pytest.approx(sphere, rel=5e-3)
    # On the ellipsoid (geodesic area of the box densified along its parallels) it is exact.
    outline = shapely.segmentize(shapely.box(west, south, east, north), res)
    ellipsoid = abs(Geod(ellps="WGS84").geometry_area_perimeter(outline)[0])
    assert area == pytest.approx(ellipsoid, rel=1e-5)


def test_classes_names_holes_and_nodata(tmp_path):
    write_map(tmp_path / "map.tif", scene())
    result = vectorize_class_map(tmp_path / "map.tif", tmp_path / "out.gpkg")
    frame = read(tmp_path / "out.gpkg")
    assert sorted(frame.class_name) == ["background", "mining", "water", "water"]
    assert set(frame.columns) == {
        "class_id",
        "class_name",
        "area_m2",
        "perimeter_m",
        "geometry",
    }
    mining = frame[frame.class_name == "mining"].geometry.iloc[0]
    assert len(mining.geoms[0].interiors) == 1  # the water hole
    assert mining.area == pytest.approx(196 * PIXEL**2)
    # Nodata is never a polygon: everything written covers exactly the valid pixels.
    valid_pixels = int((scene() != 255).sum())
    assert frame.area_m2.sum() == pytest.approx(valid_pixels * PIXEL**2, rel=1e-3)
    nodata_centre = shapely.Point(TRANSFORM @ (25.5, 37.5))
    assert not frame.geometry.intersects(nodata_centre).any()
    assert [c.class_name for c in result.classes] == NAMES
    assert [c.polygons for c in result.classes] == [1, 1, 2]

    vectorize_class_map(tmp_path / "map.tif", tmp_path / "some.gpkg", classes=["water", "0"])
    assert sorted(read(tmp_path / "some.gpkg").class_id) == [0, 2, 2]


def test_names_default_to_class_ids_without_tag(tmp_path):
    write_map(tmp_path / "map.tif", scene(), names=None)
    result = vectorize_class_map(tmp_path / "map.tif", tmp_path / "out.gpkg", classes=["class_2"])
    assert set(read(tmp_path / "out.gpkg").class_name) == {"class_2"}
    assert [(c.class_id, c.class_name, c.polygons) for c in result.classes] == [(2, "class_2", 2)]


def test_min_area_drops_small_polygons(tmp_path):
    write_map(tmp_path / "map.tif", scene())
    vectorize_class_map(
        tmp_path / "map.tif", tmp_path / "out.gpkg", classes=["water"], min_area=1000.0
    )
    frame = read(tmp_path / "out.gpkg")
    # UTM is not equal-area: 50 pixels of 10 m near the central meridian are 5000 / 0.9996² m².
    assert len(frame) == 1
    assert frame.area_m2[0] == pytest.approx(5000.0 / 0.9996**2, rel=1e-4)


def test_simplify_reduces_vertices_and_keeps_area(tmp_path):
    rows, cols = np.mgrid[0:60, 0:60]
    disk = ((rows - 30) ** 2 + (cols - 30) ** 2 < 25**2).astype(np.uint8)
    write_map(tmp_path / "map.tif", disk)
    vectorize_class_map(tmp_path / "map.tif", tmp_path / "raw.gpkg", classes=[1])
    vectorize_class_map(tmp_path / "map.tif", tmp_path / "simple.gpkg", classes=[1], simplify=1.5)
    raw, simple = read(tmp_path / "raw.gpkg"), read(tmp_path / "simple.gpkg")
    assert (
        shapely.get_num_coordinates(simple.geometry[0])
        < shapely.get_num_coordinates(raw.geometry[0]) / 3
    )
    assert simple.area_m2[0] == pytest.approx(raw.area_m2[0], rel=0.02)
    assert simple.geometry[0].is_valid


def test_connectivity_four_versus_eight(tmp_path):
    labels = np.zeros((6, 6), dtype=np.uint8)
    labels[1, 1] = labels[2, 2] = labels[3, 3] = 1  # a diagonal chain
    labels[1, 4] = 1
    write_map(tmp_path / "map.tif", labels)
    four = vectorize_class_map(tmp_path / "map.tif", tmp_path / "four.gpkg", classes=[1])
    eight = vectorize_class_map(
        tmp_path / "map.tif", tmp_path / "eight.gpkg", classes=[1], connectivity=8
    )
    assert four.polygons == 4
    assert eight.polygons == 2
    frame = read(tmp_path / "eight.gpkg")
    assert frame.geometry.is_valid.all()
    assert sorted(frame.area_m2.round()) == [100.0, 300.0]


def test_mean_confidence_is_the_exact_zonal_mean(tmp_path):
    labels = np.zeros((10, 10), dtype=np.uint8)
    labels[2:4, 2:5] = 1  # 6 pixels
    confidence = np.full((10, 10), 90, dtype=np.uint8)
    confidence[2, 2:5] = [40, 50, 60]
    confidence[3, 2:5] = [70, 255, 80]  # one nodata pixel: ignored
    write_map(tmp_path / "map.tif", labels)
    write_map(tmp_path / "conf.tif", confidence, names=None)
    vectorize_class_map(
        tmp_path / "map.tif", tmp_path / "out.gpkg", confidence=tmp_path / "conf.tif"
    )
    frame = read(tmp_path / "out.gpkg").set_index("class_id")
    assert frame.loc[1, "mean_confidence"] == pytest.approx((40 + 50 + 60 + 70 + 80) / 500)
    assert frame.loc[0, "mean_confidence"] == pytest.approx(0.9)


def test_confidence_beside_the_class_map_is_found(tmp_path):
    labels = scene()
    write_map(tmp_path / "s_classes.tif", labels)
    write_map(tmp_path / "s_confidence.tif", np.full(labels.shape, 75, np.uint8), names=None)
    result = vectorize_class_map(tmp_path / "s_classes.tif", tmp_path / "out.gpkg")
    assert result.confidence == tmp_path / "s_confidence.tif"
    assert np.allclose(read(tmp_path / "out.gpkg").mean_confidence, 0.75)

    result = vectorize_class_map(
        tmp_path / "s_classes.tif", tmp_path / "plain.gpkg", find_confidence=False
    )
    assert result.confidence is None
    assert "mean_confidence" not in read(tmp_path / "plain.gpkg").columns


def test_formats_crs_and_summary(tmp_path):
    write_map(tmp_path / "map.tif", scene())
    gpkg = vectorize_class_map(tmp_path / "map.tif", tmp_path / "out.gpkg")
    vectorize_class_map(tmp_path / "map.tif", tmp_path / "lonlat.geojson")
    in_utm, in_wgs84 = read(tmp_path / "out.gpkg"), read(tmp_path / "lonlat.geojson")
    assert in_utm.crs == UTM
    assert in_wgs84.crs == "EPSG:4326"
    lon, lat = in_wgs84.geometry.union_all().centroid.coords[0]
    assert 14 < lon < 16 and 44 < lat < 46  # UTM 33N, 5000 km north
    assert np.allclose(in_wgs84.area_m2, in_utm.area_m2)
    assert "crs" not in json.loads((tmp_path / "lonlat.geojson").read_text())  # RFC 7946

    summary = json.loads((tmp_path / "out_summary.json").read_text())
    assert summary["total"]["polygons"] == len(in_utm) == gpkg.polygons
    assert summary["total"]["area_km2"] == pytest.approx(in_utm.area_m2.sum() / 1e6)
    for entry in summary["classes"]:
        areas = in_utm.area_m2[in_utm.class_id == entry["class_id"]]
        assert entry["polygons"] == len(areas)
        assert entry["area_km2"] == pytest.approx(areas.sum() / 1e6)
    table = format_summary(gpkg)
    assert "mining" in table and "total" in table


def test_empty_result_writes_a_valid_file(tmp_path):
    write_map(tmp_path / "map.tif", scene())
    result = vectorize_class_map(
        tmp_path / "map.tif", tmp_path / "out.gpkg", classes=["water"], min_area=1e9
    )
    assert result.polygons == 0
    info = pyogrio.read_info(tmp_path / "out.gpkg")
    assert info["features"] == 0
    assert list(info["fields"]) == ["class_id", "class_name", "area_m2", "perimeter_m"]
    summary = json.loads((tmp_path / "out_summary.json").read_text())
    assert summary["classes"] == [
        {"class_id": 2, "class_name": "water", "polygons": 0, "area_km2": 0.0}
    ]

    # A class named in the map but absent from this scene: an empty GeoJSON, still valid.
    write_map(tmp_path / "gold.tif", scene(), names=[*NAMES, "gold"])
    result = vectorize_class_map(tmp_path / "gold.tif", tmp_path / "gold.geojson", classes=[3])
    assert result.polygons == 0
    assert json.loads((tmp_path / "gold.geojson").read_text())["features"] == []


def test_no_crs_warns_and_leaves_areas_unknown(tmp_path):
    write_map(tmp_path / "map.tif", scene(), crs=None)
    with pytest.warns(GeodistillWarning, match="no CRS"):
        result = vectorize_class_map(tmp_path / "map.tif", tmp_path / "out.gpkg")
    frame = read(tmp_path / "out.gpkg")
    assert frame.crs is None
    assert frame.area_m2.isna().all()
    assert math.isnan(result.area_km2)
    assert json.loads((tmp_path / "out_summary.json").read_text())["total"]["area_km2"] is None
    with pytest.raises(GeodistillError, match="min_area"):
        vectorize_class_map(tmp_path / "map.tif", tmp_path / "x.gpkg", min_area=10)


# Bad input through the command line: one line, exit status 2.


def test_cli_writes_and_prints_the_table(tmp_path, capsys):
    write_map(tmp_path / "map.tif", scene())
    out = str(tmp_path / "out.gpkg")
    code, stdout, err = cli(capsys, "vectorize", str(tmp_path / "map.tif"), "-o", out)
    assert code == 0, err
    assert "mining" in stdout and "wrote" in stdout
    code, _, err = cli(
        capsys, "vectorize", str(tmp_path / "map.tif"), "-o", out, "--overwrite",
        "--classes", "mining,water", "--min-area", "100", "--simplify", "1",
        "--connectivity", "8",
    )  # fmt: skip
    assert code == 0, err
    assert set(read(tmp_path / "out.gpkg").class_name) == {"mining", "water"}


def test_cli_refuses_to_overwrite(tmp_path, capsys):
    write_map(tmp_path / "map.tif", scene())
    out = tmp_path / "out.gpkg"
    out.write_text("keep me")
    code, _, err = cli(capsys, "vectorize", str(tmp_path / "map.tif"), "-o", str(out))
    assert code == 2
    assert err.count("\n") == 1 and "--overwrite" in err and str(out) in err
    assert out.read_text() == "keep me"


@pytest.mark.parametrize(
    ("output", "extra", "message"),
    [
        ("out.shp", [], "unknown output format"),
        ("out.gpkg", ["--classes", "gold"], "no class named 'gold'"),
        ("out.gpkg", ["--classes", "7"], "class id 7"),
    ],
)
def test_cli_bad_output_or_classes(tmp_path, capsys, output, extra, message):
    write_map(tmp_path / "map.tif", scene())
    args = ["vectorize", str(tmp_path / "map.tif"), "-o", str(tmp_path / output), *extra]
    code, _, err = cli(capsys, *args)
    assert code == 2
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / output).exists()


def test_cli_confidence_of_another_size(tmp_path, capsys):
    write_map(tmp_path / "map.tif", scene())
    write_map(tmp_path / "conf.tif", np.full((20, 20), 50, np.uint8), names=None)
    code, _, err = cli(
        capsys, "vectorize", str(tmp_path / "map.tif"), "-o", str(tmp_path / "out.gpkg"),
        "--confidence", str(tmp_path / "conf.tif"),
    )  # fmt: skip
    assert code == 2
    assert err.count("\n") == 1 and "conf.tif" in err and "20x20" in err
    assert not (tmp_path / "out.gpkg").exists()


def test_cli_no_crs_warns(tmp_path, capsys):
    write_map(tmp_path / "map.tif", scene(), crs=None)
    code, _, err = cli(
        capsys, "vectorize", str(tmp_path / "map.tif"), "-o", str(tmp_path / "out.geojson")
    )
    assert code == 0
    assert "no CRS" in err
    assert read(tmp_path / "out.geojson").area_m2.isna().all()


@pytest.mark.parametrize(
    ("data", "dtype", "message"),
    [
        (np.zeros((3, 8, 8)), "uint8", "single-band integer"),
        (np.zeros((8, 8)), "float32", "single-band integer"),
    ],
)
def test_cli_rejects_non_class_maps(tmp_path, capsys, data, dtype, message):
    write_map(tmp_path / "map.tif", data, dtype=dtype)
    code, _, err = cli(
        capsys, "vectorize", str(tmp_path / "map.tif"), "-o", str(tmp_path / "out.gpkg")
    )
    assert code == 2
    assert err.count("\n") == 1 and message in err and "map.tif" in err


def test_cli_corrupt_raster(tmp_path, capsys):
    (tmp_path / "map.tif").write_bytes(b"not a tiff at all")
    code, _, err = cli(
        capsys, "vectorize", str(tmp_path / "map.tif"), "-o", str(tmp_path / "out.gpkg")
    )
    assert code == 2
    assert err.count("\n") == 1 and "cannot read raster" in err
