"""KTDA's feature alignment (FAM) and its distillation loss.

:class:`FeatureAlignment` maps each student level onto the matching teacher level: a 1×1
convolution to the teacher's width and a bilinear resize to the teacher's grid. The projections
are loss heads: they live in the training task, never in the deployed student.

:func:`alignment_loss` compares aligned student and teacher maps per level as

    alpha · T² · KL(softmax_c(t / T) ‖ softmax_c(s / T)) + (1 − alpha) · MSE(s, t)

averaged over valid locations, then over levels. The softmax runs over **channels** at each
location, so each location's term compares what the two networks encode there. (KTDA's public
code takes the softmax over the last, width, axis: each channel's activations then form one
distribution per image row, and a location's term depends on its column, on every other column
of the row, and on the crop width.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geodistill.losses.distillation import _resize_map


class FeatureAlignment(nn.Module):
    """Per level a 1×1 convolution (student width → teacher width) and a bilinear resize to the
    teacher's grid.

    A 1×1 convolution and bilinear resizing are both linear per pixel and commute (bilinear
    weights sum to 1), so the resize runs first when it shrinks the map: the same result, with
    the projection evaluated on fewer pixels.
    """

    def __init__(self, student_channels: list[int], teacher_channels: list[int]) -> None:
        super().__init__()
        if len(student_channels) != len(teacher_channels):
            raise ValueError(
                f"{len(student_channels)} student levels for {len(teacher_channels)} teacher levels"
            )
        self.projections = nn.ModuleList(
            nn.Conv2d(s, t, kernel_size=1)
            for s, t in zip(student_channels, teacher_channels, strict=True)
        )

    @property
    def channels(self) -> tuple[list[int], list[int]]:
        """(student, teacher) width of each level."""
        return (
            [p.in_channels for p in self.projections],
            [p.out_channels for p in self.projections],
        )

    def forward(self, student: list[Tensor], teacher: list[Tensor]) -> list[Tensor]:
        """Student maps projected and resized onto the grids of ``teacher``'s maps."""
        aligned = []
        for projection, s, t in zip(self.projections, student, teacher, strict=True):
            size = (int(t.shape[-2]), int(t.shape[-1]))
            if tuple(s.shape[-2:]) == size:
                aligned.append(projection(s))
            elif size[0] * size[1] < s.shape[-2] * s.shape[-1]:
                aligned.append(projection(_bilinear(s, size)))
            else:
                aligned.append(_bilinear(projection(s), size))
        return aligned


def _bilinear(x: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def alignment_terms(
    student: list[Tensor], teacher: list[Tensor], valid: Tensor, temperature: float = 1.0
) -> dict[str, Tensor]:
    """The two parts of :func:`alignment_loss`, each averaged over valid locations and levels:
    ``kl`` (channel-softmax KL times ``T²``) and ``mse`` (mean squared difference).

    ``student`` maps must already be aligned (same shape as ``teacher``'s); ``valid`` is the
    ``(B, H, W)`` validity of the input pixels (False on nodata and padding), area-resized to
    each level's grid, so a feature cell counts in proportion to the valid share of its footprint.
    """
    if len(student) != len(teacher) or not student:
        raise ValueError(f"{len(student)} student maps for {len(teacher)} teacher maps")
    kls, mses = [], []
    for s, t in zip(student, teacher, strict=True):
        if s.shape != t.shape:
            raise ValueError(f"student map {tuple(s.shape)} is not aligned to {tuple(t.shape)}")
        s, t = s.float(), t.float()
        weights = _resize_map(valid, (int(t.shape[-2]), int(t.shape[-1])))
        total = weights.sum().clamp_min(1e-6)
        log_student = F.log_softmax(s / temperature, dim=1)
        log_teacher = F.log_softmax(t / temperature, dim=1)
        kl = (log_teacher.exp() * (log_teacher - log_student)).sum(1) * temperature**2
        mse = (s - t).pow(2).mean(1)
        kls.append((weights * kl).sum() / total)
        mses.append((weights * mse).sum() / total)
    return {"kl": torch.stack(kls).mean(), "mse": torch.stack(mses).mean()}


def alignment_loss(
    student: list[Tensor],
    teacher: list[Tensor],
    valid: Tensor,
    alpha: float = 0.5,
    temperature: float = 1.0,
) -> Tensor:
    """KTDA's distillation loss: ``alpha · KL + (1 − alpha) · MSE`` (see the module docstring)."""
    terms = alignment_terms(student, teacher, valid, temperature)
    return alpha * terms["kl"] + (1 - alpha) * terms["mse"]
