"""Semi-supervised benchmark: supervised-only vs FixMatch vs FixMatch + multi-teacher distillation.

The protocol of each data set is an experiment file (docs/compare.md), run by the ``geodistill
compare`` harness: label ratios as budgets (``train_ratio``), the per-ratio teachers as
``per_budget`` stages, the three methods as variants, mean ± std over seeds and the paired gain
of each over ``supervised``:

* ``dubai`` (``benchmarks/semi_supervised_dubai.yaml``): the half-resolution Dubai preparation
  of ``dubai_coarse_to_fine.py`` (its ``prepare``); labelled pool districts 1-5, the rest of it
  unlabelled, val district 6, test districts 7-8; ratios 0.05 / 0.1 / 0.25;
* ``demo`` (``benchmarks/semi_supervised_demo.yaml``): SYNTHETIC 6-band region-B chips of
  :func:`geodistill.data.synthetic.write_demo_dataset` (128 x 128, data seed 1): a pool of 100
  chips, 10 validation chips, 30 test chips, written here once; ratios 0.01 / 0.05 / 0.1.

This script prepares the data, fills its folder and the options below into the file, writes it as
``<output>/<dataset>/semi_supervised_<dataset>.yaml`` and runs it into ``<output>/<dataset>/``.

Teachers of ``fixmatch_mt`` (``--teacher-source``):

* ``subset`` (default): per ratio and seed, a U-Net R34 and a SegFormer trained on **the same
  labelled chips as the student** (the files' stages): no method sees a label beyond the ratio;
* ``given``: the checkpoints of ``--teacher DATASET=PATH`` (repeatable), the same for every ratio
  and seed. Defaults: Dubai, the U-Net R34 teacher of ``ktda_dubai.py`` (seed 0), trained on
  districts 1-5 with ALL labels: it saw the labels the student gets unlabelled, so
  ``fixmatch_mt`` is then "student + a teacher trained on more labels", not a semi-supervised
  result; demo, the two teachers of ``geodistill demo`` (region-A coarse outlines; 4 exact
  region-B chips of data seed 0): other data, no withheld label. ``<output>/<dataset>/
  teachers.json`` records which, and whether they saw withheld labels.

The teachers' outputs are cached (``--teacher-cache``, default on), and ``fixmatch_mt`` then trains
on that window grid; ``--no-teacher-cache`` runs the teachers on every batch of random crops.

    python benchmarks/semi_supervised.py --dataset dubai --threads 1 \\
        -o outputs/benchmarks/semi_supervised_dubai       # 3 ratios x 3 seeds, hours of a core
    python benchmarks/semi_supervised.py --dataset demo --teacher-source given \\
        -o outputs/benchmarks/semi_supervised_demo        # needs `geodistill demo` first
    python benchmarks/semi_supervised.py --quick -o /tmp/semi   # smoke: 1 seed, smallest ratio,
                                                                # 4 steps, 2 val/test batches
    python benchmarks/semi_supervised.py --setting large        # GPU: full resolution, longer
    python benchmarks/semi_supervised.py --dataset dubai --resume   # finish an interrupted run

Per data set: ``results.{md,json,png}`` of the harness, one folder per run, and
``labelled.json``: per ratio and seed, the labelled chips, how many of the pool, and their share
of the pool's pixels (chips differ in size from district to district).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from dataclasses import dataclass
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

ROOT = HERE.parent
KTDA_TEACHER = ROOT / "outputs/benchmarks/ktda_dubai/stages/teacher/seed0/checkpoints/best.ckpt"
DEMO_TEACHERS = [
    ROOT / "outputs/demo/runs/stages/coarse_only/seed0/checkpoints/best.ckpt",
    ROOT / "outputs/demo/runs/fine_only/base/seed0/checkpoints/best.ckpt",
]
DEMO_DATA = {"seed": 1, "chip_size": 128, "pool": 100, "val": 10, "test": 30}
"""The synthetic data set: data seed 1 (``geodistill demo`` draws seed 0), region B only."""
TEACHER_STAGES = ("teacher_unet", "teacher_segformer")
VARIANTS = ["supervised", "fixmatch", "fixmatch_mt"]
ELSEWHERE_VARIANTS = ["kd", "fixmatch_teacher", "fixmatch_teacher_fixed"]
"""``dubai_elsewhere``'s variants beside supervised and fixmatch (its file's header)."""
SMOKE = {"max_steps": 4, "val_every": 2, "teacher_steps": 4, "limit_batches": 2}
"""``--quick``: a few steps, two validation and test batches: proves the pipeline; its metrics
mean nothing."""


@dataclass(frozen=True)
class Protocol:
    """One data set: its experiment file, its pool, where its given teachers come from, and the
    ``large`` setting's changes of the file."""

    experiment: Path
    given_teachers: list[Path]
    given_note: str
    given_leaks: bool
    large: dict[str, Any]
    stage_note: str = (
        "per ratio and seed, a U-Net R34 and a SegFormer trained on the student's chips"
    )
    stage_leaks: bool = False


DUBAI_LARGE: dict[str, Any] = {
    "scale": 1.0,
    "data": {"patch_size": 256, "batch_size": 16, "unlabeled_batch_size": 16},
    "student": {"arch_kwargs": None},
    "steps": (3000, 250, 3000),
}
"""The ``large`` setting of both Dubai protocols, apart from their teachers' encoders."""


PROTOCOLS: dict[str, Protocol] = {
    "dubai": Protocol(
        experiment=HERE / "semi_supervised_dubai.yaml",
        given_teachers=[KTDA_TEACHER],
        given_note=(
            "ktda_dubai.py's U-Net R34, trained on districts 1-5 with ALL labels: it saw the "
            "labels the student gets unlabelled (an upper bound, not a semi-supervised result)"
        ),
        given_leaks=True,
        large={
            **DUBAI_LARGE,
            "teachers": {"teacher_unet": "resnet50", "teacher_segformer": "mit_b2"},
        },
    ),
    "dubai_elsewhere": Protocol(
        experiment=HERE / "semi_supervised_dubai_elsewhere.yaml",
        given_teachers=[],
        given_note="",
        given_leaks=False,
        large={**DUBAI_LARGE, "teachers": {"teacher_elsewhere": "resnet50"}},
        stage_note=(
            "per seed, the student's light U-Net R18 trained on districts 1-3 with all their "
            "labels: images and labels no student run reads (a model trained elsewhere); it "
            "knows more than the student, and saw none of the student's withheld labels"
        ),
    ),
    "demo": Protocol(
        experiment=HERE / "semi_supervised_demo.yaml",
        given_teachers=DEMO_TEACHERS,
        given_note=(
            "geodistill demo's coarse_only (region-A coarse outlines) and fine_only (4 exact "
            "region-B chips of data seed 0): other data than this benchmark's (data seed 1)"
        ),
        given_leaks=False,
        large={
            "data": {"patch_size": 128, "batch_size": 16, "unlabeled_batch_size": 16},
            "steps": (2000, 200, 2000),
            "teachers": {"teacher_unet": "resnet50", "teacher_segformer": "mit_b2"},
        },
    ),
}


# ------------------------------------------------------------------------------------ data


def prepare_dubai(args: argparse.Namespace, setting: dict[str, Any]) -> Path:
    from dubai_coarse_to_fine import prepare

    folder = args.prepared_in or args.output / "dubai"
    return prepare(args.data, folder, setting.get("scale", 0.5), seeds=[])


def prepare_demo(args: argparse.Namespace, setting: dict[str, Any]) -> Path:
    """Write the synthetic chips once (a marker records how they were drawn): the first
    ``pool`` chips of the generator's region B in ``pool/``, the next ``val`` in ``val/``."""
    from geodistill.data.synthetic import write_demo_dataset

    folder = args.output / "demo" / f"data_seed{DEMO_DATA['seed']}"
    marker = folder / "benchmark_data.json"
    if marker.exists() and json.loads(marker.read_text()) == DEMO_DATA:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    write_demo_dataset(
        folder,
        seed=DEMO_DATA["seed"],
        chip_size=DEMO_DATA["chip_size"],
        n_coarse=0,
        n_fine=DEMO_DATA["pool"] + DEMO_DATA["val"],
        n_fine_test=DEMO_DATA["test"],
        scene_size=16,  # the scene is not used
    )
    images = sorted((folder / "fine" / "images").glob("*.tif"))
    for kind in ("images", "labels"):
        (folder / "val" / kind).mkdir(parents=True)
        for image in images[DEMO_DATA["pool"] :]:
            (folder / "fine" / kind / image.name).rename(folder / "val" / kind / image.name)
    (folder / "fine").rename(folder / "pool")
    marker.write_text(json.dumps(DEMO_DATA))
    return folder


PREPARE = {"dubai": prepare_dubai, "dubai_elsewhere": prepare_dubai, "demo": prepare_demo}


def pool_images(raw: dict[str, Any]) -> list[str]:
    """The labelled pool's chips (the training source before a ratio is drawn)."""
    from geodistill.data.datasets import list_images

    return list_images(raw["base"]["data"]["init_args"]["fine"]["train"]["images"])


# ------------------------------------------------------------------------- the options, as edits


def edit_experiment(
    raw: dict[str, Any], name: str, args: argparse.Namespace, setting: dict[str, Any]
) -> None:
    base = raw["base"]
    trainer = base["trainer"]
    base["data"]["init_args"].update(setting.get("data", {}))
    base["model"]["init_args"].update(setting.get("student", {}))
    stages = raw.get("stages", {})
    for stage, encoder in setting.get("teachers", {}).items():
        model = stages[stage]["overrides"].setdefault("model", {})
        model.setdefault("init_args", {})["encoder"] = encoder
    steps, every, teacher_steps = setting.get(
        "steps", (trainer["max_steps"], trainer["val_check_interval"], 0)
    )
    if args.quick:
        steps, every, teacher_steps = SMOKE["max_steps"], SMOKE["val_every"], SMOKE["teacher_steps"]
        for stream in ("val", "test"):
            trainer[f"limit_{stream}_batches"] = SMOKE["limit_batches"]
        raw["seeds"] = raw["seeds"][:1]
    every = args.val_every or every
    if args.epochs:
        # epochs over the WHOLE labelled pool, rounded up to a multiple of the validation
        # interval: one budget for every ratio.
        data = base["data"]["init_args"]
        per_epoch = math.ceil(len(pool_images(raw)) * data["crops_per_image"] / data["batch_size"])
        steps = math.ceil(args.epochs * per_epoch / every) * every
    steps = args.max_steps or steps
    trainer.update(max_steps=steps, val_check_interval=every, log_every_n_steps=min(10, steps))
    for stage in stages.values():
        stage_trainer = stage["overrides"]["trainer"]
        stage_trainer["max_steps"] = (
            args.teacher_steps or teacher_steps or stage_trainer["max_steps"]
        )
    for key, value in [("max_steps", steps)] + [
        ("teacher_steps", s["overrides"]["trainer"]["max_steps"]) for s in stages.values()
    ]:
        if value % every:
            # Lightning validates every `every` steps only: the last steps would never count.
            raise SystemExit(f"{key}={value} is not a multiple of the validation interval {every}")
    if args.ratios:
        raw["budgets"] = [{"train_ratio": r} for r in sorted(args.ratios)]
    if args.quick:
        raw["budgets"] = raw["budgets"][:1]
    semi_variants = [v for v in raw["variants"].values() if is_semi_supervised(v)]
    for overrides in semi_variants:
        init_args = distillation_args(overrides)
        init_args.update(args.semi_args)
        if "teachers" not in init_args:
            continue
        init_args.update(args.mt_args)
        if not args.teacher_cache:
            init_args["teacher_cache"] = None
        if args.teacher_source == "given":
            paths = args.given[name] or [str(p) for p in PROTOCOLS[name].given_teachers]
            layers = init_args["teachers"][0].get("layers")
            init_args["teachers"] = [
                {"kind": "geodistill", "path": p, "layers": layers} for p in paths
            ]
            if init_args.get("teacher_cache") is not None:
                # One cache for every run: rebuilt when the ratio or seed changes.
                init_args["teacher_cache"] = str(args.output / name / "teacher_cache")
    if args.teacher_source == "given":
        raw.pop("stages", None)


def is_semi_supervised(overrides: dict[str, Any]) -> bool:
    """Whether a variant trains with ``SemiSupervised`` (the one ``--semi-args`` edit)."""
    method = overrides.get("model", {}).get("init_args", {}).get("distillation")
    return isinstance(method, dict) and method.get("class_path", "").endswith("SemiSupervised")


def check_given(name: str, args: argparse.Namespace) -> None:
    paths = args.given[name] or PROTOCOLS[name].given_teachers
    if not paths:
        raise SystemExit(f"--teacher-source given: give {name}'s teachers with --teacher")
    for path in paths:
        if not Path(path).is_file():
            hint = " (run `geodistill demo` first)" if Path(path) in DEMO_TEACHERS else ""
            if Path(path) == KTDA_TEACHER:
                hint = " (run benchmarks/ktda_dubai.py first)"
            raise SystemExit(f"no such teacher checkpoint{hint}: {path}; see --teacher")


def provenance(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Where the teachers come from and whether they saw labels the student does not have
    (``None``: unknown, for checkpoints given on the command line)."""
    if args.teacher_source == "subset":
        protocol = PROTOCOLS[name]
        return {
            "teacher_note": protocol.stage_note,
            "teachers_saw_withheld_labels": protocol.stage_leaks,
        }
    if args.given[name]:
        note = "given on the command line; what labels they saw is not known here"
        return {
            "teacher_note": note,
            "teachers_saw_withheld_labels": None,
            "teachers": list(args.given[name]),
        }
    protocol = PROTOCOLS[name]
    return {
        "teacher_note": protocol.given_note,
        "teachers_saw_withheld_labels": protocol.given_leaks,
        "teachers": [str(p) for p in protocol.given_teachers],
    }


# --------------------------------------------------------------------------- post-processing


def labelled_records(results: Path, pool: list[str]) -> dict[str, Any]:
    """Per budget and seed: the labelled chips (from the supervised run's ``splits.json``), how
    many of the pool, and their share of the pool's pixels."""
    from geodistill.data.raster import raster_info

    def pixels(images: list[str]) -> int:
        return sum(raster_info(p).height * raster_info(p).width for p in images)

    total = pixels(pool)
    records: dict[str, Any] = {}
    for run in json.loads(results.with_suffix(".json").read_text())["runs"]:
        if run["kind"] != "variant" or run["name"] != "supervised":
            continue
        splits = json.loads((Path(run["folder"]) / "splits.json").read_text())
        kept = [str(p) for p in splits["domains"]["fine"]["train"]]
        records[f"{run['budget']}/seed{run['seed']}"] = {
            "chips": [f"{Path(p).parent.parent.name}/{Path(p).name}" for p in kept],
            "kept": len(kept),
            "of": len(pool),
            "pixel_share": round(pixels(kept) / total, 4),
        }
    return records


CURVES = {
    "train/pseudo_label_ratio": "share of unlabelled pixels given a pseudo-label",
    "train/ema_distance": "EMA - student distance (relative)",
    "val/mIoU": "student, validation mIoU",
    "val/ema/mIoU": "EMA, validation mIoU",
}
"""The per-step curves of the semi-supervised runs that ``curves.png`` draws (one panel each)."""


def write_curves(results: Path) -> Path | None:
    """``curves.png`` beside ``results.md``: per ``CURVES`` entry, one line per semi-supervised
    run (colour: variant, one line per seed and budget), read from the runs' ``metrics.csv``;
    whether the pseudo-label rate and the EMA have settled within the step budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    runs = [
        r
        for r in json.loads(results.with_suffix(".json").read_text())["runs"]
        if r["kind"] == "variant"
    ]
    frames = {}
    for run in runs:
        logs = sorted(Path(run["folder"]).glob("logs/version_*/metrics.csv"))
        if logs:
            frame = pd.read_csv(logs[-1])
            if "train/pseudo_label_ratio" in frame:
                frames[(run["name"], run["budget"], run["seed"])] = frame
    if not frames:
        return None
    names = sorted({key[0] for key in frames})
    colours = dict(zip(names, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    figure, axes = plt.subplots(1, len(CURVES), figsize=(4.2 * len(CURVES), 3.4))
    for axis, (column, title) in zip(axes, CURVES.items(), strict=True):
        for (name, _budget, _seed), frame in frames.items():
            if column in frame:
                points = frame[["step", column]].dropna()
                axis.plot(points["step"], points[column], color=colours[name], alpha=0.7, lw=1)
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("optimiser step")
    for name in names:
        axes[0].plot([], [], color=colours[name], label=name)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    path = results.parent / "curves.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def remove_caches(output: Path) -> None:
    """The teachers' output caches (hundreds of MB per ratio and seed)."""
    for cache in [*output.glob("stages/*/*/seed*/checkpoints/*.cache"), output / "teacher_cache"]:
        shutil.rmtree(cache, ignore_errors=True)


# ------------------------------------------------------------------------------------ main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", nargs="+", choices=list(PROTOCOLS), default=list(PROTOCOLS))
    add_run_options(parser, "outputs/benchmarks/semi_supervised")
    parser.add_argument(
        "--ratios", type=float, nargs="+", help="for every --dataset (default: each file's)"
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS + ELSEWHERE_VARIANTS,
        help="variants to run, the baseline supervised among them (default: each file's all)",
    )
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
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument(
        "--keep-caches", action="store_true", help="keep the teachers' output caches"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: first seed, smallest ratio, 4 steps"
    )
    args = parser.parse_args()
    args.given = {name: [] for name in PROTOCOLS}
    for item in args.teacher:
        name, _, path = item.partition("=")
        if name not in PROTOCOLS or not path:
            parser.error(f"--teacher takes DATASET=PATH with DATASET in {list(PROTOCOLS)}")
        args.given[name].append(path)
    for ratio in args.ratios or []:
        if not 0 < ratio < 1:
            parser.error(f"ratios must be in (0, 1): the rest is the unlabelled set, got {ratio}")
    if args.teacher_source == "given" and args.teacher_cache and args.jobs > 1:
        parser.error("given teachers share one cache between runs: --jobs 1 or --no-teacher-cache")
    return args


def main() -> None:
    args = parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    output = args.output
    for name in args.dataset:
        protocol = PROTOCOLS[name]
        setting = protocol.large if args.setting == "large" else {}
        if args.teacher_source == "given":
            check_given(name, args)
        data = PREPARE[name](args, setting)
        args.output = output / name
        pool: list[str] = []

        def edit(
            raw: dict[str, Any], name: str = name, setting: dict = setting, pool: list = pool
        ) -> None:
            edit_experiment(raw, name, args, setting)
            pool.extend(pool_images(raw))

        results = run_experiment_file(
            protocol.experiment, args, {PREPARED: str(data)}, edit, args.variants
        )
        (args.output / "teachers.json").write_text(json.dumps(provenance(name, args), indent=2))
        labelled = (
            labelled_records(results, pool)
            if "supervised" in (args.variants or ["supervised"])
            else {}
        )
        (args.output / "labelled.json").write_text(json.dumps(labelled, indent=2))
        for key, record in labelled.items():
            print(
                f"{name} {key}: {record['kept']} of {record['of']} chips labelled, "
                f"{100 * record['pixel_share']:.1f} % of the pool's pixels"
            )
        curves = write_curves(results)
        if curves is not None:
            print(f"wrote {curves}: pseudo-label rate, EMA distance, student and EMA validation")
        if not args.keep_caches:
            remove_caches(args.output)
        args.output = output


if __name__ == "__main__":
    main()
