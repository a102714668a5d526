"""What every benchmark script records with its figures: the command, the machine, the time."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any

import torch


def hardware() -> str:
    """The GPU's name, or the CPU's, and the number of torch threads."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor()
    return f"{device or platform.machine()}, {torch.get_num_threads()} threads"


def command() -> str:
    """The command line that ran this script."""
    return "python " + " ".join(sys.argv)


def write_results(output: Path, report: dict[str, Any], table: str, seeds: int) -> str:
    """Write ``results.json`` (``report``) and ``results.md`` (a header naming the command,
    hardware and wall time, then ``table``); return the Markdown."""
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.json").write_text(json.dumps(report, indent=2, default=str))
    markdown = (
        f"Command: `{report['command']}`  \nHardware: {report['hardware']}  \n"
        f"Wall time: {report['seconds']} s for {seeds} seed(s)\n\n{table}"
    )
    (output / "results.md").write_text(markdown)
    return markdown
