"""``geodistill export --quantize int8``: a calibrated, checked int8 ONNX student, or nothing."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import rasterio
from fixtures_small import torch_threads, write_tif
from harness import assert_refused, run_cli, tree_state


def _calibration_chips(trained_run: dict[str, Path], folder: Path) -> Path:
    """The run's own chips, one of them with a nodata (NaN) corner as real scenes have."""
    shutil.copytree(trained_run["data"] / "images", folder)
    first = sorted(folder.glob("*.tif"))[0]
    with rasterio.open(first) as src:
        image, transform, names = src.read(), src.transform, list(src.descriptions)
    image[:, :16, :16] = np.nan
    first.unlink()
    write_tif(first, image, transform=transform, nodata=float("nan"), descriptions=names)
    return folder


def test_int8_export_is_smaller_carries_card_and_predicts(tmp_path, capsys, trained_run):
    from geodistill.inference.predictors import load_predictor
    from geodistill.quantize import QUANTIZATION_METADATA_KEY

    chips = _calibration_chips(trained_run, tmp_path / "chips")
    float_path, int8_path = tmp_path / "student.onnx", tmp_path / "student_int8.onnx"
    with torch_threads(1):
        assert run_cli(capsys, "export", trained_run["last"], "-o", float_path).code == 0
        outcome = run_cli(
            capsys,
            "export",
            trained_run["last"],
            "-o",
            int8_path,
            "--quantize",
            "int8",
            "--calibration",
            chips,
            "--calibration-count",
            "3",
        )
    assert outcome.code == 0, outcome.err
    assert "argmax agreement" in outcome.out and "held-out" in outcome.out
    assert int8_path.stat().st_size < 0.5 * float_path.stat().st_size

    quantized, reference = load_predictor(int8_path), load_predictor(float_path)
    # the same card (infer reads it as for float), saying it is quantized
    assert quantized.card.quantization == "int8" and reference.card.quantization is None
    assert replace(quantized.card, quantization=None) == reference.card
    meta = quantized.session.get_modelmeta().custom_metadata_map  # type: ignore[attr-defined]
    record = json.loads(meta[QUANTIZATION_METADATA_KEY])
    assert record["quantization"] == "int8"
    agreement = record["agreement"]
    assert agreement["calibration_tiles"] == 3 and agreement["check_tiles"] == 1
    assert min(agreement["calibration_agreement"], agreement["check_agreement"]) >= 0.98
    graph = onnx.load(str(int8_path)).graph
    assert sum(node.op_type == "QuantizeLinear" for node in graph.node) > 5
    assert next(i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8)

    tile = np.random.default_rng(1).uniform(0, 1, (2, 4, 64, 64)).astype(np.float32)
    tile[:, :, :8, :8] = np.nan  # nodata still handled by the float normaliser
    probs = quantized.predict(tile)
    assert probs.shape == (2, 2, 64, 64)
    assert np.isfinite(probs).all() and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    same = (probs.argmax(1) == reference.predict(tile).argmax(1)).mean()
    assert same > 0.9

    scene = sorted(chips.glob("*.tif"))[1]
    with torch_threads(1):
        infer = run_cli(capsys, "infer", int8_path, scene, "-o", tmp_path / "maps")
    assert infer.code == 0, infer.err
    with rasterio.open(tmp_path / "maps" / f"{scene.stem}_classes.tif") as src:
        assert src.shape == (64, 64)


def test_int8_export_refused_beyond_tolerance_writes_nothing(tmp_path, capsys, trained_run):
    out = tmp_path / "out"
    out.mkdir()
    with torch_threads(1):
        outcome = run_cli(
            capsys,
            "export",
            trained_run["last"],
            "-o",
            out / "s8.onnx",
            "--quantize",
            "int8",
            "--calibration",
            trained_run["data"] / "images",
            "--max-disagreement",
            "0",
        )
    assert_refused(outcome, "s8.onnx", "disagrees with the float model", "nothing written")
    assert tree_state(out) == {}
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("empty folder", ("chips", "no GeoTIFF")),
        ("not a raster", ("chip_00.tif",)),
        ("no such folder", ("missing", "no such calibration")),
        ("empty pattern", ("chips/*.tif", "no GeoTIFF", "matches")),
        ("wrong bands", ("chip_00.tif", "bands")),
        ("no calibration", ("--quantize needs --calibration",)),
        ("ckpt output", ("s8.ckpt", "ONNX")),
        ("bad tolerance", ("--max-disagreement",)),
        ("calibration alone", ("--calibration", "--quantize int8")),
    ],
)
def test_int8_export_bad_requests_one_line(tmp_path, capsys, trained_run, case, needles):
    chips = tmp_path / "chips"
    chips.mkdir()
    output = tmp_path / "out" / "s8.onnx"
    output.parent.mkdir()
    options = ["--quantize", "int8", "--calibration", str(chips)]
    if case == "not a raster":
        (chips / "chip_00.tif").write_bytes(b"not a tiff")
    elif case == "no such folder":
        options[-1] = str(tmp_path / "missing")
    elif case == "empty pattern":
        options[-1] = str(chips / "*.tif")
    elif case == "wrong bands":
        write_tif(chips / "chip_00.tif", np.zeros((2, 64, 64), np.float32))
    elif case == "no calibration":
        options = ["--quantize", "int8"]
    elif case == "ckpt output":
        output = output.with_suffix(".ckpt")
    elif case == "bad tolerance":
        shutil.copytree(trained_run["data"] / "images", chips, dirs_exist_ok=True)
        options += ["--max-disagreement", "1.5"]
    elif case == "calibration alone":
        options = ["--calibration", str(chips)]
    outcome = run_cli(capsys, "export", trained_run["last"], "-o", output, *options)
    assert_refused(outcome, *needles)
    assert tree_state(output.parent) == {}
