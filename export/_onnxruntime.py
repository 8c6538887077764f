"""ONNX Runtime at export time: INT8 post-training quantization (QDQ). Parity runs through the runtime's own
session (``edgesplit.runtime.backends``), the code a device runs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from edgesplit.errors import BackendUnavailable, ExportError

__all__ = ["quantize_qdq", "QUANTIZED_OPS"]

log = logging.getLogger(__name__)

# Only weighted ops get int8: their Q/DQ pairs are what TensorRT and ORT fuse into int8 kernels; element-wise ops
# stay float, which also keeps the encoder's and decoder's exact ends out of reach.
QUANTIZED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendUnavailable(f"onnxruntime is not installed; pip install edgesplit[export] ({exc})") from exc
    return ort


class _DropAdvice(logging.Filter):
    """onnxruntime's quantizer logs on the root logger: its per-tensor INFO lines and its advice to pre-process."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING and "pre-processing" not in record.getMessage()


def quantize_qdq(fp32_path: Path, out_path: Path, input_name: str, batches: Sequence[np.ndarray],
                 exclude: Sequence[str], *, symmetric: bool = False) -> None:
    """Static INT8 quantization of ``fp32_path`` into QDQ format: per-channel symmetric int8 weights, float biases,
    MinMax calibration on ``batches``; nodes in ``exclude`` stay float. Activations: uint8 with zero points
    (onnxruntime's fastest CPU kernels, U8S8), or with ``symmetric`` int8 with zero points 0 (what TensorRT
    requires)."""
    _ort()
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Iterator[np.ndarray] = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._it, None)
            return None if batch is None else {input_name: batch}

    root = logging.getLogger()
    advice = _DropAdvice()
    root.addFilter(advice)  # onnxruntime logs "please consider pre-processing" on the root logger, every time
    try:
        quantize_static(
            str(fp32_path), str(out_path), _Reader(), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True, reduce_range=False,
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=list(exclude),
            calibrate_method=CalibrationMethod.MinMax, use_external_data_format=False,
            # biases stay float: TensorRT dequantizes only int8/fp8/int4 tensors, not int32 biases
            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True, "QuantizeBias": False},
        )
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"{fp32_path.name}: onnxruntime INT8 quantization failed: "
                          f"{type(exc).__name__}: {exc}") from exc
    finally:
        root.removeFilter(advice)
