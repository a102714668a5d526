"""Many scenes on many devices through Lightning's prediction loop.

Lightning places the model on each device, applies the precision setting, launches one process per
device and node (DDP), and shares the scenes between them with its distributed sampler; each
process then streams its scenes through :func:`~geodistill.inference.scene.predict_scene`. Every
input is checked before the first tile is predicted.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from geodistill.data.datasets import list_images
from geodistill.errors import GeodistillError
from geodistill.inference.predictors import Predictor, load_predictor
from geodistill.inference.scene import (
    InferenceOptions,
    SceneOutputs,
    check_model_tile,
    check_scene,
    predict_scene,
)
from geodistill.progress import lightning_logs_at_warning


class ScenePrediction(L.LightningModule):
    """Predict step = one whole scene; the batch is the scene's index in ``jobs``."""

    def __init__(
        self,
        predictor: Predictor,
        jobs: list[tuple[Path, SceneOutputs]],
        options: InferenceOptions,
        progress: bool = True,
    ) -> None:
        super().__init__()
        self.predictor = predictor
        self.jobs = jobs
        self.options = options
        self.progress = progress

    def on_predict_start(self) -> None:
        self.predictor.place(self.device)
        # On the device that will predict: a CPU probe of a large tile could need more memory
        # than the CPU has, and the device's own kernels decide which sizes work.
        check_model_tile(self.predictor, self.options.resolve(self.predictor.card)[0])

    def predict_step(self, batch: list[int], batch_idx: int) -> int:
        (index,) = batch
        scene, outputs = self.jobs[index]
        show = self.progress and self.trainer.is_global_zero
        prefetch = self.device.type != "cpu"
        predict_scene(self.predictor, scene, outputs, self.options, show, prefetch)
        return index


def plan_scenes(
    predictor: Predictor,
    scenes: Sequence[str | Path],
    output_dir: str | Path,
    options: InferenceOptions,
    on_cpu: bool = True,
) -> list[tuple[Path, SceneOutputs]]:
    """Scene files (paths, folders or globs) and their outputs, all checked up front: readable,
    the model's bands, tiles that fit in memory (``on_cpu``: the network runs in it too), and no
    output replaced without ``overwrite``."""
    files = [Path(p) for p in list_images([str(s) for s in scenes])]
    if not files:
        raise GeodistillError(f"no image files in {', '.join(str(s) for s in scenes)}")
    options.resolve(predictor.card)
    jobs, seen = [], {}
    for scene in files:
        outputs = SceneOutputs.in_folder(scene, output_dir, options)
        if outputs.classes in seen:
            raise GeodistillError(
                f"two scenes would write {outputs.classes.name} (also {seen[outputs.classes]});"
                " rename one or predict them into separate folders",
                scene,
            )
        seen[outputs.classes] = scene
        check_scene(scene, predictor.card, options, on_cpu)
        outputs.refuse_existing(options.overwrite)
        jobs.append((scene, outputs))
    return jobs


def _on_cpu(accelerator: Any) -> bool:
    """Whether the network will run on the CPU (its activations then count against RAM)."""
    if str(accelerator) == "auto":
        import torch

        return not (torch.cuda.is_available() or torch.backends.mps.is_available())
    return str(accelerator) == "cpu"


def infer_scenes(
    model: str | Path | Predictor,
    scenes: Sequence[str | Path],
    output_dir: str | Path,
    options: InferenceOptions | None = None,
    trainer: dict[str, Any] | None = None,
    progress: bool = True,
) -> list[SceneOutputs]:
    """Predict every scene with ``model`` (checkpoint, ONNX file or predictor) into ``output_dir``.

    ``trainer`` holds :class:`lightning.Trainer` arguments (``accelerator``, ``devices``,
    ``num_nodes``, ``strategy``, ``precision``).
    """
    options = options or InferenceOptions()
    predictor = load_predictor(model) if isinstance(model, str | Path) else model
    trainer = {"accelerator": "auto", "devices": 1, **(trainer or {})}
    jobs = plan_scenes(predictor, scenes, output_dir, options, _on_cpu(trainer["accelerator"]))
    # No folder is made here: each output's writer creates it, so a run refused before its
    # first tile leaves nothing behind.
    loader = DataLoader(list(range(len(jobs))), batch_size=1, collate_fn=list)
    with lightning_logs_at_warning():  # the tile progress bar is the output
        runner = L.Trainer(
            **trainer,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=False,
        )
        runner.predict(ScenePrediction(predictor, jobs, options, progress), loader)
    return [outputs for _, outputs in jobs]
