"""Georeferenced GeoTIFF output for predictions, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import rasterio
from lightning.pytorch.callbacks import BasePredictionWriter

from geodistill.atomic import atomic_output
from geodistill.data.raster import RasterInfo, raster_info

PREDICTION_NODATA = 255


def write_class_map(path: str | Path, classes: np.ndarray, like: RasterInfo) -> Path:
    """Write an ``(H, W)`` uint8 class map on the grid of ``like`` (CRS, transform), atomically.

    The file appears at ``path`` only once complete: it is written to a temporary name in the same
    folder and renamed, so an interrupted run never leaves a truncated map behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "width": like.width,
        "height": like.height,
        "count": 1,
        "dtype": "uint8",
        "crs": like.crs,
        "transform": like.transform,
        "nodata": PREDICTION_NODATA,
        "compress": "deflate",
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
    }
    with (
        atomic_output(path, suffix=".tif.partial") as temporary,
        rasterio.open(temporary, "w", **profile) as dst,
    ):
        dst.write(classes.astype(np.uint8), 1)
    return path


class GeoTiffPredictionWriter(BasePredictionWriter):
    """Write each predicted chip as ``<output_dir>/<stem>_pred.tif`` on its source's grid."""

    def __init__(self, output_dir: str = "predictions") -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: dict[str, Any],
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        dataset = trainer.datamodule.datasets["predict"]
        classes = prediction["probs"].argmax(1).cpu().numpy().astype(np.uint8)
        nodata = prediction["nodata"].cpu().numpy()
        for k, index in enumerate(prediction["index"].tolist()):
            height, width = prediction["shape"][k].tolist()
            chip = np.where(nodata[k], PREDICTION_NODATA, classes[k])[:height, :width]
            source = dataset.images[index]
            write_class_map(
                self.output_dir / f"{Path(source).stem}_pred.tif", chip, raster_info(source)
            )
