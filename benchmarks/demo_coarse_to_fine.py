"""Coarse-to-fine comparison on the built-in SYNTHETIC multispectral demo data.

Data preparation plus an experiment file: writes the demo data set when it is missing
(:func:`geodistill.data.synthetic.write_demo_dataset` with the demo's settings: 48 region-A chips
with coarse outlines, ``geodistill.demo.N_FINE`` exact region-B chips, region-B test chips; data
seed ``--data-seed``), then runs ``configs/coarse_to_fine_demo.yaml`` (the stage-1 teacher
``coarse_only`` and every baseline and ablation) with ``geodistill.experiments``, exactly as
``geodistill compare --config configs/coarse_to_fine_demo.yaml`` does. Every seed trains on the
same data; seeds differ in initialisation, crops and the fine train/val draw.

    python benchmarks/demo_coarse_to_fine.py                                  # 3 seeds, all
    python benchmarks/demo_coarse_to_fine.py --variants fine_only,naive_finetune,attentive
    python benchmarks/demo_coarse_to_fine.py --jobs 2                         # 2 runs at once
    python benchmarks/demo_coarse_to_fine.py --resume                         # after a stop

Writes ``<output>/results.{json,md,png}`` (mean ± std over seeds, paired Δ vs ``fine_only``),
``<output>/per_class.md`` (mean ± std per method with per-class IoU and the share of the
fine-only → oracle gap recovered), the runs (``<output>/stages/coarse_only/seed<k>/``,
``<output>/<variant>/base/seed<k>/``) and ``<output>/experiment.yaml``, the experiment as run
(data paths, seeds and epochs filled in): ``geodistill compare --config <output>/experiment.yaml
-o <output> --resume`` reruns or finishes it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from geodistill.data.synthetic import CLASS_NAMES, write_demo_dataset
from geodistill.demo import N_FINE
from geodistill.errors import GeodistillError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from experiment_runner import (  # noqa: E402
    RESOLVED,
    add_run_options,
    check_output,
    run_experiment_file,
    set_epochs,
    variant_names,
)

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "configs" / "coarse_to_fine_demo.yaml"
DATA = "outputs/demo/data"
"""The data folder the experiment file names (``geodistill demo``'s)."""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="See docs/benchmarks.md#coarse-to-fine and docs/coarse_to_fine.md.",
    )
    parser.add_argument(
        "--experiment", type=Path, default=EXPERIMENT, help="experiment file (default: %(default)s)"
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(DATA),
        help="demo data folder, written when missing (default: %(default)s, the folder the "
        "experiment file names; another folder is substituted into the resolved copy)",
    )
    parser.add_argument(
        "--data-seed", type=int, default=0, help="seed of a new demo data set (default: 0)"
    )
    add_run_options(parser, "outputs/benchmarks/demo_c2f", coarse_to_fine=True)
    args = parser.parse_args()
    variants = variant_names(args.variants)
    check_output(args.experiment, args, variants)
    if (args.data / "README.txt").exists():
        print(f"demo data: {args.data} (already there, kept)", flush=True)
    else:
        print(f"demo data: writing {args.data} (data seed {args.data_seed})", flush=True)
        write_demo_dataset(args.data, seed=args.data_seed, n_fine=N_FINE)
    run_experiment_file(
        args.experiment,
        args,
        {DATA: str(args.data)},
        lambda raw: set_epochs(raw, args.teacher_epochs, args.student_epochs),
        variants,
        resolved_name=RESOLVED,
        header=False,
        class_names=list(CLASS_NAMES),
    )


if __name__ == "__main__":
    try:
        main()
    except GeodistillError as error:  # a refused output folder, a bad experiment file: one line
        sys.exit(f"error: {error}")
