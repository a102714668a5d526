"""Coarse-to-fine learning: the distillation method, teacher-free export, data and the table.

Everything runs on CPU on the SYNTHETIC demo data cut down to 64-pixel chips (4 coarse, 4 fine,
2 test) and the tiny student of ``fixtures_small``; every fit is a single epoch. One teacher and
one distilled student are trained per module and shared by the tests. The recipe (teacher stage,
baselines, ablations) runs as a ``geodistill compare`` experiment: ``test_cli_coarse_to_fine.py``.
"""

from __future__ import annotations

import csv
import inspect
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import numpy as np
import pytest
import rasterio
import torch
from fixtures_small import TINY_MODEL, make_dataset
from jsonargparse import ArgumentParser
from torch import Tensor, nn

from geodistill.data import GeoSegDataModule
from geodistill.data.raster import read_image
from geodistill.data.synthetic import BAND_NAMES, write_demo_dataset
from geodistill.errors import GeodistillError
from geodistill.experiment import fit_and_test
from geodistill.export import export_student
from geodistill.losses.attention import distillation_attention
from geodistill.losses.calibration import fit_logit_calibration
from geodistill.losses.distillation import prediction_distillation
from geodistill.methods import CoarseToFine
from geodistill.reporting import results_table
from geodistill.tasks import SegmentationTask

CLASSES = ["background", "mining"]
IGNORE = 255


def build_datamodule(data: dict[str, Any], **overrides: Any) -> GeoSegDataModule:
    """The data module from plain (config-like) arguments, type-checked as a config would be."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(GeoSegDataModule, "data")
    return parser.instantiate(parser.parse_object({"data": {**data, **overrides}})).data


def quiet_fit(*args: Any, **kwargs: Any):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_and_test(*args, enable_progress_bar=False, log_every_n_steps=1, **kwargs)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo_dataset(
        tmp_path_factory.mktemp("demo"),
        n_coarse=4,
        n_fine=4,
        n_fine_test=2,
        scene_size=64,
        chip_size=64,
    )


@pytest.fixture(scope="module")
def data(demo) -> dict[str, Any]:
    """Data-module arguments: coarse region A, fine region B (1 of 4 chips for validation)."""
    return {
        "classes": CLASSES,
        "coarse": {"train": {"images": str(demo.coarse_images), "labels": str(demo.coarse_labels)}},
        "fine": {
            "train": {"images": str(demo.fine_images), "labels": str(demo.fine_labels)},
            "test": {"images": str(demo.test_images), "labels": str(demo.test_labels)},
            "val_fraction": 0.25,
        },
        "patch_size": 64,
        "crops_per_image": 1,
        "batch_size": 4,
        "eval_batch_size": 4,
        "augment": False,
        "cache": True,
    }


@pytest.fixture(scope="module")
def teacher_ckpt(data, tmp_path_factory) -> Path:
    """Stage 1: a tiny teacher trained for one epoch on the coarse labels."""
    tmp = tmp_path_factory.mktemp("teacher")
    L.seed_everything(0, verbose=False)
    datamodule = build_datamodule(data, train_on="coarse")
    task = SegmentationTask(
        in_channels=6,
        num_classes=2,
        class_names=CLASSES,
        lr=0.01,
        warmup_fraction=0.0,
        **TINY_MODEL,
    )
    result = quiet_fit(task, datamodule, tmp / "run", max_epochs=1)
    assert result.checkpoint.is_file()
    return result.checkpoint


METHOD_ARGS = set(inspect.signature(CoarseToFine.__init__).parameters) - {"self", "teacher"}


def make_task(teacher: Path | str, **kwargs: Any) -> SegmentationTask:
    """A task distilled from ``teacher``: method options go to :class:`CoarseToFine`, the rest
    to the task (by default 6 bands named as the demo's GeoTIFFs, which the teacher saw)."""
    method = {k: kwargs.pop(k) for k in list(kwargs) if k in METHOD_ARGS}
    args = {
        "in_channels": 6,
        "num_classes": 2,
        "class_names": CLASSES,
        "band_names": list(BAND_NAMES),
        **kwargs,
    }
    return SegmentationTask(**args, distillation=CoarseToFine(teacher=str(teacher), **method))


def method(task: SegmentationTask) -> CoarseToFine:
    assert isinstance(task.distillation, CoarseToFine)
    return task.distillation


def teacher_model(task: SegmentationTask) -> nn.Module:
    """The frozen teacher's segmentation network (a ``SegmentationModel``)."""
    return method(task).teacher.network.model


def clone_state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_state(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def perturb(model: nn.Module, seed: int = 0, scale: float = 0.05) -> None:
    """Move a student away from its teacher, reproducibly, so distillation terms are non-zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))


def read_label(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


@pytest.fixture(scope="module")
def batch(demo) -> dict[str, dict[str, Tensor]]:
    """A hand-made training batch: 2 fine chips with labels, 3 coarse chips without."""
    fine = sorted(demo.fine_images.glob("*.tif"))[:2]
    coarse = sorted(demo.coarse_images.glob("*.tif"))[:3]
    labeled = {
        "image": torch.stack([torch.from_numpy(read_image(p)) for p in fine]),
        "mask": torch.stack(
            [torch.from_numpy(read_label(demo.fine_labels / p.name).astype(np.int64)) for p in fine]
        ),
    }
    unlabeled = {
        "image": torch.stack([torch.from_numpy(read_image(p)) for p in coarse]),
        "mask": torch.full((3, 64, 64), IGNORE, dtype=torch.long),
    }
    assert labeled["mask"].eq(1).any() and labeled["mask"].eq(0).any()
    return {"labeled": labeled, "unlabeled": unlabeled}


@pytest.fixture(scope="module")
def distilled(teacher_ckpt, data, tmp_path_factory) -> SimpleNamespace:
    """Stage 2: one epoch of attentive distillation with unlabelled coarse images."""
    tmp = tmp_path_factory.mktemp("distilled")
    teacher_copy = tmp / "teacher.ckpt"  # the export test deletes it
    shutil.copy(teacher_ckpt, teacher_copy)
    L.seed_everything(0, verbose=False)
    datamodule = build_datamodule(data, unlabeled_from="coarse")
    task = make_task(teacher_copy, feature_weight=1.0, lr=0.01, warmup_fraction=0.0)
    teacher_before = clone_state(teacher_model(task))
    student_before = clone_state(task.model)
    result = quiet_fit(task, datamodule, tmp / "run", max_epochs=1)
    return SimpleNamespace(
        task=task,
        result=result,
        run_dir=tmp / "run",
        teacher_path=teacher_copy,
        teacher_before=teacher_before,
        student_before=student_before,
    )


# --------------------------------------------------------------------------------------------
# the task: initialisation, frozen teacher


def test_student_starts_as_a_copy_of_the_frozen_teacher(teacher_ckpt):
    task = make_task(teacher_ckpt)
    teacher = method(task).teacher
    network = teacher_model(task)
    assert_same_state(clone_state(task.model), clone_state(network))
    assert not network.training
    assert all(not p.requires_grad for p in network.parameters())
    assert all(p.requires_grad for p in task.model.parameters())
    # The teacher is no submodule: train() leaves it in eval mode, parameters() excludes it.
    task.train()
    assert not network.training
    assert not any("teacher" in n for n, _ in task.named_parameters())
    assert not any("teacher" in n for n in task.state_dict())
    assert teacher.network.band_names == list(BAND_NAMES)
    assert teacher.class_names == CLASSES


def test_architecture_comes_from_the_teacher(teacher_ckpt):
    task = make_task(
        teacher_ckpt,
        arch="fpn",
        encoder="resnet34",
        weights="imagenet",
        arch_kwargs={"encoder_depth": 5},
    )
    assert task.hparams.arch == TINY_MODEL["arch"]
    assert task.hparams.encoder == TINY_MODEL["encoder"]
    assert task.hparams.arch_kwargs == TINY_MODEL["arch_kwargs"]
    assert task.hparams.weights is None
    assert_same_state(clone_state(task.model), clone_state(teacher_model(task)))


def test_student_of_another_architecture_gets_feature_projections(teacher_ckpt):
    arch_kwargs = {"encoder_depth": 3, "decoder_channels": [16, 8, 4]}
    task = make_task(
        teacher_ckpt, init_from_teacher=False, encoder="resnet18", arch_kwargs=arch_kwargs
    )
    assert task.hparams.arch_kwargs == arch_kwargs
    encoder_level, decoder_level = method(task).feature_distillation.aligners
    assert isinstance(encoder_level.projection, nn.Identity)  # 128 channels on both sides
    assert isinstance(decoder_level.projection, nn.Conv2d)
    assert (decoder_level.projection.in_channels, decoder_level.projection.out_channels) == (4, 8)


def test_classes_in_another_order_permute_the_head(teacher_ckpt):
    task = make_task(teacher_ckpt, class_names=["mining", "background"])
    torch.manual_seed(0)
    x = torch.rand(2, 6, 64, 64) * 3000
    task.model.eval()
    with torch.no_grad():
        student = task.model(x)
        teacher = teacher_model(task)(x)
        reordered = method(task)._teacher_outputs(x).logits
    assert not torch.allclose(student, teacher, atol=1e-6)
    assert torch.allclose(student[:, 0], teacher[:, 1], atol=1e-6)
    assert torch.allclose(student[:, 1], teacher[:, 0], atol=1e-6)
    # Distillation compares the teacher's logits in the student's class order.
    assert torch.allclose(reordered, student, atol=1e-6)


# --------------------------------------------------------------------------------------------
# the task: losses


def test_attentive_and_uniform_distillation_differ_on_the_same_batch(teacher_ckpt, batch):
    images, mask = batch["labeled"]["image"], batch["labeled"]["mask"]
    terms = {}
    for attention in ("attentive", "uniform"):
        task = make_task(teacher_ckpt, attention=attention, feature_weight=1.0)
        perturb(task.model)
        task.eval()
        with torch.no_grad():
            student = task.model.forward_features(images)
            teacher = method(task)._teacher_outputs(images)
            terms[attention] = method(task)._terms(student, teacher, images, mask)
        valid = ~torch.isnan(images).any(1)
        # Wired to the public losses with the task's temperature and attention settings.
        weights = None
        if attention == "attentive":
            weights = distillation_attention(teacher.logits, mask, valid, IGNORE, 4, 1.0)
        expected = prediction_distillation(student.logits, teacher.logits, valid, 2.0, weights)
        assert terms[attention]["prediction"].item() == pytest.approx(expected.item(), rel=1e-5)
    attentive, uniform = terms["attentive"], terms["uniform"]
    assert set(uniform) == {"feature", "prediction"}
    assert set(attentive) == {"feature", "prediction", "attention_mean"}
    assert 0 < attentive["attention_mean"].item() < 1
    for name in ("feature", "prediction"):
        # Attention is at most 1 and the per-pixel losses are non-negative.
        assert 0 < attentive[name].item() < uniform[name].item(), name


def test_training_step_adds_the_weighted_distillation_terms(teacher_ckpt, batch, monkeypatch):
    task = make_task(teacher_ckpt, feature_weight=0.5, prediction_weight=2.0, unlabeled_weight=0.25)
    perturb(task.model)
    task.train()
    logs: dict[str, Tensor] = {}
    monkeypatch.setattr(task, "log", lambda name, value, **_: logs.__setitem__(name, value))
    monkeypatch.setattr(task, "log_dict", lambda values, **_: logs.update(values))
    loss = task.training_step(batch, 0)
    for part in ("fine", "unlabeled"):
        for term in ("feature", "prediction", "attention_mean"):
            assert logs[f"train/{part}_{term}"].item() > 0, (part, term)
    fine = 0.5 * logs["train/fine_feature"] + 2.0 * logs["train/fine_prediction"]
    unlabeled = 0.5 * logs["train/unlabeled_feature"] + 2.0 * logs["train/unlabeled_prediction"]
    expected = logs["train/loss_supervised"] + fine + 0.25 * unlabeled
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert logs["train/loss"].item() == pytest.approx(loss.item())
    loss.backward()
    assert all(p.grad is None for p in teacher_model(task).parameters())
    assert task.model.network.segmentation_head[0].weight.grad.abs().sum() > 0


def test_defaults_distil_predictions_only(teacher_ckpt, batch, monkeypatch):
    task = make_task(teacher_ckpt)
    assert method(task).settings["feature_weight"] == 0.0
    assert method(task).settings["prediction_weight"] == 1.0
    assert method(task).settings["calibrate"] is False
    logs: dict[str, Tensor] = {}
    monkeypatch.setattr(task, "log", lambda name, value, **_: logs.__setitem__(name, value))
    monkeypatch.setattr(task, "log_dict", lambda values, **_: logs.update(values))
    task.train()
    loss = task.training_step(batch, 0)
    assert not any("feature" in name for name in logs)
    expected = (
        logs["train/loss_supervised"]
        + logs["train/fine_prediction"]
        + logs["train/unlabeled_prediction"]
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_no_distillation_weights_never_call_the_teacher(teacher_ckpt, batch, monkeypatch):
    task = make_task(teacher_ckpt, feature_weight=0.0, prediction_weight=0.0)
    assert not method(task).active
    assert make_task(teacher_ckpt, feature_weight=0.0).distillation.active

    def boom(*args: Any, **kwargs: Any):
        raise AssertionError("the teacher was called")

    monkeypatch.setattr(teacher_model(task), "forward_features", boom)
    monkeypatch.setattr(teacher_model(task), "forward", boom)
    monkeypatch.setattr(method(task).teacher, "forward", boom)
    monkeypatch.setattr(task, "log", lambda *a, **k: None)
    monkeypatch.setattr(task, "log_dict", lambda *a, **k: None)
    task.train()
    loss = task.training_step(batch, 0)
    labeled = batch["labeled"]
    expected = task.criterion(task.model(labeled["image"]), labeled["mask"])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


# --------------------------------------------------------------------------------------------
# the task: a real fit, checkpoints and export


def test_fit_trains_the_student_and_leaves_the_teacher_alone(distilled):
    teacher = teacher_model(distilled.task)
    assert_same_state(clone_state(teacher), distilled.teacher_before)
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    after = clone_state(distilled.task.model)
    changed = [k for k in after if not torch.equal(after[k], distilled.student_before[k])]
    assert any(k.startswith("network.encoder") for k in changed)
    assert any(k.startswith("network.segmentation_head") for k in changed)
    # The normaliser is the teacher's: the student sees the data exactly as its teacher did.
    for name in ("mean", "std", "low", "high"):
        key = f"normalizer.{name}"
        assert torch.equal(after[key], distilled.teacher_before[key]), key


def test_fit_distils_on_fine_and_unlabelled_coarse_batches(distilled):
    (metrics_file,) = distilled.run_dir.glob("logs/version_*/metrics.csv")
    with metrics_file.open() as f:
        rows = list(csv.DictReader(f))
    logged = {k for row in rows for k, v in row.items() if v}
    for part in ("fine", "unlabeled"):
        for term in ("feature", "prediction", "attention_mean"):
            assert f"train/{part}_{term}" in logged
    assert 0 <= distilled.result.metrics["mIoU"] <= 1


def test_checkpoint_holds_the_student_only(distilled):
    checkpoint = torch.load(distilled.result.checkpoint, map_location="cpu", weights_only=False)
    keys = list(checkpoint["state_dict"])
    assert not [k for k in keys if "teacher" in k]
    assert all(k.startswith(("model.", "criterion.", "distillation.")) for k in keys)
    model_keys = {k for k in keys if k.startswith("model.")}
    assert model_keys == {f"model.{k}" for k in distilled.task.model.state_dict()}
    # Exactly the task's own submodules: one copy of the student network and nothing more.
    own = {
        f"{name}.{k}"
        for name in ("model", "criterion", "distillation")
        for k in getattr(distilled.task, name).state_dict()
    }
    assert set(keys) == own
    tensors = [v for v in checkpoint["state_dict"].values() if isinstance(v, Tensor)]
    assert len(tensors) == len(keys)
    recorded = checkpoint["hyper_parameters"]["distillation"]
    assert recorded["class_path"] == "geodistill.methods.CoarseToFine"
    assert recorded["init_args"]["teacher"] == str(distilled.teacher_path)
    assert checkpoint["geodistill"]["teacher"] == str(distilled.teacher_path)
    assert checkpoint["geodistill"]["band_names"] == list(BAND_NAMES)


def test_exported_student_loads_and_predicts_without_the_teacher(distilled, tmp_path):
    output = export_student(distilled.result.checkpoint, tmp_path / "student.ckpt")
    assert output == tmp_path / "student.ckpt" and output.is_file()
    distilled.teacher_path.unlink()
    assert not distilled.teacher_path.exists()
    student = SegmentationTask.load_from_checkpoint(output, map_location="cpu")
    assert type(student) is SegmentationTask
    assert student.band_names == list(BAND_NAMES) and student.class_names == CLASSES
    saved = torch.load(output, map_location="cpu", weights_only=False)
    assert "teacher" not in saved["hyper_parameters"] and "teacher" not in saved["geodistill"]
    assert saved["hyper_parameters"].get("distillation") is None
    assert all(k.startswith(("model.", "criterion.")) for k in saved["state_dict"])
    torch.manual_seed(0)
    x = torch.rand(2, 6, 64, 64) * 3000
    x[0, :, :8] = float("nan")  # nodata
    student.eval()
    distilled.task.eval()
    with torch.no_grad():
        expected = distilled.task.model(x)
        assert torch.allclose(student(x), expected, atol=1e-6, rtol=0)


def test_export_refuses_to_overwrite(distilled, tmp_path):
    output = tmp_path / "student.ckpt"
    output.write_bytes(b"precious")
    with pytest.raises(GeodistillError, match="exists") as err:
        export_student(distilled.result.checkpoint, output)
    assert str(output) in str(err.value)
    assert output.read_bytes() == b"precious"
    export_student(distilled.result.checkpoint, output, overwrite=True)
    assert "state_dict" in torch.load(output, map_location="cpu", weights_only=False)
    assert not list(tmp_path.glob(".*.tmp"))


def test_exported_student_can_teach_the_next_stage(distilled, tmp_path):
    output = export_student(distilled.result.checkpoint, tmp_path / "student.ckpt")
    task = make_task(output)
    assert method(task).teacher.network.band_names == list(BAND_NAMES)
    assert_same_state(clone_state(task.model), clone_state(distilled.task.model))


# --------------------------------------------------------------------------------------------
# bad input


def test_teacher_that_never_saw_a_class_is_refused(teacher_ckpt):
    with pytest.raises(GeodistillError, match="never saw quarry") as err:
        make_task(teacher_ckpt, class_names=["background", "quarry"])
    assert str(teacher_ckpt) in str(err.value)


def test_missing_or_unreadable_teacher_is_refused(tmp_path):
    missing = tmp_path / "missing.ckpt"
    with pytest.raises(GeodistillError, match="no such teacher file") as err:
        make_task(missing)
    assert str(missing) in str(err.value)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(GeodistillError, match="cannot read the checkpoint") as err:
        make_task(garbage)
    assert str(garbage) in str(err.value)


def test_teacher_with_another_band_count_is_refused(teacher_ckpt):
    with pytest.raises(GeodistillError, match="teacher takes 6 bands.*student data has 4") as err:
        make_task(teacher_ckpt, in_channels=4, band_names=list(BAND_NAMES)[:4])
    assert "Blue" in str(err.value)


def test_data_with_other_band_names_is_refused_at_setup(teacher_ckpt, tmp_path):
    root = make_dataset(tmp_path / "other", n=4, bands=6)  # bands described b0 ... b5
    datamodule = build_datamodule(
        {
            "classes": CLASSES,
            "fine": {
                "train": {"images": str(root / "images"), "labels": str(root / "labels")},
                "val_fraction": 0.25,
            },
            "patch_size": 64,
            "batch_size": 4,
        }
    )
    # Teachers are built with the task, for its bands: the data's are refused there...
    with pytest.raises(GeodistillError, match="trained on bands Blue.*the data has b0"):
        make_task(teacher_ckpt, band_names=datamodule.band_names)
    # ... and a task built for the teacher's bands refuses other data when fitting starts.
    task = make_task(teacher_ckpt)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.raises(GeodistillError, match="built for bands Blue.*the data has b0"):
        trainer.fit(task, datamodule=datamodule)


def teacher_stats(task: SegmentationTask, mean_factor: float = 1.0, std_factor: float = 1.0):
    normalizer = teacher_model(task).normalizer
    return SimpleNamespace(
        num_bands=normalizer.num_bands,
        low=[float(v) for v in normalizer.low],
        high=[float(v) for v in normalizer.high],
        mean=[float(m) * mean_factor for m in normalizer.mean],
        std=[float(s) * std_factor for s in normalizer.std],
    )


def set_up(task: SegmentationTask, stage: str, band_names: list[str], band_stats: Any) -> None:
    """``task.setup(stage)`` under a trainer whose data module has these bands and statistics."""
    datamodule = SimpleNamespace(
        band_names=band_names,
        band_stats=band_stats,
        num_bands=len(band_names),
        num_classes=len(CLASSES),
        classes=CLASSES,
        patch_size=64,
        unlabeled_from=None,
    )
    task._trainer = SimpleNamespace(datamodule=datamodule)
    try:
        task.setup(stage)
    finally:
        task._trainer = None


def test_data_checks_band_names_and_scaling(teacher_ckpt):
    task = make_task(teacher_ckpt)
    names = list(BAND_NAMES)
    # The teacher's own statistics, and a domain shift well inside the tolerance, pass.
    set_up(task, "fit", names, teacher_stats(task))
    set_up(task, "fit", names, teacher_stats(task, 1.2, 0.8))
    with pytest.raises(GeodistillError, match="bands Blue, Green.*the data has SWIR2, SWIR1"):
        set_up(task, "fit", names[::-1], None)
    with pytest.raises(GeodistillError, match="bands Blue, Green.*the data has SWIR2, SWIR1"):
        make_task(teacher_ckpt, band_names=names[::-1])
    scaled = teacher_stats(task, mean_factor=1000)
    with pytest.raises(GeodistillError, match="band Blue .* not scaled"):
        set_up(task, "fit", names, scaled)
    with pytest.raises(GeodistillError, match="not scaled"):
        set_up(task, "fit", names, teacher_stats(task, std_factor=1e-3))
    # Statistics only matter for fitting.
    set_up(task, "test", names, scaled)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"feature_weight": -1.0}, "feature_weight must be >= 0"),
        ({"prediction_weight": -0.5}, "prediction_weight must be >= 0"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"attention": "everywhere"}, "attention must be"),
        ({"feature_levels": ["middle"]}, "unknown feature level 'middle'"),
        ({"feature_levels": ["encoder.last"]}, "unknown feature level 'encoder.last'"),
        ({"feature_levels": ["encoder.9"]}, "the encoder has 4 levels"),
    ],
)
def test_bad_distillation_settings_are_refused(teacher_ckpt, kwargs, message):
    with pytest.raises(GeodistillError, match=message):
        make_task(teacher_ckpt, **kwargs)


# --------------------------------------------------------------------------------------------
# data: unlabelled images beside the labelled batches


def test_unlabeled_from_coarse_pairs_every_labelled_batch(data):
    datamodule = build_datamodule(data, unlabeled_from="coarse", batch_size=1)
    datamodule.setup("fit")
    loaders = datamodule.train_dataloader()
    assert isinstance(loaders, dict) and set(loaders) == {"labeled", "unlabeled"}
    assert len(datamodule.datasets["train"]) == 3  # 4 fine chips, 1 for validation
    assert len(datamodule.datasets["unlabeled"]) == 4  # every coarse chip
    assert len(loaders["labeled"]) == len(loaders["unlabeled"]) == 3
    unlabeled = list(loaders["unlabeled"])
    assert len(unlabeled) == 3
    for item in unlabeled:
        assert item["image"].shape == (1, 6, 64, 64)
        assert item["mask"].eq(IGNORE).all()
    labeled = next(iter(loaders["labeled"]))
    assert labeled["mask"].ne(IGNORE).any()


def test_unlabeled_from_coarse_needs_a_coarse_domain(data):
    fine_only = {k: v for k, v in data.items() if k != "coarse"}
    datamodule = build_datamodule(fine_only, unlabeled_from="coarse")
    with pytest.raises(GeodistillError, match="data.coarse is not set"):
        datamodule.setup("fit")


def test_unlabeled_images_must_have_the_labelled_band_count(data, tmp_path):
    root = make_dataset(tmp_path / "unlabeled", n=2, bands=4, labels=False)
    datamodule = build_datamodule(
        data, unlabeled_from="unlabeled", unlabeled={"images": str(root / "images")}
    )
    with pytest.raises(GeodistillError, match="unlabelled images have 4 bands, the labelled 6"):
        datamodule.setup("fit")


# --------------------------------------------------------------------------------------------
# the results table of several methods and seeds


def fake_metrics(miou: float) -> dict[str, float]:
    return {
        "mIoU": miou,
        "boundary_F1": miou / 2,
        "OA": 0.9,
        "IoU/background": 0.8,
        "IoU/mining": miou,
    }


def test_results_table_reports_mean_std_and_gap_recovered():
    seeds = [
        {
            "fine_only": fake_metrics(0.5),
            "oracle": fake_metrics(0.7),
            "attentive": fake_metrics(0.65),
        },
        {
            "fine_only": fake_metrics(0.4),
            "oracle": fake_metrics(0.6),
            "attentive": fake_metrics(0.55),
        },
    ]
    table = results_table(seeds, CLASSES)
    lines = table.strip().splitlines()
    assert lines[0] == (
        "| method | mIoU | boundary_F1 | OA | IoU/background | IoU/mining | gap recovered |"
    )
    rows = {line.split(" | ")[0].strip("| "): line for line in lines[2:]}
    assert list(rows) == ["fine_only", "oracle", "attentive"]
    attentive = [cell.strip() for cell in rows["attentive"].strip("|").split("|")]
    assert attentive == [
        "attentive",
        "60.00 ± 5.00",
        "30.00 ± 2.50",
        "90.00 ± 0.00",
        "80.00 ± 0.00",
        "60.00 ± 5.00",
        "75 %",
    ]
    assert rows["fine_only"].endswith("| 0 % |")
    assert rows["oracle"].endswith("| 100 % |")
    # Without both reference methods there is no gap to recover.
    single = results_table({"attentive": fake_metrics(0.6)}, CLASSES)
    assert single.strip().splitlines()[-1].endswith("| – |")
    # ``order`` sets the rows; a method missing from any seed is left out.
    ordered = results_table(seeds, CLASSES, order=["attentive", "fine_only", "joint"])
    assert [line.split(" | ")[0].strip("| ") for line in ordered.strip().splitlines()[2:]] == [
        "attentive",
        "fine_only",
    ]


# --------------------------------------------------------------------------------------------
# calibrating the teacher to the fine labels


def test_logit_calibration_recovers_a_known_temperature_and_bias():
    # Labels drawn from a known posterior: log-odds 4m - 0.847 for margins m ~ N(±2, 1) and a
    # 30 % prior. The teacher's logit is 3(m + 1.5): the exact fix is T = 0.75, bias -6.85.
    generator = torch.Generator().manual_seed(0)
    labels = (torch.rand(50_000, generator=generator) < 0.3).long()
    margin = torch.where(labels == 1, 2.0, -2.0) + torch.randn(50_000, generator=generator)
    logits = torch.stack([torch.zeros_like(margin), 3 * (margin + 1.5)], 1)
    calibration = fit_logit_calibration(logits, labels)
    assert calibration.temperature == pytest.approx(0.75, rel=0.05)
    assert calibration.bias[0] == 0
    assert calibration.bias[1].item() == pytest.approx(-6.85, abs=0.3)
    maps = logits.T.reshape(1, 2, 500, 100)  # applied to (B, K, H, W) maps per class
    expected = maps / calibration.temperature + calibration.bias.view(1, 2, 1, 1)
    assert torch.allclose(calibration(maps), expected)


def test_logit_calibration_leaves_absent_classes_and_empty_input_alone():
    logits = torch.randn(100, 3)
    labels = torch.zeros(100, dtype=torch.long)
    labels[:30] = 1  # class 2 never labelled
    calibration = fit_logit_calibration(logits, labels)
    assert calibration.bias[2] == 0
    empty = fit_logit_calibration(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    assert empty.temperature == 1.0 and torch.equal(empty.bias, torch.zeros(3))


def test_calibrated_teacher_is_fitted_on_the_fine_training_chips(teacher_ckpt, data, batch):
    datamodule = build_datamodule(data, unlabeled_from="coarse")
    datamodule.setup("fit")
    chips = datamodule.whole_chips("fine", "train")
    assert len(chips) == 3 and chips[0]["image"].shape[-2:] == (64, 64)  # whole, 1 of 4 is val
    task = make_task(teacher_ckpt, calibrate=True)
    calibration = method(task).fit_calibration(chips)
    assert calibration.temperature > 0 and calibration.bias[0] == 0
    # the calibrated teacher scores the fine training labels no worse than the raw one
    logits, labels = [], []
    for i in range(len(chips)):
        raw = method(task)._teacher_outputs(chips[i]["image"][None], calibrated=False).logits
        keep = chips[i]["mask"] != IGNORE
        logits.append(raw[0].permute(1, 2, 0)[keep])
        labels.append(chips[i]["mask"][keep])
    logits, labels = torch.cat(logits), torch.cat(labels)
    raw_loss = torch.nn.functional.cross_entropy(logits, labels)
    assert torch.nn.functional.cross_entropy(calibration(logits), labels) <= raw_loss + 1e-6
    # once set, training uses the calibrated logits (and logs the fitted values)
    method(task).calibration = calibration
    images = batch["labeled"]["image"]
    raw = method(task)._teacher_outputs(images, calibrated=False).logits
    assert torch.allclose(method(task)._teacher_outputs(images).logits, calibration(raw))


def test_fit_with_calibration_logs_the_teacher_temperature(teacher_ckpt, data, tmp_path):
    L.seed_everything(0, verbose=False)
    datamodule = build_datamodule(data, unlabeled_from="coarse")
    task = make_task(teacher_ckpt, calibrate=True, lr=0.01, warmup_fraction=0.0)
    quiet_fit(task, datamodule, tmp_path / "run", max_epochs=1)
    assert method(task).calibration is not None
    with open(next((tmp_path / "run").rglob("metrics.csv"))) as f:
        rows = list(csv.DictReader(f))
    logged = [
        float(r["train/teacher_temperature"]) for r in rows if r.get("train/teacher_temperature")
    ]
    assert logged and logged[0] == pytest.approx(method(task).calibration.temperature)
    assert task.hparams.distillation["init_args"]["calibrate"] is True
