"""torchgeo's pretrained Earth-observation backbones as teachers: the ``torchgeo`` kind.

``teacher.arch`` names torchgeo weights (``ResNet18_Weights.SENTINEL2_ALL_MOCO``,
``ViTSmall16_Weights.SENTINEL2_ALL_DINO``...). Their metadata gives the timm architecture, the
input band count and the band names (mapped by name onto the student's bands); their transforms
give the input normalisation. The weights themselves come from ``teacher.path``, or from the
file at the weights' address in torch.hub's cache (``$TORCH_HOME/hub/checkpoints``), where
torchgeo's ``get_state_dict`` keeps them; torch.hub downloads it there only when the user allows
it (``teacher.download: true``, ``--allow-download``). The file is then read weights-only, as any
weights file (``get_state_dict`` itself would unpickle it without that guard).

torchgeo is an optional extra (``pip install 'geodistill[torchgeo]'``), imported only here.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import timm

from geodistill.errors import GeodistillError, GeodistillWarning
from geodistill.models.pretrained import (
    downloads_allowed,
    torchgeo_weights,
    torchgeo_weights_file,
)
from geodistill.models.teachers.base import Teacher, TeacherSpec, register_teacher
from geodistill.models.teachers.from_timm import (
    TEACHER_OPT_IN,
    build_timm_teacher,
    recorded_spec,
)

GEOMETRIC_TRANSFORMS = {"Resize", "CenterCrop", "Identity"}
"""Transforms in torchgeo weights' pipelines that do not change values: the teacher runs on the
student's own crops instead."""


def transforms_normalization(transforms: Any) -> tuple[float, list[float], list[float]] | None:
    """The per-band ``(x - mean) / std`` that a chain of ``Normalize`` transforms amounts to
    (``scale`` 1), or ``None`` when the pipeline holds anything else that changes values."""
    steps = list(transforms) if hasattr(transforms, "__iter__") else [transforms]
    mean, std = np.zeros(1), np.ones(1)
    for step in steps:
        kind = type(step).__name__
        if kind in GEOMETRIC_TRANSFORMS:
            continue
        if kind != "Normalize":
            return None
        flags = getattr(step, "flags", {})
        values = [getattr(step, key, None) for key in ("mean", "std")]
        values = [
            flags.get(key) if v is None else v
            for v, key in zip(values, ("mean", "std"), strict=True)
        ]
        try:
            m, s = (np.asarray(v, dtype=np.float64).reshape(-1) for v in values)
            # (((x - m1) / s1) - m2) / s2 = (x - (m1 + m2 s1)) / (s1 s2)
            mean, std = mean + m * std, std * s
        except (TypeError, ValueError):  # missing or non-broadcastable values
            return None
    if not np.all(std > 0):
        return None
    return 1.0, mean.tolist(), std.tolist()


@register_teacher("torchgeo")
def build_torchgeo_teacher(spec: TeacherSpec, student_bands: list[str]) -> Teacher:
    """A teacher from torchgeo weights (``spec.weights`` or ``spec.arch``) stored in the local
    file ``spec.path``, or else in torch.hub's cache (downloaded there only with
    ``spec.download`` or ``--allow-download``).

    Normalisation: the spec's values, else the weights' own ``Normalize`` transforms (often
    ``mean=0, std=10000`` for Sentinel-2 reflectance), else none (``scale`` 1, with a warning).
    """
    if spec.weights and spec.arch and spec.weights != spec.arch:
        raise GeodistillError(
            f"teacher.arch {spec.arch!r} and teacher.weights {spec.weights!r} name different "
            "torchgeo weights: give one of them",
            spec.path,
        )
    name = spec.weights or spec.arch
    if not name:
        raise GeodistillError(
            "a torchgeo teacher needs teacher.weights, the weights' name "
            "(e.g. ResNet18_Weights.SENTINEL2_ALL_MOCO)",
            spec.path,
        )
    weights = torchgeo_weights(name, spec.path)
    meta = dict(weights.meta)
    arch = str(meta.get("model", ""))
    if not timm.is_model(arch):
        raise GeodistillError(
            f"{name} is a {arch or 'non-timm'} model, not a timm one: only timm-based "
            "torchgeo weights (ResNet, ViT...) can be teachers",
            spec.path,
        )
    cached = None
    if spec.path is None:  # after the checks: nothing is fetched for a teacher refused
        cached = torchgeo_weights_file(
            weights, downloads_allowed(spec.download), opt_in=TEACHER_OPT_IN
        )
    spec = recorded_spec(spec, cached)
    bands = meta.get("bands")
    file_chans = int(meta.get("in_chans") or (len(bands) if bands else 3))
    if bands is not None and len(bands) != file_chans:
        bands = None
    default = transforms_normalization(weights.transforms)
    if default is None and spec.mean is None and spec.std is None:
        warnings.warn(
            f"cannot read the input normalisation of {name}: raw values go in; "
            "set teacher.scale/mean/std",
            GeodistillWarning,
            stacklevel=2,
        )
    return build_timm_teacher(
        spec,
        student_bands,
        arch,
        list(bands) if bands else None,
        file_chans,
        default,
        spec.options,
        label=f"{arch} ({name})",
    )
