"""The QAT students' own quantizers at export: ``fake_quant`` (``edgesplit::fake_quant``) and its ONNX translation
(QuantizeLinear + DequantizeLinear with the op's scale, zero point 0), from the quant plugin's ``qdq`` exporter hook,
so a QAT student's own scales survive export."""

from __future__ import annotations

from typing import Any

from edgesplit.registry import create

__all__ = ["fake_quant", "ONNX_TRANSLATIONS", "INT8_RANGES", "onnx_translations"]


def onnx_translations() -> dict[Any, Any]:
    """The custom translation table ``torch.onnx.export`` needs for the registered quantizer ops."""
    return dict(create("exporter", "qdq").onnx_translations())


def __getattr__(name: str) -> Any:
    if name == "fake_quant":
        return create("exporter", "qdq").fake_quant
    if name == "INT8_RANGES":
        return create("exporter", "qdq").int8_ranges
    if name == "ONNX_TRANSLATIONS":
        return onnx_translations()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
