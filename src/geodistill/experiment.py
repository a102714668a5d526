"""Run one experiment (fit, then test the best checkpoint) from Python, e.g. in a notebook.

``geodistill fit`` / ``test`` and the ``geodistill compare`` harness do the same from a YAML
file (the harness's runs go through the CLI); this is the in-process path for a task and a data
module already built, with the same best-checkpoint rule (``val/mIoU``, :class:`BestCheckpoint`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.loggers import CSVLogger

from geodistill.errors import GeodistillError
from geodistill.tasks import SegmentationTask
from geodistill.tasks.segmentation import BestCheckpoint


@dataclass
class ExperimentResult:
    """Test metrics of the best checkpoint, and where it is."""

    metrics: dict[str, float]
    checkpoint: Path
    task: SegmentationTask


def fit_and_test(
    task: SegmentationTask,
    datamodule: L.LightningDataModule,
    run_dir: str | Path,
    max_epochs: int,
    patience: int | None = None,
    check_val_every_n_epoch: int | None = 1,
    callbacks: Sequence[L.Callback] = (),
    **trainer_kwargs: Any,
) -> ExperimentResult:
    """Train ``task``, keep the best checkpoint by val mIoU, and test it.

    ``callbacks`` are added to the trainer (progress display, say).
    ``check_val_every_n_epoch=None`` with ``val_check_interval=N`` validates every N steps.
    """
    run_dir = Path(run_dir)
    checkpoint = BestCheckpoint(
        dirpath=run_dir / "checkpoints", monitor="val/mIoU", mode="max", filename="best"
    )
    trainer_callbacks: list[L.Callback] = [checkpoint, *callbacks]
    if patience is not None:
        trainer_callbacks.append(EarlyStopping(monitor="val/mIoU", mode="max", patience=patience))
    trainer = L.Trainer(
        default_root_dir=run_dir,
        max_epochs=max_epochs,
        callbacks=trainer_callbacks,
        logger=CSVLogger(run_dir, name="logs"),
        check_val_every_n_epoch=check_val_every_n_epoch,
        enable_model_summary=False,
        **{"accelerator": "cpu", "devices": 1, **trainer_kwargs},
    )
    trainer.fit(task, datamodule=datamodule)
    if not checkpoint.best_model_path:  # every validation score was NaN: nothing to select on
        raise GeodistillError(
            "no validation epoch scored a labelled pixel (val/mIoU was NaN throughout), so no "
            "best checkpoint could be chosen: check the validation split's labels",
            run_dir,
        )
    best = Path(checkpoint.best_model_path)
    trainer.test(task, datamodule=datamodule, ckpt_path=str(best), verbose=False)
    return ExperimentResult(metrics=dict(task.test_results), checkpoint=best, task=task)
