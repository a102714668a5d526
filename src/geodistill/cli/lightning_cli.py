"""``geodistill fit|validate|test|predict``: LightningCLI with geodistill's defaults and links.

Bad input is refused before Lightning writes anything (logs, config.yaml, checkpoints): config
errors are condensed from jsonargparse's nested report to one line naming the config file (or
command-line option), the key and the closest valid key; ``--ckpt_path`` is read and checked
first; the data's labels are checked whole; and ``fit`` refuses a checkpoint folder holding an
earlier run's checkpoints unless ``--overwrite`` (or ``--ckpt_path`` to resume) is given.
"""

from __future__ import annotations

import re
import warnings
from argparse import ArgumentError
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from geodistill.cli.config_errors import (
    command_line_option,
    condense,
    config_files,
    config_source,
    is_inline,
    load_config_file,
    merge_configs,
    normal_keys,
    short_types,
    unknown_nested_key,
)
from geodistill.data import GeoSegDataModule
from geodistill.errors import GeodistillError, user_error
from geodistill.inference import GeoTiffPredictionWriter
from geodistill.models.checkpoint import read_checkpoint
from geodistill.progress import hide_lightning_tips
from geodistill.tasks import SegmentationTask
from geodistill.tasks.segmentation import BestCheckpoint, check_band_names

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")

DESCRIPTIONS = {
    "fit": (
        "Train a segmentation model from a YAML config (data, model, trainer), keeping the best "
        "checkpoint by validation mIoU and the last one. A checkpoint folder that already holds "
        "checkpoints is refused: --overwrite replaces them, --ckpt_path resumes."
    ),
    "validate": "Evaluate a checkpoint (--ckpt_path) on the validation split.",
    "test": (
        "Evaluate a checkpoint (--ckpt_path) on the test split and write test_metrics.json and "
        "test_metrics.md to the log folder."
    ),
    "predict": (
        "Predict the image chips of data.predict with a checkpoint (--ckpt_path) to "
        "georeferenced GeoTIFF class maps."
    ),
}
"""Subcommand help: Lightning's defaults are generic and cut mid-sentence."""


SPECIAL_CKPT_PATHS = ("best", "last", "hpc", "registry")
"""``ckpt_path`` values Lightning resolves itself rather than reading a file."""

OVERWRITE_FLAG = "--overwrite"


class GeodistillCLI(LightningCLI):
    """Links the model's input bands and classes to the data, so a config states them once.

    Always adds a best-checkpoint callback (``checkpoint``: by validation mIoU, plus the last;
    never chosen on a NaN score) and the GeoTIFF prediction writer (``prediction_writer``), both
    configurable. Bad input is refused, in one line, before anything is written.
    """

    def __init__(self, *args: Any, overwrite: bool = False, **kwargs: Any) -> None:
        self.overwrite = overwrite
        self.configs: dict[str, dict[str, Any]] = {}
        self.checkpoint_meta: dict[str, Any] = {}
        self.old_checkpoints: list[Path] = []
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments(
            "data.num_bands", "model.init_args.in_channels", apply_on="instantiate"
        )
        parser.link_arguments(
            "data.num_classes", "model.init_args.num_classes", apply_on="instantiate"
        )
        parser.link_arguments("data.classes", "model.init_args.class_names", apply_on="instantiate")
        parser.link_arguments(
            "data.band_names", "model.init_args.band_names", apply_on="instantiate"
        )
        parser.add_lightning_class_args(GeoTiffPredictionWriter, "prediction_writer")
        parser.add_lightning_class_args(BestCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/mIoU",
                "checkpoint.mode": "max",
                "checkpoint.filename": "best-{epoch}-{step}",
                "checkpoint.save_last": True,
            }
        )

    # -- parsing --------------------------------------------------------------------------

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, condensing config errors to one line; then check ``ckpt_path`` and, for fit,
        the checkpoint folder, before Lightning reads or writes anything."""
        argv = [str(a) for a in args] if isinstance(args, list | tuple) else []
        for path in config_files(argv):
            if not is_inline(path):
                self.configs[path] = load_config_file(path)
        bases = {"model": self._model_class, "data": self._datamodule_class}
        for path, loaded in self.configs.items():
            if found := unknown_nested_key(loaded, bases):
                keys, problem = found
                raise GeodistillError(f"{'.'.join(keys)}: {problem}", path)
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as error:
            raise self.config_error(str(error), argv) from error
        subcommand = self.config.get("subcommand")
        if subcommand:
            settings = self.config[subcommand]
            self.check_ckpt_path(settings.get("ckpt_path"))
            writer = settings.get("prediction_writer")
            if self.overwrite and writer is not None and "overwrite" in writer:
                writer.overwrite = True  # --overwrite also lets predict replace predictions
            if subcommand == "fit":
                self.check_checkpoint_folder(settings)

    def config_error(self, message: str, argv: Sequence[str]) -> GeodistillError:
        """One line for a jsonargparse error: the file or option, the key path, the problem."""
        subcommand = argv[0] if argv and argv[0] in LIGHTNING_COMMANDS else None
        parsers = getattr(self, "_subcommand_parsers", {})
        sub = parsers.get(subcommand)
        options = [a.dest for a in sub._actions] if sub is not None else []
        bases = {"model": self._model_class, "data": self._datamodule_class}
        found = condense(message, merge_configs(self.configs), bases, options)
        if found is None:
            return GeodistillError(short_types(message.strip().splitlines()[0]))
        key = ".".join(found.keys)
        option = command_line_option(found.keys, argv[1:]) if found.keys else None
        if option is not None and option not in ("--config", "-c"):
            if normal_keys(option[2:].split(".")) == normal_keys(found.keys):
                return GeodistillError(f"{option}: {found.problem}")
            return GeodistillError(f"{option}: {key}: {found.problem}")
        if found.whole_config:
            if self.configs:
                return GeodistillError(found.problem, list(self.configs)[-1])
            return GeodistillError(f"{found.problem} (give them with --config FILE)")
        if not found.keys:
            return GeodistillError(found.problem)
        return GeodistillError(f"{key}: {found.problem}", config_source(found.keys, self.configs))

    # -- checks before anything is written ------------------------------------------------

    def check_ckpt_path(self, ckpt_path: str | None) -> None:
        """Read the checkpoint once, weights only, so a bad file is one line naming it (and
        Lightning, which would load it later, never sees it)."""
        if not ckpt_path or str(ckpt_path) in SPECIAL_CKPT_PATHS:
            return
        if str(ckpt_path).startswith("registry:"):
            return
        checkpoint = read_checkpoint(ckpt_path)
        meta = checkpoint.get("geodistill")
        self.checkpoint_meta = {"path": str(ckpt_path), **(meta if isinstance(meta, dict) else {})}

    def check_checkpoint_folder(self, settings: Any) -> None:
        """Refuse a fit into a folder holding an earlier run's checkpoints (Lightning would
        write ``best-v1.ckpt`` beside them), unless ``--overwrite`` or ``--ckpt_path``."""
        dirpath = settings.get("checkpoint", {}).get("dirpath")
        if not dirpath or settings.get("ckpt_path"):
            return
        folder = Path(dirpath)
        old = sorted(folder.glob("*.ckpt")) if folder.is_dir() else []
        if not old:
            return
        if not self.overwrite:
            raise GeodistillError(
                f"holds the checkpoints of an earlier run ({', '.join(p.name for p in old[:3])}"
                f"{', ...' if len(old) > 3 else ''}): {OVERWRITE_FLAG} replaces them, "
                "--ckpt_path resumes from one",
                folder,
            )
        self.old_checkpoints = old

    def instantiate_classes(self) -> None:
        """Instantiate; an error about a config key (``data.…``/``model.…``) names the file."""
        try:
            super().instantiate_classes()
        except Exception as error:
            found = user_error(error)
            section = re.match(r"(data|model)\b", str(found)) if found is not None else None
            source = config_source([section[1]], self.configs) if section else None
            if found is None or found.path is not None or source is None:
                raise
            raise GeodistillError(str(found), source) from error

    def before_run(self, stage: str) -> None:
        """Check the data (labels whole), the model and the checkpoint against each other
        before the trainer creates its log folder; then remove replaced checkpoints."""
        check = getattr(self.datamodule, "check", None)
        if callable(check):
            check(stage)
        check_data = getattr(self.model, "check_data", None)
        if callable(check_data) and self.datamodule is not None:
            check_data(self.datamodule)
        saved = self.checkpoint_meta.get("band_names")
        current = getattr(self.datamodule, "band_names", None)
        if saved and current is not None:
            check_band_names(saved, current, self.checkpoint_meta.get("path"))
        if stage == "predict":  # the writer refuses existing predictions in its setup, which
            for callback in self.trainer.callbacks:  # Lightning runs after creating log folders
                if isinstance(callback, GeoTiffPredictionWriter):
                    callback.setup(self.trainer, self.model, stage)
        for old in self.old_checkpoints:  # --overwrite: only once every check has passed
            old.unlink(missing_ok=True)

    def before_fit(self) -> None:
        self.before_run("fit")

    def before_validate(self) -> None:
        self.before_run("validate")

    def before_test(self) -> None:
        self.before_run("test")

    def before_predict(self) -> None:
        self.before_run("predict")


IN_PROCESS_ARGS_WARNING = "LightningCLI's args parameter is intended to run from within Python"


def run_lightning_cli(args: list[str], callbacks: Sequence[L.Callback] = ()) -> None:
    """Run a Lightning subcommand with CSV and TensorBoard logs under ``outputs/``.

    ``--overwrite`` (anywhere on the line) is geodistill's own flag, taken out before Lightning
    parses the rest. ``callbacks`` join the config's (a caller's progress line).
    """
    hide_lightning_tips()  # Lightning's litlogger/litmodels adverts, nothing about the run
    # Run in-process (compare, the demo, a script), args are the command: the caller's own
    # sys.argv is not meant for Lightning, so its "args and command line" caution is noise.
    warnings.filterwarnings("ignore", message=IN_PROCESS_ARGS_WARNING)
    overwrite = OVERWRITE_FLAG in args
    args = [a for a in args if a != OVERWRITE_FLAG]
    no_exit = {"exit_on_error": False}  # config errors raise; condensed to one line above
    GeodistillCLI(
        SegmentationTask,
        GeoSegDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        overwrite=overwrite,
        parser_kwargs={
            "prog": "geodistill",  # also when run in-process or with python -m
            **no_exit,
            **{name: {"description": text, **no_exit} for name, text in DESCRIPTIONS.items()},
        },
        trainer_defaults={
            "default_root_dir": "outputs",
            "callbacks": [LearningRateMonitor(logging_interval="step"), *callbacks],
            "logger": [
                {
                    "class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": "outputs", "name": "logs"},
                },
                {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": "outputs", "name": "tensorboard"},
                },
            ],
        },
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )
