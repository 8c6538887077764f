"""Fake quantization as a torch custom op, ``edgesplit::fake_quant``, for students that carry their own (QAT)
scales: their ``export_module()`` uses it, and the exporter translates it to ONNX QuantizeLinear/DequantizeLinear
(``edgesplit.export.qdq``), so the exported graph keeps those scales as Q/DQ pairs.

``torch.fake_quantize_per_*_affine`` cannot be used for this: torch 2.13's ``torch.export`` has no fake kernel for
the op it decomposes into. A custom op with a fake kernel exports, and its ONNX translation is the exporter's.
"""

from __future__ import annotations

import torch

from edgesplit.errors import ConfigError

__all__ = ["fake_quant", "INT8_RANGES"]

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
        raise ConfigError(f"fake_quant exports only the ranges {INT8_RANGES}, got ({qmin}, {qmax})")
    scale = scale.to(torch.float32)
    if scale.numel() == 1:
        scale = scale.reshape(())  # a scalar scale is per-tensor Q/DQ in ONNX
    return torch.ops.edgesplit.fake_quant(x, scale, axis, qmin, qmax)
