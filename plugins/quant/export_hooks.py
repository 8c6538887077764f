"""What the exporter needs from quantized and binary students, registered as kind ``exporter`` components (the
exporter builds them with ``create("exporter", name)`` and imports nothing of this plugin)."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import nn

from edgesplit.binary_net import LoweredNet
from edgesplit.registry import register

from ._lowering import lower
from .binary import binary_layers
from .qdq import INT8_RANGES, fake_quant

__all__ = ["BinaryExportHook", "QdqExportHook", "PublishHook"]


class BinaryExportHook:
    """Binary (1-bit) students: how many binary layers a model has, and its lowered numpy form
    (``edgesplit.binary_net.LoweredNet``) that every binary artifact is written from."""

    def layer_count(self, model: nn.Module) -> int:
        return len(binary_layers(model))

    def lower(self, model: nn.Module) -> LoweredNet:
        return lower(model)


def _onnx_fake_quant(x: Any, scale: Any, axis: int, qmin: int, qmax: int) -> Any:
    """``edgesplit::fake_quant`` in ONNX: QuantizeLinear + DequantizeLinear with the op's scale, zero point 0."""
    import onnx
    from onnxscript import opset18 as op

    to = onnx.TensorProto.UINT8 if qmin == 0 else onnx.TensorProto.INT8
    zero = op.Cast(op.Mul(scale, 0.0), to=to)
    q = op.QuantizeLinear(x, scale, zero, axis=axis)
    return op.DequantizeLinear(q, scale, zero, axis=axis)


class QdqExportHook:
    """QAT students' own quantizers: the ``fake_quant`` op their ``export_module()`` uses and its ONNX translation
    (a custom translation table for ``torch.onnx.export``)."""

    fake_quant = staticmethod(fake_quant)
    int8_ranges = INT8_RANGES

    def onnx_translations(self) -> Mapping[Any, Callable[..., Any]]:
        return {torch.ops.edgesplit.fake_quant.default: _onnx_fake_quant}


class PublishHook:
    """What ``edgesplit publish`` asks of a trained model: its multiply-accumulates, and whether its weights must
    stay float32 (binary and QAT students)."""

    def macs(self, model: nn.Module, size: int) -> int:
        from edgesplit.plugins.backbones import count_macs

        return int(count_macs(model, torch.zeros(1, 3, size, size)))

    def keeps_float32(self, model: nn.Module, info: Mapping[str, Any]) -> bool:
        # Binary students store their 1-bit layers packed; the few float tensors left (stem, shortcuts, BatchNorm,
        # thresholds, classifier: ~3% of the parameters) stay float32, since fp16 thresholds flip activations'
        # signs (measured: -0.8 points for the STE student in fp16). QAT students stay float32 too: fp16 latent
        # weights and step sizes move weights across rounding boundaries of the learned grid (measured: INT4
        # 80.15% -> 79.30%).
        return bool(binary_layers(model)) or info["model"].get("name") == "qat"


@register("exporter", "binary")
def binary_export_hook() -> BinaryExportHook:
    return BinaryExportHook()


@register("exporter", "qdq")
def qdq_export_hook() -> QdqExportHook:
    return QdqExportHook()


@register("exporter", "publish")
def publish_hook() -> PublishHook:
    return PublishHook()
