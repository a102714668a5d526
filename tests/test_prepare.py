"""Vector rasterisation, label preparation and scene chipping on tiny georeferenced fixtures."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from scipy import ndimage
from shapely.geometry import LineString, Point, Polygon, box

from geodistill.data import chipping
from geodistill.data.chipping import chip_offsets, cut_scene
from geodistill.data.raster import raster_info
from geodistill.data.vector import CLASSES_TAG, prepare_labels, rasterize_vector
from geodistill.errors import GeodistillError, GeodistillWarning

X0, Y0, RES = 500_000.0, 5_000_000.0, 10.0
HEIGHT, WIDTH = 48, 64
UTM = "EPSG:32633"
TRANSFORM = from_origin(X0, Y0, RES, RES)
BANDS = ("blue", "green", "red", "nir")
CLASSES = ["background", "water", "forest", "road", "field", "building"]


def pixel_box(row: float, col: float, rows: float, cols: float) -> Polygon:
    """Polygon covering ``rows`` x ``cols`` pixels from pixel (row, col) of the fixture grid."""
    return box(X0 + col * RES, Y0 - (row + rows) * RES, X0 + (col + cols) * RES, Y0 - row * RES)


def pixel_centre(row: float, col: float) -> tuple[float, float]:
    return X0 + (col + 0.5) * RES, Y0 - (row + 0.5) * RES


def write_scene(path: Path, crs: str | None = UTM, dtype: str = "uint16", nodata=0) -> Path:
    data = (np.arange(4 * HEIGHT * WIDTH).reshape(4, HEIGHT, WIDTH) % 997 + 1).astype(dtype)
    data[:, :8, :8] = 0 if nodata is not None else data[:, :8, :8]
    profile = dict(driver="GTiff", width=WIDTH, height=HEIGHT, count=4, dtype=dtype)
    with rasterio.open(path, "w", crs=crs, transform=TRANSFORM, nodata=nodata, **profile) as dst:
        dst.write(data)
        for band, name in enumerate(BANDS, start=1):
            dst.set_band_description(band, name)
    return path


def write_vector(path: Path, geoms, values, crs: str | None = UTM, field: str = "cls") -> Path:
    gdf = gpd.GeoDataFrame({field: values}, geometry=list(geoms), crs=crs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gdf.to_file(path, engine="pyogrio")
    return path


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    return write_scene(tmp_path / "scene.tif")


@pytest.fixture
def info(scene: Path):
    return raster_info(scene)


@pytest.fixture
def label() -> np.ndarray:
    rows, cols = np.mgrid[:HEIGHT, :WIDTH]
    label = ((rows // 10 + cols // 16) % 4).astype(np.uint8)
    label[40:, 50:] = 255
    return label


# --- rasterize_vector -------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson", ".shp"])
def test_aligned_square_covers_exact_pixels(tmp_path: Path, info, suffix: str) -> None:
    crs = "EPSG:4326" if suffix == ".geojson" else UTM
    square = gpd.GeoSeries([pixel_box(10, 20, 10, 10)], crs=UTM).to_crs(crs)
    path = write_vector(tmp_path / f"labels{suffix}", square, [3], crs=crs)

    label = rasterize_vector(path, info, "cls")

    assert label.shape == (HEIGHT, WIDTH) and label.dtype == np.uint8
    assert (label[10:20, 20:30] == 3).all()
    assert (label == 3).sum() == 100 and (label == 0).sum() == HEIGHT * WIDTH - 100


def test_string_classes_and_deterministic_overlap(tmp_path: Path, info) -> None:
    geoms = [pixel_box(0, 0, 20, 20), pixel_box(10, 10, 20, 20), pixel_box(30, 30, 5, 5)]
    path = write_vector(tmp_path / "v.gpkg", geoms, ["forest", "water", "Field"], field="kind")

    label = rasterize_vector(path, info, "kind", classes=CLASSES)

    assert (label[0:10, 0:20] == 2).all()
    assert (label[10:20, 10:20] == 2).all(), (
        "forest (id 2) outranks water (id 1) whatever the order"
    )
    assert (label[20:30, 10:30] == 1).all()
    assert (label[30:35, 30:35] == 4).all(), "class names match case-insensitively"
    assert Counter(label.ravel().tolist()) == {2: 400, 1: 300, 4: 25, 0: HEIGHT * WIDTH - 725}


def test_reprojected_polygons_land_on_the_same_pixels(tmp_path: Path, info) -> None:
    diamond = Polygon(
        [(X0 + 320, Y0 - 20), (X0 + 560, Y0 - 240), (X0 + 320, Y0 - 460), (X0 + 80, Y0 - 240)]
    )
    utm = gpd.GeoSeries([pixel_box(5, 5, 12, 7), diamond], crs=UTM).segmentize(RES / 4)
    utm_path = write_vector(tmp_path / "utm.gpkg", utm, [1, 2])
    wgs_path = write_vector(tmp_path / "wgs.geojson", utm.to_crs("EPSG:4326"), [1, 2], "EPSG:4326")

    expected = rasterize_vector(utm_path, info, "cls")
    got = rasterize_vector(wgs_path, info, "cls")

    assert (expected[5:17, 5:12] == 1).all() and (expected == 1).sum() == 84
    for class_id in (1, 2):
        mask = expected == class_id
        edge = ndimage.binary_dilation(mask) & ~ndimage.binary_erosion(mask)
        assert not ((got == class_id) ^ mask)[~edge].any(), "only edge pixels may differ"
        assert abs(int((got == class_id).sum()) - int(mask.sum())) <= edge.sum() // 10


def test_lines_and_points_are_burnt_over_areas(tmp_path: Path, info) -> None:
    road = LineString([pixel_centre(30, 5), pixel_centre(30, 40)])
    geoms = [pixel_box(25, 0, 10, WIDTH), road, Point(pixel_centre(40, 50))]
    path = write_vector(tmp_path / "mixed.gpkg", geoms, [4, 3, 5])

    label = rasterize_vector(path, info, "cls")

    assert (label[30, 5:41] == 3).all(), "a road of a lower id still crosses the field"
    assert (label[29] == 4).all() and (label[31] == 4).all()
    assert (label == 3).sum() == 36
    assert label[40, 50] == 5 and (label == 5).sum() == 1


def test_all_touched_takes_every_touched_pixel(tmp_path: Path, info) -> None:
    path = write_vector(tmp_path / "v.gpkg", [pixel_box(2.7, 2.7, 2.6, 2.6)], [1])

    centres = rasterize_vector(path, info, "cls")
    touched = rasterize_vector(path, info, "cls", all_touched=True)

    assert (centres == 1).sum() == 4 and (centres[3:5, 3:5] == 1).all()
    assert (touched == 1).sum() == 16 and (touched[2:6, 2:6] == 1).all()


def test_nodata_outside_marks_pixels_beyond_the_labelled_extent(tmp_path: Path, info) -> None:
    path = write_vector(
        tmp_path / "v.gpkg", [pixel_box(0, 0, 10, 20), pixel_box(5, 10, 10, 20)], [1, 2]
    )

    label = rasterize_vector(path, info, "cls", background=0, nodata_outside=255)

    assert (label[15:, :] == 255).all() and (label[:, 30:] == 255).all()
    assert (label[10:15, 0:10] == 0).all(), "uncovered pixels inside the extent are background"
    assert (label[:15, :30] != 255).all()


def test_large_class_ids_use_a_wider_dtype(tmp_path: Path, info) -> None:
    path = write_vector(tmp_path / "v.gpkg", [pixel_box(0, 0, 2, 2)], [300])
    label = rasterize_vector(path, info, "cls")
    assert label.dtype == np.int32 and (label == 300).sum() == 4


def test_no_intersecting_feature_is_refused_unless_allowed(tmp_path: Path, info) -> None:
    far = box(X0 + 10_000, Y0 + 10_000, X0 + 10_100, Y0 + 10_100)
    path = write_vector(tmp_path / "v.gpkg", [far], [1])
    with pytest.raises(GeodistillError, match="no feature.*510000..510100.*allow-empty-labels"):
        rasterize_vector(path, info, "cls", background=7)
    with pytest.warns(GeodistillWarning, match="no feature"):
        label = rasterize_vector(path, info, "cls", background=7, allow_empty_labels=True)
    assert (label == 7).all()


def test_missing_field_lists_available_columns(tmp_path: Path, info) -> None:
    path = write_vector(tmp_path / "v.gpkg", [pixel_box(0, 0, 2, 2)], [1], field="landcover")
    with pytest.raises(GeodistillError, match="no field 'cls'.*landcover") as err:
        rasterize_vector(path, info, "cls")
    assert err.value.path == str(path)


def test_unknown_class_name_lists_known_classes(tmp_path: Path, info) -> None:
    path = write_vector(tmp_path / "v.gpkg", [pixel_box(0, 0, 2, 2)], ["lava"])
    with pytest.raises(GeodistillError, match="unknown class 'lava'.*background, water") as err:
        rasterize_vector(path, info, "cls", classes=CLASSES)
    assert err.value.path == str(path)
    with pytest.raises(GeodistillError, match="no class list"):
        rasterize_vector(path, info, "cls")


def test_class_id_out_of_range_of_the_class_list(tmp_path: Path, info) -> None:
    path = write_vector(tmp_path / "v.gpkg", [pixel_box(0, 0, 2, 2)], [9])
    with pytest.raises(GeodistillError, match="class id 9.*out of range"):
        rasterize_vector(path, info, "cls", classes=CLASSES)


def test_vector_without_crs_is_refused(tmp_path: Path, info) -> None:
    path = write_vector(tmp_path / "nocrs.shp", [pixel_box(0, 0, 2, 2)], [1], crs=None)
    with pytest.raises(GeodistillError, match="vector layer has no CRS") as err:
        rasterize_vector(path, info, "cls")
    assert err.value.path == str(path)


def test_raster_without_crs_is_refused_for_a_georeferenced_layer(tmp_path: Path) -> None:
    info = raster_info(write_scene(tmp_path / "nocrs.tif", crs=None))
    path = write_vector(tmp_path / "v.gpkg", [pixel_box(0, 0, 2, 2)], [1])
    with pytest.raises(GeodistillError, match="has no CRS"):
        rasterize_vector(path, info, "cls")


def test_both_without_crs_share_coordinates(tmp_path: Path) -> None:
    info = raster_info(write_scene(tmp_path / "nocrs.tif", crs=None))
    path = write_vector(tmp_path / "v.shp", [pixel_box(1, 2, 3, 4)], [1], crs=None)
    assert (rasterize_vector(path, info, "cls")[1:4, 2:6] == 1).sum() == 12


def test_empty_layer_is_refused(tmp_path: Path, info) -> None:
    path = write_vector(tmp_path / "empty.gpkg", [], [])
    with pytest.raises(GeodistillError, match="empty"):
        rasterize_vector(path, info, "cls")


@pytest.mark.parametrize("content", [None, "not a vector file"])
def test_unreadable_vector_file(tmp_path: Path, info, content: str | None) -> None:
    path = tmp_path / "broken.gpkg"
    if content is not None:
        path.write_text(content)
    with pytest.raises(GeodistillError) as err:
        rasterize_vector(path, info, "cls")
    assert err.value.path == str(path)


def test_prepare_labels_writes_an_aligned_label_raster(tmp_path: Path, scene: Path) -> None:
    vector = write_vector(tmp_path / "v.gpkg", [pixel_box(10, 20, 10, 10)], ["water"])
    out = tmp_path / "out" / "label.tif"

    assert prepare_labels(scene, vector, "cls", out, classes=CLASSES, nodata_outside=255) == out

    with rasterio.open(out) as src:
        assert src.crs == rasterio.crs.CRS.from_string(UTM) and src.transform == TRANSFORM
        assert src.nodata == 255 and src.dtypes[0] == "uint8"
        assert json.loads(src.tags()[CLASSES_TAG]) == CLASSES
        data = src.read(1)
    assert (data[10:20, 20:30] == 1).all() and (data == 1).sum() == 100
    assert (data == 255).sum() == HEIGHT * WIDTH - 100
    assert sorted(p.name for p in out.parent.iterdir()) == ["label.tif"]


def test_prepare_labels_keeps_the_old_file_when_it_fails(tmp_path: Path, scene: Path) -> None:
    vector = write_vector(tmp_path / "v.gpkg", [pixel_box(0, 0, 2, 2)], ["lava"])
    out = tmp_path / "label.tif"
    out.write_bytes(b"previous")
    with pytest.raises(GeodistillError):
        prepare_labels(scene, vector, "cls", out, classes=CLASSES)
    assert out.read_bytes() == b"previous"


# --- cut_scene --------------------------------------------------------------------------------


def read_manifest(path: Path) -> dict:
    return json.loads(path.read_text())


def test_chip_offsets_reach_the_far_edge() -> None:
    assert chip_offsets(48, 32, 32) == [0, 32]
    assert chip_offsets(48, 32, 16) == [0, 16]
    assert chip_offsets(64, 32, 16) == [0, 16, 32]
    assert chip_offsets(20, 32, 32) == [0]
    assert chip_offsets(70, 32, 24) == [0, 24, 48]


@pytest.mark.parametrize(("stride", "count"), [(None, 4), (16, 6)])
def test_chip_count_and_names(tmp_path: Path, scene: Path, label, stride, count: int) -> None:
    manifest = read_manifest(cut_scene(scene, label, tmp_path / "chips", 32, stride=stride))
    assert len(manifest["chips"]) == count
    names = sorted(Path(c["image"]).name for c in manifest["chips"])
    assert sorted(p.name for p in (tmp_path / "chips" / "images").iterdir()) == names
    assert sorted(p.name for p in (tmp_path / "chips" / "labels").iterdir()) == names
    if stride is None:
        assert names == [
            "scene_r0_c0.tif",
            "scene_r0_c32.tif",
            "scene_r32_c0.tif",
            "scene_r32_c32.tif",
        ]


def test_chips_are_georeferenced_slices_of_the_scene(tmp_path: Path, scene: Path, label) -> None:
    out = tmp_path / "chips"
    manifest = read_manifest(cut_scene(scene, label, out, 32))
    with rasterio.open(scene) as src:
        full = src.read()

    assert manifest["crs"] == UTM and manifest["chip_size"] == 32 and manifest["stride"] == 32
    assert manifest["source_image"] == str(scene.resolve())
    for chip in manifest["chips"]:
        row, col = chip["row"], chip["col"]
        with rasterio.open(out / chip["image"]) as src:
            assert src.shape == (32, 32) and src.count == 4
            assert src.transform == from_origin(X0 + col * RES, Y0 - row * RES, RES, RES)
            assert src.crs == rasterio.crs.CRS.from_string(UTM)
            assert src.nodata == 0 and src.descriptions == BANDS
            assert src.profile["compress"] == "lzw"
            assert list(src.bounds) == pytest.approx(chip["bounds"])
            image = src.read()
        with rasterio.open(out / chip["label"]) as src:
            assert src.transform == from_origin(X0 + col * RES, Y0 - row * RES, RES, RES)
            assert src.nodata == 255 and src.dtypes[0] == "uint8"
            chip_label = src.read(1)
        rows, cols = min(32, HEIGHT - row), min(32, WIDTH - col)
        np.testing.assert_array_equal(
            image[:, :rows, :cols], full[:, row : row + rows, col : col + cols]
        )
        np.testing.assert_array_equal(
            chip_label[:rows, :cols], label[row : row + rows, col : col + cols]
        )
        assert (image[:, rows:, :] == 0).all() and (chip_label[rows:, :] == 255).all()

    lefts = sorted({c["bounds"][0] for c in manifest["chips"]})
    tops = sorted({c["bounds"][3] for c in manifest["chips"]}, reverse=True)
    assert lefts == [X0, X0 + 320] and tops == [Y0, Y0 - 320]
    assert all(c["bounds"][2] - c["bounds"][0] == 320 for c in manifest["chips"])


def test_edge_chips_are_padded(tmp_path: Path, scene: Path, label) -> None:
    out = tmp_path / "chips"
    cut_scene(scene, label, out, 40)
    with rasterio.open(out / "images" / "scene_r40_c40.tif") as src:
        image = src.read()
        valid = src.read_masks(1) > 0
    with rasterio.open(out / "labels" / "scene_r40_c40.tif") as src:
        chip_label = src.read(1)
    assert image.shape == (4, 40, 40)
    assert valid[:8, :24].all() and not valid[8:, :].any() and not valid[:, 24:].any()
    assert (chip_label[8:, :] == 255).all() and (chip_label[:, 24:] == 255).all()


def test_manifest_histograms_add_up_to_the_label(tmp_path: Path, scene: Path, label) -> None:
    manifest = read_manifest(cut_scene(scene, label, tmp_path / "chips", 32, classes=CLASSES[:4]))
    expected = Counter(label[label != 255].ravel().tolist())

    assert manifest["classes"] == CLASSES[:4]
    assert manifest["class_histogram"] == {str(k): v for k, v in sorted(expected.items())}
    for chip in manifest["chips"]:
        window = label[chip["row"] : chip["row"] + 32, chip["col"] : chip["col"] + 32]
        assert sum(chip["class_histogram"].values()) == (window != 255).sum()
    total = Counter()
    for chip in manifest["chips"]:
        total.update({int(k): v for k, v in chip["class_histogram"].items()})
    assert total == expected


def test_label_raster_path_gives_the_same_chips(tmp_path: Path, scene: Path) -> None:
    vector = write_vector(tmp_path / "v.gpkg", [pixel_box(10, 20, 30, 30)], ["water"])
    label_path = prepare_labels(scene, vector, "cls", tmp_path / "label.tif", classes=CLASSES)
    with rasterio.open(label_path) as src:
        label = src.read(1)

    from_path = read_manifest(cut_scene(scene, label_path, tmp_path / "a", 32))
    from_array = read_manifest(cut_scene(scene, label, tmp_path / "b", 32))

    assert from_path["classes"] == CLASSES, "class names travel in the label raster's tags"
    assert from_path["source_label"] == str(label_path.resolve())
    assert from_path["class_histogram"] == from_array["class_histogram"] == {"0": 2172, "1": 900}
    for a, b in zip(from_path["chips"], from_array["chips"], strict=True):
        with (
            rasterio.open(tmp_path / "a" / a["label"]) as fa,
            rasterio.open(tmp_path / "b" / b["label"]) as fb,
        ):
            np.testing.assert_array_equal(fa.read(), fb.read())


def test_label_raster_on_another_grid_is_refused(tmp_path: Path, scene: Path) -> None:
    other = tmp_path / "other.tif"
    with rasterio.open(
        other,
        "w",
        driver="GTiff",
        width=10,
        height=10,
        count=1,
        dtype="uint8",
        crs=UTM,
        transform=TRANSFORM,
    ) as dst:
        dst.write(np.zeros((1, 10, 10), np.uint8))
    with pytest.raises(GeodistillError, match="does not match"):
        cut_scene(scene, other, tmp_path / "chips", 32)
    assert not (tmp_path / "chips").exists()


def test_label_raster_shifted_by_a_pixel_is_refused(tmp_path: Path, scene: Path) -> None:
    with rasterio.open(scene) as src:
        height, width, transform = src.height, src.width, src.transform
    shifted = tmp_path / "shifted.tif"
    with rasterio.open(
        shifted,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=1,
        dtype="uint8",
        crs=UTM,
        transform=transform * transform.translation(1, 0),
    ) as dst:
        dst.write(np.zeros((1, height, width), np.uint8))
    with pytest.raises(GeodistillError, match="shifted or another pixel size"):
        cut_scene(scene, shifted, tmp_path / "chips", 32)
    assert not (tmp_path / "chips").exists()


def test_label_array_of_the_wrong_shape_is_refused(tmp_path: Path, scene: Path) -> None:
    with pytest.raises(GeodistillError, match="shape"):
        cut_scene(scene, np.zeros((10, 10), np.uint8), tmp_path / "chips", 32)


def test_min_valid_fraction_skips_sparse_chips(tmp_path: Path, scene: Path, label) -> None:
    half = read_manifest(cut_scene(scene, label, tmp_path / "a", 32, min_valid_fraction=0.6))
    assert [(c["row"], c["col"]) for c in half["chips"]] == [(0, 0), (0, 32)]
    assert half["chips"][0]["valid_fraction"] == pytest.approx(1 - 64 / 1024)

    strict = read_manifest(cut_scene(scene, None, tmp_path / "b", 32, min_valid_fraction=0.95))
    assert [(c["row"], c["col"]) for c in strict["chips"]] == [(0, 32)]
    assert sorted(p.name for p in (tmp_path / "b" / "images").iterdir()) == ["scene_r0_c32.tif"]


def test_unlabelled_scene_with_band_selection(tmp_path: Path, scene: Path) -> None:
    out = tmp_path / "chips"
    manifest = read_manifest(cut_scene(scene, None, out, 32, bands=["nir", "red"], prefix="s1"))
    assert not (out / "labels").exists() and manifest["source_label"] is None
    assert all(c["label"] is None and c["class_histogram"] == {} for c in manifest["chips"])
    with rasterio.open(out / "images" / "s1_r0_c32.tif") as src, rasterio.open(scene) as full:
        assert src.descriptions == ("nir", "red")
        np.testing.assert_array_equal(src.read(), full.read([4, 3])[:, :32, 32:64])


def test_float_scene_without_nodata_is_padded_with_nan(tmp_path: Path) -> None:
    scene = write_scene(tmp_path / "f.tif", dtype="float32", nodata=None)
    manifest = read_manifest(cut_scene(scene, None, tmp_path / "chips", 40))
    with rasterio.open(tmp_path / "chips" / "images" / "f_r40_c40.tif") as src:
        assert np.isnan(src.nodata)
        image = src.read()
    assert np.isnan(image[:, 8:, :]).all() and not np.isnan(image[:, :8, :24]).any()
    assert manifest["chips"][-1]["valid_fraction"] == pytest.approx(8 * 24 / 1600)


def test_reads_the_scene_window_by_window(tmp_path: Path, scene: Path, monkeypatch) -> None:
    shapes = []
    original = rasterio.io.DatasetReader.read

    def spy(self, *args, **kwargs):
        data = original(self, *args, **kwargs)
        shapes.append(data.shape[-2:])
        return data

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", spy)
    cut_scene(scene, None, tmp_path / "chips", 16)
    assert shapes and all(h <= 16 and w <= 16 for h, w in shapes)


def test_refuses_to_overwrite_unless_asked(tmp_path: Path, scene: Path, label) -> None:
    out = tmp_path / "chips"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(GeodistillError, match="not empty") as err:
        cut_scene(scene, label, out, 32)
    assert err.value.path == str(out)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]

    cut_scene(scene, label, out, 32, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["images", "labels", "manifest.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chips", "scene.tif"]


def test_an_existing_empty_directory_is_used(tmp_path: Path, scene: Path) -> None:
    out = tmp_path / "chips"
    out.mkdir()
    assert cut_scene(scene, None, out, 32) == out / "manifest.json"
    assert (out / "manifest.json").is_file()


@pytest.mark.parametrize("existing", [False, True])
def test_failure_midway_leaves_no_output(
    tmp_path: Path, scene: Path, label, monkeypatch, existing
) -> None:
    out = tmp_path / "chips"
    if existing:
        out.mkdir()
        (out / "keep.txt").write_text("precious")
    calls = []
    write = chipping.write_geotiff

    def failing_write(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 3:
            raise RuntimeError("disk full")
        write(*args, **kwargs)

    monkeypatch.setattr(chipping, "write_geotiff", failing_write)
    with pytest.raises(RuntimeError, match="disk full"):
        cut_scene(scene, label, out, 32, overwrite=True)

    assert len(calls) == 3
    if existing:
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    else:
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["chips"] if existing else []) + [
        "scene.tif"
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"chip_size": 0}, "--chip-size"),
        ({"chip_size": 32, "stride": 0}, "--stride"),
        ({"chip_size": 32, "min_valid_fraction": 1.5}, "--min-valid"),
        ({"chip_size": 32, "ignore_index": 300}, "--ignore-index"),
    ],
)
def test_bad_arguments(tmp_path: Path, scene: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(GeodistillError, match=message):
        cut_scene(scene, None, tmp_path / "chips", **kwargs)
