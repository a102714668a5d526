"""Semantic segmentation as a Lightning task: supervised, or with a distillation method as a
component (:mod:`geodistill.methods`)."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn

from geodistill.errors import GeodistillError, GeodistillWarning
from geodistill.losses import build_segmentation_loss
from geodistill.methods import DataContext, Distillation, StudentArguments, build_distillation
from geodistill.metrics import SegmentationMetrics, metrics_to_json, metrics_to_markdown
from geodistill.models import SegmentationModel, create_student
from geodistill.tasks.schedules import Schedule, warmup_decay


class SegmentationTask(L.LightningModule):
    """Train a student on labelled chips: weighted CE/Dice/focal, AdamW, warm-up + decay, and
    optionally a distillation method.

    ``in_channels``, ``num_classes``, ``class_names`` and ``band_names`` are linked from the data
    module by the CLI. The band statistics of the training data are copied into the model at the
    start of fitting and saved with it; the checkpoint also records band and class names so that
    validation, test and prediction can refuse data that does not match.

    ``distillation`` is a :class:`~geodistill.methods.Distillation` (in YAML: ``class_path:
    geodistill.methods.CoarseToFine`` and its ``init_args``): it may shape the student, holds
    its frozen teachers and trainable loss heads, and computes the training loss. Without one
    the task is plain supervised training. Checkpoints record the method's config; the deployed
    student (``geodistill export``) is the ``model`` network alone.

    A method may name other networks to score beside the student (its
    :meth:`~geodistill.methods.Distillation.evaluated_models`, e.g. an EMA copy): validation
    and test log them as ``val/<name>/<metric>`` and ``test/<name>/<metric>``, with metrics of
    their own, while ``val/<metric>`` stays the student's. Test (``test/<metric>``,
    ``test_metrics.json``) and prediction run the network the method deploys
    (:meth:`~geodistill.methods.Distillation.deployed_network`), and checkpoints record it
    under ``geodistill.deployed`` (its name and where its weights are in the state dict), so
    that ``geodistill export`` writes that network as the plain student.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 2,
        class_names: list[str] | None = None,
        band_names: list[str] | None = None,
        arch: str = "unet",
        encoder: str = "resnet18",
        weights: str | None = None,
        arch_kwargs: dict[str, Any] | None = None,
        loss: str | list[str] | dict[str, float] = "ce",
        class_weights: list[float] | None = None,
        ignore_index: int = 255,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        warmup_fraction: float = 0.05,
        schedule: Schedule = "poly",
        boundary_tolerance: int = 2,
        distillation: Distillation | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["distillation"])
        if class_names is not None and len(class_names) != num_classes:
            raise GeodistillError(f"{len(class_names)} class names for {num_classes} classes")
        if band_names is not None and len(band_names) != in_channels:
            raise GeodistillError(f"{len(band_names)} band names for {in_channels} bands")
        self.class_names = class_names or [f"class_{i}" for i in range(num_classes)]
        if band_names is not None:
            self.hparams["band_names"] = list(band_names)  # the data module's may be a tuple
        self.band_names: list[str] = list(
            band_names or [f"band_{i + 1}" for i in range(in_channels)]
        )
        self.tile_size: int | None = None
        method = build_distillation(distillation)  # type: ignore[arg-type] # or its config mapping
        if method is not None and band_names is None:
            raise GeodistillError(
                "model.band_names is needed with a distillation method: its teachers are built "
                "for the data's bands (geodistill fit links it from the data)"
            )
        student = StudentArguments(arch, encoder, weights, dict(arch_kwargs or {}))
        if method is not None:
            context = DataContext(self.band_names, self.class_names, ignore_index)
            student = method.student_arguments(student, context)
        self.model: SegmentationModel = create_student(
            student.arch,
            student.encoder,
            in_channels,
            num_classes,
            student.weights,
            **student.arch_kwargs,
        )
        # What was really built: checkpoints and exported students rebuild this network.
        self.hparams.update(
            arch=student.arch,
            encoder=student.encoder,
            weights=student.weights,
            arch_kwargs=student.arch_kwargs or arch_kwargs,
        )
        self.criterion = build_segmentation_loss(loss, ignore_index, class_weights, num_classes)
        self.distillation: Distillation | None = None
        if method is not None:
            self.hparams.update(method.bind(self))
            self.distillation = method
        self.hparams["distillation"] = None if method is None else method.config()
        metric_args = dict(
            num_classes=num_classes,
            ignore_index=ignore_index,
            class_names=self.class_names,
            boundary_tolerance=boundary_tolerance,
        )
        self.val_metrics = SegmentationMetrics(**metric_args)
        self.test_metrics = SegmentationMetrics(**metric_args)
        # Other networks the method scores (an EMA copy...): at validation beside the student,
        # at test the student and each of them by name (test_metrics scores the deployed one).
        names = list(self.evaluated_models())
        self.val_network_metrics = nn.ModuleDict(
            {name: SegmentationMetrics(**metric_args) for name in names}
        )
        self.test_network_metrics = nn.ModuleDict(
            {name: SegmentationMetrics(**metric_args) for name in ["student", *names] if names}
        )
        self.test_results: dict[str, float] = {}

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def evaluated_models(self) -> dict[str, nn.Module]:
        """The method's networks scored beside the student, by name (none without a method)."""
        if self.distillation is None:
            return {}
        networks = self.distillation.evaluated_models()
        if "student" in networks:
            raise GeodistillError("'student' names the task's own network; rename the model")
        return networks

    def deployed_name(self) -> str:
        """The network test and prediction run and export writes: ``student`` or a name of
        :meth:`evaluated_models`."""
        return "student" if self.distillation is None else self.distillation.deployed_network()

    def deployed_model(self) -> nn.Module:
        """The network :meth:`deployed_name` names."""
        name = self.deployed_name()
        networks = {"student": self.model, **self.evaluated_models()}
        if name not in networks:
            raise GeodistillError(
                f"the method deploys {name!r}; its networks are {', '.join(networks)}"
            )
        return networks[name]

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            return
        self.check_data(datamodule)
        if self.distillation is not None and list(datamodule.band_names) != self.band_names:
            raise GeodistillError(
                f"the task's teachers were built for bands {', '.join(self.band_names)}, the "
                f"data has {', '.join(datamodule.band_names)}: set model.band_names (the CLI "
                "links it from the data)"
            )
        self.band_names = list(datamodule.band_names)
        self.tile_size = getattr(datamodule, "patch_size", self.tile_size)
        if stage == "fit" and datamodule.band_stats is not None:
            self.model.normalizer.set_stats(datamodule.band_stats)
        if self.distillation is not None:
            self._check_unlabeled(datamodule, stage)
            self.distillation.setup(self, stage, datamodule)

    def _check_unlabeled(self, datamodule: Any, stage: str) -> None:
        """The unlabelled stream the method asks for, and only then."""
        if stage != "fit" or self.distillation is None:
            return
        use = self.distillation.unlabeled
        source = getattr(datamodule, "unlabeled_from", None)
        name = type(self.distillation).__name__
        if use == "required" and source is None:
            raise GeodistillError(
                f"{name} learns from unlabelled images: set data.unlabeled_from "
                "('unlabeled', 'coarse' or 'rest')"
            )
        if use == "unused" and source is not None:
            raise GeodistillError(f"{name} trains on labelled batches: unset data.unlabeled_from")

    def on_fit_start(self) -> None:
        if self.distillation is not None:
            self.distillation.on_fit_start(self)

    def check_data(self, datamodule: Any) -> None:
        """Refuse data whose band or class count differs from the model's (also run by the CLI
        before the trainer starts, so nothing is written for such data)."""
        if datamodule.num_bands != self.hparams.in_channels:
            raise GeodistillError(
                f"the model takes {self.hparams.in_channels} bands, the data has "
                f"{datamodule.num_bands} ({', '.join(datamodule.band_names)})"
            )
        if datamodule.num_classes != self.hparams.num_classes:
            raise GeodistillError(
                f"the model has {self.hparams.num_classes} classes, the data "
                f"{datamodule.num_classes} ({', '.join(datamodule.classes)})"
            )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if self.distillation is not None:
            step = self.distillation.training_step(self, batch)
            self.log("train/loss", step.loss, prog_bar=True, batch_size=step.size)
            self.log_dict({f"train/{k}": v for k, v in step.logs.items()}, batch_size=step.size)
            return step.loss
        logits = self.model(batch["image"])
        loss = self.criterion(logits, batch["mask"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(logits))
        for name, value in self.criterion.last_terms.items():
            self.log(f"train/loss_{name}", value, batch_size=len(logits))
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.distillation is not None:
            self.distillation.on_train_batch_end(self)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        logits = self.model(batch["image"])
        self.log("val/loss", self.criterion(logits, batch["mask"]), batch_size=len(logits))
        self.val_metrics.update(logits.argmax(1), batch["mask"])
        for name, network in self.evaluated_models().items():
            self.val_network_metrics[name].update(network(batch["image"]).argmax(1), batch["mask"])

    def on_validation_epoch_end(self) -> None:
        results = self.val_metrics.compute()
        miou = results.pop("mIoU")
        sanity = self._trainer is not None and self._trainer.sanity_checking
        if bool(torch.isnan(torch.as_tensor(miou))) and not sanity:
            warnings.warn(
                "val/mIoU is NaN: no labelled pixel of the validation split was scored (are its "
                "images nodata?); no best checkpoint is chosen on it",
                GeodistillWarning,
                stacklevel=1,  # here: main ignores UserWarnings issued from lightning's modules
            )
        self.log("val/mIoU", miou, prog_bar=True)
        self.log_dict({f"val/{k}": v for k, v in results.items()})
        self.val_metrics.reset()
        scores = {"student": float(miou)}
        for name, metrics in self.val_network_metrics.items():
            network_results = metrics.compute()
            scores[name] = float(network_results["mIoU"])
            self.log_dict({f"val/{name}/{k}": v for k, v in network_results.items()})
            metrics.reset()
        if self.distillation is not None and self.val_network_metrics and not sanity:
            self.distillation.on_validation_scores(self, scores)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        deployed = self.deployed_model()
        if not self.test_network_metrics:
            self.test_metrics.update(deployed(batch["image"]).argmax(1), batch["mask"])
            return
        networks = {"student": self.model, **self.evaluated_models()}
        for name, network in networks.items():
            predicted = network(batch["image"]).argmax(1)
            self.test_network_metrics[name].update(predicted, batch["mask"])
            if network is deployed:
                self.test_metrics.update(predicted, batch["mask"])

    def on_test_epoch_end(self) -> None:
        per_network: dict[str, float] = {}
        for name, metrics in self.test_network_metrics.items():
            network_results = metrics.compute()
            self.log_dict({f"test/{name}/{k}": v for k, v in network_results.items()})
            per_network.update({f"{name}/{k}": float(v) for k, v in network_results.items()})
            metrics.reset()
        results = self.test_metrics.compute()
        self.log_dict({f"test/{k}": v for k, v in results.items()})
        self.test_results = {k: float(v) for k, v in results.items()}
        self.test_metrics.reset()
        log_dir = self.trainer.log_dir
        if log_dir and self.trainer.is_global_zero:
            # The deployed network's metrics, then each evaluated network's (``ema/mIoU``): a
            # comparison's run records keep both (``test/ema/mIoU``).
            metrics_to_json(
                {**self.test_results, **per_network}, Path(log_dir) / "test_metrics.json"
            )
            markdown = metrics_to_markdown(self.test_results, self.class_names)
            (Path(log_dir) / "test_metrics.md").write_text(markdown)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        probs = self.deployed_model()(batch["image"]).softmax(1)
        nodata = torch.isnan(batch["image"]).all(1)
        return {"probs": probs, "nodata": nodata, "index": batch["index"], "shape": batch["shape"]}

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(
            self.parameter_groups(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = warmup_decay(
            optimizer,
            total_steps=total,
            warmup_steps=int(self.hparams.warmup_fraction * total),
            schedule=self.hparams.schedule,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The optimiser's parameter groups: every trainable parameter in the default group (the
        task's lr), except those the method gives settings of their own. The schedule's factor
        multiplies each group's own initial lr."""
        special = [] if self.distillation is None else self.distillation.parameter_groups(self)
        owned = {id(p) for p in self.parameters()}
        claimed: set[int] = set()
        groups: list[dict[str, Any]] = []
        for group in special:
            params = [p for p in group["params"] if p.requires_grad]
            if not {id(p) for p in params} <= owned or claimed & {id(p) for p in params}:
                raise GeodistillError(
                    "a method's parameter group lists a parameter the task does not own or "
                    "another group already lists"
                )
            claimed |= {id(p) for p in params}
            if params:
                groups.append({**group, "params": params})
        default = [p for p in self.parameters() if p.requires_grad and id(p) not in claimed]
        return [{"params": default}, *groups]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["geodistill"] = {
            "band_names": self.band_names,
            "class_names": self.class_names,
            "tile_size": self.tile_size,
        }
        if self.distillation is not None:
            # Under "teacher": export drops it; the teachers' weights are never saved.
            checkpoint["geodistill"]["teacher"] = copy.deepcopy(self.distillation.teacher_record())
        if self.val_network_metrics:
            checkpoint["geodistill"]["deployed"] = self.deployment_record()

    def deployment_record(self) -> dict[str, Any]:
        """``geodistill.deployed`` of a checkpoint: the deployed network's name, the state-dict
        prefix of its weights (``model.`` for the student) and the method's record of the
        choice."""
        assert self.distillation is not None
        deployed = self.deployed_model()
        prefix = next(name for name, module in self.named_modules() if module is deployed)
        return {
            "network": self.deployed_name(),
            "state_prefix": f"{prefix}.",
            **copy.deepcopy(self.distillation.deployment_record()),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get("geodistill", {})
        if self.distillation is not None:
            self.distillation.check_resumed_teacher(meta.get("teacher"))
            self.distillation.load_deployment_record(meta.get("deployed"))
        saved = meta.get("band_names")
        if saved is None:
            return
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        current = getattr(datamodule, "band_names", None)
        path = getattr(self._trainer, "ckpt_path", None) if self._trainer else None
        if current is not None:
            check_band_names(saved, current, path)
        self.band_names = list(saved)
        self.class_names = list(meta.get("class_names", self.class_names))
        self.tile_size = meta.get("tile_size", self.tile_size)


def check_band_names(saved: list[str], current: list[str], path: str | Path | None) -> None:
    """Refuse data whose bands differ from those the checkpoint at ``path`` was trained on."""
    if list(current) != list(saved):
        raise GeodistillError(
            f"the checkpoint was trained on {len(saved)} bands ({', '.join(saved)}), "
            f"the data has {len(current)} ({', '.join(current)})",
            path,
        )


class BestCheckpoint(ModelCheckpoint):
    """A :class:`ModelCheckpoint` that never records a NaN score as the best.

    Lightning 2.6 turns a NaN monitored value into -inf (mode max) and still saves it while fewer
    than ``save_top_k`` checkpoints exist, so a run whose validation mIoU is NaN (no labelled
    pixel scored) would keep a "best" checkpoint chosen on NaN. Here a NaN epoch is skipped;
    ``save_last`` still keeps the last one.
    """

    def check_monitor_top_k(self, trainer: L.Trainer, current: Tensor | None = None) -> bool:
        if current is not None and bool(torch.isnan(torch.as_tensor(current)).any()):
            return False
        return super().check_monitor_top_k(trainer, current)
