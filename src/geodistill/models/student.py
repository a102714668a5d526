"""Student networks: segmentation-models-pytorch architectures behind one small interface.

Distillation needs more than logits: :meth:`SegmentationModel.forward_features` exposes the
multi-level encoder features and the decoder output that the distillation losses tap. A student
may carry a :class:`~geodistill.models.modulation.FeatureModulation` (KTDA's FMM) between its
encoder and decoder, and a :class:`~geodistill.models.fusion.FeatureFusion` (RS-MTDF's translated
features mixed into the deepest decoder input); both are part of the network, saved and exported
with it.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import torch
from huggingface_hub import hf_hub_url
from huggingface_hub.errors import LocalEntryNotFoundError
from torch import Tensor, nn

from geodistill.errors import GeodistillError
from geodistill.models.fusion import FeatureFusion, FusionConfig
from geodistill.models.modulation import FeatureModulation, ModulationConfig
from geodistill.models.normalizer import BandNormalizer
from geodistill.models.pretrained import (
    downloads_allowed,
    hf_cache_folder,
    hub_offline,
    not_cached,
    torchgeo_weights,
    torchgeo_weights_file,
)
from geodistill.models.safe_load import read_weights_file

ARCHITECTURES = ("unet", "unetplusplus", "fpn", "deeplabv3plus", "upernet", "segformer", "pspnet")
"""smp architectures accepted by name; any other name smp knows works too."""

NETWORK_WEIGHTS = ("imagenet", "ssl", "swsl", "instagram", "advprop", "noisy-student")
"""Encoder weight names that smp loads from the Hugging Face hub cache (downloading them there
only with ``--allow-download``): used only when a user asks for them explicitly."""

TORCHGEO_WEIGHTS = re.compile(r"^\w+_Weights\.\w+$")
"""What a torchgeo weights name looks like (``ResNet18_Weights.SENTINEL2_ALL_MOCO``)."""


@dataclass
class SegmentationOutput:
    """What a forward pass exposes to losses: encoder pyramid, decoder output and logits, and the
    fusion's translations of the deepest encoder level (one per teacher; empty without fusion)."""

    features: list[Tensor]
    decoder: Tensor
    logits: Tensor
    translated: list[Tensor] = field(default_factory=list)


def select_levels(output: SegmentationOutput, levels: list[str]) -> list[Tensor]:
    """Feature maps named ``encoder.<i>`` (encoder stage, negative from the deepest) or
    ``decoder``."""
    maps = []
    for level in levels:
        if level == "decoder":
            maps.append(output.decoder)
        elif level.startswith("encoder."):
            try:
                maps.append(output.features[int(level.split(".", 1)[1])])
            except (ValueError, IndexError):
                raise GeodistillError(
                    f"unknown feature level {level!r}: the encoder has {len(output.features)} "
                    "levels (use 'encoder.<index>', e.g. encoder.-1)"
                ) from None
        else:
            raise GeodistillError(
                f"unknown feature level {level!r}: use 'decoder' or 'encoder.<index>'"
            )
    return maps


class SegmentationModel(nn.Module):
    """Band normaliser + smp encoder/(feature modulation)/decoder/head, for any number of bands.

    With ``modulation``, the encoder's features pass through a
    :class:`~geodistill.models.modulation.FeatureModulation` before the decoder; with ``fusion``,
    a :class:`~geodistill.models.fusion.FeatureFusion` mixes translations of the deepest encoder
    level into the decoder's deepest input.
    """

    def __init__(
        self,
        network: smp.base.SegmentationModel,
        num_bands: int,
        modulation: ModulationConfig | None = None,
        fusion: FusionConfig | None = None,
    ) -> None:
        super().__init__()
        self.normalizer = BandNormalizer(num_bands)
        self.network = network
        self.modulation = (
            None if modulation is None else FeatureModulation(self.encoder_channels, modulation)
        )
        self.fusion: FeatureFusion | None = None
        if fusion is not None:
            self.set_fusion(fusion)

    def set_fusion(self, config: FusionConfig) -> FeatureFusion:
        """Add (or replace) the fusion; tasks call this once the teachers' widths are known."""
        self.fusion = FeatureFusion(self.encoder_channels[-1], config)
        return self.fusion

    @property
    def encoder_channels(self) -> list[int]:
        return list(self.network.encoder.out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x).logits

    def decoder_levels(self, size: int = 64) -> list[int]:
        """Indices of the encoder levels the decoder reads (U-Net skips level 0, DeepLabV3+ reads
        two levels...), found by differentiating the logits of a probe tile w.r.t. each level."""
        was_training = self.training
        self.eval()
        parameter = next(self.parameters())
        probe = torch.zeros(1, self.normalizer.num_bands, size, size, device=parameter.device)
        with torch.enable_grad():
            features = [
                f.detach().requires_grad_() for f in self.network.encoder(self.normalizer(probe))
            ]
            logits = self.network.segmentation_head(self.network.decoder(features))
            grads = torch.autograd.grad(logits.sum(), features, allow_unused=True)
        self.train(was_training)
        return [i for i, grad in enumerate(grads) if grad is not None]

    def forward_features(self, x: Tensor) -> SegmentationOutput:
        """Encoder features *before* modulation (what distillation aligns with a teacher: the
        encoder learns the teacher's representation, the modulation stays free to adapt it for
        the task), the decoder output computed from the modulated (and fused) features, the
        logits, and the fusion's translations of the deepest encoder features."""
        features = self.network.encoder(self.normalizer(x))
        decoder_input = features if self.modulation is None else self.modulation(features)
        translated: list[Tensor] = []
        if self.fusion is not None:
            decoder_input = list(decoder_input)
            decoder_input[-1], translated = self.fusion(features[-1], decoder_input[-1])
        decoder = self.network.decoder(decoder_input)
        logits = self.network.segmentation_head(decoder)
        return SegmentationOutput(
            features=features, decoder=decoder, logits=logits, translated=translated
        )


def create_student(
    arch: str = "unet",
    encoder: str = "resnet18",
    in_channels: int = 3,
    num_classes: int = 2,
    weights: str | None = None,
    modulation: ModulationConfig | dict[str, Any] | None = None,
    fusion: FusionConfig | dict[str, Any] | None = None,
    **arch_kwargs: object,
) -> SegmentationModel:
    """Build a student in one line, like ``smp.create_model`` but multispectral and offline.

    ``weights`` is ``None`` (random init), a local file (smp model, encoder or Lightning checkpoint
    state dict, ``.pt``/``.pth``/``.ckpt``/``.safetensors``), an smp weight name such as
    ``"imagenet"`` or torchgeo encoder weights (``ResNet18_Weights.SENTINEL2_ALL_MOCO`` for a
    ``resnet18`` encoder on those 13 bands). Named weights load from the libraries' caches and
    are downloaded only with ``--allow-download`` (``GEODISTILL_ALLOW_DOWNLOAD=1``), so they are
    never a default. ``modulation`` (a
    :class:`~geodistill.models.modulation.ModulationConfig` or its mapping) adds feature
    modulation blocks between encoder and decoder, ``fusion`` (a
    :class:`~geodistill.models.fusion.FusionConfig` or its mapping) the translators and fusion of
    RS-MTDF; both may also arrive inside ``arch_kwargs``, which is how task checkpoints record
    them.
    """
    download = weights if weights in NETWORK_WEIGHTS else None
    if arch.lower() == "fpn" and "upsampling" not in arch_kwargs:
        # smp's FPN head upsamples by 4 whatever the depth; its finest level has stride
        # 2 ** (depth - 3), so a shallower encoder would give logits larger than the input.
        depth = int(arch_kwargs.get("encoder_depth", 5))  # type: ignore[call-overload]
        arch_kwargs["upsampling"] = 2 ** max(depth - 3, 0)
    allowed = downloads_allowed()
    try:
        with hub_offline(download is not None and not allowed):  # cached weights only
            network = smp.create_model(
                arch,
                encoder_name=encoder,
                encoder_weights=download,
                in_channels=in_channels,
                classes=num_classes,
                **arch_kwargs,
            )
    except (KeyError, ValueError, TypeError) as err:
        raise GeodistillError(
            f"cannot build model arch={arch!r} encoder={encoder!r}: {err}"
        ) from err
    except LocalEntryNotFoundError as err:  # not cached (or, when allowed, not reachable)
        raise _smp_weights_missing(encoder, str(download), allowed, err) from err
    model = SegmentationModel(
        network,
        in_channels,
        ModulationConfig.from_value(modulation),
        FusionConfig.from_value(fusion),
    )
    if weights is not None and download is None:
        if TORCHGEO_WEIGHTS.match(weights) and not Path(weights).exists():
            weights = str(_torchgeo_encoder_file(weights, in_channels, allowed))
        load_local_weights(model, weights)
    return model


def _smp_weights_missing(
    encoder: str, weights: str, allowed: bool, error: Exception
) -> GeodistillError:
    """The one line for smp encoder weights that are not in the Hugging Face hub cache."""
    what = f"student weights {weights!r} of encoder {encoder!r}"
    repo_id, revision = None, None
    if encoder.startswith("tu-"):
        from timm.models import get_pretrained_cfg

        try:
            config = get_pretrained_cfg(encoder[3:])
        except RuntimeError:  # an unknown tag: timm's own error follows below
            config = None
        if config is not None and config.hf_hub_id:
            repo_id, _, revision = config.hf_hub_id.partition("@")
    else:
        settings = smp.encoders.encoders.get(encoder, {}).get("pretrained_settings", {})
        repo_id = settings.get(weights, {}).get("repo_id")
        revision = settings.get(weights, {}).get("revision")
    if allowed or repo_id is None:
        text = " ".join(str(error).split())[:300]
        return GeodistillError(f"cannot download {what}: {text}")
    url = hf_hub_url(repo_id, "model.safetensors", revision=revision or None)
    return not_cached(
        what, hf_cache_folder(repo_id), f"download {url} yourself and give the file as weights"
    )


def _torchgeo_encoder_file(name: str, in_channels: int, allowed: bool) -> Path:
    """The cached file of torchgeo weights for a student encoder; their first layer takes the
    weights' own bands, so the student must be given exactly those, in that order."""
    weights = torchgeo_weights(name)
    bands = weights.meta.get("bands")
    chans = int(weights.meta.get("in_chans") or (len(bands) if bands else in_channels))
    if chans != in_channels:
        listed = f" ({', '.join(bands)})" if bands else ""
        raise GeodistillError(
            f"student weights {name} take {chans} bands{listed}, the student has {in_channels}: "
            "select those bands, in that order, with data.bands"
        )
    return torchgeo_weights_file(weights, allowed, "student weights", opt_in="")


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """The state dict of a local weights file, read weights-only (a pickle never runs code)."""
    state = read_weights_file(path)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise GeodistillError("weights file holds no state dict", path)
    return state


def load_local_weights(model: SegmentationModel, path: str | Path) -> None:
    """Load weights for the whole model or only its encoder from a local file.

    Keys are matched after stripping a file prefix (``model.``, ``student.``: a Lightning
    checkpoint) against, in turn, the whole model, the smp network (``encoder.``/``decoder.``/
    ``segmentation_head.``) and the encoder alone (bare keys, or under ``encoder.`` or
    ``network.encoder.``), so the most complete match wins; a timm-universal (``tu-``) encoder's
    timm network also takes a plain timm state dict (timm and torchgeo weights). An RGB first
    convolution is expanded to the model's band count by cycling its filters and scaling by 3/N,
    which keeps the activation scale (the rule smp uses for pretrained encoders).
    """
    path = Path(path)
    state = _read_state_dict(path)
    targets: list[tuple[nn.Module, tuple[str, ...]]] = [
        (model, ("",)),
        (model.network, ("", "network.")),
        (model.network.encoder, ("", "encoder.", "network.encoder.")),
    ]
    timm_network = getattr(model.network.encoder, "model", None)
    if isinstance(timm_network, nn.Module):
        targets.append((timm_network, ("",)))
    for prefix in ("model.", "student.", ""):
        for target, mounts in targets:
            own = target.state_dict()
            for mount in mounts:
                start = prefix + mount
                candidate = {k[len(start) :]: v for k, v in state.items() if k.startswith(start)}
                matched = {k: v for k, v in candidate.items() if k in own}
                if len(matched) >= 0.9 * len(own) and matched:
                    _adapt_first_conv(matched, own, path)
                    target.load_state_dict(matched, strict=False)
                    return
    raise GeodistillError(
        "no model or encoder weights in this file match the network (wrong architecture?)", path
    )


def _adapt_first_conv(state: dict[str, Tensor], own: dict[str, Tensor], path: Path) -> None:
    for key, value in state.items():
        want = own[key].shape
        if value.shape == want:
            continue
        is_first_conv = (
            value.ndim == 4 and value.shape[0] == want[0] and value.shape[2:] == want[2:]
        )
        if not is_first_conv:
            raise GeodistillError(
                f"weight {key} has shape {tuple(value.shape)}, the network needs {tuple(want)}",
                path,
            )
        bands, file_bands = want[1], value.shape[1]
        repeats = -(-bands // file_bands)
        state[key] = value.repeat(1, repeats, 1, 1)[:, :bands] * (file_bands / bands)
        warnings.warn(
            f"{path}: expanded {key} from {file_bands} to {bands} input bands", stacklevel=3
        )
