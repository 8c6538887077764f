"""ResNet-18/34 (He et al., "Deep Residual Learning for Image Recognition", arXiv:1512.03385) with a width multiplier."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from edgesplit.registry import register

from ._base import Backbone, ClassifierHead


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual shortcut (a 1x1 projection when the shape changes)."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
        act_layer: Callable[[], nn.Module] = lambda: nn.ReLU(inplace=True),
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride, 1, bias=False)
        self.bn1 = norm_layer(out_chs)
        self.act1 = act_layer()
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, 1, 1, bias=False)
        self.bn2 = norm_layer(out_chs)
        nn.init.zeros_(self.bn2.weight)  # each block starts as identity: trains faster from scratch
        if stride != 1 or in_chs != out_chs:
            self.downsample: nn.Module = nn.Sequential(
                nn.Conv2d(in_chs, out_chs, 1, stride, bias=False), norm_layer(out_chs)
            )
        else:
            self.downsample = nn.Identity()
        self.act2 = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.act2(x + shortcut)


def resnet_channels(width: float) -> list[int]:
    """Stage widths of a ResNet scaled by ``width`` (at least 8 channels each)."""
    return [max(8, int(round(c * width))) for c in (64, 128, 256, 512)]


def resnet_stem(in_chans: int, out_chs: int) -> nn.Sequential:
    """7x7/2 convolution, BatchNorm, ReLU, 3x3/2 max pool: stride 4."""
    return nn.Sequential(
        nn.Conv2d(in_chans, out_chs, 7, 2, 3, bias=False),
        nn.BatchNorm2d(out_chs),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
    )


def build_resnet_body(net: nn.Module, layers: Sequence[int], chs: Sequence[int],
                      block: Callable[[int, int, int], nn.Module], in_chans: int, num_classes: int,
                      drop_rate: float) -> None:
    """Give ``net`` a ResNet's named parts: ``stem``, ``stage1``..``stage4`` of ``block(in_chs, out_chs, stride)``
    (stride 2 at the first block of stages 2-4), ``head``, ``stage_channels`` / ``stage_strides``, and He-normal
    convolution weights. Shared by the float ResNet and the binary (Bi-Real) one, so their layouts and parameter
    names match and a float checkpoint initializes a binary student."""
    net.stem = resnet_stem(in_chans, chs[0])
    in_chs = chs[0]
    for i, (n, c) in enumerate(zip(layers, chs)):
        blocks = [block(in_chs if j == 0 else c, c, 1 if i == 0 or j > 0 else 2) for j in range(int(n))]
        setattr(net, f"stage{i + 1}", nn.Sequential(*blocks))
        in_chs = c
    net.head = ClassifierHead(chs[3], num_classes, drop_rate)
    net.stage_channels = {"stem": chs[0], "stage1": chs[0], "stage2": chs[1], "stage3": chs[2], "stage4": chs[3]}
    net.stage_strides = {"stem": 4, "stage1": 4, "stage2": 8, "stage3": 16, "stage4": 32}
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class ResNet(Backbone):
    """ResNet with named stages; ``width`` scales every stage's channels."""

    def __init__(
        self,
        layers: tuple[int, int, int, int],
        num_classes: int = 1000,
        width: float = 1.0,
        in_chans: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        build_resnet_body(self, layers, resnet_channels(width), BasicBlock, in_chans, num_classes, drop_rate)


@register("backbone", "resnet18")
def resnet18(num_classes: int = 1000, width: float = 1.0, drop_rate: float = 0.0) -> ResNet:
    return ResNet((2, 2, 2, 2), num_classes=num_classes, width=width, drop_rate=drop_rate)


@register("backbone", "resnet34")
def resnet34(num_classes: int = 1000, width: float = 1.0, drop_rate: float = 0.0) -> ResNet:
    return ResNet((3, 4, 6, 3), num_classes=num_classes, width=width, drop_rate=drop_rate)
