"""Evaluation metrics: region scores, boundary F1s and report writers (see ``segmentation``)."""

from geodistill.metrics.segmentation import (
    PER_CLASS_KEYS,
    SUMMARY_KEYS,
    UNDEFINED,
    BoundaryF1,
    SegmentationMetrics,
    SparseBoundaryF1,
    default_boundary_gap,
    format_metric,
    mean_defined,
    metrics_to_json,
    metrics_to_markdown,
)

__all__ = [
    "PER_CLASS_KEYS",
    "SUMMARY_KEYS",
    "UNDEFINED",
    "BoundaryF1",
    "SegmentationMetrics",
    "SparseBoundaryF1",
    "default_boundary_gap",
    "format_metric",
    "mean_defined",
    "metrics_to_json",
    "metrics_to_markdown",
]
