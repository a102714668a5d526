"""Distillation methods, each a component of :class:`~geodistill.tasks.SegmentationTask`.

Importing this package registers the built-in methods: ``coarse_to_fine``
(:class:`CoarseToFine`), ``knowledge_transfer`` (:class:`KnowledgeTransfer`) and
``semi_supervised`` (:class:`SemiSupervised`). A new method is one module here with a
:class:`Distillation` subclass decorated by :func:`register_method` (docs/architecture.md).
"""

from geodistill.methods.base import (
    METHODS,
    DataContext,
    Distillation,
    Step,
    StudentArguments,
    build_distillation,
    method_class,
    register_method,
)
from geodistill.methods.coarse_to_fine import CoarseToFine
from geodistill.methods.frozen_teachers import FrozenTeachers
from geodistill.methods.knowledge_transfer import KnowledgeTransfer
from geodistill.methods.semi_supervised import SemiSupervised

__all__ = [
    "METHODS",
    "CoarseToFine",
    "DataContext",
    "Distillation",
    "FrozenTeachers",
    "KnowledgeTransfer",
    "SemiSupervised",
    "Step",
    "StudentArguments",
    "build_distillation",
    "method_class",
    "register_method",
]
