"""Where a coarse teacher is trusted: the spatial attention map of attentive distillation.

geodistill's definition (MineC2FNet publishes no formula, see ``docs/coarse_to_fine.md``). For
pixel ``p`` with teacher class probabilities ``q(p)`` over ``K`` classes::

    confidence(p) = clamp((max_k q_k(p) - 1/K) / (1 - 1/K), 0, 1) ** confidence_power
    boundary(p)   = min(d(p), boundary_width) / boundary_width
    agreement(p)  = 0 if p has a fine label y(p) and argmax_k q_k(p) != y(p), else 1
    attention(p)  = confidence(p) * boundary(p) * agreement(p)      (0 on nodata)

``d(p)`` is the distance in pixels (chessboard) to the nearest class boundary of a reference map:
the fine label where there is one, the teacher's own prediction elsewhere. So the teacher is
trusted in confident interiors and on pixels no fine label covers, and released near boundaries
(which the fine labels must sharpen and coarse labels get wrong) and wherever it contradicts a
fine label.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def class_boundaries(classes: Tensor) -> Tensor:
    """Pixels of a ``(B, H, W)`` class map with a differently classed 8-neighbour."""
    padded = F.pad(classes[:, None].float(), (1, 1, 1, 1), mode="replicate")
    high = F.max_pool2d(padded, 3, stride=1)
    low = -F.max_pool2d(-padded, 3, stride=1)
    return (high != low)[:, 0]


def boundary_distance(classes: Tensor, max_distance: int) -> Tensor:
    """Chessboard distance of each pixel to the nearest class boundary, capped at ``max_distance``.

    Computed by repeated 3×3 dilation of the boundary map: cheap for the few pixels of ramp that
    the attention needs, and identical on CPU and GPU.
    """
    reached = class_boundaries(classes)
    distance = torch.full(classes.shape, float(max_distance), device=classes.device)
    distance[reached] = 0.0
    front = reached[:, None].float()
    for step in range(1, max_distance):
        front = F.max_pool2d(front, 3, stride=1, padding=1)
        newly = (front[:, 0] > 0) & ~reached
        distance[newly] = float(step)
        reached |= newly
    return distance


def distillation_attention(
    teacher_logits: Tensor,
    mask: Tensor,
    valid: Tensor,
    ignore_index: int = 255,
    boundary_width: int = 4,
    confidence_power: float = 1.0,
) -> Tensor:
    """Per-pixel trust in the teacher, in ``[0, 1]``, shape ``(B, H, W)`` (see module docstring).

    ``mask`` holds the fine labels (``ignore_index`` where there are none, e.g. on unlabelled
    images); ``valid`` is False on nodata and padding.
    """
    with torch.no_grad():
        probs = teacher_logits.float().softmax(1)
        top, predicted = probs.max(1)
        num_classes = probs.shape[1]
        confidence = ((top - 1 / num_classes) / (1 - 1 / num_classes)).clamp(0, 1)
        confidence = confidence**confidence_power
        labelled = mask != ignore_index
        reference = torch.where(labelled, mask, predicted)
        if boundary_width > 0:
            boundary = boundary_distance(reference, boundary_width) / boundary_width
        else:
            boundary = torch.ones_like(confidence)
        agreement = (~labelled | (predicted == mask)).float()
        return confidence * boundary * agreement * valid.float()
