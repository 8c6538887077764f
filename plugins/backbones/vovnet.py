"""VoVNet of One-Shot Aggregation modules (Lee et al., arXiv:1904.09730) with VoVNetV2's effective
squeeze-excitation and identity residual (Lee and Park, "CenterMask", arXiv:1911.06667).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from edgesplit.errors import ConfigError
from edgesplit.registry import register

from ._base import STAGES, Backbone, ClassifierHead, ConvNormAct, make_divisible

__all__ = ["ConvNormAct", "SeparableConvNormAct", "EffectiveSE", "OsaBlock", "OsaStage", "VoVNet", "VoVNetArch"]

NormLayer = Callable[[int], nn.Module]
ActLayer = Callable[[], nn.Module]


def _relu() -> nn.Module:
    return nn.ReLU(inplace=True)


class SeparableConvNormAct(nn.Module):
    """Depthwise 3x3 ``conv_dw`` then pointwise ``conv_pw``, one normalization and activation (the slim layers)."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        norm_layer: NormLayer = nn.BatchNorm2d,
        act_layer: ActLayer = _relu,
    ) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(in_chs, in_chs, kernel_size, stride, kernel_size // 2, groups=in_chs, bias=False)
        self.conv_pw = nn.Conv2d(in_chs, out_chs, 1, bias=False)
        self.bn = norm_layer(out_chs)
        self.act = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv_pw(self.conv_dw(x))))


class EffectiveSE(nn.Module):
    """Effective squeeze-excitation (eSE): channel gates from one 1x1 conv on the pooled features, hard sigmoid."""

    def __init__(self, chs: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(chs, chs, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc(x.mean((2, 3), keepdim=True)))


class OsaBlock(nn.Module):
    """One-Shot Aggregation: a chain of 3x3 layers whose outputs, with the input, are concatenated once and
    aggregated by a 1x1 ``conv_concat``; then optional eSE (``attn``) and the identity residual of VoVNetV2."""

    def __init__(
        self,
        in_chs: int,
        mid_chs: int,
        out_chs: int,
        layer_per_block: int,
        residual: bool = False,
        depthwise: bool = False,
        ese: bool = False,
        norm_layer: NormLayer = nn.BatchNorm2d,
        act_layer: ActLayer = _relu,
    ) -> None:
        super().__init__()
        if residual and in_chs != out_chs:
            raise ConfigError(f"an OSA block with a residual needs in_chs == out_chs, got {in_chs} and {out_chs}")
        self.residual = residual
        kw = dict(norm_layer=norm_layer, act_layer=act_layer)
        # depthwise layers cannot change the width, so a 1x1 conv first brings the input to mid_chs
        self.conv_reduction: nn.Module = (
            ConvNormAct(in_chs, mid_chs, 1, **kw) if depthwise and in_chs != mid_chs else nn.Identity()
        )
        layers: list[nn.Module] = []
        next_in = in_chs
        for _ in range(layer_per_block):
            if depthwise:
                layers.append(SeparableConvNormAct(mid_chs, mid_chs, 3, **kw))
            else:
                layers.append(ConvNormAct(next_in, mid_chs, 3, **kw))
            next_in = mid_chs
        self.conv_mid = nn.ModuleList(layers)
        self.conv_concat = ConvNormAct(in_chs + layer_per_block * mid_chs, out_chs, 1, **kw)
        self.attn: nn.Module = EffectiveSE(out_chs) if ese else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        y = self.conv_reduction(x)
        for layer in self.conv_mid:
            y = layer(y)
            features.append(y)
        y = self.attn(self.conv_concat(torch.cat(features, dim=1)))
        return y + x if self.residual else y


class OsaStage(nn.Module):
    """An optional 3x3/2 max pool and ``num_blocks`` OSA blocks; residuals on every block but the first, eSE on
    the last (as in VoVNetV2)."""

    def __init__(
        self,
        in_chs: int,
        mid_chs: int,
        out_chs: int,
        num_blocks: int,
        layer_per_block: int,
        downsample: bool = True,
        residual: bool = True,
        depthwise: bool = False,
        ese: bool = True,
        norm_layer: NormLayer = nn.BatchNorm2d,
        act_layer: ActLayer = _relu,
    ) -> None:
        super().__init__()
        # padding=1 instead of the reference ceil_mode=True: the same output size on even inputs (exact
        # stride 2), ceil_mode stays False for exporters and runtimes that handle it poorly
        self.pool: nn.Module = nn.MaxPool2d(3, 2, padding=1, ceil_mode=False) if downsample else nn.Identity()
        blocks = []
        for i in range(num_blocks):
            blocks.append(
                OsaBlock(
                    in_chs if i == 0 else out_chs,
                    mid_chs,
                    out_chs,
                    layer_per_block,
                    residual=residual and i > 0,
                    depthwise=depthwise,
                    ese=ese and i == num_blocks - 1,
                    norm_layer=norm_layer,
                    act_layer=act_layer,
                )
            )
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.pool(x))


@dataclass(frozen=True)
class VoVNetArch:
    """A VoVNet as data: stem widths, per-stage layer widths (``stage_conv_chs``), outputs and block counts."""

    stem_chs: tuple[int, int, int]
    stage_conv_chs: tuple[int, int, int, int]
    stage_out_chs: tuple[int, int, int, int]
    block_per_stage: tuple[int, int, int, int]
    layer_per_block: int
    residual: bool = True
    depthwise: bool = False
    ese: bool = True


_VOVNET_ARCHS: dict[str, VoVNetArch] = {
    # VoVNetV2-19-slim-DW of CenterMask-Lite: depthwise layers and narrow stages, for devices
    "vovnet19_slim": VoVNetArch(
        stem_chs=(64, 64, 64),
        stage_conv_chs=(64, 80, 96, 112),
        stage_out_chs=(112, 256, 384, 512),
        block_per_stage=(1, 1, 1, 1),
        layer_per_block=3,
        depthwise=True,
    ),
    "vovnet19": VoVNetArch(
        stem_chs=(64, 64, 128),
        stage_conv_chs=(128, 160, 192, 224),
        stage_out_chs=(256, 512, 768, 1024),
        block_per_stage=(1, 1, 1, 1),
        layer_per_block=3,
    ),
    "vovnet39": VoVNetArch(
        stem_chs=(64, 64, 128),
        stage_conv_chs=(128, 160, 192, 224),
        stage_out_chs=(256, 512, 768, 1024),
        block_per_stage=(1, 1, 2, 2),
        layer_per_block=5,
    ),
}


class VoVNet(Backbone):
    """VoVNet with named stages: a three-conv ``stem`` to stride 4, then four OSA stages to stride 4, 8, 16, 32."""

    def __init__(
        self,
        arch: VoVNetArch,
        num_classes: int = 1000,
        width: float = 1.0,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        norm_layer: NormLayer = nn.BatchNorm2d,
        act_layer: ActLayer = _relu,
    ) -> None:
        super().__init__()
        if width <= 0:
            raise ConfigError(f"VoVNet width must be a positive multiplier such as 0.5 or 1.0, got {width!r}")

        def scale(chs: tuple[int, ...]) -> list[int]:
            return [make_divisible(c * width) for c in chs]

        stem_chs, conv_chs, out_chs = scale(arch.stem_chs), scale(arch.stage_conv_chs), scale(arch.stage_out_chs)
        kw = dict(norm_layer=norm_layer, act_layer=act_layer)
        stem_conv = SeparableConvNormAct if arch.depthwise else ConvNormAct
        self.stem = nn.Sequential(
            ConvNormAct(in_chans, stem_chs[0], 3, 2, **kw),
            stem_conv(stem_chs[0], stem_chs[1], 3, 1, **kw),
            stem_conv(stem_chs[1], stem_chs[2], 3, 2, **kw),
        )
        in_chs = stem_chs[2]
        for i in range(4):
            stage = OsaStage(
                in_chs,
                conv_chs[i],
                out_chs[i],
                arch.block_per_stage[i],
                arch.layer_per_block,
                downsample=i > 0,
                residual=arch.residual,
                depthwise=arch.depthwise,
                ese=arch.ese,
                **kw,
            )
            setattr(self, f"stage{i + 1}", stage)
            in_chs = out_chs[i]
        self.head = ClassifierHead(out_chs[3], num_classes, drop_rate)
        self.num_features = out_chs[3]
        self.stage_channels = dict(zip(STAGES[:-1], [stem_chs[2], *out_chs]))
        self.stage_strides = {"stem": 4, "stage1": 4, "stage2": 8, "stage3": 16, "stage4": 32}
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)


def _gen_vovnet(variant: str, num_classes: int = 1000, drop_rate: float = 0.0, width: float = 1.0) -> VoVNet:
    """The VoVNet named ``variant`` in the architecture table, at channel multiplier ``width``."""
    return VoVNet(_VOVNET_ARCHS[variant], num_classes=num_classes, width=width, drop_rate=drop_rate)


@register("backbone", "vovnet19_slim")
def vovnet19_slim(num_classes: int = 1000, drop_rate: float = 0.0, width: float | None = None) -> VoVNet:
    return _gen_vovnet("vovnet19_slim", num_classes, drop_rate, 1.0 if width is None else width)


@register("backbone", "vovnet19")
def vovnet19(num_classes: int = 1000, drop_rate: float = 0.0, width: float | None = None) -> VoVNet:
    return _gen_vovnet("vovnet19", num_classes, drop_rate, 1.0 if width is None else width)


@register("backbone", "vovnet39")
def vovnet39(num_classes: int = 1000, drop_rate: float = 0.0, width: float | None = None) -> VoVNet:
    return _gen_vovnet("vovnet39", num_classes, drop_rate, 1.0 if width is None else width)
