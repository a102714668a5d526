"""Whole-scene prediction with bounded memory: stream tiles in, stream map rows out.

The scene is cut into overlapping tiles on a regular grid (:class:`TileGrid`) and predicted one
row of tiles at a time, in batches (read ahead in a background thread when the model runs on an
accelerator, so reading overlaps its compute; on the CPU both would share the same cores). Blended
class scores are accumulated in a buffer one tile high and as wide as the scene; as soon as a
band of rows can receive no more tiles it is normalised, turned into classes (and confidence or
probabilities) and written. Memory is therefore ``classes × tile × width`` floats plus one batch,
independent of the scene's height, and every tile is predicted exactly once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window
from tqdm.auto import tqdm

from geodistill.atomic import refuse_existing
from geodistill.data.raster import (
    BandSpec,
    RasterInfo,
    open_raster,
    raster_info,
    read_pixels,
    warn_no_crs,
)
from geodistill.data.raster import resolve_bands as resolve_band_spec
from geodistill.errors import GeodistillError
from geodistill.inference.predictors import Predictor
from geodistill.inference.tiling import (
    MIN_TILE,
    TileGrid,
    blend_window,
    check_batch_size,
    check_overlap,
    check_tile,
)
from geodistill.inference.writer import (
    PERCENT_SCALE,
    PREDICTION_NODATA,
    StreamingGeoTiff,
    class_colormap,
    class_map_tags,
)
from geodistill.models.checkpoint import ModelCard

WRITE_CHUNK = 2048
"""Columns normalised and written at once: bounds the transient arrays of a finished row band."""

GDAL_CACHE_BYTES = 32 * 1024**2
"""GDAL block cache while predicting: part of the memory bound, ample for row-wise reads and
writes. Given in bytes: rasterio passes the number to GDAL as is (64 would mean 64 bytes)."""

ROW_CACHE_LIMIT = 64 * 1024**2
"""Largest block cache :func:`scene_cache_bytes` sizes to hold a whole row of tiles' blocks;
wider scenes keep :data:`GDAL_CACHE_BYTES` (their memory bound first)."""

WRITE_CACHE_BYTES = 4 * 1024**2
"""Cache headroom for the streamed outputs' blocks, written beside the reads."""


@dataclass
class InferenceOptions:
    """How to tile and what to write; ``None`` tile/overlap take the model's tile size and 1/4."""

    tile: int | None = None
    overlap: int | None = None
    batch_size: int = 8
    tta: bool = False
    confidence: bool = False
    probabilities: bool = False
    bands: BandSpec = None
    overwrite: bool = False

    def check(self) -> None:
        """Refuse out-of-range values given explicitly (before any model is loaded)."""
        if self.tile is not None:
            check_tile(self.tile)
        if self.overlap is not None:
            check_overlap(self.overlap, self.tile)
        check_batch_size(self.batch_size)

    def resolve(self, card: ModelCard) -> tuple[int, int]:
        """``(tile, overlap)`` for ``card``'s model, checked. A tile of 0 is refused, not taken
        for "the model's"."""
        self.check()
        tile = check_tile(card.tile_size if self.tile is None else self.tile)
        overlap = check_overlap(tile // 4 if self.overlap is None else self.overlap, tile)
        return tile, overlap


MODEL_FLOATS_PER_PIXEL = 256
"""float32 values alive per input pixel at the peak of a student's forward pass on the CPU: a
rough bound from measurements of ResNet-18 U-Net, DeepLabV3+, UPerNet and MiT-B0 SegFormer
students (90 to 310). On an accelerator these live in its memory instead."""


def memory_needed(
    grid: TileGrid, num_bands: int, num_classes: int, options: InferenceOptions, on_cpu: bool
) -> int:
    """Bytes of host memory :func:`predict_scene` allocates at its peak for ``grid``.

    Per batch of ``n`` tiles: the tiles (float32, one per band) and their valid mask, the window
    read for them (and its float copy), the class probabilities with their softmax temporaries
    (and the flipped copies of TTA), the network's activations when it runs on the CPU, and the
    batch read ahead when it does not. Per scene: the blend window (tile²) and the accumulator
    (classes × tile × scene width) with one normalised column chunk.
    """
    tile, width = grid.tile, grid.width
    n = min(options.batch_size, len(grid.cols))
    pixels = n * tile * tile
    read_width = min(width, (n - 1) * (tile - grid.overlap) + tile)
    batch = pixels * (4 * num_bands + 1) + 2 * 4 * num_bands * tile * read_width
    predictions = pixels * 4 * num_classes * (5 if options.tta else 3)
    model = pixels * 4 * MODEL_FLOATS_PER_PIXEL if on_cpu else batch
    window = 4 * tile * tile
    accumulator = tile * width * (4 * num_classes + 1)
    chunk = 2 * 4 * num_classes * tile * min(width, WRITE_CHUNK)
    return batch + predictions + model + window + accumulator + chunk


def available_memory() -> int | None:
    """Bytes this process can still allocate: MemAvailable, capped by a cgroup limit if any."""
    available: int | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        try:
            limit = int(Path(limit_file).read_text().strip())
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        available = min(available, max(limit - usage, 0))
    return available


def _gib(size: int) -> str:
    gib = size / 1024**3
    return f"{gib:,.0f} GiB" if gib >= 10 else f"{gib:.1f} GiB"


def check_memory(
    info: RasterInfo, card: ModelCard, options: InferenceOptions, on_cpu: bool = True
) -> None:
    """Refuse tiles and batches whose arrays would not fit in the memory available now, saying
    which tile size fits, before anything is allocated."""
    tile, overlap = options.resolve(card)
    available = available_memory()
    if available is None:
        return

    def need(side: int, batch_size: int = options.batch_size) -> int:
        grid = TileGrid(info.height, info.width, side, min(overlap, side // 2))
        sized = replace(options, batch_size=batch_size)
        return memory_needed(grid, card.num_bands, card.num_classes, sized, on_cpu)

    needed = need(tile)
    if needed <= available:
        return
    fits = _largest_fitting(_tile_candidates(tile), lambda side: need(side) <= available)
    batched = min(options.batch_size, len(TileGrid(info.height, info.width, tile, overlap).cols))
    if fits:
        advice = f"use --tile {fits} or less"
        if batched > 1:
            advice += " (or a smaller --batch-size)"
    elif batched > 1 and need(MIN_TILE, 1) <= available:
        advice = "use a smaller --tile and --batch-size"
    else:
        advice = f"even --tile {MIN_TILE} does not fit this scene's width; free some memory"
    raise GeodistillError(
        f"--tile {tile} with --batch-size {options.batch_size} needs about {_gib(needed)} of "
        f"memory for {info.width}×{info.height} pixels; about {_gib(available)} is available: "
        + advice,
        info.path,
    )


def _largest_fitting(sides: list[int], fits: Callable[[int], bool]) -> int | None:
    """The first of ``sides`` (descending) that ``fits``, by bisection: memory grows with the
    tile side, and a 100000-pixel tile has thousands of candidates."""
    low, high = 0, len(sides)
    while low < high:
        middle = (low + high) // 2
        if fits(sides[middle]):
            high = middle
        else:
            low = middle + 1
    return sides[low] if low < len(sides) else None


def _tile_candidates(tile: int) -> list[int]:
    """Smaller tile sides worth suggesting, largest first: multiples of 32 (every encoder's
    stride), then :data:`MIN_TILE`."""
    sides = list(range((tile - 1) // 32 * 32, 31, -32))
    return [*sides, MIN_TILE] if tile > MIN_TILE else sides


def check_model_tile(predictor: Predictor, tile: int) -> None:
    """Run one blank tile through the model when the tile is not the one it was trained or
    exported with: some architectures need a multiple of their stride, and fail or return maps of
    another size otherwise. Refuse such a tile with the nearest that works in general."""
    card = predictor.card
    if tile == card.tile_size:
        return
    nearest = max(32, round(tile / 32) * 32)
    advice = f"use a multiple of 32 such as --tile {nearest}"
    probe = np.zeros((1, card.num_bands, tile, tile), np.float32)
    try:
        shape = tuple(predictor.predict(probe).shape)
    except Exception as err:  # noqa: BLE001 - any backend error means this tile does not work
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise GeodistillError(
            f"--tile {tile} does not suit this model ({first}); {advice}"
        ) from err
    if shape[-2:] != (tile, tile):
        raise GeodistillError(
            f"--tile {tile} does not suit this model: it returns {shape[-2]}×{shape[-1]} maps "
            f"for {tile}×{tile} tiles; {advice}"
        )


@dataclass
class SceneOutputs:
    """Where one scene's rasters go; ``None`` for an output that is not wanted."""

    classes: Path
    confidence: Path | None = None
    probabilities: Path | None = None

    @classmethod
    def in_folder(cls, scene: str | Path, folder: str | Path, options: InferenceOptions):
        """``<folder>/<stem>_classes.tif`` and, if asked, ``_confidence``/``_probabilities``."""
        stem = Path(folder) / Path(scene).stem
        return cls(
            classes=Path(f"{stem}_classes.tif"),
            confidence=Path(f"{stem}_confidence.tif") if options.confidence else None,
            probabilities=Path(f"{stem}_probabilities.tif") if options.probabilities else None,
        )

    def paths(self) -> list[Path]:
        return [p for p in (self.classes, self.confidence, self.probabilities) if p is not None]

    def refuse_existing(self, overwrite: bool) -> None:
        """An existing output is only replaced when ``overwrite`` says so."""
        refuse_existing(self.paths(), overwrite)


def match_bands(info: RasterInfo, card: ModelCard, bands: BandSpec = None) -> list[int]:
    """0-based band indices of ``info`` that feed ``card``'s model, in the model's order.

    An explicit ``bands`` spec wins. Otherwise bands are matched by name, a file's unnamed band
    ``i`` being ``band_<i+1>`` as in training, so a reordered or larger stack works; when one side
    has no real names, a file with the model's band count is read in order.
    """
    if bands is not None:
        indices = resolve_band_spec(info, bands)
    else:
        names = [(d or f"band_{i + 1}").lower() for i, d in enumerate(info.descriptions)]
        missing = [b for b in card.band_names if b.lower() not in names]
        unnamed = not any(info.descriptions) or all(_generic(b) for b in card.band_names)
        if not missing:
            indices = [names.index(b.lower()) for b in card.band_names]
        elif unnamed and info.count == card.num_bands:
            indices = list(range(info.count))
        else:
            raise GeodistillError(
                f"the model needs bands {', '.join(card.band_names)}; the file has "
                f"{', '.join(names)} (missing {', '.join(missing)}; choose bands with --bands)",
                info.path,
            )
    if len(indices) != card.num_bands:
        raise GeodistillError(
            f"the model takes {card.num_bands} bands ({', '.join(card.band_names)}), "
            f"{len(indices)} selected from the file's {info.count}",
            info.path,
        )
    return indices


def _generic(name: str) -> bool:
    return name.lower().startswith("band_") and name[5:].isdigit()


def check_scene(
    scene: str | Path, card: ModelCard, options: InferenceOptions, on_cpu: bool = True
) -> tuple[RasterInfo, list[int]]:
    """Refuse a scene the model cannot read, or whose tiles would not fit in memory (before any
    work); return its header and bands."""
    info = raster_info(scene)
    indices = match_bands(info, card, options.bands)
    check_memory(info, card, options, on_cpu)
    if info.crs is None:
        warn_no_crs(scene, "predicting anyway and writing the outputs without one")
    return info, indices


def scene_cache_bytes(src: rasterio.DatasetReader, tile: int) -> int:
    """GDAL block cache for predicting ``src`` with ``tile``-high tile rows.

    A tile row's window can span two rows of the file's blocks, and the next tile row overlaps
    it: when the cache holds all of them (up to :data:`ROW_CACHE_LIMIT`), each block is decoded
    once instead of about 1.5 times (a third of the reading time of a 4096² deflate scene).
    """
    block_height, block_width = src.block_shapes[0]
    rows = -(-(tile - 1) // block_height) + 1
    width = -(-src.width // block_width) * block_width
    pixel = sum(np.dtype(dtype).itemsize for dtype in src.dtypes)
    needed = rows * block_height * width * pixel + WRITE_CACHE_BYTES
    return needed if GDAL_CACHE_BYTES < needed <= ROW_CACHE_LIMIT else GDAL_CACHE_BYTES


class _Accumulator:
    """Blended scores for the rows of one tile row: ``(classes, tile, width)`` float32."""

    def __init__(self, num_classes: int, grid: TileGrid) -> None:
        self.grid = grid
        self.scores = np.zeros((num_classes, grid.tile, grid.width), np.float32)
        self.valid = np.zeros((grid.tile, grid.width), bool)
        self.window = np.outer(blend_window(grid.tile), blend_window(grid.tile))
        self.row_total = grid.row_weights()
        self.col_total = grid.col_weights()

    def add(self, probs: np.ndarray, col: int, valid: np.ndarray) -> None:
        """Add one tile's probabilities ``(K, tile, tile)`` whose left edge is at ``col``."""
        h = min(self.grid.tile, self.grid.height)
        w = min(self.grid.tile, self.grid.width - col)
        self.scores[:, :h, col : col + w] += probs[:, :h, :w] * self.window[:h, :w]
        self.valid[:h, col : col + w] |= valid[:h, :w]

    def final(self, top: int, rows: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(left, probabilities, valid)`` of scene rows ``[top, top + rows)``, which no later
        tile reaches, in column chunks so that the transient arrays stay small."""
        for left in range(0, self.grid.width, WRITE_CHUNK):
            right = min(left + WRITE_CHUNK, self.grid.width)
            total = self.row_total[top : top + rows, None] * self.col_total[None, left:right]
            yield left, self.scores[:, :rows, left:right] / total, self.valid[:rows, left:right]

    def shift(self, rows: int) -> None:
        """Drop the first ``rows`` rows (written): the buffer then starts at the next tile row."""
        self.scores[:, :-rows] = self.scores[:, rows:]
        self.scores[:, -rows:] = 0
        self.valid[:-rows] = self.valid[rows:]
        self.valid[-rows:] = False


def _tta_predict(predictor: Predictor, batch: np.ndarray, tta: bool) -> np.ndarray:
    """Probabilities, averaged over the four flips of the tile when ``tta``."""
    if not tta:
        return predictor.predict(batch)
    total = np.zeros(0, np.float32)
    for axes in ((), (-1,), (-2,), (-2, -1)):
        flipped = np.flip(batch, axes) if axes else batch
        probs = predictor.predict(np.ascontiguousarray(flipped))
        probs = np.flip(probs, axes) if axes else probs
        total = probs if total.size == 0 else total + probs
    return total / 4


@dataclass
class TileBatch:
    """A run of tiles of one tile row, as the model sees them."""

    row: int
    cols: list[int]
    tiles: np.ndarray  # (n, C, tile, tile), NaN outside the scene
    valid: np.ndarray  # (n, tile, tile): any band has data


def read_tile_batch(
    src: rasterio.DatasetReader, indexes: list[int], grid: TileGrid, row: int, cols: list[int]
) -> TileBatch:
    """Read the window covering ``cols`` of tile row ``row`` once and cut it into tiles."""
    tile = grid.tile
    height = min(tile, grid.height - row)
    left, right = cols[0], min(cols[-1] + tile, grid.width)
    window = Window(left, row, right - left, height)  # type: ignore[call-arg]
    pixels = read_pixels(src, indexes, window)
    tiles = np.full((len(cols), len(indexes), tile, tile), np.nan, np.float32)
    for k, col in enumerate(cols):
        part = pixels[:, :, col - left : col - left + tile]
        tiles[k, :, : part.shape[1], : part.shape[2]] = part
    return TileBatch(row, cols, tiles, ~np.isnan(tiles).all(1))


def tile_batches(grid: TileGrid, batch_size: int) -> Iterator[tuple[int, list[int], bool]]:
    """``(row, cols, last_of_row)`` in row-major order; batches never span two tile rows."""
    cols = grid.cols
    for row in grid.rows:
        for start in range(0, len(cols), batch_size):
            chunk = cols[start : start + batch_size]
            yield row, chunk, start + batch_size >= len(cols)


def predict_scene(
    predictor: Predictor,
    scene: str | Path,
    outputs: SceneOutputs,
    options: InferenceOptions | None = None,
    progress: bool = False,
    prefetch: bool = False,
) -> SceneOutputs:
    """Predict ``scene`` tile by tile and write the class map (and extras) as COGs, atomically.

    Nodata pixels (declared nodata or NaN in every band) stay nodata in every output. The outputs
    appear only when the whole scene is done; an error or interruption leaves none behind.
    ``prefetch`` reads the next batch in a thread while the model runs (for GPU predictors: on
    the CPU it only competes for the cores, and the thread's allocations cost ~100 MB).
    """
    options = options or InferenceOptions()
    card = predictor.card
    tile, overlap = options.resolve(card)
    info, bands = check_scene(scene, card, options, on_cpu=not prefetch)
    indexes = [i + 1 for i in bands]
    outputs.refuse_existing(options.overwrite)
    grid = TileGrid(info.height, info.width, tile, overlap)
    accumulator = _Accumulator(card.num_classes, grid)
    rows = grid.rows
    bar = tqdm(total=len(grid), desc=Path(scene).name, unit="tile", disable=not progress)
    with open_raster(scene) as src:
        cache = scene_cache_bytes(src, tile)
    with (
        rasterio.Env(GDAL_CACHEMAX=cache),
        open_raster(scene) as src,
        ThreadPoolExecutor(max_workers=1) if prefetch else _Inline() as reader,
        ExitStack() as files,
        bar,
    ):
        writers = _open_writers(files, outputs, info, card, scene)
        jobs = list(tile_batches(grid, options.batch_size))
        pending = reader.submit(read_tile_batch, src, indexes, grid, *jobs[0][:2])
        for k, (row, _, last_of_row) in enumerate(jobs):
            batch = pending.result()
            if k + 1 < len(jobs):
                pending = reader.submit(read_tile_batch, src, indexes, grid, *jobs[k + 1][:2])
            probs = _tta_predict(predictor, batch.tiles, options.tta)
            for tile_probs, col, valid in zip(probs, batch.cols, batch.valid, strict=True):
                accumulator.add(tile_probs, col, valid)
            bar.update(len(batch.cols))
            if last_of_row:
                index = rows.index(row)
                stop = rows[index + 1] if index + 1 < len(rows) else grid.height
                for left, final, valid in accumulator.final(row, stop - row):
                    _write_rows(writers, final, valid, row, left)
                accumulator.shift(stop - row)
    return outputs


class _Inline(Executor):
    """Runs each submitted call at once, in the calling thread."""

    def submit(self, fn, /, *args, **kwargs) -> Future:  # noqa: ANN001 - Executor's signature
        future: Future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def _open_writers(
    files: ExitStack, outputs: SceneOutputs, info: RasterInfo, card: ModelCard, scene: str | Path
) -> dict[str, StreamingGeoTiff]:
    source = {"scene": Path(scene).name}
    writers = {
        "classes": StreamingGeoTiff(
            outputs.classes,
            info,
            descriptions=["class"],
            tags=class_map_tags(card.class_names) | source,
            colormap=class_colormap(card.num_classes),
        )
    }
    if outputs.confidence:
        writers["confidence"] = StreamingGeoTiff(
            outputs.confidence,
            info,
            descriptions=["confidence"],
            tags=source,
            scale=PERCENT_SCALE,
            resampling="AVERAGE",
        )
    if outputs.probabilities:
        writers["probabilities"] = StreamingGeoTiff(
            outputs.probabilities,
            info,
            count=card.num_classes,
            descriptions=card.class_names,
            tags=class_map_tags(card.class_names) | source,
            scale=PERCENT_SCALE,
            resampling="AVERAGE",
        )
    return {name: files.enter_context(writer) for name, writer in writers.items()}


def _percent(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    scaled = np.rint(values / PERCENT_SCALE).astype(np.uint8)
    scaled[~np.broadcast_to(valid, scaled.shape)] = PREDICTION_NODATA
    return scaled


def _write_rows(
    writers: dict[str, StreamingGeoTiff],
    probs: np.ndarray,
    valid: np.ndarray,
    top: int,
    left: int,
) -> None:
    classes = probs.argmax(0).astype(np.uint8)
    classes[~valid] = PREDICTION_NODATA
    writers["classes"].write(classes, top, left)
    if "confidence" in writers:
        writers["confidence"].write(_percent(probs.max(0), valid), top, left)
    if "probabilities" in writers:
        writers["probabilities"].write(_percent(probs, valid[None]), top, left)
