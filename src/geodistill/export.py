"""Teacher-free deployment: turn any geodistill task checkpoint into a plain student checkpoint.

Distillation tasks carry training-only parts (feature projections, the teacher's path). The
exported file holds the student network with its band normalisation, the band and class names,
and :class:`~geodistill.tasks.SegmentationTask` hyper-parameters, so it loads with
``SegmentationTask.load_from_checkpoint`` and predicts without any teacher file.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from geodistill.atomic import atomic_output
from geodistill.errors import GeodistillError
from geodistill.models.teacher import read_checkpoint
from geodistill.tasks.segmentation import SegmentationTask

STUDENT_PREFIXES = ("model.", "criterion.")
"""State-dict entries a deployed :class:`SegmentationTask` owns; the rest is training-only."""


def export_student(checkpoint: str | Path, output: str | Path, overwrite: bool = False) -> Path:
    """Write the student of ``checkpoint`` to ``output`` (atomically) and return the path."""
    output = Path(output)
    if output.exists() and not overwrite:
        raise GeodistillError("the output exists; pass overwrite to replace it", output)
    source = read_checkpoint(checkpoint)
    accepted = set(inspect.signature(SegmentationTask.__init__).parameters) - {"self"}
    hparams = {k: v for k, v in source.get("hyper_parameters", {}).items() if k in accepted}
    meta = {k: v for k, v in source.get("geodistill", {}).items() if k != "teacher"}
    student = {
        "state_dict": {
            k: v for k, v in source["state_dict"].items() if k.startswith(STUDENT_PREFIXES)
        },
        "hyper_parameters": hparams,
        "geodistill": meta,
        "pytorch-lightning_version": source.get("pytorch-lightning_version"),
    }
    with atomic_output(output) as temporary:
        torch.save(student, temporary)
    return output
