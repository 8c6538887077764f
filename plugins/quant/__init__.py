"""Quantized (INT8/INT4 QAT) and binarized students, registered as kind ``student``.

The OpenVINO 1-bit graph builder (``openvino_binary``) and the ONNX Q/DQ exporter (``onnx_binary``) are imported
on use: they need the ``export`` extra.
"""

from __future__ import annotations

from . import binary, qat  # noqa: F401  (register the binary and qat students)
from .binary import (
    ESTIMATORS,
    BinaryConv2d,
    BinaryResNet,
    BiRealBlock,
    RPReLU,
    SignEstimator,
    binarize,
    create_estimator,
    pack_signs,
    register_estimator,
    unpack_signs,
)
from .qat import LsqQuantizer, QConv2d, QLinear, quantize_model
from .storage import checkpoint_bytes, mac_report, storage_report

__all__ = [
    "ESTIMATORS",
    "BinaryConv2d",
    "BinaryResNet",
    "BiRealBlock",
    "LsqQuantizer",
    "QConv2d",
    "QLinear",
    "RPReLU",
    "SignEstimator",
    "binarize",
    "checkpoint_bytes",
    "create_estimator",
    "mac_report",
    "pack_signs",
    "quantize_model",
    "register_estimator",
    "storage_report",
    "unpack_signs",
]
