"""Teacher-free deployment: a plain student checkpoint or an ONNX file from any task checkpoint.

Distillation tasks carry training-only parts (feature projections, the teacher's path). An
exported student holds the network with its band normalisation and its :class:`ModelCard` (band
and class names, normalisation, tile size), so it predicts without any teacher file:

- ``.ckpt``: a :class:`~geodistill.tasks.SegmentationTask` checkpoint (``load_from_checkpoint``);
- ``.onnx``: the network with dynamic batch and tile size, the card as JSON in the metadata, and
  ONNX Runtime's output checked against PyTorch's before the file is written;
- ``.onnx`` with ``quantize="int8"``: that float model statically quantized on a few real chips
  and checked against the float model (:mod:`geodistill.quantize`).

The network exported is the one the checkpoint deploys: a method may record another network than
the training student (the semi-supervised method's EMA copy, say) under ``geodistill.deployed``
(``network``, ``state_prefix``: where its weights are in the state dict). Its weights are then
written as the plain student's ``model.*`` (the same architecture), and the exported checkpoint
keeps the record (without the prefix) in ``geodistill.deployed``; an ONNX file carries it as
JSON under the ``geodistill_deployed`` metadata key.
"""

from __future__ import annotations

import inspect
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from geodistill.atomic import atomic_output, refuse_existing
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
from geodistill.tasks.segmentation import SegmentationTask

if TYPE_CHECKING:
    from geodistill.quantize import Agreement

STUDENT_PREFIXES = ("model.", "criterion.")
"""State-dict entries a deployed :class:`SegmentationTask` owns; the rest is training-only."""

ONNX_TOLERANCE = 1e-4
"""Largest ONNX Runtime vs PyTorch logit difference accepted on the export check input."""

ONNX_CHECK_SIZE = 64
"""Side of the random check tile (with a nodata corner) run through both backends."""

ONNX_DEPLOYED_KEY = "geodistill_deployed"
"""ONNX metadata key of the checkpoint's ``geodistill.deployed`` record (when it has one)."""


def export_student(
    checkpoint: str | Path,
    output: str | Path,
    overwrite: bool = False,
    tile_size: int | None = None,
    quantize: str | None = None,
    calibration: str | Path | None = None,
    calibration_count: int = 16,
    max_disagreement: float = 0.02,
) -> Path:
    """Write the student of ``checkpoint`` to ``output`` (format by suffix), atomically.

    With ``quantize="int8"`` the ONNX model is quantized on ``calibration`` chips; see
    :func:`export_int8`, which also returns the measured agreement.
    """
    if quantize is not None:
        export_int8(checkpoint, output, quantize, calibration, calibration_count,
                    max_disagreement, overwrite, tile_size)  # fmt: skip
        return Path(output)
    check_export_source(checkpoint)
    output = Path(output)
    exporter = EXPORTERS.get(output.suffix.lower())
    if exporter is None:
        known = ", ".join(EXPORTERS)
        raise GeodistillError(f"unknown export format {output.suffix!r} (known: {known})", output)
    source = _read_source(checkpoint, output, overwrite, tile_size)
    exporter(source, Path(checkpoint), output)
    return output


def _read_source(
    checkpoint: str | Path, output: Path, overwrite: bool, tile_size: int | None
) -> dict[str, Any]:
    """The checkpoint to export (weights-only), once the output and tile size are acceptable;
    ``tile_size`` overrides the recorded training tile."""
    refuse_existing([output], overwrite)
    if tile_size is not None and tile_size < 1:
        raise GeodistillError(f"tile size must be positive, got {tile_size}")
    source = deployed_checkpoint(read_checkpoint(checkpoint), checkpoint)
    if tile_size is not None:
        source.setdefault("geodistill", {})["tile_size"] = tile_size
    return source


def export_int8(
    checkpoint: str | Path,
    output: str | Path,
    quantize: str = "int8",
    calibration: str | Path | None = None,
    calibration_count: int = 16,
    max_disagreement: float = 0.02,
    overwrite: bool = False,
    tile_size: int | None = None,
) -> Agreement:
    """Write a statically quantized ONNX student, refused (nothing written) when its argmax
    disagrees with the float model on more than ``max_disagreement`` of the pixels."""
    from geodistill.quantize import (
        QUANTIZATIONS,
        check_max_disagreement,
        quantize_checked,
        read_calibration,
    )

    check_export_source(checkpoint)
    output = Path(output)
    if quantize not in QUANTIZATIONS:
        raise GeodistillError(f"--quantize takes {', '.join(QUANTIZATIONS)}, got {quantize!r}")
    if output.suffix.lower() != ".onnx":
        raise GeodistillError("--quantize writes an ONNX model; name the output *.onnx", output)
    if calibration is None:
        raise GeodistillError("--quantize needs --calibration CHIPS (a folder or glob of chips)")
    check_max_disagreement(max_disagreement)
    source = _read_source(checkpoint, output, overwrite, tile_size)
    card = card_from_checkpoint(source)
    tiles = read_calibration(calibration, card, calibration_count)
    with tempfile.TemporaryDirectory(prefix="geodistill-export-") as work:
        float_path = Path(work) / "float.onnx"
        _export_onnx(source, Path(checkpoint), float_path)
        with atomic_output(output, suffix=".onnx") as temporary:
            return quantize_checked(float_path, temporary, output, card, tiles, max_disagreement)


def check_export_source(path: str | Path) -> None:
    """Refuse an input that is not a ``.ckpt`` before reading it: an exported ONNX model or any
    other file gets a sentence saying what export needs, not an unpickling error."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".ckpt":
        return
    if path.is_dir():
        found = "a folder"
    elif suffix == ".onnx":
        found = "an ONNX model (export writes those; it reads the training checkpoint)"
    else:
        found = f"a {suffix} file" if suffix else "a file without the .ckpt suffix"
    raise GeodistillError(f"export needs a geodistill .ckpt checkpoint; this is {found}", path)


def _export_checkpoint(source: dict[str, Any], path: Path, output: Path) -> None:
    # The deployed student is the plain task's network: no method, no teachers, no loss heads.
    accepted = set(inspect.signature(SegmentationTask.__init__).parameters) - {
        "self",
        "distillation",
    }
    hparams = {k: v for k, v in source.get("hyper_parameters", {}).items() if k in accepted}
    meta = {k: v for k, v in source.get("geodistill", {}).items() if k != "teacher"}
    student = {
        "state_dict": {
            k: v for k, v in source["state_dict"].items() if k.startswith(STUDENT_PREFIXES)
        },
        "hyper_parameters": hparams,
        "geodistill": meta,
        "pytorch-lightning_version": source.get("pytorch-lightning_version"),
    }
    with atomic_output(output) as temporary:
        torch.save(student, temporary)


def _export_onnx(source: dict[str, Any], path: Path, output: Path) -> None:
    import onnx

    network = freeze(network_from_checkpoint(source, path))
    card = card_from_checkpoint(source)
    sample = check_input(card)
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"),
            3: torch.export.Dim("width")}  # fmt: skip
    with atomic_output(output, suffix=".onnx") as temporary:
        try:
            program = torch.onnx.export(
                network,
                (torch.from_numpy(sample),),
                input_names=["image"],
                output_names=["logits"],
                dynamic_shapes=(dims,),
                dynamo=True,
                verbose=False,
            )
        except Exception as err:  # noqa: BLE001 - the exporter raises many types
            raise GeodistillError(f"cannot export the network to ONNX ({err})", path) from err
        program.save(str(temporary))
        model = onnx.load(str(temporary))
        entry = model.metadata_props.add()
        entry.key, entry.value = ONNX_METADATA_KEY, card.to_json()
        deployed = source.get("geodistill", {}).get("deployed")
        if deployed:
            entry = model.metadata_props.add()
            entry.key, entry.value = ONNX_DEPLOYED_KEY, json.dumps(deployed, sort_keys=True)
        model.producer_name = "geodistill"
        onnx.save(model, str(temporary))
        # A single smaller tile as well: an exporter that fixed the batch or tile size while
        # tracing (timm's channels-last layer norms can) fails here, not in the user's hands.
        for tiles in (sample, sample[:1, :, : ONNX_CHECK_SIZE // 2, : ONNX_CHECK_SIZE // 2]):
            check_onnx_parity(network, temporary, tiles)


def check_input(card: ModelCard, size: int = ONNX_CHECK_SIZE) -> np.ndarray:
    """Two seeded raw-value tiles around the training statistics, with a nodata corner.

    Tracing with a batch of two keeps the exported batch axis dynamic: with one, some layers let
    the exporter specialise the batch to 1.
    """
    rng = np.random.default_rng(0)
    mean = np.asarray(card.normalization.get("mean", [0.0] * card.num_bands), np.float32)
    std = np.asarray(card.normalization.get("std", [1.0] * card.num_bands), np.float32)
    shape = (2, card.num_bands, size, size)
    sample = mean.reshape(1, -1, 1, 1) + std.reshape(1, -1, 1, 1) * rng.standard_normal(shape)
    sample = sample.astype(np.float32)
    sample[..., : size // 8, : size // 8] = np.nan
    return sample


def check_onnx_parity(network: torch.nn.Module, onnx_path: Path, sample: np.ndarray) -> float:
    """Largest |ONNX Runtime - PyTorch| logit difference on ``sample``; refuse above tolerance."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, {session.get_inputs()[0].name: sample})[0]
    with torch.inference_mode():
        torch_logits = network(torch.from_numpy(sample)).numpy()
    difference = float(np.abs(onnx_logits - torch_logits).max())
    if not difference <= ONNX_TOLERANCE:
        raise GeodistillError(
            f"ONNX Runtime differs from PyTorch by {difference:.2e} (> {ONNX_TOLERANCE})",
            onnx_path,
        )
    return difference


EXPORTERS: dict[str, Callable[[dict[str, Any], Path, Path], None]] = {
    ".ckpt": _export_checkpoint,
    ".onnx": _export_onnx,
}
"""Output suffix -> exporter."""
