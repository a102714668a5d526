"""The Lightning training task: segmentation, supervised or with a distillation method
(:mod:`geodistill.methods`) as a component."""

from geodistill.tasks.segmentation import SegmentationTask

__all__ = ["SegmentationTask"]
