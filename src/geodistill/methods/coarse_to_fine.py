"""Coarse-to-fine domain-incremental learning (geodistill's MineC2FNet method), stage 2.

A student, by default initialised from the coarse-domain teacher, learns the few fine labels with
the supervised loss plus attentive distillation from the frozen teacher:

    loss = supervised(fine) + feature_weight * L_feature + prediction_weight * L_prediction

``L_feature`` compares aligned, normalised student and teacher features at ``feature_levels``;
``L_prediction`` is the temperature-scaled KL between their class probabilities. Both are
weighted per pixel by :func:`~geodistill.losses.attention.distillation_attention` (or uniformly
with ``attention="uniform"``), on the labelled fine batch and, when the data module provides one,
on a batch of unlabelled coarse-domain images (``data.unlabeled_from: coarse``), so the student
keeps the teacher's knowledge of the coarse domain. With both weights at 0 this is naive
fine-tuning of the teacher.

The feature term is off by default (``feature_weight=0``): in paired 5-seed comparisons it lost
to prediction-only distillation on every seed of the Sen1Floods11 benchmark and won on only 3
of 5 Dubai seeds (``docs/coarse_to_fine.md``). The teacher calibration (``calibrate``) is off
by default too: it did not beat the uncalibrated teacher.

The teacher (a ``geodistill`` teacher of the registry) is never saved: checkpoints hold the
student only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from geodistill.errors import GeodistillError
from geodistill.losses.attention import distillation_attention
from geodistill.losses.calibration import LogitCalibration, fit_logit_calibration
from geodistill.losses.distillation import FeatureDistillation, prediction_distillation
from geodistill.methods.base import (
    DataContext,
    Distillation,
    Step,
    StudentArguments,
    check_choice,
    check_non_negative,
    register_method,
)
from geodistill.methods.frozen_teachers import FrozenTeachers
from geodistill.methods.padding import rows, stack_padded
from geodistill.models import SegmentationModel, SegmentationOutput
from geodistill.models.student import select_levels
from geodistill.models.teachers import Teacher, TeacherSpec

if TYPE_CHECKING:
    from geodistill.tasks.segmentation import SegmentationTask

Attention = Literal["attentive", "uniform"]

STATS_TOLERANCE = 10.0
"""How far (in teacher standard deviations, or as a std ratio) the student data's band statistics
may sit from the teacher's before the data is judged to be scaled differently (e.g. reflectance
0-1 against digital numbers 0-10000), rather than merely shifted by the domain."""

PROBE_SIZE = 64


@register_method("coarse_to_fine")
class CoarseToFine(Distillation):
    """Fine-domain student distilled from a frozen coarse-domain teacher (module docstring).

    Args:
        teacher: checkpoint of the stage-1 (coarse) task.
        init_from_teacher: start from the teacher's weights and normalisation (domain-incremental);
            the student's ``arch``/``encoder``/``arch_kwargs`` are then the teacher's.
        feature_weight, prediction_weight: weights of the two distillation terms (the feature
            term is off by default, see the module docstring).
        temperature: softening of the prediction distillation.
        feature_levels: where features are distilled, ``encoder.<i>`` and/or ``decoder``.
        attention: ``attentive`` (per-pixel trust map) or ``uniform`` (plain distillation).
        boundary_width, confidence_power: shape of the attentive map.
        unlabeled_weight: weight of the distillation terms on unlabelled-image batches.
        calibrate: before training, fit a temperature and a per-class bias of the teacher's
            logits to the fine training labels (:mod:`geodistill.losses.calibration`), and
            distil (and build the attention map from) the calibrated teacher: its decision
            boundary moves to where the exact labels put it, instead of where the coarse labels
            did.
    """

    unlabeled = "optional"

    def __init__(
        self,
        teacher: str,
        init_from_teacher: bool = True,
        feature_weight: float = 0.0,
        prediction_weight: float = 1.0,
        temperature: float = 2.0,
        feature_levels: list[str] | None = None,
        attention: Attention = "attentive",
        boundary_width: int = 4,
        confidence_power: float = 1.0,
        unlabeled_weight: float = 1.0,
        calibrate: bool = False,
    ) -> None:
        super().__init__()
        check_non_negative(
            feature_weight=feature_weight,
            prediction_weight=prediction_weight,
            unlabeled_weight=unlabeled_weight,
            boundary_width=boundary_width,
        )
        if temperature <= 0:
            raise GeodistillError(f"model.distillation.temperature must be > 0, got {temperature}")
        check_choice("attention", attention, ("attentive", "uniform"))
        self.record_settings(
            teacher=str(teacher),
            init_from_teacher=init_from_teacher,
            feature_weight=feature_weight,
            prediction_weight=prediction_weight,
            temperature=temperature,
            feature_levels=list(feature_levels or ["encoder.-1", "decoder"]),
            attention=attention,
            boundary_width=boundary_width,
            confidence_power=confidence_power,
            unlabeled_weight=unlabeled_weight,
            calibrate=bool(calibrate),
        )
        self.calibration: LogitCalibration | None = None
        self.teachers: FrozenTeachers | None = None
        self.feature_distillation: FeatureDistillation | None = None
        self._class_order: Tensor | None = None
        self.ignore_index = 255

    @property
    def active(self) -> bool:
        return self.settings["feature_weight"] > 0 or self.settings["prediction_weight"] > 0

    @property
    def needs_teachers(self) -> bool:
        return True  # the student starts from it (or is checked against it) even without terms

    @property
    def teacher(self) -> Teacher:
        if self.teachers is None:
            raise GeodistillError("the teacher is built with the student")
        return self.teachers[0]

    # ----------------------------------------------------------------------------- building

    def student_arguments(self, student: StudentArguments, data: DataContext) -> StudentArguments:
        # The teacher is always built (the initial weights come from it even without
        # distillation terms): a geodistill teacher with the distilled levels and its logits.
        spec = TeacherSpec(
            kind="geodistill", path=self.settings["teacher"], layers=self.settings["feature_levels"]
        )
        self.teachers = FrozenTeachers([spec], data.band_names)
        self.ignore_index = data.ignore_index
        network = self.teacher.network
        self._check_teacher(network, data)
        if not self.settings["init_from_teacher"]:
            return student
        architecture = network.architecture  # type: ignore[attr-defined]
        return StudentArguments(
            architecture["arch"],
            architecture["encoder"],
            None,
            dict(architecture["arch_kwargs"] or {}),
        )

    def _check_teacher(self, network: Any, data: DataContext) -> None:
        path = self.teacher.path
        if network.in_channels != data.in_channels:
            raise GeodistillError(
                f"the teacher takes {network.in_channels} bands "
                f"({', '.join(network.band_names)}), the student {data.in_channels}",
                path,
            )
        if list(network.band_names) != list(data.band_names):
            raise GeodistillError(
                f"the teacher was trained on bands {', '.join(network.band_names)}, the data has "
                f"{', '.join(data.band_names)}",
                path,
            )
        names = list(network.class_names)
        unseen = [name for name in data.class_names if name not in names]
        extra = [name for name in names if name not in data.class_names]
        if unseen or extra:
            raise GeodistillError(
                f"the teacher's classes ({', '.join(names)}) differ from the student's "
                f"({', '.join(data.class_names)}); "
                + (f"the teacher never saw {', '.join(unseen)}. " if unseen else "")
                + "Train the teacher with the same class list (a class may be absent from the "
                "coarse labels).",
                path,
            )
        # The teacher's index of each student class: its outputs in the student's order.
        self._class_order = torch.tensor([names.index(name) for name in data.class_names])

    def bind(self, task: SegmentationTask) -> dict[str, Any]:
        teacher_model: SegmentationModel = self.teacher.network.model  # type: ignore[assignment]
        if self.settings["init_from_teacher"]:
            assert self._class_order is not None
            task.model.load_state_dict(_reorder_head(teacher_model, self._class_order))
        self.feature_distillation = FeatureDistillation(
            *_level_channels(task.model, teacher_model, self.settings["feature_levels"])
        )
        return {}

    def setup(self, task: SegmentationTask, stage: str, datamodule: Any) -> None:
        if datamodule is not None and stage == "fit" and datamodule.band_stats is not None:
            self._check_scaling(datamodule.band_stats)
        if stage == "fit" and self.settings["init_from_teacher"]:
            # The teacher's normalisation, not the fine data's: its features depend on it.
            teacher_model = self.teacher.network.model  # type: ignore[union-attr]
            task.model.normalizer.load_state_dict(teacher_model.normalizer.state_dict())
        self.teacher.to(task.device)

    def _check_scaling(self, stats: Any) -> None:
        network = self.teacher.network
        normalizer = network.model.normalizer  # type: ignore[union-attr]
        for i, name in enumerate(network.band_names or []):
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
                    self.teacher.path,
                )

    def on_fit_start(self, task: SegmentationTask) -> None:
        self.teacher.to(task.device)
        datamodule = getattr(task.trainer, "datamodule", None)
        if self.settings["calibrate"] and self.active and datamodule is not None:
            self.calibration = self.fit_calibration(datamodule.whole_chips("fine", "train"))

    def fit_calibration(self, chips: Any, max_pixels: int = 200_000) -> LogitCalibration:
        """Fit the teacher's calibration on the labelled, valid pixels of ``chips`` (whole
        fine-domain training chips), at most ``max_pixels`` of them drawn with a fixed seed."""
        logits, labels = [], []
        device = self.teacher.band_indices.device
        for i in range(len(chips)):
            item = chips[i]
            image = item["image"][None].to(device)
            mask = item["mask"].to(device)
            output = self._teacher_outputs(image, calibrated=False).logits[0]
            keep = (mask != self.ignore_index) & ~torch.isnan(image[0]).any(0)
            logits.append(output.permute(1, 2, 0)[keep].float().cpu())
            labels.append(mask[keep].cpu())
        all_logits, all_labels = torch.cat(logits), torch.cat(labels)
        if len(all_labels) > max_pixels:
            generator = torch.Generator().manual_seed(0)
            chosen = torch.randperm(len(all_labels), generator=generator)[:max_pixels]
            all_logits, all_labels = all_logits[chosen], all_labels[chosen]
        return fit_logit_calibration(all_logits, all_labels)

    def teacher_record(self) -> Any:
        return self.settings["teacher"]

    # ----------------------------------------------------------------------------- training

    def _teacher_outputs(self, images: Tensor, calibrated: bool = True) -> SegmentationOutput:
        teacher_model = self.teacher.network.model  # type: ignore[union-attr]
        if self.teacher.band_indices.device != images.device:
            self.teacher.to(images.device)
        with torch.no_grad():
            output = teacher_model.forward_features(images)
        assert self._class_order is not None
        order = self._class_order.to(output.logits.device)
        logits = output.logits[:, order]
        if calibrated and self.calibration is not None:
            logits = self.calibration(logits)
        return SegmentationOutput(output.features, output.decoder, logits)

    def _terms(
        self, student: SegmentationOutput, teacher: SegmentationOutput, images: Tensor, mask: Tensor
    ) -> dict[str, Tensor]:
        hp = self.settings
        valid = ~torch.isnan(images).any(1)
        attention = None
        if hp["attention"] == "attentive":
            attention = distillation_attention(
                teacher.logits,
                mask,
                valid,
                self.ignore_index,
                hp["boundary_width"],
                hp["confidence_power"],
            )
        terms: dict[str, Tensor] = {}
        if hp["feature_weight"] > 0:
            assert self.feature_distillation is not None
            terms["feature"] = self.feature_distillation(
                select_levels(student, hp["feature_levels"]),
                select_levels(teacher, hp["feature_levels"]),
                valid,
                attention,
            )
        if hp["prediction_weight"] > 0:
            terms["prediction"] = prediction_distillation(
                student.logits, teacher.logits, valid, hp["temperature"], attention
            )
        if attention is not None:
            terms["attention_mean"] = attention.sum() / valid.sum().clamp_min(1)
        return terms

    def training_step(self, task: SegmentationTask, batch: dict[str, Any]) -> Step:
        hp = self.settings
        labeled = batch.get("labeled", batch)
        unlabeled = batch.get("unlabeled") if self.active else None
        images, mask = labeled["image"], labeled["mask"]
        size = len(images)
        if unlabeled is not None:
            images = stack_padded(images, unlabeled["image"])
            mask = stack_padded(mask, unlabeled["mask"], self.ignore_index)
        student = task.model.forward_features(images)
        supervised = task.criterion(
            student.logits[:size, :, : labeled["mask"].shape[-2], : labeled["mask"].shape[-1]],
            labeled["mask"],
        )
        loss = supervised
        logs = {"loss_supervised": supervised.detach()}
        if self.active:
            teacher = self._teacher_outputs(images)
            parts = {"fine": slice(0, size)}
            if unlabeled is not None:
                parts["unlabeled"] = slice(size, None)
            weights = {"feature": hp["feature_weight"], "prediction": hp["prediction_weight"]}
            for part, selected in parts.items():
                terms = self._terms(
                    rows(student, selected),
                    rows(teacher, selected),
                    images[selected],
                    mask[selected],
                )
                scale = hp["unlabeled_weight"] if part == "unlabeled" else 1.0
                for name, value in terms.items():
                    logs[f"{part}_{name}"] = value.detach()
                    if name in weights:
                        loss = loss + scale * weights[name] * value
            if self.calibration is not None:
                logs["teacher_temperature"] = torch.tensor(self.calibration.temperature)
                for k, bias in enumerate(self.calibration.bias):
                    logs[f"teacher_bias_{k}"] = bias
        return Step(loss, logs, size)


def _reorder_head(teacher: SegmentationModel, order: Tensor) -> dict[str, Tensor]:
    """The teacher's weights with its output classes in the student's order."""
    state = dict(teacher.state_dict())
    for key in ("network.segmentation_head.0.weight", "network.segmentation_head.0.bias"):
        if key in state:
            state[key] = state[key][order]
    return state


def _level_channels(
    student: SegmentationModel, teacher: SegmentationModel, levels: list[str]
) -> tuple[list[int], list[int]]:
    """Channel counts at each level, probed with one small forward pass of each network."""
    probe = torch.zeros(1, student.normalizer.num_bands, PROBE_SIZE, PROBE_SIZE)
    was_training = student.training
    student.eval()
    with torch.no_grad():
        s = select_levels(student.forward_features(probe), levels)
        t = select_levels(teacher.forward_features(probe), levels)
    student.train(was_training)
    return [m.shape[1] for m in s], [m.shape[1] for m in t]
