"""KTDA on real imagery: a light student alone vs the same student taught by a frozen teacher.

Dubai aerial chips (../shared/data/DATA.md), prepared as in ``dubai_coarse_to_fine.py`` (resampled
GeoTIFFs, exact class-id labels, "Unlabeled" ignored). The protocol (docs/ktda.md) is the
experiment file ``benchmarks/ktda_dubai.yaml``: a teacher stage (full-depth U-Net R34 trained on
districts 1-5, selected on district 6), students trained on ``--fine-chips`` chips of district 6
(3 more for checkpoint selection), tested on districts 7-8. This script prepares the chips, fills
their folder and the windows per chip into the file, applies the options below and runs it with
the ``geodistill compare`` harness (written as ``<output>/ktda_dubai.yaml``).

Variants: ``student`` and ``ktda`` by default; ``ktda_no_fmm``, ``ktda_online`` (teacher on every
batch of random crops instead of the cache's fixed windows) and ``ktda_no_teacher`` on request.

    python benchmarks/ktda_dubai.py                       # quick: 2-core CPU, 3 seeds
    python benchmarks/ktda_dubai.py --resume \\
        --variants student ktda ktda_no_fmm ktda_online ktda_no_teacher
                                                          # the ablations, same teachers and data
    python benchmarks/ktda_dubai.py --teacher TEACHER.ckpt --variants student ktda \\
        --ktda-args '{"alpha": 1.0}' -o OTHER_FOLDER      # a variant on a given teacher
    python benchmarks/ktda_dubai.py --setting large       # GPU: full resolution, ResNet-50 teacher
    python benchmarks/ktda_dubai.py --smoke -o /tmp/ktda  # 1 seed, 2 batches: the pipeline only

Writes ``<output>/results.{md,json,png}`` (mean ± std over seeds, paired Δ against ``student``;
the teacher stage's own test scores in its ``stages`` section), one folder per run, and
``<output>/deployed.json``: each KTDA run's student exported teacher-free (``geodistill
export``), its size and its largest logit difference from the tested task.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dubai_data import DATA  # noqa: E402
from experiment_runner import (  # noqa: E402
    HERE,
    PREPARED,
    add_run_options,
    distillation_args,
    run_experiment_file,
)

EXPERIMENT = HERE / "ktda_dubai.yaml"
TEACHER = "${stages.teacher.checkpoint}"
DEFAULT_VARIANTS = ["student", "ktda"]
"""What the quick setting runs; the ablations are the file's other variants (``--variants``)."""

SETTINGS: dict[str, dict[str, Any]] = {
    "quick": {"scale": 0.5},
    "large": {
        "scale": 1.0,
        "student_epochs": 80,
        "teacher_epochs": 60,
        "data": {"patch_size": 256, "batch_size": 16},
        "teacher_data": {"patch_size": 256, "crops_per_image": 16},
        "teacher_model": {"encoder": "resnet50"},
        "student_model": {"arch_kwargs": None},  # the full-depth U-Net R18
        "modulation": {"kind": "transformer", "depth": 4, "heads": 8, "mlp_ratio": 4.0},
    },
}
"""``quick``: the file as it is (2-core CPU). ``large`` (GPU): these overrides of it."""


def windows_per_chip(images: list[Path], size: int) -> int:
    """Teacher-cache windows per chip of ``size`` (the mean over ``images``, rounded up): the
    cache trains on a fixed grid of windows instead of random crops, so the plain student gets
    as many random crops per chip and epoch, hence as many steps."""
    from geodistill.data.raster import raster_info
    from geodistill.data.tiling import tile_origins

    total = 0
    for image in images:
        info = raster_info(str(image))
        total += len(tile_origins(info.height, size, size)) * len(
            tile_origins(info.width, size, size)
        )
    return math.ceil(total / len(images))


def edit_experiment(raw: dict[str, Any], args: argparse.Namespace, data: Path) -> None:
    """The script's options as changes of the experiment file."""
    setting = SETTINGS[args.setting]
    base, teacher = raw["base"], raw["stages"]["teacher"]["overrides"]
    base["data"]["init_args"].update(setting.get("data", {}))
    base["model"]["init_args"].update(setting.get("student_model", {}))
    teacher["data"]["init_args"].update(setting.get("teacher_data", {}))
    teacher["model"]["init_args"].update(setting.get("teacher_model", {}))
    base["trainer"]["max_epochs"] = args.student_epochs or setting.get(
        "student_epochs", base["trainer"]["max_epochs"]
    )
    teacher["trainer"]["max_epochs"] = args.teacher_epochs or setting.get(
        "teacher_epochs", teacher["trainer"]["max_epochs"]
    )
    size = base["data"]["init_args"]["patch_size"]
    pool = sorted((data / "tile_6" / "images").glob("*.tif"))
    base["data"]["init_args"]["crops_per_image"] = windows_per_chip(pool, size)
    raw["budgets"] = [{"train_limit": n} for n in args.fine_chips]
    reference = distillation_args(raw["variants"]["ktda"])
    assert reference is not None
    reference = dict(reference)
    for overrides in raw["variants"].values():
        init_args = distillation_args(overrides)
        if init_args is None:
            continue
        # What the variant changes of `ktda` (its ablation) stays; the rest follows the options.
        own = {key for key in {*init_args, *reference} if init_args.get(key) != reference.get(key)}
        updates = {"modulation": setting["modulation"]} if "modulation" in setting else {}
        for key, value in {**updates, **args.ktda_args}.items():
            if key not in own:
                init_args[key] = value
        if args.teacher is not None:
            init_args["teacher"]["path"] = str(args.teacher)
            if init_args.get("teacher_cache") is not None:
                # One cache for every seed: rebuilt when the seed's chips change.
                init_args["teacher_cache"] = str(args.output / "teacher_cache")
    if args.teacher is not None:
        del raw["stages"]
    if args.smoke:
        for trainer in (base["trainer"], teacher["trainer"]):
            trainer.update(
                max_epochs=1,
                check_val_every_n_epoch=1,
                limit_train_batches=2,
                limit_val_batches=2,
                limit_test_batches=2,
            )


def deployed_check(results: Path) -> dict[str, Any]:
    """Per KTDA run: export its teacher-free student, reload it as a plain ``SegmentationTask``
    and compare its logits with the tested task's on a window of a test chip."""
    import rasterio
    import torch

    from geodistill.export import export_student
    from geodistill.tasks import SegmentationTask

    report = json.loads(results.with_suffix(".json").read_text())
    checks: dict[str, Any] = {}
    for run in report["runs"]:
        if run["kind"] != "variant":
            continue
        checkpoint = Path(run["checkpoint"])
        task = SegmentationTask.load_from_checkpoint(checkpoint, map_location="cpu").eval()
        entry: dict[str, Any] = {"parameters": sum(p.numel() for p in task.model.parameters())}
        if task.distillation is not None:
            exported = export_student(checkpoint, checkpoint.parent.parent / "student.ckpt", True)
            deployed = SegmentationTask.load_from_checkpoint(exported, map_location="cpu").eval()
            splits = json.loads((checkpoint.parent.parent / "splits.json").read_text())
            chip = splits["domains"]["fine"]["test"][0]
            with rasterio.open(chip) as src:
                window = torch.from_numpy(src.read()[:, :256, :256].astype("float32"))[None]
            with torch.no_grad():
                difference = (deployed.model(window) - task.model(window)).abs().max()
            entry = {
                "student": str(exported),
                "parameters": sum(p.numel() for p in deployed.model.parameters()),
                "max_logit_difference": float(difference),
            }
        checks[f"{run['name']}/{run['budget']}/seed{run['seed']}"] = entry
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the Dubai aerial chips")
    parser.add_argument("--experiment", type=Path, default=EXPERIMENT)
    add_run_options(parser, "outputs/benchmarks/ktda_dubai")
    parser.add_argument(
        "--prepared-in",
        type=Path,
        help="folder holding (or to hold) the prepared data_scale<s> folder; default: --output",
    )
    parser.add_argument("--setting", choices=list(SETTINGS), default="quick")
    parser.add_argument(
        "--variants", nargs="+", default=DEFAULT_VARIANTS, help="variants of the file to run"
    )
    parser.add_argument(
        "--fine-chips", type=int, nargs="+", default=[3], help="label budget(s): training chips"
    )
    parser.add_argument("--teacher", type=Path, help="use this teacher checkpoint (no stage)")
    parser.add_argument("--teacher-epochs", type=int, help="override the setting's teacher epochs")
    parser.add_argument("--student-epochs", type=int, help="override the setting's student epochs")
    parser.add_argument(
        "--ktda-args",
        type=json.loads,
        default={},
        help="KnowledgeTransfer overrides as JSON, e.g. '{\"alpha\": 1.0}'",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="1 epoch of 2 batches, 2 val/test batches"
    )
    args = parser.parse_args()
    if args.smoke and not args.seeds:
        args.seeds = [0]
    if args.teacher is not None and args.jobs > 1:
        parser.error("--teacher shares one teacher cache between runs: use --jobs 1")
    from dubai_coarse_to_fine import prepare

    data = prepare(args.data, args.prepared_in or args.output, SETTINGS[args.setting]["scale"], [])
    results = run_experiment_file(
        args.experiment,
        args,
        {PREPARED: str(data)},
        lambda raw: edit_experiment(raw, args, data),
        args.variants,
    )
    checks = deployed_check(results)
    (args.output / "deployed.json").write_text(json.dumps(checks, indent=2))
    print(f"wrote {args.output / 'deployed.json'}")


if __name__ == "__main__":
    main()
