"""Coarse-to-fine benchmark on real Sentinel-2 flood chips (Sen1Floods11): weak -> hand labels.

Data preparation plus an experiment file (``benchmarks/sen1floods11_coarse_to_fine.yaml``).
The data are the 18 hand-labelled Sen1Floods11 chips in ``../shared/data/sen1floods11_hand``
(``S2Hand/``: 512 x 512, 13 bands B1..B12 with B8A, int16 L1C reflectance x 10000, nodata 0;
``LabelHand/``: -1 nodata, 0 dry, 1 water). Protocol:

* classes ``[dry, water]``; all 13 bands, as stored (the data module computes band statistics
  from the training chips); nodata is ignored (255): image pixels with any band 0 (how
  geodistill's reader marks nodata) and hand-label pixels -1;
* test: six held-out Bolivia chips (Bolivia is Sen1Floods11's own held-out country), whole
  chips, hand labels: ``TEST_CHIPS``. Chosen once, by hand, so that every test chip has water
  and the set spans little to much water (1 % to 60 % of the labelled pixels);
* fine domain: three other Bolivia chips with hand labels (``FINE_CHIPS``, each 3-6 % water);
  per seed, one is drawn for checkpoint selection (``val_fraction`` 1/3) and the other two train
  (``train_limit: 2``);
* old domain: two coarse-domain chips (``OLD_DOMAIN_CHIPS``: Bolivia_103757, Spain_7370579)
  kept out of every training set and scored with their hand labels (the experiment's
  ``old_domain`` test set): what a student kept of the coarse domain, beside its teacher;
* coarse domain: the remaining seven chips (``COARSE_CHIPS``: five Bolivia chips, India, USA)
  with WEAK labels made from the bands by spectral-index thresholds, the way Sen1Floods11's
  own weak labels (``S2IndexLabelWeak``, "derived from traditional Sentinel-2 classification",
  i.e. water-index thresholds) were made: NDWI = (B3 - B8) / (B3 + B8) and MNDWI =
  (B3 - B11) / (B3 + B11) on the stored values, water where MNDWI > 0 or NDWI > 0, dry elsewhere,
  nodata (255) where the image is nodata or an index is undefined (zero denominator). The exact
  Sen1Floods11 thresholds and cloud masking are not reproduced; ``WEAK_RULE`` is the rule used.
  The weak labels' agreement with the hand labels on these chips (pixel accuracy and water IoU
  over pixels both label) is written to ``<output>/data/prepared.json``; the hand labels of the
  coarse chips are kept there too (``coarse/hand``) but no run reads them.

Labels are written as uint8 GeoTIFFs on their image's grid (the hand labels' geotransforms
differ from their images' by float noise, which geodistill's grid check already accepts; the
copies simply carry the image's transform). Preparation is idempotent: it is skipped when
``prepared.json`` holds the same recipe.

Then the experiment (stage 1 ``coarse_only`` on the weak labels, and the variants ``fine_only``
(baseline), ``naive_finetune``, ``joint``, ``lwf``, ``attentive``, ``feature_only``,
``prediction_only``, ``no_attention``) runs through ``geodistill.experiments`` exactly like
``geodistill compare``, from a resolved copy of the file with the prepared data's paths, seeds
and epochs filled in (``<output>/experiment.resolved.yaml``). Budget: light U-Net-R18 (four
encoder stages, decoder 128-64-32-16), 128 x 128 crops, 12 per chip, CE + 0.5 Dice, lr 1e-3;
teacher and joint 8 epochs, students 20; evaluated on whole chips.

    python benchmarks/sen1floods11_coarse_to_fine.py                 # 5 seeds, every variant
    python benchmarks/sen1floods11_coarse_to_fine.py --seeds 0 --variants fine_only,attentive
    python benchmarks/sen1floods11_coarse_to_fine.py --resume        # after a stop

Writes ``<output>/results.{json,md,png}`` (mean ± std over seeds, paired Δ vs ``fine_only``) and
``<output>/per_class.md`` (per-class IoU per method).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import yaml

from geodistill.errors import GeodistillError
from geodistill.experiments import load_experiment, run_experiment, select_variants
from geodistill.experiments.harness import check_output_folder
from geodistill.reporting import results_table

HERE = Path(__file__).resolve().parent
EXPERIMENT = HERE / "sen1floods11_coarse_to_fine.yaml"
DATA = HERE.parent.parent / "shared" / "data" / "sen1floods11_hand"
DEFAULT_OUTPUT = "outputs/benchmarks/sen1floods11_c2f"
FILE_DATA = f"{DEFAULT_OUTPUT}/data"
"""The prepared data folder the experiment file names (the default output's)."""
RESOLVED = "experiment.resolved.yaml"
SUMMARY = "prepared.json"
CLASSES = ["dry", "water"]
IGNORE = 255

TEST_CHIPS = [
    "Bolivia_129334",
    "Bolivia_242570",
    "Bolivia_290290",
    "Bolivia_314919",
    "Bolivia_360519",
    "Bolivia_432776",
]
FINE_CHIPS = ["Bolivia_23014", "Bolivia_294583", "Bolivia_60373"]
OLD_DOMAIN_CHIPS = ["Bolivia_103757", "Spain_7370579"]
"""Coarse-domain chips kept out of every training set: with their hand labels they score what a
student kept of the old (coarse) domain, beside its teacher (the experiment's ``old_domain``
test set)."""
COARSE_CHIPS = [
    "Bolivia_195474",
    "Bolivia_233925",
    "Bolivia_312675",
    "Bolivia_379434",
    "Bolivia_76104",
    "India_900498",
    "USA_430764",
]
BANDS = {"B3": 2, "B8": 7, "B11": 11}
"""0-based band indices in S2Hand (B1, B2, B3, B4, B5, B6, B7, B8, B8A, B9, B10, B11, B12)."""
WEAK_RULE = {
    "water": "MNDWI > 0 or NDWI > 0",
    "NDWI": "(B3 - B8) / (B3 + B8)",
    "MNDWI": "(B3 - B11) / (B3 + B11)",
    "mndwi_threshold": 0.0,
    "ndwi_threshold": 0.0,
    "nodata": "any band == 0 (image nodata), or a zero denominator",
}
RECIPE = {
    "version": 2,
    "test": TEST_CHIPS,
    "old_domain": OLD_DOMAIN_CHIPS,
    "fine": FINE_CHIPS,
    "coarse": COARSE_CHIPS,
    "weak_rule": WEAK_RULE,
}


def weak_label(image: np.ndarray) -> np.ndarray:
    """Index-threshold water label of a (13, H, W) int16 chip: 1 water, 0 dry, 255 nodata."""
    b3, b8, b11 = (image[BANDS[name]].astype(np.float64) for name in ("B3", "B8", "B11"))
    nodata = (image == 0).any(axis=0) | (b3 + b8 == 0) | (b3 + b11 == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ndwi = (b3 - b8) / (b3 + b8)
        mndwi = (b3 - b11) / (b3 + b11)
    water = (mndwi > WEAK_RULE["mndwi_threshold"]) | (ndwi > WEAK_RULE["ndwi_threshold"])
    label = water.astype(np.uint8)
    label[nodata] = IGNORE
    return label


def hand_label(path: Path, image: np.ndarray) -> np.ndarray:
    """The hand label as uint8 (0 dry, 1 water, 255 where it is -1 or the image is nodata)."""
    with rasterio.open(path) as src:
        raw = src.read(1)
    label = np.where(raw < 0, IGNORE, raw).astype(np.uint8)
    label[(image == 0).any(axis=0)] = IGNORE
    return label


def _write_label(path: Path, label: np.ndarray, profile: dict[str, Any]) -> None:
    """A uint8 label on the image's grid (its CRS and transform), nodata 255."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = {
        "driver": "GTiff",
        "height": label.shape[0],
        "width": label.shape[1],
        "count": 1,
        "dtype": "uint8",
        "nodata": IGNORE,
        "crs": profile["crs"],
        "transform": profile["transform"],
        "compress": "deflate",
    }
    with rasterio.open(path, "w", **out) as dst:
        dst.write(label[None])


def agreement(weak: np.ndarray, hand: np.ndarray) -> dict[str, float | int]:
    """Pixel accuracy and water IoU of ``weak`` against ``hand`` where both are labelled."""
    both = (weak != IGNORE) & (hand != IGNORE)
    w, h = weak[both] == 1, hand[both] == 1
    union = int((w | h).sum())
    return {
        "pixels": int(both.sum()),
        "correct": int((w == h).sum()),
        "water_intersection": int((w & h).sum()),
        "water_union": union,
        "hand_water": int(h.sum()),
        "weak_water": int(w.sum()),
    }


def _rates(counts: dict[str, float | int]) -> dict[str, float | None]:
    pixels, union = counts["pixels"], counts["water_union"]
    return {
        "pixel_accuracy": counts["correct"] / pixels if pixels else None,
        "water_iou": counts["water_intersection"] / union if union else None,
    }


def prepare(root: Path, data: Path) -> dict[str, Any]:
    """Write the splits' images, hand labels and the coarse chips' weak labels under ``data``
    (skipped when ``data/prepared.json`` holds the same recipe); returns that summary."""
    summary_path = data / SUMMARY
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        if summary.get("recipe") == RECIPE:
            return summary
    missing = [p for p in (root / "S2Hand", root / "LabelHand") if not p.is_dir()]
    if missing:
        raise GeodistillError("no such folder (the Sen1Floods11 hand-labelled chips)", missing[0])
    per_chip: dict[str, Any] = {}
    totals: dict[str, int] = {}
    splits = (
        ("test", TEST_CHIPS),
        ("fine", FINE_CHIPS),
        ("coarse", COARSE_CHIPS),
        ("old_domain", OLD_DOMAIN_CHIPS),
    )
    for split, chips in splits:
        for chip in chips:
            source = root / "S2Hand" / f"{chip}_S2Hand.tif"
            with rasterio.open(source) as src:
                image, profile = src.read(), src.profile
            folder = data / split
            (folder / "images").mkdir(parents=True, exist_ok=True)
            target = folder / "images" / f"{chip}.tif"
            staging = target.with_suffix(".tmp")
            staging.write_bytes(source.read_bytes())
            os.replace(staging, target)
            hand = hand_label(root / "LabelHand" / f"{chip}_LabelHand.tif", image)
            _write_label(folder / "hand" / f"{chip}.tif", hand, profile)
            if split != "coarse":
                continue
            weak = weak_label(image)
            _write_label(folder / "weak" / f"{chip}.tif", weak, profile)
            counts = agreement(weak, hand)
            per_chip[chip] = {**counts, **_rates(counts)}
            for key, value in counts.items():
                totals[key] = totals.get(key, 0) + int(value)
    summary = {
        "recipe": RECIPE,
        "source": str(root),
        "weak_vs_hand_on_coarse_chips": {
            "all_chips": {**totals, **_rates(totals)},
            "per_chip": per_chip,
            "note": "pixels labelled in both (hand label not -1, image not nodata)",
        },
    }
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def replace_prefix(value: Any, old: str, new: str) -> Any:
    """``value`` with every string starting with the path ``old`` starting with ``new``."""
    if isinstance(value, dict):
        return {key: replace_prefix(item, old, new) for key, item in value.items()}
    if isinstance(value, list):
        return [replace_prefix(item, old, new) for item in value]
    if isinstance(value, str) and (value == old or value.startswith(old + "/")):
        return new + value[len(old) :]
    return value


def set_epochs(raw: dict[str, Any], teacher: int | None, student: int | None) -> None:
    """``student`` epochs for the base config, ``teacher`` epochs for every stage or variant
    that sets its own (the teacher, joint); None keeps the file's."""
    if student is not None:
        raw["base"].setdefault("trainer", {})["max_epochs"] = student
    if teacher is None:
        return
    runs = [stage.get("overrides") or {} for stage in (raw.get("stages") or {}).values()]
    runs += list((raw.get("variants") or {}).values())
    for overrides in runs:
        if "max_epochs" in (overrides.get("trainer") or {}):
            overrides["trainer"]["max_epochs"] = teacher


def write_per_class(results: Path, order: list[str]) -> str:
    """``per_class.md`` next to ``results``: per-class IoU per method, mean ± std over seeds."""
    records = json.loads(results.with_suffix(".json").read_text())["runs"]
    per_seed: dict[int, dict[str, dict[str, float]]] = {}
    for record in records:
        metrics = {k.removeprefix("test/"): v for k, v in record["metrics"].items()}
        metrics = {k: float("nan") if v is None else v for k, v in metrics.items()}
        per_seed.setdefault(int(record["seed"]), {})[record["name"]] = metrics
    present = {name for runs in per_seed.values() for name in runs}
    table = results_table(
        [per_seed[s] for s in sorted(per_seed)], CLASSES, [n for n in order if n in present]
    )
    (results.parent / "per_class.md").write_text(
        "Test metrics per method, mean ± std over seeds "
        f"{', '.join(map(str, sorted(per_seed)))} (%; per-class columns are IoU).\n\n{table}"
    )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Protocol: see the docstring of benchmarks/sen1floods11_coarse_to_fine.py.",
    )
    parser.add_argument(
        "--experiment", type=Path, default=EXPERIMENT, help="experiment file (default: %(default)s)"
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=DATA,
        help="Sen1Floods11 hand-labelled chips (S2Hand/, LabelHand/; default: %(default)s)",
    )
    parser.add_argument("--output", type=Path, default=Path(DEFAULT_OUTPUT), help="output folder")
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="training seeds (default: the experiment file's)"
    )
    parser.add_argument(
        "--variants",
        help="comma-separated variants to run, e.g. fine_only,attentive (with the stages they "
        "use; the baseline fine_only must be among them). Default: every variant",
    )
    parser.add_argument("--teacher-epochs", type=int, help="stage 1 and joint epochs")
    parser.add_argument("--student-epochs", type=int, help="stage 2 and fine_only epochs")
    parser.add_argument(
        "--jobs", type=int, default=1, help="runs at once, each a subprocess on one thread"
    )
    earlier = parser.add_mutually_exclusive_group()
    earlier.add_argument(
        "--overwrite", action="store_true", help="remove an earlier run of the experiment first"
    )
    earlier.add_argument(
        "--resume", action="store_true", help="keep the finished runs of the same config"
    )
    args = parser.parse_args()
    variants = [name for name in (args.variants or "").split(",") if name]

    template = load_experiment(args.experiment)  # a bad file or --variants: before any work
    if variants:
        template = select_variants(template, variants)
    output = check_output_folder(args.output, template, args.overwrite, args.resume, "--output")
    summary = prepare(args.data, output / "data")
    agree = summary["weak_vs_hand_on_coarse_chips"]["all_chips"]
    print(
        f"data: {output / 'data'}; weak labels vs hand labels on the coarse chips: pixel "
        f"accuracy {agree['pixel_accuracy']:.4f}, water IoU {agree['water_iou']:.4f}",
        flush=True,
    )

    raw = replace_prefix(
        yaml.safe_load(args.experiment.read_text()), FILE_DATA, str(output / "data")
    )
    if args.seeds:
        raw["seeds"] = list(args.seeds)
    set_epochs(raw, args.teacher_epochs, args.student_epochs)
    raw["output"] = str(output)
    line = shlex.join([sys.executable, *sys.argv])
    resolved = output / RESOLVED
    staging = output / f".{RESOLVED}.tmp"
    staging.write_text(
        f"# {args.experiment.name}, resolved by: {line}\n"
        f"# rerun: geodistill compare --config {resolved}"
        + (f" --variants {','.join(variants)}" if variants else "")
        + " --resume\n"
        + yaml.safe_dump(copy.deepcopy(raw), sort_keys=False)
    )
    try:
        experiment = load_experiment(staging)
        if variants:
            experiment = select_variants(experiment, variants)
        check_output_folder(output, experiment, args.overwrite, args.resume, "--output")
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    os.replace(staging, resolved)
    experiment = replace(experiment, path=resolved)
    argv = sys.argv
    sys.argv = argv[:1]  # the runs' LightningCLI reads its arguments, not this script's
    try:
        results = run_experiment(
            experiment,
            output,
            overwrite=args.overwrite,
            resume=args.resume,
            jobs=args.jobs,
            command=line,
            option="--output",
        )
    finally:
        sys.argv = argv
    print(results.read_text())
    order = [experiment.baseline, *experiment.stages]
    order += [name for name in experiment.variants if name not in order]
    print(write_per_class(results, order))
    print(f"wrote {results}, {results.with_suffix('.json')}, {results.parent / 'per_class.md'}")


if __name__ == "__main__":
    try:
        main()
    except GeodistillError as error:  # a refused output folder, a bad experiment file: one line
        sys.exit(f"error: {error}")
