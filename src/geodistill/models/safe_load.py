"""Checkpoints and weights files read weights-only: tensors and plain containers, never code.

``torch.load`` unpickles, and a pickle can run any code it names. Every checkpoint or weights file
the project opens (task checkpoints, local encoder weights, timm/torchgeo teacher weights) goes
through :func:`load_weights_only`, which allows tensors, plain containers and a short allow-list
of types, and turns every way the file can be wrong into one :class:`GeodistillError` naming it.
The students' local weights and :mod:`geodistill.models.checkpoint` both read through here.
"""

from __future__ import annotations

import argparse
import pathlib
import pickle
import re
import warnings
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch

from geodistill.errors import GeodistillError

CHECKPOINT_GLOBALS: tuple[type, ...] = (pathlib.PosixPath, pathlib.WindowsPath)
"""The only types beyond tensors and plain containers (dict, list, tuple, str, numbers) that a
geodistill checkpoint holds: paths, which a task built in Python with ``teacher=Path(...)``
records in its hyper-parameters. Checkpoints written by the CLI hold none (checked on real
checkpoints of every task and on exported students). Anything else is refused unread."""

WEIGHTS_GLOBALS: tuple[type, ...] = (*CHECKPOINT_GLOBALS, argparse.Namespace)
"""Weights files may also be timm training checkpoints, which record their ``args`` as an
``argparse.Namespace`` (a plain attribute bag; timm allows it too)."""

_GLOBAL_IN_ERROR = re.compile(r"GLOBAL ([\w.]+)")
_CODE_REFUSALS = ("GLOBAL", "reduce", "Can only", "Unsupported class")
"""Words of torch's weights-only refusals that mean the pickle asked for an object outside the
allow-list (as opposed to bytes that are no pickle at all: ``Unsupported operand``)."""


def load_weights_only(
    path: str | Path,
    noun: str = "checkpoint",
    allowed: tuple[type, ...] = CHECKPOINT_GLOBALS,
) -> Any:
    """``torch.load`` that can never run code: tensors, plain containers and ``allowed`` only.

    Every way the file can be wrong becomes one :class:`GeodistillError` naming it: missing, a
    folder, a pickle that references anything else (the payload of a tampered file, which is
    refused before it runs), or bytes torch cannot read (truncated, another format). ``noun``
    names the file in messages ("checkpoint", "weights file").
    """
    path = Path(path)
    _check_is_file(path, noun)
    try:
        with _allowing(allowed), warnings.catch_warnings():
            # A pickle of another protocol (not a torch file) is refused below; no warning.
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise GeodistillError(_refusal(path, error, noun, allowed), path) from error
    except OSError as error:
        raise GeodistillError(f"cannot read the {noun}: {error.strerror or error}", path) from error
    except Exception as error:  # noqa: BLE001 - torch raises many types for a corrupt file
        raise GeodistillError(_unreadable(noun), path) from error


def _check_is_file(path: Path, noun: str) -> None:
    if path.is_dir():
        raise GeodistillError(f"is a folder, not a {noun} file", path)
    if not path.is_file():
        raise GeodistillError(f"no such {noun} file", path)


def _allowing(allowed: tuple[type, ...]) -> AbstractContextManager[Any]:
    """torch's allow-list for the duration of one load (no process-wide registration)."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    return safe_globals(list(allowed)) if safe_globals and allowed else nullcontext()


def allow_checkpoint_globals() -> AbstractContextManager[Any]:
    """The checkpoint allow-list for a weights-only loader we do not call ourselves (Lightning's
    ``ckpt_path``, ``load_from_checkpoint``): ``with allow_checkpoint_globals(): ...``. Lightning
    checkpoints written by the CLI need none of it; a task built in Python may record paths."""
    return _allowing(CHECKPOINT_GLOBALS)


def _unreadable(noun: str) -> str:
    return f"cannot read the {noun}: it is truncated or not a PyTorch file"


def _refusal(
    path: Path, error: pickle.UnpicklingError, noun: str, allowed: tuple[type, ...]
) -> str:
    """The one-line reason for a weights-only refusal: the globals the pickle asks for, when it
    names any, else whether the bytes were a pickle at all."""
    reason = str(error).rsplit("WeightsUnpickler error:", 1)[-1].strip()
    names = _unsafe_globals(path, allowed) or _GLOBAL_IN_ERROR.findall(reason)[:1]
    if names:
        return _code_refusal(names, noun)
    expected = _expected(noun)
    if any(word in reason for word in _CODE_REFUSALS):
        first = reason.splitlines()[0][:120]
        return (
            f"refused: the {noun}'s pickle builds objects {expected} never contains "
            f"({first}); loading it could run code"
        )
    return _unreadable(noun)


def _expected(noun: str) -> str:
    return "a geodistill checkpoint" if noun == "checkpoint" else f"a {noun}"


def _code_refusal(names: list[str], noun: str) -> str:
    listed = ", ".join(f"`{name}`" for name in names[:3])
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return (
        f"refused: the {noun}'s pickle references {listed}{more}, which {_expected(noun)} "
        "never contains; loading it could run code"
    )


def _unsafe_globals(path: Path, allowed: tuple[type, ...]) -> list[str]:
    """Every global the pickle of a zip-format file references beyond ``allowed`` (read by
    scanning the pickle's opcodes, never by unpickling); empty when the scan cannot run."""
    scan = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if scan is None:
        return []
    try:
        names = scan(path)
    except Exception:  # noqa: BLE001 - legacy format or unreadable: fall back to the message
        return []
    known = {f"{kind.__module__}.{kind.__qualname__}" for kind in allowed}
    return [name for name in names if name not in known]


def check_weights_file(path: str | Path) -> None:
    """Refuse a weights file whose pickle references anything outside the allow-list, reading
    only the pickle, not the tensors (cheap for a large teacher): for checks at task
    construction; the full weights-only read happens when the file is used."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        return  # holds tensors only, by construction
    names = _unsafe_globals(path, WEIGHTS_GLOBALS)
    if names:
        raise GeodistillError(_code_refusal(names, "weights file"), path)


def read_weights_file(path: str | Path) -> Any:
    """The object stored in a local weights file (``.safetensors``, or ``.pt``/``.pth``/``.ckpt``
    read weights-only): never runs code. Callers pick the state dict out of it."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return load_weights_only(path, "weights file", WEIGHTS_GLOBALS)
    _check_is_file(path, "weights file")
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as error:  # noqa: BLE001 - safetensors raises its own types
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise GeodistillError(
            f"cannot read the weights file: not a readable safetensors file ({first})", path
        ) from error
