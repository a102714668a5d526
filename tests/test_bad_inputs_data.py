"""Bad raster and vector input to ``prepare``, ``stats`` and ``fit``: one clear line, no output.

Each case runs the real command in-process on tiny files (64x64, 4 bands) built once for the
module, and checks the bad-input promise: exit 2, one ``geodistill: error:`` line naming the file
or option and the problem, no traceback, no raw Python warning (only ``geodistill: warning:``
lines), and the output path unchanged, its parent folder included.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from fixtures_small import (
    RES,
    X0,
    Y0,
    config_dict,
    make_dataset,
    write_config,
    write_tif,
)
from harness import Outcome, assert_refused, run_cli, tree_state
from shapely.geometry import box

from geodistill.data.raster import warn_no_crs
from geodistill.errors import GeodistillWarning

CLASSES = "background,building"


pytestmark = pytest.mark.usefixtures("in_tmp")


def run_quiet(capsys, *args: object) -> Outcome:
    """:func:`run_cli`, failing on any warning that is not a one-line ``GeodistillWarning``.

    Under pytest, warnings are recorded rather than printed, so they are caught here: the CLI
    prints GeodistillWarnings itself and hands every other warning on, to this record.
    """
    with warnings.catch_warnings(record=True) as caught:
        # what a user sees: Python's defaults (deprecations hidden), not pytest's ignore list
        warnings.simplefilter("default")
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        outcome = run_cli(capsys, *args)
    raw = [f"{w.category.__name__}: {w.message}" for w in caught]
    assert not raw, f"raw warnings: {raw}\n{outcome.err}"
    return outcome


def square(col: float, row: float, size: float = 20) -> object:
    """A ``size``-pixel square whose top-left corner is pixel (row, col) of the image grid."""
    return box(X0 + col * RES, Y0 - (row + size) * RES, X0 + (col + size) * RES, Y0 - row * RES)


def feature_collection(features: list[dict], crs: str | None = "EPSG:32633") -> str:
    named = {"crs": {"type": "name", "properties": {"name": crs}}} if crs else {}
    return json.dumps({"type": "FeatureCollection", **named, "features": features})


def feature(coordinates: list, value: object = "building") -> dict:
    geometry = {"type": "Polygon", "coordinates": coordinates}
    return {"type": "Feature", "properties": {"class": value}, "geometry": geometry}


def ring(col: float, row: float, size: float = 20) -> list:
    return [list(square(col, row, size).exterior.coords)]


def write_vector(path: Path, geoms: list, values: list, crs: str | None = "EPSG:32633", **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pyogrio warns about a missing CRS: that is the point
        gpd.GeoDataFrame({"class": values}, geometry=geoms, crs=crs).to_file(path, **kw)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every good and bad file of the catalogue, written once."""
    root = tmp_path_factory.mktemp("bad_data")
    rng = np.random.default_rng(0)
    image = rng.random((4, 64, 64)).astype(np.float32)
    f: dict[str, Path] = {"root": root}
    f["image"] = write_tif(root / "image.tif", image)
    good = f["image"].read_bytes()
    f["truncated"] = root / "truncated.tif"
    f["truncated"].write_bytes(good[: len(good) // 2])
    f["empty_file"] = root / "empty.tif"
    f["empty_file"].write_bytes(b"")
    f["text"] = root / "notes.tif"
    f["text"].write_text("these are field notes, not an image\n" * 5)
    f["all_nodata"] = write_tif(root / "clouds.tif", np.full((4, 64, 64), np.nan, np.float32))
    holes = image.copy()
    holes[:, ::16, ::16] = np.nan  # every chip has a few nodata pixels
    f["holes"] = write_tif(root / "holes.tif", holes)
    f["label_3_bands"] = write_tif(root / "label_rgb.tif", np.zeros((3, 64, 64), np.uint8))
    f["label_small"] = write_tif(root / "label_small.tif", np.zeros((32, 32), np.uint8))
    f["label_other_crs"] = write_tif(
        root / "label_32632.tif", np.zeros((64, 64), np.uint8), crs="EPSG:32632"
    )
    f["label_ignored"] = write_tif(root / "label_void.tif", np.full((64, 64), 255, np.uint8))
    label = write_tif(root / "label_ok.tif", rng.integers(0, 2, (64, 64), dtype=np.uint8))
    f["label_truncated"] = root / "label_truncated.tif"
    f["label_truncated"].write_bytes(label.read_bytes()[: label.stat().st_size * 2 // 3])

    vectors = {
        "far": feature_collection([feature(ring(10_000, 0))]),
        # UTM coordinates in a GeoJSON without a "crs" member: read as longitude/latitude
        "utm_as_degrees": feature_collection([feature(ring(5, 5))], crs=None),
        "no_features": feature_collection([]),
        "two_point_ring": feature_collection(
            [feature(ring(5, 5)), feature([[[X0 + 10, Y0 - 10], [X0 + 100, Y0 - 100]]])]
        ),
        "unknown_class": feature_collection([feature(ring(5, 5), "tree")]),
        "no_class_value": feature_collection([feature(ring(5, 5), None)]),
        "bow_tie": feature_collection(
            [feature([[[X0, Y0], [X0 + 300, Y0 - 300], [X0 + 300, Y0], [X0, Y0 - 300], [X0, Y0]]])]
        ),
    }
    for name, text in vectors.items():
        f[name] = root / f"{name}.geojson"
        f[name].write_text(text)
    f["garbage_vector"] = root / "garbage.geojson"
    f["garbage_vector"].write_text("{ this is not json")
    f["no_crs_vector"] = write_vector(root / "no_crs.shp", [square(5, 5)], ["building"], crs=None)
    f["two_layers"] = write_vector(root / "two.gpkg", [square(5, 5)], ["building"], layer="a")
    write_vector(f["two_layers"], [square(5, 5)], ["building"], layer="b")
    f["good_vector"] = write_vector(root / "good.gpkg", [square(5, 5)], ["building"])
    f["plain"] = root / "plain.tif"  # neither CRS nor transform
    with (
        warnings.catch_warnings(),
        rasterio.open(
            f["plain"], "w", driver="GTiff", width=64, height=64, count=4, dtype="float32"
        ) as dst,
    ):
        warnings.simplefilter("ignore")
        dst.write(image)
    return f


@dataclass(frozen=True)
class Case:
    """``geodistill ARGS -o OUTPUT`` is refused with a line holding the ``needles``."""

    args: Callable[[dict[str, Path]], list[object]]
    needles: Callable[[dict[str, Path]], list[str]]
    output: str = "out/chips"


def prepare(key: str, *extra: object) -> Callable[[dict[str, Path]], list[object]]:
    def args(f: dict[str, Path]) -> list[object]:
        return ["prepare", f[key], *(f[e] if isinstance(e, str) and e in f else e for e in extra)]

    return args


def stats(key: str, *extra: object) -> Callable[[dict[str, Path]], list[object]]:
    return lambda f: ["stats", f[key], *extra]


def names(key: str | None, *words: str) -> Callable[[dict[str, Path]], list[str]]:
    return lambda f: ([str(f[key])] if key else []) + list(words)


VECTOR = ("--classes", CLASSES, "--chip-size", "32")
CASES: dict[str, Case] = {
    # vector labels
    "vector misses the image": Case(
        prepare("image", "--vector", "far", *VECTOR),
        names(
            "far",
            "no feature",
            "x 600000..600200",
            "x 500000..500640, y 4999360..5000000",
            "EPSG:32633",
            "--allow-empty-labels",
        ),
    ),
    "vector in a wrong CRS": Case(
        prepare("image", "--vector", "utm_as_degrees", *VECTOR),
        names("utm_as_degrees", "EPSG:4326", "not longitude/latitude", "x 500000..500640"),
    ),
    "empty feature collection": Case(
        prepare("image", "--vector", "no_features", *VECTOR), names("no_features", "no features")
    ),
    "polygon of two points": Case(
        prepare("image", "--vector", "two_point_ring", *VECTOR),
        names("two_point_ring", "feature 1", "broken geometry"),
    ),
    "vector without CRS": Case(
        prepare("image", "--vector", "no_crs_vector", *VECTOR),
        names("no_crs_vector", "no CRS"),
    ),
    "unreadable vector": Case(
        prepare("image", "--vector", "garbage_vector", *VECTOR),
        names("garbage_vector", "cannot read vector file", "not a vector format"),
    ),
    "missing vector": Case(
        prepare("image", "--vector", "nowhere.gpkg", *VECTOR),
        lambda f: ["nowhere.gpkg", "does not exist"],
    ),
    "unknown layer": Case(
        prepare("image", "--vector", "two_layers", "--layer", "roads", *VECTOR),
        names("two_layers", "no layer 'roads'", "--layer", "a, b"),
    ),
    "several layers, none chosen": Case(
        prepare("image", "--vector", "two_layers", *VECTOR),
        names("two_layers", "2 layers", "--layer"),
    ),
    "class not in --classes": Case(
        prepare("image", "--vector", "unknown_class", *VECTOR),
        names("unknown_class", "'tree'", "--classes"),
    ),
    "no class field": Case(
        prepare("image", "--vector", "good_vector", "--class-field", "kind", *VECTOR),
        names("good_vector", "'kind'", "--class-field"),
    ),
    "no feature has a class": Case(
        prepare("image", "--vector", "no_class_value", *VECTOR),
        names("no_class_value", "has a value"),
    ),
    # rasters that cannot be read
    "truncated image (prepare)": Case(
        prepare("truncated", "--chip-size", "32"),
        names("truncated", "cannot read raster", "truncated or corrupt", "expected"),
    ),
    "truncated image (stats)": Case(
        stats("truncated"),
        names("truncated", "truncated or corrupt"),
        output="out/stats.json",
    ),
    "empty image file": Case(
        prepare("empty_file", "--chip-size", "32"), names("empty_file", "the file is empty")
    ),
    "not an image (stats)": Case(
        stats("text"), names("text", "not a raster format"), output="out/stats.json"
    ),
    "folder as image": Case(
        lambda f: ["prepare", f["root"], "--chip-size", "32"], names("root", "is a folder")
    ),
    # bands
    "band index beyond the bands (prepare)": Case(
        prepare("image", "--bands", "9", "--chip-size", "32"),
        names("image", "band 9", "out of range", "4 bands"),
    ),
    "band name on unnamed bands (prepare)": Case(
        prepare("image", "--bands", "NIR", "--chip-size", "32"),
        names("image", "no band named 'NIR'", "none of them named"),
    ),
    "band index beyond the bands (stats)": Case(
        stats("image", "--bands", "9"), names("image", "band 9"), output="out/stats.json"
    ),
    "band name on unnamed bands (stats)": Case(
        stats("image", "--bands", "NIR"), names("image", "'NIR'"), output="out/stats.json"
    ),
    # label rasters
    "label of another size": Case(
        prepare("image", "--label", "label_small", "--chip-size", "32"),
        names("label_small", "32x32", "does not match"),
    ),
    "label in another CRS": Case(
        prepare("image", "--label", "label_other_crs", "--chip-size", "32"),
        names("label_other_crs", "EPSG:32632", "EPSG:32633"),
    ),
    "label with three bands": Case(
        prepare("image", "--label", "label_3_bands", "--chip-size", "32"),
        names("label_3_bands", "3 bands", "single band"),
    ),
    "truncated label": Case(
        prepare("image", "--label", "label_truncated", "--chip-size", "32"),
        names("label_truncated", "cannot read raster", "truncated or corrupt"),
    ),
    "label with no labelled pixel": Case(
        prepare("image", "--label", "label_ignored", "--chip-size", "32"),
        names("label_ignored", "no labelled pixel"),
    ),
    # chipping options and content
    "chip size 0": Case(prepare("image", "--chip-size", "0"), names(None, "--chip-size", "0")),
    "chip larger than the image": Case(
        prepare("image", "--chip-size", "65"), names("image", "--chip-size 65", "64x64")
    ),
    "stride 0": Case(
        prepare("image", "--chip-size", "32", "--stride", "0"), names(None, "--stride")
    ),
    "image without a valid pixel": Case(
        prepare("all_nodata", "--chip-size", "32"), names("all_nodata", "every pixel is nodata")
    ),
    "no chip reaches --min-valid": Case(
        prepare("holes", "--chip-size", "32", "--min-valid", "1"),
        names("holes", "--min-valid"),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clear_line(files, tmp_path: Path, capsys, case: str) -> None:
    spec = CASES[case]
    output = tmp_path / spec.output
    watched = tmp_path / Path(spec.output).parts[0]
    before = tree_state(watched)
    outcome = run_quiet(capsys, *spec.args(files), "-o", output)
    assert_refused(outcome, *spec.needles(files))
    assert tree_state(watched) == before
    assert not watched.exists(), "not even the parent folder of the output is left behind"


def test_fit_on_a_truncated_chip_is_one_clear_line(tmp_path: Path, capsys) -> None:
    data = make_dataset(tmp_path / "data", n=4)
    chip = data / "images" / "chip_02.tif"
    chip.write_bytes(chip.read_bytes()[:5000])
    out = tmp_path / "out"
    config = write_config(tmp_path / "fit.yaml", config_dict(data, out, max_epochs=1))
    outcome = run_cli(capsys, "fit", "--config", config)
    assert_refused(outcome, str(chip), "cannot read raster", "truncated or corrupt")
    assert tree_state(out) == {}


def test_image_without_crs_warns_once(files, tmp_path: Path, capsys) -> None:
    outcome = run_quiet(capsys, "prepare", files["plain"], "--chip-size", "32", "-o", "chips")
    assert outcome.code == 0, outcome.err
    warned = [line for line in outcome.err.splitlines() if line.startswith("geodistill: warning")]
    assert warned == [
        f"geodistill: warning: {files['plain']}: no CRS; the chips are written without one"
    ]


def test_no_crs_warning_is_shown_once_per_file() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(3):  # e.g. infer checks each scene up front and again when predicting
            warn_no_crs("a.tif", "predicting anyway")
        warn_no_crs("b.tif", "predicting anyway")
    assert [str(w.message) for w in caught] == [
        "a.tif: no CRS; predicting anyway",
        "b.tif: no CRS; predicting anyway",
    ]
    assert all(w.category is GeodistillWarning for w in caught)


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o755), (0o027, 0o750)])
def test_chip_folders_get_the_usual_mode(files, capsys, umask: int, mode: int) -> None:
    previous = os.umask(umask)
    try:
        outcome = run_cli(
            capsys, "prepare", files["image"], "--vector", files["good_vector"], *VECTOR,
            "-o", "chips",
        )  # fmt: skip
    finally:
        os.umask(previous)
    assert outcome.code == 0, outcome.err
    for folder in (Path("chips"), Path("chips/images"), Path("chips/labels")):
        assert folder.stat().st_mode & 0o777 == mode, folder
    assert not [p for p in Path().iterdir() if p.name.startswith(".chips")], "staging left"


def test_self_intersecting_polygon_is_repaired_with_one_warning(files, capsys) -> None:
    outcome = run_quiet(
        capsys, "prepare", files["image"], "--vector", files["bow_tie"], *VECTOR, "-o", "chips"
    )
    assert outcome.code == 0, outcome.err
    warned = [line for line in outcome.err.splitlines() if line.startswith("geodistill: warning")]
    assert len(warned) == 1 and "repaired 1 invalid polygon" in warned[0], outcome.err
    assert str(files["bow_tie"]) in warned[0] and "feature 0" in warned[0]
    manifest = json.loads(Path("chips/manifest.json").read_text())
    assert int(manifest["class_histogram"]["1"]) > 0, "both lobes of the bow tie are labelled"


def test_allow_empty_labels_accepts_a_label_that_misses_the_image(files, capsys) -> None:
    from geodistill.cli import tools

    if "--allow-empty-labels" not in Path(tools.__file__).read_text():
        pytest.skip("prepare has no --allow-empty-labels option yet (cli/tools.py)")
    outcome = run_quiet(
        capsys, "prepare", files["image"], "--vector", files["far"], *VECTOR,
        "--allow-empty-labels", "-o", "chips",
    )  # fmt: skip
    assert outcome.code == 0, outcome.err
    warned = [line for line in outcome.err.splitlines() if line.startswith("geodistill: warning")]
    assert len(warned) == 1 and "all background" in warned[0], outcome.err
    manifest = json.loads(Path("chips/manifest.json").read_text())
    assert manifest["class_histogram"] == {"0": 64 * 64}
