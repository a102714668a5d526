"""The ``geodistill`` command: Lightning subcommands plus data tools and the demo.

Errors caused by the user's input are :class:`~geodistill.errors.GeodistillError`; they are printed
as one line and exit with status 2. ``--debug`` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from geodistill.errors import GeodistillError

USAGE = """usage: geodistill [--debug] COMMAND ...

Distil light segmentation students for multispectral Earth observation imagery.

commands:
  fit        train a model            (geodistill fit --config configs/demo.yaml)
  validate   evaluate on the validation split
  test       evaluate on the test split, writing test_metrics.json/.md
  predict    predict image chips to georeferenced GeoTIFFs
  prepare    vector labels / large scenes -> label rasters and chips with a manifest
  stats      per-band normalisation statistics of images
  demo       run the built-in synthetic multispectral demo end to end

Run 'geodistill COMMAND --help' for a command's options. --debug shows tracebacks.
"""


def _tool_parser() -> argparse.ArgumentParser:
    from geodistill.cli import tools

    parser = argparse.ArgumentParser(prog="geodistill")
    commands = parser.add_subparsers(dest="command", required=True)
    tools.add_prepare(commands)
    tools.add_stats(commands)
    tools.add_demo(commands)
    return parser


def run(argv: Sequence[str]) -> None:
    """Dispatch one command; raises :class:`GeodistillError` on bad input."""
    args = list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return
    command = args[0]
    from geodistill.cli.lightning_cli import LIGHTNING_COMMANDS

    if command in LIGHTNING_COMMANDS:
        from geodistill.cli.lightning_cli import run_lightning_cli

        run_lightning_cli(args)
        return
    parsed = _tool_parser().parse_args(args)
    parsed.func(parsed)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    if not debug:
        warnings.filterwarnings("ignore", category=UserWarning, module="lightning")
    try:
        run(args)
    except GeodistillError as err:
        if debug:
            raise
        print(f"geodistill: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("geodistill: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
