"""KTDA on real imagery: a light student alone vs the same student taught by a frozen teacher.

Dubai aerial chips (../shared/data/DATA.md), prepared as in ``dubai_coarse_to_fine.py`` (resampled
GeoTIFFs, exact class-id labels, "Unlabeled" ignored). Protocol (docs/ktda.md, docs/benchmarks.md):

* **teacher**: "a large model trained on more data": a full-depth U-Net on a ResNet-34, trained
  with ``SegmentationTask`` on districts 1-5 (45 chips, exact labels), checkpoint selected on
  all 9 chips of district 6; trained once (seed 0) and reused by every seed (``--teacher PATH``
  reuses an existing checkpoint). Its own test scores are reported too;
* **students**: the light U-Net of the coarse-to-fine benchmark (``LIGHT_UNET`` on ResNet-18),
  trained on district 6 only: ``--fine-chips`` chips with exact labels and 3 chips for
  checkpoint selection, drawn with the seed. Every method gets the same epochs, optimiser, loss,
  augmentation and number of training windows per epoch (see ``crops_per_image`` below);
* **test**: districts 7-8 (18 chips), exact labels, never seen by any model.

Methods: ``student`` and ``ktda`` by default; ``ktda_no_fmm``, ``ktda_online`` (teacher on
every batch of random crops instead of the cache's fixed windows) and ``ktda_no_teacher`` on
request (:data:`METHODS`).

    python benchmarks/ktda_dubai.py                       # quick: 2-core CPU, 3 seeds
    python benchmarks/ktda_dubai.py \
        --teacher outputs/benchmarks/ktda_dubai/teacher/checkpoints/best.ckpt \
        --methods ktda_no_fmm ktda_online ktda_no_teacher \
        --output outputs/benchmarks/ktda_dubai_ablations \
        --prepared-in outputs/benchmarks/ktda_dubai      # the ablations, same teacher and data
    python benchmarks/ktda_dubai.py --teacher TEACHER.ckpt --methods ktda \
        --ktda-args '{"alpha": 1.0}' --output OTHER_FOLDER    # a variant on the same teacher
    python benchmarks/ktda_dubai.py --setting large       # GPU: full resolution, ResNet-50 teacher

Writes ``<output>/results.json`` and ``<output>/results.md`` (mean ± std over seeds).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from geodistill.data import Domain, GeoSegDataModule, Source
from geodistill.data.raster import raster_info
from geodistill.data.tiling import tile_origins
from geodistill.experiment import fit_and_test
from geodistill.export import export_student
from geodistill.models.checkpoint import check_checkpoint
from geodistill.tasks import KnowledgeTransferTask, SegmentationTask

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dubai_coarse_to_fine import FINE_TILE, LIGHT_UNET, TEST_TILES, prepare  # noqa: E402
from dubai_supervised import CLASSES, DATA  # noqa: E402
from report import command, hardware, write_results  # noqa: E402

TEACHER_TILES = [1, 2, 3, 4, 5]

SETTINGS: dict[str, dict[str, Any]] = {
    "quick": {
        "scale": 0.5,
        "patch_size": 96,  # a multiple of 32: cache windows and training crops line up
        "batch_size": 8,
        "val_every": 2,
        "teacher": {
            "model": {"arch": "unet", "encoder": "resnet34"},
            "epochs": 8,
            "patch_size": 128,
            "crops_per_image": 8,
        },
        "student_epochs": 12,
        "student": {"arch": "unet", "encoder": "resnet18", "arch_kwargs": LIGHT_UNET},
        # KTDA's FMM is 4 blocks on each of ConvNeXt's stride 4-32 stages. Here: 1 block on the
        # light student's stride 4-16 stages. Attention on its stride-2 stage (encoder.-4) made
        # testing on whole ~1 MP chips 10x slower than the plain student on this CPU.
        "modulation": {
            "kind": "transformer",
            "depth": 1,
            "heads": 8,
            "mlp_ratio": 4.0,
            "levels": ["encoder.-3", "encoder.-2", "encoder.-1"],
        },
    },
    "large": {
        "scale": 1.0,
        "patch_size": 256,
        "batch_size": 16,
        "val_every": 2,
        "teacher": {
            "model": {"arch": "unet", "encoder": "resnet50"},
            "epochs": 60,
            "patch_size": 256,
            "crops_per_image": 16,
        },
        "student_epochs": 80,
        "student": {"arch": "unet", "encoder": "resnet18"},
        "modulation": {"kind": "transformer", "depth": 4, "heads": 8, "mlp_ratio": 4.0},
    },
}

SUPERVISED = {"loss": {"ce": 1.0, "dice": 0.5}, "lr": 1e-3, "weight_decay": 1e-4}
"""Loss and optimiser (AdamW, poly schedule) shared by the teacher and every student."""

KTDA_DEFAULTS = {
    "distill_weight": 1.0,
    "alpha": 0.5,
    "temperature": 1.0,
    "aux_weight": 0.4,
    "aux_level": "encoder.-2",
}
"""KTDA's loss settings (docs/ktda.md); ``student_levels`` and the teacher's levels are the
defaults, the four deepest encoder stages of each, paired in order."""


@dataclass(frozen=True)
class Method:
    """One student recipe: plain supervised training, or KTDA with these overrides."""

    description: str
    ktda: dict[str, Any] | None = None


METHODS: dict[str, Method] = {
    "student": Method("light U-Net R18 on the few labels alone (SegmentationTask)"),
    "ktda": Method("the same student + KTDA: FAM, KL+MSE, FMM, auxiliary head", ktda={}),
    "ktda_no_fmm": Method("ablation: KTDA without feature modulation", ktda={"modulation": None}),
    "ktda_online": Method(
        "control: KTDA with the teacher run on every batch of random crops (no teacher cache)",
        ktda={"teacher_cache": None},
    ),
    "ktda_no_teacher": Method(
        "ablation: KTDA's student (FMM + auxiliary head) without the teacher term",
        ktda={"distill_weight": 0.0},
    ),
}
"""The baseline, KTDA and its ablations, by name."""

DEFAULT_METHODS = ["student", "ktda"]
"""What the quick setting runs; the ablations are run with ``--teacher`` and ``--methods``."""

KEYS = ["mIoU", "boundary_F1", "OA"] + [f"IoU/{c}" for c in CLASSES]


def _images(data: Path, tiles: list[int]) -> list[str]:
    return [str(data / f"tile_{t}" / "images" / "*.tif") for t in tiles]


def _source(data: Path, tiles: list[int]) -> Source:
    return Source(images=_images(data, tiles), labels="{parent}/../exact")


def teacher_datamodule(data: Path, setting: dict[str, Any]) -> GeoSegDataModule:
    """Districts 1-5 for training, all of district 6 for checkpoint selection, 7-8 for test."""
    teacher = setting["teacher"]
    return GeoSegDataModule(
        classes=CLASSES,
        fine=Domain(
            train=_source(data, TEACHER_TILES),
            val=_source(data, [FINE_TILE]),
            test=_source(data, TEST_TILES),
        ),
        patch_size=teacher["patch_size"],
        crops_per_image=teacher["crops_per_image"],
        batch_size=setting["batch_size"],
        eval_batch_size=1,
        cache=True,
        seed=0,
    )


def student_datamodule(
    data: Path, seed: int, setting: dict[str, Any], fine_chips: int, crops_per_image: int
) -> GeoSegDataModule:
    """District 6: ``fine_chips`` training chips and 3 validation chips drawn with the seed."""
    return GeoSegDataModule(
        classes=CLASSES,
        fine=Domain(
            train=_source(data, [FINE_TILE]),
            test=_source(data, TEST_TILES),
            val_fraction=3 / 9,
            train_limit=fine_chips,
        ),
        patch_size=setting["patch_size"],
        crops_per_image=crops_per_image,
        batch_size=setting["batch_size"],
        eval_batch_size=1,
        cache=True,
        seed=seed,
    )


def windows_per_chip(datamodule: GeoSegDataModule) -> int:
    """Teacher-cache windows per training chip (rounded up): the cache trains on a fixed grid of
    ``patch_size`` windows instead of random crops, so the plain student gets as many random
    crops per chip and epoch, hence as many steps."""
    size = datamodule.patch_size
    chips = [image for image, _ in datamodule.splits["fine"]["train"]]
    total = 0
    for image in chips:
        info = raster_info(image)
        total += len(tile_origins(info.height, size, size)) * len(
            tile_origins(info.width, size, size)
        )
    return math.ceil(total / len(chips))


def train_teacher(
    data: Path, output: Path, setting: dict[str, Any], args: argparse.Namespace
) -> tuple[Path, dict[str, float], float]:
    """Train the teacher once (seed 0), or test ``args.teacher``: (checkpoint, test metrics,
    training seconds)."""
    datamodule = teacher_datamodule(data, setting)
    if args.teacher is not None:
        check_checkpoint(args.teacher)  # weights-only read first: refuses a code-carrying pickle
        task = SegmentationTask.load_from_checkpoint(args.teacher, map_location="cpu")
        trainer = L.Trainer(
            default_root_dir=output / "teacher_test",
            logger=False,
            enable_model_summary=False,
            enable_progress_bar=False,
            accelerator="auto",
            devices=1,
        )
        trainer.test(task, datamodule=datamodule, verbose=False)
        return Path(args.teacher), dict(task.test_results), 0.0
    start = time.perf_counter()
    L.seed_everything(0, verbose=False)
    task = SegmentationTask(
        in_channels=datamodule.num_bands,
        num_classes=datamodule.num_classes,
        class_names=datamodule.classes,
        **setting["teacher"]["model"],
        **SUPERVISED,
    )
    result = fit_and_test(
        task,
        datamodule,
        output / "teacher",
        max_epochs=args.teacher_epochs or setting["teacher"]["epochs"],
        check_val_every_n_epoch=setting["val_every"],
        accelerator="auto",
        enable_progress_bar=False,
        log_every_n_steps=10,
    )
    return result.checkpoint, result.metrics, time.perf_counter() - start


def student_task(
    name: str,
    datamodule: GeoSegDataModule,
    setting: dict[str, Any],
    teacher: Path,
    cache: Path,
    ktda_args: dict[str, Any],
) -> SegmentationTask:
    method = METHODS[name]
    common = {
        "in_channels": datamodule.num_bands,
        "num_classes": datamodule.num_classes,
        "class_names": datamodule.classes,
        **setting["student"],
        **SUPERVISED,
    }
    if method.ktda is None:
        return SegmentationTask(**common)
    arguments = {
        **KTDA_DEFAULTS,
        "modulation": setting["modulation"],
        "teacher_cache": str(cache),
        **ktda_args,
        **method.ktda,
    }
    return KnowledgeTransferTask(
        teacher={"kind": "geodistill", "path": str(teacher)}, **common, **arguments
    )


def deployed_check(
    task: SegmentationTask, checkpoint: Path, datamodule: GeoSegDataModule
) -> dict[str, Any]:
    """Export the teacher-free student (``geodistill export``), reload it as a plain
    ``SegmentationTask`` and compare its logits with the tested task's on a test-chip window."""
    exported = export_student(checkpoint, checkpoint.parent.parent / "student.ckpt", overwrite=True)
    deployed = SegmentationTask.load_from_checkpoint(exported, map_location="cpu").eval()
    window = datamodule.datasets["test"][0]["image"][None, :, :256, :256]
    task.eval()  # holds the tested (best) weights: trainer.test loaded them
    with torch.no_grad():
        difference = (deployed.model(window) - task.model(window)).abs().max()
    return {
        "parameters": sum(p.numel() for p in deployed.model.parameters()),
        "max_logit_difference": float(difference),
    }


def run_seed(
    seed: int, data: Path, teacher: Path, setting: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    output = args.output / f"seed{seed}"
    probe = student_datamodule(data, seed, setting, args.fine_chips, 1)
    crops = windows_per_chip(probe)
    results: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    deployed: dict[str, dict[str, Any]] = {}
    for name in args.methods:
        start = time.perf_counter()
        L.seed_everything(seed, verbose=False)
        datamodule = student_datamodule(data, seed, setting, args.fine_chips, crops)
        task = student_task(
            name, datamodule, setting, teacher, output / "teacher_cache", args.ktda_args
        )
        result = fit_and_test(
            task,
            datamodule,
            output / name,
            max_epochs=args.student_epochs or setting["student_epochs"],
            check_val_every_n_epoch=setting["val_every"],
            accelerator="auto",
            enable_progress_bar=False,
            log_every_n_steps=5,
        )
        results[name] = result.metrics
        if METHODS[name].ktda is not None:
            deployed[name] = deployed_check(task, result.checkpoint, datamodule)
        else:
            deployed[name] = {"parameters": sum(p.numel() for p in task.model.parameters())}
        seconds[name] = round(time.perf_counter() - start, 1)
        print(
            f"seed {seed} {name}: mIoU {result.metrics['mIoU']:.4f} ({seconds[name]} s)", flush=True
        )
    return {
        "seed": seed,
        "train_chips": [Path(p).name for p, _ in probe.splits["fine"]["train"]],
        "val_chips": [Path(p).name for p, _ in probe.splits["fine"]["val"]],
        "crops_per_image": crops,
        "seconds": seconds,
        "deployed": deployed,
        "results": results,
    }


def results_table(runs: list[dict[str, Any]], methods: list[str], teacher: dict[str, float]) -> str:
    """Markdown: mean ± std (%) over seeds per method, then the teacher's single run."""
    header = ["method", *KEYS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in methods:
        cells = [name]
        for key in KEYS:
            values = [100 * run["results"][name][key] for run in runs]
            cells.append(f"{np.mean(values):.2f} ± {np.std(values):.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    cells = ["teacher (U-Net R34, seed 0)"] + [f"{100 * teacher[key]:.2f}" for key in KEYS]
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--output", type=Path, default=Path("outputs/benchmarks/ktda_dubai"))
    parser.add_argument(
        "--prepared-in",
        type=Path,
        help="folder holding (or to hold) the prepared data_scale<s> folder; default: --output",
    )
    parser.add_argument("--setting", choices=list(SETTINGS), default="quick")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS))
    parser.add_argument("--fine-chips", type=int, default=3)
    parser.add_argument("--teacher", type=Path, help="reuse this teacher checkpoint")
    parser.add_argument("--teacher-epochs", type=int, help="override the setting's teacher epochs")
    parser.add_argument("--student-epochs", type=int, help="override the setting's student epochs")
    parser.add_argument(
        "--ktda-args",
        type=json.loads,
        default={},
        help="KnowledgeTransferTask overrides as JSON, e.g. '{\"alpha\": 1.0}'",
    )
    args = parser.parse_args()
    setting = SETTINGS[args.setting]
    start = time.perf_counter()
    data = prepare(args.data, args.prepared_in or args.output, setting["scale"], seeds=[])
    teacher, teacher_metrics, teacher_seconds = train_teacher(data, args.output, setting, args)
    print(f"teacher {teacher}: test mIoU {teacher_metrics['mIoU']:.4f}", flush=True)
    runs = []
    for seed in args.seeds:
        runs.append(run_seed(seed, data, teacher, setting, args))
        print(
            f"after seed {seed}:\n{results_table(runs, args.methods, teacher_metrics)}", flush=True
        )
    report = {
        "command": command(),
        "hardware": hardware(),
        "setting": {
            "name": args.setting,
            **setting,
            "fine_chips": args.fine_chips,
            "teacher_epochs": args.teacher_epochs or setting["teacher"]["epochs"],
            "student_epochs": args.student_epochs or setting["student_epochs"],
            "supervised": SUPERVISED,
            "ktda": {**KTDA_DEFAULTS, **args.ktda_args},
        },
        "methods": {name: METHODS[name].description for name in args.methods},
        "teacher": {
            "checkpoint": str(teacher),
            "seconds": round(teacher_seconds, 1),
            "test": teacher_metrics,
        },
        "seconds": round(time.perf_counter() - start, 1),
        "runs": runs,
    }
    table = results_table(runs, args.methods, teacher_metrics)
    print(write_results(args.output, report, table, len(args.seeds)))


if __name__ == "__main__":
    main()
