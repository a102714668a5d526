"""Semi-supervised benchmark: supervised-only vs FixMatch vs FixMatch + multi-teacher distillation.

One harness for issue 6's protocol, on real imagery (Dubai aerial chips) and on the SYNTHETIC
multispectral demo data, at several label ratios, mean ± std over seeds. Methods:

* ``supervised``: ``SegmentationTask`` on the labelled chips alone;
* ``fixmatch``: ``SemiSupervisedTask`` without teachers (FixMatch with an EMA model, strong
  multispectral view, CutMix) on the labelled chips + the rest of the pool without labels;
* ``fixmatch_mt``: the same + feature distillation from frozen teachers, fused into the decoder
  (RS-MTDF-style, docs/semi_supervised.md); the deployed student stays teacher-free.

Data (``--dataset``):

* ``dubai``: the half-resolution preparation of ``dubai_coarse_to_fine.py`` (its ``prepare``),
  exact labels, "Unlabeled" ignored. Labelled pool: districts (tiles) 1-5, 45 chips;
  ``train_ratio`` of them keep their labels (drawn with the seed; 1 % ⊂ 5 % ⊂ 10 % for a seed),
  the rest of districts 1-5 is the unlabelled stream (``unlabeled_from: rest``). Checkpoint
  selection on all of district 6, test on districts 7-8 (18 chips, never seen). Student: the
  light U-Net of ``dubai_coarse_to_fine.py`` (``LIGHT_UNET`` on ResNet-18), with KTDA's loss and
  optimiser (``ktda_dubai.SUPERVISED``). Default ratios 0.05 / 0.1 / 0.25 = 2 / 4 / 11 chips
  (``round``: 10 % of 45 is 4.5, rounded to even): 1 % of 45 chips is under half a chip, so the
  "at least one chip" rule would make 1 % and 2 % the same single chip; 5 % is the smallest
  ratio giving "a few labelled chips", and each ratio keeps a distinct count. Chips differ in
  size from district to district (254 x 272 to 563 x 529 px at half resolution), so the labelled
  *pixel* share is recorded beside the chip count (2.4-4.8 % at 5 %, seeds 0-2).
* ``demo``: SYNTHETIC 6-band region-B chips of :func:`geodistill.data.synthetic.
  write_demo_dataset` (128 x 128, data seed 1, so no chip is one of ``geodistill demo``'s):
  a pool of 100 chips (ratios 1 / 5 / 10 % = 1 / 5 / 10 chips), 10 fixed validation chips and 30
  held-out test chips. Everything else as for Dubai; the demo's student (U-Net R18), loss and
  learning rate.

Fairness: every method of a dataset trains the same student from the same initialisation (the
seed; ``fixmatch_mt`` adds its fusion modules), with the same optimiser (AdamW, poly schedule),
loss, crops, labelled batch size and the same number of optimiser steps (``max_steps``, one
labelled batch each: an epoch over 2 chips is only a few steps, so a step budget gives small
ratios the same training as large ones), validated every ``val_every`` steps on the same chips;
the best checkpoint by val mIoU is tested.

Teachers of ``fixmatch_mt`` (``--teacher-source``):

* ``subset`` (default): per ratio and seed, two teachers of other architectures (U-Net R34, as
  KTDA's teacher, and a SegFormer, a transformer encoder: two different views as RS-MTDF's
  DINOv2 + CLIP) trained with ``SegmentationTask`` on **the same labelled chips as the student**,
  for ``teacher_steps`` steps. No method then sees a label beyond the ratio: the comparison is a
  semi-supervised one. Costs two teacher trainings per ratio and seed.
* ``given``: the checkpoints of ``--teacher DATASET=PATH`` (repeatable), the same for every ratio
  and seed. Defaults: Dubai, the U-Net R34 teacher of ``ktda_dubai.py``, which was trained on
  districts 1-5 with ALL labels: it saw the labels of the chips the student gets unlabelled, so
  ``fixmatch_mt`` is then not a semi-supervised result but "student + a teacher trained on more
  labels" (recorded as ``teachers_saw_withheld_labels: true``); demo, the two teachers of
  ``geodistill demo`` (region-A coarse outlines; 4 exact region-B chips of data seed 0): other
  data, no withheld label.

The teachers' outputs are cached (``--teacher-cache``, default on: computed once per ratio and
seed over fixed ``patch_size`` windows); ``fixmatch_mt`` then trains on that window grid (with
flips, 90° rotations and photometric jitter) instead of random crops. ``--no-teacher-cache``
runs the teachers on every batch of random crops, the exact control.

    python benchmarks/semi_supervised.py --dataset dubai          # quick: 3 ratios x 3 seeds,
        --output outputs/benchmarks/semi_supervised_dubai       # ~110 min of one CPU core
    python benchmarks/semi_supervised.py --dataset demo --teacher-source given \
        --output outputs/benchmarks/semi_supervised_demo        # ~60 min of one core; needs
                                                                # `geodistill demo` first
    python benchmarks/semi_supervised.py --quick        # smoke: 1 seed, smallest ratio, 4 steps,
                                                        # 2 val/test chips: the harness only
    python benchmarks/semi_supervised.py --dataset dubai --teacher-source given \\
        --output outputs/benchmarks/semi_supervised_given     # the ktda_dubai teacher (leaks!)
    python benchmarks/semi_supervised.py --setting large          # GPU: full resolution, longer

Writes ``<output>/results.json`` and ``<output>/results.md`` (mean ± std over seeds per method and
ratio, and whether each semi-supervised variant beats supervised-only at each ratio), updated
after every ratio and seed; ``--resume`` reuses finished runs of the same output folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.profilers import SimpleProfiler

from geodistill.data import Domain, GeoSegDataModule, Source
from geodistill.data.raster import raster_info
from geodistill.data.synthetic import CLASS_NAMES, write_demo_dataset
from geodistill.demo import DEMO_MODEL
from geodistill.errors import GeodistillError
from geodistill.experiment import fit_and_test
from geodistill.export import export_student
from geodistill.models.checkpoint import check_checkpoint
from geodistill.tasks import SegmentationTask, SemiSupervisedTask

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dubai_coarse_to_fine import COARSE_TILES, FINE_TILE, LIGHT_UNET, TEST_TILES, prepare  # noqa: E402
from dubai_supervised import CLASSES, DATA  # noqa: E402
from ktda_dubai import SETTINGS as KTDA_SETTINGS  # noqa: E402
from ktda_dubai import SUPERVISED  # noqa: E402
from report import command, hardware, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KTDA_TEACHER = ROOT / "outputs/benchmarks/ktda_dubai/teacher/checkpoints/best.ckpt"
DEMO_TEACHERS = [
    ROOT / f"outputs/demo/runs/{name}/checkpoints/best.ckpt"
    for name in ("coarse_only", "fine_only")
]
DEMO_DATA = {"seed": 1, "chip_size": 128, "pool": 100, "val": 10, "test": 30}
"""The synthetic data set: data seed 1 (``geodistill demo`` draws seed 0), region B only."""

# ------------------------------------------------------------------------------------ methods


@dataclass(frozen=True)
class Method:
    """A student recipe: ``semi`` adds the unlabelled stream (FixMatch), ``teachers`` the
    distillation from frozen teachers."""

    description: str
    semi: bool = False
    teachers: bool = False


METHODS: dict[str, Method] = {
    "supervised": Method("the student on the labelled chips alone (SegmentationTask)"),
    "fixmatch": Method(
        "FixMatch + EMA, strong multispectral view, CutMix (SemiSupervisedTask, no teacher)",
        semi=True,
    ),
    "fixmatch_mt": Method(
        "FixMatch + multi-teacher feature distillation with fusion (SemiSupervisedTask)",
        semi=True,
        teachers=True,
    ),
}

SEMI_DEFAULTS: dict[str, Any] = {"threshold": 0.95, "ema_decay": 0.996, "unsup_weight": 1.0}
"""FixMatch settings of both semi-supervised methods (RS-MTDF's); ``--semi-args`` overrides."""

MT_DEFAULTS: dict[str, Any] = {"distill_weight": 1.0, "distill_loss": "mse", "fusion": True}
"""Distillation settings of ``fixmatch_mt`` (RS-MTDF's: MSE, fusion); ``--mt-args`` overrides."""

TEACHER_LEVEL = ["encoder.-1"]
"""Each teacher is distilled at its deepest encoder level."""

# ----------------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class Protocol:
    """One data set of the benchmark: its classes, ratios, settings, how its data are prepared
    and how a label ratio becomes the labelled domain."""

    classes: list[str]
    ratios: list[float]
    settings: dict[str, dict[str, Any]]
    prepare: Callable[[argparse.Namespace, dict[str, Any]], Any]
    domain: Callable[[Any, float], Domain]
    optimiser: dict[str, Any]
    given_teachers: list[Path]
    given_note: str
    given_leaks: bool
    description: str
    extra: dict[str, Any] = field(default_factory=dict)


def _dubai_images(data: Path, tiles: list[int]) -> Source:
    images = [str(data / f"tile_{t}" / "images" / "*.tif") for t in tiles]
    return Source(images=images, labels="{parent}/../exact")


def _dubai_prepare(args: argparse.Namespace, setting: dict[str, Any]) -> Path:
    folder = args.prepared_in or args.output / "dubai"
    return prepare(args.data, folder, setting["scale"], seeds=[])


def _dubai_domain(data: Path, ratio: float) -> Domain:
    return Domain(
        train=_dubai_images(data, COARSE_TILES),
        val=_dubai_images(data, [FINE_TILE]),
        test=_dubai_images(data, TEST_TILES),
        train_ratio=ratio,
    )


def _demo_prepare(args: argparse.Namespace, setting: dict[str, Any]) -> dict[str, Any]:
    """Write the synthetic chips once (a marker records the parameters they were drawn with)."""
    folder = args.output / "demo" / f"data_seed{DEMO_DATA['seed']}"
    marker = folder / "benchmark_data.json"
    if not marker.exists() or json.loads(marker.read_text()) != DEMO_DATA:
        write_demo_dataset(
            folder,
            seed=DEMO_DATA["seed"],
            chip_size=DEMO_DATA["chip_size"],
            n_coarse=0,
            n_fine=DEMO_DATA["pool"] + DEMO_DATA["val"],
            n_fine_test=DEMO_DATA["test"],
            scene_size=16,  # the scene is not used
        )
        marker.write_text(json.dumps(DEMO_DATA))
    images = sorted((folder / "fine" / "images").glob("*.tif"))
    return {
        "pool": [str(p) for p in images[: DEMO_DATA["pool"]]],
        "val": [str(p) for p in images[DEMO_DATA["pool"] :]],
        "labels": str(folder / "fine" / "labels"),
        "test": Source(str(folder / "test" / "images"), str(folder / "test" / "labels")),
    }


def _demo_domain(data: dict[str, Any], ratio: float) -> Domain:
    return Domain(
        train=Source(data["pool"], data["labels"]),
        val=Source(data["val"], data["labels"]),
        test=data["test"],
        train_ratio=ratio,
    )


_KTDA_TEACHER = KTDA_SETTINGS["quick"]["teacher"]["model"]  # U-Net R34, full depth

PROTOCOLS: dict[str, Protocol] = {
    "dubai": Protocol(
        classes=CLASSES,
        ratios=[0.05, 0.1, 0.25],
        settings={
            "quick": {
                "scale": 0.5,
                "patch_size": 96,
                "crops_per_image": 16,
                "batch_size": 8,
                "unlabeled_batch_size": 8,
                "max_steps": 150,
                "val_every": 50,
                "teacher_steps": 150,
                "student": {"arch": "unet", "encoder": "resnet18", "arch_kwargs": LIGHT_UNET},
                "teachers": {
                    "unet_r34": _KTDA_TEACHER,
                    "segformer_b0": {"arch": "segformer", "encoder": "mit_b0"},
                },
            },
            "large": {
                "scale": 1.0,
                "patch_size": 256,
                "crops_per_image": 16,
                "batch_size": 16,
                "unlabeled_batch_size": 16,
                "max_steps": 3000,
                "val_every": 250,
                "teacher_steps": 3000,
                "student": {"arch": "unet", "encoder": "resnet18"},
                "teachers": {
                    "unet_r50": KTDA_SETTINGS["large"]["teacher"]["model"],
                    "segformer_b2": {"arch": "segformer", "encoder": "mit_b2"},
                },
            },
        },
        prepare=_dubai_prepare,
        domain=_dubai_domain,
        optimiser=SUPERVISED,
        given_teachers=[KTDA_TEACHER],
        given_note=(
            "ktda_dubai.py's U-Net R34, trained on districts 1-5 with ALL labels: it saw the "
            "labels the student gets unlabelled (an upper bound, not a semi-supervised result)"
        ),
        given_leaks=True,
        description=(
            "Dubai aerial RGB chips at half resolution; labelled pool districts 1-5 (45 chips), "
            "unlabelled = the rest of districts 1-5, val district 6 (9 chips), test districts 7-8 "
            "(18 chips)"
        ),
    ),
    "demo": Protocol(
        classes=list(CLASS_NAMES),
        ratios=[0.01, 0.05, 0.1],
        settings={
            "quick": {
                "patch_size": 96,
                "crops_per_image": 8,
                "batch_size": 8,
                "unlabeled_batch_size": 8,
                "max_steps": 150,
                "val_every": 50,
                "teacher_steps": 150,
                "student": {"arch": DEMO_MODEL["arch"], "encoder": DEMO_MODEL["encoder"]},
                "teachers": {
                    "unet_r34": {"arch": "unet", "encoder": "resnet34"},
                    "segformer_b0": {"arch": "segformer", "encoder": "mit_b0"},
                },
            },
            "large": {
                "patch_size": 128,
                "crops_per_image": 8,
                "batch_size": 16,
                "unlabeled_batch_size": 16,
                "max_steps": 2000,
                "val_every": 200,
                "teacher_steps": 2000,
                "student": {"arch": DEMO_MODEL["arch"], "encoder": DEMO_MODEL["encoder"]},
                "teachers": {
                    "unet_r50": {"arch": "unet", "encoder": "resnet50"},
                    "segformer_b2": {"arch": "segformer", "encoder": "mit_b2"},
                },
            },
        },
        prepare=_demo_prepare,
        domain=_demo_domain,
        optimiser={"loss": DEMO_MODEL["loss"], "lr": DEMO_MODEL["lr"], "weight_decay": 1e-4},
        given_teachers=DEMO_TEACHERS,
        given_note=(
            "geodistill demo's coarse_only (region-A coarse outlines) and fine_only (4 exact "
            "region-B chips of data seed 0): other data than this benchmark's (data seed 1)"
        ),
        given_leaks=False,
        description=(
            "SYNTHETIC 6-band region-B chips (128 x 128, data seed 1): pool 100 chips, val 10, "
            "test 30"
        ),
        extra={"data": DEMO_DATA},
    ),
}

SUBSET_ONLY = ("teachers", "teacher_steps")
"""Settings of the teachers trained per ratio and seed, unused with ``--teacher-source given``."""

SMOKE = {"max_steps": 4, "val_every": 2, "teacher_steps": 4, "limit_batches": 2}
"""``--quick``: a few steps, two validation and test batches: proves the harness, measures
step times; its metrics mean nothing."""

# ------------------------------------------------------------------------------------- training


@dataclass
class Run:
    """Everything one ratio and seed of one data set needs."""

    name: str
    protocol: Protocol
    data: Any
    ratio: float
    seed: int
    setting: dict[str, Any]
    folder: Path
    args: argparse.Namespace


def datamodule(run: Run, semi: bool) -> GeoSegDataModule:
    setting = run.setting
    return GeoSegDataModule(
        classes=run.protocol.classes,
        fine=run.protocol.domain(run.data, run.ratio),
        unlabeled_from="rest" if semi else None,
        unlabeled_batch_size=setting["unlabeled_batch_size"],
        patch_size=setting["patch_size"],
        crops_per_image=setting["crops_per_image"],
        batch_size=setting["batch_size"],
        eval_batch_size=1,
        cache=True,
        manifest=str(run.folder / "manifest.json"),
        seed=run.seed,
    )


def labelled_record(dm: GeoSegDataModule) -> dict[str, Any]:
    """The labelled draw: chips kept, of how many, and their share of the pool's pixels."""
    kept = [image for image, _ in dm.splits["fine"]["train"]]
    rest = dm.rest.get("fine", [])

    def pixels(images: list[str]) -> int:
        return sum(raster_info(p).height * raster_info(p).width for p in images)

    return {
        "chips": [f"{Path(p).parent.parent.name}/{Path(p).name}" for p in kept],  # tile/stem
        "kept": len(kept),
        "of": len(kept) + len(rest),
        "unlabelled": len(rest),
        "pixel_share": round(pixels(kept) / pixels(kept + rest), 4),
    }


def train(
    run: Run, task: SegmentationTask, dm: GeoSegDataModule, folder: Path, steps: int
) -> dict[str, Any]:
    """Fit for ``steps`` optimiser steps (validating every ``val_every``), test the best
    checkpoint; the result, with wall and CPU times, is written to ``folder/result.json``."""
    setting = run.setting
    every = setting["val_every"]  # divides steps: resolved_setting checks it
    limits = {}
    if run.args.quick:
        limits = {"limit_val_batches": SMOKE["limit_batches"]}
        limits["limit_test_batches"] = SMOKE["limit_batches"]
    profiler = SimpleProfiler(dirpath=folder, filename="profile")  # fit-/test-profile.txt
    wall, cpu = time.perf_counter(), time.process_time()
    result = fit_and_test(
        task,
        dm,
        folder,
        max_epochs=-1,
        max_steps=steps,
        check_val_every_n_epoch=None,
        val_check_interval=every,
        accelerator="auto",
        devices=1,
        enable_progress_bar=False,
        log_every_n_steps=min(10, steps),
        profiler=profiler,
        **limits,
    )
    durations = profiler.recorded_durations
    steps_timed = durations.get("run_training_batch", [])
    record = {
        "metrics": result.metrics,
        "checkpoint": str(result.checkpoint),
        "max_steps": steps,
        "steps": len(steps_timed),
        "seconds": round(time.perf_counter() - wall, 1),
        "cpu_seconds": round(time.process_time() - cpu, 1),
        "step_seconds": round(statistics.median(steps_timed), 4) if steps_timed else None,
        "validation_seconds": round(_total(durations, "validation_step"), 1),
        "test_seconds": round(_total(durations, "test_step"), 1),
        "parameters": sum(p.numel() for p in task.model.parameters()),
    }
    (folder / "result.json").write_text(json.dumps(record, indent=2))
    return record


def _total(durations: dict[str, list[float]], suffix: str) -> float:
    return sum(sum(v) for k, v in durations.items() if k.endswith(suffix))


def _reused(folder: Path, args: argparse.Namespace, steps: int) -> dict[str, Any] | None:
    """With ``--resume``, a finished run of the same step budget."""
    path = folder / "result.json"
    if args.resume and path.exists():
        record = json.loads(path.read_text())
        if record.get("max_steps") == steps:
            return record
    return None


def teacher_checkpoints(run: Run) -> tuple[list[str], dict[str, Any]]:
    """The teachers' checkpoints for this ratio and seed: trained on its labelled chips
    (``subset``) or given; with their test results when trained here."""
    args = run.args
    if args.teacher_source == "given":
        paths = args.given[run.name] or [str(p) for p in run.protocol.given_teachers]
        missing = [p for p in paths if not Path(p).is_file()]
        if missing:
            hint = " (run `geodistill demo` first)" if missing[0] in map(str, DEMO_TEACHERS) else ""
            raise GeodistillError(f"no such teacher checkpoint{hint}; see --teacher", missing[0])
        return paths, {}
    paths, records = [], {}
    for name, model in run.setting["teachers"].items():
        folder = run.folder / "teachers" / name
        record = _reused(folder, args, run.setting["teacher_steps"])
        if record is None:
            L.seed_everything(run.seed, verbose=False)
            dm = datamodule(run, semi=False)
            task = SegmentationTask(
                in_channels=dm.num_bands,
                num_classes=dm.num_classes,
                class_names=dm.classes,
                **model,
                **run.protocol.optimiser,
            )
            record = train(run, task, dm, folder, run.setting["teacher_steps"])
        print(_line(run, f"teacher {name}", record), flush=True)
        paths.append(record["checkpoint"])
        records[name] = record
    return paths, records


def given_teacher_tests(run: Run, paths: list[str]) -> dict[str, Any]:
    """Test metrics of each given teacher on this data set's test chips (once per data set)."""
    records = {}
    for k, path in enumerate(paths):
        folder = run.folder.parent.parent / "given_teachers" / f"teacher_{k}"
        saved = folder / "test_metrics.json"
        if run.args.resume and saved.exists():
            record = json.loads(saved.read_text())
            if record.pop("checkpoint", None) == path:
                records[path] = record
                continue
        # Any task's checkpoint (KTDA, coarse-to-fine...): its exported student is a plain one.
        folder.mkdir(parents=True, exist_ok=True)
        plain = export_student(path, folder / "student.ckpt", overwrite=True)
        check_checkpoint(plain)  # weights-only read first: refuses a code-carrying pickle
        task = SegmentationTask.load_from_checkpoint(plain, map_location="cpu")
        plain.unlink()
        limits = {"limit_test_batches": SMOKE["limit_batches"]} if run.args.quick else {}
        trainer = L.Trainer(
            default_root_dir=folder,
            logger=False,
            enable_model_summary=False,
            enable_progress_bar=False,
            accelerator="auto",
            devices=1,
            **limits,
        )
        trainer.test(task, datamodule=datamodule(run, semi=False), verbose=False)
        records[path] = dict(task.test_results)
        saved.write_text(json.dumps({"checkpoint": path, **records[path]}, indent=2))
        print(f"{run.name} given teacher {path}: test mIoU {records[path]['mIoU']:.4f}", flush=True)
    return records


def student_task(name: str, run: Run, dm: GeoSegDataModule, teachers: list[str]) -> Any:
    common = {
        "in_channels": dm.num_bands,
        "num_classes": dm.num_classes,
        "class_names": dm.classes,
        **run.setting["student"],
        **run.protocol.optimiser,
    }
    method = METHODS[name]
    if not method.semi:
        return SegmentationTask(**common)
    semi = {**SEMI_DEFAULTS, **run.args.semi_args}
    if not method.teachers:
        return SemiSupervisedTask(**common, **semi)
    cache = str(run.folder / "teacher_cache") if run.args.teacher_cache else None
    return SemiSupervisedTask(
        **common,
        **semi,
        **{**MT_DEFAULTS, **run.args.mt_args},
        teachers=[{"kind": "geodistill", "path": p, "layers": TEACHER_LEVEL} for p in teachers],
        teacher_cache=cache,
    )


def run_ratio_seed(run: Run) -> dict[str, Any]:
    """Teachers (if any method needs them), then every method, for one ratio and seed."""
    args = run.args
    probe = datamodule(run, semi=False)
    teachers: list[str] = []
    teacher_records: dict[str, Any] = {}
    if any(METHODS[m].teachers for m in args.methods):
        teachers, teacher_records = teacher_checkpoints(run)
    results: dict[str, Any] = {}
    for name in args.methods:
        folder = run.folder / name
        record = _reused(folder, args, run.setting["max_steps"])
        if record is None:
            L.seed_everything(run.seed, verbose=False)
            dm = datamodule(run, semi=METHODS[name].semi)
            task = student_task(name, run, dm, teachers)
            record = train(run, task, dm, folder, run.setting["max_steps"])
        print(_line(run, name, record), flush=True)
        results[name] = record
    if not args.keep_caches:
        shutil.rmtree(run.folder / "teacher_cache", ignore_errors=True)  # ~200 MB per ratio/seed
    return {
        "ratio": run.ratio,
        "seed": run.seed,
        "labelled": labelled_record(probe),
        "teachers": teachers,
        "teacher_runs": teacher_records,
        "results": results,
    }


def _line(run: Run, name: str, record: dict[str, Any]) -> str:
    return (
        f"{run.name} ratio {run.ratio:g} seed {run.seed} {name}: "
        f"mIoU {record['metrics']['mIoU']:.4f} ({record['seconds']} s, "
        f"{record['step_seconds']} s/step)"
    )


# ------------------------------------------------------------------------------------- results


def metric_keys(classes: list[str]) -> list[str]:
    return ["mIoU", "boundary_F1", "OA"] + [f"IoU/{c}" for c in classes]


def summarise(runs: list[dict[str, Any]], methods: list[str], classes: list[str]) -> dict:
    """Per ratio: mean ± std over seeds of every metric per method, and per semi-supervised
    method the paired (same seed, same labelled chips) mIoU gain over supervised-only."""
    summary: dict[str, Any] = {}
    for ratio in sorted({r["ratio"] for r in runs}):
        at = [r for r in runs if r["ratio"] == ratio]
        entry: dict[str, Any] = {
            "chips": [r["labelled"]["kept"] for r in at],
            "of": at[0]["labelled"]["of"],
            "pixel_share": [r["labelled"]["pixel_share"] for r in at],
            "seeds": [r["seed"] for r in at],
            "methods": {},
            "beats_supervised": {},
        }
        for name in methods:
            values = {
                k: [r["results"][name]["metrics"][k] for r in at] for k in metric_keys(classes)
            }
            entry["methods"][name] = {
                k: {"mean": float(np.mean(v)), "std": float(np.std(v))} for k, v in values.items()
            }
        if "supervised" in methods:
            base = [r["results"]["supervised"]["metrics"]["mIoU"] for r in at]
            for name in (m for m in methods if METHODS[m].semi):
                gains = [
                    r["results"][name]["metrics"]["mIoU"] - b for r, b in zip(at, base, strict=True)
                ]
                entry["beats_supervised"][name] = {
                    "mIoU_gain_mean": float(np.mean(gains)),
                    "mIoU_gain_std": float(np.std(gains)),
                    "seeds_won": sum(g > 0 for g in gains),
                    "seeds": len(gains),
                    "beats": bool(np.mean(gains) > 0),
                }
        summary[f"{ratio:g}"] = entry
    return summary


def dataset_table(name: str, report: dict[str, Any], methods: list[str]) -> str:
    """Markdown for one data set: metrics (%) per ratio and method, then the verdicts."""
    protocol = PROTOCOLS[name]
    keys = metric_keys(protocol.classes)
    summary = report["summary"]
    lines = [f"## {name}: {protocol.description}", ""]
    saw = {True: "YES", False: "no", None: "unknown"}[report["teachers_saw_withheld_labels"]]
    lines += [f"Teachers ({report['teacher_source']}): {report['teacher_note']}.  "]
    lines += [f"Teachers saw labels withheld from the students: {saw}", ""]
    header = ["ratio (chips)", "method", *keys]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for ratio, entry in summary.items():
        chips = "/".join(str(c) for c in sorted(set(entry["chips"])))
        for method in methods:
            stats = entry["methods"][method]
            cells = [f"{ratio} ({chips} of {entry['of']})", method]
            cells += [f"{100 * stats[k]['mean']:.2f} ± {100 * stats[k]['std']:.2f}" for k in keys]
            lines.append("| " + " | ".join(cells) + " |")
    verdicts = [
        (ratio, method, v)
        for ratio, e in summary.items()
        for method, v in e["beats_supervised"].items()
    ]
    if verdicts:
        lines += ["", "| ratio | method | mIoU gain over supervised (paired) | seeds won | beats |"]
        lines.append("|---|---|---|---|---|")
        for ratio, method, v in verdicts:
            lines.append(
                f"| {ratio} | {method} | {100 * v['mIoU_gain_mean']:+.2f} ± "
                f"{100 * v['mIoU_gain_std']:.2f} | {v['seeds_won']}/{v['seeds']} | "
                f"{'yes' if v['beats'] else 'no'} |"
            )
        for method in sorted({m for _, m, _ in verdicts}):
            every = all(v["beats"] for _, m, v in verdicts if m == method)
            lines.append(
                f"\n{method} beats supervised-only at every ratio: {'yes' if every else 'NO'}"
            )
    given = report.get("given_teachers", {})
    if given:
        lines += ["", "Given teachers (test mIoU %, the same test chips):", ""]
        lines += [f"* {path}: {100 * m['mIoU']:.2f}" for path, m in given.items()]
    teacher_rows = _teacher_rows(report)
    if teacher_rows:
        lines += ["", "Teachers (test mIoU %, trained on the ratio's labelled chips):", ""]
        lines += teacher_rows
    return "\n".join(lines) + "\n"


def _teacher_rows(report: dict[str, Any]) -> list[str]:
    rows = []
    by_ratio: dict[float, dict[str, list[float]]] = {}
    for run in report["runs"]:
        for name, record in run["teacher_runs"].items():
            by_ratio.setdefault(run["ratio"], {}).setdefault(name, []).append(
                record["metrics"]["mIoU"]
            )
    for ratio, teachers in sorted(by_ratio.items()):
        cells = [f"{n} {100 * np.mean(v):.2f} ± {100 * np.std(v):.2f}" for n, v in teachers.items()]
        rows.append(f"* ratio {ratio:g}: " + ", ".join(cells))
    return rows


# ---------------------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", nargs="+", choices=list(PROTOCOLS), default=list(PROTOCOLS))
    parser.add_argument(
        "--ratios", type=float, nargs="+", help="for every --dataset (default: each its own)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--setting", choices=["quick", "large"], default="quick")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--max-steps", type=int, help="optimiser steps of every student")
    budget.add_argument(
        "--epochs",
        type=int,
        help="step budget as epochs over the WHOLE labelled pool (pool chips x crops / batch), "
        "the same for every ratio",
    )
    parser.add_argument("--teacher-steps", type=int, help="steps of each subset teacher")
    parser.add_argument("--val-every", type=int, help="validate every N steps")
    parser.add_argument("--teacher-source", choices=["subset", "given"], default="subset")
    parser.add_argument(
        "--teacher",
        action="append",
        default=[],
        metavar="DATASET=PATH",
        help="a given teacher checkpoint (repeatable) for --teacher-source given",
    )
    parser.add_argument("--teacher-cache", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--semi-args", type=json.loads, default={}, help="FixMatch overrides")
    parser.add_argument("--mt-args", type=json.loads, default={}, help="fixmatch_mt overrides")
    parser.add_argument("--data", type=Path, default=DATA, help="the Dubai chips")
    parser.add_argument("--prepared-in", type=Path, help="folder holding data_scale<s> (Dubai)")
    parser.add_argument("--output", type=Path)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--resume", action="store_true", help="reuse finished runs")
    parser.add_argument(
        "--keep-caches", action="store_true", help="keep each ratio/seed's teacher cache"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: first seed, smallest ratio, 4 steps"
    )
    args = parser.parse_args()
    if args.output is None:
        name = "semi_supervised_smoke" if args.quick else "semi_supervised"
        args.output = Path("outputs/benchmarks") / name
    if args.quick:
        args.seeds = args.seeds[:1]
    args.given = {name: [] for name in PROTOCOLS}
    for item in args.teacher:
        name, _, path = item.partition("=")
        if name not in PROTOCOLS or not path:
            parser.error(f"--teacher takes DATASET=PATH with DATASET in {list(PROTOCOLS)}")
        args.given[name].append(path)
    for ratio in args.ratios or []:
        if not 0 < ratio < 1:
            parser.error(f"ratios must be in (0, 1): the rest is the unlabelled set, got {ratio}")
    return args


def teacher_provenance(
    name: str, protocol: Protocol, setting: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """Where the teachers come from and whether they saw labels the student does not have
    (``None``: unknown, for checkpoints given on the command line)."""
    if args.teacher_source == "subset":
        names = " and ".join(setting["teachers"])
        note = f"per ratio and seed, {names} trained on the student's labelled chips only"
        return {"teacher_note": note, "teachers_saw_withheld_labels": False}
    if args.given[name]:
        note = "given on the command line; what labels they saw is not known here"
        return {"teacher_note": note, "teachers_saw_withheld_labels": None}
    return {
        "teacher_note": protocol.given_note,
        "teachers_saw_withheld_labels": protocol.given_leaks,
    }


def resolved_setting(protocol: Protocol, args: argparse.Namespace) -> dict[str, Any]:
    setting = dict(protocol.settings[args.setting])
    if args.quick:
        setting.update({k: v for k, v in SMOKE.items() if k in setting})
    if args.max_steps:
        setting["max_steps"] = args.max_steps
    if args.teacher_steps:
        setting["teacher_steps"] = args.teacher_steps
    if args.val_every:
        setting["val_every"] = args.val_every
    for key in ("max_steps", "teacher_steps"):
        if setting[key] % setting["val_every"]:
            # Lightning validates every val_every steps only: the last steps would never count.
            raise GeodistillError(
                f"{key}={setting[key]} is not a multiple of val_every={setting['val_every']}"
            )
    return setting


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    report: dict[str, Any] = {
        "command": command(),
        "hardware": hardware(),
        "smoke": args.quick,
        "methods": {m: METHODS[m].description for m in args.methods},
        "semi": {**SEMI_DEFAULTS, **args.semi_args},
        "mt": {**MT_DEFAULTS, **args.mt_args, "teacher_level": TEACHER_LEVEL},
        "teacher_cache": args.teacher_cache,
        "datasets": {},
    }
    tables = []
    for name in args.dataset:
        protocol = PROTOCOLS[name]
        setting = resolved_setting(protocol, args)
        ratios = sorted(args.ratios or protocol.ratios)[: 1 if args.quick else None]
        data = protocol.prepare(args, setting)
        if args.epochs:
            setting["max_steps"] = epoch_budget(protocol, data, setting, args.epochs)
        subset = args.teacher_source == "subset"
        recorded = {k: v for k, v in setting.items() if subset or k not in SUBSET_ONLY}
        entry: dict[str, Any] = {
            "description": protocol.description,
            "setting": {"name": args.setting, **recorded, "optimiser": protocol.optimiser},
            "ratios": ratios,
            "teacher_source": args.teacher_source,
            **teacher_provenance(name, protocol, setting, args),
            **protocol.extra,
            "runs": [],
        }
        report["datasets"][name] = entry
        if not subset and any(METHODS[m].teachers for m in args.methods):
            folder = args.output / name / f"ratio{ratios[0]:g}" / f"seed{args.seeds[0]}"
            first = Run(name, protocol, data, ratios[0], args.seeds[0], setting, folder, args)
            entry["given_teachers"] = given_teacher_tests(first, teacher_checkpoints(first)[0])
        for ratio in ratios:
            for seed in args.seeds:
                folder = args.output / name / f"ratio{ratio:g}" / f"seed{seed}"
                run = Run(name, protocol, data, ratio, seed, setting, folder, args)
                entry["runs"].append(run_ratio_seed(run))
                entry["summary"] = summarise(entry["runs"], args.methods, protocol.classes)
                report["seconds"] = round(time.perf_counter() - start, 1)
                report["run_seconds"] = run_seconds(report)
                tables = [
                    f"Sum of the runs' times, reused ones included: {report['run_seconds']} s\n"
                ]
                tables += [dataset_table(n, e, args.methods) for n, e in report["datasets"].items()]
                write_results(args.output, report, "\n".join(tables), len(args.seeds))
    print(write_results(args.output, report, "\n".join(tables), len(args.seeds)))


def run_seconds(report: dict[str, Any]) -> float:
    """Training and testing time of every run so far, those reused by ``--resume`` included."""
    records = [
        record
        for entry in report["datasets"].values()
        for run in entry["runs"]
        for group in ("results", "teacher_runs")
        for record in run[group].values()
    ]
    return round(sum(r["seconds"] for r in records), 1)


def epoch_budget(protocol: Protocol, data: Any, setting: dict[str, Any], epochs: int) -> int:
    """``epochs`` passes over the whole labelled pool, in steps, rounded up to a multiple of the
    validation interval: one budget for every ratio."""
    pool = GeoSegDataModule(
        classes=protocol.classes, fine=replace(protocol.domain(data, 0.5), train_ratio=None)
    )
    chips = len(pool.splits["fine"]["train"])
    steps = epochs * -(-chips * setting["crops_per_image"] // setting["batch_size"])
    return -(-steps // setting["val_every"]) * setting["val_every"]


if __name__ == "__main__":
    main()
