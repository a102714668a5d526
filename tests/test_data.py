"""Data layer: raster I/O, labels, nodata, grids, statistics, splits, datasets and transforms.

Every fixture is a tiny raster written into ``tmp_path``; values are chosen so the expected result
can be computed by hand (or with a few lines of numpy).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.windows import Window

from geodistill.data.datamodule import Domain, GeoSegDataModule
from geodistill.data.datasets import ChipDataset, Source, match_labels, pad_collate
from geodistill.data.labels import parse_color, read_label
from geodistill.data.raster import raster_info, read_image
from geodistill.data.splits import split_items, write_manifest
from geodistill.data.stats import BandStats, band_names, compute_band_stats
from geodistill.data.transforms import SpectralJitter, apply_transform, train_transforms
from geodistill.errors import GeodistillError
from geodistill.models.normalizer import BandNormalizer

H, W = 40, 48
IGNORE = 255
NAMES = ("Blue", "Green", "Red", "NIR", "SWIR1", "SWIR2")


def index_image(bands: int = 4, height: int = H, width: int = W) -> np.ndarray:
    """float32 (C,H,W): band b holds ``(b + 1) * 10000 + row * width + col`` (unique per pixel)."""
    pixel = np.arange(height * width, dtype=np.float32).reshape(height, width)
    return np.stack([(b + 1) * 10000 + pixel for b in range(bands)]).astype(np.float32)


def class_label(num_classes: int = 4, height: int = H, width: int = W) -> np.ndarray:
    rows, cols = np.indices((height, width))
    return ((rows // 5 + cols // 7) % num_classes).astype(np.uint8)


def assert_names_file(err: pytest.ExceptionInfo, path: Path) -> None:
    assert err.value.path == str(path)
    assert str(path) in str(err.value)


# ---------------------------------------------------------------------------------------- I/O


def test_read_image_returns_float32_chw_with_written_values(tmp_path, write_raster):
    data = np.random.default_rng(0).integers(0, 5000, (5, H, W)).astype(np.uint16)
    path = write_raster(tmp_path / "img.tif", data)
    image = read_image(path)
    assert image.dtype == np.float32
    assert image.shape == (5, H, W)
    np.testing.assert_array_equal(image, data.astype(np.float32))
    info = raster_info(path)
    assert (info.count, info.height, info.width, info.dtype) == (5, H, W, "uint16")
    assert info.crs.to_epsg() == 32633


def test_band_selection_by_index_and_name_keeps_requested_order(tmp_path, write_raster):
    # band b (0-based) is constant (b + 1) * 10, so each read band can be identified
    data = np.stack([np.full((H, W), (b + 1) * 10, np.uint16) for b in range(6)])
    path = write_raster(tmp_path / "img.tif", data, descriptions=NAMES)

    def levels(bands):
        image = read_image(path, bands)
        assert image.shape == (len(bands), H, W)
        assert all(np.unique(band).size == 1 for band in image)
        return image[:, 0, 0].tolist()

    assert levels([5, 0, 2]) == [60, 10, 30]
    assert levels(["nir", "BLUE", "Red"]) == [40, 10, 30]
    assert levels(["swir2", 1, "3"]) == [60, 20, 40]  # names, ints and digit strings mixed
    assert levels([3, 3]) == [40, 40]
    assert band_names(path, ["nir", 0]) == ("NIR", "Blue")


def test_band_names_fall_back_to_numbered_names(tmp_path, write_raster):
    path = write_raster(tmp_path / "img.tif", np.zeros((3, 4, 4), np.uint8))
    assert band_names(path) == ("band_1", "band_2", "band_3")
    assert band_names(path, [2, 0]) == ("band_3", "band_1")


@pytest.mark.parametrize("bands", [["coastal"], [6], [-1], ["-1"], [0, "nir", "thermal"]])
def test_bad_band_is_an_error_naming_the_file(tmp_path, write_raster, bands):
    data = np.zeros((6, 8, 8), np.uint16)
    path = write_raster(tmp_path / "img.tif", data, descriptions=NAMES)
    with pytest.raises(GeodistillError) as err:
        read_image(path, bands)
    assert_names_file(err, path)


def test_bad_band_name_lists_the_known_bands(tmp_path, write_raster):
    path = write_raster(tmp_path / "img.tif", np.zeros((6, 8, 8), np.uint16), descriptions=NAMES)
    with pytest.raises(GeodistillError, match="no band named 'coastal'.*NIR"):
        read_image(path, ["coastal"])
    with pytest.raises(GeodistillError, match="out of range.*6 bands"):
        read_image(path, [6])


def test_garbage_tif_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "garbage.tif"
    path.write_bytes(b"this is not a GeoTIFF\x00\x01" * 50)
    with pytest.raises(GeodistillError) as err:
        read_image(path)
    assert_names_file(err, path)
    with pytest.raises(GeodistillError) as err:
        read_label(path, 4)
    assert_names_file(err, path)


@pytest.mark.parametrize("keep", [0.5, 0.1, 0.01])
def test_truncated_geotiff_is_an_error_naming_the_file(tmp_path, write_raster, keep):
    data = np.random.default_rng(1).integers(0, 5000, (4, H, W)).astype(np.uint16)
    whole = write_raster(tmp_path / "whole.tif", data).read_bytes()
    path = tmp_path / "truncated.tif"
    path.write_bytes(whole[: int(len(whole) * keep)])
    with pytest.raises(GeodistillError) as err:
        read_image(path)
    assert_names_file(err, path)
    label_path = tmp_path / "truncated_label.tif"
    label_whole = write_raster(tmp_path / "label.tif", class_label()).read_bytes()
    label_path.write_bytes(label_whole[: int(len(label_whole) * keep)])
    with pytest.raises(GeodistillError) as err:
        read_label(label_path, 4)
    assert_names_file(err, label_path)


def test_missing_file_is_an_error(tmp_path):
    path = tmp_path / "nope.tif"
    with pytest.raises(GeodistillError, match="does not exist") as err:
        read_image(path)
    assert_names_file(err, path)
    with pytest.raises(GeodistillError):
        read_label(path, 3)
    with pytest.raises(GeodistillError):
        ChipDataset([str(path)], None, 3)


def test_jpg_image_is_read_as_float32(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (W, H), (100, 150, 200)).save(path, quality=95)
    image = read_image(path)
    assert image.dtype == np.float32
    assert image.shape == (3, H, W)
    np.testing.assert_allclose(image.mean(axis=(1, 2)), [100, 150, 200], atol=2)


def test_windowed_boundless_read_pads_with_nan(tmp_path, write_raster):
    data = index_image(3)
    path = write_raster(tmp_path / "img.tif", data, nodata=-1.0)
    image = read_image(path, window=Window(30, 20, 32, 32), boundless=True)
    assert image.shape == (3, 32, 32)
    np.testing.assert_array_equal(image[:, :20, :18], data[:, 20:, 30:])
    assert np.isnan(image[:, 20:, :]).all() and np.isnan(image[:, :, 18:]).all()


# ------------------------------------------------------------------------------------- nodata


def test_declared_nodata_becomes_nan_per_band(tmp_path, write_raster):
    data = np.full((4, H, W), 7, np.uint16)
    data[:, 0, 0] = 0  # nodata in every band
    data[2, 5, 6] = 0  # nodata in one band only
    image = read_image(write_raster(tmp_path / "img.tif", data, nodata=0))
    assert np.isnan(image[:, 0, 0]).all()
    assert np.isnan(image[:, 5, 6]).tolist() == [False, False, True, False]
    assert np.isnan(image).sum() == 5
    assert np.all(image[~np.isnan(image)] == 7)


@pytest.mark.parametrize("nodata", [None, float("nan"), -9999.0])
def test_nan_and_nodata_in_float_images_become_nan(tmp_path, write_raster, nodata):
    data = np.random.default_rng(2).random((3, H, W)).astype(np.float32)
    data[0, 1, 2] = np.nan
    expected = np.isnan(data)
    if nodata is not None and not np.isnan(nodata):
        data[1, 3, 4] = nodata
        expected[1, 3, 4] = True
    image = read_image(write_raster(tmp_path / "img.tif", data, nodata=nodata))
    np.testing.assert_array_equal(np.isnan(image), expected)
    np.testing.assert_array_equal(image[~expected], data[~expected])


def test_image_nodata_gets_ignore_index_in_the_mask(tmp_path, write_raster):
    data = np.full((4, H, W), 100, np.uint16)
    data[:, 0:2, 0:3] = 0
    data[3, 10, 11] = 0
    label = class_label()
    ds = ChipDataset(
        [str(write_raster(tmp_path / "img.tif", data, nodata=0))],
        [str(write_raster(tmp_path / "lab.tif", label))],
        num_classes=4,
    )
    sample = ds[0]
    mask = sample["mask"].numpy()
    nodata = np.zeros((H, W), bool)
    nodata[0:2, 0:3] = True
    nodata[10, 11] = True
    assert (mask[nodata] == IGNORE).all()
    np.testing.assert_array_equal(mask[~nodata], label[~nodata])
    np.testing.assert_array_equal(torch.isnan(sample["image"]).any(0).numpy(), nodata)
    assert sample["index"] == 0


def test_nan_pixels_of_float_image_get_ignore_index(tmp_path, write_raster):
    data = np.ones((3, H, W), np.float32)
    data[1, 7, 8] = np.nan
    ds = ChipDataset(
        [str(write_raster(tmp_path / "img.tif", data))],
        [str(write_raster(tmp_path / "lab.tif", class_label()))],
        num_classes=4,
        ignore_index=99,
    )
    mask = ds[0]["mask"]
    assert mask[7, 8] == 99
    assert (mask == 99).sum() == 1


def test_label_nodata_and_ignore_values_become_ignore_index(tmp_path, write_raster):
    label = class_label(4)
    label[0, :] = 200  # declared nodata
    label[1, :] = 9  # listed as ignore value
    label[2, :5] = IGNORE  # already the ignore index
    path = write_raster(tmp_path / "lab.tif", label, nodata=200)
    out = read_label(path, 4, ignore_values=[9])
    assert out.dtype == np.int64 and out.shape == (H, W)
    assert (out[0] == IGNORE).all() and (out[1] == IGNORE).all() and (out[2, :5] == IGNORE).all()
    np.testing.assert_array_equal(out[3:], label[3:])
    np.testing.assert_array_equal(out[2, 5:], label[2, 5:])
    assert (read_label(path, 4, ignore_index=77, ignore_values=[9, 255])[:3, :5] == 77).all()


def test_float_label_with_nan_nodata(tmp_path, write_raster):
    label = class_label(4).astype(np.float32)
    label[4, 4] = np.nan
    out = read_label(write_raster(tmp_path / "lab.tif", label, nodata=float("nan")), 4)
    assert out[4, 4] == IGNORE
    assert (out == IGNORE).sum() == 1


def test_label_values_outside_class_range_are_an_error(tmp_path, write_raster):
    label = class_label(4)
    label[3, 3] = 6
    path = write_raster(tmp_path / "lab.tif", label)
    with pytest.raises(GeodistillError, match=r"\[6\].*4 classes") as err:
        read_label(path, 4)
    assert_names_file(err, path)
    assert read_label(path, 7)[3, 3] == 6  # fine with more classes
    assert read_label(path, 4, ignore_values=[6])[3, 3] == IGNORE
    img = write_raster(tmp_path / "img.tif", index_image(3))
    ds = ChipDataset([str(img)], [str(path)], num_classes=4)
    with pytest.raises(GeodistillError) as err:
        ds[0]
    assert_names_file(err, path)


def test_rgb_png_mask_is_mapped_by_color_map(tmp_path, write_raster):
    rgb = np.zeros((H, W, 3), np.uint8)  # black: class 0
    rgb[:10] = (255, 0, 0)  # "R,G,B" key → 1
    rgb[10:20] = (0, 255, 0)  # "#RRGGBB" key → 2
    rgb[20:25] = (0, 0, 255)  # negative id → ignore
    rgb[25:27] = (12, 34, 56)  # not in the map → ignore
    path = tmp_path / "mask.png"
    Image.fromarray(rgb).save(path)
    color_map = {"255,0,0": 1, "#00ff00": 2, "#0000FF": -1, " 0, 0, 0 ": 0}
    out = read_label(path, 3, color_map=color_map)
    expected = np.zeros((H, W), np.int64)
    expected[:10], expected[10:20], expected[20:27] = 1, 2, IGNORE
    np.testing.assert_array_equal(out, expected)

    # through a dataset with a JPG image (no CRS on either side)
    jpg = tmp_path / "mask_image.jpg"
    Image.new("RGB", (W, H), (50, 60, 70)).save(jpg)
    ds = ChipDataset([str(jpg)], [str(path)], num_classes=3, color_map=color_map)
    np.testing.assert_array_equal(ds[0]["mask"].numpy(), expected)

    grey = write_raster(tmp_path / "grey.tif", class_label(3))
    with pytest.raises(GeodistillError, match="3 bands"):
        read_label(grey, 3, color_map=color_map)


def test_parse_color():
    assert parse_color("#0A0b10") == (10, 11, 16)
    assert parse_color(" 1, 2,3") == (1, 2, 3)
    for bad in ("red", "1,2", "#12345", "1,2,x"):
        with pytest.raises(GeodistillError):
            parse_color(bad)


# ----------------------------------------------------------------------------- CRS and size


def test_image_label_size_mismatch_names_the_label(tmp_path, write_raster):
    img = write_raster(tmp_path / "img.tif", index_image(4))
    lab = write_raster(tmp_path / "lab.tif", class_label(height=H, width=W - 8))
    with pytest.raises(GeodistillError, match="size") as err:
        ChipDataset([str(img)], [str(lab)], num_classes=4)
    assert_names_file(err, lab)


def test_image_label_crs_mismatch_names_the_label(tmp_path, write_raster):
    img = write_raster(tmp_path / "img.tif", index_image(4))
    lab = write_raster(tmp_path / "lab.tif", class_label(), crs="EPSG:32634")
    with pytest.raises(GeodistillError, match="CRS") as err:
        ChipDataset([str(img)], [str(lab)], num_classes=4)
    assert_names_file(err, lab)
    # a label without CRS is accepted (nothing to compare)
    lab2 = write_raster(tmp_path / "lab2.tif", class_label(), crs=None)
    assert len(ChipDataset([str(img)], [str(lab2)], num_classes=4)) == 1


def test_images_with_different_band_counts_are_an_error(tmp_path, write_raster):
    a = write_raster(tmp_path / "a.tif", index_image(4))
    b = write_raster(tmp_path / "b.tif", index_image(5))
    with pytest.raises(GeodistillError, match="5 bands") as err:
        ChipDataset([str(a), str(b)], None, num_classes=4)
    assert_names_file(err, b)
    # selecting the same bands from both makes them compatible
    ds = ChipDataset([str(a), str(b)], None, num_classes=4, bands=[0, 2])
    assert ds.num_bands == 2
    assert ds[1]["image"].shape == (2, H, W)
    assert (ds[1]["mask"] == IGNORE).all()


def test_empty_dataset_is_an_error():
    with pytest.raises(GeodistillError, match="empty"):
        ChipDataset([], None, num_classes=2)


# -------------------------------------------------------------------------------------- stats


def expected_stats(raw: list[np.ndarray], bands: list[int], percentiles, nodata=-1):
    """Hand computation: drop pixels nodata in any selected band, clip, then mean/std."""
    pooled = np.concatenate(
        [
            d[bands].reshape(len(bands), -1)[:, (d[bands] != nodata).all(axis=0).ravel()]
            for d in raw
        ],
        axis=1,
    ).astype(np.float64)
    low, high = np.percentile(pooled, percentiles, axis=1)
    clipped = np.clip(pooled, low[:, None], high[:, None])
    return pooled.shape[1], low, high, clipped.mean(axis=1), clipped.std(axis=1)


def test_band_stats_match_numpy_with_clipping_and_nodata(tmp_path, write_raster):
    rng = np.random.default_rng(3)
    images, raw = [], []
    for k in range(2):
        data = rng.normal(100 * (k + 1), 20, (3, 10, 12)).astype(np.float32)
        data[:, 0, 0] = [5000, -5000, 9000]  # outliers, removed by the clip
        data[k, 4, 4] = -1  # nodata in one band: the whole pixel is dropped
        data[:, 9, 9] = -1
        raw.append(data)
        path = tmp_path / f"img{k}.tif"
        images.append(write_raster(path, data, nodata=-1.0, descriptions=("a", "b", "c")))
    stats = compute_band_stats(images, percentiles=(2.0, 97.0), pixels_per_image=10_000)
    count, low, high, mean, std = expected_stats(raw, [0, 1, 2], (2.0, 97.0))
    assert count == 2 * 120 - 4
    assert stats.band_names == ("a", "b", "c")
    assert stats.num_bands == 3
    np.testing.assert_allclose(stats.low, low, rtol=1e-6)
    np.testing.assert_allclose(stats.high, high, rtol=1e-6)
    np.testing.assert_allclose(stats.mean, mean, rtol=1e-6)
    np.testing.assert_allclose(stats.std, std, rtol=1e-6)
    assert max(stats.high) < 1000 and min(stats.low) > 0  # outliers clipped away

    # band selection: only the selected bands' nodata drops a pixel (band b's is ignored here)
    subset = compute_band_stats(images, bands=["c", "A"], percentiles=(2.0, 97.0))
    assert subset.band_names == ("c", "a")
    count, low, high, mean, std = expected_stats(raw, [2, 0], (2.0, 97.0))
    assert count == 2 * 120 - 3
    np.testing.assert_allclose(subset.low, low, rtol=1e-6)
    np.testing.assert_allclose(subset.mean, mean, rtol=1e-6)
    np.testing.assert_allclose(subset.std, std, rtol=1e-6)


def test_band_stats_without_clipping_is_plain_mean_std(tmp_path, write_raster):
    data = np.arange(2 * 5 * 6, dtype=np.float32).reshape(2, 5, 6)
    stats = compute_band_stats([write_raster(tmp_path / "img.tif", data)], percentiles=(0, 100))
    np.testing.assert_allclose(stats.low, data.reshape(2, -1).min(1))
    np.testing.assert_allclose(stats.high, data.reshape(2, -1).max(1))
    np.testing.assert_allclose(stats.mean, data.reshape(2, -1).mean(1))
    np.testing.assert_allclose(stats.std, data.reshape(2, -1).std(1), rtol=1e-6)


def test_band_stats_sampling_is_seeded(tmp_path, write_raster):
    data = np.random.default_rng(4).random((2, 30, 30)).astype(np.float32)
    path = write_raster(tmp_path / "img.tif", data)
    a = compute_band_stats([path], pixels_per_image=50, seed=1)
    assert a == compute_band_stats([path], pixels_per_image=50, seed=1)
    assert a != compute_band_stats([path], pixels_per_image=50, seed=2)


def test_band_stats_errors(tmp_path, write_raster):
    with pytest.raises(GeodistillError, match="no images"):
        compute_band_stats([])
    empty = write_raster(tmp_path / "empty.tif", np.zeros((2, 4, 4), np.uint8), nodata=0)
    with pytest.raises(GeodistillError, match="nodata"):
        compute_band_stats([empty])
    good = write_raster(tmp_path / "good.tif", np.ones((2, 4, 4), np.uint8))
    with pytest.raises(GeodistillError, match="percentiles"):
        compute_band_stats([good], percentiles=(50, 10))
    three = write_raster(tmp_path / "three.tif", np.ones((3, 4, 4), np.uint8))
    with pytest.raises(GeodistillError) as err:
        compute_band_stats([good, three])
    assert_names_file(err, three)


def test_band_stats_json_round_trip(tmp_path):
    stats = BandStats(
        band_names=("red", "nir"), low=(1.5, -2.0), high=(10.0, 3.25), mean=(4.0, 0.1), std=(2, 1)
    )
    path = tmp_path / "sub" / "stats.json"
    stats.to_json(path)
    assert BandStats.from_json(path) == stats
    assert json.loads(path.read_text())["band_names"] == ["red", "nir"]
    assert [p.name for p in path.parent.iterdir()] == ["stats.json"]  # no temp file left
    bad = tmp_path / "bad.json"
    bad.write_text('{"band_names": ["a"], "oops": [1]}')
    with pytest.raises(GeodistillError) as err:
        BandStats.from_json(bad)
    assert_names_file(err, bad)
    with pytest.raises(GeodistillError):
        BandStats.from_json(tmp_path / "missing.json")


# --------------------------------------------------------------------------------- normalizer


def test_band_normalizer_clips_standardises_and_zeroes_nan():
    stats = BandStats(
        band_names=("a", "b"), low=(0.0, 10.0), high=(5.0, 20.0), mean=(2.0, 15.0), std=(1.0, 2.0)
    )
    norm = BandNormalizer(2)
    norm.set_stats(stats)
    x = torch.tensor([[[[-3.0, 1.0, 4.0, 9.0]], [[12.0, float("nan"), 30.0, 15.0]]]])
    expected = np.empty((1, 2, 1, 4), np.float32)
    arr = x.numpy()
    for b in range(2):
        clipped = np.clip(arr[0, b], stats.low[b], stats.high[b])
        expected[0, b] = (clipped - stats.mean[b]) / stats.std[b]
    expected = np.nan_to_num(expected, nan=0.0)
    out = norm(x)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6)
    assert out[0, 1, 0, 1] == 0 and not torch.isnan(out).any()
    np.testing.assert_allclose(out[0, :, 0].numpy(), [[-2, -1, 2, 3], [-1.5, 0, 2.5, 0]])

    with pytest.raises(ValueError):
        BandNormalizer(3).set_stats(stats)
    identity = BandNormalizer(2)(x)  # default stats: identity except NaN → 0
    np.testing.assert_array_equal(identity.numpy(), np.nan_to_num(arr, nan=0.0))
    assert set(dict(norm.named_buffers())) == {"low", "high", "mean", "std"}


# ------------------------------------------------------------------------------------- splits


ITEMS = [f"chip_{i:02d}.tif" for i in range(20)]


def test_split_items_is_deterministic_and_order_independent():
    a = split_items(ITEMS, [0.2, 0.1, 1.0], seed=7)
    assert a == split_items(list(reversed(ITEMS)), [0.2, 0.1, 1.0], seed=7)
    assert a == split_items(sorted(ITEMS, key=lambda s: s[::-1]), [0.2, 0.1, 1.0], seed=7)
    assert a != split_items(ITEMS, [0.2, 0.1, 1.0], seed=8)
    assert a[0] != sorted(ITEMS)[:4]  # actually shuffled


@pytest.mark.parametrize("fractions", [[0.2, 0.1, 1.0], [0.5, 1.0], [0.0, 0.0, 1.0], [0.25, 0.75]])
def test_split_items_fractions_disjoint_and_complete(fractions):
    parts = split_items(ITEMS, fractions, seed=3)
    assert len(parts) == len(fractions)
    for part, fraction in zip(parts[:-1], fractions[:-1], strict=True):
        assert len(part) == round(fraction * len(ITEMS))
    assert sum(len(p) for p in parts) == len(ITEMS)
    assert set().union(*map(set, parts)) == set(ITEMS)
    assert all(len(set(p)) == len(p) for p in parts)


def test_split_items_rejects_bad_fractions():
    with pytest.raises(GeodistillError):
        split_items(ITEMS, [-0.1, 1.0], seed=0)
    with pytest.raises(GeodistillError):
        split_items(ITEMS, [0.7, 0.6, 1.0], seed=0)


def test_write_manifest_is_atomic_json(tmp_path):
    path = tmp_path / "runs" / "manifest.json"
    write_manifest(path, {"a": [1, 2]})
    write_manifest(path, {"b": 3})
    assert json.loads(path.read_text()) == {"b": 3}
    assert [p.name for p in path.parent.iterdir()] == ["manifest.json"]


def test_match_labels_with_parent_template(tmp_path, write_raster):
    images = []
    for region in ("north", "south"):
        for name in ("x", "y"):
            images.append(
                str(
                    write_raster(
                        tmp_path / region / "images" / f"{name}.tif", np.zeros((2, 4, 4), np.uint8)
                    )
                )
            )
            write_raster(tmp_path / region / "masks" / f"{name}.tif", np.zeros((4, 4), np.uint8))
    labels = match_labels(images, "{parent}/../masks")
    expected = [str(Path(p).parent.parent / "masks" / Path(p).name) for p in images]
    assert [os.path.normpath(p) for p in labels] == expected


def test_match_labels_ambiguous_and_missing(tmp_path, write_raster):
    image = str(write_raster(tmp_path / "img" / "x.tif", np.zeros((2, 4, 4), np.uint8)))
    write_raster(tmp_path / "a" / "x.tif", np.zeros((4, 4), np.uint8))
    write_raster(tmp_path / "b" / "x.tif", np.zeros((4, 4), np.uint8))
    with pytest.raises(GeodistillError, match="ambiguous") as err:
        match_labels([image], [str(tmp_path / "a"), str(tmp_path / "b")])
    assert err.value.path == image
    assert match_labels([image], [str(tmp_path / "a")]) == [str(tmp_path / "a" / "x.tif")]
    Image.new("L", (4, 4)).save(tmp_path / "a" / "x.png")  # same stem, other suffix
    with pytest.raises(GeodistillError, match="ambiguous"):
        match_labels([image], str(tmp_path / "a"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(GeodistillError, match="no label") as err:
        match_labels([image], str(tmp_path / "empty"))
    assert err.value.path == image


# ------------------------------------------------------------------------------ data module


def make_chips(root: Path, write_raster, n: int = 10, size: int = 16) -> tuple[Path, Path]:
    rng = np.random.default_rng(5)
    for i in range(n):
        data = rng.integers(1, 1000, (3, size, size)).astype(np.uint16)
        write_raster(root / "images" / f"chip_{i:02d}.tif", data, descriptions=("r", "g", "b"))
        write_raster(root / "labels" / f"chip_{i:02d}.tif", class_label(3, size, size))
    return root / "images", root / "labels"


def datamodule(images: Path, labels: Path, tmp_path: Path, **domain) -> GeoSegDataModule:
    return GeoSegDataModule(
        classes=["a", "b", "c"],
        fine=Domain(train=Source(images=str(images), labels=str(labels)), **domain),
        patch_size=16,
        crops_per_image=2,
        batch_size=2,
        manifest=str(tmp_path / "out" / "manifest.json"),
        seed=11,
    )


def test_datamodule_writes_manifest_with_seeded_splits(tmp_path, write_raster):
    images, labels = make_chips(tmp_path, write_raster)
    dm = datamodule(images, labels, tmp_path, val_fraction=0.2, test_fraction=0.3)
    dm.setup("fit")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["seed"] == 11
    assert manifest["classes"] == ["a", "b", "c"]
    assert manifest["bands"] == ["r", "g", "b"]
    parts = manifest["domains"]["fine"]
    assert [len(parts[s]) for s in ("train", "val", "test")] == [5, 2, 3]
    everything = [p for s in ("train", "val", "test") for p in parts[s]]
    assert sorted(everything) == sorted(str(p) for p in images.iterdir())
    assert len(set(everything)) == 10
    assert {s: [img for img, _ in pairs] for s, pairs in dm.splits["fine"].items()} == parts
    for img, lab in dm.splits["fine"]["train"]:
        assert Path(lab).name == Path(img).name and Path(lab).parent == labels

    again = datamodule(images, labels, tmp_path, val_fraction=0.2, test_fraction=0.3)
    assert again.splits == dm.splits
    assert dm.band_stats is not None and dm.band_stats.band_names == ("r", "g", "b")
    assert len(dm.datasets["train"]) == 5 * 2 and len(dm.datasets["val"]) == 2
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 32)
    assert batch["shape"].tolist() == [[16, 16], [16, 16]]
    assert torch.isnan(batch["image"][:, :, 16:]).all()


def test_datamodule_train_limit_keeps_exactly_n_chips(tmp_path, write_raster):
    images, labels = make_chips(tmp_path, write_raster)
    full = datamodule(images, labels, tmp_path, val_fraction=0.2)
    limited = datamodule(images, labels, tmp_path, val_fraction=0.2, train_limit=3)
    train = limited.splits["fine"]["train"]
    assert len(train) == 3
    assert set(train) <= set(full.splits["fine"]["train"])
    assert limited.splits["fine"]["val"] == full.splits["fine"]["val"]
    limited.setup("fit")
    assert len(limited.datasets["train"]) == 3 * 2
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["domains"]["fine"]["train"] == [img for img, _ in train]
    for bad_limit in (0, 9):
        with pytest.raises(GeodistillError, match=f"train_limit={bad_limit} but the training"):
            datamodule(images, labels, tmp_path, val_fraction=0.2, train_limit=bad_limit)


def test_datamodule_empty_split_and_empty_dataset(tmp_path, write_raster):
    images, labels = make_chips(tmp_path, write_raster, n=3)
    dm = datamodule(images, labels, tmp_path)  # no val fraction, no val source
    with pytest.raises(GeodistillError, match="val split is empty"):
        dm.setup("fit")
    with pytest.raises(GeodistillError, match="test split is empty"):
        dm.setup("test")
    (tmp_path / "none").mkdir()
    with pytest.raises(GeodistillError, match="no image files"):
        datamodule(tmp_path / "none", labels, tmp_path)


def test_datamodule_explicit_val_source(tmp_path, write_raster):
    images, labels = make_chips(tmp_path / "train", write_raster, n=4)
    val_images, val_labels = make_chips(tmp_path / "val", write_raster, n=2)
    dm = datamodule(
        images, labels, tmp_path, val=Source(images=str(val_images), labels=str(val_labels))
    )
    assert len(dm.splits["fine"]["train"]) == 4
    assert [Path(i).parent for i, _ in dm.splits["fine"]["val"]] == [val_images] * 2
    assert dm.splits["fine"]["test"] == []


# ------------------------------------------------------------------------------------ datasets


def test_random_crop_reads_a_window_of_the_chip(tmp_path, write_raster):
    data, label = index_image(3), class_label()
    ds = ChipDataset(
        [str(write_raster(tmp_path / "img.tif", data))],
        [str(write_raster(tmp_path / "lab.tif", label))],
        num_classes=4,
        crop_size=16,
        crops_per_image=5,
    )
    assert len(ds) == 5
    torch.manual_seed(0)
    offsets = set()
    for i in range(len(ds)):
        sample = ds[i]
        assert sample["image"].shape == (3, 16, 16) and sample["mask"].shape == (16, 16)
        assert sample["index"] == 0
        row, col = divmod(int(sample["image"][0, 0, 0]) - 10000, W)
        offsets.add((row, col))
        np.testing.assert_array_equal(
            sample["image"].numpy(), data[:, row : row + 16, col : col + 16]
        )
        np.testing.assert_array_equal(sample["mask"].numpy(), label[row : row + 16, col : col + 16])
    assert len(offsets) > 1


def test_crop_larger_than_chip_is_padded_with_nan_and_ignore(tmp_path, write_raster):
    data, label = index_image(3, 20, 24), class_label(4, 20, 24)
    ds = ChipDataset(
        [str(write_raster(tmp_path / "img.tif", data))],
        [str(write_raster(tmp_path / "lab.tif", label))],
        num_classes=4,
        crop_size=32,
    )
    sample = ds[0]
    image, mask = sample["image"].numpy(), sample["mask"].numpy()
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32)
    np.testing.assert_array_equal(image[:, :20, :24], data)
    np.testing.assert_array_equal(mask[:20, :24], label)
    assert np.isnan(image[:, 20:]).all() and np.isnan(image[:, :, 24:]).all()
    assert (mask[20:] == IGNORE).all() and (mask[:, 24:] == IGNORE).all()


@pytest.mark.parametrize("size,crop", [((40, 48), 16), ((20, 24), 32), ((40, 48), None)])
def test_cache_gives_the_same_samples(tmp_path, write_raster, size, crop):
    data = index_image(4, *size).astype(np.uint16)
    data[:, 3, 3:9] = 0  # nodata
    data[1, 11, 2] = 0
    label = class_label(4, *size)
    label[5, :] = 200  # label nodata
    img = str(write_raster(tmp_path / "img.tif", data, nodata=0))
    lab = str(write_raster(tmp_path / "lab.tif", label, nodata=200))
    samples = {}
    for cache in (False, True):
        ds = ChipDataset(
            [img], [lab], num_classes=4, crop_size=crop, crops_per_image=6, cache=cache
        )
        torch.manual_seed(42)
        samples[cache] = [ds[i] for i in range(len(ds))] + [ds[0], ds[len(ds) - 1]]
    for a, b in zip(samples[False], samples[True], strict=True):
        torch.testing.assert_close(a["image"], b["image"], equal_nan=True, rtol=0, atol=0)
        assert torch.equal(a["mask"], b["mask"])
        assert (a["mask"][torch.isnan(a["image"]).any(0)] == IGNORE).all()


def test_pad_collate_pads_to_multiple_of_32_and_keeps_shape():
    samples = [
        {"image": torch.ones(3, 20, 30), "mask": torch.zeros(20, 30, dtype=torch.long), "index": 4},
        {"image": torch.ones(3, 33, 10), "mask": torch.ones(33, 10, dtype=torch.long), "index": 7},
    ]
    batch = pad_collate(samples, ignore_index=99)
    assert batch["image"].shape == (2, 3, 64, 32)
    assert batch["mask"].shape == (2, 64, 32)
    assert batch["shape"].tolist() == [[20, 30], [33, 10]]
    assert batch["index"].tolist() == [4, 7]
    assert (batch["image"][0, :, :20, :30] == 1).all()
    assert (
        torch.isnan(batch["image"][0, :, 20:]).all()
        and torch.isnan(batch["image"][0, :, :, 30:]).all()
    )
    assert (batch["mask"][0, :20, :30] == 0).all() and (batch["mask"][0, 20:] == 99).all()
    assert (batch["mask"][1, :33, :10] == 1).all() and (batch["mask"][1, :, 10:] == 99).all()
    exact = pad_collate(
        [
            {
                **samples[0],
                "image": torch.ones(3, 32, 64),
                "mask": torch.zeros(32, 64, dtype=torch.long),
            }
        ],
        multiple=32,
    )
    assert exact["image"].shape == (1, 3, 32, 64)
    assert pad_collate(samples, multiple=8)["image"].shape == (2, 3, 40, 32)


# ---------------------------------------------------------------------------------- transforms


def paired_sample() -> tuple[torch.Tensor, torch.Tensor]:
    """Image whose band 0 equals the mask, band 1 is twice it, band 2 NaN where mask % 7 == 0."""
    mask = torch.arange(H * W, dtype=torch.int64).reshape(H, W)
    image = torch.stack([mask.float(), 2 * mask.float(), torch.ones(H, W)])
    image[2][mask % 7 == 0] = float("nan")
    return image, mask


def test_geometric_transforms_move_image_and_mask_together():
    image, mask = paired_sample()
    transform = train_transforms(photometric=False)
    changed = 0
    for seed in range(12):
        torch.manual_seed(seed)
        out_image, out_mask = apply_transform(transform, image.clone(), mask.clone())
        assert type(out_image) is torch.Tensor and type(out_mask) is torch.Tensor
        assert out_mask.dtype == torch.int64 and out_image.dtype == torch.float32
        assert out_mask.shape in ((H, W), (W, H)) and out_image.shape[1:] == out_mask.shape
        assert torch.equal(out_image[0], out_mask.float())
        assert torch.equal(out_image[1], 2 * out_mask.float())
        assert torch.equal(torch.isnan(out_image[2]), out_mask % 7 == 0)
        assert torch.equal(out_mask.flatten().sort().values, mask.flatten())  # a permutation
        changed += out_mask.shape != mask.shape or not torch.equal(out_mask, mask)
    assert changed >= 6


def test_photometric_jitter_changes_image_not_mask():
    image, mask = paired_sample()
    image[:2] += 100  # keep every band away from zero
    geometric, full = train_transforms(photometric=False), train_transforms(photometric=True)
    jittered = 0
    for seed in range(12):
        torch.manual_seed(seed)
        geo_image, geo_mask = apply_transform(geometric, image.clone(), mask.clone())
        torch.manual_seed(seed)
        out_image, out_mask = apply_transform(full, image.clone(), mask.clone())
        assert torch.equal(out_mask, geo_mask)  # same geometry, mask untouched by jitter
        assert torch.equal(torch.isnan(out_image), torch.isnan(geo_image))
        jittered += not torch.equal(out_image, geo_image)
    assert jittered >= 6

    torch.manual_seed(0)
    out_image, out_mask = apply_transform(SpectralJitter(p=1.0), image.clone(), mask.clone())
    assert torch.equal(out_mask, mask)
    nan = torch.isnan(image)
    assert torch.equal(torch.isnan(out_image), nan)
    assert not torch.equal(out_image[~nan], image[~nan])
    flat = torch.full((2, H, W), 500.0)
    out_flat, _ = apply_transform(SpectralJitter(gain=0.1, noise=0.0, p=1.0), flat, mask)
    gains = out_flat[:, 0, 0] / 500
    assert torch.equal(out_flat, gains[:, None, None] * flat)  # one gain per band, no noise
    assert ((gains - 1).abs() <= 0.1 + 1e-6).all() and gains[0] != gains[1]


def test_no_transform_is_identity():
    image, mask = paired_sample()
    out_image, out_mask = apply_transform(None, image, mask)
    assert out_image is image and out_mask is mask


def test_transforms_in_dataset_keep_nodata_ignored(tmp_path, write_raster):
    data = index_image(3).astype(np.uint16)
    data[:, :4, :4] = 0
    ds = ChipDataset(
        [str(write_raster(tmp_path / "img.tif", data, nodata=0))],
        [str(write_raster(tmp_path / "lab.tif", class_label()))],
        num_classes=4,
        transform=train_transforms(photometric=True),
    )
    for seed in range(5):
        torch.manual_seed(seed)
        sample = ds[0]
        nan = torch.isnan(sample["image"]).any(0)
        assert nan.sum() == 16
        assert (sample["mask"][nan] == IGNORE).all() and (sample["mask"][~nan] != IGNORE).all()


def test_palette_png_mask_maps_through_its_colour_table(tmp_path):
    indices = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    path = tmp_path / "palette.png"
    with rasterio.open(path, "w", driver="PNG", width=3, height=2, count=1, dtype="uint8") as dst:
        dst.write(indices, 1)
        dst.write_colormap(1, {0: (60, 16, 152, 255), 1: (155, 155, 155, 255), 2: (1, 2, 3, 255)})
    color_map = {"60,16,152": 0, "155,155,155": -1}
    label = read_label(path, num_classes=2, color_map=color_map)
    # index 0 -> class 0; index 1 -> grey, mapped to ignore; index 2 -> unmapped colour, ignore
    np.testing.assert_array_equal(label, [[0, 255, 255], [255, 255, 0]])


def test_band_stats_json_failure_leaves_no_temp_file(tmp_path, monkeypatch):
    stats = BandStats(band_names=("a",), low=(0.0,), high=(1.0,), mean=(0.5,), std=(0.1,))

    def broken_dump(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("geodistill.data.stats.json.dump", broken_dump)
    with pytest.raises(OSError, match="disk full"):
        stats.to_json(tmp_path / "stats.json")
    assert list(tmp_path.iterdir()) == []
