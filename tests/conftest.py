"""Shared test fixtures: small helpers that write tiny rasters into ``tmp_path``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from fixtures_small import write_tif
from rasterio.transform import from_origin

TEST_CRS = "EPSG:32633"
TEST_TRANSFORM = from_origin(500_000.0, 5_000_000.0, 10.0, 10.0)


def _write_raster(
    path: str | Path,
    data: np.ndarray,
    nodata: float | None = None,
    descriptions: Sequence[str] | None = None,
    crs: str | None = TEST_CRS,
    transform=TEST_TRANSFORM,
) -> Path:
    """Write ``data`` ((C,H,W) or (H,W)) as a GeoTIFF and return its path."""
    return write_tif(
        path, data, crs=crs, transform=transform, nodata=nodata, descriptions=descriptions
    )


@pytest.fixture
def write_raster() -> Callable[..., Path]:
    """``write_raster(path, data, nodata=None, descriptions=None, crs=..., transform=...)``."""
    return _write_raster


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> dict[str, Path]:
    """One real ``geodistill fit`` of a tiny student: its data, config, and checkpoints.

    Shared by the bad-input catalogue (payload checkpoints are built from ``last``); read-only.
    """
    import torch
    from fixtures_small import cli_main, config_dict, make_dataset, write_config

    root = tmp_path_factory.mktemp("trained_run")
    data = make_dataset(root / "data", n=4)
    config = write_config(root / "fit.yaml", config_dict(data, root / "out", max_epochs=1))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli_main(["fit", "--config", str(config)]) == 0
    finally:
        torch.set_num_threads(before)
    return {
        "data": data,
        "config": config,
        "out": root / "out",
        "last": root / "out" / "checkpoints" / "last.ckpt",
    }
