"""Frozen-teacher distillation on real Sentinel-2 flood chips (Sen1Floods11) with a real teacher.

Water mapping from a few hand-labelled chips, with and without ukis-csmask's frozen pretrained
network as the teacher. Data preparation plus an experiment file
(``benchmarks/sen1floods11_frozen_teacher.yaml``), run through the ``geodistill compare`` harness
once per label count N.

Data: the 18 hand-labelled Sen1Floods11 chips in ``../shared/data/sen1floods11_hand``
(``S2Hand/``: 512 x 512, 13 bands B1..B12 with B8A, int16 L1C reflectance x 10000, nodata 0;
``LabelHand/``: -1 nodata, 0 dry, 1 water), prepared by ``sen1floods11_data.py`` as the
coarse-to-fine benchmark prepares them (images copied as stored; hand labels as uint8 GeoTIFFs on
the image grid, 255 where the label is -1 or any image band is 0; idempotent, with the recipe in
``<output>/data/prepared.json``).

Protocol:

* classes ``[dry, water]``; the student reads csmask's six bands B2, B3, B4, B8, B11, B12 of the
  stored chips (``data.bands``; the data module computes band statistics from the training
  chips); nodata ignored as above;
* test: the six held-out Bolivia chips of the coarse-to-fine benchmark (``TEST_CHIPS``), whole,
  hand labels, the same for every seed, N and variant;
* labelled pool: the 10 other hand-labelled chips with water (seven Bolivia, India, Spain, USA;
  ``DRY_CHIPS``, two Bolivia chips with almost no water, are left out: as the validation chip
  they would select on the dry class alone). Per seed, a seeded draw (the data module's split
  seed is the run's seed) takes one chip for checkpoint selection (``val_fraction`` 1/10) and N
  of the other 9 for training (``train_limit``; one shuffle, so a smaller N's chips are a subset
  of a larger one's); the remaining 9 - N pool
  chips are unlabelled images: the semi-supervised variant's unlabelled stream
  (``unlabeled_from: rest``); no run reads their labels. Same seed = same draw, same
  initialisation and the same teacher for every variant, so differences are paired by seed;
* teacher: ukis-csmask's 6-band L1C network (``model_6b_l1c.onnx`` in the installed package: a
  U-Net on EfficientNet-B4, clear / cloud / shadow, fixed 256 x 256 input) as geodistill's
  ``onnx`` teacher kind: bands B2, B3, B4, B8, B11, B12, ``scale`` 1e-4 and the mean/std of its
  ``.json`` (checked here against the experiment file), features = the outputs of its decoder
  blocks 0, 1, 2 and 4 (strides 16, 8, 4, 1). It has no water class (and calls much flood water
  "shadow"): its FEATURES are what the students take; KTDA's ``prediction_weight`` stays 0;
* student: a light U-Net on ResNet-18 (four encoder stages, decoder 128-64-32-16), random
  initialisation, CE + 0.5 Dice, AdamW lr 1e-3, 256 x 256 crops (csmask's fixed input size: a
  teacher cache's windows are ``data.patch_size``, and the ONNX teacher refuses other sizes),
  batch 4, the same number of optimiser steps for every variant of this student (``--steps``;
  the light student below trains 3x as many, the same training time), validated on the
  validation chip every ``--val-every`` steps (best ``val/mIoU`` checkpoint tested);
* variants: ``student`` (supervised only: the baseline); ``ktda`` (KnowledgeTransfer with the
  csmask teacher: FAM + KL/MSE on the four level pairs, one transformer FMM block on the
  student's stride 4-16 stages, auxiliary head); ``ktda_no_fmm`` (the same, ``modulation:
  null``); ``semi_csmask`` (SemiSupervised: FixMatch with an EMA model on the unlabelled pool
  chips + MSE feature distillation from csmask's decoder block 0, no fusion); on request the
  control ``ktda_no_teacher`` (KTDA's student, FMM and auxiliary head, with ``distill_weight``
  0: no teacher term, hence no cache, random crops as ``student``) and ``ktda_width`` (``ktda``
  with the KL over the width axis, ``kl_axis: width``, as KTDA's public code), and the speed
  goal's light student, a U-Net on MobileNetV3-small with a half-width decoder, alone
  (``student_light``) and with KTDA at the defaults (``ktda_light``). The teacher's
  outputs are cached once per seed (``teacher_cache``: a fixed grid of 256 x 256 windows, four per
  chip, replaces the random crops of the distilled variants; the plain student draws four random
  crops per chip and epoch);
* metrics: test water IoU (``test/IoU/water``, the experiment's headline) and mIoU over the six
  test chips, per variant mean ± std over seeds and paired Δ against ``student``.

    python benchmarks/sen1floods11_frozen_teacher.py                    # 5 seeds, N = 1, 2, 4
    python benchmarks/sen1floods11_frozen_teacher.py --labels 1 --seeds 0
    python benchmarks/sen1floods11_frozen_teacher.py --variants student,ktda --resume
    python benchmarks/sen1floods11_frozen_teacher.py --labels 1 --resume \
        --variants student,ktda_no_fmm,ktda_light --speed ktda_no_fmm,ktda_light
    python benchmarks/sen1floods11_frozen_teacher.py --quick -o /tmp/s1f_quick   # smoke run

``--speed ktda_no_fmm,ktda_light`` (after the runs): exports the deployed student of each named
variant (first seed, first N) with ``geodistill export`` and times csmask and the students in
ONNX Runtime on the 24 tiles of 256² of the test chips (1 thread, one tile per call, interleaved
rounds: ``onnx_speed.py``), beside each variant's water IoU and its per-seed share of the first
variant's: ``<output>/speed.md`` and ``speed.json``.

``--quick``: seed 0, N = 1, 4 optimiser steps, validated after 2: the pipeline of every variant
end to end (data, teacher caches, training, test), not a result.

Writes, per N, ``<output>/labels<N>/`` (the harness's ``results.{md,json,png}`` on water IoU,
``per_class.md``, the run folders, the teacher caches) and ``<output>/results.md`` /
``results.json``: water IoU and mIoU per N and variant with paired Δ vs ``student``, over every
finished run in the output folder (whichever call ran it).
"""

from __future__ import annotations

import argparse
import copy
import importlib.resources
import importlib.util
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from experiment_runner import (  # noqa: E402
    PREPARED,
    add_run_options,
    check_output,
    run_experiment_file,
    variant_names,
)
from onnx_speed import interleaved_throughput, onnx_size, session  # noqa: E402
from report import command, hardware  # noqa: E402
from sen1floods11_data import (  # noqa: E402
    CLASSES,
    DATA,
    TEST_CHIPS,
    chip_ids,
    prepare_chip,
    prepared_summary,
    write_summary,
)

from geodistill.data.raster import read_image  # noqa: E402
from geodistill.data.tiling import tile_origins  # noqa: E402
from geodistill.errors import GeodistillError  # noqa: E402
from geodistill.export import export_student  # noqa: E402

EXPERIMENT = HERE / "sen1floods11_frozen_teacher.yaml"
DEFAULT_OUTPUT = "outputs/benchmarks/sen1floods11_frozen_teacher"
CSMASK = "CSMASK"
"""Prefix of the teacher's path in the experiment file: the installed ukis_csmask folder."""
RUN = "RUN"
"""Prefix of the teacher caches in the experiment file: this label count's output folder."""
MODEL = "model_6b_l1c"
CSMASK_BANDS = ["blue", "green", "red", "nir", "swir16", "swir22"]
"""csmask's input bands (its ``.json``), fed by the chips' B2, B3, B4, B8, B11, B12."""
DRY_CHIPS = ["Bolivia_233925", "Bolivia_76104"]
"""Chips with almost no water, left out of the pool: drawn for checkpoint selection, a chip
without water scores every water model 0 and selects on the dry class alone (it did so on seed 1
of a first run); drawn for training, it teaches no water."""
RECIPE = {
    "version": 2,
    "test": TEST_CHIPS,
    "pool": "every other hand-labelled chip with water",
    "left_out": DRY_CHIPS,
}
DEFAULT_VARIANTS = ["student", "ktda", "ktda_no_fmm", "semi_csmask"]
"""What runs without ``--variants``; the file's control ``ktda_no_teacher`` and the paper's
``ktda_width`` run on request."""
TEACHER_BANDS = ["B2", "B3", "B4", "B8", "B11", "B12"]
"""The chips' bands csmask and the students read."""
SPEED_TILE = 256
"""Side of the timed tiles: csmask's fixed input size."""
METRICS = ("IoU/water", "mIoU")
"""The test metrics of the summary (the headline first)."""


def prepare(root: Path, data: Path) -> dict[str, Any]:
    """Write the test chips to ``data/test`` and the pool (every other hand-labelled chip) to
    ``data/pool`` (images and hand labels; skipped when ``data/prepared.json`` holds the same
    recipe and source chips); returns that summary."""
    chips = chip_ids(root)
    missing = sorted(set(TEST_CHIPS) - set(chips))
    if missing:
        raise GeodistillError(f"test chip {missing[0]} is not among the hand-labelled chips", root)
    pool = [chip for chip in chips if chip not in TEST_CHIPS and chip not in DRY_CHIPS]
    recipe = {**RECIPE, "pool": pool}
    summary = prepared_summary(data, recipe)
    if summary is not None:
        return summary
    water: dict[str, float | None] = {}
    for split, members in (("test", TEST_CHIPS), ("pool", pool)):
        for chip in members:
            _, hand, _ = prepare_chip(root, chip, data / split)
            labelled = int((hand != 255).sum())
            water[chip] = int((hand == 1).sum()) / labelled if labelled else None
    summary = {"recipe": recipe, "source": str(root), "water_share_of_labelled_pixels": water}
    write_summary(data, summary)
    return summary


def csmask_folder(raw: dict[str, Any]) -> Path:
    """The installed ukis_csmask package folder, after checking that the experiment file's
    teacher normalisation is its model's (bands, mean, std)."""
    if importlib.util.find_spec("ukis_csmask") is None:
        raise GeodistillError(
            "the teacher is the ONNX model shipped by ukis-csmask, which is not installed: "
            "pip install ukis-csmask (or 'geodistill[examples]')"
        )
    root = importlib.resources.files("ukis_csmask")
    meta = json.loads((root / f"{MODEL}.json").read_text())
    stats = meta["data"]["dataset_statistics"]
    if stats["band_names"] != CSMASK_BANDS:
        raise GeodistillError(f"csmask's bands are {stats['band_names']}, not {CSMASK_BANDS}")
    stages = {f"stages.{n}": s["overrides"] for n, s in raw.get("stages", {}).items()}
    variants = {f"variants.{n}": overrides for n, overrides in raw["variants"].items()}
    for name, overrides in {**variants, **stages}.items():
        method = overrides.get("model", {}).get("init_args", {}).get("distillation")
        if method is None:
            continue
        args = method["init_args"]
        for spec in [args["teacher"]] if "teacher" in args else args.get("teachers", []):
            if not isinstance(spec, dict) or spec.get("kind") != "onnx":
                continue  # a checkpoint of an earlier stage, not csmask
            if [spec["mean"], spec["std"]] != stats["img"]:
                raise GeodistillError(f"{name}: the teacher's mean/std differ from {MODEL}.json's")
    return Path(str(root))


def edit_experiment(raw: dict[str, Any], args: argparse.Namespace, labels: int) -> None:
    """The script's options as changes of the experiment file, for ``labels`` training chips."""
    raw["budgets"] = [{"train_limit": labels}]
    trainer = raw["base"]["trainer"]
    own = [v["trainer"] for v in raw["variants"].values() if "max_steps" in v.get("trainer", {})]
    if args.steps is not None:  # every variant's budget, a variant's own (the light student's)
        for budget in [trainer, *own]:
            budget["max_steps"] = args.steps
    if args.val_every is not None:
        trainer["val_check_interval"] = args.val_every
    for steps in {trainer["max_steps"], *(budget["max_steps"] for budget in own)}:
        if steps % trainer["val_check_interval"]:
            raise GeodistillError(
                f"--val-every {trainer['val_check_interval']} must divide the {steps} steps of "
                "a variant (the last step is validated)"
            )


def paired(values: dict[int, float], baseline: dict[int, float]) -> str:
    """``+Δ ± std (k/n seeds > 0)`` of the per-seed differences (in points)."""
    seeds = sorted(set(values) & set(baseline))
    if not seeds:
        return "–"
    deltas = [100 * (values[s] - baseline[s]) for s in seeds]
    mean = statistics.fmean(deltas)
    spread = f" ± {statistics.stdev(deltas):.2f}" if len(deltas) > 1 else ""
    same = sum(1 for d in deltas if (d > 0) == (mean > 0) and d != 0)
    sign = ">" if mean > 0 else "<"
    return f"{mean:+.2f}{spread} ({same}/{len(deltas)} seeds {sign} 0)"


def spread(values: dict[int, float]) -> str:
    points = [100 * v for v in values.values()]
    if not points:
        return "–"
    if len(points) == 1:
        return f"{points[0]:.2f}"
    return f"{statistics.fmean(points):.2f} ± {statistics.stdev(points):.2f}"


def finished_runs(folder: Path) -> list[dict[str, Any]]:
    """The record (``run.json``) of every finished variant run under one label count's folder,
    whichever call ran it (a folder's ``results.json`` holds only its latest call's variants)."""
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*/*/seed*/run.json"))]
    return [r for r in records if r.get("kind") == "variant"]


def label_folders(output: Path) -> dict[int, Path]:
    """Every ``labels<N>`` folder of the output, by N."""
    found = {}
    for folder in output.glob("labels*"):
        count = folder.name.removeprefix("labels")
        if folder.is_dir() and count.isdigit():
            found[int(count)] = folder
    return dict(sorted(found.items()))


def summarise(folders: dict[int, Path], variants: list[str]) -> tuple[str, dict[str, Any]]:
    """Water IoU and mIoU per label count and variant (in ``variants``' order; every finished
    run counts), paired Δ vs ``student``: Markdown and the values."""
    table: dict[str, Any] = {}
    lines = [
        "| N | variant | water IoU | Δ water IoU vs student | mIoU | Δ mIoU vs student "
        "| seeds | s/run |",
        "|---:|---|---:|---|---:|---|---:|---:|",
    ]
    for labels, folder in folders.items():
        per_variant: dict[str, dict[str, dict[int, float]]] = {}
        seconds: dict[str, list[float]] = {}
        for run in finished_runs(folder):
            entry = per_variant.setdefault(run["name"], {m: {} for m in METRICS})
            seconds.setdefault(run["name"], []).append(float(run["seconds"]))
            for metric in METRICS:
                value = run["metrics"].get(f"test/{metric}")
                if value is not None:
                    entry[metric][int(run["seed"])] = float(value)
        table[str(labels)] = per_variant
        baseline = per_variant.get("student", {m: {} for m in METRICS})
        for name in variants:
            if name not in per_variant:
                continue
            cells = []
            for metric in METRICS:
                values = per_variant[name][metric]
                delta = "–" if name == "student" else paired(values, baseline[metric])
                cells += [spread(values), delta]
            count = len(per_variant[name][METRICS[0]])
            mean_s = statistics.fmean(seconds[name])
            lines.append(
                f"| {labels} | {name} | " + " | ".join(cells) + f" | {count} | {mean_s:.0f} |"
            )
    return "\n".join(lines) + "\n", table


# --- speed: the deployed students against csmask in ONNX Runtime -------------------------------


def speed_tiles(data: Path, stats: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    """The 256² tiles of the test chips (the last ones flush with the edge): raw values of the
    students' bands (NaN = nodata; an exported student normalises inside its graph) and csmask's
    normalised input."""
    raw = []
    for image in sorted((data / "test" / "images").glob("*.tif")):
        bands = read_image(image, bands=TEACHER_BANDS)
        for r in tile_origins(bands.shape[1], SPEED_TILE, SPEED_TILE):
            for c in tile_origins(bands.shape[2], SPEED_TILE, SPEED_TILE):
                raw.append(bands[:, r : r + SPEED_TILE, c : c + SPEED_TILE])
    if not raw:
        raise GeodistillError("no test chip to time on", data / "test" / "images")
    tiles = np.stack(raw).astype(np.float32)
    mean, std = (np.asarray(v, np.float32)[:, None, None] for v in stats)
    return tiles, np.nan_to_num((tiles * 1e-4 - mean) / std).astype(np.float32)


def time_students(
    output: Path, labels: int, seed: int, variants: list[str], teacher_folder: Path, repeats: int
) -> tuple[str, dict[str, Any]]:
    """Export the deployed student of each variant's run (``labels`` chips, ``seed``), time them
    and csmask on the test chips' tiles in ONNX Runtime (1 thread, one tile per call, interleaved
    rounds), and set each variant's water IoU (every seed) beside its speed: Markdown and values.

    The first variant is the accuracy reference (e.g. the R18 student distilled from csmask)."""
    records = finished_runs(output / f"labels{labels}")
    runs = {r["name"]: r for r in records if int(r["seed"]) == seed}
    missing = [v for v in variants if v not in runs]
    if missing:
        raise GeodistillError(
            f"--speed: no finished run of {', '.join(missing)} with {labels} label(s), seed {seed}",
            output / f"labels{labels}",
        )
    work = output / "speed"
    work.mkdir(parents=True, exist_ok=True)
    paths = {"teacher": teacher_folder / f"{MODEL}.onnx"}
    for name in variants:
        checkpoint = runs[name]["checkpoint"]
        paths[name] = export_student(checkpoint, work / f"{name}.onnx", overwrite=True)
    meta = json.loads((teacher_folder / f"{MODEL}.json").read_text())
    raw, normalised = speed_tiles(output / "data", meta["data"]["dataset_statistics"]["img"])
    models = {"teacher": (session(paths["teacher"]), normalised)}
    models.update({name: (session(paths[name]), raw) for name in variants})
    timing = interleaved_throughput(models, repeats)
    sizes = {name: onnx_size(path) for name, path in paths.items()}
    water: dict[str, dict[int, float]] = {name: {} for name in variants}
    for record in records:
        if record["name"] in water and "test/IoU/water" in record["metrics"]:
            water[record["name"]][int(record["seed"])] = float(record["metrics"]["test/IoU/water"])
    best, median = timing["mp_per_s_best"], timing["mp_per_s_median"]
    reference = variants[0]
    lines = [
        f"ONNX Runtime, 1 thread, {len(raw)} tiles of {SPEED_TILE}² (the test chips), one tile "
        f"per call, {repeats} interleaved rounds; students exported from seed {seed} with "
        f"{labels} labelled chip(s). Water IoU: every seed; share: per-seed ratio to "
        f"`{reference}`.",
        "",
        "| model | parameters | stored as | file | MP/s best | MP/s median | × teacher "
        "(best / median) | water IoU | share of reference, per seed |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    shares: dict[str, dict[int, float]] = {}
    for name, size in sizes.items():
        speedup = f"{best[name] / best['teacher']:.1f}× / {median[name] / median['teacher']:.1f}×"
        iou, share = "–", "–"
        if name != "teacher":
            iou = spread(water[name])
            common = sorted(set(water[name]) & set(water[reference]))
            shares[name] = {s: water[name][s] / water[reference][s] for s in common}
            share = ", ".join(f"{100 * v:.0f} %" for v in shares[name].values())
        label = "csmask (teacher)" if name == "teacher" else f"`{name}`"
        lines.append(
            f"| {label} | {size['parameters'] / 1e6:.2f} M | {size['dtypes']} "
            f"| {size['bytes'] / 1e6:.1f} MB | {best[name]:.2f} | {median[name]:.2f} "
            f"| {speedup} | {iou} | {share} |"
        )
    values = {
        "labels": labels,
        "seed": seed,
        "tiles": len(raw),
        "timing": timing,
        "sizes": sizes,
        "water_iou": water,
        "share_of_reference": shares,
    }
    return "\n".join(lines) + "\n", values


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Protocol: see the docstring of benchmarks/sen1floods11_frozen_teacher.py.",
    )
    parser.add_argument("--experiment", type=Path, default=EXPERIMENT)
    parser.add_argument(
        "--data",
        type=Path,
        default=DATA,
        help="Sen1Floods11 hand-labelled chips (S2Hand/, LabelHand/; default: %(default)s)",
    )
    add_run_options(parser, DEFAULT_OUTPUT)
    parser.add_argument(
        "--labels", type=int, nargs="+", help="labelled training chips N (default: 1 2 4)"
    )
    parser.add_argument(
        "--variants",
        help="comma-separated variants, e.g. student,ktda (the baseline student among them); "
        f"default: {','.join(DEFAULT_VARIANTS)}; the control ktda_no_teacher on request",
    )
    parser.add_argument(
        "--steps",
        type=int,
        help="optimiser steps of every variant (default: the file's; the light students' 3x own)",
    )
    parser.add_argument("--val-every", type=int, help="steps between validations")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: seed 0, N = 1, 4 steps, validated at 2"
    )
    parser.add_argument(
        "--speed",
        help="after the runs, export the deployed student of these comma-separated variants "
        "(first seed, first N; the first variant is the accuracy reference) and time them "
        "against csmask in ONNX Runtime: <output>/speed.md, speed.json",
    )
    parser.add_argument("--speed-repeats", type=int, default=5, help="interleaved timing rounds")
    args = parser.parse_args()
    if args.quick:
        args.seeds = args.seeds or [0]
        args.labels = args.labels or [1]
        args.steps = args.steps or 4
        args.val_every = args.val_every or 2
    labels = args.labels or [1, 2, 4]
    variants = variant_names(args.variants) or DEFAULT_VARIANTS
    timed = variant_names(args.speed)
    if timed and not set(timed) <= set(variants):
        parser.error(f"--speed {args.speed}: time only variants that --variants runs")
    raw = yaml.safe_load(args.experiment.read_text())
    folders = {n: args.output / f"labels{n}" for n in labels}
    for folder in folders.values():  # a refused folder or a bad file: before any work
        check_output(
            args.experiment, argparse.Namespace(**{**vars(args), "output": folder}), variants
        )
    teacher_folder = csmask_folder(raw)
    summary = prepare(args.data, args.output / "data")
    shares = summary["water_share_of_labelled_pixels"]
    pool = summary["recipe"]["pool"]
    print(
        f"data: {args.output / 'data'}; {len(TEST_CHIPS)} test chips, a pool of {len(pool)} "
        f"({', '.join(f'{c} {100 * shares[c]:.0f} % water' for c in pool)})",
        flush=True,
    )
    for n, folder in folders.items():
        run_args = argparse.Namespace(**{**vars(args), "output": folder})
        prefixes = {
            PREPARED: str(args.output / "data"),
            CSMASK: str(teacher_folder),
            RUN: str(folder),
        }
        run_experiment_file(
            args.experiment,
            run_args,
            prefixes,
            lambda raw, n=n: edit_experiment(raw, args, n),
            variants,
            class_names=CLASSES,
        )
    every = label_folders(args.output)
    markdown, values = summarise(every, list(raw["variants"]))
    header = (
        f"Command (the latest): `{command()}`  \nHardware: {hardware()}  \n"
        "Test: the six held-out Bolivia chips (water IoU and mIoU in %, mean ± std over seeds; "
        "Δ: per-seed paired difference vs `student`, in points). Every finished run under: "
        + ", ".join(str(f) for f in every.values())
        + "\n\n"
    )
    (args.output / "results.md").write_text(header + markdown)
    report = {
        "command": command(),
        "hardware": hardware(),
        "labels": sorted(every),
        "folders": {str(n): str(f) for n, f in every.items()},
        "metrics": values,
    }
    (args.output / "results.json").write_text(json.dumps(copy.deepcopy(report), indent=2))
    print(header + markdown)
    print(f"wrote {args.output / 'results.md'}, {args.output / 'results.json'}")
    if timed:
        seed = (args.seeds or raw["seeds"])[0]
        table, timing = time_students(
            args.output, labels[0], seed, timed, teacher_folder, args.speed_repeats
        )
        speed_header = f"Command: `{command()}`  \nHardware: {hardware()}  \n\n"
        (args.output / "speed.md").write_text(speed_header + table)
        timing = {"command": command(), "hardware": hardware(), **timing}
        (args.output / "speed.json").write_text(json.dumps(timing, indent=2))
        print(speed_header + table)
        print(f"wrote {args.output / 'speed.md'}, {args.output / 'speed.json'}")


if __name__ == "__main__":
    try:
        main()
    except GeodistillError as error:  # a refused output folder, a bad experiment file: one line
        sys.exit(f"error: {error}")
