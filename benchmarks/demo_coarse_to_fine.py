"""Coarse-to-fine comparison on the built-in SYNTHETIC multispectral demo data.

Every method of :data:`geodistill.pipelines.coarse_to_fine.METHODS` in the demo's harness
(:func:`geodistill.demo.demo_config`: U-Net-R18, 6 bands, region-A coarse labels, 3 + 2 exact
region-B chips, region-B test chips), mean ± std over seeds. Each seed draws its own dataset.

    python benchmarks/demo_coarse_to_fine.py --seeds 0 1 2

Writes ``<output>/results.json`` and ``<output>/results.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from report import command, hardware, write_results

from geodistill.data.synthetic import CLASS_NAMES, write_demo_dataset
from geodistill.demo import N_FINE, demo_config
from geodistill.pipelines.coarse_to_fine import METHODS, run_coarse_to_fine, write_results_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("outputs/benchmarks/demo_c2f"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--teacher-epochs", type=int, default=4)
    parser.add_argument("--student-epochs", type=int, default=10)
    parser.add_argument(
        "--student-args",
        type=json.loads,
        default={},
        help="CoarseToFineTask overrides as JSON, e.g. '{\"boundary_width\": 12}'",
    )
    runs_flags = parser.add_mutually_exclusive_group()
    runs_flags.add_argument("--overwrite", action="store_true", help="rerun every method")
    runs_flags.add_argument("--resume", action="store_true", help="skip finished methods")
    args = parser.parse_args()
    start = time.perf_counter()
    runs = []
    for seed in args.seeds:
        data = write_demo_dataset(args.output / f"data_seed{seed}", seed=seed, n_fine=N_FINE)
        epochs = {"teacher": args.teacher_epochs, "student": args.student_epochs}
        config = demo_config(data, args.output / f"seed{seed}", seed, args.methods, epochs)
        config.student.model.update(args.student_args)
        runs.append(run_coarse_to_fine(config, overwrite=args.overwrite, resume=args.resume))
        print(f"after seed {seed}:\n{write_results_table(runs, list(CLASS_NAMES))}", flush=True)
    report = {
        "command": command(),
        "hardware": hardware(),
        "seconds": round(time.perf_counter() - start, 1),
        "runs": runs,
    }
    table = write_results_table(runs, list(CLASS_NAMES))
    print(write_results(args.output, report, table, len(args.seeds)))


if __name__ == "__main__":
    main()
