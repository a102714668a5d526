"""The Sen1Floods11 hand-labelled chips, as the Sen1Floods11 benchmarks prepare them.

``../shared/data/sen1floods11_hand`` holds 18 chips (``S2Hand/<id>_S2Hand.tif``: 512 x 512, 13
bands B1..B12 with B8A, int16 L1C reflectance x 10000, nodata 0; ``LabelHand/<id>_LabelHand.tif``:
-1 nodata, 0 dry, 1 water). The helpers here are the one way the benchmarks read and write them:
images are copied as stored; hand labels become uint8 (0 dry, 1 water, 255 ignored where the label
is -1 or any image band is 0, how geodistill's reader marks nodata) written on the image's grid
(the hand labels' geotransforms differ from their images' by float noise, which geodistill's grid
check already accepts; the copies simply carry the image's transform). A preparation is
idempotent: :func:`prepared_summary` returns the earlier summary when ``prepared.json`` holds the
same recipe.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from geodistill.errors import GeodistillError

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "sen1floods11_hand"
"""The hand-labelled chips (``S2Hand/``, ``LabelHand/``)."""
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
"""Six held-out Bolivia chips (Bolivia is Sen1Floods11's own held-out country), chosen once, by
hand, so that every test chip has water and the set spans little to much water (1 % to 60 % of
the labelled pixels)."""


def image_path(root: Path, chip: str) -> Path:
    return root / "S2Hand" / f"{chip}_S2Hand.tif"


def label_path(root: Path, chip: str) -> Path:
    return root / "LabelHand" / f"{chip}_LabelHand.tif"


def check_source(root: Path) -> None:
    """Refuse a folder without the chips' ``S2Hand/`` and ``LabelHand/`` folders."""
    missing = [p for p in (root / "S2Hand", root / "LabelHand") if not p.is_dir()]
    if missing:
        raise GeodistillError("no such folder (the Sen1Floods11 hand-labelled chips)", missing[0])


def chip_ids(root: Path) -> list[str]:
    """Every chip of ``root`` with an image and a hand label, sorted."""
    check_source(root)
    chips = sorted(p.name.removesuffix("_S2Hand.tif") for p in (root / "S2Hand").glob("*.tif"))
    return [chip for chip in chips if label_path(root, chip).is_file()]


def read_image(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """All bands of a chip as stored, and its rasterio profile."""
    with rasterio.open(path) as src:
        return src.read(), src.profile


def copy_image(source: Path, target: Path) -> None:
    """Copy a chip as stored (atomically: a staging file renamed into place)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_suffix(".tmp")
    staging.write_bytes(source.read_bytes())
    os.replace(staging, target)


def hand_label(path: Path, image: np.ndarray) -> np.ndarray:
    """The hand label as uint8 (0 dry, 1 water, 255 where it is -1 or the image is nodata)."""
    with rasterio.open(path) as src:
        raw = src.read(1)
    label = np.where(raw < 0, IGNORE, raw).astype(np.uint8)
    label[(image == 0).any(axis=0)] = IGNORE
    return label


def write_label(path: Path, label: np.ndarray, profile: dict[str, Any]) -> None:
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


def prepare_chip(root: Path, chip: str, folder: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """Copy ``chip``'s image to ``folder/images/<chip>.tif`` and write its hand label to
    ``folder/hand/<chip>.tif``; returns the image, the label and the image's profile."""
    source = image_path(root, chip)
    image, profile = read_image(source)
    copy_image(source, folder / "images" / f"{chip}.tif")
    hand = hand_label(label_path(root, chip), image)
    write_label(folder / "hand" / f"{chip}.tif", hand, profile)
    return image, hand, profile


def prepared_summary(data: Path, recipe: dict[str, Any]) -> dict[str, Any] | None:
    """The summary in ``data/prepared.json`` when it was written for ``recipe``, else ``None``."""
    summary_path = data / SUMMARY
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        if summary.get("recipe") == recipe:
            return summary
    return None


def write_summary(data: Path, summary: dict[str, Any]) -> None:
    """Write ``data/prepared.json`` (last: its recipe marks a finished preparation)."""
    (data / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
