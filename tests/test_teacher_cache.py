"""The teacher output cache: fixed windows, memory maps, augmentation, fingerprints, atomicity.

Chips are tiny random GeoTIFFs (some nodata, one chip smaller than a window); teachers are tiny
networks built here. Expected targets are computed independently: the teacher run on windows cut
from the arrays the test wrote, then flipped/rotated with plain torch.
"""

from __future__ import annotations

import os
import pickle
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures_small import CLASSES, make_dataset, write_tif
from rasterio.windows import Window
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, DataLoader
from torchvision.transforms import v2

from geodistill.data.datamodule import Domain, GeoSegDataModule
from geodistill.data.datasets import ChipDataset, Source, pad_collate
from geodistill.data.teacher_cache import (
    CachedTeacherDataset,
    TeacherCache,
    attach_teacher_cache,
    cache_windows,
    ensure_teacher_cache,
)
from geodistill.data.transforms import RandomRot90, train_transforms
from geodistill.errors import GeodistillError, GeodistillWarning
from geodistill.models.teachers.base import Teacher, TeacherNetwork, TeacherOutput, TeacherSpec

WINDOW = 16
NODATA = -1.0
IGNORE = 255
CHIPS = {"a": (40, 40), "b": (24, 40), "c": (10, 12)}  # c is smaller than a window
EXPECTED_WINDOWS = {"a": 9, "b": 6, "c": 1}  # origins 0, 16, 24 | 0, 8 | 0


# ------------------------------------------------------------------------------------ teachers


class PointwiseNetwork(TeacherNetwork):
    """1×1 convolutions and 2×2 average pooling: commutes with flips and 90° rotations."""

    def __init__(self, seed: int = 0, in_channels: int = 3, logits: bool = True) -> None:
        super().__init__()
        self.levels = ["full", "half"]
        self.in_channels = in_channels
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.a = nn.Conv2d(in_channels, 5, 1)
            self.b = nn.Conv2d(5, 4, 1)
            self.head = nn.Conv2d(5, 2, 1) if logits else None

    def forward(self, x: Tensor) -> TeacherOutput:
        full = torch.tanh(self.a(x))
        half = F.avg_pool2d(torch.tanh(self.b(full)), 2)
        return TeacherOutput([full, half], None if self.head is None else self.head(full))


class StridedNetwork(TeacherNetwork):
    """Strided 3×3 convolutions: not equivariant, so only the cache's own bookkeeping can make
    its targets follow the augmentation."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.levels = ["half", "quarter"]
        self.in_channels = 3
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.a = nn.Conv2d(3, 6, 3, stride=2, padding=1)
            self.b = nn.Conv2d(6, 8, 3, stride=2, padding=1)
            self.head = nn.Conv2d(6, 2, 3, padding=1)

    def forward(self, x: Tensor) -> TeacherOutput:
        half = torch.relu(self.a(x))
        return TeacherOutput([half, self.b(half)], self.head(half))


class FailingNetwork(PointwiseNetwork):
    """Raises on its second batch: a build that fails midway."""

    calls = 0

    def forward(self, x: Tensor) -> TeacherOutput:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("teacher failed on batch 2")
        return super().forward(x)


def make_teacher(network: TeacherNetwork, weights: Path | None = None, kind: str = "test"):
    """A frozen teacher; with ``weights`` its state is saved there, and fingerprinted from it."""
    if weights is not None:
        torch.save(network.state_dict(), weights)
    spec = TeacherSpec(kind=kind, path=None if weights is None else str(weights))
    return Teacher(network, list(range(network.in_channels)), None, spec)


# ------------------------------------------------------------------------------------ data


def chip_arrays(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(image float32 (3,H,W) with NODATA pixels, label uint8 (H,W)) per chip."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, (h, w) in CHIPS.items():
        image = rng.uniform(0, 1, size=(3, h, w)).astype(np.float32)
        image[:, 2, 3:7] = NODATA
        arrays[name] = image, rng.integers(0, 2, size=(h, w)).astype(np.uint8)
    return arrays


def write_chips(root: Path, arrays: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[str]:
    for name, (image, label) in arrays.items():
        write_tif(root / "images" / f"{name}.tif", image, nodata=NODATA)
        write_tif(root / "labels" / f"{name}.tif", label)
    return [str(root / "images" / f"{name}.tif") for name in arrays]


def chip_dataset(images: list[str], transform: v2.Transform | None = None) -> ChipDataset:
    labels = [p.replace("images", "labels") for p in images]
    return ChipDataset(images, labels, num_classes=2, crop_size=WINDOW, transform=transform)


@pytest.fixture
def chips(tmp_path) -> tuple[list[str], dict[str, tuple[np.ndarray, np.ndarray]]]:
    arrays = chip_arrays()
    return write_chips(tmp_path / "data", arrays), arrays


def raw_window(image: np.ndarray, label: np.ndarray, window: Window) -> tuple[Tensor, Tensor]:
    """The window cut from the written arrays: padded with NaN/ignore, nodata NaN and ignored."""
    r, c = int(window.row_off), int(window.col_off)
    out = np.full((image.shape[0], WINDOW, WINDOW), np.nan, np.float32)
    mask = np.full((WINDOW, WINDOW), IGNORE, np.int64)
    part = image[:, r : r + WINDOW, c : c + WINDOW]
    out[:, : part.shape[1], : part.shape[2]] = part
    mask[: part.shape[1], : part.shape[2]] = label[r : r + WINDOW, c : c + WINDOW]
    out[out == NODATA] = np.nan
    mask[np.isnan(out).any(0)] = IGNORE
    return torch.from_numpy(out), torch.from_numpy(mask)


def dihedral(t: Tensor, k: int, flip: bool) -> Tensor:
    """Horizontal flip (optional), then ``k`` quarter turns: an element of the dihedral group."""
    return torch.rot90(t.flip(-1) if flip else t, k, dims=(-2, -1))


ELEMENTS = [(k, flip) for flip in (False, True) for k in range(4)]


class FixedRot90(RandomRot90):
    """:class:`RandomRot90` with its draw fixed, to force one dihedral element."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"k": self.k}


def teacher_maps(teacher: Teacher, image: Tensor) -> list[Tensor]:
    output = teacher(image[None])
    return [
        m[0] for m in [*output.features, *([output.logits] if output.logits is not None else [])]
    ]


def sample_maps(sample: dict[str, Any]) -> list[Tensor]:
    logits = sample["teacher"]["logits"]
    return [*sample["teacher"]["features"], *([logits] if logits is not None else [])]


def window_of(dataset: CachedTeacherDataset, k: int, arrays) -> tuple[Tensor, Tensor]:
    chip, window = dataset.windows[k]
    image, label = arrays[Path(dataset.dataset.images[chip]).stem]
    return raw_window(image, label, window)


def assert_maps_close(actual: list[Tensor], expected: list[Tensor], dtype: str) -> None:
    tolerance = 1e-6 if dtype == "float32" else 2e-3  # float16: 10-bit mantissa, |x| <~ 2
    assert [a.shape for a in actual] == [e.shape for e in expected]
    for a, e in zip(actual, expected, strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, e, rtol=tolerance, atol=tolerance)


# ------------------------------------------------------------------------------------ windows


def test_windows_cover_every_pixel_and_pad_small_chips(tmp_path, chips):
    images, arrays = chips
    dataset = chip_dataset(images)
    windows = cache_windows(dataset, WINDOW)
    assert len(windows) == sum(EXPECTED_WINDOWS.values())
    for chip, name in enumerate(CHIPS):
        h, w = CHIPS[name]
        own = [win for c, win in windows if c == chip]
        assert len(own) == EXPECTED_WINDOWS[name]
        covered = np.zeros((h, w), bool)
        for win in own:
            assert (win.height, win.width) == (WINDOW, WINDOW)
            covered[win.row_off : win.row_off + WINDOW, win.col_off : win.col_off + WINDOW] = True
        assert covered.all()
        if h >= WINDOW:  # the last window is flush with the edge, never beyond it
            assert max(win.row_off for win in own) + WINDOW == h
    cache = TeacherCache.build(
        tmp_path / "cache", make_teacher(PointwiseNetwork()), dataset, WINDOW
    )
    cached = CachedTeacherDataset(dataset, cache)
    assert len(cached) == len(windows)
    for k in range(len(cached)):
        sample = cached[k]
        image, mask = window_of(cached, k, arrays)
        torch.testing.assert_close(sample["image"], image, equal_nan=True, rtol=0, atol=0)
        assert torch.equal(sample["mask"], mask)
        assert sample["index"] == windows[k][0]
    small = cached[len(cached) - 1]  # chip c: 10×12 in a 16×16 window
    assert (
        torch.isnan(small["image"][:, 10:]).all() and torch.isnan(small["image"][:, :, 12:]).all()
    )
    assert (small["mask"][10:] == IGNORE).all() and (small["mask"][:, 12:] == IGNORE).all()
    assert not torch.isnan(small["image"][:, :10, :12][:, 3:]).any()


# ------------------------------------------------------------------------------------ augmentation


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_every_dihedral_element_moves_image_mask_and_targets_together(tmp_path, chips, dtype):
    images, arrays = chips
    teacher = make_teacher(StridedNetwork())
    cache = TeacherCache.build(
        tmp_path / "cache", teacher, chip_dataset(images), WINDOW, dtype=dtype
    )
    for k, flip in ELEMENTS:
        transform = v2.Compose([v2.RandomHorizontalFlip(p=float(flip)), FixedRot90(k)])
        dataset = CachedTeacherDataset(chip_dataset(images, transform), cache)
        for index in (0, 4, len(dataset) - 1):  # inside, at the edge, the padded small chip
            sample = dataset[index]
            image, mask = window_of(dataset, index, arrays)
            expected_image = dihedral(image, k, flip)
            torch.testing.assert_close(sample["image"], expected_image, equal_nan=True)
            assert torch.equal(sample["mask"], dihedral(mask, k, flip))
            expected = [dihedral(m, k, flip) for m in teacher_maps(teacher, image)]
            assert_maps_close(sample_maps(sample), expected, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_random_augmentation_targets_equal_augmented_teacher_outputs(tmp_path, chips, dtype):
    """(a) For any teacher: the targets are the sample's own flip/rotation applied to the
    teacher's outputs for the un-augmented window (the element is identified from the image)."""
    images, arrays = chips
    teacher = make_teacher(StridedNetwork())
    cache = TeacherCache.build(
        tmp_path / "cache", teacher, chip_dataset(images), WINDOW, dtype=dtype
    )
    dataset = CachedTeacherDataset(chip_dataset(images, train_transforms(False)), cache)
    torch.manual_seed(0)
    seen = set()
    for index in range(len(dataset)):
        sample = dataset[index]
        image, _ = window_of(dataset, index, arrays)
        matches = [
            (k, flip)
            for k, flip in ELEMENTS
            if torch.equal(sample["image"].nan_to_num(-9), dihedral(image, k, flip).nan_to_num(-9))
        ]
        assert len(matches) == 1
        (k, flip), seen = matches[0], seen | set(matches)
        expected = [dihedral(m, k, flip) for m in teacher_maps(teacher, image)]
        assert_maps_close(sample_maps(sample), expected, dtype)
    assert len(seen) >= 5  # 16 draws from 8 elements


def test_pointwise_teacher_targets_equal_teacher_of_the_sample_image(tmp_path, chips):
    """(b) For an equivariant teacher the cached targets are what the teacher says about the very
    (augmented) image in the sample; photometric jitter changes the image, not the targets."""
    images, _ = chips
    teacher = make_teacher(PointwiseNetwork())
    cache = TeacherCache.build(
        tmp_path / "c", teacher, chip_dataset(images), WINDOW, dtype="float32"
    )
    geometric = CachedTeacherDataset(chip_dataset(images, train_transforms(False)), cache)
    jittered = CachedTeacherDataset(chip_dataset(images, train_transforms(True)), cache)
    changed = 0
    for index in range(len(geometric)):
        torch.manual_seed(index)
        sample = geometric[index]
        assert_maps_close(sample_maps(sample), teacher_maps(teacher, sample["image"]), "float32")
        torch.manual_seed(index)  # the same geometric draws, then jitter
        other = jittered[index]
        assert torch.equal(other["mask"], sample["mask"])
        for a, b in zip(sample_maps(other), sample_maps(sample), strict=True):
            assert torch.equal(a, b)
        changed += not torch.equal(other["image"].nan_to_num(), sample["image"].nan_to_num())
    assert changed >= len(geometric) // 2


# ------------------------------------------------------------------------------------ storage


def test_arrays_are_memory_maps_on_disk_and_load_in_workers(tmp_path, chips):
    images, _ = chips
    folder = tmp_path / "cache"
    teacher = make_teacher(PointwiseNetwork())
    dataset = chip_dataset(images, train_transforms(True))
    cache = TeacherCache.build(folder, teacher, dataset, WINDOW)
    count = len(cache)
    assert sorted(p.name for p in folder.iterdir()) == [
        "features_0.npy",
        "features_1.npy",
        "logits.npy",
        "meta.json",
    ]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    shapes = {
        "features_0": (count, 5, 16, 16),
        "features_1": (count, 4, 8, 8),
        "logits": (count, 2, 16, 16),
    }
    for name, shape in shapes.items():
        on_disk = np.load(folder / f"{name}.npy", mmap_mode="r")
        assert on_disk.shape == shape and on_disk.dtype == np.float16
    targets = cache.targets(3)
    for array in [*targets["features"], targets["logits"]]:
        assert isinstance(array, np.memmap)
        assert Path(array.filename).parent == folder
    assert cache.meta["data"]["size"] == WINDOW and cache.levels == ["full", "half"]

    cached = CachedTeacherDataset(dataset, cache)
    revived = pickle.loads(pickle.dumps(cached))
    assert revived.cache._arrays is None  # no open maps (and no array bytes) in the pickle
    assert len(pickle.dumps(cached)) < sum(p.stat().st_size for p in cache.files()) / 4
    torch.manual_seed(0)
    expected = cached[2]
    torch.manual_seed(0)
    for a, b in zip(sample_maps(revived[2]), sample_maps(expected), strict=True):
        assert torch.equal(a, b)

    for workers in (0, 1):
        loader = DataLoader(
            cached,
            batch_size=4,
            shuffle=True,
            num_workers=workers,
            collate_fn=partial(pad_collate, multiple=WINDOW),
        )
        batches = list(loader)
        assert sum(len(b["index"]) for b in batches) == count
        batch = batches[0]
        assert batch["image"].shape == (4, 3, WINDOW, WINDOW)
        assert [f.shape for f in batch["teacher"]["features"]] == [(4, 5, 16, 16), (4, 4, 8, 8)]
        assert batch["teacher"]["logits"].shape == (4, 2, 16, 16)
        assert all(f.dtype == torch.float32 for f in batch["teacher"]["features"])


def test_teacher_without_logits_collates_none(tmp_path, chips):
    images, _ = chips
    teacher = make_teacher(PointwiseNetwork(logits=False))
    cache = TeacherCache.build(tmp_path / "cache", teacher, chip_dataset(images), WINDOW)
    assert not (tmp_path / "cache" / "logits.npy").exists() and not cache.has_logits
    dataset = CachedTeacherDataset(chip_dataset(images), cache)
    batch = pad_collate([dataset[0], dataset[1]], multiple=WINDOW)
    assert batch["teacher"]["logits"] is None
    assert [f.shape[:2] for f in batch["teacher"]["features"]] == [(2, 5), (2, 4)]


def test_float16_overflow_is_refused_with_a_hint(tmp_path, chips):
    images, _ = chips
    network = PointwiseNetwork()
    with torch.no_grad():
        network.a.bias.fill_(1e6)  # tanh saturates; the head's logits stay finite
        network.head.bias.fill_(1e6)
    with pytest.raises(GeodistillError, match="dtype='float32'"):
        TeacherCache.build(tmp_path / "cache", make_teacher(network), chip_dataset(images), WINDOW)
    assert not (tmp_path / "cache").exists()


# ------------------------------------------------------------------------------------ fingerprints


def mtimes(cache_folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in cache_folder.iterdir()}


def test_unchanged_teacher_and_data_reuse_the_cache(tmp_path, chips):
    images, _ = chips
    folder, weights = tmp_path / "cache", tmp_path / "teacher.pt"
    first = ensure_teacher_cache(
        folder, make_teacher(PointwiseNetwork(), weights), chip_dataset(images), WINDOW
    )
    before = mtimes(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GeodistillWarning)
        again = ensure_teacher_cache(  # new objects, same weights file and data
            folder, make_teacher(PointwiseNetwork(), weights), chip_dataset(images), WINDOW
        )
    assert mtimes(folder) == before
    assert again.fingerprint == first.fingerprint


@pytest.mark.parametrize("backed", [True, False], ids=["weights-file", "in-code"])
def test_changed_teacher_weights_rebuild_or_refuse(tmp_path, chips, backed):
    images, _ = chips
    folder, weights = tmp_path / "cache", tmp_path / "teacher.pt"
    ensure_teacher_cache(
        folder,
        make_teacher(PointwiseNetwork(0), weights if backed else None),
        chip_dataset(images),
        WINDOW,
    )
    before = mtimes(folder)
    changed = make_teacher(PointwiseNetwork(1), weights if backed else None)
    with pytest.raises(GeodistillError, match="cache was built for another teacher") as error:
        ensure_teacher_cache(folder, changed, chip_dataset(images), WINDOW, on_mismatch="refuse")
    assert error.value.path == str(folder)
    assert mtimes(folder) == before

    with pytest.warns(GeodistillWarning, match="another teacher"):
        rebuilt = ensure_teacher_cache(
            folder, changed, chip_dataset(images), WINDOW, dtype="float32"
        )
    assert rebuilt.fingerprint.teacher == changed.fingerprint()
    sample = CachedTeacherDataset(chip_dataset(images), rebuilt)[0]
    assert_maps_close(sample_maps(sample), teacher_maps(changed, sample["image"]), "float32")


def modify_first_image(images: list[str]) -> None:
    arrays = chip_arrays(seed=1)
    write_chips(Path(images[0]).parents[1], {"a": arrays["a"]})
    stat = os.stat(images[0])
    os.utime(images[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # coarse clocks


@pytest.mark.parametrize("change", ["file-list", "modified-image"])
def test_changed_data_rebuild_or_refuse(tmp_path, chips, change):
    images, _ = chips
    folder = tmp_path / "cache"
    teacher = make_teacher(PointwiseNetwork())
    ensure_teacher_cache(folder, teacher, chip_dataset(images), WINDOW)
    before = mtimes(folder)
    if change == "file-list":
        images, detail = images[:2], r"1 image\(s\) no longer listed \(c.tif\)"
    else:
        modify_first_image(images)
        detail = r"1 image\(s\) modified \(a.tif\)"
    with pytest.raises(GeodistillError, match=f"cache was built for other data: {detail}") as error:
        ensure_teacher_cache(folder, teacher, chip_dataset(images), WINDOW, on_mismatch="refuse")
    assert error.value.path == str(folder) and mtimes(folder) == before
    with pytest.raises(GeodistillError, match="other data"):  # nor can the stale cache be used
        CachedTeacherDataset(chip_dataset(images), TeacherCache.open(folder))

    with pytest.warns(GeodistillWarning, match=f"other data: {detail}"):
        rebuilt = ensure_teacher_cache(folder, teacher, chip_dataset(images), WINDOW)
    assert len(rebuilt) == len(cache_windows(chip_dataset(images), WINDOW))
    dataset = CachedTeacherDataset(chip_dataset(images), rebuilt)
    sample = dataset[0]
    assert_maps_close(sample_maps(sample), teacher_maps(teacher, sample["image"]), "float16")


def test_another_dtype_is_rebuilt(tmp_path, chips):
    images, _ = chips
    teacher = make_teacher(PointwiseNetwork())
    ensure_teacher_cache(tmp_path / "cache", teacher, chip_dataset(images), WINDOW)
    with pytest.warns(GeodistillWarning, match="another dtype: float16 outputs, float32 asked"):
        cache = ensure_teacher_cache(
            tmp_path / "cache", teacher, chip_dataset(images), WINDOW, dtype="float32"
        )
    assert cache.dtype == "float32" and cache.targets(0)["features"][0].dtype == np.float32


# ------------------------------------------------------------------------------------ failures


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_a_build_failing_midway_leaves_no_cache(tmp_path, chips):
    images, _ = chips
    teacher = make_teacher(FailingNetwork())
    with pytest.raises(RuntimeError, match="batch 2"):
        TeacherCache.build(tmp_path / "cache", teacher, chip_dataset(images), WINDOW, batch_size=4)
    assert not (tmp_path / "cache").exists() and leftovers(tmp_path) == []


def test_a_rebuild_failing_midway_keeps_the_old_cache(tmp_path, chips):
    images, _ = chips
    folder = tmp_path / "cache"
    old = ensure_teacher_cache(
        folder, make_teacher(PointwiseNetwork()), chip_dataset(images), WINDOW
    )
    before = mtimes(folder)
    failing = make_teacher(FailingNetwork(), kind="failing")
    with pytest.warns(GeodistillWarning, match="another teacher"), pytest.raises(RuntimeError):
        ensure_teacher_cache(folder, failing, chip_dataset(images), WINDOW, batch_size=4)
    assert mtimes(folder) == before and leftovers(tmp_path) == []
    assert TeacherCache.open(folder).fingerprint == old.fingerprint


def test_damaged_metadata_is_an_error_or_a_rebuild(tmp_path, chips):
    images, _ = chips
    folder = tmp_path / "cache"
    teacher = make_teacher(PointwiseNetwork())
    ensure_teacher_cache(folder, teacher, chip_dataset(images), WINDOW)
    (folder / "meta.json").write_text('{"format": "geodistill-teacher-ca')
    with pytest.raises(GeodistillError, match="unreadable teacher cache metadata") as error:
        TeacherCache.open(folder)
    assert error.value.path == str(folder / "meta.json")
    with pytest.raises(GeodistillError, match="unreadable") as error:
        ensure_teacher_cache(folder, teacher, chip_dataset(images), WINDOW, on_mismatch="refuse")
    assert error.value.path == str(folder / "meta.json")
    with pytest.warns(GeodistillWarning, match="damaged teacher cache"):
        ensure_teacher_cache(folder, teacher, chip_dataset(images), WINDOW)
    assert TeacherCache.open(folder).fingerprint.teacher == teacher.fingerprint()

    np.save(folder / "features_1.npy", np.zeros((2, 2), np.float16))  # a truncated array
    with pytest.raises(GeodistillError, match="the cache is damaged") as error:
        TeacherCache.open(folder)
    assert error.value.path == str(folder / "features_1.npy")


def test_a_folder_that_is_not_a_cache_is_never_replaced(tmp_path, chips):
    images, _ = chips
    folder = tmp_path / "results"
    (folder / "keep.txt").parent.mkdir()
    (folder / "keep.txt").write_text("mine")
    with pytest.raises(GeodistillError, match="not a teacher cache") as error:
        ensure_teacher_cache(folder, make_teacher(PointwiseNetwork()), chip_dataset(images), WINDOW)
    assert error.value.path == str(folder) and (folder / "keep.txt").read_text() == "mine"


# ------------------------------------------------------------------------------------ data module


def test_attach_to_a_data_module_with_one_or_two_domains(tmp_path):
    fine = make_dataset(tmp_path / "fine", n=3, size=40, seed=0)
    coarse = make_dataset(tmp_path / "coarse", n=2, size=40, seed=1)

    def domain(root: Path, val_fraction: float) -> Domain:
        source = Source(str(root / "images"), str(root / "labels"))
        return Domain(train=source, val_fraction=val_fraction)

    teacher = make_teacher(PointwiseNetwork(in_channels=4))
    per_chip = 4  # 40 px: window origins 0 and 8 in each direction
    for train_on, chips in (("fine", 2), ("coarse+fine", 4)):
        dm = GeoSegDataModule(
            CLASSES,
            fine=domain(fine, 0.34),
            coarse=domain(coarse, 0.0),
            train_on=train_on,  # type: ignore[arg-type]
            patch_size=32,
            batch_size=3,
            photometric=False,  # flips and rotations only: the pointwise teacher commutes
        )
        dm.setup("fit")
        raw = dm.datasets["train"]
        cache = attach_teacher_cache(dm, teacher, tmp_path / f"cache-{train_on}", dtype="float32")
        train = dm.served("train")
        assert isinstance(train, CachedTeacherDataset) and len(train) == chips * per_chip == len(
            cache
        )
        assert dm.datasets["train"] is raw and train.dataset is raw  # the raw set stays
        batch = next(iter(dm.train_dataloader()))
        assert batch["image"].shape == (3, 4, 32, 32)
        assert [f.shape for f in batch["teacher"]["features"]] == [(3, 5, 32, 32), (3, 4, 16, 16)]
        assert batch["teacher"]["logits"].shape == (3, 2, 32, 32)
        for sample in (train[0], train[len(train) - 1]):  # first and last chip dataset
            assert_maps_close(
                sample_maps(sample), teacher_maps(teacher, sample["image"]), "float32"
            )
        before = mtimes(tmp_path / f"cache-{train_on}")
        attach_teacher_cache(dm, teacher, tmp_path / f"cache-{train_on}", dtype="float32")
        again = dm.served("train")
        assert again is not train and again.dataset is train.dataset  # wraps the chips again
        assert mtimes(tmp_path / f"cache-{train_on}") == before
    assert isinstance(dm.served("train").dataset, ConcatDataset)


def test_attach_needs_setup_and_warns_on_unaligned_patch_size(tmp_path):
    root = make_dataset(tmp_path / "data", n=2, size=24)
    dm = GeoSegDataModule(
        CLASSES,
        fine=Domain(train=Source(str(root / "images"), str(root / "labels")), val_fraction=0.5),
        patch_size=16,
    )
    teacher = make_teacher(PointwiseNetwork(in_channels=4))
    with pytest.raises(GeodistillError, match=r"setup\('fit'\)"):
        attach_teacher_cache(dm, teacher, tmp_path / "cache")
    dm.setup("fit")
    with pytest.warns(GeodistillWarning, match="not a multiple of 32"):
        attach_teacher_cache(dm, teacher, tmp_path / "cache")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_build_on_another_device_returns_the_teacher_where_it_was(tmp_path, chips):
    images, _ = chips
    teacher = make_teacher(PointwiseNetwork())
    cache = TeacherCache.build(
        tmp_path / "cache", teacher, chip_dataset(images), WINDOW, device="cuda", dtype="float32"
    )
    assert teacher.band_indices.device.type == "cpu"
    sample = CachedTeacherDataset(chip_dataset(images), cache)[0]
    expected = teacher_maps(teacher, sample["image"])
    for a, e in zip(sample_maps(sample), expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)  # TF32 convolutions on the GPU
