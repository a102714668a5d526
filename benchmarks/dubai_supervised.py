"""Supervised baseline on real imagery: Dubai aerial chips, district-wise split.

Train on districts (tiles) 1-5, select the checkpoint on district 6, test on districts 7-8, which
were imaged at other times: a natural domain shift. Masks are RGB-coded PNGs; the colours used are
the ones the PNGs really contain (see ../shared/data/DATA.md), "Unlabeled" is ignored.

    python benchmarks/dubai_supervised.py --epochs 20 --seeds 0

Writes ``<output>/results.json`` and ``<output>/results.md`` (mean ± std over seeds).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import lightning as L
import numpy as np
from report import hardware

from geodistill.data import Domain, GeoSegDataModule, Source
from geodistill.experiment import fit_and_test
from geodistill.tasks import SegmentationTask

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "dubai_aerial"
CLASSES = ["building", "land", "road", "vegetation", "water"]
COLOR_MAP = {
    "60,16,152": 0,
    "132,41,246": 1,
    "110,193,228": 2,
    "254,221,58": 3,
    "226,169,41": 4,
    "155,155,155": -1,
}


def tiles(root: Path, numbers: list[int]) -> Source:
    return Source(
        images=[str(root / f"tile_{n}" / "images" / "*.jpg") for n in numbers],
        labels="{parent}/../masks",
        color_map=COLOR_MAP,
    )


def dubai_datamodule(
    root: Path, seed: int, patch_size: int, batch_size: int, train_tiles: list[int] | None = None
) -> GeoSegDataModule:
    return GeoSegDataModule(
        classes=CLASSES,
        fine=Domain(
            train=tiles(root, train_tiles or [1, 2, 3, 4, 5]),
            val=tiles(root, [6]),
            test=tiles(root, [7, 8]),
        ),
        patch_size=patch_size,
        crops_per_image=4,
        batch_size=batch_size,
        eval_batch_size=1,
        cache=True,
        seed=seed,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--output", type=Path, default=Path("outputs/benchmarks/dubai_supervised"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--patch-size", type=int, default=192)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--arch", default="unet")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--val-every", type=int, default=5)
    args = parser.parse_args()

    runs = []
    for seed in args.seeds:
        start = time.perf_counter()
        L.seed_everything(seed, verbose=False)
        datamodule = dubai_datamodule(args.data, seed, args.patch_size, args.batch_size)
        task = SegmentationTask(
            in_channels=datamodule.num_bands,
            num_classes=datamodule.num_classes,
            class_names=datamodule.classes,
            arch=args.arch,
            encoder=args.encoder,
            loss={"ce": 1.0, "dice": 0.5},
            lr=1e-3,
        )
        result = fit_and_test(
            task,
            datamodule,
            args.output / f"seed{seed}",
            max_epochs=args.epochs,
            check_val_every_n_epoch=args.val_every,
            accelerator="auto",
        )
        runs.append({"seed": seed, "seconds": time.perf_counter() - start, **result.metrics})
        print(f"seed {seed}: mIoU {result.metrics['mIoU']:.4f}")

    keys = ["mIoU", "boundary_F1", "OA", "kappa"] + [f"IoU/{c}" for c in CLASSES]
    summary = {
        k: (float(np.mean([r[k] for r in runs])), float(np.std([r[k] for r in runs]))) for k in keys
    }
    report = {
        "command": "python benchmarks/dubai_supervised.py "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
            if k not in ("data", "output")
        ),
        "hardware": hardware(),
        "runs": runs,
        "summary": summary,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "results.json").write_text(json.dumps(report, indent=2))
    lines = ["| metric | mean ± std (%) |", "|---|---|"]
    lines += [f"| {k} | {100 * m:.2f} ± {100 * s:.2f} |" for k, (m, s) in summary.items()]
    (args.output / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
