"""Keep a distillation term from drowning the supervised loss.

A feature-distillation term can be an order of magnitude larger than the supervised loss (15-20×
was measured for multi-teacher distillation on the demo data): the student then mostly imitates
the teacher and barely learns its labels. :func:`capped_weight` lowers a term's weight, step by
step, so that ``weight * term <= max_ratio * supervised``; below the cap the weight is unchanged.
The ratio is measured on detached values, so the cap rescales the term's gradient without adding
a gradient of its own.
"""

from __future__ import annotations

import torch
from torch import Tensor


def capped_weight(
    weight: float, term: Tensor, supervised: Tensor, max_ratio: float | None
) -> Tensor:
    """``weight``, lowered where needed so that ``weight * term <= max_ratio * supervised``.

    ``max_ratio=None`` disables the cap (the weight is returned as a tensor). A term of zero or
    less keeps its weight.
    """
    value = torch.as_tensor(weight, dtype=term.dtype, device=term.device)
    if max_ratio is None or weight == 0:
        return value
    if max_ratio <= 0:
        raise ValueError(f"max_ratio must be > 0, got {max_ratio}")
    scaled = value * term.detach()
    limit = max_ratio * supervised.detach().to(term.dtype)
    if scaled <= limit or scaled <= 0:
        return value
    return value * limit / scaled
