"""Coarse-to-fine benchmark on real imagery: Dubai aerial chips, every method in one experiment.

Data preparation plus an experiment file. This script prepares the data (see
../shared/data/DATA.md, "A real coarse-to-fine protocol", and docs/coarse_to_fine.md):

* images are resampled by the setting's ``scale`` (area average; 0.5 in the quick setting) and
  written as GeoTIFFs with exact class-id labels (nearest); "Unlabeled" is ignore;
* coarse domain: districts (tiles) 1-5, 45 chips, labels degraded by
  :func:`geodistill.data.coarsen.coarsen_label` with the recipe below, seeded by
  the run's seed (``${seed}`` in the experiment file; one fixed draw with ``--coarse-seed``) and
  the chip (``<data>/tile_<t>/coarse_seed<k>/``);
* fine domain: district 6, ``--fine-chips`` chips with exact labels for training and 3 chips for
  checkpoint selection (drawn with the seed); every method selects its checkpoint there;
* test: districts 7-8 (18 chips), exact labels, never seen by any method;

then runs ``benchmarks/dubai_coarse_to_fine.yaml`` (stage 1 ``coarse_only`` and every baseline
and ablation of ``configs/coarse_to_fine_demo.yaml``) with ``geodistill.experiments``, exactly
like ``geodistill compare``. The file names the quick setting's data under the default output
folder; this script writes a resolved copy with the prepared data's paths, ``--setting``,
``--fine-chips``, ``--coarse-seed``, seeds and epochs filled in (``<output>/
experiment.resolved.yaml``, copied to ``<output>/experiment.yaml`` with the results).

    python benchmarks/dubai_coarse_to_fine.py                  # quick: 2-core CPU, 3 seeds
    python benchmarks/dubai_coarse_to_fine.py --setting large  # GPU: full resolution, longer
    python benchmarks/dubai_coarse_to_fine.py --variants fine_only,attentive --jobs 2
    python benchmarks/dubai_coarse_to_fine.py --resume         # after a stop, or new variants

A stage-2 variant on the same seeds' teachers: add it to a copy of the experiment file (e.g.
``attentive`` with ``feature_weight: 0.1``), then ``--experiment COPY --variants
fine_only,NEW --resume``: the finished teacher runs of the output folder are kept (same config).

Writes ``<output>/results.{json,md,png}`` (mean ± std over seeds, paired Δ vs ``fine_only``)
and ``<output>/per_class.md`` (mean ± std per method, per-class IoU, gap recovered).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import yaml
from affine import Affine
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning

from geodistill.data.coarsen import CoarsenRecipe, coarsen_label
from geodistill.data.labels import read_label
from geodistill.errors import GeodistillError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dubai_data import CLASSES, COLOR_MAP, DATA  # noqa: E402
from experiment_runner import (  # noqa: E402
    RESOLVED,
    add_run_options,
    check_output,
    run_experiment_file,
    set_epochs,
    variant_names,
)

EXPERIMENT = Path(__file__).resolve().parent / "dubai_coarse_to_fine.yaml"
FILE_DATA = "outputs/benchmarks/dubai_c2f/data_scale0.5"
"""The prepared data folder the experiment file names (the quick setting's, default output)."""

COARSE_TILES = [1, 2, 3, 4, 5]
FINE_TILE = 6
TEST_TILES = [7, 8]

RECIPE = CoarsenRecipe(block=6, closing=8.0, max_dilation=6.0, simplify=4.0, min_area=24.0)
"""Degradation of the coarse-domain labels, in pixels of the resampled grid (``--scale``)."""

LIGHT_UNET = {"encoder_depth": 4, "decoder_channels": [128, 64, 32, 16]}
"""U-Net on the first four ResNet-18 stages: about a third faster on a CPU than the full one."""

SETTINGS = {
    "quick": {
        "scale": 0.5,
        "patch_size": 96,
        "crops_per_image": 16,
        "teacher_epochs": 8,
        "student_epochs": 20,
        "val_every": 2,
        "batch_size": 8,
        "unlabeled_batch_size": 4,
        "model": {"arch": "unet", "encoder": "resnet18", "arch_kwargs": LIGHT_UNET},
    },
    "large": {
        "scale": 1.0,
        "patch_size": 256,
        "crops_per_image": 16,
        "teacher_epochs": 30,
        "student_epochs": 60,
        "val_every": 2,
        "batch_size": 16,
        "unlabeled_batch_size": 16,
        "model": {"arch": "unet", "encoder": "resnet18"},
    },
}


def _write(path: Path, array: np.ndarray, scale: float, nodata: float | None = None) -> None:
    """A GeoTIFF in the original chip's pixel units (the chips have no georeference)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "height": array.shape[-2],
        "width": array.shape[-1],
        "count": 1 if array.ndim == 2 else array.shape[0],
        "dtype": array.dtype.name,
        "compress": "deflate",
        "nodata": nodata,
        "transform": Affine(1 / scale, 0, 0, 0, -1 / scale, 0),
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array if array.ndim == 3 else array[None])


def prepare(root: Path, work: Path, scale: float, seeds: list[int]) -> Path:
    """Resampled images, exact labels, and the coarse labels of each seed, written once."""
    data = work / f"data_scale{scale:g}"
    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)  # the JPG/PNG sources
    for tile in COARSE_TILES + [FINE_TILE] + TEST_TILES:
        for image_path in sorted((root / f"tile_{tile}" / "images").glob("*.jpg")):
            stem = image_path.stem
            image_out = data / f"tile_{tile}" / "images" / f"{stem}.tif"
            exact_out = data / f"tile_{tile}" / "exact" / f"{stem}.tif"
            if not (image_out.exists() and exact_out.exists()):
                with rasterio.open(image_path) as src:
                    shape = (round(src.height * scale), round(src.width * scale))
                    image = src.read(out_shape=(src.count, *shape), resampling=Resampling.average)
                label = read_label(
                    root / f"tile_{tile}" / "masks" / f"{stem}.png", len(CLASSES), 255, COLOR_MAP
                )
                rows = np.minimum((np.arange(shape[0]) + 0.5) / scale, label.shape[0] - 1)
                cols = np.minimum((np.arange(shape[1]) + 0.5) / scale, label.shape[1] - 1)
                exact = label[rows.astype(int)][:, cols.astype(int)].astype(np.uint8)
                _write(image_out, image, scale)
                _write(exact_out, exact, scale, nodata=255)
            if tile not in COARSE_TILES:
                continue
            for seed in seeds:
                coarse_out = data / f"tile_{tile}" / f"coarse_seed{seed}" / f"{stem}.tif"
                if coarse_out.exists():
                    continue
                with rasterio.open(exact_out) as src:
                    exact = src.read(1)
                chip_seed = seed * 1000 + tile * 100 + int("".join(c for c in stem if c.isdigit()))
                _write(coarse_out, coarsen_label(exact, RECIPE, seed=chip_seed), scale, 255)
    return data


def resolve(raw: dict[str, Any], setting: dict[str, Any], args: argparse.Namespace) -> None:
    """The experiment file ``raw`` (its data paths filled in) for the ``setting``,
    ``--fine-chips``, ``--coarse-seed`` and the epochs."""
    base = raw["base"]
    data_args = base["data"]["init_args"]
    coarse = data_args["coarse"]["train"]
    if args.coarse_seed is not None:  # one draw for every seed instead of the seed's own
        coarse["labels"] = coarse["labels"].replace("${seed}", str(args.coarse_seed))
    data_args["fine"]["train_limit"] = args.fine_chips
    for key in ("patch_size", "crops_per_image", "batch_size", "unlabeled_batch_size"):
        data_args[key] = setting[key]
    base["trainer"]["check_val_every_n_epoch"] = setting["val_every"]
    model = base["model"]["init_args"]
    model.pop("arch_kwargs", None)
    model.update(setting["model"])
    set_epochs(raw, args.teacher_epochs, args.student_epochs)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="See docs/benchmarks.md#coarse-to-fine and docs/coarse_to_fine.md.",
    )
    parser.add_argument(
        "--experiment", type=Path, default=EXPERIMENT, help="experiment file (default: %(default)s)"
    )
    parser.add_argument("--data", type=Path, default=DATA, help="the Dubai aerial chips")
    parser.add_argument("--setting", choices=list(SETTINGS), default="quick")
    parser.add_argument("--fine-chips", type=int, default=3, help="exact chips to train on")
    parser.add_argument(
        "--coarse-seed",
        type=int,
        help="one seed of the coarse-label degradation for every run (default: each seed draws "
        "its own, the published protocol)",
    )
    add_run_options(parser, "outputs/benchmarks/dubai_c2f", coarse_to_fine=True)
    args = parser.parse_args()
    setting = SETTINGS[args.setting]
    args.teacher_epochs = args.teacher_epochs or setting["teacher_epochs"]
    args.student_epochs = args.student_epochs or setting["student_epochs"]
    variants = variant_names(args.variants)
    check_output(args.experiment, args, variants)
    seeds = list(args.seeds or yaml.safe_load(args.experiment.read_text())["seeds"])
    draws = seeds if args.coarse_seed is None else [args.coarse_seed]
    data = prepare(args.data, args.output, setting["scale"], draws)
    run_experiment_file(
        args.experiment,
        args,
        {FILE_DATA: str(data)},
        lambda raw: resolve(raw, setting, args),
        variants,
        resolved_name=RESOLVED,
        header=False,
        class_names=CLASSES,
    )


if __name__ == "__main__":
    try:
        main()
    except GeodistillError as error:  # a refused output folder, a bad experiment file: one line
        sys.exit(f"error: {error}")
