"""Helpers for tasks that run under several processes (DDP)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


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
