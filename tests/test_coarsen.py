"""The coarse-label recipe: deterministic, generous, gap-filling, and ignore-preserving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine
from scipy import ndimage

from geodistill.data.coarsen import CoarsenRecipe, coarsen_label, coarsen_label_file
from geodistill.errors import GeodistillError


def _blob_label(size: int = 48) -> np.ndarray:
    """Class-0 background with an irregular class-1 blob and a class-2 bar."""
    yy, xx = np.mgrid[:size, :size]
    label = np.zeros((size, size), dtype=np.int64)
    label[((yy - 20) ** 2 + (xx - 18) ** 2 < 90) | ((yy - 28) ** 2 + (xx - 28) ** 2 < 40)] = 1
    label[38:42, 5:40] = 2
    return label


def test_same_seed_same_output_other_seed_differs() -> None:
    label = _blob_label()
    recipe = CoarsenRecipe(block=2, closing=3, max_dilation=6, simplify=1, min_area=4)
    a = coarsen_label(label, recipe, seed=7)
    b = coarsen_label(label, recipe, seed=7)
    c = coarsen_label(label, recipe, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_closing_merges_features_across_small_gap() -> None:
    label = np.zeros((32, 40), dtype=np.int64)
    label[10:20, 8:18] = 1
    label[10:20, 21:31] = 1  # 3 px gap (columns 18, 19, 20)
    assert ndimage.label(label == 1)[1] == 2
    recipe = CoarsenRecipe(block=1, closing=4, max_dilation=0, simplify=0, min_area=0)
    coarse = coarsen_label(label, recipe, seed=0)
    _, n = ndimage.label(coarse == 1)
    assert n == 1
    assert (coarse[10:20, 18:21] == 1).all()


def test_coarse_outline_is_generous() -> None:
    label = _blob_label()
    coarse = coarsen_label(label, CoarsenRecipe(), seed=3)
    assert (coarse == 1).sum() >= (label == 1).sum()


def test_ignore_pixels_stay_ignore() -> None:
    label = _blob_label()
    label[:, :6] = 255
    label[30:34, 20:30] = 255
    coarse = coarsen_label(label, CoarsenRecipe(closing=8, max_dilation=5), seed=1)
    np.testing.assert_array_equal(coarse == 255, label == 255)
    all_ignore = np.full((8, 8), 255, dtype=np.int64)
    np.testing.assert_array_equal(coarsen_label(all_ignore), all_ignore)


def test_tiny_feature_is_dropped() -> None:
    label = np.zeros((24, 24), dtype=np.int64)
    label[10:12, 10:12] = 1
    coarse = coarsen_label(label, CoarsenRecipe(block=1, min_area=16), seed=0)
    assert not (coarse == 1).any()
    kept = coarsen_label(label, CoarsenRecipe(block=1, min_area=0, simplify=0), seed=0)
    assert (kept == 1).any()


def test_output_dtype_and_shape() -> None:
    label = _blob_label(30)[:, :27].astype(np.uint8)  # not a multiple of the block
    coarse = coarsen_label(label, CoarsenRecipe(block=4), seed=0)
    assert coarse.shape == label.shape
    assert coarse.dtype == label.dtype
    assert set(np.unique(coarse)) <= {0, 1, 2, 255}


def test_uniform_blocks_survive_exactly_without_geometry_steps() -> None:
    rng = np.random.default_rng(0)
    cells = rng.integers(0, 3, size=(6, 5))
    label = np.kron(cells, np.ones((4, 4), dtype=np.int64))
    recipe = CoarsenRecipe(block=4, closing=0, max_dilation=0, simplify=0, min_area=0)
    np.testing.assert_array_equal(coarsen_label(label, recipe, seed=0), label)


def test_block_majority_ignores_ignore_pixels() -> None:
    label = np.zeros((4, 4), dtype=np.int64)
    label[:3, :] = 255  # 12 ignore pixels, 3 of class 1, 1 of class 0 in the last row
    label[3, :3] = 1
    recipe = CoarsenRecipe(block=4, closing=0, max_dilation=0, simplify=0, min_area=0)
    coarse = coarsen_label(label, recipe, seed=0)
    np.testing.assert_array_equal(coarse[3], [1, 1, 1, 1])
    assert (coarse[:3] == 255).all()


def test_bad_inputs_raise() -> None:
    with pytest.raises(GeodistillError, match="2-D"):
        coarsen_label(np.zeros((2, 8, 8), dtype=np.int64))
    with pytest.raises(GeodistillError, match="integer"):
        coarsen_label(np.zeros((8, 8), dtype=np.float32))
    with pytest.raises(GeodistillError, match="closing"):
        coarsen_label(np.zeros((8, 8), dtype=np.int64), CoarsenRecipe(closing=-1.0))
    with pytest.raises(GeodistillError, match="block"):
        CoarsenRecipe(block=0)


def _write_label(path: Path, label: np.ndarray, **extra) -> Path:
    profile = {
        "driver": "GTiff",
        "height": label.shape[0],
        "width": label.shape[1],
        "count": 1,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 5_000_000.0),
        **extra,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(label.astype(np.uint8), 1)
    return path


def test_file_round_trip_keeps_georeference(tmp_path: Path) -> None:
    label = _blob_label()
    label[:2] = 255
    src = _write_label(tmp_path / "exact.tif", label, nodata=255)
    dst = tmp_path / "out" / "coarse.tif"
    recipe = CoarsenRecipe(block=2)
    assert coarsen_label_file(src, dst, recipe, seed=5) == dst
    with rasterio.open(src) as a, rasterio.open(dst) as b:
        assert b.crs == a.crs
        assert b.transform == a.transform
        assert b.count == 1 and b.dtypes[0] == "uint8" and b.nodata == 255
        written = b.read(1)
    np.testing.assert_array_equal(written, coarsen_label(label, recipe, seed=5))
    assert sorted(p.name for p in dst.parent.iterdir()) == ["coarse.tif"]


def test_unreadable_file_names_it(tmp_path: Path) -> None:
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"not a raster")
    with pytest.raises(GeodistillError, match="broken.tif"):
        coarsen_label_file(bad, tmp_path / "coarse.tif", CoarsenRecipe(), seed=0)
    with pytest.raises(GeodistillError, match="missing.tif"):
        coarsen_label_file(tmp_path / "missing.tif", tmp_path / "coarse.tif", CoarsenRecipe(), 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.tif"]
