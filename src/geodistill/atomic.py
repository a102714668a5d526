"""Atomic output: a file appears complete at its path, or not at all.

Every writer (stats, manifests, metrics, label and class-map rasters, checkpoints) writes to a
temporary file beside the target and renames it over the target only once writing succeeded, so
an interrupted or failed run never leaves a half-written file at the output path.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_output(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` when the block succeeds.

    The parent folder is created. On any error the temporary file is removed and the error
    propagates; an existing file at ``path`` is left untouched. The result is readable by all
    (mode 0644), unlike the owner-only file ``mkstemp`` creates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
