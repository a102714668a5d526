"""The ``geodistill`` command: Lightning subcommands plus data tools and the demo.

Errors caused by the user's input are :class:`~geodistill.errors.GeodistillError`; they are printed
as one line and exit with status 2. ``--debug`` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import NoReturn, TextIO

from geodistill.errors import GeodistillError, GeodistillWarning, user_error

USAGE = """usage: geodistill [--debug] [--allow-download] COMMAND ...

Distil light segmentation students for multispectral Earth observation imagery.

commands:
  fit        train a model            (geodistill fit --config configs/demo_fine.yaml)
  validate   evaluate on the validation split
  test       evaluate on the test split, writing test_metrics.json/.md
  predict    predict image chips to georeferenced GeoTIFFs
  prepare    vector labels / large scenes -> label rasters and chips with a manifest
  stats      per-band normalisation statistics of images
  demo       run the built-in synthetic multispectral demo end to end
  compare    variants x label budgets x seeds of a fit config: mean ± std, paired gains
             (coarse-to-fine: --config configs/coarse_to_fine_demo.yaml)
  export     teacher-free student from any checkpoint: plain .ckpt or .onnx
  infer      whole scenes -> georeferenced class maps (bounded memory, COG, many devices)
  vectorize  class map -> polygons per class with areas (m²) and confidence (GPKG/GeoJSON)
  view       class maps, polygons and scene -> one self-contained web map (map.html)

Run 'geodistill COMMAND --help' for a command's options. --debug shows tracebacks.
--allow-download lets pretrained weights named in a config download into the libraries' caches.
"""


class _ToolParser(argparse.ArgumentParser):
    """argparse whose usage errors are one :class:`GeodistillError` line, not usage + message.

    Sub-command parsers inherit the class, so ``geodistill infer --tile x`` is answered like any
    other bad input: one line naming the command and option, exit status 2.
    """

    def error(self, message: str) -> NoReturn:
        raise GeodistillError(f"{self.prog}: {message} (see '{self.prog} --help')")


def _tool_parser() -> argparse.ArgumentParser:
    from geodistill.cli import tools

    parser = _ToolParser(prog="geodistill")
    commands = parser.add_subparsers(dest="command", required=True)
    tools.add_prepare(commands)
    tools.add_stats(commands)
    tools.add_demo(commands)
    tools.add_compare(commands)
    tools.add_export(commands)
    tools.add_infer(commands)
    tools.add_vectorize(commands)
    tools.add_view(commands)
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


ShowWarning = Callable[..., None]
"""The signature of :func:`warnings.showwarning`."""


def _warning_printer(fallback: ShowWarning) -> ShowWarning:
    """One ``geodistill: warning:`` line for our own warnings; ``fallback`` for the rest."""

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if issubclass(category, GeodistillWarning):
            print(f"geodistill: warning: {message}", file=file or sys.stderr)
        else:
            fallback(message, category, filename, lineno, file, line)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    allow_download = "--allow-download" in args
    args = [a for a in args if a not in ("--debug", "--allow-download")]
    if debug and args[:1] == ["demo"]:
        args.append("--verbose")  # --debug shows the libraries' messages too
    if not debug:
        warnings.filterwarnings("ignore", category=UserWarning, module="lightning")
        for category in (DeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", category=category, module="lightning")
    previous_printer = warnings.showwarning
    warnings.showwarning = _warning_printer(previous_printer)
    saved_env = os.environ.get("JSONARGPARSE_DEBUG")
    if debug:
        # Config errors found by jsonargparse then raise (with a traceback) instead of exiting.
        os.environ["JSONARGPARSE_DEBUG"] = "true"
    download_env, saved_download = None, None
    if allow_download:  # every named weight of this process may download (also in workers)
        from geodistill.models.pretrained import ALLOW_DOWNLOAD_ENV as download_env

        saved_download = os.environ.get(download_env)
        os.environ[download_env] = "1"
    try:
        run(args)
    except Exception as err:
        found = user_error(err)
        if debug or found is None:
            raise
        print(f"geodistill: error: {found}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("geodistill: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = previous_printer
        if debug:
            if saved_env is None:
                os.environ.pop("JSONARGPARSE_DEBUG", None)
            else:
                os.environ["JSONARGPARSE_DEBUG"] = saved_env
        if download_env is not None:
            if saved_download is None:
                os.environ.pop(download_env, None)
            else:
                os.environ[download_env] = saved_download
    return 0


if __name__ == "__main__":
    sys.exit(main())
