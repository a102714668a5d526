"""What a geodistill task checkpoint holds, rebuilt offline: its network and its model card.

A checkpoint holds the ``model.*`` weights, the task's architecture hyper-parameters and the band
and class names it was trained on. :func:`read_checkpoint` is the project's single checkpoint
reader (weights-only, through :mod:`geodistill.models.safe_load`); :func:`load_trained_network`
rebuilds and freezes the network (the coarse-to-fine task initialises its student from it, the
``geodistill`` teacher kind wraps it, export and inference deploy it).

That network is the one the checkpoint deploys: a method may record another network than the
training student (the semi-supervised method's EMA copy) under ``geodistill.deployed``, and
:func:`deployed_checkpoint` puts its weights where the student's ``model.*`` were, for every
reader alike (:func:`network_from_checkpoint`, export, ``geodistill predict``/``infer``, the
``geodistill`` teacher kind).

Deployment needs more than weights: which bands, in which order, the class names and the tile
size the model was trained on. A :class:`ModelCard` carries that, whatever the backend, so a
Lightning checkpoint and an exported ONNX file are used the same way. Band normalisation lives
inside both (the model's :class:`~geodistill.models.BandNormalizer`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from geodistill.errors import GeodistillError
from geodistill.models.safe_load import CHECKPOINT_GLOBALS, load_weights_only
from geodistill.models.student import SegmentationModel, create_student

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


DEFAULT_TILE_SIZE = 256
"""Tile size for models that do not record the chip size they were trained on."""

ONNX_METADATA_KEY = "geodistill"
"""ONNX ``metadata_props`` key holding the JSON :class:`ModelCard` of an exported student."""


@dataclass
class ModelCard:
    """What a deployed model expects and produces, stored with it (checkpoint or ONNX)."""

    band_names: list[str]
    class_names: list[str]
    tile_size: int = DEFAULT_TILE_SIZE
    normalization: dict[str, list[float]] = field(default_factory=dict)
    architecture: dict[str, Any] = field(default_factory=dict)
    quantization: str | None = None
    """``"int8"`` for a statically quantized ONNX student (``export --quantize``), else None."""

    @property
    def num_bands(self) -> int:
        return len(self.band_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str, path: str | Path) -> ModelCard:
        try:
            values = json.loads(text)
            return cls(**values)
        except (TypeError, ValueError) as err:
            raise GeodistillError(f"unreadable geodistill metadata ({err})", path) from err


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a geodistill (Lightning) checkpoint on the CPU, weights-only: it never runs code.

    The single checkpoint reader of the project (export, infer, coarse-to-fine teachers,
    ``geodistill`` teacher specs, :func:`check_checkpoint`). Refusals are one
    :class:`GeodistillError` naming the file (see
    :func:`~geodistill.models.safe_load.load_weights_only`).
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


def deployed_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """``checkpoint`` with the deployed network's weights as ``model.*``.

    A checkpoint whose ``geodistill.deployed`` record names another network than the student
    (``state_prefix``: where its weights are in the state dict, e.g.
    ``distillation.ema.module.``) gets that network's weights under the student's ``model.*``
    keys (the same architecture: the key sets must match), and the record without its prefix,
    so that applying this again changes nothing. A checkpoint without a record, or whose record
    deploys the student (``model.``), keeps its weights; the input is never modified. A record
    that is not readable, or whose prefix does not hold exactly the student's weights, is one
    :class:`GeodistillError` naming ``path``.
    """
    meta = checkpoint.get("geodistill") or {}
    record = meta.get("deployed") if isinstance(meta, dict) else None
    if not record:
        return checkpoint
    prefix = record.get("state_prefix", "model.") if isinstance(record, dict) else None
    if not isinstance(prefix, str) or not prefix:
        raise GeodistillError(
            f"unreadable geodistill.deployed record {record!r} (expected a dict with the "
            "network's name and its state_prefix)",
            path,
        )
    state = checkpoint["state_dict"]
    if prefix != "model.":
        state = _swap_in(state, prefix, record.get("network"), path)
    kept = {k: v for k, v in record.items() if k != "state_prefix"}
    return {**checkpoint, "state_dict": state, "geodistill": {**meta, "deployed": kept}}


def _swap_in(state: dict[str, Any], prefix: str, network: Any, path: str | Path) -> dict[str, Any]:
    """``state`` with the ``model.*`` entries replaced by the same keys under ``prefix``."""
    student = [key for key in state if key.startswith("model.")]
    chosen = {key.removeprefix(prefix) for key in state if key.startswith(prefix)}
    expected = {key.removeprefix("model.") for key in student}
    if chosen != expected:
        found = "no weights" if not chosen else "other weights than the student's"
        odd = sorted(chosen ^ expected)[:3]
        raise GeodistillError(
            f"the checkpoint deploys the network {network!r}, whose weights "
            f"({prefix}*) it records, but the state dict holds {found} there "
            f"({len(chosen)} keys; the student's model.* has {len(expected)}; "
            f"differing: {', '.join(odd)})",
            path,
        )
    deployed = {key: state[prefix + key.removeprefix("model.")] for key in student}
    return {**deployed, **{k: v for k, v in state.items() if not k.startswith("model.")}}


def network_from_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> SegmentationModel:
    """Rebuild the network a task checkpoint deploys from its recorded architecture: the
    ``model.*`` student, or the network its ``geodistill.deployed`` record names
    (:func:`deployed_checkpoint`)."""
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
        for key, value in deployed_checkpoint(checkpoint, path)["state_dict"].items()
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


def card_from_checkpoint(checkpoint: dict[str, Any], tile_size: int | None = None) -> ModelCard:
    """The card of a geodistill task checkpoint (band/class names, normalisation, tile size)."""
    hparams = checkpoint.get("hyper_parameters", {})
    meta = checkpoint.get("geodistill", {})
    band_names, class_names = recorded_names(checkpoint)
    state = checkpoint["state_dict"]
    normalization = {
        name: state[f"model.normalizer.{name}"].tolist()
        for name in ("low", "high", "mean", "std")
        if f"model.normalizer.{name}" in state
    }
    return ModelCard(
        band_names=band_names,
        class_names=class_names,
        tile_size=int(tile_size or meta.get("tile_size") or DEFAULT_TILE_SIZE),
        normalization=normalization,
        architecture={k: hparams.get(k) for k in ("arch", "encoder", "in_channels", "num_classes")},
    )
