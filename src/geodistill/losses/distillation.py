"""Distillation losses: attentive feature and prediction distillation from a frozen teacher.

Both losses take an optional per-pixel ``attention`` map (see :mod:`geodistill.losses.attention`)
and reduce as ``sum(attention * per_pixel_loss) / number_of_valid_pixels``: with attention 1
everywhere they are the plain, unweighted losses (LwF-style prediction distillation, FitNet-style
feature distillation), and a pixel with attention 0 contributes nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _resize_map(values: Tensor, size: tuple[int, int]) -> Tensor:
    """Area-average a ``(B, H, W)`` map to ``size`` (attention and validity at a feature grid)."""
    if tuple(values.shape[-2:]) == tuple(size):
        return values.float()
    return F.interpolate(values[:, None].float(), size=size, mode="area")[:, 0]


def weighted_mean(per_pixel: Tensor, valid: Tensor, attention: Tensor | None) -> Tensor:
    """``sum(attention * per_pixel) / sum(valid)`` over a batch; 0 when nothing is valid."""
    weights = valid.float() if attention is None else attention * valid.float()
    return (weights * per_pixel).sum() / valid.float().sum().clamp_min(1.0)


def prediction_distillation(
    student_logits: Tensor,
    teacher_logits: Tensor,
    valid: Tensor,
    temperature: float = 2.0,
    attention: Tensor | None = None,
) -> Tensor:
    """Temperature-scaled ``KL(teacher || student)`` per pixel, times ``T²``, attention-weighted.

    The ``T²`` factor keeps gradient magnitudes comparable across temperatures (Hinton et al.).
    """
    log_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    kl = (log_teacher.exp() * (log_teacher - log_student)).sum(1) * temperature**2
    return weighted_mean(kl, valid, attention)


class FeatureAligner(nn.Module):
    """Map a student feature map onto the teacher's: 1×1 projection, resize, normalisation.

    The projection exists only where channel counts differ (a student initialised from its
    teacher needs none). Both sides are then standardised per pixel over channels (layer norm
    without affine parameters), so the loss compares feature directions and patterns, not scales
    that differ between networks and levels.
    """

    def __init__(self, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        self.projection: nn.Module = (
            nn.Identity()
            if student_channels == teacher_channels
            else nn.Conv2d(student_channels, teacher_channels, kernel_size=1)
        )

    def forward(self, student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
        student = self.projection(student)
        if student.shape[-2:] != teacher.shape[-2:]:
            student = F.interpolate(
                student, size=teacher.shape[-2:], mode="bilinear", align_corners=False
            )
        channels = student.shape[1]
        student = F.layer_norm(student.movedim(1, -1).float(), (channels,)).movedim(-1, 1)
        teacher = F.layer_norm(teacher.movedim(1, -1).float(), (channels,)).movedim(-1, 1)
        return student, teacher


def feature_discrepancy(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean squared difference over channels: a ``(B, H, W)`` map."""
    return (student - teacher).pow(2).mean(1)


class FeatureDistillation(nn.Module):
    """Attentive feature distillation over several levels, averaged over levels.

    One :class:`FeatureAligner` per level; the full-resolution attention and validity maps are
    area-averaged to each level's grid, so a feature cell is held to the teacher in proportion to
    how much of its footprint the attention trusts.
    """

    def __init__(self, student_channels: list[int], teacher_channels: list[int]) -> None:
        super().__init__()
        if len(student_channels) != len(teacher_channels):
            raise ValueError(
                f"{len(student_channels)} student levels for {len(teacher_channels)} teacher levels"
            )
        self.aligners = nn.ModuleList(
            FeatureAligner(s, t) for s, t in zip(student_channels, teacher_channels, strict=True)
        )

    def forward(
        self,
        student: list[Tensor],
        teacher: list[Tensor],
        valid: Tensor,
        attention: Tensor | None = None,
    ) -> Tensor:
        losses = []
        for aligner, s, t in zip(self.aligners, student, teacher, strict=True):
            s, t = aligner(s, t)
            size = (int(t.shape[-2]), int(t.shape[-1]))
            level_valid = _resize_map(valid, size)
            level_attention = (
                None if attention is None else _resize_map(attention * valid.float(), size)
            )
            per_pixel = feature_discrepancy(s, t)
            weights = level_valid if level_attention is None else level_attention
            losses.append((weights * per_pixel).sum() / level_valid.sum().clamp_min(1e-6))
        return torch.stack(losses).mean()
