"""``geodistill compare``: one experiment file, many runs (variants x budgets x seeds), one table.

An experiment file names a base ``geodistill fit`` config, the variants to compare (overrides of
it), optional label budgets and teacher stages, and the seeds. Every run is trained and tested by
the LightningCLI exactly like ``geodistill fit`` + ``geodistill test``; the results are summarised
as mean ± std over seeds and paired differences against a baseline (see ``docs/compare.md``).
"""

from geodistill.experiments.file import (
    Budget,
    Experiment,
    StagePlan,
    load_experiment,
    select_variants,
)
from geodistill.experiments.harness import run_experiment
from geodistill.experiments.summary import Summary, format_difference, format_mean_std, summarise

__all__ = [
    "Budget",
    "Experiment",
    "StagePlan",
    "Summary",
    "format_difference",
    "format_mean_std",
    "load_experiment",
    "select_variants",
    "run_experiment",
    "summarise",
]
