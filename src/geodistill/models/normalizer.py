"""Band normalisation that travels inside the model.

Keeping the clip range and mean/std as buffers of the network means a checkpoint or an exported
ONNX file applies exactly the training preprocessing, with no side file to lose.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from geodistill.data.stats import BandStats


class BandNormalizer(nn.Module):
    """Clip each band to its training percentiles, standardise, and set nodata (NaN) to zero."""

    def __init__(self, num_bands: int) -> None:
        super().__init__()
        self.register_buffer("low", torch.full((num_bands,), -torch.inf))
        self.register_buffer("high", torch.full((num_bands,), torch.inf))
        self.register_buffer("mean", torch.zeros(num_bands))
        self.register_buffer("std", torch.ones(num_bands))

    @property
    def num_bands(self) -> int:
        return self.mean.numel()

    def set_stats(self, stats: BandStats) -> None:
        """Load statistics computed from the training images."""
        if stats.num_bands != self.num_bands:
            raise ValueError(f"{stats.num_bands} band statistics for a {self.num_bands}-band model")
        for name in ("low", "high", "mean", "std"):
            getattr(self, name).copy_(torch.tensor(getattr(stats, name)))

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1, 1, 1)
        x = torch.clamp(x, self.low.view(shape), self.high.view(shape))
        x = (x - self.mean.view(shape)) / self.std.view(shape)
        return torch.where(torch.isnan(x), torch.zeros_like(x), x)
