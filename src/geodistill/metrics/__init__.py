"""Evaluation metrics: region scores, boundary F1 and report writers (see ``segmentation``)."""

from geodistill.metrics.segmentation import (
    PER_CLASS_KEYS,
    SUMMARY_KEYS,
    BoundaryF1,
    SegmentationMetrics,
    metrics_to_json,
    metrics_to_markdown,
)

__all__ = [
    "PER_CLASS_KEYS",
    "SUMMARY_KEYS",
    "BoundaryF1",
    "SegmentationMetrics",
    "metrics_to_json",
    "metrics_to_markdown",
]
