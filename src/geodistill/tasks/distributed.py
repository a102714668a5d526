"""Helpers for tasks that run under several processes (DDP)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from geodistill.errors import GeodistillError


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


def attach_cache_rank_zero_first(task: Any, attach: Callable[..., object], teachers: Any) -> None:
    """Give ``task``'s data module the cache of ``teachers``' outputs (``model.teacher_cache``)
    through ``attach`` (``attach_teacher_cache`` or ``attach_teacher_caches``): rank 0 builds
    it, the other processes open it."""
    datamodule = getattr(task.trainer, "datamodule", None)
    if datamodule is None:
        raise GeodistillError("model.teacher_cache needs a GeoSegDataModule")
    hp = task.hparams
    strategy = task.trainer.strategy

    def action() -> object:
        return attach(
            datamodule,
            teachers,
            hp.teacher_cache,
            on_mismatch=hp.cache_on_mismatch,
            dtype=hp.cache_dtype,
            device=strategy.root_device,
        )

    rank_zero_first(strategy, action, "teacher_cache")
