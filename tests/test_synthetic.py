"""Tests of the SYNTHETIC demo data generator: determinism, files, labels and spectra."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.coords import disjoint_bounds

from geodistill.data.synthetic import (
    BAND_NAMES,
    CLASS_NAMES,
    DemoDataset,
    generate_chip,
    write_demo_dataset,
)
from geodistill.errors import GeodistillError

SMALL = {"chip_size": 48, "n_coarse": 5, "n_fine": 2, "n_fine_test": 5, "scene_size": 80}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoDataset:
    return write_demo_dataset(tmp_path_factory.mktemp("demo"), seed=0, **SMALL)


def _tifs(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.tif"))}


def _chips(region: str, n: int, size: int = 64, seed: int = 7) -> list[tuple[np.ndarray, ...]]:
    return [generate_chip(np.random.default_rng([seed, i]), size, region) for i in range(n)]


def _ndvi(image: np.ndarray) -> np.ndarray:
    red, nir = image[2].astype(np.float64), image[3].astype(np.float64)
    return (nir - red) / (nir + red + 1e-9)


def test_generate_chip_shapes_and_dtypes() -> None:
    for region in ("A", "B"):
        image, fine, coarse = generate_chip(np.random.default_rng(0), 40, region)
        assert image.shape == (6, 40, 40) and image.dtype == np.uint16
        assert fine.shape == coarse.shape == (40, 40)
        assert fine.dtype == coarse.dtype == np.uint8
        assert set(np.unique(fine)) <= {0, 1} and set(np.unique(coarse)) <= {0, 1}
        assert image.min() >= 1 and image.max() <= 10000  # 0 is reserved for nodata
        assert fine.any()


def test_generate_chip_is_deterministic() -> None:
    a = generate_chip(np.random.default_rng(3), 48, "B")
    b = generate_chip(np.random.default_rng(3), 48, "B")
    c = generate_chip(np.random.default_rng(4), 48, "B")
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])


def test_bad_arguments_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(GeodistillError, match="region"):
        generate_chip(np.random.default_rng(0), 32, "C")
    with pytest.raises(GeodistillError, match="n_fine"):
        write_demo_dataset(tmp_path, n_fine=-1)
    with pytest.raises(GeodistillError, match="chip_size"):
        write_demo_dataset(tmp_path, chip_size=4)


def test_dataset_bytes_are_deterministic(demo: DemoDataset, tmp_path: Path) -> None:
    again = write_demo_dataset(tmp_path / "again", seed=0, **SMALL)
    other = write_demo_dataset(tmp_path / "other", seed=1, **SMALL)
    first, second, third = _tifs(demo.root), _tifs(again.root), _tifs(other.root)
    assert len(first) == 5 * 3 + 2 * 2 + 5 * 2 + 2
    assert first == second
    assert first.keys() == third.keys()
    assert all(first[k] != third[k] for k in first)


def test_layout_and_metadata(demo: DemoDataset) -> None:
    assert demo.band_names == BAND_NAMES == ("Blue", "Green", "Red", "NIR", "SWIR1", "SWIR2")
    assert demo.class_names == CLASS_NAMES == ("background", "mining")
    with pytest.raises(dataclasses.FrozenInstanceError):
        demo.root = Path("/")  # type: ignore[misc]
    assert "SYNTHETIC" in demo.readme.read_text(encoding="utf-8")

    pairs = [
        (demo.coarse_images, demo.coarse_labels, 5),
        (demo.coarse_images, demo.coarse_fine_labels, 5),
        (demo.fine_images, demo.fine_labels, 2),
        (demo.test_images, demo.test_labels, 5),
    ]
    for images, labels, count in pairs:
        stems = sorted(p.stem for p in images.glob("*.tif"))
        assert len(stems) == count
        assert stems == sorted(p.stem for p in labels.glob("*.tif"))

    images = sorted(
        p for d in (demo.coarse_images, demo.fine_images, demo.test_images) for p in d.glob("*.tif")
    ) + [demo.scene_image]
    bounds = []
    for path in images:
        with rasterio.open(path) as src:
            assert src.count == 6 and src.dtypes == ("uint16",) * 6
            assert src.descriptions == BAND_NAMES
            assert src.crs.to_epsg() == 32633
            assert src.res == (10.0, 10.0)
            assert src.transform.b == src.transform.d == 0.0
            assert src.nodata == 0
            assert src.compression is not None and src.compression.value == "LZW"
            assert src.tags().get("SYNTHETIC") == "yes"
            bounds.append(src.bounds)
            size = 80 if path == demo.scene_image else 48
            assert (src.height, src.width) == (size, size)
    # Every chip (and the scene) at its own location.
    for i, a in enumerate(bounds):
        for b in bounds[i + 1 :]:
            assert disjoint_bounds(a, b)

    for label in [*demo.coarse_labels.glob("*.tif"), demo.scene_label]:
        image = demo.scene_image if label == demo.scene_label else demo.coarse_images / label.name
        with rasterio.open(label) as lab, rasterio.open(image) as img:
            assert lab.count == 1 and lab.dtypes == ("uint8",)
            assert lab.nodata == 255
            assert lab.crs == img.crs and lab.transform == img.transform
            assert lab.shape == img.shape


def test_image_nodata_is_labelled_255(demo: DemoDataset) -> None:
    strip = demo.coarse_images / "coarse_0004.tif"  # one chip in five has a nodata strip
    with rasterio.open(strip) as src:
        image = src.read()
    nodata = (image == 0).all(axis=0)
    assert nodata.any() and not nodata.all()
    assert not (image[:, ~nodata] == 0).any()  # valid pixels are never 0 in any band
    for labels in (demo.coarse_labels, demo.coarse_fine_labels):
        with rasterio.open(labels / strip.name) as src:
            label = src.read(1)
        assert np.array_equal(label == 255, nodata)
    # The declared nodata makes GDAL's own mask agree.
    with rasterio.open(strip) as src:
        assert np.array_equal(src.dataset_mask() == 0, nodata)
    # Chips without a strip have no nodata at all.
    with rasterio.open(demo.coarse_images / "coarse_0000.tif") as src:
        assert (src.read() > 0).all()


def test_coarse_labels_contain_fine_labels_and_are_larger() -> None:
    chips = _chips("A", 12) + _chips("B", 4)
    fine = np.stack([f for _, f, _ in chips]) == 1
    coarse = np.stack([c for _, _, c in chips]) == 1
    assert (fine & coarse).sum() >= 0.99 * fine.sum()
    assert coarse.sum() >= 1.5 * fine.sum()
    # Coarse outlines include ground between the features, which the fine label leaves out.
    assert (coarse & ~fine).sum() >= 0.3 * coarse.sum()


def test_regions_differ_moderately_spectrally() -> None:
    # Neighbouring regions: a real shift (the few exact region-B labels have something to fix),
    # but a moderate one, so that a region-A teacher still carries over to region B.
    mean_a = np.mean([img.reshape(6, -1).mean(axis=1) for img, _, _ in _chips("A", 8)], axis=0)
    mean_b = np.mean([img.reshape(6, -1).mean(axis=1) for img, _, _ in _chips("B", 8)], axis=0)
    assert 100 < mean_b[0] - mean_a[0] < 500  # somewhat hazier, brighter blue in B
    assert 150 < mean_a[3] - mean_b[3] < 700  # denser vegetation (NIR) in A
    ndvi_a = np.mean([_ndvi(img).mean() for img, _, _ in _chips("A", 8)])
    ndvi_b = np.mean([_ndvi(img).mean() for img, _, _ in _chips("B", 8)])
    assert 0.08 < ndvi_a - ndvi_b < 0.3


@pytest.mark.parametrize("region", ["A", "B"])
def test_mining_pixels_differ_from_background(region: str) -> None:
    mining, background = [], []
    for image, fine, _ in _chips(region, 8):
        ndvi = _ndvi(image)
        mining.append(ndvi[fine == 1])
        background.append(ndvi[fine == 0])
    assert np.concatenate(mining).mean() < np.concatenate(background).mean() - 0.15
