"""Static int8 quantization of an exported student, calibrated on real chips and checked.

An int8 model is smaller and, on CPUs with integer dot-product instructions, faster than the
float one; but quantization changes predictions, and by how much depends on the network and the
data. So the int8 file is made with ONNX Runtime's own tools (``quant_pre_process``, then
``quantize_static`` in QDQ format with a :class:`CalibrationDataReader` over a few real chips) and
only written when it agrees with the float model:

- calibration tiles are raw pixel values exactly as ``geodistill infer`` feeds them (bands matched
  to the model card, declared nodata as NaN, partial tiles padded with NaN);
- the band normaliser (clip, standardise, NaN -> 0) stays in float: NaN has no int8 code, and the
  normaliser is a handful of elementwise ops, so excluding it costs nothing;
- the agreement (share of valid pixels with the same argmax class, largest probability
  difference) is measured on the calibration tiles and on held-out chips of the same folder, and
  the export is refused, writing nothing, when more pixels disagree than allowed.
"""

from __future__ import annotations

import contextlib
import glob
import json
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from geodistill.errors import GeodistillError
from geodistill.inference.predictors import softmax
from geodistill.models.checkpoint import ONNX_METADATA_KEY, ModelCard

QUANTIZATION_METADATA_KEY = "geodistill_quantization"
"""ONNX ``metadata_props`` key of an int8 model's quantization record (JSON, beside the card)."""

QUANTIZATIONS = ("int8",)
"""What ``--quantize`` accepts."""

DEFAULT_CALIBRATION_COUNT = 16
"""Calibration tiles: a few real chips are enough for min/max activation ranges."""

DEFAULT_MAX_DISAGREEMENT = 0.02
"""Largest share of valid pixels whose argmax class may change (98 % agreement)."""

RASTER_SUFFIXES = (".tif", ".tiff")


@dataclass(frozen=True)
class QuantizeOptions:
    """ONNX Runtime quantization choices; the defaults suit x86 CPUs with VNNI (AVX512/AVX-VNNI).

    ``reduce_range`` (7-bit weights) can help accuracy on CPUs without VNNI; ``per_channel``
    keeps one weight scale per output channel, which depthwise and small convolutions need.
    """

    per_channel: bool = True
    reduce_range: bool = False
    calibrate_method: str = "MinMax"
    op_types: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Agreement:
    """How close the int8 model is to the float one on real tiles."""

    calibration_agreement: float
    check_agreement: float
    max_prob_difference: float
    calibration_tiles: int
    check_tiles: int
    pixels: int

    @property
    def worst_disagreement(self) -> float:
        return 1.0 - min(self.calibration_agreement, self.check_agreement)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return (
            f"argmax agreement {self.calibration_agreement:.2%} on {self.calibration_tiles} "
            f"calibration tiles, {self.check_agreement:.2%} on {self.check_tiles} held-out tiles; "
            f"max probability difference {self.max_prob_difference:.3f}"
        )


@dataclass(frozen=True)
class CalibrationSet:
    """Raw tiles for calibration and, from other chips (or other windows), for the check."""

    calibration: list[np.ndarray]
    check: list[np.ndarray]
    files: list[Path]


def calibration_files(spec: str | Path) -> list[Path]:
    """GeoTIFFs of a folder or a glob pattern (sorted), or one raster; refuse when none."""
    text = str(spec)
    path = Path(text)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in RASTER_SUFFIXES)
        where = "in the calibration folder"
    elif path.is_file():
        files = [path]
        where = ""
    elif glob.has_magic(text):
        files = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
        where = "matches the calibration pattern"
    else:
        raise GeodistillError("no such calibration folder or file", path)
    if not files:
        raise GeodistillError(f"no GeoTIFF (.tif/.tiff) {where}".rstrip(), path)
    return files


def _windows(height: int, width: int, tile: int) -> list[tuple[int, int]]:
    """Top-left corners of the non-overlapping tiles covering a raster (the last ones partial)."""
    return [(r, c) for r in range(0, height, tile) for c in range(0, width, tile)]


def _spread(items: Sequence[Any], count: int) -> list[Any]:
    """At most ``count`` items evenly spread over ``items`` (all of them when fewer)."""
    if len(items) <= count:
        return list(items)
    picks = np.linspace(0, len(items) - 1, count).round().astype(int)
    return [items[i] for i in picks]


def read_calibration(
    spec: str | Path, card: ModelCard, count: int = DEFAULT_CALIBRATION_COUNT
) -> CalibrationSet:
    """``count`` calibration tiles and up to ``count`` held-out check tiles, as ``infer`` reads.

    Every fifth chip (at least one) is held out for the check; from a single raster, every fifth
    tile is. Tiles are ``card.tile_size`` squares of raw values, NaN for nodata and padding.
    """
    from rasterio.windows import Window

    from geodistill.data.raster import open_raster, raster_info, read_pixels
    from geodistill.inference.scene import match_bands

    if count < 1:
        raise GeodistillError(f"--calibration-count must be at least 1, got {count}")
    files = calibration_files(spec)
    tile = card.tile_size
    places: list[tuple[Path, list[int], tuple[int, int]]] = []
    per_file: list[list[tuple[Path, list[int], tuple[int, int]]]] = []
    for file in files:
        info = raster_info(file)
        indexes = [i + 1 for i in match_bands(info, card)]
        spots = [(file, indexes, rc) for rc in _windows(info.height, info.width, tile)]
        per_file.append(spots)
        places.extend(spots)
    if len(places) < 2:
        raise GeodistillError(
            "calibration needs at least two tiles (some to calibrate on, one held out to check);"
            f" give more chips or a larger raster (tile size {tile})",
            Path(str(spec)),
        )
    if len(files) >= 2:
        held = set(_spread(range(len(files)), max(1, len(files) // 5)))
        # One tile per chip before a second one from any chip: spread over chips first.
        pool = _interleave([spots for i, spots in enumerate(per_file) if i not in held])
        check_pool = _interleave([spots for i, spots in enumerate(per_file) if i in held])
    else:
        held = set(range(4, len(places), 5)) or {len(places) - 1}
        pool = [s for i, s in enumerate(places) if i not in held]
        check_pool = [s for i, s in enumerate(places) if i in held]

    def read(spot: tuple[Path, list[int], tuple[int, int]]) -> np.ndarray:
        file, indexes, (row, col) = spot
        with open_raster(file) as src:
            height, width = min(tile, src.height - row), min(tile, src.width - col)
            window = Window(col, row, width, height)  # type: ignore[call-arg]
            pixels = read_pixels(src, indexes, window)
        out = np.full((len(indexes), tile, tile), np.nan, np.float32)
        out[:, :height, :width] = pixels
        return out

    return CalibrationSet(
        calibration=[read(s) for s in pool[:count]],
        check=[read(s) for s in check_pool[:count]],
        files=files,
    )


def _interleave(groups: list[list[Any]]) -> list[Any]:
    """First item of every group, then the second of every group, and so on."""
    out: list[Any] = []
    depth = max((len(g) for g in groups), default=0)
    for k in range(depth):
        out.extend(g[k] for g in groups if k < len(g))
    return out


class TileReader(CalibrationDataReader):
    """ONNX Runtime calibration reader: one raw tile per batch under the model's input name."""

    def __init__(self, input_name: str, tiles: Sequence[np.ndarray]) -> None:
        self.input_name = input_name
        self.tiles = list(tiles)
        self._iter: Iterator[np.ndarray] = iter(self.tiles)

    def get_next(self) -> dict[str, np.ndarray] | None:
        tile = next(self._iter, None)
        return None if tile is None else {self.input_name: tile[None]}

    def rewind(self) -> None:
        self._iter = iter(self.tiles)


def normalizer_nodes(model: Any) -> list[str]:
    """Names of the nodes between the graph input and the first convolution (the normaliser).

    They see raw values and NaN, which int8 cannot represent; kept in float they cost nothing.
    Shapes read from the input are integers (never quantized), so the walk does not follow them
    into the decoder's resizes.
    """
    reached = {i.name for i in model.graph.input}
    excluded: list[str] = []
    changed = True
    while changed:
        changed = False
        for node in model.graph.node:
            if node.name in excluded or node.op_type in ("Conv", "ConvTranspose", "Shape"):
                continue
            if any(name in reached for name in node.input):
                excluded.append(node.name)
                reached.update(node.output)
                changed = True
    return excluded


def quantize_int8(
    float_path: Path,
    output: Path,
    tiles: Sequence[np.ndarray],
    options: QuantizeOptions | None = None,
) -> None:
    """Pre-process and statically quantize ``float_path`` into ``output`` (QDQ, int8 weights)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    options = options or QuantizeOptions()
    with tempfile.TemporaryDirectory(prefix="geodistill-quantize-") as work:
        prepared = Path(work) / "prepared.onnx"
        # Symbolic shape inference saves a debug model into the working folder when it fails.
        with contextlib.chdir(work):
            quant_pre_process(str(float_path), str(prepared), auto_merge=True)
        model = onnx.load(str(prepared))
        input_name = model.graph.input[0].name
        quantize_static(
            str(prepared),
            str(output),
            TileReader(input_name, tiles),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(options.op_types) if options.op_types else None,
            per_channel=options.per_channel,
            reduce_range=options.reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=normalizer_nodes(model),
            calibrate_method=getattr(CalibrationMethod, options.calibrate_method),
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )


def _session(path: Path, threads: int = 1) -> Any:
    import onnxruntime as ort

    settings = ort.SessionOptions()
    settings.intra_op_num_threads = threads
    settings.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), settings, providers=["CPUExecutionProvider"])


def measure_agreement(
    float_path: Path,
    int8_path: Path,
    calibration: Sequence[np.ndarray],
    check: Sequence[np.ndarray],
) -> Agreement:
    """Argmax agreement and largest probability difference over valid (not all-NaN) pixels."""
    reference, quantized = _session(float_path), _session(int8_path)
    name = reference.get_inputs()[0].name
    largest = 0.0
    shares: list[float] = []
    pixels = 0
    for tiles in (calibration, check):
        same = total = 0
        for tile in tiles:
            batch = tile[None]
            p_float = softmax(reference.run(None, {name: batch})[0].astype(np.float32))[0]
            p_int8 = softmax(quantized.run(None, {name: batch})[0].astype(np.float32))[0]
            valid = ~np.isnan(tile).all(0)
            same += int((p_float.argmax(0) == p_int8.argmax(0))[valid].sum())
            total += int(valid.sum())
            if valid.any():
                largest = max(largest, float(np.abs(p_float - p_int8)[:, valid].max()))
        shares.append(same / total if total else 1.0)
        pixels += total
    return Agreement(
        calibration_agreement=shares[0],
        check_agreement=shares[1],
        max_prob_difference=largest,
        calibration_tiles=len(calibration),
        check_tiles=len(check),
        pixels=pixels,
    )


def write_metadata(path: Path, card: ModelCard, record: dict[str, Any]) -> None:
    """Put the card (for ``infer``) and the quantization record into the int8 model."""
    import onnx

    model = onnx.load(str(path))
    card = replace(card, quantization=str(record.get("quantization", "int8")))
    del model.metadata_props[:]
    for key, value in ((ONNX_METADATA_KEY, card.to_json()),
                       (QUANTIZATION_METADATA_KEY, json.dumps(record))):  # fmt: skip
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "geodistill"
    onnx.save(model, str(path))


def check_max_disagreement(value: float) -> None:
    """Refuse a tolerance outside [0, 1] before any work."""
    if not 0.0 <= value <= 1.0:
        raise GeodistillError(f"--max-disagreement must be between 0 and 1, got {value}")


def quantize_checked(
    float_path: Path,
    temporary: Path,
    output: Path,
    card: ModelCard,
    calibration: CalibrationSet,
    max_disagreement: float = DEFAULT_MAX_DISAGREEMENT,
    options: QuantizeOptions | None = None,
) -> Agreement:
    """Quantize into ``temporary``, measure agreement, refuse beyond ``max_disagreement``.

    ``output`` is only named in the refusal; the caller renames ``temporary`` over it.
    """
    options = options or QuantizeOptions()
    try:
        quantize_int8(float_path, temporary, calibration.calibration, options)
    except GeodistillError:
        raise
    except Exception as err:  # noqa: BLE001 - ONNX Runtime's tools raise many types
        raise GeodistillError(f"cannot quantize the model to int8 ({err})", output) from err
    agreement = measure_agreement(float_path, temporary, calibration.calibration, calibration.check)
    if not agreement.worst_disagreement <= max_disagreement:
        raise GeodistillError(
            f"the int8 model disagrees with the float model on "
            f"{agreement.worst_disagreement:.2%} of pixels (> {max_disagreement:.2%} allowed; "
            f"{agreement.describe()}); nothing written",
            output,
        )
    record = {
        "quantization": "int8",
        "format": "QDQ",
        "per_channel": options.per_channel,
        "reduce_range": options.reduce_range,
        "calibrate_method": options.calibrate_method,
        "calibration_files": len(calibration.files),
        "max_disagreement": max_disagreement,
        "agreement": agreement.as_dict(),
    }
    write_metadata(temporary, card, record)
    return agreement
