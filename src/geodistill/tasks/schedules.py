"""Learning-rate schedules: linear warm-up followed by poly or cosine decay, stepped per batch."""

from __future__ import annotations

import math
from typing import Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

Schedule = Literal["poly", "cosine", "constant"]


def warmup_decay(
    optimizer: Optimizer,
    total_steps: int,
    warmup_steps: int = 0,
    schedule: Schedule = "poly",
    power: float = 0.9,
    min_factor: float = 0.0,
) -> LambdaLR:
    """Scale the base lr by a factor rising linearly to 1, then decaying to ``min_factor``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        if schedule == "poly":
            decay = (1 - progress) ** power
        elif schedule == "cosine":
            decay = 0.5 * (1 + math.cos(math.pi * progress))
        else:
            decay = 1.0
        return min_factor + (1 - min_factor) * decay

    return LambdaLR(optimizer, factor)
