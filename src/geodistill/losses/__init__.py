"""Losses: supervised segmentation terms (distillation terms live beside them)."""

from geodistill.losses.segmentation import LOSSES, CombinedLoss, build_segmentation_loss

__all__ = ["LOSSES", "CombinedLoss", "build_segmentation_loss"]
