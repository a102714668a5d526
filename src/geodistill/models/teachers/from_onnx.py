"""ONNX models as frozen teachers, run by ONNX Runtime: the ``onnx`` teacher kind.

Any segmentation or backbone ONNX file whose one input is a ``(B, C, H, W)`` float image can
teach: its 4-D outputs give logits and features, and any intermediate tensor named in
``teacher.layers`` is exposed as a feature map by appending it to the graph's outputs (the file
itself is not changed). A geodistill export (``geodistill export CKPT -o model.onnx``) carries its
band and class names and its band normaliser, so it takes raw values and maps by band name;
third-party files take the spec's ``scale``/``mean``/``std``.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor

from geodistill.errors import GeodistillError
from geodistill.models.checkpoint import ONNX_METADATA_KEY, ModelCard
from geodistill.models.teachers.bands import map_bands
from geodistill.models.teachers.base import (
    InputNormalization,
    Teacher,
    TeacherNetwork,
    TeacherOutput,
    TeacherSpec,
    register_teacher,
)

INPUT_TYPES: dict[str, type[np.floating]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
}
"""ONNX Runtime input types a teacher accepts, with the numpy type it is fed."""

OPTIONS = ("logits",)
"""``teacher.options`` of the onnx kind. ``logits``: the tensor holding the class scores (a
graph output or an intermediate tensor name; ``null`` for none). Default: the first output, when
it is 4-D."""

PROBE_SIZE = 64
"""Tile side of the one forward pass that reads an output's channel count when the graph leaves
it dynamic."""

Dim = int | str | None
"""One dimension as ONNX Runtime reports it: fixed, symbolic or unknown."""


def read_onnx(path: str | Path) -> onnx.ModelProto:
    """The graph of an ONNX file; large weights stored beside it stay on disk."""
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as error:  # noqa: BLE001 - protobuf raises many types for a bad file
        raise GeodistillError(f"cannot read the ONNX model ({error})", path) from error


def geodistill_card(model: onnx.ModelProto, path: str | Path) -> ModelCard | None:
    """The :class:`~geodistill.models.checkpoint.ModelCard` of a geodistill export, else
    ``None``."""
    meta = {entry.key: entry.value for entry in model.metadata_props}
    if ONNX_METADATA_KEY not in meta:
        return None
    return ModelCard.from_json(meta[ONNX_METADATA_KEY], path)


def expose_tensors(model: onnx.ModelProto, names: list[str], path: str | Path) -> bool:
    """Append the intermediate tensors ``names`` to the graph outputs; ``True`` if any was.

    Their types and shapes come from ONNX shape inference where it knows them; ONNX Runtime
    infers the others.
    """
    outputs = {output.name for output in model.graph.output}
    missing = [name for name in dict.fromkeys(names) if name not in outputs]
    if not missing:
        return False
    known = [name for node in model.graph.node for name in node.output if name]
    unknown = [name for name in missing if name not in set(known)]
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=5, cutoff=0.4)
        hint = f"; close names: {', '.join(close)}" if close else ""
        raise GeodistillError(
            f"the ONNX graph has no tensor named {unknown[0]!r}{hint} "
            f"(it has {len(known)} tensors)",
            path,
        )
    try:
        inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    except Exception:  # noqa: BLE001 - inference is optional; ONNX Runtime infers too
        inferred = {}
    for name in missing:
        model.graph.output.append(
            inferred.get(name) or onnx.helper.make_empty_tensor_value_info(name)
        )
    return True


def make_session(source: bytes | Path, path: Path, device: torch.device | str = "cpu") -> Any:
    """An ONNX Runtime session on the CPU, or with the CUDA provider for a CUDA ``device`` when
    ONNX Runtime has it, with as many threads as torch uses."""
    import onnxruntime as ort

    device = torch.device(device)
    providers: list[Any] = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3
    # weights stored beside the file are found when the session is made from bytes
    options.add_session_config_entry(
        "session.model_external_initializers_file_folder_path", str(path.parent)
    )
    model = source if isinstance(source, bytes) else str(source)
    try:
        return ort.InferenceSession(model, options, providers=providers)
    except Exception as error:  # noqa: BLE001 - ORT raises its own types for a bad file
        raise GeodistillError(f"cannot load the ONNX model ({error})", path) from error


class OnnxTeacherNetwork(TeacherNetwork):
    """An ONNX Runtime session behind the teacher interface (torch in, torch out).

    Fixed spatial sizes are enforced; a graph fixed to batch size 1 is run one image at a time.
    Inputs go through numpy; outputs come back on the input's device.
    """

    def __init__(
        self,
        path: Path,
        source: bytes | Path,
        session: Any,
        feature_names: list[str],
        logits_name: str | None,
        in_channels: int,
        band_names: list[str] | None,
        normalizes_input: bool,
    ) -> None:
        super().__init__()
        self.path = path
        self.source = source
        self.input_name, self.input_shape, self.input_type = _input_of(session, path)
        fixed = self.input_shape[2:]
        if all(isinstance(d, int) for d in fixed):
            self.input_size = (int(fixed[0]), int(fixed[1]))
        self.levels = list(feature_names)
        self.logits_name = logits_name
        self.output_names = list(
            dict.fromkeys([*feature_names, *([logits_name] * bool(logits_name))])
        )
        self.in_channels = in_channels
        self.band_names = band_names
        self.normalizes_input = normalizes_input
        self._sessions: dict[str, Any] = {"cpu": session}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_sessions": {}}  # sessions do not pickle; rebuilt on use

    def session(self, device: torch.device) -> Any:
        """The session for inputs on ``device``, created on first use."""
        import onnxruntime as ort

        cuda = device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
        key = f"cuda:{device.index or 0}" if cuda else "cpu"
        if key not in self._sessions:
            self._sessions[key] = make_session(self.source, self.path, device)
        return self._sessions[key]

    def _check_size(self, shape: torch.Size) -> None:
        fixed = self.input_shape[2:]
        given = tuple(shape[2:])
        if any(isinstance(f, int) and f != g for f, g in zip(fixed, given, strict=True)):
            want = "×".join(str(f) if isinstance(f, int) else "any" for f in fixed)
            raise GeodistillError(
                f"the ONNX model takes {want} tiles, got {given[0]}×{given[1]}: "
                "use crops of the model's size",
                self.path,
            )
        batch = self.input_shape[0]
        if isinstance(batch, int) and batch != 1 and batch != shape[0]:
            raise GeodistillError(
                f"the ONNX model takes batches of {batch} images, got {shape[0]}", self.path
            )

    def run(self, x: Tensor) -> dict[str, Tensor]:
        """Every exposed output for the image batch ``x``, as tensors on ``x``'s device."""
        self._check_size(x.shape)
        session = self.session(x.device)
        array = x.detach().cpu().numpy().astype(self.input_type, copy=False)
        one_by_one = self.input_shape[0] == 1 and len(array) != 1
        batches = [array[i : i + 1] for i in range(len(array))] if one_by_one else [array]
        results = [
            session.run(self.output_names, {self.input_name: np.ascontiguousarray(batch)})
            for batch in batches
        ]
        return {
            name: torch.from_numpy(np.concatenate(parts)).float().to(x.device)
            for name, parts in zip(self.output_names, zip(*results, strict=True), strict=True)
        }

    def forward(self, x: Tensor) -> TeacherOutput:
        outputs = self.run(x)
        for name in self.levels:
            if outputs[name].ndim != 4:
                raise GeodistillError(
                    f"ONNX tensor {name!r} has shape {tuple(outputs[name].shape)}: teacher "
                    "features must be (B, C, h, w) maps",
                    self.path,
                )
        logits = outputs[self.logits_name] if self.logits_name else None
        return TeacherOutput([outputs[name] for name in self.levels], logits)


def _input_of(session: Any, path: Path) -> tuple[str, list[Dim], type[np.floating]]:
    inputs = session.get_inputs()
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise GeodistillError(
            f"unexpected inputs: the ONNX model takes {len(inputs)} ({names}), a teacher one "
            "(B, C, H, W) image",
            path,
        )
    (image,) = inputs
    shape = list(image.shape)
    if len(shape) != 4 or image.type not in INPUT_TYPES:
        raise GeodistillError(
            f"unexpected input shape {shape} of type {image.type} for input {image.name!r}: "
            "a teacher takes one (B, C, H, W) float image",
            path,
        )
    return image.name, shape, INPUT_TYPES[image.type]


def _band_count(shape: list[Dim], spec: TeacherSpec, card: Any, student_bands: list[str]) -> int:
    if isinstance(shape[1], int):
        return shape[1]
    if spec.bands is not None:
        return len(spec.bands)
    return card.num_bands if card is not None else len(student_bands)


def _class_names(
    spec: TeacherSpec, card: Any, network: OnnxTeacherNetwork, shapes: dict[str, list[Dim]]
) -> list[str] | None:
    if network.logits_name is None:
        if spec.class_names:
            raise GeodistillError(
                "teacher.class_names is set but the ONNX teacher has no logits: "
                "name them with teacher.options.logits",
                network.path,
            )
        return None
    shape = shapes.get(network.logits_name) or []
    count = shape[1] if len(shape) == 4 else None
    if not isinstance(count, int):  # dynamic: one forward pass tells
        size = [d if isinstance(d, int) else PROBE_SIZE for d in network.input_shape[2:]]
        probe = torch.zeros(1, network.in_channels, *size)
        count = int(network.run(probe)[network.logits_name].shape[1])
    names = spec.class_names or (card.class_names if card is not None else None)
    names = list(names) if names else [f"class_{i}" for i in range(count)]
    if len(names) != count:
        raise GeodistillError(
            f"teacher.class_names lists {len(names)} classes, the ONNX logits "
            f"{network.logits_name!r} have {count} channels",
            network.path,
        )
    return names


@register_teacher("onnx")
def build_onnx_teacher(spec: TeacherSpec, student_bands: list[str]) -> Teacher:
    """A teacher from an ONNX file (``spec.path``), run by ONNX Runtime.

    ``spec.layers`` names intermediate tensors to take as features (default: the graph's 4-D
    outputs); ``spec.options['logits']`` the tensor of class scores. When the input's band
    dimension is dynamic, the teacher takes ``len(spec.bands)`` bands, else the file's recorded
    bands, else all the student's.
    """
    if spec.path is None:
        raise GeodistillError("an onnx teacher needs teacher.path (an .onnx file)")
    path = Path(spec.path)
    unknown = sorted(set(spec.options) - set(OPTIONS))
    if unknown:
        raise GeodistillError(
            f"unknown onnx teacher option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}",
            path,
        )
    if spec.expand_input:
        raise GeodistillError(
            "teacher.expand_input rebuilds a timm/torchgeo first layer; an ONNX graph cannot be "
            "rebuilt: map its bands with teacher.bands",
            path,
        )
    model = read_onnx(path)
    card = geodistill_card(model, path)
    if card is not None and any(v is not None for v in (spec.scale, spec.mean, spec.std)):
        raise GeodistillError(
            "a geodistill ONNX export normalises its own input: drop teacher.scale/mean/std", path
        )
    graph_outputs = [output.name for output in model.graph.output]
    named_logits = spec.options.get("logits", graph_outputs[0] if graph_outputs else None)
    layers = [str(layer) for layer in spec.layers or []]
    exposed = expose_tensors(model, [*layers, *([named_logits] * bool(named_logits))], path)
    source = model.SerializeToString() if exposed else path
    session = make_session(source, path)
    input_shape = _input_of(session, path)[1]
    shapes = {output.name: list(output.shape) for output in session.get_outputs()}
    if "logits" not in spec.options and len(shapes.get(named_logits or "", [])) != 4:
        named_logits = None  # the first output is no (B, K, H, W) score map
    features = layers or [name for name in graph_outputs if len(shapes[name]) == 4]
    for name in [*features, *([named_logits] * bool(named_logits))]:
        if shapes[name] and len(shapes[name]) != 4:
            raise GeodistillError(
                f"ONNX tensor {name!r} has shape {shapes[name]}: teacher features and logits "
                "must be (B, C, h, w) maps",
                path,
            )
    bands = _band_count(input_shape, spec, card, student_bands)
    if card is not None and card.num_bands != bands:
        raise GeodistillError(
            f"the ONNX input takes {bands} bands, its metadata names {card.num_bands}", path
        )
    network = OnnxTeacherNetwork(
        path,
        source,
        session,
        features,
        named_logits or None,
        bands,
        list(card.band_names) if card is not None else None,
        normalizes_input=card is not None,
    )
    network.class_names = _class_names(spec, card, network, shapes)
    indices = map_bands(student_bands, bands, network.band_names, spec.bands, spec.path)
    normalization = None if card is not None else InputNormalization.from_spec(spec, bands)
    return Teacher(network, indices, normalization, spec)
