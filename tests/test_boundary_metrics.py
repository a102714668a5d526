"""Boundary F1 on dense and sparse labels: undefined is NaN (shown "–", left out of means), and the
sparse-label boundary F1 finds boundaries across narrow unlabelled gaps (arithmetic in comments)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import Tensor

from geodistill.demo import results_text
from geodistill.experiments.summary import markdown, summarise
from geodistill.metrics import (
    UNDEFINED,
    BoundaryF1,
    SegmentationMetrics,
    SparseBoundaryF1,
    default_boundary_gap,
    format_metric,
    mean_defined,
    metrics_to_json,
    metrics_to_markdown,
)
from geodistill.reporting import results_table

I = 255  # noqa: E741  (ignore_index, short so the label maps stay readable)


def _f1(metric, preds: Tensor, target: Tensor) -> list[float]:
    metric.update(preds, target)
    return metric.compute().tolist()


def _same(a: list[float], b: list[float]) -> bool:
    return all(
        (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y)
        for x, y in zip(a, b, strict=True)
    )


# Dense labels: a 3x3 square of class 1 on class 0, predicted 1 px to the right (the hand-made
# example of tests/test_metrics.py): tolerance 0 gives class 0: 4/12 each way -> 1/3, class 1:
# 4/8 each way -> 1/2, class 2: no boundary -> NaN.
SQUARE = torch.zeros(5, 6, dtype=torch.long)
SQUARE[1:4, 1:4] = 1
SHIFTED = torch.roll(SQUARE, shifts=1, dims=1)


def test_dense_labels_both_boundary_f1s_agree_with_the_hand_value() -> None:
    for metric in (BoundaryF1, SparseBoundaryF1):
        f1 = _f1(metric(3, tolerance=0, average="none"), SHIFTED, SQUARE)
        assert _same(f1, [1 / 3, 1 / 2, math.nan]), metric.__name__
        macro = _f1(metric(3, tolerance=0), SHIFTED, SQUARE)
        assert macro == pytest.approx((1 / 3 + 1 / 2) / 2)
    # And on random dense blobs, at every tolerance.
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (2, 6, 6), generator=gen).repeat_interleave(2, 1)
    target = target.repeat_interleave(2, 2)
    preds = torch.where(torch.rand(target.shape, generator=gen) < 0.8, target, 0)
    for tolerance in (0, 1, 2):
        dense = _f1(BoundaryF1(3, tolerance, average="none"), preds, target)
        sparse = _f1(SparseBoundaryF1(3, tolerance, average="none"), preds, target)
        assert _same(dense, sparse) and not any(math.isnan(v) for v in dense)


# Sparse labels: three 1x9 images, class 0 at columns 0-2, a 3-pixel unlabelled gap (3-5), class 1
# at columns 6-8. No two labelled pixels of different classes touch, so BoundaryF1 finds no
# boundary. Tolerance 2 -> default gap 5: the labelled edges, columns 2 (class 0) and 6 (class 1),
# are 4 apart, so both are boundary pixels (one per image and class: 3 each), and the gap
# pixels 3-5 are part of the boundary.
GAP_TARGET = torch.tensor([[[0, 0, 0, I, I, I, 1, 1, 1]]]).repeat(3, 1, 1)
GAP_PREDS = torch.tensor(
    [
        [[0, 0, 0, 0, 1, 1, 1, 1, 1]],  # edges: class 0 at col 3, class 1 at col 4: in the gap
        [[0, 0, 0, 0, 0, 0, 1, 1, 1]],  # class 0 at col 5 (in the gap), class 1 at col 6
        [[0, 0, 0, 0, 0, 0, 0, 0, 1]],  # crosses into class 1: class 0 at col 7, class 1 at 8
    ]
)
# Tolerance 2:
# class 0: predicted cols 3, 5 match across the gap; col 7 is labelled, 5 from col 2: missed.
#   P = 2/3; labelled col 2 matched in images 0, 1 (a predicted edge in the gap), not 2: R = 2/3
#   -> F1 = 2/3
# class 1: cols 4 (gap), 6 (exact), 8 (2 from col 6) all match: P = 3/3; R = 3/3 -> F1 = 1
# macro (2/3 + 1) / 2 = 5/6.
# Tolerance 1 (gap 5 given): class 1's col 8 is now 2 > 1 from col 6: P = 2/3, R = 2/3 -> 2/3.


def test_interiors_with_a_gap_old_boundary_f1_undefined_sparse_one_hand_value() -> None:
    old = BoundaryF1(2, tolerance=2, average="none")
    assert all(math.isnan(v) for v in _f1(old, GAP_PREDS, GAP_TARGET))
    assert old.target_total.tolist() == [0, 0]
    sparse = SparseBoundaryF1(2, tolerance=2, average="none")
    assert sparse.gap == 5 == default_boundary_gap(2)
    assert _f1(sparse, GAP_PREDS, GAP_TARGET) == [pytest.approx(2 / 3), 1.0]
    assert sparse.pred_matched.tolist() == [2, 3] and sparse.pred_total.tolist() == [3, 3]
    assert sparse.target_matched.tolist() == [2, 3] and sparse.target_total.tolist() == [3, 3]
    tight = SparseBoundaryF1(2, tolerance=1, gap=5, average="none")
    assert _f1(tight, GAP_PREDS, GAP_TARGET) == [pytest.approx(2 / 3), pytest.approx(2 / 3)]
    out = SegmentationMetrics(2, class_names=["a", "b"])(GAP_PREDS, GAP_TARGET)
    assert math.isnan(out["boundary_F1"]) and math.isnan(out["boundary_F1/a"])
    assert float(out["boundary_F1_sparse"]) == pytest.approx(5 / 6)
    assert float(out["boundary_F1_sparse/a"]) == pytest.approx(2 / 3)


@pytest.mark.parametrize("width", [1, 2, 3])
@pytest.mark.parametrize("tolerance", [0, 2])
def test_a_transition_anywhere_inside_a_narrow_gap_scores_one(width: int, tolerance: int) -> None:
    target = torch.tensor([[0, 0, 0] + [I] * width + [1, 1, 1]])
    for split in range(width + 1):  # the predicted transition anywhere in the gap
        preds = torch.tensor([[0] * (3 + split) + [1] * (3 + width - split)])
        metric = SparseBoundaryF1(2, tolerance=tolerance, gap=4, average="none")
        assert _f1(metric, preds, target) == [1.0, 1.0], split
        assert math.isnan(_f1(BoundaryF1(2, tolerance=tolerance), preds, target))


def test_gaps_wider_than_gap_and_unlabelled_surroundings_are_no_boundary() -> None:
    target = GAP_TARGET[:1]  # labelled edges 4 apart
    preds = GAP_PREDS[:1]
    assert math.isnan(_f1(SparseBoundaryF1(2, tolerance=1), preds, target))  # default gap 3
    assert math.isnan(_f1(SparseBoundaryF1(2, tolerance=2, gap=3), preds, target))
    assert not math.isnan(_f1(SparseBoundaryF1(2, tolerance=2, gap=4), preds, target))
    # A labelled blob in unlabelled surroundings, no other class near: its edge is unknown.
    island = torch.full((7, 7), I)
    island[2:5, 2:5] = 1
    assert math.isnan(_f1(SparseBoundaryF1(2), torch.zeros(7, 7, dtype=torch.long), island))
    with pytest.raises(ValueError, match="gap"):
        SparseBoundaryF1(2, gap=0)


def test_no_labelled_boundary_at_all_is_nan_for_both() -> None:
    target = torch.zeros(1, 6, 6, dtype=torch.long)
    preds = target.clone()
    preds[0, 1:4, 1:4] = 1  # predicted boundaries do not make the labels' boundary defined
    out = SegmentationMetrics(2)(preds, target)
    for key in ("boundary_F1", "boundary_F1/0", "boundary_F1_sparse", "boundary_F1_sparse/1"):
        assert math.isnan(out[key]), key
    assert not math.isnan(out["mIoU"])


def test_a_missed_labelled_boundary_scores_zero_not_nan() -> None:
    blank = torch.zeros_like(SQUARE)  # the prediction has no boundary at all
    for metric in (BoundaryF1, SparseBoundaryF1):
        assert _same(_f1(metric(3, average="none"), blank, SQUARE), [0.0, 0.0, math.nan])
        assert _f1(metric(3), blank, SQUARE) == 0.0
    assert _f1(SparseBoundaryF1(2, tolerance=2), torch.zeros_like(GAP_TARGET), GAP_TARGET) == 0.0


def test_an_image_without_labelled_boundary_adds_nothing() -> None:
    alone = BoundaryF1(3, tolerance=0, average="none")
    alone.update(SHIFTED, SQUARE)
    mixed = BoundaryF1(3, tolerance=0, average="none")
    flat = torch.zeros_like(SQUARE)
    noisy = torch.randint(0, 3, SQUARE.shape, generator=torch.Generator().manual_seed(1))
    mixed.update(torch.stack([SHIFTED, noisy]), torch.stack([SQUARE, flat]))
    for name in ("pred_matched", "pred_total", "target_matched", "target_total"):
        assert getattr(mixed, name).tolist() == getattr(alone, name).tolist(), name


def test_undefined_is_null_in_json_and_dash_in_every_table(tmp_path) -> None:
    metrics = {"mIoU": 0.5, "boundary_F1": math.nan, "boundary_F1_sparse": 0.25, "OA": 0.9}
    path = metrics_to_json(metrics, tmp_path / "m.json")
    loaded = json.loads(path.read_text())  # strict JSON: NaN is written as null
    assert loaded["boundary_F1"] is None and loaded["boundary_F1_sparse"] == 0.25
    assert format_metric(None) == format_metric(math.nan) == UNDEFINED == "–"
    assert format_metric(torch.tensor(0.123456), digits=1) == "12.3"
    table = metrics_to_markdown(metrics, [])
    assert (
        "| boundary F1 (%) | – |" in table and "| boundary F1, sparse labels (%) | 25.00 |" in table
    )
    lines = results_text({"fine_only": {"mIoU": 0.5, "boundary_F1": math.nan}}, {})
    assert lines[1].split()[-3:] == ["50.0", "–", "–"]  # mIoU, boundary F1, no scene accuracy


def test_means_over_runs_leave_undefined_out() -> None:
    assert mean_defined([0.5, math.nan, None, 0.7]) == pytest.approx(0.6)
    assert math.isnan(mean_defined([math.nan, None])) and math.isnan(mean_defined([]))

    def run(miou: float, boundary: float) -> dict[str, float]:
        return {"mIoU": miou, "boundary_F1": boundary, "OA": 0.9, "IoU/a": miou}

    seeds = [
        {"fine_only": run(0.4, math.nan)},
        {"fine_only": run(0.6, 0.3)},
        {"fine_only": run(0.5, 0.5)},
    ]
    row = results_table(seeds, ["a"]).splitlines()[-1]
    assert "| 40.00 ± 10.00 (2/3 runs) |" in row  # boundary F1: mean and std of 0.3 and 0.5
    undefined = [{"fine_only": run(0.4, math.nan)}, {"fine_only": run(0.6, math.nan)}]
    assert results_table(undefined, ["a"]).splitlines()[-1].split(" | ")[2] == "–"
    # geodistill compare: run records hold null (JSON) for an undefined value.
    records = [
        {
            "kind": "variant",
            "name": "base",
            "budget": "b",
            "seed": seed,
            "seconds": 1.0,
            "metrics": {"test/mIoU": 0.5, "test/boundary_F1": value},
        }
        for seed, value in enumerate([None, 0.2, 0.4])
    ]
    summary = summarise(records, "test/boundary_F1", "base", ["base"], ["b"])
    assert summary.spreads["b"]["base"].mean == pytest.approx(0.3)
    text = markdown(summary, records, {})
    assert "| base | 30.00 ± 14.14 | – | 2 | 1 |" in text  # the headline: 2 of 3 seeds defined
    # Every summary metric, in SUMMARY_KEYS order: mIoU, then F1 ... kappa and
    # boundary_F1_sparse never recorded, boundary_F1 the mean of the defined 0.2 and 0.4.
    assert text.splitlines()[-1] == "| base | 50.00 | – | – | – | – | – | 30.00 | – |"


def test_dilation_is_the_chebyshev_square_of_a_max_pool() -> None:
    from geodistill.metrics.segmentation import _dilate

    mask = torch.rand(2, 9, 13, generator=torch.Generator().manual_seed(2)) > 0.85
    for radius in range(6):
        pooled = torch.nn.functional.max_pool2d(
            mask.unsqueeze(1).float(), 2 * radius + 1, stride=1, padding=radius
        )
        assert torch.equal(_dilate(mask, radius), pooled.squeeze(1) > 0), radius


def test_sparse_column_only_where_the_labels_have_gaps() -> None:
    dense = {"mIoU": 0.5, "boundary_F1": 0.4, "boundary_F1_sparse": 0.4, "OA": 0.9, "IoU/a": 0.5}
    header = results_table({"fine_only": dense}, ["a"]).splitlines()[0]
    assert "boundary_F1_sparse" not in header  # dense labels: the two scores are equal
    assert "sparse" not in results_text({"fine_only": dense}, {})[0]  # no extra column
    gaps = {**dense, "boundary_F1": math.nan, "boundary_F1_sparse": 0.6}
    table = results_table({"fine_only": gaps}, ["a"]).splitlines()
    assert table[0].startswith("| method | mIoU | boundary_F1 | boundary_F1_sparse | OA |")
    assert table[-1] == "| fine_only | 50.00 | – | 60.00 | 90.00 | 50.00 | – |"
    lines = results_text({"fine_only": gaps}, {"fine_only": 0.75})
    assert "sparse bF1" in lines[0]
    assert lines[1].split()[-4:] == ["50.0", "–", "60.0", "75.0"]
