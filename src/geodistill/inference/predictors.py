"""Deployed models behind one interface: a checkpoint or an ONNX file that predicts tiles.

Inference needs to know more than weights: which bands, in which order, the class names and the
tile size the model was trained on. A :class:`~geodistill.models.checkpoint.ModelCard` carries
that, whatever the backend, so ``geodistill infer`` treats a Lightning checkpoint and an exported
ONNX file the same way. Band normalisation lives inside both (the model's
:class:`~geodistill.models.BandNormalizer`), so a predictor takes raw pixel values with NaN for
nodata.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from geodistill.errors import GeodistillError
from geodistill.models.checkpoint import (
    ONNX_METADATA_KEY,
    ModelCard,
    card_from_checkpoint,
    deployed_checkpoint,
    freeze,
    network_from_checkpoint,
    read_checkpoint,
)


class Predictor(Protocol):
    """Raw pixels ``(B, C, h, w)`` float32, NaN = nodata -> probabilities ``(B, K, h, w)``."""

    card: ModelCard

    def place(self, device: torch.device) -> None:
        """Run on ``device`` from now on (called by the prediction loop once per process)."""

    def predict(self, batch: np.ndarray) -> np.ndarray: ...


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    """Numerically stable softmax in float32."""
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted, dtype=np.float32)
    return exp / exp.sum(axis=axis, keepdims=True)


class TorchPredictor(nn.Module):
    """A PyTorch network with its card; a module, so Lightning moves it to the right device."""

    def __init__(self, model: nn.Module, card: ModelCard) -> None:
        super().__init__()
        self.model = model.eval()
        self.card = card

    def place(self, device: torch.device) -> None:
        self.to(device)

    @torch.inference_mode()
    def predict(self, batch: np.ndarray) -> np.ndarray:
        device = next(self.model.parameters()).device
        logits = self.model(torch.from_numpy(batch).to(device))
        return logits.float().softmax(1).cpu().numpy()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def card_from_task(task: Any) -> ModelCard:
    """The card of an in-memory :class:`~geodistill.tasks.SegmentationTask` (e.g. just trained)."""
    normalizer = task.model.normalizer.state_dict()
    return card_from_checkpoint(
        {
            "hyper_parameters": dict(task.hparams),
            "geodistill": {
                "band_names": task.band_names,
                "class_names": task.class_names,
                "tile_size": task.tile_size,
            },
            "state_dict": {f"model.normalizer.{k}": v for k, v in normalizer.items()},
        }
    )


def load_checkpoint_predictor(path: str | Path) -> TorchPredictor:
    """The network any geodistill task checkpoint deploys (its student, or the network its
    ``geodistill.deployed`` record names), teacher-free, on the CPU."""
    checkpoint = deployed_checkpoint(read_checkpoint(path), path)
    network = freeze(network_from_checkpoint(checkpoint, path))
    return TorchPredictor(network, card_from_checkpoint(checkpoint))


class OnnxPredictor:
    """An exported student run by ONNX Runtime; its card comes from the file's metadata."""

    def __init__(self, path: str | Path, providers: list[str] | None = None) -> None:
        self.path = Path(path)
        self._providers = providers
        self.session = self._session(providers or ["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        if ONNX_METADATA_KEY not in meta:
            raise GeodistillError(
                "this ONNX file has no geodistill metadata (band and class names, normalisation);"
                " export it with 'geodistill export CKPT -o model.onnx'",
                self.path,
            )
        self.card = ModelCard.from_json(meta[ONNX_METADATA_KEY], self.path)
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise GeodistillError("the ONNX model must take one (B, C, H, W) input", self.path)
        channels = inputs[0].shape[1]
        if isinstance(channels, int) and channels != self.card.num_bands:
            raise GeodistillError(
                f"the ONNX input takes {channels} bands, its metadata names {self.card.num_bands}",
                self.path,
            )
        self.input_name = inputs[0].name

    def _session(self, providers: list[str]) -> Any:
        import onnxruntime as ort

        if not self.path.is_file():
            raise GeodistillError("no such ONNX file", self.path)
        try:
            return ort.InferenceSession(str(self.path), providers=providers)
        except Exception as err:  # noqa: BLE001 - ORT raises its own types for a bad file
            raise GeodistillError(f"cannot load the ONNX model ({err})", self.path) from err

    def place(self, device: torch.device) -> None:
        import onnxruntime as ort

        if self._providers is not None or device.type != "cuda":
            return
        if "CUDAExecutionProvider" in ort.get_available_providers():
            cuda = ("CUDAExecutionProvider", {"device_id": device.index or 0})
            self.session = self._session([cuda, "CPUExecutionProvider"])  # type: ignore[list-item]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        logits = self.session.run(None, {self.input_name: np.ascontiguousarray(batch)})[0]
        return softmax(logits.astype(np.float32, copy=False))


PREDICTOR_LOADERS: dict[str, Callable[[str | Path], Predictor]] = {
    ".ckpt": load_checkpoint_predictor,
    ".onnx": OnnxPredictor,
}
"""Model file suffix -> loader. A plain ``.ckpt`` is any geodistill (Lightning) checkpoint."""


def load_predictor(path: str | Path) -> Predictor:
    """Load a deployed model from a checkpoint or an exported ONNX file."""
    path = Path(path)
    loader = PREDICTOR_LOADERS.get(path.suffix.lower())
    if loader is None:
        known = ", ".join(PREDICTOR_LOADERS)
        raise GeodistillError(f"unknown model file type {path.suffix!r} (known: {known})", path)
    if path.is_dir():
        raise GeodistillError("is a folder, not a model file (.ckpt or .onnx)", path)
    if not path.is_file():
        raise GeodistillError("no such model file", path)
    return loader(path)
