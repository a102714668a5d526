"""Teacher outputs computed once and memory-mapped from disk, so distillation from a frozen
teacher costs little more than plain training.

With a cache the training set is a fixed grid of ``size × size`` windows over every chip (the last
window flush with the chip edge, as :func:`~geodistill.data.tiling.tile_origins` tiles a
scene; chips smaller than a window are padded with nodata/ignore). The teacher sees each window
once, at build time. Each epoch shuffles the windows, and the geometric augmentations (flips, 90°
rotations) move image, mask and every cached map (each at its own resolution) together, with the
same random draws; photometric ones touch only the image. Because the teacher never sees an
augmented image, its targets are exactly the augmented outputs for the un-augmented window.

A cache folder holds ``meta.json`` (format version, teacher and data fingerprints, the window
list as ``[chip, row, col]``, dtype, levels and array shapes) and one ``(windows, C, h, w)``
``.npy`` per feature level (``features_<j>.npy``) plus ``logits.npy`` when the teacher has logits.
It is built in a temporary sibling folder and renamed into place when complete, so a failed build
leaves nothing, or the previous cache, behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
import torch
from numpy.lib.format import open_memmap
from rasterio.windows import Window
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset
from tqdm import tqdm

from geodistill.atomic import make_temp_dir
from geodistill.data.datasets import ChipDataset
from geodistill.data.tiling import tile_origins
from geodistill.data.transforms import apply_transform
from geodistill.errors import GeodistillError, GeodistillWarning

if TYPE_CHECKING:
    from geodistill.data.datamodule import GeoSegDataModule
    from geodistill.models.teachers.base import Teacher

FORMAT = "geodistill-teacher-cache"
VERSION = 1
META = "meta.json"
DTYPES = ("float16", "float32")
CacheDtype = Literal["float16", "float32"]
OnMismatch = Literal["rebuild", "refuse"]


class CacheFingerprint(NamedTuple):
    """What a cache was built from: the teacher's and the data's fingerprints."""

    teacher: str
    data: str


# ------------------------------------------------------------------------------- what is cached


def chip_datasets(dataset: Dataset) -> list[ChipDataset]:
    """The chip datasets behind a training set: one, or the parts of a ``ConcatDataset``."""
    if isinstance(dataset, ChipDataset):
        return [dataset]
    if isinstance(dataset, ConcatDataset):
        return [part for inner in dataset.datasets for part in chip_datasets(inner)]
    raise GeodistillError(f"the teacher cache needs chip datasets, got a {type(dataset).__name__}")


def _chips(dataset: Dataset) -> list[tuple[ChipDataset, int]]:
    """(part, chip index within it) for every chip, in order: the cache's chip numbering."""
    return [(part, i) for part in chip_datasets(dataset) for i in range(len(part.images))]


def cache_windows(dataset: ChipDataset | ConcatDataset, size: int) -> list[tuple[int, Window]]:
    """The fixed ``size × size`` windows covering every chip: ``(chip, window)`` pairs.

    Chips are numbered across the parts of a ``ConcatDataset``. Windows do not overlap except the
    last of a row or column, which is flush with the chip edge; a chip smaller than ``size`` gets
    one window at its origin, read padded.
    """
    if size < 1:
        raise GeodistillError(f"the cache window size must be positive, got {size}")
    windows = []
    for chip, (part, i) in enumerate(_chips(dataset)):
        info = part.infos[i]
        for row in tile_origins(info.height, size, size):
            for col in tile_origins(info.width, size, size):
                windows.append((chip, Window(col, row, size, size)))
    return windows


def data_description(dataset: ChipDataset | ConcatDataset, size: int) -> dict[str, Any]:
    """What the cached teacher inputs depend on, with its fingerprint: the image files (path,
    size, modification time), the band selection, the window size and the windows."""
    parts = chip_datasets(dataset)
    images = []
    for part in parts:
        for path in part.images:
            stat = os.stat(path)
            images.append([os.path.abspath(path), stat.st_size, stat.st_mtime_ns])
    described: dict[str, Any] = {
        "images": images,
        "bands": [None if p.bands is None else list(p.bands) for p in parts],
        "size": size,
        "windows": [
            [chip, int(w.row_off), int(w.col_off)] for chip, w in cache_windows(dataset, size)
        ],
    }
    return {"fingerprint": _digest(described), **described}


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------- the cache


@dataclass
class _ArrayEntry:
    file: str
    shape: tuple[int, ...]


class TeacherCache:
    """Memory-mapped teacher outputs of fixed windows; see the module docstring.

    Arrays are opened lazily: a cache pickled into a DataLoader worker carries only its folder and
    metadata and maps the files again there.
    """

    def __init__(self, folder: str | Path, meta: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.meta = meta
        arrays = meta["arrays"]
        self._entries = [_ArrayEntry(a["file"], tuple(a["shape"])) for a in arrays["features"]]
        logits = arrays["logits"]
        self._logits = (
            None if logits is None else _ArrayEntry(logits["file"], tuple(logits["shape"]))
        )
        self._arrays: list[np.ndarray] | None = None

    # -- metadata ---------------------------------------------------------------------------

    @property
    def fingerprint(self) -> CacheFingerprint:
        return CacheFingerprint(
            self.meta["teacher"]["fingerprint"], self.meta["data"]["fingerprint"]
        )

    @property
    def size(self) -> int:
        return int(self.meta["data"]["size"])

    @property
    def dtype(self) -> str:
        return str(self.meta["dtype"])

    @property
    def levels(self) -> list[str]:
        return list(self.meta["teacher"]["levels"])

    @property
    def windows(self) -> list[tuple[int, Window]]:
        size = self.size
        return [(c, Window(col, row, size, size)) for c, row, col in self.meta["data"]["windows"]]

    @property
    def has_logits(self) -> bool:
        return self._logits is not None

    def __len__(self) -> int:
        return len(self.meta["data"]["windows"])

    def files(self) -> list[Path]:
        """The ``.npy`` files, feature levels first, then the logits."""
        entries = [*self._entries, *([self._logits] if self._logits else [])]
        return [self.folder / entry.file for entry in entries]

    # -- reading ------------------------------------------------------------------------------

    @classmethod
    def open(cls, folder: str | Path) -> TeacherCache:
        """Open a built cache, checking its metadata and every array's shape and dtype."""
        folder = Path(folder)
        meta = _read_meta(folder)
        try:
            cache = cls(folder, meta)
        except (KeyError, TypeError, ValueError) as error:
            raise GeodistillError(
                f"malformed array list in teacher cache metadata ({error!r})", folder / META
            ) from error
        cache._load()
        return cache

    def _load(self) -> list[np.ndarray]:
        entries = [*self._entries, *([self._logits] if self._logits else [])]
        arrays = []
        for entry in entries:
            path = self.folder / entry.file
            try:
                array = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as error:
                raise GeodistillError(
                    f"cannot read the cached teacher outputs ({error.__class__.__name__}: {error})",
                    path,
                ) from error
            if array.shape != entry.shape or array.dtype != np.dtype(self.dtype):
                raise GeodistillError(
                    f"holds {array.dtype} {array.shape} where {META} says "
                    f"{self.dtype} {entry.shape}: the cache is damaged",
                    path,
                )
            arrays.append(array)
        self._arrays = arrays
        return arrays

    def targets(self, k: int) -> dict[str, Any]:
        """Window ``k``'s teacher outputs as memory-mapped views: ``{"features": [(C, h, w)],
        "logits": (K, H', W') or None}``."""
        arrays = self._arrays if self._arrays is not None else self._load()
        count = len(self._entries)
        return {
            "features": [array[k] for array in arrays[:count]],
            "logits": arrays[count][k] if self._logits is not None else None,
        }

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": None}  # never pickle open memory maps

    # -- building -----------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        folder: str | Path,
        teacher: Teacher,
        dataset: ChipDataset | ConcatDataset,
        size: int,
        batch_size: int = 8,
        device: str | torch.device | None = None,
        dtype: CacheDtype = "float16",
    ) -> TeacherCache:
        """Run ``teacher`` once over every window of ``dataset`` and store its outputs in
        ``folder`` (replacing any cache there only once the new one is complete).

        The teacher runs on ``device`` (default: where it is), ``batch_size`` windows at a time.
        """
        folder = Path(folder)
        if dtype not in DTYPES:
            raise GeodistillError(f"teacher cache dtype must be one of {DTYPES}, got {dtype!r}")
        if batch_size < 1:
            raise GeodistillError(f"teacher cache batch_size must be positive, got {batch_size}")
        _check_replaceable(folder)
        data = data_description(dataset, size)
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = make_temp_dir(folder, ".building")
        try:
            arrays = _write_outputs(staging, teacher, dataset, size, batch_size, device, dtype)
            meta = {
                "format": FORMAT,
                "version": VERSION,
                "teacher": {
                    "fingerprint": teacher.fingerprint(),
                    "kind": teacher.spec.kind,
                    "path": teacher.spec.path,
                    "levels": teacher.levels,
                    "class_names": teacher.class_names,
                },
                "data": data,
                "dtype": dtype,
                "arrays": arrays,
            }
            (staging / META).write_text(json.dumps(meta))
            _replace_folder(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return cls.open(folder)


def _read_meta(folder: Path) -> dict[str, Any]:
    path = folder / META
    if not path.is_file():
        raise GeodistillError(f"not a teacher cache ({META} missing)", folder)
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise GeodistillError(
            f"unreadable teacher cache metadata ({error.__class__.__name__}: {error})", path
        ) from error
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise GeodistillError("not a geodistill teacher cache's metadata", path)
    if meta.get("version") != VERSION:
        raise GeodistillError(
            f"teacher cache format version {meta.get('version')}, this geodistill reads {VERSION}",
            path,
        )
    missing = [key for key in REQUIRED_META if not _has_key(meta, key)]
    if missing:
        raise GeodistillError(
            f"incomplete teacher cache metadata ({', '.join(missing)} missing)", path
        )
    return meta


REQUIRED_META = (
    "teacher.fingerprint",
    "teacher.levels",
    "data.fingerprint",
    "data.size",
    "data.windows",
    "arrays.features",
    "arrays.logits",
    "dtype",
)


def _has_key(meta: dict[str, Any], dotted: str) -> bool:
    node: Any = meta
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def _write_outputs(
    folder: Path,
    teacher: Teacher,
    dataset: ChipDataset | ConcatDataset,
    size: int,
    batch_size: int,
    device: str | torch.device | None,
    dtype: str,
) -> dict[str, Any]:
    """Run the teacher over all windows into ``.npy`` memory maps; return their descriptions."""
    chips = _chips(dataset)
    windows = cache_windows(dataset, size)
    home = teacher.band_indices.device
    target = torch.device(device) if device is not None else home
    teacher.to(target)
    maps: list[np.ndarray] = []
    described: dict[str, Any] = {}
    try:
        interactive = sys.stderr is not None and sys.stderr.isatty()
        bar = tqdm(total=len(windows), desc="teacher cache", unit="window", disable=not interactive)
        with bar, torch.no_grad():
            for start in range(0, len(windows), batch_size):
                batch = windows[start : start + batch_size]
                images = np.stack([chips[c][0].read_window(chips[c][1], w)[0] for c, w in batch])
                output = teacher(torch.from_numpy(images).to(target))
                outputs = [*output.features, *([] if output.logits is None else [output.logits])]
                if not maps:
                    described = _describe_arrays(teacher, output, len(windows))
                    entries = [*described["features"], *filter(None, [described["logits"]])]
                    maps = [
                        open_memmap(folder / e["file"], "w+", dtype, tuple(e["shape"]))
                        for e in entries
                    ]
                if len(outputs) != len(maps):
                    raise GeodistillError(
                        f"the teacher returned {len(outputs)} maps, earlier {len(maps)}"
                    )
                for array, tensor in zip(maps, outputs, strict=True):
                    array[start : start + len(batch)] = _to_numpy(tensor, array, len(batch))
                bar.update(len(batch))
        for array in maps:
            array.flush()
    finally:
        teacher.to(home)
        del maps
    return described


def _describe_arrays(teacher: Teacher, output: Any, count: int) -> dict[str, Any]:
    if len(output.features) != len(teacher.levels):
        raise GeodistillError(
            f"the teacher returned {len(output.features)} feature maps for "
            f"{len(teacher.levels)} levels ({', '.join(teacher.levels)})"
        )
    features = [
        {"level": level, "file": f"features_{j}.npy", "shape": [count, *f.shape[1:]]}
        for j, (level, f) in enumerate(zip(teacher.levels, output.features, strict=True))
    ]
    logits = output.logits
    return {
        "features": features,
        "logits": None
        if logits is None
        else {"file": "logits.npy", "shape": [count, *logits.shape[1:]]},
    }


def _to_numpy(tensor: Tensor, array: np.ndarray, count: int) -> np.ndarray:
    values = tensor.detach().float().cpu().numpy()
    if values.shape != (count, *array.shape[1:]):
        raise GeodistillError(
            f"the teacher returned a map of shape {values.shape}, expected "
            f"{(count, *array.shape[1:])}"
        )
    converted = values.astype(array.dtype)
    overflow = np.isinf(converted) & np.isfinite(values)
    if overflow.any():
        raise GeodistillError(
            f"teacher outputs reach {np.abs(values[overflow]).max():.4g}, beyond {array.dtype}'s "
            "range: build the cache with dtype='float32'"
        )
    return converted


def _check_replaceable(folder: Path) -> None:
    """Refuse to replace a path that is not a teacher cache: it may hold the user's files."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise GeodistillError("exists and is not a folder: cannot hold a teacher cache", folder)
    meta = folder / META
    if not meta.is_file():
        if any(folder.iterdir()):
            raise GeodistillError(
                f"is not a teacher cache ({META} missing) and not empty: refusing to replace it",
                folder,
            )
        return
    try:
        format_ = json.loads(meta.read_text()).get("format", FORMAT)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return  # a damaged cache
    if format_ != FORMAT:
        raise GeodistillError("is not a teacher cache's metadata: refusing to replace it", meta)


def _replace_folder(staging: Path, folder: Path) -> None:
    """Put the complete ``staging`` folder at ``folder``; the old one goes only afterwards."""
    if not folder.exists():
        os.replace(staging, folder)
        return
    old = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(folder, old)
    try:
        os.replace(staging, folder)
    except BaseException:
        os.replace(old, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------- reuse or rebuild


def _mismatch(cache: TeacherCache, teacher: str, data: dict[str, Any], dtype: str) -> str | None:
    """Why ``cache`` does not serve this teacher, data and dtype, or ``None`` when it does."""
    subjects, details = [], []
    if cache.fingerprint.teacher != teacher:
        built = cache.meta["teacher"]
        was = built.get("path") or built.get("kind", "?")
        subjects.append("another teacher")
        details.append(f"teacher {was} (fingerprint {cache.fingerprint.teacher}), now {teacher}")
    if cache.fingerprint.data != data["fingerprint"]:
        subjects.append("other data")
        details.append(_data_change(cache.meta["data"], data))
    if cache.dtype != dtype:
        subjects.append("another dtype")
        details.append(f"{cache.dtype} outputs, {dtype} asked")
    if not subjects:
        return None
    return f"cache was built for {' and '.join(subjects)}: {'; '.join(details)}"


def _data_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    before = {path: (size, mtime) for path, size, mtime in old.get("images", [])}
    after = {path: (size, mtime) for path, size, mtime in new["images"]}
    changes = []
    added = [p for p in after if p not in before]
    removed = [p for p in before if p not in after]
    modified = [p for p in after if p in before and before[p] != after[p]]
    for count, what in ((removed, "no longer listed"), (added, "added"), (modified, "modified")):
        if count:
            changes.append(f"{len(count)} image(s) {what} ({_names(count)})")
    if not changes and list(before) != list(after):
        changes.append("the images are listed in another order")
    if old.get("bands") != new["bands"]:
        changes.append(f"bands {old.get('bands')} → {new['bands']}")
    if old.get("size") != new["size"]:
        changes.append(f"window size {old.get('size')} → {new['size']}")
    return ", ".join(changes) or "other windows"


def _names(paths: list[str], shown: int = 3) -> str:
    names = [Path(p).name for p in paths[:shown]]
    return ", ".join(names) + (", ..." if len(paths) > shown else "")


def ensure_teacher_cache(
    folder: str | Path,
    teacher: Teacher,
    dataset: ChipDataset | ConcatDataset,
    size: int,
    on_mismatch: OnMismatch = "rebuild",
    **build_args: Any,
) -> TeacherCache:
    """The cache in ``folder`` when it was built for this teacher and data, else a new one.

    A cache built for another teacher, other data or another dtype is rebuilt with a
    :class:`GeodistillWarning` saying what changed, or, with ``on_mismatch="refuse"`` (for caches
    too costly to rebuild by accident), refused with a :class:`GeodistillError`. So is a damaged
    cache. ``build_args`` go to :meth:`TeacherCache.build`.
    """
    if on_mismatch not in ("rebuild", "refuse"):
        raise GeodistillError(f"on_mismatch must be 'rebuild' or 'refuse', got {on_mismatch!r}")
    folder = Path(folder)
    if (folder / META).exists():
        data = data_description(dataset, size)
        dtype = build_args.get("dtype", "float16")
        try:
            cache = TeacherCache.open(folder)
        except GeodistillError as error:
            if on_mismatch == "refuse" or not _is_replaceable(folder):
                raise
            problem = f"damaged teacher cache ({error})"
        else:
            problem = _mismatch(cache, teacher.fingerprint(), data, dtype)
            if problem is None:
                return cache
            if on_mismatch == "refuse":
                raise GeodistillError(problem, folder)
            problem = f"{folder}: {problem}"
        warnings.warn(f"{problem}; rebuilding it", GeodistillWarning, stacklevel=2)
    return TeacherCache.build(folder, teacher, dataset, size, **build_args)


def _is_replaceable(folder: Path) -> bool:
    try:
        _check_replaceable(folder)
    except GeodistillError:
        return False
    return True


# ------------------------------------------------------------------------------- training data


class CachedTeacherDataset(Dataset):
    """A chip dataset as a fixed grid of windows, each with its cached teacher targets.

    A sample is the chip dataset's ``{"image", "mask", "index"}`` for one cache window plus
    ``"teacher": {"features": [float32 (C, h, w)], "logits": float32 (K, H', W') or None}``, all
    through the chip dataset's transform with the same random draws (see the module docstring).
    """

    def __init__(self, dataset: ChipDataset | ConcatDataset, cache: TeacherCache) -> None:
        data = data_description(dataset, cache.size)
        if data["fingerprint"] != cache.fingerprint.data:
            raise GeodistillError(
                f"cache was built for other data: {_data_change(cache.meta['data'], data)}",
                cache.folder,
            )
        self.dataset = dataset
        self.cache = cache
        self.chips = _chips(dataset)
        self.windows = cache.windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, k: int) -> dict[str, Any]:
        chip, window = self.windows[k]
        part, i = self.chips[chip]
        image, mask = part.read_window(i, window)
        image_t, mask_t, *moved = apply_transform(
            part.transform, torch.from_numpy(image), torch.from_numpy(mask), *self.target_maps(k)
        )
        return {"image": image_t, "mask": mask_t, "index": i, "teacher": self.teacher_entry(moved)}

    def target_maps(self, k: int) -> list[Tensor]:
        """Window ``k``'s cached maps, moved with image and mask by the augmentation."""
        targets = self.cache.targets(k)
        maps = [_tensor(f) for f in targets["features"]]
        if targets["logits"] is not None:
            maps.append(_tensor(targets["logits"]))
        return maps

    def teacher_entry(self, moved: list[Tensor]) -> dict[str, Any]:
        """The batch's ``"teacher"`` entry from the moved maps of :meth:`target_maps`."""
        count = len(self.cache.levels)
        logits = moved[count] if self.cache.has_logits else None
        return {"features": moved[:count], "logits": logits}


def _tensor(array: np.ndarray) -> Tensor:
    return torch.from_numpy(np.array(array, dtype=np.float32))  # a float32 copy off the map


def warn_if_unaligned(size: int) -> None:
    """Warn when cached windows of ``size`` will be padded by the collate (to multiples of 32)."""
    if size % 32:
        warnings.warn(
            f"data.patch_size={size} is not a multiple of 32: training batches are padded beyond "
            "the windows the teacher saw, so student and teacher maps do not line up at the "
            "padded edges",
            GeodistillWarning,
            stacklevel=3,
        )


def attach_teacher_cache(
    datamodule: GeoSegDataModule,
    teacher: Teacher,
    folder: str | Path,
    on_mismatch: OnMismatch = "rebuild",
    dtype: CacheDtype = "float16",
    device: str | torch.device | None = None,
    batch_size: int = 8,
) -> TeacherCache:
    """Train ``datamodule`` on cached teacher targets: after its ``setup("fit")``, serve its
    training set as the windows of ``datamodule.patch_size`` of :func:`ensure_teacher_cache`.

    Training batches then carry ``"teacher"``: ``{"features": [(B, C, h, w)], "logits":
    (B, K, H', W') or None}``. The grid replaces random crops, so an epoch has one sample per
    window whatever ``crops_per_image`` says.
    """
    train = datamodule.training_set("train")
    size = datamodule.patch_size
    warn_if_unaligned(size)
    cache = ensure_teacher_cache(
        folder,
        teacher,
        train,  # type: ignore[arg-type]
        size,
        on_mismatch,
        dtype=dtype,
        device=device,
        batch_size=batch_size,
    )
    datamodule.serve("train", CachedTeacherDataset(train, cache))  # type: ignore[arg-type]
    return cache


class CachedTeachersDataset(CachedTeacherDataset):
    """A chip dataset as the fixed window grid of several teachers' caches (one per teacher,
    built over the same dataset and window size); each sample carries every teacher's last
    feature level under ``"teacher": {"features": [(C_k, h_k, w_k) per teacher], "logits":
    None}``, moved by the same geometric augmentation as image and mask."""

    def __init__(self, dataset: Dataset, caches: list[TeacherCache]) -> None:
        super().__init__(dataset, caches[0])  # type: ignore[arg-type] # checks the data fingerprint
        for cache in caches[1:]:
            if cache.fingerprint.data != caches[0].fingerprint.data:
                raise GeodistillError("the teacher caches were built over other windows")
        self.caches = caches

    def target_maps(self, k: int) -> list[Tensor]:
        return [_tensor(cache.targets(k)["features"][-1]) for cache in self.caches]

    def teacher_entry(self, moved: list[Tensor]) -> dict[str, Any]:
        return {"features": list(moved), "logits": None}


STREAM_FOLDERS = {"train": "labeled", "unlabeled": "unlabeled"}
"""Sub-folder of each training stream's caches in a multi-teacher cache folder."""


def attach_teacher_caches(
    datamodule: GeoSegDataModule,
    teachers: list[Teacher],
    folder: str | Path,
    streams: tuple[str, ...] = ("train",),
    on_mismatch: OnMismatch = "rebuild",
    dtype: CacheDtype = "float16",
    device: str | torch.device | None = None,
    batch_size: int = 8,
) -> None:
    """Serve the ``streams`` of ``datamodule`` (after its ``setup("fit")``) with cached teacher
    outputs.

    One teacher on the labelled stream alone: ``folder`` is its cache, with every feature level
    and the logits (:func:`attach_teacher_cache`). Otherwise ``<folder>/teacher_<k>/<labeled|
    unlabeled>`` per teacher and stream, and samples carry each teacher's last feature level
    (:class:`CachedTeachersDataset`).
    """
    if len(teachers) == 1 and tuple(streams) == ("train",):
        attach_teacher_cache(
            datamodule, teachers[0], folder, on_mismatch, dtype, device, batch_size
        )
        return
    size = datamodule.patch_size
    warn_if_unaligned(size)
    for stream in streams:
        dataset = datamodule.training_set(stream)  # type: ignore[arg-type]
        caches = [
            ensure_teacher_cache(
                Path(folder) / f"teacher_{k}" / STREAM_FOLDERS[stream],
                teacher,
                dataset,  # type: ignore[arg-type]
                size,
                on_mismatch,
                dtype=dtype,
                device=device,
                batch_size=batch_size,
            )
            for k, teacher in enumerate(teachers)
        ]
        datamodule.serve(stream, CachedTeachersDataset(dataset, caches))  # type: ignore[arg-type]
