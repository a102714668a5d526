"""Shared test fixtures: one thread for every test, an empty working folder, tiny rasters, and one
real fitted checkpoint (``trained_run``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from fixtures_small import torch_threads, write_tif
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


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> Iterator[None]:
    """Tiny models run on one thread: on a small, busy CPU extra threads only wait on each other
    (a 4-epoch fit takes ~1.3 s on one thread, ~4.5 s on two with another job running)."""
    with torch_threads(1):
        yield


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from an empty folder, so a stray relative output would be noticed (and not litter)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def write_raster() -> Callable[..., Path]:
    """``write_raster(path, data, nodata=None, descriptions=None, crs=..., transform=...)``."""
    return _write_raster


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> dict[str, Path]:
    """One real ``geodistill fit`` of a tiny student: its data, config, and checkpoints.

    Shared by the bad-input catalogue (payload checkpoints are built from ``last``); read-only.
    """
    from fixtures_small import cli_main, config_dict, make_dataset, write_config

    root = tmp_path_factory.mktemp("trained_run")
    data = make_dataset(root / "data", n=4)
    config = write_config(root / "fit.yaml", config_dict(data, root / "out", max_epochs=1))
    assert cli_main(["fit", "--config", str(config)]) == 0
    return {
        "data": data,
        "config": config,
        "out": root / "out",
        "last": root / "out" / "checkpoints" / "last.ckpt",
    }
