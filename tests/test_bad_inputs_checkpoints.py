"""Bad-input catalogue, checkpoints: loading one can never run code, and every broken one is one
clear line.

A real checkpoint with a pickle payload (:func:`harness.payload_checkpoint`) goes to every command
that reads checkpoints (export, infer, ``compare`` with a variant's teacher, ``fit`` with a
``geodistill`` teacher of each distillation method): the payload's marker file never appears, the
exit status is 2 with one line naming the checkpoint, and the output path is untouched (for
``compare``: no run folder, no checkpoint of the baseline that would run first). Files
that are broken without malice (truncated, random bytes, missing, a folder, no state_dict, an ONNX
model) get the same treatment from export and infer. Real checkpoints of every task still load.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from fixtures_small import TINY_MODEL, config_dict, write_config
from harness import Payload, assert_refused, payload_checkpoint, run_cli, tree_state

from geodistill.errors import GeodistillError
from geodistill.export import export_student
from geodistill.models.checkpoint import check_checkpoint, read_checkpoint
from geodistill.models.safe_load import read_weights_file

pytestmark = pytest.mark.usefixtures("in_tmp")


LEVELS = ["encoder.-3", "encoder.-2", "encoder.-1"]
CODE = "could run code"
"""The words every refusal of a code-carrying pickle uses."""


@pytest.fixture
def payload(trained_run, tmp_path) -> tuple[Path, Path]:
    """(a real checkpoint carrying a payload, the marker file its unpickling would create)."""
    marker = tmp_path / "marker"
    return payload_checkpoint(trained_run["last"], tmp_path / "payload.ckpt", marker), marker


# --------------------------------------------------------------------------------------------
# the payload, through every command that reads checkpoints


def _export_ckpt(ckpt: Path, run: dict[str, Any], tmp: Path) -> tuple[list[str], Path]:
    return ["export", str(ckpt), "-o", str(tmp / "student.ckpt")], tmp / "student.ckpt"


def _export_onnx(ckpt: Path, run: dict[str, Any], tmp: Path) -> tuple[list[str], Path]:
    return ["export", str(ckpt), "-o", str(tmp / "student.onnx")], tmp / "student.onnx"


def _infer(ckpt: Path, run: dict[str, Any], tmp: Path) -> tuple[list[str], Path]:
    images = run["data"] / "images" / "chip_00.tif"
    return ["infer", str(ckpt), str(images), "-o", str(tmp / "maps"), "--quiet"], tmp / "maps"


def _fit(method: str | None, arguments: Callable[[Path], dict[str, Any]]):
    """A ``fit`` command of a :class:`SegmentationTask` that takes the checkpoint through the
    init arguments ``arguments(checkpoint)``: those of the distillation method ``method``
    (``geodistill.methods.<method>``), or the task's own when ``method`` is ``None``."""

    def command(ckpt: Path, run: dict[str, Any], tmp: Path) -> tuple[list[str], Path]:
        config = config_dict(run["data"], tmp / "fit", max_epochs=1)
        init = {**TINY_MODEL, "loss": "ce", "lr": 0.01, "warmup_fraction": 0.0}
        if method is None:
            init.update(arguments(ckpt))
        else:
            class_path = f"geodistill.methods.{method}"
            init["distillation"] = {"class_path": class_path, "init_args": arguments(ckpt)}
        config["model"] = {"class_path": "geodistill.tasks.SegmentationTask", "init_args": init}
        if method == "SemiSupervised":
            config["data"]["init_args"]["unlabeled_from"] = "rest"
        return ["fit", "--config", str(write_config(tmp / "fit.yaml", config))], tmp / "fit"

    return command


def _spec(ckpt: Path) -> dict[str, Any]:
    return {"kind": "geodistill", "path": str(ckpt), "layers": LEVELS}


PAYLOAD_COMMANDS: dict[str, Callable[[Path, dict[str, Any], Path], tuple[list[str], Path]]] = {
    "export -o x.ckpt": _export_ckpt,
    "export -o x.onnx": _export_onnx,
    "infer": _infer,
    "fit KTDA teacher": _fit(
        "KnowledgeTransfer",
        lambda ckpt: {"teacher": _spec(ckpt), "student_levels": LEVELS, "modulation": None},
    ),
    "fit semi-supervised teachers": _fit(
        "SemiSupervised", lambda ckpt: {"teachers": [_spec(ckpt)]}
    ),
    "fit coarse-to-fine teacher": _fit("CoarseToFine", lambda ckpt: {"teacher": str(ckpt)}),
    "fit weights": _fit(None, lambda ckpt: {"weights": str(ckpt)}),
    "fit timm teacher": _fit(
        "KnowledgeTransfer",
        lambda ckpt: {
            "teacher": {"kind": "timm", "arch": "resnet18", "path": str(ckpt), "layers": [2, 3, 4]},
            "student_levels": LEVELS,
            "modulation": None,
        },
    ),
}


@pytest.mark.parametrize("case", list(PAYLOAD_COMMANDS))
def test_a_checkpoint_carrying_code_is_refused_unrun(case, payload, trained_run, tmp_path, capsys):
    checkpoint, marker = payload
    args, output = PAYLOAD_COMMANDS[case](checkpoint, trained_run, tmp_path)
    before = tree_state(output)
    outcome = run_cli(capsys, *args)
    assert not marker.exists(), "the payload ran"
    assert_refused(outcome, str(checkpoint), "refused", "`io.open`", CODE)
    assert tree_state(output) == before


# --------------------------------------------------------------------------------------------
# the payload as a compare variant's teacher: refused unrun, before the baseline trains


def _compare(ckpt: Path, run: dict[str, Any], tmp: Path) -> tuple[list[str], Path]:
    """An experiment whose baseline would run first and whose second variant distils the
    checkpoint (``CoarseToFine``)."""
    write_config(tmp / "base.yaml", config_dict(run["data"], tmp / "unused", max_epochs=1))
    distilled = {
        "class_path": "geodistill.methods.CoarseToFine",
        "init_args": {"teacher": str(ckpt)},
    }
    experiment = {
        "base": "base.yaml",
        "output": str(tmp / "compare"),
        "seeds": [0],
        "baseline": "plain",
        "variants": {
            "plain": {},
            "distilled": {"model": {"init_args": {"distillation": distilled}}},
        },
    }
    path = write_config(tmp / "experiment.yaml", experiment)
    return ["compare", "--config", str(path)], tmp / "compare"


def test_compare_refuses_a_payload_teacher_unrun(payload, trained_run, tmp_path, capsys):
    checkpoint, marker = payload
    args, output = _compare(checkpoint, trained_run, tmp_path)
    outcome = run_cli(capsys, *args)
    assert not marker.exists(), "the payload ran"
    assert_refused(outcome, str(checkpoint), "refused", "`io.open`", CODE)
    assert not list((output / "distilled").rglob("*.ckpt"))


def test_compare_refuses_a_payload_teacher_before_any_run(payload, trained_run, tmp_path, capsys):
    checkpoint, marker = payload
    args, output = _compare(checkpoint, trained_run, tmp_path)
    outcome = run_cli(capsys, *args)
    assert not marker.exists(), "the payload ran"
    assert_refused(outcome, str(checkpoint), "refused", "`io.open`", CODE)
    assert not list(output.rglob("*.ckpt")), "a run trained before the teacher was checked"
    assert tree_state(output) == {}


# --------------------------------------------------------------------------------------------
# broken without malice: export and infer


def _truncated(last: Path, tmp: Path) -> Path:
    data = last.read_bytes()
    (tmp / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    return tmp / "truncated.ckpt"


def _random_bytes(last: Path, tmp: Path) -> Path:
    (tmp / "random.ckpt").write_bytes(bytes(range(256)) * 64)
    return tmp / "random.ckpt"


def _empty(last: Path, tmp: Path) -> Path:
    (tmp / "empty.ckpt").write_bytes(b"")
    return tmp / "empty.ckpt"


def _folder(last: Path, tmp: Path) -> Path:
    (tmp / "folder.ckpt").mkdir()
    return tmp / "folder.ckpt"


def _no_state_dict(last: Path, tmp: Path) -> Path:
    torch.save({"epoch": 1, "hyper_parameters": {}}, tmp / "no_state.ckpt")
    return tmp / "no_state.ckpt"


def _not_a_dict(last: Path, tmp: Path) -> Path:
    torch.save([torch.zeros(2)], tmp / "list.ckpt")
    return tmp / "list.ckpt"


def _plain_pickle(last: Path, tmp: Path) -> Path:
    (tmp / "pickled.ckpt").write_bytes(pickle.dumps({"state_dict": {}}))
    return tmp / "pickled.ckpt"


def _unknown_global(last: Path, tmp: Path) -> Path:
    checkpoint = read_checkpoint(last)
    checkpoint["hyper_parameters"]["odd"] = Odd()
    torch.save(checkpoint, tmp / "odd.ckpt")
    return tmp / "odd.ckpt"


class Odd:
    """A harmless object of a type no geodistill checkpoint holds."""


BROKEN: dict[str, tuple[Callable[[Path, Path], Path], tuple[str, ...]]] = {
    "truncated": (_truncated, ("truncated or not a PyTorch file",)),
    "random bytes": (_random_bytes, ("truncated or not a PyTorch file",)),
    "empty file": (_empty, ("truncated or not a PyTorch file",)),
    "plain pickle": (_plain_pickle, ("truncated or not a PyTorch file",)),
    "missing": (lambda last, tmp: tmp / "missing.ckpt", ("no such",)),
    "folder": (_folder, ("folder",)),
    "no state_dict": (_no_state_dict, ("no state_dict",)),
    "not a dict": (_not_a_dict, ("holds a list",)),
    "unknown global": (_unknown_global, ("refused", "Odd`", CODE)),
}


@pytest.mark.parametrize("command", ["export", "infer"])
@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_checkpoint_is_one_line(case, command, trained_run, tmp_path, capsys):
    make, needles = BROKEN[case]
    checkpoint = make(trained_run["last"], tmp_path)
    if command == "export":
        output = tmp_path / "student.ckpt"
        args = ["export", str(checkpoint), "-o", str(output)]
    else:
        output = tmp_path / "maps"
        images = trained_run["data"] / "images" / "chip_00.tif"
        args = ["infer", str(checkpoint), str(images), "-o", str(output), "--quiet"]
    before = tree_state(output)
    outcome = run_cli(capsys, *args)
    assert_refused(outcome, str(checkpoint), *needles)
    assert tree_state(output) == before


@pytest.mark.parametrize("name", ["model.onnx", "scene.tif", "weights"])
def test_export_needs_a_ckpt(name, tmp_path, capsys):
    source = tmp_path / name
    source.write_bytes(b"\x08\x07\x12\x04onnx")  # the bytes never matter: refused by kind
    output = tmp_path / "student.ckpt"
    outcome = run_cli(capsys, "export", str(source), "-o", str(output))
    line = assert_refused(outcome, str(source), "export needs a geodistill .ckpt checkpoint")
    assert ("ONNX model" in line) == name.endswith(".onnx")
    assert tree_state(output) == {}


# --------------------------------------------------------------------------------------------
# what the project wrote keeps loading; weights files follow the same rule


def test_the_project_checkpoints_load_weights_only(trained_run, tmp_path):
    last = trained_run["last"]
    checkpoint = read_checkpoint(last)
    assert any(key.startswith("model.") for key in checkpoint["state_dict"])
    assert torch.serialization.get_unsafe_globals_in_checkpoint(last) == []
    check_checkpoint(last)
    student = export_student(last, tmp_path / "student.ckpt")  # an exported student, too
    assert torch.serialization.get_unsafe_globals_in_checkpoint(student) == []
    assert read_checkpoint(student)["state_dict"].keys() <= checkpoint["state_dict"].keys()
    # a task built in Python may record paths (teacher=Path(...)); the legacy format loads too
    checkpoint["hyper_parameters"]["teacher"] = Path("/somewhere/teacher.ckpt")
    torch.save(checkpoint, tmp_path / "path.ckpt")
    torch.save(checkpoint, tmp_path / "legacy.ckpt", _use_new_zipfile_serialization=False)
    for name in ("path.ckpt", "legacy.ckpt"):
        again = read_checkpoint(tmp_path / name)
        assert again["hyper_parameters"]["teacher"] == Path("/somewhere/teacher.ckpt")
        assert again["state_dict"].keys() == checkpoint["state_dict"].keys()


def test_weights_files_are_read_weights_only(trained_run, tmp_path):
    marker = tmp_path / "marker"
    weights = payload_checkpoint(trained_run["last"], tmp_path / "encoder.pth", marker)
    with pytest.raises(GeodistillError, match="refused: the weights file's pickle") as error:
        read_weights_file(weights)
    assert str(weights) in str(error.value) and "\n" not in str(error.value)
    legacy = tmp_path / "legacy.pth"
    state = {"state_dict": {"w": torch.zeros(2)}, "args": __import__("argparse").Namespace(a=1)}
    torch.save({**state, "payload": Payload(marker)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(GeodistillError, match="`io.open`"):
        read_weights_file(legacy)
    assert not marker.exists()
    torch.save(state, tmp_path / "timm_training.pth")  # timm records its args as a Namespace
    assert read_weights_file(tmp_path / "timm_training.pth")["args"].a == 1
    broken = tmp_path / "encoder.safetensors"
    broken.write_bytes(b"\xff" * 64)
    with pytest.raises(GeodistillError, match="not a readable safetensors file") as error:
        read_weights_file(broken)
    assert str(broken) in str(error.value) and "\n" not in str(error.value)
