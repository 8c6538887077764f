"""ONNX export of a binary student for ONNX Runtime and TensorRT: binary layers as INT8 Q/DQ with values in
{-1, +1}, since neither runtime has a 1-bit convolution.

Each binary convolution becomes ``Where(x > t, 1, -1) -> Pad(-1) -> QuantizeLinear -> DequantizeLinear -> Conv``
with weights ``DequantizeLinear(int8 +-1)`` (scale 1, zero point 0), then the per-channel scale, BatchNorm and the
shortcut add in float. Values are exact in int8, so the graph computes what the torch model computes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from edgesplit.binary_net import BinaryUnit, LoweredNet, RealConv, RPReLU
from edgesplit.errors import BackendUnavailable, ExportError
from edgesplit.preprocess import PIXEL_SCALE, Preprocess, normalization
from edgesplit.registry import create


__all__ = ["INT8_NOTE", "export_binary_onnx"]

log = logging.getLogger(__name__)

OPSET = 18
INT8_NOTE = (
    "binary layers are exported as INT8 Q/DQ with values in {-1,+1} (scale 1, zero point 0): TensorRT (explicit "
    "quantization) runs each as an INT8 convolution with int8 weights; ONNX Runtime's CPU provider keeps "
    "DequantizeLinear + float Conv because the convolution output (an integer up to 9*C_in in magnitude) has no "
    "QuantizeLinear after it; results are exact either way, and neither runtime has a 1-bit kernel (OpenVINO does)"
)


class _Graph:
    """Accumulates nodes and initializers with unique names."""

    def __init__(self, helper: Any, numpy_helper: Any) -> None:
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def const(self, value: np.ndarray | float | int, prefix: str = "c", dtype: Any = np.float32) -> str:
        name = self.name(prefix)
        self.inits.append(self.numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], prefix: str | None = None, **attrs: Any) -> str:
        out = self.name(prefix or op_type.lower())
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


def _real_conv(g: _Graph, x: str, conv: RealConv) -> str:
    p = conv.padding
    return g.op("Conv", [x, g.const(conv.weight, "w"), g.const(conv.bias, "b")], "conv",
                strides=[conv.stride] * 2, pads=[p] * 4, kernel_shape=list(conv.weight.shape[2:]))


def _binary_unit(g: _Graph, x: str, unit: BinaryUnit) -> str:
    per = (1, -1, 1, 1)
    cond = g.op("Greater", [x, g.const(unit.threshold.reshape(per), "threshold")])
    signs = g.op("Where", [cond, g.const(1.0), g.const(-1.0)], "binarize")
    p = unit.padding
    if p:
        pads = g.const(np.array([0, 0, p, p, 0, 0, p, p]), "pads", np.int64)
        signs = g.op("Pad", [signs, pads, g.const(-1.0)], "pad_minus_one", mode="constant")
    one, zero = g.const(1.0, "q_scale"), g.const(0, "q_zero", np.int8)
    act = g.op("DequantizeLinear", [g.op("QuantizeLinear", [signs, one, zero], "act_q"), one, zero], "act_dq")
    w_int8 = g.const(unit.signs.astype(np.int8), "binary_w", np.int8)
    weight = g.op("DequantizeLinear", [w_int8, one, zero], "w_dq")
    y = g.op("Conv", [act, weight], "binary_conv", strides=[unit.stride] * 2, pads=[0, 0, 0, 0],
             kernel_shape=list(unit.signs.shape[2:]))
    y = g.op("Mul", [y, g.const(unit.alpha.reshape(per), "alpha")], "scale")
    y = g.op("Mul", [y, g.const(unit.bn_scale.reshape(per), "bn_scale")])
    return g.op("Add", [y, g.const(unit.bn_shift.reshape(per), "bn_shift")])


def _rprelu(g: _Graph, x: str, act: RPReLU | None) -> str:
    if act is None:
        return x
    per = (1, -1, 1, 1)
    y = g.op("Sub", [x, g.const(act.shift_in.reshape(per), "shift_in")])
    y = g.op("PRelu", [y, g.const(act.slope.reshape(-1, 1, 1), "slope")])
    return g.op("Add", [y, g.const(act.shift_out.reshape(per), "shift_out")])


def _normalized(g: _Graph, image: str, spec: Preprocess) -> str:
    """uint8 NHWC -> float NCHW: the steps and constants of ``edgesplit.preprocess.normalization`` (cast before
    transpose, so no uint8 tensor flows between ops: TensorRT takes UINT8 only at network inputs)."""
    mean, std = normalization(spec)
    x = g.op("Transpose", [g.op("Cast", [image], to=1)], perm=[0, 3, 1, 2])  # to=1: FLOAT
    x = g.op("Div", [x, g.const(PIXEL_SCALE)])
    x = g.op("Sub", [x, g.const(mean, "mean")])
    return g.op("Div", [x, g.const(std, "std")])


def export_binary_onnx(model: nn.Module | LoweredNet, path: str | Path, *, opset: int = OPSET,
                       image: Preprocess | None = None) -> dict[str, Any]:
    """Write ``model`` (a binary student, exported in eval mode, or its ``lower()``-ed arrays) to ``path`` as ONNX
    with INT8 Q/DQ binary layers.

    Input ``input`` (N, 3, H, W) float32 with batch and image size dynamic; or, with ``image``, the bundle contract:
    ``image`` uint8 (N, size, size, 3), normalized inside with the spec's mean/std, batch dynamic. Output ``logits``
    float32. Returns ``{"path", "binary_layers", "opset", "note", "model"}`` (``model``: the ``ModelProto``); the
    note (also logged) says how the runtimes execute it.
    """
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as exc:
        raise BackendUnavailable("ONNX export needs onnx; install it with: pip install 'edgesplit[export]'") from exc
    net = model if isinstance(model, LoweredNet) else create("exporter", "binary").lower(model)
    g = _Graph(helper, numpy_helper)
    if image is None:
        x = "input"
        graph_input = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    else:
        x = _normalized(g, "image", image)
        graph_input = helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", image.size, image.size, 3])
    x = g.op("Relu", [_real_conv(g, x, net.stem)])
    x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    for block in net.blocks:
        shortcut = x
        if block.pool > 1:
            k = block.pool
            shortcut = g.op("AveragePool", [shortcut], kernel_shape=[k, k], strides=[k, k], ceil_mode=1,
                            count_include_pad=0)
        if block.downsample is not None:
            shortcut = _real_conv(g, shortcut, block.downsample)
        y = _rprelu(g, g.op("Add", [_binary_unit(g, x, block.unit1), shortcut], "residual"), block.act1)
        x = _rprelu(g, g.op("Add", [_binary_unit(g, y, block.unit2), y], "residual"), block.act2)
    x = g.op("Flatten", [g.op("GlobalAveragePool", [x])], axis=1)
    g.nodes.append(helper.make_node("Gemm", [x, g.const(net.fc_weight, "fc_w"), g.const(net.fc_bias, "fc_b")],
                                    ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        g.nodes, "binary_student", [graph_input],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", int(net.fc_weight.shape[0])])],
        g.inits,
    )
    opsets = [helper.make_opsetid("", opset)]
    # the lowest IR version the opset allows: runtimes lag behind onnx's newest IR version
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="edgesplit",
                              ir_version=helper.find_min_ir_version_for(opsets))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:  # a bug here, not the user's: say so
        raise ExportError(f"the binary ONNX graph failed onnx's checker: {exc}") from exc
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(out))
    n_binary = 2 * len(net.blocks)
    log.info("%s: %d binary layers; %s", out, n_binary, INT8_NOTE)
    return {"path": str(out), "binary_layers": n_binary, "opset": opset, "note": INT8_NOTE, "model": proto}
