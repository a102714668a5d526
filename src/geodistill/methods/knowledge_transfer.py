"""KTDA: knowledge transfer from a frozen foundation model into a CNN student (ICME 2025).

The student (any smp architecture, optionally with feature modulation blocks between encoder and
decoder, see :mod:`geodistill.models.modulation`) learns the labels while its encoder features
are aligned with a frozen teacher's:

    loss = supervised(logits, y)
         + distill_weight'   · mean_ℓ [ alpha·T²·KL_c(t_ℓ ‖ FAM_ℓ(s_ℓ)) + (1 − alpha)·MSE ]
         + aux_weight        · supervised(aux_head(s_aux), y)
         + prediction_weight · T²·KL(teacher logits ‖ student logits)      (teachers with logits)

``s_ℓ`` are the student's encoder features at ``student_levels`` *before* modulation, ``t_ℓ`` the
teacher's features at its levels (paired in order), ``FAM_ℓ`` a 1×1 projection to the teacher's
width and a bilinear resize to its grid (:class:`~geodistill.losses.alignment.FeatureAlignment`),
the KL's softmax runs over channels (``kl_axis="width"``: over the width axis, as KTDA's public
code does), and every term is averaged over valid (non-nodata) pixels. ``distill_weight'`` is
``distill_weight``, lowered on the steps where ``distill_weight · distill`` would exceed
``max_distill_ratio · supervised`` (:func:`~geodistill.losses.balance.capped_weight`; no cap by
default).

The teacher comes from a :class:`~geodistill.models.teachers.TeacherSpec` (a geodistill
checkpoint, timm, torchgeo or ONNX model), built with the student for the data's band names. The
modulation blocks belong to the student (recorded in its ``arch_kwargs``, deployed by
``geodistill export``); the FAM projections and the auxiliary head are this method's loss heads.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geodistill.errors import GeodistillError
from geodistill.losses.alignment import KL_AXES, FeatureAlignment, alignment_terms
from geodistill.losses.balance import capped_weight
from geodistill.losses.distillation import prediction_distillation
from geodistill.methods.base import (
    DataContext,
    Distillation,
    Step,
    StudentArguments,
    check_choice,
    check_non_negative,
    register_method,
)
from geodistill.methods.frozen_teachers import FrozenTeachers, check_cache_settings
from geodistill.models.modulation import ModulationConfig, level_index
from geodistill.models.student import SegmentationOutput, select_levels
from geodistill.models.teachers import Teacher, TeacherOutput, TeacherSpec

if TYPE_CHECKING:
    from geodistill.tasks.segmentation import SegmentationTask

KTDA_MODULATION = ModulationConfig(kind="transformer", depth=4, heads=8, mlp_ratio=4.0)
"""KTDA's feature modulation: 4 transformer blocks per level, 8 heads, MLP ratio 4."""

DEFAULT_STUDENT_LEVELS = ["encoder.-4", "encoder.-3", "encoder.-2", "encoder.-1"]
"""The four deepest encoder stages, paired in order with the teacher's four levels."""

PROBE_SIZE = 64
"""Side of the zero tile that measures the student's feature widths."""


class AuxiliaryHead(nn.Sequential):
    """KTDA's auxiliary FCN head (mmseg's ``FCNHead`` with one convolution): a training-only
    classifier on an intermediate encoder level that gives the encoder a direct label signal."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 256) -> None:
        hidden = min(width, in_channels)
        super().__init__(
            nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout2d(0.1),
            nn.Conv2d(hidden, num_classes, 1),
        )


@register_method("knowledge_transfer")
class KnowledgeTransfer(Distillation):
    """KTDA distillation from a frozen teacher of any kind (see the module docstring).

    Args:
        teacher: a teacher spec (``kind``, ``path``, ``arch``, ``layers``, ``bands``...; see
            :class:`~geodistill.models.teachers.TeacherSpec`) or the path of a geodistill
            checkpoint.
        student_levels: student levels aligned with the teacher's, in the teacher's level order.
        distill_weight: weight of the feature alignment loss.
        alpha: share of the KL part in the alignment loss, in ``[0, 1]`` (the rest is MSE).
        temperature: softening of the KL terms (> 0).
        kl_axis: axis of the alignment KL's softmax: ``"channels"`` (per location, the default)
            or ``"width"`` (per channel and image row, as KTDA's public code; rows touching
            nodata are left out of the KL).
        max_distill_ratio: cap on the alignment term: on each step its weight is lowered so
            that ``weight · distill <= max_distill_ratio · supervised`` (> 0); ``None`` (the
            default) leaves ``distill_weight`` as it is.
        modulation: feature modulation in the student (``{kind, depth, heads, mlp_ratio,
            levels, layer_scale}``; ``levels`` defaults to the encoder levels among
            ``student_levels``), or ``None`` (the default) for a plain student. Off by default:
            it lost to its ablation on Sen1Floods11 and did not pay off on Dubai
            (docs/ktda.md); ``KTDA_MODULATION`` is the paper's setting.
        aux_weight, aux_level: weight (0 disables) and encoder level of the auxiliary FCN head.
        prediction_weight: weight of the KL between teacher and student logits (teachers with a
            segmentation head whose class names match the student's).
        teacher_cache: folder of a teacher output cache (computed once, reused every epoch);
            ``None`` runs the teacher on every batch.
        cache_on_mismatch: ``rebuild`` or ``refuse`` a cache made for other data or another
            teacher.
        cache_dtype: storage type of cached teacher outputs.
    """

    unlabeled = "unused"

    def __init__(
        self,
        teacher: TeacherSpec | dict[str, Any] | str,
        student_levels: list[str] | None = None,
        distill_weight: float = 1.0,
        alpha: float = 0.5,
        temperature: float = 1.0,
        modulation: ModulationConfig | dict[str, Any] | None = None,
        aux_weight: float = 0.4,
        aux_level: str = "encoder.-2",
        prediction_weight: float = 0.0,
        teacher_cache: str | None = None,
        cache_on_mismatch: Literal["rebuild", "refuse"] = "rebuild",
        cache_dtype: str = "float16",
        kl_axis: Literal["channels", "width"] = "channels",
        max_distill_ratio: float | None = None,
    ) -> None:
        super().__init__()
        check_non_negative(
            distill_weight=distill_weight,
            aux_weight=aux_weight,
            prediction_weight=prediction_weight,
        )
        if not 0 <= alpha <= 1:
            raise GeodistillError(f"model.distillation.alpha must be in [0, 1], got {alpha}")
        if not temperature > 0:
            raise GeodistillError(f"model.distillation.temperature must be > 0, got {temperature}")
        check_cache_settings(cache_on_mismatch)
        check_choice("kl_axis", kl_axis, KL_AXES)
        if max_distill_ratio is not None and not max_distill_ratio > 0:
            raise GeodistillError(
                "model.distillation.max_distill_ratio must be > 0 (or null for no cap), "
                f"got {max_distill_ratio}"
            )
        spec = TeacherSpec.from_value(teacher)
        levels = [str(level) for level in student_levels or DEFAULT_STUDENT_LEVELS]
        if spec.layers is not None and len(spec.layers) != len(levels):
            raise _level_mismatch(len(levels), len(spec.layers), spec.path)
        config = ModulationConfig.from_value(modulation)
        if config is not None and config.levels is None:
            encoder_levels = [level for level in levels if level.startswith("encoder.")]
            config = replace(config, levels=[f"encoder.{level_index(x)}" for x in encoder_levels])
        self.spec = spec
        self.modulation = config
        self.record_settings(
            teacher=asdict(spec),
            student_levels=levels,
            distill_weight=distill_weight,
            alpha=alpha,
            temperature=temperature,
            modulation=None if config is None else config.as_dict(),
            aux_weight=aux_weight,
            aux_level=aux_level,
            prediction_weight=prediction_weight,
            teacher_cache=teacher_cache,
            cache_on_mismatch=cache_on_mismatch,
            cache_dtype=cache_dtype,
            kl_axis=kl_axis,
            max_distill_ratio=max_distill_ratio,
        )
        self.teachers: FrozenTeachers | None = None
        self.aux_head: AuxiliaryHead | None = None
        self.alignment: FeatureAlignment | None = None
        self._class_order: Tensor | None = None

    @property
    def active(self) -> bool:
        return self.settings["distill_weight"] > 0 or self.settings["prediction_weight"] > 0

    @property
    def teacher(self) -> Teacher:
        if self.teachers is None or not self.active:
            raise GeodistillError("no teacher: distillation is switched off")
        return self.teachers[0]

    # ----------------------------------------------------------------------------- building

    def student_arguments(self, student: StudentArguments, data: DataContext) -> StudentArguments:
        arch_kwargs = {k: v for k, v in student.arch_kwargs.items() if k != "modulation"}
        recorded = ModulationConfig.from_value(student.arch_kwargs.get("modulation"))
        if recorded is not None and recorded != self.modulation:
            raise GeodistillError(
                "model.arch_kwargs.modulation differs from model.distillation.modulation: set it "
                "once, as model.distillation.modulation"
            )
        if self.modulation is not None:
            # Recorded inside arch_kwargs, so that every checkpoint of this student, the exported
            # teacher-free one included, rebuilds its modulation.
            arch_kwargs["modulation"] = self.modulation.as_dict()
        return student.replace(arch_kwargs=arch_kwargs)

    def bind(self, task: SegmentationTask) -> dict[str, Any]:
        hp = self.settings
        probe = _probe(task.model, task.hparams.in_channels)
        student_channels = [int(f.shape[1]) for f in select_levels(probe, hp["student_levels"])]
        if self.modulation is not None:
            _check_modulated_levels(task.model, task.hparams.arch)
        if hp["aux_weight"] > 0:
            (aux_features,) = select_levels(probe, [hp["aux_level"]])
            self.aux_head = AuxiliaryHead(int(aux_features.shape[1]), task.hparams.num_classes)
        # The student's bands as the data names them; a teacher is built only when it is used.
        self.teachers = FrozenTeachers([self.spec], task.band_names, build=self.active)
        if not self.active:
            return {}
        teacher = self.teachers[0]
        if len(teacher.levels) != len(hp["student_levels"]):
            raise _level_mismatch(len(hp["student_levels"]), len(teacher.levels), teacher.path)
        self.alignment = FeatureAlignment(student_channels, teacher.channels())
        if hp["prediction_weight"] > 0:
            self._class_order = _teacher_class_order(teacher, task.class_names)
        return {}

    def setup(self, task: SegmentationTask, stage: str, datamodule: Any) -> None:
        if stage != "fit" or not self.active:
            return  # validation, test and prediction use the student alone
        self.teacher.to(task.device)
        if self.settings["teacher_cache"] is not None:
            assert self.teachers is not None
            self.teachers.attach_caches(
                task,
                self.settings["teacher_cache"],
                ("train",),
                self.settings["cache_on_mismatch"],
                self.settings["cache_dtype"],
            )

    def on_fit_start(self, task: SegmentationTask) -> None:
        if self.active:
            self.teacher.to(task.device)

    def teacher_record(self) -> Any:
        return self.settings["teacher"]

    # ----------------------------------------------------------------------------- training

    def teacher_outputs(self, batch: dict[str, Any]) -> TeacherOutput:
        """The batch's cached teacher outputs (``batch["teacher"]``), else the teacher's."""
        cached = batch.get("teacher")
        if cached is not None:
            logits = cached.get("logits")
            return TeacherOutput(
                [f.float() for f in cached["features"]],
                None if logits is None else logits.float(),
            )
        assert self.teachers is not None
        return self.teachers.outputs(batch["image"])[0]

    def distillation_terms(
        self, student: SegmentationOutput, teacher: TeacherOutput, valid: Tensor
    ) -> dict[str, Tensor]:
        """Unweighted terms: ``distill`` (with its ``kl`` and ``mse`` parts), ``prediction``."""
        hp = self.settings
        terms: dict[str, Tensor] = {}
        if hp["distill_weight"] > 0:
            assert self.alignment is not None
            aligned = self.alignment(select_levels(student, hp["student_levels"]), teacher.features)
            parts = alignment_terms(
                aligned, teacher.features, valid, hp["temperature"], hp["kl_axis"]
            )
            terms["distill"] = hp["alpha"] * parts["kl"] + (1 - hp["alpha"]) * parts["mse"]
            terms["kl"], terms["mse"] = parts["kl"], parts["mse"]
        if hp["prediction_weight"] > 0:
            if teacher.logits is None or self._class_order is None:
                raise GeodistillError(
                    "model.distillation.prediction_weight > 0 needs teacher logits"
                )
            logits = teacher.logits[:, self._class_order.to(teacher.logits.device)]
            if logits.shape[-2:] != student.logits.shape[-2:]:
                logits = F.interpolate(
                    logits, size=student.logits.shape[-2:], mode="bilinear", align_corners=False
                )
            terms["prediction"] = prediction_distillation(
                student.logits, logits, valid, hp["temperature"]
            )
        return terms

    def training_step(self, task: SegmentationTask, batch: dict[str, Any]) -> Step:
        hp = self.settings
        if "labeled" in batch:
            raise GeodistillError(
                "KnowledgeTransfer trains on labelled batches: unset data.unlabeled_from"
            )
        images, mask = batch["image"], batch["mask"]
        student = task.model.forward_features(images)
        supervised = task.criterion(student.logits, mask)
        logs = {f"loss_{k}": v.detach() for k, v in task.criterion.last_terms.items()}
        logs["loss_supervised"] = supervised.detach()
        loss = supervised
        if hp["aux_weight"] > 0 and self.aux_head is not None:
            (features,) = select_levels(student, [hp["aux_level"]])
            aux_logits = F.interpolate(
                self.aux_head(features), size=mask.shape[-2:], mode="bilinear", align_corners=False
            )
            aux = task.criterion(aux_logits, mask)
            logs["loss_aux"] = aux.detach()
            loss = loss + hp["aux_weight"] * aux
        if self.active:
            valid = ~torch.isnan(images).any(1)
            terms = self.distillation_terms(student, self.teacher_outputs(batch), valid)
            weights: dict[str, float | Tensor] = {
                "distill": hp["distill_weight"],
                "prediction": hp["prediction_weight"],
            }
            if hp["max_distill_ratio"] is not None and "distill" in terms:
                capped = capped_weight(
                    hp["distill_weight"], terms["distill"], supervised, hp["max_distill_ratio"]
                )
                weights["distill"] = capped
                logs["distill_weight_effective"] = capped.detach()
            for name, value in terms.items():
                logs[f"loss_{name}"] = value.detach()
                if name in weights:
                    loss = loss + weights[name] * value
        return Step(loss, logs, len(images))


def _probe(model: Any, in_channels: int) -> SegmentationOutput:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        output = model.forward_features(torch.zeros(1, in_channels, PROBE_SIZE, PROBE_SIZE))
    model.train(was_training)
    return output


def _check_modulated_levels(model: Any, arch: str) -> None:
    modulation = model.modulation
    assert modulation is not None
    unused = sorted(set(modulation.indices) - set(model.decoder_levels()))
    if unused:
        count = len(model.encoder_channels)
        names = ", ".join(f"encoder.{i - count}" for i in unused)
        raise GeodistillError(
            f"model.distillation.modulation.levels: the {arch} decoder never reads {names}, "
            "so modulation blocks there would never train; list only levels the decoder uses"
        )


def _teacher_class_order(teacher: Teacher, class_names: list[str]) -> Tensor:
    """Index of each student class among the teacher's outputs."""
    logits = teacher(teacher.probe(PROBE_SIZE)).logits
    if logits is None:
        raise GeodistillError(
            "model.distillation.prediction_weight > 0 but this teacher has no segmentation logits",
            teacher.path,
        )
    names = teacher.class_names
    if names is None or len(names) != logits.shape[1]:
        raise GeodistillError(
            f"the teacher predicts {logits.shape[1]} classes but does not name them: set "
            "teacher.class_names",
            teacher.path,
        )
    if sorted(names) != sorted(class_names):
        raise GeodistillError(
            f"the teacher's classes ({', '.join(names)}) differ from the student's "
            f"({', '.join(class_names)}): prediction distillation needs the same classes",
            teacher.path,
        )
    return torch.tensor([names.index(name) for name in class_names])


def _level_mismatch(student: int, teacher: int, path: Any) -> GeodistillError:
    return GeodistillError(
        f"model.distillation.student_levels lists {student} student levels but the teacher gives "
        f"{teacher} feature levels: they are paired in order, so the counts must agree (set "
        "student_levels or teacher.layers)",
        path,
    )
