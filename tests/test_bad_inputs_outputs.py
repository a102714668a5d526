"""Bad input, outputs (issue 13): unwritable or wrong-kind outputs, overwriting, tile sizes, temps.

Every refused run must exit 2 with one ``geodistill: error:`` line naming the path or option and
leave the output path as it was (:func:`harness.tree_state`). The catalogue runs each argparse
command in-process; the kill tests run the real console script and ``kill -9`` it mid-write.

Tests run as root here, and root writes into a ``chmod 555`` folder anyway. A read-only output is
therefore a path under ``/sys`` (the kernel refuses file creation there even to root: EACCES), and,
in case a machine allows that, the same refusal is also shown by making the write probe fail
through monkeypatch (``READ_ONLY_PROBE``).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import yaml
from fixtures_small import (
    chip_transform,
    config_dict,
    write_config,
    write_tif,
)
from harness import SCRIPT, assert_refused, run_cli, script_env, tree_state

from geodistill.atomic import PROBE_PREFIX

# Imported before any test: Lightning binds its log handler to the sys.stderr of the moment.
from geodistill.cli import lightning_cli  # noqa: F401

pytestmark = pytest.mark.usefixtures("in_tmp")


READ_ONLY_ROOT = Path("/sys/geodistill-test")
"""Under ``/sys`` nothing can be created, not even by root."""


def _sys_is_read_only() -> bool:
    try:
        handle, name = tempfile.mkstemp(dir="/sys")
    except OSError:
        return True
    os.close(handle)
    os.unlink(name)
    return False


needs_read_only_sys = pytest.mark.skipif(
    not _sys_is_read_only(), reason="/sys is writable here (the probe-failure cases cover it)"
)


@pytest.fixture(scope="module")
def inputs(trained_run, tmp_path_factory) -> dict[str, Path]:
    """Read-only inputs shared by the catalogue: a checkpoint, a scene, a class map, configs."""
    root = tmp_path_factory.mktemp("outputs_inputs")
    data = trained_run["data"]
    class_map = np.zeros((64, 64), np.uint8)
    class_map[10:30, 10:30] = 1
    predict_config = config_dict(data, root / "fit", max_epochs=1, predict=data / "images")
    write_config(root / "base.yaml", config_dict(data, root / "unused", max_epochs=1))
    return {
        "ckpt": trained_run["last"],
        "scene": data / "images" / "chip_00.tif",
        "images": data / "images",
        "map": write_tif(root / "map.tif", class_map, transform=chip_transform(0)),
        "predict_config": write_config(root / "predict.yaml", predict_config),
        "experiment": write_yaml(root / "experiment.yaml", EXPERIMENT),
    }


EXPERIMENT: dict[str, Any] = {
    "base": "base.yaml",
    "seeds": [0],
    "baseline": "plain",
    "variants": {"plain": {}, "fast": {"model": {"init_args": {"lr": 0.02}}}},
}
"""A ``geodistill compare`` experiment of the trained run's data (refused before any run)."""


def write_yaml(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# --------------------------------------------------------------------------------------------
# the catalogue


@dataclass
class Case:
    """One refused command: ``args(inputs, tmp)`` -> argv; ``output`` the path it must leave as
    it was; ``setup`` prepares it (e.g. an existing file); ``needles`` must be in the error."""

    args: Callable[[dict[str, Path], Path], list[str]]
    output: str
    needles: tuple[str, ...]
    setup: Callable[[Path, pytest.MonkeyPatch], None] = lambda tmp, patch: None
    read_only_sys: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _file(relative: str, text: str = "old\n") -> Callable[[Path, pytest.MonkeyPatch], None]:
    def setup(tmp: Path, patch: pytest.MonkeyPatch) -> None:
        (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp / relative).write_text(text)

    return setup


def _folder(relative: str) -> Callable[[Path, pytest.MonkeyPatch], None]:
    return lambda tmp, patch: (tmp / relative).mkdir(parents=True)


def _read_only_probe(tmp: Path, patch: pytest.MonkeyPatch) -> None:
    """The write probe fails as on a read-only mount (EROFS): see the module docstring."""

    def refuse(folder: Path) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(folder))

    patch.setattr("geodistill.atomic.probe_writable", refuse)


def _little_memory(tmp: Path, patch: pytest.MonkeyPatch) -> None:
    patch.setattr("geodistill.inference.scene.available_memory", lambda: 1024**3)


def _both(*setups):
    def setup(tmp: Path, patch: pytest.MonkeyPatch) -> None:
        for step in setups:
            step(tmp, patch)

    return setup


def stats(out: str, *extra: str):
    return lambda i, t: ["stats", str(i["images"]), "-o", out, *extra]


def prepare(out: str, *extra: str):
    return lambda i, t: ["prepare", str(i["scene"]), "-o", out, "--chip-size", "32", *extra]


def infer(out: str, *extra: str):
    return lambda i, t: [
        "infer", str(i["ckpt"]), str(i["scene"]), "-o", out, "--quiet", "--accelerator", "cpu",
        *extra,
    ]  # fmt: skip


def export(out: str, *extra: str):
    return lambda i, t: ["export", str(i["ckpt"]), "-o", out, *extra]


def vectorize(out: str, *extra: str):
    return lambda i, t: ["vectorize", str(i["map"]), "-o", out, *extra]


def compare(out: str, *extra: str):
    return lambda i, t: ["compare", "--config", str(i["experiment"]), "-o", out, *extra]


def demo(out: str, *extra: str):
    return lambda i, t: ["demo", "-o", out, *extra]


def predict(out: str, *extra: str):
    return lambda i, t: [
        "predict", "--config", str(i["predict_config"]), "--ckpt_path", str(i["ckpt"]),
        f"--prediction_writer.output_dir={out}", *extra,
    ]  # fmt: skip


RO = str(READ_ONLY_ROOT / "out")

CASES: dict[str, Case] = {
    # wrong kind: a folder where a file is wanted, a file where a folder is
    "stats -o folder": Case(stats("out"), "out", ("out", "is a folder", "-o"), _folder("out")),
    "export -o folder": Case(
        export("m.ckpt"), "m.ckpt", ("m.ckpt", "is a folder"), _folder("m.ckpt")
    ),
    "vectorize -o folder": Case(
        vectorize("p.gpkg"), "p.gpkg", ("p.gpkg", "is a folder"), _folder("p.gpkg")
    ),
    "prepare -o file": Case(
        prepare("chips"), "chips", ("chips", "is a file", "-o"), _file("chips")
    ),
    "infer -o file": Case(infer("maps"), "maps", ("maps", "is a file", "folder"), _file("maps")),
    "compare -o file": Case(compare("runs"), "runs", ("runs", "is a file"), _file("runs")),
    "demo -o file": Case(demo("demo"), "demo", ("demo", "is a file"), _file("demo")),
    # a parent that is a file
    "stats parent is a file": Case(
        stats("f/s.json"), "f", ("f/s.json", "is a file, not a folder"), _file("f")
    ),
    "export parent is a file": Case(
        export("f/m.onnx"), "f", ("f/m.onnx", "is a file, not a folder"), _file("f")
    ),
    "infer parent is a file": Case(
        infer("f/maps"), "f", ("f/maps", "is a file, not a folder"), _file("f")
    ),
    # read-only: really unwritable (/sys), and a probe that fails like a read-only mount
    "stats read-only /sys": Case(stats(RO + ".json"), RO, (RO, "cannot write"), read_only_sys=True),
    "prepare read-only /sys": Case(prepare(RO), RO, (RO, "cannot write"), read_only_sys=True),
    "infer read-only /sys": Case(infer(RO), RO, (RO, "cannot write"), read_only_sys=True),
    "export read-only /sys": Case(
        export(RO + ".onnx"), RO, (RO, "cannot write"), read_only_sys=True
    ),
    "vectorize read-only /sys": Case(
        vectorize(RO + ".gpkg"), RO, (RO, "cannot write"), read_only_sys=True
    ),
    "compare read-only /sys": Case(compare(RO), RO, (RO, "cannot write"), read_only_sys=True),
    "compare read-only probe": Case(
        compare("runs"), "runs", ("runs", "cannot write", "Read-only"), _read_only_probe
    ),
    "demo read-only /sys": Case(demo(RO), RO, (RO, "cannot write"), read_only_sys=True),
    "stats read-only probe": Case(
        stats("s.json"), "s.json", ("s.json", "cannot write", "Read-only"), _read_only_probe
    ),
    "infer read-only probe": Case(
        infer("maps"), "maps", ("maps", "cannot write", "Read-only"), _read_only_probe
    ),
    "predict read-only probe": Case(
        predict("preds"),
        "preds",
        ("preds", "cannot write", "--prediction_writer.output_dir"),
        _read_only_probe,
    ),  # fmt: skip
    # existing outputs: replaced only with the flag, one message shape for all
    "stats existing": Case(stats("s.json"), "s.json", ("s.json", "--overwrite"), _file("s.json")),
    "prepare existing": Case(
        prepare("chips"), "chips", ("chips/x", "already exists", "--overwrite"), _file("chips/x")
    ),
    "infer existing": Case(
        infer("maps"),
        "maps",
        ("chip_00_classes.tif", "already exists", "--overwrite"),
        _file("maps/chip_00_classes.tif"),
    ),  # fmt: skip
    "export existing": Case(
        export("m.onnx"), "m.onnx", ("m.onnx", "already exists", "--overwrite"), _file("m.onnx")
    ),
    "vectorize existing": Case(
        vectorize("p.gpkg"), "p.gpkg", ("p.gpkg", "already exists", "--overwrite"), _file("p.gpkg")
    ),
    "vectorize existing summary": Case(
        vectorize("p.gpkg"),
        "p_summary.json",
        ("p_summary.json", "--overwrite"),
        _file("p_summary.json"),
    ),  # fmt: skip
    "compare existing variant folder": Case(
        compare("runs"),
        "runs",
        ("runs/fast", "already exists", "--overwrite", "--resume"),
        _folder("runs/fast"),
    ),
    "demo existing": Case(
        demo("d"), "d", ("d/summary.json", "--overwrite"), _file("d/summary.json", "{}")
    ),
    "predict existing": Case(
        predict("preds"),
        "preds",
        ("chip_00_pred.tif", "--prediction_writer.overwrite=true"),
        _file("preds/chip_00_pred.tif"),
    ),  # fmt: skip
    # tile, overlap, batch size: ranges and memory
    "infer --tile 0": Case(infer("maps", "--tile", "0"), "maps", ("--tile 0", "at least 16")),
    "infer --tile 8": Case(infer("maps", "--tile", "8"), "maps", ("--tile 8", "at least 16")),
    "infer --overlap -1": Case(infer("maps", "--overlap", "-1"), "maps", ("--overlap -1",)),
    "infer --overlap > tile/2": Case(
        infer("maps", "--tile", "64", "--overlap", "40"), "maps", ("--overlap 40", "half")
    ),
    "infer --batch-size 0": Case(
        infer("maps", "--batch-size", "0"), "maps", ("--batch-size 0", "at least 1")
    ),
    "infer --tile 100000 (memory)": Case(
        infer("maps", "--tile", "100000"), "maps", ("--tile 100000", "needs about", "available")
    ),
    "infer --tile 4096 in 1 GiB": Case(
        infer("maps", "--tile", "4096"),
        "maps",
        ("--tile 4096", "1.0 GiB", "or less"),
        _little_memory,
    ),  # fmt: skip
    "export --tile-size 0": Case(
        export("m.onnx", "--tile-size", "0"), "m.onnx", ("--tile-size 0", "at least 16")
    ),
    "stats --pixels-per-image 0": Case(
        stats("s.json", "--pixels-per-image", "0"), "s.json", ("--pixels-per-image must be ≥ 1",)
    ),
    "compare --overwrite --resume": Case(
        compare("runs", "--overwrite", "--resume"), "runs", ("--resume", "not allowed with")
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_refused(name, inputs, tmp_path, monkeypatch, capsys):
    case = CASES[name]
    if case.read_only_sys and not _sys_is_read_only():
        pytest.skip("/sys is writable here; the read-only probe cases cover this")
    case.setup(tmp_path, monkeypatch)
    args = case.args(inputs, tmp_path)
    output = Path(case.output)
    before = tree_state(output)
    outcome = run_cli(capsys, *args)
    if "not allowed with" in case.needles:  # argparse's own usage error (exit 2, no traceback)
        assert outcome.code == 2 and "Traceback" not in outcome.err
        assert all(n in outcome.err for n in case.needles), outcome.err
    else:
        assert_refused(outcome, *case.needles)
    assert tree_state(output) == before


def test_catalogue_size():
    assert len(CASES) >= 20


# --------------------------------------------------------------------------------------------
# a tile the model cannot take (some architectures need a multiple of their stride)


def test_tile_the_model_cannot_take(inputs, tmp_path, monkeypatch, capsys):
    from geodistill.inference.predictors import TorchPredictor

    real = TorchPredictor.predict

    def picky(self, batch):
        if batch.shape[-1] % 32:
            raise RuntimeError("Sizes of tensors must match except in dimension 1.\nmore")
        return real(self, batch)

    monkeypatch.setattr(TorchPredictor, "predict", picky)
    outcome = run_cli(capsys, *infer("maps", "--tile", "40")(inputs, tmp_path))
    assert_refused(outcome, "--tile 40", "does not suit this model", "--tile 32")
    assert not (tmp_path / "maps").exists()


# --------------------------------------------------------------------------------------------
# overwriting and resuming compare (training replaced by a fast stand-in)


@pytest.fixture
def fake_runs(monkeypatch):
    """Each run writes a checkpoint and ``run.json`` with a fixed score; run keys are recorded."""
    calls: list[str] = []

    def execute_run(folder, fields, callbacks=()):
        folder = Path(folder)
        calls.append(f"{fields['name']}/{fields['budget']}/seed{fields['seed']}")
        best = folder / "checkpoints" / "best.ckpt"
        best.parent.mkdir(parents=True, exist_ok=True)
        assert not best.exists(), "an old run was left in place"
        best.write_text(fields["name"])
        record = {**fields, "metrics": {"test/mIoU": 0.5}, "checkpoint": str(best)}
        record["seconds"] = 1.0
        (folder / "run.json").write_text(json.dumps(record))
        return record

    monkeypatch.setattr("geodistill.experiments.harness.execute_run", execute_run)
    return calls


def test_compare_overwrite_and_resume(inputs, tmp_path, fake_runs, capsys):
    args = compare("runs")(inputs, tmp_path)
    runs = tmp_path / "runs"
    assert run_cli(capsys, *args).code == 0
    assert fake_runs == ["plain/base/seed0", "fast/base/seed0"]
    first = json.loads((runs / "results.json").read_text())

    fake_runs.clear()  # everything complete: nothing runs again
    assert run_cli(capsys, *args, "--resume").code == 0
    assert fake_runs == []
    assert json.loads((runs / "results.json").read_text())["runs"] == first["runs"]

    (runs / "fast" / "base" / "seed0" / "run.json").unlink()  # as if killed before it finished
    assert run_cli(capsys, *args, "--resume").code == 0
    assert fake_runs == ["fast/base/seed0"]  # its old folder is cleared first (no best-v1)
    assert sorted(p.name for p in (runs / "fast").rglob("*.ckpt")) == ["best.ckpt"]

    (runs / "plain" / "base" / "seed0" / "stale.txt").write_text("old")
    fake_runs.clear()
    assert run_cli(capsys, *args, "--overwrite").code == 0
    assert fake_runs == ["plain/base/seed0", "fast/base/seed0"]
    assert not (runs / "plain" / "base" / "seed0" / "stale.txt").exists()


def test_stats_overwrite_replaces(inputs, tmp_path, capsys):
    (tmp_path / "s.json").write_text("old")
    args = stats("s.json", "--overwrite", "--pixels-per-image", "100")(inputs, tmp_path)
    assert run_cli(capsys, *args).code == 0
    assert "band_names" in json.loads((tmp_path / "s.json").read_text())


def test_predict_overwrite_replaces(inputs, tmp_path, capsys):
    old = tmp_path / "preds" / "chip_00_pred.tif"
    old.parent.mkdir()
    old.write_text("old")
    args = predict(str(tmp_path / "preds"), "--prediction_writer.overwrite=true")(inputs, tmp_path)
    outcome = run_cli(capsys, *args)
    assert outcome.code == 0, outcome.err
    with rasterio.open(old) as src:
        assert src.shape == (64, 64)


# --------------------------------------------------------------------------------------------
# temporaries of a killed writer are removed by the next run


def _hidden(folder: Path) -> list[str]:
    return (
        sorted(p.name for p in folder.iterdir() if p.name.startswith("."))
        if folder.exists()
        else []
    )


def _kill_once_temps_appear(
    args: list[str],
    folder: Path,
    cwd: Path,
    timeout: float = 120,
    attempts: int = 3,
    suffix: str = "",
) -> None:
    """Start ``geodistill ARGS``, ``kill -9`` it as soon as ``folder`` holds a temporary (one
    ending in ``suffix``: a writer that makes several, one after the other, is killed once the
    named one exists, not between the two). A run that finishes between two polls (a fast run on
    an idle machine) is wiped and retried."""
    for attempt in range(attempts):
        process = subprocess.Popen(
            [str(SCRIPT), *args], cwd=cwd, env=script_env(),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        try:
            # a temporary of the output, not the writability probe created and removed first
            while not [
                n for n in _hidden(folder) if not n.startswith(PROBE_PREFIX) and n.endswith(suffix)
            ]:
                if process.poll() is not None:
                    break
                if time.monotonic() > deadline:
                    raise AssertionError("no temporary file appeared")
                time.sleep(0.002)
            else:
                process.send_signal(signal.SIGKILL)
                return
            error = process.stderr.read()
        finally:
            process.kill()
            process.wait()
            process.stderr.close()
        assert process.returncode == 0, f"failed before it could be killed: {error}"
        if attempt + 1 == attempts:
            raise AssertionError(f"finished before it could be killed, {attempts} times")
        for path in folder.iterdir():
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(SCRIPT), *args], cwd=cwd, env=script_env(), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_killed_infer_leaves_temps_that_a_rerun_removes(inputs, tmp_path):
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (4, 512, 512)).astype(np.float32)
    scene = write_tif(tmp_path / "big.tif", image, descriptions=["b0", "b1", "b2", "b3"])
    out = tmp_path / "maps"
    args = [
        "infer", str(inputs["ckpt"]), str(scene), "-o", str(out), "--quiet", "--accelerator",
        "cpu", "--tile", "64", "--overlap", "32", "--batch-size", "1", "--confidence",
    ]  # fmt: skip
    _kill_once_temps_appear(args, out, tmp_path, suffix=".stream.tif")
    finals = [out / "big_classes.tif", out / "big_confidence.tif"]
    assert not any(p.exists() for p in finals)
    stale = _hidden(out)
    assert any(name.endswith(".stream.tif") for name in stale), stale

    _run(args, tmp_path)
    assert _hidden(out) == []
    for path in finals:
        with rasterio.open(path) as src:
            assert src.shape == (512, 512) and src.count == 1


def test_killed_onnx_export_leaves_temps_that_a_rerun_removes(inputs, tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    args = ["export", str(inputs["ckpt"]), "-o", str(out / "model.onnx")]
    _kill_once_temps_appear(args, out, tmp_path)
    assert not (out / "model.onnx").exists()
    assert _hidden(out), "the killed export left no temporary"

    _run(args, tmp_path)
    assert _hidden(out) == []
    import onnx

    onnx.checker.check_model(onnx.load(str(out / "model.onnx")))


def test_live_writers_temps_are_kept(tmp_path):
    """Only a dead writer's temporaries go: a running one's (this process) and others stay."""
    from geodistill.atomic import atomic_output, remove_stale_temps, temp_prefix

    target = tmp_path / "x.v1.json"
    prefix = temp_prefix(target)  # .x.v1.json.<pid>-<host>.
    live = tmp_path / f"{prefix}abc.tmp"
    dead_pid = 2**22 + 12345  # above Linux's largest pid: no such process
    dead = tmp_path / f".other.tif.{dead_pid}-{prefix.rsplit('-', 1)[1]}abc.stream.tif"
    foreign = [tmp_path / ".x.v1.json.abc.tmp", tmp_path / f".y.{dead_pid}-0123abcd.abc.tmp"]
    for path in (live, dead, *foreign):
        path.write_text("")
    staging = tmp_path / f".chips.{dead_pid}-{prefix.rsplit('-', 1)[1]}abc.tmp"
    (staging / "images").mkdir(parents=True)  # a dead writer's staging folder (make_temp_dir)
    assert sorted(remove_stale_temps(tmp_path)) == sorted([dead, staging])
    dead.write_text("")
    with atomic_output(target) as temporary:  # the first write into the folder cleans it
        temporary.write_text("{}")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([live.name, *(p.name for p in foreign), target.name])
