"""``argparse`` subcommands: data tools, demo, compare, export, infer, vectorize, view."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _split_list(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _numbers(value: str | None, option: str) -> list[float]:
    from geodistill.errors import GeodistillError

    try:
        return [float(v) for v in _split_list(value) or []]
    except ValueError as err:
        raise GeodistillError(f"{option} must be comma-separated numbers: {err}") from err


def _pairs(value: str | None, option: str) -> dict[str, str] | None:
    from geodistill.errors import GeodistillError

    items = _split_list(value)
    if items is None:
        return None
    if not all(item.count("=") == 1 for item in items):
        raise GeodistillError(f"{option} takes value=class pairs, e.g. yes=building; got {value!r}")
    return dict(item.split("=") for item in items)  # type: ignore[misc]


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
    parser.add_argument(
        "--class-values",
        help="rename attribute values to class names first, e.g. yes=building,no=background",
    )
    parser.add_argument("--layer", help="layer of a multi-layer vector file")
    parser.add_argument("--all-touched", action="store_true", help="burn every touched pixel")
    parser.add_argument(
        "--allow-empty-labels",
        action="store_true",
        help="accept vector labels that put no feature on the image (all-background label)",
    )
    parser.add_argument("--chip-size", type=int, default=256)
    parser.add_argument("--stride", type=int, help="default: chip size (no overlap)")
    parser.add_argument("--bands", help="comma-separated band indices (0-based) or names")
    parser.add_argument("--min-valid", type=float, default=0.0, help="skip emptier chips")
    parser.add_argument("--ignore-index", type=int, default=255)
    parser.add_argument(
        "--ignore-values",
        help="comma-separated label values that mean no data, e.g. --ignore-values=-1",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty folder")
    parser.set_defaults(func=run_prepare)


def run_prepare(args: argparse.Namespace) -> None:
    from geodistill.atomic import check_output
    from geodistill.data.chipping import cut_scene
    from geodistill.data.raster import raster_info
    from geodistill.data.vector import rasterize_vector

    # The chips are cut into a folder beside the output and renamed into place: both must work.
    check_output(args.output, "folder", args.overwrite, replaced_as_whole=True)
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
            class_values=_pairs(args.class_values, "--class-values"),
            allow_empty_labels=args.allow_empty_labels,
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
        ignore_values=_numbers(args.ignore_values, "--ignore-values"),
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
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file")
    parser.set_defaults(func=run_stats)


def run_stats(args: argparse.Namespace) -> None:
    from geodistill.atomic import check_output
    from geodistill.data.datasets import list_images
    from geodistill.data.stats import check_pixels_per_image, compute_band_stats
    from geodistill.errors import GeodistillError

    check_output(args.output, "file", args.overwrite)
    check_pixels_per_image(args.pixels_per_image)
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
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier demo")
    parser.add_argument("--verbose", action="store_true", help="also show Lightning's own messages")
    parser.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> None:
    from geodistill.demo import check_demo_output
    from geodistill.demo import run_demo as demo
    from geodistill.errors import GeodistillError

    check_demo_output(Path(args.output), args.overwrite)
    epochs = {
        stage: value
        for stage, value in (("teacher", args.teacher_epochs), ("student", args.student_epochs))
        if value is not None
    }
    if any(value < 1 for value in epochs.values()):
        raise GeodistillError(f"epochs must be >= 1, got {epochs}")
    print(
        demo(
            Path(args.output),
            seed=args.seed,
            epochs=epochs,
            overwrite=args.overwrite,
            verbose=args.verbose,
        )
    )


def add_compare(commands: Any) -> None:
    parser = commands.add_parser(
        "compare",
        help="compare methods: variants x label budgets x seeds, mean ± std and paired gains",
        description=(
            "Run every variant of an experiment file (overrides of a 'geodistill fit' config) for "
            "each label budget and seed, after the teacher stages they use, each trained and "
            "tested like 'geodistill fit' + 'geodistill test' into OUT/<variant>/<budget>/"
            "seed<k>/ (run.json when finished). Writes results.json (every run), results.md "
            "(mean ± std over seeds, per-seed paired differences against the baseline) and "
            "results.png. See docs/compare.md."
        ),
    )
    parser.add_argument("--config", required=True, help="experiment YAML (see docs/compare.md)")
    parser.add_argument("-o", "--output", help="output folder (default: the file's output)")
    parser.add_argument(
        "--jobs", type=int, default=1, help="runs at once, each a subprocess on one thread"
    )
    parser.add_argument(
        "--variants",
        help="comma-separated variants to run (with the stages they use); the baseline must be "
        "among them. Default: every variant of the file",
    )
    earlier = parser.add_mutually_exclusive_group()
    earlier.add_argument(
        "--overwrite", action="store_true", help="remove an earlier run of the experiment first"
    )
    earlier.add_argument(
        "--resume",
        action="store_true",
        help="keep the runs an earlier run of the same config finished, run the rest",
    )
    parser.set_defaults(func=run_compare)


def run_compare(args: argparse.Namespace) -> None:
    from geodistill.experiments import load_experiment, run_experiment, select_variants

    experiment = load_experiment(args.config)
    command = ["geodistill", "compare", "--config", args.config]
    command += ["-o", args.output] if args.output else []
    if args.variants:
        experiment = select_variants(experiment, [v for v in args.variants.split(",") if v])
        command += ["--variants", args.variants]
    command += ["--jobs", str(args.jobs)] if args.jobs != 1 else []
    command += ["--resume"] if args.resume else ["--overwrite"] if args.overwrite else []
    results = run_experiment(
        experiment,
        args.output,
        overwrite=args.overwrite,
        resume=args.resume,
        jobs=args.jobs,
        command=" ".join(command),
    )
    print(results.read_text())
    print(f"wrote {results}, {results.with_suffix('.json')}, {results.with_suffix('.png')}")


def add_export(commands: Any) -> None:
    parser = commands.add_parser(
        "export",
        help="teacher-free student: a plain checkpoint (.ckpt) or an ONNX file (.onnx)",
        description=(
            "Write the student network of a checkpoint (with its band normalisation, band and "
            "class names and tile size) without any teacher or training-only module: as a plain "
            "SegmentationTask checkpoint (-o student.ckpt) or as ONNX (-o model.onnx, dynamic "
            "batch and tile size, metadata for 'geodistill infer', ONNX Runtime checked against "
            "PyTorch within 1e-4). --quantize int8 --calibration CHIPS writes a static int8 "
            "ONNX model instead, refused unless its classes agree with the float model's."
        ),
    )
    parser.add_argument("checkpoint", help="checkpoint of any geodistill task")
    parser.add_argument("-o", "--output", required=True, help="student.ckpt or model.onnx")
    parser.add_argument("--tile-size", type=int, help="tile size to record (default: training)")
    parser.add_argument(
        "--quantize",
        choices=["int8"],
        help="static int8 ONNX (smaller, faster on CPU), calibrated on --calibration chips and "
        "refused when it disagrees with the float model beyond --max-disagreement",
    )
    parser.add_argument(
        "--calibration", help="chips to calibrate int8 on: a folder of GeoTIFFs or a glob"
    )
    parser.add_argument(
        "--calibration-count", type=int, default=16, help="calibration tiles (default 16)"
    )
    parser.add_argument(
        "--max-disagreement",
        type=float,
        default=0.02,
        help="largest share of pixels whose class may change under int8 (default 0.02)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> None:
    from geodistill.atomic import check_output
    from geodistill.errors import GeodistillError
    from geodistill.export import export_student
    from geodistill.inference.tiling import check_tile

    check_output(args.output, "file", args.overwrite)
    if args.tile_size is not None:
        check_tile(args.tile_size, "--tile-size")
    if args.quantize is not None or args.calibration is not None:
        from geodistill.export import export_int8

        if args.quantize is None:
            raise GeodistillError("--calibration is for --quantize int8; add --quantize int8")
        agreement = export_int8(
            args.checkpoint,
            args.output,
            args.quantize,
            args.calibration,
            args.calibration_count,
            args.max_disagreement,
            overwrite=args.overwrite,
            tile_size=args.tile_size,
        )
        print(f"int8 vs float: {agreement.describe()}")
        print(f"wrote {args.output}")
        return
    written = export_student(
        args.checkpoint, args.output, overwrite=args.overwrite, tile_size=args.tile_size
    )
    print(f"wrote {written}")


def add_infer(commands: Any) -> None:
    parser = commands.add_parser(
        "infer",
        help="whole scenes -> georeferenced class maps (sliding window, bounded memory)",
        description=(
            "Predict whole scenes of any size with a checkpoint or an exported ONNX model: "
            "overlapping tiles blended without seams, read and written window by window so "
            "memory does not grow with the scene. Writes <stem>_classes.tif (and optionally "
            "_confidence.tif / _probabilities.tif, uint8 percent) as cloud-optimised GeoTIFFs "
            "with the scene's CRS and transform; nodata stays nodata. Outputs appear only when "
            "complete. Several devices or nodes share the scenes through Lightning."
        ),
    )
    parser.add_argument("model", help="geodistill checkpoint (.ckpt) or exported ONNX (.onnx)")
    parser.add_argument("scenes", nargs="+", help="scene rasters, folders or globs")
    parser.add_argument("-o", "--output", required=True, help="output folder")
    parser.add_argument("--tile", type=int, help="tile size (default: the model's)")
    parser.add_argument("--overlap", type=int, help="tile overlap in pixels (default: tile/4)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tta", action="store_true", help="average over the four flips")
    parser.add_argument("--confidence", action="store_true", help="write the max probability")
    parser.add_argument("--probabilities", action="store_true", help="write every class")
    parser.add_argument("--bands", help="comma-separated band indices (0-based) or names")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--accelerator", default="auto", help="cpu, gpu, auto (Lightning)")
    parser.add_argument("--devices", default="1", help="devices per node, or 'auto'")
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--precision", help="e.g. bf16-mixed, 16-mixed (Lightning)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_infer)


def run_infer(args: argparse.Namespace) -> None:
    from geodistill.atomic import check_output
    from geodistill.inference import InferenceOptions, infer_scenes

    # Existing outputs are refused scene by scene (their names depend on the scenes).
    check_output(args.output, "folder", args.overwrite, replaces=lambda folder: [])
    options = InferenceOptions(
        tile=args.tile,
        overlap=args.overlap,
        batch_size=args.batch_size,
        tta=args.tta,
        confidence=args.confidence,
        probabilities=args.probabilities,
        bands=_bands(args.bands),
        overwrite=args.overwrite,
    )
    options.check()
    devices: int | str = int(args.devices) if args.devices.isdigit() else args.devices
    trainer: dict[str, Any] = {
        "accelerator": args.accelerator,
        "devices": devices,
        "num_nodes": args.num_nodes,
    }
    if args.precision:
        trainer["precision"] = args.precision
    results = infer_scenes(
        args.model, args.scenes, args.output, options, trainer, progress=not args.quiet
    )
    for outputs in results:
        print("wrote " + ", ".join(str(p) for p in outputs.paths()))


def add_vectorize(commands: Any) -> None:
    parser = commands.add_parser(
        "vectorize",
        help="class map -> polygons per class with areas (m²) and mean confidence",
        description=(
            "Turn a predicted class map (e.g. <stem>_classes.tif from 'geodistill infer') into one "
            "polygon per connected patch of each class, with class id and name, area and "
            "perimeter in metres measured in an equal-area projection centred on the scene, and "
            "the mean confidence when <stem>_confidence.tif is beside it (or --confidence). "
            "Writes a GeoPackage (.gpkg, the raster's CRS) or GeoJSON (.geojson/.json, EPSG:4326) "
            "and a per-class summary <output stem>_summary.json."
        ),
    )
    parser.add_argument("class_map", help="single-band class-id raster (nodata 255)")
    parser.add_argument("-o", "--output", required=True, help="polygons.gpkg or .geojson")
    confidence = parser.add_mutually_exclusive_group()
    confidence.add_argument("--confidence", help="confidence raster (uint8 percent) on the grid")
    confidence.add_argument(
        "--no-confidence", action="store_true", help="ignore a *_confidence.tif beside the map"
    )
    parser.add_argument("--classes", help="comma-separated class names or ids (default: all)")
    parser.add_argument("--min-area", type=float, default=0.0, help="drop smaller polygons (m²)")
    parser.add_argument(
        "--simplify", type=float, default=0.0, help="simplification tolerance in pixels"
    )
    parser.add_argument(
        "--connectivity", type=int, choices=(4, 8), default=4, help="pixel neighbourhood"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.set_defaults(func=run_vectorize)


def run_vectorize(args: argparse.Namespace) -> None:
    from geodistill.atomic import check_output
    from geodistill.inference.vectorize import (
        format_summary,
        summary_path_for,
        vectorize_class_map,
    )

    for path in (args.output, summary_path_for(args.output)):
        check_output(path, "file", args.overwrite)
    result = vectorize_class_map(
        args.class_map,
        args.output,
        confidence=args.confidence,
        find_confidence=not args.no_confidence,
        classes=_split_list(args.classes),
        min_area=args.min_area,
        simplify=args.simplify,
        connectivity=args.connectivity,
        overwrite=args.overwrite,
    )
    print(format_summary(result))
    if result.confidence is not None:
        print(f"mean confidence from {result.confidence}")
    plural = "" if result.polygons == 1 else "s"
    print(f"wrote {result.output} ({result.polygons} polygon{plural}) and {result.summary_path}")


def add_view(commands: Any) -> None:
    parser = commands.add_parser(
        "view",
        help="class maps and polygons -> one self-contained web map (HTML) to look at",
        description=(
            "Write one HTML file to open in a browser: the scene's RGB quicklook (--scene), each "
            "class map as a coloured overlay with a legend and a switch between them (methods), "
            "and polygons (given, or <stem>.gpkg/.geojson beside a class map) with popups "
            "showing class, area (m², ha) and confidence. Layers are reprojected to Web Mercator "
            "(scene and maps may be on different grids; a map off the scene is refused) and "
            "embedded: PNG data URIs, inline GeoJSON. Leaflet loads from a CDN unless "
            "--offline-assets inlines it."
        ),
    )
    parser.add_argument(
        "outputs", nargs="+", help="class maps (.tif) and polygon files (.gpkg/.geojson)"
    )
    parser.add_argument("-o", "--output", required=True, help="the web map, e.g. map.html")
    parser.add_argument("--scene", help="scene raster shown under the maps (RGB quicklook)")
    parser.add_argument(
        "--bands", help="scene bands as red,green,blue (0-based or names); default Red,Green,Blue"
    )
    parser.add_argument(
        "--max-size", type=int, default=2048, help="longest side of each embedded image (px)"
    )
    parser.add_argument(
        "--offline-assets",
        help="folder with leaflet.js and leaflet.css to inline (a page that needs no network)",
    )
    parser.add_argument(
        "--no-polygons", action="store_true", help="do not add polygon files found beside maps"
    )
    parser.add_argument(
        "--show-background",
        action="store_true",
        help="paint the 'background' class too (by default it is left see-through)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing map")
    parser.set_defaults(func=run_view)


def run_view(args: argparse.Namespace) -> None:
    from geodistill.webmap import CLEAR_CLASSES, write_web_map

    result = write_web_map(
        args.outputs,
        args.output,
        scene=args.scene,
        bands=_bands(args.bands),
        max_size=args.max_size,
        offline_assets=args.offline_assets,
        find_vectors=not args.no_polygons,
        clear=() if args.show_background else CLEAR_CLASSES,
        overwrite=args.overwrite,
    )
    print(result.describe())
