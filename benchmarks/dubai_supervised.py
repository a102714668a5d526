"""Supervised baseline on real imagery: Dubai aerial chips, district-wise split.

Train on districts (tiles) 1-5, select the checkpoint on district 6, test on districts 7-8, which
were imaged at other times: a natural domain shift. Masks are RGB-coded PNGs; the colours used are
the ones the PNGs really contain (see ../shared/data/DATA.md), "Unlabeled" is ignored.

The runs are the experiment file ``benchmarks/dubai_supervised.yaml`` (docs/compare.md), run by
the ``geodistill compare`` harness; this script only points it at ``--data`` and applies the
options below, writing the resolved file as ``<output>/dubai_supervised.yaml``:

    python benchmarks/dubai_supervised.py --epochs 20 --seeds 0
    geodistill compare --config benchmarks/dubai_supervised.yaml    # the same, from the repo root

Writes ``<output>/results.{md,json,png}`` (mean ± std over seeds) and one folder per run.

This module also holds what the other Dubai benchmarks share: the classes and colours, and
:func:`run_benchmark`, which fills prepared paths into an experiment file and runs it.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from geodistill.data import Domain, GeoSegDataModule, Source

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / ".." / "shared" / "data" / "dubai_aerial"
DATA_IN_YAML = "../shared/data/dubai_aerial"
"""How the experiment files name the Dubai chips (relative to the repository root)."""
PREPARED = "PREPARED"
"""Prefix of the paths of prepared data in an experiment file: the script fills it in."""
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
    """The data of ``dubai_supervised.yaml`` as a data module (for scripts that time things)."""
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


# ------------------------------------------------------------------ the experiment-file runner


def replace_prefixes(value: Any, prefixes: dict[str, str]) -> Any:
    """``value`` with every string that starts with a key of ``prefixes`` starting with its value
    instead (``PREPARED/tile_6/...`` -> ``outputs/.../data_scale0.5/tile_6/...``)."""
    if isinstance(value, dict):
        return {key: replace_prefixes(item, prefixes) for key, item in value.items()}
    if isinstance(value, list):
        return [replace_prefixes(item, prefixes) for item in value]
    if isinstance(value, str):
        for old, new in prefixes.items():
            if value == old or value.startswith(old + "/"):
                return new + value[len(old) :]
    return value


def distillation_args(overrides: dict[str, Any]) -> dict[str, Any] | None:
    """The ``init_args`` of a variant's ``model.init_args.distillation`` (None without one)."""
    method = overrides.get("model", {}).get("init_args", {}).get("distillation")
    return method.setdefault("init_args", {}) if isinstance(method, dict) else None


def add_harness_options(parser: argparse.ArgumentParser, output: str) -> None:
    """The options every experiment-file benchmark shares (those of ``geodistill compare``)."""
    parser.add_argument("-o", "--output", type=Path, default=Path(output), help="output folder")
    parser.add_argument("--seeds", type=int, nargs="+", help="default: the experiment file's")
    parser.add_argument(
        "--jobs", type=int, default=1, help="runs at once, each a subprocess on one thread"
    )
    earlier = parser.add_mutually_exclusive_group()
    earlier.add_argument(
        "--overwrite", action="store_true", help="remove an earlier run of the experiment first"
    )
    earlier.add_argument(
        "--resume", action="store_true", help="keep the finished runs of the same config"
    )


def run_benchmark(
    template: Path,
    args: argparse.Namespace,
    prefixes: dict[str, str],
    edit: Callable[[dict[str, Any]], None] | None = None,
    variants: list[str] | None = None,
) -> Path:
    """Run the experiment file ``template`` through the ``geodistill compare`` harness.

    Its paths are filled in (``prefixes``), ``edit`` changes the raw experiment (the script's
    options), ``--seeds`` replaces its seeds, and the result is written as
    ``<output>/<template name>`` (rerun it by hand with ``geodistill compare --config``); only
    ``variants`` run when given (the baseline among them). Returns ``results.md``.
    """
    from geodistill.experiments import load_experiment, run_experiment, select_variants
    from geodistill.experiments.harness import check_output_folder

    sys.path.insert(0, str(HERE))
    from report import command

    raw = replace_prefixes(yaml.safe_load(template.read_text()), prefixes)
    if args.seeds:
        raw["seeds"] = list(args.seeds)
    if edit is not None:
        edit(raw)
    raw["output"] = str(args.output)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    resolved = output / template.name
    staging = output / f".{template.name}.tmp"
    chosen = f" --variants {','.join(variants)}" if variants else ""
    header = (
        f"# {template.name}, resolved by: {command()}\n"
        f"# rerun: geodistill compare --config {resolved}{chosen} --resume\n"
    )
    staging.write_text(header + yaml.safe_dump(copy.deepcopy(raw), sort_keys=False))
    try:
        experiment = load_experiment(staging)  # every check before anything is replaced
        if variants:
            experiment = select_variants(experiment, variants)
        check_output_folder(output, experiment, args.overwrite, args.resume)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    os.replace(staging, resolved)
    experiment = replace(experiment, path=resolved)
    line, argv = command(), sys.argv
    sys.argv = argv[:1]  # the runs' LightningCLI reads its arguments, not this script's
    try:
        results = run_experiment(
            experiment,
            output,
            overwrite=args.overwrite,
            resume=args.resume,
            jobs=args.jobs,
            command=line,
        )
    finally:
        sys.argv = argv
    print(results.read_text())
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the Dubai aerial chips")
    parser.add_argument("--experiment", type=Path, default=HERE / "dubai_supervised.yaml")
    add_harness_options(parser, "outputs/benchmarks/dubai_supervised")
    parser.add_argument("--epochs", type=int, help="default: the file's (20)")
    parser.add_argument("--patch-size", type=int, help="default: the file's (192)")
    parser.add_argument("--batch-size", type=int, help="default: the file's (8)")
    parser.add_argument("--arch", help="default: the file's (unet)")
    parser.add_argument("--encoder", help="default: the file's (resnet18)")
    parser.add_argument("--val-every", type=int, help="validate every N epochs (default: 5)")
    parser.add_argument(
        "--limit-batches",
        type=int,
        help="smoke test: this many training, validation and test batches per epoch",
    )
    args = parser.parse_args()

    def edit(raw: dict[str, Any]) -> None:
        base = raw["base"]
        trainer, model = base["trainer"], base["model"]["init_args"]
        data = base["data"]["init_args"]
        for section, key, value in (
            (trainer, "max_epochs", args.epochs),
            (trainer, "check_val_every_n_epoch", args.val_every),
            (data, "patch_size", args.patch_size),
            (data, "batch_size", args.batch_size),
            (model, "arch", args.arch),
            (model, "encoder", args.encoder),
        ):
            if value is not None:
                section[key] = value
        if args.limit_batches:
            for stream in ("train", "val", "test"):
                trainer[f"limit_{stream}_batches"] = args.limit_batches

    run_benchmark(args.experiment, args, {DATA_IN_YAML: str(args.data)}, edit)


if __name__ == "__main__":
    main()
