"""The bad-input contract, as helpers every test of it shares.

A refused input must give exit status 2, exactly one ``geodistill: error:`` line that names the
file or option at fault, no traceback, and leave the output path as it was (nothing new, nothing
changed). :func:`assert_refused` checks the first three, :func:`tree_state` the last one; a
checkpoint carrying a pickle payload (:func:`payload_checkpoint`) proves that loading runs no code.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import subprocess
import sys
import warnings
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


SCRIPT = Path(sys.executable).with_name("geodistill")
"""The console script a user runs (for the cases that must see a real process)."""


def script_env() -> dict[str, str]:
    """A CI-like environment for the console script: no colours, one thread per process, and
    none of a parent's Lightning/DDP variables."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PL_", "MASTER_", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE"))
    }
    env.update(CI="true", NO_COLOR="1", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return env


def script(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """Run the console script as a user would; output captured as text."""
    return subprocess.run(
        [str(SCRIPT), *args],
        cwd=cwd,
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_main(args: list[str]) -> int:
    """Run ``geodistill ARGS`` in-process (output not captured); return the exit code.

    The one in-process runner of the tests: argparse's ``--help`` exits through SystemExit.
    """
    from geodistill.cli.main import main

    try:
        return main([str(arg) for arg in args])
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1


def run_cli(capsys: Any, *args: str) -> Outcome:
    """Run ``geodistill ARGS`` in-process and capture its exit code and output."""
    capsys.readouterr()
    code = run_main(list(args))
    out, err = capsys.readouterr()
    return Outcome(code, out, err)


def run_quietly(*args: str) -> tuple[int, str, str]:
    """``geodistill ARGS`` in-process with its output redirected: for module-scoped fixtures,
    where pytest's per-test ``capsys`` is not available; warnings are ignored."""
    out, err = io.StringIO(), io.StringIO()
    with (
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        code = run_main(list(args))
    return code, out.getvalue(), err.getvalue()


def assert_user_error(code: int, err: str, *needles: str) -> None:
    """:func:`assert_refused` for a ``(code, err)`` pair."""
    assert_refused(Outcome(code, "", err), *needles)


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


def quiet_trainer(**overrides: Any) -> Any:
    """The tests' one Lightning trainer: one CPU device, one epoch, nothing written or shown
    (no logger, checkpoint, progress bar or summary) unless ``overrides`` say otherwise."""
    import lightning as L

    settings: dict[str, Any] = {
        "max_epochs": 1,
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        **overrides,
    }
    return L.Trainer(**settings)
