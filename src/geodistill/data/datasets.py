"""Chip datasets: image rasters paired with label rasters by file stem."""

from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rasterio.windows import Window
from torch.utils.data import Dataset
from torchvision.transforms import v2

from geodistill.data.labels import ColorMap, read_label
from geodistill.data.raster import BandSpec, check_same_grid, raster_info, read_image, resolve_bands
from geodistill.data.transforms import apply_transform
from geodistill.errors import GeodistillError

RASTER_SUFFIXES = (".tif", ".tiff", ".jpg", ".jpeg", ".png", ".jp2", ".vrt")


@dataclass
class Source:
    """Where one set of chips lives.

    ``images`` are folders, glob patterns or files; ``labels`` are folders holding one label raster
    per image with the same file stem. Labels are class ids, or RGB colours mapped by
    ``color_map`` (``"R,G,B"`` or ``"#RRGGBB"`` → class id, negative id = unlabelled).
    ``ignore_values`` are class-id values that mean unlabelled.
    """

    images: str | list[str]
    labels: str | list[str] | None = None
    color_map: dict[str, int] | None = None
    ignore_values: list[int] = field(default_factory=list)


def list_images(spec: str | Sequence[str]) -> list[str]:
    """Expand folders, globs and file names into a sorted list of raster files."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    files: list[str] = []
    for item in specs:
        path = Path(item)
        if path.is_dir():
            files += [str(p) for p in sorted(path.iterdir()) if p.suffix.lower() in RASTER_SUFFIXES]
        elif any(ch in item for ch in "*?["):
            files += sorted(glob.glob(item, recursive=True))
        elif path.exists():
            files.append(str(path))
        else:
            raise GeodistillError("no such file or folder", item)
    return files


def match_labels(images: Sequence[str], labels: str | Sequence[str]) -> list[str]:
    """Find each image's label raster: same file stem, in one of the label folders.

    A folder may use ``{parent}``, the image's own folder, e.g. ``"{parent}/../masks"`` for
    collections where every region has ``images/`` and ``masks/`` with repeating file names.
    A stem found in two folders is refused as ambiguous rather than guessed.
    """
    specs = [labels] if isinstance(labels, str) else list(labels)
    listings: dict[str, dict[str, list[str]]] = {}
    matched = []
    for image in images:
        parent = str(Path(image).parent)
        found: list[str] = []
        for spec in specs:
            folder = spec.format(parent=parent)
            if folder not in listings:
                by_stem: dict[str, list[str]] = {}
                for path in list_images(folder):
                    by_stem.setdefault(Path(path).stem, []).append(path)
                listings[folder] = by_stem
            found += listings[folder].get(Path(image).stem, [])
        if not found:
            raise GeodistillError(
                f"no label with the same file stem in {', '.join(map(str, specs))}", image
            )
        if len(found) > 1:
            raise GeodistillError(f"ambiguous labels {found[:3]}: one per image is needed", image)
        matched.append(found[0])
    return matched


class ChipDataset(Dataset):
    """Image chips (any band count) with optional labels, read with rasterio.

    A sample is ``{"image": float32 (C,H,W) with NaN for nodata, "mask": int64 (H,W), "index"}``.
    Nodata pixels of the image get the ignore index in the mask, so they are never trained on or
    scored. With ``crop_size`` each access reads a random window (``crops_per_image`` per image and
    epoch), padded with nodata/ignore where the chip is smaller.
    """

    def __init__(
        self,
        images: Sequence[str],
        labels: Sequence[str] | None,
        num_classes: int,
        bands: BandSpec = None,
        ignore_index: int = 255,
        color_map: ColorMap | None = None,
        ignore_values: Sequence[int] = (),
        crop_size: int | None = None,
        crops_per_image: int = 1,
        transform: v2.Transform | None = None,
        cache: bool = False,
    ) -> None:
        if not images:
            raise GeodistillError("the dataset is empty: no image files")
        self.images = list(images)
        self.labels = list(labels) if labels is not None else None
        self.num_classes = num_classes
        self.bands = bands
        self.ignore_index = ignore_index
        self.color_map = color_map
        self.ignore_values = tuple(ignore_values)
        self.crop_size = crop_size
        self.crops_per_image = crops_per_image if crop_size else 1
        self.transform = transform
        self.cache = cache
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.infos = [raster_info(p) for p in self.images]
        self.num_bands = self._check_bands()
        if self.labels is not None:
            for info, label in zip(self.infos, self.labels, strict=True):
                check_same_grid(info, raster_info(label))

    def _check_bands(self) -> int:
        counts = {len(resolve_bands(info, self.bands)) for info in self.infos}
        if len(counts) > 1:
            first = len(resolve_bands(self.infos[0], self.bands))
            odd = next(i for i in self.infos if len(resolve_bands(i, self.bands)) != first)
            count = len(resolve_bands(odd, self.bands))
            raise GeodistillError(
                f"has {count} bands where {self.images[0]} has {first}",
                odd.path,
            )
        return counts.pop()

    def __len__(self) -> int:
        return len(self.images) * self.crops_per_image

    def read_window(self, i: int, window: Window | None) -> tuple[np.ndarray, np.ndarray]:
        """Chip ``i``, or a window of it padded with nodata/ignore, untransformed: the image (NaN
        nodata) and the mask (nodata ignored). The teacher cache reads its fixed windows here."""
        image, mask = self._read(i, window)
        return (image, mask) if window is not None else (image.copy(), mask.copy())

    def _read(self, i: int, window: Window | None) -> tuple[np.ndarray, np.ndarray]:
        if self.cache:
            if i not in self._cache:
                self._cache[i] = self._read_file(i, None)
            image, mask = self._cache[i]
            if window is None:
                return image, mask
            return _slice_padded(image, mask, window, self.ignore_index)
        return self._read_file(i, window)

    def _read_file(self, i: int, window: Window | None) -> tuple[np.ndarray, np.ndarray]:
        image = read_image(self.images[i], self.bands, window=window, boundless=window is not None)
        if self.labels is None:
            mask = np.full(image.shape[1:], self.ignore_index, dtype=np.int64)
        else:
            mask = read_label(
                self.labels[i],
                self.num_classes,
                self.ignore_index,
                self.color_map,
                self.ignore_values,
                window=window,
            )
            if window is not None:
                outside = _outside(window, self.infos[i].height, self.infos[i].width)
                mask[outside] = self.ignore_index
        mask[np.isnan(image).any(axis=0)] = self.ignore_index
        if window is not None:
            image[:, _outside(window, self.infos[i].height, self.infos[i].width)] = np.nan
        return image, mask

    def _random_window(self, i: int) -> Window:
        info = self.infos[i]
        size = self.crop_size
        assert size is not None
        row = int(torch.randint(0, max(info.height - size, 0) + 1, ()).item())
        col = int(torch.randint(0, max(info.width - size, 0) + 1, ()).item())
        return Window(col, row, size, size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = index // self.crops_per_image
        window = self._random_window(i) if self.crop_size else None
        image, mask = self._read(i, window)
        image_t, mask_t = torch.from_numpy(image.copy()), torch.from_numpy(mask.copy())
        image_t, mask_t = apply_transform(self.transform, image_t, mask_t)
        return {"image": image_t, "mask": mask_t, "index": i}


def _outside(window: Window, height: int, width: int) -> np.ndarray:
    rows = np.arange(window.row_off, window.row_off + window.height)
    cols = np.arange(window.col_off, window.col_off + window.width)
    return (rows[:, None] >= height) | (cols[None, :] >= width)


def _slice_padded(
    image: np.ndarray, mask: np.ndarray, window: Window, ignore_index: int
) -> tuple[np.ndarray, np.ndarray]:
    r, c, h, w = int(window.row_off), int(window.col_off), int(window.height), int(window.width)
    out_image = np.full((image.shape[0], h, w), np.nan, dtype=np.float32)
    out_mask = np.full((h, w), ignore_index, dtype=np.int64)
    part_image = image[:, r : r + h, c : c + w]
    out_image[:, : part_image.shape[1], : part_image.shape[2]] = part_image
    part_mask = mask[r : r + h, c : c + w]
    out_mask[: part_mask.shape[0], : part_mask.shape[1]] = part_mask
    return out_image, out_mask


def pad_collate(
    samples: list[dict[str, Any]], multiple: int = 32, ignore_index: int = 255
) -> dict[str, Any]:
    """Stack samples of different sizes, padding bottom/right to a common multiple of ``multiple``.

    Padding is nodata (NaN) in the image and ignore in the mask, so it never affects metrics;
    ``shape`` keeps each sample's true size for writers that crop the padding off again. Cached
    teacher targets (``"teacher"``, see :mod:`geodistill.data.teacher_cache`) are stacked as they
    are: all cache windows have one size.
    """
    height = max(s["image"].shape[-2] for s in samples)
    width = max(s["image"].shape[-1] for s in samples)
    height, width = -(-height // multiple) * multiple, -(-width // multiple) * multiple
    images, masks = [], []
    for s in samples:
        pad = (0, width - s["image"].shape[-1], 0, height - s["image"].shape[-2])
        images.append(F.pad(s["image"], pad, value=float("nan")))
        masks.append(F.pad(s["mask"], pad, value=ignore_index))
    batch = {
        "image": torch.stack(images),
        "mask": torch.stack(masks),
        "index": torch.tensor([s["index"] for s in samples]),
        "shape": torch.tensor([list(s["image"].shape[-2:]) for s in samples]),
    }
    if "teacher" in samples[0]:
        batch["teacher"] = _stack_teacher([s["teacher"] for s in samples])
    return batch


def _stack_teacher(targets: list[dict[str, Any]]) -> dict[str, Any]:
    """Cached teacher targets of equal-size windows: one ``(B, C, h, w)`` tensor per level."""
    levels = zip(*(t["features"] for t in targets), strict=True)
    logits = [t["logits"] for t in targets]
    return {
        "features": [torch.stack(level) for level in levels],
        "logits": None if logits[0] is None else torch.stack(logits),
    }
