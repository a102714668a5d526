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
import copy
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from geodistill.data.synthetic import CLASS_NAMES, write_demo_dataset
from geodistill.demo import N_FINE
from geodistill.errors import GeodistillError
from geodistill.experiments import Experiment, load_experiment, run_experiment, select_variants
from geodistill.experiments.harness import check_output_folder
from geodistill.reporting import results_table

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "configs" / "coarse_to_fine_demo.yaml"
DATA = "outputs/demo/data"
"""The data folder the experiment file names (``geodistill demo``'s)."""
RESOLVED = "experiment.resolved.yaml"
"""The experiment as this script runs it, in the output folder (the harness copies it to
``experiment.yaml`` with the results)."""
PER_CLASS = "per_class.md"


def replace_prefix(value: Any, old: str, new: str) -> Any:
    """``value`` with every string starting with the path ``old`` moved to start with ``new``."""
    if isinstance(value, dict):
        return {key: replace_prefix(item, old, new) for key, item in value.items()}
    if isinstance(value, list):
        return [replace_prefix(item, old, new) for item in value]
    if isinstance(value, str) and old != new and (value == old or value.startswith(old + "/")):
        return new + value[len(old) :]
    return value


def set_epochs(raw: dict[str, Any], teacher: int | None, student: int | None) -> None:
    """``student`` epochs for the base config (stage 2, fine_only), ``teacher`` epochs for every
    stage or variant that sets its own (the teacher, joint, oracle)."""
    if student is not None:
        raw["base"].setdefault("trainer", {})["max_epochs"] = student
    if teacher is None:
        return
    runs = [stage.get("overrides") or {} for stage in (raw.get("stages") or {}).values()]
    runs += list((raw.get("variants") or {}).values())
    for overrides in runs:
        if "max_epochs" in (overrides.get("trainer") or {}):
            overrides["trainer"]["max_epochs"] = teacher


def write_resolved(raw: dict[str, Any], output: Path) -> Path:
    """The resolved experiment, written into ``output`` (its runs go there too)."""
    resolved = copy.deepcopy(raw)
    resolved["output"] = str(output)
    output.mkdir(parents=True, exist_ok=True)
    path = output / RESOLVED
    path.write_text(yaml.safe_dump(resolved, sort_keys=False))
    return path


def variant_names(text: str | None) -> list[str]:
    return [name for name in (text or "").split(",") if name]


def check_output(
    file: Path, output: Path, variants: Sequence[str], overwrite: bool, resume: bool
) -> None:
    """Refuse an output folder holding an earlier run (unless ``--overwrite``/``--resume``)
    before any data are prepared."""
    experiment = load_experiment(file)
    if variants:
        experiment = select_variants(experiment, variants)
    check_output_folder(output, experiment, overwrite, resume, "--output")


def write_per_class(
    experiment: Experiment, results: Path, class_names: Sequence[str]
) -> tuple[Path, str]:
    """``per_class.md``: :func:`geodistill.reporting.results_table` over the runs (one result
    set per seed), stages after the baseline, then the other variants in the file's order."""
    records = json.loads(results.with_suffix(".json").read_text())["runs"]
    per_seed: dict[int, dict[str, dict[str, float]]] = {}
    for record in records:
        metrics = {k.removeprefix("test/"): v for k, v in record["metrics"].items()}
        metrics = {k: float("nan") if v is None else v for k, v in metrics.items()}
        per_seed.setdefault(int(record["seed"]), {})[record["name"]] = metrics
    variants = list(experiment.variants)
    order = [experiment.baseline, *experiment.stages]
    order += [name for name in variants if name not in order]
    table = results_table([per_seed[s] for s in sorted(per_seed)], class_names, order)
    path = results.parent / PER_CLASS
    seeds = ", ".join(str(s) for s in sorted(per_seed))
    path.write_text(
        f"Test metrics per method, mean ± std over seeds {seeds} (%; per-class columns are IoU; "
        "'gap recovered' = (method − fine_only) / (oracle − fine_only) in mIoU). "
        f"Runs: {results.with_suffix('.json')}.\n\n{table}"
    )
    return path, table


def add_run_options(parser: argparse.ArgumentParser, default_output: str) -> None:
    """Options shared by the coarse-to-fine benchmarks."""
    parser.add_argument("--output", type=Path, default=Path(default_output))
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="training seeds (default: the experiment file's)"
    )
    parser.add_argument(
        "--variants",
        help="comma-separated variants to run, e.g. fine_only,attentive (with the stages they "
        "use; the baseline fine_only must be among them). Default: every variant",
    )
    parser.add_argument("--teacher-epochs", type=int, help="stage 1, joint and oracle epochs")
    parser.add_argument("--student-epochs", type=int, help="stage 2 and fine_only epochs")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (one thread each)")
    earlier = parser.add_mutually_exclusive_group()
    earlier.add_argument("--overwrite", action="store_true", help="rerun every run")
    earlier.add_argument("--resume", action="store_true", help="keep finished runs, run the rest")


def run(
    raw: dict[str, Any], args: argparse.Namespace, class_names: Sequence[str]
) -> tuple[Path, str]:
    """Write the resolved experiment into ``args.output``, run it, and write ``per_class.md``;
    returns ``results.md`` and the per-class table."""
    if args.seeds:
        raw["seeds"] = list(args.seeds)
    set_epochs(raw, args.teacher_epochs, args.student_epochs)
    experiment = load_experiment(write_resolved(raw, args.output))
    variants = variant_names(args.variants)
    if variants:
        experiment = select_variants(experiment, variants)
    command = "python " + " ".join(sys.argv)
    results = run_experiment(
        experiment,
        args.output,
        overwrite=args.overwrite,
        resume=args.resume,
        jobs=args.jobs,
        command=command,
        option="--output",
    )
    _, table = write_per_class(experiment, results, class_names)
    return results, table


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
    add_run_options(parser, "outputs/benchmarks/demo_c2f")
    args = parser.parse_args()
    check_output(
        args.experiment, args.output, variant_names(args.variants), args.overwrite, args.resume
    )
    if (args.data / "README.txt").exists():
        print(f"demo data: {args.data} (already there, kept)", flush=True)
    else:
        print(f"demo data: writing {args.data} (data seed {args.data_seed})", flush=True)
        write_demo_dataset(args.data, seed=args.data_seed, n_fine=N_FINE)
    raw = yaml.safe_load(args.experiment.read_text())
    raw = replace_prefix(raw, DATA, str(args.data))
    results, table = run(raw, args, list(CLASS_NAMES))
    print(results.read_text())
    print(table)
    print(f"wrote {results}, {results.with_suffix('.json')}, {results.parent / PER_CLASS}")


if __name__ == "__main__":
    try:
        main()
    except GeodistillError as error:  # a refused output folder, a bad experiment file: one line
        sys.exit(f"error: {error}")
