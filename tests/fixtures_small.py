"""Tiny learnable GeoTIFF datasets and YAML configs for the training and CLI tests.

The pattern is pixel-wise and easy: ``label = 1`` where band 0 exceeds 0.5. Band 0 is smoothed
noise (blobs a few pixels wide), the other bands are independent noise, so a tiny student learns
the rule within a handful of optimiser steps; chance-level mIoU is about 0.25-0.33.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
import yaml
from affine import Affine
from harness import run_cli, run_main
from scipy import ndimage

from geodistill.methods import SemiSupervised
from geodistill.tasks import SegmentationTask

CRS = "EPSG:32633"
X0, Y0, RES = 500_000.0, 5_000_000.0, 10.0
SIZE = 64
BANDS = 4
CLASSES = ["background", "target"]

# The fastest tiny student measured on a 2-core CPU: a timm ResNet-18 truncated to 3 stages
# (about 0.7 M parameters, so checkpoints stay a few MB) with a slim U-Net decoder.
TINY_MODEL: dict[str, Any] = {
    "arch": "unet",
    "encoder": "tu-resnet18",
    "arch_kwargs": {"encoder_depth": 3, "decoder_channels": [16, 8, 8]},
}


BAND_NAMES = [f"b{i}" for i in range(BANDS)]
"""The band descriptions :func:`make_dataset` writes, the names teachers are built for."""
TIMM_TEACHER: dict[str, Any] = {
    "kind": "timm",
    "arch": "resnet10t",
    "layers": [3],
    "bands": ["b0", "b1", "b2"],
}
"""A tiny timm CNN with random weights (no ``path``: nothing is read or downloaded); its stage 3
has 256 channels at stride 16, the tiny student's deepest level 128 at stride 8."""


def semi_supervised_task(lr: float | None = None, **method_args: Any) -> SegmentationTask:
    """The tiny student with a ``SemiSupervised`` method of ``method_args`` (teachers built for
    :data:`BAND_NAMES`); ``lr`` overrides the task's default."""
    task_args: dict[str, Any] = {} if lr is None else {"lr": lr}
    return SegmentationTask(
        in_channels=BANDS,
        num_classes=len(CLASSES),
        class_names=CLASSES,
        band_names=list(BAND_NAMES),
        **task_args,
        **TINY_MODEL,
        distillation=SemiSupervised(**method_args),
    )


def chip_transform(index: int, size: int = SIZE) -> Affine:
    """Each chip gets its own place on a row of the UTM grid (10 m pixels, north up)."""
    return Affine(RES, 0.0, X0 + index * size * RES, 0.0, -RES, Y0)


@contextmanager
def torch_threads(count: int = 1) -> Iterator[None]:
    """Run tiny models on one thread: on a small, busy CPU, extra threads only wait on each other
    (measured: a 4-epoch fit takes ~1.3 s on one thread, ~4.5 s on two, with another job running).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def write_tif(
    path: str | Path,
    data: np.ndarray,
    crs: str | None = CRS,
    transform=None,
    nodata: float | None = None,
    descriptions: Sequence[str] | None = None,
) -> Path:
    """Write ``data`` ((C, H, W) or (H, W)) as a GeoTIFF."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = data[None] if data.ndim == 2 else data
    profile = dict(
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype,
        crs=crs,
        transform=transform if transform is not None else chip_transform(0),
        nodata=nodata,
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        for i, name in enumerate(descriptions or (), start=1):
            dst.set_band_description(i, name)
    return path


def learnable_chip(rng: np.random.Generator, bands: int = BANDS, size: int = SIZE):
    """(image float32 (bands, size, size), label uint8 (size, size)) with label = band0 > 0.5."""
    field = ndimage.gaussian_filter(rng.normal(size=(size, size)), sigma=3, mode="wrap")
    field = (field - field.min()) / (field.max() - field.min())
    image = rng.uniform(0.0, 1.0, size=(bands, size, size)).astype(np.float32)
    image[0] = field
    label = (field > 0.5).astype(np.uint8)
    return image, label


def make_dataset(
    root: str | Path,
    n: int = 12,
    bands: int = BANDS,
    size: int = SIZE,
    seed: int = 0,
    labels: bool = True,
) -> Path:
    """Write ``root/images/chip_XX.tif`` (and ``root/labels/chip_XX.tif``); return ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    names = [f"b{i}" for i in range(bands)]
    for i in range(n):
        image, label = learnable_chip(rng, bands, size)
        transform = chip_transform(i, size)
        write_tif(
            root / "images" / f"chip_{i:02d}.tif", image, transform=transform, descriptions=names
        )
        if labels:
            write_tif(root / "labels" / f"chip_{i:02d}.tif", label, transform=transform)
    return root


def config_dict(
    data_root: str | Path,
    out_dir: str | Path,
    max_epochs: int = 3,
    model: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    predict: str | Path | None = None,
) -> dict[str, Any]:
    """A complete ``geodistill fit`` config for a :func:`make_dataset` folder."""
    data_root, out_dir = Path(data_root), Path(out_dir)
    init_data: dict[str, Any] = {
        "classes": CLASSES,
        "fine": {
            "train": {"images": str(data_root / "images"), "labels": str(data_root / "labels")},
            "val_fraction": 0.25,
            "test_fraction": 0.25,
        },
        "patch_size": 64,
        "crops_per_image": 2,
        "batch_size": 4,
        "eval_batch_size": 4,
        "augment": False,
        "cache": True,
    }
    if predict is not None:
        init_data["predict"] = {"images": str(predict)}
    init_data.update(data or {})
    init_model = {**TINY_MODEL, "loss": "ce", "lr": 0.01, "warmup_fraction": 0.0}
    init_model.update(model or {})
    return {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": max_epochs,
            "accelerator": "cpu",
            "devices": 1,
            "default_root_dir": str(out_dir),
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": [
                {
                    "class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": str(out_dir), "name": "logs"},
                }
            ],
        },
        "model": {"class_path": "geodistill.tasks.SegmentationTask", "init_args": init_model},
        "data": {"class_path": "geodistill.data.GeoSegDataModule", "init_args": init_data},
        "checkpoint": {"dirpath": str(out_dir / "checkpoints")},
        "prediction_writer": {"output_dir": str(out_dir / "predictions")},
    }


def write_config(path: str | Path, config: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def cli(capsys: Any, *args: str) -> tuple[int, str, str]:
    """Run ``geodistill ARGS`` in-process: (exit code, stdout, stderr) — :func:`run_cli`."""
    outcome = run_cli(capsys, *args)
    return outcome.code, outcome.out, outcome.err


cli_main = run_main
"""Run ``geodistill ARGS`` in-process without capturing output; return the exit code."""
