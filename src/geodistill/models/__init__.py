"""Networks: multispectral students built from segmentation-models-pytorch."""

from geodistill.models.normalizer import BandNormalizer
from geodistill.models.student import (
    SegmentationModel,
    SegmentationOutput,
    create_student,
    load_local_weights,
)

__all__ = [
    "BandNormalizer",
    "SegmentationModel",
    "SegmentationOutput",
    "create_student",
    "load_local_weights",
]
