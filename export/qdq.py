"""Fake quantization that exports as ONNX QuantizeLinear/DequantizeLinear, for students that carry their own
(QAT) scales: their ``export_module()`` uses these ops, and the exported graph keeps those scales as Q/DQ pairs.

``torch.fake_quantize_per_*_affine`` cannot be used for this: torch 2.13's ``torch.export`` has no fake kernel for
the op it decomposes into. These ops are plain torch custom ops with an ONNX translation of their own.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["fake_quant", "ONNX_TRANSLATIONS", "INT8_RANGES"]

# (qmin, qmax) that a Q/DQ pair can express: int8 (zero point 0) and uint8 (zero point 0). TensorRT takes int8 only.
INT8_RANGES = ((-128, 127), (0, 255))


@torch.library.custom_op("edgesplit::fake_quant", mutates_args=())
def _fake_quant(x: torch.Tensor, scale: torch.Tensor, axis: int, qmin: int, qmax: int) -> torch.Tensor:
    if scale.numel() == 1:
        s = scale.reshape(())
    else:
        shape = [1] * x.dim()
        shape[axis] = -1
        s = scale.reshape(shape)
    return torch.clamp(torch.round(x / s), qmin, qmax) * s


@_fake_quant.register_fake
def _(x: torch.Tensor, scale: torch.Tensor, axis: int, qmin: int, qmax: int) -> torch.Tensor:
    return torch.empty_like(x)


def fake_quant(x: torch.Tensor, scale: torch.Tensor, *, axis: int = 1, qmin: int = -128,
               qmax: int = 127) -> torch.Tensor:
    """``clamp(round(x / scale), qmin, qmax) * scale`` with zero point 0 (ties to even, like ONNX); ``scale`` has one
    element (per tensor) or one per index of ``axis`` (per channel). Exports as QuantizeLinear + DequantizeLinear."""
    if (qmin, qmax) not in INT8_RANGES:
        raise ValueError(f"fake_quant exports only the ranges {INT8_RANGES}, got ({qmin}, {qmax})")
    scale = scale.to(torch.float32)
    if scale.numel() == 1:
        scale = scale.reshape(())  # a scalar scale is per-tensor Q/DQ in ONNX
    return torch.ops.edgesplit.fake_quant(x, scale, axis, qmin, qmax)


def _onnx_fake_quant(x: Any, scale: Any, axis: int, qmin: int, qmax: int) -> Any:
    import onnx
    from onnxscript import opset18 as op

    to = onnx.TensorProto.UINT8 if qmin == 0 else onnx.TensorProto.INT8
    zero = op.Cast(op.Mul(scale, 0.0), to=to)
    q = op.QuantizeLinear(x, scale, zero, axis=axis)
    return op.DequantizeLinear(q, scale, zero, axis=axis)


ONNX_TRANSLATIONS: dict[Any, Any] = {torch.ops.edgesplit.fake_quant.default: _onnx_fake_quant}
