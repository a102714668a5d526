"""``argparse`` subcommands: ``prepare``, ``stats``, ``demo``, ``coarse-to-fine``, ``export``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _split_list(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _bands(value: str | None) -> list[int | str] | None:
    items = _split_list(value)
    return None if items is None else [int(v) if v.isdigit() else v for v in items]


def add_prepare(commands: Any) -> None:
    parser = commands.add_parser(
        "prepare",
        help="vector labels / large scenes -> label raster and chips with a manifest",
        description=(
            "Rasterise vector labels (GeoPackage, GeoJSON, Shapefile) onto an image's grid, "
            "reprojecting them to its CRS, and cut the scene and label into chips with a "
            "manifest (files, bounds, class histogram)."
        ),
    )
    parser.add_argument("image", help="image raster (GeoTIFF) to label and/or cut")
    parser.add_argument("-o", "--output", required=True, help="output folder for the chips")
    labels = parser.add_mutually_exclusive_group()
    labels.add_argument("--vector", help="vector label file")
    labels.add_argument("--label", help="label raster on the image grid")
    parser.add_argument("--class-field", default="class", help="attribute holding the class")
    parser.add_argument("--classes", help="comma-separated class names (id = position)")
    parser.add_argument("--layer", help="layer of a multi-layer vector file")
    parser.add_argument("--all-touched", action="store_true", help="burn every touched pixel")
    parser.add_argument("--chip-size", type=int, default=256)
    parser.add_argument("--stride", type=int, help="default: chip size (no overlap)")
    parser.add_argument("--bands", help="comma-separated band indices (0-based) or names")
    parser.add_argument("--min-valid", type=float, default=0.0, help="skip emptier chips")
    parser.add_argument("--ignore-index", type=int, default=255)
    parser.add_argument("--overwrite", action="store_true")
    parser.set_defaults(func=run_prepare)


def run_prepare(args: argparse.Namespace) -> None:
    from geodistill.data.chipping import cut_scene
    from geodistill.data.raster import raster_info
    from geodistill.data.vector import rasterize_vector

    classes = _split_list(args.classes)
    label: Any = args.label
    if args.vector:
        label = rasterize_vector(
            args.vector,
            raster_info(args.image),
            args.class_field,
            classes=classes,
            all_touched=args.all_touched,
            layer=args.layer,
        )
    manifest = cut_scene(
        args.image,
        label,
        args.output,
        chip_size=args.chip_size,
        stride=args.stride,
        bands=_bands(args.bands),
        min_valid_fraction=args.min_valid,
        ignore_index=args.ignore_index,
        classes=classes,
        overwrite=args.overwrite,
    )
    print(f"wrote chips and {manifest}")


def add_stats(commands: Any) -> None:
    parser = commands.add_parser(
        "stats",
        help="per-band normalisation statistics of images",
        description=(
            "Compute per-band clip range (percentiles) and mean/std after clipping from a seeded "
            "pixel sample of the images; write them as JSON for 'data.stats' in a config."
        ),
    )
    parser.add_argument("images", nargs="+", help="image files, folders or globs")
    parser.add_argument("-o", "--output", required=True, help="JSON file to write")
    parser.add_argument("--bands", help="comma-separated band indices (0-based) or names")
    parser.add_argument("--percentiles", default="1,99", help="clip percentiles, e.g. 1,99")
    parser.add_argument("--pixels-per-image", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run_stats)


def run_stats(args: argparse.Namespace) -> None:
    from geodistill.data.datasets import list_images
    from geodistill.data.stats import compute_band_stats
    from geodistill.errors import GeodistillError

    try:
        low, high = (float(v) for v in args.percentiles.split(","))
    except ValueError as err:
        raise GeodistillError(f"--percentiles must be two numbers like 1,99: {err}") from err
    images = list_images(args.images)
    if not images:
        raise GeodistillError(f"no image files in {', '.join(args.images)}")
    stats = compute_band_stats(
        images,
        _bands(args.bands),
        percentiles=(low, high),
        pixels_per_image=args.pixels_per_image,
        seed=args.seed,
    )
    stats.to_json(args.output)
    for name, lo, hi, mean, std in zip(
        stats.band_names, stats.low, stats.high, stats.mean, stats.std, strict=True
    ):
        print(f"{name:>12}  clip [{lo:.4g}, {hi:.4g}]  mean {mean:.4g}  std {std:.4g}")
    print(f"wrote {args.output}")


def add_demo(commands: Any) -> None:
    parser = commands.add_parser(
        "demo",
        help="run the built-in synthetic multispectral demo end to end",
        description=(
            "Generate a small SYNTHETIC 6-band dataset of mining-like footprints in two regions, "
            "train and evaluate a small student, predict a whole scene to a georeferenced "
            "GeoTIFF and write metrics and a figure to the output folder."
        ),
    )
    parser.add_argument("-o", "--output", default="outputs/demo", help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--teacher-epochs", type=int, help="override stage 1's epochs")
    parser.add_argument("--student-epochs", type=int, help="override stage 2's epochs")
    parser.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> None:
    from geodistill.demo import run_demo as demo
    from geodistill.errors import GeodistillError

    epochs = {
        stage: value
        for stage, value in (("teacher", args.teacher_epochs), ("student", args.student_epochs))
        if value is not None
    }
    if any(value < 1 for value in epochs.values()):
        raise GeodistillError(f"epochs must be >= 1, got {epochs}")
    print(demo(Path(args.output), seed=args.seed, epochs=epochs))


def add_coarse_to_fine(commands: Any) -> None:
    from geodistill.pipelines.coarse_to_fine import METHODS

    parser = commands.add_parser(
        "coarse-to-fine",
        help="coarse-label teacher, then a fine student by attentive distillation (+ baselines)",
        description=(
            "Stage 1 trains a teacher on the coarse domain (or takes --teacher); stage 2 trains "
            "the fine-domain student with attentive feature and prediction distillation. Other "
            "methods of the same harness (baselines, ablations) run with --methods. Each run is "
            "tested on the fine domain's test split; results.json and a table are written to the "
            "output folder, with a teacher-free student.ckpt per distillation method. Methods: "
            + ", ".join(f"{name} ({m.description})" for name, m in METHODS.items())
        ),
    )
    parser.add_argument("--config", required=True, help="YAML file (see configs/)")
    parser.add_argument("--teacher", help="existing stage-1 checkpoint: skip stage 1")
    parser.add_argument("--methods", help="comma-separated methods (default: the config's)")
    parser.add_argument("-o", "--output", help="output folder (default: the config's)")
    parser.add_argument("--seed", type=int, help="override the config's seed")
    parser.set_defaults(func=run_coarse_to_fine)


def run_coarse_to_fine(args: argparse.Namespace) -> None:
    from geodistill.pipelines.coarse_to_fine import (
        load_config,
        run_coarse_to_fine,
        write_results_table,
    )

    config = load_config(args.config)
    if args.teacher:
        config.teacher_checkpoint = args.teacher
    if args.methods:
        config.methods = _split_list(args.methods) or config.methods
    if args.output:
        config.output = args.output
    if args.seed is not None:
        config.seed = args.seed
    results = run_coarse_to_fine(config)
    print(write_results_table(results, list(config.data["classes"])))
    print(f"wrote {Path(config.output) / 'results.json'}")


def add_export(commands: Any) -> None:
    parser = commands.add_parser(
        "export",
        help="teacher-free student checkpoint from any training checkpoint",
        description=(
            "Write the student network of a checkpoint (with its band normalisation, band and "
            "class names) as a plain SegmentationTask checkpoint: no teacher, no training-only "
            "modules. It loads and predicts without the teacher file."
        ),
    )
    parser.add_argument("checkpoint", help="checkpoint of any geodistill task")
    parser.add_argument("-o", "--output", required=True, help="student checkpoint to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> None:
    from geodistill.export import export_student

    print(f"wrote {export_student(args.checkpoint, args.output, overwrite=args.overwrite)}")
