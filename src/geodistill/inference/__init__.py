"""Inference: deployed models, whole-scene prediction, GeoTIFF writing and polygons."""

from geodistill.inference.loop import infer_scenes
from geodistill.inference.predictors import (
    OnnxPredictor,
    Predictor,
    TorchPredictor,
    load_predictor,
)
from geodistill.inference.scene import InferenceOptions, SceneOutputs, predict_scene
from geodistill.inference.vectorize import VectorizeResult, vectorize_class_map
from geodistill.inference.writer import GeoTiffPredictionWriter, write_class_map

__all__ = [
    "GeoTiffPredictionWriter",
    "InferenceOptions",
    "OnnxPredictor",
    "Predictor",
    "SceneOutputs",
    "TorchPredictor",
    "VectorizeResult",
    "infer_scenes",
    "load_predictor",
    "predict_scene",
    "vectorize_class_map",
    "write_class_map",
]
