"""Calibrating a teacher's logits to a few exact labels: a temperature and a per-class bias.

A teacher trained on coarse labels is biased the way its labels were: generous outlines make it
predict the outlined class too far out, weak index-threshold labels shift its water boundary. The
few exact labels of the fine domain show by how much. :func:`fit_logit_calibration` fits

    calibrated(z) = z / T + b          (T > 0, b ∈ R^K with b_0 = 0)

by minimising the cross-entropy of the calibrated logits on labelled pixels (vector-free
temperature scaling plus a class-prior shift, Platt-style). The bias moves the teacher's decision
boundary to where the exact labels put it; the temperature makes its confidence match how often
it is right. Both leave the ranking of pixels by class score unchanged, so they correct the
teacher's convention, not what it has learned.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class LogitCalibration:
    """``z / temperature + bias``; the identity is ``LogitCalibration(1.0, zeros)``."""

    temperature: float
    bias: Tensor

    def __call__(self, logits: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (logits.dim() - 2)
        bias = self.bias.to(device=logits.device, dtype=logits.dtype).view(shape)
        return logits / self.temperature + bias

    @classmethod
    def identity(cls, num_classes: int) -> LogitCalibration:
        return cls(1.0, torch.zeros(num_classes))


def fit_logit_calibration(
    logits: Tensor, labels: Tensor, max_iter: int = 100, max_temperature: float = 20.0
) -> LogitCalibration:
    """Temperature and per-class bias minimising the cross-entropy of ``logits`` (``(N, K)``)
    against ``labels`` (``(N,)``, class indices; every entry counts).

    The first class's bias is fixed at 0 (only differences matter). The temperature is kept in
    ``[1 / max_temperature, max_temperature]``. Classes absent from ``labels`` would be pushed to
    minus infinity; their bias is left at 0 instead.
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"logits (N, K) and labels (N,) expected, got {logits.shape}, {labels.shape}"
        )
    num_classes = logits.shape[1]
    if len(labels) == 0:
        return LogitCalibration.identity(num_classes)
    logits = logits.detach().double()
    labels = labels.detach().long()
    present = torch.bincount(labels, minlength=num_classes) > 0
    free = present.clone()
    free[0] = False
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t, bias], max_iter=max_iter, line_search_fn="strong_wolfe")
    bound = float(torch.log(torch.tensor(max_temperature)))

    def closure() -> Tensor:
        optimizer.zero_grad()
        scale = torch.exp(-log_t.clamp(-bound, bound))
        loss = F.cross_entropy(logits * scale + bias * free, labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(torch.exp(log_t.detach().clamp(-bound, bound)))
    return LogitCalibration(temperature, (bias.detach() * free).float())
