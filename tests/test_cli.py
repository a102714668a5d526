"""The ``geodistill`` command: help, fit/test/predict from YAML, data tools, DDP, and bad input.

Most commands run in-process through :func:`geodistill.cli.main.main` (fast: one import of
Lightning); a few run the real console script as a subprocess to check what a user sees, and
the DDP fit must be a subprocess because Lightning re-launches the command for rank 1.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from fixtures_small import (
    CRS,
    chip_transform,
    cli,
    config_dict,
    make_dataset,
    write_config,
    write_tif,
)
from harness import assert_user_error, script
from shapely.geometry import box

# Imported here, not first inside a test: Lightning binds its log handler to the sys.stderr of
# the moment, which must not be one test's capsys stream (closed after that test).
from geodistill.cli import lightning_cli  # noqa: F401
from geodistill.cli.main import main
from geodistill.errors import GeodistillError

pytestmark = pytest.mark.usefixtures("in_tmp")


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("geodistill: error:")]


def assert_debug_raises(*args: str) -> BaseException:
    """With --debug the exception propagates (the interpreter prints its traceback)."""
    with pytest.raises(Exception) as raised:  # noqa: PT011 - any exception type is fine here
        main(["--debug", *args])
    return raised.value


# --------------------------------------------------------------------------------------------
# help


def test_top_level_help_lists_every_command(tmp_path):
    result = script("--help", cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    for command in ("fit", "validate", "test", "predict", "prepare", "stats", "demo"):
        assert f"  {command} " in result.stdout
    assert "--debug" in result.stdout


@pytest.mark.parametrize(
    ("command", "purpose"),
    [
        ("fit", "Train a segmentation model"),
        ("validate", "validation split"),
        ("test", "test_metrics.json"),
        ("predict", "GeoTIFF class maps"),
        ("prepare", "Rasterise vector labels"),
        ("stats", "mean/std"),
        ("demo", "SYNTHETIC"),
    ],
)
def test_subcommand_help(capsys, command, purpose):
    code, out, _ = cli(capsys, command, "--help")
    assert code == 0
    assert f"geodistill {command}" in out or f"geodistill [options] {command}" in out
    assert purpose in " ".join(out.split())


# --------------------------------------------------------------------------------------------
# fit -> validate -> test -> predict from YAML


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """``geodistill fit`` on the 12-chip learnable fixture; returns (config, out dir, data)."""
    tmp = tmp_path_factory.mktemp("cli_fit")
    data = make_dataset(tmp / "data", n=12)
    config = write_config(
        tmp / "fit.yaml", config_dict(data, tmp / "out", max_epochs=3, predict=data / "images")
    )
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code = main(["fit", "--config", str(config)])
    finally:
        os.chdir(cwd)
    assert code == 0
    return config, tmp / "out", data


def newest_log_dir(out: Path) -> Path:
    return max((out / "logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))


def test_fit_writes_checkpoints_logs_and_config(fitted):
    _, out, _ = fitted
    checkpoints = sorted(p.name for p in (out / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in checkpoints and any(n.startswith("best-") for n in checkpoints)
    log_dir = out / "logs" / "version_0"
    assert (log_dir / "config.yaml").exists()
    with (log_dir / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/mIoU")]
    assert len(rows) == 3


def test_validate_test_and_predict_from_yaml(fitted, capsys):
    config, out, data = fitted
    (best,) = (out / "checkpoints").glob("best-*.ckpt")
    code, _, err = cli(capsys, "validate", "--config", str(config), "--ckpt_path", str(best))
    assert code == 0, err

    code, _, err = cli(capsys, "test", "--config", str(config), "--ckpt_path", str(best))
    assert code == 0, err
    metrics = json.loads((newest_log_dir(out) / "test_metrics.json").read_text())
    assert metrics["mIoU"] > 0.6  # 3 epochs reach ~0.85; chance is ~0.3
    assert (newest_log_dir(out) / "test_metrics.md").exists()

    code, _, err = cli(capsys, "predict", "--config", str(config), "--ckpt_path", str(best))
    assert code == 0, err
    predictions = sorted((out / "predictions").glob("*.tif"))
    assert [p.name for p in predictions] == [f"chip_{i:02d}_pred.tif" for i in range(12)]
    correct = []
    for i, path in enumerate(predictions):
        with rasterio.open(path) as pred, rasterio.open(data / f"images/chip_{i:02d}.tif") as src:
            assert pred.crs == src.crs and pred.crs.to_string() == CRS
            assert pred.transform == src.transform == chip_transform(i)
            assert (pred.width, pred.height, pred.count) == (64, 64, 1)
            values = pred.read(1)
        with rasterio.open(data / f"labels/chip_{i:02d}.tif") as lab:
            correct.append(float((values == lab.read(1)).mean()))
    assert np.mean(correct) > 0.85


def test_wrong_band_count_for_a_trained_checkpoint(fitted, capsys, tmp_path):
    config, out, _ = fitted
    checkpoint = out / "checkpoints" / "last.ckpt"
    three = make_dataset(tmp_path / "three", n=4, bands=3)
    bad = write_config(tmp_path / "three.yaml", config_dict(three, tmp_path / "out"))
    args = ("test", "--config", str(bad), "--ckpt_path", str(checkpoint))
    code, _, err = cli(capsys, *args)
    assert_user_error(code, err, str(checkpoint), "trained on 4 bands", "the data has 3")
    assert isinstance(assert_debug_raises(*args), GeodistillError)


# --------------------------------------------------------------------------------------------
# DDP on CPU through the console script


def test_ddp_fit_on_two_cpu_processes_then_test(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", n=12)
    config = write_config(tmp_path / "ddp.yaml", config_dict(data, tmp_path / "out"))
    result = script(
        "fit",
        "--config",
        str(config),
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        "--trainer.max_epochs=2",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "distributed_backend=gloo" in result.stdout + result.stderr
    assert "MEMBER: 2/2" in result.stdout + result.stderr
    last = tmp_path / "out" / "checkpoints" / "last.ckpt"
    assert last.exists()
    assert list((tmp_path / "out" / "checkpoints").glob("best-*.ckpt"))
    with (tmp_path / "out" / "logs" / "version_0" / "metrics.csv").open() as f:
        miou = [float(r["val/mIoU"]) for r in csv.DictReader(f) if r.get("val/mIoU")]
    assert len(miou) == 2 and all(0.0 <= v <= 1.0 for v in miou)

    code, _, err = cli(capsys, "test", "--config", str(config), "--ckpt_path", str(last))
    assert code == 0, err
    metrics = json.loads((newest_log_dir(tmp_path / "out") / "test_metrics.json").read_text())
    assert 0.0 <= metrics["mIoU"] <= 1.0


# --------------------------------------------------------------------------------------------
# data tools


def test_stats_writes_json_with_one_entry_per_band(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", n=3, bands=5)
    out = tmp_path / "stats" / "bands.json"
    code, stdout, err = cli(capsys, "stats", str(data / "images"), "-o", str(out))
    assert code == 0, err
    stats = json.loads(out.read_text())
    assert stats["band_names"] == ["b0", "b1", "b2", "b3", "b4"]
    for key in ("low", "high", "mean", "std"):
        assert len(stats[key]) == 5
    assert all(lo < hi for lo, hi in zip(stats["low"], stats["high"], strict=True))
    assert f"wrote {out}" in stdout


def write_scene(path: Path) -> Path:
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1000, size=(4, 64, 96)).astype(np.uint16)
    return write_tif(
        path,
        image,
        transform=chip_transform(0),
        nodata=0,
        descriptions=["blue", "green", "red", "nir"],
    )


def test_prepare_vector_labels_into_chips_and_manifest(tmp_path, capsys):
    scene = write_scene(tmp_path / "scene.tif")
    x0, y0 = chip_transform(0).c, chip_transform(0).f
    # A building 20 x 10 pixels at rows 5..15, cols 40..60 (10 m pixels).
    building = box(x0 + 400, y0 - 150, x0 + 600, y0 - 50)
    vector = tmp_path / "labels.geojson"
    gpd.GeoDataFrame({"class": ["building"]}, geometry=[building], crs=CRS).to_file(vector)
    out = tmp_path / "chips"
    code, stdout, err = cli(
        capsys,
        "prepare",
        str(scene),
        "--vector",
        str(vector),
        "-o",
        str(out),
        "--chip-size",
        "32",
        "--classes",
        "background,building",
    )
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["chips"]) == 6  # 2 rows x 3 cols of 32-pixel chips
    assert manifest["classes"] == ["background", "building"]
    assert manifest["class_histogram"] == {"0": 64 * 96 - 200, "1": 200}
    assert manifest["bands"] == ["blue", "green", "red", "nir"]
    assert len(list((out / "images").glob("*.tif"))) == 6
    with rasterio.open(out / "labels" / "scene_r0_c32.tif") as src:
        assert src.crs.to_string() == CRS
        assert src.transform == chip_transform(0) @ rasterio.Affine.translation(32, 0)
        assert int((src.read(1) == 1).sum()) == 200
    assert "manifest.json" in stdout


def test_prepare_maps_attribute_values_to_classes(tmp_path, capsys):
    """A footprint layer whose only attribute says ``building: yes`` (OpenStreetMap style)."""
    scene = write_scene(tmp_path / "scene.tif")
    x0, y0 = chip_transform(0).c, chip_transform(0).f
    building = box(x0 + 400, y0 - 150, x0 + 600, y0 - 50)
    vector = tmp_path / "osm.geojson"
    gpd.GeoDataFrame({"building": ["yes"]}, geometry=[building], crs=CRS).to_file(vector)
    args = ["prepare", str(scene), "--vector", str(vector), "--class-field", "building"]
    args += ["--classes", "background,building", "--chip-size", "32"]
    code, _, err = cli(capsys, *args, "-o", str(tmp_path / "refused"))
    assert code == 2 and "unknown class 'yes'" in err
    code, _, err = cli(capsys, *args, "--class-values", "yes=building", "-o", str(tmp_path / "c"))
    assert code == 0, err
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["class_histogram"] == {"0": 64 * 96 - 200, "1": 200}
    code, _, err = cli(capsys, *args, "--class-values", "yes", "-o", str(tmp_path / "d"))
    assert code == 2 and "value=class pairs" in err


def test_prepare_ignores_label_values_that_mean_no_data(tmp_path, capsys):
    scene = write_scene(tmp_path / "scene.tif")
    label = np.zeros((64, 96), np.int16)
    label[:10, :] = -1  # LabelHand style: -1 is "no data", but no nodata value is declared
    label[20:30, 40:60] = 1
    label_path = write_tif(tmp_path / "label.tif", label, transform=chip_transform(0))
    args = ["prepare", str(scene), "--label", str(label_path), "--chip-size", "32"]
    code, _, err = cli(capsys, *args, "-o", str(tmp_path / "refused"))
    assert code == 2 and "--ignore-values" in err
    code, _, err = cli(capsys, *args, "--ignore-values=-1", "-o", str(tmp_path / "chips"))
    assert code == 0, err
    manifest = json.loads((tmp_path / "chips" / "manifest.json").read_text())
    assert manifest["class_histogram"] == {"0": 64 * 96 - 10 * 96 - 200, "1": 200}
    with rasterio.open(tmp_path / "chips" / "labels" / "scene_r0_c0.tif") as src:
        assert (src.read(1)[:10] == 255).all()


def test_prepare_failure_leaves_nothing_at_the_output(tmp_path, capsys):
    scene = write_scene(tmp_path / "scene.tif")
    label = np.zeros((64, 96), dtype=np.uint8)
    label[40:, 70:] = 5  # only the last chip holds a class id beyond the class list
    label_path = write_tif(tmp_path / "label.tif", label, transform=chip_transform(0))
    out = tmp_path / "results" / "chips"
    args = (
        "prepare",
        str(scene),
        "--label",
        str(label_path),
        "-o",
        str(out),
        "--chip-size",
        "32",
        "--classes",
        "background,building",
    )
    code, _, err = cli(capsys, *args)
    assert_user_error(code, err, str(label_path), "class ids [5]")
    assert not out.exists()
    assert not out.parent.exists()  # no temporary chip folder, nor the parent made for it
    assert isinstance(assert_debug_raises(*args), GeodistillError)


def test_stats_failure_leaves_nothing_at_the_output(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", n=3)
    corrupt = data / "images" / "chip_01.tif"
    corrupt.write_bytes(corrupt.read_bytes()[:500])
    out = tmp_path / "stats" / "bands.json"
    code, _, err = cli(capsys, "stats", str(data / "images"), "-o", str(out))
    assert_user_error(code, err, str(corrupt), "cannot read")
    assert not out.parent.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = cli(capsys, "stats", str(empty), "-o", str(out))
    assert_user_error(code, err, str(empty), "no image files")
    assert not out.parent.exists()


# --------------------------------------------------------------------------------------------
# bad input: one clear line without --debug, a traceback with it


def bad_fit_config(tmp_path: Path, damage, **data) -> tuple[Path, Path]:
    """A 4-chip dataset damaged by ``damage(root)``; returns (config, damaged file or folder)."""
    root = make_dataset(tmp_path / "data", n=4)
    target = damage(root)
    config = config_dict(root, tmp_path / "out", max_epochs=1, data=data)
    return write_config(tmp_path / "bad.yaml", config), target


def small_label(root: Path) -> Path:
    return write_tif(
        root / "labels/chip_01.tif", np.zeros((32, 32), np.uint8), transform=chip_transform(1)
    )


def label_in_degrees(root: Path) -> Path:
    return write_tif(
        root / "labels/chip_02.tif",
        np.zeros((64, 64), np.uint8),
        crs="EPSG:4326",
        transform=chip_transform(2),
    )


def garbage_images(root: Path) -> Path:
    for path in (root / "images").glob("*.tif"):
        path.write_bytes(b"this is not a GeoTIFF " * 20)
    return root / "images"  # the message names the first file read, inside this folder


def empty_folder(root: Path) -> Path:
    shutil.rmtree(root / "images")
    (root / "images").mkdir()
    return root / "images"


def labels_out_of_range(root: Path) -> Path:
    for i in range(4):
        write_tif(
            root / f"labels/chip_{i:02d}.tif",
            np.full((64, 64), 7, np.uint8),
            transform=chip_transform(i),
        )
    return root / "labels"


BAD_INPUTS = {
    "size mismatch": (small_label, "label size 32x32 does not match"),
    "crs mismatch": (label_in_degrees, "label CRS EPSG:4326 does not match"),
    "corrupt raster": (garbage_images, "cannot read raster"),
    "empty folder": (empty_folder, "no image files"),
    "label values": (labels_out_of_range, "label values [7] are outside the 2 classes"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_clear_line(tmp_path, capsys, case):
    damage, problem = BAD_INPUTS[case]
    config, target = bad_fit_config(tmp_path, damage)
    code, _, err = cli(capsys, "fit", "--config", str(config))
    assert_user_error(code, err, str(target), problem)
    raised = assert_debug_raises("fit", "--config", str(config))
    assert problem in str(raised)
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_bad_input_found_in_a_dataloader_worker_is_one_clear_line(tmp_path, capsys):
    # PyTorch re-raises a worker's error with the worker's traceback in its message.
    config, target = bad_fit_config(tmp_path, labels_out_of_range, num_workers=1)
    code, _, err = cli(capsys, "fit", "--config", str(config))
    assert_user_error(code, err, str(target), "label values [7] are outside the 2 classes")


def test_unknown_config_key_is_reported_by_name(tmp_path, capsys):
    root = make_dataset(tmp_path / "data", n=4)
    config = config_dict(root, tmp_path / "out")
    config["data"]["init_args"]["patch_sise"] = 32
    path = write_config(tmp_path / "typo.yaml", config)
    code, _, err = cli(capsys, "fit", "--config", str(path))
    assert code != 0
    assert "patch_sise" in err
    assert "Traceback" not in err
    assert_debug_raises("fit", "--config", str(path))


def test_console_script_bad_input_with_and_without_debug(tmp_path):
    """What a user really sees: one line, exit status 2; --debug adds the traceback."""
    config, target = bad_fit_config(tmp_path, empty_folder)
    plain = script("fit", "--config", str(config), cwd=tmp_path)
    assert plain.returncode == 2
    assert "Traceback" not in plain.stderr
    (line,) = error_lines(plain.stderr)
    assert str(target) in line and "no image files" in line
    debug = script("--debug", "fit", "--config", str(config), cwd=tmp_path)
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr
    assert "GeodistillError" in debug.stderr
