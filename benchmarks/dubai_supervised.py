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

The Dubai classes and colours are in ``dubai_data.py``; the runner every experiment-file
benchmark shares is ``experiment_runner.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dubai_data import DATA, DATA_IN_YAML  # noqa: E402
from experiment_runner import HERE, add_run_options, run_experiment_file  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the Dubai aerial chips")
    parser.add_argument("--experiment", type=Path, default=HERE / "dubai_supervised.yaml")
    add_run_options(parser, "outputs/benchmarks/dubai_supervised")
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

    run_experiment_file(args.experiment, args, {DATA_IN_YAML: str(args.data)}, edit)


if __name__ == "__main__":
    main()
