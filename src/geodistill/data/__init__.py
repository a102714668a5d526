"""Data: rasters, labels, statistics, chip datasets, splits and the Lightning data module."""

from geodistill.data.datamodule import Domain, GeoSegDataModule
from geodistill.data.datasets import ChipDataset, Source, pad_collate
from geodistill.data.stats import BandStats, compute_band_stats

__all__ = [
    "BandStats",
    "ChipDataset",
    "Domain",
    "GeoSegDataModule",
    "Source",
    "compute_band_stats",
    "pad_collate",
]
