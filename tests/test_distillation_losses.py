"""Distillation losses and the attention map, on small hand-made tensors (no networks, no data)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geodistill.losses.attention import (
    boundary_distance,
    class_boundaries,
    distillation_attention,
)
from geodistill.losses.balance import capped_weight
from geodistill.losses.distillation import (
    FeatureAligner,
    FeatureDistillation,
    prediction_distillation,
)

IGNORE = 255


def halves(size: int = 8) -> torch.Tensor:
    """A ``(1, size, size)`` class map: left half 0, right half 1."""
    classes = torch.zeros(1, size, size, dtype=torch.long)
    classes[..., size // 2 :] = 1
    return classes


def constant_logits(values: list[float], size: int = 8, batch: int = 1) -> torch.Tensor:
    """``(batch, K, size, size)`` logits equal to ``values`` at every pixel."""
    return torch.tensor(values).view(1, -1, 1, 1).expand(batch, -1, size, size).clone()


def normalised_confidence(values: list[float]) -> float:
    probs = torch.tensor(values).softmax(0)
    k = len(values)
    return float((probs.max() - 1 / k) / (1 - 1 / k))


def all_valid(size: int = 8, batch: int = 1) -> torch.Tensor:
    return torch.ones(batch, size, size, dtype=torch.bool)


def all_ignored(size: int = 8, batch: int = 1) -> torch.Tensor:
    return torch.full((batch, size, size), IGNORE, dtype=torch.long)


# --------------------------------------------------------------------------------------------
# class boundaries and distances


def test_boundaries_of_two_halves_are_the_two_middle_columns():
    boundary = class_boundaries(halves())
    assert boundary.shape == (1, 8, 8) and boundary.dtype == torch.bool
    expected = torch.zeros(1, 8, 8, dtype=torch.bool)
    expected[..., [3, 4]] = True
    assert torch.equal(boundary, expected)


def test_uniform_map_has_no_boundary_and_every_distance_is_the_cap():
    classes = torch.full((2, 6, 7), 3, dtype=torch.long)
    assert not class_boundaries(classes).any()
    distance = boundary_distance(classes, max_distance=4)
    assert distance.shape == (2, 6, 7)
    assert torch.equal(distance, torch.full((2, 6, 7), 4.0))


def test_chessboard_distance_to_the_middle_columns():
    distance = boundary_distance(halves(), max_distance=5)
    # Columns 0..7: boundary at 3 and 4, distances grow by one per column away from them.
    expected_row = torch.tensor([3.0, 2.0, 1.0, 0.0, 0.0, 1.0, 2.0, 3.0])
    assert torch.equal(distance, expected_row.expand(1, 8, 8))


def test_distance_is_capped_at_max_distance():
    distance = boundary_distance(halves(), max_distance=2)
    expected_row = torch.tensor([2.0, 2.0, 1.0, 0.0, 0.0, 1.0, 2.0, 2.0])
    assert torch.equal(distance, expected_row.expand(1, 8, 8))


def test_distance_is_chessboard_not_euclidean_around_a_single_pixel():
    classes = torch.zeros(1, 9, 9, dtype=torch.long)
    classes[0, 4, 4] = 1
    distance = boundary_distance(classes, max_distance=10)
    # The pixel and its 8 neighbours form the boundary; the diagonal corner (0, 0) is
    # max(|4 - 0|, |4 - 0|) - 1 = 3 steps from the nearest boundary pixel (3, 3).
    assert distance[0, 3:6, 3:6].eq(0).all()
    assert distance[0, 0, 0] == 3.0 and distance[0, 0, 4] == 3.0 and distance[0, 1, 1] == 2.0


# --------------------------------------------------------------------------------------------
# attention


def test_attention_shape_and_range_on_random_inputs():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 16, 12) * 3
    mask = torch.randint(0, 4, (3, 16, 12))
    mask[:, :5] = IGNORE
    valid = torch.rand(3, 16, 12) > 0.1
    attention = distillation_attention(logits, mask, valid, IGNORE)
    assert attention.shape == (3, 16, 12)
    assert attention.min() >= 0 and attention.max() <= 1
    assert attention.max() > 0  # some pixels are trusted
    assert not attention.requires_grad


def test_attention_is_zero_on_invalid_pixels():
    logits = constant_logits([4.0, 0.0])
    valid = all_valid()
    valid[0, 2, 5] = False
    attention = distillation_attention(logits, all_ignored(), valid, IGNORE)
    assert attention[0, 2, 5] == 0
    assert attention[valid].gt(0).all()


def test_attention_is_zero_where_the_teacher_contradicts_the_fine_label():
    logits = constant_logits([4.0, 0.0])  # the teacher says class 0 everywhere
    mask = all_ignored()
    mask[0, 1, 1] = 1  # a fine label the teacher gets wrong ...
    mask[0, 6, 6] = 0  # ... and one it gets right
    attention = distillation_attention(logits, mask, all_valid(), IGNORE, boundary_width=0)
    assert attention[0, 1, 1] == 0
    assert attention[0, 6, 6] == pytest.approx(normalised_confidence([4.0, 0.0]))


def test_attention_is_zero_on_fine_label_boundaries_and_ramps_up_inside():
    mask = halves()
    logits = torch.stack([1.0 - mask.float(), mask.float()], dim=1) * 6  # agrees with the label
    attention = distillation_attention(logits, mask, all_valid(), IGNORE, boundary_width=4)
    confidence = normalised_confidence([6.0, 0.0])
    assert attention[..., [3, 4]].eq(0).all()
    # Column c is min(d, 4) / 4 trusted, with d = 3, 2, 1, 0, 0, 1, 2, 3.
    ramp = torch.tensor([3, 2, 1, 0, 0, 1, 2, 3]) / 4 * confidence
    assert torch.allclose(attention[0], ramp.expand(8, 8), atol=1e-6)


def test_attention_on_unlabelled_pixels_far_from_teacher_boundaries_is_the_confidence():
    values = [2.0, 0.5, -1.0]
    attention = distillation_attention(
        constant_logits(values), all_ignored(), all_valid(), IGNORE, boundary_width=3
    )
    # The teacher predicts one class everywhere: no boundary, so only its confidence counts.
    expected = normalised_confidence(values)
    assert 0 < expected < 1
    assert torch.allclose(attention, torch.full_like(attention, expected), atol=1e-6)


def test_attention_follows_the_teachers_own_boundaries_on_unlabelled_pixels():
    predicted = halves()
    logits = torch.stack([1.0 - predicted.float(), predicted.float()], dim=1) * 6
    attention = distillation_attention(logits, all_ignored(), all_valid(), IGNORE, 4)
    assert attention[..., [3, 4]].eq(0).all()
    assert attention[..., 0].gt(0).all()


def test_confident_teachers_get_more_attention_and_uniform_logits_none():
    mask, valid = all_ignored(), all_valid()
    confident = distillation_attention(constant_logits([5.0, 0.0]), mask, valid, IGNORE)
    uncertain = distillation_attention(constant_logits([0.5, 0.0]), mask, valid, IGNORE)
    uniform = distillation_attention(constant_logits([1.0, 1.0]), mask, valid, IGNORE)
    assert (confident > uncertain).all()
    assert (uncertain > 0).all()
    assert torch.equal(uniform, torch.zeros_like(uniform))


def test_confidence_power_lowers_attention():
    values = [1.0, 0.0]
    mask, valid = all_ignored(), all_valid()
    plain = distillation_attention(constant_logits(values), mask, valid, IGNORE)
    squared = distillation_attention(
        constant_logits(values), mask, valid, IGNORE, confidence_power=2.0
    )
    assert (squared < plain).all()
    assert torch.allclose(squared, plain**2, atol=1e-6)


# --------------------------------------------------------------------------------------------
# prediction distillation


def manual_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-pixel ``T² · KL(teacher || student)`` computed with ``F.kl_div``: ``(B, H, W)``."""
    log_s = F.log_softmax(student / temperature, dim=1)
    log_t = F.log_softmax(teacher / temperature, dim=1)
    return F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(1) * temperature**2


@pytest.fixture
def logits_pair() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.randn(2, 3, 6, 8), torch.randn(2, 3, 6, 8) * 2


def test_prediction_distillation_is_zero_for_identical_logits(logits_pair):
    _, teacher = logits_pair
    loss = prediction_distillation(teacher.clone(), teacher, torch.ones(2, 6, 8, dtype=torch.bool))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_prediction_distillation_matches_the_formula(logits_pair):
    student, teacher = logits_pair
    valid = torch.ones(2, 6, 8, dtype=torch.bool)
    for temperature in (1.0, 2.0, 3.0):
        loss = prediction_distillation(student, teacher, valid, temperature=temperature)
        expected = manual_kl(student, teacher, temperature).mean()
        assert loss.item() > 0
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_prediction_distillation_t_squared_scaling(logits_pair):
    student, teacher = logits_pair
    valid = torch.ones(2, 6, 8, dtype=torch.bool)
    loss = prediction_distillation(student, teacher, valid, temperature=3.0)
    log_s = F.log_softmax(student / 3.0, dim=1)
    p_t = F.softmax(teacher / 3.0, dim=1)
    plain_kl = (p_t * (p_t.log() - log_s)).sum(1).mean()
    assert loss.item() == pytest.approx(9.0 * plain_kl.item(), rel=1e-5)


def test_prediction_distillation_attention_weights(logits_pair):
    student, teacher = logits_pair
    valid = torch.ones(2, 6, 8, dtype=torch.bool)
    plain = prediction_distillation(student, teacher, valid)
    ones = prediction_distillation(student, teacher, valid, attention=torch.ones(2, 6, 8))
    zeros = prediction_distillation(student, teacher, valid, attention=torch.zeros(2, 6, 8))
    assert ones.item() == pytest.approx(plain.item(), rel=1e-6)
    assert zeros.item() == 0.0

    attention = torch.ones(2, 6, 8)
    attention[..., :4] = 2.0  # double the weight of the left half
    doubled = prediction_distillation(student, teacher, valid, attention=attention)
    kl = manual_kl(student, teacher, 2.0)
    expected = (attention * kl).sum() / valid.sum()
    assert doubled.item() == pytest.approx(expected.item(), rel=1e-5)
    # The change is exactly the left half's KL once more, over all valid pixels.
    change = kl[..., :4].sum() / valid.sum()
    assert (doubled - plain).item() == pytest.approx(change.item(), rel=1e-4)


def test_prediction_distillation_ignores_invalid_pixels(logits_pair):
    student, teacher = logits_pair
    valid = torch.ones(2, 6, 8, dtype=torch.bool)
    valid[0, :3] = False
    loss = prediction_distillation(student, teacher, valid)
    wild = student.clone()
    wild[0, :, :3] = torch.randn(3, 3, 8) * 50
    assert prediction_distillation(wild, teacher, valid).item() == pytest.approx(loss.item())
    kl = manual_kl(student, teacher, 2.0)
    assert loss.item() == pytest.approx((kl[valid].sum() / valid.sum()).item(), rel=1e-5)
    # Nothing valid: zero, not NaN.
    none = prediction_distillation(student, teacher, torch.zeros_like(valid))
    assert none.item() == 0.0


def test_prediction_distillation_gradient_reaches_the_student_only(logits_pair):
    student, teacher = logits_pair
    student = student.clone().requires_grad_(True)
    assert not teacher.requires_grad
    loss = prediction_distillation(student, teacher, torch.ones(2, 6, 8, dtype=torch.bool))
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


# --------------------------------------------------------------------------------------------
# feature alignment and distillation


def test_aligner_is_the_identity_when_channels_match_and_a_1x1_conv_otherwise():
    same = FeatureAligner(8, 8)
    assert isinstance(same.projection, nn.Identity)
    assert len(list(same.parameters())) == 0
    other = FeatureAligner(4, 8)
    assert isinstance(other.projection, nn.Conv2d)
    assert other.projection.kernel_size == (1, 1)
    assert (other.projection.in_channels, other.projection.out_channels) == (4, 8)


def test_aligner_resizes_the_student_to_the_teacher_grid_and_normalises():
    torch.manual_seed(2)
    aligner = FeatureAligner(4, 8)
    student, teacher = aligner(torch.randn(2, 4, 5, 5), torch.randn(2, 8, 10, 10) * 7 + 3)
    assert student.shape == teacher.shape == (2, 8, 10, 10)
    # Standardised over channels at every pixel.
    for side in (student, teacher):
        assert torch.allclose(side.mean(1), torch.zeros(2, 10, 10), atol=1e-5)
        assert torch.allclose(side.var(1, unbiased=False), torch.ones(2, 10, 10), atol=1e-3)


def test_feature_distillation_of_identical_features_is_zero():
    torch.manual_seed(3)
    features = [torch.randn(2, 8, 8, 8), torch.randn(2, 4, 16, 16)]
    distill = FeatureDistillation([8, 4], [8, 4])
    valid = torch.ones(2, 16, 16, dtype=torch.bool)
    loss = distill([f.clone() for f in features], features, valid)
    assert loss.item() == pytest.approx(0.0, abs=1e-10)


def test_feature_distillation_is_scale_invariant():
    torch.manual_seed(4)
    student, teacher = [torch.randn(2, 8, 8, 8)], [torch.randn(2, 8, 8, 8)]
    distill = FeatureDistillation([8], [8])
    valid = torch.ones(2, 8, 8, dtype=torch.bool)
    loss = distill(student, teacher, valid)
    scaled = distill(student, [teacher[0] * 5], valid)
    assert loss.item() > 0.1
    assert scaled.item() == pytest.approx(loss.item(), rel=1e-4)


def test_feature_distillation_attention_selects_where_differences_count():
    torch.manual_seed(5)
    teacher = torch.randn(1, 8, 8, 8)
    student = teacher.clone()
    student[..., :4, :] = torch.randn(1, 8, 4, 8)  # features differ on the top half only
    distill = FeatureDistillation([8], [8])
    valid = torch.ones(1, 16, 16, dtype=torch.bool)  # full resolution: twice the feature grid
    attention = torch.ones(1, 16, 16)
    attention[..., :8, :] = 0.0  # distrust the top half
    assert distill([student], [teacher], valid, attention).item() == pytest.approx(0.0, abs=1e-10)
    trusted = distill([student], [teacher], valid, torch.ones(1, 16, 16))
    plain = distill([student], [teacher], valid)
    assert trusted.item() > 0.1
    assert trusted.item() == pytest.approx(plain.item(), rel=1e-6)


def test_feature_distillation_ignores_invalid_cells():
    torch.manual_seed(6)
    teacher = torch.randn(1, 8, 8, 8)
    student = teacher.clone()
    student[..., :, :4] = torch.randn(1, 8, 8, 4)  # left half differs
    distill = FeatureDistillation([8], [8])
    valid = torch.ones(1, 8, 8, dtype=torch.bool)
    valid[..., :4] = False
    assert distill([student], [teacher], valid).item() == pytest.approx(0.0, abs=1e-10)
    # Also with an attention map that trusts everything: validity still masks (as for predictions).
    everywhere = torch.ones(1, 8, 8)
    assert distill([student], [teacher], valid, everywhere).item() == pytest.approx(0.0, abs=1e-10)
    other = torch.randn(1, 8, 8, 8)
    assert distill([other], [teacher], valid, everywhere).item() == pytest.approx(
        distill([other], [teacher], valid).item(), rel=1e-6
    )


def test_feature_distillation_is_the_mean_over_levels():
    torch.manual_seed(7)
    s = [torch.randn(1, 8, 4, 4), torch.randn(1, 4, 8, 8)]
    t = [torch.randn(1, 8, 4, 4), torch.randn(1, 4, 8, 8)]
    valid = torch.ones(1, 8, 8, dtype=torch.bool)
    both = FeatureDistillation([8, 4], [8, 4])(s, t, valid)
    first = FeatureDistillation([8], [8])(s[:1], t[:1], valid)
    second = FeatureDistillation([4], [4])(s[1:], t[1:], valid)
    assert both.item() == pytest.approx((first.item() + second.item()) / 2, rel=1e-6)


def test_feature_distillation_gradients_reach_projection_and_student():
    torch.manual_seed(8)
    distill = FeatureDistillation([4], [8])
    student = torch.randn(2, 4, 4, 4, requires_grad=True)
    teacher = torch.randn(2, 8, 8, 8)
    loss = distill([student], [teacher], torch.ones(2, 16, 16, dtype=torch.bool))
    assert math.isfinite(loss.item()) and loss.item() > 0
    loss.backward()
    projection = distill.aligners[0].projection
    assert projection.weight.grad is not None and projection.weight.grad.abs().sum() > 0
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_feature_distillation_level_count_mismatch_is_a_value_error():
    with pytest.raises(ValueError, match="2 student levels for 1 teacher levels"):
        FeatureDistillation([4, 8], [8])
    distill = FeatureDistillation([8], [8])
    with pytest.raises(ValueError):
        distill(
            [torch.randn(1, 8, 4, 4)] * 2,
            [torch.randn(1, 8, 4, 4)],
            torch.ones(1, 4, 4, dtype=torch.bool),
        )


# --------------------------------------------------------------------------------------------
# capping a distillation term's weight


def test_capped_weight_is_unchanged_below_the_cap():
    weight = capped_weight(2.0, torch.tensor(1.0), torch.tensor(1.0), max_ratio=3.0)
    assert weight.item() == 2.0  # 2 · 1 <= 3 · 1
    at_the_cap = capped_weight(3.0, torch.tensor(1.0), torch.tensor(1.0), max_ratio=3.0)
    assert at_the_cap.item() == 3.0


def test_capped_weight_lowers_the_weight_to_the_cap_above_it():
    term, supervised = torch.tensor(10.0), torch.tensor(0.5)
    weight = capped_weight(2.0, term, supervised, max_ratio=4.0)
    assert weight.item() == pytest.approx(4.0 * 0.5 / 10.0)  # 2 · 10 = 20 > 4 · 0.5 = 2
    assert (weight * term).item() == pytest.approx(4.0 * supervised.item())


def test_capped_weight_without_a_cap_or_with_zero_weight_is_the_weight():
    term, supervised = torch.tensor(100.0), torch.tensor(0.1)
    for weight, ratio in ((2.0, None), (0.0, 0.5), (0.0, None)):
        value = capped_weight(weight, term, supervised, ratio)
        assert isinstance(value, torch.Tensor) and value.dtype == term.dtype
        assert value.item() == weight
    # a term of zero or less keeps its weight
    assert capped_weight(2.0, torch.tensor(-1.0), supervised, 0.5).item() == 2.0
    assert capped_weight(2.0, torch.tensor(0.0), supervised, 0.5).item() == 2.0


@pytest.mark.parametrize("ratio", [0.0, -1.0])
def test_capped_weight_refuses_a_ratio_that_is_not_positive(ratio):
    with pytest.raises(ValueError, match=f"max_ratio must be > 0, got {ratio}"):
        capped_weight(1.0, torch.tensor(1.0), torch.tensor(1.0), ratio)


def test_no_gradient_flows_through_the_cap_factor():
    term = torch.tensor(10.0, requires_grad=True)
    supervised = torch.tensor(0.5, requires_grad=True)
    weight = capped_weight(2.0, term, supervised, max_ratio=4.0)
    assert not weight.requires_grad
    (weight * term).backward()
    # d(weight · term)/d(term) is the capped weight alone; the supervised loss gets nothing
    assert term.grad is not None and term.grad.item() == pytest.approx(weight.item())
    assert supervised.grad is None
