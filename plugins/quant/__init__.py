"""Quantized (INT8/INT4 QAT) and binarized students, registered as kind ``student``.

``lower`` turns a trained binary student into the numpy arrays of ``edgesplit.binary_net``; the exporter builds its
OpenVINO 1-bit graph and its ONNX Q/DQ graph from them (``edgesplit.export.openvino_binary``, ``.onnx_binary``).
"""

from __future__ import annotations

from edgesplit.registry import requires

requires("torch", extra="train")  # without torch: listed as unavailable, with this hint

from . import binary, export_hooks, qat  # noqa: E402, F401  (register the binary and qat students, their export hooks)
from .binary import (  # noqa: E402
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
from ._lowering import lower  # noqa: E402
from .qat import LsqQuantizer, QConv2d, QLinear, quantize_model  # noqa: E402
from .storage import checkpoint_bytes, mac_report, storage_report  # noqa: E402

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
