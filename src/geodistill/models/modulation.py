"""Feature modulation (KTDA's FMM): per-level transformer or MLP blocks between encoder and decoder.

A :class:`FeatureModulation` holds, for each chosen encoder level, a stack of ``depth`` residual
blocks over that level's feature map. It sits in the student's decoder path (encoder → FMM →
decoder) and is deployed with the student. Every block adds its output through a layer scale
initialised small, so a fresh module is nearly the identity and a pretrained encoder/decoder pair
keeps working while the blocks learn.

Transformer blocks use SegFormer-style efficient self-attention: keys and values are
average-pooled by a fixed reduction per level (1 at the deepest level, doubling per shallower
level), so a stride-4 map of a 512-pixel crop attends over 16×16 pooled cells instead of 128×128.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F
from timm.layers import LayerScale2d
from torch import Tensor, nn

from geodistill.errors import GeodistillError

ModulationKind = Literal["transformer", "mlp"]


@dataclass(frozen=True)
class ModulationConfig:
    """What a student's feature modulation looks like (``model.modulation`` in a config).

    Args:
        kind: ``transformer`` (efficient self-attention + Mix-FFN) or ``mlp`` (Mix-FFN only).
        depth: blocks per level.
        heads: attention heads; lowered to the largest divisor of a level's width.
        mlp_ratio: hidden width of the Mix-FFN, as a multiple of the level's width.
        levels: modulated encoder levels (``encoder.<i>``, negative from the deepest); ``None``
            takes the four deepest stages (KTDA's distilled levels), or all of a shallower
            encoder's stages.
        layer_scale: initial residual scale of every block; small, so the module starts near the
            identity (0 makes it exactly the identity).
    """

    kind: ModulationKind = "transformer"
    depth: int = 4
    heads: int = 8
    mlp_ratio: float = 4.0
    levels: list[str] | None = None
    layer_scale: float = 1e-5

    def __post_init__(self) -> None:
        if self.kind not in BLOCKS:
            raise GeodistillError(
                f"unknown modulation kind {self.kind!r}; known: {', '.join(BLOCKS)}"
            )
        for name in ("depth", "heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise GeodistillError(f"modulation.{name} must be an integer >= 1, got {value}")
        if not self.mlp_ratio > 0:
            raise GeodistillError(f"modulation.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.layer_scale < 0:
            raise GeodistillError(f"modulation.layer_scale must be >= 0, got {self.layer_scale}")
        if self.levels is not None:
            for level in self.levels:
                level_index(level)
            object.__setattr__(self, "levels", [str(level) for level in self.levels])

    @classmethod
    def from_value(cls, value: ModulationConfig | dict[str, Any] | None) -> ModulationConfig | None:
        """A config from a config, a mapping (YAML, checkpoint hyper-parameters) or ``None``."""
        if value is None or isinstance(value, ModulationConfig):
            return value
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise GeodistillError(
                f"unknown modulation option(s) {', '.join(unknown)}; known: {', '.join(known)}"
            )
        return cls(**value)

    def as_dict(self) -> dict[str, Any]:
        """Plain values for hyper-parameters and checkpoints."""
        return asdict(self)


DEFAULT_DEPTH = 4
"""Modulated levels when a config names none: this many of the deepest encoder stages."""


def level_index(level: str | int) -> int:
    """The encoder index of ``encoder.<i>`` (may be negative); anything else is refused."""
    text = str(level)
    prefix, _, index = text.partition(".")
    if prefix != "encoder" or not index.lstrip("-").isdigit():
        raise GeodistillError(
            f"cannot modulate level {text!r}: use encoder levels 'encoder.<index>' "
            "(e.g. encoder.-1, the deepest)"
        )
    return int(index)


def resolve_levels(levels: list[str], channels: list[int]) -> list[int]:
    """Non-negative encoder indices of ``levels``, refusing the input level and empty levels."""
    count = len(channels)
    indices = []
    for level in levels:
        index = level_index(level)
        if not -count <= index < count:
            raise GeodistillError(
                f"cannot modulate {level}: the encoder has {count} levels "
                f"(encoder.0 … encoder.{count - 1}, or encoder.-1 … encoder.-{count})"
            )
        index %= count
        if index == 0:
            raise GeodistillError(
                f"cannot modulate {level}: encoder level 0 is the normalised input image itself"
            )
        if channels[index] == 0:
            raise GeodistillError(f"cannot modulate {level}: this encoder level has no channels")
        if index in indices:
            raise GeodistillError(f"modulation level {level} is listed twice")
        indices.append(index)
    return sorted(indices)


def divisor_heads(width: int, heads: int) -> int:
    """The largest head count ``<= heads`` that divides ``width``."""
    return max(h for h in range(1, min(heads, width) + 1) if width % h == 0)


class ChannelLayerNorm(nn.Module):
    """Layer norm over the channels of a ``(B, C, H, W)`` map, computed in place along dim 1.

    timm's ``LayerNorm2d`` permutes to channels-last and back; torch.export then guards on the
    batch size, and an ONNX export from a one-tile sample loses its dynamic batch axis.
    """

    def __init__(self, width: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        centred = x - x.mean(1, keepdim=True)
        scale = torch.rsqrt(centred.pow(2).mean(1, keepdim=True) + self.eps)
        return centred * scale * self.weight[:, None, None] + self.bias[:, None, None]


class MixFFN(nn.Module):
    """SegFormer's Mix-FFN: 1×1 conv → depthwise 3×3 → GELU → 1×1 conv. The depthwise
    convolution gives the blocks positional information without position embeddings, so they run
    on any tile size."""

    def __init__(self, width: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = max(1, round(width * mlp_ratio))
        self.layers = nn.Sequential(
            nn.Conv2d(width, hidden, 1),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden),
            nn.GELU(),
            nn.Conv2d(hidden, width, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention over a ``(B, C, H, W)`` map with keys and values average-pooled
    by ``reduction`` (ceil mode: partial border cells average only what they cover)."""

    def __init__(self, width: int, heads: int, reduction: int) -> None:
        super().__init__()
        self.heads = divisor_heads(width, heads)
        self.reduction = reduction
        self.query = nn.Linear(width, width)
        self.key_value = nn.Linear(width, 2 * width)
        self.output = nn.Linear(width, width)

    def _pool(self, x: Tensor) -> Tensor:
        r = self.reduction
        if r == 1:
            return x
        # Pad to a multiple of r and divide by the covered fraction: exact border averages with
        # dynamic tile sizes (ONNX's ceil-mode pooling divides borders differently).
        pad = (0, -x.shape[-1] % r, 0, -x.shape[-2] % r)
        total = F.avg_pool2d(F.pad(x, pad), r, r)
        covered = F.avg_pool2d(F.pad(x.new_ones(1, 1, *x.shape[-2:]), pad), r, r)
        return total / covered

    def forward(self, x: Tensor) -> Tensor:
        batch, width, height, columns = x.shape
        heads = self.heads

        def split(tokens: Tensor) -> Tensor:  # (B, N, C) -> (B, heads, N, C / heads)
            return tokens.unflatten(-1, (heads, width // heads)).transpose(1, 2)

        query = split(self.query(x.flatten(2).transpose(1, 2)))
        key, value = self.key_value(self._pool(x).flatten(2).transpose(1, 2)).chunk(2, dim=-1)
        attended = F.scaled_dot_product_attention(query, split(key), split(value))
        tokens = self.output(attended.transpose(1, 2).flatten(2))
        return tokens.transpose(1, 2).reshape(batch, width, height, columns)


class TransformerBlock(nn.Module):
    """Pre-norm efficient self-attention and Mix-FFN, each added through a layer scale."""

    def __init__(self, width: int, config: ModulationConfig, reduction: int) -> None:
        super().__init__()
        self.attention_norm = ChannelLayerNorm(width)
        self.attention = EfficientSelfAttention(width, config.heads, reduction)
        self.attention_scale = LayerScale2d(width, config.layer_scale)
        self.ffn_norm = ChannelLayerNorm(width)
        self.ffn = MixFFN(width, config.mlp_ratio)
        self.ffn_scale = LayerScale2d(width, config.layer_scale)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention_scale(self.attention(self.attention_norm(x)))
        return x + self.ffn_scale(self.ffn(self.ffn_norm(x)))


class MLPBlock(nn.Module):
    """KTDA's MLP variant: a pre-norm Mix-FFN added through a layer scale, no attention."""

    def __init__(self, width: int, config: ModulationConfig, reduction: int) -> None:
        super().__init__()
        self.ffn_norm = ChannelLayerNorm(width)
        self.ffn = MixFFN(width, config.mlp_ratio)
        self.ffn_scale = LayerScale2d(width, config.layer_scale)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.ffn_scale(self.ffn(self.ffn_norm(x)))


BLOCKS: dict[str, Callable[[int, ModulationConfig, int], nn.Module]] = {
    "transformer": TransformerBlock,
    "mlp": MLPBlock,
}
"""Block kind -> constructor ``(width, config, reduction)``."""


class FeatureModulation(nn.Module):
    """A stack of ``config.depth`` blocks on each chosen level of an encoder pyramid.

    ``channels`` are the encoder's output widths, one per level (smp's ``out_channels``, level 0
    being the input). Unmodulated levels pass through untouched.
    """

    def __init__(self, channels: list[int], config: ModulationConfig) -> None:
        super().__init__()
        self.config = config
        if config.levels is None:
            stages = [i for i in range(1, len(channels)) if channels[i] > 0]
            self.indices = stages[-DEFAULT_DEPTH:]
        else:
            self.indices = resolve_levels(config.levels, list(channels))
        deepest = len(channels) - 1
        self.reductions = {index: 2 ** (deepest - index) for index in self.indices}
        block = BLOCKS[config.kind]
        self.stacks = nn.ModuleDict(
            {
                str(index): nn.Sequential(
                    *(
                        block(channels[index], config, self.reductions[index])
                        for _ in range(config.depth)
                    )
                )
                for index in self.indices
            }
        )

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        modulated = list(features)
        for key, stack in self.stacks.items():
            modulated[int(key)] = stack(modulated[int(key)])
        return modulated

    def extra_repr(self) -> str:
        reductions = ", ".join(f"{i}: {r}" for i, r in self.reductions.items())
        return f"kind={self.config.kind}, depth={self.config.depth}, reductions={{{reductions}}}"
