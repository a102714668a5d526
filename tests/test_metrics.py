"""Metrics checked against values computed by hand (arithmetic in the comments)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import Tensor

from geodistill.metrics import (
    PER_CLASS_KEYS,
    SUMMARY_KEYS,
    BoundaryF1,
    SegmentationMetrics,
    metrics_to_json,
    metrics_to_markdown,
)

I = 255  # noqa: E741  (ignore_index, short so the label maps stay readable)

# Region example: 3 classes, 3 ignored pixels, 13 valid pixels.
TARGET = torch.tensor(
    [
        [0, 0, 1, 1],
        [0, 0, 1, 1],
        [2, 2, I, I],
        [2, 2, 2, I],
    ]
)
PREDS = torch.tensor(
    [
        [0, 1, 1, 1],
        [0, 0, 1, 0],
        [2, 0, 2, 1],
        [2, 2, 2, 2],
    ]
)
# Confusion matrix over the 13 valid pixels (rows = target, cols = prediction):
#           p0 p1 p2 | row sum
#   t0   [  3, 1, 0 ]   4    (0,1) predicted 1
#   t1   [  1, 3, 0 ]   4    (1,3) predicted 0
#   t2   [  1, 0, 4 ]   5    (2,1) predicted 0
#   col     5  4  4     N = 13, diagonal = 10
# class 0: TP 3, FP 5-3=2, FN 4-3=1 -> IoU 3/6, P 3/5, R 3/4, F1 2*3/(2*3+2+1) = 6/9
# class 1: TP 3, FP 4-3=1, FN 4-3=1 -> IoU 3/5, P 3/4, R 3/4, F1 6/8
# class 2: TP 4, FP 4-4=0, FN 5-4=1 -> IoU 4/5, P 4/4, R 4/5, F1 8/9
EXPECTED_PER_CLASS = {
    "IoU": (3 / 6, 3 / 5, 4 / 5),
    "precision": (3 / 5, 3 / 4, 4 / 4),
    "recall": (3 / 4, 3 / 4, 4 / 5),
    "F1": (6 / 9, 6 / 8, 8 / 9),
}
EXPECTED_SUMMARY = {
    "mIoU": (0.5 + 0.6 + 0.8) / 3,  # 1.9 / 3
    "precision": (0.6 + 0.75 + 1.0) / 3,  # 2.35 / 3
    "recall": (0.75 + 0.75 + 0.8) / 3,  # 2.3 / 3
    "F1": (24 / 36 + 27 / 36 + 32 / 36) / 3,  # 83 / 108
    "OA": 10 / 13,
    # p_o = 10/13 = 130/169; p_e = (4*5 + 4*4 + 5*4) / 13^2 = 56/169
    # kappa = (p_o - p_e) / (1 - p_e) = (74/169) / (113/169) = 74/113
    "kappa": 74 / 113,
}
NAMES = ["water", "forest", "urban"]


def _metrics(num_classes: int = 3, **kwargs) -> SegmentationMetrics:
    names = NAMES + [f"extra{i}" for i in range(num_classes - 3)]
    return SegmentationMetrics(num_classes, class_names=names, **kwargs)


def _run(metric, preds: Tensor, target: Tensor) -> dict[str, Tensor]:
    metric.update(preds, target)
    return metric.compute()


def _assert_same(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], equal_nan=True, msg=key)


def _approx(value: float):
    return pytest.approx(value, abs=1e-6)


def test_region_metrics_match_hand_computed_values() -> None:
    out = _run(_metrics(), PREDS[None], TARGET[None])
    for key, expected in EXPECTED_SUMMARY.items():
        assert float(out[key]) == _approx(expected), key
    for prefix, values in EXPECTED_PER_CLASS.items():
        for name, expected in zip(NAMES, values, strict=True):
            assert float(out[f"{prefix}/{name}"]) == _approx(expected), f"{prefix}/{name}"
    expected_keys = set(SUMMARY_KEYS) | {f"{p}/{n}" for p in PER_CLASS_KEYS for n in NAMES}
    assert "boundary_F1_sparse" in SUMMARY_KEYS and "boundary_F1_sparse" in PER_CLASS_KEYS
    assert set(out) == expected_keys
    assert all(v.ndim == 0 for v in out.values())


def test_class_absent_from_target_and_prediction_is_excluded_from_macro() -> None:
    out = _run(_metrics(num_classes=4), PREDS[None], TARGET[None])
    for key in ("mIoU", "F1", "precision", "recall", "OA", "kappa"):
        assert float(out[key]) == _approx(EXPECTED_SUMMARY[key]), key
    for prefix in PER_CLASS_KEYS:
        assert math.isnan(out[f"{prefix}/extra0"]), prefix
    for prefix, macro in (("IoU", "mIoU"), ("F1", "F1"), ("precision", "precision")):
        per_class = torch.stack([out[f"{prefix}/{n}"] for n in [*NAMES, "extra0"]])
        assert float(out[macro]) == _approx(float(per_class.nanmean()))


def test_class_present_only_in_prediction_counts_in_macro() -> None:
    preds = PREDS.clone()
    preds[1, 3] = 3  # was a wrong 0 on a class-1 pixel
    out = _run(_metrics(num_classes=4), preds[None], TARGET[None])
    # class 0: TP 3, FP 1, FN 1 -> 3/5; class 1: TP 3, FP 1, FN 1 -> 3/5; class 2: 4/5 (unchanged)
    # class 3: TP 0, FP 1, FN 0 -> 0/1; mIoU = (0.6 + 0.6 + 0.8 + 0) / 4
    assert float(out["IoU/extra0"]) == 0.0
    assert float(out["IoU/water"]) == _approx(0.6)
    assert float(out["mIoU"]) == _approx(2.0 / 4)


def _without_sparse(metrics: dict[str, Tensor]) -> dict[str, Tensor]:
    """All but the sparse-label boundary F1, which scores predictions in narrow unlabelled gaps
    between classes on purpose (tests/test_boundary_metrics.py)."""
    return {k: v for k, v in metrics.items() if not k.startswith("boundary_F1_sparse")}


def test_ignored_pixels_change_nothing() -> None:
    reference = _without_sparse(_run(_metrics(), PREDS[None], TARGET[None]))
    ignored = TARGET == I
    for fill in (0, 1, 2):
        preds = torch.where(ignored, torch.full_like(PREDS, fill), PREDS)
        _assert_same(_without_sparse(_run(_metrics(), preds[None], TARGET[None])), reference)
    # An ignored frame with arbitrary predictions acts like the image border.
    target = torch.nn.functional.pad(TARGET, (2, 1, 1, 3), value=I)
    preds = torch.randint(0, 3, target.shape, generator=torch.Generator().manual_seed(0))
    preds[1:5, 2:6] = PREDS
    _assert_same(_without_sparse(_run(_metrics(), preds[None], target[None])), reference)


def test_logits_give_the_same_result_as_class_ids() -> None:
    noise = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    logits = noise + 5.0 * torch.nn.functional.one_hot(PREDS, 3).permute(2, 0, 1)[None]
    _assert_same(
        _run(_metrics(), logits, TARGET[None]), _run(_metrics(), PREDS[None], TARGET[None])
    )
    unbatched = _run(_metrics(), PREDS, TARGET)
    _assert_same(unbatched, _run(_metrics(), PREDS[None], TARGET[None]))


def _random_batch(seed: int, batch: int = 3, size: int = 12) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 4, (batch, size, size), generator=gen)
    target = target.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)  # blobs, not noise
    target[torch.rand(target.shape, generator=gen) < 0.1] = I
    preds = torch.where(
        torch.rand(target.shape, generator=gen) < 0.8,
        target.clamp(max=3),
        torch.randint(0, 4, target.shape, generator=gen),
    )
    return preds, target


def test_two_updates_equal_one_update_on_the_concatenation() -> None:
    (p1, t1), (p2, t2) = _random_batch(1), _random_batch(2)
    metric = _metrics(num_classes=4)
    metric.update(p1, t1)
    metric.update(p2, t2)
    both = _run(_metrics(num_classes=4), torch.cat([p1, p2]), torch.cat([t1, t2]))
    _assert_same(metric.compute(), both)
    only_first = _run(_metrics(num_classes=4), p1, t1)
    assert float(only_first["mIoU"]) != pytest.approx(float(both["mIoU"]), abs=1e-4)


def test_forward_returns_batch_values_and_accumulates() -> None:
    (p1, t1), (p2, t2) = _random_batch(3), _random_batch(4)
    metric = _metrics(num_classes=4)
    _assert_same(metric(p1, t1), _run(_metrics(num_classes=4), p1, t1))
    _assert_same(metric(p2, t2), _run(_metrics(num_classes=4), p2, t2))
    _assert_same(
        metric.compute(),
        _run(_metrics(num_classes=4), torch.cat([p1, p2]), torch.cat([t1, t2])),
    )


def test_reset_forgets_previous_batches() -> None:
    (p1, t1), (p2, t2) = _random_batch(5), _random_batch(6)
    metric = _metrics(num_classes=4)
    metric.update(p1, t1)
    metric.compute()
    metric.reset()
    metric.update(p2, t2)
    _assert_same(metric.compute(), _run(_metrics(num_classes=4), p2, t2))


def test_simulated_ddp_sync_sums_states_of_both_ranks() -> None:
    """Two 'ranks' via a fake all-gather: rank 1 records its states, rank 0 gathers them."""
    (p0, t0), (p1, t1) = _random_batch(7), _random_batch(8)
    recorded: list[Tensor] = []

    def record(tensor: Tensor, group=None) -> list[Tensor]:
        recorded.append(tensor.clone())
        return [tensor]

    def gather(tensor: Tensor, group=None) -> list[Tensor]:
        other = recorded.pop(0)
        assert other.shape == tensor.shape
        return [tensor, other]

    def distributed() -> bool:
        return True

    rank1 = _metrics(4, dist_sync_fn=record, distributed_available_fn=distributed)
    rank0 = _metrics(4, dist_sync_fn=gather, distributed_available_fn=distributed)
    _run(rank1, p1, t1)
    synced = _run(rank0, p0, t0)
    assert recorded == []
    _assert_same(synced, _run(_metrics(num_classes=4), torch.cat([p0, p1]), torch.cat([t0, t1])))


def test_invalid_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="class ids"):
        _metrics().update(torch.full((1, 4, 4), 3), TARGET[None])
    with pytest.raises(ValueError, match="class ids"):
        _metrics().update(PREDS[None], torch.full((1, 4, 4), 7))
    with pytest.raises(ValueError, match="logits"):
        _metrics().update(torch.rand(1, 4, 4, 4), TARGET[None])
    with pytest.raises(ValueError, match="integer"):
        _metrics().update(PREDS[None].float(), TARGET[None])
    with pytest.raises(ValueError, match="ignore_index"):
        SegmentationMetrics(3, ignore_index=0)
    with pytest.raises(ValueError, match="unique"):
        SegmentationMetrics(2, class_names=["a", "a"])


# Boundary example: 5x6 image, a 3x3 square of class 1 on class 0, predicted 1 px to the right.
SQUARE_TARGET = torch.tensor(
    [
        [0, 0, 0, 0, 0, 0],
        [0, 1, 1, 1, 0, 0],
        [0, 1, 1, 1, 0, 0],
        [0, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 0],
    ]
)
SQUARE_SHIFTED = torch.roll(SQUARE_TARGET, shifts=1, dims=1)
# Boundary pixels (4-neighbour of another class; the image border does not count):
#   class 1 target: the 8 ring pixels of the square (all but the centre (2,2));
#     prediction: the 8 ring pixels of the square at columns 2-4.
#     Common pixels: (1,2) (1,3) (3,2) (3,3) = 4  ->  tolerance 0: P = R = 4/8, F1 = 0.5
#   class 0 target: 3 pixels above, 3 below, 3 left, 3 right of the square = 12;
#     prediction: same pattern shifted right = 12.
#     Common: (0,2) (0,3) (4,2) (4,3) = 4  ->  tolerance 0: P = R = 4/12, F1 = 1/3
#   With tolerance 1 every boundary pixel has a counterpart 1 px away -> F1 = 1 for both.


def test_boundary_f1_shifted_square() -> None:
    metric = BoundaryF1(3, tolerance=0, average="none")
    f1 = _run(metric, SQUARE_SHIFTED[None], SQUARE_TARGET[None])
    assert metric.pred_matched.tolist() == [4, 4, 0]
    assert metric.pred_total.tolist() == [12, 8, 0]
    assert metric.target_matched.tolist() == [4, 4, 0]
    assert metric.target_total.tolist() == [12, 8, 0]
    assert f1[0].item() == _approx(1 / 3)
    assert f1[1].item() == _approx(0.5)
    assert math.isnan(f1[2])  # class 2 has no boundary anywhere
    macro = _run(BoundaryF1(3, tolerance=0), SQUARE_SHIFTED[None], SQUARE_TARGET[None])
    assert macro.item() == _approx((1 / 3 + 1 / 2) / 2)  # class 2 excluded: 5/12, not 5/18
    tolerant = _run(BoundaryF1(3, tolerance=1, average="none"), SQUARE_SHIFTED, SQUARE_TARGET)
    assert tolerant[:2].tolist() == [1.0, 1.0]


def test_boundary_f1_tolerance_is_exact_in_pixels() -> None:
    target = torch.zeros(5, 7, dtype=torch.long)
    target[1:4, 1:4] = 1
    preds = torch.roll(target, shifts=2, dims=1)  # square at columns 3-5
    # class 1 target ring: columns 1-3, pred ring: columns 3-5 (centres (2,2) and (2,4) excluded)
    # tolerance 1, precision: pred (1,5) (2,5) (3,5) are 2 columns from any target ring pixel,
    #   the other 5 are within 1 -> 5/8; recall symmetric: (1,1) (2,1) (3,1) miss -> 5/8
    # F1 = 2 * 5/8 * 5/8 / (5/8 + 5/8) = 5/8; with tolerance 2 everything matches.
    one = _run(BoundaryF1(2, tolerance=1, average="none"), preds, target)
    assert one[1].item() == _approx(5 / 8)
    two = _run(BoundaryF1(2, tolerance=2, average="none"), preds, target)
    assert two[1].item() == 1.0


def test_boundary_f1_tolerance_is_chebyshev() -> None:
    target = torch.zeros(6, 6, dtype=torch.long)
    target[1:4, 1:4] = 1
    preds = torch.zeros(6, 6, dtype=torch.long)
    preds[2:5, 2:5] = 1  # shifted diagonally by (1, 1)
    # class 1 target ring: (1,1) (1,2) (1,3) (2,1) (2,3) (3,1) (3,2) (3,3)
    # class 1 pred ring:   (2,2) (2,3) (2,4) (3,2) (3,4) (4,2) (4,3) (4,4)
    # common: (2,3) (3,2) -> tolerance 0: P = R = 2/8, F1 = 0.25
    exact = _run(BoundaryF1(2, tolerance=0, average="none"), preds, target)
    assert exact[1].item() == _approx(0.25)
    # Corners (1,1) and (4,4) are only matched diagonally (Chebyshev 1, Manhattan 2).
    tolerant = _run(BoundaryF1(2, tolerance=1, average="none"), preds, target)
    assert tolerant[1].item() == 1.0


def test_boundary_f1_ignore_neighbours_are_not_boundaries() -> None:
    target = torch.tensor(
        [
            [0, 0, 1, 1],
            [0, 0, I, 1],
            [0, 0, I, 1],
        ]
    )
    preds = torch.tensor(
        [
            [0, 0, 1, 1],
            [0, 0, 0, 1],
            [0, 0, 1, 1],
        ]
    )
    # Only (0,1)|(0,2) is a boundary between two valid pixels, in target and prediction.
    # (1,1), (2,1), (1,3), (2,3) touch ignored pixels only, and (1,2), (2,2) are ignored,
    # so the prediction's 0|1 edge at (1,2)|(1,3) counts for nothing.
    metric = BoundaryF1(2, tolerance=0, average="none")
    f1 = _run(metric, preds, target)
    assert metric.pred_total.tolist() == [1, 1]
    assert metric.target_total.tolist() == [1, 1]
    assert f1.tolist() == [1.0, 1.0]


def test_boundary_f1_is_dataset_level_not_mean_of_images() -> None:
    small_target = torch.zeros(4, 4, dtype=torch.long)
    small_target[1:3, 1:3] = 1
    metric = BoundaryF1(2, tolerance=0, average="none")
    metric.update(SQUARE_SHIFTED, SQUARE_TARGET)  # class 1: 4 of 8 matched each way
    metric.update(small_target, small_target)  # class 1: 4 of 4 (all 2x2 pixels are boundary)
    f1 = metric.compute()
    # class 1: P = R = (4 + 4) / (8 + 4) = 2/3 (mean of per-image F1 would be (0.5 + 1) / 2)
    # class 0: P = R = (4 + 8) / (12 + 8) = 0.6 (8 = 2 pixels on each side of the 2x2 square)
    assert f1.tolist() == [_approx(0.6), _approx(2 / 3)]


def test_boundary_only_in_prediction_is_undefined() -> None:
    target = torch.zeros(5, 5, dtype=torch.long)
    preds = target.clone()
    preds[1:3, 1:3] = 1
    # target has no boundary, so recall is 0/0 for every class: undefined, not 0, even though
    # the prediction has boundaries for classes 0 and 1; the image adds nothing to the counts.
    metric = BoundaryF1(3, tolerance=2, average="none")
    f1 = _run(metric, preds, target)
    assert all(math.isnan(v) for v in f1.tolist())
    assert metric.pred_total.tolist() == [0, 0, 0]
    assert math.isnan(_run(BoundaryF1(3), preds, target))


def test_segmentation_metrics_boundary_keys_match_boundary_f1() -> None:
    out = _run(SegmentationMetrics(3, boundary_tolerance=0), SQUARE_SHIFTED, SQUARE_TARGET)
    assert float(out["boundary_F1/0"]) == _approx(1 / 3)
    assert float(out["boundary_F1/1"]) == _approx(0.5)
    assert math.isnan(out["boundary_F1/2"])
    assert float(out["boundary_F1"]) == _approx(5 / 12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    preds, target = _random_batch(9)
    metric = _metrics(num_classes=4).to("cuda")
    out = _run(metric, preds.cuda(), target.cuda())
    assert all(v.device.type == "cuda" for v in out.values())
    cpu = _run(_metrics(num_classes=4), preds, target)
    _assert_same({k: v.cpu() for k, v in out.items()}, cpu)


def test_metrics_to_json_writes_sorted_plain_floats(tmp_path) -> None:
    path = tmp_path / "eval" / "metrics.json"
    metrics = {"mIoU": torch.tensor(0.5), "F1/b": torch.tensor(float("nan")), "OA": 0.25}
    assert metrics_to_json(metrics, path) == path
    text = path.read_text()
    assert text == '{\n  "F1/b": null,\n  "OA": 0.25,\n  "mIoU": 0.5\n}\n'
    assert json.loads(text) == {"F1/b": None, "OA": 0.25, "mIoU": 0.5}
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temp file left


def test_metrics_to_markdown_tables() -> None:
    metrics = {
        "mIoU": 0.63333,
        "F1": torch.tensor(0.768518),
        "precision": 0.78333,
        "recall": 0.766666,
        "OA": 10 / 13,
        "kappa": 74 / 113,
        "boundary_F1": 5 / 12,
        "IoU/water": 0.5,
        "F1/water": 2 / 3,
        "precision/water": 0.6,
        "recall/water": 0.75,
        "boundary_F1/water": 1 / 3,
        "boundary_F1_sparse": float("nan"),  # undefined: "–"
        "boundary_F1_sparse/water": 0.25,
        "IoU/a|b": float("nan"),  # undefined "–"; the keys left out are missing: "n/a"
    }
    expected = (
        "| metric | value |\n"
        "| --- | ---: |\n"
        "| mIoU (%) | 63.33 |\n"
        "| F1 (%) | 76.85 |\n"
        "| precision (%) | 78.33 |\n"
        "| recall (%) | 76.67 |\n"
        "| OA (%) | 76.92 |\n"
        "| kappa | 0.655 |\n"
        "| boundary F1 (%) | 41.67 |\n"
        "| boundary F1, sparse labels (%) | – |\n"
        "\n"
        "| class | IoU (%) | F1 (%) | precision (%) | recall (%) | boundary F1 (%) "
        "| boundary F1, sparse labels (%) |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n"
        "| water | 50.00 | 66.67 | 60.00 | 75.00 | 33.33 | 25.00 |\n"
        "| a\\|b | – | n/a | n/a | n/a | n/a | n/a |\n"
    )
    assert metrics_to_markdown(metrics, ["water", "a|b"]) == expected
