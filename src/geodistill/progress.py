"""What a long run tells its user: each run announced, one progress line per run, quiet libraries.

A newcomer running the demo or ``geodistill compare`` should read what is being trained on
what and how long it will take, not Lightning's start-up chatter (accelerator availability, tips,
"Loading `train_dataloader`..."). :class:`RunProgress` announces run ``i`` of ``n`` with the time
left estimated from the finished runs and gives each run a :class:`StageBar` (one tqdm line over
its training steps, closed with its validation and test mIoU). :func:`quiet_libraries` lowers
Lightning's informational logging for the duration of a run; ``verbose`` keeps it.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

import lightning as L
from tqdm import tqdm

LIGHTNING_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning.pytorch",
    "lightning.fabric",
)
"""Where Lightning logs its start-up and end-of-fit messages (``rank_zero_info``)."""

TIP_PREFIX = "💡 Tip:"


class _DropTips(logging.Filter):
    """Drops Lightning's advertising tips (litlogger, litmodels): they say nothing about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(TIP_PREFIX)


_TIP_FILTER = _DropTips()


def hide_lightning_tips() -> None:
    """Stop Lightning's "💡 Tip: ... litlogger" lines, leaving its other messages as they are
    (for the LightningCLI commands). Lightning offers no setting for them; a logging filter on
    the loggers it prints them with removes exactly these lines. Idempotent."""
    for name in LIGHTNING_LOGGERS[:2]:
        logger = logging.getLogger(name)
        if _TIP_FILTER not in logger.filters:
            logger.addFilter(_TIP_FILTER)


@contextmanager
def quiet_libraries(verbose: bool = False) -> Iterator[None]:
    """Within the block, Lightning logs warnings only and its user warnings are not shown, so the
    run's own announcements and progress lines are what the user reads; ``verbose`` changes
    nothing but the tips. Levels and warning filters are restored afterwards."""
    hide_lightning_tips()
    if verbose:
        yield
        return
    with lightning_logs_at_warning(), warnings.catch_warnings():
        for category in (UserWarning, DeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", category=category, module="lightning")
        warnings.filterwarnings("ignore", category=UserWarning, module="torch.utils.data")
        yield


@contextmanager
def lightning_logs_at_warning() -> Iterator[None]:
    """Within the block Lightning's loggers show warnings only (no device or start-up notices);
    their levels are restored afterwards."""
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``: how long something takes, for a person."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _metric(trainer: L.Trainer, key: str) -> float | None:
    value = trainer.callback_metrics.get(key)
    if value is None:
        return None
    value = float(value)
    return value if value == value else None  # NaN: nothing scored


class StageBar(L.Callback):
    """One progress line for one run: its training steps with the time left (tqdm averages the
    whole elapsed time, validation included), then its validation and test mIoU.

    The line stays on screen when the run ends (one line per run), unlike Lightning's own
    progress bar, which adds a line per validation loader and epoch.
    """

    def __init__(self, description: str, stream: TextIO | None = None) -> None:
        self.description = description
        self.stream = stream
        self.bar: Any = None
        self.scores: dict[str, float] = {}
        self.counting_tests = False

    def _open(self, total: int | None, unit: str = "step") -> None:
        if self.bar is None:
            self.bar = tqdm(
                total=total,
                desc=self.description,
                unit=unit,
                file=self.stream if self.stream is not None else sys.stderr,
                leave=True,
                smoothing=0.0,
                mininterval=0.5,
                dynamic_ncols=True,
            )

    def _postfix(self, *extra: str) -> None:
        if self.bar is not None:
            scores = [f"{k} {100 * v:.1f}" for k, v in self.scores.items()]
            self.bar.set_postfix_str(", ".join([*scores, *extra]), refresh=True)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        batches = trainer.num_training_batches
        epochs = trainer.max_epochs
        finite = batches != float("inf") and epochs is not None and epochs > 0
        self._open(int(batches) * epochs if finite else None)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        score = _metric(trainer, "val/mIoU")
        if score is not None:
            self.scores["val mIoU"] = score
            self._postfix()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.bar is None:  # a test without training (a given checkpoint): count its batches
            batches = sum(trainer.num_test_batches)
            self._open(int(batches) if batches != float("inf") else None, unit="batch")
            self.counting_tests = True
        self._postfix("testing…")

    def on_test_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.counting_tests and self.bar is not None:
            self.bar.update(1)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        score = _metric(trainer, "test/mIoU")
        if score is not None:
            self.scores["test mIoU"] = score
        self._postfix()
        self.close()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, error: Any) -> None:
        self.close()

    def close(self) -> None:
        """End the line (idempotent)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@dataclass(frozen=True)
class PlannedRun:
    """One run a multi-run command will do: what it trains on (``coarse``, ``fine``,
    ``coarse+fine``; empty for a run without training) and for how many epochs (0: nothing to
    train, e.g. a run an earlier one already completed)."""

    name: str
    domain: str = ""
    epochs: int = 0


class RunProgress:
    """Announces the runs of a multi-run command and hands each its :class:`StageBar`.

    ``label`` starts each announcement (``run 2/5: joint (seed 0) — ...``; the demo says
    ``Stage``); ``descriptions`` replaces the pipeline's title and detail by run name (the demo
    knows what its data mean). The time left comes from the finished runs: with a :meth:`plan`,
    as seconds per epoch of each training domain (a ``coarse+fine`` epoch costs a coarse plus a
    fine one) times the epochs still to do, shown once every remaining run's domain has been
    timed; without one, as their mean duration times the runs still to do. ``enabled=False``
    prints nothing and adds no progress line (a library call nobody watches).
    """

    def __init__(
        self,
        total: int = 0,
        label: str = "run",
        descriptions: Mapping[str, str] | None = None,
        stream: TextIO | None = None,
        enabled: bool = True,
    ) -> None:
        self.total = total
        self.label = label
        self.descriptions = dict(descriptions or {})
        self.stream = stream
        self.enabled = enabled
        self.index = 0
        self.runs: list[PlannedRun] = []
        self.durations: list[float] = []
        self.per_epoch: dict[str, list[float]] = {}
        self._started: float | None = None
        self._bar: StageBar | None = None

    def plan(self, runs: Sequence[PlannedRun]) -> None:
        """The runs to come, in order (sets :attr:`total`)."""
        self.runs = list(runs)
        self.total = len(self.runs)

    def say(self, text: str) -> None:
        """Print one line for the user (between progress lines, never through them)."""
        if self.enabled:
            tqdm.write(text, file=self.stream if self.stream is not None else sys.stderr)

    def _epoch_seconds(self, domain: str) -> float | None:
        if domain in self.per_epoch:
            values = self.per_epoch[domain]
            return sum(values) / len(values)
        if "+" not in domain:
            return None
        parts = [self._epoch_seconds(part) for part in domain.split("+")]
        return None if None in parts else sum(p for p in parts if p is not None)

    def time_left(self) -> float | None:
        """Seconds the current run and those after it should take, from the finished runs
        (None while that cannot be estimated)."""
        remaining = self.total - self.index + 1
        if not self.runs:
            if not self.durations:
                return None
            return remaining * sum(self.durations) / len(self.durations)
        left = 0.0
        for run in self.runs[self.index - 1 :]:
            if run.epochs == 0:
                continue
            seconds = self._epoch_seconds(run.domain)
            if seconds is None:
                return None
            left += run.epochs * seconds
        return left if self.per_epoch else None

    def start(self, name: str, title: str | None = None, detail: str = "") -> list[L.Callback]:
        """Announce run ``name`` and return the Lightning callbacks that show its progress."""
        self.index += 1
        if name in self.descriptions:
            text = f"{self.label} {self.index}/{self.total}: {self.descriptions[name]}"
        else:
            text = f"{self.label} {self.index}/{self.total}: {title or name}"
            text += f" — {detail}" if detail else ""
        left = self.time_left()
        if left is not None:
            text += f" (about {format_duration(left)} left)"
        self.say(text)
        self._started = time.perf_counter()
        self._bar = StageBar(name, self.stream) if self.enabled else None
        return [self._bar] if self._bar is not None else []

    def finish(self, seconds: float | None = None) -> None:
        """Close the current run's line and count its duration towards the estimate."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if seconds is None and self._started is not None:
            seconds = time.perf_counter() - self._started
        if seconds is not None:
            self.durations.append(seconds)
            run = self.runs[self.index - 1] if 0 < self.index <= len(self.runs) else None
            if run is not None and run.epochs > 0 and run.domain:
                self.per_epoch.setdefault(run.domain, []).append(seconds / run.epochs)
        self._started = None

    def skip(self, name: str, reason: str) -> None:
        """Announce a run that needs no work (``--resume`` found it complete)."""
        self.index += 1
        self.say(f"{self.label} {self.index}/{self.total}: {name} — {reason}")
