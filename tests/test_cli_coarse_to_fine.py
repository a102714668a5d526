"""``geodistill coarse-to-fine`` and ``geodistill export``: both stages from YAML, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from fixtures_small import CLASSES, TINY_MODEL, cli, make_dataset
from harness import assert_user_error

from geodistill.tasks import SegmentationTask


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("c2f_data")
    make_dataset(root / "coarse", n=6, seed=1)
    make_dataset(root / "fine", n=6, seed=2)
    make_dataset(root / "test", n=2, seed=3)
    make_dataset(root / "three_bands", n=4, bands=3, seed=4)
    return root


def c2f_config(data: Path, out: Path, **changes) -> dict:
    def domain(name: str) -> dict:
        return {"images": str(data / name / "images"), "labels": str(data / name / "labels")}

    config = {
        "output": str(out),
        "methods": ["fine_only", "attentive"],
        "teacher": {"max_epochs": 1, "model": {**TINY_MODEL, "lr": 0.01}},
        "student": {"max_epochs": 1, "model": {"temperature": 2.0}},
        "trainer": {"accelerator": "cpu", "enable_progress_bar": False},
        "data": {
            "classes": CLASSES,
            "coarse": {"train": domain("coarse")},
            "fine": {"train": domain("fine"), "test": domain("test"), "val_fraction": 0.34},
            "patch_size": 64,
            "crops_per_image": 1,
            "batch_size": 2,
            "eval_batch_size": 2,
            "cache": True,
        },
    }
    config.update(changes)
    return config


def write_yaml(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def two_stages(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("c2f_run") / "run"
    config = write_yaml(out.parent / "c2f.yaml", c2f_config(data, out))
    code, stdout, err = cli_outside_capsys("coarse-to-fine", "--config", str(config))
    assert code == 0, err
    assert "attentive" in stdout and "gap recovered" in stdout
    return out


def cli_outside_capsys(*args: str) -> tuple[int, str, str]:
    """Run a command in a module fixture (capsys is function-scoped): output through files."""
    import contextlib
    import io

    from geodistill.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def test_one_command_runs_both_stages_and_exports_a_teacher_free_student(two_stages):
    report = json.loads((two_stages / "results.json").read_text())
    assert list(report["results"]) == ["fine_only", "coarse_only", "attentive"]
    assert report["teacher"].endswith("coarse_only/checkpoints/best.ckpt")
    for metrics in report["results"].values():
        assert 0.0 <= metrics["mIoU"] <= 1.0
    student = torch.load(two_stages / "attentive" / "student.ckpt", weights_only=False)
    assert all(k.startswith(("model.", "criterion.")) for k in student["state_dict"])
    assert "teacher" not in student["hyper_parameters"]
    task = SegmentationTask.load_from_checkpoint(two_stages / "attentive" / "student.ckpt")
    assert task.class_names == CLASSES


def test_stage_two_from_an_existing_teacher(two_stages, data, tmp_path, capsys):
    out = tmp_path / "again"
    config = write_yaml(tmp_path / "c2f.yaml", c2f_config(data, out))
    teacher = two_stages / "coarse_only" / "checkpoints" / "best.ckpt"
    code, stdout, err = cli(
        capsys, "coarse-to-fine", "--config", str(config), "--teacher", str(teacher),
        "--methods", "lwf",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((out / "results.json").read_text())
    assert list(report["results"]) == ["lwf"]
    assert not (out / "coarse_only").exists()  # stage 1 was not trained again
    assert report["teacher"] == str(teacher)


def test_export_command_and_refusal_to_overwrite(two_stages, tmp_path, capsys):
    best = two_stages / "attentive" / "checkpoints" / "best.ckpt"
    target = tmp_path / "student.ckpt"
    code, stdout, err = cli(capsys, "export", str(best), "-o", str(target))
    assert code == 0, err
    assert target.is_file()
    code, _, err = cli(capsys, "export", str(best), "-o", str(target))
    assert_user_error(code, err, str(target), "exists")
    assert cli(capsys, "export", str(best), "-o", str(target), "--overwrite")[0] == 0


def _unknown_method(config: dict, data: Path) -> tuple[dict, tuple[str, ...]]:
    return {**config, "methods": ["attentive", "magic"]}, ("magic",)


def _unknown_student_argument(config: dict, data: Path) -> tuple[dict, tuple[str, ...]]:
    config["student"]["model"]["temprature"] = 3.0
    return config, ("temprature", "student.model")


def _missing_teacher(config: dict, data: Path) -> tuple[dict, tuple[str, ...]]:
    missing = str(data / "nowhere.ckpt")
    return {**config, "teacher_checkpoint": missing}, (missing,)


def _empty_fine_set(config: dict, data: Path) -> tuple[dict, tuple[str, ...]]:
    empty = data / "empty"
    empty.mkdir(exist_ok=True)
    config["data"]["fine"]["train"] = {"images": str(empty), "labels": str(empty)}
    return config, ("fine", "no image files")


def _empty_coarse_set(config: dict, data: Path) -> tuple[dict, tuple[str, ...]]:
    empty = data / "empty"
    empty.mkdir(exist_ok=True)
    config["data"]["coarse"]["train"] = {"images": str(empty), "labels": str(empty)}
    return config, ("coarse", "no image files")


def _oracle_without_exact_labels(config: dict, data: Path) -> tuple[dict, tuple[str, ...]]:
    return {**config, "methods": ["oracle"]}, ("exact_coarse_labels",)


BAD_CONFIGS = {
    "unknown method": _unknown_method,
    "unknown student argument": _unknown_student_argument,
    "missing teacher": _missing_teacher,
    "empty fine set": _empty_fine_set,
    "empty coarse set": _empty_coarse_set,
    "oracle without exact labels": _oracle_without_exact_labels,
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_is_one_clear_line_before_training(case, data, tmp_path, capsys):
    config, needles = BAD_CONFIGS[case](c2f_config(data, tmp_path / "out"), data)
    path = write_yaml(tmp_path / "bad.yaml", config)
    code, _, err = cli(capsys, "coarse-to-fine", "--config", str(path))
    assert_user_error(code, err, *needles)
    assert not (tmp_path / "out" / "coarse_only").exists()  # nothing trained


def test_teacher_trained_on_other_bands_is_refused(two_stages, data, tmp_path, capsys):
    config = c2f_config(data, tmp_path / "out", methods=["attentive"])
    bands3 = data / "three_bands"
    three = {"images": str(bands3 / "images"), "labels": str(bands3 / "labels")}
    config["data"]["fine"] = {"train": three, "val_fraction": 0.25, "test_fraction": 0.25}
    teacher = two_stages / "coarse_only" / "checkpoints" / "best.ckpt"
    path = write_yaml(tmp_path / "bad.yaml", config)
    code, _, err = cli(capsys, "coarse-to-fine", "--config", str(path), "--teacher", str(teacher))
    assert_user_error(code, err, str(teacher), "4 bands")


def test_stage_two_alone_through_lightning_fit(two_stages, data, tmp_path, capsys):
    from fixtures_small import config_dict, write_config

    teacher = two_stages / "coarse_only" / "checkpoints" / "best.ckpt"
    config = config_dict(
        data / "fine",
        tmp_path / "fit",
        max_epochs=1,
        data={
            "coarse": {"train": {"images": str(data / "coarse" / "images")}},
            "unlabeled_from": "coarse",
        },
    )
    config["model"] = {
        "class_path": "geodistill.tasks.CoarseToFineTask",
        "init_args": {"teacher": str(teacher), "loss": "ce", "lr": 0.01},
    }
    path = write_config(tmp_path / "fit.yaml", config)
    code, _, err = cli(capsys, "fit", "--config", str(path))
    assert code == 0, err
    saved = torch.load(tmp_path / "fit" / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["hyper_parameters"]["teacher"] == str(teacher)
    assert saved["geodistill"]["teacher"] == str(teacher)
    assert not any(k.startswith("_teacher") for k in saved["state_dict"])
    exported = tmp_path / "student.ckpt"
    last = tmp_path / "fit" / "checkpoints" / "last.ckpt"
    assert cli(capsys, "export", str(last), "-o", str(exported))[0] == 0
    student = SegmentationTask.load_from_checkpoint(exported, map_location="cpu")
    assert student.hparams.encoder == TINY_MODEL["encoder"]  # the teacher's network, not a default
