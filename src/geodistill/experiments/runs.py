"""The runs of an experiment: one merged ``geodistill fit`` config each, trained and tested.

A run's config is ``base ⊕ overrides ⊕ stage/variant ⊕ budget ⊕ seed`` (:func:`plan_runs`), then
pointed at the run's folder: logs, checkpoints (``checkpoints/best.ckpt``, the best by the base
config's monitor, plus ``last.ckpt``), split manifest and predictions all go to
``OUT/<variant>/<budget>/seed<k>/`` (stages: ``OUT/stages/<stage>/seed<k>/``). The run is the
LightningCLI's ``fit`` on that config, then its ``test`` on the best checkpoint (so exactly what
``geodistill fit`` and ``geodistill test`` do), finished by ``run.json``, written atomically: a
run without it did not finish.

The fingerprint of a run hashes its merged config before the folder paths go in (and the
fingerprints of the stages it uses), so ``--resume`` recognises a finished run wherever the
output folder is, and refuses one made from another config.
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
    tests: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Extra test sets (name: overrides) its best checkpoint is also tested on."""

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
        }
        if self.tests:
            fields["tests"] = self.tests
        return fields

    def test_configs(self) -> dict[str, dict[str, Any]]:
        """The config of each extra test set: the run's config with the set's overrides."""
        resolved = self.resolved_config()
        return {name: deep_merge(resolved, overrides) for name, overrides in self.tests.items()}


def fingerprint(
    config: dict[str, Any], needs: list[RunSpec], tests: dict[str, Any] | None = None
) -> str:
    """Hash of what decides a run's result: its merged config, the stages it uses and the extra
    test sets it is scored on."""
    payload: dict[str, Any] = {
        "version": FINGERPRINT_VERSION,
        "config": config,
        "stages": {run.name: run.fingerprint for run in needs},
    }
    if tests:  # absent otherwise: records written before test sets existed stay valid
        payload["tests"] = tests
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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
                run.fingerprint = fingerprint(run.config, needs, run.tests)
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
                run.fingerprint = fingerprint(run.config, needs, run.tests)
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


def execute_run(
    folder: Path, fields: dict[str, Any], callbacks: Sequence[Any] = ()
) -> dict[str, Any]:
    """``fit`` then ``test`` (best checkpoint) of ``<folder>/config.yaml`` through the
    LightningCLI, then ``run.json`` (``fields`` + test metrics, checkpoint, seconds).
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
    for name, overrides in (fields.get("tests") or {}).items():
        # The same checkpoint on another test set: the run's config with the set's overrides.
        test_config = folder / f"config.{name}.yaml"
        with atomic_output(test_config) as temporary:
            merged = deep_merge(yaml.safe_load((folder / RUN_CONFIG).read_text()), overrides)
            temporary.write_text(yaml.safe_dump(merged, sort_keys=False))
        scored = _test(str(test_config), best, folder / f"test_{name}", callbacks)
        metrics.update({f"{name}/{k}": v for k, v in scored.items()})
    record = {
        **{k: v for k, v in fields.items() if k != "tests"},
        "metrics": metrics,
        "checkpoint": str(best),
        "last_checkpoint": str(folder / "checkpoints" / "last.ckpt"),
        "config": config,
        "seconds": round(time.perf_counter() - start, 2),
    }
    with atomic_output(folder / RUN_RECORD) as temporary:
        temporary.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
    return record


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


def read_record(run: RunSpec) -> dict[str, Any] | None:
    """The finished run recorded in ``run.json`` (its checkpoint still there), or ``None`` when
    it has to run (again). A record of another config is refused: ``--overwrite`` starts again."""
    try:
        record = json.loads((run.folder / RUN_RECORD).read_text())
        metrics = record["metrics"]
        checkpoint = Path(str(record["checkpoint"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if record.get("fingerprint") != run.fingerprint:
        raise GeodistillError(
            f"was run with another configuration of {run.where}; pass --overwrite to start again",
            run.folder,
        )
    if not isinstance(metrics, dict) or not checkpoint.is_file():
        return None
    return record
