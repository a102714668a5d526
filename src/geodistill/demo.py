"""The built-in demo: synthetic multispectral mining scenes, coarse-to-fine, mapped end to end.

The data are SYNTHETIC (see :mod:`geodistill.data.synthetic`): 6-band Sentinel-2-like chips of
mining sites in two neighbouring regions with a moderate spectral shift. Region A carries coarse
site outlines, region B a few exact labels. The demo runs both stages of coarse-to-fine learning:
a teacher on region A's coarse labels, then a region-B student with attentive distillation, next
to two baselines trained on the same few exact labels: the teacher fine-tuned without
distillation (naive_finetune) and fine-only. All are tested on held-out region-B chips; the
student and fine-only map a whole scene to georeferenced GeoTIFFs; metrics, a side-by-side
figure and the teacher-free student are written to the output folder.

While it runs, the demo says what it does: each stage is announced (what is trained on what, and
why) with one progress line and its time left (:mod:`geodistill.progress`), library chatter is
kept out unless ``verbose``, and it ends with the results table and the list of its outputs.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import lightning as L
import numpy as np
import rasterio
import yaml

from geodistill.atomic import atomic_output, check_output
from geodistill.data.raster import read_image
from geodistill.data.synthetic import DemoDataset, write_demo_dataset
from geodistill.experiments import load_experiment, run_experiment
from geodistill.export import export_student
from geodistill.inference import InferenceOptions, SceneOutputs, load_predictor, predict_scene
from geodistill.methods import CoarseToFine
from geodistill.metrics import format_metric, metrics_to_json
from geodistill.progress import PlannedRun, RunProgress, format_duration, quiet_libraries
from geodistill.reporting import results_table, save_panels
from geodistill.webmap import write_web_map

DEMO_EPOCHS = {"teacher": 4, "student": 10}
DEMO_MODEL = {"arch": "unet", "encoder": "resnet18", "loss": {"ce": 1.0, "dice": 1.0}, "lr": 2e-3}
STAGE_ORDER = ["coarse_only", "attentive", "naive_finetune", "fine_only"]
"""The teacher, then the method (stage 2) and its baselines: the teacher fine-tuned on the exact
chips without distillation (stage 3) and the exact chips alone (stage 4)."""
N_FINE = 5
"""Exact region-B chips: 3 train the students, 2 select their checkpoints (val_fraction 1/3) —
few enough that the fine labels alone do not saturate the test score."""
VAL_FRACTION = 1 / 3


def demo_fit_config(data: DemoDataset, epochs: dict[str, int] | None = None) -> dict[str, Any]:
    """The ``geodistill fit`` config every demo run starts from: the few exact region-B chips
    (the coarse region A is declared too, for the teacher and the distilled student)."""
    epochs = {**DEMO_EPOCHS, **(epochs or {})}
    return {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": epochs["student"],
            "accelerator": "cpu",
            "devices": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
        "model": {"class_path": "geodistill.tasks.SegmentationTask", "init_args": DEMO_MODEL},
        "data": {
            "class_path": "geodistill.data.GeoSegDataModule",
            "init_args": {
                "classes": list(data.class_names),
                "coarse": {
                    "train": {"images": str(data.coarse_images), "labels": str(data.coarse_labels)}
                },
                "fine": {
                    "train": {"images": str(data.fine_images), "labels": str(data.fine_labels)},
                    "test": {"images": str(data.test_images), "labels": str(data.test_labels)},
                    "val_fraction": VAL_FRACTION,
                },
                "patch_size": 96,
                "crops_per_image": 8,
                "batch_size": 8,
                "unlabeled_batch_size": 4,
                "eval_batch_size": 8,
                "cache": True,
            },
        },
    }


def _coarse_to_fine(**settings: Any) -> dict[str, Any]:
    """A variant distilling the seed's stage-1 teacher (``CoarseToFine`` with ``settings``)."""
    init_args = {"teacher": "${stages.coarse_only.checkpoint}", **settings}
    distills = CoarseToFine(**init_args).active  # settings only: no teacher is read here
    variant: dict[str, Any] = {
        "model": {
            "init_args": {
                "distillation": {
                    "class_path": "geodistill.methods.CoarseToFine",
                    "init_args": init_args,
                }
            }
        }
    }
    if distills:  # unlabelled region-A crops feed distillation (none for naive fine-tuning)
        variant["data"] = {"init_args": {"unlabeled_from": "coarse"}}
    return variant


DEMO_VARIANTS: dict[str, dict[str, Any]] = {
    "attentive": _coarse_to_fine(),
    "naive_finetune": _coarse_to_fine(feature_weight=0.0, prediction_weight=0.0),
    "fine_only": {},
}
"""The demo's variants, in run order after the teacher (``configs/coarse_to_fine_demo.yaml``
holds every baseline and ablation of the method)."""


def demo_experiment(
    data: DemoDataset,
    output: Path,
    seeds: list[int],
    epochs: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The demo as a ``geodistill compare`` experiment: the stage-1 teacher on region A's coarse
    outlines, then :data:`DEMO_VARIANTS` on region B, paired against ``fine_only``."""
    epochs = {**DEMO_EPOCHS, **(epochs or {})}
    return {
        "base": demo_fit_config(data, epochs),
        "output": str(output),
        "seeds": list(seeds),
        "metric": "test/mIoU",
        "baseline": "fine_only",
        "stages": {
            "coarse_only": {
                "overrides": {
                    "trainer": {"max_epochs": epochs["teacher"]},
                    "data": {"init_args": {"train_on": "coarse"}},
                }
            }
        },
        "variants": DEMO_VARIANTS,
    }


DEMO_OUTPUTS = (
    "data",
    "runs",
    "experiment.yaml",
    "student.ckpt",
    "metrics.md",
    "figure.png",
    "summary.json",
    "map.html",
)
"""What a demo writes into its folder (besides ``metrics_<method>.json`` and ``scene_*.tif``)."""


def demo_outputs(output: Path) -> list[Path]:
    """The outputs of an earlier demo in ``output``: what a new one would replace."""
    named = [output / name for name in DEMO_OUTPUTS if (output / name).exists()]
    return named + sorted(output.glob("metrics_*.json")) + sorted(output.glob("scene_*.tif"))


def check_demo_output(output: Path, overwrite: bool = False, option: str = "-o") -> Path:
    """Refuse a folder holding an earlier demo (unless ``overwrite``) or one that cannot be
    written, before the demo starts."""
    return check_output(output, "folder", overwrite, option, replaces=demo_outputs)


@dataclass(frozen=True)
class DemoCounts:
    """How many chips each part of the demo dataset holds (for the stage announcements)."""

    coarse: int
    fine_train: int
    fine_val: int
    test: int
    scene: tuple[int, int]

    @classmethod
    def of(cls, data: DemoDataset) -> DemoCounts:
        """Count the chips ``data`` holds; the fine split follows :data:`VAL_FRACTION` as the
        data module does."""
        fine = len(list(data.fine_images.glob("*.tif")))
        val = int(round(VAL_FRACTION * fine))
        with rasterio.open(data.scene_image) as src:
            scene = (src.height, src.width)
        return cls(
            coarse=len(list(data.coarse_images.glob("*.tif"))),
            fine_train=fine - val,
            fine_val=val,
            test=len(list(data.test_images.glob("*.tif"))),
            scene=scene,
        )


def _epochs(count: int) -> str:
    return f"{count} epoch{'s' if count != 1 else ''}"


def stage_texts(counts: DemoCounts, epochs: dict[str, int]) -> dict[str, str]:
    """The three stages in a newcomer's words: what is trained on what, and why."""
    teacher, student = _epochs(epochs["teacher"]), _epochs(epochs["student"])
    return {
        "coarse_only": (
            f"teacher on region A's coarse outlines ({counts.coarse} chips, "
            f"{teacher}) — the plentiful, generous labels"
        ),
        "attentive": (
            f"student on {counts.fine_train} exact region-B chips, distilled from the teacher "
            f"(attentive, {student}) — the few exact labels plus what the "
            "teacher knows"
        ),
        "naive_finetune": (
            f"baseline naive_finetune: the teacher fine-tuned on the same {counts.fine_train} "
            f"chips, no distillation ({student}) — the plain way to reuse a teacher"
        ),
        "fine_only": (
            f"baseline fine_only on the same {counts.fine_train} chips, no teacher "
            f"({student}) — what the exact labels give alone"
        ),
    }


def results_text(
    results: dict[str, dict[str, float]], scene_accuracy: dict[str, float]
) -> list[str]:
    """The results as an aligned plain-text table in stage order (one run: values, no spread).

    An undefined value (NaN, e.g. boundary F1 without a labelled boundary) shows as ``–``; the
    sparse-label boundary F1 gets a column only where it differs from the boundary F1 (labels
    with unlabelled gaps between classes).
    """

    def differs(metrics: dict[str, float]) -> bool:
        sparse = float(metrics.get("boundary_F1_sparse", math.nan))
        dense = float(metrics.get("boundary_F1", math.nan))
        return math.isfinite(sparse) and not (math.isfinite(dense) and abs(sparse - dense) < 1e-9)

    show_sparse = any(differs(metrics) for metrics in results.values())

    learned = {
        "coarse_only": "region-A coarse labels (teacher)",
        "fine_only": "region-B exact labels only",
        "attentive": "exact labels + teacher (distilled)",
        "naive_finetune": "teacher fine-tuned on exact labels",
    }
    lines = [
        f"  {'method':<14} {'learned from':<35} {'test mIoU':>9} {'boundary F1':>11} "
        + (f"{'sparse bF1':>10} " if show_sparse else "")
        + f"{'scene acc.':>10}"
    ]
    for name in sorted(results, key=lambda n: STAGE_ORDER.index(n) if n in STAGE_ORDER else 99):
        metrics = results[name]
        accuracy = scene_accuracy.get(name)
        lines.append(
            f"  {name:<14} {learned.get(name, ''):<35} "
            f"{format_metric(metrics['mIoU'], digits=1):>9} "
            f"{format_metric(metrics['boundary_F1'], digits=1):>11} "
            + (
                f"{format_metric(metrics.get('boundary_F1_sparse'), digits=1):>10} "
                if show_sparse
                else ""
            )
            + (f"{100 * accuracy:10.1f}" if accuracy is not None else f"{'–':>10}")
        )
    return lines


def run_demo(
    output: Path,
    seed: int = 0,
    epochs: dict[str, int] | None = None,
    dataset: dict[str, int] | None = None,
    overwrite: bool = False,
    verbose: bool = False,
    stream: TextIO | None = None,
) -> str:
    """Run the demo into ``output`` and return the results table and the list of its outputs.

    ``epochs`` overrides :data:`DEMO_EPOCHS` (keys ``teacher``, ``student``); ``dataset``
    overrides :func:`~geodistill.data.synthetic.write_demo_dataset` sizes (a quicker, smaller
    demo). A folder holding an earlier demo is refused unless ``overwrite``, which removes its
    dataset and runs first (a smaller dataset would otherwise keep the old chips). The stages are
    announced on ``stream`` (default stderr) with a progress line each; ``verbose`` also shows
    Lightning's own messages (silenced otherwise).
    """
    start = time.perf_counter()
    check_demo_output(output, overwrite)
    stream = stream if stream is not None else sys.stderr
    epochs = {**DEMO_EPOCHS, **(epochs or {})}
    L.seed_everything(seed, verbose=False)
    if overwrite:
        shutil.rmtree(output / "data", ignore_errors=True)
    output.mkdir(parents=True, exist_ok=True)
    say = RunProgress(stream=stream).say
    say(
        "geodistill demo: coarse-to-fine learning on SYNTHETIC 6-band mining scenes "
        f"(two neighbouring regions with a moderate spectral shift) → {output}"
    )
    data = write_demo_dataset(output / "data", seed=seed, **{"n_fine": N_FINE, **(dataset or {})})
    counts = DemoCounts.of(data)
    say(
        f"Data: {counts.coarse} region-A chips with coarse outlines, "
        f"{counts.fine_train + counts.fine_val} region-B chips with exact labels "
        f"({counts.fine_train} to train, {counts.fine_val} to pick checkpoints), "
        f"{counts.test} held-out region-B test chips, one {counts.scene[0]}×{counts.scene[1]} "
        f"px scene → {data.root}"
    )
    experiment_file = output / "experiment.yaml"
    with atomic_output(experiment_file) as temporary:
        text = yaml.safe_dump(
            demo_experiment(data, output / "runs", [seed], epochs), sort_keys=False
        )
        temporary.write_text(text)
    progress = RunProgress(label="Stage", descriptions=stage_texts(counts, epochs), stream=stream)
    progress.plan(
        [
            PlannedRun("coarse_only", "coarse", epochs["teacher"]),
            *(PlannedRun(name, "fine", epochs["student"]) for name in DEMO_VARIANTS),
        ]
    )
    with quiet_libraries(verbose):
        report = run_experiment(
            load_experiment(experiment_file), overwrite=overwrite, progress=progress
        )
        records = json.loads(report.with_suffix(".json").read_text())["runs"]
        results = {
            record["name"]: {k.removeprefix("test/"): v for k, v in record["metrics"].items()}
            for record in records
        }
        checkpoints = {record["name"]: Path(record["checkpoint"]) for record in records}
        results = {name: results[name] for name in STAGE_ORDER if name in results}
        say(
            f"Each model was tested on the {counts.test} held-out region-B chips (test mIoU above)."
        )
        classes = list(data.class_names)
        for name, metrics in results.items():
            metrics_to_json(metrics, output / f"metrics_{name}.json")
        (output / "metrics.md").write_text(
            "# geodistill demo (SYNTHETIC data): region-B test chips\n\n"
            "coarse_only = the stage-1 teacher (region-A coarse labels), scored on region B; "
            "fine_only = the few exact region-B labels alone; naive_finetune = the teacher "
            "fine-tuned on those exact labels, no distillation; attentive = stage 2, the teacher "
            "distilled into a region-B student (geodistill's coarse-to-fine method). "
            "Values in %.\n\n" + results_table(results, classes, STAGE_ORDER)
        )
        student = export_student(checkpoints["attentive"], output / "student.ckpt", overwrite=True)
        say(
            f"Whole scene: mapping the {counts.scene[0]}×{counts.scene[1]} px region-B scene with "
            "the teacher-free attentive student and the fine_only baseline → GeoTIFFs"
        )
        maps_from = {"fine_only": checkpoints["fine_only"], "attentive": student}
        label, maps, scene_accuracy = _map_scene(data, maps_from, output, results, stream)
    figure = save_panels(
        output / "figure.png",
        read_image(data.scene_image),
        {"label (exact)": label, **maps},
        classes,
        rgb=(2, 1, 0),
    )
    web_map = write_web_map(
        [output / f"scene_{name}.tif" for name in scene_accuracy],
        output / "map.html",
        scene=data.scene_image,
        overwrite=True,  # check_demo_output has already refused it unless --overwrite
    ).output
    summary = {
        "test_mIoU": {name: m["mIoU"] for name, m in results.items()},
        # NaN (no labelled boundary) is not JSON: written as null
        "test_boundary_F1": {
            name: m["boundary_F1"] if math.isfinite(m["boundary_F1"]) else None
            for name, m in results.items()
        },
        "scene_pixel_accuracy": scene_accuracy,
        "student": str(student),
        "seconds": round(time.perf_counter() - start, 1),
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False))
    outputs = [
        ("results table", output / "metrics.md"),
        *((f"metrics of {name}", output / f"metrics_{name}.json") for name in results),
        *((f"scene map, {name}", output / f"scene_{name}.tif") for name in scene_accuracy),
        ("figure: image | label | both maps", figure),
        ("web map: open in a browser", web_map),
        ("summary", output / "summary.json"),
        ("teacher-free student", student),
        ("the runs as a compare experiment", experiment_file),
        ("training runs: checkpoints, logs", output / "runs"),
        ("synthetic dataset, README inside", data.root),
    ]
    lines = [
        f"geodistill demo (SYNTHETIC data) done in {format_duration(summary['seconds'])}",
        "",
        *results_text(results, scene_accuracy),
        "",
        "  (test mIoU, boundary F1: region-B test chips; scene acc.: pixel accuracy on the "
        "whole scene; %)",
        "",
        "outputs:",
        *(f"  {what:<34} {path}" for what, path in outputs),
    ]
    return "\n".join(lines)


def _map_scene(
    data: DemoDataset,
    checkpoints: dict[str, Path],
    output: Path,
    results: dict[str, dict[str, float]],
    stream: TextIO,
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, float]]:
    """Predict the whole scene with each model of ``checkpoints`` (the teacher-free attentive
    student, the fine-only baseline): the exact label, each predicted map (titled with its test
    mIoU) and each map's pixel accuracy."""
    from tqdm import tqdm

    with rasterio.open(data.scene_label) as src:
        label = src.read(1)
    known = label != 255
    maps: dict[str, np.ndarray] = {}
    scene_accuracy: dict[str, float] = {}
    for name in tqdm(list(checkpoints), desc="whole scene", unit="map", file=stream):
        predictor = load_predictor(checkpoints[name])
        outputs = SceneOutputs(output / f"scene_{name}.tif")
        predict_scene(predictor, data.scene_image, outputs, InferenceOptions(overwrite=True))
        with rasterio.open(outputs.classes) as src:
            predicted = src.read(1)
        maps[f"{name} ({100 * results[name]['mIoU']:.1f} mIoU)"] = predicted
        scene_accuracy[name] = float(np.mean(predicted[known] == label[known]))
    return label, maps, scene_accuracy
