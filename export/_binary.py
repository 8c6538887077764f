"""Binary (1-bit) students in bundles: the ONNX graph with the binary layers as INT8 Q/DQ (onnxruntime, TensorRT),
and the packed file from which the runtime builds OpenVINO's ``BinaryConvolution`` graph at load time.

Why not the generic torch trace: it would export the float emulation of the binary layers (sign functions and dense
float convolutions), which no runtime recognises as 1-bit, and an OpenVINO IR would store the +-1 weights as float32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from edgesplit.binary_net import BUILDER, InputSpec, LoweredNet, save_net, weight_bytes
from edgesplit.errors import ConfigError, ExportError
from edgesplit.preprocess import Preprocess

__all__ = ["PRECISIONS", "OPENVINO_FILE", "BUILDER", "binary_layer_count", "check_exportable", "lowered",
           "weight_bytes", "write_onnx", "write_openvino", "int8_note"]

PRECISIONS = ("fp32",)
OPENVINO_FILE = "binary/model.npz"


def binary_layer_count(model: nn.Module) -> int:
    """How many 1-bit layers ``model`` has (0: not a binary student; export it like any other model)."""
    from edgesplit.plugins.quant.binary import binary_layers

    return len(binary_layers(model))


def check_exportable(name: str, layers: int, precision: str, split: bool) -> None:
    """Refuse what the binary path cannot export, before any slow step."""
    if split:
        raise ExportError(f"{name}: split students with binary layers are not exported yet ({layers} binary layers "
                          "found); export a full binary student (student 'binary')")
    if precision not in PRECISIONS:
        raise ConfigError(
            f"{name}: a binary student ({layers} binary layers) exports with --precision fp32 only, meaning: binary "
            "layers at 1 bit (OpenVINO BinaryConvolution; INT8 Q/DQ on onnxruntime/TensorRT), the stem, shortcuts "
            f"and head in float32. --precision {precision} would requantize the float layers that feed the binary "
            "thresholds (and int8 quantizers would break the FakeQuantize -> binary convolution pairs OpenVINO "
            "fuses); export with --precision fp32")


def lowered(model: nn.Module) -> LoweredNet:
    """The student as the arrays every binary artifact is written from (BatchNorm folded; once per export)."""
    from edgesplit.plugins.quant import lower

    return lower(model)


def write_onnx(net: LoweredNet, spec: Preprocess, path: Path) -> Any:
    """``model.onnx`` for onnxruntime and TensorRT: uint8 NHWC ``image`` (normalized inside) -> ``logits``, dynamic
    batch, binary layers as INT8 Q/DQ with values in {-1, +1}; returns the ``ModelProto``."""
    from .onnx_binary import export_binary_onnx

    return export_binary_onnx(net, path, image=spec)["model"]


def write_openvino(net: LoweredNet, spec: Preprocess, path: Path) -> dict[str, str]:
    """Write the packed network (1 bit per binary weight) that the runtime builds OpenVINO's graph from at load
    time; returns its manifest entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_net(path, net, InputSpec(spec.size, spec.mean, spec.std))
    return {"builder": BUILDER, "model": OPENVINO_FILE}


def int8_note() -> str:
    """How onnxruntime and TensorRT run the binary layers (``onnx_binary.INT8_NOTE``)."""
    from .onnx_binary import INT8_NOTE

    return INT8_NOTE
