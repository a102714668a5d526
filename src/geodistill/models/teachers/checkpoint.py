"""The ``geodistill`` teacher kind: any geodistill task checkpoint as a frozen teacher.

The checkpoint is read and its network rebuilt and frozen by
:func:`~geodistill.models.checkpoint.load_trained_network`; this kind exposes that network's
features at named levels and its logits to any distillation task.
"""

from __future__ import annotations

import torch
from torch import Tensor

from geodistill.errors import GeodistillError
from geodistill.models.checkpoint import TrainedNetwork, check_checkpoint, load_trained_network
from geodistill.models.student import select_levels
from geodistill.models.teachers.bands import map_bands
from geodistill.models.teachers.base import (
    Teacher,
    TeacherNetwork,
    TeacherOutput,
    TeacherSpec,
    register_teacher,
    register_teacher_check,
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
        self.architecture = dict(trained.architecture)
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


@register_teacher_check("geodistill")
def check_checkpoint_teacher(spec: TeacherSpec) -> None:
    """A geodistill teacher's checkpoint is read (weights-only) when its task is constructed."""
    if spec.path is not None:
        check_checkpoint(spec.path)
