"""Lightning training tasks: supervised segmentation, and the distillation tasks built on it."""

from geodistill.tasks.coarse_to_fine import CoarseToFineTask
from geodistill.tasks.knowledge_transfer import KnowledgeTransferTask
from geodistill.tasks.segmentation import SegmentationTask
from geodistill.tasks.semi_supervised import SemiSupervisedTask

__all__ = ["CoarseToFineTask", "KnowledgeTransferTask", "SegmentationTask", "SemiSupervisedTask"]
