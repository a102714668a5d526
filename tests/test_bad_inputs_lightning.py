"""Bad input to ``geodistill fit|validate|test|predict``: one line, exit 2, nothing written.

The catalogue covers a bad ``--ckpt_path`` for every command, config mistakes (condensed from
jsonargparse's report to the file, key path and closest valid key), split fractions, labels that
are checked whole at setup, and a ``fit`` into a folder that already holds checkpoints. Every case
runs from its own empty folder and compares that folder before and after: a refusal must not
create a log folder, a ``config.yaml`` or a checkpoint. Only the shared ``trained_run`` and the
``--overwrite`` test really train.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from fixtures_small import (
    chip_transform,
    config_dict,
    make_dataset,
    write_config,
    write_tif,
)
from harness import assert_refused, payload_checkpoint, run_cli, tree_state

# Imported before any test: Lightning binds its log handler to the sys.stderr of the moment.
from geodistill.cli import lightning_cli  # noqa: F401
from geodistill.data.labels import _LABELLED_COUNTS, count_labelled
from geodistill.tasks.segmentation import BestCheckpoint

pytestmark = pytest.mark.usefixtures("in_tmp")


COMMANDS = ("fit", "validate", "test", "predict")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A read-only 4-chip dataset shared by the cases that do not damage their data."""
    return make_dataset(tmp_path_factory.mktemp("lightning_data") / "data", n=4)


@dataclass
class Case:
    """What one catalogue case runs and what its error line must contain."""

    args: list[str]
    needles: list[str]
    absent: list[Path] = field(default_factory=list)
    """Files that must not exist afterwards (a payload's marker)."""


def config(tmp_path: Path, data_root: Path, edit: Callable[[dict[str, Any]], None] | None = None):
    """A working fit/validate/test/predict config writing under ``tmp_path/out``, edited."""
    values = config_dict(data_root, tmp_path / "out", max_epochs=1, predict=data_root / "images")
    if edit is not None:
        edit(values)
    return write_config(tmp_path / "bad.yaml", values)


# --------------------------------------------------------------------------------------------
# a bad --ckpt_path, for every command


def truncated(tmp_path: Path, last: Path) -> Path:
    data = last.read_bytes()
    target = tmp_path / "truncated.ckpt"
    target.write_bytes(data[: len(data) // 2])
    return target


def random_bytes(tmp_path: Path, last: Path) -> Path:
    target = tmp_path / "random.ckpt"
    target.write_bytes(np.random.default_rng(0).bytes(4096))
    return target


def missing(tmp_path: Path, last: Path) -> Path:
    return tmp_path / "missing.ckpt"


def folder(tmp_path: Path, last: Path) -> Path:
    target = tmp_path / "a_folder.ckpt"
    target.mkdir()
    return target


def payload(tmp_path: Path, last: Path) -> Path:
    return payload_checkpoint(last, tmp_path / "payload.ckpt", tmp_path / "PAYLOAD_RAN")


CKPT_FAULTS = {
    "truncated": truncated,
    "random bytes": random_bytes,
    "missing": missing,
    "folder": folder,
    "payload": payload,
}


def ckpt_case(command: str, fault: str) -> Callable[..., Case]:
    def build(tmp_path: Path, data: Path, last: Path) -> Case:
        ckpt = CKPT_FAULTS[fault](tmp_path, last)
        path = config(tmp_path, data)
        args = [command, "--config", str(path), "--ckpt_path", str(ckpt)]
        return Case(args, [str(ckpt)], absent=[tmp_path / "PAYLOAD_RAN"])

    return build


# --------------------------------------------------------------------------------------------
# config mistakes: one line naming the file (or option), the key path and the closest key


def edited(edit: Callable[[dict[str, Any]], None], *needles: str) -> Callable[..., Case]:
    def build(tmp_path: Path, data: Path, last: Path) -> Case:
        path = config(tmp_path, data, edit)
        return Case(["fit", "--config", str(path)], [f"{path}: ", *needles])

    return build


def init(section: str, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda c: c[section]["init_args"].__setitem__(key, value)


def renamed(section: str, old: str, new: str) -> Callable[[dict[str, Any]], None]:
    return lambda c: c[section]["init_args"].__setitem__(new, c[section]["init_args"].pop(old))


def fine(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda c: c["data"]["init_args"]["fine"].__setitem__(key, value)


def broken_yaml(tmp_path: Path, data: Path, last: Path) -> Case:
    path = tmp_path / "bad.yaml"
    path.write_text("trainer:\n  max_epochs: 1\n  devices: [1,\nmodel: {}\n")
    return Case(["fit", "--config", str(path)], [f"{path}, line ", "YAML"])


def option_typo(tmp_path: Path, data: Path, last: Path) -> Case:
    path = config(tmp_path, data)
    args = ["fit", "--config", str(path), "--data.init_args.patch_sise", "32"]
    return Case(args, ["--data.init_args.patch_sise", "unknown key", "did you mean patch_size?"])


def missing_config(tmp_path: Path, data: Path, last: Path) -> Case:
    path = tmp_path / "nowhere.yaml"
    return Case(["fit", "--config", str(path)], [str(path), "no such config file"])


# --------------------------------------------------------------------------------------------
# labels, checked whole at setup


def corner_label(tmp_path: Path, data: Path, last: Path) -> Case:
    """A class id outside the classes in one corner pixel, which random crops may never see."""
    root = make_dataset(tmp_path / "data", n=4)
    label = np.zeros((64, 64), np.uint8)
    label[63, 63] = 7
    bad = write_tif(root / "labels/chip_00.tif", label, transform=chip_transform(0))
    path = config(tmp_path, root, init("data", "patch_size", 32))
    return Case(["fit", "--config", str(path)], [str(bad), "label values [7]", "outside"])


def nodata_labels(tmp_path: Path, data: Path, last: Path) -> Case:
    """Every label pixel is the declared nodata: fit would score NaN and keep a NaN 'best'."""
    root = make_dataset(tmp_path / "data", n=4)
    for i in range(4):
        write_tif(
            root / f"labels/chip_{i:02d}.tif",
            np.full((64, 64), 9, np.uint8),
            transform=chip_transform(i),
            nodata=9,
        )
    path = config(tmp_path, root)
    return Case(["fit", "--config", str(path)], [str(root / "labels"), "nodata", "train split"])


def earlier_checkpoints(tmp_path: Path, data: Path, last: Path) -> Case:
    """A second fit into the same checkpoint folder (Lightning would add best-v1.ckpt)."""
    folder = tmp_path / "out" / "checkpoints"
    folder.mkdir(parents=True)
    shutil.copy(last, folder / "last.ckpt")
    path = config(tmp_path, data)
    return Case(["fit", "--config", str(path)], [str(folder), "--overwrite", "--ckpt_path"])


def other_bands(tmp_path: Path, data: Path, last: Path) -> Case:
    """A 4-band checkpoint on 3-band data: refused before Lightning creates its log folder."""
    root = make_dataset(tmp_path / "data", n=4, bands=3)
    path = config(tmp_path, root)
    args = ["validate", "--config", str(path), "--ckpt_path", str(last)]
    return Case(args, [str(last), "trained on 4 bands", "the data has 3"])


def earlier_predictions(tmp_path: Path, data: Path, last: Path) -> Case:
    """The prediction writer's refusal runs before Lightning creates its log folder."""
    existing = write_tif(tmp_path / "out/predictions/chip_00_pred.tif", np.zeros((8, 8), np.uint8))
    path = config(tmp_path, data)
    args = ["predict", "--config", str(path), "--ckpt_path", str(last)]
    return Case(args, [str(existing), "overwrite"])


CASES: dict[str, Callable[..., Case]] = {
    **{f"{c} ckpt {f}": ckpt_case(c, f) for c in COMMANDS for f in CKPT_FAULTS},
    "misspelt data key": edited(
        renamed("data", "patch_size", "patch_sise"),
        "data.init_args.patch_sise: unknown key (did you mean patch_size?)",
    ),
    "misspelt nested key": edited(
        fine("val_fracton", 0.2), "data.init_args.fine.val_fracton", "did you mean val_fraction?"
    ),
    "misspelt nested mapping key": edited(
        fine("tset", {}), "data.init_args.fine.tset: unknown key (did you mean test?)"
    ),
    "misspelt key of a source": edited(
        lambda c: c["data"]["init_args"]["fine"]["train"].__setitem__(
            "lables", c["data"]["init_args"]["fine"]["train"].pop("labels")
        ),
        "data.init_args.fine.train.lables: unknown key (did you mean labels?)",
    ),
    "misspelt model key": edited(
        init("model", "learning_rate", 0.1), "model.init_args.learning_rate", "unknown key"
    ),
    "missing classes": edited(
        lambda c: c["data"]["init_args"].pop("classes"), "data.init_args.classes", "missing"
    ),
    "wrong type": edited(
        init("data", "batch_size", "abc"), "data.init_args.batch_size", "expected int, got abc"
    ),
    "unknown class_path": edited(
        lambda c: c["model"].__setitem__("class_path", "geodistill.tasks.SegmentationTsk"),
        "model.class_path",
        "unknown class",
        "did you mean geodistill.tasks.SegmentationTask?",
    ),
    "misspelt top-level key": edited(
        lambda c: c["trainer"].__setitem__("max_epoch", 2),
        "trainer.max_epoch",
        "did you mean trainer.max_epochs?",
    ),
    "wrong choice": edited(
        init("model", "schedule", "cosin"),
        "model.init_args.schedule",
        "expected one of poly, cosine, constant, got cosin (did you mean cosine?)",
    ),
    "section not a mapping": edited(
        lambda c: c.__setitem__("trainer", 5), "trainer: expected a mapping"
    ),
    "no data or model": edited(
        lambda c: [c.pop("data"), c.pop("model")], "the config needs data:, model:"
    ),
    "broken yaml": broken_yaml,
    "unknown command-line option": lambda tmp_path, data, last: Case(
        ["fit", "--config", str(config(tmp_path, data)), "--max_epochs", "3"],
        ["unrecognized arguments: --max_epochs"],
    ),
    "command-line typo": option_typo,
    "missing config file": missing_config,
    "val_fraction 1.5": edited(
        fine("val_fraction", 1.5), "data.fine.val_fraction must be in [0, 1), got 1.5"
    ),
    "negative test_fraction": edited(
        fine("test_fraction", -0.1), "data.fine.test_fraction must be in [0, 1), got -0.1"
    ),
    "fractions summing to 1": edited(
        lambda c: c["data"]["init_args"]["fine"].update(val_fraction=0.5, test_fraction=0.5),
        "data.fine.val_fraction + test_fraction",
        "below 1",
    ),
    "label outside classes in a corner": corner_label,
    "all-nodata labels": nodata_labels,
    "fit into earlier checkpoints": earlier_checkpoints,
    "checkpoint bands differ from the data's": other_bands,
    "predict into earlier predictions": earlier_predictions,
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused_in_one_line(name, tmp_path, capsys, data, trained_run):
    case = CASES[name](tmp_path, data, trained_run["last"])
    before = tree_state(tmp_path)
    outcome = run_cli(capsys, *case.args)
    assert_refused(outcome, *case.needles)
    assert tree_state(tmp_path) == before
    for path in case.absent:
        assert not path.exists(), f"{path} was created: the checkpoint ran code"


# --------------------------------------------------------------------------------------------
# what the refusals leave working


@pytest.mark.filterwarnings("ignore::UserWarning")  # --debug keeps Lightning's warnings
def test_debug_shows_the_full_config_error(tmp_path, data):
    from geodistill.cli.main import main

    path = config(tmp_path, data, renamed("data", "patch_size", "patch_sise"))
    with pytest.raises(Exception) as raised:  # noqa: PT011 - the exception type is incidental
        main(["--debug", "fit", "--config", str(path)])
    assert "patch_sise" in str(raised.value)
    assert "Does not validate" in str(raised.value.__cause__)  # jsonargparse's whole report


def test_help_and_print_config_still_work(tmp_path, capsys, data):
    path = config(tmp_path, data)
    outcome = run_cli(capsys, "fit", "--config", str(path), "--print_config")
    assert outcome.code == 0, outcome.err
    assert yaml.safe_load(outcome.out)["checkpoint"]["monitor"] == "val/mIoU"
    outcome = run_cli(capsys, "fit", "--help")
    assert outcome.code == 0 and "--overwrite" in outcome.out


def test_overwrite_replaces_an_earlier_runs_checkpoints(tmp_path, capsys, data, trained_run):
    folder = tmp_path / "out" / "checkpoints"
    folder.mkdir(parents=True)
    old = folder / "best-epoch=9-step=99.ckpt"
    shutil.copy(trained_run["last"], old)
    path = config(tmp_path, data)
    outcome = run_cli(capsys, "fit", "--config", str(path), "--overwrite")
    assert outcome.code == 0, outcome.err
    names = sorted(p.name for p in folder.glob("*.ckpt"))
    assert names == ["best-epoch=0-step=1.ckpt", "last.ckpt"]


def test_a_nan_score_is_never_the_best_checkpoint():
    callback = BestCheckpoint(monitor="val/mIoU", mode="max")
    assert not callback.check_monitor_top_k(None, torch.tensor(float("nan")))  # type: ignore[arg-type]
    assert callback.check_monitor_top_k(None, torch.tensor(0.5))  # type: ignore[arg-type]


def test_fit_never_keeps_a_best_checkpoint_chosen_on_nan(tmp_path, capsys, data):
    """Validation images all nodata: labels are fine, but val/mIoU is NaN every epoch."""
    val = tmp_path / "val"
    shutil.copytree(data / "labels", val / "labels")
    for i in range(4):
        image = np.full((4, 64, 64), np.nan, np.float32)
        write_tif(val / f"images/chip_{i:02d}.tif", image, transform=chip_transform(i))
    source = {"images": str(val / "images"), "labels": str(val / "labels")}
    path = config(tmp_path, data, lambda c: c["data"]["init_args"]["fine"].update(val=source))
    outcome = run_cli(capsys, "fit", "--config", str(path))
    assert outcome.code == 0, outcome.err
    names = sorted(p.name for p in (tmp_path / "out" / "checkpoints").glob("*.ckpt"))
    assert names == ["last.ckpt"]  # Lightning alone would keep best-epoch=0-step=1.ckpt (-inf)
    assert "geodistill: warning: val/mIoU is NaN" in outcome.err


def test_whole_label_check_is_cached_by_path_size_and_mtime(tmp_path):
    label = write_tif(tmp_path / "label.tif", np.ones((64, 64), np.uint8))
    assert count_labelled(label, 2) == 64 * 64
    entries = len(_LABELLED_COUNTS)
    assert count_labelled(label, 2) == 64 * 64
    assert len(_LABELLED_COUNTS) == entries  # the second setup read nothing
    write_tif(label, np.full((64, 64), 255, np.uint8))  # rewritten: a new mtime
    stat = label.stat()
    os.utime(label, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert count_labelled(label, 2) == 0
