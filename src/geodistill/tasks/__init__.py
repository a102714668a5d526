"""Lightning training tasks: supervised segmentation, and the distillation tasks built on it."""

from geodistill.tasks.segmentation import SegmentationTask

__all__ = ["SegmentationTask"]
