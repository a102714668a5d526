"""Regular tile grids over a raster: where the windows of a sliding-window pass start.

Shared by everything that walks a raster in fixed windows: the teacher output cache (windows over
training chips) and whole-scene inference (tiles over a scene, blended where they overlap).
"""

from __future__ import annotations


def tile_origins(length: int, tile: int, stride: int) -> list[int]:
    """Tile start offsets covering ``[0, length)``, the last one flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return [*starts, length - tile]
