"""Georeferenced GeoTIFF output for predictions: streamed, cloud-optimised, written atomically.

Scene outputs are written window by window into an uncompressed tiled GeoTIFF beside the target,
then converted by GDAL's COG driver (deflate, 512-pixel tiles, overviews) into a temporary file
that is renamed onto the output path. Memory stays bounded by GDAL's block cache, and the output
path only ever holds a complete file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import lightning as L
import numpy as np
import rasterio
import rasterio.shutil
from lightning.pytorch.callbacks import BasePredictionWriter
from matplotlib import colormaps
from rasterio.windows import Window

from geodistill.atomic import atomic_output, check_output, make_temp
from geodistill.data.raster import RasterInfo, quiet_georeferencing, raster_info

PREDICTION_NODATA = 255
"""Nodata value of every uint8 prediction raster (class map, confidence, probabilities)."""

PERCENT_SCALE = 0.01
"""Confidence and probabilities are stored as uint8 percent: value × 0.01 = probability."""

CLASS_NAMES_TAG = "class_names"
"""Dataset tag of a class map holding the JSON list of class names (id = position)."""

COG_OPTIONS = {"COMPRESS": "DEFLATE", "BLOCKSIZE": "512", "BIGTIFF": "IF_SAFER"}


def class_colormap(num_classes: int) -> dict[int, tuple[int, int, int, int]]:
    """A qualitative colour per class (tab20), so GIS software shows the map readably."""
    palette = colormaps["tab20"]
    colors = {}
    for k in range(num_classes):
        r, g, b, _ = palette(k % 20)
        colors[k] = (int(r * 255), int(g * 255), int(b * 255), 255)
    return colors


class StreamingGeoTiff:
    """Write a raster on ``like``'s grid by windows; becomes a COG at ``path`` on success.

    A context manager: on a clean exit the streamed file is converted and renamed onto ``path``;
    on an error both temporary files are removed and ``path`` is left as it was.
    """

    def __init__(
        self,
        path: str | Path,
        like: RasterInfo,
        count: int = 1,
        descriptions: Sequence[str] | None = None,
        tags: dict[str, str] | None = None,
        colormap: dict[int, tuple[int, int, int, int]] | None = None,
        scale: float | None = None,
        resampling: str = "MODE",
    ) -> None:
        self.path = Path(path)
        self.like = like
        self.count = count
        self.descriptions = descriptions
        self.tags = tags or {}
        self.colormap = colormap
        self.scale = scale
        self.resampling = resampling
        self._atomic: Any = None
        self._dataset: Any = None

    def __enter__(self) -> StreamingGeoTiff:
        self._atomic = atomic_output(self.path, suffix=".tif.partial")
        self._final = self._atomic.__enter__()
        self._stream = make_temp(self.path, suffix=".stream.tif")
        profile = {
            "driver": "GTiff",
            "width": self.like.width,
            "height": self.like.height,
            "count": self.count,
            "dtype": "uint8",
            "crs": self.like.crs,
            "transform": self.like.transform,
            "nodata": PREDICTION_NODATA,
            "tiled": True,
            "blockxsize": 512,
            "blockysize": 512,
            "BIGTIFF": "IF_SAFER",
        }
        with quiet_georeferencing():
            self._dataset = rasterio.open(self._stream, "w", **profile)
        if self.descriptions:
            self._dataset.descriptions = tuple(self.descriptions)
        if self.tags:
            self._dataset.update_tags(**self.tags)
        if self.colormap:
            self._dataset.write_colormap(1, self.colormap)
        if self.scale is not None:
            self._dataset.scales = (self.scale,) * self.count
        return self

    def write(self, data: np.ndarray, row: int, col: int = 0) -> None:
        """Write ``(count, h, w)`` or ``(h, w)`` uint8 values at ``(row, col)``."""
        data = data[None] if data.ndim == 2 else data
        window = Window(col, row, data.shape[-1], data.shape[-2])  # type: ignore[call-arg]
        self._dataset.write(data, window=window)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> bool | None:
        try:
            self._dataset.close()
            if error is None:
                rasterio.shutil.copy(
                    self._stream,
                    self._final,
                    driver="COG",
                    OVERVIEW_RESAMPLING=self.resampling,
                    **COG_OPTIONS,
                )
        except BaseException as failure:
            self._stream.unlink(missing_ok=True)
            self._atomic.__exit__(type(failure), failure, failure.__traceback__)
            raise
        self._stream.unlink(missing_ok=True)
        return self._atomic.__exit__(kind, error, trace)


def class_map_tags(class_names: Sequence[str], source: str | None = None) -> dict[str, str]:
    """Dataset tags of a class map: class names (JSON) for ``vectorize`` and GIS legends."""
    tags = {CLASS_NAMES_TAG: json.dumps(list(class_names))}
    if source:
        tags["model"] = source
    return tags


def write_class_map(
    path: str | Path,
    classes: np.ndarray,
    like: RasterInfo,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Write an in-memory ``(H, W)`` class map on the grid of ``like`` as a COG, atomically."""
    num_classes = (
        len(class_names) if class_names else int(classes[classes != 255].max(initial=0)) + 1
    )
    with StreamingGeoTiff(
        path,
        like,
        descriptions=["class"],
        tags=class_map_tags(class_names) if class_names else None,
        colormap=class_colormap(num_classes),
    ) as out:
        out.write(classes.astype(np.uint8), 0)
    return Path(path)


class GeoTiffPredictionWriter(BasePredictionWriter):
    """Write each predicted chip as ``<output_dir>/<stem>_pred.tif`` on its source's grid.

    Predictions already in ``output_dir`` are only replaced with ``overwrite``
    (``--prediction_writer.overwrite=true``); the folder is checked when prediction starts.
    """

    OVERWRITE_OPTION = "--prediction_writer.overwrite=true"

    def __init__(self, output_dir: str = "predictions", overwrite: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.overwrite = overwrite

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Refuse an unwritable output folder, or one holding predictions, before predicting."""
        if stage != "predict":
            return
        check_output(
            self.output_dir,
            "folder",
            self.overwrite,
            option="--prediction_writer.output_dir",
            replaces=lambda folder: sorted(folder.glob("*_pred.tif")),
            overwrite_option=self.OVERWRITE_OPTION,
        )

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
        class_names = getattr(pl_module, "class_names", None)
        for k, index in enumerate(prediction["index"].tolist()):
            height, width = prediction["shape"][k].tolist()
            chip = np.where(nodata[k], PREDICTION_NODATA, classes[k])[:height, :width]
            source = dataset.images[index]
            write_class_map(
                self.output_dir / f"{Path(source).stem}_pred.tif",
                chip,
                raster_info(source),
                class_names,
            )
