"""KTDA's feature alignment (FAM) and its distillation loss.

:class:`FeatureAlignment` maps each student level onto the matching teacher level: a 1×1
convolution to the teacher's width and a bilinear resize to the teacher's grid. The projections
are loss heads: they live in the training task, never in the deployed student.

:func:`alignment_loss` compares aligned student and teacher maps per level as

    alpha · T² · KL(softmax_c(t / T) ‖ softmax_c(s / T)) + (1 − alpha) · MSE(s, t)

averaged over valid locations, then over levels. By default (``kl_axis="channels"``) the
softmax runs over **channels** at each location, so each location's term compares what the two
networks encode there.

``kl_axis="width"`` reproduces KTDA's public code, which takes the softmax over the last, width,
axis of ``(B, C, H, W)`` maps: each channel's activations along one row form one distribution,
the KL is summed over the row's columns and averaged over rows, channels and images. A row's term
then depends on every column of the row, on the crop width and on the tile's orientation. Nodata
cannot be left out per location there (it enters the row's normalisation), so a row counts only
if its whole footprint is valid: rows of a level's grid that touch nodata or padding are
dropped from the KL (the MSE part stays masked per location).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geodistill.losses.distillation import _resize_map

KL_AXES = ("channels", "width")
"""Axes the alignment KL's softmax can run over: ``channels`` per location, ``width`` per
channel and row (KTDA's public code)."""


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
    student: list[Tensor],
    teacher: list[Tensor],
    valid: Tensor,
    temperature: float = 1.0,
    kl_axis: str = "channels",
) -> dict[str, Tensor]:
    """The two parts of :func:`alignment_loss`, each averaged over levels: ``kl`` (the KL times
    ``T²``, its softmax over ``kl_axis``) and ``mse`` (mean squared difference over channels,
    averaged over valid locations).

    ``student`` maps must already be aligned (same shape as ``teacher``'s); ``valid`` is the
    ``(B, H, W)`` validity of the input pixels (False on nodata and padding), area-resized to
    each level's grid, so a feature cell counts in proportion to the valid share of its footprint.
    With ``kl_axis="width"`` the KL counts only rows whose cells are all entirely valid (see the
    module docstring); a level without such rows adds 0.
    """
    if len(student) != len(teacher) or not student:
        raise ValueError(f"{len(student)} student maps for {len(teacher)} teacher maps")
    if kl_axis not in KL_AXES:
        raise ValueError(f"kl_axis must be one of {', '.join(KL_AXES)}, got {kl_axis!r}")
    kls, mses = [], []
    for s, t in zip(student, teacher, strict=True):
        if s.shape != t.shape:
            raise ValueError(f"student map {tuple(s.shape)} is not aligned to {tuple(t.shape)}")
        s, t = s.float(), t.float()
        weights = _resize_map(valid, (int(t.shape[-2]), int(t.shape[-1])))
        total = weights.sum().clamp_min(1e-6)
        if kl_axis == "channels":
            kl = _kl(s, t, temperature, dim=1)  # (B, H, W): one term per location
            kls.append((weights * kl).sum() / total)
        else:
            kl = _kl(s, t, temperature, dim=-1).mean(1)  # (B, H): one term per row
            rows = (weights >= 1 - 1e-6).all(-1).to(kl.dtype)
            kls.append((rows * kl).sum() / rows.sum().clamp_min(1.0))
        mse = (s - t).pow(2).mean(1)
        mses.append((weights * mse).sum() / total)
    return {"kl": torch.stack(kls).mean(), "mse": torch.stack(mses).mean()}


def _kl(student: Tensor, teacher: Tensor, temperature: float, dim: int) -> Tensor:
    """``T² · KL(softmax(t / T) ‖ softmax(s / T))`` with the softmax and the sum over ``dim``."""
    log_student = F.log_softmax(student / temperature, dim=dim)
    log_teacher = F.log_softmax(teacher / temperature, dim=dim)
    return (log_teacher.exp() * (log_teacher - log_student)).sum(dim) * temperature**2


def alignment_loss(
    student: list[Tensor],
    teacher: list[Tensor],
    valid: Tensor,
    alpha: float = 0.5,
    temperature: float = 1.0,
    kl_axis: str = "channels",
) -> Tensor:
    """KTDA's distillation loss: ``alpha · KL + (1 − alpha) · MSE`` (see the module docstring)."""
    terms = alignment_terms(student, teacher, valid, temperature, kl_axis)
    return alpha * terms["kl"] + (1 - alpha) * terms["mse"]
