"""Inference: sliding-window scene prediction and georeferenced GeoTIFF writing."""

from geodistill.inference.scene import predict_scene
from geodistill.inference.writer import GeoTiffPredictionWriter, write_class_map

__all__ = ["GeoTiffPredictionWriter", "predict_scene", "write_class_map"]
