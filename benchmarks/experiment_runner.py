"""Running an experiment file from a benchmark script, the one way every such script does it.

A script prepares its data, then :func:`run_experiment_file` takes the experiment file
(docs/compare.md): fills the prepared paths in (:func:`replace_prefixes`), applies the script's
options (``--seeds``, an ``edit`` of the raw mapping, e.g. :func:`set_epochs`), writes the
resolved copy into the output folder, checks that folder, runs it with
:func:`geodistill.experiments.run_experiment` (exactly like ``geodistill compare``) and optionally
writes ``per_class.md`` (:func:`geodistill.reporting.results_table`). :func:`add_run_options`
adds the options these scripts share.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from geodistill.experiments import Experiment, load_experiment, run_experiment, select_variants
from geodistill.experiments.harness import check_output_folder
from geodistill.reporting import results_table

HERE = Path(__file__).resolve().parent
PREPARED = "PREPARED"
"""Prefix of the paths of prepared data in an experiment file: the script fills it in."""
PER_CLASS = "per_class.md"
RESOLVED = "experiment.resolved.yaml"
"""The resolved copy's name for the coarse-to-fine scripts (the others keep the file's name); the
harness copies it to ``experiment.yaml`` with the results."""


def replace_prefixes(value: Any, prefixes: dict[str, str]) -> Any:
    """``value`` with every string that starts with a key of ``prefixes`` (a whole path
    component) starting with its value instead (``PREPARED/tile_6/...`` ->
    ``outputs/.../data_scale0.5/tile_6/...``)."""
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


def set_epochs(raw: dict[str, Any], teacher: int | None, student: int | None) -> None:
    """``student`` epochs for the base config (the students and the baseline), ``teacher``
    epochs for every stage or variant that sets its own (a teacher, joint, oracle); None keeps
    the file's."""
    if student is not None:
        raw["base"].setdefault("trainer", {})["max_epochs"] = student
    if teacher is None:
        return
    runs = [stage.get("overrides") or {} for stage in (raw.get("stages") or {}).values()]
    runs += list((raw.get("variants") or {}).values())
    for overrides in runs:
        if "max_epochs" in (overrides.get("trainer") or {}):
            overrides["trainer"]["max_epochs"] = teacher


def variant_names(text: str | None) -> list[str]:
    """``--variants a,b`` as a list (empty: every variant)."""
    return [name for name in (text or "").split(",") if name]


def add_run_options(
    parser: argparse.ArgumentParser, output: str, coarse_to_fine: bool = False
) -> None:
    """The options every experiment-file benchmark shares (those of ``geodistill compare``):
    ``-o/--output``, ``--seeds``, ``--jobs``, ``--overwrite``/``--resume``. ``coarse_to_fine``:
    the coarse-to-fine scripts' form: ``--output`` only, plus ``--variants a,b`` and
    ``--teacher-epochs``/``--student-epochs`` (see :func:`set_epochs`)."""
    flags = ["--output"] if coarse_to_fine else ["-o", "--output"]
    parser.set_defaults(output_option=flags[0])
    parser.add_argument(*flags, type=Path, default=Path(output), help="output folder")
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="training seeds (default: the experiment file's)"
    )
    if coarse_to_fine:
        parser.add_argument(
            "--variants",
            help="comma-separated variants to run, e.g. fine_only,attentive (with the stages "
            "they use; the baseline fine_only must be among them). Default: every variant",
        )
        parser.add_argument("--teacher-epochs", type=int, help="stage 1, joint and oracle epochs")
        parser.add_argument("--student-epochs", type=int, help="stage 2 and fine_only epochs")
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


def check_output(file: Path, args: argparse.Namespace, variants: Sequence[str] = ()) -> None:
    """Refuse ``args.output`` when it holds an earlier run of the experiment ``file`` (unless
    ``--overwrite``/``--resume``): before any data are prepared; :func:`run_experiment_file`
    checks it again."""
    experiment = load_experiment(file)
    if variants:
        experiment = select_variants(experiment, variants)
    check_output_folder(args.output, experiment, args.overwrite, args.resume, args.output_option)


def write_per_class(experiment: Experiment, results: Path, class_names: Sequence[str]) -> str:
    """``per_class.md``: :func:`geodistill.reporting.results_table` over the runs (one result
    set per seed), stages after the baseline, then the other variants in the file's order;
    returns the table."""
    records = json.loads(results.with_suffix(".json").read_text())["runs"]
    per_seed: dict[int, dict[str, dict[str, float]]] = {}
    for record in records:
        metrics = {k.removeprefix("test/"): v for k, v in record["metrics"].items()}
        metrics = {k: float("nan") if v is None else v for k, v in metrics.items()}
        per_seed.setdefault(int(record["seed"]), {})[record["name"]] = metrics
    order = [experiment.baseline, *experiment.stages]
    order += [name for name in experiment.variants if name not in order]
    table = results_table([per_seed[s] for s in sorted(per_seed)], class_names, order)
    seeds = ", ".join(str(s) for s in sorted(per_seed))
    gap = (  # results_table's column, present with both of these variants
        "; 'gap recovered' = (method − fine_only) / (oracle − fine_only) in mIoU"
        if {"fine_only", "oracle"} <= set(experiment.variants)
        else ""
    )
    (results.parent / PER_CLASS).write_text(
        f"Test metrics per method, mean ± std over seeds {seeds} (%; per-class columns are IoU"
        f"{gap}). Runs: {results.with_suffix('.json')}.\n\n{table}"
    )
    return table


def run_experiment_file(
    template: Path,
    args: argparse.Namespace,
    prefixes: dict[str, str],
    edit: Callable[[dict[str, Any]], None] | None = None,
    variants: Sequence[str] | None = None,
    resolved_name: str | None = None,
    header: bool = True,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Run the experiment file ``template`` through the ``geodistill compare`` harness into
    ``args.output``; prints and returns ``results.md``.

    Its paths are filled in (``prefixes``), ``--seeds`` replaces its seeds, ``edit`` changes the
    raw experiment (the script's other options), and the result is written as
    ``<output>/<resolved_name>`` (default: the template's name; with ``header``, two comment
    lines naming the command and how to rerun it with ``geodistill compare --config``) once the
    output folder passed its check; only ``variants`` run when given (the baseline among them).
    With ``class_names``, also writes ``per_class.md`` (:func:`write_per_class`) and prints it and
    the files written.
    """
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
    name = resolved_name or template.name
    resolved = output / name
    staging = output / f".{name}.tmp"
    text = yaml.safe_dump(copy.deepcopy(raw), sort_keys=False)
    if header:
        chosen = f" --variants {','.join(variants)}" if variants else ""
        text = (
            f"# {template.name}, resolved by: {command()}\n"
            f"# rerun: geodistill compare --config {resolved}{chosen} --resume\n" + text
        )
    staging.write_text(text)
    try:
        experiment = load_experiment(staging)  # every check before anything is replaced
        if variants:
            experiment = select_variants(experiment, variants)
        check_output_folder(output, experiment, args.overwrite, args.resume, args.output_option)
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
            option=args.output_option,
        )
    finally:
        sys.argv = argv
    print(results.read_text())
    if class_names is not None:
        print(write_per_class(experiment, results, class_names))
        print(f"wrote {results}, {results.with_suffix('.json')}, {results.parent / PER_CLASS}")
    return results
