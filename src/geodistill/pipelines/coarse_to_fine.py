"""Coarse-to-fine learning end to end: the stage-1 teacher, the method and every baseline.

One :class:`CoarseToFineConfig` describes the data (a coarse and a fine domain), the two stages
and the methods to run. :func:`run_coarse_to_fine` trains the teacher on the coarse labels (or
takes an existing teacher checkpoint), then trains each requested method in the same harness
(same data module, network and epoch budget) and tests it on the fine domain's test split. The
methods are the entries of :data:`METHODS`; geodistill's own is ``attentive``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import lightning as L
from jsonargparse import ArgumentParser

from geodistill.atomic import atomic_output, check_output
from geodistill.data import GeoSegDataModule
from geodistill.data.datasets import Source
from geodistill.errors import GeodistillError
from geodistill.experiment import ExperimentResult, fit_and_test
from geodistill.models.checkpoint import check_checkpoint
from geodistill.progress import PlannedRun, RunProgress
from geodistill.tasks import CoarseToFineTask, SegmentationTask


@dataclass(frozen=True)
class Method:
    """How one method trains: supervised on some labels, or stage 2 from the teacher."""

    description: str
    kind: Literal["teacher", "supervised", "distill"]
    train_on: Literal["fine", "coarse", "coarse+fine"] = "fine"
    exact_coarse: bool = False
    distill: dict[str, Any] = field(default_factory=dict)


METHODS: dict[str, Method] = {
    "fine_only": Method("fine labels only, from scratch", "supervised"),
    "coarse_only": Method("the stage-1 teacher: coarse labels only", "teacher"),
    "naive_finetune": Method(
        "teacher fine-tuned on the fine labels, no distillation",
        "distill",
        distill={"feature_weight": 0.0, "prediction_weight": 0.0},
    ),
    "joint": Method("one model on coarse + fine labels together", "supervised", "coarse+fine"),
    "lwf": Method(
        "LwF-style: unweighted prediction distillation",
        "distill",
        distill={"feature_weight": 0.0, "attention": "uniform"},
    ),
    "feature_kd": Method(
        "unweighted feature distillation",
        "distill",
        distill={"prediction_weight": 0.0, "attention": "uniform"},
    ),
    "oracle": Method(
        "upper bound: exact labels for the coarse-domain images too",
        "supervised",
        "coarse+fine",
        exact_coarse=True,
    ),
    "attentive": Method("geodistill: attentive feature + prediction distillation", "distill"),
    "feature_only": Method(
        "ablation: attentive feature distillation only",
        "distill",
        distill={"prediction_weight": 0.0},
    ),
    "prediction_only": Method(
        "ablation: attentive prediction distillation only",
        "distill",
        distill={"feature_weight": 0.0},
    ),
    "no_attention": Method(
        "ablation: both distillation terms, attention off",
        "distill",
        distill={"attention": "uniform"},
    ),
}
"""Registry of the method and its baselines and ablations, by name."""

BASELINE_ORDER = list(METHODS)

ARCHITECTURE_ARGUMENTS = ("arch", "encoder", "weights", "arch_kwargs")


@dataclass
class Stage:
    """One training stage: task arguments and epoch budget."""

    max_epochs: int = 10
    model: dict[str, Any] = field(default_factory=dict)


@dataclass
class CoarseToFineConfig:
    """Everything one coarse-to-fine run needs (the YAML of ``geodistill coarse-to-fine``).

    ``data`` holds :class:`~geodistill.data.GeoSegDataModule` arguments with a ``coarse`` and a
    ``fine`` domain (``train_on`` and ``unlabeled_from`` are set per method). ``teacher.model``
    holds :class:`~geodistill.tasks.SegmentationTask` arguments, also used by the supervised
    baselines; ``student.model`` holds the extra :class:`~geodistill.tasks.CoarseToFineTask`
    arguments (distillation weights, temperature, attention). ``teacher_checkpoint`` skips stage 1.
    ``exact_coarse_labels`` (labels folder or template of the coarse images' exact labels) is
    needed only by the ``oracle``.
    """

    data: dict[str, Any]
    output: str = "outputs/coarse_to_fine"
    methods: list[str] = field(default_factory=lambda: ["attentive"])
    seed: int = 0
    teacher: Stage = field(default_factory=Stage)
    student: Stage = field(default_factory=Stage)
    teacher_checkpoint: str | None = None
    exact_coarse_labels: str | None = None
    check_val_every_n_epoch: int = 1
    trainer: dict[str, Any] = field(default_factory=dict)


def build_datamodule(data: dict[str, Any], **overrides: Any) -> GeoSegDataModule:
    """Instantiate the data module from plain arguments, type-checked like a CLI config."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(GeoSegDataModule, "data")
    try:
        parsed = parser.parse_object({"data": {**data, **overrides}})
    except Exception as error:  # noqa: BLE001 - argparse errors carry the message we need
        raise GeodistillError(f"bad data config: {error}") from error
    return parser.instantiate(parsed).data


def check_methods(names: list[str]) -> None:
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise GeodistillError(
            f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}"
        )


def check_arguments(arguments: dict[str, Any], task: type, where: str) -> None:
    """Refuse unknown task arguments by name, before any training starts."""
    accepted = set(inspect.signature(task.__init__).parameters) - {"self"}
    unknown = sorted(set(arguments) - accepted)
    if unknown:
        raise GeodistillError(
            f"{where}: unknown argument(s) {', '.join(unknown)} for {task.__name__}"
        )


def check_config(config: CoarseToFineConfig) -> None:
    """Everything that can be checked without training: methods, task arguments, data."""
    check_methods(config.methods)
    if not {"coarse", "fine"} <= set(config.data):
        raise GeodistillError("data needs both a 'coarse' and a 'fine' domain")
    check_arguments(config.teacher.model, SegmentationTask, "teacher.model")
    check_arguments(config.student.model, CoarseToFineTask, "student.model")
    for stage in (config.teacher, config.student):
        if stage.max_epochs < 1:
            raise GeodistillError(f"max_epochs must be >= 1, got {stage.max_epochs}")
    build_datamodule(config.data, unlabeled_from="coarse", seed=config.seed)
    if "oracle" in config.methods:
        build_datamodule(_oracle_data(config), seed=config.seed)


def _oracle_data(config: CoarseToFineConfig) -> dict[str, Any]:
    if not config.exact_coarse_labels:
        raise GeodistillError("the oracle needs exact_coarse_labels (exact coarse-domain labels)")
    coarse = dict(config.data["coarse"])
    train = coarse["train"]
    train = asdict(train) if isinstance(train, Source) else dict(train)
    coarse["train"] = {**train, "labels": config.exact_coarse_labels}
    return {**config.data, "coarse": coarse}


def _supervised(config: CoarseToFineConfig, datamodule: GeoSegDataModule) -> SegmentationTask:
    return SegmentationTask(
        in_channels=datamodule.num_bands,
        num_classes=datamodule.num_classes,
        class_names=datamodule.classes,
        **config.teacher.model,
    )


def run_method(
    name: str,
    config: CoarseToFineConfig,
    run_dir: Path,
    teacher: str | Path | None = None,
    callbacks: Sequence[L.Callback] = (),
) -> ExperimentResult:
    """Train and test one method of :data:`METHODS` into ``run_dir`` (``callbacks``: extra
    Lightning callbacks, such as a progress line)."""
    check_methods([name])
    method = METHODS[name]
    L.seed_everything(config.seed, verbose=False)
    if method.kind == "distill":
        if teacher is None:
            raise GeodistillError(f"method {name} needs a teacher checkpoint")
        datamodule = build_datamodule(config.data, seed=config.seed)
        distill = {**config.student.model, **method.distill}
        # The supervised settings carry over; the network is the teacher's (init_from_teacher)
        # unless student.model names its own.
        supervised = {
            k: v for k, v in config.teacher.model.items() if k not in ARCHITECTURE_ARGUMENTS
        }
        student = CoarseToFineTask(
            teacher=str(teacher),
            in_channels=datamodule.num_bands,
            num_classes=datamodule.num_classes,
            class_names=datamodule.classes,
            **{**supervised, **distill},
        )
        # Unlabelled coarse-domain crops only feed distillation (none for naive fine-tuning).
        datamodule.unlabeled_from = "coarse" if student.distills else None
        task: SegmentationTask = student
        epochs = config.student.max_epochs
    else:
        data = _oracle_data(config) if method.exact_coarse else config.data
        train_on = "coarse" if method.kind == "teacher" else method.train_on
        datamodule = build_datamodule(data, train_on=train_on, seed=config.seed)
        task = _supervised(config, datamodule)
        epochs = config.student.max_epochs if train_on == "fine" else config.teacher.max_epochs
    return fit_and_test(
        task,
        datamodule,
        run_dir,
        max_epochs=epochs,
        check_val_every_n_epoch=config.check_val_every_n_epoch,
        callbacks=callbacks,
        **config.trainer,
    )


RESULTS_FILE = "results.json"
RUN_RECORD = "run.json"
"""Written into ``<output>/<method>/`` once a method is trained, tested (and exported): its
metrics, checkpoint and the configuration fingerprint; what ``--resume`` trusts."""


def existing_runs(output: Path) -> list[Path]:
    """What an earlier run left in ``output``: ``results.json`` and the method folders."""
    if not output.is_dir():
        return []
    found = [output / RESULTS_FILE] if (output / RESULTS_FILE).exists() else []
    return found + sorted(p for p in output.iterdir() if p.name in METHODS and p.is_dir())


def config_fingerprint(config: CoarseToFineConfig) -> str:
    """Hash of everything that decides a method's result (not the output or the method list),
    so ``--resume`` never mixes runs of two configurations."""
    values = {k: v for k, v in asdict(config).items() if k not in ("output", "methods")}
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_output_folder(
    config: CoarseToFineConfig, overwrite: bool = False, resume: bool = False, option: str = "-o"
) -> Path:
    """Refuse an output folder holding earlier runs unless ``overwrite`` or ``resume``, or one
    that cannot be written (``option`` names where the user set it)."""
    if overwrite and resume:
        raise GeodistillError("--overwrite and --resume exclude each other: choose one")
    return check_output(
        config.output,
        "folder",
        overwrite or resume,
        option,
        replaces=existing_runs,
        exists_hint=", or --resume to finish its runs",
    )


def _load_record(run_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    """The completed run recorded in ``run_dir``, or None when it has to run (again)."""
    try:
        record = json.loads((run_dir / RUN_RECORD).read_text())
        metrics = {k: math.nan if v is None else float(v) for k, v in record["metrics"].items()}
        checkpoint = str(record["checkpoint"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if record.get("fingerprint") != fingerprint:
        raise GeodistillError(
            "was run with another configuration; pass --overwrite to start again", run_dir
        )
    if not Path(checkpoint).is_file():
        return None
    return {"metrics": metrics, "checkpoint": checkpoint, "seconds": record.get("seconds", 0.0)}


def _save_record(
    run_dir: Path,
    metrics: dict[str, float],
    checkpoint: str | Path,
    seconds: float,
    fingerprint: str,
) -> None:
    record = {
        "fingerprint": fingerprint,
        "metrics": _finite(metrics),
        "checkpoint": str(checkpoint),
        "seconds": seconds,
    }
    with atomic_output(run_dir / RUN_RECORD) as temporary:
        temporary.write_text(json.dumps(record, indent=2) + "\n")


def _clear(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def run_coarse_to_fine(
    config: CoarseToFineConfig,
    overwrite: bool = False,
    resume: bool = False,
    option: str = "-o",
    progress: RunProgress | None = None,
) -> dict[str, dict[str, float]]:
    """Stage 1 (unless ``teacher_checkpoint``), then every method; returns test metrics by name.

    Writes ``<output>/<method>/`` runs, ``<output>/results.json`` and the teacher-free student of
    each distillation method as ``<output>/<method>/student.ckpt``. An output folder holding
    earlier runs is refused unless ``overwrite`` (they are removed first) or ``resume`` (methods
    recorded as complete by the same configuration are kept, the others run again).
    ``progress`` announces each run (``run 2/5: joint (seed 0)``, the time left) and shows its
    progress line; without it the runs are silent apart from Lightning's own output.
    """
    from geodistill.export import export_student

    output = check_output_folder(config, overwrite, resume, option)
    check_config(config)
    fingerprint = config_fingerprint(config)
    first = ["coarse_only"] if config.teacher_checkpoint is None else []
    needed = list(dict.fromkeys([*first, *config.methods]))  # the run folders this run writes
    done: dict[str, dict[str, Any]] = {}
    if resume:
        for name in needed:
            record = _load_record(output / name, fingerprint)
            if record is not None:
                done[name] = record
    progress = progress or RunProgress(enabled=False)
    order = ["coarse_only"] if first or "coarse_only" in config.methods else []
    order += [name for name in config.methods if name != "coarse_only"]
    progress.plan([_planned(name, config, name in done) for name in order])
    if progress.enabled:  # its one line per run replaces Lightning's bars (after the fingerprint)
        config = replace(config, trainer={**config.trainer, "enable_progress_bar": False})
    stale = existing_runs(output) if overwrite else []
    stale += [output / n for n in needed if resume and n not in done and (output / n).exists()]
    for path in stale:  # old runs would otherwise sit beside the new ones (best-v1.ckpt)
        _clear(path)

    results: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    teacher = config.teacher_checkpoint
    if teacher is None or "coarse_only" in config.methods:
        start = time.perf_counter()
        if "coarse_only" in done:
            results["coarse_only"] = done["coarse_only"]["metrics"]
            teacher = teacher or done["coarse_only"]["checkpoint"]
            seconds["coarse_only"] = done["coarse_only"]["seconds"]
            progress.skip("coarse_only", "complete in an earlier run, kept (--resume)")
        else:
            title = f"coarse_only (seed {config.seed})"
            if teacher is None:
                callbacks = progress.start("coarse_only", title, _about("coarse_only"))
                result = run_method("coarse_only", config, output / "coarse_only", None, callbacks)
                teacher = str(result.checkpoint)
                results["coarse_only"] = result.metrics
            else:
                callbacks = progress.start(
                    "coarse_only", title, f"testing the given teacher {teacher}"
                )
                results["coarse_only"] = _test_checkpoint(
                    config, teacher, output / "coarse_only", callbacks
                )
            seconds["coarse_only"] = time.perf_counter() - start
            progress.finish(seconds["coarse_only"])
            _save_record(
                output / "coarse_only",
                results["coarse_only"],
                teacher,
                seconds["coarse_only"],
                fingerprint,
            )
    for name in config.methods:
        if name == "coarse_only":
            continue
        if name in done:
            results[name] = done[name]["metrics"]
            seconds[name] = done[name]["seconds"]
            progress.skip(name, "complete in an earlier run, kept (--resume)")
            continue
        start = time.perf_counter()
        callbacks = progress.start(name, f"{name} (seed {config.seed})", _about(name))
        result = run_method(name, config, output / name, teacher, callbacks)
        results[name] = result.metrics
        if METHODS[name].kind == "distill":
            export_student(result.checkpoint, output / name / "student.ckpt", overwrite=True)
        seconds[name] = time.perf_counter() - start
        progress.finish(seconds[name])
        _save_record(output / name, result.metrics, result.checkpoint, seconds[name], fingerprint)
    ordered = {n: results[n] for n in BASELINE_ORDER if n in results}
    report = {"seed": config.seed, "teacher": teacher, "seconds": seconds, "results": ordered}
    with atomic_output(output / RESULTS_FILE) as temporary:
        temporary.write_text(json.dumps(_finite(report), indent=2) + "\n")
    return ordered


def _finite(value: Any) -> Any:
    """NaN/inf (a class absent from the test data) as null, so the JSON stays strict."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _planned(name: str, config: CoarseToFineConfig, complete: bool) -> PlannedRun:
    """What run ``name`` trains on and for how many epochs, for the time-left estimate."""
    method = METHODS[name]
    if complete or (method.kind == "teacher" and config.teacher_checkpoint is not None):
        return PlannedRun(name)  # nothing to train: kept, or only the given teacher tested
    if method.kind == "teacher":
        return PlannedRun(name, "coarse", config.teacher.max_epochs)
    if method.kind == "distill":
        return PlannedRun(name, "fine", config.student.max_epochs)
    fine = method.train_on == "fine"
    epochs = config.student.max_epochs if fine else config.teacher.max_epochs
    return PlannedRun(name, method.train_on, epochs)


def _about(name: str) -> str:
    """What a run trains on and why, for its announcement."""
    method = METHODS[name]
    if method.kind == "teacher":
        return "stage 1: the teacher, trained on the coarse labels alone"
    if method.kind == "distill":
        return f"{method.description} (stage 2: the fine labels + the teacher)"
    return method.description


def _test_checkpoint(
    config: CoarseToFineConfig,
    checkpoint: str,
    run_dir: Path,
    callbacks: Sequence[L.Callback] = (),
) -> dict[str, float]:
    datamodule = build_datamodule(config.data, train_on="coarse", seed=config.seed)
    check_checkpoint(checkpoint)  # refuses a code-carrying pickle before Lightning reads it
    task = SegmentationTask.load_from_checkpoint(checkpoint, map_location="cpu")
    trainer = L.Trainer(
        default_root_dir=run_dir,
        logger=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
        **config.trainer,
    )
    trainer.test(task, datamodule=datamodule, verbose=False)
    return dict(task.test_results)


def write_results_table(
    results: dict[str, dict[str, float]] | list[dict[str, dict[str, float]]],
    class_names: list[str],
) -> str:
    """Markdown table of mean ± std (%) per method over several seeds' results (the plain value
    for one run: a spread of one value says nothing), with the share of the fine-only → oracle
    mIoU gap each method recovers.

    Undefined values (NaN, e.g. boundary F1 where no boundary was labelled) are left out of the
    means, with ``(k/n runs)`` when only k of the n runs define one; none defined shows ``–``.
    ``boundary_F1_sparse`` gets a column only where it differs from ``boundary_F1``, i.e. where the
    labels leave unlabelled gaps between classes (with dense labels the two are equal).
    """
    import numpy as np

    from geodistill.metrics import UNDEFINED, mean_defined

    runs = results if isinstance(results, list) else [results]
    names = [n for n in BASELINE_ORDER if all(n in r for r in runs)]

    def differs(metrics: dict[str, float]) -> bool:
        sparse = float(metrics.get("boundary_F1_sparse", math.nan))
        dense = float(metrics.get("boundary_F1", math.nan))
        return math.isfinite(sparse) and not (math.isfinite(dense) and abs(sparse - dense) < 1e-9)

    show_sparse = any(differs(r[name]) for r in runs for name in names)
    keys = ["mIoU", "boundary_F1", *(["boundary_F1_sparse"] if show_sparse else []), "OA"]
    keys += [f"IoU/{c}" for c in class_names]
    header = ["method", *keys, "gap recovered"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def cell(name: str, key: str) -> str:
        values = [100 * v for r in runs if math.isfinite(v := float(r[name].get(key, math.nan)))]
        if not values:
            return UNDEFINED
        text = f"{np.mean(values):.2f}"
        if len(runs) > 1:
            text += f" ± {np.std(values):.2f}" if len(values) > 1 else ""
            text += f" ({len(values)}/{len(runs)} runs)" if len(values) < len(runs) else ""
        return text

    for name in names:
        cells = [name, *(cell(name, key) for key in keys)]
        if "fine_only" in names and "oracle" in names:
            gaps = []
            for r in runs:
                gap = r["oracle"]["mIoU"] - r["fine_only"]["mIoU"]
                gaps.append((r[name]["mIoU"] - r["fine_only"]["mIoU"]) / gap if gap else np.nan)
            recovered = mean_defined(gaps)
            cells.append(f"{100 * recovered:.0f} %" if math.isfinite(recovered) else UNDEFINED)
        else:
            cells.append(UNDEFINED)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def load_config(path: str | Path) -> CoarseToFineConfig:
    """Read and type-check a ``geodistill coarse-to-fine`` YAML file."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(CoarseToFineConfig, None)
    try:
        parsed = parser.parse_path(str(path))
    except Exception as error:  # noqa: BLE001
        raise GeodistillError(f"bad config: {error}", path) from error
    config = parser.instantiate(parsed)
    if isinstance(config, CoarseToFineConfig):
        return config
    return CoarseToFineConfig(**vars(config))


__all__ = [
    "METHODS",
    "CoarseToFineConfig",
    "Method",
    "Stage",
    "build_datamodule",
    "run_coarse_to_fine",
    "run_method",
    "write_results_table",
]
