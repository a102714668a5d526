"""Distillation methods as components of the one task: registry, configs, checkpoints, export,
and the "adding a method" example of docs/architecture.md trained through the task."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from fixtures_small import CLASSES, TINY_MODEL, cli_main, config_dict, write_config

from geodistill.errors import GeodistillError
from geodistill.methods import (
    METHODS,
    CoarseToFine,
    KnowledgeTransfer,
    SemiSupervised,
    build_distillation,
    method_class,
)
from geodistill.models.checkpoint import read_checkpoint
from geodistill.tasks import SegmentationTask

ARCHITECTURE_PAGE = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
BANDS = ["b0", "b1", "b2", "b3"]  # fixtures_small's band descriptions


def test_registry_names_the_three_methods() -> None:
    assert {"coarse_to_fine", "knowledge_transfer", "semi_supervised"} <= set(METHODS)
    for name in ("knowledge_transfer", "KnowledgeTransfer", "geodistill.methods.KnowledgeTransfer"):
        assert method_class(name) is KnowledgeTransfer


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"class_path": "os.system", "init_args": {}}, "unknown method 'os.system'"),
        (
            {"class_path": "coarse_to_fine", "init_args": {"teecher": "x"}},
            "unknown option(s) teecher",
        ),
        ("coarse_to_fine", "must be a method"),
    ],
)
def test_a_method_config_is_refused_with_its_reason(value: Any, message: str) -> None:
    with pytest.raises(GeodistillError, match=re.escape(message)):
        build_distillation(value)


def test_a_method_needs_the_data_band_names(trained_run: dict[str, Path]) -> None:
    with pytest.raises(GeodistillError, match="model.band_names is needed"):
        SegmentationTask(
            in_channels=4, num_classes=2, distillation=CoarseToFine(str(trained_run["last"]))
        )


def _methods(teacher: str) -> dict[str, Any]:
    return {
        "coarse_to_fine": CoarseToFine(teacher, feature_levels=["encoder.-1", "decoder"]),
        "knowledge_transfer": KnowledgeTransfer(
            {"kind": "geodistill", "path": teacher, "layers": ["encoder.-1"]},
            student_levels=["encoder.-1"],
            modulation={"kind": "mlp", "depth": 1},
            aux_weight=0.4,
            aux_level="encoder.-1",
        ),
        "semi_supervised": SemiSupervised(
            [{"kind": "geodistill", "path": teacher, "layers": ["encoder.-1"]}], fusion=True
        ),
    }


@pytest.mark.parametrize("name", ["coarse_to_fine", "knowledge_transfer", "semi_supervised"])
def test_the_hyper_parameters_rebuild_the_same_task(
    trained_run: dict[str, Path], name: str
) -> None:
    teacher = str(trained_run["last"])
    task = SegmentationTask(
        in_channels=4,
        num_classes=2,
        class_names=CLASSES,
        band_names=BANDS,
        **TINY_MODEL,
        distillation=_methods(teacher)[name],
    )
    recorded = task.hparams["distillation"]
    assert recorded["class_path"] == f"geodistill.methods.{type(task.distillation).__name__}"
    rebuilt = SegmentationTask(**dict(task.hparams))
    rebuilt.load_state_dict(task.state_dict())  # strict: the same heads, the same student
    assert type(rebuilt.distillation) is type(task.distillation)
    assert rebuilt.distillation.settings == task.distillation.settings
    # Teachers are never part of the task's state; the student's own modules (modulation,
    # fusion) are, under model.
    assert not any(".teachers." in key or "teacher.network" in key for key in task.state_dict())


def _cli_config(data: Path, out: Path, distillation: dict[str, Any]) -> dict[str, Any]:
    config = config_dict(data, out, max_epochs=1)
    config["model"]["init_args"]["distillation"] = distillation
    return config


@pytest.mark.parametrize("name", ["coarse_to_fine", "knowledge_transfer", "semi_supervised"])
def test_each_method_trains_from_yaml_and_exports_the_student_alone(
    tmp_path: Path, trained_run: dict[str, Path], name: str
) -> None:
    teacher = str(trained_run["last"])
    layer = {"kind": "geodistill", "path": teacher, "layers": ["encoder.-1"]}
    distillation = {
        "coarse_to_fine": {"teacher": teacher},
        "knowledge_transfer": {
            "teacher": layer,
            "student_levels": ["encoder.-1"],
            "aux_level": "encoder.-1",
        },
        "semi_supervised": {"teachers": [layer]},
    }[name]
    cls = type(_methods(teacher)[name]).__name__
    config = _cli_config(
        trained_run["data"],
        tmp_path / "out",
        {"class_path": f"geodistill.methods.{cls}", "init_args": distillation},
    )
    if name == "semi_supervised":
        config["data"]["init_args"]["unlabeled_from"] = "rest"
        config["data"]["init_args"]["fine"]["train_limit"] = 1
    path = write_config(tmp_path / "fit.yaml", config)
    assert cli_main(["fit", "--config", str(path)]) == 0
    checkpoint = read_checkpoint(tmp_path / "out" / "checkpoints" / "last.ckpt")
    assert checkpoint["hyper_parameters"]["distillation"]["class_path"] == (
        f"geodistill.methods.{cls}"
    )
    assert checkpoint["hyper_parameters"]["band_names"] == BANDS
    assert checkpoint["geodistill"]["teacher"]  # the teachers' record, never their weights
    assert any(k.startswith("distillation.") for k in checkpoint["state_dict"]) == (
        name != "coarse_to_fine"  # same widths: coarse-to-fine needs no projection
    )
    # Export keeps the student alone (each method's own tests export and test it further).
    student = tmp_path / "student.ckpt"
    assert (
        cli_main(
            ["export", str(tmp_path / "out" / "checkpoints" / "last.ckpt"), "-o", str(student)]
        )
        == 0
    )
    exported = read_checkpoint(student)
    assert "distillation" not in exported["hyper_parameters"]
    assert all(k.startswith(("model.", "criterion.")) for k in exported["state_dict"])


def _example_source() -> str:
    """The Python block of the architecture page's "Adding a method" section."""
    text = ARCHITECTURE_PAGE.read_text()
    section = text[text.index("### Adding a method") :]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_architecture_page_example_method_trains_through_the_task(
    trained_run: dict[str, Path],
) -> None:
    namespace: dict[str, Any] = {}
    try:
        exec(compile(_example_source(), str(ARCHITECTURE_PAGE), "exec"), namespace)  # noqa: S102
        method = build_distillation(
            {"class_path": "logit_matching", "init_args": {"teacher": str(trained_run["last"])}}
        )
        task = SegmentationTask(
            in_channels=4,
            num_classes=2,
            class_names=CLASSES,
            band_names=BANDS,
            **TINY_MODEL,
            distillation=method,
        )
        torch.manual_seed(0)
        batch = {"image": torch.randn(2, 4, 32, 32), "mask": torch.randint(0, 2, (2, 32, 32))}
        step = task.distillation.training_step(task, batch)
        assert step.size == 2 and torch.isfinite(step.loss)
        assert float(step.logs["loss_kd"]) > 0  # an untrained student differs from its teacher
        step.loss.backward()
        assert all(p.grad is not None for p in task.model.parameters() if p.requires_grad)
        assert task.hparams["distillation"]["class_path"] == "geodistill.methods.LogitMatching"
    finally:
        METHODS.pop("logit_matching", None)


def test_the_config_files_name_methods_that_exist() -> None:
    configs = Path(__file__).resolve().parents[1] / "configs"
    found = 0
    for path in sorted(configs.glob("*.yaml")):
        for match in re.finditer(r"class_path:\s*(geodistill\.methods\.\w+)", path.read_text()):
            method_class(match.group(1))
            found += 1
    assert found >= 3, "the method configs name their method by class_path"


def test_compare_checks_every_method_variant_before_any_run(
    tmp_path: Path, trained_run: dict[str, Path]
) -> None:
    """Each variant's method is built from its settings and its teacher files checked up front;
    a teacher list (semi-supervised) survives the config parse that precedes that check."""
    from geodistill.experiments.file import load_experiment
    from geodistill.experiments.harness import check_runs
    from geodistill.experiments.runs import plan_runs

    teacher = {"kind": "geodistill", "path": str(trained_run["last"]), "layers": ["encoder.-1"]}
    base = config_dict(trained_run["data"], tmp_path / "unused", max_epochs=1)
    variants = {
        "plain": {},
        "semi": {
            "data": {"init_args": {"unlabeled_from": "rest"}},
            "model": {
                "init_args": {
                    "distillation": {
                        "class_path": "geodistill.methods.SemiSupervised",
                        "init_args": {"teachers": [teacher], "threshold": 0.9},
                    }
                }
            },
        },
    }
    experiment_file = write_config(
        tmp_path / "experiment.yaml",
        {"base": base, "output": str(tmp_path / "out"), "seeds": [0], "variants": variants},
    )
    experiment = load_experiment(experiment_file)
    check_runs(plan_runs(experiment, tmp_path / "out"), experiment)  # passes, builds nothing
    variants["semi"]["model"]["init_args"]["distillation"]["init_args"]["threshold"] = 1.5
    write_config(experiment_file, {"base": base, "seeds": [0], "variants": variants})
    experiment = load_experiment(experiment_file)
    with pytest.raises(GeodistillError, match=r"variants\.semi.*threshold must be in \(0, 1\]"):
        check_runs(plan_runs(experiment, tmp_path / "out"), experiment)
    assert not (tmp_path / "out").exists()
