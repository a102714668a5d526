"""The built-in demo end to end on a small synthetic dataset: both stages, run as a compare
experiment (its file, run folders and results), maps, figure, the teacher-free student, summary."""

from __future__ import annotations

import json

import numpy as np
import rasterio
from fixtures_small import TINY_MODEL, torch_threads

from geodistill.data.synthetic import CLASS_NAMES
from geodistill.demo import DEMO_VARIANTS, run_demo
from geodistill.experiments import load_experiment
from geodistill.models.checkpoint import read_checkpoint
from geodistill.tasks import SegmentationTask

SMALL = {"chip_size": 64, "n_coarse": 4, "n_fine": 6, "n_fine_test": 2, "scene_size": 96}


def test_demo_runs_both_stages_and_writes_every_output(tmp_path, monkeypatch):
    monkeypatch.setattr("geodistill.demo.DEMO_MODEL", {**TINY_MODEL, "lr": 0.01})
    with torch_threads(1):
        text = run_demo(tmp_path, epochs={"teacher": 1, "student": 1}, dataset=SMALL)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["test_mIoU"]) == {"fine_only", "coarse_only", "naive_finetune", "attentive"}
    assert all(0.0 <= v <= 1.0 for v in summary["test_mIoU"].values())
    table = (tmp_path / "metrics.md").read_text()
    assert "SYNTHETIC" in table and "| attentive |" in table and "| fine_only |" in table
    assert "| naive_finetune |" in table and "coarse_only = the stage-1 teacher" in table
    assert "attentive" in text and "fine_only" in text
    for name in ("fine_only", "attentive"):
        with (
            rasterio.open(tmp_path / f"scene_{name}.tif") as src,
            rasterio.open(tmp_path / "data" / "scene" / "scene.tif") as scene,
        ):
            assert src.crs == scene.crs and src.transform == scene.transform
            values = np.unique(src.read(1))
        assert set(values) <= {0, 1, 255}
    assert (tmp_path / "figure.png").stat().st_size > 10_000
    assert summary["student"] == str(tmp_path / "student.ckpt")
    student = SegmentationTask.load_from_checkpoint(summary["student"], map_location="cpu")
    assert student.class_names == list(CLASS_NAMES)
    assert student.distillation is None  # teacher-free: no method, no teacher, no heads
    exported = read_checkpoint(tmp_path / "student.ckpt")
    assert "distillation" not in exported["hyper_parameters"]
    assert not [k for k in exported["state_dict"] if k.startswith("distillation.")]
    # The runs: a compare experiment (its file loads), stage folder and one folder per variant.
    experiment = load_experiment(tmp_path / "experiment.yaml")
    assert list(experiment.stages) == ["coarse_only"] and experiment.baseline == "fine_only"
    assert list(experiment.variants) == list(DEMO_VARIANTS) and experiment.seeds == [0]
    runs = tmp_path / "runs"
    folders = [runs / "stages" / "coarse_only" / "seed0"]
    folders += [runs / name / "base" / "seed0" for name in DEMO_VARIANTS]
    for folder in folders:
        assert (folder / "checkpoints" / "best.ckpt").is_file(), folder
        record = json.loads((folder / "run.json").read_text())
        name = folder.parent.name if folder.parent.name != "base" else folder.parent.parent.name
        assert record["metrics"]["test/mIoU"] == summary["test_mIoU"][name]
    results = json.loads((runs / "results.json").read_text())
    assert len(results["runs"]) == 4 and results["baseline"] == "fine_only"
    assert (runs / "results.md").is_file() and (runs / "results.png").is_file()
