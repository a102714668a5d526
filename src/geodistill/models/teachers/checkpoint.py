"""Networks of geodistill task checkpoints, rebuilt offline: the ``geodistill`` teacher kind.

A checkpoint holds the ``model.*`` weights, the task's architecture hyper-parameters and the band
and class names it was trained on. :func:`load_trained_network` rebuilds and freezes that network
(the coarse-to-fine task initialises its student from it); the registered ``geodistill`` teacher
kind wraps it for any distillation task.
"""

from __future__ import annotations

import argparse
import pathlib
import pickle
import re
import warnings
from contextlib import AbstractContextManager, nullcontext
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
    register_teacher_check,
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


CHECKPOINT_GLOBALS: tuple[type, ...] = (pathlib.PosixPath, pathlib.WindowsPath)
"""The only types beyond tensors and plain containers (dict, list, tuple, str, numbers) that a
geodistill checkpoint holds: paths, which a task built in Python with ``teacher=Path(...)``
records in its hyper-parameters. Checkpoints written by the CLI hold none (checked on real
checkpoints of every task and on exported students). Anything else is refused unread."""

WEIGHTS_GLOBALS: tuple[type, ...] = (*CHECKPOINT_GLOBALS, argparse.Namespace)
"""Weights files may also be timm training checkpoints, which record their ``args`` as an
``argparse.Namespace`` (a plain attribute bag; timm allows it too)."""

_GLOBAL_IN_ERROR = re.compile(r"GLOBAL ([\w.]+)")
_CODE_REFUSALS = ("GLOBAL", "reduce", "Can only", "Unsupported class")
"""Words of torch's weights-only refusals that mean the pickle asked for an object outside the
allow-list (as opposed to bytes that are no pickle at all: ``Unsupported operand``)."""


def load_weights_only(
    path: str | Path,
    noun: str = "checkpoint",
    allowed: tuple[type, ...] = CHECKPOINT_GLOBALS,
) -> Any:
    """``torch.load`` that can never run code: tensors, plain containers and ``allowed`` only.

    Every way the file can be wrong becomes one :class:`GeodistillError` naming it: missing, a
    folder, a pickle that references anything else (the payload of a tampered file, which is
    refused before it runs), or bytes torch cannot read (truncated, another format). ``noun``
    names the file in messages ("checkpoint", "weights file").
    """
    path = Path(path)
    _check_is_file(path, noun)
    try:
        with _allowing(allowed), warnings.catch_warnings():
            # A pickle of another protocol (not a torch file) is refused below; no warning.
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise GeodistillError(_refusal(path, error, noun, allowed), path) from error
    except OSError as error:
        raise GeodistillError(f"cannot read the {noun}: {error.strerror or error}", path) from error
    except Exception as error:  # noqa: BLE001 - torch raises many types for a corrupt file
        raise GeodistillError(_unreadable(noun), path) from error


def _check_is_file(path: Path, noun: str) -> None:
    if path.is_dir():
        raise GeodistillError(f"is a folder, not a {noun} file", path)
    if not path.is_file():
        raise GeodistillError(f"no such {noun} file", path)


def _allowing(allowed: tuple[type, ...]) -> AbstractContextManager[Any]:
    """torch's allow-list for the duration of one load (no process-wide registration)."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    return safe_globals(list(allowed)) if safe_globals and allowed else nullcontext()


def allow_checkpoint_globals() -> AbstractContextManager[Any]:
    """The checkpoint allow-list for a weights-only loader we do not call ourselves (Lightning's
    ``ckpt_path``, ``load_from_checkpoint``): ``with allow_checkpoint_globals(): ...``. Lightning
    checkpoints written by the CLI need none of it; a task built in Python may record paths."""
    return _allowing(CHECKPOINT_GLOBALS)


def _unreadable(noun: str) -> str:
    return f"cannot read the {noun}: it is truncated or not a PyTorch file"


def _refusal(
    path: Path, error: pickle.UnpicklingError, noun: str, allowed: tuple[type, ...]
) -> str:
    """The one-line reason for a weights-only refusal: the globals the pickle asks for, when it
    names any, else whether the bytes were a pickle at all."""
    reason = str(error).rsplit("WeightsUnpickler error:", 1)[-1].strip()
    names = _unsafe_globals(path, allowed) or _GLOBAL_IN_ERROR.findall(reason)[:1]
    if names:
        return _code_refusal(names, noun)
    expected = _expected(noun)
    if any(word in reason for word in _CODE_REFUSALS):
        first = reason.splitlines()[0][:120]
        return (
            f"refused: the {noun}'s pickle builds objects {expected} never contains "
            f"({first}); loading it could run code"
        )
    return _unreadable(noun)


def _expected(noun: str) -> str:
    return "a geodistill checkpoint" if noun == "checkpoint" else f"a {noun}"


def _code_refusal(names: list[str], noun: str) -> str:
    listed = ", ".join(f"`{name}`" for name in names[:3])
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return (
        f"refused: the {noun}'s pickle references {listed}{more}, which {_expected(noun)} "
        "never contains; loading it could run code"
    )


def _unsafe_globals(path: Path, allowed: tuple[type, ...]) -> list[str]:
    """Every global the pickle of a zip-format file references beyond ``allowed`` (read by
    scanning the pickle's opcodes, never by unpickling); empty when the scan cannot run."""
    scan = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if scan is None:
        return []
    try:
        names = scan(path)
    except Exception:  # noqa: BLE001 - legacy format or unreadable: fall back to the message
        return []
    known = {f"{kind.__module__}.{kind.__qualname__}" for kind in allowed}
    return [name for name in names if name not in known]


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a geodistill (Lightning) checkpoint on the CPU, weights-only: it never runs code.

    The single checkpoint reader of the project (export, infer, coarse-to-fine teachers,
    ``geodistill`` teacher specs, :func:`check_checkpoint`). Refusals are one
    :class:`GeodistillError` naming the file (see :func:`load_weights_only`).
    """
    path = Path(path)
    checkpoint = load_weights_only(path, "checkpoint", CHECKPOINT_GLOBALS)
    if not isinstance(checkpoint, dict):
        raise GeodistillError(
            f"not a geodistill checkpoint: the file holds a {type(checkpoint).__name__}, "
            "not a checkpoint dict with a state_dict",
            path,
        )
    if "state_dict" not in checkpoint:
        raise GeodistillError("not a geodistill/Lightning checkpoint (no state_dict)", path)
    return checkpoint


def check_checkpoint(path: str | Path) -> None:
    """Refuse (one :class:`GeodistillError`) a checkpoint that is not a readable geodistill one.

    For code that hands the file to a loader it does not control (Lightning's ``ckpt_path``):
    calling this first means a tampered or broken file is refused before that loader sees it.
    """
    read_checkpoint(path)


def check_weights_file(path: str | Path) -> None:
    """Refuse a weights file whose pickle references anything outside the allow-list, reading
    only the pickle, not the tensors (cheap for a large teacher): for checks at task
    construction; the full weights-only read happens when the file is used."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        return  # holds tensors only, by construction
    names = _unsafe_globals(path, WEIGHTS_GLOBALS)
    if names:
        raise GeodistillError(_code_refusal(names, "weights file"), path)


def read_weights_file(path: str | Path) -> Any:
    """The object stored in a local weights file (``.safetensors``, or ``.pt``/``.pth``/``.ckpt``
    read weights-only): never runs code. Callers pick the state dict out of it."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return load_weights_only(path, "weights file", WEIGHTS_GLOBALS)
    _check_is_file(path, "weights file")
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as error:  # noqa: BLE001 - safetensors raises its own types
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise GeodistillError(
            f"cannot read the weights file: not a readable safetensors file ({first})", path
        ) from error


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


@register_teacher_check("geodistill")
def check_checkpoint_teacher(spec: TeacherSpec) -> None:
    """A geodistill teacher's checkpoint is read (weights-only) when its task is constructed."""
    if spec.path is not None:
        check_checkpoint(spec.path)
