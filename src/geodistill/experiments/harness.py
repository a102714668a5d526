"""Run an experiment: check everything, run what is missing (N at once), write the results.

Everything that can be checked is checked before the first run and before anything is written:
the output folder (refused when it holds an earlier experiment unless ``--overwrite`` or
``--resume``), every run's merged config (parsed like ``geodistill fit`` would), and under
``--resume`` every finished run's fingerprint. Runs go in-process one after the other, or with
``jobs > 1`` as that many subprocesses on one thread each; a run starts only once the stage runs
it uses have finished. A finished run kept by ``--resume`` whose extra test sets are new or
changed is re-tested the same way (its recorded checkpoint scored on them, nothing trained).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from geodistill.atomic import atomic_output, check_output
from geodistill.errors import GeodistillError
from geodistill.experiments.file import STAGES_FOLDER, Experiment
from geodistill.experiments.runs import (
    RUN_RECORD,
    RunSpec,
    check_run_config,
    execute_run,
    plan_runs,
    read_record,
    retest_run,
    write_record,
    write_run_config,
)
from geodistill.experiments.summary import figure, machine, markdown, summarise, summary_json
from geodistill.progress import RunProgress

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
RESULTS_PNG = "results.png"
EXPERIMENT_COPY = "experiment.yaml"
RUN_LOG = "run.log"
"""A subprocess run's output (``--jobs N``), in its folder."""


def experiment_outputs(output: Path, experiment: Experiment) -> list[Path]:
    """What an earlier run of ``experiment`` left in ``output`` (what a new one replaces)."""
    names = [RESULTS_JSON, RESULTS_MD, RESULTS_PNG, EXPERIMENT_COPY, STAGES_FOLDER]
    names += list(experiment.variants)
    return [output / name for name in names if (output / name).exists()]


def check_output_folder(
    output: str | Path,
    experiment: Experiment,
    overwrite: bool = False,
    resume: bool = False,
    option: str = "-o",
) -> Path:
    """Refuse an output folder holding an earlier run of the experiment unless ``overwrite`` or
    ``resume``, or one that cannot be written."""
    if overwrite and resume:
        raise GeodistillError("--overwrite and --resume exclude each other: choose one")
    return check_output(
        output,
        "folder",
        overwrite or resume,
        option,
        replaces=lambda folder: experiment_outputs(folder, experiment),
        exists_hint=", or --resume to finish its runs",
    )


def check_runs(runs: Sequence[RunSpec], experiment: Experiment) -> None:
    """Parse each distinct merged config (seeds differ in numbers only) like ``geodistill fit``."""
    seen: set[tuple[str, str, str | None]] = set()
    for run in runs:
        group = (run.kind, run.name, run.budget)
        if group not in seen:
            seen.add(group)
            pending = [str(need.checkpoint) for need in run.needs]
            check_run_config(run.resolved_config(), run.where, experiment.path, pending)
            for name, config in run.test_configs().items():
                check_run_config(config, f"tests.{name} ({run.where})", experiment.path, pending)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _progress(index: int, total: int, run: RunSpec, text: str) -> None:
    print(f"[{index}/{total}] {run.key}: {text}", flush=True)


def _headline(record: dict[str, Any], metric: str) -> str:
    value = record["metrics"].get(metric)
    shown = "nan" if value is None else f"{100 * value:.2f}"
    return f"done in {record['seconds']:.0f} s, {metric} {shown}"


def _retesting(names: Sequence[str]) -> str:
    return f"re-testing on {', '.join(names)} (trained in an earlier run)"


def _retested(record: dict[str, Any], names: Sequence[str], metric: str) -> str:
    suffix = metric.split("/", 1)[1]
    scores = []
    for name in names:
        value = record["metrics"].get(f"{name}/{suffix}")
        scores.append(f"{name}/{suffix} {'nan' if value is None else f'{100 * value:.2f}'}")
    return "re-tested, " + ", ".join(scores)


def _run_sequentially(
    todo: list[RunSpec],
    metric: str,
    progress: RunProgress | None = None,
    retests: dict[str, list[str]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Each run of ``todo`` in this process: trained and tested, or (``retests``: run key ->
    test sets) only its recorded checkpoint scored on those test sets."""
    retests = retests or {}
    records = {}
    for index, run in enumerate(todo, start=1):
        names = retests.get(run.key)
        callbacks: list[Any] = []
        if progress is None:
            _progress(index, len(todo), run, _retesting(names) if names else "running")
        else:
            callbacks = progress.start(run.name, run.key, _retesting(names) if names else "")
        write_run_config(run)
        if names:
            records[run.key] = retest_run(run.folder, run.retest_fields(names), callbacks)
        else:
            records[run.key] = execute_run(run.folder, run.record_fields(), callbacks)
        if progress is not None:
            progress.finish()
        elif names:
            _progress(index, len(todo), run, _retested(records[run.key], names, metric))
        else:
            _progress(index, len(todo), run, _headline(records[run.key], metric))
    return records


def _failure(run: RunSpec, code: int) -> GeodistillError:
    log = run.folder / RUN_LOG
    try:
        errors = [
            line for line in log.read_text().splitlines() if line.startswith("geodistill: error:")
        ]
    except OSError:
        errors = []
    if errors:
        return GeodistillError(f"{run.key}: {errors[-1].removeprefix('geodistill: error: ')}")
    return GeodistillError(
        f"the run failed (exit status {code}); its output is in {log}", run.folder
    )


def _run_in_parallel(
    todo: list[RunSpec],
    jobs: int,
    finished: set[str],
    metric: str,
    retests: dict[str, list[str]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Up to ``jobs`` subprocesses (one thread each); a run waits for the stage runs it uses.
    ``retests`` (run key -> test sets): runs whose recorded checkpoint is only scored on those."""
    retests = retests or {}
    records: dict[str, dict[str, Any]] = {}
    pending = list(todo)
    running: dict[str, tuple[subprocess.Popen[bytes], RunSpec, Any]] = {}
    done = set(finished)
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    count = 0
    try:
        while pending or running:
            for run in list(pending):
                if len(running) >= jobs:
                    break
                if not all(need.key in done for need in run.needs):
                    continue
                pending.remove(run)
                count += 1
                names = retests.get(run.key)
                _progress(count, len(todo), run, _retesting(names) if names else "started")
                write_run_config(run)
                log = (run.folder / RUN_LOG).open("ab" if names else "wb")  # a re-test appends
                if names:
                    fields = json.dumps({**run.retest_fields(names), "retest": True})
                else:
                    fields = json.dumps(run.record_fields())
                command = [sys.executable, "-m", "geodistill.experiments.worker"]
                process = subprocess.Popen(
                    [*command, str(run.folder), fields],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=environment,
                )
                running[run.key] = (process, run, log)
            if not running:  # a dependency was not in the plan: cannot happen for a valid plan
                raise GeodistillError("no run can start: a stage run it needs is missing")
            time.sleep(0.2)
            for key, (process, run, log) in list(running.items()):
                code = process.poll()
                if code is None:
                    continue
                log.close()
                del running[key]
                if code != 0:
                    raise _failure(run, code)
                records[key] = json.loads((run.folder / RUN_RECORD).read_text())
                done.add(key)
                names = retests.get(key)
                line = _retested(records[key], names, metric) if names else None
                print(f"  {key}: {line or _headline(records[key], metric)}", flush=True)
    finally:
        for process, _, log in running.values():  # a failure or Ctrl-C: stop the others
            process.terminate()
            process.wait()
            log.close()
    return records


def run_experiment(
    experiment: Experiment,
    output: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    jobs: int = 1,
    command: str = "",
    option: str = "-o",
    progress: RunProgress | None = None,
) -> Path:
    """Run every missing run of ``experiment`` into ``output`` (default: the file's ``output``)
    and write ``results.json``, ``results.md`` and ``results.png``; returns ``results.md``.

    ``progress`` (one job only) announces each run by name and shows its progress line instead
    of the plain ``[i/n]`` lines; runs kept by ``resume`` are announced as skipped, or as
    re-testing when their extra test sets are new or changed.
    """
    if output is None:
        if experiment.output is None:
            raise GeodistillError("output: missing; set it or give -o", experiment.path)
        output, option = experiment.output, f"output (in {experiment.path})"
    if jobs < 1:
        raise GeodistillError(f"--jobs must be >= 1, got {jobs}")
    folder = check_output_folder(output, experiment, overwrite, resume, option)
    runs = plan_runs(experiment, folder)
    check_runs(runs, experiment)
    finished: dict[str, dict[str, Any]] = {}
    retests: dict[str, list[str]] = {}  # kept runs to score on new or changed test sets
    changed: list[RunSpec] = []
    if resume:
        for run in runs:
            found = read_record(run)  # refuses a run of another config before anything runs
            if found is not None:
                finished[run.key] = found.record
                if found.retest:
                    retests[run.key] = found.retest
                if found.changed:
                    changed.append(run)
    # Every check has passed: clear what is replaced, then run.
    stale = experiment_outputs(folder, experiment) if overwrite else []
    stale += [run.folder for run in runs if run.key not in finished and run.folder.exists()]
    for path in stale:
        _remove(path)
    for run in changed:  # test sets gone or changed: their scores leave the record first
        write_record(run.folder, finished[run.key])
    folder.mkdir(parents=True, exist_ok=True)
    todo = [run for run in runs if run.key not in finished or run.key in retests]
    trained = len(todo) - len(retests)
    if finished and progress is None:
        line = f"--resume: {len(finished)} finished run(s) kept, {trained} to run"
        if retests:
            line += f", {len(retests)} to re-test on new or changed test sets"
        print(line, flush=True)
    if progress is not None:
        progress.total = len(runs)
        for run in runs:
            if run.key in finished and run.key not in retests:
                progress.skip(run.name, "complete in an earlier run, kept (--resume)")
    start = time.perf_counter()
    if jobs == 1 or len(todo) <= 1 or progress is not None:
        finished.update(_run_sequentially(todo, experiment.metric, progress, retests))
    else:
        done = set(finished)
        finished.update(_run_in_parallel(todo, jobs, done, experiment.metric, retests))
    seconds = time.perf_counter() - start
    records = [finished[run.key] for run in runs]
    return write_results(experiment, folder, records, command, seconds, trained, len(retests))


def write_results(
    experiment: Experiment,
    folder: Path,
    records: list[dict[str, Any]],
    command: str,
    seconds: float,
    ran: int | None = None,
    retested: int = 0,
) -> Path:
    """``results.json`` (every run), ``results.md`` and ``results.png``, each written atomically,
    and a copy of the experiment file. ``ran``: the runs trained now (default: all);
    ``retested``: the finished runs only re-tested now."""
    budgets = [b.name for b in experiment.budgets]
    variants = list(experiment.variants)
    summary = summarise(records, experiment.metric, experiment.baseline, variants, budgets)
    ran = len(records) if ran is None else ran
    now = f"{ran} run(s) run now" + (f" and {retested} re-tested" if retested else "")
    header = {
        "Experiment": f"`{experiment.path}`",
        "Command": f"`{command}`" if command else "–",
        "Machine": machine(),
        "Date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "Seeds": ", ".join(str(s) for s in experiment.seeds),
        "Wall time": f"{seconds:.0f} s for the {now} ({len(records)} in all)",
    }
    report = {
        "experiment": str(experiment.path),
        "command": command,
        "machine": header["Machine"],
        "date": header["Date"],
        "seconds": round(seconds, 1),
        "metric": experiment.metric,
        "baseline": experiment.baseline,
        "seeds": experiment.seeds,
        "budgets": {b.name: b.overrides for b in experiment.budgets},
        "variants": variants,
        "stages": list(experiment.stages),
        "summary": summary_json(summary),
        "runs": records,
    }
    # Each extra test set: the headline metric on it, summarised and paired the same way.
    suffix = experiment.metric.split("/", 1)[1]
    extra = {
        name: summarise(records, f"{name}/{suffix}", experiment.baseline, variants, budgets)
        for name in experiment.tests
    }
    if extra:
        report["tests"] = {name: summary_json(value) for name, value in extra.items()}
    with atomic_output(folder / RESULTS_JSON) as temporary:
        temporary.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    text = markdown(summary, records, header, list(experiment.stages), extra)
    with atomic_output(folder / RESULTS_MD) as temporary:
        temporary.write_text(text)
    with atomic_output(folder / RESULTS_PNG, suffix=".png") as temporary:
        figure(summary, temporary)
    if experiment.path.is_file():
        with atomic_output(folder / EXPERIMENT_COPY) as temporary:
            temporary.write_text(experiment.path.read_text())
    return folder / RESULTS_MD
