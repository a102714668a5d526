"""What a distillation method is to :class:`~geodistill.tasks.SegmentationTask`, and the registry
that names the methods.

A method is an ``nn.Module`` component of the task (``model.init_args.distillation`` in YAML, as
``class_path``/``init_args``). Its submodules are its trainable heads: they are trained with the
student and saved in checkpoints (under ``distillation.``), and :mod:`geodistill.export` drops
them, since a deployed student is the ``model.`` network alone. Frozen teachers live in a
:class:`~geodistill.methods.frozen_teachers.FrozenTeachers` holder, never in the module tree, so
they are never trained, saved or exported.

The task calls the hooks in this order:

1. :meth:`Distillation.student_arguments` before it builds the student (a method may start from
   its teacher's architecture, or add modules to the student);
2. :meth:`Distillation.bind` once the student exists (teachers are built here, heads sized on
   the student's and teachers' widths);
3. :meth:`Distillation.setup` when Lightning sets the task up, with the data module's public
   interface (unlabelled stream, teacher caches);
4. :meth:`Distillation.parameter_groups` when the optimiser is built (parameters with their
   own learning rate);
5. :meth:`Distillation.training_step` for every training batch, then
   :meth:`Distillation.on_train_batch_end`;
6. at validation and test, the student and every network of
   :meth:`Distillation.evaluated_models` are scored (``val/<metric>``, ``val/<name>/<metric>``);
   after each validation epoch :meth:`Distillation.on_validation_scores` gets their ``mIoU``;
   test and prediction run the network :meth:`Distillation.deployed_network` names;
7. :meth:`Distillation.teacher_record` and :meth:`Distillation.deployment_record` into every
   checkpoint, :meth:`Distillation.load_deployment_record` when one is loaded.
"""

from __future__ import annotations

import copy
import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from torch import Tensor, nn

from geodistill.errors import GeodistillError
from geodistill.models.teachers.base import TeacherSpec, check_teacher_files

if TYPE_CHECKING:  # annotations only: methods sit below the tasks that hold them
    from geodistill.tasks.segmentation import SegmentationTask

UnlabeledUse = Literal["required", "optional", "unused"]


@dataclass(frozen=True)
class StudentArguments:
    """The student's architecture as the task is about to build it (what ``create_student``
    takes besides band and class counts)."""

    arch: str
    encoder: str
    weights: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> StudentArguments:
        return replace(self, **changes)


@dataclass(frozen=True)
class DataContext:
    """What the data tells a method when the student is built: its bands, classes and the loss's
    ignore index (linked from the data module by the CLI)."""

    band_names: list[str]
    class_names: list[str]
    ignore_index: int

    @property
    def in_channels(self) -> int:
        return len(self.band_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class Step:
    """A training step's result: the loss to optimise, the values to log (``train/<name>``) and
    the number of labelled samples it saw (Lightning's batch size for averaging)."""

    loss: Tensor
    logs: dict[str, Tensor]
    size: int


class Distillation(nn.Module):
    """Base of every distillation method (see the module docstring for the hooks' order).

    A subclass records its validated settings with :meth:`record_settings` so that
    :meth:`config` (saved in the task's hyper-parameters and checkpoints) rebuilds it.
    """

    unlabeled: ClassVar[UnlabeledUse] = "unused"
    """Whether training batches must (``required``), may (``optional``) or must not (``unused``)
    carry an unlabelled stream (``data.unlabeled_from``)."""

    def __init__(self) -> None:
        super().__init__()
        self.settings: dict[str, Any] = {}

    def record_settings(self, **settings: Any) -> None:
        """Keep the method's settings (plain values) for :meth:`config`."""
        self.settings.update(settings)

    def config(self) -> dict[str, Any]:
        """``{"class_path", "init_args"}``: how the method is written in a config."""
        # A deep copy: a checkpoint must not share objects between this config and the teacher
        # record (a loader that rewrites one in place would change the other).
        return {"class_path": class_path(type(self)), "init_args": copy.deepcopy(self.settings)}

    @property
    def active(self) -> bool:
        """Whether any term needs a teacher (a method with all weights at 0 trains the student on
        its labels alone, and builds no teacher)."""
        return True

    @property
    def needs_teachers(self) -> bool:
        """Whether training builds the teachers (their files must exist)."""
        return self.active

    # -------------------------------------------------------------------------------- hooks

    def student_arguments(self, student: StudentArguments, data: DataContext) -> StudentArguments:
        """The student the task should build (default: as configured)."""
        return student

    def bind(self, task: SegmentationTask) -> dict[str, Any]:
        """Build teachers and heads for ``task.model``; return hyper-parameters to record (the
        student's architecture as really built)."""
        return {}

    def setup(self, task: SegmentationTask, stage: str, datamodule: Any) -> None:
        """Lightning's ``setup``; ``datamodule`` is the trainer's (``None`` without one)."""

    def on_fit_start(self, task: SegmentationTask) -> None:
        """Place frozen teachers on the task's device, seed random streams."""

    def training_step(self, task: SegmentationTask, batch: dict[str, Any]) -> Step:
        """The training loss of one batch (``{"labeled", "unlabeled"}`` or a plain batch)."""
        raise NotImplementedError

    def on_train_batch_end(self, task: SegmentationTask) -> None:
        """After each training batch (EMA updates)."""

    def parameter_groups(self, task: SegmentationTask) -> list[dict[str, Any]]:
        """Optimiser parameter groups with settings of their own, as ``{"params": [...], "lr":
        ...}`` (default: none). The task puts every other trainable parameter in its default
        group; the schedule scales every group's learning rate by the same factor."""
        return []

    def evaluated_models(self) -> dict[str, nn.Module]:
        """Networks besides the student that validation and test score with the student's
        metrics, by name (logged as ``val/<name>/<metric>``; default: none). They take the
        student's input and return its logits; ``student`` is the student's own name."""
        return {}

    def on_validation_scores(self, task: SegmentationTask, scores: dict[str, float]) -> None:
        """After each validation epoch (the sanity check's aside): ``val/mIoU`` of ``student``
        and of every network of :meth:`evaluated_models`, by name."""

    def deployed_network(self) -> str:
        """The network a user gets: test and prediction run it and ``geodistill export`` writes
        it as the plain student; ``student`` or a name of :meth:`evaluated_models`."""
        return "student"

    def deployment_record(self) -> dict[str, Any]:
        """What checkpoints record about the choice of :meth:`deployed_network` (next to the
        ``network`` and ``state_prefix`` the task records)."""
        return {}

    def load_deployment_record(self, record: dict[str, Any] | None) -> None:
        """Restore :meth:`deployment_record` from a checkpoint being loaded (``None``: the
        checkpoint has none, e.g. written before the method recorded it)."""

    def teacher_record(self) -> Any:
        """What the checkpoint records of the teachers (their specs); never their weights."""
        return None

    def teacher_specs(self) -> list[TeacherSpec]:
        """The teachers this method would build, as specs (from :meth:`teacher_record`)."""
        record = self.teacher_record()
        values = record if isinstance(record, list) else [] if record is None else [record]
        return [TeacherSpec.from_value(value) for value in values]

    def check_teacher_files(self) -> None:
        """Check the teachers' existing files weights-only, without building any network."""
        check_teacher_files(self.teacher_specs())

    def check_resumed_teacher(self, saved: Any) -> None:
        """Warn when a checkpoint being resumed was distilled from other teachers."""
        current = self.teacher_record()
        if saved is not None and current is not None and saved != current:
            warnings.warn(
                f"the checkpoint was distilled from {saved}; resuming with {current}",
                stacklevel=3,
            )


# ------------------------------------------------------------------------------- the registry

METHODS: dict[str, type[Distillation]] = {}
"""Registered methods by short name (``coarse_to_fine``, ``knowledge_transfer``,
``semi_supervised``); see :func:`register_method`."""


def register_method(name: str) -> Callable[[type[Distillation]], type[Distillation]]:
    """Class decorator that registers a :class:`Distillation` under ``name``."""

    def decorate(cls: type[Distillation]) -> type[Distillation]:
        METHODS[name] = cls
        return cls

    return decorate


def class_path(cls: type) -> str:
    """The public import path of a registered method (``geodistill.methods.CoarseToFine``)."""
    return f"geodistill.methods.{cls.__name__}"


def method_class(name: str) -> type[Distillation]:
    """A registered method by short name, class name or class path; anything else is refused
    (a checkpoint's config never imports arbitrary code)."""
    for short, cls in METHODS.items():
        if name in (short, cls.__name__, class_path(cls), f"{cls.__module__}.{cls.__name__}"):
            return cls
    raise GeodistillError(
        f"model.distillation: unknown method {name!r}; known: "
        + ", ".join(f"{short} ({class_path(cls)})" for short, cls in METHODS.items())
    )


def build_distillation(value: Distillation | dict[str, Any] | None) -> Distillation | None:
    """A method from a method, a config mapping (``class_path`` + ``init_args``, as recorded in
    checkpoints; ``class_path`` may be a registered short name) or ``None``."""
    if value is None or isinstance(value, Distillation):
        return value
    if not isinstance(value, dict) or "class_path" not in value:
        raise GeodistillError(
            "model.distillation must be a method: {class_path: geodistill.methods.<Name>, "
            f"init_args: {{...}}}}, got {value!r}"
        )
    cls = method_class(str(value["class_path"]))
    arguments = dict(value.get("init_args") or {})
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(arguments) - accepted)
    if unknown:
        raise GeodistillError(
            f"model.distillation.init_args: unknown option(s) {', '.join(unknown)} for "
            f"{cls.__name__}; known: {', '.join(sorted(accepted))}"
        )
    return cls(**arguments)


def check_non_negative(**values: float) -> None:
    """Refuse negative weights, naming the option."""
    for name, value in values.items():
        if value < 0:
            raise GeodistillError(f"model.distillation.{name} must be >= 0, got {value}")


def check_choice(name: str, value: str, choices: tuple[str, ...] | list[str]) -> None:
    """Refuse a value outside ``choices``, naming the option."""
    if value not in choices:
        raise GeodistillError(
            f"model.distillation.{name} must be one of {', '.join(map(repr, choices))}, "
            f"got {value!r}"
        )
