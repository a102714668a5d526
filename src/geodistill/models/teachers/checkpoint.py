"""Networks of geodistill task checkpoints, rebuilt offline: the ``geodistill`` teacher kind.

A checkpoint holds the ``model.*`` weights, the task's architecture hyper-parameters and the band
and class names it was trained on. :func:`load_trained_network` rebuilds and freezes that network
(the coarse-to-fine task initialises its student from it); the registered ``geodistill`` teacher
kind wraps it for any distillation task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from geodistill.errors import GeodistillError
from geodistill.models.student import SegmentationModel, create_student, select_levels
from geodistill.models.teachers.bands import map_bands
from geodistill.models.teachers.base import (
    Teacher,
    TeacherNetwork,
    TeacherOutput,
    TeacherSpec,
    register_teacher,
)

ARCHITECTURE_KEYS = ("arch", "encoder", "in_channels", "num_classes", "arch_kwargs", "modulation")
"""Task hyper-parameters that rebuild a checkpoint's network (the first four are required; feature
modulation is read from ``arch_kwargs.modulation``, where tasks record it so that exported
students keep it, or from a top-level ``modulation``)."""


@dataclass
class TrainedNetwork:
    """A frozen network with the band and class names its checkpoint recorded."""

    model: SegmentationModel
    band_names: list[str]
    class_names: list[str]
    architecture: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode and no gradients: a teacher's batch-norm statistics and weights never move."""
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint on the CPU, with one clear error for any unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise GeodistillError("no such checkpoint file", path)
    try:
        # Lightning checkpoints pickle their hyper-parameters; the file is the user's own.
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - torch raises many types for a corrupt file
        raise GeodistillError(
            f"cannot read the checkpoint ({error.__class__.__name__})", path
        ) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise GeodistillError("not a geodistill/Lightning checkpoint (no state_dict)", path)
    return checkpoint


def recorded_names(checkpoint: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Band and class names a task checkpoint recorded, or ``band_<i>``/``class_<i>`` defaults."""
    hparams = checkpoint.get("hyper_parameters", {})
    meta = checkpoint.get("geodistill", {})
    bands = int(hparams.get("in_channels", 0))
    classes = int(hparams.get("num_classes", 0))
    band_names = meta.get("band_names") or [f"band_{i + 1}" for i in range(bands)]
    class_names = (
        meta.get("class_names")
        or hparams.get("class_names")
        or [f"class_{i}" for i in range(classes)]
    )
    return list(band_names), list(class_names)


def network_from_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> SegmentationModel:
    """Rebuild the ``model.*`` network of a task checkpoint from its recorded architecture."""
    hparams = dict(checkpoint.get("hyper_parameters", {}))
    missing = [k for k in ARCHITECTURE_KEYS[:4] if k not in hparams]
    if missing:
        raise GeodistillError(
            f"the checkpoint does not record its architecture ({', '.join(missing)} missing)", path
        )
    arch_kwargs = dict(hparams.get("arch_kwargs") or {})
    if arch_kwargs.get("modulation") is None:
        arch_kwargs["modulation"] = hparams.get("modulation")
    model = create_student(
        hparams["arch"],
        hparams["encoder"],
        hparams["in_channels"],
        hparams["num_classes"],
        None,
        **arch_kwargs,
    )
    state = {
        key.removeprefix("model."): value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith("model.")
    }
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise GeodistillError(
            f"the weights do not fit the recorded architecture: {first}", path
        ) from error
    return model


def load_trained_network(path: str | Path) -> TrainedNetwork:
    """Rebuild and freeze the network stored in a geodistill task checkpoint."""
    path = Path(path)
    checkpoint = read_checkpoint(path)
    model = network_from_checkpoint(checkpoint, path)
    hparams = dict(checkpoint.get("hyper_parameters", {}))
    band_names, class_names = recorded_names(checkpoint)
    return TrainedNetwork(
        model=freeze(model),  # type: ignore[arg-type]
        band_names=band_names,
        class_names=class_names,
        architecture={k: hparams.get(k) for k in ARCHITECTURE_KEYS},
        path=path,
    )


class CheckpointTeacherNetwork(TeacherNetwork):
    """A geodistill task's network as a teacher: features at named levels, and its logits.

    Levels are ``encoder.<i>`` (negative from the deepest) and ``decoder``; the default is the
    four deepest encoder stages. The checkpoint's own band normaliser prepares the input.
    """

    normalizes_input = True

    def __init__(self, trained: TrainedNetwork, levels: list[str] | None = None) -> None:
        super().__init__()
        self.model = trained.model
        self.levels = list(levels or DEFAULT_LEVELS)
        self.in_channels = self.model.normalizer.num_bands
        self.band_names = trained.band_names
        self.class_names = trained.class_names
        probe = torch.zeros(1, self.in_channels, 64, 64)
        select_levels(self.model.forward_features(probe), self.levels)  # refuses unknown levels

    def forward(self, x: Tensor) -> TeacherOutput:
        output = self.model.forward_features(x)
        return TeacherOutput(select_levels(output, self.levels), output.logits)


DEFAULT_LEVELS = ["encoder.-4", "encoder.-3", "encoder.-2", "encoder.-1"]
"""Feature levels of a checkpoint teacher when the spec names none: the four deepest stages."""


@register_teacher("geodistill")
def build_checkpoint_teacher(spec: TeacherSpec, student_bands: list[str]) -> Teacher:
    """A teacher from any geodistill task checkpoint (``spec.path``)."""
    if spec.path is None:
        raise GeodistillError("a geodistill teacher needs teacher.path (a task checkpoint)")
    if spec.mean is not None or spec.std is not None or spec.scale is not None:
        raise GeodistillError(
            "a geodistill checkpoint stores its own normalisation: drop teacher.mean/std/scale",
            spec.path,
        )
    if spec.expand_input:
        raise GeodistillError(
            "teacher.expand_input applies to timm/torchgeo teachers, not to a geodistill "
            "checkpoint trained on its own bands",
            spec.path,
        )
    trained = load_trained_network(spec.path)
    with torch.no_grad():
        network = CheckpointTeacherNetwork(trained, [str(level) for level in spec.layers or []])
    indices = map_bands(
        student_bands, network.in_channels, trained.band_names, spec.bands, spec.path
    )
    return Teacher(network, indices, None, spec)
