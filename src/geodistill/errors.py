"""User-facing errors.

A :class:`GeodistillError` carries a message meant for the person running geodistill: it names the
file (or config key) and the problem. The CLI prints it without a traceback unless ``--debug``.
"""

from __future__ import annotations

from os import PathLike


class GeodistillError(Exception):
    """Bad input or configuration, reported to the user as one clear message."""

    def __init__(self, message: str, path: str | PathLike[str] | None = None) -> None:
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class GeodistillWarning(UserWarning):
    """Input that geodistill can work with but the user should know about (e.g. no CRS).

    The CLI prints these as one ``geodistill: warning:`` line.
    """
