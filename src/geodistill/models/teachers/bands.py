"""Band mapping: which student band feeds each of a teacher's input bands.

Teachers are trained on their own band lists (RGB for timm's ImageNet/DINOv2/CLIP models,
13 Sentinel-2 bands for SSL4EO, six reflectance bands for a cloud masker...). The student's data
may hold more bands, fewer, or the same in another order. A mapping is a list of 0-based student
band indices, one per teacher input band, in the teacher's order.
"""

from __future__ import annotations

import re
from pathlib import Path

from geodistill.errors import GeodistillError


def band_key(name: str) -> str:
    """What tells two band names apart: not case, nor zero padding (``B02`` is ``b2``, ``B8A``
    is ``b8a``), so Sentinel-2 files and torchgeo's band lists (``B1``...``B8a``) match."""
    return re.sub(r"(?<!\d)0+(?=\d)", "", name.strip().lower())


def _student_index(band: int | str, student_bands: list[str], path: str | Path | None) -> int:
    if isinstance(band, int) or (isinstance(band, str) and band.lstrip("-").isdigit()):
        index = int(band)
        if not 0 <= index < len(student_bands):
            raise GeodistillError(
                f"teacher band {band} is out of range: the student data has "
                f"{len(student_bands)} bands ({', '.join(student_bands)})",
                path,
            )
        return index
    keys = [band_key(name) for name in student_bands]
    if band_key(band) not in keys:
        raise GeodistillError(
            f"teacher band {band!r} is not among the student bands ({', '.join(student_bands)})",
            path,
        )
    return keys.index(band_key(band))


def map_bands(
    student_bands: list[str],
    teacher_count: int,
    teacher_bands: list[str] | None = None,
    requested: list[int | str] | None = None,
    path: str | Path | None = None,
) -> list[int]:
    """Student band index for each teacher input band.

    ``requested`` (the spec's ``bands``) wins; otherwise bands are matched by name when the teacher
    records names that all appear among the student's, and in order when the counts agree.
    Anything else is refused with the two band lists, because guessing would feed a teacher the
    wrong physical quantity.
    """
    if requested is not None:
        if len(requested) != teacher_count:
            raise GeodistillError(
                f"teacher.bands lists {len(requested)} bands, the teacher takes {teacher_count}",
                path,
            )
        return [_student_index(band, student_bands, path) for band in requested]
    keys = [band_key(name) for name in student_bands]
    if teacher_bands is not None and all(band_key(name) in keys for name in teacher_bands):
        return [keys.index(band_key(name)) for name in teacher_bands]
    if teacher_count == len(student_bands):
        return list(range(teacher_count))
    teacher_desc = ", ".join(teacher_bands) if teacher_bands else "unnamed"
    raise GeodistillError(
        f"the teacher takes {teacher_count} bands ({teacher_desc}), the student data has "
        f"{len(student_bands)} ({', '.join(student_bands)}) and no mapping is given: set "
        "teacher.bands (one student band per teacher band) or teacher.expand_input",
        path,
    )
