"""Quantized (INT8/INT4 QAT) and binarized students, registered as kind ``student``.

``lower`` turns a trained binary student into the numpy arrays of ``edgesplit.binary_net``; the exporter builds its
OpenVINO 1-bit graph and its ONNX Q/DQ graph from them (``edgesplit.export.openvino_binary``, ``.onnx_binary``).
"""

from __future__ import annotations

from . import binary, export_hooks, qat  # noqa: F401  (register the binary and qat students, their export hooks)
from .binary import (
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
from ._lowering import lower
from .qat import LsqQuantizer, QConv2d, QLinear, quantize_model
from .storage import checkpoint_bytes, mac_report, storage_report

__all__ = [
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
    "lower",
    "mac_report",
    "pack_signs",
    "quantize_model",
    "register_estimator",
    "storage_report",
    "unpack_signs",
]


def __getattr__(name: str) -> object:
    if name == "ESTIMATORS":
        return getattr(binary, name)  # raises, naming registry kind 'estimator'
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
