"""Semi-supervised segmentation from unlabelled imagery with frozen teachers (RS-MTDF-style).

Each training step takes a labelled batch ``(x_l, y_l)`` and an unlabelled batch ``x_w`` (the data
loader's weak view: flips, 90° rotations) and combines three terms:

    loss = supervised(student(x_l), y_l)
         + unsup_weight   · Σ_p 1[c_p ≥ τ] · CE(student(x_s)_p, ŷ_p) / #valid pixels
         + distill_weight · mean_k D_k(T_k(s), t_k)

- FixMatch with an EMA teacher: ``ŷ, c`` are the arg-max and maximum softmax probability of the
  **EMA copy** of the student on the weak view; pixels under the threshold ``τ`` (or nodata) get
  the ignore index. The EMA follows the student after every optimiser step,
  ``θ_ema ← d_t·θ_ema + (1 − d_t)·θ`` with ``d_t = min(1 − 1/(t + 1), ema_decay)`` (buffers,
  batch-norm statistics included, are copied).
- ``x_s`` is the strong view of ``x_w`` (:mod:`geodistill.data.perturbations`: colour jitter,
  grayscale, blur, spectral shift, band dropout), then CutMix pastes boxes between samples into
  the image and the pseudo-labels alike. The unsupervised CE is summed over confident pixels and
  divided by all valid pixels (UniMatch's reduction: few confident pixels give a small loss).
- Multi-teacher feature distillation: any number of frozen teachers (``teachers``, built from the
  teacher registry for the data's bands). Per teacher ``k`` a translator ``T_k`` maps the
  student's deepest encoder features ``s`` to the teacher's width; resized to the teacher's grid it
  is compared with the teacher's last feature level ``t_k`` by ``D_k`` = MSE or ``1 − cosine`` per
  location (``distill_loss``), averaged over valid locations, on the labelled and the weak
  unlabelled images; the terms are averaged over teachers.
- ``fusion``: the translated features are also projected back and mixed into the decoder's deepest
  input with learned softmax weights (initialised at 0.8 for the student, 0.2 shared by the
  teachers). Translators, projections and weights are student-side modules
  (:class:`~geodistill.models.fusion.FeatureFusion`), so the deployed student runs them without
  teachers and without a second backbone pass, and ``geodistill export`` keeps them. Without
  fusion the translators are loss heads, never exported.

RS-MTDF divides the sum of its three terms by 3; with unit weights this task's loss is 3 times
RS-MTDF's, which only rescales the learning rate under Adam(W): set the three weights to 1/3 (and
scale the supervised loss with them) to reproduce it exactly.

Teachers are plain attributes, never submodules: checkpoints record their specs only. With
``teacher_cache`` the teachers' outputs for the fixed windows of both streams are computed once
and memory-mapped (:mod:`geodistill.data.teacher_cache`); the teachers then see the un-augmented
weak images only, exactly as without a cache apart from the weak view's photometric jitter.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import Dataset

from geodistill.data.perturbations import StrongView, cutmix, strong_view
from geodistill.data.teacher_cache import (
    CachedTeacherDataset,
    TeacherCache,
    ensure_teacher_cache,
    warn_if_unaligned,
)
from geodistill.errors import GeodistillError
from geodistill.losses.distillation import _resize_map
from geodistill.models.fusion import (
    RS_MTDF_STUDENT_WEIGHT,
    FusionConfig,
    Translator,
    build_translators,
    check_hidden,
    translator_widths,
)
from geodistill.models.student import SegmentationOutput
from geodistill.models.teachers import Teacher, TeacherSpec, build_teacher
from geodistill.models.teachers.base import check_teacher_files
from geodistill.tasks.distributed import attach_cache_rank_zero_first
from geodistill.tasks.schedules import Schedule
from geodistill.tasks.segmentation import SegmentationTask

DistillLoss = Literal["mse", "cosine"]

RS_MTDF_THRESHOLD = 0.95
RS_MTDF_EMA_DECAY = 0.996


# ------------------------------------------------------------------------------- the pieces


@dataclass
class PseudoLabels:
    """Hard pseudo-labels ``(B, H, W)`` (ignore index where not kept) and the confidence (maximum
    softmax probability) they were kept by."""

    labels: Tensor
    confidence: Tensor


def pseudo_labels(
    logits: Tensor, threshold: float, valid: Tensor, ignore_index: int
) -> PseudoLabels:
    """Arg-max labels of ``logits``, kept where the top probability is ``>= threshold`` and the
    pixel is ``valid``; every other pixel gets ``ignore_index``."""
    confidence, labels = logits.detach().float().softmax(dim=1).max(dim=1)
    kept = (confidence >= threshold) & valid
    return PseudoLabels(torch.where(kept, labels, ignore_index), confidence)


def unsupervised_loss(logits: Tensor, labels: Tensor, valid: Tensor, ignore_index: int) -> Tensor:
    """Cross-entropy summed over pseudo-labelled pixels, divided by the number of valid pixels."""
    per_pixel = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="none")
    return per_pixel.sum() / valid.sum().clamp_min(1)


def _mse(student: Tensor, teacher: Tensor) -> Tensor:
    return (student - teacher).pow(2).mean(dim=1)


def _cosine(student: Tensor, teacher: Tensor) -> Tensor:
    return 1 - F.cosine_similarity(student, teacher, dim=1, eps=1e-6)


DISTANCES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"mse": _mse, "cosine": _cosine}
"""Per-location feature distance ``(B, C, h, w)² → (B, h, w)`` by ``distill_loss`` name."""


def feature_distance(student: Tensor, teacher: Tensor, valid: Tensor, kind: str = "mse") -> Tensor:
    """Mean distance between student maps (any grid: bilinearly resized) and teacher maps over
    valid locations; ``valid`` ``(B, H, W)`` is area-resized to the teacher's grid, so a cell
    counts in proportion to the valid share of its footprint."""
    total, weight = _distance_sums(student, teacher, valid, kind)
    return total / weight.clamp_min(1e-6)


def _distance_sums(
    student: Tensor, teacher: Tensor, valid: Tensor, kind: str
) -> tuple[Tensor, Tensor]:
    size = (int(teacher.shape[-2]), int(teacher.shape[-1]))
    if tuple(student.shape[-2:]) != size:
        student = F.interpolate(student, size=size, mode="bilinear", align_corners=False)
    weights = _resize_map(valid, size)
    per_location = DISTANCES[kind](student.float(), teacher.float())
    return (weights * per_location).sum(), weights.sum()


def ema_decay_at(step: int, decay: float) -> float:
    """The EMA's decay after ``step`` earlier updates: ``min(1 − 1/(step + 1), decay)`` (0 at the
    first update, which copies the student)."""
    return min(1 - 1 / (step + 1), decay)


def _ema_average(decay: float) -> Callable[[list[Tensor], list[Tensor], Tensor], None]:
    def average(averaged: list[Tensor], current: list[Tensor], step: Tensor) -> None:
        weight = 1 - ema_decay_at(int(step), decay)
        for mean, value in zip(averaged, current, strict=True):
            mean.lerp_(value, weight)

    return average


# ------------------------------------------------------------------------------- the task


class SemiSupervisedTask(SegmentationTask):
    """FixMatch with an EMA model, multi-teacher feature distillation and optional fusion (see
    the module docstring).

    Args beyond :class:`SegmentationTask`:
        teachers: frozen teachers (0 or more): teacher specs (``kind``, ``path``, ``arch``,
            ``layers``...; see :class:`~geodistill.models.teachers.TeacherSpec`) or geodistill
            checkpoint paths. Each is distilled at its last feature level (choose it with
            ``layers``).
        threshold: confidence a pseudo-label needs, in ``(0, 1]``.
        ema_decay: the EMA's decay once warmed up, in ``[0, 1)``.
        unsup_weight, distill_weight: weights of the unsupervised and distillation terms.
        distill_loss: ``mse`` or ``cosine`` (1 − cosine similarity per location).
        translator_hidden: hidden width of the translators; ``None`` takes each teacher's width.
        fusion: mix the translated features into the decoder (deployed with the student).
        fusion_student_weight: the fusion's initial weight of the student's own features.
        strong_view: the strong view's settings (:class:`~geodistill.data.perturbations.
            StrongView`; CutMix's included).
        teacher_cache: folder of teacher output caches (one per teacher and stream, computed
            once); ``None`` runs the teachers on every batch.
        cache_on_mismatch, cache_dtype: as for
            :func:`~geodistill.data.teacher_cache.ensure_teacher_cache`.
    """

    def __init__(
        self,
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
        teachers: list[TeacherSpec | dict[str, Any] | str] | None = None,
        threshold: float = RS_MTDF_THRESHOLD,
        ema_decay: float = RS_MTDF_EMA_DECAY,
        unsup_weight: float = 1.0,
        distill_weight: float = 1.0,
        distill_loss: DistillLoss = "mse",
        translator_hidden: int | None = None,
        fusion: bool = False,
        fusion_student_weight: float = RS_MTDF_STUDENT_WEIGHT,
        strong_view: StrongView | dict[str, Any] | None = None,
        teacher_cache: str | None = None,
        cache_on_mismatch: Literal["rebuild", "refuse"] = "rebuild",
        cache_dtype: str = "float16",
    ) -> None:
        specs = [TeacherSpec.from_value(t) for t in teachers or []]
        check_teacher_files(specs)  # before the trainer writes anything; built in setup("fit")
        _check_settings(threshold, ema_decay, unsup_weight, distill_weight, distill_loss)
        check_hidden(translator_hidden, "model.translator_hidden")
        if cache_on_mismatch not in ("rebuild", "refuse"):
            raise GeodistillError(
                f"model.cache_on_mismatch must be 'rebuild' or 'refuse', got {cache_on_mismatch!r}"
            )
        view = StrongView.from_value(strong_view)
        recorded = _recorded_fusion(arch_kwargs, fusion, translator_hidden, fusion_student_weight)
        if fusion and (not specs or distill_weight <= 0):
            raise GeodistillError(
                "model.fusion mixes translated teacher features into the decoder: it needs at "
                "least one teacher and model.distill_weight > 0"
            )
        if fusion and not 0 < fusion_student_weight < 1:
            raise GeodistillError(
                f"model.fusion_student_weight must be in (0, 1), got {fusion_student_weight}"
            )
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
        self.hparams.update(teachers=[asdict(spec) for spec in specs], strong_view=view.as_dict())
        self.teacher_specs = specs
        self.strong = view
        # Without fusion: loss heads, built when the teachers' widths are known (or from a
        # checkpoint). With fusion they live in self.model.fusion, recorded in arch_kwargs.
        self.translators: nn.ModuleList | None = None
        self.ema: AveragedModel | None = None
        if not fusion or recorded is not None:
            self.ema = self._new_ema()
        object.__setattr__(self, "_teachers", [])  # never submodules: see the module docstring
        self._generator: torch.Generator | None = None
        self._ema_step = -1

    # ----------------------------------------------------------------------------------------
    # construction

    @property
    def distills(self) -> bool:
        """Whether any teacher is distilled."""
        return bool(self.teacher_specs) and self.hparams.distill_weight > 0

    @property
    def teachers(self) -> list[Teacher]:
        """The frozen teachers (built when fitting starts)."""
        if self.distills and not self._teachers:
            raise GeodistillError("the teachers are built when fitting starts (setup('fit'))")
        return list(self._teachers)

    def translator_list(self) -> nn.ModuleList | None:
        """The translators: the fusion's when the student fuses, else the loss heads."""
        if self.model.fusion is not None:
            return self.model.fusion.translators
        return self.translators

    def _new_ema(self) -> AveragedModel:
        ema = AveragedModel(self.model, multi_avg_fn=_ema_average(self.hparams.ema_decay))
        ema.requires_grad_(False)
        return ema.eval()

    def attach_teachers(self, teachers: list[Teacher]) -> None:
        """Use ``teachers``: create the translators (or the fusion) for their widths, or check a
        checkpoint's. ``setup('fit')`` calls this with the specs' teachers."""
        widths = [teacher.channels()[-1] for teacher in teachers]
        student = self.model.encoder_channels[-1]
        hp = self.hparams
        built = self.translator_list()
        if built is not None:
            if translator_widths(built) != widths:
                raise GeodistillError(
                    f"the checkpoint's translators map to {translator_widths(built)} channels; "
                    f"these teachers have {widths} at their distilled level",
                    teachers[0].path,
                )
        elif hp.fusion:
            config = FusionConfig(widths, hp.translator_hidden, hp.fusion_student_weight)
            self.model.set_fusion(config)
            # Recorded in arch_kwargs: every checkpoint of this student, the exported teacher-free
            # one included, rebuilds its fusion.
            self.hparams["arch_kwargs"] = {**(hp.arch_kwargs or {}), "fusion": config.as_dict()}
            self.ema = self._new_ema()
        else:
            self.translators = build_translators(student, widths, hp.translator_hidden)
        object.__setattr__(self, "_teachers", list(teachers))

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage != "fit":
            return  # validation, test and prediction use the student alone
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and getattr(datamodule, "unlabeled_from", None) is None:
            raise GeodistillError(
                "SemiSupervisedTask learns from unlabelled images: set data.unlabeled_from "
                "('unlabeled', 'coarse' or 'rest')"
            )
        if not self.distills:
            return
        self.attach_teachers([build_teacher(spec, self.band_names) for spec in self.teacher_specs])
        if self.hparams.teacher_cache is not None:
            attach_cache_rank_zero_first(self, attach_teacher_caches, self.teachers)

    def on_fit_start(self) -> None:
        for teacher in self._teachers:
            teacher.to(self.device)
        if self.ema is not None and int(self.ema.n_averaged) == 0:
            # Pseudo-labels of the first step come from the student as it starts (normaliser
            # statistics included); the first update then copies it again.
            self.ema.module.load_state_dict(self.model.state_dict())
        seed = (torch.initial_seed() + self.global_rank) % 2**63
        self._generator = torch.Generator().manual_seed(seed)

    def train(self, mode: bool = True) -> SemiSupervisedTask:
        """The EMA model always predicts in eval mode (its batch-norm statistics are copied)."""
        super().train(mode)
        if self.ema is not None:
            self.ema.eval()
        return self

    # ----------------------------------------------------------------------------------------
    # training

    @property
    def generator(self) -> torch.Generator:
        """The strong view's random stream (seeded when fitting starts)."""
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(torch.initial_seed() % 2**63)
        return self._generator

    def make_pseudo_labels(self, weak: Tensor) -> PseudoLabels:
        """The EMA model's pseudo-labels for the weak view."""
        if self.ema is None:
            raise GeodistillError("the EMA model is built when fitting starts")
        self.ema.eval()
        with torch.no_grad():
            logits = self.ema(weak)
        valid = ~torch.isnan(weak).any(1)
        return pseudo_labels(logits, self.hparams.threshold, valid, self.hparams.ignore_index)

    @torch.no_grad()
    def update_ema(self) -> None:
        """One EMA step: parameters averaged with the decay schedule, buffers copied."""
        if self.ema is None:
            raise GeodistillError("the EMA model is built when fitting starts")
        self.ema.update_parameters(self.model)
        for averaged, current in zip(self.ema.module.buffers(), self.model.buffers(), strict=True):
            averaged.copy_(current)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = self.trainer.global_step
        if step != self._ema_step:  # an optimiser step happened (gradient accumulation aside)
            self._ema_step = step
            self.update_ema()

    def translate(self, output: SegmentationOutput) -> list[Tensor]:
        """Each teacher's translation of the student's deepest encoder features."""
        if output.translated:
            return output.translated
        translators = self.translator_list()
        if translators is None:
            raise GeodistillError("the translators are built when fitting starts")
        return [translator(output.features[-1]) for translator in translators]

    def teacher_features(self, labeled: dict[str, Any], unlabeled: dict[str, Any]) -> list[Tensor]:
        """Each teacher's distilled features for the labelled then the weak unlabelled images:
        from the batches' cached outputs when both carry them, else from the teachers."""
        cached = [batch.get("teacher") for batch in (labeled, unlabeled)]
        if all(c is not None for c in cached):
            return [
                torch.cat([c["features"][k].float() for c in cached])  # type: ignore[index]
                for k in range(len(self.teacher_specs))
            ]
        images = torch.cat([labeled["image"], unlabeled["image"]])
        features = []
        for teacher in self.teachers:
            if teacher.band_indices.device != images.device:
                teacher.to(images.device)
            features.append(teacher(images).features[-1])
        return features

    def _forward(self, parts: list[Tensor]) -> list[SegmentationOutput]:
        """One student pass over several same-size batches, split back per batch."""
        output = self.model.forward_features(torch.cat(parts))
        sizes = [len(part) for part in parts]

        def split(tensor: Tensor) -> tuple[Tensor, ...]:
            return tensor.split(sizes)

        pieces = zip(
            zip(*(split(f) for f in output.features), strict=True),
            split(output.decoder),
            split(output.logits),
            zip(*(split(t) for t in output.translated), strict=True)
            if output.translated
            else [()] * len(parts),
            strict=True,
        )
        return [
            SegmentationOutput(list(features), decoder, logits, list(translated))
            for features, decoder, logits, translated in pieces
        ]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if not isinstance(batch, dict) or not {"labeled", "unlabeled"} <= set(batch):
            raise GeodistillError(
                "SemiSupervisedTask needs labelled and unlabelled batches: set data.unlabeled_from"
            )
        hp = self.hparams
        labeled, unlabeled = _common_size(batch["labeled"], batch["unlabeled"], hp.ignore_index)
        images, mask, weak = labeled["image"], labeled["mask"], unlabeled["image"]
        pseudo = self.make_pseudo_labels(weak)
        view = self.strong
        strong = strong_view(weak, view, self.generator)
        strong, strong_labels = cutmix(
            strong,
            pseudo.labels,
            p=view.cutmix_p,
            generator=self.generator,
            area=view.cutmix_area,
            ratio=view.cutmix_ratio,
        )
        parts = [images, weak, strong] if self.distills else [images, strong]
        outputs = self._forward(parts)
        supervised = self.criterion(outputs[0].logits, mask)
        logs = {f"loss_{k}": v.detach() for k, v in self.criterion.last_terms.items()}
        strong_valid = ~torch.isnan(strong).any(1)
        unsupervised = unsupervised_loss(
            outputs[-1].logits, strong_labels, strong_valid, hp.ignore_index
        )
        weak_valid = ~torch.isnan(weak).any(1)
        kept = (pseudo.labels != hp.ignore_index).sum() / weak_valid.sum().clamp_min(1)
        logs.update(
            loss_supervised=supervised.detach(),
            loss_unsupervised=unsupervised.detach(),
            pseudo_label_ratio=kept.detach(),
        )
        loss = supervised + hp.unsup_weight * unsupervised
        if self.distills:
            distill = self._distillation(outputs[0], outputs[1], labeled, unlabeled, logs)
            loss = loss + hp.distill_weight * distill
        if self.model.fusion is not None:
            for k, weight in enumerate(self.model.fusion.weights.detach()):
                logs[f"fusion_weight_{k}"] = weight
        size = len(images)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, batch_size=size)
        return loss

    def _distillation(
        self,
        labeled_output: SegmentationOutput,
        weak_output: SegmentationOutput,
        labeled: dict[str, Any],
        unlabeled: dict[str, Any],
        logs: dict[str, Tensor],
    ) -> Tensor:
        teachers = self.teacher_features(labeled, unlabeled)
        translated = [
            torch.cat(pair)
            for pair in zip(
                self.translate(labeled_output), self.translate(weak_output), strict=True
            )
        ]
        valid = ~torch.isnan(torch.cat([labeled["image"], unlabeled["image"]])).any(1)
        terms = []
        for k, (student, teacher) in enumerate(zip(translated, teachers, strict=True)):
            term = feature_distance(student, teacher, valid, self.hparams.distill_loss)
            logs[f"loss_distill_{k}"] = term.detach()
            terms.append(term)
        distill = torch.stack(terms).mean()
        logs["loss_distill"] = distill.detach()
        return distill

    # ----------------------------------------------------------------------------------------
    # checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        # Under "teacher", like every distillation task: export drops it with the teachers.
        checkpoint["geodistill"]["teacher"] = [asdict(spec) for spec in self.teacher_specs]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get("geodistill", {}).get("teacher")
        current = [asdict(spec) for spec in self.teacher_specs]
        if saved is not None and saved != current:
            warnings.warn(
                f"the checkpoint was distilled from teachers {saved}; resuming with {current}",
                stacklevel=2,
            )
        state = checkpoint.get("state_dict", {})
        recorded = (checkpoint.get("hyper_parameters", {}).get("arch_kwargs") or {}).get("fusion")
        if self.model.fusion is None and recorded is not None:
            # Loaded by a config that leaves the widths to the teachers (validate/test): the
            # checkpoint's hyper-parameters know them.
            self.model.set_fusion(FusionConfig.from_value(recorded))  # type: ignore[arg-type]
            self.hparams["arch_kwargs"] = {**(self.hparams.arch_kwargs or {}), "fusion": recorded}
            self.ema = self._new_ema()
        if self.translators is None and self.model.fusion is None:
            # Loading without fitting: the loss heads' shapes are in the state, no teacher needed.
            count = len({k.split(".")[1] for k in state if k.startswith("translators.")})
            shapes = [
                (state[f"translators.{k}.0.weight"].shape, state[f"translators.{k}.2.weight"].shape)
                for k in range(count)
            ]
            if shapes:
                self.translators = nn.ModuleList(
                    Translator(int(first[1]), int(last[0]), int(first[0])) for first, last in shapes
                )


def _check_settings(
    threshold: float,
    ema_decay: float,
    unsup_weight: float,
    distill_weight: float,
    distill_loss: str,
) -> None:
    if not 0 < threshold <= 1:
        raise GeodistillError(f"model.threshold must be in (0, 1], got {threshold}")
    if not 0 <= ema_decay < 1:
        raise GeodistillError(f"model.ema_decay must be in [0, 1), got {ema_decay}")
    for name, value in (("unsup_weight", unsup_weight), ("distill_weight", distill_weight)):
        if value < 0:
            raise GeodistillError(f"model.{name} must be >= 0, got {value}")
    if distill_loss not in DISTANCES:
        raise GeodistillError(
            f"model.distill_loss must be one of {', '.join(DISTANCES)}, got {distill_loss!r}"
        )


def _recorded_fusion(
    arch_kwargs: dict[str, Any] | None,
    fusion: bool,
    hidden: int | None,
    student_weight: float,
) -> FusionConfig | None:
    """The fusion a checkpoint recorded in ``arch_kwargs``; it must agree with the task's
    settings (set it once, as ``model.fusion``)."""
    recorded = FusionConfig.from_value((arch_kwargs or {}).get("fusion"))
    if recorded is None:
        return None
    if not fusion or recorded.hidden != hidden or recorded.student_weight != student_weight:
        raise GeodistillError(
            "model.arch_kwargs.fusion differs from model.fusion / translator_hidden / "
            "fusion_student_weight: set the fusion once, with those options"
        )
    return recorded


def _common_size(
    labeled: dict[str, Any], unlabeled: dict[str, Any], ignore_index: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both batches padded (bottom/right, nodata and ignore) to one tile size, so one student
    pass serves them all."""
    height = max(labeled["image"].shape[-2], unlabeled["image"].shape[-2])
    width = max(labeled["image"].shape[-1], unlabeled["image"].shape[-1])

    def padded(batch: dict[str, Any]) -> dict[str, Any]:
        pad = (0, width - batch["image"].shape[-1], 0, height - batch["image"].shape[-2])
        if not any(pad):
            return batch
        if "teacher" in batch:
            raise GeodistillError(
                "labelled and unlabelled cache windows differ in size: rebuild the teacher caches"
            )
        return {
            **batch,
            "image": F.pad(batch["image"], pad, value=float("nan")),
            "mask": F.pad(batch["mask"], pad, value=ignore_index),
        }

    return padded(labeled), padded(unlabeled)


# ------------------------------------------------------------------------------- teacher caches


class CachedTeachersDataset(CachedTeacherDataset):
    """A chip dataset as the fixed window grid of its teacher caches (one per teacher, built over
    the same dataset and window size); each sample carries every teacher's last feature level
    under ``"teacher": {"features": [(C_k, h_k, w_k) per teacher], "logits": None}``, moved by the
    same geometric augmentation as image and mask."""

    def __init__(self, dataset: Dataset, caches: list[TeacherCache]) -> None:
        super().__init__(dataset, caches[0])  # type: ignore[arg-type] # checks the data fingerprint
        for cache in caches[1:]:
            if cache.fingerprint.data != caches[0].fingerprint.data:
                raise GeodistillError("the teacher caches were built over other windows")
        self.caches = caches

    def target_maps(self, k: int) -> list[Tensor]:
        return [
            torch.from_numpy(np.array(cache.targets(k)["features"][-1], dtype=np.float32))
            for cache in self.caches
        ]

    def teacher_entry(self, moved: list[Tensor]) -> dict[str, Any]:
        return {"features": list(moved), "logits": None}


def attach_teacher_caches(
    datamodule: Any,
    teachers: list[Teacher],
    folder: str | Path,
    on_mismatch: Literal["rebuild", "refuse"] = "rebuild",
    dtype: str = "float16",
    device: str | torch.device | None = None,
    batch_size: int = 8,
) -> None:
    """Train both streams of ``datamodule`` (after its ``setup("fit")``) on cached teacher
    outputs: ``<folder>/teacher_<k>/<labeled|unlabeled>`` per teacher, built or reused by
    :func:`~geodistill.data.teacher_cache.ensure_teacher_cache` over windows of
    ``datamodule.patch_size``."""
    size = datamodule.patch_size
    warn_if_unaligned(size)
    for stream, name in (("train", "labeled"), ("unlabeled", "unlabeled")):
        dataset = datamodule.datasets.get(stream)
        if dataset is None:
            raise GeodistillError(f"the data module has no {name} training set yet")
        if isinstance(dataset, CachedTeachersDataset):
            dataset = dataset.dataset
        caches = [
            ensure_teacher_cache(
                Path(folder) / f"teacher_{k}" / name,
                teacher,
                dataset,  # type: ignore[arg-type]
                size,
                on_mismatch,
                dtype=dtype,
                device=device,
                batch_size=batch_size,
            )
            for k, teacher in enumerate(teachers)
        ]
        datamodule.datasets[stream] = CachedTeachersDataset(dataset, caches)


__all__ = [
    "CachedTeachersDataset",
    "PseudoLabels",
    "SemiSupervisedTask",
    "attach_teacher_caches",
    "ema_decay_at",
    "feature_distance",
    "pseudo_labels",
    "unsupervised_loss",
]
