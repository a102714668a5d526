"""The tile grid of a scene and the blending window that makes overlapping tiles seamless.

Tile origins come from :func:`geodistill.data.tiling.tile_origins`; what is added here is the
inference side: the checks of ``--tile``/``--overlap``/``--batch-size`` and the blending weights.

Each tile's probabilities are weighted by a smooth window that is highest at the tile centre and
small (never zero) at its edges, and the weighted sum is divided by the summed weights. Because
the window is separable and the tiles lie on a regular grid, the summed weights are the outer
product of a row profile and a column profile: two 1-D arrays, whatever the scene size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geodistill.data.tiling import tile_origins
from geodistill.errors import GeodistillError

MIN_TILE = 16
"""Smallest tile side accepted. The students' encoders halve the resolution up to five times, so
a tile under 16 pixels reaches the deepest stages as a single pixel or less: the model sees no
context, several architectures fail outright, and the per-tile overhead dominates."""


def check_tile(tile: int, option: str = "--tile") -> int:
    """Refuse a tile side below :data:`MIN_TILE` (``option`` names it the way the user typed)."""
    if tile < MIN_TILE:
        raise GeodistillError(
            f"{option} {tile} is too small: the tile size must be at least {MIN_TILE} pixels "
            "(the encoder downsamples each tile up to 32 times)"
        )
    return tile


def check_overlap(overlap: int, tile: int | None) -> int:
    """Refuse an overlap outside ``[0, tile/2]``: beyond half a tile, every pixel is predicted more
    than twice per axis without blending any better, and ``overlap >= tile`` cannot advance.
    ``tile`` None (not known yet) checks the sign only."""
    if overlap < 0 or (tile is not None and overlap > tile // 2):
        limit = "half the tile" if tile is None else f"half the tile ({tile // 2} for {tile})"
        raise GeodistillError(
            f"--overlap {overlap} is out of range: the overlap must be between 0 and {limit}"
        )
    return overlap


def check_batch_size(batch_size: int) -> int:
    """Refuse a batch of no tiles."""
    if batch_size < 1:
        raise GeodistillError(
            f"--batch-size {batch_size} is out of range: the batch size (tiles predicted at once) "
            "must be at least 1"
        )
    return batch_size


def blend_window(tile: int) -> np.ndarray:
    """A 1-D Hann-like ramp, strictly positive: tile centres count more than tile edges."""
    return np.hanning(tile + 2)[1:-1].astype(np.float32)


@dataclass(frozen=True)
class TileGrid:
    """Tiles of side ``tile`` overlapping by ``overlap`` pixels over a ``height × width`` scene."""

    height: int
    width: int
    tile: int
    overlap: int

    @property
    def rows(self) -> list[int]:
        return tile_origins(self.height, self.tile, self.tile - self.overlap)

    @property
    def cols(self) -> list[int]:
        return tile_origins(self.width, self.tile, self.tile - self.overlap)

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    def weight_profile(self, length: int, origins: list[int]) -> np.ndarray:
        """Summed window weight along one axis of the scene."""
        window = blend_window(self.tile)
        total = np.zeros(length, np.float32)
        for start in origins:
            stop = min(start + self.tile, length)
            total[start:stop] += window[: stop - start]
        return total

    def row_weights(self) -> np.ndarray:
        return self.weight_profile(self.height, self.rows)

    def col_weights(self) -> np.ndarray:
        return self.weight_profile(self.width, self.cols)
