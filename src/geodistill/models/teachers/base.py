"""One interface for every frozen teacher: raw student images in, multi-level features out.

A :class:`Teacher` chains three steps, so that distillation tasks never care where a teacher came
from:

1. a :class:`~geodistill.models.teachers.bands.BandMapping` picks, in the teacher's order, the
   student bands the teacher expects (subset, reorder);
2. the teacher's own input normalisation (:class:`InputNormalization`, or the band normaliser
   stored inside a geodistill checkpoint), with nodata (NaN) set to 0 afterwards;
3. a frozen :class:`TeacherNetwork` built by one registered teacher *kind* (``geodistill``,
   ``timm``, ``torchgeo``, ``onnx``) that returns a :class:`TeacherOutput`.

Kinds register a builder with :func:`register_teacher`; :func:`build_teacher` turns a
:class:`TeacherSpec` (a config block) into a teacher for given student bands.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from geodistill.errors import GeodistillError


@dataclass
class TeacherOutput:
    """Feature maps ``(B, C_i, h_i, w_i)``, one per level of :attr:`Teacher.levels`, and logits
    ``(B, K, H', W')`` when the teacher has a segmentation head (else ``None``)."""

    features: list[Tensor]
    logits: Tensor | None = None

    def map(self, function: Callable[[Tensor], Tensor]) -> TeacherOutput:
        """The same output with ``function`` applied to every tensor (device moves, slicing)."""
        logits = None if self.logits is None else function(self.logits)
        return TeacherOutput([function(f) for f in self.features], logits)


@dataclass
class TeacherSpec:
    """A teacher, as written in a config (``model.teacher``) — what to load and how to feed it.

    Args:
        kind: registered teacher kind: ``geodistill`` (a task checkpoint), ``timm``, ``torchgeo``
            or ``onnx``.
        path: the local weights file: checkpoint, state dict (``.pt``/``.pth``/``.safetensors``)
            or ``.onnx`` model.
        arch: the timm model name (``vit_base_patch14_dinov2``...) or torchgeo weights name
            (``ResNet50_Weights.SENTINEL2_ALL_MOCO``); unused by ``geodistill`` and ``onnx``.
            A timm name with a pretrained tag (``vit_small_patch14_dinov2.lvd142m``) and no
            ``path`` names weights, like ``weights``.
        weights: pretrained weights by name, loaded from the library's cache when ``path`` is
            not given: a timm pretrained name (``vit_small_patch14_dinov2.lvd142m``, or the bare
            tag ``lvd142m`` beside ``arch``) or torchgeo weights
            (``ResNet50_Weights.SENTINEL2_ALL_DINO``).
        download: let the named ``weights`` be downloaded (by the library, into its cache) when
            they are not cached; ``geodistill --allow-download`` (``GEODISTILL_ALLOW_DOWNLOAD=1``)
            allows it for every spec. What was loaded, not this permission, is fingerprinted.
        layers: where features are taken: block indices (timm/torchgeo), level names
            (``encoder.<i>``/``decoder`` for geodistill) or tensor names (onnx).
        bands: for each teacher input band, in the teacher's order, the student band that feeds it
            (name, or 0-based index into the student bands). ``None``: by name when the teacher
            records band names, else in order when the counts agree.
        expand_input: for an RGB (or any) teacher on multispectral data, rebuild its first
            convolution or patch embedding for *all* student bands (filters cycled and rescaled)
            instead of selecting bands.
        scale, mean, std: the teacher's own input normalisation, ``(x * scale - mean) / std`` per
            teacher input band; ``None`` takes what the kind knows (a checkpoint's stored
            statistics, timm's pretrained config).
        class_names: names of the teacher's output classes, when it has logits and does not
            record them (onnx).
        options: kind-specific keyword arguments (e.g. timm ``create_model`` arguments).
    """

    kind: str = "geodistill"
    path: str | None = None
    arch: str | None = None
    weights: str | None = None
    download: bool = False
    layers: list[int | str] | None = None
    bands: list[int | str] | None = None
    expand_input: bool = False
    scale: float | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    class_names: list[str] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_value(cls, value: TeacherSpec | dict[str, Any] | str) -> TeacherSpec:
        """A spec from a spec, a config mapping, or a bare path (a geodistill checkpoint)."""
        if isinstance(value, TeacherSpec):
            return value
        if isinstance(value, str | Path):
            return cls(kind="geodistill", path=str(value))
        unknown = sorted(set(value) - set(cls.__dataclass_fields__))
        if unknown:
            raise GeodistillError(
                f"unknown teacher option(s) {', '.join(unknown)}; known: "
                + ", ".join(cls.__dataclass_fields__)
            )
        return cls(**value)


class TeacherNetwork(nn.Module):
    """What a teacher kind builds: normalised teacher-band input in, :class:`TeacherOutput` out.

    Subclasses set ``levels`` (one name per feature map they return), ``in_channels`` (bands the
    network takes), ``band_names`` (their names when known, else ``None``) and ``class_names``
    (when the network has logits).
    """

    levels: list[str]
    in_channels: int
    band_names: list[str] | None = None
    class_names: list[str] | None = None
    normalizes_input: bool = False
    """True when the network normalises its own input (a geodistill checkpoint's band normaliser):
    the teacher then hands it raw values, NaN included."""
    input_size: tuple[int, int] | None = None
    """The one tile size ``(H, W)`` the network takes when it is fixed (an ONNX graph with static
    spatial axes); ``None``: any size."""

    def forward(self, x: Tensor) -> TeacherOutput:  # pragma: no cover - abstract
        raise NotImplementedError


class InputNormalization(nn.Module):
    """``(x * scale - mean) / std`` per band: a teacher's own preprocessing."""

    def __init__(self, scale: float, mean: list[float], std: list[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise GeodistillError(f"teacher mean has {len(mean)} values, std {len(std)}")
        if any(s <= 0 for s in std):
            raise GeodistillError(f"teacher std values must be > 0, got {std}")
        self.scale = float(scale)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x * self.scale - self.mean) / self.std

    @classmethod
    def from_spec(
        cls,
        spec: TeacherSpec,
        bands: int,
        default: tuple[float, list[float], list[float]] | None = None,
        cycle_from: int | None = None,
    ) -> InputNormalization | None:
        """The spec's ``scale``/``mean``/``std`` over the kind's own ``default``, per teacher band.

        One value applies to every band; ``cycle_from`` (the weights file's band count, when its
        first layer was expanded to ``bands``) lets per-file-band values cycle like the filters.
        ``None`` when neither the spec nor the kind normalise (the raw values go in).
        """
        if default is None and spec.scale is None and spec.mean is None and spec.std is None:
            return None
        scale, mean, std = default or (1.0, [0.0], [1.0])

        def fit(values: list[float], what: str) -> list[float]:
            values = [float(v) for v in values]
            if len(values) == bands:
                return values
            if len(values) == 1 or len(values) == cycle_from:
                return [values[i % len(values)] for i in range(bands)]
            raise GeodistillError(
                f"teacher {what} has {len(values)} values, the teacher takes {bands} bands: "
                f"set teacher.{what} (one value per teacher band)",
                spec.path,
            )

        return cls(
            spec.scale if spec.scale is not None else scale,
            fit(spec.mean if spec.mean is not None else mean, "mean"),
            fit(spec.std if spec.std is not None else std, "std"),
        )


class Teacher(nn.Module):
    """A frozen teacher for a given list of student bands (see the module docstring).

    Always in eval mode, never trained. Distillation tasks keep it as a plain attribute, not a
    submodule, so that it is never saved in, or exported with, the student.
    """

    def __init__(
        self,
        network: TeacherNetwork,
        band_indices: list[int],
        normalization: InputNormalization | None,
        spec: TeacherSpec,
    ) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("band_indices", torch.tensor(band_indices, dtype=torch.long))
        self.normalization = normalization
        self.spec = spec
        self._fingerprint: str | None = None
        self.requires_grad_(False)
        self.eval()

    @property
    def levels(self) -> list[str]:
        return list(self.network.levels)

    @property
    def class_names(self) -> list[str] | None:
        return self.network.class_names

    @property
    def path(self) -> Path | None:
        return Path(self.spec.path) if self.spec.path else None

    def train(self, mode: bool = True) -> Teacher:
        """A teacher stays in eval mode: its batch-norm statistics never move."""
        return super().train(False)

    def prepare(self, images: Tensor) -> Tensor:
        """Student images (NaN nodata) → the network's input: bands mapped, normalised."""
        x = images.index_select(1, self.band_indices.to(images.device))
        if self.network.normalizes_input:
            return x
        if self.normalization is not None:
            x = self.normalization(x)
        return torch.nan_to_num(x, nan=0.0)

    @torch.no_grad()
    def forward(self, images: Tensor) -> TeacherOutput:
        return self.network(self.prepare(images.float()))

    def probe(self, size: int = 64) -> Tensor:
        """A zero tile of student bands for one forward pass that reads output shapes:
        ``size``², or the network's fixed tile size when it takes only one."""
        height, width = self.network.input_size or (size, size)
        bands = int(self.band_indices.max()) + 1
        return torch.zeros(1, bands, height, width, device=self.band_indices.device)

    def channels(self, size: int = 64) -> list[int]:
        """Channel count of each feature level, from one small forward pass."""
        return [int(f.shape[1]) for f in self(self.probe(size)).features]

    def fingerprint(self) -> str:
        """A hash of everything that determines the teacher's outputs: the spec, the band
        mapping and the weights — the weights file's bytes, or, for a teacher built in code with
        no file, its current weights. Caches of teacher outputs are keyed by it."""
        if self._fingerprint is not None:
            return self._fingerprint
        digest = hashlib.sha256()
        described = asdict(self.spec) | {"band_indices": self.band_indices.tolist()}
        described.pop("path")
        digest.update(json.dumps(described, sort_keys=True, default=str).encode())
        if self.path is not None and self.path.is_file():
            with self.path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 24), b""):
                    digest.update(block)
            self._fingerprint = digest.hexdigest()[:16]  # a file's bytes: computed once
            return self._fingerprint
        for name, tensor in sorted(self.state_dict().items()):
            flat = tensor.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:16]  # weights in memory may change: never memoised


TeacherBuilder = Callable[[TeacherSpec, list[str]], Teacher]
"""Builds a teacher from its spec for the given student band names."""

TEACHER_KINDS: dict[str, TeacherBuilder] = {}
"""Registered teacher kinds; see :func:`register_teacher`."""


def register_teacher(kind: str) -> Callable[[TeacherBuilder], TeacherBuilder]:
    """Decorator that registers a teacher builder under ``kind``."""

    def decorate(builder: TeacherBuilder) -> TeacherBuilder:
        TEACHER_KINDS[kind] = builder
        return builder

    return decorate


TeacherFileCheck = Callable[[TeacherSpec], None]
"""Refuses a spec's (existing) file with a :class:`GeodistillError`, without building anything."""

TEACHER_FILE_CHECKS: dict[str, TeacherFileCheck] = {}
"""Per kind, the check of a teacher file that runs when a task is constructed; see
:func:`check_teacher_files`."""


def register_teacher_check(kind: str) -> Callable[[TeacherFileCheck], TeacherFileCheck]:
    """Decorator that registers the file check of teacher kind ``kind``."""

    def decorate(check: TeacherFileCheck) -> TeacherFileCheck:
        TEACHER_FILE_CHECKS[kind] = check
        return check

    return decorate


def check_teacher_files(specs: Iterable[TeacherSpec]) -> None:
    """Refuse a bad teacher file before anything reads it as a model (weights-only checks).

    The frozen-teachers holder runs this for every spec, also for teachers it does not build; a
    missing file is left to :func:`build_teacher`: a method that never runs its teacher (every
    distillation weight at 0) does not need it.
    """
    for spec in specs:
        check = TEACHER_FILE_CHECKS.get(spec.kind)
        if check is not None and spec.path is not None and Path(spec.path).exists():
            check(spec)


def build_teacher(spec: TeacherSpec | dict[str, Any] | str, student_bands: list[str]) -> Teacher:
    """Load, map and freeze a teacher of any registered kind for the given student bands."""
    spec = TeacherSpec.from_value(spec)
    if spec.kind not in TEACHER_KINDS:
        raise GeodistillError(
            f"unknown teacher kind {spec.kind!r}; known: {', '.join(sorted(TEACHER_KINDS))}",
            spec.path,
        )
    if spec.path is not None and not Path(spec.path).is_file():
        raise GeodistillError("no such teacher file", spec.path)
    return TEACHER_KINDS[spec.kind](spec, list(student_bands))
