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


_WORKER_PREFIX = "Caught GeodistillError in DataLoader worker"


def user_error(err: BaseException) -> GeodistillError | None:
    """The :class:`GeodistillError` behind ``err``, if any.

    jsonargparse wraps errors raised while instantiating the model or data in a ``ValueError``
    with the original as its ``__cause__`` (only explicit causes are followed, so a bug raised
    while handling a user error is not hidden). PyTorch re-raises an error from a DataLoader
    worker as a new exception whose message holds the worker's whole traceback. Both are
    unwrapped to the one-line message meant for the user.
    """
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, GeodistillError):
            message = str(current)
            if message.startswith(_WORKER_PREFIX):
                tail = message.rstrip().rsplit("GeodistillError: ", 1)[-1]
                return GeodistillError(tail)
            return current
        current = current.__cause__
    return None
