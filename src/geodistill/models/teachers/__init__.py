"""Frozen teachers from anywhere, behind one registry and one interface.

Importing this package registers the built-in kinds: ``geodistill`` (task checkpoints), ``timm``,
``torchgeo`` (optional extra) and ``onnx`` (ONNX Runtime).
"""

from geodistill.models.teachers import (
    checkpoint,  # noqa: F401 - registers "geodistill"
    from_onnx,  # noqa: F401 - registers "onnx"
    from_timm,  # noqa: F401 - registers "timm"
    from_torchgeo,  # noqa: F401 - registers "torchgeo"
)
from geodistill.models.teachers.bands import map_bands
from geodistill.models.teachers.base import (
    TEACHER_KINDS,
    InputNormalization,
    Teacher,
    TeacherNetwork,
    TeacherOutput,
    TeacherSpec,
    build_teacher,
    register_teacher,
)

__all__ = [
    "TEACHER_KINDS",
    "InputNormalization",
    "Teacher",
    "TeacherNetwork",
    "TeacherOutput",
    "TeacherSpec",
    "build_teacher",
    "map_bands",
    "register_teacher",
]
