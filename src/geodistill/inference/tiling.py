"""The tile grid of a scene and the blending window that makes overlapping tiles seamless.

Each tile's probabilities are weighted by a smooth window that is highest at the tile centre and
small (never zero) at its edges, and the weighted sum is divided by the summed weights. Because
the window is separable and the tiles lie on a regular grid, the summed weights are the outer
product of a row profile and a column profile: two 1-D arrays, whatever the scene size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def tile_origins(length: int, tile: int, stride: int) -> list[int]:
    """Tile start offsets covering ``[0, length)``, the last one flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return [*starts, length - tile]


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
