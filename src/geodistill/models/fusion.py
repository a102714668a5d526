"""Multi-teacher feature translation and fusion (RS-MTDF), as student-side modules.

A :class:`Translator` per teacher maps the student's deepest encoder features into that teacher's
feature space (an MLP of 1×1 convolutions, RS-MTDF's ``384 → 1024 → teacher width`` token MLP
applied at every location). Distillation compares its output, resized to the teacher's grid, with
the frozen teacher's features.

:class:`FeatureFusion` also feeds the translated features back into the student: each is projected
back to the student's width and mixed into the decoder's input at the deepest level,

    fused = w_0 · f + Σ_k w_k · P_k(T_k(f)),     w = softmax(θ),

with ``θ`` learned and initialised so that ``w = (0.8, 0.2 / N, …, 0.2 / N)`` (RS-MTDF fixes
``0.8 / 0.1 / 0.1`` for its two teachers; ``mixing="fixed"`` keeps ``θ`` at its initial value, a
buffer that is saved and exported but never trained). Translators and projections only read the
student's own features, so the fused network runs without any teacher and without a second
backbone pass; it is part of :class:`~geodistill.models.student.SegmentationModel`, saved and
exported with it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch
from torch import Tensor, nn

from geodistill.errors import GeodistillError

RS_MTDF_STUDENT_WEIGHT = 0.8
"""RS-MTDF's weight of the student's own features in the fused decoder input."""

Mixing = Literal["learned", "fixed"]
MIXINGS: tuple[str, ...] = ("learned", "fixed")


@dataclass(frozen=True)
class FusionConfig:
    """A student's fusion of translated features (recorded in ``arch_kwargs.fusion``).

    Args:
        widths: the feature width of each teacher, one translator per teacher, in order.
        hidden: hidden width of every translator; ``None`` takes each teacher's width.
        student_weight: initial share of the student's own features, in ``(0, 1)``; the
            teachers' paths share the rest equally.
        mixing: ``learned`` (the shares are trained from there) or ``fixed`` (kept, as in
            RS-MTDF).
    """

    widths: list[int]
    hidden: int | None = None
    student_weight: float = RS_MTDF_STUDENT_WEIGHT
    mixing: Mixing = "learned"

    def __post_init__(self) -> None:
        widths = list(self.widths)
        if not widths or not all(isinstance(w, int) and w >= 1 for w in widths):
            raise GeodistillError(
                f"fusion.widths needs one positive integer per teacher, got {self.widths}"
            )
        object.__setattr__(self, "widths", widths)
        check_hidden(self.hidden, "fusion.hidden")
        if not 0 < self.student_weight < 1:
            raise GeodistillError(
                f"fusion.student_weight must be in (0, 1), got {self.student_weight}"
            )
        if self.mixing not in MIXINGS:
            raise GeodistillError(
                f"fusion.mixing must be one of {', '.join(map(repr, MIXINGS))}, got {self.mixing!r}"
            )

    @classmethod
    def from_value(cls, value: FusionConfig | dict[str, Any] | None) -> FusionConfig | None:
        """A config from a config, a mapping (checkpoint hyper-parameters) or ``None``."""
        if value is None or isinstance(value, FusionConfig):
            return value
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise GeodistillError(
                f"unknown fusion option(s) {', '.join(unknown)}; known: {', '.join(known)}"
            )
        return cls(**value)

    def as_dict(self) -> dict[str, Any]:
        """Plain values for hyper-parameters and checkpoints."""
        return asdict(self)


def check_hidden(hidden: int | None, name: str) -> None:
    """Refuse a hidden width that is not a positive integer."""
    if hidden is not None and (not isinstance(hidden, int) or hidden < 1):
        raise GeodistillError(f"{name} must be a positive integer or null, got {hidden}")


class Translator(nn.Sequential):
    """Student features → one teacher's feature space: 1×1 conv, ReLU, 1×1 conv (RS-MTDF's
    Linear–ReLU–Linear on tokens, at every location of a feature map)."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int | None = None) -> None:
        width = hidden or out_channels
        super().__init__(
            nn.Conv2d(in_channels, width, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, out_channels, kernel_size=1),
        )

    @property
    def channels(self) -> tuple[int, int]:
        """(student, teacher) width."""
        return self[0].in_channels, self[-1].out_channels


def build_translators(student: int, widths: list[int], hidden: int | None) -> nn.ModuleList:
    """One :class:`Translator` per teacher width."""
    return nn.ModuleList(Translator(student, width, hidden) for width in widths)


def translator_widths(translators: nn.ModuleList) -> list[int]:
    """The teacher width each translator maps to."""
    return [translator.channels[1] for translator in translators]


class FeatureFusion(nn.Module):
    """Translators, projections back to the student's width and mixing weights, learned or fixed
    (see the module docstring)."""

    def __init__(self, student: int, config: FusionConfig) -> None:
        super().__init__()
        self.config = config
        self.translators = build_translators(student, config.widths, config.hidden)
        self.projections = nn.ModuleList(
            nn.Conv2d(width, student, kernel_size=1) for width in config.widths
        )
        shares = [config.student_weight]
        shares += [(1 - config.student_weight) / len(config.widths)] * len(config.widths)
        # softmax(log w) = w: the mix starts exactly at the configured shares.
        logits = torch.tensor([math.log(s) for s in shares])
        self.mix_logits: Tensor
        if config.mixing == "learned":
            self.mix_logits = nn.Parameter(logits)
        else:  # a buffer: saved, exported and copied by an EMA, never trained
            self.register_buffer("mix_logits", logits)

    @property
    def weights(self) -> Tensor:
        """The current mixing weights: the student's first, then one per teacher."""
        return torch.softmax(self.mix_logits, dim=0)

    def forward(self, source: Tensor, decoder_input: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The fused deepest decoder input, and each teacher's translation of ``source`` (the
        student's deepest encoder features, on their own grid) for the distillation loss."""
        translated = [translator(source) for translator in self.translators]
        weights = self.weights
        fused = weights[0] * decoder_input
        for k, (projection, features) in enumerate(zip(self.projections, translated, strict=True)):
            fused = fused + weights[k + 1] * projection(features)
        return fused, translated

    def extra_repr(self) -> str:
        return (
            f"widths={self.config.widths}, student_weight={self.config.student_weight}, "
            f"mixing={self.config.mixing}"
        )
