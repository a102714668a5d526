"""``geodistill compare``: experiment files, runs (stage + variants x seeds), resume, jobs, tables.

One real experiment (tiny data, tiny student, 1 epoch: a teacher stage and 2 variants x 2 seeds)
is run once for the module and inspected by several tests; the table arithmetic is checked on
hand-made numbers.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures_small import cli_main, config_dict, make_dataset, torch_threads, write_config
from harness import assert_refused, run_cli, tree_state

from geodistill.errors import GeodistillError
from geodistill.experiments import load_experiment, run_experiment, select_variants
from geodistill.experiments.runs import plan_runs
from geodistill.experiments.summary import (
    Difference,
    Spread,
    format_difference,
    format_mean_std,
    markdown,
    summarise,
)
from geodistill.progress import RunProgress

SEEDS = [0, 1]
DISTILLED = {
    "model": {
        "init_args": {
            "distillation": {
                "class_path": "geodistill.methods.CoarseToFine",
                "init_args": {"teacher": "${stages.teacher.checkpoint}"},
            }
        }
    }
}


def _experiment(root: Path, **changes: Any) -> dict[str, Any]:
    return {
        "base": "base.yaml",
        "output": str(root / "out"),
        "seeds": SEEDS,
        "baseline": "plain",
        "stages": {"teacher": {"overrides": {"model": {"init_args": {"lr": 0.02}}}}},
        "variants": {"plain": {}, "distilled": DISTILLED},
        **changes,
    }


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    """Tiny data and a 1-epoch base config of a tiny student."""
    root = tmp_path_factory.mktemp("compare")
    data = make_dataset(root / "data", n=8)
    write_config(root / "base.yaml", config_dict(data, root / "unused", max_epochs=1))
    return {"root": root, "data": data}


@pytest.fixture(scope="module")
def done(workspace) -> dict[str, Path]:
    """The tiny experiment, run once (in-process, one thread)."""
    root = workspace["root"]
    experiment = write_config(root / "experiment.yaml", _experiment(root))
    with torch_threads(1):
        assert cli_main(["compare", "--config", str(experiment)]) == 0
    return {**workspace, "experiment": experiment, "out": root / "out"}


def test_every_run_finished_with_its_record_and_the_results_are_written(done):
    out = done["out"]
    folders = [out / "stages" / "teacher" / f"seed{s}" for s in SEEDS]
    folders += [out / v / "base" / f"seed{s}" for v in ("plain", "distilled") for s in SEEDS]
    for folder in folders:
        record = json.loads((folder / "run.json").read_text())
        assert 0.0 <= record["metrics"]["test/mIoU"] <= 1.0
        assert "test/IoU/target" in record["metrics"]  # every test metric is recorded
        assert Path(record["checkpoint"]) == folder / "checkpoints" / "best.ckpt"
        assert Path(record["checkpoint"]).is_file() and record["seconds"] > 0
        assert len(record["fingerprint"]) == 16
        assert record["environment"]["threads"] == 1  # what the float sums depended on
        assert record["environment"]["torch"] and record["environment"]["lightning"]
        assert "cores" in record["environment"]["machine"]
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 6
    assert results["metric"] == "test/mIoU" and results["baseline"] == "plain"
    summary = results["summary"]["base"]
    assert summary["plain"]["n"] == 2 and "difference" not in summary["plain"]
    difference = summary["distilled"]["difference"]
    values = summary["distilled"]["values"]
    expected = [values[str(s)] - summary["plain"]["values"][str(s)] for s in SEEDS]
    assert difference["values"] == pytest.approx(dict(zip(("0", "1"), expected, strict=True)))
    assert difference["mean"] == pytest.approx(sum(expected) / 2)
    table = (out / "results.md").read_text()
    assert "| variant | test/mIoU | Δ vs plain | seeds | s/run |" in table
    assert "/2 seeds" in table and "Machine:" in table and "geodistill compare --config" in table
    assert "| teacher | shared |" in table
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_each_seed_uses_its_own_stage_checkpoint(done):
    out = done["out"]
    for seed in SEEDS:
        config = yaml.safe_load(
            (out / "distilled" / "base" / f"seed{seed}" / "config.yaml").read_text()
        )
        assert config["model"]["class_path"] == "geodistill.tasks.SegmentationTask"
        distillation = config["model"]["init_args"]["distillation"]
        assert distillation["class_path"] == "geodistill.methods.CoarseToFine"
        teacher = distillation["init_args"]["teacher"]
        assert teacher == str(
            out / "stages" / "teacher" / f"seed{seed}" / "checkpoints" / "best.ckpt"
        )
        assert config["seed_everything"] == seed and config["data"]["init_args"]["seed"] == seed
        assert config["checkpoint"]["dirpath"].startswith(str(out / "distilled"))


def test_an_existing_output_is_refused_without_resume_or_overwrite(done, capsys):
    before = tree_state(done["out"])
    outcome = run_cli(capsys, "compare", "--config", done["experiment"])
    assert_refused(outcome, "out", "already exists", "--overwrite", "--resume")
    assert tree_state(done["out"]) == before


def test_resume_reruns_nothing(done, capsys):
    records = sorted(done["out"].rglob("run.json"))
    assert len(records) == 6
    before = {p: p.stat().st_mtime_ns for p in records}
    outcome = run_cli(capsys, "compare", "--config", done["experiment"], "--resume")
    assert outcome.code == 0, outcome.err
    assert "6 finished run(s) kept, 0 to run" in outcome.out
    assert {p: p.stat().st_mtime_ns for p in records} == before


def test_resume_refuses_a_changed_config(done, capsys):
    changed = _experiment(done["root"], variants={"plain": {"trainer": {"max_epochs": 2}}})
    changed["variants"]["distilled"] = DISTILLED
    path = write_config(done["root"] / "changed.yaml", changed)
    before = tree_state(done["out"])
    outcome = run_cli(capsys, "compare", "--config", path, "--resume")
    assert_refused(outcome, "plain/base/seed0", "another configuration", "--overwrite")
    assert tree_state(done["out"]) == before


def test_jobs_runs_in_subprocesses(workspace, tmp_path, capsys):
    shutil.copy(workspace["root"] / "base.yaml", tmp_path / "base.yaml")
    experiment = {"base": "base.yaml", "seeds": [3, 4], "variants": {"plain": {}}}
    path = write_config(tmp_path / "jobs.yaml", experiment)
    outcome = run_cli(capsys, "compare", "--config", path, "-o", tmp_path / "out", "--jobs", "2")
    assert outcome.code == 0, outcome.err
    for seed in (3, 4):
        folder = tmp_path / "out" / "plain" / "base" / f"seed{seed}"
        assert json.loads((folder / "run.json").read_text())["seed"] == seed
        assert (folder / "run.log").is_file()
    assert "| plain |" in (tmp_path / "out" / "results.md").read_text()


# --------------------------------------------------------------------------------------------
# a subset of the variants (--variants) and progress lines


@pytest.mark.parametrize(
    ("variants", "needles"),
    [
        ("plain,magic", ["--variants", "unknown variant(s) magic", "plain, distilled"]),
        ("distilled", ["--variants must include the baseline plain"]),
    ],
)
def test_variants_refuses_unknown_names_and_a_missing_baseline(
    workspace, tmp_path, capsys, variants, needles
):
    shutil.copy(workspace["root"] / "base.yaml", tmp_path / "base.yaml")
    path = write_config(tmp_path / "e.yaml", _experiment(tmp_path))
    outcome = run_cli(capsys, "compare", "--config", path, "--variants", variants)
    assert_refused(outcome, str(path), *needles)
    assert not (tmp_path / "out").exists()


def test_stages_no_selected_variant_uses_are_not_run(workspace, tmp_path, capsys):
    shutil.copy(workspace["root"] / "base.yaml", tmp_path / "base.yaml")
    path = write_config(tmp_path / "e.yaml", _experiment(tmp_path, seeds=[0]))
    assert list(select_variants(load_experiment(path), ["plain", "distilled"]).stages) == [
        "teacher"
    ]
    with torch_threads(1):
        outcome = run_cli(capsys, "compare", "--config", path, "--variants", "plain")
    assert outcome.code == 0, outcome.err
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["plain"]  # no stages/
    results = json.loads((out / "results.json").read_text())
    assert results["stages"] == [] and results["variants"] == ["plain"]
    assert [(run["kind"], run["name"]) for run in results["runs"]] == [("variant", "plain")]
    assert "--variants plain" in results["command"]
    assert "## stages" not in (out / "results.md").read_text()


def test_progress_announces_every_run_and_resume_reports_the_kept_ones(workspace, tmp_path):
    shutil.copy(workspace["root"] / "base.yaml", tmp_path / "base.yaml")
    path = write_config(tmp_path / "e.yaml", _experiment(tmp_path, seeds=[0]))
    experiment = load_experiment(path)
    keys = ["stages/teacher/seed0", "plain/base/seed0", "distilled/base/seed0"]
    stream = io.StringIO()
    with torch_threads(1):
        run_experiment(experiment, tmp_path / "out", progress=RunProgress(stream=stream))
    announced = re.findall(r"^run (\d+)/(\d+): (\S+)", stream.getvalue(), re.MULTILINE)
    assert announced == [(str(i), "3", key) for i, key in enumerate(keys, start=1)]
    records = sorted((tmp_path / "out").rglob("run.json"))
    assert len(records) == 3
    before = {p: p.stat().st_mtime_ns for p in records}
    stream = io.StringIO()
    run_experiment(experiment, tmp_path / "out", resume=True, progress=RunProgress(stream=stream))
    lines = [line for line in stream.getvalue().splitlines() if line.startswith("run ")]
    names = ["teacher", "plain", "distilled"]
    assert lines == [
        f"run {i}/3: {name} — complete in an earlier run, kept (--resume)"
        for i, name in enumerate(names, start=1)
    ]
    assert {p: p.stat().st_mtime_ns for p in records} == before  # nothing ran again
    # A test set added: every run is announced as re-testing on it.
    experiment.tests = {"again": _test_set(workspace["data"])}
    stream = io.StringIO()
    with torch_threads(1):
        run_experiment(
            experiment, tmp_path / "out", resume=True, progress=RunProgress(stream=stream)
        )
    lines = [line for line in stream.getvalue().splitlines() if line.startswith("run ")]
    assert [re.sub(r" \(about .* left\)$", "", line) for line in lines] == [
        f"run {i}/3: {key} — re-testing on again (trained in an earlier run)"
        for i, key in enumerate(keys, start=1)
    ]


# --------------------------------------------------------------------------------------------
# experiment files


@pytest.mark.parametrize(
    ("change", "needles"),
    [
        ({"base": None}, ["base: missing"]),
        ({"seeds": []}, ["seeds:", "non-empty"]),
        ({"baseline": "plainn"}, ["baseline:", "did you mean plain?"]),
        ({"variant": {}}, ["variant: unknown key", "did you mean variants?"]),
        (
            {
                "variants": {
                    "plain": {},
                    "d": {"model": {"init_args": {"t": "${stages.teachr.checkpoint}"}}},
                }
            },
            ["variants.d.model.init_args.t:", "unknown stage 'teachr'", "did you mean teacher?"],
        ),
        ({"budgets": [{"train_limt": 2}]}, ["budgets[0].train_limt", "did you mean train_limit?"]),
        ({"budgets": [{"train_limit": 2, "domain": "coarse"}]}, ["no data.init_args.coarse"]),
        (
            {"variants": {"plain": {"trainr": {}}}},
            ["variants.plain.trainr", "did you mean trainer?"],
        ),
        ({"metric": "test/mIU"}, ["metric:", "did you mean mIoU?"]),
    ],
)
def test_bad_experiment_files_name_the_file_and_key(workspace, tmp_path, change, needles):
    experiment = {k: v for k, v in {**_experiment(tmp_path), **change}.items() if v is not None}
    shutil.copy(workspace["root"] / "base.yaml", tmp_path / "base.yaml")
    path = write_config(tmp_path / "bad.yaml", experiment)
    with pytest.raises(GeodistillError) as error:
        load_experiment(path)
    assert str(error.value).startswith(f"{path}: ")
    for needle in needles:
        assert needle in str(error.value)


def test_a_bad_key_in_a_variant_is_refused_before_any_run(workspace, tmp_path, capsys):
    shutil.copy(workspace["root"] / "base.yaml", tmp_path / "base.yaml")
    variants = {"plain": {}, "fast": {"model": {"init_args": {"lrr": 0.1}}}}
    path = write_config(tmp_path / "bad.yaml", _experiment(tmp_path, variants=variants))
    outcome = run_cli(capsys, "compare", "--config", path)
    assert_refused(outcome, str(path), "variants.fast: model.init_args.lrr", "did you mean lr?")
    assert not (tmp_path / "out").exists()


def test_budgets_are_data_overrides_with_short_names(workspace, tmp_path):
    shutil.copy(workspace["root"] / "base.yaml", tmp_path / "base.yaml")
    budgets = [
        {"train_limit": 2},
        {"train_ratio": 0.5},
        {"name": "tiny", "overrides": {"data": {"init_args": {"batch_size": 2}}}},
    ]
    path = write_config(tmp_path / "b.yaml", _experiment(tmp_path, budgets=budgets, stages=None))
    path.write_text(path.read_text().replace("${stages.teacher.checkpoint}", "t.ckpt"))
    experiment = load_experiment(path)
    assert [b.name for b in experiment.budgets] == ["limit2", "ratio0.5", "tiny"]
    fine = experiment.budgets[0].overrides["data"]["init_args"]["fine"]
    assert fine == {"train_limit": 2, "train_ratio": None}
    runs = plan_runs(experiment, tmp_path / "o")
    assert len(runs) == 2 * 3 * 2
    run = next(r for r in runs if r.key == "plain/ratio0.5/seed1")
    assert run.config["data"]["init_args"]["fine"]["train_ratio"] == 0.5
    assert run.config["data"]["init_args"]["fine"]["val_fraction"] == 0.25  # merged, not replaced


# --------------------------------------------------------------------------------------------
# the table's arithmetic


def _record(variant: str, seed: int, miou: float | None) -> dict[str, Any]:
    return {
        "kind": "variant",
        "name": variant,
        "budget": "base",
        "seed": seed,
        "metrics": {"test/mIoU": miou},
        "seconds": 1.0,
    }


def test_paired_differences_on_hand_made_numbers():
    base, method = [0.50, 0.60, 0.55], [0.52, 0.63, 0.54]
    runs = [_record("base", s, v) for s, v in enumerate(base)]
    runs += [_record("method", s, v) for s, v in enumerate(method)]
    summary = summarise(runs, "test/mIoU", "base", ["base", "method"], ["base"])
    spread = summary.spreads["base"]["base"]
    assert spread.mean == pytest.approx(0.55) and spread.std == pytest.approx(0.05)
    assert format_mean_std(spread) == "55.00 ± 5.00"
    difference = summary.differences["base"]["method"]
    assert difference.values == pytest.approx({0: 0.02, 1: 0.03, 2: -0.01})
    assert difference.std == pytest.approx(
        math.sqrt((0.02**2 + 0.03**2 + 0.01**2 - 3 * (0.04 / 3) ** 2) / 2)
    )
    assert format_difference(difference) == "+1.33 ± 2.08 (2/3 seeds > 0)"
    table = markdown(summary, runs, {"Command": "`x`"})
    assert "| method | 56.33 ± 5.86 | +1.33 ± 2.08 (2/3 seeds > 0) | 3 | 1 |" in table


def test_single_seeds_missing_values_and_negative_means():
    assert format_mean_std(Spread({0: 0.5})) == "50.00"  # never "± 0.00"
    assert format_difference(Difference({0: -0.02})) == "-2.00 (1/1 seeds < 0)"
    assert format_difference(Difference({0: -0.03, 1: 0.01, 2: -0.01})) == (
        "-1.00 ± 2.00 (2/3 seeds < 0)"
    )
    assert format_mean_std(Spread({})) == "–" and format_difference(Difference({})) == "–"
    # A NaN score (null in run.json) is left out; pairs need both seeds.
    runs = [_record("a", 0, 0.4), _record("a", 1, 0.5), _record("b", 0, None), _record("b", 1, 0.6)]
    summary = summarise(runs, "test/mIoU", "a", ["a", "b"], ["base"])
    assert summary.spreads["base"]["b"].n == 1
    assert format_difference(summary.differences["base"]["b"]) == "+10.00 (1/1 seeds > 0)"


def test_compare_is_a_listed_command_with_help(capsys):
    outcome = run_cli(capsys, "--help")
    assert "  compare " in outcome.out
    outcome = run_cli(capsys, "compare", "--help")
    assert outcome.code == 0 and "paired differences" in " ".join(outcome.out.split())


def test_seed_placeholder_becomes_each_runs_seed() -> None:
    """``${seed}`` (data drawn once per seed) is the run's seed; other placeholders are refused."""
    from geodistill.errors import GeodistillError
    from geodistill.experiments.file import stage_references
    from geodistill.experiments.runs import seeded

    config = {"data": {"init_args": {"coarse": {"train": {"labels": "labels/seed${seed}"}}}}}
    assert stage_references(config, "variants.v", Path("x.yaml")) == []
    run = seeded(config, 3)
    assert run["data"]["init_args"]["coarse"]["train"]["labels"] == "labels/seed3"
    assert run["data"]["init_args"]["seed"] == 3 and run["seed_everything"] == 3
    assert config["data"]["init_args"]["coarse"]["train"]["labels"] == "labels/seed${seed}"
    with pytest.raises(GeodistillError, match=r"unknown reference \$\{sede\}"):
        stage_references({"labels": "labels/${sede}"}, "variants.v", Path("x.yaml"))


def _test_set(data: Path) -> dict[str, Any]:
    """An extra test set's overrides: test on the chips of ``data``."""
    test = {"images": str(data / "images"), "labels": str(data / "labels")}
    return {"data": {"init_args": {"fine": {"test": test}}}}


def _old_fingerprint(run: Any) -> str:
    """How records were fingerprinted before each test set had its own fingerprint: the config,
    the stages' (old) fingerprints and the test sets in one hash."""
    payload: dict[str, Any] = {
        "version": 1,
        "config": run.config,
        "stages": {need.name: _old_fingerprint(need) for need in run.needs},
    }
    if run.tests:
        payload["tests"] = run.tests
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _score_directly(folder: Path, test_set: dict[str, Any], root: Path) -> dict[str, float]:
    """``geodistill test`` of the run's best checkpoint on another test set, by hand."""
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["data"]["init_args"]["fine"]["test"] = test_set["data"]["init_args"]["fine"]["test"]
    path = write_config(root / "config.yaml", config)
    best = folder / "checkpoints" / "best.ckpt"
    args = ["test", "--config", str(path), "--ckpt_path", str(best), "--verbose", "false"]
    args += ["--trainer.logger", "false", "--trainer.default_root_dir", str(root)]
    with torch_threads(1):
        assert cli_main(args) == 0
    return json.loads((root / "test_metrics.json").read_text())


def _checkpoints(out: Path) -> dict[Path, tuple[int, bytes]]:
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(out.rglob("*.ckpt"))}


def _no_training(monkeypatch) -> None:
    def execute_run(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("geodistill.experiments.harness.execute_run", execute_run)


def test_extra_test_sets_score_every_run_and_stage_again(workspace, tmp_path, capsys, monkeypatch):
    """``tests:`` re-tests each run's best checkpoint under data overrides (e.g. the old domain's
    held-out chips), summarised with paired differences; stages are scored there too. Records
    written before each test set had its own fingerprint are still kept under ``--resume``."""
    other = make_dataset(tmp_path / "other", n=3, seed=7)
    experiment = _experiment(
        tmp_path,
        base=str(workspace["root"] / "base.yaml"),
        seeds=[0],
        variants={"plain": {}, "distilled": DISTILLED},
        tests={"other": _test_set(other)},
    )
    path = write_config(tmp_path / "experiment.yaml", experiment)
    with torch_threads(1):
        assert cli_main(["compare", "--config", str(path)]) == 0
    out = tmp_path / "out"
    report = json.loads((out / "results.json").read_text())
    for run in report["runs"]:
        assert 0 <= run["metrics"]["other/mIoU"] <= 1 and "test/mIoU" in run["metrics"]
        assert "tests" not in run  # the record keeps metrics and fingerprints, not the overrides
        assert list(run["test_fingerprints"]) == ["other"]
        folder = Path(run["folder"])
        assert (folder / "config.other.yaml").is_file()
        assert (folder / "test_other" / "test_metrics.json").is_file()
    assert set(report["tests"]["other"]["base"]) == {"plain", "distilled"}
    text = (out / "results.md").read_text()
    assert "Test set `other`" in text and "| other/mIoU | Δ vs plain |" in text
    assert "| stage | budget | test/mIoU | other/mIoU | seeds |" in text

    # Records as earlier versions wrote them: one fingerprint of config, stages and test sets.
    runs = plan_runs(load_experiment(path), out)
    for run in runs:
        record = json.loads((run.folder / "run.json").read_text())
        del record["test_fingerprints"]
        record["fingerprint"] = _old_fingerprint(run)
        assert record["fingerprint"] != run.fingerprint
        (run.folder / "run.json").write_text(json.dumps(record))
    _no_training(monkeypatch)
    # A changed training setting is still refused, naming the way out for changed test sets.
    changed = write_config(
        tmp_path / "changed.yaml", {**experiment, "overrides": {"trainer": {"max_epochs": 2}}}
    )
    before = tree_state(out)
    outcome = run_cli(capsys, "compare", "--config", changed, "--resume")
    assert_refused(outcome, "stages/teacher/seed0", "another configuration", "--overwrite")
    assert "--resume once with the test sets it was run with" in outcome.err
    assert tree_state(out) == before
    # The same file: kept, nothing trained or tested; the records take today's fingerprints.
    outcome = run_cli(capsys, "compare", "--config", path, "--resume")
    assert outcome.code == 0, outcome.err
    assert "3 finished run(s) kept, 0 to run" in outcome.out and "re-test" not in outcome.out
    for run in runs:
        record = json.loads((run.folder / "run.json").read_text())
        assert record["fingerprint"] == run.fingerprint
        assert record["test_fingerprints"] == run.test_fingerprints
    assert json.loads((out / "results.json").read_text())["runs"] == [
        {**run, "fingerprint": spec.fingerprint}
        for run, spec in zip(report["runs"], runs, strict=True)
    ]
    # Old records with a test set added: only the new one is scored.
    for run in runs:
        record = json.loads((run.folder / "run.json").read_text())
        del record["test_fingerprints"]
        record["fingerprint"] = _old_fingerprint(run)
        (run.folder / "run.json").write_text(json.dumps(record))
    experiment["tests"]["again"] = _test_set(other)
    write_config(path, experiment)
    with torch_threads(1):
        outcome = run_cli(capsys, "compare", "--config", path, "--resume")
    assert outcome.code == 0, outcome.err
    assert "3 to re-test" in outcome.out and "re-testing on again (" in outcome.out
    for run, before in zip(runs, report["runs"], strict=True):
        metrics = json.loads((run.folder / "run.json").read_text())["metrics"]
        assert {k: v for k, v in metrics.items() if not k.startswith("again/")} == before["metrics"]
        assert metrics["again/mIoU"] == pytest.approx(before["metrics"]["other/mIoU"])


def test_a_test_set_that_fit_would_refuse_is_named_before_any_run(workspace, tmp_path, capsys):
    experiment = _experiment(
        tmp_path,
        base=str(workspace["root"] / "base.yaml"),
        stages={},
        variants={"plain": {}},
        tests={"old": {"data": {"init_args": {"patch_sise": 64}}}},
    )
    path = write_config(tmp_path / "experiment.yaml", experiment)
    outcome = run_cli(capsys, "compare", "--config", str(path))
    assert_refused(outcome, "tests.old", "patch_sise", "patch_size")
    assert not (tmp_path / "out").exists()


def test_a_test_set_added_changed_or_removed_is_scored_without_training(
    workspace, tmp_path, capsys, monkeypatch
):
    """``--resume`` with a new test set scores every finished run's recorded checkpoint on it and
    trains nothing; a test set with changed overrides is scored again (here by ``--jobs 2``
    subprocesses); a removed one leaves the records and the tables."""
    experiment = _experiment(
        tmp_path,
        base=str(workspace["root"] / "base.yaml"),
        seeds=[0],
        stages={},
        variants={"plain": {}, "faster": {"model": {"init_args": {"lr": 0.05}}}},
    )
    path = write_config(tmp_path / "experiment.yaml", experiment)
    with torch_threads(1):
        assert cli_main(["compare", "--config", str(path)]) == 0
    out = tmp_path / "out"
    checkpoints = _checkpoints(out)
    assert len(checkpoints) == 4  # best and last of both variants
    logs = sorted(out.rglob("metrics.csv"))  # a fit would add a CSV log
    _no_training(monkeypatch)

    other = make_dataset(tmp_path / "other", n=3, seed=7)
    experiment["tests"] = {"other": _test_set(other)}
    write_config(path, experiment)
    with torch_threads(1):
        outcome = run_cli(capsys, "compare", "--config", path, "--resume")
    assert outcome.code == 0, outcome.err
    assert "2 finished run(s) kept, 0 to run, 2 to re-test on new or changed test sets" in (
        outcome.out
    )
    assert outcome.out.count(": re-testing on other (trained in an earlier run)") == 2
    assert _checkpoints(out) == checkpoints and sorted(out.rglob("metrics.csv")) == logs
    report = json.loads((out / "results.json").read_text())
    assert report["tests"]["other"]["base"]["plain"]["n"] == 1
    for run in report["runs"]:
        folder = Path(run["folder"])
        direct = _score_directly(folder, _test_set(other), tmp_path / "direct" / run["name"])
        assert {k: run["metrics"][f"other/{k}"] for k in direct} == direct
        assert run["test_fingerprints"] == {"other": run["test_fingerprints"]["other"]}
        values = report["tests"]["other"]["base"][run["name"]]["values"]
        assert values == {"0": direct["mIoU"]}
    text = (out / "results.md").read_text()
    assert (
        "Test set `other` (the same checkpoints)" in text and "| other/mIoU | Δ vs plain |" in text
    )
    assert "0 run(s) run now and 2 re-tested (2 in all)" in text

    # Changed overrides: scored again, in worker processes.
    first = {run["folder"]: run for run in report["runs"]}
    moved = make_dataset(tmp_path / "moved", n=3, seed=8)
    experiment["tests"] = {"other": _test_set(moved)}
    write_config(path, experiment)
    outcome = run_cli(capsys, "compare", "--config", path, "--resume", "--jobs", "2")
    assert outcome.code == 0, outcome.err
    assert "2 to re-test" in outcome.out and outcome.out.count("re-tested, other/mIoU") == 2
    assert _checkpoints(out) == checkpoints and sorted(out.rglob("metrics.csv")) == logs
    for run in json.loads((out / "results.json").read_text())["runs"]:
        folder = Path(run["folder"])
        direct = _score_directly(folder, _test_set(moved), tmp_path / "moved_direct" / run["name"])
        assert {k: run["metrics"][f"other/{k}"] for k in direct} == direct
        assert (
            run["test_fingerprints"]["other"] != first[run["folder"]]["test_fingerprints"]["other"]
        )
        assert run["seconds"] == first[run["folder"]]["seconds"]  # the training time stays
        assert "geodistill: error" not in (folder / "run.log").read_text()  # the worker's output

    # Removed: gone from the records and the tables; nothing is scored.
    del experiment["tests"]
    write_config(path, experiment)
    outcome = run_cli(capsys, "compare", "--config", path, "--resume")
    assert outcome.code == 0, outcome.err
    assert "2 finished run(s) kept, 0 to run" in outcome.out and "re-test" not in outcome.out
    report = json.loads((out / "results.json").read_text())
    assert "tests" not in report
    for run in report["runs"]:
        assert all(key.startswith("test/") for key in run["metrics"])
        assert run["test_fingerprints"] == {}
        assert json.loads((Path(run["folder"]) / "run.json").read_text()) == run
    assert "other" not in (out / "results.md").read_text()


def test_resume_refuses_a_changed_training_setting_whatever_the_test_sets(done, capsys):
    changed = _experiment(
        done["root"],
        overrides={"trainer": {"max_epochs": 2}},
        tests={"again": {"data": {"init_args": {"batch_size": 2}}}},
    )
    path = write_config(done["root"] / "changed_training.yaml", changed)
    before = tree_state(done["out"])
    outcome = run_cli(capsys, "compare", "--config", path, "--resume")
    assert_refused(outcome, "stages/teacher/seed0", "another configuration", "--overwrite")
    assert tree_state(done["out"]) == before
