"""KTDA's teacher output cache: training step time with the cache, without a teacher, and with the
teacher in the loop, measured in one process.

The same student (U-Net, ResNet-18 encoder, random init) is trained through Lightning on real
RGB chips (Dubai aerial, district 2 by default), batch 8, 224² crops (a multiple of the teacher's
patch 14 and of the student's stride 32), as

1. ``student``: :class:`SegmentationTask`, the labels alone;
2. ``teacher in the loop``: :class:`SegmentationTask` with :class:`KnowledgeTransfer`, the
   teacher run on every batch;
3. ``cached``: the same with ``teacher_cache`` — teacher outputs of fixed windows, built once
   before any timing (its build time and size on disk are reported apart);
4. with ``--fmm``: the cached task with the paper's feature modulation (4 transformer blocks on
   each of the 4 encoder levels, +17 M parameters; on a CPU one of its steps costs several
   student steps, hence opt-in).

The teacher is KTDA's: timm ``vit_base_patch14_dinov2`` (DINOv2 ViT-B/14), features of blocks 2,
5, 8 and 11, with RANDOM weights: none can be downloaded here, and the time of a forward pass
depends on the architecture only. Rows 2-3 have no modulation (the default) so that they differ
from row 1 by the teacher's cost alone (plus KTDA's own small heads: FAM projections, auxiliary
head).

Timing: a Lightning callback stamps ``on_train_batch_start`` and ``on_train_batch_end`` with the
wall clock and the process's CPU time (all threads). A *step* runs from one batch's end to the
next one's end: fetching the batch (where the cache is read), forward, teacher or cached targets,
backward, optimiser. *Compute* is start to end of a batch (without the fetch). Each variant is
fitted for ``warmup + steps`` batches per round (one more warm-up batch in round 1), the warm-up
batches are dropped, and the variants take turns round after round, so that load from other
processes hits them alike. Ratios are reported from all steps and as the median of the per-round
ratios (pairs measured minutes apart at most). Every KTDA task's random teacher (built with the
task) is given the weights of the teacher the cache was built with, so the same random teacher
serves every fit; the cached fits refuse a cache that differs. Each fit is reseeded.

On a machine shared with other torch processes, use ``--threads 1``: with one thread per core,
OpenMP's thread barriers wait for threads the scheduler has taken away, and steps slowed down by
3-8× at random from one fit to the next there (2 threads, 2 cores, load ~5), while one thread
gave steps stable to a few per cent.

    python benchmarks/teacher_cache.py --threads 1 --fmm  # 6 rounds × 2 steps (~6 min)
    python benchmarks/teacher_cache.py --quick            # 1 chip, batch 4, 1 round: ~1 min

Writes ``<output>/results.json`` and ``<output>/results.md``; the cache goes to
``<output>/scratch``, deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from dubai_data import CLASSES, DATA, tiles
from report import command, hardware, write_results

from geodistill.data import Domain, GeoSegDataModule
from geodistill.data.teacher_cache import ensure_teacher_cache
from geodistill.methods import KnowledgeTransfer
from geodistill.methods.knowledge_transfer import KTDA_MODULATION
from geodistill.models.teachers import Teacher, build_teacher
from geodistill.tasks import SegmentationTask

TEACHER: dict[str, Any] = {
    "kind": "timm",
    "arch": "vit_base_patch14_dinov2",
    "path": None,
    "layers": [2, 5, 8, 11],
    "scale": 1 / 255,  # 8-bit RGB to [0, 1], then timm's ImageNet mean/std
}
"""KTDA's teacher, DINOv2 ViT-B/14, with random weights (``path: None``)."""

STUDENT: dict[str, Any] = {
    "arch": "unet",
    "encoder": "resnet18",
    "loss": {"ce": 1.0, "dice": 0.5},
    "lr": 1e-3,
}


@dataclass
class Stamp:
    wall: float
    cpu: float


class StepTimer(L.Callback):
    """Wall-clock and CPU-time stamps of every training batch's start and end."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.starts: list[Stamp] = []
        self.ends: list[Stamp] = []

    def _now(self) -> Stamp:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return Stamp(time.perf_counter(), time.process_time())

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self.starts.append(self._now())

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.ends.append(self._now())

    def steps(self, warmup: int, clock: str = "wall") -> list[float]:
        """End-to-end seconds of the batches after the first ``warmup`` (≥ 1) ones."""
        ends = [getattr(s, clock) for s in self.ends]
        return [b - a for a, b in zip(ends, ends[1:], strict=False)][warmup - 1 :]

    def computes(self, warmup: int) -> list[float]:
        """Start-to-end wall seconds of the batches after the first ``warmup`` ones."""
        return [e.wall - s.wall for s, e in zip(self.starts, self.ends, strict=True)][warmup:]


@dataclass
class Variant:
    """One way of training the student; its task and data module live across rounds."""

    name: str
    make_task: Callable[[int], SegmentationTask]
    task: SegmentationTask | None = None
    datamodule: GeoSegDataModule | None = None
    wall: list[list[float]] = field(default_factory=list)
    """Wall seconds of the timed steps, one list per round."""
    cpu: list[list[float]] = field(default_factory=list)
    compute: list[list[float]] = field(default_factory=list)

    def all(self, what: str) -> list[float]:
        return [x for round_ in getattr(self, what) for x in round_]

    def median(self, what: str = "wall") -> float:
        return statistics.median(self.all(what))


def datamodule(args: argparse.Namespace) -> GeoSegDataModule:
    """District ``--tile`` of the Dubai chips (``--chips`` of them), random crops."""
    return GeoSegDataModule(
        classes=CLASSES,
        fine=Domain(
            train=tiles(args.data, [args.tile]), val=tiles(args.data, [6]), train_limit=args.chips
        ),
        patch_size=args.patch_size,
        crops_per_image=4,
        batch_size=args.batch_size,
        cache=True,
        seed=args.seed,
    )


def variants(
    args: argparse.Namespace, cache: Path, teacher: Teacher, band_names: list[str]
) -> list[Variant]:
    def student(classes: int) -> SegmentationTask:
        return SegmentationTask(in_channels=3, num_classes=classes, class_names=CLASSES, **STUDENT)

    def ktda(cached: bool, fmm: bool) -> Callable[[int], SegmentationTask]:
        def make(classes: int) -> SegmentationTask:
            task = SegmentationTask(
                in_channels=3,
                num_classes=classes,
                class_names=CLASSES,
                band_names=band_names,
                distillation=KnowledgeTransfer(
                    teacher=TEACHER,
                    teacher_cache=str(cache) if cached else None,
                    cache_on_mismatch="refuse",  # a rebuild here would be a bug of this benchmark
                    modulation=KTDA_MODULATION if fmm else None,  # the paper's FMM
                ),
                **STUDENT,
            )
            # The task built its own random teacher: give it the cache's weights, so that every
            # fit distils from the same teacher and the cached fits find their cache.
            assert task.distillation is not None
            task.distillation.teachers[0].load_state_dict(teacher.state_dict())
            return task

        return make

    chosen = [
        Variant("student (SegmentationTask)", student),
        Variant("KTDA, teacher in the loop", ktda(cached=False, fmm=False)),
        Variant("KTDA, cached teacher outputs", ktda(cached=True, fmm=False)),
    ]
    if args.fmm:
        chosen.append(Variant("KTDA, cached, with FMM (KTDA default)", ktda(cached=True, fmm=True)))
    return chosen


def build_cache(
    args: argparse.Namespace, folder: Path, device: torch.device
) -> tuple[dict[str, Any], Teacher, list[str]]:
    """Build the cache the cached variants use; return it with its (random) teacher, whose
    weights every KTDA task takes, and the data's band names."""
    data = datamodule(args)
    data.setup("fit")
    L.seed_everything(args.seed, verbose=False)
    teacher = build_teacher(TEACHER, data.band_names)
    train = data.training_set("train")
    start = time.perf_counter()
    cache = ensure_teacher_cache(
        folder,
        teacher,
        train,
        data.patch_size,
        batch_size=args.batch_size,
        device=device,
    )
    seconds = time.perf_counter() - start
    teacher.cpu()  # the tasks' teachers copy its weights; their fits place them
    facts = {
        "build_s": seconds,
        "windows": len(cache),
        "chips": len(train.images),
        "bytes": sum(path.stat().st_size for path in cache.files()),
        "shapes": [list(a["shape"]) for a in cache.meta["arrays"]["features"]],
        "dtype": cache.dtype,
        "teacher_levels": teacher.levels,
    }
    return facts, teacher, list(data.band_names)


def fit_round(
    variant: Variant, args: argparse.Namespace, device: torch.device, warmup: int
) -> None:
    """``warmup + steps`` training batches of ``variant``; keep the timed ones."""
    if variant.datamodule is None:
        variant.datamodule = datamodule(args)
        variant.task = variant.make_task(variant.datamodule.num_classes)
    timer = StepTimer(device)
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=1,
        max_steps=warmup + args.steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    L.seed_everything(args.seed, verbose=False)  # the same batches in every fit
    trainer.fit(variant.task, datamodule=variant.datamodule)
    variant.wall.append(timer.steps(warmup))
    variant.cpu.append(timer.steps(warmup, "cpu"))
    variant.compute.append(timer.computes(warmup))


def parameters(variant: Variant) -> int:
    assert variant.task is not None
    return sum(p.numel() for p in variant.task.model.parameters())


def round_ratios(variant: Variant, base: Variant, what: str = "wall") -> list[float]:
    """Per round: the variant's median step over the student's."""
    return [
        statistics.median(v) / statistics.median(b)
        for v, b in zip(getattr(variant, what), getattr(base, what), strict=True)
    ]


def ms(seconds: float) -> str:
    return f"{1000 * seconds:.0f} ms"


def results_table(chosen: list[Variant]) -> str:
    base = chosen[0]
    lines = [
        "| variant | student params | step, median (wall) | step, mean (wall) "
        "| compute, median (wall) | step, median (CPU) | steps | × student, wall "
        "| × student, wall, median of rounds | × student, CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in chosen:
        lines.append(
            f"| {v.name} | {parameters(v) / 1e6:.1f} M | {ms(v.median())} "
            f"| {ms(statistics.fmean(v.all('wall')))} | {ms(v.median('compute'))} "
            f"| {v.median('cpu'):.2f} s | {len(v.all('wall'))} "
            f"| {v.median() / base.median():.2f} "
            f"| {statistics.median(round_ratios(v, base)):.2f} "
            f"| {v.median('cpu') / base.median('cpu'):.2f} |"
        )
    return "\n".join(lines) + "\n"


def rounds_table(chosen: list[Variant], loads: list[float]) -> str:
    header = " | ".join(f"round {i + 1}" for i in range(len(loads)))
    lines = [f"| median step (wall) | {header} |", "|---" + "|---:" * len(loads) + "|"]
    for v in chosen:
        lines.append(f"| {v.name} | " + " | ".join(ms(statistics.median(r)) for r in v.wall) + " |")
    loads_row = " | ".join(f"{x:.1f}" for x in loads)
    lines.append(f"| load average (1 min) after the round | {loads_row} |")
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--output", type=Path, default=Path("outputs/benchmarks/teacher_cache"))
    parser.add_argument("--quick", action="store_true", help="1 chip, batch 4, 1 round × 2 steps")
    parser.add_argument("--tile", type=int, default=2, help="Dubai district of the training chips")
    parser.add_argument("--chips", type=int, help="training chips (default: the district's 9)")
    parser.add_argument("--patch-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, help="default 8 (4 with --quick)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 6)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per variant and round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches per fit (>= 1)")
    parser.add_argument("--fmm", action="store_true", help="add the cached + FMM variant")
    parser.add_argument("--accelerator", default="cpu", help="Lightning accelerator")
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (default: torch's, one per core)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the cache")
    args = parser.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 6)
    args.chips = args.chips or (1 if args.quick else None)
    args.batch_size = args.batch_size or (4 if args.quick else 8)
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the first batch has no previous end)")
    return args


def main() -> None:
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    device = torch.device("cuda" if args.accelerator in ("gpu", "cuda") else "cpu")
    scratch = args.output / "scratch"
    folder = scratch / "cache"
    try:
        print("building the teacher cache ...", flush=True)
        cache, teacher, band_names = build_cache(args, folder, device)
        print(f"  {cache['windows']} windows in {cache['build_s']:.1f} s", flush=True)
        chosen = variants(args, folder, teacher, band_names)
        load_before = os.getloadavg()[0]
        loads = []
        for round_ in range(args.rounds):
            for variant in chosen:
                fit_round(variant, args, device, args.warmup + (round_ == 0))
                print(
                    f"  round {round_ + 1}: {variant.name}: "
                    + ", ".join(ms(s) for s in variant.wall[-1])
                    + f" (CPU {', '.join(f'{s:.1f} s' for s in variant.cpu[-1])})",
                    flush=True,
                )
            loads.append(os.getloadavg()[0])
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    per_window = cache["bytes"] / cache["windows"]
    setup = [
        f"- data: Dubai district {args.tile}, {cache['chips']} chips (RGB uint8), "
        f"{args.patch_size}² crops, batch {args.batch_size}",
        "- student: U-Net / ResNet-18, random init; KTDA rows: modulation null unless noted, "
        "auxiliary head (weight 0.4), distill_weight 1",
        "- teacher: timm vit_base_patch14_dinov2, blocks 2, 5, 8, 11, random weights",
        f"- cache: {cache['windows']} windows, {cache['dtype']}, built in "
        f"{cache['build_s']:.1f} s, {cache['bytes'] / 2**20:.0f} MiB on disk "
        f"({per_window / 2**20:.2f} MiB per window)",
        f"- {args.rounds} interleaved round(s) × {args.steps} timed steps per variant, after "
        f"{args.warmup} warm-up batch(es) per fit ({args.warmup + 1} in round 1)",
        f"- torch threads: {torch.get_num_threads()}; load average (1 min) before round 1: "
        f"{load_before:.1f}",
    ]
    markdown = (
        "\n".join(setup) + "\n\n" + results_table(chosen) + "\n" + rounds_table(chosen, loads)
    )
    base = chosen[0]
    report = {
        "command": command(),
        "hardware": hardware(),
        "seconds": round(time.perf_counter() - start, 1),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "teacher": TEACHER,
        "cache": cache,
        "variants": {
            v.name: {
                "parameters": parameters(v),
                "wall_s": v.wall,
                "cpu_s": v.cpu,
                "compute_wall_s": v.compute,
                "ratio_wall_median": v.median() / base.median(),
                "ratio_wall_rounds": round_ratios(v, base),
                "ratio_cpu_median": v.median("cpu") / base.median("cpu"),
            }
            for v in chosen
        },
        "load_average_before": load_before,
        "load_average_after_round": loads,
    }
    print(write_results(args.output, report, markdown, 1))


if __name__ == "__main__":
    main()
