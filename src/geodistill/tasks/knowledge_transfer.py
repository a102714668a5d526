"""KTDA: knowledge transfer from a frozen foundation model into a CNN student (ICME 2025).

The student (any smp architecture, optionally with feature modulation blocks between encoder and
decoder, see :mod:`geodistill.models.modulation`) learns the labels while its encoder features
are aligned with a frozen teacher's:

    loss = supervised(logits, y)
         + distill_weight    · mean_ℓ [ alpha·T²·KL_c(t_ℓ ‖ FAM_ℓ(s_ℓ)) + (1 − alpha)·MSE ]
         + aux_weight        · supervised(aux_head(s_aux), y)
         + prediction_weight · T²·KL(teacher logits ‖ student logits)      (teachers with logits)

``s_ℓ`` are the student's encoder features at ``student_levels`` *before* modulation, ``t_ℓ`` the
teacher's features at its levels (paired in order), ``FAM_ℓ`` a 1×1 projection to the teacher's
width and a bilinear resize to its grid (:class:`~geodistill.losses.alignment.FeatureAlignment`),
the KL's softmax runs over channels, and every term is averaged over valid (non-nodata) pixels.

The teacher comes from a :class:`~geodistill.models.teachers.TeacherSpec` (a geodistill
checkpoint, timm, torchgeo or ONNX model) and is built when fitting starts, for the data's band
names. It is a plain attribute, never a submodule, so checkpoints record only its spec; the FAM
projections and the auxiliary head are loss heads. ``geodistill export`` therefore deploys the
student network with its modulation, and nothing else.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geodistill.data.teacher_cache import attach_teacher_cache
from geodistill.errors import GeodistillError
from geodistill.losses.alignment import FeatureAlignment, alignment_terms
from geodistill.losses.distillation import prediction_distillation
from geodistill.models.modulation import ModulationConfig, level_index
from geodistill.models.student import SegmentationOutput, select_levels
from geodistill.models.teachers import Teacher, TeacherOutput, TeacherSpec, build_teacher
from geodistill.models.teachers.base import check_teacher_files
from geodistill.tasks.distributed import attach_cache_rank_zero_first
from geodistill.tasks.schedules import Schedule
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


class KnowledgeTransferTask(SegmentationTask):
    """KTDA distillation from a frozen teacher of any kind (see the module docstring).

    Args beyond :class:`SegmentationTask`:
        teacher: a teacher spec (``kind``, ``path``, ``arch``, ``layers``, ``bands``...; see
            :class:`~geodistill.models.teachers.TeacherSpec`) or the path of a geodistill
            checkpoint.
        student_levels: student levels aligned with the teacher's, in the teacher's level order.
        distill_weight: weight of the feature alignment loss.
        alpha: share of the KL part in the alignment loss, in ``[0, 1]`` (the rest is MSE).
        temperature: softening of the KL terms (> 0).
        modulation: feature modulation in the student (``{kind, depth, heads, mlp_ratio,
            levels, layer_scale}``; ``levels`` defaults to the encoder levels among
            ``student_levels``), or ``None`` for a plain student.
        aux_weight, aux_level: weight (0 disables) and encoder level of the auxiliary FCN head.
        prediction_weight: weight of the KL between teacher and student logits (teachers with a
            segmentation head whose class names match the student's).
        teacher_cache: folder of a teacher output cache (computed once, reused every epoch);
            ``None`` runs the teacher on every batch.
        cache_on_mismatch: ``rebuild`` or ``refuse`` a cache made for other data or another
            teacher.
        cache_dtype: storage type of cached teacher outputs.
    """

    def __init__(
        self,
        teacher: TeacherSpec | dict[str, Any] | str,
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
        student_levels: list[str] | None = None,
        distill_weight: float = 1.0,
        alpha: float = 0.5,
        temperature: float = 1.0,
        modulation: ModulationConfig | dict[str, Any] | None = KTDA_MODULATION,
        aux_weight: float = 0.4,
        aux_level: str = "encoder.-2",
        prediction_weight: float = 0.0,
        teacher_cache: str | None = None,
        cache_on_mismatch: Literal["rebuild", "refuse"] = "rebuild",
        cache_dtype: str = "float16",
    ) -> None:
        _check_settings(distill_weight, alpha, temperature, aux_weight, prediction_weight)
        if cache_on_mismatch not in ("rebuild", "refuse"):
            raise GeodistillError(
                f"model.cache_on_mismatch must be 'rebuild' or 'refuse', got {cache_on_mismatch!r}"
            )
        spec = TeacherSpec.from_value(teacher)
        check_teacher_files([spec])  # before the trainer writes anything; built in setup("fit")
        student_levels = [str(level) for level in student_levels or DEFAULT_STUDENT_LEVELS]
        if spec.layers is not None and len(spec.layers) != len(student_levels):
            raise _level_mismatch(len(student_levels), len(spec.layers), spec.path)
        config = _modulation_config(modulation, arch_kwargs, student_levels)
        arch_kwargs = {k: v for k, v in (arch_kwargs or {}).items() if k != "modulation"}
        if config is not None:
            # Recorded inside arch_kwargs, so that every checkpoint of this student, the exported
            # teacher-free one included, rebuilds its modulation.
            arch_kwargs["modulation"] = config.as_dict()
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
        self.hparams.update(
            teacher=asdict(spec),
            arch_kwargs=arch_kwargs,
            modulation=None if config is None else config.as_dict(),
            student_levels=student_levels,
        )
        self.teacher_spec = spec
        probe = self._probe_student()
        self.student_channels = [int(f.shape[1]) for f in select_levels(probe, student_levels)]
        if config is not None:
            self._check_modulated_levels()
        self.aux_head: AuxiliaryHead | None = None
        if aux_weight > 0:
            (aux_features,) = select_levels(probe, [aux_level])
            self.aux_head = AuxiliaryHead(int(aux_features.shape[1]), num_classes)
        # Built in setup("fit"), when the teacher's widths are known (or from a checkpoint).
        self.alignment: FeatureAlignment | None = None
        object.__setattr__(self, "_teacher", None)  # never a submodule: see the module docstring
        self._class_order: Tensor | None = None

    # ----------------------------------------------------------------------------------------
    # construction

    def _probe_student(self) -> SegmentationOutput:
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            probe = torch.zeros(1, self.hparams.in_channels, PROBE_SIZE, PROBE_SIZE)
            output = self.model.forward_features(probe)
        self.model.train(was_training)
        return output

    def _check_modulated_levels(self) -> None:
        modulation = self.model.modulation
        assert modulation is not None
        unused = sorted(set(modulation.indices) - set(self.model.decoder_levels()))
        if unused:
            count = len(self.model.encoder_channels)
            names = ", ".join(f"encoder.{i - count}" for i in unused)
            raise GeodistillError(
                f"model.modulation.levels: the {self.hparams.arch} decoder never reads {names}, "
                "so modulation blocks there would never train; list only levels the decoder uses"
            )

    @property
    def distills(self) -> bool:
        """Whether any term needs the teacher."""
        return self.hparams.distill_weight > 0 or self.hparams.prediction_weight > 0

    @property
    def teacher(self) -> Teacher:
        """The frozen teacher (built when fitting starts)."""
        if self._teacher is None:
            raise GeodistillError("the teacher is built when fitting starts (setup('fit'))")
        return self._teacher

    def attach_teacher(self, teacher: Teacher) -> None:
        """Use ``teacher``: check its levels, create the FAM projections for its widths and the
        class order of its logits. ``setup('fit')`` calls this with the spec's teacher."""
        levels = self.hparams.student_levels
        if len(teacher.levels) != len(levels):
            raise _level_mismatch(len(levels), len(teacher.levels), teacher.path)
        teacher_channels = teacher.channels()
        if self.alignment is None:
            self.alignment = FeatureAlignment(self.student_channels, teacher_channels)
        elif self.alignment.channels != (self.student_channels, teacher_channels):
            raise GeodistillError(
                f"the checkpoint's feature projections map {self.alignment.channels[0]} to "
                f"{self.alignment.channels[1]} channels; this teacher has {teacher_channels}",
                teacher.path,
            )
        if self.hparams.prediction_weight > 0:
            self._class_order = self._teacher_class_order(teacher)
        object.__setattr__(self, "_teacher", teacher)

    def _teacher_class_order(self, teacher: Teacher) -> Tensor:
        """Index of each student class among the teacher's outputs."""
        logits = teacher(teacher.probe(PROBE_SIZE)).logits
        if logits is None:
            raise GeodistillError(
                "model.prediction_weight > 0 but this teacher has no segmentation logits",
                teacher.path,
            )
        names = teacher.class_names
        if names is None or len(names) != logits.shape[1]:
            raise GeodistillError(
                f"the teacher predicts {logits.shape[1]} classes but does not name them: set "
                "teacher.class_names",
                teacher.path,
            )
        if sorted(names) != sorted(self.class_names):
            raise GeodistillError(
                f"the teacher's classes ({', '.join(names)}) differ from the student's "
                f"({', '.join(self.class_names)}): prediction distillation needs the same classes",
                teacher.path,
            )
        return torch.tensor([names.index(name) for name in self.class_names])

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage != "fit":
            return  # validation, test and prediction use the student alone
        datamodule = getattr(self.trainer, "datamodule", None)
        if getattr(datamodule, "unlabeled_from", None) is not None:
            raise GeodistillError(
                "KnowledgeTransferTask trains on labelled batches: unset data.unlabeled_from"
            )
        if not self.distills:
            return  # the same student trained on the labels alone: no teacher to load
        self.attach_teacher(build_teacher(self.teacher_spec, self.band_names))
        if self.hparams.teacher_cache is not None:
            attach_cache_rank_zero_first(self, attach_teacher_cache, self.teacher)

    def on_fit_start(self) -> None:
        if self._teacher is not None:
            self._teacher.to(self.device)

    # ----------------------------------------------------------------------------------------
    # training

    def teacher_outputs(self, batch: dict[str, Any]) -> TeacherOutput:
        """The batch's cached teacher outputs (``batch["teacher"]``), else the teacher's."""
        cached = batch.get("teacher")
        if cached is not None:
            logits = cached.get("logits")
            return TeacherOutput(
                [f.float() for f in cached["features"]],
                None if logits is None else logits.float(),
            )
        images = batch["image"]
        if self.teacher.band_indices.device != images.device:
            self.teacher.to(images.device)
        return self.teacher(images)

    def distillation_terms(
        self, student: SegmentationOutput, teacher: TeacherOutput, valid: Tensor
    ) -> dict[str, Tensor]:
        """Unweighted terms: ``distill`` (with its ``kl`` and ``mse`` parts), ``prediction``."""
        hp = self.hparams
        terms: dict[str, Tensor] = {}
        if hp.distill_weight > 0:
            if self.alignment is None:
                raise GeodistillError("the feature projections are built when fitting starts")
            aligned = self.alignment(select_levels(student, hp.student_levels), teacher.features)
            parts = alignment_terms(aligned, teacher.features, valid, hp.temperature)
            terms["distill"] = hp.alpha * parts["kl"] + (1 - hp.alpha) * parts["mse"]
            terms["kl"], terms["mse"] = parts["kl"], parts["mse"]
        if hp.prediction_weight > 0:
            if teacher.logits is None or self._class_order is None:
                raise GeodistillError("model.prediction_weight > 0 needs teacher logits")
            logits = teacher.logits[:, self._class_order.to(teacher.logits.device)]
            if logits.shape[-2:] != student.logits.shape[-2:]:
                logits = F.interpolate(
                    logits, size=student.logits.shape[-2:], mode="bilinear", align_corners=False
                )
            terms["prediction"] = prediction_distillation(
                student.logits, logits, valid, hp.temperature
            )
        return terms

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        hp = self.hparams
        images, mask = batch["image"], batch["mask"]
        student = self.model.forward_features(images)
        supervised = self.criterion(student.logits, mask)
        logs = {f"loss_{k}": v.detach() for k, v in self.criterion.last_terms.items()}
        logs["loss_supervised"] = supervised.detach()
        loss = supervised
        if hp.aux_weight > 0 and self.aux_head is not None:
            (features,) = select_levels(student, [hp.aux_level])
            aux_logits = F.interpolate(
                self.aux_head(features), size=mask.shape[-2:], mode="bilinear", align_corners=False
            )
            aux = self.criterion(aux_logits, mask)
            logs["loss_aux"] = aux.detach()
            loss = loss + hp.aux_weight * aux
        if self.distills:
            valid = ~torch.isnan(images).any(1)
            terms = self.distillation_terms(student, self.teacher_outputs(batch), valid)
            weights = {"distill": hp.distill_weight, "prediction": hp.prediction_weight}
            for name, value in terms.items():
                logs[f"loss_{name}"] = value.detach()
                if name in weights:
                    loss = loss + weights[name] * value
        size = len(images)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, batch_size=size)
        return loss

    # ----------------------------------------------------------------------------------------
    # checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["geodistill"]["teacher"] = asdict(self.teacher_spec)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get("geodistill", {}).get("teacher")
        if saved is not None and saved != asdict(self.teacher_spec):
            warnings.warn(
                f"the checkpoint was distilled from teacher {saved}; resuming with "
                f"{asdict(self.teacher_spec)}",
                stacklevel=2,
            )
        if self.alignment is None:
            # Loading without fitting (load_from_checkpoint): the projections' shapes are in the
            # state, the teacher is not needed.
            state = checkpoint.get("state_dict", {})
            weights = [
                state[f"alignment.projections.{i}.weight"]
                for i in range(len(self.student_channels))
                if f"alignment.projections.{i}.weight" in state
            ]
            if weights:
                self.alignment = FeatureAlignment(
                    [int(w.shape[1]) for w in weights], [int(w.shape[0]) for w in weights]
                )


def _check_settings(
    distill_weight: float,
    alpha: float,
    temperature: float,
    aux_weight: float,
    prediction_weight: float,
) -> None:
    for name, value in (
        ("distill_weight", distill_weight),
        ("aux_weight", aux_weight),
        ("prediction_weight", prediction_weight),
    ):
        if value < 0:
            raise GeodistillError(f"model.{name} must be >= 0, got {value}")
    if not 0 <= alpha <= 1:
        raise GeodistillError(f"model.alpha must be in [0, 1], got {alpha}")
    if not temperature > 0:
        raise GeodistillError(f"model.temperature must be > 0, got {temperature}")


def _level_mismatch(student: int, teacher: int, path: Any) -> GeodistillError:
    return GeodistillError(
        f"model.student_levels lists {student} student levels but the teacher gives {teacher} "
        "feature levels: they are paired in order, so the counts must agree (set "
        "model.student_levels or teacher.layers)",
        path,
    )


def _modulation_config(
    modulation: ModulationConfig | dict[str, Any] | None,
    arch_kwargs: dict[str, Any] | None,
    student_levels: list[str],
) -> ModulationConfig | None:
    """The student's modulation; its levels default to the encoder levels among
    ``student_levels``. A copy in ``arch_kwargs`` (how checkpoints record it) must agree."""
    config = ModulationConfig.from_value(modulation)
    if config is not None and config.levels is None:
        encoder_levels = [level for level in student_levels if level.startswith("encoder.")]
        config = replace(config, levels=[f"encoder.{level_index(x)}" for x in encoder_levels])
    recorded = ModulationConfig.from_value((arch_kwargs or {}).get("modulation"))
    if recorded is not None and recorded != config:
        raise GeodistillError(
            "model.arch_kwargs.modulation differs from model.modulation: set it once, "
            "as model.modulation"
        )
    return config
