"""Whole-scene inference engine: throughput against the bare network, memory, ONNX Runtime.

On a SYNTHETIC multispectral GeoTIFF (6 uint16 bands, tiled + deflate, EPSG:32633 at 10 m, a
declared nodata value and a nodata block) and a randomly initialised student checkpoint whose
band statistics come from the scene, it measures

1. end-to-end ``infer_scenes`` throughput (read, predict, blend, write the COG) against the
   throughput of the same predictor's ``predict`` over exactly the same batches of tiles held in
   memory beforehand (same grid, same per-row batching as the engine); the ratio is the share of
   the network's speed that the engine keeps (goal >= 0.9);
2. the peak memory of a whole-scene run in a fresh subprocess, for two scene sizes: growth of
   the peak RSS over the RSS after loading the model and one warm-up batch (goal < 200 MB,
   whatever the size), and over the peak of that warm-up (net of the network's activations);
3. ONNX Runtime against PyTorch on the CPU, network forward and end to end, for the same student.

The timed measurements run in turn, ``--repeats`` rounds (so load from other processes hits them
alike), after one warm-up batch per model; each reports its best round (all rounds are in
results.json). The memory runs use a cheaper student (``--memory-*``) so that a 16384² scene
finishes on a CPU: the engine's memory is what is measured, not the network's.

    python benchmarks/inference.py            # 4096² throughput scene, 2048² and 16384² memory
    python benchmarks/inference.py --quick    # 1024² and 512²/2048²: a check in a few minutes

Writes ``<output>/results.json`` and ``<output>/results.md``; scenes and predictions go to
``<output>/scratch``, deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import rasterio
import torch
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.windows import Window
from report import command, hardware, write_results

from geodistill.data.raster import open_raster, raster_info, read_pixels
from geodistill.data.stats import BandStats
from geodistill.export import export_student
from geodistill.inference import (
    InferenceOptions,
    OnnxPredictor,
    Predictor,
    infer_scenes,
    load_predictor,
)
from geodistill.inference.scene import match_bands, read_tile_batch, tile_batches
from geodistill.inference.tiling import TileGrid
from geodistill.tasks import SegmentationTask

BAND_NAMES = ("blue", "green", "red", "nir", "swir1", "swir2")
CLASS_NAMES = ["background", "target"]
NODATA = 0
PIXEL_SIZE = 10.0
WRITE_WINDOW = 1024
"""Side of the windows the scene is generated and written by: bounds the generator's memory."""

SIGNATURES = np.array(
    [
        [400, 700, 500, 3500, 2000, 1000],  # vegetation
        [900, 1200, 1500, 2200, 2800, 2400],  # bare soil
        [1200, 1300, 1400, 1600, 1800, 1700],  # built-up
        [600, 500, 300, 150, 80, 50],  # water
    ],
    np.float32,
)
"""Reflectance × 10 000 of the land covers blended into the scene, one row per cover."""

SCRATCH_RESERVE = 2 * 1024**3
"""Free disk left untouched when sizing the memory scenes."""

RESULT_MARKER = "MEMORY_RESULT "


# --- the synthetic scene ---------------------------------------------------------------------


@dataclass
class WaveField:
    """A smooth random field: a sum of plane waves, evaluable on any window (no global array)."""

    kx: np.ndarray
    ky: np.ndarray
    phase: np.ndarray
    amplitude: np.ndarray

    @classmethod
    def random(cls, rng: np.random.Generator, waves: int = 32) -> WaveField:
        wavelength = np.exp(rng.uniform(np.log(16), np.log(2048), waves))
        angle = rng.uniform(0, 2 * np.pi, waves)
        amplitude = wavelength**0.75
        amplitude *= np.sqrt(2 / np.sum(amplitude**2))  # unit variance
        return cls(
            kx=2 * np.pi * np.cos(angle) / wavelength,
            ky=2 * np.pi * np.sin(angle) / wavelength,
            phase=rng.uniform(0, 2 * np.pi, waves),
            amplitude=amplitude,
        )

    def window(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Values on ``rows × cols``: sin(kx·x + ky·y + φ) split into a product of 1-D factors."""
        y = self.ky[None] * rows[:, None] + self.phase[None]
        x = self.kx[None] * cols[:, None]
        left = np.concatenate([np.cos(y), np.sin(y)], axis=1) * np.tile(self.amplitude, 2)
        right = np.concatenate([np.sin(x), np.cos(x)], axis=1).T
        return (left @ right).astype(np.float32)


def _scene_window(
    fields: list[WaveField], row: int, col: int, h: int, w: int, seed: int, size: int
) -> np.ndarray:
    """uint16 pixels of one window: land covers softly assigned by smooth fields, plus noise."""
    rows = np.arange(row, row + h, dtype=np.float64)
    cols = np.arange(col, col + w, dtype=np.float64)
    covers = np.stack([f.window(rows, cols) for f in fields[:-1]])
    weights = np.exp(5.0 * (covers - covers.max(0, keepdims=True)))
    weights /= weights.sum(0, keepdims=True)
    brightness = 1 + 0.15 * fields[-1].window(rows, cols)
    image = np.einsum("khw,kb->bhw", weights, SIGNATURES) * brightness[None]
    rng = np.random.default_rng([seed, row, col])
    image += 25 * rng.standard_normal(image.shape, dtype=np.float32)
    pixels = np.clip(np.rint(image), 1, 65535).astype(np.uint16)
    top, side = size // 8, max(size // 16, 1)  # the nodata block
    r0, r1 = max(top - row, 0), min(top + side - row, h)
    c0, c1 = max(top - col, 0), min(top + side - col, w)
    if r0 < r1 and c0 < c1:
        pixels[:, r0:r1, c0:c1] = NODATA
    return pixels


def write_scene(path: Path, size: int, seed: int = 0) -> Path:
    """A ``size²`` 6-band scene, written window by window (atomically); reused if present."""
    if path.exists():
        with rasterio.open(path) as src:
            if (src.height, src.width, src.count, src.tags().get("seed")) == (
                size,
                size,
                len(BAND_NAMES),
                str(seed),
            ):
                return path
    rng = np.random.default_rng(seed)
    fields = [WaveField.random(rng) for _ in range(len(SIGNATURES) + 1)]
    profile = {
        "driver": "GTiff",
        "height": size,
        "width": size,
        "count": len(BAND_NAMES),
        "dtype": "uint16",
        "crs": CRS.from_epsg(32633),
        "transform": from_origin(500_000, 5_300_000, PIXEL_SIZE, PIXEL_SIZE),
        "nodata": NODATA,
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
        "predictor": 2,
        "BIGTIFF": "IF_SAFER",
        "NUM_THREADS": "ALL_CPUS",
    }
    partial = path.with_suffix(".partial.tif")
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.Env(GDAL_CACHEMAX=64), rasterio.open(partial, "w", **profile) as dst:
        dst.descriptions = BAND_NAMES
        dst.update_tags(generator="benchmarks/inference.py", seed=str(seed))
        for row in range(0, size, WRITE_WINDOW):
            for col in range(0, size, WRITE_WINDOW):
                h, w = min(WRITE_WINDOW, size - row), min(WRITE_WINDOW, size - col)
                pixels = _scene_window(fields, row, col, h, w, seed, size)
                dst.write(pixels, window=Window(col, row, w, h))  # type: ignore[call-arg]
    os.replace(partial, path)
    return path


def scene_stats(path: Path, windows: int = 16, side: int = 256, seed: int = 0) -> BandStats:
    """Robust band statistics (1-99 % clip, mean, std) from a few random windows of the scene."""
    rng = np.random.default_rng(seed)
    info = raster_info(path)
    side = min(side, info.height, info.width)
    samples = []
    with open_raster(path) as src:
        for _ in range(windows):
            row = int(rng.integers(0, info.height - side + 1))
            col = int(rng.integers(0, info.width - side + 1))
            window = Window(col, row, side, side)  # type: ignore[call-arg]
            pixels = read_pixels(src, list(range(1, info.count + 1)), window)
            pixels = pixels.reshape(info.count, -1)
            samples.append(pixels[:, ~np.isnan(pixels).any(0)])
    pooled = np.concatenate(samples, axis=1).astype(np.float64)
    low, high = np.percentile(pooled, [1, 99], axis=1)
    clipped = np.clip(pooled, low[:, None], high[:, None])
    return BandStats(
        band_names=tuple(d or f"band_{i + 1}" for i, d in enumerate(info.descriptions)),
        low=tuple(low.tolist()),
        high=tuple(high.tolist()),
        mean=tuple(clipped.mean(1).tolist()),
        std=tuple(np.maximum(clipped.std(1), 1e-6).tolist()),
    )


# --- the student ------------------------------------------------------------------------------


@dataclass
class Student:
    """Architecture of a benchmark student (random init: speed and memory do not need training)."""

    arch: str
    encoder: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        extra = f" {json.dumps(self.arch_kwargs)}" if self.arch_kwargs else ""
        return f"{self.arch} / {self.encoder}{extra}"


def write_checkpoint(path: Path, student: Student, scene: Path, tile: int, seed: int = 0) -> Path:
    """A task checkpoint as Lightning would save it: weights, hyper-parameters, geodistill meta."""
    torch.manual_seed(seed)
    task = SegmentationTask(
        in_channels=len(BAND_NAMES),
        num_classes=len(CLASS_NAMES),
        class_names=CLASS_NAMES,
        arch=student.arch,
        encoder=student.encoder,
        arch_kwargs=student.arch_kwargs or None,
    )
    stats = scene_stats(scene)
    task.model.normalizer.set_stats(stats)
    task.band_names = list(stats.band_names)
    task.tile_size = tile
    checkpoint: dict[str, Any] = {
        "state_dict": task.state_dict(),
        "hyper_parameters": dict(task.hparams),
        "pytorch-lightning_version": L.__version__,
    }
    task.on_save_checkpoint(checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


# --- measurements -----------------------------------------------------------------------------


def device_of(accelerator: str) -> torch.device:
    """The torch device Lightning's ``accelerator`` setting runs on (one device)."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    if accelerator == "mps" or (accelerator == "auto" and torch.backends.mps.is_available()):
        return torch.device("mps")
    return torch.device("cpu")


def read_batches(
    scene: Path, predictor: Predictor, tile: int, overlap: int, size: int
) -> list[np.ndarray]:
    """The engine's own batches of ``scene`` (same grid, cut and padding), read beforehand."""
    info = raster_info(scene)
    indexes = [i + 1 for i in match_bands(info, predictor.card)]
    grid = TileGrid(info.height, info.width, tile, overlap)
    with open_raster(scene) as src:
        return [
            read_tile_batch(src, indexes, grid, row, cols).tiles
            for row, cols, _ in tile_batches(grid, size)
        ]


def time_forward(predictor: Predictor, batches: list[np.ndarray]) -> float:
    """Seconds to ``predict`` every batch once (the caller warms the predictor up first)."""
    start = time.perf_counter()
    for batch in batches:
        predictor.predict(batch)
    return time.perf_counter() - start


def time_infer(
    model: Path, scene: Path, output: Path, options: InferenceOptions, accelerator: str
) -> float:
    """Wall seconds of one whole ``infer_scenes`` call (model loading to the written COG)."""
    start = time.perf_counter()
    infer_scenes(model, [scene], output, options, {"accelerator": accelerator}, progress=False)
    return time.perf_counter() - start


def interleaved(measurements: dict[str, Callable[[], float]], repeats: int) -> dict[str, list]:
    """Seconds of each measurement, run in turn ``repeats`` times: on a shared machine, load
    that comes and goes then hits every measurement alike instead of one of them."""
    times: dict[str, list[float]] = {name: [] for name in measurements}
    for round_ in range(repeats):
        for name, measure in measurements.items():
            times[name].append(measure())
            print(f"  round {round_ + 1}: {name} {times[name][-1]:.1f} s", flush=True)
    return times


def proc_status_mib(key: str) -> float | None:
    """A memory line of ``/proc/self/status`` (Linux), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def ru_maxrss_mib() -> float:
    """``ru_maxrss`` (KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024**2 if sys.platform == "darwin" else peak / 1024


def peak_rss_mib() -> float:
    """Peak RSS of this process's own memory: ``VmHWM`` on Linux, else ``ru_maxrss``.

    After fork + exec, Linux's ``ru_maxrss`` starts at the peak of the process that spawned
    this one (the parent's address space is accounted at exec), so a child started by a
    parent holding gigabytes would report the parent's peak; ``VmHWM`` is this program's own.
    """
    return proc_status_mib("VmHWM") or ru_maxrss_mib()


def rss_mib() -> float:
    """Current RSS (``VmRSS`` on Linux, else the peak)."""
    return proc_status_mib("VmRSS") or ru_maxrss_mib()


def memory_child(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: load, warm up one batch (baseline RSS), predict the scene (peak)."""
    options = InferenceOptions(**spec["options"])
    predictor = load_predictor(spec["model"])
    device = device_of(spec["accelerator"])
    predictor.place(device)
    tile, _ = options.resolve(predictor.card)
    card = predictor.card
    mean = np.asarray(card.normalization.get("mean", [0.0] * card.num_bands), np.float32)
    std = np.asarray(card.normalization.get("std", [1.0] * card.num_bands), np.float32)
    noise = np.random.default_rng(0).standard_normal(
        (options.batch_size, card.num_bands, tile, tile), np.float32
    )
    predictor.predict(mean.reshape(1, -1, 1, 1) + std.reshape(1, -1, 1, 1) * noise)
    del noise
    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    baseline, baseline_peak = rss_mib(), peak_rss_mib()
    start = time.perf_counter()
    infer_scenes(
        predictor,
        [spec["scene"]],
        spec["output"],
        options,
        {"accelerator": spec["accelerator"]},
        progress=False,
    )
    result = {
        "seconds": time.perf_counter() - start,
        "baseline_rss_mib": baseline,
        "baseline_peak_rss_mib": baseline_peak,
        "peak_rss_mib": peak_rss_mib(),
        "ru_maxrss_mib": ru_maxrss_mib(),
    }
    if device.type == "cuda":
        result["gpu_peak_allocated_mib"] = torch.cuda.max_memory_allocated() / 1024**2
    return result


def measure_memory(spec: dict[str, Any]) -> dict[str, Any]:
    """Run :func:`memory_child` in a subprocess, so earlier allocations cannot hide its peak."""
    script = Path(__file__).resolve()
    process = subprocess.run(
        [sys.executable, str(script), "--_memory-child", json.dumps(spec)],
        capture_output=True,
        text=True,
        cwd=script.parents[1],
    )
    lines = [x for x in process.stdout.splitlines() if x.startswith(RESULT_MARKER)]
    if process.returncode != 0 or not lines:
        sys.stderr.write(process.stdout[-4000:] + process.stderr[-4000:])
        raise RuntimeError(f"memory run failed (exit {process.returncode})")
    return json.loads(lines[-1].removeprefix(RESULT_MARKER))


def fit_on_disk(size: int, folder: Path) -> tuple[int, str]:
    """``size``, or the largest multiple of 1024 whose scene (uncompressed) and outputs fit."""
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / f"scene_{size}.tif").exists():
        return size, ""
    budget = shutil.disk_usage(folder).free - SCRATCH_RESERVE
    per_pixel = 2 * len(BAND_NAMES) + 2  # uint16 bands, then the streamed map and its COG
    if size * size * per_pixel <= budget:
        return size, ""
    fitted = max(int(math.sqrt(max(budget, 0) / per_pixel)) // 1024 * 1024, 1024)
    note = (
        f"{size}² asked; {fitted}² run: {budget / 1024**3:.1f} GiB of free disk "
        f"(after a {SCRATCH_RESERVE // 1024**3} GiB reserve) holds no more"
    )
    print(note, flush=True)
    return fitted, note


# --- the report -------------------------------------------------------------------------------


@dataclass
class Row:
    measurement: str
    value: float | str
    unit: str


def megapixels(size: int) -> float:
    return size * size / 1e6


def throughput(args: argparse.Namespace, scratch: Path, rows: list[Row], raw: dict) -> None:
    """Parts 1 and 3: ``infer_scenes`` vs the bare forward, and ONNX Runtime vs PyTorch (CPU)."""
    scene = write_scene(scratch / f"scene_{args.size}.tif", args.size)
    student = Student(args.arch, args.encoder, args.arch_kwargs)
    ckpt = write_checkpoint(scratch / "student.ckpt", student, scene, args.tile)
    options = InferenceOptions(args.tile, args.overlap, args.batch_size, overwrite=True)
    device = device_of(args.accelerator)
    on = device.type
    predictor = load_predictor(ckpt)
    predictor.place(device)
    batches = read_batches(scene, predictor, args.tile, args.overlap, args.batch_size)
    tiles = sum(len(b) for b in batches)
    raw["throughput"] = {"scene_megapixels": megapixels(args.size), "tiles": tiles}
    raw["throughput"] |= {"batches": len(batches), "device": on}
    print(f"{args.size}² scene: {tiles} tiles in {len(batches)} batches", flush=True)

    def infer(model: Path, accelerator: str, folder: str) -> Callable[[], float]:
        return lambda: time_infer(model, scene, scratch / folder, options, accelerator)

    # On the CPU, "forward cpu" and "infer cpu" of part 3 are part 1's: one entry, run once.
    measurements: dict[str, Callable[[], float]] = {}
    warm_up: list[Predictor] = [predictor]
    if "throughput" in args.parts:
        measurements[f"forward {on}"] = lambda: time_forward(predictor, batches)
        measurements[f"infer {on}"] = infer(ckpt, args.accelerator, "out_torch")
    if "onnx" in args.parts:
        start = time.perf_counter()
        onnx_path = export_student(ckpt, scratch / "student.onnx", overwrite=True)
        raw["onnx_export_s"] = time.perf_counter() - start
        onnx = OnnxPredictor(onnx_path)
        cpu: Predictor = predictor
        if on != "cpu":
            cpu = load_predictor(ckpt)
            cpu.place(torch.device("cpu"))
        warm_up += [onnx, cpu]
        measurements["forward onnx cpu"] = lambda: time_forward(onnx, batches)
        measurements["infer onnx cpu"] = infer(onnx_path, "cpu", "out_onnx")
        measurements["forward cpu"] = lambda: time_forward(cpu, batches)
        measurements["infer cpu"] = infer(ckpt, "cpu", "out_torch_cpu")
    for model in warm_up:
        model.predict(batches[0])
    times = interleaved(measurements, args.repeats)
    raw["throughput"]["seconds"] = times
    rate = {name: megapixels(args.size) / min(seconds) for name, seconds in times.items()}
    if "throughput" in args.parts:
        rows += [
            Row(f"infer_scenes throughput ({on})", rate[f"infer {on}"], "MP/s"),
            Row(f"forward throughput ({on}, same tiles in memory)", rate[f"forward {on}"], "MP/s"),
            Row(
                "infer / forward", rate[f"infer {on}"] / rate[f"forward {on}"], "ratio (goal ≥ 0.9)"
            ),
        ]
    if "onnx" in args.parts:
        rows += [
            Row("ONNX export (with its parity check)", raw["onnx_export_s"], "s"),
            Row("ONNX Runtime forward (cpu)", rate["forward onnx cpu"], "MP/s"),
            Row("PyTorch forward (cpu)", rate["forward cpu"], "MP/s"),
            Row(
                "ONNX Runtime / PyTorch forward",
                rate["forward onnx cpu"] / rate["forward cpu"],
                "ratio",
            ),
            Row("infer_scenes with ONNX Runtime (cpu)", rate["infer onnx cpu"], "MP/s"),
            Row(
                "infer / forward with ONNX Runtime (cpu)",
                rate["infer onnx cpu"] / rate["forward onnx cpu"],
                "ratio",
            ),
            Row("infer_scenes with PyTorch (cpu)", rate["infer cpu"], "MP/s"),
            Row(
                "ONNX Runtime / PyTorch infer_scenes",
                rate["infer onnx cpu"] / rate["infer cpu"],
                "ratio",
            ),
        ]
    print_rows(rows)


def memory(args: argparse.Namespace, scratch: Path, rows: list[Row], raw: dict) -> None:
    """Part 2: peak RSS of whole-scene runs, each in a fresh subprocess."""
    student = Student(args.memory_arch, args.memory_encoder, args.memory_arch_kwargs)
    options = InferenceOptions(args.tile, args.overlap, args.batch_size, overwrite=True)
    ckpt = None
    results: dict[int, dict[str, Any]] = {}
    for asked in args.memory_sizes:
        size, note = fit_on_disk(asked, scratch)
        scene = write_scene(scratch / f"scene_{size}.tif", size)
        if ckpt is None:
            ckpt = write_checkpoint(scratch / "memory_student.ckpt", student, scene, args.tile)
        spec = {
            "model": str(ckpt),
            "scene": str(scene),
            "output": str(scratch / "out_memory"),
            "accelerator": args.accelerator,
            "options": asdict(options),
        }
        print(f"memory run on {size}² ...", flush=True)
        result = measure_memory(spec) | {"asked_size": asked, "note": note}
        result["growth_mib"] = result["peak_rss_mib"] - result["baseline_rss_mib"]
        result["engine_growth_mib"] = result["peak_rss_mib"] - result["baseline_peak_rss_mib"]
        results[size] = result
        rows += [
            Row(
                f"{size}²: RSS after model + warm-up batch (baseline)",
                result["baseline_rss_mib"],
                "MiB",
            ),
            Row(
                f"{size}²: peak RSS, model + warm-up batch", result["baseline_peak_rss_mib"], "MiB"
            ),
            Row(f"{size}²: peak RSS, whole scene", result["peak_rss_mib"], "MiB"),
            Row(f"{size}²: growth = peak − baseline", result["growth_mib"], "MiB (goal < 200)"),
            Row(f"{size}²: growth over the warm-up peak", result["engine_growth_mib"], "MiB"),
            Row(f"{size}²: memory run time", result["seconds"], "s"),
        ]
        if "gpu_peak_allocated_mib" in result:
            rows.append(
                Row(f"{size}²: GPU peak allocated", result["gpu_peak_allocated_mib"], "MiB")
            )
        if note:
            rows.append(Row(f"{asked}² scene", note, ""))
        print_rows(rows)
    if len(results) >= 2:
        small, large = results[min(results)], results[max(results)]
        difference = large["peak_rss_mib"] - small["peak_rss_mib"]
        rows.append(Row(f"peak RSS {max(results)}² − {min(results)}²", difference, "MiB"))
    raw["memory"] = {"student": str(student), "runs": results}


def _number(value: float) -> str:
    """Three significant digits without an exponent: 0.0972, 3.41, 322."""
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}" if value == 0 or abs(value) >= 0.001 else f"{value:.1e}"


def table(rows: list[Row]) -> str:
    lines = ["| measurement | value | unit |", "|---|---|---|"]
    for row in rows:
        value = row.value if isinstance(row.value, str) else _number(row.value)
        lines.append(f"| {row.measurement} | {value} | {row.unit} |")
    return "\n".join(lines) + "\n"


def print_rows(rows: list[Row]) -> None:
    print(table(rows), flush=True)


# --- main -------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("outputs/benchmarks/inference"))
    parser.add_argument("--quick", action="store_true", help="1024² scene, 512²/2048² memory")
    parser.add_argument("--size", type=int, help="throughput scene side (default 4096)")
    parser.add_argument(
        "--memory-sizes", type=int, nargs="+", help="memory scene sides (default 2048 16384)"
    )
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--accelerator", default="auto", help="Lightning accelerator")
    parser.add_argument(
        "--repeats", type=int, default=2, help="interleaved timed rounds; the best is reported"
    )
    parser.add_argument("--arch", default="unet")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--arch-kwargs", type=json.loads, default={})
    parser.add_argument("--memory-arch", default="pspnet")
    parser.add_argument("--memory-encoder", default="tu-mobilenetv3_small_050")
    parser.add_argument(
        "--memory-arch-kwargs",
        type=json.loads,
        default={"encoder_depth": 3, "psp_out_channels": 32},
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["throughput", "memory", "onnx"],
        choices=["throughput", "memory", "onnx"],
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch scenes and maps")
    parser.add_argument("--_memory-child", dest="memory_child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.size = args.size or (1024 if args.quick else 4096)
    args.memory_sizes = args.memory_sizes or ([512, 2048] if args.quick else [2048, 16384])
    return args


def main() -> None:
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    args = parse_args()
    if args.memory_child:
        print(RESULT_MARKER + json.dumps(memory_child(json.loads(args.memory_child))), flush=True)
        return
    start = time.perf_counter()
    scratch = args.output / "scratch"
    rows: list[Row] = []
    raw: dict[str, Any] = {}
    try:
        if {"throughput", "onnx"} & set(args.parts):
            throughput(args, scratch, rows, raw)
        if "memory" in args.parts:
            memory(args, scratch, rows, raw)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    setup = [
        f"- throughput scene: {args.size}² × {len(BAND_NAMES)} bands uint16 "
        f"({megapixels(args.size):.1f} MP; {raw.get('throughput', {}).get('tiles', '-')} tiles)",
        f"- throughput student: {Student(args.arch, args.encoder, args.arch_kwargs)}",
        f"- memory student: {raw.get('memory', {}).get('student', '-')}",
        f"- tile {args.tile}, overlap {args.overlap}, batch size {args.batch_size}, "
        f"accelerator {args.accelerator} ({device_of(args.accelerator).type})",
        f"- times: best of {args.repeats} interleaved round(s), after a warm-up batch; "
        "MP/s = scene megapixels / seconds (the same for forward and infer_scenes)",
    ]
    report = {
        "command": command(),
        "hardware": hardware(),
        "seconds": round(time.perf_counter() - start, 1),
        "config": {k: v for k, v in vars(args).items() if k != "memory_child"},
        "measurements": [asdict(r) for r in rows],
        "raw": raw,
    }
    print(write_results(args.output, report, "\n".join(setup) + "\n\n" + table(rows), 1))


if __name__ == "__main__":
    main()
