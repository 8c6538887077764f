"""A trained ``BinaryResNet`` in eval mode as plain numpy arrays (``edgesplit.binary_net.LoweredNet``), BatchNorm
folded: what the exporter's OpenVINO and ONNX graph builders emit, so both compute the same function as the torch
model."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgesplit.binary_net import BinaryUnit, Block, LoweredNet, RealConv, RPReLU
from edgesplit.errors import ExportError

from .binary import BinaryConv2d, BinaryResNet, BiRealBlock
from .binary import RPReLU as TorchRPReLU  # the runtime's RPReLU (arrays) keeps the plain name here

# the dataclasses live in the torch-free core (the exporter writes them, the runtime reads them); re-exported
__all__ = ["RealConv", "BinaryUnit", "RPReLU", "Block", "LoweredNet", "lower"]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().float().numpy().copy()


def _bn(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def _real(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> RealConv:
    scale, shift = _bn(bn)
    bias = shift if conv.bias is None else shift + conv.bias * scale
    return RealConv(_np(conv.weight * scale.view(-1, 1, 1, 1)), _np(bias), int(conv.stride[0]), int(conv.padding[0]))


def _unit(conv: BinaryConv2d, bn: nn.BatchNorm2d) -> BinaryUnit:
    if conv.groups != 1 or conv.dilation != (1, 1) or conv.stride[0] != conv.stride[1] or \
            conv.padding[0] != conv.padding[1]:  # type: ignore[index]
        raise ExportError(f"binary layer {conv}: only square, ungrouped, undilated convolutions are exported")
    scale, shift = _bn(bn)
    return BinaryUnit(_np(conv.threshold), _np(conv.binary_weight()), _np(conv.channel_scale()), _np(scale),
                      _np(shift), int(conv.stride[0]), int(conv.padding[0]))  # type: ignore[index]


def _act(module: nn.Module) -> RPReLU | None:
    if isinstance(module, nn.Identity):
        return None
    if isinstance(module, TorchRPReLU):
        return RPReLU(_np(module.shift_in), _np(module.slope), _np(module.shift_out))
    raise ExportError(f"the 1-bit exporters take an identity or RPReLU after a residual addition, found "
                      f"{type(module).__name__}")


@torch.no_grad()
def lower(model: nn.Module) -> LoweredNet:
    """Arrays of a ``BinaryResNet`` read in eval mode (its mode is restored); any other model is an ``ExportError``."""
    was = model.training
    model.eval()
    try:
        return _lower(model)
    finally:
        model.train(was)


def _lower(model: nn.Module) -> LoweredNet:
    if not isinstance(model, BinaryResNet):
        raise ExportError(f"the 1-bit exporters take a BinaryResNet (student 'binary'), got {type(model).__name__}")
    stem_conv, stem_bn, _, pool = model.stem
    if not (isinstance(pool, nn.MaxPool2d) and pool.kernel_size == 3 and pool.stride == 2 and pool.padding == 1):
        raise ExportError("the binary student's stem must end in a 3x3/2 max pool with padding 1")
    blocks = []
    for stage in (model.stage1, model.stage2, model.stage3, model.stage4):
        for block in stage:
            if not isinstance(block, BiRealBlock):
                raise ExportError(f"the 1-bit exporters take Bi-Real blocks, found {type(block).__name__}")
            down = None
            pool_k = 1
            if isinstance(block.downsample, nn.Sequential):
                down = _real(block.downsample[0], block.downsample[1])
                pool_k = int(block.pool.kernel_size) if isinstance(block.pool, nn.AvgPool2d) else 1
            blocks.append(Block(_unit(block.conv1, block.bn1), _unit(block.conv2, block.bn2), pool_k, down,
                                _act(block.act1), _act(block.act2)))
    fc = model.head.fc
    return LoweredNet(_real(stem_conv, stem_bn), blocks, _np(fc.weight), _np(fc.bias))
