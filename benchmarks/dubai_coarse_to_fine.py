"""Coarse-to-fine benchmark on real imagery: Dubai aerial chips, every method in one harness.

Protocol (see ../shared/data/DATA.md, "A real coarse-to-fine protocol", and docs/coarse_to_fine.md):

* images are resampled by the setting's ``scale`` (area average; 0.5 in the quick setting) and
  written as GeoTIFFs with exact class-id labels (nearest); "Unlabeled" is ignore;
* coarse domain: districts (tiles) 1-5, 45 chips, labels degraded by
  :func:`geodistill.data.coarsen.coarsen_label` with the recipe below, seeded per seed and chip;
* fine domain: district 6, ``--fine-chips`` chips with exact labels for training and 3 chips for
  checkpoint selection (drawn with the seed); every method selects its checkpoint there;
* test: districts 7-8 (18 chips), exact labels, never seen by any method.

    python benchmarks/dubai_coarse_to_fine.py                  # quick: 2-core CPU, 3 seeds
    python benchmarks/dubai_coarse_to_fine.py --setting large  # GPU: full resolution, longer
    python benchmarks/dubai_coarse_to_fine.py --teachers-from outputs/benchmarks/dubai_c2f \
        --methods attentive --student-args '{"feature_weight": 0.1}' --output OTHER_FOLDER
                                        # a stage-2 variant on the same seeds' teachers

Writes ``<output>/results.json`` and ``<output>/results.md`` (mean ± std over seeds).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning

from geodistill.data.coarsen import CoarsenRecipe, coarsen_label
from geodistill.data.labels import read_label
from geodistill.pipelines.coarse_to_fine import (
    METHODS,
    CoarseToFineConfig,
    Stage,
    run_coarse_to_fine,
    write_results_table,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dubai_supervised import CLASSES, COLOR_MAP, DATA  # noqa: E402
from report import command, hardware, write_results  # noqa: E402

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


def _images(data: Path, tiles: list[int]) -> list[str]:
    return [str(data / f"tile_{t}" / "images" / "*.tif") for t in tiles]


def config_for(
    data: Path, seed: int, setting: dict, args: argparse.Namespace
) -> CoarseToFineConfig:
    model = {**setting["model"], "loss": {"ce": 1.0, "dice": 0.5}}
    return CoarseToFineConfig(
        data={
            "classes": CLASSES,
            "coarse": {
                "train": {
                    "images": _images(data, COARSE_TILES),
                    "labels": f"{{parent}}/../coarse_seed{seed}",
                }
            },
            "fine": {
                "train": {"images": _images(data, [FINE_TILE]), "labels": "{parent}/../exact"},
                "test": {"images": _images(data, TEST_TILES), "labels": "{parent}/../exact"},
                "val_fraction": 3 / 9,
                "train_limit": args.fine_chips,
            },
            "patch_size": setting["patch_size"],
            "crops_per_image": setting["crops_per_image"],
            "batch_size": setting["batch_size"],
            "unlabeled_batch_size": setting["unlabeled_batch_size"],
            "eval_batch_size": 1,
            "cache": True,
        },
        output=str(args.output / f"seed{seed}"),
        methods=args.methods,
        seed=seed,
        teacher=Stage(setting["teacher_epochs"], {**model, "lr": 1e-3}),
        student=Stage(setting["student_epochs"], dict(args.student_args)),
        teacher_checkpoint=(
            str(args.teachers_from / f"seed{seed}" / "coarse_only" / "checkpoints" / "best.ckpt")
            if args.teachers_from
            else None
        ),
        exact_coarse_labels="{parent}/../exact",
        check_val_every_n_epoch=setting["val_every"],
        trainer={
            "accelerator": "auto",
            "devices": 1,
            "enable_progress_bar": False,
            "log_every_n_steps": 5,
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--output", type=Path, default=Path("outputs/benchmarks/dubai_c2f"))
    parser.add_argument("--setting", choices=list(SETTINGS), default="quick")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--fine-chips", type=int, default=3)
    parser.add_argument(
        "--teachers-from",
        type=Path,
        help="output folder of an earlier run: reuse its stage-1 teacher of each seed",
    )
    parser.add_argument(
        "--student-args",
        type=json.loads,
        default={},
        help="CoarseToFineTask overrides as JSON, e.g. '{\"temperature\": 4}'",
    )
    runs_flags = parser.add_mutually_exclusive_group()
    runs_flags.add_argument("--overwrite", action="store_true", help="rerun every method")
    runs_flags.add_argument("--resume", action="store_true", help="skip finished methods")
    args = parser.parse_args()
    setting = SETTINGS[args.setting]
    start = time.perf_counter()
    data = prepare(args.data, args.output, setting["scale"], args.seeds)
    runs = []
    for seed in args.seeds:
        config = config_for(data, seed, setting, args)
        runs.append(run_coarse_to_fine(config, overwrite=args.overwrite, resume=args.resume))
        table = write_results_table(runs, CLASSES)
        print(f"after seed {seed}:\n{table}", flush=True)
    report = {
        "command": command(),
        "hardware": hardware(),
        "setting": {"name": args.setting, **setting, "fine_chips": args.fine_chips},
        "recipe": asdict(RECIPE),
        "seconds": round(time.perf_counter() - start, 1),
        "runs": runs,
    }
    table = write_results_table(runs, CLASSES)
    print(write_results(args.output, report, table, len(args.seeds)))


if __name__ == "__main__":
    main()
