"""Atomic output: a file appears complete at its path, or not at all; and outputs checked first.

Every writer (stats, manifests, metrics, label and class-map rasters, checkpoints) writes to a
temporary file beside the target and renames it over the target only once writing succeeded, so
an interrupted or failed run never leaves a half-written file at the output path.

Temporary names carry the writing process's id (``.<name>.<pid>-<host>.<random><suffix>``). A
process killed outright (``kill -9``, out of memory) cannot remove its temporaries, so a writer
first removes those in its folder whose process is gone (:func:`remove_stale_temps`).

:func:`check_output` refuses an output path that cannot be written (wrong kind, existing without
``--overwrite``, a parent that is a file, a folder without write permission) with one message,
before any work starts.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Literal

from geodistill.errors import GeodistillError

OutputKind = Literal["file", "folder"]


def _host_tag() -> str:
    """A short, filename-safe tag of this machine: a temporary of another machine sharing the
    folder (whose process ids mean nothing here) is never taken for a stale one."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def temp_prefix(path: Path) -> str:
    """Prefix of this process's temporaries for ``path``: ``.<name>.<pid>-<host>.``."""
    return f".{path.name}.{os.getpid()}-{_host_tag()}."


def _writer_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)-(?P<host>[0-9a-f]{8})\.[^.]+")
"""What :func:`make_temp` names: ``.<target>.<pid>-<host>.<random><suffix>``."""

_CLEANED: set[str] = set()
"""Folders this process has already cleaned: a writer that dies later belongs to another run,
and one scan per folder keeps writing thousands of chips into one folder linear."""


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Remove the temporaries in ``folder`` left by writers on this machine that no longer run.

    Only names :func:`make_temp` gives are considered; a live writer's (or another machine's)
    are kept, and so is every other file. Returns what was removed.
    """
    host = _host_tag()
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None or match["host"] != host or _writer_alive(int(match["pid"])):
            continue
        with suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def _clean_once(path: Path) -> None:
    folder = os.path.abspath(path.parent)
    if folder not in _CLEANED:
        remove_stale_temps(folder)
        _CLEANED.add(folder)


def make_temp(path: str | Path, suffix: str = ".tmp") -> Path:
    """An empty temporary file beside ``path`` named for this process; the first time this
    process writes into that folder, dead writers' temporaries there are removed."""
    path = Path(path)
    _clean_once(path)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=suffix)
    os.close(handle)
    return Path(name)


def make_temp_dir(path: str | Path, suffix: str = ".tmp") -> Path:
    """Like :func:`make_temp`, a staging folder beside ``path`` (built, then renamed into place);
    a dead writer's staging folders are removed with their contents.

    ``mkdtemp`` creates mode 0700, which the renamed output would keep; the folder gets the
    usual mode instead (0777 less the umask), like one made by ``mkdir``.
    """
    path = Path(path)
    _clean_once(path)
    folder = Path(tempfile.mkdtemp(dir=path.parent, prefix=temp_prefix(path), suffix=suffix))
    os.chmod(folder, 0o777 & ~_umask())
    return folder


def _umask() -> int:
    """The process's umask (reading it means setting it; it is restored at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_output(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` when the block succeeds.

    The parent folder is created. On any error the temporary file is removed and the error
    propagates; an existing file at ``path`` is left untouched. The result is readable by all
    (mode 0644), unlike the owner-only file ``mkstemp`` creates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = make_temp(path, suffix)
    try:
        yield temporary
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# output checks


def exists_error(
    path: str | Path, overwrite_option: str = "--overwrite", extra: str = ""
) -> GeodistillError:
    """The one message for an output that is there already: name the flag that replaces it."""
    return GeodistillError(f"already exists; pass {overwrite_option} to replace it{extra}", path)


def refuse_existing(
    paths: Iterable[str | Path], overwrite: bool, overwrite_option: str = "--overwrite"
) -> None:
    """Refuse the first of ``paths`` that exists, unless ``overwrite``."""
    if overwrite:
        return
    for path in paths:
        if Path(path).exists():
            raise exists_error(path, overwrite_option)


def _every_entry(folder: Path) -> list[Path]:
    return sorted(folder.iterdir())


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.absolute().parents):
        if candidate.exists():
            return candidate
    return Path(path.absolute().anchor)


PROBE_PREFIX = ".geodistill-probe-"
"""Name prefix of the file :func:`probe_writable` creates and removes at once."""


def probe_writable(folder: Path) -> None:
    """Create and remove a file in ``folder``: permission bits say too little (root, read-only
    mounts, ACLs), so really try. Raises :class:`OSError` when that fails."""
    handle, name = tempfile.mkstemp(dir=folder, prefix=PROBE_PREFIX)
    os.close(handle)
    os.unlink(name)


def _refuse_unwritable(path: Path, folder: Path, option: str) -> None:
    folder = Path(os.path.abspath(folder))  # "cannot write in ." would say little
    if not folder.is_dir():
        raise GeodistillError(
            f"cannot be created: {folder} is a file, not a folder; choose another {option}", path
        )
    try:
        probe_writable(folder)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise GeodistillError(
            f"cannot write in {folder} ({reason}); choose another {option} or fix its permissions",
            path,
        ) from err


def check_output(
    path: str | Path,
    kind: OutputKind,
    overwrite: bool = False,
    option: str = "-o",
    *,
    replaces: Callable[[Path], Iterable[Path]] | None = None,
    overwrite_option: str = "--overwrite",
    exists_hint: str = "",
    replaced_as_whole: bool = False,
) -> Path:
    """Refuse an output that cannot be written, before any work starts; return it as a Path.

    - ``path`` exists but is a folder where a file is wanted, or the other way round;
    - ``path`` exists and ``overwrite`` is false: a file, or a folder holding what ``replaces``
      yields (by default anything: a non-empty folder; ``lambda f: []`` accepts any folder);
    - the nearest existing folder above (or at) ``path`` is a file, or cannot be written in.

    ``exists_hint`` is appended to the message for an existing output (another way out).
    ``replaced_as_whole``: the folder is built beside itself and renamed into place, so its
    parent must be writable too. Every message names ``path`` and ``option`` (or
    ``overwrite_option``), in the words the user typed them.
    """
    path = Path(path)
    try:
        exists = path.exists()
    except OSError as err:  # e.g. a folder above it that may not be searched
        reason = err.strerror or type(err).__name__
        raise GeodistillError(
            f"cannot be reached ({reason}); choose another {option}", path
        ) from err
    if exists:
        if kind == "file" and path.is_dir():
            raise GeodistillError(f"is a folder; {option} must name a file", path)
        if kind == "folder" and not path.is_dir():
            raise GeodistillError(f"is a file; {option} must name a folder", path)
        if not overwrite:
            existing = [path] if kind == "file" else list((replaces or _every_entry)(path))
            if existing:
                raise exists_error(existing[0], overwrite_option, exists_hint)
    if kind == "folder" and path.is_dir():
        _refuse_unwritable(path, path, option)
        if not replaced_as_whole:
            return path
    folder = _nearest_existing(path.parent)
    _refuse_unwritable(path, folder, option)
    return path
