"""MobileNetV2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", arXiv:1801.04381).

Width variants ``mobilenetv2_100/075/050/035``; the architecture is the paper's Table 2, held as data.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch import nn

from edgesplit.errors import ConfigError
from edgesplit.registry import register

from ._base import STAGES, Backbone, ClassifierHead, ConvNormAct, make_divisible

__all__ = ["ConvNormAct", "InvertedResidual", "MobileNetV2"]

NormLayer = Callable[[int], nn.Module]
ActLayer = Callable[[], nn.Module]


def _relu6() -> nn.Module:
    return nn.ReLU6(inplace=True)


class InvertedResidual(nn.Module):
    """Expand (1x1 ``conv_pw``), filter (3x3 depthwise ``conv_dw``), project linearly (1x1 ``conv_pwl``).

    With ``exp_ratio == 1`` there is no expansion (``conv_pw`` is an identity). The input is added back when
    the block keeps the resolution and the channel count.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        exp_ratio: float = 6.0,
        norm_layer: NormLayer = nn.BatchNorm2d,
        act_layer: ActLayer = _relu6,
    ) -> None:
        super().__init__()
        mid_chs = make_divisible(in_chs * exp_ratio) if exp_ratio != 1 else in_chs
        self.has_skip = stride == 1 and in_chs == out_chs
        self.conv_pw: nn.Module = (
            ConvNormAct(in_chs, mid_chs, 1, norm_layer=norm_layer, act_layer=act_layer)
            if exp_ratio != 1
            else nn.Identity()
        )
        self.conv_dw = ConvNormAct(mid_chs, mid_chs, 3, stride, groups=mid_chs, norm_layer=norm_layer, act_layer=act_layer)
        # linear bottleneck: no activation after the projection (Sec. 3.2 of the paper)
        self.conv_pwl = ConvNormAct(mid_chs, out_chs, 1, norm_layer=norm_layer, act_layer=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_pwl(self.conv_dw(self.conv_pw(x)))
        return x + shortcut if self.has_skip else x


# (expansion t, output channels c, repeats n, stride s of the first repeat): Table 2 of the paper.
BlockRow = tuple[float, int, int, int]
_MOBILENETV2_ARCH: tuple[BlockRow, ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class MobileNetV2(Backbone):
    """MobileNetV2 with named stages: each block row joins the stage named by the stride it ends at.

    ``stem`` (stride 2) holds the first conv and the rows ending at stride 2; ``stage1`` .. ``stage4`` the rows
    ending at stride 4, 8, 16 and 32; ``stage4`` also holds the final 1x1 conv to ``num_features`` channels.
    """

    def __init__(
        self,
        arch: Sequence[BlockRow],
        num_classes: int = 1000,
        width: float = 1.0,
        stem_chs: int = 32,
        num_features: int = 1280,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        norm_layer: NormLayer = nn.BatchNorm2d,
        act_layer: ActLayer = _relu6,
    ) -> None:
        super().__init__()
        if width <= 0:
            raise ConfigError(f"MobileNetV2 width must be a positive multiplier such as 0.5 or 1.0, got {width!r}")
        stem_chs = make_divisible(stem_chs * width)
        # the last conv is not thinned below its full width: the paper's choice for small multipliers
        num_features = make_divisible(num_features * max(1.0, width))
        layers: dict[str, list[nn.Module]] = {name: [] for name in STAGES[:-1]}
        channels: dict[str, int] = {}
        strides: dict[str, int] = {}
        layers["stem"].append(ConvNormAct(in_chans, stem_chs, 3, 2, norm_layer=norm_layer, act_layer=act_layer))
        in_chs, stride = stem_chs, 2
        for exp_ratio, chs, repeats, first_stride in arch:
            out_chs = make_divisible(chs * width)
            stride *= first_stride
            stage = self._stage_at(stride)
            for i in range(repeats):
                block = InvertedResidual(
                    in_chs, out_chs, first_stride if i == 0 else 1, exp_ratio, norm_layer=norm_layer, act_layer=act_layer
                )
                layers[stage].append(block)
                in_chs = out_chs
            channels[stage], strides[stage] = out_chs, stride
        if stride != 32:
            raise ConfigError(f"MobileNetV2 block rows must reach stride 32 (stage4), they end at stride {stride}")
        layers["stage4"].append(ConvNormAct(in_chs, num_features, 1, norm_layer=norm_layer, act_layer=act_layer))
        channels["stage4"] = num_features
        missing = [name for name, mods in layers.items() if len(mods) == 0]
        if missing:
            raise ConfigError(f"MobileNetV2 block rows leave {', '.join(missing)} empty; every stride 2..32 needs a row")

        self.stem = nn.Sequential(*layers["stem"])
        self.stage1 = nn.Sequential(*layers["stage1"])
        self.stage2 = nn.Sequential(*layers["stage2"])
        self.stage3 = nn.Sequential(*layers["stage3"])
        self.stage4 = nn.Sequential(*layers["stage4"])
        self.head = ClassifierHead(num_features, num_classes, drop_rate)
        self.num_features = num_features
        self.stage_channels = {name: channels[name] for name in STAGES[:-1]}
        self.stage_strides = {name: strides[name] for name in STAGES[:-1]}
        self._init_weights()

    @staticmethod
    def _stage_at(stride: int) -> str:
        """The stage whose output has ``stride``: 2 -> stem, 4 -> stage1, ..., 32 -> stage4."""
        index = int(math.log2(stride)) - 1
        if 2 ** (index + 1) != stride or not 0 <= index < len(STAGES) - 1:
            raise ConfigError(f"MobileNetV2 block rows must end at stride 2, 4, 8, 16 or 32, not {stride}")
        return STAGES[index]

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)


def _gen_mobilenetv2(width: float, num_classes: int = 1000, drop_rate: float = 0.0, **kwargs: Any) -> MobileNetV2:
    """MobileNetV2 of the paper (stem 32 channels, 1280 features) at channel multiplier ``width``."""
    return MobileNetV2(_MOBILENETV2_ARCH, num_classes=num_classes, width=width, drop_rate=drop_rate, **kwargs)


@register("backbone", "mobilenetv2")
def mobilenetv2(num_classes: int = 1000, drop_rate: float = 0.0, width: float = 1.0) -> MobileNetV2:
    """MobileNetV2 at any channel multiplier ``width`` (the sized names below fix it)."""
    return _gen_mobilenetv2(width, num_classes, drop_rate)


def _sized(name: str, width: float, num_classes: int, drop_rate: float, asked: float | None) -> MobileNetV2:
    if asked is not None:
        raise ConfigError(f"backbone {name!r} is MobileNetV2 at width {width} and takes no width; for width {asked} "
                          f"use backbone 'mobilenetv2' with width: {asked}")
    return _gen_mobilenetv2(width, num_classes, drop_rate)


# ``width`` is accepted only to say which function takes it: a sized name never builds another size.
@register("backbone", "mobilenetv2_100")
def mobilenetv2_100(num_classes: int = 1000, drop_rate: float = 0.0, width: float | None = None) -> MobileNetV2:
    return _sized("mobilenetv2_100", 1.0, num_classes, drop_rate, width)


@register("backbone", "mobilenetv2_075")
def mobilenetv2_075(num_classes: int = 1000, drop_rate: float = 0.0, width: float | None = None) -> MobileNetV2:
    return _sized("mobilenetv2_075", 0.75, num_classes, drop_rate, width)


@register("backbone", "mobilenetv2_050")
def mobilenetv2_050(num_classes: int = 1000, drop_rate: float = 0.0, width: float | None = None) -> MobileNetV2:
    return _sized("mobilenetv2_050", 0.5, num_classes, drop_rate, width)


@register("backbone", "mobilenetv2_035")
def mobilenetv2_035(num_classes: int = 1000, drop_rate: float = 0.0, width: float | None = None) -> MobileNetV2:
    return _sized("mobilenetv2_035", 0.35, num_classes, drop_rate, width)
