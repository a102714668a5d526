"""Putting a method's labelled and unlabelled batches through one student pass."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from geodistill.errors import GeodistillError
from geodistill.models.student import SegmentationOutput


def stack_padded(first: Tensor, second: Tensor, fill: float = float("nan")) -> Tensor:
    """Concatenate two batches along the batch axis, padding bottom/right to a common size."""
    height = max(first.shape[-2], second.shape[-2])
    width = max(first.shape[-1], second.shape[-1])
    parts = []
    for part in (first, second):
        pad = (0, width - part.shape[-1], 0, height - part.shape[-2])
        parts.append(F.pad(part, pad, value=fill) if any(pad) else part)
    return torch.cat(parts)


def rows(output: SegmentationOutput, selected: slice) -> SegmentationOutput:
    """The samples ``selected`` of a student output."""
    return SegmentationOutput(
        [f[selected] for f in output.features],
        output.decoder[selected],
        output.logits[selected],
        [t[selected] for t in output.translated],
    )


def common_size(
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


def split_forward(model: Any, parts: list[Tensor]) -> list[SegmentationOutput]:
    """One student pass over several same-size batches, split back per batch."""
    output = model.forward_features(torch.cat(parts))
    sizes = [len(part) for part in parts]
    starts = [sum(sizes[:k]) for k in range(len(sizes))]
    return [
        rows(output, slice(start, start + size)) for start, size in zip(starts, sizes, strict=True)
    ]
