"""One run of ``geodistill compare --jobs N`` in its own process, on one thread.

``python -m geodistill.experiments.worker FOLDER FIELDS_JSON`` runs ``fit`` + ``test`` of
``FOLDER/config.yaml`` and writes ``FOLDER/run.json``; with ``"retest": true`` in the fields it
only scores the recorded checkpoint on the extra test sets they name and updates ``run.json``.
Bad input is one ``geodistill: error:`` line and exit status 2, which the harness reports; the
parent sets ``OMP_NUM_THREADS=1``.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    """Run the one run named on the command line; the exit status says how it went."""
    import torch

    from geodistill.errors import user_error
    from geodistill.experiments.runs import execute_run, retest_run

    args = list(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(1)  # N runs at once on N cores: extra threads only wait on each other
    for category in (UserWarning, DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module="lightning")
    try:
        fields = json.loads(args[1])
        if fields.pop("retest", False):
            retest_run(Path(args[0]), fields)
        else:
            execute_run(Path(args[0]), fields)
    except Exception as err:
        found = user_error(err)
        if found is None:
            raise
        print(f"geodistill: error: {found}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
