"""Per-band normalisation statistics, computed from training images and stored with the model.

Statistics are robust: each band is clipped to its ``[p_low, p_high]`` percentiles before its
mean and standard deviation are taken, so a few saturated or corrupt pixels cannot dominate.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from geodistill.atomic import atomic_output
from geodistill.data.raster import BandSpec, raster_info, read_image, resolve_bands
from geodistill.errors import GeodistillError


@dataclass(frozen=True)
class BandStats:
    """Clip range and mean/std per band, in the order the model sees the bands."""

    band_names: tuple[str, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_bands(self) -> int:
        return len(self.band_names)

    def to_json(self, path: str | Path) -> None:
        """Write atomically, so a crash never leaves a truncated stats file."""
        with atomic_output(path) as temporary, open(temporary, "w") as f:
            json.dump(asdict(self), f, indent=2)

    @classmethod
    def from_json(cls, path: str | Path) -> BandStats:
        try:
            raw = json.loads(Path(path).read_text())
            return cls(**{k: tuple(v) for k, v in raw.items()})
        except (OSError, ValueError, TypeError) as err:
            raise GeodistillError(f"not a band statistics file ({err})", path) from err


def band_names(path: str | Path, bands: BandSpec = None) -> tuple[str, ...]:
    """Names of the selected bands: the file's descriptions, or ``band_<i>`` where it has none."""
    info = raster_info(path)
    return tuple(info.descriptions[i] or f"band_{i + 1}" for i in resolve_bands(info, bands))


def check_pixels_per_image(pixels_per_image: int) -> int:
    """Refuse a sample of no pixels (it would read as "all pixels are nodata")."""
    if pixels_per_image < 1:
        raise GeodistillError(
            f"--pixels-per-image must be ≥ 1 (pixels sampled from each image), "
            f"got {pixels_per_image}"
        )
    return pixels_per_image


def compute_band_stats(
    paths: Sequence[str | Path],
    bands: BandSpec = None,
    percentiles: tuple[float, float] = (1.0, 99.0),
    pixels_per_image: int = 100_000,
    seed: int = 0,
) -> BandStats:
    """Estimate robust per-band statistics from a seeded sample of valid pixels of each image."""
    if not paths:
        raise GeodistillError("no images to compute band statistics from")
    if not 0 <= percentiles[0] < percentiles[1] <= 100:
        raise GeodistillError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    check_pixels_per_image(pixels_per_image)
    rng = np.random.default_rng(seed)
    names = band_names(paths[0], bands)
    samples = []
    for path in paths:
        image = read_image(path, bands)
        if image.shape[0] != len(names):
            raise GeodistillError(
                f"has {image.shape[0]} selected bands, expected {len(names)} like {paths[0]}", path
            )
        pixels = image.reshape(image.shape[0], -1)
        pixels = pixels[:, ~np.isnan(pixels).any(axis=0)]
        if pixels.shape[1] > pixels_per_image:
            pixels = pixels[:, rng.choice(pixels.shape[1], pixels_per_image, replace=False)]
        samples.append(pixels)
    pooled = np.concatenate(samples, axis=1).astype(np.float64)
    if pooled.shape[1] == 0:
        where = paths[0] if len(paths) == 1 else Path(paths[0]).parent
        count = "the image" if len(paths) == 1 else f"all {len(paths)} images"
        raise GeodistillError(
            f"every pixel of {count} is nodata (or NaN) in the selected bands: no statistics "
            "can be computed",
            where,
        )
    low, high = np.percentile(pooled, percentiles, axis=1)
    clipped = np.clip(pooled, low[:, None], high[:, None])
    std = np.maximum(clipped.std(axis=1), 1e-6)
    return BandStats(
        band_names=names,
        low=tuple(low.tolist()),
        high=tuple(high.tolist()),
        mean=tuple(clipped.mean(axis=1).tolist()),
        std=tuple(std.tolist()),
    )
