"""Whole-scene commands on real rasters: prepare -> fit -> export -> infer -> vectorize.

Each case cuts one real scene with ``geodistill prepare``, trains a small student with
``geodistill fit`` on one part of it, exports it, maps the WHOLE scene with ``geodistill infer``
and polygonises one class with ``geodistill vectorize``; the held-out part is scored against its
labels and the mapped areas are compared with the labelled ones. Every step runs the installed
console script in a subprocess, as a user would, so a failure here is a failure a user would see.

1. ``sen1floods11``: Sentinel-2 chip Spain_7370579 (13 bands int16, nodata 0, EPSG:4326,
   512x512) with ``LabelHand`` (-1 no data, 0 dry, 1 water). Train on chips of the LEFT half,
   score water on the RIGHT half; the model is exported to ONNX and inferred with ONNX Runtime.
2. ``spacenet``: solaris ``sample_geotiff.tif`` (900x900 pan, 0.5 m, EPSG:32616) with 43 building
   footprints. Train on chips of the TOP two thirds, score buildings on the BOTTOM third; the model
   is exported as a plain checkpoint.

The training budget is deliberately small (the point is that the commands work on real rasters and
the figures are honest, not state of the art): with the defaults the script takes about 8 minutes
on 2 idle CPU cores (about 5 of them training the SpaceNet student); the figures repeat exactly.

    python benchmarks/real_scenes.py --seed 0

Writes ``<output>/results.json`` and ``results.md`` (a table per case) and, per case,
``<output>/<case>/`` with the chips, the generated config, the run, the maps and the polygons.
Exits non-zero when a geodistill command failed; the failure and its message are in the results.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyogrio
import rasterio
import shapely
import yaml
from affine import Affine
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from rasterio import features
from rasterio.crs import CRS
from report import command, hardware, write_results

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"
GEODISTILL = Path(sys.executable).with_name("geodistill")
"""The console script installed beside this interpreter (``.venv/bin/geodistill``)."""

FLOOD = "sen1floods11_sample/Spain_7370579"
SPACENET = "spacenet_solaris"
IGNORE = 255
FLOOD_MODEL: dict[str, Any] = {"arch": "unet", "encoder": "resnet18"}
SPACENET_MODEL: dict[str, Any] = {"arch": "unet", "encoder": "resnet18"}


class StepFailed(Exception):
    """A geodistill command exited non-zero: a finding to report, not something to hide."""

    def __init__(self, step: str, argv: Sequence[str], returncode: int, message: str) -> None:
        super().__init__(f"{step} failed (exit {returncode}): {message}")
        self.step, self.argv, self.returncode, self.message = step, list(argv), returncode, message

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "command": " ".join(self.argv),
            "exit_code": self.returncode,
            "message": self.message,
        }


@dataclass
class Steps:
    """Runs geodistill subcommands in subprocesses, timing each and logging their output."""

    log: Path
    seconds: dict[str, float] = field(default_factory=dict)
    probes: list[dict[str, Any]] = field(default_factory=list)

    def _run(self, name: str, args: Sequence[str | Path]) -> tuple[list[str], int, str, str]:
        argv = [str(GEODISTILL), *map(str, args)]
        start = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, check=False)
        self.seconds[name] = round(time.perf_counter() - start, 1)
        with self.log.open("a") as log:
            log.write(f"$ {' '.join(argv)}\n{done.stdout}{done.stderr}[exit {done.returncode}]\n\n")
        return argv, done.returncode, done.stdout, done.stderr

    def __call__(self, name: str, *args: str | Path) -> str:
        """Run one step; a non-zero exit raises :class:`StepFailed` with the error lines."""
        argv, code, stdout, stderr = self._run(name, args)
        if code != 0:
            raise StepFailed(name, argv, code, _error_lines(stderr or stdout))
        return stdout

    def probe(self, name: str, why: str, *args: str | Path) -> None:
        """Try the raw input as a user first would; record whether geodistill accepted it."""
        argv, code, stdout, stderr = self._run(name, args)
        self.seconds.pop(name)
        self.probes.append(
            {
                "probe": name,
                "why": why,
                "command": " ".join(argv),
                "exit_code": code,
                "message": _error_lines(stderr or stdout) if code else "accepted",
            }
        )


def _error_lines(text: str, lines: int = 3) -> str:
    """The last lines of a command's output: geodistill's one-line error is the last one."""
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


# ------------------------------------------------------------------------------------------------
# geometry and scores, computed here independently of geodistill


def equal_area_crs(crs: CRS, transform: Affine, width: int, height: int) -> ProjCRS:
    """Lambert azimuthal equal-area centred on the scene: the definition vectorize documents."""
    x, y = transform * (width / 2, height / 2)
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(x, y)
    return ProjCRS.from_proj4(
        f"+proj=laea +lat_0={lat:.8f} +lon_0={lon:.8f} +datum=WGS84 +units=m +no_defs"
    )


def pixel_areas(path: Path) -> np.ndarray:
    """Area (m²) of every pixel, from its corners projected to the scene's equal-area CRS.

    A pixel route to areas, independent of vectorize's polygon route, to check its km² figures.
    """
    with rasterio.open(path) as src:
        crs, transform, width, height = src.crs, src.transform, src.width, src.height
    cols, rows = np.meshgrid(np.arange(width + 1), np.arange(height + 1))
    xs, ys = transform * (cols, rows)
    laea = equal_area_crs(crs, transform, width, height)
    x, y = Transformer.from_crs(crs, laea, always_xy=True).transform(xs, ys)
    corners = [(x[:-1, :-1], y[:-1, :-1]), (x[:-1, 1:], y[:-1, 1:])]
    corners += [(x[1:, 1:], y[1:, 1:]), (x[1:, :-1], y[1:, :-1])]
    edges = zip(corners, corners[1:] + corners[:1], strict=True)
    twice = sum(xa * yb - xb * ya for (xa, ya), (xb, yb) in edges)
    return 0.5 * np.abs(twice)


def polygons_pixel_km2(polygons: Path, raster: Path) -> float:
    """km² of the pixels that vectorize's polygons cover (they follow pixel edges), by the pixel
    route: checks vectorize's own km² for the very same polygons."""
    with rasterio.open(raster) as src:
        shape, transform = src.shape, src.transform
    frame = gpd.read_file(polygons)
    if frame.empty:
        return 0.0
    inside = features.geometry_mask(frame.geometry, shape, transform, invert=True)
    return float(pixel_areas(raster)[inside].sum() / 1e6)


def relative_gap(a: float, b: float) -> float:
    return abs(a - b) / b if b else float("nan")


def scores(
    pred: np.ndarray, label: np.ndarray, valid: np.ndarray, positive: int
) -> dict[str, float]:
    """Pixel scores of the ``positive`` class (and the two-class mIoU/OA) over ``valid``."""
    p, t = pred[valid] == positive, label[valid] == positive
    tp, fp = int((p & t).sum()), int((p & ~t).sum())
    fn, tn = int((~p & t).sum()), int((~p & ~t).sum())

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    iou, other = ratio(tp, tp + fp + fn), ratio(tn, tn + fp + fn)
    return {
        "IoU": iou,
        "F1": ratio(2 * tp, 2 * tp + fp + fn),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "other_IoU": other,
        "mIoU": (iou + other) / 2,
        "OA": ratio(tp + tn, p.size),
        "pixels": int(p.size),
    }


def read_band(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def check_georeference(scene: Path, rasters: Sequence[Path], polygons: Sequence[Path]) -> str:
    """Every output keeps the scene's CRS (and rasters its size and transform), or fail loudly."""
    with rasterio.open(scene) as ref:
        crs, transform, shape = ref.crs, ref.transform, ref.shape
    exact = True
    for path in rasters:
        with rasterio.open(path) as out:
            if out.crs != crs or out.shape != shape:
                raise AssertionError(f"{path}: CRS/size {out.crs}/{out.shape} != {crs}/{shape}")
            if not out.transform.almost_equals(transform, precision=1e-12):
                raise AssertionError(f"{path}: transform {out.transform} != {transform}")
            exact &= out.transform == transform
    for path in polygons:
        written = CRS.from_user_input(pyogrio.read_info(path)["crs"])
        if written != crs:
            raise AssertionError(f"{path}: polygons in {written}, scene in {crs}")
    return f"{crs.to_string()}, transform {'identical' if exact else 'equal within 1e-12'}"


def best_checkpoint(run: Path) -> Path:
    found = sorted((run / "checkpoints").glob("best-*.ckpt"))
    if len(found) != 1:
        raise RuntimeError(f"expected one best checkpoint in {run / 'checkpoints'}, got {found}")
    return found[0]


def fit_config(
    work: Path,
    classes: list[str],
    train_images: list[str],
    model: dict[str, Any],
    *,
    epochs: int,
    patch: int,
    seed: int,
) -> Path:
    """The YAML a user would write for ``geodistill fit``; val is a seeded 20 % of the chips."""
    run = work / "run"
    config = {
        "seed_everything": seed,
        "trainer": {
            "max_epochs": epochs,
            "accelerator": "auto",
            "devices": 1,
            "default_root_dir": str(run),
            "enable_progress_bar": False,
            "log_every_n_steps": 5,
            "logger": [
                {
                    "class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": str(run), "name": "logs"},
                }
            ],
        },
        "checkpoint": {"dirpath": str(run / "checkpoints")},
        "model": {
            "class_path": "geodistill.tasks.SegmentationTask",
            "init_args": {
                **model,
                "loss": {"ce": 1.0, "dice": 1.0},
                "lr": 0.002,
                "schedule": "poly",
                "warmup_fraction": 0.05,
            },
        },
        "data": {
            "class_path": "geodistill.data.GeoSegDataModule",
            "init_args": {
                "classes": classes,
                "fine": {
                    "train": {"images": train_images, "labels": str(work / "chips" / "labels")},
                    "val_fraction": 0.2,
                },
                "patch_size": patch,
                "crops_per_image": 4,
                "batch_size": 8,
                "eval_batch_size": 4,
                "cache": True,
                "seed": seed,
                "manifest": str(work / "splits.json"),
            },
        },
    }
    path = work / "fit.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def chips_where(work: Path, keep: Callable[[int, int, int], bool]) -> list[str]:
    """Image chips of the manifest whose (row, col, chip size) satisfy ``keep``."""
    manifest = json.loads((work / "chips" / "manifest.json").read_text())
    size = manifest["chip_size"]
    return [
        str(work / "chips" / c["image"])
        for c in manifest["chips"]
        if keep(c["row"], c["col"], size)
    ]


def summary_class(path: Path, name: str) -> dict[str, Any]:
    """One class's polygons and km² from a vectorize ``*_summary.json``."""
    summary = json.loads(path.read_text())
    return next(c for c in summary["classes"] if c["class_name"] == name)


# ------------------------------------------------------------------------------------------------
# case 1: Sen1Floods11, water


def flood_case(data: Path, work: Path, steps: Steps, args: argparse.Namespace) -> dict[str, Any]:
    """Left half trains, right half scores; ONNX model; water area predicted vs labelled."""
    scene = data / f"{FLOOD}_S2Hand.tif"
    hand = data / f"{FLOOD}_LabelHand.tif"
    classes = ["dry", "water"]
    steps.probe(
        "prepare_raw_labelhand",
        "LabelHand marks no data with -1 but declares no nodata value",
        *("prepare", scene, "--label", hand, "--classes", ",".join(classes)),
        *("--chip-size", args.flood_chip, "-o", work / "probe_chips"),
    )
    # LabelHand as a class map: -1 -> 255 (declared nodata = ignore), class names in the tags,
    # so prepare ignores the unlabelled pixels and vectorize names the classes.
    label_map = work / "label_classes.tif"
    with rasterio.open(hand) as src:
        raw, profile = src.read(1), src.profile
    labels = np.where(raw < 0, IGNORE, raw).astype(np.uint8)
    profile.update(dtype="uint8", nodata=IGNORE, compress="deflate")
    with rasterio.open(label_map, "w", **profile) as dst:
        dst.write(labels, 1)
        dst.update_tags(class_names=json.dumps(classes))

    chip = args.flood_chip
    steps(
        "prepare",
        *("prepare", scene, "--label", label_map, "--classes", ",".join(classes)),
        *("--chip-size", chip, "-o", work / "chips"),
    )
    width = read_band(scene).shape[1]
    half = width // 2
    train = chips_where(work, lambda row, col, size: col + size <= half)
    model = FLOOD_MODEL
    config = fit_config(
        work, classes, train, model, epochs=args.flood_epochs, patch=chip, seed=args.seed
    )
    steps("fit", "fit", "--config", config)
    onnx = work / "model.onnx"
    steps("export_onnx", "export", best_checkpoint(work / "run"), "-o", onnx)
    steps("infer_onnx", "infer", onnx, scene, "-o", work / "maps", "--confidence", "--quiet")
    classes_tif = work / "maps" / f"{scene.stem}_classes.tif"
    confidence_tif = work / "maps" / f"{scene.stem}_confidence.tif"
    predicted, labelled = work / "water.gpkg", work / "label_water.gpkg"
    min_area = str(args.flood_min_area)
    vector_args = ("--classes", "water", "--min-area", min_area)
    steps("vectorize", "vectorize", classes_tif, "-o", predicted, *vector_args)
    steps("vectorize_label", "vectorize", label_map, "-o", labelled, *vector_args)
    georeference = check_georeference(scene, [classes_tif, confidence_tif], [predicted])

    pred = read_band(classes_tif)
    scored = (labels != IGNORE) & (pred != IGNORE)
    right = np.zeros_like(scored)
    right[:, half:] = True
    areas = pixel_areas(classes_tif)
    water = 1
    pred_poly = summary_class(predicted.with_name("water_summary.json"), "water")
    label_poly = summary_class(labelled.with_name("label_water_summary.json"), "water")
    area_check = max(
        relative_gap(pred_poly["area_km2"], polygons_pixel_km2(predicted, classes_tif)),
        relative_gap(label_poly["area_km2"], polygons_pixel_km2(labelled, label_map)),
    )
    return {
        "scene": str(scene.resolve()),
        "train_chips": len(train),
        "chip_size": chip,
        "epochs": args.flood_epochs,
        "model": model,
        "held_out": scores(pred, labels, scored & right, water),
        "train_region": scores(pred, labels, scored & ~right, water),
        "min_area_m2": args.flood_min_area,
        "polygons": {"predicted": pred_poly["polygons"], "labelled": label_poly["polygons"]},
        "area_km2": {
            "polygons_predicted": pred_poly["area_km2"],
            "polygons_labelled": label_poly["area_km2"],
            "pixels_predicted": float(areas[pred == water].sum() / 1e6),
            "pixels_labelled": float(areas[labels == water].sum() / 1e6),
            "held_out_pixels_predicted": float(areas[(pred == water) & right].sum() / 1e6),
            "held_out_pixels_labelled": float(areas[(labels == water) & right].sum() / 1e6),
            "unlabelled_pixels": int((labels == IGNORE).sum()),
        },
        "vectorize_area_vs_pixel_route": area_check,
        "georeference": georeference,
    }


def flood_table(r: dict[str, Any]) -> list[tuple[str, str]]:
    h, t, a = r["held_out"], r["train_region"], r["area_km2"]
    m = r["min_area_m2"]
    return [
        ("water IoU, held-out right half", f"{100 * h['IoU']:.2f} %"),
        ("water F1 / precision / recall", _triple(h)),
        ("dry IoU / mIoU / OA", f"{_pct(h['other_IoU'])} / {_pct(h['mIoU'])} / {_pct(h['OA'])} %"),
        ("pixels scored (LabelHand -1 excluded)", f"{h['pixels']}"),
        ("water IoU / F1, left half (training region)", f"{_pct(t['IoU'])} / {_pct(t['F1'])} %"),
        (
            f"water polygons ≥ {m:g} m², predicted / labelled",
            f"{r['polygons']['predicted']} / {r['polygons']['labelled']}",
        ),
        (
            f"water area of polygons ≥ {m:g} m², km² predicted / labelled (vectorize)",
            f"{a['polygons_predicted']:.4f} / {a['polygons_labelled']:.4f}",
        ),
        (
            "water area of all pixels, km² predicted / labelled (pixel check)",
            f"{a['pixels_predicted']:.4f} / {a['pixels_labelled']:.4f}",
        ),
        (
            "water area, held-out right half, km² predicted / labelled",
            f"{a['held_out_pixels_predicted']:.4f} / {a['held_out_pixels_labelled']:.4f}",
        ),
        ("vectorize km² vs pixel route, same polygons (largest gap)", _gap(r)),
        ("outputs keep the scene's grid (asserted)", r["georeference"]),
    ]


# ------------------------------------------------------------------------------------------------
# case 2: SpaceNet buildings


def spacenet_case(data: Path, work: Path, steps: Steps, args: argparse.Namespace) -> dict[str, Any]:
    """Top two thirds train, bottom third scores; plain checkpoint; footprints and areas."""
    scene = data / SPACENET / "sample_geotiff.tif"
    geojson = data / SPACENET / "geotiff_labels.geojson"
    classes = ["background", "building"]
    chip = args.spacenet_chip
    steps.probe(
        "prepare_raw_geojson",
        "every footprint has building='yes'; no field names the class 'building'",
        *("prepare", scene, "--vector", geojson, "--class-field", "building"),
        *("--classes", ",".join(classes), "--chip-size", chip, "-o", work / "probe_chips"),
    )
    footprints = gpd.read_file(geojson)[["geometry"]]
    footprints["class"] = "building"
    vector = work / "buildings.gpkg"
    footprints.to_file(vector, driver="GPKG", engine="pyogrio")

    steps(
        "prepare",
        *("prepare", scene, "--vector", vector, "--class-field", "class"),
        *("--classes", ",".join(classes), "--chip-size", chip, "-o", work / "chips"),
    )
    with rasterio.open(scene) as src:
        crs, transform, height, width = src.crs, src.transform, src.height, src.width
    split = round(height * 2 / 3)
    train = chips_where(work, lambda row, col, size: row + size <= split and col + size <= width)
    model = SPACENET_MODEL
    config = fit_config(
        work, classes, train, model, epochs=args.spacenet_epochs, patch=chip, seed=args.seed
    )
    steps("fit", "fit", "--config", config)
    student = work / "student.ckpt"
    steps("export_ckpt", "export", best_checkpoint(work / "run"), "-o", student)
    steps("infer_ckpt", "infer", student, scene, "-o", work / "maps", "--confidence", "--quiet")
    classes_tif = work / "maps" / f"{scene.stem}_classes.tif"
    confidence_tif = work / "maps" / f"{scene.stem}_confidence.tif"
    predicted = work / "buildings_predicted.gpkg"
    min_area = str(args.spacenet_min_area)
    steps(
        "vectorize",
        *("vectorize", classes_tif, "-o", predicted, "--classes", "building"),
        *("--min-area", min_area),
    )
    georeference = check_georeference(scene, [classes_tif, confidence_tif], [predicted])

    # Reference mask: the footprints burnt by pixel centre (prepare's rule), checked against the
    # label chips prepare wrote, so the score does not silently trust prepare.
    truth = features.rasterize(
        ((g, 1) for g in footprints.geometry), out_shape=(height, width), transform=transform
    ).astype(np.uint8)
    agreement = prepared_label_agreement(work, truth)
    pred = read_band(classes_tif)
    valid = pred != IGNORE
    bottom = np.zeros_like(valid)
    bottom[split:] = True
    areas = pixel_areas(classes_tif)

    laea = equal_area_crs(crs, transform, width, height)
    y_split = (transform * (0, split))[1]
    region = shapely.box(*(transform * (0, height)), *(transform * (width, split)))
    polygons = gpd.read_file(predicted)
    vectorized = summary_class(predicted.with_name(f"{predicted.stem}_summary.json"), "building")
    labelled_bottom = footprints[footprints.centroid.y < y_split]
    predicted_bottom = polygons[polygons.centroid.y < y_split]
    matched = match_polygons(labelled_bottom.geometry, predicted_bottom.geometry, args.match_iou)
    return {
        "scene": str(scene.resolve()),
        "train_chips": len(train),
        "chip_size": chip,
        "epochs": args.spacenet_epochs,
        "model": model,
        "prepare_label_agreement": agreement,
        "held_out": scores(pred, truth, valid & bottom, 1),
        "train_region": scores(pred, truth, valid & ~bottom, 1),
        "min_area_m2": args.spacenet_min_area,
        "footprints_held_out": {
            "labelled": len(labelled_bottom),
            "predicted": len(predicted_bottom),
            "matched": matched,
            "match_iou": args.match_iou,
        },
        "polygons_predicted_total": len(polygons),
        "footprints_total": len(footprints),
        "area_m2": {
            "predicted": float(polygons.to_crs(laea).area.sum()),
            "labelled": float(footprints.to_crs(laea).area.sum()),
            "held_out_predicted": float(areas[(pred == 1) & bottom].sum()),
            "held_out_labelled": float(footprints.clip(region).to_crs(laea).area.sum()),
            "pixels_predicted": float(areas[pred == 1].sum()),
        },
        "vectorize_area_vs_pixel_route": relative_gap(
            vectorized["area_km2"], polygons_pixel_km2(predicted, classes_tif)
        ),
        "georeference": georeference,
    }


def prepared_label_agreement(work: Path, truth: np.ndarray) -> float:
    """Fraction of scene pixels where prepare's label chips equal the reference rasterisation."""
    manifest = json.loads((work / "chips" / "manifest.json").read_text())
    mosaic = np.full(truth.shape, IGNORE, dtype=np.uint8)
    for c in manifest["chips"]:
        part = read_band(work / "chips" / c["label"])
        rows = min(part.shape[0], truth.shape[0] - c["row"])
        cols = min(part.shape[1], truth.shape[1] - c["col"])
        mosaic[c["row"] : c["row"] + rows, c["col"] : c["col"] + cols] = part[:rows, :cols]
    return float((mosaic == truth).mean())


def match_polygons(labelled: gpd.GeoSeries, predicted: gpd.GeoSeries, threshold: float) -> int:
    """Greedy one-to-one matches with IoU ≥ ``threshold`` (the SpaceNet footprint rule)."""
    pairs = []
    for i, truth in enumerate(labelled):
        for j, guess in enumerate(predicted):
            union = truth.union(guess).area
            if union > 0 and truth.intersects(guess):
                pairs.append((truth.intersection(guess).area / union, i, j))
    used_truth, used_guess, matched = set(), set(), 0
    for iou, i, j in sorted(pairs, reverse=True):
        if iou >= threshold and i not in used_truth and j not in used_guess:
            used_truth.add(i)
            used_guess.add(j)
            matched += 1
    return matched


def spacenet_table(r: dict[str, Any]) -> list[tuple[str, str]]:
    h, t, f, a = r["held_out"], r["train_region"], r["footprints_held_out"], r["area_m2"]
    m = r["min_area_m2"]
    return [
        ("building IoU, held-out bottom third", f"{100 * h['IoU']:.2f} %"),
        ("building F1 / precision / recall", _triple(h)),
        (
            "background IoU / mIoU / OA",
            f"{_pct(h['other_IoU'])} / {_pct(h['mIoU'])} / {_pct(h['OA'])} %",
        ),
        (
            "building IoU / F1, top two thirds (training region)",
            f"{_pct(t['IoU'])} / {_pct(t['F1'])} %",
        ),
        (
            f"footprints in bottom third (by centroid): labelled / predicted (≥ {m:g} m²)",
            f"{f['labelled']} / {f['predicted']}",
        ),
        (f"of which matched one-to-one at IoU ≥ {f['match_iou']:g}", f"{f['matched']}"),
        (
            "polygons in the whole image: labelled / predicted",
            f"{r['footprints_total']} / {r['polygons_predicted_total']}",
        ),
        (
            "building area, whole image, m² predicted (polygons) / labelled (GeoJSON)",
            f"{a['predicted']:.0f} / {a['labelled']:.0f}",
        ),
        (
            "building area, bottom third, m² predicted (pixels) / labelled (GeoJSON clipped)",
            f"{a['held_out_predicted']:.0f} / {a['held_out_labelled']:.0f}",
        ),
        (
            "prepare's label chips = reference rasterisation",
            f"{100 * r['prepare_label_agreement']:.3f} % of pixels",
        ),
        ("vectorize km² vs pixel route, same polygons (largest gap)", _gap(r)),
        ("outputs keep the scene's grid (asserted)", r["georeference"]),
    ]


# ------------------------------------------------------------------------------------------------
# report


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.2f}"


def _triple(s: dict[str, float]) -> str:
    return f"{_pct(s['F1'])} / {_pct(s['precision'])} / {_pct(s['recall'])} %"


def _gap(r: dict[str, Any]) -> str:
    return f"{r['vectorize_area_vs_pixel_route']:.1e} (relative)"


CASES: dict[str, tuple[str, Callable[..., dict[str, Any]], Callable[..., list]]] = {
    "sen1floods11": ("Sen1Floods11 Spain_7370579: water, ONNX model", flood_case, flood_table),
    "spacenet": (
        "SpaceNet solaris sample: buildings, plain checkpoint",
        spacenet_case,
        spacenet_table,
    ),
}


def case_markdown(title: str, result: dict[str, Any], rows: list[tuple[str, str]]) -> str:
    lines = [f"### {title}", ""]
    if "train_chips" in result:
        lines += [
            f"{result['model']['arch']}/{result['model']['encoder']}, {result['epochs']} epochs on "
            f"{result['train_chips']} chips of {result['chip_size']} px (20 % of them for "
            "validation), seeded.",
            "",
        ]
    lines += ["| quantity | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    times = " · ".join(f"{k} {v:.0f} s" for k, v in result["seconds"].items())
    lines += ["", f"Step times: {times}", ""]
    for probe in result["probes"]:
        outcome = "accepted" if probe["exit_code"] == 0 else f"refused: `{probe['message']}`"
        lines.append(f"- Raw input probe `{probe['probe']}` ({probe['why']}): {outcome}")
    if "failure" in result:
        f = result["failure"]
        lines.append(f"- **FAILED** at `{f['step']}` (exit {f['exit_code']}): `{f['message']}`")
    return "\n".join(lines) + "\n"


def git_state() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT)
        return done.stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no", "src")
    return git("rev-parse", "--short", "HEAD") + (" + uncommitted changes in src/" if dirty else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--output", type=Path, default=Path("outputs/benchmarks/real_scenes"))
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flood-epochs", type=int, default=30)
    parser.add_argument("--flood-chip", type=int, default=64)
    parser.add_argument("--flood-min-area", type=float, default=1000.0, help="m²")
    parser.add_argument("--spacenet-epochs", type=int, default=80)
    parser.add_argument("--spacenet-chip", type=int, default=128)
    parser.add_argument("--spacenet-min-area", type=float, default=10.0, help="m²")
    parser.add_argument("--match-iou", type=float, default=0.5)
    args = parser.parse_args()
    if not GEODISTILL.exists():
        parser.error(f"no geodistill console script beside {sys.executable}")
    data = args.data.resolve()
    output = args.output.resolve()

    start = time.perf_counter()
    load_before = os.getloadavg()
    results: dict[str, Any] = {}
    markdown: list[str] = []
    for name in args.cases:
        title, run_case, table = CASES[name]
        work = output / name
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        steps = Steps(log=work / "commands.log")
        try:
            result = run_case(data, work, steps, args)
            rows = table(result)
        except StepFailed as failure:
            result, rows = {"failure": failure.as_dict()}, []
        result |= {"seconds": steps.seconds, "probes": steps.probes}
        results[name] = result
        markdown.append(case_markdown(title, result, rows))
        print(markdown[-1])

    seconds = round(time.perf_counter() - start, 1)
    load_after = os.getloadavg()
    report = {
        "command": command(),
        "hardware": hardware(),
        "seconds": seconds,
        "geodistill": git_state(),
        "load_average_1_5_15": {"before": load_before, "after": load_after},
        "arguments": {k: str(v) for k, v in vars(args).items()},
        "cases": results,
    }
    header = (
        f"geodistill {report['geodistill']}; load average before {load_before[0]:.2f}, "
        f"after {load_after[0]:.2f} (1 min).\n\n"
    )
    print(write_results(output, report, header + "\n".join(markdown), seeds=1))
    return 1 if any("failure" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
