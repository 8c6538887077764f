"""Binary (1-bit) students in bundles: the ONNX graph with the binary layers as INT8 Q/DQ (onnxruntime, TensorRT),
and the packed file from which the runtime builds OpenVINO's ``BinaryConvolution`` graph at load time.

Why not the generic torch trace: it would export the float emulation of the binary layers (sign functions and dense
float convolutions), which no runtime recognises as 1-bit, and an OpenVINO IR would store the +-1 weights as float32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgesplit.binary_net import BUILDER, InputSpec, LoweredNet, save_net, weight_bytes
from edgesplit.bundle import BundleWriter
from edgesplit.preprocess import Preprocess

from ._plan import Artifacts, ExportPlan, Steps

__all__ = ["OPENVINO_FILE", "BUILDER", "weight_bytes", "write_onnx", "write_openvino", "int8_note", "onnx_stage",
           "openvino_stage"]

OPENVINO_FILE = "binary/model.npz"


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


def onnx_stage(plan: ExportPlan, art: Artifacts, scratch: Path) -> None:
    """The fp32 ONNX graph, built from the lowered arrays rather than traced: binary layers become INT8 Q/DQ."""
    art.parts, art.inputs = ["model"], {"model": "image"}
    art.fp32_path = {"model": scratch / "model.fp32.onnx"}
    art.fp32_model = {"model": write_onnx(plan.binary_net, plan.spec, art.fp32_path["model"])}


def openvino_stage(plan: ExportPlan, art: Artifacts, writer: BundleWriter, steps: Steps) -> None:
    """The packed file the runtime builds OpenVINO's BinaryConvolution graph from."""
    from ._report import size_text

    with steps.step("openvino binary"):
        art.files["model"]["openvino"] = write_openvino(plan.binary_net, plan.spec, writer.path(OPENVINO_FILE))
    weights = weight_bytes(plan.binary_net)
    steps.say(f"OpenVINO: {OPENVINO_FILE} ({size_text(weights['packed'])} of packed sign bits for "
              f"{plan.binary_layers} binary layers, {size_text(weights['fp32'])} as float32), built into a "
              "BinaryConvolution graph at load time")
