"""Whole-scene inference: tiling, seamless blending, georeference, nodata, atomic COG outputs,
band matching, ONNX export and parity, the Lightning loop and the ``infer`` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import rasterio
import torch
from fixtures_small import CRS, TINY_MODEL, chip_transform, cli, torch_threads, write_tif

from geodistill.data.tiling import tile_origins
from geodistill.errors import GeodistillError, GeodistillWarning
from geodistill.export import export_student
from geodistill.inference import (
    InferenceOptions,
    SceneOutputs,
    infer_scenes,
    load_predictor,
    predict_scene,
)
from geodistill.inference.predictors import softmax
from geodistill.inference.tiling import TileGrid
from geodistill.inference.writer import PREDICTION_NODATA
from geodistill.models.checkpoint import ONNX_METADATA_KEY, ModelCard
from geodistill.tasks import SegmentationTask

BANDS = ["b0", "b1", "b2", "b3"]


class FunctionPredictor:
    """A predictor whose output is a known per-pixel function of the input (or a constant)."""

    def __init__(self, rule: str = "threshold", num_classes: int = 2, tile: int = 32) -> None:
        self.rule = rule
        self.card = ModelCard(BANDS, [f"c{k}" for k in range(num_classes)], tile_size=tile)
        self.calls = 0

    def place(self, device: torch.device) -> None:
        pass

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        return softmax(self.logits(batch))

    def logits(self, batch: np.ndarray) -> np.ndarray:
        b0 = np.nan_to_num(batch[:, 0], nan=0.0)
        if self.rule == "constant":
            logits = np.zeros((len(batch), self.card.num_classes, *b0.shape[1:]), np.float32)
            logits[:, -1] = 5.0
            return logits
        # class 1 where band 0 > 0.5, with a probability that varies smoothly with band 0
        return np.stack([0.5 - b0, b0 - 0.5], axis=1).astype(np.float32) * 4


class FailingPredictor(FunctionPredictor):
    def predict(self, batch: np.ndarray) -> np.ndarray:
        if self.calls >= 2:
            raise RuntimeError("device lost")
        return super().predict(batch)


def write_scene(
    path: Path, height: int = 90, width: int = 100, crs: str | None = CRS, names=BANDS
) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    data = rng.uniform(0, 1, size=(len(names), height, width)).astype(np.float32)
    data[:, :10, :15] = -9999.0  # nodata block in every band
    transform = chip_transform(3, size=64)
    path = write_tif(path, data, crs=crs, transform=transform, nodata=-9999.0, descriptions=names)
    return path, data


def expected_probability(data: np.ndarray) -> np.ndarray:
    return softmax(FunctionPredictor().logits(data[None]))[0, 1]


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


# --------------------------------------------------------------------------------------------
# tiling


@pytest.mark.parametrize("length,tile,stride", [(100, 32, 24), (64, 64, 48), (20, 64, 48)])
def test_tiles_cover_the_scene_with_the_last_one_flush(length, tile, stride):
    starts = tile_origins(length, tile, stride)
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s : s + tile] = True
    assert covered.all() and starts[0] == 0
    assert starts[-1] == max(length - tile, 0)
    assert all(b - a <= stride for a, b in zip(starts, starts[1:], strict=False))


def test_weight_profile_is_positive_everywhere():
    grid = TileGrid(height=90, width=100, tile=32, overlap=8)
    assert (grid.row_weights() > 0).all() and (grid.col_weights() > 0).all()
    assert len(grid) == len(grid.rows) * len(grid.cols) == 4 * 4


# --------------------------------------------------------------------------------------------
# the engine


def test_constant_model_gives_a_constant_map_on_the_scene_grid(tmp_path):
    scene, _ = write_scene(tmp_path / "scene.tif")
    out = SceneOutputs(tmp_path / "out" / "map.tif")
    predict_scene(FunctionPredictor("constant", 3), scene, out, InferenceOptions(batch_size=3))
    with rasterio.open(scene) as src, rasterio.open(out.classes) as dst:
        assert dst.crs == src.crs and dst.crs.to_string() == CRS
        assert dst.transform == src.transform
        assert (dst.height, dst.width, dst.count) == (90, 100, 1)
        assert dst.dtypes[0] == "uint8" and dst.nodata == PREDICTION_NODATA
        assert dst.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert dst.profile["tiled"] and dst.compression.name.lower() == "deflate"
        assert json.loads(dst.tags()["class_names"]) == ["c0", "c1", "c2"]
        pred = dst.read(1)
    nodata = np.zeros_like(pred, bool)
    nodata[:10, :15] = True
    assert (pred[nodata] == PREDICTION_NODATA).all()
    assert (pred[~nodata] == 2).all()
    assert sorted(os.listdir(tmp_path / "out")) == ["map.tif"]  # no temporary files left


@pytest.mark.parametrize(
    "height,width,tile,overlap,batch",
    [(90, 100, 32, 8, 3), (90, 100, 32, 0, 16), (64, 130, 48, 20, 1), (20, 30, 64, 16, 4)],
)
def test_known_per_pixel_model_gives_the_exact_mosaic(
    tmp_path, height, width, tile, overlap, batch
):
    scene, data = write_scene(tmp_path / "scene.tif", height, width)
    options = InferenceOptions(tile=tile, overlap=overlap, batch_size=batch, confidence=True)
    options.probabilities = True
    out = SceneOutputs.in_folder(scene, tmp_path / "out", options)
    predict_scene(FunctionPredictor(), scene, out, options)
    nodata = (data == -9999.0).all(0)
    expected = np.where(nodata, PREDICTION_NODATA, data[0] > 0.5).astype(np.uint8)
    np.testing.assert_array_equal(read(out.classes)[0], expected)
    p1 = expected_probability(np.where(data == -9999.0, np.nan, data))
    probabilities = read(out.probabilities).astype(int)
    assert probabilities.shape == (2, height, width)
    assert np.abs(probabilities[1][~nodata] - np.rint(100 * p1[~nodata])).max() <= 1
    assert (probabilities[:, nodata] == PREDICTION_NODATA).all()
    confidence = read(out.confidence)[0].astype(int)
    expected_conf = np.rint(100 * np.maximum(p1, 1 - p1))
    assert np.abs(confidence[~nodata] - expected_conf[~nodata]).max() <= 1
    with rasterio.open(out.confidence) as src:
        assert src.scales == (0.01,) and src.nodata == PREDICTION_NODATA


def test_column_chunks_and_read_ahead_give_the_same_mosaic(tmp_path, monkeypatch):
    from geodistill.inference import scene as scene_module

    scene, data = write_scene(tmp_path / "scene.tif", 70, 100)
    options = InferenceOptions(tile=32, overlap=8)
    whole, chunked = SceneOutputs(tmp_path / "whole.tif"), SceneOutputs(tmp_path / "chunked.tif")
    predict_scene(FunctionPredictor(), scene, whole, options)
    monkeypatch.setattr(scene_module, "WRITE_CHUNK", 24)
    predict_scene(FunctionPredictor(), scene, chunked, options, prefetch=True)
    np.testing.assert_array_equal(read(whole.classes), read(chunked.classes))
    nodata = (data == -9999.0).all(0)
    expected = np.where(nodata, PREDICTION_NODATA, data[0] > 0.5).astype(np.uint8)
    np.testing.assert_array_equal(read(chunked.classes)[0], expected)


def test_flip_tta_keeps_an_equivariant_model_exact_and_costs_four_passes(tmp_path):
    scene, data = write_scene(tmp_path / "scene.tif")
    predictor = FunctionPredictor()
    out = SceneOutputs(tmp_path / "map.tif")
    predict_scene(predictor, scene, out, InferenceOptions(tile=32, overlap=8, tta=True))
    nodata = (data == -9999.0).all(0)
    expected = np.where(nodata, PREDICTION_NODATA, data[0] > 0.5).astype(np.uint8)
    np.testing.assert_array_equal(read(out.classes)[0], expected)
    grid = TileGrid(90, 100, 32, 8)
    assert len(grid.cols) <= 8  # one batch per tile row, four flips each
    assert predictor.calls == 4 * len(grid.rows)


def test_blending_leaves_no_seam_for_a_model_that_sees_tile_borders(tmp_path):
    """Outputs that drift across each tile (a ramp) are averaged smoothly: no jumps at borders."""

    class RampPredictor(FunctionPredictor):
        def predict(self, batch: np.ndarray) -> np.ndarray:
            n, _, h, w = batch.shape
            ramp = np.linspace(0.3, 0.7, w, dtype=np.float32)[None, None, :].repeat(h, 1)
            p = np.broadcast_to(ramp, (n, h, w))
            return np.stack([1 - p, p], axis=1)

    scene, _ = write_scene(tmp_path / "scene.tif", 64, 256)
    options = InferenceOptions(tile=64, overlap=32, probabilities=True)
    out = SceneOutputs.in_folder(scene, tmp_path / "out", options)
    predict_scene(RampPredictor(), scene, out, options)
    row = read(out.probabilities)[1, 40].astype(int)
    # a plain mosaic would jump by ~0.4 at every tile border; the blend changes by <= 2 points
    assert np.abs(np.diff(row[16:])).max() <= 2


def test_band_names_select_and_reorder_the_scene_bands(tmp_path):
    names = ["extra", "b3", "b2", "b1", "b0"]
    scene, data = write_scene(tmp_path / "scene.tif", names=names)
    out = SceneOutputs(tmp_path / "map.tif")
    predict_scene(FunctionPredictor(), scene, out, InferenceOptions(tile=32, overlap=8))
    nodata = (data == -9999.0).all(0)
    expected = np.where(nodata, PREDICTION_NODATA, data[4] > 0.5).astype(np.uint8)
    np.testing.assert_array_equal(read(out.classes)[0], expected)


@pytest.mark.parametrize(
    "names,bands,message",
    [
        (["b0", "b1", "b2"], None, "missing b3"),
        (["b0", "b1", "x", "b3", "y"], None, "missing b2"),
        (["b0", "b1", "b2", "b3", "b4"], [0, 1, 2], "takes 4 bands"),
        (["b0", "b1", "b2", "b3"], ["b0", "nir"], "no band named 'nir'"),
    ],
)
def test_bands_that_do_not_match_the_model_are_refused(tmp_path, names, bands, message):
    scene, _ = write_scene(tmp_path / "scene.tif", names=names)
    out = SceneOutputs(tmp_path / "map.tif")
    with pytest.raises(GeodistillError, match=message) as error:
        predict_scene(FunctionPredictor(), scene, out, InferenceOptions(bands=bands))
    assert str(scene) in str(error.value)
    assert not out.classes.exists()


def test_scene_without_band_names_is_read_in_order_when_the_count_matches(tmp_path):
    data = np.random.default_rng(1).uniform(size=(4, 40, 40)).astype(np.float32)
    out = SceneOutputs(tmp_path / "map.tif")
    predict_scene(FunctionPredictor(), write_tif(tmp_path / "four.tif", data), out)
    np.testing.assert_array_equal(read(out.classes)[0], (data[0] > 0.5).astype(np.uint8))
    with pytest.raises(GeodistillError, match="missing b0, b1, b2, b3"):
        predict_scene(FunctionPredictor(), write_tif(tmp_path / "three.tif", data[:3]), out)


def test_unnamed_bands_chosen_in_training_are_found_again(tmp_path):
    """A model trained on bands 2 and 4 of unnamed files calls them band_2 and band_4."""
    data = np.random.default_rng(1).uniform(size=(5, 40, 40)).astype(np.float32)
    predictor = FunctionPredictor()
    predictor.card.band_names = ["band_4", "band_2"]
    out = SceneOutputs(tmp_path / "map.tif")
    predict_scene(predictor, write_tif(tmp_path / "five.tif", data), out)
    np.testing.assert_array_equal(read(out.classes)[0], (data[3] > 0.5).astype(np.uint8))


def test_scene_without_crs_is_predicted_with_a_warning(tmp_path):
    scene, _ = write_scene(tmp_path / "scene.tif", crs=None)
    out = SceneOutputs(tmp_path / "map.tif")
    with pytest.warns(GeodistillWarning, match="no CRS"):
        predict_scene(FunctionPredictor(), scene, out, InferenceOptions(tile=32, overlap=8))
    with rasterio.open(out.classes) as dst:
        assert dst.crs is None and dst.read(1).shape == (90, 100)


def test_failure_mid_scene_leaves_no_output_and_keeps_an_old_one(tmp_path):
    scene, _ = write_scene(tmp_path / "scene.tif")
    options = InferenceOptions(tile=32, overlap=8, batch_size=2, confidence=True, overwrite=True)
    out = SceneOutputs.in_folder(scene, tmp_path / "out", options)
    out.classes.parent.mkdir()
    out.classes.write_bytes(b"old map")
    with pytest.raises(RuntimeError, match="device lost"):
        predict_scene(FailingPredictor(), scene, out, options)
    assert out.classes.read_bytes() == b"old map"
    assert sorted(os.listdir(out.classes.parent)) == [out.classes.name]


def test_existing_output_needs_overwrite(tmp_path):
    scene, _ = write_scene(tmp_path / "scene.tif")
    out = SceneOutputs(tmp_path / "map.tif")
    out.classes.write_bytes(b"keep me")
    with pytest.raises(GeodistillError, match="--overwrite"):
        predict_scene(FunctionPredictor(), scene, out)
    assert out.classes.read_bytes() == b"keep me"
    predict_scene(FunctionPredictor(), scene, out, InferenceOptions(overwrite=True))
    assert read(out.classes).shape == (1, 90, 100)


def test_truncated_raster_is_one_clear_error_and_no_output(tmp_path):
    scene, _ = write_scene(tmp_path / "scene.tif", 256, 256)
    size = scene.stat().st_size
    with open(scene, "r+b") as handle:
        handle.truncate(size // 2)
    out = SceneOutputs(tmp_path / "out" / "map.tif")
    with pytest.raises(GeodistillError, match=r"scene\.tif: cannot read"):
        predict_scene(FunctionPredictor(), scene, out, InferenceOptions(tile=64, overlap=16))
    assert not out.classes.exists()
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


@pytest.mark.parametrize(
    "options,message",
    [
        (InferenceOptions(tile=32, overlap=32), "overlap"),
        (InferenceOptions(tile=4), "tile size"),
        (InferenceOptions(batch_size=0), "batch size"),
    ],
)
def test_bad_options_are_refused(tmp_path, options, message):
    scene, _ = write_scene(tmp_path / "scene.tif")
    with pytest.raises(GeodistillError, match=message):
        predict_scene(FunctionPredictor(), scene, SceneOutputs(tmp_path / "m.tif"), options)


# --------------------------------------------------------------------------------------------
# checkpoints, ONNX export and parity


def save_checkpoint(path: Path, seed: int = 0, tile: int = 32) -> Path:
    """A tiny random student saved like a trained geodistill checkpoint (no Trainer needed)."""
    torch.manual_seed(seed)
    task = SegmentationTask(
        in_channels=4, num_classes=2, class_names=["land", "water"], **TINY_MODEL
    )
    normalizer = task.model.normalizer
    normalizer.mean.copy_(torch.full((4,), 0.5))
    normalizer.std.copy_(torch.full((4,), 0.3))
    torch.save(
        {
            "state_dict": task.state_dict(),
            "hyper_parameters": dict(task.hparams),
            "geodistill": {
                "band_names": BANDS,
                "class_names": ["land", "water"],
                "tile_size": tile,
            },
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("exported")
    checkpoint = save_checkpoint(root / "student.ckpt")
    onnx_path = export_student(checkpoint, root / "student.onnx")
    return checkpoint, onnx_path


def test_onnx_export_carries_the_card_and_matches_pytorch(exported):
    checkpoint, onnx_path = exported
    model = onnx.load(str(onnx_path))
    meta = {p.key: p.value for p in model.metadata_props}
    card = json.loads(meta[ONNX_METADATA_KEY])
    assert card["band_names"] == BANDS and card["class_names"] == ["land", "water"]
    assert card["tile_size"] == 32 and card["normalization"]["mean"] == [0.5] * 4
    assert not any("teacher" in init.name for init in model.graph.initializer)
    torch_predictor = load_predictor(checkpoint)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    for shape in [(1, 4, 32, 32), (3, 4, 64, 96)]:  # dynamic batch and tile size
        x = rng.uniform(-1, 2, shape).astype(np.float32)
        x[:, :, :5, :7] = np.nan
        onnx_logits = session.run(None, {"image": x})[0]
        with torch.inference_mode():
            torch_logits = torch_predictor.model(torch.from_numpy(x)).numpy()
        assert onnx_logits.shape == (shape[0], 2, *shape[2:])
        np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-4, rtol=0)


def test_onnx_export_keeps_batch_and_size_dynamic_for_channels_last_encoders(tmp_path):
    # timm ConvNeXt's channels-last layer norms let the exporter fix the batch to the traced one
    task = SegmentationTask(
        in_channels=3,
        num_classes=2,
        encoder="tu-convnext_atto",
        arch_kwargs={"encoder_depth": 4, "decoder_channels": [16, 8, 8, 4]},
    )
    path = tmp_path / "convnext.ckpt"
    state = {f"model.{k}": v for k, v in task.model.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": dict(task.hparams)}, path)
    with torch_threads(1):
        onnx_path = export_student(path, tmp_path / "convnext.onnx")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(0, 1, (3, 3, 64, 96)).astype(np.float32)
    with torch.inference_mode():
        expected = task.model.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session.run(None, {"image": x})[0], expected, atol=1e-4, rtol=0)


def test_infer_with_onnx_equals_infer_with_the_checkpoint(exported, tmp_path):
    checkpoint, onnx_path = exported
    scene, _ = write_scene(tmp_path / "scene.tif", 70, 90)
    options = InferenceOptions(overlap=8, probabilities=True)
    results = {}
    for name, model in (("ckpt", checkpoint), ("onnx", onnx_path)):
        (outputs,) = infer_scenes(model, [scene], tmp_path / name, options, progress=False)
        results[name] = (read(outputs.classes), read(outputs.probabilities).astype(int))
    classes_ckpt, probs_ckpt = results["ckpt"]
    classes_onnx, probs_onnx = results["onnx"]
    # identical up to probability ties at 1e-6, which a random network does not produce
    assert (classes_ckpt != classes_onnx).mean() < 1e-3
    assert np.abs(probs_ckpt - probs_onnx).max() <= 1


def test_onnx_without_geodistill_metadata_is_refused(exported, tmp_path):
    _, onnx_path = exported
    model = onnx.load(str(onnx_path))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with pytest.raises(GeodistillError, match="no geodistill metadata"):
        load_predictor(bare)


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("broken.onnx", b"not a model", "cannot load the ONNX model"),
        ("broken.ckpt", b"not a checkpoint", "cannot read the checkpoint"),
        ("model.h5", b"", "unknown model file type"),
    ],
)
def test_unreadable_model_files_are_one_clear_error(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(GeodistillError, match=message):
        load_predictor(path)


def test_export_refuses_unknown_format_and_existing_output(exported, tmp_path):
    checkpoint, onnx_path = exported
    with pytest.raises(GeodistillError, match="unknown export format"):
        export_student(checkpoint, tmp_path / "model.pb")
    before = onnx_path.read_bytes()
    with pytest.raises(GeodistillError, match="exists"):
        export_student(checkpoint, onnx_path)
    assert onnx_path.read_bytes() == before


# --------------------------------------------------------------------------------------------
# many scenes, the Lightning loop and the command


def test_infer_many_scenes_from_a_glob(exported, tmp_path):
    checkpoint, _ = exported
    for name in ("a", "b"):
        write_scene(tmp_path / "scenes" / f"{name}.tif", 40, 50)
    outputs = infer_scenes(
        checkpoint, [str(tmp_path / "scenes" / "*.tif")], tmp_path / "out", progress=False
    )
    assert [o.classes.name for o in outputs] == ["a_classes.tif", "b_classes.tif"]
    assert all(read(o.classes).shape == (1, 40, 50) for o in outputs)


def test_all_scenes_are_checked_before_any_is_predicted(exported, tmp_path):
    checkpoint, _ = exported
    good, _ = write_scene(tmp_path / "a.tif", 40, 50)
    bad, _ = write_scene(tmp_path / "b.tif", 40, 50, names=["b0", "b1", "b2"])
    with pytest.raises(GeodistillError, match="b.tif"):
        infer_scenes(checkpoint, [good, bad], tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "a_classes.tif").exists()


def test_two_scenes_with_one_output_name_are_refused(exported, tmp_path):
    checkpoint, _ = exported
    first, _ = write_scene(tmp_path / "x" / "scene.tif", 40, 50)
    second, _ = write_scene(tmp_path / "y" / "scene.tif", 40, 50)
    with pytest.raises(GeodistillError, match="two scenes would write scene_classes.tif"):
        infer_scenes(checkpoint, [first, second], tmp_path / "out", progress=False)


def test_infer_and_export_commands(exported, tmp_path, capsys):
    checkpoint, _ = exported
    scene, _ = write_scene(tmp_path / "scene.tif", 40, 50)
    code, out, _ = cli(capsys, "export", str(checkpoint), "-o", str(tmp_path / "m.onnx"))
    assert code == 0 and (tmp_path / "m.onnx").is_file()
    args = ["infer", str(tmp_path / "m.onnx"), str(scene), "-o", str(tmp_path / "out"), "--quiet"]
    code, out, err = cli(capsys, *args, "--confidence", "--tta", "--overlap", "8")
    assert code == 0, err
    assert "scene_classes.tif" in out and "scene_confidence.tif" in out
    code, out, err = cli(capsys, *args)
    assert code == 2 and err.count("\n") == 1 and "--overwrite" in err
    assert cli(capsys, *args, "--overwrite")[0] == 0


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--bands", "0,1"], "takes 4 bands"),
        (["--overlap", "99"], "overlap must be"),
    ],
)
def test_infer_bad_input_is_one_line(exported, tmp_path, capsys, extra, message):
    checkpoint, _ = exported
    scene, _ = write_scene(tmp_path / "scene.tif", 40, 50)
    code, out, err = cli(capsys, "infer", str(checkpoint), str(scene), "-o", str(tmp_path), *extra)
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_infer_without_crs_warns_in_one_line(exported, tmp_path, capsys):
    checkpoint, _ = exported
    scene, _ = write_scene(tmp_path / "scene.tif", 40, 50, crs=None)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        code, _, err = cli(capsys, "infer", str(checkpoint), str(scene), "-o", str(tmp_path / "o"))
    assert code == 0 and "geodistill: warning:" in err and "no CRS" in err


def test_infer_shares_scenes_across_two_ddp_processes(exported, tmp_path):
    checkpoint, _ = exported
    for name in ("a", "b", "c"):
        write_scene(tmp_path / "scenes" / f"{name}.tif", 40, 50)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PL_", "LOCAL_RANK"))}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    script = Path(sys.executable).with_name("geodistill")
    result = subprocess.run(
        [
            str(script),
            "infer",
            str(checkpoint),
            str(tmp_path / "scenes"),
            "-o",
            "out",
            "--accelerator",
            "cpu",
            "--devices",
            "2",
            "--quiet",
        ],  # fmt: skip
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    written = sorted(os.listdir(tmp_path / "out"))
    assert written == ["a_classes.tif", "b_classes.tif", "c_classes.tif"]


@pytest.mark.parametrize(
    ("width", "expected_mib"),
    [(2048, None), (4096, 52), (16384, None)],  # None: the default cache
)
def test_gdal_cache_holds_a_tile_row_of_blocks_when_that_is_cheap(width, expected_mib):
    """A 256-high tile row spans two rows of 512² blocks: the cache holds them (each block is
    decoded once) when that fits under the limit, else keeps the default size."""
    from types import SimpleNamespace

    from geodistill.inference.scene import (
        GDAL_CACHE_BYTES,
        WRITE_CACHE_BYTES,
        scene_cache_bytes,
    )

    src = SimpleNamespace(block_shapes=[(512, 512)] * 6, width=width, dtypes=["uint16"] * 6)
    size = scene_cache_bytes(src, 256)
    if expected_mib is None:
        assert size == GDAL_CACHE_BYTES
    else:
        assert size == 2 * 512 * width * 12 + WRITE_CACHE_BYTES  # block rows x width x pixel
        assert round(size / 2**20) == expected_mib
