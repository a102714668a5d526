"""Semi-supervised learning with frozen teachers (RS-MTDF-style): pseudo-labels, EMA, strong views
and CutMix, translators and fusion, the labelled ratio, the task end to end and its export.

Everything runs on CPU with tiny learnable GeoTIFF chips (4 bands, 64 pixels) from
``fixtures_small``. One geodistill teacher (a one-epoch checkpoint) and two semi-supervised
students (0 teachers; 2 teachers with fusion, fitted through ``geodistill fit --config``) are
trained per module and shared by the tests.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from fixtures_small import (
    BAND_NAMES,
    CLASSES,
    TIMM_TEACHER,
    TINY_MODEL,
    config_dict,
    make_dataset,
    semi_supervised_task,
    write_config,
    write_tif,
)
from harness import assert_user_error, quiet_trainer, run_quietly
from torch import Tensor

from geodistill.data import Domain, GeoSegDataModule, Source
from geodistill.data.perturbations import (
    StrongView,
    band_dropout,
    color_jitter,
    cutmix,
    cutmix_boxes,
    gaussian_blur,
    grayscale,
    spectral_shift,
    strong_view,
)
from geodistill.data.teacher_cache import CachedTeachersDataset
from geodistill.errors import GeodistillError
from geodistill.export import export_student
from geodistill.methods import SemiSupervised
from geodistill.methods.padding import split_forward
from geodistill.methods.semi_supervised import (
    PseudoLabels,
    ema_decay_at,
    feature_distance,
    pseudo_labels,
    unsupervised_loss,
)
from geodistill.models import create_student
from geodistill.models.checkpoint import network_from_checkpoint, read_checkpoint
from geodistill.models.fusion import FeatureFusion, FusionConfig, Translator
from geodistill.tasks import SegmentationTask


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("semi_data")
    make_dataset(root / "train", n=10, seed=1)
    make_dataset(root / "unlabeled", n=3, seed=2, labels=False)
    make_dataset(root / "three_bands", n=2, bands=3, seed=3, labels=False)
    rng = np.random.default_rng(4)
    write_tif(
        root / "reordered" / "chip_00.tif",
        rng.uniform(size=(4, 64, 64)).astype(np.float32),
        descriptions=["b3", "b2", "b1", "b0"],
    )
    (root / "empty").mkdir()
    return root


def fine(data: Path, **domain: Any) -> dict[str, Any]:
    images, labels = data / "train" / "images", data / "train" / "labels"
    return {"train": {"images": str(images), "labels": str(labels)}, "val_fraction": 0.2, **domain}


@pytest.fixture(scope="module")
def teacher_ckpt(data) -> Path:
    """A tiny geodistill teacher: one epoch of ``geodistill fit``."""
    out = data / "teacher_run"
    config = write_config(data / "teacher.yaml", config_dict(data / "train", out, max_epochs=1))
    code, _, err = run_quietly("fit", "--config", str(config))
    assert code == 0, err
    return out / "checkpoints" / "last.ckpt"


def geodistill_teacher(path: Path) -> dict[str, Any]:
    return {"kind": "geodistill", "path": str(path), "layers": ["encoder.-1"]}


def semi_config(data: Path, out: Path, **model: Any) -> dict[str, Any]:
    config = config_dict(
        data / "train",
        out,
        max_epochs=2,
        data={
            "fine": fine(data, train_ratio=0.5),
            "unlabeled_from": "rest",
            "unlabeled_batch_size": 2,
            "manifest": str(out / "manifest.json"),
        },
    )
    config["trainer"]["log_every_n_steps"] = 1
    config["model"] = {
        "class_path": "geodistill.tasks.SegmentationTask",
        "init_args": {
            **TINY_MODEL,
            "loss": "ce",
            "lr": 0.01,
            "warmup_fraction": 0.0,
            "distillation": {
                "class_path": "geodistill.methods.SemiSupervised",
                "init_args": {"threshold": 0.6, **model},
            },
        },
    }
    return config


def fit(data: Path, name: str, *args: str, **model: Any) -> SimpleNamespace:
    out = data / name
    config = write_config(data / f"{name}.yaml", semi_config(data, out, **model))
    code, _, err = run_quietly("fit", "--config", str(config), *args)
    assert code == 0, err
    (metrics,) = out.glob("logs/version_*/metrics.csv")
    with metrics.open() as f:
        rows = list(csv.DictReader(f))
    last = out / "checkpoints" / "last.ckpt"
    return SimpleNamespace(out=out, last=last, rows=rows, config=config, model=model)


FUSED = {"fusion": True, "distill_loss": "cosine"}


@pytest.fixture(scope="module")
def plain(data) -> SimpleNamespace:
    """FixMatch with the EMA, no teacher."""
    return fit(data, "semi_plain")


@pytest.fixture(scope="module")
def fused(data, teacher_ckpt) -> SimpleNamespace:
    """Two teachers (a geodistill checkpoint and a random timm CNN), cosine loss, fusion."""
    teachers = [geodistill_teacher(teacher_ckpt), TIMM_TEACHER]
    return fit(data, "semi_fused", teachers=teachers, **FUSED)


def logged(rows: list[dict[str, str]]) -> set[str]:
    return {k for row in rows for k, v in row.items() if v}


make_task = semi_supervised_task


def method(task: SegmentationTask) -> SemiSupervised:
    assert isinstance(task.distillation, SemiSupervised)
    return task.distillation


def images_with_nodata(batch: int = 4, size: int = 32, seed: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 4, size, size, generator=generator) * 1000 + 100
    x[0, :, :5] = float("nan")  # a nodata strip
    x[1, :, :, -3:] = float("nan")
    return x


# --------------------------------------------------------------------------------------------
# pseudo-labels, the unsupervised loss, the EMA


def test_pseudo_labels_keep_confident_valid_pixels_only():
    # Hand-built EMA logits for 1 image, 3 classes, 2 x 3 pixels.
    probs = torch.tensor(
        [
            [[0.96, 0.10, 0.30], [0.02, 0.95, 0.50]],
            [[0.02, 0.85, 0.30], [0.97, 0.03, 0.25]],
            [[0.02, 0.05, 0.40], [0.01, 0.02, 0.25]],
        ]
    )[None]
    valid = torch.tensor([[[True, True, True], [True, True, False]]])
    result = pseudo_labels(probs.log(), 0.95, valid, ignore_index=255)
    assert isinstance(result, PseudoLabels)
    assert result.labels.tolist() == [[[0, 255, 255], [1, 0, 255]]]
    torch.testing.assert_close(result.confidence, probs.max(1).values)
    # The threshold is inclusive, and 1.0 keeps only certain pixels.
    assert pseudo_labels(probs.log(), 0.8, valid, 255).labels.tolist() == [
        [[0, 1, 255], [1, 0, 255]]
    ]
    exact = result.confidence[0, 0, 1].item()
    assert pseudo_labels(probs.log(), exact, valid, 255).labels[0, 0, 1] == 1
    assert (pseudo_labels(probs.log(), 1.0, valid, 255).labels == 255).all()


def test_unsupervised_loss_sums_over_pseudo_labels_and_divides_by_valid_pixels():
    logits = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(1))
    labels[0, 0] = 255  # not confident
    valid = torch.ones(2, 4, 4, dtype=torch.bool)
    valid[1, :, :2] = False  # nodata
    labels[~valid] = 255
    per_pixel = F.cross_entropy(logits, labels.clamp(max=2), reduction="none")
    kept = labels != 255
    expected = per_pixel[kept].sum() / valid.sum()
    loss = unsupervised_loss(logits, labels, valid, 255)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert unsupervised_loss(logits, torch.full_like(labels, 255), valid, 255).item() == 0.0


def test_ema_decay_schedule():
    assert [ema_decay_at(t, 0.996) for t in (0, 1, 3, 249, 10_000)] == [
        0.0,
        0.5,
        0.75,
        0.996,
        0.996,
    ]
    assert ema_decay_at(100, 0.9) == 0.9


def test_ema_update_averages_parameters_and_copies_buffers():
    task = make_task(ema_decay=0.9)
    semi = method(task)
    ema, model = semi.ema.module, task.model
    assert all(not p.requires_grad for p in semi.ema.parameters())
    assert not semi.ema.training
    generator = torch.Generator().manual_seed(0)

    def shake() -> None:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=generator))
            for b in model.buffers():
                if b.is_floating_point():
                    b.add_(torch.rand(b.shape, generator=generator))

    shake()
    semi.update_ema()  # t = 0: decay 0, a copy
    for a, b in zip(ema.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)
    for step in (1, 2, 30):
        while int(semi.ema.n_averaged) < step:
            semi.update_ema()
        before = [p.clone() for p in ema.parameters()]
        shake()
        semi.update_ema()
        decay = ema_decay_at(step, 0.9)
        assert decay == min(1 - 1 / (step + 1), 0.9)
        for old, new, current in zip(before, ema.parameters(), model.parameters(), strict=True):
            torch.testing.assert_close(new, decay * old + (1 - decay) * current)
        for averaged, current in zip(ema.buffers(), model.buffers(), strict=True):
            assert torch.equal(averaged, current)  # buffers (BN statistics, bands) copied
    assert int(semi.ema.n_averaged) == 31
    task.train()
    assert task.model.training and not semi.ema.training  # predicts in eval mode


# --------------------------------------------------------------------------------------------
# strong views


def test_cutmix_pastes_the_same_box_into_image_labels_and_confidence():
    batch, size = 6, 32
    images = torch.arange(batch, dtype=torch.float32).view(-1, 1, 1, 1).repeat(1, 3, size, size)
    images[2, :, :4] = float("nan")  # the partner's nodata travels with the box
    labels = torch.arange(batch).view(-1, 1, 1).repeat(1, size, size)
    confidence = torch.linspace(0.1, 0.9, batch).view(-1, 1, 1).repeat(1, size, size)
    mixed = cutmix(images, labels, confidence, p=1.0, generator=torch.Generator().manual_seed(3))
    boxes, partner = cutmix_boxes(batch, size, size, 1.0, torch.Generator().manual_seed(3))
    assert (partner != torch.arange(batch)).all()  # nobody is their own partner
    out_images, out_labels, out_confidence = mixed
    for i in range(batch):
        box, j = boxes[i], int(partner[i])
        area = box.float().mean().item()
        assert 0.01 <= area <= 0.45
        rows, cols = torch.nonzero(box, as_tuple=True)  # one rectangle
        assert box.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert (out_labels[i][box] == j).all() and (out_labels[i][~box] == i).all()
        assert torch.equal(out_confidence[i][box], confidence[j][box])
        assert torch.equal(out_confidence[i][~box], confidence[i][~box])
        torch.testing.assert_close(out_images[i][:, box], images[j][:, box], equal_nan=True)
        torch.testing.assert_close(out_images[i][:, ~box], images[i][:, ~box], equal_nan=True)
    untouched = cutmix(images, labels, confidence, p=0.0, generator=torch.Generator())
    for before, after in zip((images, labels, confidence), untouched, strict=True):
        torch.testing.assert_close(after, before, equal_nan=True)
    single = cutmix(images[:1], labels[:1], p=1.0, generator=torch.Generator())
    assert torch.equal(single[1], labels[:1])  # a batch of one has no partner


PERTURBATIONS = {
    "color_jitter": lambda x, g: color_jitter(x, 0.5, 0.5, 0.5, 1.0, g),
    "grayscale": lambda x, g: grayscale(x, 0.5, g),
    "gaussian_blur": lambda x, g: gaussian_blur(x, (0.5, 2.0), 1.0, g),
    "spectral_shift": lambda x, g: spectral_shift(x, 0.1, 0.1, 1.0, g),
    "band_dropout": lambda x, g: band_dropout(x, 1.0, g),
    "strong_view": lambda x, g: strong_view(x, StrongView(), g),
}


@pytest.mark.parametrize("name", list(PERTURBATIONS))
def test_perturbations_keep_nodata_and_shapes_and_are_seeded(name):
    perturb = PERTURBATIONS[name]
    x = images_with_nodata()
    out = perturb(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(torch.isnan(out), torch.isnan(x))  # nodata stays NaN, data stays data
    torch.testing.assert_close(perturb(x, torch.Generator().manual_seed(0)), out, equal_nan=True)
    other = perturb(x, torch.Generator().manual_seed(1))
    assert not torch.allclose(torch.nan_to_num(other), torch.nan_to_num(out))
    assert not torch.allclose(torch.nan_to_num(out), torch.nan_to_num(x))


def test_what_each_perturbation_does():
    x = images_with_nodata()
    valid = ~torch.isnan(x)
    gray = grayscale(x, 1.0, torch.Generator())
    assert torch.equal(gray[:, 0][valid[:, 0]], gray[:, 3][valid[:, 3]])  # one value per pixel
    torch.testing.assert_close(gray[:, 0], x.mean(1), equal_nan=True)
    dropped = band_dropout(x, 1.0, torch.Generator().manual_seed(0))
    values = [dropped[i, c][valid[i, c]] for i in range(4) for c in range(4)]
    flat = [bool((v == v[0]).all()) for v in values]
    assert sum(flat) == 4  # one flat band per sample, at the band's mean
    changed = (dropped != x) & valid
    for i in range(4):
        (band,) = {int(c) for c in torch.nonzero(changed[i], as_tuple=True)[0]}
        assert dropped[i, band][valid[i, band]][0].item() == pytest.approx(
            x[i, band][valid[i, band]].mean().item(), rel=1e-5
        )
    # Normalised convolution: a constant image stays constant right up to the nodata edges.
    constant = torch.where(valid, torch.full_like(x, 7.0), x)
    blurred = gaussian_blur(constant, (2.0, 2.0), 1.0, torch.Generator())
    torch.testing.assert_close(blurred[valid], constant[valid])
    # Spectral shift: per band, an affine map of the values.
    shifted = spectral_shift(x, 0.1, 0.1, 1.0, torch.Generator().manual_seed(0))
    for c in range(4):
        a, b = x[2, c].flatten(), shifted[2, c].flatten()
        slope = ((b - b.mean()) * (a - a.mean())).sum() / ((a - a.mean()) ** 2).sum()
        assert 0.9 - 1e-4 <= slope.item() <= 1.1 + 1e-4
        torch.testing.assert_close(
            b, slope * a + (b.mean() - slope * a.mean()), rtol=1e-4, atol=0.1
        )
    for p in ("jitter_p", "grayscale_p", "blur_p", "spectral_p", "band_dropout_p"):
        assert getattr(StrongView(), p) > 0
    off = StrongView(jitter_p=0, grayscale_p=0, blur_p=0, spectral_p=0, band_dropout_p=0)
    torch.testing.assert_close(strong_view(x, off, torch.Generator()), x, equal_nan=True)


# --------------------------------------------------------------------------------------------
# translators and fusion


def test_translators_and_fusion_shapes_and_initial_weights():
    translator = Translator(32, 96, hidden=48)
    assert translator.channels == (32, 96)
    assert translator(torch.rand(2, 32, 5, 7)).shape == (2, 96, 5, 7)
    fusion = FeatureFusion(32, FusionConfig([96, 24]))
    torch.testing.assert_close(fusion.weights, torch.tensor([0.8, 0.1, 0.1]))
    assert fusion.mix_logits.requires_grad
    three = FeatureFusion(32, FusionConfig([8, 8, 8], hidden=4, student_weight=0.7))
    torch.testing.assert_close(three.weights, torch.tensor([0.7, 0.1, 0.1, 0.1]))
    source, decoder_input = torch.rand(2, 32, 4, 6), torch.rand(2, 32, 4, 6)
    fused, translated = fusion(source, decoder_input)
    assert [tuple(t.shape) for t in translated] == [(2, 96, 4, 6), (2, 24, 4, 6)]
    expected = 0.8 * decoder_input + sum(
        0.1 * projection(translator(source))
        for projection, translator in zip(fusion.projections, fusion.translators, strict=True)
    )
    torch.testing.assert_close(fused, expected)


def test_a_fused_student_needs_no_teacher():
    student = create_student(
        TINY_MODEL["arch"],
        TINY_MODEL["encoder"],
        4,
        2,
        fusion={"widths": [16, 24]},
        **TINY_MODEL["arch_kwargs"],
    ).eval()
    assert {k.split(".")[0] for k in student.state_dict()} == {"normalizer", "network", "fusion"}
    x = torch.rand(2, 4, 64, 64)
    with torch.no_grad():
        output = student.forward_features(x)
        plain = student.network.segmentation_head(student.network.decoder(output.features))
    deepest = output.features[-1]
    assert [tuple(t.shape) for t in output.translated] == [
        (2, 16, *deepest.shape[-2:]),
        (2, 24, *deepest.shape[-2:]),
    ]
    assert not torch.allclose(output.logits, plain)  # the decoder reads the fused features
    with pytest.raises(GeodistillError, match="student_weight must be in"):
        FusionConfig([16], student_weight=1.0)
    with pytest.raises(GeodistillError, match="unknown fusion option"):
        FusionConfig.from_value({"widths": [16], "weight": 0.5})


def test_feature_distance_mse_and_cosine_over_valid_locations():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 6, 4, 4, generator=generator), torch.randn(2, 6, 4, 4)
    valid = torch.ones(2, 8, 8, dtype=torch.bool)
    valid[1, :, 4:] = False  # the right half of the second image is nodata
    weights = F.interpolate(valid[:, None].float(), size=(4, 4), mode="area")[:, 0]
    mse = (student - teacher).pow(2).mean(1)
    cosine = 1 - F.cosine_similarity(student, teacher, dim=1)
    for kind, per_location in (("mse", mse), ("cosine", cosine)):
        expected = (weights * per_location).sum() / weights.sum()
        value = feature_distance(student, teacher, valid, kind)
        assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    assert feature_distance(teacher * 3, teacher, valid, "cosine").item() == pytest.approx(
        0, abs=1e-6
    )
    # A student map on another grid is resized to the teacher's.
    coarse = torch.randn(2, 6, 2, 2)
    resized = F.interpolate(coarse, size=(4, 4), mode="bilinear", align_corners=False)
    assert feature_distance(coarse, teacher, valid).item() == pytest.approx(
        feature_distance(resized, teacher, valid).item(), rel=1e-6
    )


# --------------------------------------------------------------------------------------------
# the task


def batches(seed: int = 0) -> dict[str, dict[str, Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(2, 4, 64, 64, generator=generator)
    image[1, :, :16] = float("nan")
    mask = (image[:, 0] > 0.5).long()
    mask[torch.isnan(image).any(1)] = 255
    weak = torch.rand(3, 4, 64, 64, generator=generator)
    weak[0, :, :, :8] = float("nan")
    return {
        "labeled": {"image": image, "mask": mask},
        "unlabeled": {"image": weak, "mask": torch.full((3, 64, 64), 255)},
    }


def capture_logs(task: SegmentationTask, monkeypatch) -> dict[str, Tensor]:
    logs: dict[str, Tensor] = {}
    monkeypatch.setattr(task, "log", lambda name, value, **_: logs.__setitem__(name, value))
    monkeypatch.setattr(task, "log_dict", lambda values, **_: logs.update(values))
    return logs


def test_training_step_adds_the_weighted_terms(teacher_ckpt, monkeypatch):
    teachers = [geodistill_teacher(teacher_ckpt), TIMM_TEACHER]
    task = make_task(teachers=teachers, threshold=0.5, unsup_weight=0.5, distill_weight=2.0)
    semi = method(task)
    assert semi.translators is not None and task.model.fusion is None
    assert semi.translator_list() is semi.translators
    assert [t.channels for t in semi.translators] == [(128, 128), (128, 256)]
    task.train()
    logs = capture_logs(task, monkeypatch)
    loss = task.training_step(batches(), 0)
    for term in ("supervised", "unsupervised", "distill", "distill_0", "distill_1"):
        assert logs[f"train/loss_{term}"].item() > 0, term
    assert logs["train/loss_distill"].item() == pytest.approx(
        (logs["train/loss_distill_0"] + logs["train/loss_distill_1"]).item() / 2, rel=1e-6
    )
    expected = (
        logs["train/loss_supervised"]
        + 0.5 * logs["train/loss_unsupervised"]
        + 2.0 * logs["train/loss_distill"]
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # threshold 0.5 with two classes keeps every valid weak pixel
    weak = batches()["unlabeled"]["image"]
    valid = (~torch.isnan(weak).any(1)).float().mean().item()
    assert logs["train/pseudo_label_ratio"].item() == pytest.approx(1.0)
    assert valid < 1
    loss.backward()
    assert all(p.grad is None for t in semi.teachers for p in t.parameters())
    assert all(p.grad is None for p in semi.ema.parameters())
    assert all(p.grad is not None for p in semi.translators.parameters())
    assert not any("teacher" in key for key in task.state_dict())
    assert any(key.startswith("distillation.translators.") for key in task.state_dict())


def test_the_distillation_term_is_the_translated_features_against_the_teachers():
    task = make_task(teachers=[TIMM_TEACHER], distill_loss="mse").eval()
    semi = method(task)
    batch = batches()
    images = torch.cat([batch["labeled"]["image"], batch["unlabeled"]["image"]])
    with torch.no_grad():
        outputs = split_forward(
            task.model, [batch["labeled"]["image"], batch["unlabeled"]["image"]]
        )
        logs: dict[str, Tensor] = {}
        value = semi._distillation(
            outputs[0], outputs[1], batch["labeled"], batch["unlabeled"], logs
        )
        student = semi.translators[0](task.model.forward_features(images).features[-1])
        teacher = semi.teachers[0](images).features[-1]
    assert teacher.shape[-2:] == (4, 4) and student.shape[-2:] == (8, 8)
    expected = feature_distance(student, teacher, ~torch.isnan(images).any(1), "mse")
    assert value.item() == pytest.approx(expected.item(), rel=1e-4)


def test_pseudo_labels_come_from_the_ema_not_the_student(monkeypatch):
    task = make_task(threshold=0.5)
    semi = method(task)
    weak = batches()["unlabeled"]["image"]
    with torch.no_grad():
        for p in task.model.parameters():
            p.add_(torch.randn_like(p))  # the student drifts away from its EMA copy
        ema_logits = semi.ema(weak)
    result = semi.make_pseudo_labels(weak)
    valid = ~torch.isnan(weak).any(1)
    expected = torch.where(valid, ema_logits.argmax(1), 255)
    assert torch.equal(result.labels, expected)
    assert not torch.equal(task.model(weak).argmax(1)[valid], ema_logits.argmax(1)[valid])


def test_without_teachers_only_fixmatch_runs(monkeypatch, tmp_path):
    task = make_task(teachers=[{"kind": "geodistill", "path": str(tmp_path / "x.ckpt")}],
                     distill_weight=0.0)  # fmt: skip
    semi = method(task)
    assert not semi.active and not semi.teachers.built  # the missing file is never read
    assert semi.translators is None
    logs = capture_logs(task, monkeypatch)
    task.train()
    loss = task.training_step(batches(), 0)
    expected = logs["train/loss_supervised"] + logs["train/loss_unsupervised"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert "train/loss_distill" not in logs


# --------------------------------------------------------------------------------------------
# end to end: geodistill fit --config, checkpoints, export


def test_fits_from_a_config_without_teachers(plain, data):
    assert plain.last.is_file()
    names = logged(plain.rows)
    for term in ("loss", "loss_supervised", "loss_unsupervised", "pseudo_label_ratio"):
        assert f"train/{term}" in names, term
    assert "train/loss_distill" not in names
    scores = [float(row["val/mIoU"]) for row in plain.rows if row.get("val/mIoU")]
    assert len(scores) == 2 and all(0 <= s <= 1 for s in scores)
    checkpoint = torch.load(plain.last, map_location="cpu", weights_only=False)
    prefixes = {k.split(".")[0] for k in checkpoint["state_dict"]}
    assert prefixes == {"model", "distillation"}
    assert {k.split(".")[1] for k in checkpoint["state_dict"] if k.startswith("distillation.")} == {
        "ema"
    }
    # one update per step: 2 x 2
    assert int(checkpoint["state_dict"]["distillation.ema.n_averaged"]) == 4
    recorded = checkpoint["hyper_parameters"]["distillation"]
    assert recorded["class_path"] == "geodistill.methods.SemiSupervised"
    assert recorded["init_args"]["threshold"] == 0.6 and recorded["init_args"]["teachers"] == []
    # The labelled half and the rest (its unlabelled stream) are in the manifest.
    manifest = json.loads((plain.out / "manifest.json").read_text())
    ratio = manifest["train_ratio"]["fine"]
    assert ratio["ratio"] == 0.5 and ratio["kept"] == 4 and ratio["of"] == 8
    assert ratio["chips"] == manifest["domains"]["fine"]["train"]
    assert manifest["unlabeled_from"] == "rest"
    assert sorted(manifest["unlabeled"] + ratio["chips"] + manifest["domains"]["fine"]["val"]) == [
        str(p) for p in sorted((data / "train" / "images").iterdir())
    ]


def test_fits_from_a_config_with_two_teachers_and_fusion(fused, teacher_ckpt):
    names = logged(fused.rows)
    for term in ("loss_distill", "loss_distill_0", "loss_distill_1", "loss_unsupervised"):
        assert f"train/{term}" in names, term
    assert {"train/fusion_weight_0", "train/fusion_weight_1", "train/fusion_weight_2"} <= names
    checkpoint = torch.load(fused.last, map_location="cpu", weights_only=False)
    keys = list(checkpoint["state_dict"])
    assert {k.split(".")[0] for k in keys} == {"model", "distillation"}
    assert not [k for k in keys if "teacher" in k]
    assert any(k.startswith("model.fusion.translators.1.") for k in keys)
    assert any(k.startswith("distillation.ema.module.fusion.") for k in keys)
    assert not [k for k in keys if k.startswith("distillation.translators.")]  # in the fusion
    fusion = checkpoint["hyper_parameters"]["arch_kwargs"]["fusion"]
    assert fusion == {
        "widths": [128, 256],
        "hidden": None,
        "student_weight": 0.8,
        "mixing": "learned",
    }
    specs = checkpoint["geodistill"]["teacher"]
    assert [s["kind"] for s in specs] == ["geodistill", "timm"]
    assert specs[0]["path"] == str(teacher_ckpt)
    weights = torch.softmax(checkpoint["state_dict"]["model.fusion.mix_logits"], 0)
    assert not torch.allclose(weights, torch.tensor([0.8, 0.1, 0.1]))  # learned


def test_a_fitted_task_reloads_with_its_method(fused, plain):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        task = SegmentationTask.load_from_checkpoint(fused.last, map_location="cpu")
    # Reloaded with the teachers it was distilled from: no "other teachers" warning.
    assert not [w for w in caught if "distilled from" in str(w.message)]
    semi = method(task)
    assert task.model.fusion is not None and semi.ema is not None
    assert semi.translators is None and semi.translator_list() is task.model.fusion.translators
    assert task.band_names == BAND_NAMES
    # The teachers are rebuilt from their recorded specs, for the recorded bands.
    assert [t.channels()[-1] for t in semi.teachers] == [128, 256]
    state = torch.load(fused.last, map_location="cpu", weights_only=False)["state_dict"]
    for key, value in task.state_dict().items():
        assert torch.equal(value, state[key]), key
    again = SegmentationTask.load_from_checkpoint(plain.last, map_location="cpu")
    assert again.model.fusion is None and method(again).translators is None


def test_a_fused_run_resumes_and_validates_from_its_checkpoint(data, fused):
    # The config leaves the fusion's widths to the teachers: a resumed fit rebuilds it from them,
    # `geodistill validate` (no teachers) from the checkpoint's hyper-parameters.
    resumed = fit(
        data,
        "semi_fused_resumed",
        "--ckpt_path",
        str(fused.last),
        "--trainer.max_epochs",
        "3",
        **fused.model,
    )
    state = torch.load(resumed.last, map_location="cpu", weights_only=False)["state_dict"]
    assert int(state["distillation.ema.n_averaged"]) == 6  # the EMA went on from step 4
    args = ("--config", str(fused.config), "--ckpt_path", str(fused.last))
    code, out, err = run_quietly("validate", *args)
    assert code == 0, err
    assert "val/mIoU" in out


def test_translator_loss_heads_reload_from_a_checkpoint_alone():
    task = make_task(teachers=[TIMM_TEACHER], translator_hidden=32)
    fresh = make_task(teachers=[TIMM_TEACHER], translator_hidden=32)
    translators = method(fresh).translators
    assert translators is not None  # built from the teachers' widths with the task
    assert [t.channels for t in translators] == [(128, 256)]
    assert translators[0][0].out_channels == 32
    fresh.load_state_dict(task.state_dict())  # strict: same keys, same shapes
    for key, value in method(task).translators.state_dict().items():
        assert torch.equal(translators.state_dict()[key], value), key


def test_the_exported_student_keeps_its_fusion_and_no_teacher(fused, tmp_path):
    task = SegmentationTask.load_from_checkpoint(fused.last, map_location="cpu").eval()
    exported = export_student(fused.last, tmp_path / "student.ckpt")
    saved = torch.load(exported, map_location="cpu", weights_only=False)
    keys = list(saved["state_dict"])
    assert all(k.startswith("model.") for k in keys)
    assert any(k.startswith("model.fusion.") for k in keys)
    assert saved["hyper_parameters"].get("distillation") is None
    assert "teacher" not in saved["geodistill"]
    student = SegmentationTask.load_from_checkpoint(exported, map_location="cpu").eval()
    assert student.distillation is None and student.model.fusion is not None
    x = torch.rand(2, 4, 96, 64)
    x[0, :, :8] = float("nan")
    with torch.no_grad():
        expected = task.model(x)
        torch.testing.assert_close(student(x), expected, atol=1e-6, rtol=0)
        rebuilt = network_from_checkpoint(read_checkpoint(fused.last), fused.last).eval()
        torch.testing.assert_close(rebuilt(x), expected, atol=1e-6, rtol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_path = export_student(fused.last, tmp_path / "student.onnx")  # checks parity itself
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = {node.name for node in session.get_inputs()}
    assert names == {"image"}  # the student's image: no teacher input, no second pass
    for shape in [(1, 4, 64, 64), (2, 4, 96, 160)]:
        x = torch.rand(shape) * 2
        with torch.no_grad():
            reference = task.model(x).numpy()
        np.testing.assert_allclose(session.run(None, {"image": x.numpy()})[0], reference, atol=1e-4)


def test_teacher_caches_serve_both_streams(data, teacher_ckpt, tmp_path, monkeypatch):
    seen: list[bool] = []
    original = SemiSupervised.teacher_features

    def spy(self, labeled, unlabeled):
        cached = original(self, labeled, unlabeled)
        seen.append("teacher" in labeled and "teacher" in unlabeled)
        images = torch.cat([labeled["image"], unlabeled["image"]])
        with torch.no_grad():
            for teacher, features in zip(self.teachers, cached, strict=True):
                live = teacher(images).features[-1]
                torch.testing.assert_close(features, live, atol=3e-2, rtol=3e-2)  # float16
        return cached

    monkeypatch.setattr(SemiSupervised, "teacher_features", spy)
    datamodule = GeoSegDataModule(
        classes=CLASSES,
        fine=Domain(
            train=Source(str(data / "train" / "images"), str(data / "train" / "labels")),
            val_fraction=0.2,
            train_ratio=0.5,
        ),
        unlabeled_from="rest",
        patch_size=64,
        batch_size=2,
        eval_batch_size=4,
        augment=False,  # the live teachers below see what the cached ones saw
        seed=0,
    )
    folder = tmp_path / "cache"
    task = make_task(teachers=[geodistill_teacher(teacher_ckpt), TIMM_TEACHER],
                     teacher_cache=str(folder), threshold=0.6)  # fmt: skip
    trainer = quiet_trainer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(task, datamodule=datamodule)
    assert seen and all(seen)
    for stream in ("train", "unlabeled"):
        assert isinstance(datamodule.served(stream), CachedTeachersDataset)
        assert datamodule.served(stream).dataset is datamodule.datasets[stream]  # kept raw
        assert not isinstance(datamodule.datasets[stream], CachedTeachersDataset)
    for k in (0, 1):
        for stream in ("labeled", "unlabeled"):
            assert (folder / f"teacher_{k}" / stream / "meta.json").is_file()


# --------------------------------------------------------------------------------------------
# the labelled ratio and the unlabelled stream


def ratio_module(data: Path, tmp_path: Path, seed: int = 0, **kwargs: Any) -> GeoSegDataModule:
    domain = {"val_fraction": 0.2, **kwargs.pop("domain", {})}
    return GeoSegDataModule(
        classes=CLASSES,
        fine=Domain(
            train=Source(str(data / "train" / "images"), str(data / "train" / "labels")), **domain
        ),
        patch_size=64,
        batch_size=2,
        manifest=str(tmp_path / f"manifest_{seed}.json"),
        seed=seed,
        **kwargs,
    )


def test_the_label_ratio_is_drawn_with_the_seed_and_recorded(data, tmp_path):
    def chips(seed: int, ratio: float) -> list[str]:
        module = ratio_module(data, tmp_path, seed, domain={"train_ratio": ratio})
        return [img for img, _ in module.splits["fine"]["train"]]

    assert chips(0, 0.5) == chips(0, 0.5)
    assert len(chips(0, 0.5)) == 4 and len(chips(0, 0.25)) == 2  # of 8 training chips
    assert set(chips(0, 0.5)) != set(chips(1, 0.5))
    assert set(chips(0, 0.25)) <= set(chips(0, 0.5))  # one shuffle: smaller ratios nest
    assert len(chips(0, 0.01)) == 1  # at least one chip
    assert len(chips(0, 1.0)) == 8
    module = ratio_module(data, tmp_path, 5, domain={"train_ratio": 0.25}, unlabeled_from="rest")
    module.setup("fit")
    manifest = json.loads((tmp_path / "manifest_5.json").read_text())
    kept = [img for img, _ in module.splits["fine"]["train"]]
    assert manifest["seed"] == 5
    assert manifest["train_ratio"] == {"fine": {"ratio": 0.25, "kept": 2, "of": 8, "chips": kept}}
    assert sorted(manifest["unlabeled"]) == sorted(module.rest["fine"])
    assert len(module.rest["fine"]) == 6 and not set(module.rest["fine"]) & set(kept)
    assert module.datasets["unlabeled"].labels is None
    loaders = module.train_dataloader()
    assert set(loaders) == {"labeled", "unlabeled"}
    assert (next(iter(loaders["unlabeled"]))["mask"] == 255).all()


@pytest.mark.parametrize(
    ("domain", "message"),
    [
        ({"train_ratio": 0.0}, r"train_ratio must be in \(0, 1\], got 0.0"),
        ({"train_ratio": 1.5}, r"train_ratio must be in \(0, 1\], got 1.5"),
        ({"train_ratio": 0.5, "train_limit": 2}, "set train_limit or train_ratio, not both"),
    ],
)
def test_bad_label_ratios_are_refused(data, tmp_path, domain, message):
    with pytest.raises(GeodistillError, match=message):
        ratio_module(data, tmp_path, domain=domain)


# --------------------------------------------------------------------------------------------
# bad input


def test_an_empty_unlabelled_source_is_refused(data, tmp_path):
    empty = ratio_module(
        data, tmp_path, unlabeled_from="unlabeled", unlabeled=Source(str(data / "empty"))
    )
    with pytest.raises(GeodistillError, match="holds no image files") as err:
        empty.setup("fit")
    assert str(data / "empty") in str(err.value)
    nothing_left = ratio_module(data, tmp_path, unlabeled_from="rest")
    with pytest.raises(GeodistillError, match="no training chips are left over"):
        nothing_left.setup("fit")


def test_unlabelled_images_with_other_bands_are_refused(data, tmp_path):
    three = ratio_module(
        data,
        tmp_path,
        unlabeled_from="unlabeled",
        unlabeled=Source(str(data / "three_bands" / "images")),
    )
    with pytest.raises(GeodistillError, match="unlabelled images have 3 bands, the labelled 4"):
        three.setup("fit")
    reordered = ratio_module(
        data, tmp_path, unlabeled_from="unlabeled", unlabeled=Source(str(data / "reordered"))
    )
    with pytest.raises(GeodistillError, match="band 1 is 'b3' where the labelled images have 'b0'"):
        reordered.setup("fit")
    same = ratio_module(
        data,
        tmp_path,
        unlabeled_from="unlabeled",
        unlabeled=Source(str(data / "unlabeled" / "images")),
    )
    same.setup("fit")
    assert len(same.datasets["unlabeled"].images) == 3


def test_band_mismatch_through_the_cli_is_one_clear_line(data, tmp_path, capsys):
    from fixtures_small import cli

    config = semi_config(data, tmp_path / "out")
    config["data"]["init_args"].update(
        unlabeled_from="unlabeled", unlabeled={"images": str(data / "reordered")}
    )
    path = write_config(tmp_path / "bad.yaml", config)
    code, _, err = cli(capsys, "fit", "--config", str(path))
    assert_user_error(code, err, "reordered", "'b3'", "'b0'")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": 0.0}, r"threshold must be in \(0, 1\], got 0.0"),
        ({"threshold": 1.01}, r"threshold must be in \(0, 1\], got 1.01"),
        ({"threshold": -0.5}, r"threshold must be in \(0, 1\]"),
        ({"ema_decay": 1.0}, r"ema_decay must be in \[0, 1\), got 1.0"),
        ({"unsup_weight": -1.0}, "unsup_weight must be >= 0"),
        ({"distill_loss": "kl"}, "distill_loss must be one of 'mse', 'cosine', got 'kl'"),
        ({"translator_hidden": 0}, "translator_hidden must be a positive integer"),
        ({"fusion": True}, "fusion .* needs at least one teacher"),
        ({"strong_view": {"cutmix_p": 2}}, r"strong_view.cutmix_p must be in \[0, 1\]"),
        ({"strong_view": {"blur": 1}}, "unknown strong_view option"),
        ({"teachers": [{"kind": "timm", "pth": "x"}]}, "unknown teacher option"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(GeodistillError, match=message):
        make_task(**kwargs)


def test_a_bad_threshold_in_a_config_is_one_clear_line(data, tmp_path, capsys):
    from fixtures_small import cli

    path = write_config(tmp_path / "bad.yaml", semi_config(data, tmp_path / "out", threshold=1.5))
    code, _, err = cli(capsys, "fit", "--config", str(path))
    assert_user_error(code, err, "threshold must be in (0, 1], got 1.5")


def test_training_without_an_unlabelled_stream_is_refused(data, tmp_path, capsys):
    from fixtures_small import cli

    config = semi_config(data, tmp_path / "out")
    del config["data"]["init_args"]["unlabeled_from"]
    path = write_config(tmp_path / "bad.yaml", config)
    code, _, err = cli(capsys, "fit", "--config", str(path))
    assert_user_error(code, err, "set data.unlabeled_from")


def test_the_demo_config_parses():
    config = Path(__file__).parents[1] / "configs" / "semi_supervised_demo.yaml"
    code, out, err = run_quietly("fit", "--config", str(config), "--print_config")
    assert code == 0, err
    assert "geodistill.methods.SemiSupervised" in out and "train_ratio: 0.1" in out
