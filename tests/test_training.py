"""Students, losses, schedules, a tiny end-to-end fit and whole-scene prediction.

Everything runs on CPU on tiny inputs: 64x64 chips and students with a 3-stage encoder and a slim
decoder (see ``fixtures_small``), so the whole file stays well under a minute.
"""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import rasterio
import torch
from fixtures_small import (
    CLASSES,
    TINY_MODEL,
    make_dataset,
)
from safetensors.torch import save_file
from torch import Tensor, nn

from geodistill.data import Domain, GeoSegDataModule, Source
from geodistill.data.raster import read_image
from geodistill.errors import GeodistillError
from geodistill.experiment import fit_and_test
from geodistill.inference import InferenceOptions, SceneOutputs, TorchPredictor, predict_scene
from geodistill.inference.predictors import card_from_task
from geodistill.losses import build_segmentation_loss
from geodistill.models import create_student, load_local_weights
from geodistill.tasks import SegmentationTask
from geodistill.tasks.schedules import warmup_decay

ENCODER = "resnet18"
ARCH_KWARGS = {
    "unet": {"encoder_depth": 3, "decoder_channels": [16, 8, 8]},
    "fpn": {
        "encoder_depth": 3,
        "decoder_pyramid_channels": 32,
        "decoder_segmentation_channels": 32,
    },
    "deeplabv3plus": {"encoder_depth": 3, "decoder_channels": 16},
    "upernet": {"encoder_depth": 3, "decoder_channels": 16},
    "segformer": {"encoder_depth": 3, "decoder_segmentation_channels": 16},
}


def tiny(in_channels: int = 5, num_classes: int = 2, encoder: str = ENCODER, **kwargs):
    return create_student(
        "unet", encoder, in_channels, num_classes, **ARCH_KWARGS["unet"], **kwargs
    )


def assert_same_tensors(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# --------------------------------------------------------------------------------------------
# models


@pytest.mark.parametrize("arch", list(ARCH_KWARGS))
def test_student_gives_full_size_logits_and_exposes_features(arch):
    model = create_student(arch, ENCODER, in_channels=5, num_classes=3, **ARCH_KWARGS[arch]).eval()
    x = torch.rand(2, 5, 64, 64)
    with torch.no_grad():
        out = model.forward_features(x)
        logits = model(x)
    assert out.logits.shape == (2, 3, 64, 64)
    assert torch.equal(logits, out.logits)
    # Encoder pyramid: the input itself, then one level per stage, each half the size.
    assert isinstance(out.features, list) and len(out.features) == 4
    assert [f.shape[1] for f in out.features] == model.encoder_channels
    assert [f.shape[-1] for f in out.features] == [64, 32, 16, 8]
    assert all(f.shape[0] == 2 for f in out.features)
    assert isinstance(out.decoder, Tensor) and out.decoder.ndim == 4
    assert out.decoder.shape[0] == 2 and torch.isfinite(out.decoder).all()


@pytest.mark.parametrize("depth", [3, 4])
def test_fpn_logits_match_the_input_for_shallow_encoders(depth):
    model = create_student(
        "fpn", ENCODER, 4, 2, encoder_depth=depth, decoder_segmentation_channels=32
    ).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 4, 64, 64)).shape == (1, 2, 64, 64)


def test_unknown_architecture_is_a_user_error():
    with pytest.raises(GeodistillError, match="no-such-arch"):
        create_student("no-such-arch", ENCODER, 4, 2)


def test_load_whole_model_state_dict(tmp_path):
    source = tiny()
    torch.save(source.state_dict(), tmp_path / "model.pt")
    loaded = create_student(
        "unet", ENCODER, 5, 2, weights=str(tmp_path / "model.pt"), **ARCH_KWARGS["unet"]
    )
    assert_same_tensors(loaded.state_dict(), source.state_dict())


def test_load_lightning_checkpoint_style_state_dict(tmp_path):
    source = tiny()
    state = {"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}}
    torch.save(state, tmp_path / "task.ckpt")
    loaded = tiny()
    load_local_weights(loaded, tmp_path / "task.ckpt")
    assert_same_tensors(loaded.state_dict(), source.state_dict())


def test_load_safetensors(tmp_path):
    source = tiny()
    save_file(
        {k: v.contiguous() for k, v in source.state_dict().items()},
        str(tmp_path / "model.safetensors"),
    )
    loaded = tiny()
    load_local_weights(loaded, tmp_path / "model.safetensors")
    assert_same_tensors(loaded.state_dict(), source.state_dict())


@pytest.mark.parametrize("encoder", ["resnet18", "tu-resnet18"])
def test_load_encoder_only_state_dict(tmp_path, encoder):
    # Bare encoder keys: "conv1.weight" (smp) or "model.conv1.weight" (timm universal encoder).
    source = tiny(encoder=encoder)
    torch.save(source.network.encoder.state_dict(), tmp_path / "encoder.pt")
    loaded = tiny(encoder=encoder)
    decoder_before = {k: v.clone() for k, v in loaded.network.decoder.state_dict().items()}
    load_local_weights(loaded, tmp_path / "encoder.pt")
    assert_same_tensors(loaded.network.encoder.state_dict(), source.network.encoder.state_dict())
    assert_same_tensors(loaded.network.decoder.state_dict(), decoder_before)


def test_load_smp_network_state_dict_loads_decoder_and_head_too(tmp_path):
    source = tiny()
    torch.save(source.network.state_dict(), tmp_path / "smp_unet.pth")
    loaded = tiny()
    load_local_weights(loaded, tmp_path / "smp_unet.pth")
    assert_same_tensors(loaded.network.state_dict(), source.network.state_dict())


def test_rgb_encoder_weights_expand_to_more_bands(tmp_path):
    rgb = tiny(in_channels=3)
    rgb_state = rgb.network.encoder.state_dict()
    torch.save(rgb_state, tmp_path / "rgb_encoder.pt")
    model = tiny(in_channels=5)
    with pytest.warns(UserWarning, match="expanded conv1.weight from 3 to 5"):
        load_local_weights(model, tmp_path / "rgb_encoder.pt")
    state = model.network.encoder.state_dict()
    # Filters cycle R, G, B, R, G and are scaled by 3/5 to keep the activation scale.
    expected = rgb_state["conv1.weight"][:, [0, 1, 2, 0, 1]] * (3 / 5)
    assert state["conv1.weight"].shape == (64, 5, 7, 7)
    assert torch.allclose(state["conv1.weight"], expected)
    for key, value in rgb_state.items():
        if key != "conv1.weight":
            assert torch.equal(state[key], value), key


def test_weights_of_another_architecture_are_refused(tmp_path):
    other = create_student("unet", "tu-resnet18", 5, 2, **ARCH_KWARGS["unet"])
    path = tmp_path / "other.pt"
    torch.save(other.network.encoder.state_dict(), path)
    with pytest.raises(GeodistillError, match="no model or encoder weights") as err:
        load_local_weights(tiny(), path)
    assert str(path) in str(err.value)


def test_weights_with_wrong_shapes_are_refused(tmp_path):
    path = tmp_path / "three_classes.pt"
    torch.save(tiny(num_classes=3).state_dict(), path)
    with pytest.raises(GeodistillError, match="has shape") as err:
        load_local_weights(tiny(num_classes=2), path)
    assert str(path) in str(err.value)


def test_missing_or_unreadable_weights_file(tmp_path):
    with pytest.raises(GeodistillError, match="no such weights file"):
        tiny(weights=str(tmp_path / "missing.pt"))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a torch file")
    with pytest.raises(GeodistillError, match="cannot read the weights file") as err:
        load_local_weights(tiny(), garbage)
    assert str(garbage) in str(err.value)


# --------------------------------------------------------------------------------------------
# losses


@pytest.mark.parametrize(
    "spec", ["ce", "dice", "focal", ["ce", "dice"], {"ce": 1.0, "dice": 0.5, "focal": 2.0}]
)
def test_loss_combinations_are_finite_weighted_sums(spec):
    torch.manual_seed(0)
    criterion = build_segmentation_loss(spec, ignore_index=255, num_classes=3)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 8, 8))
    target[0, :2] = 255
    loss = criterion(logits, target)
    assert loss.ndim == 0 and torch.isfinite(loss)
    weights = (
        {spec: 1.0}
        if isinstance(spec, str)
        else (spec if isinstance(spec, dict) else dict.fromkeys(spec, 1.0))
    )
    assert set(criterion.last_terms) == set(weights)
    expected = sum(w * criterion.last_terms[name] for name, w in weights.items())
    assert torch.allclose(loss, expected)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_class_weights_change_cross_entropy_as_computed_by_hand():
    # Pixel 0: logits (2, 0), target 0 -> loss log(1 + e^-2). Pixel 1: logits (0, 0), target 1
    # -> loss log 2. Pixel 2 is ignored.
    logits = torch.tensor([[2.0, 0.0, 5.0], [0.0, 0.0, -5.0]]).reshape(1, 2, 1, 3)
    target = torch.tensor([[[0, 1, 255]]])
    l0, l1 = math.log(1 + math.exp(-2)), math.log(2)
    plain = build_segmentation_loss("ce")(logits, target)
    assert plain.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    weighted = build_segmentation_loss("ce", class_weights=[1.0, 3.0], num_classes=2)
    assert weighted(logits, target).item() == pytest.approx((l0 + 3 * l1) / 4, rel=1e-6)


def test_all_ignored_batch_gives_zero_with_a_gradient_path():
    criterion = build_segmentation_loss({"ce": 1.0, "dice": 1.0})
    logits = torch.randn(2, 2, 4, 4, requires_grad=True)
    loss = criterion(logits, torch.full((2, 4, 4), 255))
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert logits.grad is not None and torch.equal(logits.grad, torch.zeros_like(logits))


def test_bad_loss_specs_are_user_errors():
    with pytest.raises(GeodistillError, match="unknown loss.*lovasz"):
        build_segmentation_loss(["ce", "lovasz"])
    with pytest.raises(GeodistillError, match="at least one loss"):
        build_segmentation_loss([])
    with pytest.raises(GeodistillError, match="class_weights has 3 values for 2 classes"):
        build_segmentation_loss("ce", class_weights=[1, 2, 3], num_classes=2)


# --------------------------------------------------------------------------------------------
# schedules


def factors(**kwargs):
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_decay(optimizer, **kwargs)
    return scheduler.lr_lambdas[0], optimizer, scheduler


def test_linear_warmup_then_poly_decay():
    f, _, _ = factors(total_steps=110, warmup_steps=10, schedule="poly", power=1.0)
    assert [f(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5)  # half-way through the decay, power 1: linear
    assert f(110) == pytest.approx(0.0)
    assert f(500) == pytest.approx(0.0)  # clamped past the end
    f, _, _ = factors(total_steps=110, warmup_steps=10, schedule="poly", power=0.9)
    assert f(60) == pytest.approx(0.5**0.9)


def test_cosine_decay_with_floor_and_no_warmup():
    f, _, _ = factors(total_steps=100, schedule="cosine", min_factor=0.1)
    assert f(0) == pytest.approx(1.0)
    assert f(25) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert f(50) == pytest.approx(0.55)
    assert f(100) == pytest.approx(0.1)
    f, _, _ = factors(total_steps=100, warmup_steps=20, schedule="constant")
    assert f(9) == pytest.approx(0.5) and f(20) == f(99) == pytest.approx(1.0)


def test_scheduler_steps_the_optimizer_lr():
    _, optimizer, scheduler = factors(total_steps=20, warmup_steps=4, schedule="poly", power=1.0)
    lrs = []
    for _ in range(12):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:5] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    assert lrs[11] == pytest.approx(1 - 7 / 16)


# --------------------------------------------------------------------------------------------
# end-to-end fit on the learnable fixture


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Fit a tiny student for 4 epochs (12 optimiser steps), then test its best checkpoint."""
    tmp = tmp_path_factory.mktemp("fit")
    root = make_dataset(tmp / "data", n=12)
    L.seed_everything(0, verbose=False)
    datamodule = GeoSegDataModule(
        classes=CLASSES,
        fine=Domain(
            train=Source(images=str(root / "images"), labels=str(root / "labels")),
            val_fraction=0.25,
            test_fraction=0.25,
        ),
        patch_size=64,
        crops_per_image=2,
        batch_size=4,
        eval_batch_size=4,
        augment=False,
        cache=True,
    )
    task = SegmentationTask(
        in_channels=datamodule.num_bands,
        num_classes=datamodule.num_classes,
        class_names=datamodule.classes,
        lr=0.01,
        warmup_fraction=0.0,
        **TINY_MODEL,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fit_and_test(
            task,
            datamodule,
            tmp / "run",
            max_epochs=4,
            enable_progress_bar=False,
            log_every_n_steps=1,
        )
    return result, datamodule, tmp / "run", root


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    (csv_file,) = run_dir.glob("logs/version_*/metrics.csv")
    with csv_file.open() as f:
        return list(csv.DictReader(f))


def test_fit_loss_decreases_and_test_miou_beats_chance(trained):
    result, _, run_dir, _ = trained
    losses = [float(r["train/loss"]) for r in read_metrics(run_dir) if r.get("train/loss")]
    assert len(losses) == 12
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3])
    # Chance (all background, or a coin flip) is about 0.25-0.33 mIoU; 4 epochs reach ~0.84.
    assert result.metrics["mIoU"] > 0.7
    assert result.checkpoint.exists() and result.checkpoint.name == "best.ckpt"


def test_checkpoint_stores_band_stats_and_names(trained):
    result, datamodule, _, _ = trained
    checkpoint = torch.load(result.checkpoint, map_location="cpu", weights_only=False)
    stats = datamodule.band_stats
    assert stats is not None and stats.num_bands == 4
    for name in ("low", "high", "mean", "std"):
        stored = checkpoint["state_dict"][f"model.normalizer.{name}"]
        assert torch.equal(stored, torch.tensor(getattr(stats, name), dtype=torch.float32)), name
    assert checkpoint["geodistill"]["band_names"] == list(datamodule.band_names)
    assert checkpoint["geodistill"]["band_names"] == ["b0", "b1", "b2", "b3"]
    assert checkpoint["geodistill"]["class_names"] == CLASSES


def test_reloaded_checkpoint_reproduces_predictions_exactly(trained):
    result, _, _, root = trained
    images = torch.stack(
        [torch.from_numpy(read_image(p)) for p in sorted((root / "images").glob("*.tif"))[:4]]
    )
    reloaded = SegmentationTask.load_from_checkpoint(result.checkpoint, map_location="cpu")
    assert reloaded.band_names == ["b0", "b1", "b2", "b3"]
    result.task.eval()
    reloaded.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(images), result.task(images))


def test_trained_model_maps_a_scene_it_has_not_seen(trained, tmp_path):
    result, _, _, _ = trained
    make_dataset(tmp_path / "scene", n=1, size=96, seed=123)
    scene = tmp_path / "scene" / "images" / "chip_00.tif"
    predictor = TorchPredictor(result.task.model, card_from_task(result.task))
    assert predictor.card.band_names == ["b0", "b1", "b2", "b3"]
    out = tmp_path / "pred.tif"
    predict_scene(predictor, scene, SceneOutputs(out), InferenceOptions(tile=64, overlap=16))
    with rasterio.open(out) as src, rasterio.open(tmp_path / "scene/labels/chip_00.tif") as lab:
        accuracy = float((src.read(1) == lab.read(1)).mean())
    assert accuracy > 0.85
