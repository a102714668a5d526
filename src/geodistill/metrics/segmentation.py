"""Dataset-level segmentation metrics (region and boundary quality) and report writers.

Region metrics come from torchmetrics classification metrics sharing state through a
``MetricCollection`` compute group; boundary quality comes from :class:`BoundaryF1`. All states are
sum-reduced tensors, so accumulation over batches and DDP synchronisation are exact: every score is
computed once from dataset-level counts, never averaged over batches or images.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCohenKappa,
    MulticlassF1Score,
    MulticlassJaccardIndex,
    MulticlassPrecision,
    MulticlassRecall,
    MulticlassStatScores,
)
from torchmetrics.wrappers.abstract import WrapperMetric

from geodistill.atomic import atomic_output

__all__ = [
    "PER_CLASS_KEYS",
    "SUMMARY_KEYS",
    "BoundaryF1",
    "SegmentationMetrics",
    "metrics_to_json",
    "metrics_to_markdown",
]

SUMMARY_KEYS: tuple[str, ...] = ("mIoU", "F1", "precision", "recall", "OA", "kappa", "boundary_F1")
"""Dataset-level keys of :meth:`SegmentationMetrics.compute`, in report order."""

PER_CLASS_KEYS: tuple[str, ...] = ("IoU", "F1", "precision", "recall", "boundary_F1")
"""Per-class key prefixes of :meth:`SegmentationMetrics.compute` (``f"{prefix}/{class_name}"``)."""


def _format_inputs(preds: Tensor, target: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Return ``(B, H, W)`` long class ids for both inputs, so every metric sees identical labels.

    ``preds`` may be class ids shaped like ``target`` or scores ``(B, C, H, W)`` (argmax over C);
    a single unbatched ``(H, W)`` target is also accepted.
    """
    if target.ndim == 2:
        target, preds = target.unsqueeze(0), preds.unsqueeze(0)
    if target.ndim != 3:
        raise ValueError(f"target must be (B, H, W) or (H, W); got shape {tuple(target.shape)}")
    if target.is_floating_point():
        raise ValueError(f"target must hold integer class ids; got dtype {target.dtype}")
    if preds.ndim == 4:
        if preds.shape[1] != num_classes:
            raise ValueError(
                f"logits must be (B, {num_classes}, H, W); got shape {tuple(preds.shape)}"
            )
        preds = preds.argmax(dim=1)
    elif preds.is_floating_point():
        raise ValueError(
            "class-id predictions must be an integer tensor; pass scores as (B, C, H, W) logits"
        )
    if preds.shape != target.shape:
        raise ValueError(
            f"preds {tuple(preds.shape)} and target {tuple(target.shape)} must have the same "
            "(B, H, W) shape"
        )
    return preds.long(), target.long()


def _check_labels(
    preds: Tensor, target: Tensor, num_classes: int, ignore_index: int | None
) -> None:
    """Reject out-of-range ids; torchmetrics only counts unique values and would miscount them."""
    bad_target = (target < 0) | (target >= num_classes)
    if ignore_index is not None:
        bad_target &= target != ignore_index
    bad = ((preds < 0) | (preds >= num_classes)).any() | bad_target.any()
    if bool(bad):
        raise ValueError(
            f"labels must be class ids in [0, {num_classes}) (target may also be ignore_index="
            f"{ignore_index}); got preds in [{int(preds.min())}, {int(preds.max())}], "
            f"target values {torch.unique(target).tolist()[:20]}"
        )


def _validate_config(num_classes: int, ignore_index: int | None) -> None:
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2; got {num_classes}")
    if ignore_index is not None and 0 <= ignore_index < num_classes:
        raise ValueError(
            f"ignore_index={ignore_index} is also a class id (num_classes={num_classes}); "
            "use a value outside [0, num_classes), e.g. 255"
        )


def _boundary_pixels(labels: Tensor, valid: Tensor) -> Tensor:
    """Valid pixels with a valid 4-neighbour of a different label.

    Invalid (ignored) pixels behave like the outside of the image: they are never boundary pixels
    and never make a neighbour one, because the true boundary position is unknown there.
    """
    edge = torch.zeros_like(valid)
    vertical = (labels[:, 1:, :] != labels[:, :-1, :]) & valid[:, 1:, :] & valid[:, :-1, :]
    edge[:, 1:, :] |= vertical
    edge[:, :-1, :] |= vertical
    horizontal = (labels[:, :, 1:] != labels[:, :, :-1]) & valid[:, :, 1:] & valid[:, :, :-1]
    edge[:, :, 1:] |= horizontal
    edge[:, :, :-1] |= horizontal
    return edge


def _dilate(mask: Tensor, radius: int) -> Tensor:
    """Chebyshev dilation of a ``(B, H, W)`` bool mask: a (2r+1)x(2r+1) max-pool, GPU friendly."""
    if radius == 0:
        return mask
    pooled = F.max_pool2d(
        mask.unsqueeze(1).float(), kernel_size=2 * radius + 1, stride=1, padding=radius
    )
    return pooled.squeeze(1) > 0


def _nanmean(values: Tensor) -> Tensor:
    """Mean over defined (non-NaN) entries; NaN when none is defined."""
    return torch.nanmean(values.float())


def _ratio_or_zero(num: Tensor, den: Tensor) -> Tensor:
    return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)


def _boundary_f1_from_counts(
    pred_matched: Tensor, pred_total: Tensor, target_matched: Tensor, target_total: Tensor
) -> Tensor:
    """Per-class F1 from dataset-level counts; NaN for classes with no boundary anywhere."""
    precision = _ratio_or_zero(pred_matched.float(), pred_total.float())
    recall = _ratio_or_zero(target_matched.float(), target_total.float())
    f1 = _ratio_or_zero(2 * precision * recall, precision + recall)
    return torch.where((pred_total + target_total) > 0, f1, float("nan"))


class BoundaryF1(Metric):
    """Boundary F1 score with a pixel tolerance (BF score, Csurka et al., BMVC 2013), dataset level.

    Exact definition, per class ``c`` and image, with ``V`` the pixels whose target is not
    ``ignore_index``:

    * A pixel ``p`` is a *boundary pixel of class c* in a label map ``L`` (target or prediction) iff
      ``p`` is in ``V``, ``L[p] == c`` and some 4-neighbour ``q`` of ``p`` is in ``V`` with
      ``L[q] != c``. Pixels outside the image and ignored pixels never create a boundary: a region
      touching the image border or an ignored area has no boundary there, since its true extent is
      unknown. Consequently predictions on ignored pixels have no effect at all.
    * A predicted boundary pixel of class ``c`` is *matched* iff a target boundary pixel of class
      ``c`` lies within Chebyshev distance ``tolerance`` (a (2t+1)x(2t+1) square); likewise a target
      boundary pixel is matched iff a predicted boundary pixel of class ``c`` lies within it.
      ``tolerance=0`` requires the exact same pixel.

    The states ``pred_matched``, ``pred_total``, ``target_matched`` and ``target_total`` (one count
    per class, sum-reduced) are accumulated over the whole dataset, then per class
    ``precision = pred_matched / pred_total`` and ``recall = target_matched / target_total`` (0 when
    the denominator is 0) and ``F1 = 2PR / (P + R)`` (0 when ``P + R == 0``). A class with no
    boundary pixel in either target or prediction gets NaN and is left out of the macro mean; a
    class with boundaries on only one side gets F1 = 0.

    Args:
        num_classes: number of classes (class ids ``0 .. num_classes - 1``).
        tolerance: matching distance in pixels (Chebyshev), ``>= 0``.
        ignore_index: target value marking unlabelled pixels; must not be a class id.
        average: ``"macro"`` returns the mean over classes with any boundary, ``"none"`` the
            ``(num_classes,)`` per-class tensor (NaN for classes without boundaries).
        validate_args: check that all ids are in range (costs one device sync per update).
        kwargs: forwarded to :class:`torchmetrics.Metric` (e.g. ``sync_on_compute``).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    pred_matched: Tensor
    pred_total: Tensor
    target_matched: Tensor
    target_total: Tensor

    def __init__(
        self,
        num_classes: int,
        tolerance: int = 2,
        ignore_index: int | None = 255,
        average: Literal["macro", "none"] = "macro",
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _validate_config(num_classes, ignore_index)
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0 pixels; got {tolerance}")
        if average not in ("macro", "none"):
            raise ValueError(f"average must be 'macro' or 'none'; got {average!r}")
        self.num_classes = num_classes
        self.tolerance = int(tolerance)
        self.ignore_index = ignore_index
        self.average = average
        self.validate_args = validate_args
        for name in ("pred_matched", "pred_total", "target_matched", "target_total"):
            self.add_state(
                name, default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum"
            )

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add one batch: ``preds`` class ids ``(B, H, W)`` or logits ``(B, C, H, W)``."""
        preds, target = _format_inputs(preds, target, self.num_classes)
        if self.validate_args:
            _check_labels(preds, target, self.num_classes, self.ignore_index)
        if self.ignore_index is None:
            valid = torch.ones_like(target, dtype=torch.bool)
        else:
            valid = target != self.ignore_index
        target_edges = _boundary_pixels(target, valid)
        pred_edges = _boundary_pixels(preds, valid)
        counts: list[list[Tensor]] = [[], [], [], []]
        for c in range(self.num_classes):
            target_c = target_edges & (target == c)
            pred_c = pred_edges & (preds == c)
            counts[0].append((pred_c & _dilate(target_c, self.tolerance)).sum())
            counts[1].append(pred_c.sum())
            counts[2].append((target_c & _dilate(pred_c, self.tolerance)).sum())
            counts[3].append(target_c.sum())
        self.pred_matched += torch.stack(counts[0])
        self.pred_total += torch.stack(counts[1])
        self.target_matched += torch.stack(counts[2])
        self.target_total += torch.stack(counts[3])

    def compute(self) -> Tensor:
        """Macro boundary F1 (scalar) or per-class boundary F1, depending on ``average``."""
        per_class = _boundary_f1_from_counts(
            self.pred_matched, self.pred_total, self.target_matched, self.target_total
        )
        return per_class if self.average == "none" else _nanmean(per_class)


class SegmentationMetrics(WrapperMetric):
    """All region and boundary metrics of a segmentation run, as one flat ``dict``.

    ``compute()`` (and ``forward``, for the current batch) returns scalar tensors under the keys in
    :data:`SUMMARY_KEYS` — ``mIoU``, ``F1``, ``precision``, ``recall`` (macro), ``OA`` (micro
    accuracy), ``kappa`` (Cohen's kappa), ``boundary_F1`` (macro) — and per class
    ``IoU/<name>``, ``F1/<name>``, ``precision/<name>``, ``recall/<name>``, ``boundary_F1/<name>``.

    Semantics:

    * Pixels whose target is ``ignore_index`` are dropped entirely; predictions there change
      nothing (this includes boundary F1, see :class:`BoundaryF1`).
    * A class is *present* if it occurs among the non-ignored pixels of the target or of the
      prediction (``TP + FP + FN > 0``). Macro means run over present classes only, and per-class
      region values of absent classes are NaN, so each macro value equals the NaN-mean of its
      per-class values. This is torchmetrics' own macro weighting (classes with
      ``TP + FP + FN == 0`` get weight 0). A present class whose ratio is 0/0 (e.g. precision of a
      class never predicted) scores 0. Boundary F1 uses the analogous rule on boundary pixels.
    * With no valid pixel at all, every summary value is NaN.
    * The states live in child torchmetrics metrics (confusion matrix / stat scores compute groups
      and :class:`BoundaryF1`), so ``.to(device)``, ``.reset()`` and DDP sync on ``compute()``
      behave as for any torchmetrics metric. In Lightning, call ``update`` in the step and
      ``self.log_dict(metric.compute())`` then ``metric.reset()`` at epoch end.

    Args:
        num_classes: number of classes.
        ignore_index: target value of unlabelled pixels; must not be a class id.
        class_names: one unique name per class for the per-class keys (default ``"0"``, ``"1"``...).
        boundary_tolerance: Chebyshev pixel tolerance of the boundary F1.
        validate_args: check ids are in range (one device sync per update).
        kwargs: forwarded to every child metric (e.g. ``sync_on_compute``, ``process_group``).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
        boundary_tolerance: int = 2,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        _validate_config(num_classes, ignore_index)
        names = [str(i) for i in range(num_classes)] if class_names is None else list(class_names)
        if len(names) != num_classes:
            raise ValueError(f"got {len(names)} class_names for num_classes={num_classes}")
        if len(set(names)) != len(names):
            raise ValueError(f"class_names must be unique; got {names}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = names
        self.boundary_tolerance = boundary_tolerance
        self.validate_args = validate_args
        common: dict[str, Any] = {
            "num_classes": num_classes,
            "ignore_index": ignore_index,
            "validate_args": False,
            **kwargs,
        }
        self.region = MetricCollection(
            {
                "stats": MulticlassStatScores(average="none", **common),
                "IoU": MulticlassJaccardIndex(average="none", **common),
                "mIoU": MulticlassJaccardIndex(average="macro", **common),
                "kappa": MulticlassCohenKappa(**common),
                "F1": MulticlassF1Score(average="none", **common),
                "macro_F1": MulticlassF1Score(average="macro", **common),
                "precision": MulticlassPrecision(average="none", **common),
                "macro_precision": MulticlassPrecision(average="macro", **common),
                "recall": MulticlassRecall(average="none", **common),
                "macro_recall": MulticlassRecall(average="macro", **common),
                "OA": MulticlassAccuracy(average="micro", **common),
            },
            compute_groups=True,
        )
        self.boundary = BoundaryF1(
            num_classes,
            tolerance=boundary_tolerance,
            ignore_index=ignore_index,
            average="none",
            validate_args=False,
            **kwargs,
        )

    def _prepare(self, preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        preds, target = _format_inputs(preds, target, self.num_classes)
        if self.validate_args:
            _check_labels(preds, target, self.num_classes, self.ignore_index)
        return preds, target

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add one batch: ``preds`` class ids ``(B, H, W)`` or logits ``(B, C, H, W)``."""
        preds, target = self._prepare(preds, target)
        self.region.update(preds, target)
        self.boundary.update(preds, target)

    def forward(self, preds: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Accumulate the batch and return the metrics of this batch alone."""
        preds, target = self._prepare(preds, target)
        return self._assemble(self.region(preds, target), self.boundary(preds, target))

    def compute(self) -> dict[str, Tensor]:
        """Dataset-level metrics over everything seen since the last ``reset()``."""
        return self._assemble(self.region.compute(), self.boundary.compute())

    def reset(self) -> None:
        """Clear all accumulated state (children included)."""
        super().reset()
        self.region.reset()
        self.boundary.reset()

    def _assemble(self, region: Mapping[str, Tensor], boundary: Tensor) -> dict[str, Tensor]:
        stats = region["stats"]
        present = (stats[:, 0] + stats[:, 1] + stats[:, 3]) > 0
        any_valid = present.any()

        def summary(value: Tensor) -> Tensor:
            return torch.where(any_valid, value.float(), float("nan"))

        def per_class(values: Tensor) -> Tensor:
            return torch.where(present, values.float(), float("nan"))

        out = {
            "mIoU": summary(region["mIoU"]),
            "F1": summary(region["macro_F1"]),
            "precision": summary(region["macro_precision"]),
            "recall": summary(region["macro_recall"]),
            "OA": summary(region["OA"]),
            "kappa": summary(region["kappa"]),
            "boundary_F1": _nanmean(boundary),
        }
        for prefix, values in (
            ("IoU", per_class(region["IoU"])),
            ("F1", per_class(region["F1"])),
            ("precision", per_class(region["precision"])),
            ("recall", per_class(region["recall"])),
            ("boundary_F1", boundary.float()),
        ):
            for name, value in zip(self.class_names, values, strict=True):
                out[f"{prefix}/{name}"] = value
        return out


def _to_float(value: Tensor | float | int) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"expected a scalar metric, got a tensor of shape {tuple(value.shape)}"
            )
        return float(value.item())
    return float(value)


def _write_text_atomic(path: Path, text: str) -> None:
    """Write a temp file in the same directory, then os.replace: readers never see partial files."""
    with atomic_output(path) as temporary, open(temporary, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def metrics_to_json(
    metrics: Mapping[str, Tensor | float | int], path: str | os.PathLike[str]
) -> Path:
    """Write scalar metrics as a sorted, indented JSON object of plain floats (atomically).

    NaN/inf (e.g. a class absent from the data) become ``null`` so the file stays strict JSON.
    Returns the written path.
    """
    payload: dict[str, float | None] = {}
    for key, value in metrics.items():
        number = _to_float(value)
        payload[str(key)] = number if math.isfinite(number) else None
    out = Path(path)
    _write_text_atomic(out, json.dumps(payload, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return out


_SUMMARY_LABELS: dict[str, str] = {
    "mIoU": "mIoU (%)",
    "F1": "F1 (%)",
    "precision": "precision (%)",
    "recall": "recall (%)",
    "OA": "OA (%)",
    "kappa": "kappa",
    "boundary_F1": "boundary F1 (%)",
}


def _format_value(metrics: Mapping[str, Tensor | float | int], key: str, percent: bool) -> str:
    if key not in metrics:
        return "n/a"
    value = _to_float(metrics[key])
    if not math.isfinite(value):
        return "n/a"
    return f"{100.0 * value:.2f}" if percent else f"{value:.3f}"


def metrics_to_markdown(
    metrics: Mapping[str, Tensor | float | int], class_names: Sequence[str]
) -> str:
    """Render a summary table and a per-class table in Markdown.

    Values are percentages with 2 decimals, except kappa (0-1, 3 decimals); missing or NaN values
    (e.g. classes absent from the data) show as ``n/a``.
    """
    lines = ["| metric | value |", "| --- | ---: |"]
    for key in SUMMARY_KEYS:
        lines.append(f"| {_SUMMARY_LABELS[key]} | {_format_value(metrics, key, key != 'kappa')} |")
    lines += [
        "",
        "| class | IoU (%) | F1 (%) | precision (%) | recall (%) | boundary F1 (%) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in class_names:
        cells = [_format_value(metrics, f"{prefix}/{name}", True) for prefix in PER_CLASS_KEYS]
        label = str(name).replace("|", "\\|")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
