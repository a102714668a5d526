"""Distilling a third-party ONNX model into a much smaller student, on real Sentinel-2 data.

Teacher: ukis-csmask's cloud / cloud-shadow U-Net (EfficientNet-B4 encoder, Sentinel-2 Level-1C,
6 bands), the ONNX file the package ships (``ukis_csmask/model_6b_l1c.onnx`` and its ``.json``:
band names, mean/std in reflectance, tile size 256), used through geodistill's ``onnx`` teacher
kind: bands B2, B3, B4, B8, B11, B12 (blue, green, red, nir, swir16, swir22), ``scale`` 1e-4
(digital numbers = reflectance × 10 000), mean/std from the ``.json``, classes clear / cloud /
shadow, logits ``output``, and the outputs of decoder blocks 0, 1, 2 and 4 exposed as features.

Data: the Sen1Floods11 chip ``Spain_7370579_S2Hand.tif`` (13 bands, int16, 512², EPSG:4326).

Protocol:

1. the teacher's class map over the chip, through the geodistill :class:`Teacher` on the four
   256² tiles of the chip, is the reference;
2. a small student (U-Net on a MobileNetV3-small encoder, the teacher's 6 bands; ``--student``
   picks one or more from ``STUDENTS``, e.g. the default decoder width and a half-width one, all
   trained, exported and timed in the same run) is trained on
   the LEFT half (random 256² crops, flips/rotations/spectral jitter) with (a) the teacher's hard
   labels only (:class:`SegmentationTask`) or (b) KTDA (:class:`KnowledgeTransfer` in the
   task: the same hard labels, the student's encoder levels and decoder output aligned with the
   teacher's decoder features, ``prediction_weight`` on the teacher's logits, teacher in the
   loop);
3. agreement with the teacher (mIoU, per-class IoU, OA) is scored on the RIGHT half (predicted on
   its own) and, as a check of the fit, on the left half;
4. each student's first KTDA run (its first hard-label run when no KTDA is trained) is
   exported (``geodistill export`` to ``.onnx``), and the teacher and the students are timed in
   ONNX Runtime on the same four tiles, with the same session options, in turn over interleaved
   rounds (MP/s), with parameter counts and file sizes.

This measures agreement with a third-party model on one 512² chip, not accuracy against ground
truth. csmask expects ~30 m data; this chip is at 10 m. See ``docs/benchmarks.md``.

    python benchmarks/onnx_teacher.py --threads 1   # 3 seeds, ~19 min on a shared 2-core CPU
    python benchmarks/onnx_teacher.py --quick       # 1 seed, 3 epochs: a smoke run (~2.5 min)
    # two students, KTDA only, 3 seeds (~40 min on a 2-core CPU loaded by other jobs)
    python benchmarks/onnx_teacher.py --threads 1 --student mnv3s-d128 mnv3s-d64 --variants ktda

Needs ``pip install ukis-csmask`` (the teacher's file; also the ``examples`` extra); not part
of the test suite. Writes ``<output>/results.json`` and ``<output>/results.md``.
"""

from __future__ import annotations

import argparse
import importlib.resources
import importlib.util
import json
import shutil
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import rasterio
import torch
from onnx_speed import interleaved_throughput, onnx_size, session
from rasterio.windows import Window
from report import command, hardware, write_results

from geodistill.data import Domain, GeoSegDataModule, Source
from geodistill.data.raster import open_raster, read_pixels
from geodistill.data.tiling import tile_origins
from geodistill.errors import GeodistillError
from geodistill.export import export_student
from geodistill.methods import KnowledgeTransfer
from geodistill.metrics import SegmentationMetrics
from geodistill.models.teachers import Teacher, build_teacher
from geodistill.tasks import SegmentationTask

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sen1floods11_sample"
SCENE = "Spain_7370579_S2Hand.tif"
WATER = "Spain_7370579_LabelHand.tif"
MODEL = "model_6b_l1c"
CSMASK_BANDS = ["blue", "green", "red", "nir", "swir16", "swir22"]
TEACHER_BANDS = ["B2", "B3", "B4", "B8", "B11", "B12"]
"""The chip's bands holding csmask's inputs, in csmask's order."""
CLASSES = ["clear", "cloud", "shadow"]
IGNORE = 255

DECODER_BLOCKS = [0, 1, 2, 4]
"""Teacher decoder blocks whose outputs are distilled: strides 16, 8, 4 and 1 of a 256² tile."""
STUDENT_LEVELS = ["encoder.-2", "encoder.-3", "encoder.-4", "decoder"]
"""Student levels at the same strides (16, 8, 4 and the decoder output at 1), in that order."""

TRAINING: dict[str, Any] = {"loss": {"ce": 1.0, "dice": 0.5}, "lr": 2e-3}
"""Loss and learning rate, the same for every student."""

STUDENTS: dict[str, dict[str, Any]] = {
    "mnv3s-d128": {
        "arch": "unet",
        "encoder": "tu-mobilenetv3_small_100",
        "arch_kwargs": {"decoder_channels": [128, 64, 32, 16, 16]},
    },
    "mnv3s-d64": {
        "arch": "unet",
        "encoder": "tu-mobilenetv3_small_100",
        "arch_kwargs": {"decoder_channels": [64, 32, 16, 8, 8]},
    },
}
"""Students ``--student`` chooses from (random init): the same MobileNetV3-small encoder with the
U-Net decoder at full width (the default) or at half width (lighter at full resolution, where
most of a U-Net decoder's cost is)."""
VARIANTS = ("labels", "ktda")


def decoder_tensor(block: int) -> str:
    """Name of the output of decoder block ``block`` in csmask's graph (smp U-Net export)."""
    return f"/model/decoder/blocks.{block}/conv2/conv2.2/Relu_output_0"


def csmask_files() -> tuple[Path, dict[str, Any]]:
    """The teacher's ONNX file and its metadata, from the installed ukis-csmask package."""
    if importlib.util.find_spec("ukis_csmask") is None:
        raise SystemExit(
            "benchmarks/onnx_teacher.py: the teacher is the ONNX model shipped by ukis-csmask, "
            "which is not installed: pip install ukis-csmask (or 'geodistill[examples]')"
        )
    root = importlib.resources.files("ukis_csmask")
    path = Path(str(root / f"{MODEL}.onnx"))
    meta = json.loads((root / f"{MODEL}.json").read_text())
    names = meta["data"]["dataset_statistics"]["band_names"]
    if names != CSMASK_BANDS:
        raise SystemExit(f"{path}: csmask's bands are {names}, this benchmark maps {CSMASK_BANDS}")
    return path, meta


def teacher_spec(path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    mean, std = meta["data"]["dataset_statistics"]["img"]
    return {
        "kind": "onnx",
        "path": str(path),
        "layers": [decoder_tensor(b) for b in DECODER_BLOCKS],
        "bands": TEACHER_BANDS,
        "scale": 1e-4,
        "mean": mean,
        "std": std,
        "class_names": CLASSES,
        "options": {"logits": "output"},
    }


# --- the reference ------------------------------------------------------------------------------


def read_scene(path: Path) -> tuple[np.ndarray, list[str]]:
    """All bands as float32 with NaN where the file says nodata, and the band names."""
    with open_raster(path) as src:
        image = read_pixels(src, list(range(1, src.count + 1)))
        names = [d or f"band_{i + 1}" for i, d in enumerate(src.descriptions)]
    return image, names


def tiles_of(height: int, width: int, size: int) -> list[tuple[int, int]]:
    return [
        (r, c) for r in tile_origins(height, size, size) for c in tile_origins(width, size, size)
    ]


def teacher_map(teacher: Teacher, image: np.ndarray, size: int) -> np.ndarray:
    """The teacher's class per pixel, tile by tile (``size``², the last tiles flush with the
    edge), through the geodistill teacher (band mapping, normalisation, ONNX Runtime)."""
    height, width = image.shape[1:]
    origins = tiles_of(height, width, size)
    batch = torch.from_numpy(np.stack([image[:, r : r + size, c : c + size] for r, c in origins]))
    labels = teacher(batch).logits.argmax(1).numpy().astype(np.uint8)
    result = np.full((height, width), IGNORE, np.uint8)
    for (r, c), tile in zip(origins, labels, strict=True):
        result[r : r + size, c : c + size] = tile
    result[np.isnan(image).any(0)] = IGNORE
    return result


def describe_teacher(
    reference: np.ndarray, scene: Path, water_path: Path, csmask_path: Path, meta: dict[str, Any]
) -> dict[str, Any]:
    """What the teacher predicts on this flood chip: class shares, how it labels the mapped water
    (Sen1Floods11 LabelHand), and how much its map depends on tiling (csmask's own predictor,
    tiles overlapping by 20 % with smooth blending, vs the four plain tiles)."""
    half = reference.shape[1] // 2
    shares = {
        part: {n: float((ref == k).mean()) for k, n in enumerate(CLASSES)}
        for part, ref in (
            ("chip", reference),
            ("left", reference[:, :half]),
            ("right", reference[:, half:]),
        )
    }
    with rasterio.open(water_path) as src:
        water = src.read(1)
    labelled = water >= 0
    on_water = {n: float((reference[water == 1] == k).mean()) for k, n in enumerate(CLASSES)}
    water_in = {
        n: float((water[(reference == k) & labelled] == 1).mean()) for k, n in enumerate(CLASSES)
    }
    from ukis_csmask.mask import CSmask

    with rasterio.open(scene) as src:
        indexes = [src.descriptions.index(b) + 1 for b in TEACHER_BANDS]
        reflectance = np.moveaxis(src.read(indexes).astype(np.float32) * 1e-4, 0, -1)
    own = CSmask(
        reflectance,
        CSMASK_BANDS,
        product_level="l1c",
        intra_op_num_threads=torch.get_num_threads(),
        providers=["CPUExecutionProvider"],
    ).csm[..., 0]
    return {
        "class_shares": shares,
        "water_pixels_labelled_as": on_water,
        "share_of_water_in_each_teacher_class": water_in,
        "water_share_of_chip": float((water == 1).mean()),
        "csmask_blended_vs_plain_tiles_agreement": float((own == reference).mean()),
        "csmask_blended_class_shares": {n: float((own == k).mean()) for k, n in enumerate(CLASSES)},
        "csmask_version": meta["model"]["version"],
    }


# --- data ---------------------------------------------------------------------------------------


def write_half(
    scene: Path, reference: np.ndarray, folder: Path, cols: tuple[int, int]
) -> tuple[Path, Path]:
    """The chip's columns ``cols`` as ``folder/images/chip.tif`` (all bands, as stored) and the
    teacher's labels there as ``folder/labels/chip.tif``."""
    with rasterio.open(scene) as src:
        window = Window(cols[0], 0, cols[1] - cols[0], src.height)
        pixels = src.read(window=window)
        profile = src.profile | {
            "width": window.width,
            "transform": src.window_transform(window),
            "tiled": False,
        }
        descriptions = src.descriptions
    image = folder / "images" / "chip.tif"
    labels = folder / "labels" / "chip.tif"
    for path in (image, labels):
        path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(image, "w", **profile) as dst:
        dst.write(pixels)
        dst.descriptions = descriptions
    label_profile = profile | {"count": 1, "dtype": "uint8", "nodata": IGNORE}
    with rasterio.open(labels, "w", **label_profile) as dst:
        dst.write(reference[:, cols[0] : cols[1]], 1)
    return image, labels


def datamodule(work: Path, args: argparse.Namespace, seed: int) -> GeoSegDataModule:
    left = Source(images=str(work / "left" / "images"), labels=str(work / "left" / "labels"))
    right = Source(images=str(work / "right" / "images"), labels=str(work / "right" / "labels"))
    return GeoSegDataModule(
        classes=CLASSES,
        # validation is never run (limit_val_batches=0); the left half only fills the slot
        fine=Domain(train=left, val=left, test=right),
        bands=args.student_bands,
        ignore_index=IGNORE,
        patch_size=args.tile,
        crops_per_image=args.crops,
        batch_size=args.batch_size,
        cache=True,
        seed=seed,
    )


# --- training and scoring -------------------------------------------------------------------


def make_task(
    student: str,
    variant: str,
    data: GeoSegDataModule,
    spec: dict[str, Any],
    args: argparse.Namespace,
) -> SegmentationTask:
    common = {
        "in_channels": data.num_bands,
        "num_classes": len(CLASSES),
        "class_names": CLASSES,
        "ignore_index": IGNORE,
        **STUDENTS[student],
        **TRAINING,
    }
    if variant == "labels":
        return SegmentationTask(**common)
    return SegmentationTask(
        band_names=data.band_names,
        distillation=KnowledgeTransfer(
            teacher=spec,
            student_levels=STUDENT_LEVELS,
            modulation=None,
            distill_weight=args.distill_weight,
            prediction_weight=args.prediction_weight,
            temperature=args.temperature,
        ),
        **common,
    )


def agreement(model: torch.nn.Module, image: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Student vs teacher on one image (predicted whole): SegmentationMetrics' values."""
    metrics = SegmentationMetrics(len(CLASSES), IGNORE, CLASSES)
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(image)[None]).argmax(1)
    metrics.update(predicted, torch.from_numpy(reference.astype(np.int64))[None])
    return {k: float(v) for k, v in metrics.compute().items()}


def train(
    student: str,
    variant: str,
    seed: int,
    work: Path,
    spec: dict[str, Any],
    halves: dict[str, tuple[np.ndarray, np.ndarray]],
    args: argparse.Namespace,
) -> tuple[dict[str, Any], SegmentationTask, L.Trainer]:
    L.seed_everything(seed, verbose=False)
    data = datamodule(work, args, seed)
    task = make_task(student, variant, data, spec, args)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=args.epochs,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=work / "runs",
    )
    start = time.perf_counter()
    trainer.fit(task, datamodule=data)
    seconds = time.perf_counter() - start
    run = {
        "student": student,
        "variant": variant,
        "seed": seed,
        "fit_s": seconds,
        "steps": trainer.global_step,
        "last_step_losses": {
            k.removeprefix("train/"): float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith("train/")
        },
    }
    for half, (image, reference) in halves.items():
        run[half] = agreement(task.model, image, reference)
    print(
        f"  seed {seed} {student} {variant}: right-half mIoU {100 * run['right']['mIoU']:.2f}, "
        f"left {100 * run['left']['mIoU']:.2f} ({seconds:.0f} s, {trainer.global_step} steps)",
        flush=True,
    )
    return run, task, trainer


# --- deployment: sizes and ONNX Runtime throughput ---------------------------------------------


def throughput(
    teacher_path: Path,
    student_paths: dict[str, Path],
    image: np.ndarray,
    meta: dict[str, Any],
    band_indices: list[int],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """The teacher and each student in ONNX Runtime on the chip's tiles, in turn over
    ``--repeats`` rounds of ``--passes`` passes (all tiles in one call), with
    :func:`onnx_speed.interleaved_throughput`.

    Each model gets its own input: csmask its normalised 6 bands, an exported student the raw
    values of its bands (its band normaliser is inside the graph).
    """
    mean, std = (
        np.asarray(v, np.float32)[:, None, None] for v in meta["data"]["dataset_statistics"]["img"]
    )
    origins = tiles_of(*image.shape[1:], args.tile)
    raw = np.stack([image[band_indices, r : r + args.tile, c : c + args.tile] for r, c in origins])
    normalised = np.nan_to_num((raw * 1e-4 - mean) / std).astype(np.float32)
    threads = torch.get_num_threads()
    models = {"teacher": (session(teacher_path, threads), normalised)}
    for name, path in student_paths.items():
        models[name] = (session(path, threads), raw)
    speed = interleaved_throughput(models, args.repeats, args.passes, batch=len(origins))
    return {"tiles": len(origins), **speed}


# --- report -----------------------------------------------------------------------------------


def pct(values: list[float]) -> str:
    values = [100 * v for v in values]
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def agreement_table(runs: list[dict[str, Any]], students: list[str]) -> str:
    """Mean ± std over seeds per student and variant; the last column is the right-half mIoU as
    a share of the first student's mIoU with the same variant (means over the same seeds)."""
    keys = ["mIoU", *[f"IoU/{c}" for c in CLASSES], "OA"]
    lines = [
        "| student (right half, vs teacher) | "
        + " | ".join(keys)
        + f" | left half mIoU | fit | mIoU / {students[0]}'s |",
        "|---" + "|---:" * (len(keys) + 3) + "|",
    ]
    for variant, label in (("labels", "hard labels only"), ("ktda", "KTDA")):
        base = [
            r["right"]["mIoU"]
            for r in runs
            if r["variant"] == variant and r["student"] == students[0]
        ]
        for student in students:
            chosen = [r for r in runs if r["variant"] == variant and r["student"] == student]
            if not chosen:
                continue
            cells = [pct([r["right"][k] for r in chosen]) for k in keys]
            left = pct([r["left"]["mIoU"] for r in chosen])
            fit = statistics.fmean(r["fit_s"] for r in chosen)
            mean = statistics.fmean(r["right"]["mIoU"] for r in chosen)
            share = f"{100 * mean / statistics.fmean(base):.0f} %" if base else "–"
            lines.append(
                f"| {student}, {label} | "
                + " | ".join(cells)
                + f" | {left} | {fit:.0f} s | {share} |"
            )
    return "\n".join(lines) + "\n"


def seeds_table(runs: list[dict[str, Any]]) -> str:
    lines = [
        "| seed | student | variant | mIoU | IoU/clear | IoU/cloud | IoU/shadow | OA |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        right = r["right"]
        cells = [
            f"{100 * right[k]:.2f}" for k in ("mIoU", "IoU/clear", "IoU/cloud", "IoU/shadow", "OA")
        ]
        lines.append(
            f"| {r['seed']} | {r['student']} | {r['variant']} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


def class_row(label: str, shares: dict[str, float]) -> str:
    return f"| {label} | " + " | ".join(f"{100 * shares[c]:.1f} %" for c in CLASSES) + " |"


def teacher_table(facts: dict[str, Any]) -> str:
    shares = facts["class_shares"]
    lines = ["| teacher's map | clear | cloud | shadow |", "|---|---:|---:|---:|"]
    lines += [class_row(f"share of the {part}", shares[part]) for part in ("chip", "left", "right")]
    lines += [
        class_row("LabelHand water pixels labelled as", facts["water_pixels_labelled_as"]),
        class_row(
            "share of LabelHand water in the class",
            facts["share_of_water_in_each_teacher_class"],
        ),
        class_row(
            "csmask's own predictor (blended tiles), share of the chip",
            facts["csmask_blended_class_shares"],
        ),
    ]
    return "\n".join(lines) + "\n"


def deployment_table(sizes: dict[str, Any], speed: dict[str, Any]) -> str:
    best, median = speed["mp_per_s_best"], speed["mp_per_s_median"]
    lines = [
        "| model | parameters | stored as | file | ONNX Runtime MP/s (best) | MP/s (median) |",
        "|---|---:|---|---:|---:|---:|",
    ]
    teacher = sizes["teacher"]
    for name, s in sizes.items():
        if name == "teacher":
            label = "teacher: csmask U-Net / EfficientNet-B4"
        else:
            spec = STUDENTS[name]
            decoder = "-".join(map(str, spec["arch_kwargs"]["decoder_channels"]))
            label = f"student {name}: U-Net / {spec['encoder']}, decoder {decoder} (exported)"
        lines.append(
            f"| {label} | {s['parameters'] / 1e6:.2f} M | {s['dtypes']} "
            f"| {s['bytes'] / 1e6:.1f} MB | {best[name]:.2f} | {median[name]:.2f} |"
        )
    for name, s in sizes.items():
        if name == "teacher":
            continue
        lines.append(
            f"| {name} / teacher | {s['parameters'] / teacher['parameters']:.3f} | "
            f"| {s['bytes'] / teacher['bytes']:.3f} "
            f"| {best[name] / best['teacher']:.1f}× "
            f"| {median[name] / median['teacher']:.1f}× |"
        )
    return "\n".join(lines) + "\n"


# --- main -------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--output", type=Path, default=Path("outputs/benchmarks/onnx_teacher"))
    parser.add_argument("--quick", action="store_true", help="1 seed, 3 epochs")
    parser.add_argument("--seeds", type=int, nargs="+", help="default 0 1 2")
    parser.add_argument("--epochs", type=int, help="default 40")
    parser.add_argument("--crops", type=int, default=16, help="random crops per epoch")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tile", type=int, default=256, help="the teacher's (fixed) tile size")
    parser.add_argument(
        "--student-bands", nargs="+", default=TEACHER_BANDS, help="bands the student takes"
    )
    parser.add_argument(
        "--student",
        nargs="+",
        choices=sorted(STUDENTS),
        default=["mnv3s-d128"],
        help="students to train, export and time in the same run (the first is the baseline "
        "of the accuracy ratio)",
    )
    parser.add_argument(
        "--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="what to train"
    )
    parser.add_argument("--distill-weight", type=float, default=1.0)
    parser.add_argument("--prediction-weight", type=float, default=1.0)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved throughput rounds")
    parser.add_argument("--passes", type=int, default=5, help="passes over the tiles per round")
    parser.add_argument(
        "--threads", type=int, help="torch and ONNX Runtime threads (default: one per core)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the chips, checkpoint, ONNX")
    args = parser.parse_args()
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    args.epochs = args.epochs or (3 if args.quick else 40)
    return args


def main() -> None:
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    args = parse_args()
    teacher_path, meta = csmask_files()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    work = args.output / "scratch"
    scene = args.data / SCENE
    image, band_names = read_scene(scene)
    spec = teacher_spec(teacher_path, meta)
    teacher = build_teacher(spec, band_names)
    reference = teacher_map(teacher, image, args.tile)
    facts = describe_teacher(reference, scene, args.data / WATER, teacher_path, meta)
    print(f"teacher's map: {json.dumps(facts['class_shares']['chip'])}", flush=True)
    half = image.shape[2] // 2
    student_bands = [band_names.index(b) for b in args.student_bands]
    halves = {
        "left": (image[student_bands, :, :half], reference[:, :half]),
        "right": (image[student_bands, :, half:], reference[:, half:]),
    }
    try:
        write_half(scene, reference, work / "left", (0, half))
        write_half(scene, reference, work / "right", (half, image.shape[2]))
        runs: list[dict[str, Any]] = []
        exported: dict[str, Path] = {}
        export_s: dict[str, float] = {}
        trained: dict[str, int] = {}
        # the exported (and timed) model of each student: its first KTDA run (if any is trained)
        timed = "ktda" if "ktda" in args.variants else "labels"
        for seed in args.seeds:
            for student in args.student:
                for variant in args.variants:
                    run, task, trainer = train(student, variant, seed, work, spec, halves, args)
                    runs.append(run)
                    if variant == timed and student not in exported:
                        checkpoint = work / f"{student}.ckpt"
                        trainer.save_checkpoint(checkpoint)
                        start_export = time.perf_counter()
                        exported[student] = export_student(
                            checkpoint, work / f"{student}.onnx", overwrite=True
                        )
                        export_s[student] = time.perf_counter() - start_export
                        trained[student] = sum(p.numel() for p in task.parameters())
        sizes: dict[str, dict[str, Any]] = {}
        for name, path in {"teacher": teacher_path, **exported}.items():
            sizes[name] = onnx_size(path)
            if name in trained:
                sizes[name]["training_parameters"] = trained[name]
        speed = throughput(teacher_path, exported, image, meta, student_bands, args)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    setup = [
        f"- data: {SCENE} (Sen1Floods11, 13 bands int16, 512², EPSG:4326, 10 m); left half "
        f"(256 × 512 px) trains, right half scores",
        f"- teacher: ukis-csmask {meta['model']['version']} ({meta['model']['decoder_name']} / "
        f"{meta['model']['encoder_name']}), bands {', '.join(TEACHER_BANDS)}, scale 1e-4, "
        "mean/std from its .json; reference = its map over the 4 tiles of 256²",
        "- teacher features: "
        + ", ".join(f"`{decoder_tensor(b)}`" for b in DECODER_BLOCKS)
        + f" ↔ student levels {', '.join(STUDENT_LEVELS)}",
        *(
            f"- student {name}: {STUDENTS[name]['arch']} / {STUDENTS[name]['encoder']}, decoder "
            f"{STUDENTS[name]['arch_kwargs']['decoder_channels']}, random init"
            for name in args.student
        ),
        f"- training: bands {', '.join(args.student_bands)}; CE + 0.5 Dice, AdamW lr "
        f"{TRAINING['lr']}, poly; {args.crops} random {args.tile}² crops per epoch, batch "
        f"{args.batch_size}, {args.epochs} epochs; seeds {', '.join(map(str, args.seeds))}; "
        f"variants {', '.join(args.variants)}",
        f"- KTDA: distill_weight {args.distill_weight}, alpha 0.5, temperature "
        f"{args.temperature}, prediction_weight {args.prediction_weight}, auxiliary head 0.4, "
        "modulation null, teacher in the loop",
        *(
            f"- {name} exported from its first {timed} run: "
            f"{sizes[name]['training_parameters'] / 1e6:.2f} M parameters during training (with "
            f"any FAM projections and auxiliary head, which export drops); export with parity "
            f"check {export_s[name]:.1f} s"
            for name in exported
        ),
        f"- throughput: {speed['tiles']} tiles of {args.tile}² × {args.passes} passes per "
        f"round, {args.repeats} interleaved rounds (teacher, then each student), "
        f"{torch.get_num_threads()} ONNX Runtime threads each",
    ]
    markdown = (
        "\n".join(setup)
        + "\n\n"
        + teacher_table(facts)
        + "\n"
        + agreement_table(runs, args.student)
        + "\n"
        + seeds_table(runs)
        + "\n"
        + deployment_table(sizes, speed)
    )
    report = {
        "command": command(),
        "hardware": hardware(),
        "seconds": round(time.perf_counter() - start, 1),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "teacher_spec": spec,
        "students": {name: STUDENTS[name] | TRAINING for name in args.student},
        "teacher_facts": facts,
        "runs": runs,
        "sizes": sizes,
        "throughput": speed,
        "export_s": export_s,
    }
    print(write_results(args.output, report, markdown, len(args.seeds)))


if __name__ == "__main__":
    try:
        main()
    except GeodistillError as error:
        raise SystemExit(f"benchmarks/onnx_teacher.py: {error}") from error
