"""The coarse-to-fine recipe as a ``geodistill compare`` experiment, ``geodistill export``, and
stage two alone through ``geodistill fit``.

``configs/coarse_to_fine_demo.yaml`` is checked as it ships; a copy of it pointed at tiny
self-made data (a coarse and a fine domain) and the tiny student, 1 seed and 1 epoch, is run once
for the module with three of its variants and inspected by the tests.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from fixtures_small import TINY_MODEL, cli, config_dict, make_dataset, write_config
from harness import assert_refused, assert_user_error, run_cli, run_quietly

from geodistill.experiments import load_experiment, select_variants
from geodistill.tasks import SegmentationTask

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "coarse_to_fine_demo.yaml"
STAGE = "${stages.coarse_only.checkpoint}"
VARIANTS = [
    "fine_only",
    "naive_finetune",
    "joint",
    "lwf",
    "feature_kd",
    "oracle",
    "attentive",
    "attentive_features",
    "feature_only",
    "no_attention",
    "attentive_calibrated",
]
SELECTED = ["fine_only", "naive_finetune", "attentive"]
RECIPE_CLASSES = ["background", "mining"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The demo data's layout (coarse region A, fine region B, its test chips), tiny."""
    root = tmp_path_factory.mktemp("c2f_data")
    make_dataset(root / "coarse", n=4, seed=1)
    shutil.copytree(root / "coarse" / "labels", root / "coarse" / "fine_labels")  # the oracle's
    make_dataset(root / "fine", n=3, seed=2)
    make_dataset(root / "test", n=2, seed=3)
    make_dataset(root / "three_bands", n=4, bands=3, seed=4)
    return root


def tiny_recipe(data: Path, output: Path) -> dict[str, Any]:
    """The shipped recipe with its data paths on ``data``, the tiny student, 1 seed, 1 epoch."""
    recipe = yaml.safe_load(RECIPE.read_text().replace("outputs/demo/data", str(data)))
    recipe["output"] = str(output)
    recipe["seeds"] = [0]
    base = recipe["base"]
    base["trainer"].update(max_epochs=1, accelerator="cpu", enable_model_summary=False)
    base["model"]["init_args"] = {**TINY_MODEL, "loss": "ce", "lr": 0.01, "warmup_fraction": 0.0}
    base["data"]["init_args"].update(
        patch_size=64, crops_per_image=1, batch_size=2, unlabeled_batch_size=2, eval_batch_size=2
    )
    base["data"]["init_args"]["augment"] = False
    recipe["stages"]["coarse_only"]["overrides"]["trainer"]["max_epochs"] = 1
    for overrides in recipe["variants"].values():
        if "trainer" in overrides:
            overrides["trainer"]["max_epochs"] = 1
    return recipe


@pytest.fixture(scope="module")
def recipe_run(data, tmp_path_factory) -> dict[str, Path]:
    """The recipe copy, run once with three variants (in-process, output captured)."""
    root = tmp_path_factory.mktemp("c2f_run")
    path = write_config(root / "coarse_to_fine.yaml", tiny_recipe(data, root / "out"))
    code, stdout, err = run_quietly(
        "compare", "--config", str(path), "--variants", ",".join(SELECTED)
    )
    assert code == 0, err
    assert "| attentive |" in stdout
    out = root / "out"
    return {
        "root": root,
        "experiment": path,
        "out": out,
        "teacher": out / "stages" / "coarse_only" / "seed0" / "checkpoints" / "best.ckpt",
        "attentive": out / "attentive" / "base" / "seed0" / "checkpoints" / "best.ckpt",
    }


# --------------------------------------------------------------------------------------------
# the recipe as it ships


def test_the_recipe_is_an_experiment_with_a_teacher_stage_and_every_variant():
    experiment = load_experiment(RECIPE)
    assert list(experiment.stages) == ["coarse_only"]
    assert list(experiment.variants) == VARIANTS
    assert experiment.baseline == "fine_only" and experiment.metric == "test/mIoU"
    assert experiment.base["model"]["class_path"] == "geodistill.tasks.SegmentationTask"
    # Every distilling variant learns from the stage's teacher; the others train without one.
    for name in ("fine_only", "joint", "oracle"):
        assert experiment.needs[name] == (), name
    for name in set(VARIANTS) - {"fine_only", "joint", "oracle"}:
        assert experiment.needs[name] == ("coarse_only",), name
        distillation = experiment.variants[name]["model"]["init_args"]["distillation"]
        assert distillation["class_path"] == "geodistill.methods.CoarseToFine", name
        assert distillation["init_args"]["teacher"] == STAGE, name
    # A subset without a distilling variant needs no teacher.
    assert select_variants(experiment, ["fine_only", "joint"]).stages == {}
    assert list(select_variants(experiment, ["fine_only", "lwf"]).stages) == ["coarse_only"]


# --------------------------------------------------------------------------------------------
# the recipe, run on tiny data


def test_the_stage_and_the_selected_variants_run_and_nothing_else(recipe_run):
    out = recipe_run["out"]
    results = json.loads((out / "results.json").read_text())
    assert results["stages"] == ["coarse_only"]
    assert results["variants"] == SELECTED
    assert results["baseline"] == "fine_only"
    runs = {(run["kind"], run["name"]) for run in results["runs"]}
    assert runs == {("stage", "coarse_only")} | {("variant", name) for name in SELECTED}
    assert len(results["runs"]) == 4  # one seed
    for run in results["runs"]:
        assert 0.0 <= run["metrics"]["test/mIoU"] <= 1.0, run["name"]
        assert Path(run["checkpoint"]).is_file(), run["name"]
    assert recipe_run["teacher"].is_file()
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted([*SELECTED, "stages"])
    table = (out / "results.md").read_text()
    assert "## stages" in table and "| coarse_only | shared |" in table
    for name in SELECTED:
        assert f"| {name} |" in table
    assert "| joint |" not in table


def test_distilling_variants_learn_from_the_stage_checkpoint(recipe_run):
    out = recipe_run["out"]
    for name in ("naive_finetune", "attentive"):
        config = yaml.safe_load((out / name / "base" / "seed0" / "config.yaml").read_text())
        distillation = config["model"]["init_args"]["distillation"]
        assert distillation["class_path"] == "geodistill.methods.CoarseToFine", name
        assert distillation["init_args"]["teacher"] == str(recipe_run["teacher"]), name
        saved = torch.load(
            out / name / "base" / "seed0" / "checkpoints" / "best.ckpt", weights_only=False
        )
        assert saved["geodistill"]["teacher"] == str(recipe_run["teacher"]), name
        assert not any("teacher" in key for key in saved["state_dict"]), name
    attentive = yaml.safe_load((out / "attentive" / "base" / "seed0" / "config.yaml").read_text())
    assert attentive["data"]["init_args"]["unlabeled_from"] == "coarse"
    fine_only = yaml.safe_load((out / "fine_only" / "base" / "seed0" / "config.yaml").read_text())
    assert fine_only["model"]["init_args"].get("distillation") is None
    stage = yaml.safe_load((out / "stages" / "coarse_only" / "seed0" / "config.yaml").read_text())
    assert stage["data"]["init_args"]["train_on"] == "coarse"


def test_an_existing_teacher_replaces_the_stage(recipe_run, data, tmp_path, capsys):
    recipe = tiny_recipe(data, tmp_path / "out")
    del recipe["stages"]
    text = yaml.safe_dump(recipe, sort_keys=False).replace(STAGE, str(recipe_run["teacher"]))
    path = tmp_path / "reuse.yaml"
    path.write_text(text)
    experiment = load_experiment(path)
    assert experiment.stages == {} and experiment.needs["attentive"] == ()
    missing = tmp_path / "nowhere.ckpt"
    path.write_text(text.replace(str(recipe_run["teacher"]), str(missing)))
    outcome = run_cli(capsys, "compare", "--config", path, "--variants", "fine_only,attentive")
    assert_refused(outcome, str(missing), "no such teacher file")
    assert not (tmp_path / "out" / "attentive" / "base" / "seed0" / "run.json").exists()
    assert not list(tmp_path.glob("out/**/*.ckpt")), "a run trained before the teacher was checked"


# --------------------------------------------------------------------------------------------
# export


def test_export_command_and_refusal_to_overwrite(recipe_run, tmp_path, capsys):
    best = recipe_run["attentive"]
    target = tmp_path / "student.ckpt"
    code, stdout, err = cli(capsys, "export", str(best), "-o", str(target))
    assert code == 0, err
    assert target.is_file()
    student = torch.load(target, weights_only=False)
    assert all(k.startswith(("model.", "criterion.")) for k in student["state_dict"])
    assert "teacher" not in student["hyper_parameters"]
    assert student["hyper_parameters"].get("distillation") is None
    task = SegmentationTask.load_from_checkpoint(target, map_location="cpu")
    assert task.class_names == RECIPE_CLASSES
    code, _, err = cli(capsys, "export", str(best), "-o", str(target))
    assert_user_error(code, err, str(target), "exists")
    assert cli(capsys, "export", str(best), "-o", str(target), "--overwrite")[0] == 0


# --------------------------------------------------------------------------------------------
# stage two alone through ``geodistill fit``


def distilled_fit_config(data: Path, out: Path, teacher: Path, fine: Path) -> dict[str, Any]:
    config = config_dict(
        fine,
        out,
        max_epochs=1,
        data={
            "coarse": {"train": {"images": str(data / "coarse" / "images")}},
            "unlabeled_from": "coarse",
            "classes": RECIPE_CLASSES,  # the teacher's
        },
    )
    config["model"] = {
        "class_path": "geodistill.tasks.SegmentationTask",
        "init_args": {
            "loss": "ce",
            "lr": 0.01,
            "distillation": {
                "class_path": "geodistill.methods.CoarseToFine",
                "init_args": {"teacher": str(teacher)},
            },
        },
    }
    return config


def test_teacher_trained_on_other_bands_is_refused(recipe_run, data, tmp_path, capsys):
    teacher = recipe_run["teacher"]
    config = distilled_fit_config(data, tmp_path / "fit", teacher, data / "three_bands")
    config["data"]["init_args"].pop("coarse")
    config["data"]["init_args"].pop("unlabeled_from")
    path = write_config(tmp_path / "bad.yaml", config)
    code, _, err = cli(capsys, "fit", "--config", str(path))
    assert_user_error(code, err, str(teacher), "4 bands")
    assert not (tmp_path / "fit" / "checkpoints").exists()  # nothing trained


def test_stage_two_alone_through_lightning_fit(recipe_run, data, tmp_path, capsys):
    teacher = recipe_run["teacher"]
    config = distilled_fit_config(data, tmp_path / "fit", teacher, data / "fine")
    path = write_config(tmp_path / "fit.yaml", config)
    code, _, err = cli(capsys, "fit", "--config", str(path))
    assert code == 0, err
    saved = torch.load(tmp_path / "fit" / "checkpoints" / "last.ckpt", weights_only=False)
    recorded = saved["hyper_parameters"]["distillation"]
    assert recorded["class_path"] == "geodistill.methods.CoarseToFine"
    assert recorded["init_args"]["teacher"] == str(teacher)
    assert list(saved["hyper_parameters"]["band_names"]) == saved["geodistill"]["band_names"]
    assert saved["geodistill"]["teacher"] == str(teacher)
    assert not any("teacher" in k for k in saved["state_dict"])
    exported = tmp_path / "student.ckpt"
    last = tmp_path / "fit" / "checkpoints" / "last.ckpt"
    assert cli(capsys, "export", str(last), "-o", str(exported))[0] == 0
    assert torch.load(exported, weights_only=False)["hyper_parameters"].get("distillation") is None
    student = SegmentationTask.load_from_checkpoint(exported, map_location="cpu")
    assert student.distillation is None
    assert student.hparams.encoder == TINY_MODEL["encoder"]  # the teacher's network, not a default
    assert student.class_names == RECIPE_CLASSES
