"""The runs of an experiment: one merged ``geodistill fit`` config each, trained and tested.

A run's config is ``base ⊕ overrides ⊕ stage/variant ⊕ budget ⊕ seed`` (:func:`plan_runs`), then
pointed at the run's folder: logs, checkpoints (``checkpoints/best.ckpt``, the best by the base
config's monitor, plus ``last.ckpt``), split manifest and predictions all go to
``OUT/<variant>/<budget>/seed<k>/`` (stages: ``OUT/stages/<stage>/seed<k>/``). The run is the
LightningCLI's ``fit`` on that config, then its ``test`` on the best checkpoint (so exactly what
``geodistill fit`` and ``geodistill test`` do), finished by ``run.json``, written atomically: a
run without it did not finish.

The fingerprint of a run hashes what decides its checkpoint: its merged config before the folder
paths go in and the fingerprints of the stages it uses, so ``--resume`` recognises a finished run
wherever the output folder is, and refuses one trained from another config. Each extra test set
has its own fingerprint (its overrides), recorded per set in ``run.json``: a finished run whose
test sets changed is re-tested from its recorded checkpoint (:func:`retest_run`), not retrained.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from geodistill.atomic import atomic_output
from geodistill.errors import GeodistillError
from geodistill.experiments.file import (
    STAGES_FOLDER,
    Experiment,
    deep_merge,
    substitute,
    substitute_seed,
)
from geodistill.experiments.summary import machine

RUN_RECORD = "run.json"
RUN_CONFIG = "config.yaml"
BEST_CHECKPOINT = "best"
"""The best checkpoint's file name (without ``.ckpt``) in ``<run>/checkpoints``."""
TEST_FOLDER = "test"
"""Where the test command writes ``test_metrics.json``/``.md`` inside a run folder."""
FINGERPRINT_VERSION = 1
"""Bumped when the way a run is set up changes, so ``--resume`` never keeps an older kind."""

DEFAULT_LOGGERS = (
    "lightning.pytorch.loggers.CSVLogger",
    "lightning.pytorch.loggers.TensorBoardLogger",
)
"""``geodistill fit``'s default loggers (``logs``, ``tensorboard``), for a config without any."""


@dataclass
class RunSpec:
    """One run to do: where, from which merged config, after which stage runs."""

    kind: Literal["stage", "variant"]
    name: str
    budget: str | None
    """``None`` for a stage shared by every budget."""
    seed: int
    folder: Path
    config: dict[str, Any]
    """The merged, seeded config, before folder paths and stage checkpoints go in."""
    needs: list[RunSpec] = field(default_factory=list)
    """The stage runs whose checkpoints this run uses."""
    fingerprint: str = ""
    """What decides the checkpoint (:func:`fingerprint`): the extra test sets are not in it."""
    tests: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Extra test sets (name: overrides) its best checkpoint is also tested on."""

    @property
    def test_fingerprints(self) -> dict[str, str]:
        """Each extra test set's fingerprint (:func:`fingerprint_of_test_set`), by name."""
        return {name: fingerprint_of_test_set(overrides) for name, overrides in self.tests.items()}

    @property
    def key(self) -> str:
        """The run folder relative to the output folder, e.g. ``distilled/limit2/seed1``."""
        parts = [STAGES_FOLDER] if self.kind == "stage" else []
        parts += [self.name] + ([self.budget] if self.budget is not None else [])
        return "/".join([*parts, f"seed{self.seed}"])

    @property
    def where(self) -> str:
        """The experiment-file key that defines this run, for messages."""
        section = "stages" if self.kind == "stage" else "variants"
        budget = f" (budget {self.budget})" if self.budget not in (None, "base") else ""
        return f"{section}.{self.name}{budget}"

    @property
    def checkpoint(self) -> Path:
        return self.folder / "checkpoints" / f"{BEST_CHECKPOINT}.ckpt"

    def resolved_config(self) -> dict[str, Any]:
        """The config the LightningCLI gets: stage checkpoints in, every output in the folder."""
        checkpoints = {run.name: str(run.checkpoint) for run in self.needs}
        return with_run_paths(substitute(self.config, checkpoints), self.folder)

    def record_fields(self) -> dict[str, Any]:
        fields = {
            "kind": self.kind,
            "name": self.name,
            "budget": self.budget,
            "seed": self.seed,
            "folder": str(self.folder),
            "fingerprint": self.fingerprint,
            "test_fingerprints": self.test_fingerprints,
        }
        if self.tests:
            fields["tests"] = self.tests
        return fields

    def retest_fields(self, names: Sequence[str]) -> dict[str, Any]:
        """What :func:`retest_run` needs to score the test sets ``names`` (their overrides and
        fingerprints) on the recorded checkpoint."""
        return {
            "tests": {name: self.tests[name] for name in names},
            "test_fingerprints": {name: self.test_fingerprints[name] for name in names},
        }

    def test_configs(self) -> dict[str, dict[str, Any]]:
        """The config of each extra test set: the run's config with the set's overrides."""
        resolved = self.resolved_config()
        return {name: deep_merge(resolved, overrides) for name, overrides in self.tests.items()}


def _hash(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _run_fingerprint(
    config: dict[str, Any], stages: dict[str, str], tests: dict[str, Any] | None = None
) -> str:
    payload: dict[str, Any] = {"version": FINGERPRINT_VERSION, "config": config, "stages": stages}
    if tests:  # only in records written before test sets had their own fingerprints
        payload["tests"] = tests
    return _hash(payload)


def fingerprint(config: dict[str, Any], needs: list[RunSpec]) -> str:
    """Hash of what decides a run's checkpoint: its merged config and the stages it uses (the
    same hash as a record written before test sets existed)."""
    return _run_fingerprint(config, {run.name: run.fingerprint for run in needs})


def fingerprint_of_test_set(overrides: dict[str, Any]) -> str:
    """Hash of an extra test set's (seeded) overrides: what decides its scores, given the run."""
    return _hash({"version": FINGERPRINT_VERSION, "test": overrides})


def _earlier_fingerprint(run: RunSpec, names: Sequence[str]) -> str:
    """The fingerprint earlier versions recorded: config, stages and the test sets ``names``
    together (so a record of theirs is recognised)."""
    tests = {name: run.tests[name] for name in names}
    stages = {need.name: _earlier_fingerprint(need, names) for need in run.needs}
    return _run_fingerprint(run.config, stages, tests)


def seeded(config: dict[str, Any], seed: int) -> dict[str, Any]:
    """``config`` with ``seed`` as Lightning's global seed and the data's split/draw seed, and in
    place of every ``${seed}`` (a per-seed data path, say)."""
    config = substitute_seed(copy.deepcopy(config), seed)
    config["seed_everything"] = seed
    data = config.setdefault("data", {})
    if not isinstance(data.get("init_args"), dict):
        data["init_args"] = {}
    data["init_args"]["seed"] = seed
    return config


def seeded_tests(tests: dict[str, dict[str, Any]], seed: int) -> dict[str, dict[str, Any]]:
    """The extra test sets' overrides with ``${seed}`` replaced."""
    return {name: substitute_seed(overrides, seed) for name, overrides in tests.items()}


def plan_runs(experiment: Experiment, output: Path) -> list[RunSpec]:
    """Every run of ``experiment``: stage runs first (per seed, in declaration order), then the
    variants (variant, budget, seed)."""
    common = deep_merge(experiment.base, experiment.overrides)
    stage_runs: dict[tuple[str, str | None, int], RunSpec] = {}
    runs: list[RunSpec] = []

    def stage_for(name: str, budget: str, seed: int) -> RunSpec:
        shared = not experiment.stages[name].per_budget
        return stage_runs[name, None if shared else budget, seed]

    for seed in experiment.seeds:
        for stage in experiment.stages.values():
            for budget in experiment.budgets if stage.per_budget else [None]:
                config = deep_merge(common, stage.overrides)
                if budget is not None:
                    config = deep_merge(config, budget.overrides)
                folder = output / STAGES_FOLDER / stage.name
                folder = (folder / budget.name if budget else folder) / f"seed{seed}"
                needs = [stage_for(n, budget.name if budget else "", seed) for n in stage.needs]
                run = RunSpec(
                    "stage",
                    stage.name,
                    budget.name if budget else None,
                    seed,
                    folder,
                    seeded(config, seed),
                    needs,
                )
                run.tests = seeded_tests(experiment.tests, seed)
                run.fingerprint = fingerprint(run.config, needs)
                stage_runs[stage.name, run.budget, seed] = run
                runs.append(run)
    for name, overrides in experiment.variants.items():
        for budget in experiment.budgets:
            for seed in experiment.seeds:
                config = deep_merge(deep_merge(common, overrides), budget.overrides)
                needs = [stage_for(n, budget.name, seed) for n in experiment.needs.get(name, ())]
                folder = output / name / budget.name / f"seed{seed}"
                run = RunSpec(
                    "variant", name, budget.name, seed, folder, seeded(config, seed), needs
                )
                run.tests = seeded_tests(experiment.tests, seed)
                run.fingerprint = fingerprint(run.config, needs)
                runs.append(run)
    return runs


# --------------------------------------------------------------------------------------------
# a run's own folder


def _point_loggers(logger: Any, folder: Path) -> Any:
    """Loggers that write into ``folder`` (``save_dir``), whatever the base config said."""
    if logger is None or logger is True:
        return [
            {"class_path": path, "init_args": {"save_dir": str(folder), "name": name}}
            for path, name in zip(DEFAULT_LOGGERS, ("logs", "tensorboard"), strict=True)
        ]
    if isinstance(logger, list):
        return [_point_loggers(item, folder) for item in logger]
    if isinstance(logger, dict):
        logger = copy.deepcopy(logger)
        init_args = logger.setdefault("init_args", {})
        if isinstance(init_args, dict):
            init_args["save_dir"] = str(folder)
    return logger


def with_run_paths(config: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``config`` with every output inside ``folder``: trainer root and loggers, the checkpoint
    folder (best as ``best.ckpt``, one best kept), predictions and the split manifest."""
    config = copy.deepcopy(config)
    trainer = config.get("trainer")
    trainer = trainer if isinstance(trainer, dict) else {}
    trainer["default_root_dir"] = str(folder)
    if trainer.get("logger", None) is not False:
        trainer["logger"] = _point_loggers(trainer.get("logger"), folder)
    config["trainer"] = trainer
    checkpoint = config.get("checkpoint")
    config["checkpoint"] = {
        **(checkpoint if isinstance(checkpoint, dict) else {}),
        "dirpath": str(folder / "checkpoints"),
        "filename": BEST_CHECKPOINT,
        "save_top_k": 1,
    }
    writer = config.get("prediction_writer")
    config["prediction_writer"] = {
        **(writer if isinstance(writer, dict) else {}),
        "output_dir": str(folder / "predictions"),
    }
    config["data"]["init_args"]["manifest"] = str(folder / "splits.json")
    return config


def check_run_config(
    config: dict[str, Any], where: str, path: Path, pending: Sequence[str] = ()
) -> None:
    """Parse ``config`` as ``geodistill fit`` would, without building anything, so a bad key in
    any variant is refused (naming the experiment file and variant) before the first run."""
    from geodistill.cli.lightning_cli import (  # the fit command's own parser
        IN_PROCESS_ARGS_WARNING,
        GeodistillCLI,
    )
    from geodistill.data import GeoSegDataModule
    from geodistill.tasks import SegmentationTask

    class ParseOnly(GeodistillCLI):
        def instantiate_classes(self) -> None:
            pass

    # A deep copy: the parser turns the mappings it reads into namespaces in place.
    checked = copy.deepcopy({k: v for k, v in config.items() if k != "seed_everything"})
    warnings.filterwarnings("ignore", message=IN_PROCESS_ARGS_WARNING)
    try:
        ParseOnly(
            SegmentationTask,
            GeoSegDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=checked,
            run=False,
            seed_everything_default=False,
            parser_kwargs={"exit_on_error": False},
            save_config_callback=None,
            auto_configure_optimizers=False,
        )
    except GeodistillError as error:
        message = str(error)
        if error.path and message.startswith(f"{error.path}: "):
            message = message[len(error.path) + 2 :]
        raise GeodistillError(f"{where}: {message}", path) from error
    check_method(config, where, pending)


def check_method(config: dict[str, Any], where: str, pending: Sequence[str] = ()) -> None:
    """Build the run's distillation method from its settings (they are validated, no teacher is
    built) and check its teacher files weights-only, so a bad setting, a missing or a tampered
    teacher is refused before the first run of the experiment trains anything. ``pending``: the
    checkpoints stage runs will write (not there yet)."""
    from geodistill.methods import build_distillation

    init_args = (config.get("model") or {}).get("init_args") or {}
    value = init_args.get("distillation") if isinstance(init_args, dict) else None
    if not isinstance(value, dict):
        return
    try:
        method = build_distillation(value)
        if method is not None:
            method.check_teacher_files()
            if method.needs_teachers:
                missing = [
                    spec.path
                    for spec in method.teacher_specs()
                    if spec.path is not None
                    and spec.path not in pending
                    and not Path(spec.path).is_file()
                ]
                if missing:
                    raise GeodistillError("no such teacher file", missing[0])
    except GeodistillError as error:
        raise GeodistillError(f"{where}: {error}") from error


def write_run_config(run: RunSpec) -> Path:
    """Write the run's resolved config to ``<run>/config.yaml`` (rerun it with ``geodistill fit
    --config``); the folder is created."""
    run.folder.mkdir(parents=True, exist_ok=True)
    path = run.folder / RUN_CONFIG
    with atomic_output(path) as temporary:
        temporary.write_text(yaml.safe_dump(run.resolved_config(), sort_keys=False))
    return path


def run_environment() -> dict[str, Any]:
    """What a run's numbers depend on beyond its config: the machine line (CPU, cores and GPU),
    library versions and threads (float sums differ with the kernels and the thread count, so a
    rerun elsewhere may pick another checkpoint)."""
    import lightning
    import torch

    return {
        "machine": machine(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "threads": torch.get_num_threads(),
    }


def execute_run(
    folder: Path, fields: dict[str, Any], callbacks: Sequence[Any] = ()
) -> dict[str, Any]:
    """``fit`` then ``test`` (best checkpoint) of ``<folder>/config.yaml`` through the
    LightningCLI, then ``run.json`` (``fields`` + test metrics, checkpoint, seconds and
    :func:`run_environment`).
    ``callbacks``: Lightning callbacks added to both (a progress line)."""
    from geodistill.cli.lightning_cli import run_lightning_cli  # what `geodistill fit` runs

    start = time.perf_counter()
    config = str(folder / RUN_CONFIG)
    run_lightning_cli(["fit", "--config", config], callbacks)
    best = folder / "checkpoints" / f"{BEST_CHECKPOINT}.ckpt"
    if not best.is_file():
        raise GeodistillError(
            "fit kept no best checkpoint (was the monitored validation score NaN throughout?)",
            folder,
        )
    scored = _test(config, best, folder / TEST_FOLDER, callbacks)
    metrics = {f"test/{k}": v for k, v in scored.items()}
    metrics.update(_score_test_sets(folder, best, fields.get("tests") or {}, callbacks))
    record = {
        **{k: v for k, v in fields.items() if k != "tests"},
        "metrics": metrics,
        "checkpoint": str(best),
        "last_checkpoint": str(folder / "checkpoints" / "last.ckpt"),
        "config": config,
        "seconds": round(time.perf_counter() - start, 2),
        "environment": run_environment(),
    }
    write_record(folder, record)
    return record


def retest_run(
    folder: Path, fields: dict[str, Any], callbacks: Sequence[Any] = ()
) -> dict[str, Any]:
    """Score the recorded checkpoint of the finished run in ``folder`` on the extra test sets of
    ``fields`` (:meth:`RunSpec.retest_fields`) and update its ``run.json``: their metrics and
    fingerprints replace any earlier ones, the rest of the record (training time included) is
    kept. Nothing is trained."""
    record = json.loads((folder / RUN_RECORD).read_text())
    tests: dict[str, dict[str, Any]] = fields.get("tests") or {}
    scored = _score_test_sets(folder, Path(str(record["checkpoint"])), tests, callbacks)
    metrics = {k: v for k, v in record["metrics"].items() if _test_set_of(k) not in tests}
    record["metrics"] = {**metrics, **scored}
    record["test_fingerprints"] = {
        **(record.get("test_fingerprints") or {}),
        **fields["test_fingerprints"],
    }
    write_record(folder, record)
    return record


def write_record(folder: Path, record: dict[str, Any]) -> Path:
    """Write ``<folder>/run.json`` atomically: the run finished."""
    path = folder / RUN_RECORD
    with atomic_output(path) as temporary:
        temporary.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
    return path


def _test_set_of(metric: str) -> str:
    """The test set a recorded metric belongs to: ``test`` or an extra set's name."""
    return metric.split("/", 1)[0]


def _score_test_sets(
    folder: Path, checkpoint: Path, tests: dict[str, dict[str, Any]], callbacks: Sequence[Any]
) -> dict[str, Any]:
    """``checkpoint`` tested on each extra test set: the run's config with the set's overrides
    (``config.<name>.yaml``), into ``test_<name>/``; the metrics as ``<name>/<metric>``."""
    metrics: dict[str, Any] = {}
    for name, overrides in tests.items():
        test_config = folder / f"config.{name}.yaml"
        with atomic_output(test_config) as temporary:
            merged = deep_merge(yaml.safe_load((folder / RUN_CONFIG).read_text()), overrides)
            temporary.write_text(yaml.safe_dump(merged, sort_keys=False))
        scored = _test(str(test_config), checkpoint, folder / f"test_{name}", callbacks)
        metrics.update({f"{name}/{k}": v for k, v in scored.items()})
    return metrics


def _test(config: str, checkpoint: Path, root: Path, callbacks: Sequence[Any]) -> dict[str, float]:
    """``geodistill test`` of ``checkpoint`` under ``config`` into ``root``; its metrics."""
    from geodistill.cli.lightning_cli import run_lightning_cli  # what `geodistill test` runs

    run_lightning_cli(
        [
            "test",
            "--config",
            config,
            "--ckpt_path",
            str(checkpoint),
            "--verbose",
            "false",
            "--trainer.logger",
            "false",
            "--trainer.default_root_dir",
            str(root),
        ],
        callbacks,
    )
    return json.loads((root / "test_metrics.json").read_text())


@dataclass
class Finished:
    """A finished run ``--resume`` keeps."""

    record: dict[str, Any]
    """Its record as it is now: the current fingerprints, no metrics of test sets that are gone
    or changed."""
    retest: list[str]
    """Its extra test sets not yet scored with their current overrides (new or changed)."""
    changed: bool
    """``record`` differs from ``run.json`` (a test set is gone or changed, or an earlier
    version wrote it): write it before anything runs."""


def _scored_test_sets(
    run: RunSpec, record: dict[str, Any], recorded_sets: set[str]
) -> list[str] | None:
    """The run's extra test sets the record scored with their current overrides, or ``None``
    when the record is of another training config (or stages). ``recorded_sets``: the extra test
    sets its metrics hold."""
    recorded = record.get("test_fingerprints")
    if record.get("fingerprint") == run.fingerprint:
        current = run.test_fingerprints
        recorded = recorded if isinstance(recorded, dict) else {}
        return [name for name in run.tests if recorded.get(name) == current[name]]
    if recorded is not None:
        return None
    # Written before test sets had their own fingerprints: one hash of config, stages and the
    # test sets then scored (named by its metrics), recognised while those are unchanged.
    names = sorted(recorded_sets)
    if recorded_sets <= set(run.tests) and record.get("fingerprint") == _earlier_fingerprint(
        run, names
    ):
        return names
    return None


def read_record(run: RunSpec) -> Finished | None:
    """The finished run recorded in ``run.json`` (its checkpoint still there), or ``None`` when
    it has to run (again). A record of another training config is refused (``--overwrite``
    starts again); changed extra test sets only make it :attr:`Finished.retest` them."""
    try:
        record = json.loads((run.folder / RUN_RECORD).read_text())
        metrics = record["metrics"]
        checkpoint = Path(str(record["checkpoint"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    names = {_test_set_of(key) for key in metrics} if isinstance(metrics, dict) else set()
    scored = _scored_test_sets(run, record, names - {"test"})
    if scored is None:
        hint = ""
        if "test_fingerprints" not in record and (run.tests or names - {"test"}):
            hint = (
                " (or, if only `tests:` changed, --resume once with the test sets it was run with:"
                " records written by earlier versions do not tell them apart)"
            )
        raise GeodistillError(
            f"was run with another configuration of {run.where}; pass --overwrite to start again"
            + hint,
            run.folder,
        )
    if not isinstance(metrics, dict) or not checkpoint.is_file():
        return None
    kept = {
        **record,
        "fingerprint": run.fingerprint,
        "metrics": {k: v for k, v in metrics.items() if _test_set_of(k) in ("test", *scored)},
    }
    if "test_fingerprints" in record or record.get("fingerprint") != run.fingerprint:
        current = run.test_fingerprints
        kept["test_fingerprints"] = {name: current[name] for name in scored}
    retest = [name for name in run.tests if name not in scored]
    return Finished(kept, retest, kept != record)
