"""The frozen teachers of a distillation method, held outside the module tree.

:class:`FrozenTeachers` is the one place where teachers are built (only through the teacher
registry, :func:`~geodistill.models.teachers.build_teacher`), placed on a device, run, and
cached: every method uses it, so all three treat teachers alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from geodistill.data.teacher_cache import attach_teacher_caches
from geodistill.errors import GeodistillError
from geodistill.models.teachers import Teacher, TeacherOutput, TeacherSpec, build_teacher
from geodistill.models.teachers.base import check_teacher_files

OnMismatch = Literal["rebuild", "refuse"]


class FrozenTeachers:
    """Teachers built from specs for the student's bands; a plain object, never an
    ``nn.Module``, so its networks never join the student's parameters or checkpoints.

    Args:
        specs: teacher specs (or config mappings, or checkpoint paths).
        band_names: the student's bands, which each teacher maps to its own inputs.
        build: build the networks now; ``False`` only checks the files (a method whose
            weights switch distillation off needs no teacher).
    """

    def __init__(
        self,
        specs: list[TeacherSpec | dict[str, Any] | str],
        band_names: list[str],
        build: bool = True,
    ) -> None:
        self.specs = [TeacherSpec.from_value(spec) for spec in specs]
        check_teacher_files(self.specs)
        self.band_names = list(band_names)
        self._teachers: list[Teacher] = (
            [build_teacher(spec, self.band_names) for spec in self.specs] if build else []
        )

    # ------------------------------------------------------------------------------ access

    @property
    def built(self) -> bool:
        return bool(self._teachers) or not self.specs

    def __len__(self) -> int:
        return len(self.specs)

    def __iter__(self) -> Iterator[Teacher]:
        return iter(self.teachers)

    def __getitem__(self, k: int) -> Teacher:
        return self.teachers[k]

    @property
    def teachers(self) -> list[Teacher]:
        if not self.built:
            raise GeodistillError("the teachers were not built (distillation is switched off)")
        return list(self._teachers)

    # ------------------------------------------------------------------------------ running

    def to(self, device: torch.device | str) -> FrozenTeachers:
        for teacher in self._teachers:
            teacher.to(device)
        return self

    def outputs(self, images: Tensor) -> list[TeacherOutput]:
        """Every teacher's output for student ``images`` (moved to their device first)."""
        results = []
        for teacher in self.teachers:
            if teacher.band_indices.device != images.device:
                teacher.to(images.device)
            results.append(teacher(images))
        return results

    # ------------------------------------------------------------------------------ caches

    def attach_caches(
        self,
        task: Any,
        folder: str | Path,
        streams: tuple[str, ...],
        on_mismatch: OnMismatch = "rebuild",
        dtype: str = "float16",
    ) -> None:
        """Train ``task``'s data module on cached teacher outputs for ``streams`` (``train``,
        ``unlabeled``): built once by the global-zero process, then opened by the others."""
        datamodule = getattr(task.trainer, "datamodule", None)
        if datamodule is None:
            raise GeodistillError("a teacher cache needs a GeoSegDataModule")
        strategy = task.trainer.strategy

        def attach() -> None:
            attach_teacher_caches(
                datamodule,
                self.teachers,
                folder,
                streams,
                on_mismatch=on_mismatch,
                dtype=dtype,
                device=strategy.root_device,
            )

        rank_zero_first(strategy, attach, "teacher_cache")


def rank_zero_first(strategy: Any, action: Callable[[], object], name: str) -> None:
    """Run ``action`` on the global-zero process, then, after a barrier, on the others.

    For work whose result the other processes reuse (a teacher cache built on disk): one process
    builds it, the others find it complete instead of racing to build it too.
    """
    if strategy.is_global_zero:
        action()
    strategy.barrier(name)
    if not strategy.is_global_zero:
        action()


def check_cache_settings(on_mismatch: str) -> None:
    if on_mismatch not in ("rebuild", "refuse"):
        raise GeodistillError(
            "model.distillation.cache_on_mismatch must be 'rebuild' or 'refuse', got "
            f"{on_mismatch!r}"
        )
