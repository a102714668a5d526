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
  teacher registry for the data's bands and held by
  :class:`~geodistill.methods.frozen_teachers.FrozenTeachers`). Per teacher ``k`` a
  translator ``T_k`` maps the student's deepest encoder features ``s`` to the teacher's width;
  resized to the teacher's grid it is compared with the teacher's last feature level ``t_k`` by
  ``D_k`` = MSE or ``1 − cosine`` per location (``distill_loss``), averaged over valid
  locations, on the labelled and the weak unlabelled images; the terms are averaged over
  teachers.
- ``fusion``: the translated features are also projected back and mixed into the decoder's deepest
  input with softmax weights (0.8 for the student, 0.2 shared by the teachers), learned from there
  (``fusion_weights="learned"``, with their own learning rate ``fusion_lr`` if set) or kept fixed
  as in RS-MTDF (``"fixed"``). Translators, projections and weights are student-side modules
  (:class:`~geodistill.models.fusion.FeatureFusion`), so the deployed student runs them without
  teachers and without a second backbone pass, and ``geodistill export`` keeps them. Without
  fusion the translators are loss heads, never exported.
- ``max_distill_ratio`` (off by default) caps the distillation term's weight, step by step, so
  that ``weight · distill ≤ max_distill_ratio · supervised``
  (:func:`~geodistill.losses.balance.capped_weight`); ``train/distill_weight_effective`` logs the
  weight used.

Which network is deployed. Validation scores the EMA copy beside the student
(``val/ema/<metric>`` next to ``val/<metric>``). ``deploy`` chooses the network a user gets:
``student``, ``ema``, or ``best`` (the default: the EMA if its ``val/mIoU`` was higher than the
student's at the last validation before the checkpoint, else the student; the student when no
validation has run). Checkpoints record the choice and both scores in
``geodistill.deployed``; ``geodistill export`` writes the chosen network's weights as the plain
student. The task asks the method which network to run (:meth:`SemiSupervised.deployed_network`)
at test and prediction, so ``test/<metric>`` scores what export deploys (``test/student/*`` and
``test/ema/*`` score both). The training network itself is never replaced: a resumed fit goes on
from the student. Checkpoint selection (``val/mIoU``) stays on the student's score.

RS-MTDF divides the sum of its three terms by 3; with unit weights this task's loss is 3 times
RS-MTDF's, which only rescales the learning rate under Adam(W): set the three weights to 1/3 (and
scale the supervised loss with them) to reproduce it exactly.

Teachers are never submodules: checkpoints record their specs only. With
``teacher_cache`` the teachers' outputs for the fixed windows of both streams are computed once
and memory-mapped (:mod:`geodistill.data.teacher_cache`); the teachers then see the un-augmented
weak images only, exactly as without a cache apart from the weak view's photometric jitter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from geodistill.data.perturbations import StrongView, cutmix, strong_view
from geodistill.errors import GeodistillError
from geodistill.losses.balance import capped_weight
from geodistill.losses.distillation import _resize_map
from geodistill.methods.base import (
    Distillation,
    Step,
    check_choice,
    check_non_negative,
    register_method,
)
from geodistill.methods.frozen_teachers import FrozenTeachers, check_cache_settings
from geodistill.methods.padding import common_size, split_forward
from geodistill.models.fusion import (
    MIXINGS,
    RS_MTDF_STUDENT_WEIGHT,
    FusionConfig,
    Mixing,
    build_translators,
    check_hidden,
    translator_widths,
)
from geodistill.models.student import SegmentationOutput
from geodistill.models.teachers import TeacherSpec

if TYPE_CHECKING:
    from geodistill.tasks.segmentation import SegmentationTask

DistillLoss = Literal["mse", "cosine"]
Deploy = Literal["best", "student", "ema"]
DEPLOYS: tuple[str, ...] = ("best", "student", "ema")

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


# ------------------------------------------------------------------------------- the method


@register_method("semi_supervised")
class SemiSupervised(Distillation):
    """FixMatch with an EMA model, multi-teacher feature distillation and optional fusion (see
    the module docstring).

    Args:
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
        fusion_weights: ``learned`` (softmax weights trained from their initial values) or
            ``fixed`` (kept at ``fusion_student_weight`` and an equal share of the rest per
            teacher, RS-MTDF's 0.8 / 0.1 / 0.1; saved and exported, never trained).
        fusion_lr: learning rate of the learned fusion weights (the same schedule applies);
            ``None`` takes the task's ``lr``.
        max_distill_ratio: cap the distillation term's weight so that ``weight · distill ≤
            max_distill_ratio · supervised`` at every step; ``None`` (default) never caps.
        deploy: the network tests, prediction and export use: ``student``, ``ema``, or ``best``
            (whichever scored the higher ``val/mIoU`` at the last validation).
        strong_view: the strong view's settings (:class:`~geodistill.data.perturbations.
            StrongView`; CutMix's included).
        teacher_cache: folder of teacher output caches (one per teacher and stream, computed
            once); ``None`` runs the teachers on every batch.
        cache_on_mismatch, cache_dtype: as for
            :func:`~geodistill.data.teacher_cache.ensure_teacher_cache`.
    """

    unlabeled = "required"

    def __init__(
        self,
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
        fusion_weights: Mixing = "learned",
        fusion_lr: float | None = None,
        max_distill_ratio: float | None = None,
        deploy: Deploy = "best",
    ) -> None:
        super().__init__()
        specs = [TeacherSpec.from_value(t) for t in teachers or []]
        if not 0 < threshold <= 1:
            raise GeodistillError(
                f"model.distillation.threshold must be in (0, 1], got {threshold}"
            )
        if not 0 <= ema_decay < 1:
            raise GeodistillError(
                f"model.distillation.ema_decay must be in [0, 1), got {ema_decay}"
            )
        check_non_negative(unsup_weight=unsup_weight, distill_weight=distill_weight)
        check_choice("distill_loss", distill_loss, tuple(DISTANCES))
        check_hidden(translator_hidden, "model.distillation.translator_hidden")
        check_cache_settings(cache_on_mismatch)
        view = StrongView.from_value(strong_view)
        if fusion and (not specs or distill_weight <= 0):
            raise GeodistillError(
                "model.distillation.fusion mixes translated teacher features into the decoder: "
                "it needs at least one teacher and distill_weight > 0"
            )
        if fusion and not 0 < fusion_student_weight < 1:
            raise GeodistillError(
                "model.distillation.fusion_student_weight must be in (0, 1), got "
                f"{fusion_student_weight}"
            )
        check_choice("fusion_weights", fusion_weights, MIXINGS)
        check_choice("deploy", deploy, DEPLOYS)
        if fusion_lr is not None:
            if not fusion_lr > 0:
                raise GeodistillError(
                    f"model.distillation.fusion_lr must be > 0 or null, got {fusion_lr}"
                )
            if not fusion or fusion_weights != "learned":
                raise GeodistillError(
                    "model.distillation.fusion_lr is the learning rate of the learned fusion "
                    "weights: it needs fusion: true and fusion_weights: learned"
                )
        if max_distill_ratio is not None and not max_distill_ratio > 0:
            raise GeodistillError(
                f"model.distillation.max_distill_ratio must be > 0 or null, got {max_distill_ratio}"
            )
        self.specs = specs
        self.strong = view
        self.record_settings(
            teachers=[asdict(spec) for spec in specs],
            threshold=threshold,
            ema_decay=ema_decay,
            unsup_weight=unsup_weight,
            distill_weight=distill_weight,
            distill_loss=distill_loss,
            translator_hidden=translator_hidden,
            fusion=fusion,
            fusion_student_weight=fusion_student_weight,
            strong_view=view.as_dict(),
            teacher_cache=teacher_cache,
            cache_on_mismatch=cache_on_mismatch,
            cache_dtype=cache_dtype,
            fusion_weights=fusion_weights,
            fusion_lr=fusion_lr,
            max_distill_ratio=max_distill_ratio,
            deploy=deploy,
        )
        self.ignore_index = 255
        self.teachers: FrozenTeachers | None = None
        # Without fusion: loss heads. With fusion they live in the student (model.fusion).
        self.translators: nn.ModuleList | None = None
        self.ema: AveragedModel | None = None
        self._student: Any = None  # the task's network, which the EMA follows (not a submodule)
        self._generator: torch.Generator | None = None
        self._ema_step = -1
        # val/mIoU of "student" and "ema" at the last validation (or from the loaded checkpoint)
        self._scores: dict[str, float] | None = None

    @property
    def active(self) -> bool:
        """Whether any teacher is distilled."""
        return bool(self.specs) and self.settings["distill_weight"] > 0

    # ----------------------------------------------------------------------------- building

    def bind(self, task: SegmentationTask) -> dict[str, Any]:
        hp = self.settings
        model = task.model
        object.__setattr__(self, "_student", model)
        self.ignore_index = task.hparams.ignore_index
        updates: dict[str, Any] = {}
        self.teachers = FrozenTeachers(self.specs, task.band_names, build=self.active)
        if self.active:
            widths = [teacher.channels()[-1] for teacher in self.teachers]
            if model.fusion is not None:  # rebuilt from a checkpoint's arch_kwargs
                recorded = FusionConfig.from_value((task.hparams.arch_kwargs or {}).get("fusion"))
                if (
                    not hp["fusion"]
                    or recorded is None
                    or recorded.hidden != hp["translator_hidden"]
                    or recorded.student_weight != hp["fusion_student_weight"]
                    or recorded.mixing != hp["fusion_weights"]
                ):
                    raise GeodistillError(
                        "model.arch_kwargs.fusion differs from model.distillation.fusion / "
                        "translator_hidden / fusion_student_weight / fusion_weights: set the "
                        "fusion once, with those options"
                    )
                if translator_widths(model.fusion.translators) != widths:
                    raise GeodistillError(
                        f"the recorded translators map to "
                        f"{translator_widths(model.fusion.translators)} channels; these teachers "
                        f"have {widths} at their distilled level",
                        self.teachers[0].path,
                    )
            elif hp["fusion"]:
                config = FusionConfig(
                    widths,
                    hidden=hp["translator_hidden"],
                    student_weight=hp["fusion_student_weight"],
                    mixing=hp["fusion_weights"],
                )
                model.set_fusion(config)
                # Recorded in arch_kwargs: every checkpoint of this student, the exported
                # teacher-free one included, rebuilds its fusion.
                updates["arch_kwargs"] = {
                    **(task.hparams.arch_kwargs or {}),
                    "fusion": config.as_dict(),
                }
            else:
                self.translators = build_translators(
                    model.encoder_channels[-1], widths, hp["translator_hidden"]
                )
        self.ema = _new_ema(model, hp["ema_decay"])
        return updates

    def translator_list(self) -> nn.ModuleList | None:
        """The translators: the fusion's when the student fuses, else the loss heads."""
        if self._student is not None and self._student.fusion is not None:
            return self._student.fusion.translators
        return self.translators

    def setup(self, task: SegmentationTask, stage: str, datamodule: Any) -> None:
        if stage != "fit" or not self.active:
            return  # validation, test and prediction use the student alone
        if self.settings["teacher_cache"] is not None:
            assert self.teachers is not None
            self.teachers.attach_caches(
                task,
                self.settings["teacher_cache"],
                ("train", "unlabeled"),
                self.settings["cache_on_mismatch"],
                self.settings["cache_dtype"],
            )

    def on_fit_start(self, task: SegmentationTask) -> None:
        if self.teachers is not None and self.active:
            self.teachers.to(task.device)
        if self.ema is not None and int(self.ema.n_averaged) == 0:
            # Pseudo-labels of the first step come from the student as it starts (normaliser
            # statistics included); the first update then copies it again.
            self.ema.module.load_state_dict(task.model.state_dict())
        seed = (torch.initial_seed() + task.global_rank) % 2**63
        self._generator = torch.Generator().manual_seed(seed)

    def train(self, mode: bool = True) -> SemiSupervised:
        """The EMA model always predicts in eval mode (its batch-norm statistics are copied)."""
        super().train(mode)
        if self.ema is not None:
            self.ema.eval()
        return self

    def teacher_record(self) -> Any:
        return self.settings["teachers"]

    # --------------------------------------------------------------- optimiser and deployment

    def parameter_groups(self, task: SegmentationTask) -> list[dict[str, Any]]:
        """The learned fusion weights in a group of their own when ``fusion_lr`` is set."""
        fusion = task.model.fusion
        if self.settings["fusion_lr"] is None or fusion is None:
            return []
        return [{"params": [fusion.mix_logits], "lr": self.settings["fusion_lr"]}]

    def evaluated_models(self) -> dict[str, nn.Module]:
        """The EMA copy, scored beside the student (``val/ema/<metric>``)."""
        return {} if self.ema is None else {"ema": self.ema.module}

    def on_validation_scores(self, task: SegmentationTask, scores: dict[str, float]) -> None:
        self._scores = {name: float(scores[name]) for name in ("student", "ema")}

    def deployed_network(self) -> str:
        """``deploy`` itself, or for ``best`` the EMA when its last ``val/mIoU`` was strictly
        higher than the student's (the student on ties, NaN scores or before any validation)."""
        return choose_deployed(self.settings["deploy"], self._scores)

    def deployment_record(self) -> dict[str, Any]:
        return {"deploy": self.settings["deploy"], "val_mIoU": self._scores}

    def load_deployment_record(self, record: dict[str, Any] | None) -> None:
        scores = None if record is None else record.get("val_mIoU")
        self._scores = None if scores is None else {k: float(v) for k, v in scores.items()}

    # ----------------------------------------------------------------------------- training

    @property
    def generator(self) -> torch.Generator:
        """The strong view's random stream (seeded when fitting starts)."""
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(torch.initial_seed() % 2**63)
        return self._generator

    def make_pseudo_labels(self, weak: Tensor) -> PseudoLabels:
        """The EMA model's pseudo-labels for the weak view."""
        assert self.ema is not None
        self.ema.eval()
        with torch.no_grad():
            logits = self.ema(weak)
        valid = ~torch.isnan(weak).any(1)
        return pseudo_labels(logits, self.settings["threshold"], valid, self.ignore_index)

    @torch.no_grad()
    def update_ema(self) -> None:
        """One EMA step: parameters averaged with the decay schedule, buffers copied."""
        assert self.ema is not None and self._student is not None
        self.ema.update_parameters(self._student)
        for averaged, current in zip(
            self.ema.module.buffers(), self._student.buffers(), strict=True
        ):
            averaged.copy_(current)

    def on_train_batch_end(self, task: SegmentationTask) -> None:
        step = task.trainer.global_step
        if step != self._ema_step:  # an optimiser step happened (gradient accumulation aside)
            self._ema_step = step
            self.update_ema()

    def translate(self, output: SegmentationOutput) -> list[Tensor]:
        """Each teacher's translation of the student's deepest encoder features."""
        if output.translated:
            return output.translated
        translators = self.translator_list()
        if translators is None:
            raise GeodistillError("no translators: no teacher is distilled")
        return [translator(output.features[-1]) for translator in translators]

    def teacher_features(self, labeled: dict[str, Any], unlabeled: dict[str, Any]) -> list[Tensor]:
        """Each teacher's distilled features for the labelled then the weak unlabelled images:
        from the batches' cached outputs when both carry them, else from the teachers."""
        cached = [batch.get("teacher") for batch in (labeled, unlabeled)]
        if all(c is not None for c in cached):
            return [
                torch.cat([c["features"][k].float() for c in cached])  # type: ignore[index]
                for k in range(len(self.specs))
            ]
        assert self.teachers is not None
        images = torch.cat([labeled["image"], unlabeled["image"]])
        return [output.features[-1] for output in self.teachers.outputs(images)]

    def training_step(self, task: SegmentationTask, batch: dict[str, Any]) -> Step:
        if not isinstance(batch, dict) or not {"labeled", "unlabeled"} <= set(batch):
            raise GeodistillError(
                "SemiSupervised needs labelled and unlabelled batches: set data.unlabeled_from"
            )
        hp = self.settings
        labeled, unlabeled = common_size(batch["labeled"], batch["unlabeled"], self.ignore_index)
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
        parts = [images, weak, strong] if self.active else [images, strong]
        outputs = split_forward(task.model, parts)
        supervised = task.criterion(outputs[0].logits, mask)
        logs = {f"loss_{k}": v.detach() for k, v in task.criterion.last_terms.items()}
        strong_valid = ~torch.isnan(strong).any(1)
        unsupervised = unsupervised_loss(
            outputs[-1].logits, strong_labels, strong_valid, self.ignore_index
        )
        weak_valid = ~torch.isnan(weak).any(1)
        kept = (pseudo.labels != self.ignore_index).sum() / weak_valid.sum().clamp_min(1)
        logs.update(
            loss_supervised=supervised.detach(),
            loss_unsupervised=unsupervised.detach(),
            pseudo_label_ratio=kept.detach(),
            **self.ema_logs(task.model),
        )
        loss = supervised + hp["unsup_weight"] * unsupervised
        if self.active:
            distill = self._distillation(outputs[0], outputs[1], labeled, unlabeled, logs)
            distill_weight: float | Tensor = hp["distill_weight"]
            if hp["max_distill_ratio"] is not None:  # else as before: bit-identical
                distill_weight = capped_weight(
                    hp["distill_weight"], distill, supervised, hp["max_distill_ratio"]
                )
            loss = loss + distill_weight * distill
            logs["distill_weight_effective"] = torch.as_tensor(distill_weight).detach().float()
        if task.model.fusion is not None:
            for k, weight in enumerate(task.model.fusion.weights.detach()):
                logs[f"fusion_weight_{k}"] = weight
        return Step(loss, logs, len(images))

    @torch.no_grad()
    def ema_logs(self, student: nn.Module) -> dict[str, Tensor]:
        """``ema_decay``: the decay of the EMA's next update; ``ema_distance``: how far the EMA's
        parameters are from the student's, ``‖θ_ema − θ‖ / ‖θ‖`` (before this step's update)."""
        assert self.ema is not None
        decay = ema_decay_at(int(self.ema.n_averaged), self.settings["ema_decay"])
        averaged, current = list(self.ema.module.parameters()), list(student.parameters())
        difference = torch.stack(torch._foreach_norm(torch._foreach_sub(averaged, current)))
        norm = torch.stack(torch._foreach_norm(current))
        distance = difference.norm() / norm.norm().clamp_min(1e-12)
        return {"ema_decay": torch.tensor(decay), "ema_distance": distance}

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
            term = feature_distance(student, teacher, valid, self.settings["distill_loss"])
            logs[f"loss_distill_{k}"] = term.detach()
            terms.append(term)
        distill = torch.stack(terms).mean()
        logs["loss_distill"] = distill.detach()
        return distill


def choose_deployed(deploy: str, scores: dict[str, float] | None) -> str:
    """The network ``deploy`` picks given the last validation ``scores`` (``student``/``ema``):
    ``best`` takes the EMA only when its score is strictly higher (never on NaN or no score)."""
    if deploy != "best":
        return deploy
    if scores is None or not scores.get("ema", float("nan")) > scores.get("student", float("nan")):
        return "student"
    return "ema"


def _new_ema(model: nn.Module, decay: float) -> AveragedModel:
    ema = AveragedModel(model, multi_avg_fn=_ema_average(decay))
    ema.requires_grad_(False)
    return ema.eval()


__all__ = [
    "PseudoLabels",
    "SemiSupervised",
    "choose_deployed",
    "ema_decay_at",
    "feature_distance",
    "pseudo_labels",
    "unsupervised_loss",
]
