"""``geodistill fit|validate|test|predict``: LightningCLI with geodistill's defaults and links."""

from __future__ import annotations

from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from geodistill.data import GeoSegDataModule
from geodistill.inference import GeoTiffPredictionWriter
from geodistill.tasks import SegmentationTask

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")

DESCRIPTIONS = {
    "fit": (
        "Train a segmentation model from a YAML config (data, model, trainer), keeping the best "
        "checkpoint by validation mIoU and the last one."
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


class GeodistillCLI(LightningCLI):
    """Links the model's input bands and classes to the data, so a config states them once.

    Always adds a best-checkpoint callback (``checkpoint``: by validation mIoU, plus the last) and
    the GeoTIFF prediction writer (``prediction_writer``), both configurable.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments(
            "data.num_bands", "model.init_args.in_channels", apply_on="instantiate"
        )
        parser.link_arguments(
            "data.num_classes", "model.init_args.num_classes", apply_on="instantiate"
        )
        parser.link_arguments("data.classes", "model.init_args.class_names", apply_on="instantiate")
        parser.add_lightning_class_args(GeoTiffPredictionWriter, "prediction_writer")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/mIoU",
                "checkpoint.mode": "max",
                "checkpoint.filename": "best-{epoch}-{step}",
                "checkpoint.save_last": True,
            }
        )


def run_lightning_cli(args: list[str]) -> None:
    """Run a Lightning subcommand with CSV and TensorBoard logs under ``outputs/``."""
    GeodistillCLI(
        SegmentationTask,
        GeoSegDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        parser_kwargs={
            "prog": "geodistill",  # also when run in-process or with python -m
            **{name: {"description": text} for name, text in DESCRIPTIONS.items()},
        },
        trainer_defaults={
            "default_root_dir": "outputs",
            "callbacks": [LearningRateMonitor(logging_interval="step")],
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
