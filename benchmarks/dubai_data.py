"""The Dubai aerial chips as the benchmarks use them (see ../shared/data/DATA.md).

Districts (tiles) 1-8; masks are RGB-coded PNGs. The colours here are the ones the PNGs really
contain; "Unlabeled" (grey) is ignored.
"""

from __future__ import annotations

from pathlib import Path

from geodistill.data import Domain, GeoSegDataModule, Source

DATA = Path(__file__).resolve().parent.parent / ".." / "shared" / "data" / "dubai_aerial"
DATA_IN_YAML = "../shared/data/dubai_aerial"
"""How the experiment files name the Dubai chips (relative to the repository root)."""
CLASSES = ["building", "land", "road", "vegetation", "water"]
COLOR_MAP = {
    "60,16,152": 0,
    "132,41,246": 1,
    "110,193,228": 2,
    "254,221,58": 3,
    "226,169,41": 4,
    "155,155,155": -1,
}


def tiles(root: Path, numbers: list[int]) -> Source:
    """The chips of districts ``numbers`` under ``root``, with their RGB-coded masks."""
    return Source(
        images=[str(root / f"tile_{n}" / "images" / "*.jpg") for n in numbers],
        labels="{parent}/../masks",
        color_map=COLOR_MAP,
    )


def dubai_datamodule(
    root: Path, seed: int, patch_size: int, batch_size: int, train_tiles: list[int] | None = None
) -> GeoSegDataModule:
    """The data of ``dubai_supervised.yaml`` as a data module (for scripts that time things)."""
    return GeoSegDataModule(
        classes=CLASSES,
        fine=Domain(
            train=tiles(root, train_tiles or [1, 2, 3, 4, 5]),
            val=tiles(root, [6]),
            test=tiles(root, [7, 8]),
        ),
        patch_size=patch_size,
        crops_per_image=4,
        batch_size=batch_size,
        eval_batch_size=1,
        cache=True,
        seed=seed,
    )
