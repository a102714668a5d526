"""What an experiment found: mean ± std over seeds, paired differences, the table and figure.

Differences are paired by seed (a variant and the baseline of one seed share the data split, the
label draw and the teacher), which removes the between-seed spread from the comparison: a method
that wins on every seed by a little shows ``(5/5 seeds > 0)`` even when the seeds' spread is
larger than the gain. Standard deviations are sample ones (n - 1); a single run shows its value
alone, never ``± 0.00``. Metrics are fractions; the table shows them in % (differences in points).
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geodistill.metrics import SUMMARY_KEYS

SCALE = 100.0
"""Metrics are fractions; tables and the figure show percent."""


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation of one variant's metric over seeds."""

    values: dict[int, float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.values.values()))) if self.values else math.nan

    @property
    def std(self) -> float | None:
        """``None`` for fewer than two seeds: there is no spread to show."""
        return float(np.std(list(self.values.values()), ddof=1)) if self.n > 1 else None


@dataclass(frozen=True)
class Difference(Spread):
    """Per-seed ``variant - baseline`` and how many seeds share the sign of their mean."""

    @property
    def sign(self) -> str:
        return ">" if self.mean > 0 else "<" if self.mean < 0 else "="

    @property
    def kept(self) -> int:
        """Seeds whose difference has the mean's sign."""
        values = self.values.values()
        if self.sign == ">":
            return sum(v > 0 for v in values)
        if self.sign == "<":
            return sum(v < 0 for v in values)
        return sum(v == 0 for v in values)


def _number(value: float, digits: int, signed: bool = False) -> str:
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def format_mean_std(spread: Spread, scale: float = SCALE, digits: int = 2) -> str:
    """``61.23 ± 1.10``; one seed: ``61.23``; none: ``–``."""
    if spread.n == 0:
        return "–"
    text = _number(scale * spread.mean, digits)
    return text if spread.std is None else f"{text} ± {scale * spread.std:.{digits}f}"


def format_difference(difference: Difference, scale: float = SCALE, digits: int = 2) -> str:
    """``+1.20 ± 0.80 (4/5 seeds > 0)``; one seed: ``+1.20 (1/1 seeds > 0)``; none: ``–``."""
    if difference.n == 0:
        return "–"
    text = _number(scale * difference.mean, digits, signed=True)
    if difference.std is not None:
        text += f" ± {scale * difference.std:.{digits}f}"
    return f"{text} ({difference.kept}/{difference.n} seeds {difference.sign} 0)"


@dataclass
class Summary:
    """The headline metric per budget and variant, with paired differences to the baseline."""

    metric: str
    baseline: str
    budgets: list[str]
    variants: list[str]
    spreads: dict[str, dict[str, Spread]] = field(default_factory=dict)
    differences: dict[str, dict[str, Difference]] = field(default_factory=dict)


def _values(
    runs: Sequence[Mapping[str, Any]], metric: str
) -> dict[tuple[str, str], dict[int, float]]:
    """``(variant, budget) -> {seed: value}`` of the variant runs, NaN/missing values left out."""
    found: dict[tuple[str, str], dict[int, float]] = {}
    for run in runs:
        if run.get("kind") != "variant":
            continue
        value = run["metrics"].get(metric)
        if value is not None and math.isfinite(value):
            found.setdefault((run["name"], run["budget"]), {})[int(run["seed"])] = float(value)
    return found


def summarise(
    runs: Sequence[Mapping[str, Any]],
    metric: str,
    baseline: str,
    variants: Sequence[str],
    budgets: Sequence[str],
) -> Summary:
    """Mean ± std of ``metric`` per budget and variant over the run records, and each variant's
    per-seed differences to ``baseline`` (on the seeds both have)."""
    values = _values(runs, metric)
    summary = Summary(metric, baseline, list(budgets), list(variants))
    for budget in budgets:
        reference = values.get((baseline, budget), {})
        summary.spreads[budget] = {}
        summary.differences[budget] = {}
        for variant in variants:
            mine = values.get((variant, budget), {})
            summary.spreads[budget][variant] = Spread(mine)
            if variant != baseline:
                paired = {s: v - reference[s] for s, v in mine.items() if s in reference}
                summary.differences[budget][variant] = Difference(paired)
    return summary


def summary_json(summary: Summary) -> dict[str, Any]:
    """The summary as plain JSON values (NaN as null)."""

    def number(value: float | None) -> float | None:
        return None if value is None or not math.isfinite(value) else value

    out: dict[str, Any] = {}
    for budget in summary.budgets:
        out[budget] = {}
        for variant in summary.variants:
            spread = summary.spreads[budget][variant]
            entry: dict[str, Any] = {
                "mean": number(spread.mean),
                "std": number(spread.std),
                "n": spread.n,
                "values": {str(k): v for k, v in spread.values.items()},
            }
            difference = summary.differences[budget].get(variant)
            if difference is not None:
                entry["difference"] = {
                    "mean": number(difference.mean),
                    "std": number(difference.std),
                    "n": difference.n,
                    "kept": difference.kept,
                    "sign": difference.sign,
                    "values": {str(k): v for k, v in difference.values.items()},
                }
            out[budget][variant] = entry
    return out


def machine() -> str:
    """CPU model and core count (and the GPU, if any): what the seconds in the table mean."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{model or platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    try:
        import torch

        if torch.cuda.is_available():
            text += f", GPU {torch.cuda.get_device_name()}"
    except Exception:  # noqa: BLE001 - the machine line is informative only
        pass
    return text


def markdown(
    summary: Summary,
    runs: Sequence[Mapping[str, Any]],
    header: Mapping[str, str],
    stages: Sequence[str] = (),
    tests: Mapping[str, Summary] | None = None,
) -> str:
    """``results.md``: the header lines, then per budget the headline table (mean ± std, paired
    difference to the baseline), the headline metric on each extra test set, and the mean of
    every summary test metric; the stages with their scores on every test set."""
    tests = dict(tests or {})
    lines = ["# geodistill compare", ""]
    lines += [f"{key}: {value}  " for key, value in header.items()]
    lines[-1] = lines[-1].rstrip()
    name = summary.metric
    lines += [
        "",
        f"Values in % (× 100); mean ± sample std over seeds; Δ is the per-seed paired difference "
        f"to `{summary.baseline}` in points, with how many seeds share its sign.",
    ]
    seconds: dict[tuple[str, str], list[float]] = {}
    for run in runs:
        if run.get("kind") == "variant":
            seconds.setdefault((run["name"], run["budget"]), []).append(float(run["seconds"]))
    for budget in summary.budgets:
        lines += ["", f"## budget: {budget}", ""]
        lines += [
            f"| variant | {name} | Δ vs {summary.baseline} | seeds | s/run |",
            "|---|---|---|---|---|",
        ]
        for variant in summary.variants:
            spread = summary.spreads[budget][variant]
            difference = summary.differences[budget].get(variant)
            delta = "–" if difference is None else format_difference(difference)
            took = seconds.get((variant, budget), [])
            mean_s = f"{np.mean(took):.0f}" if took else "–"
            lines.append(
                f"| {variant} | {format_mean_std(spread)} | {delta} | {spread.n} | {mean_s} |"
            )
        for test, extra in tests.items():
            lines += [
                "",
                f"Test set `{test}` (the same checkpoints):",
                "",
                f"| variant | {extra.metric} | Δ vs {extra.baseline} | seeds |",
                "|---|---|---|---|",
            ]
            for variant in extra.variants:
                spread = extra.spreads[budget][variant]
                difference = extra.differences[budget].get(variant)
                delta = "–" if difference is None else format_difference(difference)
                lines.append(f"| {variant} | {format_mean_std(spread)} | {delta} | {spread.n} |")
        keys = [f"test/{k}" for k in SUMMARY_KEYS]
        lines += ["", "All summary test metrics (mean over seeds, %):", ""]
        lines += ["| variant | " + " | ".join(k.removeprefix("test/") for k in keys) + " |"]
        lines += ["|---|" + "---|" * len(keys)]
        for variant in summary.variants:
            cells = []
            for key in keys:
                values = _values(runs, key).get((variant, budget), {})
                cells.append(f"{SCALE * np.mean(list(values.values())):.2f}" if values else "–")
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    if stages:
        names = [name, *(extra.metric for extra in tests.values())]
        lines += [
            "",
            "## stages",
            "",
            "| stage | budget | " + " | ".join(names) + " | seeds |",
            "|---|---|" + "---|" * len(names) + "---|",
        ]
        groups: dict[tuple[str, str], dict[str, dict[int, float]]] = {}
        for run in runs:
            if run.get("kind") == "stage":
                group = groups.setdefault((run["name"], run["budget"] or "shared"), {})
                for key in names:
                    value = run["metrics"].get(key)
                    if value is not None and math.isfinite(value):
                        group.setdefault(key, {})[int(run["seed"])] = float(value)
        for (stage, budget), values in groups.items():
            spreads = [Spread(values.get(key, {})) for key in names]
            cells = " | ".join(format_mean_std(spread) for spread in spreads)
            lines.append(f"| {stage} | {budget} | {cells} | {spreads[0].n} |")
    return "\n".join(lines) + "\n"


def figure(summary: Summary, path: Path) -> Path:
    """``results.png``: per budget, each variant's mean with std error bars and the per-seed
    values as dots (the same seed's dots joined, so paired gains show as rising lines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(summary.budgets)
    fig, axes = plt.subplots(
        1,
        count,
        figsize=(1.2 + 1.1 * len(summary.variants) * count + 0.8 * count, 3.8),
        squeeze=False,
        sharey=True,
    )
    colors = plt.get_cmap("tab10")
    seeds = sorted({s for b in summary.spreads.values() for sp in b.values() for s in sp.values})
    for ax, budget in zip(axes[0], summary.budgets, strict=True):
        x = np.arange(len(summary.variants))
        for index, seed in enumerate(seeds):
            ys = [
                SCALE * summary.spreads[budget][v].values.get(seed, math.nan)
                for v in summary.variants
            ]
            ax.plot(
                x,
                ys,
                "-o",
                color=colors(index % 10),
                alpha=0.45,
                ms=4,
                lw=0.8,
                label=f"seed {seed}",
            )
        for position, variant in zip(x, summary.variants, strict=True):
            spread = summary.spreads[budget][variant]
            if spread.n:
                ax.errorbar(
                    position,
                    SCALE * spread.mean,
                    yerr=SCALE * (spread.std or 0.0),
                    fmt="s",
                    color="black",
                    ms=7,
                    capsize=6,
                    lw=1.6,
                    zorder=5,
                )
        ax.set_xticks(x, summary.variants, rotation=20, ha="right")
        ax.set_xlim(-0.5, len(summary.variants) - 0.5)
        ax.set_title(f"budget: {budget}")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(f"{summary.metric} (%)")
    if seeds:
        axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle("mean ± std over seeds (black), per-seed values (dots)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
