"""Supervised segmentation losses from a registry: cross-entropy, Dice, focal, and weighted sums."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import segmentation_models_pytorch as smp
import torch
from torch import Tensor, nn

from geodistill.errors import GeodistillError

LossFactory = Callable[[int, Tensor | None], nn.Module]


def _cross_entropy(ignore_index: int, class_weights: Tensor | None) -> nn.Module:
    return nn.CrossEntropyLoss(weight=class_weights, ignore_index=ignore_index)


def _dice(ignore_index: int, class_weights: Tensor | None) -> nn.Module:
    return smp.losses.DiceLoss(mode="multiclass", ignore_index=ignore_index)


def _focal(ignore_index: int, class_weights: Tensor | None) -> nn.Module:
    return smp.losses.FocalLoss(mode="multiclass", ignore_index=ignore_index)


LOSSES: dict[str, LossFactory] = {"ce": _cross_entropy, "dice": _dice, "focal": _focal}
"""Registered supervised losses; each factory takes ``(ignore_index, class_weights)``."""


class CombinedLoss(nn.Module):
    """Weighted sum of registered losses; :attr:`last_terms` keeps each term for logging."""

    def __init__(
        self, terms: Mapping[str, nn.Module], weights: Mapping[str, float], ignore_index: int
    ) -> None:
        super().__init__()
        self.terms = nn.ModuleDict(terms)
        self.weights = dict(weights)
        self.ignore_index = ignore_index
        self.last_terms: dict[str, Tensor] = {}

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if not (target != self.ignore_index).any():
            # Every pixel ignored: a zero that keeps the graph, instead of cross-entropy's NaN.
            self.last_terms = {}
            return logits.sum() * 0.0
        self.last_terms = {name: term(logits, target) for name, term in self.terms.items()}
        return sum(self.weights[name] * value for name, value in self.last_terms.items())


def build_segmentation_loss(
    losses: str | Sequence[str] | Mapping[str, float] = "ce",
    ignore_index: int = 255,
    class_weights: Sequence[float] | None = None,
    num_classes: int | None = None,
) -> CombinedLoss:
    """Build e.g. ``"ce"``, ``["ce", "dice"]`` (weights 1) or ``{"ce": 1.0, "dice": 0.5}``."""
    if isinstance(losses, str):
        losses = [losses]
    weights = dict(losses) if isinstance(losses, Mapping) else {name: 1.0 for name in losses}
    if not weights:
        raise GeodistillError("at least one loss is needed")
    unknown = sorted(set(weights) - set(LOSSES))
    if unknown:
        raise GeodistillError(f"unknown loss {unknown}; choose from {sorted(LOSSES)}")
    weight_tensor = None
    if class_weights is not None:
        if num_classes is not None and len(class_weights) != num_classes:
            raise GeodistillError(
                f"class_weights has {len(class_weights)} values for {num_classes} classes"
            )
        weight_tensor = torch.tensor(class_weights, dtype=torch.float32)
    terms = {name: LOSSES[name](ignore_index, weight_tensor) for name in weights}
    return CombinedLoss(terms, weights, ignore_index)
