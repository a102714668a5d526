"""What a newcomer reads while the demo and multi-run commands work (issue 17): the stages
announced in order with one progress line each, no library chatter, the results table without a
spread for a single run, and a final list of outputs that exist."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import pytest
import yaml
from fixtures_small import TINY_MODEL, torch_threads
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from geodistill.demo import run_demo
from geodistill.progress import (
    LIGHTNING_LOGGERS,
    PlannedRun,
    RunProgress,
    format_duration,
    hide_lightning_tips,
    quiet_libraries,
)
from geodistill.reporting import results_table

SMALL = {"chip_size": 64, "n_coarse": 4, "n_fine": 6, "n_fine_test": 2, "scene_size": 96}
CHATTER = ("Tip:", "litlogger", "GPU available", "TPU available", "HPU available",
           "Loading `train_dataloader`", "`Trainer.fit` stopped")  # fmt: skip


class Records(logging.Handler):
    """Every record Lightning's rank-zero logger creates (whatever propagation pytest set up)."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def lightning_records():
    logger = logging.getLogger(LIGHTNING_LOGGERS[0])
    handler = Records()
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One tiny demo (1 epoch a stage), its announcements, its returned text and log records."""
    output = tmp_path_factory.mktemp("demo")
    stream = io.StringIO()
    logger = logging.getLogger(LIGHTNING_LOGGERS[0])
    handler = Records()
    logger.addHandler(handler)
    patch = pytest.MonkeyPatch()
    patch.setattr("geodistill.demo.DEMO_MODEL", {**TINY_MODEL, "lr": 0.01})
    try:
        with torch_threads(1):
            text = run_demo(
                output, epochs={"teacher": 1, "student": 1}, dataset=SMALL, stream=stream
            )
    finally:
        patch.undo()
        logger.removeHandler(handler)
    return {"output": output, "said": stream.getvalue(), "text": text, "logged": handler.messages}


def test_demo_announces_the_three_stages_in_order_then_testing_and_the_scene(demo_run):
    said = demo_run["said"]
    expected = [
        "Data: 4 region-A chips with coarse outlines, 6 region-B chips with exact labels "
        "(4 to train, 2 to pick checkpoints), 2 held-out region-B test chips",
        "Stage 1/4: teacher on region A's coarse outlines (4 chips, 1 epoch)",
        "Stage 2/4: student on 4 exact region-B chips, distilled from the teacher (attentive",
        "Stage 3/4: baseline naive_finetune: the teacher fine-tuned on the same 4 chips",
        "Stage 4/4: baseline fine_only on the same 4 chips, no teacher",
        "Each model was tested on the 2 held-out region-B chips",
        "Whole scene: mapping the 96×96 px region-B scene",
    ]
    positions = [said.find(line) for line in expected]
    assert -1 not in positions, said
    assert positions == sorted(positions)
    # The time left appears once the remaining stages' kind of training has been timed: the
    # baselines train on the same fine chips as the student before them.
    assert re.search(r"Stage 3/4: .*\(about [0-9a-z ]+ left\)\n", said)
    assert re.search(r"Stage 4/4: .*\(about [0-9a-z ]+ left\)\n", said)
    assert "left)" not in said.split("Stage 3/4")[0]


def test_each_stage_ends_as_one_progress_line_with_its_scores(demo_run):
    # tqdm redraws a line with "\r" and ends it with "\n": one finished line per stage.
    lines = demo_run["said"].split("\n")
    for name in ("coarse_only", "attentive", "naive_finetune", "fine_only"):
        bars = [line for line in lines if line.lstrip("\r").startswith(f"{name}:")]
        assert len(bars) == 1, bars
        final = bars[0].split("\r")[-1]
        assert "100%" in final and "test mIoU" in final, final
    scene = [line for line in lines if line.lstrip("\r").startswith("whole scene:")]
    assert len(scene) == 1 and "2/2" in scene[0].split("\r")[-1]


def test_demo_keeps_lightning_chatter_out(demo_run):
    said = demo_run["said"] + demo_run["text"]
    for needle in CHATTER:
        assert needle not in said
    assert not [m for m in demo_run["logged"] if any(n in m for n in CHATTER)], demo_run["logged"]


def test_final_list_names_outputs_that_exist_and_the_table_has_no_spread(demo_run):
    text, output = demo_run["text"], demo_run["output"]
    listed = text.split("\noutputs:\n", 1)[1].splitlines()
    paths = [Path(line.split()[-1]) for line in listed]
    assert len(paths) >= 10
    assert all(path.exists() for path in paths), [p for p in paths if not p.exists()]
    names = {path.name for path in paths}
    assert {"metrics.md", "figure.png", "summary.json", "student.ckpt"} <= names
    assert {"experiment.yaml", "runs"} <= names  # the runs as a compare experiment
    assert output / "experiment.yaml" in paths and output / "runs" in paths
    assert (output / "runs" / "results.json").is_file()
    assert {"scene_fine_only.tif", "scene_attentive.tif"} <= names
    table = text.split("\n\noutputs:")[0]
    rows = [line.split()[0] for line in table.splitlines()[3:7]]
    assert rows == ["coarse_only", "attentive", "naive_finetune", "fine_only"]  # stage order
    assert "±" not in text
    markdown = (output / "metrics.md").read_text()
    assert "| attentive |" in markdown and "±" not in markdown


def test_results_table_shows_spread_only_over_several_runs():
    metrics = {"mIoU": 0.5, "boundary_F1": 0.25, "OA": 0.9, "IoU/a": 0.8, "IoU/b": 0.2}
    single = results_table({"fine_only": metrics}, ["a", "b"])
    assert single.splitlines()[-1] == "| fine_only | 50.00 | 25.00 | 90.00 | 80.00 | 20.00 | – |"
    other = {**metrics, "mIoU": 0.7}
    both = results_table([{"fine_only": metrics}, {"fine_only": other}], ["a", "b"])
    assert "| 60.00 ± 10.00 |" in both
    # order: the methods in display order (default: the first run's), those every run has
    runs = {"fine_only": metrics, "attentive": other}
    rows = [line.split(" | ")[0] for line in results_table(runs, ["a", "b"]).splitlines()[2:]]
    assert rows == ["| fine_only", "| attentive"]
    ordered = results_table(runs, ["a", "b"], ["attentive", "oracle", "fine_only"])
    assert [line.split(" | ")[0] for line in ordered.splitlines()[2:]] == rows[::-1]


def test_quiet_libraries_silences_lightning_info_unless_verbose(lightning_records):
    with quiet_libraries():
        rank_zero_info("GPU available: False, used: False")
        rank_zero_info("💡 Tip: try installing litlogger")
    assert lightning_records == []
    with quiet_libraries(verbose=True):
        rank_zero_info("GPU available: False, used: False")
        rank_zero_info("💡 Tip: try installing litlogger")
    assert lightning_records == ["GPU available: False, used: False"]  # the tip stays out
    # Levels are restored: outside the block Lightning speaks as before (tips still hidden).
    rank_zero_info("TPU available: False")
    assert lightning_records[-1] == "TPU available: False"


def test_hide_lightning_tips_drops_only_the_tips(lightning_records):
    hide_lightning_tips()
    hide_lightning_tips()  # idempotent: one filter
    logger = logging.getLogger(LIGHTNING_LOGGERS[0])
    assert len(logger.filters) == len(set(map(id, logger.filters)))
    rank_zero_info("💡 Tip: For seamless cloud uploads and versioning, try litmodels")
    rank_zero_info("Restoring states from the checkpoint path at x.ckpt")
    assert lightning_records == ["Restoring states from the checkpoint path at x.ckpt"]


def test_run_progress_estimates_time_left_per_epoch_of_each_training_domain():
    stream = io.StringIO()
    progress = RunProgress(stream=stream)
    progress.plan(
        [
            PlannedRun("coarse_only", "coarse", 4),
            PlannedRun("attentive", "fine", 10),
            PlannedRun("kept", "", 0),  # complete already: costs nothing
            PlannedRun("fine_only", "fine", 10),
            PlannedRun("joint", "coarse+fine", 4),
        ]
    )
    progress.start("coarse_only")
    progress.finish(seconds=40.0)  # 10 s per coarse epoch
    assert progress.time_left() is None  # no fine epoch timed yet
    progress.start("attentive")
    progress.finish(seconds=20.0)  # 2 s per fine epoch
    progress.skip("kept", "complete in an earlier run, kept (--resume)")
    progress.start("fine_only")
    # fine_only 10 x 2 s + joint 4 x (10 + 2) s
    assert stream.getvalue().splitlines()[-1] == "run 4/5: fine_only (about 1 min 08 s left)"
    progress.finish(seconds=30.0)  # fine epochs now 2 s and 3 s: 2.5 s on average
    progress.start("joint")
    assert stream.getvalue().splitlines()[-1] == "run 5/5: joint (about 50 s left)"


def test_run_progress_without_plan_uses_mean_run_duration():
    stream = io.StringIO()
    progress = RunProgress(total=3, stream=stream)
    progress.start("coarse_only", "coarse_only (seed 0)", "stage 1: the teacher")
    progress.finish(seconds=30.0)
    callbacks = progress.start("joint", "joint (seed 0)", "coarse + fine labels together")
    assert len(callbacks) == 1  # the run's progress line
    progress.finish(seconds=90.0)
    progress.skip("attentive", "complete in an earlier run, kept (--resume)")
    lines = stream.getvalue().splitlines()
    assert lines == [
        "run 1/3: coarse_only (seed 0) — stage 1: the teacher",
        "run 2/3: joint (seed 0) — coarse + fine labels together (about 1 min 00 s left)",
        "run 3/3: attentive — complete in an earlier run, kept (--resume)",
    ]
    silent = RunProgress(total=1, stream=stream, enabled=False)
    assert silent.start("joint") == []


@pytest.mark.parametrize(
    ("seconds", "text"), [(4.4, "4 s"), (65, "1 min 05 s"), (3720, "1 h 02 min"), (-1, "0 s")]
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_compare_announces_each_run_by_name_with_its_seed(demo_run, tmp_path, monkeypatch):
    """The demo's recipe with the teacher of an earlier run (its ``${stages.coarse_only...}``
    replaced by that checkpoint: the stage is dropped) announces each run with a progress line."""
    from geodistill.data.synthetic import write_demo_dataset
    from geodistill.demo import demo_experiment
    from geodistill.experiments import load_experiment, run_experiment, select_variants

    monkeypatch.setattr("geodistill.demo.DEMO_MODEL", {**TINY_MODEL, "lr": 0.01})
    data = write_demo_dataset(tmp_path / "data", **SMALL)
    experiment = demo_experiment(data, tmp_path / "runs", [3], {"teacher": 1, "student": 1})
    teacher = demo_run["output"] / "runs" / "stages" / "coarse_only" / "seed0"
    teacher = teacher / "checkpoints" / "best.ckpt"
    text = yaml.safe_dump(experiment, sort_keys=False)
    path = tmp_path / "experiment.yaml"
    path.write_text(text.replace("${stages.coarse_only.checkpoint}", str(teacher)))
    chosen = select_variants(load_experiment(path), ["naive_finetune", "fine_only"])
    assert chosen.stages == {}  # no variant uses the stage any more
    stream = io.StringIO()
    with torch_threads(1), quiet_libraries():
        run_experiment(chosen, progress=RunProgress(stream=stream))
    said = [line.split("\r")[-1] for line in stream.getvalue().rstrip("\n").split("\n")]
    assert said[0] == "run 1/2: naive_finetune/base/seed3"
    assert said[1].startswith("naive_finetune: 100%") and "test mIoU" in said[1]
    # One run timed: the time left is estimated from it.
    assert re.fullmatch(r"run 2/2: fine_only/base/seed3 \(about [0-9a-z ]+ left\)", said[2])
    assert said[3].startswith("fine_only:") and "100%" in said[3] and "test mIoU" in said[3]
    assert len(said) == 4
    config = yaml.safe_load(
        (tmp_path / "runs" / "naive_finetune" / "base" / "seed3" / "config.yaml").read_text()
    )
    distillation = config["model"]["init_args"]["distillation"]
    assert distillation["init_args"]["teacher"] == str(teacher)
    assert not (tmp_path / "runs" / "stages").exists()
