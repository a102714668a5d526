"""The semi-supervised method's EMA evaluation and deployment choice, fusion weights (fixed, own
learning rate) and the distillation cap: hooks, checkpoints, export and one tiny fit + test."""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import numpy as np
import onnxruntime as ort
import pytest
import torch
from fixtures_small import (
    BAND_NAMES,
    TIMM_TEACHER,
    config_dict,
    make_dataset,
    semi_supervised_task,
    write_config,
)
from harness import quiet_trainer, run_quietly
from torch import Tensor
from torch.utils.data import DataLoader

from geodistill.errors import GeodistillError
from geodistill.export import ONNX_DEPLOYED_KEY, export_student
from geodistill.inference.predictors import load_checkpoint_predictor
from geodistill.methods import SemiSupervised
from geodistill.methods.semi_supervised import choose_deployed, ema_decay_at
from geodistill.models.checkpoint import (
    deployed_checkpoint,
    load_trained_network,
    network_from_checkpoint,
    read_checkpoint,
)
from geodistill.models.fusion import FeatureFusion, FusionConfig
from geodistill.models.teachers import build_teacher
from geodistill.tasks import SegmentationTask

EMA_PREFIX = "distillation.ema.module."


def make_task(lr: float = 0.01, **kwargs: Any) -> SegmentationTask:
    return semi_supervised_task(lr=lr, **kwargs)


def method(task: SegmentationTask) -> SemiSupervised:
    assert isinstance(task.distillation, SemiSupervised)
    return task.distillation


def drift(task: SegmentationTask, seed: int = 0) -> None:
    """Move the student away from its EMA copy."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in task.model.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=generator))


def batches(seed: int = 0) -> dict[str, dict[str, Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(2, 4, 64, 64, generator=generator)
    image[1, :, :16] = float("nan")
    mask = (image[:, 0] > 0.5).long()
    mask[torch.isnan(image).any(1)] = 255
    weak = torch.rand(3, 4, 64, 64, generator=generator)
    return {
        "labeled": {"image": image, "mask": mask},
        "unlabeled": {"image": weak, "mask": torch.full((3, 64, 64), 255)},
    }


def labelled(count: int = 2) -> DataLoader:
    """``count`` labelled batches as one data loader."""
    return DataLoader([batches(seed)["labeled"] for seed in range(count)], batch_size=None)


def capture_logs(task: SegmentationTask, monkeypatch) -> dict[str, Tensor]:
    logs: dict[str, Tensor] = {}
    monkeypatch.setattr(task, "log", lambda name, value, **_: logs.__setitem__(name, value))
    monkeypatch.setattr(task, "log_dict", lambda values, **_: logs.update(values))
    return logs


def save(task: SegmentationTask, path: Path) -> Path:
    """A checkpoint of ``task`` as Lightning writes it (state, hyper-parameters, metadata)."""
    checkpoint: dict[str, Any] = {
        "state_dict": task.state_dict(),
        "hyper_parameters": dict(task.hparams),
        "pytorch-lightning_version": L.__version__,
    }
    task.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


def exported_weights(task: SegmentationTask, tmp_path: Path, name: str) -> dict[str, Any]:
    source = save(task, tmp_path / f"{name}.ckpt")
    exported = export_student(source, tmp_path / f"{name}_student.ckpt")
    return torch.load(exported, map_location="cpu", weights_only=False)


def assert_same_weights(state: dict[str, Tensor], network: torch.nn.Module) -> None:
    expected = network.state_dict()
    assert set(state) == {f"model.{k}" for k in expected}
    for key, value in expected.items():
        assert torch.equal(state[f"model.{key}"], value), key


# --------------------------------------------------------------------------------------------
# options


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"deploy": "teacher"}, "deploy must be one of 'best', 'student', 'ema', got 'teacher'"),
        ({"fusion_weights": "frozen"}, "fusion_weights must be one of 'learned', 'fixed'"),
        ({"fusion_lr": 0.1}, "fusion_lr .* needs fusion: true and fusion_weights: learned"),
        (
            {"teachers": [TIMM_TEACHER], "fusion": True, "fusion_weights": "fixed", "fusion_lr": 1},
            "fusion_lr .* needs fusion: true and fusion_weights: learned",
        ),
        ({"teachers": [TIMM_TEACHER], "fusion": True, "fusion_lr": 0.0}, "fusion_lr must be > 0"),
        ({"max_distill_ratio": 0.0}, "max_distill_ratio must be > 0 or null, got 0.0"),
        ({"max_distill_ratio": -1.0}, "max_distill_ratio must be > 0 or null"),
    ],
)
def test_bad_new_settings_are_refused(kwargs, message):
    with pytest.raises(GeodistillError, match=f"model.distillation.{message}"):
        make_task(**kwargs)


def test_the_new_options_round_trip_and_old_hyper_parameters_still_load():
    options = {
        "fusion": True,
        "fusion_weights": "learned",
        "fusion_lr": 0.1,
        "max_distill_ratio": 0.5,
        "deploy": "ema",
    }
    task = make_task(teachers=[TIMM_TEACHER], **options)
    recorded = task.hparams["distillation"]["init_args"]
    assert {k: recorded[k] for k in options} == options
    rebuilt = SegmentationTask(**dict(task.hparams))
    rebuilt.load_state_dict(task.state_dict())  # strict: EMA metrics add no state
    assert method(rebuilt).settings == method(task).settings
    fixed = make_task(teachers=[TIMM_TEACHER], fusion=True, fusion_weights="fixed")
    assert fixed.hparams["arch_kwargs"]["fusion"]["mixing"] == "fixed"
    SegmentationTask(**dict(fixed.hparams)).load_state_dict(fixed.state_dict())
    # Hyper-parameters written before these options: the defaults, the same state.
    old = dict(task.hparams)
    init_args = {k: v for k, v in recorded.items() if k not in options}
    old["distillation"] = {**old["distillation"], "init_args": {**init_args, "fusion": True}}
    fusion = {k: v for k, v in old["arch_kwargs"]["fusion"].items() if k != "mixing"}
    old["arch_kwargs"] = {**old["arch_kwargs"], "fusion": fusion}
    again = SegmentationTask(**old)
    again.load_state_dict(task.state_dict())
    settings = method(again).settings
    assert settings["deploy"] == "best" and settings["fusion_weights"] == "learned"
    assert settings["fusion_lr"] is None and settings["max_distill_ratio"] is None


def test_a_checkpoint_without_a_deployment_record_deploys_the_student():
    task = make_task(deploy="best")
    semi = method(task)
    semi.on_validation_scores(task, {"student": 0.1, "ema": 0.9})
    assert task.deployed_name() == "ema"
    task.on_load_checkpoint({"geodistill": {"band_names": BAND_NAMES}})  # older: no "deployed"
    assert task.deployed_name() == "student" and task.deployed_model() is task.model


# --------------------------------------------------------------------------------------------
# evaluating the EMA, choosing the deployed network


def test_choose_deployed():
    assert choose_deployed("best", None) == "student"
    assert choose_deployed("best", {"student": 0.5, "ema": 0.6}) == "ema"
    assert choose_deployed("best", {"student": 0.6, "ema": 0.5}) == "student"
    assert choose_deployed("best", {"student": 0.5, "ema": 0.5}) == "student"
    assert choose_deployed("best", {"student": 0.5, "ema": math.nan}) == "student"
    assert choose_deployed("ema", {"student": 0.9, "ema": 0.1}) == "ema"
    assert choose_deployed("student", {"student": 0.1, "ema": 0.9}) == "student"


def test_validation_scores_the_ema_beside_the_student(tmp_path):
    task = make_task()
    semi = method(task)
    trainer = quiet_trainer(default_root_dir=tmp_path)
    (first,) = trainer.validate(task, dataloaders=labelled(), verbose=False)
    # Right after building, the EMA is a copy of the student: the same scores.
    assert first["val/ema/mIoU"] == pytest.approx(first["val/mIoU"])
    assert {k.removeprefix("val/ema/") for k in first if k.startswith("val/ema/")} == {
        k.removeprefix("val/") for k in first if k.startswith("val/") and "/ema/" not in k
    } - {"loss"}
    drift(task)
    (second,) = trainer.validate(task, dataloaders=labelled(), verbose=False)
    assert second["val/ema/mIoU"] == pytest.approx(first["val/ema/mIoU"])  # the EMA stayed
    assert second["val/mIoU"] != pytest.approx(first["val/mIoU"])  # the student moved
    assert semi._scores == pytest.approx(
        {"student": second["val/mIoU"], "ema": second["val/ema/mIoU"]}
    )
    expected = "ema" if second["val/ema/mIoU"] > second["val/mIoU"] else "student"
    assert task.deployed_name() == expected


@pytest.mark.parametrize(
    ("deploy", "scores", "network"),
    [
        ("ema", None, "ema"),
        ("student", {"student": 0.2, "ema": 0.7}, "student"),
        ("best", {"student": 0.2, "ema": 0.7}, "ema"),
        ("best", {"student": 0.7, "ema": 0.2}, "student"),
    ],
)
def test_checkpoints_record_and_export_the_deployed_network(deploy, scores, network, tmp_path):
    task = make_task(deploy=deploy)
    semi = method(task)
    drift(task)  # the EMA keeps the initial weights, the student moves
    if scores is not None:
        semi.on_validation_scores(task, scores)
    checkpoint = torch.load(save(task, tmp_path / "run.ckpt"), weights_only=False)
    record = checkpoint["geodistill"]["deployed"]
    prefix = EMA_PREFIX if network == "ema" else "model."
    assert record == {
        "network": network,
        "state_prefix": prefix,
        "deploy": deploy,
        "val_mIoU": scores,
    }
    assert checkpoint["geodistill"]["band_names"] == BAND_NAMES  # next to the other metadata
    saved = exported_weights(task, tmp_path, "run")
    deployed = semi.ema.module if network == "ema" else task.model
    assert_same_weights(saved["state_dict"], deployed)
    assert saved["geodistill"]["deployed"] == {
        "network": network,
        "deploy": deploy,
        "val_mIoU": scores,
    }
    assert saved["hyper_parameters"].get("distillation") is None
    student = SegmentationTask.load_from_checkpoint(tmp_path / "run_student.ckpt").eval()
    x = torch.rand(2, 4, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(student(x), deployed.eval()(x), atol=1e-6, rtol=0)
    # A reloaded training checkpoint deploys the same network, from the recorded scores.
    reloaded = SegmentationTask.load_from_checkpoint(tmp_path / "run.ckpt")
    assert reloaded.deployed_name() == network


def test_test_and_predict_run_the_deployed_network(tmp_path):
    task = make_task(deploy="ema")
    drift(task)
    trainer = quiet_trainer(default_root_dir=tmp_path)
    (results,) = trainer.test(task, dataloaders=labelled(), verbose=False)
    assert results["test/mIoU"] == results["test/ema/mIoU"]
    assert results["test/mIoU"] != results["test/student/mIoU"]
    saved = json.loads((tmp_path / "test_metrics.json").read_text())
    assert saved["mIoU"] == pytest.approx(results["test/ema/mIoU"])
    # both networks' scores are written too, for a comparison's run records
    assert saved["ema/mIoU"] == pytest.approx(results["test/ema/mIoU"])
    assert saved["student/mIoU"] == pytest.approx(results["test/student/mIoU"])
    batch = {**batches()["labeled"], "index": torch.tensor([0, 1]), "shape": torch.tensor([64, 64])}
    task.eval()
    with torch.no_grad():
        probs = task.predict_step(batch, 0)["probs"]
        torch.testing.assert_close(probs, method(task).ema.module(batch["image"]).softmax(1))


# --------------------------------------------------------------------------------------------
# fusion weights, the distillation cap, the curves


def fake_trainer(task: SegmentationTask, steps: int) -> None:
    task._trainer = SimpleNamespace(estimated_stepping_batches=steps)  # what the optimiser reads


def test_fusion_lr_gives_the_fusion_weights_their_own_scheduled_group():
    task = make_task(teachers=[TIMM_TEACHER], fusion=True, fusion_lr=0.5, lr=0.01)
    task.hparams.warmup_fraction = 0.2
    fake_trainer(task, 10)
    configured = task.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    default, fusion = optimizer.param_groups
    mix = task.model.fusion.mix_logits
    assert len(fusion["params"]) == 1 and fusion["params"][0] is mix
    assert not any(p is mix for p in default["params"])
    trainable = [p for p in task.parameters() if p.requires_grad]
    assert len(default["params"]) + 1 == len(trainable)
    assert default["weight_decay"] == fusion["weight_decay"] == task.hparams.weight_decay
    for step in range(10):  # warm-up (2 steps) then poly decay, the same factor for both
        factor = scheduler.lr_lambdas[0](step)
        assert default["lr"] == pytest.approx(0.01 * factor)
        assert fusion["lr"] == pytest.approx(0.5 * factor)
        optimizer.step()
        scheduler.step()
    # Without fusion_lr: one group, every trainable parameter at the task's lr.
    plain = make_task(teachers=[TIMM_TEACHER], fusion=True, lr=0.01)
    fake_trainer(plain, 10)
    (group,) = plain.configure_optimizers()["optimizer"].param_groups
    assert group["params"] == [p for p in plain.parameters() if p.requires_grad]
    assert group["lr"] == 0.01


def test_fixed_fusion_weights_never_train():
    fusion = FeatureFusion(32, FusionConfig([8, 8], mixing="fixed"))
    torch.testing.assert_close(fusion.weights, torch.tensor([0.8, 0.1, 0.1]))
    assert "mix_logits" in dict(fusion.named_buffers())
    assert not any(name == "mix_logits" for name, _ in fusion.named_parameters())
    with pytest.raises(GeodistillError, match="fusion.mixing must be one of"):
        FusionConfig([8], mixing="frozen")  # type: ignore[arg-type]
    task = make_task(teachers=[TIMM_TEACHER, TIMM_TEACHER], fusion=True, fusion_weights="fixed")
    before = task.model.fusion.mix_logits.clone()
    fake_trainer(task, 4)
    optimizer = task.configure_optimizers()["optimizer"]
    task.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a trainer
        loss = method(task).training_step(task, batches()).loss
    loss.backward()
    optimizer.step()
    assert torch.equal(task.model.fusion.mix_logits, before)
    torch.testing.assert_close(task.model.fusion.weights, torch.tensor([0.8, 0.1, 0.1]))
    assert any(p.grad is not None for p in task.model.fusion.translators.parameters())
    assert "model.fusion.mix_logits" in task.state_dict()


def test_max_distill_ratio_caps_the_distillation_term(monkeypatch):
    def step(**kwargs: Any) -> tuple[Tensor, dict[str, Tensor]]:
        torch.manual_seed(0)
        task = make_task(teachers=[TIMM_TEACHER], distill_weight=50.0, **kwargs)
        task.train()
        logs = capture_logs(task, monkeypatch)
        return task.training_step(batches(), 0), logs

    loss, logs = step(max_distill_ratio=0.25)
    weight = logs["train/distill_weight_effective"]
    supervised, distill = logs["train/loss_supervised"], logs["train/loss_distill"]
    assert 50.0 * distill > 0.25 * supervised  # so the cap acts
    assert weight < 50.0
    assert (weight * distill).item() == pytest.approx(0.25 * supervised.item(), rel=1e-5)
    expected = supervised + logs["train/loss_unsupervised"] + weight * distill
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # Off (the default) or far above the step's ratio: the configured weight.
    for kwargs in ({}, {"max_distill_ratio": 1e9}):
        loss, logs = step(**kwargs)
        assert logs["train/distill_weight_effective"].item() == 50.0
        expected = (
            logs["train/loss_supervised"]
            + logs["train/loss_unsupervised"]
            + 50.0 * logs["train/loss_distill"]
        )
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_the_ema_curves_are_logged_every_step(monkeypatch):
    task = make_task(ema_decay=0.9)
    semi = method(task)
    logs = capture_logs(task, monkeypatch)
    task.train()
    task.training_step(batches(), 0)
    assert logs["train/ema_decay"].item() == 0.0  # the first update copies the student
    assert logs["train/ema_distance"].item() == 0.0  # the EMA starts as a copy
    assert 0 <= logs["train/pseudo_label_ratio"].item() <= 1
    drift(task)
    for _ in range(5):
        semi.update_ema()
    task.training_step(batches(), 0)
    assert logs["train/ema_decay"].item() == pytest.approx(ema_decay_at(5, 0.9))
    drift(task, seed=1)
    task.training_step(batches(), 0)
    ema = torch.cat([p.flatten() for p in semi.ema.module.parameters()])
    student = torch.cat([p.flatten() for p in task.model.parameters()])
    expected = (ema - student).norm() / student.norm()
    assert logs["train/ema_distance"].item() == pytest.approx(expected.item(), rel=1e-4)


# --------------------------------------------------------------------------------------------
# end to end: geodistill fit, test and export


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> SimpleNamespace:
    """Two random timm teachers, fixed fusion, the distillation cap, deploy "best"."""
    root = tmp_path_factory.mktemp("semi_deploy")
    data = make_dataset(root / "train", n=10, seed=1)
    out = root / "run"
    config = config_dict(
        data,
        out,
        max_epochs=2,
        data={
            "fine": {
                "train": {"images": str(data / "images"), "labels": str(data / "labels")},
                "val_fraction": 0.2,
                "test_fraction": 0.2,
                "train_ratio": 0.5,
            },
            "unlabeled_from": "rest",
            "unlabeled_batch_size": 2,
        },
    )
    config["trainer"]["log_every_n_steps"] = 1
    config["model"]["init_args"]["distillation"] = {
        "class_path": "geodistill.methods.SemiSupervised",
        "init_args": {
            "threshold": 0.6,
            "teachers": [TIMM_TEACHER, TIMM_TEACHER],
            "fusion": True,
            "fusion_weights": "fixed",
            "max_distill_ratio": 0.5,
        },
    }
    path = write_config(root / "fit.yaml", config)
    code, _, err = run_quietly("fit", "--config", str(path))
    assert code == 0, err
    last = out / "checkpoints" / "last.ckpt"
    code, _, err = run_quietly("test", "--config", str(path), "--ckpt_path", str(last))
    assert code == 0, err
    rows: dict[str, list[dict[str, str]]] = {}
    for metrics in sorted(out.glob("logs/version_*/metrics.csv")):
        with metrics.open() as f:
            rows[metrics.parent.name] = list(csv.DictReader(f))
    return SimpleNamespace(out=out, last=last, fit=rows["version_0"], test=rows["version_1"])


def column(rows: list[dict[str, str]], name: str) -> list[float]:
    return [float(row[name]) for row in rows if row.get(name)]


def test_a_fit_logs_the_curves_and_both_validation_scores(run):
    checkpoint = torch.load(run.last, map_location="cpu", weights_only=False)
    steps = checkpoint["global_step"]
    assert steps >= 2
    for name in ("pseudo_label_ratio", "ema_decay", "ema_distance", "distill_weight_effective"):
        assert len(column(run.fit, f"train/{name}")) == steps, name  # every step
    assert all(w <= 1.0 for w in column(run.fit, "train/distill_weight_effective"))
    student, ema = column(run.fit, "val/mIoU"), column(run.fit, "val/ema/mIoU")
    assert len(student) == len(ema) == 2
    record = checkpoint["geodistill"]["deployed"]
    assert record["deploy"] == "best"
    assert record["val_mIoU"] == pytest.approx({"student": student[-1], "ema": ema[-1]})
    network = choose_deployed("best", record["val_mIoU"])
    assert record["network"] == network
    assert record["state_prefix"] == (EMA_PREFIX if network == "ema" else "model.")
    mix = checkpoint["state_dict"]["model.fusion.mix_logits"]
    torch.testing.assert_close(mix.softmax(0), torch.tensor([0.8, 0.1, 0.1]))  # never trained
    assert checkpoint["hyper_parameters"]["arch_kwargs"]["fusion"]["mixing"] == "fixed"


def test_testing_the_training_checkpoint_scores_the_deployed_network(run):
    (row,) = [row for row in run.test if row.get("test/mIoU")]
    network = torch.load(run.last, weights_only=False)["geodistill"]["deployed"]["network"]
    assert row["test/mIoU"] == row[f"test/{network}/mIoU"]
    assert row.get("test/student/mIoU") and row.get("test/ema/mIoU")
    (saved,) = run.out.glob("logs/version_1/test_metrics.json")
    assert json.loads(saved.read_text())["mIoU"] == pytest.approx(float(row["test/mIoU"]))


def test_the_export_is_the_deployed_network_with_its_fixed_fusion(run, tmp_path):
    source = torch.load(run.last, map_location="cpu", weights_only=False)
    record = source["geodistill"]["deployed"]
    exported = torch.load(
        export_student(run.last, tmp_path / "student.ckpt"), map_location="cpu", weights_only=False
    )
    for key, value in exported["state_dict"].items():
        origin = record["state_prefix"] + key.removeprefix("model.")
        assert torch.equal(value, source["state_dict"][origin]), key
    assert exported["geodistill"]["deployed"]["network"] == record["network"]
    mix = exported["state_dict"]["model.fusion.mix_logits"]
    torch.testing.assert_close(mix.softmax(0), torch.tensor([0.8, 0.1, 0.1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_path = export_student(run.last, tmp_path / "student.onnx")  # checks parity
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    meta = json.loads(session.get_modelmeta().custom_metadata_map[ONNX_DEPLOYED_KEY])
    assert meta["network"] == record["network"] and "state_prefix" not in meta
    student = SegmentationTask.load_from_checkpoint(tmp_path / "student.ckpt").eval()
    assert student.model.fusion.config.mixing == "fixed"
    x = torch.rand(1, 4, 64, 64)
    with torch.no_grad():
        reference = student(x).numpy()
    np.testing.assert_allclose(session.run(None, {"image": x.numpy()})[0], reference, atol=1e-4)


# --------------------------------------------------------------------------------------------
# readers of a training checkpoint: predict/infer, the geodistill teacher kind


def ema_checkpoint(tmp_path: Path) -> tuple[SegmentationTask, Path]:
    """A training checkpoint that deploys the EMA, whose weights differ from the student's."""
    task = make_task(deploy="ema")
    drift(task)
    return task, save(task, tmp_path / "run.ckpt")


def test_every_checkpoint_reader_rebuilds_the_deployed_network(tmp_path):
    task, path = ema_checkpoint(tmp_path)
    ema = method(task).ema.module
    network = network_from_checkpoint(read_checkpoint(path), path)
    assert_same_weights({f"model.{k}": v for k, v in network.state_dict().items()}, ema)
    teacher = build_teacher({"kind": "geodistill", "path": str(path)}, list(BAND_NAMES))
    assert_same_weights(
        {f"model.{k}": v for k, v in teacher.network.model.state_dict().items()}, ema
    )
    # geodistill predict/infer on the training checkpoint = on its exported student.
    exported = export_student(path, tmp_path / "student.ckpt")
    image = np.random.default_rng(0).random((2, 4, 64, 64), dtype=np.float32)
    image[1, :, :8] = np.nan
    probs = load_checkpoint_predictor(path).predict(image)
    np.testing.assert_array_equal(probs, load_checkpoint_predictor(exported).predict(image))
    with torch.no_grad():
        expected = ema.eval()(torch.from_numpy(image)).softmax(1).numpy()
        student = task.model.eval()(torch.from_numpy(image)).softmax(1).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-6, rtol=0)
    assert np.abs(probs - student).max() > 1e-3  # the student would predict otherwise


def test_a_checkpoint_without_a_record_rebuilds_the_student(tmp_path):
    task, path = ema_checkpoint(tmp_path)
    checkpoint = read_checkpoint(path)
    del checkpoint["geodistill"]["deployed"]  # as written before the record existed
    assert deployed_checkpoint(checkpoint, path) is checkpoint
    network = network_from_checkpoint(checkpoint, path)
    assert_same_weights({f"model.{k}": v for k, v in network.state_dict().items()}, task.model)
    # A record deploying the student keeps the weights and drops the prefix.
    student = make_task(deploy="student")
    source = read_checkpoint(save(student, tmp_path / "student_run.ckpt"))
    resolved = deployed_checkpoint(source, path)
    assert resolved["state_dict"] is source["state_dict"]
    assert resolved["geodistill"]["deployed"]["network"] == "student"
    assert "state_prefix" not in resolved["geodistill"]["deployed"]
    assert "state_prefix" in source["geodistill"]["deployed"]  # the input is left as it was
    assert deployed_checkpoint(resolved, path) == resolved  # idempotent


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("drop_all", r"deploys the network 'ema', whose weights \(distillation\.ema\.module\.\*\)"
                     r" .* holds no weights there"),
        ("drop_one", r"holds other weights than the student's .*differing: "),
        ("prefix", r"holds no weights there"),
        ("record", r"unreadable geodistill.deployed record 'ema'"),
    ],
)  # fmt: skip
def test_a_record_that_does_not_match_the_weights_is_refused(damage, message, tmp_path):
    _, path = ema_checkpoint(tmp_path)
    checkpoint = torch.load(path, weights_only=False)
    state, record = checkpoint["state_dict"], checkpoint["geodistill"]["deployed"]
    ema_keys = [key for key in state if key.startswith(EMA_PREFIX)]
    if damage == "drop_all":
        for key in ema_keys:
            del state[key]
    elif damage == "drop_one":
        del state[ema_keys[0]]
    elif damage == "prefix":
        record["state_prefix"] = "distillation.nothing."
    else:
        checkpoint["geodistill"]["deployed"] = "ema"
    broken = tmp_path / "broken.ckpt"
    torch.save(checkpoint, broken)
    for read in (
        lambda: network_from_checkpoint(read_checkpoint(broken), broken),
        lambda: load_checkpoint_predictor(broken),
        lambda: load_trained_network(broken),
        lambda: export_student(broken, tmp_path / "student.ckpt"),
    ):
        with pytest.raises(GeodistillError, match=message) as caught:
            read()
        assert str(broken) in str(caught.value)
    assert not (tmp_path / "student.ckpt").exists()
