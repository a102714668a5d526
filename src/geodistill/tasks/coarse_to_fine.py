"""Stage 2 of coarse-to-fine domain-incremental learning (geodistill's MineC2FNet method).

A student, by default initialised from the coarse-domain teacher, learns the few fine labels with
the supervised loss plus attentive distillation from the frozen teacher:

    loss = supervised(fine) + feature_weight * L_feature + prediction_weight * L_prediction

``L_feature`` compares aligned, normalised student and teacher features at ``feature_levels``;
``L_prediction`` is the temperature-scaled KL between their class probabilities. Both are
weighted per pixel by :func:`~geodistill.losses.attention.distillation_attention` (or uniformly
with ``attention="uniform"``), on the labelled fine batch and, when the data module provides one,
on a batch of unlabelled coarse-domain images (``data.unlabeled_from: coarse``), so the student
keeps the teacher's knowledge of the coarse domain. With both weights at 0 this is naive
fine-tuning of the teacher. The teacher is never saved: checkpoints hold the student only and
:func:`geodistill.export.export_student` turns them into a plain, teacher-free model.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from geodistill.errors import GeodistillError
from geodistill.losses.attention import distillation_attention
from geodistill.losses.distillation import FeatureDistillation, prediction_distillation
from geodistill.models import SegmentationModel, SegmentationOutput
from geodistill.models.checkpoint import TrainedNetwork, load_trained_network
from geodistill.models.student import select_levels
from geodistill.tasks.schedules import Schedule
from geodistill.tasks.segmentation import SegmentationTask

Attention = Literal["attentive", "uniform"]

STATS_TOLERANCE = 10.0
"""How far (in teacher standard deviations, or as a std ratio) the student data's band statistics
may sit from the teacher's before the data is judged to be scaled differently (e.g. reflectance
0-1 against digital numbers 0-10000), rather than merely shifted by the domain."""


class CoarseToFineTask(SegmentationTask):
    """Fine-domain student distilled from a frozen coarse-domain teacher (see module docstring).

    Args beyond :class:`SegmentationTask`:
        teacher: checkpoint of the stage-1 (coarse) task.
        init_from_teacher: start from the teacher's weights and normalisation (domain-incremental);
            ``arch``/``encoder``/``arch_kwargs`` are then the teacher's.
        feature_weight, prediction_weight: weights of the two distillation terms.
        temperature: softening of the prediction distillation.
        feature_levels: where features are distilled, ``encoder.<i>`` and/or ``decoder``.
        attention: ``attentive`` (per-pixel trust map) or ``uniform`` (plain distillation).
        boundary_width, confidence_power: shape of the attentive map.
        unlabeled_weight: weight of the distillation terms on unlabelled-image batches.
    """

    def __init__(
        self,
        teacher: str,
        in_channels: int = 3,
        num_classes: int = 2,
        class_names: list[str] | None = None,
        arch: str = "unet",
        encoder: str = "resnet18",
        weights: str | None = None,
        arch_kwargs: dict[str, Any] | None = None,
        loss: str | list[str] | dict[str, float] = "ce",
        class_weights: list[float] | None = None,
        ignore_index: int = 255,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        warmup_fraction: float = 0.05,
        schedule: Schedule = "poly",
        boundary_tolerance: int = 2,
        init_from_teacher: bool = True,
        feature_weight: float = 1.0,
        prediction_weight: float = 1.0,
        temperature: float = 2.0,
        feature_levels: list[str] | None = None,
        attention: Attention = "attentive",
        boundary_width: int = 4,
        confidence_power: float = 1.0,
        unlabeled_weight: float = 1.0,
    ) -> None:
        for name, value in (
            ("feature_weight", feature_weight),
            ("prediction_weight", prediction_weight),
            ("unlabeled_weight", unlabeled_weight),
            ("boundary_width", boundary_width),
        ):
            if value < 0:
                raise GeodistillError(f"model.{name} must be >= 0, got {value}")
        if temperature <= 0:
            raise GeodistillError(f"model.temperature must be > 0, got {temperature}")
        if attention not in ("attentive", "uniform"):
            raise GeodistillError(f"model.attention must be 'attentive' or 'uniform': {attention}")
        feature_levels = list(feature_levels or ["encoder.-1", "decoder"])
        loaded = load_trained_network(teacher)
        if init_from_teacher:
            arch = loaded.architecture["arch"]
            encoder = loaded.architecture["encoder"]
            arch_kwargs = loaded.architecture["arch_kwargs"]
            weights = None
        super().__init__(
            in_channels,
            num_classes,
            class_names,
            arch,
            encoder,
            weights,
            arch_kwargs,
            loss,
            class_weights,
            ignore_index,
            lr,
            weight_decay,
            warmup_fraction,
            schedule,
            boundary_tolerance,
        )
        # LightningCLI records its config as the hyper-parameters: store what was really built,
        # so checkpoints and exported students rebuild the teacher-initialised network.
        self.hparams.update(
            arch=arch,
            encoder=encoder,
            weights=weights,
            arch_kwargs=arch_kwargs,
            feature_levels=feature_levels,
        )
        self._check_teacher(loaded)
        # The teacher's index of each student class: its outputs in the student's order.
        self._class_order = torch.tensor(
            [loaded.class_names.index(name) for name in self.class_names]
        )
        if init_from_teacher:
            self.model.load_state_dict(_reorder_head(loaded.model, self._class_order))
        # A plain attribute, not a submodule: the teacher is never trained, saved or exported.
        self._teacher: TrainedNetwork = loaded
        self.feature_distillation = FeatureDistillation(
            *self._level_channels(self.model, loaded.model, feature_levels)
        )

    @property
    def distills(self) -> bool:
        return self.hparams.feature_weight > 0 or self.hparams.prediction_weight > 0

    def _check_teacher(self, teacher: TrainedNetwork) -> None:
        if teacher.architecture["in_channels"] != self.hparams.in_channels:
            raise GeodistillError(
                f"the teacher takes {teacher.architecture['in_channels']} bands "
                f"({', '.join(teacher.band_names)}), the student {self.hparams.in_channels}",
                teacher.path,
            )
        unseen = [name for name in self.class_names if name not in teacher.class_names]
        extra = [name for name in teacher.class_names if name not in self.class_names]
        if unseen or extra:
            raise GeodistillError(
                f"the teacher's classes ({', '.join(teacher.class_names)}) differ from the "
                f"student's ({', '.join(self.class_names)}); "
                + (f"the teacher never saw {', '.join(unseen)}. " if unseen else "")
                + "Train the teacher with the same class list (a class may be absent from the "
                "coarse labels).",
                teacher.path,
            )

    @staticmethod
    def _level_channels(
        student: SegmentationModel, teacher: SegmentationModel, levels: list[str]
    ) -> tuple[list[int], list[int]]:
        """Channel counts at each level, probed with one small forward pass of each network."""
        probe = torch.zeros(1, student.normalizer.num_bands, 64, 64)
        was_training = student.training
        student.eval()
        with torch.no_grad():
            s = select_levels(student.forward_features(probe), levels)
            t = select_levels(teacher.forward_features(probe), levels)
        student.train(was_training)
        return [m.shape[1] for m in s], [m.shape[1] for m in t]

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None:
            self._check_teacher_data(datamodule, stage)
        if stage == "fit" and self.hparams.init_from_teacher:
            # The teacher's normalisation, not the fine data's: its features depend on it.
            self.model.normalizer.load_state_dict(self._teacher.model.normalizer.state_dict())
        self._teacher.model.to(self.device)

    def _check_teacher_data(self, datamodule: Any, stage: str) -> None:
        teacher = self._teacher
        if list(datamodule.band_names) != teacher.band_names:
            raise GeodistillError(
                f"the teacher was trained on bands {', '.join(teacher.band_names)}, the data has "
                f"{', '.join(datamodule.band_names)}",
                teacher.path,
            )
        stats = datamodule.band_stats
        if stage != "fit" or stats is None:
            return
        normalizer = teacher.model.normalizer
        for i, name in enumerate(teacher.band_names):
            t_mean, t_std = float(normalizer.mean[i]), float(normalizer.std[i])
            d_mean, d_std = stats.mean[i], stats.std[i]
            ratio = max(d_std, 1e-12) / max(t_std, 1e-12)
            if (
                abs(d_mean - t_mean) > STATS_TOLERANCE * t_std
                or not 1 / STATS_TOLERANCE < ratio < STATS_TOLERANCE
            ):
                raise GeodistillError(
                    f"band {name} of the data (mean {d_mean:.4g}, std {d_std:.4g}) is not scaled "
                    f"like the teacher's training data (mean {t_mean:.4g}, std {t_std:.4g}): "
                    "teacher and student need the same units and normalisation",
                    teacher.path,
                )

    def on_fit_start(self) -> None:
        self._teacher.model.to(self.device)

    def _teacher_outputs(self, images: Tensor) -> SegmentationOutput:
        with torch.no_grad():
            output = self._teacher.model.forward_features(images)
        order = self._class_order.to(output.logits.device)
        return SegmentationOutput(output.features, output.decoder, output.logits[:, order])

    def _distillation(
        self, student: SegmentationOutput, teacher: SegmentationOutput, images: Tensor, mask: Tensor
    ) -> dict[str, Tensor]:
        hp = self.hparams
        valid = ~torch.isnan(images).any(1)
        attention = None
        if hp.attention == "attentive":
            attention = distillation_attention(
                teacher.logits,
                mask,
                valid,
                hp.ignore_index,
                hp.boundary_width,
                hp.confidence_power,
            )
        terms: dict[str, Tensor] = {}
        if hp.feature_weight > 0:
            terms["feature"] = self.feature_distillation(
                select_levels(student, hp.feature_levels),
                select_levels(teacher, hp.feature_levels),
                valid,
                attention,
            )
        if hp.prediction_weight > 0:
            terms["prediction"] = prediction_distillation(
                student.logits, teacher.logits, valid, hp.temperature, attention
            )
        if attention is not None:
            terms["attention_mean"] = attention.sum() / valid.sum().clamp_min(1)
        return terms

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        labeled = batch.get("labeled", batch)
        unlabeled = batch.get("unlabeled") if self.distills else None
        images, mask = labeled["image"], labeled["mask"]
        size = len(images)
        if unlabeled is not None:
            images = _stack_padded(images, unlabeled["image"])
            mask = _stack_padded(mask, unlabeled["mask"], self.hparams.ignore_index)
        student = self.model.forward_features(images)
        supervised = self.criterion(
            student.logits[:size, :, : labeled["mask"].shape[-2], : labeled["mask"].shape[-1]],
            labeled["mask"],
        )
        loss = supervised
        logs = {"loss_supervised": supervised.detach()}
        if self.distills:
            teacher = self._teacher_outputs(images)
            parts = {"fine": slice(0, size)}
            if unlabeled is not None:
                parts["unlabeled"] = slice(size, None)
            weights = {
                "feature": self.hparams.feature_weight,
                "prediction": self.hparams.prediction_weight,
            }
            for part, rows in parts.items():
                terms = self._distillation(
                    _rows(student, rows), _rows(teacher, rows), images[rows], mask[rows]
                )
                scale = self.hparams.unlabeled_weight if part == "unlabeled" else 1.0
                for name, value in terms.items():
                    logs[f"{part}_{name}"] = value.detach()
                    if name in weights:
                        loss = loss + scale * weights[name] * value
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, batch_size=size)
        return loss

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["geodistill"]["teacher"] = str(self._teacher.path)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get("geodistill", {}).get("teacher")
        if saved and Path(saved) != self._teacher.path:
            warnings.warn(
                f"the checkpoint was distilled from {saved}; resuming with {self._teacher.path}",
                stacklevel=2,
            )


def _reorder_head(teacher: SegmentationModel, order: Tensor) -> dict[str, Tensor]:
    """The teacher's weights with its output classes in the student's order."""
    state = dict(teacher.state_dict())
    for key in ("network.segmentation_head.0.weight", "network.segmentation_head.0.bias"):
        if key in state:
            state[key] = state[key][order]
    return state


def _rows(output: SegmentationOutput, rows: slice) -> SegmentationOutput:
    return SegmentationOutput(
        [f[rows] for f in output.features], output.decoder[rows], output.logits[rows]
    )


def _stack_padded(first: Tensor, second: Tensor, fill: float = float("nan")) -> Tensor:
    """Concatenate two batches along the batch axis, padding bottom/right to a common size."""
    height = max(first.shape[-2], second.shape[-2])
    width = max(first.shape[-1], second.shape[-1])
    parts = []
    for part in (first, second):
        pad = (0, width - part.shape[-1], 0, height - part.shape[-2])
        parts.append(torch.nn.functional.pad(part, pad, value=fill) if any(pad) else part)
    return torch.cat(parts)
