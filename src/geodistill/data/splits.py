"""Seeded splits and the manifest that records them, so every run can be reproduced."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geodistill.atomic import atomic_output
from geodistill.errors import GeodistillError


def split_items(items: Sequence[str], fractions: Sequence[float], seed: int) -> list[list[str]]:
    """Shuffle ``items`` with ``seed`` and cut them into parts of the given fractions.

    The last part takes the remainder. Items are sorted first so the result does not depend on
    the order the file system lists them in.
    """
    if any(f < 0 for f in fractions) or sum(fractions[:-1]) > 1:
        raise GeodistillError(f"split fractions must be >= 0 and sum to <= 1, got {fractions}")
    ordered = sorted(items)
    order = np.random.default_rng(seed).permutation(len(ordered))
    shuffled = [ordered[i] for i in order]
    parts, start = [], 0
    for fraction in fractions[:-1]:
        count = int(round(fraction * len(shuffled)))
        parts.append(shuffled[start : start + count])
        start += count
    parts.append(shuffled[start:])
    return parts


def write_manifest(path: str | Path, manifest: dict[str, Any]) -> None:
    """Write the split manifest atomically."""
    with atomic_output(path) as temporary, open(temporary, "w") as f:
        json.dump(manifest, f, indent=2)
