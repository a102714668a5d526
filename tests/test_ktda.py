"""KTDA: the alignment loss, feature modulation, the task, its CLI run and its teacher-free export.

Everything runs on CPU with tiny learnable GeoTIFF chips (4 bands, 64 pixels) from
``fixtures_small``. One teacher (a one-epoch geodistill checkpoint) and one KTDA student (fitted
through ``geodistill fit --config``) are trained per module and shared by the tests.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import os
import subprocess
import sys
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
    CLASSES,
    TINY_MODEL,
    config_dict,
    make_dataset,
    write_config,
)
from harness import assert_user_error, quiet_trainer, run_quietly
from timm.layers import LayerScale2d
from torch import Tensor

from geodistill.errors import GeodistillError
from geodistill.export import export_student
from geodistill.inference.predictors import load_checkpoint_predictor
from geodistill.losses.alignment import FeatureAlignment, alignment_loss, alignment_terms
from geodistill.losses.distillation import prediction_distillation
from geodistill.methods import KnowledgeTransfer, build_distillation
from geodistill.models import create_student
from geodistill.models.checkpoint import network_from_checkpoint, read_checkpoint
from geodistill.models.modulation import (
    ChannelLayerNorm,
    EfficientSelfAttention,
    FeatureModulation,
    MLPBlock,
    ModulationConfig,
    TransformerBlock,
    divisor_heads,
)
from geodistill.models.student import select_levels
from geodistill.models.teachers import TeacherSpec, build_teacher
from geodistill.tasks import SegmentationTask

BANDS = ["b0", "b1", "b2", "b3"]
LEVELS = ["encoder.-3", "encoder.-2", "encoder.-1"]
"""The tiny encoder has 4 levels, the first being the input: these are its three stages."""
SMALL_FMM = {"depth": 1, "heads": 8, "mlp_ratio": 2.0}
TASK_OPTIONS = {"arch", "encoder", "arch_kwargs", "loss", "lr", "warmup_fraction", "class_names"}
"""Keyword arguments of the helpers below that go to the task; the others go to the method."""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ktda_data")
    make_dataset(root / "train", n=8, seed=1)
    make_dataset(root / "three_bands", n=4, bands=3, seed=2)
    return root


@pytest.fixture(scope="module")
def teacher_ckpt(data) -> Path:
    """A tiny geodistill teacher: one epoch of ``geodistill fit``."""
    out = data / "teacher_run"
    config = write_config(data / "teacher.yaml", config_dict(data / "train", out, max_epochs=1))
    code, _, err = run_quietly("fit", "--config", str(config))
    assert code == 0, err
    return out / "checkpoints" / "last.ckpt"


def teacher_spec(path: Path, layers: list[str] | None = None) -> dict[str, Any]:
    return {"kind": "geodistill", "path": str(path), "layers": layers or LEVELS}


def ktda_config(data: Path, teacher_path: Path, out: Path, **model: Any) -> dict[str, Any]:
    config = config_dict(data / "train", out, max_epochs=2)
    config["trainer"]["log_every_n_steps"] = 1
    method = {
        "teacher": teacher_spec(teacher_path),
        "student_levels": LEVELS,
        "modulation": SMALL_FMM,
    }
    method.update({k: v for k, v in model.items() if k not in TASK_OPTIONS})
    config["model"] = {
        "class_path": "geodistill.tasks.SegmentationTask",
        "init_args": {
            **TINY_MODEL,
            "loss": "ce",
            "lr": 0.01,
            "warmup_fraction": 0.0,
            **{k: v for k, v in model.items() if k in TASK_OPTIONS},
            "distillation": {
                "class_path": "geodistill.methods.KnowledgeTransfer",
                "init_args": method,
            },
        },
    }
    return config


@pytest.fixture(scope="module")
def fitted(data, teacher_ckpt) -> SimpleNamespace:
    """``geodistill fit --config`` of a KTDA student (transformer FMM, aux head, distillation)."""
    out = data / "ktda_run"
    config = write_config(data / "ktda.yaml", ktda_config(data, teacher_ckpt, out))
    teacher_hash = sha256(teacher_ckpt)
    code, _, err = run_quietly("fit", "--config", str(config))
    assert code == 0, err
    return SimpleNamespace(
        out=out, last=out / "checkpoints" / "last.ckpt", teacher_hash=teacher_hash
    )


def make_task(teacher_path: Path, **kwargs: Any) -> SegmentationTask:
    """A KTDA task on the fixture's bands; its teacher is built with it (unless every
    distillation weight is 0)."""
    task_args = {
        "in_channels": 4,
        "num_classes": 2,
        "class_names": CLASSES,
        "band_names": list(BANDS),
        **TINY_MODEL,
    }
    task_args.update({k: v for k, v in kwargs.items() if k in TASK_OPTIONS})
    method = {
        "teacher": teacher_spec(teacher_path),
        "student_levels": LEVELS,
        "modulation": SMALL_FMM,
    }
    method.update({k: v for k, v in kwargs.items() if k not in TASK_OPTIONS})
    return SegmentationTask(**task_args, distillation=KnowledgeTransfer(**method))


def ktda(task: SegmentationTask) -> KnowledgeTransfer:
    """The task's method, typed."""
    assert isinstance(task.distillation, KnowledgeTransfer)
    return task.distillation


@pytest.fixture(scope="module")
def batch() -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(2, 4, 64, 64, generator=generator)
    image[1, :, :16] = float("nan")  # a nodata strip
    mask = (image[:, 0] > 0.5).long()
    mask[torch.isnan(image).any(1)] = 255
    return {"image": image, "mask": mask}


def perturb(module: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))


# --------------------------------------------------------------------------------------------
# the alignment loss (FAM)


def random_maps(*shapes: tuple[int, ...], seed: int = 0) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) * 2 for shape in shapes]


def test_kl_part_is_a_kl_over_channels_at_each_location():
    shapes = [(2, 5, 4, 6), (2, 3, 2, 3)]
    student, teacher = random_maps(*shapes, seed=1), random_maps(*shapes, seed=2)
    valid = torch.ones(2, 8, 12, dtype=torch.bool)
    temperature = 2.0
    per_level = []
    for s, t in zip(student, teacher, strict=True):
        values = []
        b, _, h, w = s.shape
        for i in range(b):
            for y in range(h):
                for x in range(w):
                    p = torch.softmax(t[i, :, y, x] / temperature, 0)
                    q = torch.softmax(s[i, :, y, x] / temperature, 0)
                    values.append(float((p * (p / q).log()).sum()) * temperature**2)
        per_level.append(np.mean(values))
    expected = float(np.mean(per_level))
    loss = alignment_loss(student, teacher, valid, alpha=1.0, temperature=temperature)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert alignment_loss(teacher, teacher, valid, alpha=1.0).item() == pytest.approx(0, abs=1e-6)


def test_mse_part_and_the_alpha_mix():
    shapes = [(2, 5, 4, 6), (2, 3, 2, 3)]
    student, teacher = random_maps(*shapes, seed=3), random_maps(*shapes, seed=4)
    valid = torch.ones(2, 8, 12, dtype=torch.bool)
    mse = np.mean([F.mse_loss(s, t).item() for s, t in zip(student, teacher, strict=True)])
    assert alignment_loss(student, teacher, valid, alpha=0.0).item() == pytest.approx(mse, rel=1e-5)
    kl = alignment_loss(student, teacher, valid, alpha=1.0).item()
    mixed = alignment_loss(student, teacher, valid, alpha=0.3).item()
    assert mixed == pytest.approx(0.3 * kl + 0.7 * mse, rel=1e-5)
    terms = alignment_terms(student, teacher, valid)
    assert terms["kl"].item() == pytest.approx(kl, rel=1e-6)
    assert terms["mse"].item() == pytest.approx(mse, rel=1e-6)


def width_softmax_kl(student: Tensor, teacher: Tensor) -> Tensor:
    """The KL part with ``kl_axis="width"`` (KTDA's public code), on fully valid maps."""
    valid = torch.ones(student.shape[0], *student.shape[-2:], dtype=torch.bool)
    return alignment_terms([student], [teacher], valid, kl_axis="width")["kl"]


def test_the_width_kl_is_a_kl_over_each_rows_columns():
    shapes = [(2, 3, 4, 5), (2, 2, 2, 3)]
    student, teacher = random_maps(*shapes, seed=11), random_maps(*shapes, seed=12)
    valid = torch.ones(2, 8, 10, dtype=torch.bool)
    temperature = 2.0
    per_level = []
    for s, t in zip(student, teacher, strict=True):
        values = []  # one KL per image, channel and row, summed over the row's columns
        b, c, h, _ = s.shape
        for i in range(b):
            for k in range(c):
                for y in range(h):
                    p = torch.softmax(t[i, k, y] / temperature, 0)
                    q = torch.softmax(s[i, k, y] / temperature, 0)
                    values.append(float((p * (p / q).log()).sum()) * temperature**2)
        per_level.append(np.mean(values))
    terms = alignment_terms(student, teacher, valid, temperature, kl_axis="width")
    assert terms["kl"].item() == pytest.approx(float(np.mean(per_level)), rel=1e-5)
    # The MSE part does not depend on the KL's axis.
    channels = alignment_terms(student, teacher, valid, temperature)
    assert terms["mse"].item() == pytest.approx(channels["mse"].item(), rel=1e-6)
    assert channels["kl"].item() != pytest.approx(terms["kl"].item(), rel=1e-3)
    with pytest.raises(ValueError, match="kl_axis must be one of channels, width, got 'rows'"):
        alignment_terms(student, teacher, valid, kl_axis="rows")


def test_the_width_kl_drops_rows_that_touch_nodata():
    student, teacher = random_maps((2, 4, 4, 4), (2, 4, 4, 4), seed=13)
    valid = torch.ones(2, 8, 8, dtype=torch.bool)
    valid[1, 2, 6] = False  # one pixel of image 1: its level row 1 (input rows 2-3) is dropped
    log_s, log_t = F.log_softmax(student, -1), F.log_softmax(teacher, -1)
    kl = F.kl_div(log_s, log_t, reduction="none", log_target=True)
    per_row = kl.sum(-1).mean(1)  # (B, H)
    kept = torch.ones(2, 4, dtype=torch.bool)
    kept[1, 1] = False
    terms = alignment_terms([student], [teacher], valid, kl_axis="width")
    assert terms["kl"].item() == pytest.approx(per_row[kept].mean().item(), rel=1e-5)
    # Whatever the maps hold in a dropped row, the KL does not change.
    noisy = student.clone()
    noisy[1, :, 1] = 1e3
    again = alignment_terms([noisy], [teacher], valid, kl_axis="width")
    assert again["kl"].item() == pytest.approx(terms["kl"].item(), rel=1e-6)
    # A nodata column touches every row: nothing is left, the KL is 0.
    column = torch.ones(2, 8, 8, dtype=torch.bool)
    column[:, :, 0] = False
    assert alignment_terms([student], [teacher], column, kl_axis="width")["kl"].item() == 0.0


def test_the_loss_depends_on_what_each_location_encodes_not_on_the_crop():
    student, teacher = random_maps((1, 6, 8, 8), (1, 6, 8, 8), seed=5)
    valid = torch.ones(1, 8, 8, dtype=torch.bool)

    def loss(s: Tensor, t: Tensor) -> float:
        return alignment_loss([s], [t], valid[..., : s.shape[-2], : s.shape[-1]], 0.5).item()

    whole = loss(student, teacher)
    # Width positions permuted jointly in student and teacher: the same loss.
    order = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    assert loss(student[..., order], teacher[..., order]) == pytest.approx(whole, rel=1e-6)
    # Rotated tiles (rows become columns): the same loss; the width softmax changes.
    rotated = [torch.rot90(x, 1, (-2, -1)) for x in (student, teacher)]
    assert loss(*rotated) == pytest.approx(whole, rel=1e-6)
    assert width_softmax_kl(*rotated).item() != pytest.approx(
        width_softmax_kl(student, teacher).item(), rel=1e-3
    )
    # Cut into two 4-column crops: the mean of the crops' losses; not so for the width softmax.
    left = [x[..., :4] for x in (student, teacher)]
    right = [x[..., 4:] for x in (student, teacher)]
    assert (loss(*left) + loss(*right)) / 2 == pytest.approx(whole, rel=1e-6)
    halves = (width_softmax_kl(*left) + width_softmax_kl(*right)) / 2
    assert halves.item() != pytest.approx(width_softmax_kl(student, teacher).item(), rel=1e-3)


def test_nodata_locations_are_excluded():
    student, teacher = random_maps((2, 4, 8, 8), (2, 4, 8, 8), seed=6)
    valid = torch.ones(2, 8, 8, dtype=torch.bool)
    valid[1, :, 5:] = False
    loss = alignment_loss([student], [teacher], valid).item()
    # Whatever the maps hold at nodata locations, the loss does not change ...
    noisy = student.clone()
    noisy[1, :, :, 5:] = 1e3
    assert alignment_loss([noisy], [teacher], valid).item() == pytest.approx(loss, rel=1e-6)
    # ... and equals the mean over the valid locations alone.
    per_location = 0.5 * (
        torch.softmax(teacher, 1) * (teacher.log_softmax(1) - student.log_softmax(1))
    ).sum(1) + 0.5 * (student - teacher).pow(2).mean(1)
    assert loss == pytest.approx(per_location[valid].mean().item(), rel=1e-5)
    assert alignment_loss([student], [teacher], torch.zeros_like(valid)).item() == 0.0


def test_validity_is_area_resized_to_each_level():
    student, teacher = random_maps((1, 3, 2, 2), (1, 3, 2, 2), seed=7)
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    valid[0, 0, 0] = False  # a quarter of the top-left cell's footprint is nodata
    per_cell = (student - teacher).pow(2).mean(1)[0]
    weights = torch.tensor([[0.75, 1.0], [1.0, 1.0]])
    expected = (weights * per_cell).sum() / weights.sum()
    loss = alignment_loss([student], [teacher], valid, alpha=0.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_feature_alignment_projects_then_resizes_to_the_teacher_grid():
    alignment = FeatureAlignment([6, 6], [10, 10])
    student = random_maps((2, 6, 8, 8), (2, 6, 8, 8), seed=8)
    teacher = [torch.zeros(2, 10, 4, 4), torch.zeros(2, 10, 12, 12)]
    aligned = alignment(student, teacher)
    assert [tuple(a.shape) for a in aligned] == [(2, 10, 4, 4), (2, 10, 12, 12)]
    for projection, s, a in zip(alignment.projections, student, aligned, strict=True):
        reference = F.interpolate(projection(s), size=a.shape[-2:], mode="bilinear")
        torch.testing.assert_close(a, reference, atol=1e-5, rtol=1e-5)
    assert alignment.channels == ([6, 6], [10, 10])


# --------------------------------------------------------------------------------------------
# feature modulation (FMM)


def set_layer_scales(module: torch.nn.Module, value: float) -> None:
    for layer in module.modules():
        if isinstance(layer, LayerScale2d):
            layer.gamma.data.fill_(value)


def encoder_features(seed: int = 0) -> list[Tensor]:
    return random_maps((2, 4, 64, 64), (2, 16, 32, 32), (2, 24, 16, 16), (2, 32, 8, 8), seed=seed)


def test_modulation_keeps_shapes_and_starts_near_identity():
    channels = [4, 16, 24, 32]
    features = encoder_features()
    config = ModulationConfig(depth=2, heads=8, levels=["encoder.-2", "encoder.-1"])
    modulation = FeatureModulation(channels, config).eval()
    assert modulation.indices == [2, 3]
    assert modulation.reductions == {2: 2, 3: 1}  # 1 at the deepest level, doubling upwards
    with torch.no_grad():
        out = modulation(features)
    assert [o.shape for o in out] == [f.shape for f in features]
    assert out[0] is features[0] and out[1] is features[1]  # unmodulated levels pass through
    for o, f in zip(out[2:], features[2:], strict=True):
        assert 0 < (o - f).abs().max().item() < 1e-3 * f.abs().max().item()
    exact = FeatureModulation(channels, ModulationConfig(depth=1, layer_scale=0.0)).eval()
    assert exact.indices == [1, 2, 3]  # no levels named: the deepest four, the input excluded
    with torch.no_grad():
        assert all(torch.equal(o, f) for o, f in zip(exact(features), features, strict=True))
        set_layer_scales(exact, 1.0)  # the blocks now change the features
        assert not torch.allclose(exact(features)[3], features[3], atol=1e-2)


def test_transformer_and_mlp_blocks():
    channels = [4, 16, 24, 32]
    transformer = FeatureModulation(channels, ModulationConfig(depth=3, levels=["encoder.-1"]))
    mlp = FeatureModulation(channels, ModulationConfig(kind="mlp", depth=3, levels=["encoder.-1"]))
    assert [type(b) for b in transformer.stacks["3"]] == [TransformerBlock] * 3
    assert [type(b) for b in mlp.stacks["3"]] == [MLPBlock] * 3
    assert not any(isinstance(m, EfficientSelfAttention) for m in mlp.modules())
    # The MLP variant is the transformer block without its attention half.
    attention = sum(
        p.numel()
        for m in transformer.modules()
        if isinstance(m, EfficientSelfAttention)
        for p in m.parameters()
    )
    norms = 3 * 2 * 32  # the attention half's layer norm and layer scale per block
    count = sum(p.numel() for p in mlp.parameters())
    assert count == sum(p.numel() for p in transformer.parameters()) - attention - 3 * 32 - norms
    x = encoder_features()
    assert mlp(x)[3].shape == x[3].shape


def test_channel_layer_norm_is_a_layer_norm_over_channels():
    norm = ChannelLayerNorm(6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2)
        norm.bias.uniform_(-1, 1)
    x = torch.randn(2, 6, 5, 7) * 3 + 1
    expected = F.layer_norm(x.movedim(1, -1), (6,), norm.weight, norm.bias, eps=1e-6)
    torch.testing.assert_close(norm(x), expected.movedim(-1, 1), atol=1e-5, rtol=1e-5)


def test_heads_fall_to_the_largest_divisor_of_the_width():
    assert [divisor_heads(w, 8) for w in (64, 6, 20, 7, 9, 1)] == [8, 6, 5, 7, 3, 1]
    block = TransformerBlock(20, ModulationConfig(heads=8), reduction=1)
    assert block.attention.heads == 5
    out = block(torch.randn(1, 20, 6, 6))
    assert out.shape == (1, 20, 6, 6)


def test_pooled_keys_average_partial_border_cells_exactly():
    attention = EfficientSelfAttention(8, 2, reduction=4)
    x = torch.randn(2, 8, 10, 7)
    expected = F.avg_pool2d(x, 4, 4, ceil_mode=True)  # clipped windows: mean of what they cover
    torch.testing.assert_close(attention._pool(x), expected)
    assert attention._pool(torch.randn(1, 8, 2, 3)).shape == (1, 8, 1, 1)


def tiny_student(**kwargs: Any) -> torch.nn.Module:
    arch_kwargs = {**TINY_MODEL["arch_kwargs"], **kwargs}
    return create_student(TINY_MODEL["arch"], TINY_MODEL["encoder"], 4, 2, **arch_kwargs)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"kind": "mamba"}, "unknown modulation kind 'mamba'"),
        ({"depth": 0}, "modulation.depth must be an integer >= 1"),
        ({"heads": 0}, "modulation.heads must be an integer >= 1"),
        ({"mlp_ratio": 0}, "modulation.mlp_ratio must be > 0"),
        ({"levels": ["decoder"]}, "cannot modulate level 'decoder'"),
        ({"levels": ["encoder.0"]}, "encoder level 0 is the normalised input"),
        ({"levels": ["encoder.-9"]}, "the encoder has 4 levels"),
        ({"depht": 2}, "unknown modulation option"),
    ],
)
def test_bad_modulation_settings_are_refused(config, message):
    with pytest.raises(GeodistillError, match=message):
        tiny_student(modulation=config)


def test_a_student_carries_its_modulation_in_the_decoder_path():
    plain = tiny_student()
    student = tiny_student(modulation=SMALL_FMM)
    student.load_state_dict(plain.state_dict(), strict=False)
    assert {k.split(".")[0] for k in student.state_dict()} == {
        "normalizer",
        "network",
        "modulation",
    }
    x = torch.rand(1, 4, 64, 64)
    plain.eval()
    student.eval()
    with torch.no_grad():
        out, reference = student.forward_features(x), plain.forward_features(x)
        # Distillation taps the encoder's own features, before modulation ...
        for a, b in zip(out.features, reference.features, strict=True):
            assert torch.equal(a, b)
        # ... while the decoder reads the modulated ones.
        set_layer_scales(student.modulation, 1.0)
        assert not torch.allclose(student(x), plain(x), atol=1e-3)


# --------------------------------------------------------------------------------------------
# the task


def test_the_teacher_is_frozen_and_never_part_of_the_task(teacher_ckpt):
    task = make_task(teacher_ckpt)  # teacher and heads are built with the task
    method = ktda(task)
    teacher = method.teacher
    assert teacher.levels == LEVELS
    assert method.alignment is not None
    assert method.alignment.channels == ([64, 64, 128], [64, 64, 128])
    assert method.aux_head is not None and method.aux_head[-1].out_channels == 2
    task.train()
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    names = {tuple(name.split(".")[:2]) for name, _ in task.named_parameters()}
    heads = {second for first, second in names if first == "distillation"}
    assert {first for first, _ in names} == {"model", "distillation"}
    assert heads == {"alignment", "aux_head"}  # the loss heads are optimised
    assert not any("teacher" in key for key in task.state_dict())


def test_training_step_adds_the_weighted_terms(teacher_ckpt, batch, monkeypatch):
    task = make_task(teacher_ckpt, distill_weight=2.0, aux_weight=0.5, alpha=0.25, temperature=2.0)
    method = ktda(task)
    perturb(task.model)
    task.train()
    logs: dict[str, Tensor] = {}
    monkeypatch.setattr(task, "log", lambda name, value, **_: logs.__setitem__(name, value))
    monkeypatch.setattr(task, "log_dict", lambda values, **_: logs.update(values))
    loss = task.training_step(batch, 0)
    for term in ("supervised", "ce", "aux", "distill", "kl", "mse"):
        assert logs[f"train/loss_{term}"].item() > 0, term
    expected = (
        logs["train/loss_supervised"]
        + 0.5 * logs["train/loss_aux"]
        + 2 * logs["train/loss_distill"]
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # The distillation term is the public loss on the student's pre-modulation features.
    task.eval()
    with torch.no_grad():
        student = task.model.forward_features(batch["image"])
        teacher = method.teacher(batch["image"])
        aligned = method.alignment(select_levels(student, LEVELS), teacher.features)
        valid = ~torch.isnan(batch["image"]).any(1)
        reference = alignment_loss(aligned, teacher.features, valid, alpha=0.25, temperature=2.0)
        terms = method.distillation_terms(student, teacher, valid)
    assert terms["distill"].item() == pytest.approx(reference.item(), rel=1e-5)
    loss.backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    for part in (method.alignment, method.aux_head, task.model.modulation):
        assert sum(p.grad.abs().sum() for p in part.parameters() if p.grad is not None) > 0


def step_logs(task: SegmentationTask, batch: dict[str, Tensor], monkeypatch) -> tuple:
    """One training step: the loss and what it logged."""
    logs: dict[str, Tensor] = {}
    monkeypatch.setattr(task, "log", lambda name, value, **_: logs.__setitem__(name, value))
    monkeypatch.setattr(task, "log_dict", lambda values, **_: logs.update(values))
    return task.training_step(batch, 0), logs


def test_the_width_kl_option_reaches_the_training_terms(teacher_ckpt, batch):
    task = make_task(teacher_ckpt, kl_axis="width", temperature=2.0)
    method = ktda(task)
    perturb(task.model)
    task.eval()
    with torch.no_grad():
        student = task.model.forward_features(batch["image"])
        teacher = method.teacher(batch["image"])
        aligned = method.alignment(select_levels(student, LEVELS), teacher.features)
        valid = ~torch.isnan(batch["image"]).any(1)
        terms = method.distillation_terms(student, teacher, valid)
        width = alignment_terms(aligned, teacher.features, valid, 2.0, kl_axis="width")
        channels = alignment_terms(aligned, teacher.features, valid, 2.0)
    assert terms["kl"].item() == pytest.approx(width["kl"].item(), rel=1e-6)
    assert terms["kl"].item() != pytest.approx(channels["kl"].item(), rel=1e-3)


def test_the_distillation_cap_keeps_the_term_within_the_ratio(teacher_ckpt, batch, monkeypatch):
    plain = make_task(teacher_ckpt, distill_weight=2.0, aux_weight=0.0)
    perturb(plain.model)
    plain.train()
    torch.manual_seed(0)
    _, logs = step_logs(plain, batch, monkeypatch)
    assert "train/distill_weight_effective" not in logs  # off by default
    supervised, distill = logs["train/loss_supervised"], logs["train/loss_distill"]
    ratio = 0.5 * (2.0 * distill / supervised).item()  # half of today's ratio: the cap bites
    for cap, expected in ((ratio, ratio * supervised / distill), (1e6, torch.tensor(2.0))):
        task = make_task(teacher_ckpt, distill_weight=2.0, aux_weight=0.0, max_distill_ratio=cap)
        task.load_state_dict(plain.state_dict())
        task.train()
        torch.manual_seed(0)
        loss, logs = step_logs(task, batch, monkeypatch)
        effective = logs["train/distill_weight_effective"]
        assert effective.item() == pytest.approx(expected.item(), rel=1e-5)
        assert logs["train/loss_distill"].item() == pytest.approx(distill.item(), rel=1e-6)
        assert loss.item() == pytest.approx((supervised + effective * distill).item(), rel=1e-5)
        assert (effective * distill).item() <= cap * supervised.item() * (1 + 1e-5)


def test_a_vit_teacher_from_timm(batch, monkeypatch):
    """A ViT's levels share one stride-16 grid: FAM projects and resizes every student level to
    it. (Random weights: ``path`` is left out, nothing is downloaded.)"""
    spec = {"kind": "timm", "arch": "vit_tiny_patch16_224", "layers": [3, 7, 11]}
    task = make_task(Path("unused"), teacher={**spec, "bands": ["b0", "b1", "b2"]})
    method = ktda(task)
    assert method.alignment is not None
    assert method.alignment.channels == ([64, 64, 128], [192, 192, 192])
    with torch.no_grad():
        features = method.teacher(batch["image"]).features
    assert [tuple(f.shape) for f in features] == [(2, 192, 4, 4)] * 3
    monkeypatch.setattr(task, "log", lambda *a, **k: None)
    monkeypatch.setattr(task, "log_dict", lambda *a, **k: None)
    task.train()
    loss = task.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in method.alignment.parameters())
    # RGB teacher, 4 unnamed student bands: refused without a mapping, naming the arch's bands.
    with pytest.raises(GeodistillError, match="teacher takes 3 bands"):
        make_task(Path("unused"), teacher=spec)


def test_cached_teacher_outputs_replace_the_teacher(teacher_ckpt, batch, monkeypatch):
    task = make_task(teacher_ckpt, aux_weight=0.0)
    method = ktda(task)
    task.eval()
    with torch.no_grad():
        output = method.teacher(batch["image"])
    cached = {**batch, "teacher": {"features": [f.half() for f in output.features], "logits": None}}

    def boom(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the teacher ran although the batch carries its outputs")

    monkeypatch.setattr(method.teacher, "forward", boom)
    monkeypatch.setattr(task, "log", lambda *a, **k: None)
    monkeypatch.setattr(task, "log_dict", lambda *a, **k: None)
    used = method.teacher_outputs(cached)
    assert all(f.dtype == torch.float32 for f in used.features)
    with torch.no_grad():
        from_cache = task.training_step(cached, 0)
    monkeypatch.undo()
    monkeypatch.setattr(task, "log", lambda *a, **k: None)
    monkeypatch.setattr(task, "log_dict", lambda *a, **k: None)
    with torch.no_grad():
        live = task.training_step(batch, 0)
    assert from_cache.item() == pytest.approx(live.item(), rel=1e-2)


def test_without_distillation_weights_no_teacher_is_needed(tmp_path, batch, monkeypatch):
    missing = tmp_path / "nowhere.ckpt"
    task = make_task(missing, distill_weight=0.0, aux_weight=0.4)
    assert not ktda(task).active
    assert not ktda(task).teachers.built  # a missing teacher file is fine: it is never built
    logs: dict[str, Tensor] = {}
    monkeypatch.setattr(task, "log", lambda name, value, **_: logs.__setitem__(name, value))
    monkeypatch.setattr(task, "log_dict", lambda values, **_: logs.update(values))
    loss = task.training_step(batch, 0)
    expected = logs["train/loss_supervised"] + 0.4 * logs["train/loss_aux"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert "train/loss_distill" not in logs


def test_prediction_distillation_reorders_the_teacher_classes(teacher_ckpt, batch):
    task = make_task(
        teacher_ckpt, class_names=CLASSES[::-1], prediction_weight=1.0, temperature=2.0
    )
    method = ktda(task)
    task.eval()
    with torch.no_grad():
        student = task.model.forward_features(batch["image"])
        teacher = method.teacher(batch["image"])
        valid = ~torch.isnan(batch["image"]).any(1)
        terms = method.distillation_terms(student, teacher, valid)
    reordered = teacher.logits[:, [1, 0]]
    expected = prediction_distillation(student.logits, reordered, valid, 2.0)
    assert terms["prediction"].item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(GeodistillError, match="teacher's classes .* differ") as err:
        make_task(teacher_ckpt, class_names=["background", "quarry"], prediction_weight=1)
    assert str(teacher_ckpt) in str(err.value)


def test_modulation_on_levels_the_decoder_never_reads_is_refused(teacher_ckpt):
    with pytest.raises(GeodistillError, match="decoder never reads encoder.-3, encoder.-2"):
        make_task(
            teacher_ckpt,
            arch="deeplabv3plus",
            encoder="resnet18",
            arch_kwargs={},
            student_levels=["encoder.-4", "encoder.-3", "encoder.-2", "encoder.-1"],
            teacher=teacher_spec(teacher_ckpt, ["encoder.-1"] * 4),
        )


# --------------------------------------------------------------------------------------------
# end to end: geodistill fit --config, checkpoints, export


def test_ktda_fits_from_a_config_through_the_cli(fitted, teacher_ckpt):
    assert fitted.last.is_file()
    assert sha256(teacher_ckpt) == fitted.teacher_hash  # the teacher file is only read
    checkpoint = torch.load(fitted.last, map_location="cpu", weights_only=False)
    keys = list(checkpoint["state_dict"])
    assert not [k for k in keys if "teacher" in k]
    assert {k.split(".")[0] for k in keys} == {"model", "distillation"}
    heads = {k.split(".")[1] for k in keys if k.startswith("distillation.")}
    assert heads == {"alignment", "aux_head"}
    assert any(k.startswith("model.modulation.stacks.3.0.attention") for k in keys)
    # The checkpoint records the teacher's spec, never its weights.
    spec = checkpoint["geodistill"]["teacher"]
    assert spec["kind"] == "geodistill" and spec["path"] == str(teacher_ckpt)
    hparams = checkpoint["hyper_parameters"]
    method = hparams["distillation"]
    assert method["class_path"] == "geodistill.methods.KnowledgeTransfer"
    assert method["init_args"]["modulation"]["levels"] == LEVELS
    assert hparams["arch_kwargs"]["modulation"] == method["init_args"]["modulation"]
    (metrics_file,) = fitted.out.glob("logs/version_*/metrics.csv")
    with metrics_file.open() as f:
        rows = list(csv.DictReader(f))
    logged = {k for row in rows for k, v in row.items() if v}
    for term in ("loss", "loss_supervised", "loss_distill", "loss_kl", "loss_mse", "loss_aux"):
        assert f"train/{term}" in logged, term
    assert "train/loss_prediction" not in logged  # prediction_weight 0: never computed
    scores = [float(row["val/mIoU"]) for row in rows if row.get("val/mIoU")]
    assert len(scores) == 2 and all(0 <= score <= 1 for score in scores)


def test_a_fitted_task_reloads_with_its_method(fitted, teacher_ckpt):
    task = SegmentationTask.load_from_checkpoint(fitted.last, map_location="cpu")
    method = ktda(task)
    assert method.alignment is not None and method.alignment.channels[1] == [64, 64, 128]
    assert method.aux_head is not None
    assert task.band_names == BANDS
    # the teacher is rebuilt from the recorded spec, not from the checkpoint's weights
    assert method.teacher.levels == LEVELS and method.teacher.spec.path == str(teacher_ckpt)


def test_exported_checkpoint_is_the_student_with_its_modulation(fitted, tmp_path):
    task = SegmentationTask.load_from_checkpoint(fitted.last, map_location="cpu").eval()
    exported = export_student(fitted.last, tmp_path / "student.ckpt")
    saved = torch.load(exported, map_location="cpu", weights_only=False)
    assert all(k.startswith("model.") for k in saved["state_dict"])
    assert any(k.startswith("model.modulation.") for k in saved["state_dict"])
    assert saved["hyper_parameters"].get("distillation") is None  # no method, no teacher
    assert "teacher" not in saved["hyper_parameters"] and "teacher" not in saved["geodistill"]
    student = SegmentationTask.load_from_checkpoint(exported, map_location="cpu").eval()
    assert type(student) is SegmentationTask and student.model.modulation is not None
    assert student.distillation is None
    predictor = load_checkpoint_predictor(exported)
    x = torch.rand(2, 4, 96, 64)
    x[0, :, :8] = float("nan")
    with torch.no_grad():
        expected = task.model(x)
        torch.testing.assert_close(student(x), expected, atol=1e-6, rtol=0)
        rebuilt = network_from_checkpoint(read_checkpoint(fitted.last), fitted.last).eval()
        torch.testing.assert_close(rebuilt(x), expected, atol=1e-6, rtol=0)
    probs = predictor.predict(x.numpy())
    np.testing.assert_allclose(probs, expected.softmax(1).numpy(), atol=1e-5)


def test_exported_onnx_matches_pytorch_on_any_tile_size(fitted, tmp_path):
    task = SegmentationTask.load_from_checkpoint(fitted.last, map_location="cpu").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_path = export_student(fitted.last, tmp_path / "student.onnx")  # checks 64x64 itself
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for shape in [(1, 4, 64, 64), (2, 4, 96, 160)]:
        x = torch.rand(shape) * 2
        with torch.no_grad():
            expected = task.model(x).numpy()
        np.testing.assert_allclose(session.run(None, {"image": x.numpy()})[0], expected, atol=1e-4)


# --------------------------------------------------------------------------------------------
# with a teacher cache


def test_training_on_a_teacher_cache(data, teacher_ckpt, tmp_path, monkeypatch):
    pytest.importorskip("geodistill.data.teacher_cache")
    from geodistill.data import Domain, GeoSegDataModule, Source

    seen: list[bool] = []
    original = KnowledgeTransfer.teacher_outputs

    def spy(self: KnowledgeTransfer, batch: dict[str, Any]):
        seen.append("teacher" in batch)
        output = original(self, batch)
        with torch.no_grad():
            live = self.teacher(batch["image"])
        for cached, computed in zip(output.features, live.features, strict=True):
            torch.testing.assert_close(cached, computed, atol=2e-2, rtol=2e-2)  # float16 cache
        return output

    monkeypatch.setattr(KnowledgeTransfer, "teacher_outputs", spy)
    root = data / "train"
    datamodule = GeoSegDataModule(
        classes=CLASSES,
        fine=Domain(train=Source(str(root / "images"), str(root / "labels")), val_fraction=0.25),
        patch_size=64,
        batch_size=4,
        eval_batch_size=4,
        augment=False,
    )
    folder = tmp_path / "cache"
    task = make_task(teacher_ckpt, teacher_cache=str(folder), lr=0.01)
    trainer = quiet_trainer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(task, datamodule=datamodule)
    assert seen and all(seen)
    assert (folder / "meta.json").is_file()
    assert datamodule.served("train") is not datamodule.datasets["train"]  # the raw set is kept


# --------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": -0.1}, r"alpha must be in \[0, 1\], got -0.1"),
        ({"alpha": 1.5}, r"alpha must be in \[0, 1\], got 1.5"),
        ({"temperature": 0.0}, "temperature must be > 0, got 0.0"),
        ({"temperature": -1.0}, "temperature must be > 0"),
        ({"distill_weight": -1.0}, "distill_weight must be >= 0"),
        ({"aux_weight": -0.4}, "aux_weight must be >= 0"),
        ({"cache_on_mismatch": "ignore"}, "cache_on_mismatch must be 'rebuild' or 'refuse'"),
        ({"student_levels": ["middle"] * 3}, "unknown feature level 'middle'"),
        ({"aux_level": "encoder.7"}, "the encoder has 4 levels"),
        ({"teacher": {"kind": "geodistill", "pth": "x"}}, "unknown teacher option"),
        ({"kl_axis": "rows"}, "kl_axis must be one of 'channels', 'width', got 'rows'"),
        ({"max_distill_ratio": 0.0}, r"max_distill_ratio must be > 0 \(or null for no cap\)"),
        ({"max_distill_ratio": -1.0}, "max_distill_ratio must be > 0"),
    ],
)
def test_bad_settings_are_refused(teacher_ckpt, kwargs, message):
    with pytest.raises(GeodistillError, match=message):
        make_task(teacher_ckpt, **kwargs)


def test_student_and_teacher_level_counts_must_agree(teacher_ckpt):
    # Known from the spec: refused when the task is built.
    with pytest.raises(GeodistillError, match="lists 3 student levels but the teacher gives 2"):
        make_task(teacher_ckpt, teacher=teacher_spec(teacher_ckpt, LEVELS[:2]))
    # The teacher's default levels (four): refused when it is built, naming its file.
    with pytest.raises(GeodistillError, match="3 student levels but the teacher gives 4") as err:
        make_task(teacher_ckpt, teacher=str(teacher_ckpt))
    assert str(teacher_ckpt) in str(err.value)


def test_teacher_on_other_bands_is_refused_naming_its_file(data, teacher_ckpt, tmp_path, capsys):
    from fixtures_small import cli

    config = ktda_config(data, teacher_ckpt, tmp_path / "out")
    three = data / "three_bands"
    config["data"]["init_args"]["fine"]["train"] = {
        "images": str(three / "images"),
        "labels": str(three / "labels"),
    }
    path = write_config(tmp_path / "bad.yaml", config)
    code, _, err = cli(capsys, "fit", "--config", str(path))
    assert_user_error(code, err, str(teacher_ckpt), "4 bands", "teacher.bands")
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.parametrize(
    ("change", "needles"),
    [
        ({"modulation": {"depht": 2}}, ("unknown modulation option(s) depht",)),
        ({"alpha": 2.0}, ("alpha must be in [0, 1], got 2.0",)),
        ({"teacher": {"kind": "geodistill", "pth": "x.ckpt"}}, ("unknown teacher option(s) pth",)),
    ],
)
def test_bad_ktda_config_is_one_clear_line(data, teacher_ckpt, tmp_path, capsys, change, needles):
    from fixtures_small import cli

    config = ktda_config(data, teacher_ckpt, tmp_path / "out", **change)
    path = write_config(tmp_path / "bad.yaml", config)
    code, _, err = cli(capsys, "fit", "--config", str(path))
    assert_user_error(code, err, *needles)


def test_the_demo_config_parses():
    config = Path(__file__).parents[1] / "configs" / "ktda_demo.yaml"
    code, out, err = run_quietly("fit", "--config", str(config), "--print_config")
    assert code == 0, err
    assert "geodistill.methods.KnowledgeTransfer" in out and "transformer" in out


def test_teacher_spec_round_trips_through_hyper_parameters(teacher_ckpt):
    spec = TeacherSpec(kind="geodistill", path=str(teacher_ckpt), layers=list(LEVELS))
    task = make_task(teacher_ckpt, teacher=spec)
    again = SegmentationTask(**copy.deepcopy(dict(task.hparams)))
    assert ktda(again).spec == spec
    assert again.hparams.arch_kwargs == task.hparams.arch_kwargs
    assert again.model.modulation is not None
    conflicting = copy.deepcopy(dict(task.hparams))
    conflicting["distillation"]["init_args"]["modulation"] = {"kind": "mlp", "depth": 1}
    with pytest.raises(GeodistillError, match="arch_kwargs.modulation differs"):
        SegmentationTask(**conflicting)


def test_checkpoint_hyper_parameters_rebuild_the_same_task(teacher_ckpt):
    task = make_task(
        teacher_ckpt,
        prediction_weight=0.5,
        aux_weight=0.3,
        kl_axis="width",
        max_distill_ratio=0.5,
    )
    perturb(task)
    again = SegmentationTask(**copy.deepcopy(dict(task.hparams)))
    assert again.hparams.distillation == task.hparams.distillation
    assert ktda(again).settings["kl_axis"] == "width"
    assert ktda(again).settings["max_distill_ratio"] == 0.5
    assert again.state_dict().keys() == task.state_dict().keys()
    again.load_state_dict(task.state_dict(), strict=True)
    for key, value in task.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_hyper_parameters_recorded_before_the_kl_axis_and_the_cap_still_load(teacher_ckpt):
    task = make_task(teacher_ckpt)
    old = copy.deepcopy(dict(task.hparams))
    for option in ("kl_axis", "max_distill_ratio"):
        del old["distillation"]["init_args"][option]
    again = SegmentationTask(**old)
    assert ktda(again).settings["kl_axis"] == "channels"
    assert ktda(again).settings["max_distill_ratio"] is None
    again.load_state_dict(task.state_dict(), strict=True)


def test_a_checkpoint_config_never_imports_an_unknown_class():
    with pytest.raises(GeodistillError, match="unknown method 'os.system'") as error:
        build_distillation({"class_path": "os.system", "init_args": {}})
    message = str(error.value)
    for name in ("CoarseToFine", "KnowledgeTransfer", "SemiSupervised"):
        assert f"geodistill.methods.{name}" in message


def test_two_ddp_processes_share_one_teacher_cache(data, teacher_ckpt, tmp_path):
    # rank 0 builds the cache, rank 1 opens it after a barrier: no race on the folder
    out = tmp_path / "ddp_run"
    cache = tmp_path / "cache"
    config = ktda_config(data, teacher_ckpt, out, teacher_cache=str(cache))
    config["trainer"].update(
        max_epochs=1, accelerator="cpu", devices=2, strategy="ddp", enable_progress_bar=False
    )
    path = write_config(tmp_path / "ddp.yaml", config)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PL_", "LOCAL_RANK"))}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    script = Path(sys.executable).with_name("geodistill")
    result = subprocess.run(
        [str(script), "fit", "--config", str(path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (cache / "meta.json").is_file()
    assert not [p for p in tmp_path.iterdir() if "building" in p.name]  # no leftover build
    assert (out / "checkpoints" / "last.ckpt").is_file()


def test_a_fixed_size_onnx_teacher_is_probed_at_its_own_tile_size(tmp_path):
    # the task probes teacher widths and classes; a graph fixed to 32x32 refuses other sizes
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1)
    )
    path = tmp_path / "fixed.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.zeros(1, 3, 32, 32),),
            str(path),
            input_names=["input"],
            output_names=["output"],
            dynamo=False,
        )
    spec = {"kind": "onnx", "path": str(path), "class_names": ["b", "a"]}
    bands = ["red", "green", "blue"]
    assert build_teacher(spec, bands).channels() == [2]
    task = SegmentationTask(
        in_channels=3,
        num_classes=2,
        class_names=["a", "b"],
        band_names=bands,
        **TINY_MODEL,
        distillation=KnowledgeTransfer(
            teacher=spec, student_levels=["decoder"], modulation=None, prediction_weight=1.0
        ),
    )
    method = ktda(task)
    assert method.teacher.channels() == [2]
    assert method._class_order is not None and method._class_order.tolist() == [1, 0]
