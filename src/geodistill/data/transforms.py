"""Augmentations: geometric ones move image and mask together, photometric ones touch the image.

Built on torchvision's v2 transforms, which dispatch on ``tv_tensors.Image`` and ``tv_tensors.Mask``
so a flip or rotation is applied identically to both. Images keep any number of bands and NaN
nodata; photometric changes act per band in the raw value space, before the model normalises.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2


class RandomRot90(v2.Transform):
    """Rotate by a random multiple of 90°, exact for any band count (no interpolation)."""

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"k": int(torch.randint(0, 4, ()).item())}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Image | tv_tensors.Mask):
            return tv_tensors.wrap(torch.rot90(inpt, params["k"], dims=(-2, -1)), like=inpt)
        return inpt


class SpectralJitter(v2.Transform):
    """Per-band multiplicative gain and additive Gaussian noise scaled to each band's level."""

    def __init__(self, gain: float = 0.1, noise: float = 0.02, p: float = 0.8) -> None:
        super().__init__()
        self.gain, self.noise, self.p = gain, noise, p

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"apply": bool(torch.rand(()) < self.p)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, tv_tensors.Image) or not params["apply"]:
            return inpt
        bands = inpt.shape[-3]
        gain = 1 + (torch.rand(bands, 1, 1) * 2 - 1) * self.gain
        scale = torch.nan_to_num(inpt).abs().mean(dim=(-2, -1), keepdim=True)
        noisy = inpt * gain + torch.randn_like(inpt) * scale * self.noise
        return tv_tensors.wrap(noisy, like=inpt)


def train_transforms(photometric: bool = True) -> v2.Transform:
    """Flips, 90° rotations and (optionally) spectral jitter."""
    steps: list[v2.Transform] = [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), RandomRot90()]
    if photometric:
        steps.append(SpectralJitter())
    return v2.Compose(steps)


def apply_transform(
    transform: v2.Transform | None,
    image: torch.Tensor,
    mask: torch.Tensor,
    *targets: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """Run ``transform`` on an image/mask pair and return plain tensors.

    Extra ``targets`` (``(C, h, w)`` maps at any resolution, e.g. cached teacher features) go
    through the same geometric steps as the mask, with the same random draws, and are returned
    after it; photometric steps leave them alone. Only steps exact at every resolution (flips,
    90° rotations) keep maps of different sizes aligned.
    """
    if transform is None:
        return image, mask, *targets
    outputs = transform(
        tv_tensors.Image(image), tv_tensors.Mask(mask), *(tv_tensors.Mask(t) for t in targets)
    )
    return tuple(output.as_subclass(torch.Tensor) for output in outputs)
