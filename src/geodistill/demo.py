"""The built-in demo: synthetic multispectral mining scenes, coarse-to-fine, mapped end to end.

The data are SYNTHETIC (see :mod:`geodistill.data.synthetic`): 6-band Sentinel-2-like chips of
mining sites in two regions with a spectral shift. Region A carries coarse site outlines, region B
a few exact labels. The demo runs both stages of coarse-to-fine learning: a teacher on region A's
coarse labels, then a region-B student with attentive distillation, next to the fine-only
baseline trained on the same few exact labels. Both are tested on held-out region-B chips and map
a whole scene to georeferenced GeoTIFFs; metrics, a side-by-side figure and the teacher-free
student are written to the output folder.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import lightning as L
import numpy as np
import rasterio

from geodistill.atomic import check_output
from geodistill.data.raster import read_image
from geodistill.data.synthetic import DemoDataset, write_demo_dataset
from geodistill.inference import InferenceOptions, SceneOutputs, load_predictor, predict_scene
from geodistill.metrics import metrics_to_json
from geodistill.pipelines.coarse_to_fine import (
    CoarseToFineConfig,
    Stage,
    run_coarse_to_fine,
    write_results_table,
)
from geodistill.reporting import save_panels

DEMO_EPOCHS = {"teacher": 4, "student": 10}
DEMO_MODEL = {"arch": "unet", "encoder": "resnet18", "loss": {"ce": 1.0, "dice": 1.0}, "lr": 2e-3}
DEMO_METHODS = ["fine_only", "attentive"]
N_FINE = 6
"""Exact region-B chips: 4 train the students, 2 select their checkpoints (val_fraction 1/3)."""


def demo_config(
    data: DemoDataset,
    output: Path,
    seed: int = 0,
    methods: list[str] | None = None,
    epochs: dict[str, int] | None = None,
) -> CoarseToFineConfig:
    """The demo's coarse-to-fine setup (also used by ``benchmarks/demo_coarse_to_fine.py``)."""
    epochs = {**DEMO_EPOCHS, **(epochs or {})}
    return CoarseToFineConfig(
        data={
            "classes": list(data.class_names),
            "coarse": {
                "train": {"images": str(data.coarse_images), "labels": str(data.coarse_labels)}
            },
            "fine": {
                "train": {"images": str(data.fine_images), "labels": str(data.fine_labels)},
                "test": {"images": str(data.test_images), "labels": str(data.test_labels)},
                "val_fraction": 1 / 3,
            },
            "patch_size": 96,
            "crops_per_image": 8,
            "batch_size": 8,
            "unlabeled_batch_size": 4,
            "eval_batch_size": 8,
            "cache": True,
        },
        output=str(output),
        methods=list(methods or DEMO_METHODS),
        seed=seed,
        teacher=Stage(epochs["teacher"], dict(DEMO_MODEL)),
        student=Stage(epochs["student"], {}),
        exact_coarse_labels=str(data.coarse_fine_labels),
        trainer={"accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
    )


DEMO_OUTPUTS = ("data", "runs", "metrics.md", "figure.png", "summary.json")
"""What a demo writes into its folder (besides ``metrics_<method>.json`` and ``scene_*.tif``)."""


def demo_outputs(output: Path) -> list[Path]:
    """The outputs of an earlier demo in ``output``: what a new one would replace."""
    named = [output / name for name in DEMO_OUTPUTS if (output / name).exists()]
    return named + sorted(output.glob("metrics_*.json")) + sorted(output.glob("scene_*.tif"))


def check_demo_output(output: Path, overwrite: bool = False, option: str = "-o") -> Path:
    """Refuse a folder holding an earlier demo (unless ``overwrite``) or one that cannot be
    written, before the demo starts."""
    return check_output(output, "folder", overwrite, option, replaces=demo_outputs)


def run_demo(
    output: Path,
    seed: int = 0,
    epochs: dict[str, int] | None = None,
    dataset: dict[str, int] | None = None,
    overwrite: bool = False,
) -> str:
    """Run the demo into ``output`` and return a short text summary.

    ``epochs`` overrides :data:`DEMO_EPOCHS` (keys ``teacher``, ``student``); ``dataset``
    overrides :func:`~geodistill.data.synthetic.write_demo_dataset` sizes (a quicker, smaller
    demo). A folder holding an earlier demo is refused unless ``overwrite``, which removes its
    dataset and runs first (a smaller dataset would otherwise keep the old chips).
    """
    start = time.perf_counter()
    check_demo_output(output, overwrite)
    L.seed_everything(seed, verbose=False)
    if overwrite:
        shutil.rmtree(output / "data", ignore_errors=True)
    output.mkdir(parents=True, exist_ok=True)
    data = write_demo_dataset(output / "data", seed=seed, **{"n_fine": N_FINE, **(dataset or {})})
    config = demo_config(data, output / "runs", seed, epochs=epochs)
    results = run_coarse_to_fine(config, overwrite=overwrite)
    classes = list(data.class_names)
    for name, metrics in results.items():
        metrics_to_json(metrics, output / f"metrics_{name}.json")
    (output / "metrics.md").write_text(
        "# geodistill demo (SYNTHETIC data): region-B test chips\n\n"
        "coarse_only = the stage-1 teacher (region-A coarse labels); fine_only = the few exact "
        "region-B labels alone; attentive = stage 2, the teacher distilled into a region-B "
        "student (geodistill's coarse-to-fine method). Values in %.\n\n"
        + write_results_table(results, classes)
    )

    with rasterio.open(data.scene_label) as src:
        label = src.read(1)
    maps: dict[str, np.ndarray] = {"label (exact)": label}
    scene_accuracy = {}
    for name in ("fine_only", "attentive"):
        checkpoint = Path(config.output) / name / "checkpoints" / "best.ckpt"
        if name == "attentive":
            checkpoint = Path(config.output) / name / "student.ckpt"  # teacher-free
        predictor = load_predictor(checkpoint)
        outputs = SceneOutputs(output / f"scene_{name}.tif")
        predict_scene(predictor, data.scene_image, outputs, InferenceOptions(overwrite=True))
        prediction = outputs.classes
        with rasterio.open(prediction) as src:
            predicted = src.read(1)
        maps[f"{name} ({100 * results[name]['mIoU']:.1f} mIoU)"] = predicted
        known = label != 255
        scene_accuracy[name] = float(np.mean(predicted[known] == label[known]))
    figure = save_panels(
        output / "figure.png", read_image(data.scene_image), maps, classes, rgb=(2, 1, 0)
    )
    summary = {
        "test_mIoU": {name: m["mIoU"] for name, m in results.items()},
        "test_boundary_F1": {name: m["boundary_F1"] for name, m in results.items()},
        "scene_pixel_accuracy": scene_accuracy,
        "student": str(Path(config.output) / "attentive" / "student.ckpt"),
        "seconds": round(time.perf_counter() - start, 1),
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    lines = [f"geodistill demo (synthetic data) done in {summary['seconds']} s"]
    for name in results:
        lines.append(
            f"  {name:<12} test mIoU {100 * results[name]['mIoU']:6.2f}  "
            f"boundary F1 {100 * results[name]['boundary_F1']:6.2f}"
        )
    lines += [
        f"  metrics: {output / 'metrics.md'}",
        f"  scene maps: {output / 'scene_fine_only.tif'}, {output / 'scene_attentive.tif'}",
        f"  figure: {figure}",
        f"  teacher-free student: {summary['student']}",
    ]
    return "\n".join(lines)
