"""The ONNX translation of ``edgesplit::fake_quant`` (``edgesplit.plugins.quant.qdq``): QuantizeLinear +
DequantizeLinear with the op's scale and a zero point of 0, so a QAT student's own scales survive export."""

from __future__ import annotations

from typing import Any

import torch

from edgesplit.plugins.quant.qdq import INT8_RANGES, fake_quant

__all__ = ["fake_quant", "ONNX_TRANSLATIONS", "INT8_RANGES"]


def _onnx_fake_quant(x: Any, scale: Any, axis: int, qmin: int, qmax: int) -> Any:
    import onnx
    from onnxscript import opset18 as op

    to = onnx.TensorProto.UINT8 if qmin == 0 else onnx.TensorProto.INT8
    zero = op.Cast(op.Mul(scale, 0.0), to=to)
    q = op.QuantizeLinear(x, scale, zero, axis=axis)
    return op.DequantizeLinear(q, scale, zero, axis=axis)


ONNX_TRANSLATIONS: dict[Any, Any] = {torch.ops.edgesplit.fake_quant.default: _onnx_fake_quant}
