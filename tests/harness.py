"""The bad-input contract, as helpers every test of it shares.

A refused input must give exit status 2, exactly one ``geodistill: error:`` line that names the
file or option at fault, no traceback, and leave the output path as it was (nothing new, nothing
changed). :func:`assert_refused` checks the first three, :func:`tree_state` the last one; a
checkpoint carrying a pickle payload (:func:`payload_checkpoint`) proves that loading runs no code.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ERROR_PREFIX = "geodistill: error:"


@dataclass
class Outcome:
    """What one in-process ``geodistill`` run returned and printed."""

    code: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith(ERROR_PREFIX)]


def run_cli(capsys: Any, *args: str) -> Outcome:
    """Run ``geodistill ARGS`` in-process and capture its exit code and output."""
    from geodistill.cli.main import main

    capsys.readouterr()
    try:
        code = main([str(arg) for arg in args])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return Outcome(code, out, err)


def assert_refused(outcome: Outcome, *needles: str) -> str:
    """Exit 2, one error line containing every needle (file, option, problem), no traceback."""
    assert outcome.code == 2, f"exit {outcome.code}\n{outcome.out}\n{outcome.err}"
    assert "Traceback" not in outcome.err, outcome.err
    lines = outcome.error_lines
    assert len(lines) == 1, outcome.err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def tree_state(path: str | Path) -> dict[str, tuple[int, str]]:
    """Every file under ``path`` (or ``path`` itself) with its size and content hash.

    Comparing the state before and after a refused command shows that nothing was created,
    removed or rewritten there; a missing path has the empty state.
    """
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
    else:
        return {}
    state: dict[str, tuple[int, str]] = {}
    for file in files:
        data = file.read_bytes()
        state[str(file)] = (len(data), hashlib.sha256(data).hexdigest())
    if path.is_dir():  # empty folders count as output too
        for folder in sorted(p for p in path.rglob("*") if p.is_dir()):
            state.setdefault(str(folder) + "/", (0, ""))
    return state


class Payload:
    """Unpickling this object opens (so creates) ``marker``: the proof that code ran."""

    def __init__(self, marker: str | Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.marker, "w"))


def payload_checkpoint(source: str | Path, target: str | Path, marker: str | Path) -> Path:
    """A copy of a working checkpoint with a code-running payload in its hyper-parameters."""
    checkpoint = torch.load(source, map_location="cpu", weights_only=False)  # our own file
    checkpoint.setdefault("hyper_parameters", {})["note"] = Payload(marker)
    checkpoint["payload"] = Payload(marker)
    target = Path(target)
    torch.save(checkpoint, target)
    return target
