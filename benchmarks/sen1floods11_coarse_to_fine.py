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
(baseline), ``naive_finetune``, ``joint``, ``lwf``, ``attentive`` (the method's defaults),
``attentive_features``, ``feature_only``, ``no_attention``, ``attentive_calibrated``) runs through
``geodistill.experiments`` exactly like ``geodistill compare``, from a resolved copy of the file
with the prepared data's paths, seeds and epochs filled in (``<output>/experiment.resolved.yaml``).
Budget: light U-Net-R18 (four encoder stages, decoder 128-64-32-16), 128 x 128 crops, 12 per chip,
CE + 0.5 Dice, lr 1e-3; teacher and joint 8 epochs, students 20; evaluated on whole chips.

    python benchmarks/sen1floods11_coarse_to_fine.py                 # 5 seeds, every variant
    python benchmarks/sen1floods11_coarse_to_fine.py --seeds 0 --variants fine_only,attentive
    python benchmarks/sen1floods11_coarse_to_fine.py --resume        # after a stop

Writes ``<output>/results.{json,md,png}`` (mean ± std over seeds, paired Δ vs ``fine_only``) and
``<output>/per_class.md`` (per-class IoU per method).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from experiment_runner import (  # noqa: E402
    RESOLVED,
    add_run_options,
    check_output,
    run_experiment_file,
    set_epochs,
    variant_names,
)
from sen1floods11_data import (  # noqa: E402
    CLASSES,
    DATA,
    IGNORE,
    TEST_CHIPS,
    check_source,
    prepare_chip,
    prepared_summary,
    write_label,
    write_summary,
)

from geodistill.errors import GeodistillError  # noqa: E402

EXPERIMENT = HERE / "sen1floods11_coarse_to_fine.yaml"
DEFAULT_OUTPUT = "outputs/benchmarks/sen1floods11_c2f"
FILE_DATA = f"{DEFAULT_OUTPUT}/data"
"""The prepared data folder the experiment file names (the default output's)."""

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
    summary = prepared_summary(data, RECIPE)
    if summary is not None:
        return summary
    check_source(root)
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
            image, hand, profile = prepare_chip(root, chip, data / split)
            if split != "coarse":
                continue
            weak = weak_label(image)
            write_label(data / split / "weak" / f"{chip}.tif", weak, profile)
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
    write_summary(data, summary)
    return summary


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
    add_run_options(parser, DEFAULT_OUTPUT, coarse_to_fine=True)
    args = parser.parse_args()
    variants = variant_names(args.variants)
    check_output(args.experiment, args, variants)  # a bad file or folder: before any work
    summary = prepare(args.data, args.output / "data")
    agree = summary["weak_vs_hand_on_coarse_chips"]["all_chips"]
    print(
        f"data: {args.output / 'data'}; weak labels vs hand labels on the coarse chips: pixel "
        f"accuracy {agree['pixel_accuracy']:.4f}, water IoU {agree['water_iou']:.4f}",
        flush=True,
    )
    run_experiment_file(
        args.experiment,
        args,
        {FILE_DATA: str(args.output / "data")},
        lambda raw: set_epochs(raw, args.teacher_epochs, args.student_epochs),
        variants,
        resolved_name=RESOLVED,
        class_names=CLASSES,
    )


if __name__ == "__main__":
    try:
        main()
    except GeodistillError as error:  # a refused output folder, a bad experiment file: one line
        sys.exit(f"error: {error}")
