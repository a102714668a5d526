"""torchgeo's pretrained Earth-observation backbones as teachers: the ``torchgeo`` kind.

``teacher.arch`` names torchgeo weights (``ResNet18_Weights.SENTINEL2_ALL_MOCO``,
``ViTSmall16_Weights.SENTINEL2_ALL_DINO``...). Their metadata gives the timm architecture, the
input band count and the band names (mapped by name onto the student's bands); their transforms
give the input normalisation. The weights themselves come from ``teacher.path``, a file the user
downloaded once (the error message gives the address): torchgeo's own loader would download it.

torchgeo is an optional extra (``pip install 'geodistill[torchgeo]'``), imported only here.
"""

from __future__ import annotations

import difflib
import warnings
from typing import Any

import numpy as np
import timm

from geodistill.errors import GeodistillError, GeodistillWarning
from geodistill.models.teachers.base import Teacher, TeacherSpec, register_teacher
from geodistill.models.teachers.from_timm import build_timm_teacher

GEOMETRIC_TRANSFORMS = {"Resize", "CenterCrop", "Identity"}
"""Transforms in torchgeo weights' pipelines that do not change values: the teacher runs on the
student's own crops instead."""


def _torchgeo_models(path: str | None) -> Any:
    try:
        import torchgeo.models as models
    except ImportError as error:
        raise GeodistillError(
            f"the torchgeo teacher kind needs torchgeo ({error}): "
            "pip install 'geodistill[torchgeo]'",
            path,
        ) from error
    return models


def _weights_of(models: Any, model: str) -> list[Any]:
    try:
        return list(models.get_model_weights(model))
    except KeyError:  # torchgeo lists some models that have no weights
        return []


def torchgeo_weights(name: str, path: str | None = None) -> Any:
    """The torchgeo ``WeightsEnum`` member called ``name`` (metadata only; nothing is fetched)."""
    models = _torchgeo_models(path)
    try:
        return models.get_weight(name)
    except (ValueError, KeyError):
        known = [str(w) for model in models.list_models() for w in _weights_of(models, model)]
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        hint = f" (close: {', '.join(close)})" if close else ""
        raise GeodistillError(f"unknown torchgeo weights {name!r}{hint}", path) from None


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
    """A teacher from torchgeo weights (``spec.arch``) stored in the local file ``spec.path``.

    Normalisation: the spec's values, else the weights' own ``Normalize`` transforms (often
    ``mean=0, std=10000`` for Sentinel-2 reflectance), else none (``scale`` 1, with a warning).
    """
    if not spec.arch:
        raise GeodistillError(
            "a torchgeo teacher needs teacher.arch, the weights' name "
            "(e.g. ResNet18_Weights.SENTINEL2_ALL_MOCO)",
            spec.path,
        )
    weights = torchgeo_weights(spec.arch, spec.path)
    meta = dict(weights.meta)
    if spec.path is None:
        raise GeodistillError(
            f"a torchgeo teacher needs teacher.path, the weights file of {spec.arch} "
            f"(download it once from {weights.url})"
        )
    arch = str(meta.get("model", ""))
    if not timm.is_model(arch):
        raise GeodistillError(
            f"{spec.arch} is a {arch or 'non-timm'} model, not a timm one: only timm-based "
            "torchgeo weights (ResNet, ViT...) can be teachers",
            spec.path,
        )
    bands = meta.get("bands")
    file_chans = int(meta.get("in_chans") or (len(bands) if bands else 3))
    if bands is not None and len(bands) != file_chans:
        bands = None
    default = transforms_normalization(weights.transforms)
    if default is None and spec.mean is None and spec.std is None:
        warnings.warn(
            f"cannot read the input normalisation of {spec.arch}: raw values go in; "
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
        label=f"{arch} ({spec.arch})",
    )
