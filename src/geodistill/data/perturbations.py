"""Strong views for semi-supervised training: batch-level perturbations of raw-value images.

FixMatch-style training compares a model's prediction on a *weak* view (the data loader's flips and
rotations) with the student's on a *strong* view of the same pixels. The strong view is built here,
on the device, from a batch of weak views ``(B, C, H, W)`` in the raw value space (before the
model's band normaliser) with NaN for nodata:

- :func:`color_jitter`: per-band brightness (gain) and contrast (around the band's mean), and
  saturation, a blend towards the band mean at each pixel (torchvision's ColorJitter generalised
  to any band count; hue has no multispectral meaning and is left out);
- :func:`grayscale`: every band replaced by the pixel's band mean (RandomGrayscale);
- :func:`gaussian_blur`: normalised convolution, so nodata neither spreads nor darkens edges;
- :func:`spectral_shift`: per-band gain and offset (offset in units of the band's spread): sensor
  calibration and atmosphere-like changes of the spectrum;
- :func:`band_dropout`: one band flattened to its mean, so the model cannot rely on any single
  band;
- :func:`cutmix`: a random box from a partner sample pasted into the image *and* every label,
  pseudo-label and confidence map, with the same box.

Every function keeps shapes and dtypes, keeps NaN exactly where the input had NaN (pasted boxes
carry the partner's nodata), draws all randomness from a ``torch.Generator`` (on the CPU, whatever
the device of the images) and applies each perturbation to a sample with probability ``p``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from geodistill.errors import GeodistillError


def _uniform(shape: Sequence[int], low: float, high: float, generator: torch.Generator | None):
    return low + (high - low) * torch.rand(tuple(shape), generator=generator)


def _chosen(batch: int, p: float, generator: torch.Generator | None) -> Tensor:
    """Which samples a perturbation applies to (drawn even when ``p`` is 0 or 1, so one setting
    does not change the random stream of the others)."""
    return torch.rand(batch, generator=generator) < p


def _band_means(images: Tensor) -> Tensor:
    """``(B, C, 1, 1)`` mean of each band over its valid pixels (0 where a band has none)."""
    return torch.nan_to_num(images.nanmean(dim=(-2, -1), keepdim=True))


def _pixel_means(images: Tensor) -> Tensor:
    """``(B, 1, H, W)`` mean over the valid bands at each pixel (NaN where none is valid)."""
    return images.nanmean(dim=1, keepdim=True)


def _select(chosen: Tensor, changed: Tensor, images: Tensor) -> Tensor:
    mask = chosen.to(images.device).view(-1, 1, 1, 1)
    out = torch.where(mask, changed, images)
    return torch.where(torch.isnan(images), images, out)  # nodata stays NaN, data stays data


def color_jitter(
    images: Tensor,
    brightness: float = 0.5,
    contrast: float = 0.5,
    saturation: float = 0.5,
    p: float = 0.8,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-band brightness ``x·b_c``, per-band contrast ``m_c + c_c·(x − m_c)`` and saturation
    ``g + s·(x − g)`` (``g`` the band mean at each pixel), factors uniform in ``1 ± strength``."""
    batch, bands = images.shape[:2]
    chosen = _chosen(batch, p, generator)
    gain = _uniform((batch, bands, 1, 1), 1 - brightness, 1 + brightness, generator)
    spread = _uniform((batch, bands, 1, 1), 1 - contrast, 1 + contrast, generator)
    mix = _uniform((batch, 1, 1, 1), 1 - saturation, 1 + saturation, generator)
    gain, spread, mix = (x.to(images.device, images.dtype) for x in (gain, spread, mix))
    x = images * gain
    means = _band_means(x)
    x = means + spread * (x - means)
    gray = _pixel_means(x)
    x = gray + mix * (x - gray)
    return _select(chosen, x, images)


def grayscale(images: Tensor, p: float = 0.2, generator: torch.Generator | None = None) -> Tensor:
    """Every band replaced by the pixel's mean over bands."""
    chosen = _chosen(images.shape[0], p, generator)
    return _select(chosen, _pixel_means(images).expand_as(images), images)


def gaussian_blur(
    images: Tensor,
    sigma: tuple[float, float] = (0.1, 2.0),
    p: float = 0.5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Gaussian blur with ``σ`` uniform in ``sigma`` (pixels), as a normalised convolution:
    ``blur(x·valid) / blur(valid)``, so only valid pixels are averaged."""
    batch = images.shape[0]
    chosen = _chosen(batch, p, generator)
    sigmas = _uniform((batch,), sigma[0], sigma[1], generator)
    out = images.clone()
    height, width = images.shape[-2:]
    for i in torch.nonzero(chosen).flatten().tolist():
        s = float(sigmas[i])
        radius = max(1, min(math.ceil(3 * s), min(height, width) - 1))
        size = [2 * radius + 1] * 2
        valid = (~torch.isnan(images[i])).to(images.dtype)
        filled = torch.nan_to_num(images[i])
        total = TF.gaussian_blur(filled, size, [s, s])
        weight = TF.gaussian_blur(valid, size, [s, s])
        out[i] = total / weight.clamp_min(1e-12)
    return torch.where(torch.isnan(images), images, out)


def spectral_shift(
    images: Tensor,
    gain: float = 0.1,
    offset: float = 0.1,
    p: float = 0.5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per band ``x·g_c + o_c·σ_c``: gain uniform in ``1 ± gain``, offset uniform in ``±offset``
    band standard deviations (of the sample's valid pixels)."""
    batch, bands = images.shape[:2]
    chosen = _chosen(batch, p, generator)
    gains = _uniform((batch, bands, 1, 1), 1 - gain, 1 + gain, generator)
    offsets = _uniform((batch, bands, 1, 1), -offset, offset, generator)
    gains, offsets = gains.to(images.device, images.dtype), offsets.to(images.device, images.dtype)
    centred = images - _band_means(images)
    spread = torch.nan_to_num(centred.pow(2).nanmean(dim=(-2, -1), keepdim=True)).sqrt()
    return _select(chosen, images * gains + offsets * spread, images)


def band_dropout(
    images: Tensor, p: float = 0.2, generator: torch.Generator | None = None
) -> Tensor:
    """One random band per chosen sample set to its mean over the sample's valid pixels."""
    batch, bands = images.shape[:2]
    chosen = _chosen(batch, p, generator)
    band = torch.randint(0, bands, (batch,), generator=generator)
    dropped = torch.nn.functional.one_hot(band, bands).bool().view(batch, bands, 1, 1)
    flat = torch.where(dropped.to(images.device), _band_means(images), images)
    return _select(chosen, flat, images)


# ------------------------------------------------------------------------------------ CutMix


def cutmix_boxes(
    batch: int,
    height: int,
    width: int,
    p: float = 0.5,
    generator: torch.Generator | None = None,
    area: tuple[float, float] = (0.02, 0.4),
    ratio: tuple[float, float] = (0.3, 1 / 0.3),
) -> tuple[Tensor, Tensor]:
    """UniMatch's CutMix boxes: ``(boxes (B, H, W) bool, partner (B,) long)``.

    With probability ``p`` a sample gets one box of area uniform in ``area`` (a fraction of the
    image) and aspect ratio (height / width) log-uniform in ``ratio``, placed uniformly inside the
    image; its pixels come from sample ``partner[i]``, the batch rolled by a random shift, so no
    sample is its own partner (a batch of one is left unchanged).
    """
    boxes = torch.zeros(batch, height, width, dtype=torch.bool)
    chosen = _chosen(batch, p, generator)
    areas = _uniform((batch,), area[0], area[1], generator) * height * width
    aspects = torch.exp(_uniform((batch,), math.log(ratio[0]), math.log(ratio[1]), generator))
    corners = torch.rand(batch, 2, generator=generator)
    shift = int(torch.randint(1, max(batch, 2), (), generator=generator))
    partner = torch.roll(torch.arange(batch), shift) if batch > 1 else torch.arange(batch)
    if batch < 2:
        return boxes, partner
    for i in torch.nonzero(chosen).flatten().tolist():
        h = min(height, max(1, round(math.sqrt(float(areas[i] * aspects[i])))))
        w = min(width, max(1, round(math.sqrt(float(areas[i] / aspects[i])))))
        top = int(corners[i, 0] * (height - h + 1))
        left = int(corners[i, 1] * (width - w + 1))
        boxes[i, top : top + h, left : left + w] = True
    return boxes, partner


def paste(tensor: Tensor, boxes: Tensor, partner: Tensor) -> Tensor:
    """``tensor`` (``(B, H, W)`` or ``(B, C, H, W)``) with each sample's box taken from its
    partner."""
    if tensor.shape[0] != boxes.shape[0] or tuple(tensor.shape[-2:]) != tuple(boxes.shape[-2:]):
        raise ValueError(
            f"cannot paste {tuple(boxes.shape)} boxes into a map of shape {tuple(tensor.shape)}"
        )
    mask = boxes.to(tensor.device)
    if tensor.ndim == 4:
        mask = mask[:, None]
    return torch.where(mask, tensor[partner.to(tensor.device)], tensor)


def cutmix(
    images: Tensor,
    *targets: Tensor,
    p: float = 0.5,
    generator: torch.Generator | None = None,
    area: tuple[float, float] = (0.02, 0.4),
    ratio: tuple[float, float] = (0.3, 1 / 0.3),
) -> tuple[Tensor, ...]:
    """``(images, *targets)`` with the same random boxes pasted from partner samples into each
    (see :func:`cutmix_boxes`); targets are label, pseudo-label or confidence maps ``(B, H, W)``
    or ``(B, K, H, W)`` on the images' grid."""
    batch, height, width = images.shape[0], *images.shape[-2:]
    boxes, partner = cutmix_boxes(batch, height, width, p, generator, area, ratio)
    return tuple(paste(t, boxes, partner) for t in (images, *targets))


# ------------------------------------------------------------------------------------ the view


@dataclass(frozen=True)
class StrongView:
    """The strong view's settings (``model.strong_view`` in a config).

    Defaults follow UniMatch/RS-MTDF where they exist (colour jitter 0.5 at p 0.8, grayscale
    p 0.2, blur σ 0.1-2 at p 0.5, CutMix p 0.5 with areas 2-40 %); the spectral shift and band
    dropout are geodistill's multispectral additions.
    """

    jitter_p: float = 0.8
    brightness: float = 0.5
    contrast: float = 0.5
    saturation: float = 0.5
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    spectral_p: float = 0.5
    gain: float = 0.1
    offset: float = 0.1
    band_dropout_p: float = 0.2
    cutmix_p: float = 0.5
    cutmix_area: tuple[float, float] = (0.02, 0.4)
    cutmix_ratio: tuple[float, float] = (0.3, 1 / 0.3)

    def __post_init__(self) -> None:
        for name in ("jitter_p", "grayscale_p", "blur_p", "spectral_p", "band_dropout_p",
                     "cutmix_p"):  # fmt: skip
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise GeodistillError(f"strong_view.{name} must be in [0, 1], got {value}")
        for name in ("brightness", "contrast", "saturation", "gain"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise GeodistillError(f"strong_view.{name} must be in [0, 1], got {value}")
        if self.offset < 0:
            raise GeodistillError(f"strong_view.offset must be >= 0, got {self.offset}")
        for name, low in (("blur_sigma", 0.0), ("cutmix_area", 0.0), ("cutmix_ratio", 0.0)):
            pair = tuple(float(v) for v in getattr(self, name))
            if len(pair) != 2 or not low < pair[0] <= pair[1]:
                raise GeodistillError(
                    f"strong_view.{name} must be two numbers 0 < low <= high, got {list(pair)}"
                )
            object.__setattr__(self, name, pair)
        if self.cutmix_area[1] > 1:
            raise GeodistillError(
                f"strong_view.cutmix_area is a fraction of the image, got {list(self.cutmix_area)}"
            )

    @classmethod
    def from_value(cls, value: StrongView | dict[str, Any] | None) -> StrongView:
        """A view from a view, a mapping (YAML, checkpoint hyper-parameters) or ``None``
        (the defaults)."""
        if value is None:
            return cls()
        if isinstance(value, StrongView):
            return value
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise GeodistillError(
                f"unknown strong_view option(s) {', '.join(unknown)}; known: {', '.join(known)}"
            )
        return cls(**value)

    def as_dict(self) -> dict[str, Any]:
        """Plain values for hyper-parameters and checkpoints."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def strong_view(
    images: Tensor, view: StrongView | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """The photometric and spectral part of the strong view (CutMix is applied separately, with
    the pseudo-labels): jitter, grayscale, blur, spectral shift, band dropout, in this order."""
    view = view or StrongView()
    x = color_jitter(
        images, view.brightness, view.contrast, view.saturation, view.jitter_p, generator
    )
    x = grayscale(x, view.grayscale_p, generator)
    x = gaussian_blur(x, view.blur_sigma, view.blur_p, generator)
    x = spectral_shift(x, view.gain, view.offset, view.spectral_p, generator)
    return band_dropout(x, view.band_dropout_p, generator)
